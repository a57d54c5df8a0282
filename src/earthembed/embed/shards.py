"""Sharded embedding: the unit of work, retry and resume when a store outgrows one process (issue 23).

An embedding *dataset* is a directory:

* ``part-<start>-<end>.parquet``: one GeoParquet file per shard, the chips ``[start, end)`` of the store (the
  same columns and metadata as a single embedding table). Shards are aligned to the store's Zarr chunks (a
  chunk is read by one worker only) and contiguous in store order, which is the tile order of an ingested AOI,
  so a shard is a compact band of the area. Names depend only on the shard's chips: deterministic, so a
  retried or resumed shard overwrites its own file and nothing else.
* ``_committed/<part>.json``: the commit marker of a shard (rows, bytes, sha256), created only after its file
  is complete, and only if absent (``open(..., "x")``; a conditional put on object storage). A shard without a
  marker is not done, whatever file exists.
* ``_failed/<part>.json``: the last error of a shard that failed (removed when it commits).
* ``_manifest.json``: what the dataset is (model, store, bands, shard plan); ``complete`` once every shard is
  committed, with the table metadata readers need. ``_common_metadata``: the Arrow schema, for Parquet tools.

* ``_lock``: while a job writes the dataset (flock locally; on object storage a lease object created by
  put-if-absent and renewed while the job runs: :class:`earthembed.storage.ObjectLock`).

A re-run with the same model, store, bands and shard size does only the shards without a marker; another
plan in the same directory is refused (``overwrite`` clears earthembed's files there, nothing else); a
committed shard's file is never written again. Engines (:mod:`earthembed.embed.engines`) only decide *where*
a shard is embedded; the layout is theirs in common.

The directory may be on object storage (``s3://bucket/EMB/``, ``gs://...``): the same layout, written through
:mod:`earthembed.storage` (Parquet through pyarrow's filesystem, markers by conditional put; each object is
one PUT, so readers see whole files or none).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from earthembed.embed.io import META_KEY, parquet_options
from earthembed.errors import OutputError
from earthembed.outputs import dumps, write_error
from earthembed.storage import (
    ObjectPath,
    create,
    file_sizes,
    is_remote,
    location,
    output_lock,
    read_parquet_schema,
    remove,
    write_bytes_atomic,
    write_json,
)

Dir = Path | ObjectPath

DATASET_FORMAT = "earthembed-embedding-dataset"
DATASET_VERSION = 1
MANIFEST = "_manifest.json"
COMMON_METADATA = "_common_metadata"
COMMITTED = "_committed"
FAILED = "_failed"
LOCK = "_lock"
DEFAULT_SHARD_CHIPS = 4096


@dataclasses.dataclass(frozen=True)
class Shard:
    """Chips ``[start, end)`` of the store: one output file, one unit of retry."""

    start: int
    end: int

    @property
    def name(self) -> str:
        return f"part-{self.start:010d}-{self.end:010d}"

    @property
    def file(self) -> str:
        return f"{self.name}.parquet"

    def __len__(self) -> int:
        return self.end - self.start


def plan_shards(n_chips: int, chunk_chips: int, shard_chips: int | None = None) -> list[Shard]:
    """Contiguous shards of about ``shard_chips`` chips (rounded up to whole Zarr chunks of ``chunk_chips``)."""
    if n_chips <= 0:
        raise ValueError("the store has no chips to embed")
    k = DEFAULT_SHARD_CHIPS if shard_chips is None else int(shard_chips)
    if k <= 0:
        raise ValueError(f"--shard-chips must be positive, got {k}")
    c = max(1, int(chunk_chips))
    k = -(-k // c) * c
    return [Shard(s, min(s + k, n_chips)) for s in range(0, n_chips, k)]


def is_dataset_dir(path: str | Path | ObjectPath) -> bool:
    """True when ``path`` is a directory holding an earthembed embedding dataset's manifest."""
    f = location(path) / MANIFEST
    try:
        return json.loads(f.read_text()).get("format") == DATASET_FORMAT
    except (ValueError, AttributeError):
        return False
    except OSError as e:
        if isinstance(f, ObjectPath) and not isinstance(e, FileNotFoundError):
            raise  # an unreachable bucket is not "no dataset": say so
        return False


def wants_dataset(out: str | Path | ObjectPath, engine: str = "local", shard_chips: int | None = None) -> bool:
    """Sharded output: ``--out`` ends with ``/`` or is a directory, or ``--engine ray`` / ``--shard-chips`` is
    given, or is on object storage (where only datasets are written); otherwise ``--out`` is one table, as
    before sharding existed."""
    if is_remote(out):
        if str(out).rstrip("/").endswith(".parquet"):
            raise ValueError(f"{out}: on object storage embed writes a sharded dataset, not one .parquet table; "
                             "give a directory URL ending with / (e.g. s3://bucket/emb/)")
        return True
    return str(out).endswith(("/", os.sep)) or Path(out).is_dir() or engine != "local" or shard_chips is not None


