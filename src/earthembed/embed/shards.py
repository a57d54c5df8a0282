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

A re-run with the same model, store, bands and shard size does only the shards without a marker; another
plan in the same directory is refused (``overwrite`` clears earthembed's files there, nothing else). Engines
(:mod:`earthembed.embed.engines`) only decide *where* :func:`embed_shard` runs; the layout is theirs in common.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from earthembed.embed.io import META_KEY, parquet_options
from earthembed.errors import OutputError
from earthembed.outputs import dumps, write_error, write_json

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


def is_dataset_dir(path: str | Path) -> bool:
    """True when ``path`` is a directory holding an earthembed embedding dataset's manifest."""
    f = Path(path) / MANIFEST
    try:
        return f.is_file() and json.loads(f.read_text()).get("format") == DATASET_FORMAT
    except (OSError, ValueError):
        return False


def wants_dataset(out: str | Path, engine: str = "local", shard_chips: int | None = None) -> bool:
    """Sharded output: ``--out`` ends with ``/`` or is a directory, or ``--engine ray`` / ``--shard-chips`` is
    given; otherwise ``--out`` is one table, as before sharding existed."""
    return str(out).endswith(("/", os.sep)) or Path(out).is_dir() or engine != "local" or shard_chips is not None


def _ours(p: Path) -> bool:
    n = p.name
    return (n in (MANIFEST, COMMON_METADATA, COMMITTED, FAILED, LOCK, f"{MANIFEST}.tmp")
            or (n.startswith("part-") and (n.endswith(".parquet") or n.endswith(".tmp"))))


def prepare_dataset(out: Path, manifest: dict[str, Any], overwrite: bool) -> None:
    """Create ``out`` or check it may be resumed (same plan) / replaced (``overwrite``, our files only)."""
    from earthembed.outputs import protected_dir_above

    inside = protected_dir_above(out)
    if inside is not None:
        raise OutputError(f"{out}: is inside the {inside[1]} {inside[0]}; write embeddings outside stores and runs")
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: exists and is not a directory; a sharded embedding dataset is a directory "
                          "(give a .parquet path for one table)")
    if out.is_dir() and any(p.name != LOCK for p in out.iterdir()):  # the lock is taken before this check
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
        foreign = [p.name for p in out.iterdir() if not _ours(p)]
        if foreign:
            raise OutputError(f"{out}: holds files earthembed did not write ({foreign[:3]}); refusing to clear it")
        for p in out.iterdir():
            if p.name != LOCK:
                shutil.rmtree(p) if p.is_dir() else p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / COMMITTED).mkdir(exist_ok=True)
    (out / FAILED).mkdir(exist_ok=True)
    write_json(out / MANIFEST, manifest)


PLAN_KEYS = ("model_id", "store", "n_chips", "bands", "batch_size", "shards", "time")
"""What a resume must match; other manifest keys (``last_run``: engine, shards run, peak memory per worker) may
differ between runs."""


def _plan_of(manifest: dict[str, Any]) -> dict[str, Any]:
    return {k: manifest.get(k) for k in PLAN_KEYS}


def committed(out: Path, shard: Shard) -> dict[str, Any] | None:
    f = out / COMMITTED / f"{shard.name}.json"
    try:
        return json.loads(f.read_text())
    except (OSError, ValueError):
        return None


def status(out: str | Path) -> dict[str, Any]:
    """``{"done": [...], "pending": [...], "failed": {name: error}, ...}`` of a dataset (``embed-status``)."""
    out = Path(out)
    if not is_dataset_dir(out):
        raise FileNotFoundError(f"{out}: not an earthembed embedding dataset (no {MANIFEST})")
    m = json.loads((out / MANIFEST).read_text())
    shards = [Shard(*s) for s in m["shards"]]
    done = [s.name for s in shards if committed(out, s) is not None]
    failed: dict[str, str] = {}
    for s in shards:
        f = out / FAILED / f"{s.name}.json"
        if s.name not in done and f.is_file():
            try:
                failed[s.name] = str(json.loads(f.read_text()).get("error", "?"))
            except ValueError:
                failed[s.name] = "(unreadable failure record)"
    pending = [s.name for s in shards if s.name not in done and s.name not in failed]
    return {"path": str(out), "model_id": m.get("model_id"), "store": m.get("store"), "shards": len(shards),
            "chips": m.get("n_chips"), "done": done, "pending": pending, "failed": failed,
            "complete": bool(m.get("complete"))}


