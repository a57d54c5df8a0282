"""The chip store's format: the names of its files and arrays, its label kinds and splits, and how its metadata
file is read. The bottom of the store: :mod:`earthembed.data.store` (reading and writing), the integrity checks
(:mod:`earthembed.data.store_checks`) and the statistics all build on these names without importing each other.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from earthembed.errors import StoreError
from earthembed.outputs import STORE_MARKER
from earthembed.storage import ObjectPath

FORMAT_VERSION = "1.0"
META_FILE = STORE_MARKER
"""The metadata file that marks a directory as a store (:func:`earthembed.outputs.is_store_dir`)."""
ARRAYS = "arrays.zarr"
INDEX_FILE = "index.parquet"
INDEX_ROW_GROUP_CHIPS = 65536
"""Rows per row group of ``index.parquet``: a reader of some chips (a shard worker, :meth:`ChipStore.rows`) reads
only the row groups holding them (stores written before this have one row group per 1 M chips: still bounded)."""
PARTS_DIR = "_parts"
REPORT_FILE = "ingest_report.json"
LOCK_FILE = ".earthembed.lock"
STORE_ENTRIES = frozenset({META_FILE, ARRAYS, INDEX_FILE, PARTS_DIR, REPORT_FILE, LOCK_FILE})
"""What a store directory holds; ``--overwrite`` removes these (and their ``.tmp``) and nothing else."""
SPLITS = ("train", "val", "test")
LABEL_KINDS = ("class", "multilabel", "fraction", "mask", "value")
FINGERPRINT_KEYS = ("format_version", "n_chips", "chip_size", "modalities", "labels", "source", "completed")
"""The metadata a store's fingerprint hashes: what an ingest wrote, including when it finished (a re-ingest or a
replaced store gets another); not the statistics, which ``earthembed stats`` may recompute without touching a chip."""


def read_meta(path: Path | ObjectPath) -> dict[str, Any]:
    """A store's ``earthembed.json`` as a dict; a missing or corrupt one is a :class:`StoreError` naming it."""
    f = path / META_FILE
    if not f.exists():
        raise StoreError(f"{path}: not an earthembed chip store (no {META_FILE})")
    try:
        meta = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StoreError(f"{f}: corrupt store metadata ({e})") from e
    if not isinstance(meta, dict):
        raise StoreError(f"{f}: corrupt store metadata (not a JSON object)")
    return meta