def _ours(p: Dir) -> bool:
    n = p.name
    return (n in (MANIFEST, COMMON_METADATA, COMMITTED, FAILED, LOCK, f"{MANIFEST}.tmp")
            or (n.startswith("part-") and (n.endswith(".parquet") or n.endswith(".tmp"))))


def dataset_lock(out: str | Path | ObjectPath) -> Any:
    """The lock one job holds on a dataset directory while it writes (a second job is refused, naming it)."""
    out = location(out)
    return output_lock(out, out / LOCK)


def _store_above(out: Dir) -> tuple[Dir, str] | None:
    """The chip store or run directory that ``out`` would lie inside (outputs never go there)."""
    if isinstance(out, ObjectPath):
        from earthembed.data.store import is_store_dir

        return next(((d, "chip store") for d in out.parents if is_store_dir(d)), None)
    from earthembed.outputs import protected_dir_above

    inside = protected_dir_above(out)
    return (inside[0], inside[1]) if inside is not None else None


def prepare_dataset(out: Dir, manifest: dict[str, Any], overwrite: bool) -> None:
    """Create ``out`` or check it may be resumed (same plan) / replaced (``overwrite``, our files only)."""
    inside = _store_above(out)
    if inside is not None:
        raise OutputError(f"{out}: is inside the {inside[1]} {inside[0]}; write embeddings outside stores and runs")
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: exists and is not a directory; a sharded embedding dataset is a directory "
                          "(give a .parquet path for one table)")
    entries = list(out.iterdir()) if out.is_dir() else []
    if any(p.name != LOCK for p in entries):  # the lock is taken before this check
        if not is_dataset_dir(out):
            raise OutputError(f"{out}: exists, is not empty and is not an earthembed embedding dataset (no "
                              f"{MANIFEST}); choose another --out, refusing to write among other files")
        old = json.loads((out / MANIFEST).read_text())
        if _plan_of(old) == _plan_of(manifest):
            return  # resume
        if not overwrite:
            diff = [k for k in _plan_of(manifest) if _plan_of(old).get(k) != _plan_of(manifest).get(k)]
            raise OutputError(f"{out}: holds an embedding dataset of another plan (different {', '.join(diff)}); "
                              "pass --overwrite to replace it, or choose another --out")
        foreign = [p.name for p in entries if not _ours(p)]
        if foreign:
            raise OutputError(f"{out}: holds files earthembed did not write ({foreign[:3]}); refusing to clear it")
        for p in entries:
            if p.name != LOCK:
                remove(p)
    out.mkdir(parents=True, exist_ok=True)
    (out / COMMITTED).mkdir(exist_ok=True)
    (out / FAILED).mkdir(exist_ok=True)
    write_json(out / MANIFEST, manifest)


PLAN_KEYS = ("model_id", "store", "n_chips", "bands", "batch_size", "shards", "time")
"""What a resume must match; other manifest keys (``last_run``: engine, shards run, peak memory per worker) may
differ between runs."""


def _plan_of(manifest: dict[str, Any]) -> dict[str, Any]:
    return {k: manifest.get(k) for k in PLAN_KEYS}


def committed(out: Dir, shard: Shard) -> dict[str, Any] | None:
    f = out / COMMITTED / f"{shard.name}.json"
    try:
        return json.loads(f.read_text())
    except ValueError:
        return None
    except OSError as e:
        if isinstance(f, ObjectPath) and not isinstance(e, FileNotFoundError):
            raise  # unreachable storage is not "not committed"
        return None


def committed_names(out: Dir) -> set[str]:
    """Names of the committed shards (one listing: on object storage one LIST per 1,000 shards)."""
    return {n[: -len(".json")] for n in file_sizes(out / COMMITTED) if n.endswith(".json")}


def pending_shards(out: str | Path | ObjectPath, shards: Sequence[Shard]) -> list[Shard]:
    """The shards of ``shards`` without a commit marker in ``out``."""
    done = committed_names(location(out))
    return [s for s in shards if s.name not in done]


def status(out: str | Path | ObjectPath) -> dict[str, Any]:
    """``{"done": [...], "pending": [...], "failed": {name: error}, ...}`` of a dataset (``embed-status``)."""
    out = location(out)
    if not is_dataset_dir(out):
        raise FileNotFoundError(f"{out}: not an earthembed embedding dataset (no {MANIFEST})")
    m = json.loads((out / MANIFEST).read_text())
    shards = [Shard(*s) for s in m["shards"]]
    names = committed_names(out)
    done = [s.name for s in shards if s.name in names]
    listed = file_sizes(out / FAILED)
    failed: dict[str, str] = {}
    for s in shards:
        if s.name not in names and f"{s.name}.json" in listed:
            try:
                failed[s.name] = str(json.loads((out / FAILED / f"{s.name}.json").read_text()).get("error", "?"))
            except FileNotFoundError:
                continue  # committed meanwhile
            except ValueError:
                failed[s.name] = "(unreadable failure record)"
    pending = [s.name for s in shards if s.name not in names and s.name not in failed]
    return {"path": str(out), "model_id": m.get("model_id"), "store": m.get("store"), "shards": len(shards),
            "chips": m.get("n_chips"), "done": done, "pending": pending, "failed": failed,
            "complete": bool(m.get("complete"))}


