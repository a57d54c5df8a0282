"""Embedding tables: GeoParquet, one row per chip, fixed-size float32 list columns.

A table is one ``.parquet`` file or a sharded embedding dataset (a directory of shard files with a manifest,
:mod:`earthembed.embed.shards`); :func:`read_table`, :func:`read_metadata`, :func:`embedding_columns`,
:func:`is_embedding_table` and :func:`read_embeddings` take either, so every reader treats them alike.

Columns: ``idx`` (store position), ``chip_id``, ``geometry``, ``aoi``, ``split``, ``modalities_used``
(comma-joined modalities that were present and requested), ``emb_fused`` and ``emb_<modality>``
(FixedSizeList<float32>[D], null where the chip lacked that modality), ``present_<modality>``, ``model_id``.
File-level metadata (key ``earthembed``) holds the model id, dimensions and the bands used.

**Per-date tables** (``embed --dates``): one row per (chip, date), ``chip_id`` the same at every date of a chip,
plus ``t`` (int16: the date index in the store's series, 0-based), ``date`` (date32: the series' date at ``t``,
null where the store records none) and ``date_key`` (the store key read for the first series at ``t``, e.g.
``s2_t3``) after ``split``. Embedding and presence columns are named by the series' base modality (``emb_s2``,
``present_s2``; never ``emb_s2_t3``); rows are ordered by (``t``, ``idx``). Metadata ``time``: ``{"mode":
"per_date", "series": {base: [keys by date]}, "dates": [ISO or null, per date index], "date_keys": [...], "t":
[date indices embedded], "static": [modalities fed at every date], "skipped": [{"t", "date", "date_key",
"chips"}: chips without imagery at that date, which have no row]}`` (:class:`earthembed.data.dates.DatePlan`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from earthembed.embed.table_format import META_KEY, parquet_options
from earthembed.outputs import dumps


def fixed_size_list(x: np.ndarray, valid: np.ndarray | None = None, name: str = "embedding") -> pa.Array:
    """[N, D] float32 -> FixedSizeList<float32>[D]; rows where ``valid`` is False are null (missing).

    Without ``valid``, an all-NaN row means missing. A row that should hold data but has a NaN/Inf is a
    ValueError naming the rows: it is never written as zeros (which would look like a real embedding)."""
    x = np.asarray(x, dtype=np.float32)
    finite = np.isfinite(x).all(axis=1)
    ok = ~np.isnan(x).all(axis=1) if valid is None else np.asarray(valid, dtype=bool)
    bad = np.flatnonzero(ok & ~finite)
    if bad.size:
        raise ValueError(
            f"{name}: rows {bad[:5].tolist()}{' ...' if bad.size > 5 else ''} ({bad.size} in all) hold NaN/Inf values; "
            "a missing embedding must be a whole row of NaN (or null), never partly"
        )
    x = np.where(ok[:, None], x, np.float32(0.0)) if not ok.all() else x  # null rows: the values are not read
    flat = pa.array(x.reshape(-1), type=pa.float32())
    if ok.all():
        return pa.FixedSizeListArray.from_arrays(flat, x.shape[1])
    return pa.FixedSizeListArray.from_arrays(flat, x.shape[1], mask=pa.array(~ok))


def write_embedding_table(
    path: str | Path,
    chip_ids: Sequence[str],
    embeddings: dict[str, np.ndarray],
    split: Sequence[str] | None = None,
    model_id: str = "external",
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write embeddings computed elsewhere (another model, another toolkit) in this format, so ``fewshot``
    and ``plot-embeddings`` take them like their own. ``embeddings`` maps ``emb_<name>`` to [N, D] arrays
    (NaN rows become nulls, i.e. missing); ``chip_id`` must match the store's for labels to join."""
    n = len(chip_ids)
    cols: dict[str, Any] = {
        "idx": pa.array(np.arange(n), pa.int64()),
        "chip_id": pa.array([str(c) for c in chip_ids], pa.string()),
        "split": pa.array([str(s) for s in split] if split is not None else [""] * n, pa.string()),
        "model_id": pa.array([model_id] * n, pa.string()),
    }
    for name, x in embeddings.items():
        if not name.startswith("emb_"):
            raise ValueError(f"embedding column {name!r} must be named emb_<something>")
        if len(x) != n:
            raise ValueError(f"{name}: {len(x)} rows for {n} chip ids")
        arr = fixed_size_list(x, name=name)
        cols[name] = arr
        if name != "emb_fused":
            cols[f"present_{name[4:]}"] = pa.array(~np.asarray(arr.is_null().to_numpy(zero_copy_only=False)))
    meta = {"model_id": model_id, "dims": {k: int(np.shape(v)[1]) for k, v in embeddings.items()}, **(metadata or {})}
    table = pa.table(cols).replace_schema_metadata({META_KEY: dumps(meta, indent=None, where=path).encode()})
    path = Path(path)
    pq.write_table(table, path, **parquet_options(table.schema))
    return path


