"""What every writer of earthembed's embedding Parquet files shares, whether one table (:mod:`earthembed.embed.io`,
:mod:`earthembed.embed.run`) or a shard of a dataset (:mod:`earthembed.embed.shards`): the key of the file-level
metadata and the write options. It sits below all of them, so the table readers (which also read datasets) and
the shard writers need not import each other for these two.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

META_KEY = b"earthembed"


def parquet_options(schema: pa.Schema) -> dict[str, Any]:
    """Write options for embedding tables: dictionary encoding only for the non-embedding columns. Float
    embeddings never repeat, so trying a dictionary on them first doubles the write time for nothing."""
    return {"use_dictionary": [n for n in schema.names if not n.startswith("emb_")]}