def write_shard(out: Path, shard: Shard, table: pa.Table) -> dict[str, Any]:
    """Write one shard's file (through a temporary file beside it) and then its commit marker; returns the
    marker. A marker already there (a retried shard that had finished) must describe the same bytes."""
    f = out / shard.file
    tmp = out / f"{shard.file}.{os.getpid()}.tmp"
    try:
        pq.write_table(table, tmp, **parquet_options(table.schema))
        os.replace(tmp, f)
    except OSError as e:
        raise write_error(f, e, "the shard is not committed; free space and re-run the same command to resume "
                          "(committed shards are kept)") from e
    finally:
        tmp.unlink(missing_ok=True)
    h = hashlib.sha256(f.read_bytes()).hexdigest()
    marker = {"shard": shard.name, "rows": table.num_rows, "bytes": f.stat().st_size, "sha256": h}
    mf = out / COMMITTED / f"{shard.name}.json"
    try:
        with open(mf, "x") as fh:  # put-if-absent: the first complete write commits
            fh.write(dumps(marker))
    except FileExistsError:
        old = committed(out, shard)
        if old is None or old.get("sha256") != h:
            raise OutputError(f"{mf}: shard {shard.name} was committed with other contents; the dataset is "
                              "inconsistent (two different runs?) - re-run with --overwrite") from None
    (out / FAILED / f"{shard.name}.json").unlink(missing_ok=True)
    return marker


def record_failure(out: Path, shard: Shard, error: BaseException | str) -> None:
    msg = str(error) if isinstance(error, str) else f"{type(error).__name__}: {error}"
    write_json(out / FAILED / f"{shard.name}.json", {"shard": shard.name, "error": msg[:2000]})


def finish(out: Path, manifest: dict[str, Any], shards: Sequence[Shard], table_meta: dict[str, Any]) -> dict[str, Any]:
    """Check every shard is committed and its file intact; mark the dataset complete (manifest + schema)."""
    missing = [s.name for s in shards if committed(out, s) is None]
    if missing:
        st = status(out)
        raise OutputError(
            f"{out}: {len(missing)} of {len(shards)} shards are not done ({len(st['failed'])} failed: "
            f"{next(iter(st['failed'].values()), '')[:200]}); see `earthembed embed-status {out}` and re-run the "
            "same command to retry them")
    rows = 0
    for s in shards:
        mk = committed(out, s) or {}
        f = out / s.file
        if not f.is_file() or f.stat().st_size != mk.get("bytes"):
            raise OutputError(f"{f}: missing or changed since it was committed; re-run with --overwrite")
        rows += int(mk["rows"])
    schema = pq.read_schema(out / shards[0].file)
    pq.write_metadata(schema, out / COMMON_METADATA)
    done = {**manifest, "complete": True, "rows": rows, "files": [s.file for s in shards], "table": table_meta}
    write_json(out / MANIFEST, done)
    return done


def dataset_files(out: str | Path) -> list[Path]:
    """The shard files of a complete dataset, in store order (refuses an incomplete one, naming it)."""
    out = Path(out)
    m = json.loads((out / MANIFEST).read_text())
    if not m.get("complete"):
        st = status(out)
        raise OutputError(f"{out}: embedding dataset is incomplete ({len(st['done'])} of {st['shards']} shards "
                          f"done); finish it by re-running the embed command (`earthembed embed-status {out}`)")
    return [out / f for f in m["files"]]


def shard_table(tables: Iterable[pa.Table], schema_meta: dict[bytes, bytes]) -> pa.Table:
    """One shard's batch tables as one table carrying the GeoParquet and earthembed metadata."""
    t = pa.concat_tables(list(tables))
    return t.replace_schema_metadata({**(t.schema.metadata or {}), **schema_meta})


def table_metadata(meta: dict[str, Any], where: Path) -> dict[bytes, bytes]:
    """Schema metadata of every shard: GeoParquet ``geo`` and earthembed's (no timestamps: deterministic)."""
    from pyproj import CRS

    geo = {"version": "1.1.0", "primary_column": "geometry",
           "columns": {"geometry": {"encoding": "WKB", "geometry_types": [], "crs": CRS.from_epsg(4326).to_json_dict()}}}
    return {b"geo": dumps(geo, indent=None).encode(), META_KEY: dumps(meta, indent=None, where=where).encode()}


def order_check(table: pa.Table, shard: Shard) -> None:
    idx = table.column("idx").to_numpy()
    if len(idx) != len(shard) or (len(idx) and (idx[0] != shard.start or np.any(np.diff(idx) != 1))):
        raise RuntimeError(f"shard {shard.name}: rows are not the chips {shard.start}..{shard.end - 1} in order")