def _files(path: str | Path, years: Iterable[int] | None = None) -> list[Path] | None:
    """The shard files of a complete embedding dataset at ``path`` (None: ``path`` is not a dataset). ``path``
    may be on object storage (``s3://bucket/EMB/``: :mod:`earthembed.storage`)."""
    from earthembed.embed.shards import dataset_files, is_dataset_dir
    from earthembed.storage import location

    p = location(path)
    return dataset_files(p, years) if p.is_dir() and is_dataset_dir(p) else None  # type: ignore[return-value]


def read_schema(path: str | Path) -> pa.Schema:
    from earthembed.storage import location, read_parquet_schema

    files = _files(path)
    return read_parquet_schema(files[0] if files else location(path))


def read_table(path: str | Path, columns: Sequence[str] | None = None, years: Iterable[int] | None = None
               ) -> pa.Table:
    """One embedding table, or every shard of a complete dataset in store order, as one Arrow table (schema
    metadata included).

    ``years``: only the rows of those years of a per-date dataset partitioned by year, reading only their files
    (:func:`earthembed.embed.shards.dataset_files`); refused for anything else, naming it."""
    from earthembed.storage import location, read_parquet_tables

    files = _files(path, years)
    if files is None:
        if years is not None:
            raise ValueError(f"{path}: years= needs an embedding dataset partitioned by year (embed --dates ... "
                             "--out DIR/), not one table")
        return read_parquet_tables([location(path)], columns=columns)[0]
    if not files:  # no file of those years: no rows, the dataset's schema
        schema = read_schema(path)
        return (schema.empty_table() if columns is None else pa.schema([schema.field(c) for c in columns],
                                                                         metadata=schema.metadata).empty_table())
    tables = read_parquet_tables(files, columns=columns)
    return pa.concat_tables(tables).replace_schema_metadata(tables[0].schema.metadata)


def embedding_columns(path_or_table: str | Path | pa.Table) -> list[str]:
    schema = path_or_table.schema if isinstance(path_or_table, pa.Table) else read_schema(path_or_table)
    return [n for n in schema.names if n.startswith("emb_")]


def is_embedding_table(path: str | Path) -> bool:
    """True when ``path`` is a Parquet file with earthembed's metadata (the only file ``--overwrite`` replaces)
    or a complete embedding dataset."""
    try:
        return META_KEY in (read_schema(path).metadata or {})
    except (OSError, ValueError, pa.ArrowException):
        return False


def read_metadata(path: str | Path) -> dict[str, Any]:
    md = read_schema(path).metadata or {}
    if META_KEY not in md:
        raise ValueError(f"{path}: not an earthembed embedding table (no '{META_KEY.decode()}' metadata)")
    return json.loads(md[META_KEY])


def to_matrix(column: pa.ChunkedArray | pa.Array, dim: int | None = None) -> np.ndarray:
    """[N, D] float32 from a (fixed-size) list column; null rows become NaN rows."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    n = len(arr)
    if dim is None:
        t = arr.type
        dim = t.list_size if pa.types.is_fixed_size_list(t) else None
    if dim is None:
        valid = arr.drop_null()
        dim = len(valid[0]) if len(valid) else 0
    out = np.full((n, dim), np.nan, dtype=np.float32)
    if n == 0:
        return out
    valid = ~np.asarray(arr.is_null().to_numpy(zero_copy_only=False))
    if valid.any():
        flat = arr.filter(pa.array(valid)).flatten().to_numpy(zero_copy_only=False)
        out[valid] = np.asarray(flat, dtype=np.float32).reshape(-1, dim)
    return out


def read_embeddings(path: str | Path, column: str = "emb_fused") -> tuple[Any, np.ndarray]:
    """(index DataFrame without embedding columns, [N, D] matrix of ``column``) sorted by ``idx``."""
    from earthembed.storage import location

    path = location(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: embedding table not found")
    table = read_table(path)
    cols = embedding_columns(table)
    if column not in cols:
        raise KeyError(f"{path}: no embedding column {column!r} (it has {cols})")
    if "idx" in table.column_names:
        table = table.sort_by("idx")
    x = to_matrix(table.column(column))
    df = table.drop_columns(cols).to_pandas()
    return df, x