def _same_as_committed(mf: Dir, old: dict[str, Any] | None, h: str, shard: Shard) -> dict[str, Any]:
    if old is None or old.get("sha256") != h:
        raise OutputError(f"{mf}: shard {shard.name} was committed with other contents; the dataset is "
                          "inconsistent (two different runs?) - re-run with --overwrite")
    return old


def write_shard(out: Dir, shard: Shard, table: pa.Table) -> dict[str, Any]:
    """Write one shard's file (locally through a temporary file beside it, on object storage as one object)
    and then its commit marker (put-if-absent); returns the marker. A shard that is already committed (a
    retried shard that had finished) is not written again: its marker must describe the same bytes."""
    f = out / shard.file
    mf = out / COMMITTED / f"{shard.name}.json"
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, **parquet_options(table.schema))
    data = sink.getvalue().to_pybytes()
    h = hashlib.sha256(data).hexdigest()
    old = committed(out, shard)
    if old is not None:  # never rewrite a committed shard
        return _same_as_committed(mf, old, h, shard)
    try:
        write_bytes_atomic(f, data)
    except OSError as e:
        raise write_error(f, e, "the shard is not committed; free space and re-run the same command to resume "
                          "(committed shards are kept)") from e
    marker = {"shard": shard.name, "rows": table.num_rows, "bytes": len(data), "sha256": h}
    if not create(mf, dumps(marker).encode()):  # put-if-absent: the first complete write commits
        return _same_as_committed(mf, committed(out, shard), h, shard)
    (out / FAILED / f"{shard.name}.json").unlink(missing_ok=True)
    return marker


def record_failure(out: Dir, shard: Shard, error: BaseException | str) -> None:
    msg = str(error) if isinstance(error, str) else f"{type(error).__name__}: {error}"
    write_json(out / FAILED / f"{shard.name}.json", {"shard": shard.name, "error": msg[:2000]})


def finish(out: Dir, manifest: dict[str, Any], shards: Sequence[Shard], table_meta: dict[str, Any]) -> dict[str, Any]:
    """Check every shard is committed and its file intact; mark the dataset complete (manifest + schema)."""
    names = committed_names(out)
    missing = [s.name for s in shards if s.name not in names]
    if missing:
        st = status(out)
        raise OutputError(
            f"{out}: {len(missing)} of {len(shards)} shards are not done ({len(st['failed'])} failed: "
            f"{next(iter(st['failed'].values()), '')[:200]}); see `earthembed embed-status {out}` and re-run the "
            "same command to retry them")
    sizes = file_sizes(out)
    rows = 0
    for s in shards:
        mk = committed(out, s) or {}
        if sizes.get(s.file) != mk.get("bytes"):
            raise OutputError(f"{out / s.file}: missing or changed since it was committed; re-run with --overwrite")
        rows += int(mk["rows"])
    sink = pa.BufferOutputStream()
    pq.write_metadata(read_parquet_schema(out / shards[0].file), sink)
    write_bytes_atomic(out / COMMON_METADATA, sink.getvalue().to_pybytes())
    done = {**manifest, "complete": True, "rows": rows, "files": [s.file for s in shards], "table": table_meta}
    write_json(out / MANIFEST, done)
    return done


def dataset_files(out: str | Path | ObjectPath) -> list[Path] | list[ObjectPath]:
    """The shard files of a complete dataset, in store order (refuses an incomplete one, naming it)."""
    out = location(out)
    m = json.loads((out / MANIFEST).read_text())
    if not m.get("complete"):
        st = status(out)
        raise OutputError(f"{out}: embedding dataset is incomplete ({len(st['done'])} of {st['shards']} shards "
                          f"done); finish it by re-running the embed command (`earthembed embed-status {out}`)")
    return [out / f for f in m["files"]]  # type: ignore[return-value]


def shard_table(tables: Iterable[pa.Table], schema_meta: dict[bytes, bytes]) -> pa.Table:
    """One shard's batch tables as one table carrying the GeoParquet and earthembed metadata."""
    t = pa.concat_tables(list(tables))
    return t.replace_schema_metadata({**(t.schema.metadata or {}), **schema_meta})


def table_metadata(meta: dict[str, Any], where: str | Path) -> dict[bytes, bytes]:
    """Schema metadata of every shard: GeoParquet ``geo`` and earthembed's (no timestamps: deterministic)."""
    from pyproj import CRS

    geo = {"version": "1.1.0", "primary_column": "geometry",
           "columns": {"geometry": {"encoding": "WKB", "geometry_types": [], "crs": CRS.from_epsg(4326).to_json_dict()}}}
    return {b"geo": dumps(geo, indent=None).encode(), META_KEY: dumps(meta, indent=None, where=where).encode()}


def order_check(table: pa.Table, shard: Shard) -> None:
    idx = table.column("idx").to_numpy()
    if len(idx) != len(shard) or (len(idx) and (idx[0] != shard.start or np.any(np.diff(idx) != 1))):
        raise RuntimeError(f"shard {shard.name}: rows are not the chips {shard.start}..{shard.end - 1} in order")
