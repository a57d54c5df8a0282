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

* Per-date embeddings (``embed --dates``) are partitioned by year, hive-style: a shard's rows are written as
  ``year=<YYYY>/part-<start>-<end>.parquet``, one file per year of their ``date`` (rows without a date under
  ``year=__HIVE_DEFAULT_PARTITION__``), so any reader can prune by year (``pyarrow.dataset`` with
  ``partitioning="hive"``, :func:`earthembed.embed.io.read_table` ``years=``); the shard's marker lists its
  files, the manifest says ``partitioning`` and lists every file (shard order, years within a shard).
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
import posixpath
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from earthembed.embed.table_format import META_KEY, parquet_options
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
PARTITIONING = {"flavor": "hive", "field": "year", "of": "date"}
"""How a per-date dataset is partitioned (recorded in its manifest): directories ``year=<YYYY>`` of the ``date``
column's year."""
NULL_YEAR = "__HIVE_DEFAULT_PARTITION__"


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
    return (n in (MANIFEST, COMMON_METADATA, COMMITTED, FAILED, LOCK, f"{MANIFEST}.tmp") or n.startswith("year=")
            or (n.startswith("part-") and (n.endswith(".parquet") or n.endswith(".tmp"))))


def dataset_lock(out: str | Path | ObjectPath) -> Any:
    """The lock one job holds on a dataset directory while it writes (a second job is refused, naming it)."""
    out = location(out)
    return output_lock(out, out / LOCK)


def prepare_dataset(out: Dir, manifest: dict[str, Any], overwrite: bool) -> None:
    """Create ``out`` or check it may be resumed (same plan) / replaced (``overwrite``, our files only)."""
    from earthembed.outputs import protected_dir_above  # a store or a run above: on the bucket for a URL

    inside = protected_dir_above(out)
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
        was, now = old.get("store_fingerprint"), manifest.get("store_fingerprint")
        replaced = bool(was and now and was != now)  # datasets from before fingerprints: the plan decides
        if _plan_of(old) == _plan_of(manifest) and not replaced:
            return  # resume
        if not overwrite and replaced and _plan_of(old) == _plan_of(manifest):
            raise OutputError(f"{out}: its committed shards embed {manifest.get('store')} as it was when this dataset "
                              f"was started; the store was re-ingested or replaced since (store fingerprint {was} -> "
                              f"{now}); pass --overwrite to embed it again from the start, or choose another --out")
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


def year_partitions(shard: Shard, table: pa.Table) -> list[tuple[str, pa.Table]]:
    """A per-date shard's rows by the year of their ``date``: ``[("year=YYYY/part-....parquet", rows), ...]``, years
    ascending (rows without a date last), rows in their order within a year."""
    years = pc.fill_null(pc.year(table.column("date")), -1).to_numpy(zero_copy_only=False)
    out = []
    for y in sorted(set(years.tolist()), key=lambda v: (v < 0, v)):
        key = NULL_YEAR if y < 0 else str(y)
        out.append((f"year={key}/{shard.file}", table.filter(pa.array(years == y))))
    return out


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, **parquet_options(table.schema))
    return sink.getvalue().to_pybytes()


def write_shard(out: Dir, shard: Shard, table: pa.Table, partition: bool = False) -> dict[str, Any]:
    """Write one shard's file (locally through a temporary file beside it, on object storage as one object)
    and then its commit marker (put-if-absent); returns the marker. A shard that is already committed (a
    retried shard that had finished) is not written again: its marker must describe the same bytes.

    ``partition`` (per-date rows with a ``date`` column): one file per year (:func:`year_partitions`), listed in
    the marker's ``files``; the marker's sha256 then hashes the files' names and hashes."""
    mf = out / COMMITTED / f"{shard.name}.json"
    parts = year_partitions(shard, table) if partition and table.num_rows else [(shard.file, table)]
    blobs = [(name, _parquet_bytes(t), t.num_rows) for name, t in parts]
    files = {name: {"rows": n, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
             for name, data, n in blobs}
    h = (files[shard.file]["sha256"] if list(files) == [shard.file] else
         hashlib.sha256("".join(f"{k} {v['sha256']}\n" for k, v in files.items()).encode()).hexdigest())
    old = committed(out, shard)
    if old is not None:  # never rewrite a committed shard
        return _same_as_committed(mf, old, h, shard)
    for name, data, _ in blobs:
        f = out / name
        try:
            f.parent.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(f, data)
        except OSError as e:
            raise write_error(f, e, "the shard is not committed; free space and re-run the same command to resume "
                              "(committed shards are kept)") from e
    marker = {"shard": shard.name, "rows": table.num_rows, "bytes": sum(len(d) for _, d, _ in blobs), "sha256": h,
              **({"files": files} if list(files) != [shard.file] else {})}
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
    listed: dict[str, dict[str, int]] = {}  # one LIST per directory (the top, and each year=YYYY)
    rows, files = 0, []
    for s in shards:
        mk = committed(out, s) or {}
        for name, f in (mk.get("files") or {s.file: mk}).items():
            d, base = posixpath.split(name)
            if d not in listed:
                listed[d] = file_sizes(out / d if d else out)
            if listed[d].get(base) != f.get("bytes"):
                raise OutputError(f"{out / name}: missing or changed since it was committed; re-run with --overwrite")
            files.append(name)
        rows += int(mk["rows"])
    sink = pa.BufferOutputStream()
    pq.write_metadata(read_parquet_schema(out / files[0]), sink)
    write_bytes_atomic(out / COMMON_METADATA, sink.getvalue().to_pybytes())
    # every file by year: a per-date dataset begun before partitioning (flat shards) and resumed is read whole only
    part = {"partitioning": PARTITIONING} if all(f.startswith("year=") for f in files) else {}
    done = {**manifest, "complete": True, "rows": rows, "files": files, **part, "table": table_meta}
    write_json(out / MANIFEST, done)
    return done


def dataset_files(out: str | Path | ObjectPath, years: Iterable[int] | None = None) -> list[Path] | list[ObjectPath]:
    """The shard files of a complete dataset, in store order (refuses an incomplete one, naming it).

    ``years``: only the files of those years of a per-date dataset partitioned by year (the others are not read);
    a dataset that is not partitioned is refused, naming it."""
    out = location(out)
    m = json.loads((out / MANIFEST).read_text())
    if not m.get("complete"):
        st = status(out)
        raise OutputError(f"{out}: embedding dataset is incomplete ({len(st['done'])} of {st['shards']} shards "
                          f"done); finish it by re-running the embed command (`earthembed embed-status {out}`)")
    names = m["files"]
    if years is not None:
        if m.get("partitioning") != PARTITIONING:
            raise ValueError(f"{out}: embedding dataset is not partitioned by year (only per-date datasets, "
                             "`embed --dates ... --out DIR/`, are); read it whole")
        keep = {f"year={int(y)}" for y in years}
        names = [f for f in names if f.split("/", 1)[0] in keep]
    return [out / f for f in names]  # type: ignore[return-value]


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
