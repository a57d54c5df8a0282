"""Reading the embedding tables that explore and evaluate take, with errors that name the table and the cause.

Three mistakes looked like something else before: a chip store given where a table is expected (a Parquet
reader's message about a chunk file), a file that is not a table, and NaN/Inf inside an embedding (read as a
missing embedding, so the chips silently dropped out and the result was blamed on a store mismatch). In the
table format a missing embedding is a null row (or a row that is entirely NaN, what
:func:`earthembed.embed.io.write_embedding_table` turns into a null); any other non-finite value is damage,
and an error naming the table, the column and the chips.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def table_path(path: str | Path, option: str = "--embeddings") -> Path:
    """``path`` as a Path when it can be an embedding table; a one-line error naming ``option`` otherwise."""
    from earthembed.data.store import is_store_dir
    from earthembed.embed.shards import is_dataset_dir
    from earthembed.storage import location

    path = location(path)  # a Path, or an s3:// / gs:// URL (earthembed.storage.ObjectPath)
    if path.is_dir() and not is_dataset_dir(path):  # a sharded embedding dataset is a table
        if is_store_dir(path):
            raise ValueError(f"{path}: {option} is a chip store, not an embedding table; embed it first "
                             f"(earthembed embed --store {path} --out EMB.parquet) and pass the table")
        raise ValueError(f"{path}: {option} is a directory, not an embedding table (a .parquet file or an "
                         "embedding dataset directory)")
    if not path.exists():
        raise FileNotFoundError(f"{path}: {option} not found (embedding table)")
    return path


def check_finite(X: np.ndarray, chip_ids: Sequence[Any], path: str | Path, column: str) -> None:
    """Raise naming ``path``, ``column`` and the chips when a row of ``X`` holds NaN/Inf without being entirely
    NaN (the reading of a null: a missing embedding)."""
    finite = np.isfinite(X)
    bad = np.flatnonzero(~finite.all(axis=1) & (finite.any(axis=1) | np.isinf(X).any(axis=1)))
    if bad.size:
        ids = [str(chip_ids[i]) for i in bad[:5]]
        raise ValueError(
            f"{path}: embedding column {column!r} holds NaN/Inf values in {bad.size} row(s) (chips "
            f"{', '.join(ids)}{', ...' if bad.size > 5 else ''}); a missing embedding must be a null row - "
            "re-embed, or fix the table"
        )


def read_embedding_matrix(path: str | Path, column: str = "emb_fused", option: str = "--embeddings"
                          ) -> tuple[Any, np.ndarray]:
    """:func:`earthembed.embed.io.read_embeddings` (index DataFrame, [N, D] matrix with NaN rows where the
    embedding is missing) after :func:`table_path`, with :func:`check_finite` on the column."""
    from earthembed.embed.io import read_embeddings

    path = table_path(path, option)
    try:
        df, X = read_embeddings(path, column)
    except (OSError, ValueError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(f"{path}: {option} cannot be read as an embedding table ({e})") from e
    ids = df["chip_id"].to_numpy() if "chip_id" in df.columns else np.arange(len(df))
    check_finite(X, ids, path, column)
    return df, X


def check_embedding_table(path: str | Path, columns: Sequence[str] | None = None, option: str = "--embeddings"
                          ) -> None:
    """:func:`table_path` and :func:`check_finite` on ``columns`` (default every ``emb_*`` column) of a table
    read elsewhere (e.g. by the few-shot feature sets, which would take a damaged row for a missing one)."""
    import pyarrow as pa

    from earthembed.embed.io import embedding_columns, read_schema, read_table, to_matrix

    path = table_path(path, option)
    try:
        avail = embedding_columns(path)
        cols = [c for c in (columns or avail) if c in avail]
        table = read_table(path, columns=[*cols, *(["chip_id"] if "chip_id" in read_schema(path).names else [])])
    except (OSError, pa.ArrowException) as e:
        raise ValueError(f"{path}: {option} cannot be read as an embedding table ({e})") from e
    ids = table.column("chip_id").to_numpy() if "chip_id" in table.column_names else np.arange(table.num_rows)
    for c in cols:
        check_finite(to_matrix(table.column(c)), ids, path, c)
