"""The chip store: N co-registered multimodal chips on disk.

Layout of a store directory::

    STORE/
      earthembed.json     format version, modalities (bands in order), chip size, label schema, statistics,
                          and ``complete``: only a finished ingest sets it, readers refuse a store without it
      arrays.zarr/        Zarr v3 group: one [N, C, H, W] array per modality, masks under ``labels/<name>``
      index.parquet       GeoParquet index, one row per chip (row i <-> array position i)
      _parts/             while ingesting: one Parquet file per committed batch (removed when complete)
      ingest_report.json  items skipped with reasons
      .earthembed.lock    while a writer (ingest, synth, stats) holds the store: its pid, host and command

Writes are atomic per batch: arrays of a batch are written first, then its index part is renamed into
place, so a batch exists only once its part file does. Re-running an interrupted ingest reopens the
store, skips chips already committed, and finishes it. One writer at a time: a second one fails at once
naming the first. On object storage (``s3://``, ``gs://``) the same protocol runs with one PUT per object (a part
is visible whole or not at all) and a lease lock (docs/scale.md says what is not atomic there). ``--overwrite``
replaces only a directory that is provably a store (its ``earthembed.json``
marker says so) and holds nothing else, and never an input of the ingest.

Opening a store (:class:`ChipStore`) runs the cheap checks of :mod:`earthembed.data.store_checks` (metadata,
index/array row counts, a stat of the chunk files of present chips, finite statistics); reads name the store,
array and chip range of a missing or undecodable chunk. ``earthembed verify`` decodes every chunk.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import datetime as _dt
import json
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import shapely
import zarr

from earthembed.data.modalities import Modality, band_indices
from earthembed.data.pixel_stats import sample_stats, valid_pixels
from earthembed.data.store_checks import (
    array_names,
    check_meta,
    chip_id_problems,
    chunk_problem,
    expected_shape,
    open_problems,
    stats_problems,
)
from earthembed.data.store_format import (
    ARRAYS,
    FINGERPRINT_KEYS,
    FORMAT_VERSION,
    INDEX_FILE,
    INDEX_ROW_GROUP_CHIPS,
    LABEL_KINDS,
    LOCK_FILE,
    META_FILE,
    PARTS_DIR,
    REPORT_FILE,
    SPLITS,
    STORE_ENTRIES,
    read_meta,
)
from earthembed.errors import OutputError, StoreError
from earthembed.outputs import (
    STORE_FORMAT,
    WriteError,
    check_output_location,
    is_store_dir,
    os_error_of,
    write_error,
)
from earthembed.storage import (
    ObjectPath,
    file_sizes,
    location,
    output_lock,
    parquet_path,
    quiet_zarrs,
    read_parquet_rows,
    read_parquet_tables,
    remove,
    write_bytes_atomic,
    write_json,
)

# Arrays are read and written through the zarrs (Rust) codec pipeline when it is installed: on 16-chip chunks
# reads are 4-6x faster than with zarr-python's asyncio pipeline (benchmarks/README.md). Its rayon thread pool
# does not survive fork(), so a forked process (e.g. a DataLoader worker) falls back to the default pipeline
# instead of deadlocking.
FAST_PIPELINE = "zarrs.ZarrsCodecPipeline"
DEFAULT_PIPELINE = "zarr.core.codec_pipeline.BatchedCodecPipeline"
_forked = False
_config_lock = threading.Lock()  # zarr.config.set is a global set-and-restore: serialise it across threads


def _mark_forked() -> None:
    global _forked, _config_lock
    _forked = True
    _config_lock = threading.Lock()  # a fork while another thread held it would leave it locked forever


os.register_at_fork(after_in_child=_mark_forked)


def codec_pipeline() -> str | None:
    """The codec pipeline stores open arrays with: zarrs when installed; zarr's own in a forked child (even if
    zarrs was configured globally); ``None`` (zarr's configured one) when zarrs is absent or disabled with
    ``EARTHEMBED_ZARRS=0``."""
    if _forked:
        return DEFAULT_PIPELINE
    if os.environ.get("EARTHEMBED_ZARRS", "1") == "0":
        return None
    try:
        import zarrs  # noqa: F401
    except ImportError:
        return None
    return FAST_PIPELINE


def open_array(group: zarr.Group, name: str, write_empty_chunks: bool = False, atomic: bool = False) -> zarr.Array:
    """``group[name]`` with the array's codec pipeline chosen by :func:`codec_pipeline` (fixed at open).

    ``write_empty_chunks`` opens it with zarr's own pipeline, which (unlike zarrs) honours the setting: used to
    write the rare all-fill chunk so that a missing chunk file always means damage (see :class:`ChunkLayout`).
    ``atomic`` opens it with zarr's own pipeline too, whose local store replaces a file by a rename."""
    pipeline = DEFAULT_PIPELINE if write_empty_chunks or atomic else codec_pipeline()
    if pipeline is None:
        return group[name]
    cfg: dict[str, Any] = {"codec_pipeline.path": pipeline}
    if write_empty_chunks:
        cfg["array.write_empty_chunks"] = True
    with _config_lock, zarr.config.set(cfg), quiet_zarrs():
        return group[name]


def file_chunks(arr: zarr.Array) -> tuple[int, ...]:
    """The shape of what one file (object) of ``arr`` holds: its shard, or its chunk when it is not sharded."""
    return tuple(int(c) for c in (arr.shards or arr.chunks))


@dataclasses.dataclass(frozen=True)
class ChunkLayout:
    """Where the chunk files of an array are, per chunk along the chip axis (one file each in a store: the
    other axes are a single chunk). Built once per array so that checking a chunk costs one ``stat``.

    In a sharded array (``--shard-chips``) the files are the shards: ``chunk_chips`` is then the chips per
    shard (one object each), not the chips per inner chunk."""

    chunk_chips: int
    paths: tuple[tuple[str, str], ...]  # (before, after) the chip-chunk number in each file path

    @classmethod
    def of(cls, store_path: Path, name: str, arr: zarr.Array) -> ChunkLayout:
        """Paths are zarr's own chunk keys (any key encoding), split around a sentinel chunk number once, so
        that a path costs a string concatenation instead of an encoder call (an open stats every chunk)."""
        import itertools

        base, mark = str(store_path / ARRAYS / name), 987654321
        outer = file_chunks(arr)
        paths = []
        for r in itertools.product(*[range(-(-n // c)) for n, c in zip(arr.shape[1:], outer[1:], strict=True)]):
            before, after = os.path.join(base, arr.metadata.encode_chunk_key((mark, *r))).split(str(mark))
            paths.append((before, after))
        return cls(int(outer[0]), tuple(paths))

    def files(self, chunk: int) -> list[str]:
        return [f"{before}{chunk}{after}" for before, after in self.paths]

    def missing(self, chunk: int) -> str | None:
        """The first missing file of chip-axis chunk ``chunk``, or None."""
        return next((f for f in self.files(chunk) if not os.path.exists(f)), None)

    def will_check(self, chunks: int) -> None:
        """A hint that ``chunks`` chunks are about to be checked (used on object storage)."""


LIST_PAGE = 1000
"""Objects one LIST request returns (S3 and GCS both page at 1,000)."""


class HeadChunkLayout(ChunkLayout):
    """:class:`ChunkLayout` of an array being written on object storage: a chunk checked by one HEAD request
    (the writer checks the few chunks of its batch, not the whole listing)."""

    def missing(self, chunk: int) -> str | None:
        return next((f for f in self.files(chunk) if self._absent(f)), None)

    def _absent(self, f: str) -> bool:
        return location(f).head() is None


@dataclasses.dataclass(frozen=True)
class CachedHeadLayout(HeadChunkLayout):
    """:class:`HeadChunkLayout` remembering each chunk's answer (a reader reads a chunk in one or two batches)."""

    seen: dict[int, str | None] = dataclasses.field(default_factory=dict, compare=False)

    def missing(self, chunk: int) -> str | None:
        if chunk not in self.seen:
            self.seen[chunk] = super().missing(chunk)
        return self.seen[chunk]


@dataclasses.dataclass(frozen=True)
class ObjectChunkLayout(CachedHeadLayout):
    """:class:`ChunkLayout` of an array on object storage, checked on demand, never at open: a chunk's objects
    by one HEAD each (answers kept) until as many HEADs were sent as listing the whole array would take requests
    (one per 1,000 objects), then the array listed once and every later chunk looked up in that listing. A reader
    of a few chunks pays a few HEADs, one of every chunk (``verify``, a full pass) at most twice the listing; an
    open of a continent's store lists nothing (its arrays can be millions of chunk objects)."""

    array_url: str = ""
    objects: int = 0  # the array's chunk (or shard) objects when every chip is present
    state: dict[str, Any] = dataclasses.field(default_factory=lambda: {"heads": 0, "present": None}, compare=False)

    @classmethod
    def of_array(cls, store_path: ObjectPath, name: str, arr: zarr.Array) -> ObjectChunkLayout:
        lay = ChunkLayout.of(store_path, name, arr)  # type: ignore[arg-type]  (URLs join like paths)
        n = -(-int(arr.shape[0]) // lay.chunk_chips) * len(lay.paths)
        return cls(lay.chunk_chips, lay.paths, array_url=str(store_path / ARRAYS / name), objects=n)

    @property
    def list_requests(self) -> int:
        """Requests one listing of the whole array takes."""
        return -(-self.objects // LIST_PAGE)

    def will_check(self, chunks: int) -> None:
        """``chunks`` chunks are about to be checked: list the array now when that is fewer requests."""
        if self.state["present"] is None and chunks * len(self.paths) >= self.list_requests:
            self._list()

    def _list(self) -> None:
        self.state["present"] = frozenset(str(p) for p, _ in location(self.array_url).walk_files())

    def _absent(self, f: str) -> bool:
        st = self.state
        if st["present"] is None and st["heads"] >= self.list_requests:
            self._list()
        if st["present"] is not None:
            return f not in st["present"]
        st["heads"] += 1
        return super()._absent(f)


def zarr_target(where: Path | ObjectPath, read_only: bool = True) -> Any:
    """What ``zarr.open_group`` takes for a store's ``arrays.zarr``: the local path, or zarr's ``ObjectStore``."""
    return where.zarr_store(read_only=read_only) if isinstance(where, ObjectPath) else where


_WRITER_OPEN: contextvars.ContextVar[bool] = contextvars.ContextVar("earthembed_writer_open", default=False)
"""Set by :class:`StoreWriter` while it computes statistics of the store it is finishing (and holds the lock of):
:class:`ChipStore` then opens it before ``complete`` is set."""


_SHARD_CHIPS: contextvars.ContextVar[int | None] = contextvars.ContextVar("earthembed_shard_chips", default=None)


@contextlib.contextmanager
def shard_chips_default(shard_chips: int | None) -> Iterator[None]:
    """Stores created inside this block (by any ingester, which passes no ``shard_chips`` of its own) are written
    with Zarr sharding of ``shard_chips`` chips per shard object: how ``ingest ... --shard-chips K`` reaches the
    ingesters' :class:`StoreWriter`."""
    token = _SHARD_CHIPS.set(shard_chips)
    try:
        yield
    finally:
        _SHARD_CHIPS.reset(token)




@dataclasses.dataclass
class ChipRecord:
    """One chip on its way into a store. ``arrays`` holds [C, H, W] per present modality."""

    chip_id: str
    arrays: dict[str, np.ndarray]
    geometry: Any = None  # shapely geometry in EPSG:4326, or None when the source is not georeferenced
    crs: str | None = None
    transform: Sequence[float] | None = None  # affine (a, b, c, d, e, f) of the chip's pixels in ``crs``
    aoi: str = ""
    split: str = ""
    dates: dict[str, str] = dataclasses.field(default_factory=dict)
    labels: dict[str, Any] = dataclasses.field(default_factory=dict)
    masks: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    source: str = ""


def find_store_above(path: str | Path) -> Path | None:
    """The chip store that ``path`` is (or lies inside), if any: outputs must never be written into one."""
    p = Path(os.path.abspath(path))
    for d in (p, *p.parents):
        if d.is_dir() and is_store_dir(d):
            return d
    return None


def _entries(path: Path) -> list[str]:
    """Entries of a directory, ignoring our own lock file."""
    return sorted(e.name for e in path.iterdir() if e.name != LOCK_FILE)


def _foreign_entries(path: Path) -> list[str]:
    """Entries of a store directory that a store does not make (a user's files): never deleted."""
    return [
        n for n in _entries(path)
        if n not in STORE_ENTRIES and not (n.endswith(".tmp") and n[: -len(".tmp")] in STORE_ENTRIES)
    ]


def _compressor() -> Any:
    """Blosc LZ4 with byte shuffle: decodes faster than Zarr's default zstd and compresses multi-byte EO
    rasters better (byte shuffle groups the high bytes of uint16/float32 samples)."""
    from zarr.codecs import BloscCodec

    return BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")


def _fill_value(m: Modality) -> Any:
    if m.nodata is None:
        return 0
    return m.nodata


# blosc compresses at most INT32_MAX bytes minus its header per call, i.e. per Zarr chunk
MAX_CHUNK_BYTES = 2**31 - 1 - 32


def _fitting_chunk_chips(modalities: Mapping[str, Modality], chip_size: int, chunk_chips: int) -> int:
    """``chunk_chips``, lowered until a chunk of the largest modality fits the codec (huge chips get fewer per
    chunk); a chip size whose single chip does not fit is refused before anything is written."""
    if chip_size <= 0:
        raise ValueError(f"chip size must be positive, got {chip_size}")
    out = max(1, chunk_chips)
    for k, m in modalities.items():
        chip_bytes = m.num_bands * chip_size * chip_size * np.dtype(m.dtype).itemsize
        if chip_bytes > MAX_CHUNK_BYTES:
            raise ValueError(
                f"chip size {chip_size} px: one {k!r} chip ({m.num_bands} bands of {np.dtype(m.dtype).name}) is "
                f"{chip_bytes / 2**30:.1f} GiB, more than a compressed chunk can hold (2 GiB); use a smaller chip "
                "size (e.g. --chip-size 256, with --tile to cut large images into chips)"
            )
        out = min(out, max(1, MAX_CHUNK_BYTES // chip_bytes))
    return out


class StoreWriter:
    """Writes chips into a new store, or resumes an interrupted one at ``path``.

    Use as a context manager; :meth:`close` finalises (index, statistics, ``complete`` flag). The writer holds
    the store's lock from construction to close, so a second writer fails at once naming this one.
    ``chunk_chips`` chips share a Zarr chunk: 16 streams ~8x faster and uses ~3x less disk than 1 while random
    reads cost the same (benchmarks/README.md). Chunk files are replaced atomically by Zarr, so a batch that
    shares a chunk with committed chips cannot corrupt them.

    ``inputs``: the paths being ingested; ``path`` may be none of them, contain none and lie inside none.
    ``overwrite`` replaces an existing store (only a directory whose marker proves it is one, and only if it
    holds nothing but store files). Non-finite pixels become the modality's nodata; a modality that is
    entirely nodata in a chip is stored as absent, and a chip with no valid modality is skipped with a reason.

    ``shard_chips`` (default: :func:`shard_chips_default`, i.e. off) writes every array with Zarr sharding: one
    file (object) per ``shard_chips`` chips (rounded up to whole chunks), holding that many chips' chunks and an
    index of them, so a large store on object storage is thousands of objects instead of millions. A shard is
    written whole, so chips are buffered and committed a shard at a time (``batch_size`` no longer applies; the
    buffer holds up to one shard of chips in memory). A shard that already holds committed chips (after an
    interrupted ingest) is rewritten with them by zarr's own pipeline, which replaces the file atomically.
    """

    def __init__(
        self,
        path: str | Path,
        modalities: Sequence[Modality],
        chip_size: int,
        label_schema: dict[str, dict[str, Any]] | None = None,
        source: dict[str, Any] | None = None,
        batch_size: int = 64,
        chunk_chips: int = 16,
        overwrite: bool = False,
        inputs: Sequence[str | Path] = (),
        shard_chips: int | None = None,
    ) -> None:
        self.path: Path | ObjectPath = location(path)
        self.modalities = {m.name: m for m in modalities}
        self.chip_size = int(chip_size)
        self.label_schema = dict(label_schema or {})
        for name, spec in self.label_schema.items():
            if spec.get("kind") not in LABEL_KINDS:
                raise ValueError(f"label {name!r}: kind must be one of {LABEL_KINDS}")
        self.source = dict(source or {})
        self.batch_size = int(batch_size)
        self.chunk_chips = _fitting_chunk_chips(self.modalities, self.chip_size, int(chunk_chips))
        k = _SHARD_CHIPS.get() if shard_chips is None else shard_chips
        if k is not None and int(k) <= 0:
            raise ValueError(f"--shard-chips must be a positive number of chips, got {k}")
        self.shard_chips = None if k is None else -(-int(k) // self.chunk_chips) * self.chunk_chips
        self._buffer: list[tuple[ChipRecord, dict[str, list[float]]]] = []
        self._skipped: list[dict[str, str]] = []
        self._closed = False
        self._lock: Any = None
        self._prepare(overwrite, inputs)

    # -- setup / resume ---------------------------------------------------------------------------
    def _definition(self) -> dict[str, Any]:
        return {
            "modalities": {k: m.to_dict() for k, m in self.modalities.items()},
            "chip_size": self.chip_size,
            "labels": self.label_schema,
            # only when sharded: an unsharded store's metadata stays byte for byte what it was
            **({"shard_chips": self.shard_chips} if self.shard_chips else {}),
        }

    def _array_names(self) -> list[str]:
        return list(self.modalities) + [f"labels/{n}" for n, s in self.label_schema.items() if s["kind"] == "mask"]

    def _prepare(self, overwrite: bool, inputs: Sequence[str | Path]) -> None:
        """Check where we write (before touching anything), take the lock, then create, resume or replace."""
        p = self.path
        check_output_location(p, inputs)  # a URL is compared with inputs in its own bucket only
        if p.exists() and not p.is_dir():
            raise OutputError(f"{p}: exists and is not a directory; a chip store is a directory")
        if p.exists() and _entries(p) and not is_store_dir(p):
            raise StoreError(self._not_a_store(overwrite))
        p.mkdir(parents=True, exist_ok=True)
        self._lock = output_lock(p, p / LOCK_FILE).acquire()
        try:
            self._prepare_locked(overwrite)
        except BaseException:
            self._release()
            raise

    def _not_a_store(self, overwrite: bool) -> str:
        why = " (--overwrite only ever replaces an earthembed store)" if overwrite else ""
        return (
            f"{self.path}: directory exists and is not an earthembed store (no valid {META_FILE} marker); "
            f"refusing to write into it{why}. Choose an empty or new directory"
        )

    def _prepare_locked(self, overwrite: bool) -> None:
        p = self.path
        if _entries(p):
            if not is_store_dir(p):  # checked again under the lock
                raise StoreError(self._not_a_store(overwrite))
            meta = read_meta(p)
            if meta.get("complete") and not overwrite:
                raise StoreError(f"{p}: a complete store already exists here (pass --overwrite / overwrite=True to replace it)")
            if not overwrite:
                self._check_same_ingest(meta)
                self._resume()
                return
            foreign = _foreign_entries(p)
            if foreign:
                shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
                raise StoreError(
                    f"{p}: --overwrite would replace this store, but it also holds {shown}, which are not part of "
                    "a store; move them out first (they are never deleted)"
                )
            self._clear()
        (p / PARTS_DIR).mkdir(exist_ok=True)
        meta = {
            "format": STORE_FORMAT,
            "format_version": FORMAT_VERSION,
            "complete": False,
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "source": self.source,
            **self._definition(),
        }
        write_json(p / META_FILE, meta)  # first: from here on the directory is provably a store
        self._create_arrays()
        self._n = 0
        self._done: set[str] = set()

    def _clear(self) -> None:
        """Remove a store's own entries (the marker last: an interrupted clear is still a store to overwrite)."""
        meta = read_meta(self.path)
        write_json(self.path / META_FILE, {**meta, "complete": False})  # readers refuse it from now on
        for name in _entries(self.path):
            if name != META_FILE:
                remove(self.path / name)
        (self.path / META_FILE).unlink()

    @property
    def remote(self) -> bool:
        """True when the store is written to object storage."""
        return isinstance(self.path, ObjectPath)

    def _group(self, mode: str) -> zarr.Group:
        return zarr.open_group(zarr_target(self.path / ARRAYS, read_only=False), mode=mode)

    def _parts(self) -> list[Path | ObjectPath]:
        """The committed index parts, in order (one LIST on object storage)."""
        names = sorted(n for n in file_sizes(self.path / PARTS_DIR) if n.startswith("part-") and n.endswith(".parquet"))
        return [self.path / PARTS_DIR / n for n in names]

    def _create_arrays(self) -> None:
        root = self._group("w")
        arrays = [(name, m.num_bands, m.dtype, _fill_value(m)) for name, m in self.modalities.items()]
        arrays += [(f"labels/{name}", 1, spec.get("dtype", "int16"), spec.get("nodata", -1))
                   for name, spec in self.label_schema.items() if spec["kind"] == "mask"]
        for name, bands, dtype, fill in arrays:
            chip = (bands, self.chip_size, self.chip_size)
            root.create_array(
                name,
                shape=(0, *chip),
                chunks=(self.chunk_chips, *chip),
                shards=(self.shard_chips, *chip) if self.shard_chips else None,
                dtype=dtype,
                fill_value=fill,
                compressors=_compressor(),
                dimension_names=("chip", "band", "y", "x"),
            )

    def _check_same_ingest(self, meta: dict[str, Any]) -> None:
        """Refuse to resume an interrupted ingest of another definition or source (it would mix datasets)."""
        now = json.loads(json.dumps({**self._definition(), "source": self.source}))
        keys = ("modalities", "chip_size", "labels", "shard_chips")
        stored = {k: meta.get(k) for k in keys}
        stored["source"] = meta.get("source") or {}
        differ = [k for k in keys if stored[k] != now.get(k)]
        if "shard_chips" in differ:
            differ[differ.index("shard_chips")] = (f"--shard-chips ({stored['shard_chips'] or 'none'} there, "
                                                   f"{now.get('shard_chips') or 'none'} now)")
        if stored["source"] != now["source"]:
            keys = sorted(
                k for k in set(stored["source"]) | set(now["source"])
                if stored["source"].get(k) != now["source"].get(k)
            )
            detail = "; ".join(
                f"{k}: {stored['source'].get(k)!r} there, {now['source'].get(k)!r} now" for k in keys[:3]
            )
            differ.append(f"source ({detail}{'; ...' if len(keys) > 3 else ''})")
        if differ:
            raise StoreError(
                f"{self.path}: an interrupted ingest with other settings (different {', '.join(differ)}) is here; "
                "resuming it "
                "would mix datasets. Re-run the original command to finish it, or pass --overwrite / "
                "overwrite=True to start again"
            )

    def _resume(self) -> None:
        (self.path / PARTS_DIR).mkdir(exist_ok=True)
        ids: list[str] = []
        for f in self._parts():
            try:
                ids.extend(read_parquet_tables([f], columns=["chip_id"])[0].column("chip_id").to_pylist())
            except (OSError, pa.ArrowException) as e:
                raise StoreError(
                    f"{f}: committed batch of the interrupted ingest is unreadable ({e}); start again with --overwrite"
                ) from e
        self._n = len(ids)
        self._done = set(ids)
        if not self.remote:
            for f in (self.path / PARTS_DIR).glob("*.tmp"):
                f.unlink()
        if self._n == 0:  # nothing committed: the arrays may not even exist yet (interrupted at creation)
            self._create_arrays()
        else:  # drop what an interrupted batch wrote past the committed chips: the files it made are removed
            root = self._group("r+")
            for name in self._array_names():
                arr = root[name]
                if arr.shape[0] > self._n:
                    # files (chunks or shards) holding no committed chip, removed here: zarr's resize would
                    # remove a sharded array's by their inner chunks' keys, i.e. not all of them
                    lay = ChunkLayout.of(self.path, name, arr)  # type: ignore[arg-type]  (URLs join like paths)
                    for i in range(-(-self._n // lay.chunk_chips), -(-arr.shape[0] // lay.chunk_chips)):
                        for f in lay.files(i):
                            remove(location(f))
                    arr.resize((self._n, *arr.shape[1:]))
        rep = self.path / REPORT_FILE
        if rep.exists():
            with contextlib.suppress(ValueError, OSError):
                self._skipped = json.loads(rep.read_text()).get("skipped", [])

    @property
    def resumed_count(self) -> int:
        return self._n

    def is_done(self, chip_id: str) -> bool:
        """True when ``chip_id`` is committed already (ingesters use it to skip work on resume)."""
        return chip_id in self._done

    # -- writing --------------------------------------------------------------------------------------
    def skip(self, item: str, reason: str) -> None:
        """Record an input that was not ingested, with the reason (written to ingest_report.json)."""
        if not any(s["item"] == item for s in self._skipped):
            self._skipped.append({"item": str(item), "reason": reason})

    def add(self, rec: ChipRecord) -> None:
        """Validate and buffer a chip (committed by :meth:`flush`). Pixels are cast to the modality's dtype
        here, non-finite ones becoming nodata; an entirely-nodata modality is dropped (stored as absent)."""
        if rec.chip_id in self._done:
            return
        if any(r.chip_id == rec.chip_id for r, _ in self._buffer):
            raise StoreError(f"duplicate chip_id {rec.chip_id!r}")
        self._validate(rec)
        where = rec.source or rec.chip_id
        arrays: dict[str, np.ndarray] = {}
        valid: dict[str, list[float]] = {}
        for name, a in rec.arrays.items():
            m = self.modalities[name]
            a = self._cast(a, m, where)
            ok = valid_pixels(a, m.nodata)
            if ok.any():
                arrays[name] = a
                valid[name] = ok.mean(axis=(1, 2)).astype(np.float32).tolist()
        if not arrays:
            self.skip(where, f"{where}: entirely nodata (or non-finite) in every modality; nothing to store")
            return
        self._buffer.append((dataclasses.replace(rec, arrays=arrays), valid))
        if self._flush_due():
            self.flush()

    def _flush_due(self) -> bool:
        """Every ``batch_size`` chips; in a sharded store when a shard is full (each shard written once)."""
        if self.shard_chips:
            return (self._n + len(self._buffer)) % self.shard_chips == 0
        return len(self._buffer) >= self.batch_size

    def _validate(self, rec: ChipRecord) -> None:
        where = rec.source or rec.chip_id
        if not rec.arrays:
            raise StoreError(f"{where}: chip has no modality data")
        for name, a in rec.arrays.items():
            if name not in self.modalities:
                raise StoreError(f"{where}: modality {name!r} is not declared for this store")
            m = self.modalities[name]
            exp = (m.num_bands, self.chip_size, self.chip_size)
            if a.shape != exp:
                raise StoreError(f"{where}: {name} array has shape {a.shape}, expected {exp} ({m.band_names})")
        for name, a in rec.masks.items():
            spec = self.label_schema.get(name)
            if spec is None or spec["kind"] != "mask":
                raise StoreError(f"{where}: mask {name!r} is not declared as a mask label")
            if a.shape != (self.chip_size, self.chip_size):
                raise StoreError(f"{where}: mask {name!r} has shape {a.shape}")
        for key in rec.labels:
            if key not in self.label_schema:
                raise StoreError(f"{where}: label column {key!r} is not declared in the label schema")
        if rec.split not in ("", *SPLITS):
            raise StoreError(f"{where}: split {rec.split!r} is not one of {SPLITS}")

    def _cast(self, a: np.ndarray, m: Modality, where: str) -> np.ndarray:
        """``a`` as ``m.dtype``: NaN/Inf (also float overflow of the cast) become nodata, out-of-range integers
        are an error naming ``where``."""
        target = np.dtype(m.dtype)
        a = np.asarray(a)
        if np.issubdtype(target, np.floating):
            with np.errstate(over="ignore", invalid="ignore"):
                out = a.astype(target, copy=False)
            bad = ~np.isfinite(out)
            if bad.any():
                out = np.where(bad, np.nan if m.nodata is None else m.nodata, out).astype(target)
            return out
        if np.issubdtype(a.dtype, np.floating):
            bad = ~np.isfinite(a)
            if bad.any():
                if m.nodata is None:
                    raise StoreError(f"{where}: {m.name} has non-finite pixels (NaN/Inf) and no nodata value to mark them")
                a = np.where(bad, m.nodata, a)
        info = np.iinfo(target)
        if a.size and (a.min() < info.min or a.max() > info.max):
            raise StoreError(f"{where}: {m.name} values [{a.min()}, {a.max()}] do not fit {m.dtype}")
        return a.astype(target, copy=False)

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """A failed write (disk full, quota, I/O error) is one :class:`WriteError` naming the store and the re-run
        that resumes it; what was committed before stays (a batch commits with its index part, last)."""
        try:
            yield
        except (OSError, RuntimeError) as e:
            err = os_error_of(e)
            if err is None or isinstance(e, WriteError):
                raise
            raise write_error(self.path, err, f"{self._n} chips are committed; free space and re-run the same "
                                             "command to resume") from e

    def flush(self) -> None:
        if not self._buffer:
            return
        with self._writing():
            self._flush()

    def _flush(self) -> None:
        if getattr(self._lock, "lost", False):
            raise StoreError(f"{self.path}: this ingest lost its lock (not renewed in time, another job took it "
                             f"over); {self._n} chips are committed; stop the other job and re-run to resume")
        pending, self._buffer = self._buffer, []
        batch = [r for r, _ in pending]
        b = len(batch)
        start, end = self._n, self._n + b
        root = self._group("r+")
        rows: dict[str, list[Any]] = {
            "idx": list(range(start, end)),
            "chip_id": [r.chip_id for r in batch],
            "geometry": [shapely.to_wkb(r.geometry) if r.geometry is not None else None for r in batch],
            "crs": [r.crs for r in batch],
            # native pixel grid of each chip, so per-chip results can be written back as rasters (maps)
            "transform": [[float(v) for v in list(r.transform)[:6]] if r.transform is not None else None for r in batch],
            "aoi": [r.aoi for r in batch],
            "split": [r.split for r in batch],
            "source": [r.source for r in batch],
        }
        for name, m in self.modalities.items():
            data = np.full((b, m.num_bands, self.chip_size, self.chip_size), _fill_value(m), dtype=m.dtype)
            for i, r in enumerate(batch):
                if name in r.arrays:
                    data[i] = r.arrays[name]
            self._write_rows(root, name, start, data)
            rows[f"has_{name}"] = [name in r.arrays for r in batch]
            rows[f"valid_{name}"] = [v.get(name, [0.0] * m.num_bands) for _, v in pending]
            rows[f"date_{name}"] = [r.dates.get(name) for r in batch]
        for name, spec in self.label_schema.items():
            if spec["kind"] == "mask":
                nod = spec.get("nodata", -1)
                data = np.full((b, 1, self.chip_size, self.chip_size), nod, dtype=spec.get("dtype", "int16"))
                for i, r in enumerate(batch):
                    if name in r.masks:
                        data[i, 0] = r.masks[name]
                self._write_rows(root, f"labels/{name}", start, data)
                rows[f"has_mask_{name}"] = [name in r.masks for r in batch]
            else:
                rows[name] = [r.labels.get(name) for r in batch]
        table = pa.table(rows)
        part = self.path / PARTS_DIR / f"part-{start:09d}.parquet"
        if self.remote:  # one PUT, visible only once whole: the commit point of this batch
            buf = pa.BufferOutputStream()
            pq.write_table(table, buf)
            write_bytes_atomic(part, buf.getvalue().to_pybytes())
        else:
            tmp = part.with_suffix(".tmp")
            pq.write_table(table, tmp)
            os.replace(tmp, part)  # the commit point of this batch
        self._n = end
        self._done.update(rows["chip_id"])
        self._write_report()

    def _write_rows(self, root: zarr.Group, name: str, start: int, data: np.ndarray) -> None:
        """Write ``data`` at chips ``start:`` and make sure every chunk it touches has a file.

        zarrs skips chunks that are all fill value; writing those few through zarr's pipeline (which honours
        ``write_empty_chunks``) keeps the invariant the readers check: a missing chunk file is damage. Shards are
        written by zarr's pipeline, for two reasons: it replaces a shard file atomically, so a kill while a shard
        holding committed chips is rewritten (a resume, ``start`` inside it) cannot damage them; and it lays a
        shard's inner chunks out in chunk order, where zarrs lays them out in the order its threads finish them
        (the same chips gave files of different bytes from run to run), so a store's files are a function of its
        chips."""
        arr = open_array(root, name, atomic=bool(self.shard_chips))
        end = start + len(data)
        if arr.shape[0] < end:
            arr.resize((end, *arr.shape[1:]))
        arr[start:end] = data
        layout = (HeadChunkLayout if self.remote else ChunkLayout).of(self.path, name, arr)  # type: ignore[arg-type]
        cc = layout.chunk_chips
        missing = [i for i in range(start // cc, (end - 1) // cc + 1) if layout.missing(i)]
        if missing:
            full = open_array(root, name, write_empty_chunks=True)
            for i in missing:
                s, e = i * cc, min((i + 1) * cc, end)
                full[s:e] = full[s:e]

    def _write_report(self) -> None:
        write_json(self.path / REPORT_FILE, {"skipped": self._skipped, "n_skipped": len(self._skipped)})

    def close(self, compute_stats: bool = True, stats_max_chips: int = 2000) -> ChipStore:
        """Flush, write the GeoParquet index, set ``complete``, (by default) compute band statistics, unlock."""
        if self._closed:
            return ChipStore(self.path)
        try:
            with self._writing():
                self._finish(compute_stats, stats_max_chips)
        finally:
            self._release()
        self._closed = True
        return ChipStore(self.path)

    def _finish(self, compute_stats: bool, stats_max_chips: int) -> None:
        self.flush()
        if self._n == 0:
            self._write_report()
            raise StoreError(
                f"{self.path}: no chip was ingested"
                + (f"; {len(self._skipped)} items skipped, see {self.path / REPORT_FILE}" if self._skipped else "")
            )
        df = pd.concat([t.to_pandas() for t in read_parquet_tables(self._parts())], ignore_index=True)
        _write_index(df, self.path / INDEX_FILE)
        # arrays may be longer than the committed rows after an interrupted batch: trim them
        root = self._group("r+")
        for name in self._array_names():
            arr = root[name]
            if arr.shape[0] != self._n:
                arr.resize((self._n, *arr.shape[1:]))
        self._write_report()
        meta = read_meta(self.path)
        meta.update({"n_chips": self._n, "n_skipped": len(self._skipped)})
        write_json(self.path / META_FILE, meta)
        if compute_stats:
            if self.remote:  # read back as a store (index, arrays) through the object store; we hold its lock
                token = _WRITER_OPEN.set(True)
                try:
                    meta["stats"] = ChipStore(self.path, check_stats=False).sample_stats(stats_max_chips)
                finally:
                    _WRITER_OPEN.reset(token)
            else:  # the store is not complete yet (no reader opens it): its rows and arrays as written
                root = self._group("r")
                meta["stats"] = sample_stats(
                    self.modalities, {k: df[f"has_{k}"].to_numpy(dtype=bool) for k in self.modalities},
                    {k: (lambda ii, k=k: root[k].get_orthogonal_selection((ii, slice(None), slice(None), slice(None))))
                     for k in self.modalities}, stats_max_chips)
        meta["complete"] = True
        meta["completed"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        write_json(self.path / META_FILE, meta)
        with contextlib.suppress(OSError):
            remove(self.path / PARTS_DIR)

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            # keep what is committed; buffered (validated) chips are committed too so a resume has less to do
            try:
                with contextlib.suppress(Exception):
                    self.flush()
            finally:
                self._release()

    def __del__(self) -> None:  # a writer dropped without close must not keep the store locked
        with contextlib.suppress(Exception):
            self._release()


def _write_index(df: pd.DataFrame, path: Path | ObjectPath) -> None:
    import io

    import geopandas as gpd

    geom = gpd.GeoSeries.from_wkb(df["geometry"], crs="EPSG:4326")
    gdf = gpd.GeoDataFrame(df.drop(columns=["geometry"]), geometry=geom, crs="EPSG:4326")
    if isinstance(path, ObjectPath):  # one upload through pyarrow's filesystem, visible only once whole
        buf = io.BytesIO()
        gdf.to_parquet(buf, index=False, row_group_size=INDEX_ROW_GROUP_CHIPS)
        write_bytes_atomic(path, buf.getvalue())
        return
    tmp = path.with_name(path.name + ".tmp")
    gdf.to_parquet(tmp, index=False, row_group_size=INDEX_ROW_GROUP_CHIPS)
    os.replace(tmp, path)


class ChipStore:
    """Read access to a complete store: random access by index, streaming batches, labels and stats.

    Opening runs the cheap integrity checks (:func:`earthembed.data.store_checks.open_problems`: metadata, index and
    array row counts, chunk files of present chips, finite statistics) and raises :class:`StoreError` naming
    what is wrong; on object storage the chunk objects are checked when read instead (and by ``verify``).
    ``check_stats=False`` skips only the statistics check, for ``earthembed stats`` to fix them.

    ``path`` may be on object storage (``s3://bucket/store``, ``gs://...``: :mod:`earthembed.storage`): the
    metadata and index are read through pyarrow's filesystem, the arrays through zarr's ``ObjectStore`` (the
    zarrs pipeline included). :class:`StoreWriter` writes one there too (``ingest``/``synth --out s3://...``).
    """

    def __init__(self, path: str | Path, check: bool = True, check_stats: bool = True) -> None:
        self.path: Path | ObjectPath = location(path)
        if not self.path.exists():
            raise StoreError(f"{self.path}: store not found")
        if not self.path.is_dir():
            raise StoreError(f"{self.path}: not a chip store (a store is a directory)")
        self.meta = read_meta(self.path)
        if not self.meta.get("complete") and not _WRITER_OPEN.get():
            raise StoreError(
                f"{self.path}: store is incomplete (an ingest was interrupted); re-run the same ingest command to finish it"
            )
        check_meta(self.path, self.meta)
        self.modalities: dict[str, Modality] = {
            k: Modality.from_dict(v) for k, v in self.meta["modalities"].items()
        }
        self.chip_size: int = int(self.meta["chip_size"])
        self.labels: dict[str, dict[str, Any]] = self.meta.get("labels", {})
        self._root: zarr.Group | None = None
        self._arrays: dict[str, zarr.Array] = {}
        self._pid = os.getpid()
        self._index: Any = None
        self._presence: dict[str, np.ndarray] | None = None
        self._layouts: dict[str, ChunkLayout] = {}
        if check:
            problems = (self._object_store_problems(check_stats) if self.remote
                        else open_problems(self, check_stats=check_stats))
            if problems:
                more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
                raise StoreError("; ".join(problems[:3]) + more + f". Run `earthembed verify {self.path}` for a full check")

    def __len__(self) -> int:
        return int(self.meta["n_chips"])

    @property
    def remote(self) -> bool:
        """True for a store on object storage."""
        return isinstance(self.path, ObjectPath)

    def _object_store_problems(self, check_stats: bool) -> list[str]:
        """:func:`earthembed.data.store_checks.open_problems` for a store on object storage: the index read once
        through pyarrow's filesystem; the chunk objects are not listed (a continent's store has millions): a
        missing one is found when a chip it holds is read (:class:`ObjectChunkLayout`, the same message as
        locally) and by ``earthembed verify``."""

        f = self.path / INDEX_FILE
        src, fs = parquet_path(f)
        try:
            ids = pq.read_table(src, columns=["chip_id"], filesystem=fs).column("chip_id")
        except FileNotFoundError:
            return [f"{f}: missing (the store index was deleted)"]
        except (OSError, pa.ArrowException, KeyError) as e:
            denied = f.access_error(e) if isinstance(f, ObjectPath) else None
            if denied is not None:  # the object store refused us: not the index's fault
                raise denied from None
            return [f"{f}: unreadable or without a chip_id column ({e})"]
        out = [] if len(ids) == len(self) else [
            f"{f}: has {len(ids)} rows but {META_FILE} says {len(self)} chips (row i is array position i)"]
        for name in array_names(self):
            try:
                shape = tuple(self.array(name).shape)
            except Exception as e:  # zarr raises KeyError, FileNotFoundError, JSON errors...
                out.append(f"{self.path / ARRAYS / name}: array missing or unreadable ({type(e).__name__}: {e})")
                continue
            if shape != expected_shape(self, name):
                out.append(f"{self.path / ARRAYS / name}: shape {shape}, expected {expected_shape(self, name)}")
        if out:
            return out
        try:
            self.presence()
        except StoreError as e:
            return [str(e)]
        out = chip_id_problems(f, ids)
        return out + (stats_problems(self.path, self.meta) if check_stats else [])

    def __repr__(self) -> str:
        return f"ChipStore({str(self.path)!r}, n={len(self)}, modalities={list(self.modalities)})"

    def __getstate__(self) -> dict[str, Any]:  # picklable for DataLoader workers: reopen lazily
        s = self.__dict__.copy()
        s["_root"] = None
        s["_arrays"] = {}
        s["_layouts"] = {}
        return s

    @property
    def root(self) -> zarr.Group:
        if self._root is None:
            where = self.path / ARRAYS
            self._root = zarr.open_group(zarr_target(where), mode="r")
        return self._root

    def array(self, name: str) -> zarr.Array:
        """The Zarr array of a modality (or ``labels/<mask>``), cached: the lookup costs ~1 ms per read.

        Arrays opened before a fork are reopened in the child (see :func:`codec_pipeline`)."""
        if self._pid != os.getpid():
            self._root, self._arrays, self._pid = None, {}, os.getpid()
        arr = self._arrays.get(name)
        if arr is None:
            with quiet_zarrs():
                arr = self._arrays[name] = open_array(self.root, name)
        return arr

    def layout(self, name: str) -> ChunkLayout:
        """Chunk-file layout of array ``name`` (cached with the array)."""
        lay = self._layouts.get(name)
        if lay is None:
            lay = self._layouts[name] = (ObjectChunkLayout.of_array(self.path, name, self.array(name))  # type: ignore[arg-type]
                                         if self.remote else ChunkLayout.of(self.path, name, self.array(name)))
        return lay

    def chunking(self) -> dict[str, Any]:
        """How the arrays are cut into files, for ``info`` and ``verify``: chips per Zarr chunk, chips per shard
        (None when not sharded: one file per chunk) and files per array when every chip is present."""

        out: dict[str, Any] = {}
        for name in array_names(self):
            arr = self.array(name)
            shard = int(arr.shards[0]) if arr.shards else None
            per_file = shard or int(arr.chunks[0])
            out[name] = {"chunk_chips": int(arr.chunks[0]), "shard_chips": shard,
                         "files": -(-len(self) // per_file) * len(self.layout(name).paths)}
        return out

    @property
    def index(self):  # geopandas.GeoDataFrame
        if self._index is None:
            import geopandas as gpd

            try:
                src, fs = parquet_path(self.path / INDEX_FILE)
                self._index = gpd.read_parquet(src, filesystem=fs)
            except Exception as e:  # any reader failure means a damaged file
                raise StoreError(f"{self.path / INDEX_FILE}: cannot read the store index ({e})") from e
        return self._index

    def presence(self) -> dict[str, np.ndarray]:
        """Per array (modality, or ``labels/<mask>``): which chips hold data, as bool [N].

        A modality is present where the index says so and not every band is entirely nodata (stores written
        before all-nodata images were stored as absent could mark them present)."""
        if self._presence is None:
            try:
                src, fs = parquet_path(self.path / INDEX_FILE)
                schema = pq.read_schema(src, filesystem=fs)
                cols = [c for c in self._presence_columns() if c in schema.names]
                t = pq.read_table(src, columns=cols, filesystem=fs)
            except (OSError, pa.ArrowException) as e:
                raise StoreError(f"{self.path / INDEX_FILE}: cannot read the store index ({e})") from e
            self._presence = self._presence_of(t)
        return self._presence

    def _presence_columns(self) -> list[str]:
        names = [f"has_{k}" for k in self.modalities] + [f"valid_{k}" for k in self.modalities]
        return names + [f"has_mask_{n}" for n, sp in self.labels.items() if sp.get("kind") == "mask"]

    def _presence_of(self, t: pa.Table) -> dict[str, np.ndarray]:
        """:meth:`presence` of the index rows ``t`` (holding the columns of :meth:`_presence_columns` it has)."""
        out: dict[str, np.ndarray] = {}
        for k in self.modalities:
            if f"has_{k}" not in t.column_names:
                raise StoreError(f"{self.path / INDEX_FILE}: no column has_{k} for modality {k!r}")
            has = t.column(f"has_{k}").to_numpy(zero_copy_only=False).astype(bool)
            v = t.column(f"valid_{k}").combine_chunks() if f"valid_{k}" in t.column_names else None
            if v is not None and len(v) and v.null_count == 0:
                lens = pc.list_value_length(v).to_numpy(zero_copy_only=False)
                if lens[0] > 0 and (lens == lens[0]).all():  # one valid fraction per band
                    flat = np.asarray(pc.list_flatten(v).to_numpy(zero_copy_only=False), dtype=float)
                    has &= (flat.reshape(len(v), -1) > 0).any(axis=1)
            out[k] = has
        for n, sp in self.labels.items():
            if sp.get("kind") != "mask":
                continue
            col = f"has_mask_{n}"
            if col not in t.column_names:
                raise StoreError(f"{self.path / INDEX_FILE}: no column {col} for mask label {n!r}")
            out[f"labels/{n}"] = t.column(col).to_numpy(zero_copy_only=False).astype(bool)
        return out

    def _holds_data(self, name: str, start: int, stop: int) -> bool:
        """Whether any of chips ``[start, stop)`` holds data in array ``name`` (its chunk file must then exist)."""
        pres = self.presence().get(name)
        return pres is None or bool(pres[start:stop].any())

    def rows(self, start: int, stop: int) -> StoreRows:
        """Chips ``[start, stop)`` as a store of their own (:class:`StoreRows`): what a shard worker reads, without
        loading anything of the other chips."""
        return StoreRows(self, start, stop)

    def present(self, modality: str) -> np.ndarray:
        """Bool [N]: chips that hold ``modality`` (see :meth:`presence`)."""
        self.modality(modality)
        return self.presence()[modality]

    @property
    def stats(self) -> dict[str, Any]:
        return self.meta.get("stats", {})

    @property
    def fingerprint(self) -> str:
        """16 hex of the sha256 of the store's ingest metadata (:data:`~earthembed.data.store_format.FINGERPRINT_KEYS`):
        a job planned on this store (an embedding dataset) recognises when the store was re-ingested or replaced
        under the same URL and chip count. Read from ``earthembed.json`` only, so a worker checks it for free."""
        import hashlib

        keys = {k: self.meta.get(k) for k in FINGERPRINT_KEYS}
        return hashlib.sha256(json.dumps(keys, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def sample_stats(self, max_chips: int | None = 2000, seed: int = 0) -> dict[str, Any]:
        """Per-band statistics of every non-categorical modality from a random subset of ``max_chips`` chips
        (:func:`~earthembed.data.pixel_stats.sample_stats`); not saved (``earthembed stats`` saves them)."""
        return sample_stats(self.modalities, {k: self.present(k) for k in self.modalities},
                            {k: (lambda ii, k=k: self.read(k, ii)) for k in self.modalities}, max_chips, seed)

    def band_names(self, modality: str) -> list[str]:
        return self.modality(modality).band_names

    def modality(self, name: str) -> Modality:
        try:
            return self.modalities[name]
        except KeyError:
            raise StoreError(f"{self.path}: no modality {name!r} (it has {list(self.modalities)})") from None

    def read(self, modality: str, idx: int | slice | Sequence[int] | np.ndarray, bands: Sequence[str] | None = None) -> np.ndarray:
        """Pixels of ``modality`` for chips ``idx`` as [N, C, H, W] (or [C, H, W] for an int), bands by name.

        A missing or undecodable chunk of a chip the index says holds data is a :class:`StoreError` naming the
        store, array, chunk file and chip range, never fill values or a bare codec traceback."""
        m = self.modality(modality)
        sel = band_indices(m.band_names, bands, what=f"{self.path} modality {modality!r}")
        if isinstance(idx, (int, np.integer)):
            out = self._read_rows(modality, int(idx))
            return out if bands is None or sel == list(range(m.num_bands)) else np.take(out, sel, axis=0)
        if isinstance(idx, slice):
            out = self._read_rows(modality, idx)
        else:
            ii = np.asarray(idx, dtype=np.int64)
            if ii.size == 0:
                out = np.empty((0, m.num_bands, self.chip_size, self.chip_size), dtype=m.dtype)
            elif ii.size > 1 and np.all(np.diff(ii) == 1):
                out = self._read_rows(modality, slice(int(ii[0]), int(ii[-1]) + 1))
            else:
                out = self._read_rows(modality, ii)
        # np.take keeps C order (fancy indexing on axis 1 does not, costing a copy later)
        return out if bands is None or sel == list(range(m.num_bands)) else np.take(out, sel, axis=1)

    def read_mask(self, name: str, idx: int | slice | Sequence[int] | np.ndarray) -> np.ndarray:
        spec = self.labels.get(name)
        if spec is None or spec.get("kind") != "mask":
            raise StoreError(f"{self.path}: no mask label {name!r}")
        if isinstance(idx, (int, np.integer)):
            return self._read_rows(f"labels/{name}", int(idx))[0]
        if isinstance(idx, slice):
            return self._read_rows(f"labels/{name}", idx)[:, 0]
        return self._read_rows(f"labels/{name}", np.asarray(idx, dtype=np.int64))[:, 0]

    def _read_rows(self, name: str, rows: int | slice | np.ndarray) -> np.ndarray:
        """Rows of array ``name``, after checking the chunk files of present chips exist (one stat per
        chunk), with decode failures turned into a StoreError naming the chunk."""
        arr = self.array(name)
        n = arr.shape[0]
        if isinstance(rows, int):
            chips = np.array([rows % n if n else rows])
        elif isinstance(rows, slice):
            chips = np.arange(*rows.indices(n))
        else:
            chips = np.where(rows < 0, rows + n, rows)
        if chips.size and (chips.min() < 0 or chips.max() >= n):
            raise IndexError(f"{self.path}: chip index out of range for {n} chips")
        layout = self.layout(name)
        cc = layout.chunk_chips
        chunks = np.unique(chips // cc)
        for c in chunks:
            if self._holds_data(name, int(c) * cc, (int(c) + 1) * cc):
                lost = layout.missing(int(c))
                if lost:
                    raise StoreError(self._chunk_message(name, int(c), cc, n, f"chunk file {lost} is missing"))
        try:
            if isinstance(rows, (int, slice)):
                return arr[rows]
            return arr.get_orthogonal_selection((rows, slice(None), slice(None), slice(None)))
        except (IndexError, StoreError):
            raise
        except Exception as e:  # codec errors have many types (Blosc, zarrs, OSError)
            for c in chunks:  # find the chunk that fails, to name it
                try:
                    arr[int(c) * cc : min((int(c) + 1) * cc, n)]
                except Exception as ce:
                    f = layout.files(int(c))[0]
                    raise StoreError(
                        self._chunk_message(name, int(c), cc, n, f"chunk file {f} cannot be decoded ({type(ce).__name__}: {ce})")
                    ) from e
            raise StoreError(f"{self.path}: arrays.zarr/{name}: cannot read chips ({type(e).__name__}: {e})") from e

    def _chunk_message(self, name: str, chunk: int, cc: int, n: int, what: str) -> str:

        return chunk_problem(self.path, name, chunk, cc, n, what) + (
            f"; the store is damaged (re-ingest it, or restore the file; `earthembed verify {self.path}` lists "
            "every damaged chunk)"
        )

    def iter_batches(
        self, modalities: Sequence[str] | None = None, batch_size: int = 256, bands: dict[str, Sequence[str]] | None = None,
        start: int = 0, stop: int | None = None,
    ) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
        """Stream contiguous batches: yields (chip indices, {modality: [B, C, H, W]})."""
        mods = list(modalities or self.modalities)
        stop = len(self) if stop is None else min(stop, len(self))
        bands = bands or {}
        for s in range(start, stop, batch_size):
            e = min(s + batch_size, stop)
            yield np.arange(s, e), {m: self.read(m, slice(s, e), bands.get(m)) for m in mods}

    def set_stats(self, stats: dict[str, Any], lock: Any = None) -> None:
        """Save statistics into ``earthembed.json`` (one atomic write: a rename locally, one PUT on object storage);
        the caller holds the store's :meth:`lock` (``lock``: refused if its lease on object storage was lost)."""
        if getattr(lock, "lost", False):
            raise StoreError(f"{self.path}: the statistics were not saved: this job lost the store's lock (not renewed "
                             "in time, another job took it over); run `earthembed stats` again")
        self.meta["stats"] = stats
        write_json(self.path / META_FILE, self.meta)

    def lock(self) -> Any:
        """The store's exclusive writer lock (``with store.lock(): ...``), as held by ingest and ``stats``: flock
        locally, the lease lock (conditional put) on object storage."""
        return output_lock(self.path, self.path / LOCK_FILE)

    def report(self) -> dict[str, Any]:
        f = self.path / REPORT_FILE
        return json.loads(f.read_text()) if f.exists() else {"skipped": [], "n_skipped": 0}

    def info(self) -> dict[str, Any]:
        """Summary for ``earthembed info``: chips, modalities, label columns with class counts, splits, and the time
        series (:func:`earthembed.data.dates.series_info`)."""
        from earthembed.data.dates import series_info

        idx = self.index
        mods = {}
        for k, m in self.modalities.items():
            mods[k] = {
                "product": m.product,
                "kind": m.kind,
                "bands": m.band_names,
                "num_bands": m.num_bands,
                "chip_shape": [m.num_bands, self.chip_size, self.chip_size],
                "dtype": m.dtype,
                "units": m.units,
                "present": int(self.present(k).sum()),
            }
        labels: dict[str, Any] = {}
        for name, spec in self.labels.items():
            entry: dict[str, Any] = {"kind": spec["kind"]}
            if spec["kind"] == "class":
                counts = idx[name].value_counts()
                entry["num_classes"] = len(spec.get("classes") or counts)
                entry["class_counts"] = {str(k): int(v) for k, v in counts.sort_index().items()}
            elif spec["kind"] == "multilabel":
                counts = idx[name].explode().value_counts()
                entry["num_classes"] = len(spec.get("classes") or counts)
                entry["class_counts"] = {str(k): int(v) for k, v in counts.sort_index().items()}
            elif spec["kind"] in ("fraction", "value"):
                col = pd.to_numeric(idx[name], errors="coerce")
                entry.update(min=float(col.min()), max=float(col.max()), mean=float(col.mean()))
            elif spec["kind"] == "mask":
                entry["classes"] = spec.get("classes")
                entry["present"] = int(idx[f"has_mask_{name}"].sum())
            labels[name] = entry
        splits = {str(k) if k else "unassigned": int(v) for k, v in idx["split"].value_counts().items()}
        return {
            "path": str(self.path),
            "format_version": self.meta.get("format_version"),
            "chips": len(self),
            "chip_size": self.chip_size,
            "modalities": mods,
            "labels": labels,
            "splits": splits,
            "aois": {str(k): int(v) for k, v in idx["aoi"].value_counts().items()},
            "georeferenced": int(idx.geometry.notna().sum()),
            "skipped": int(self.meta.get("n_skipped", 0)),
            "has_stats": bool(self.stats),
            "time_series": series_info(self),
        }


def _geo_frame(table: pa.Table) -> Any:  # geopandas.GeoDataFrame
    """A GeoParquet table's rows as :func:`geopandas.read_parquet` makes them (WKB geometry decoded, its CRS)."""
    import geopandas as gpd

    geo = json.loads((table.schema.metadata or {}).get(b"geo", b"{}"))
    col = geo.get("primary_column", "geometry")
    crs = (geo.get("columns") or {}).get(col, {}).get("crs", "OGC:CRS84")
    df = table.drop_columns([col]).to_pandas()
    geom = gpd.GeoSeries.from_wkb(table.column(col).to_numpy(zero_copy_only=False), crs=crs)
    return gpd.GeoDataFrame(df, geometry=geom.rename(col), crs=crs)


class StoreRows(ChipStore):
    """Chips ``[start, stop)`` of a :class:`ChipStore` as a store of their own (positions ``0 .. stop-start-1``):
    what a shard worker reads (:meth:`ChipStore.rows`). Its :attr:`index`, :meth:`presence` (and so the dates and
    presence a :class:`~earthembed.data.dataset.ChipDataset` derives) are of those rows only, read from the row
    groups of ``index.parquet`` that hold them; pixels come from the store's arrays at ``start + position``.
    Nothing is loaded for the store's other chips, so a worker's memory does not grow with the store."""

    def __init__(self, store: ChipStore, start: int, stop: int) -> None:  # no ChipStore.__init__: opened already
        if not 0 <= start <= stop <= len(store):
            raise IndexError(f"{store.path}: chips {start}..{stop} are not within its {len(store)} chips")
        self.__dict__.update(store.__dict__)
        self.parent, self.start, self.stop = store, int(start), int(stop)
        self._index: Any = None
        self._presence: dict[str, np.ndarray] | None = None
        self._table: pa.Table | None = None
        self._layouts = {}

    def __len__(self) -> int:
        return self.stop - self.start

    def __repr__(self) -> str:
        return f"StoreRows({str(self.path)!r}, {self.start}..{self.stop})"

    def _rows(self) -> pa.Table:
        """This view's rows of the index, every column (read once)."""
        if self._table is None:
            f = self.path / INDEX_FILE
            try:
                t, n, _ = read_parquet_rows(f, self.start, self.stop)
            except (OSError, pa.ArrowException, IndexError) as e:
                raise StoreError(f"{f}: cannot read the store index ({e})") from e
            if n != len(self.parent):
                raise StoreError(f"{f}: has {n} rows but {META_FILE} says {len(self.parent)} chips (row i is array "
                                 "position i): the index was edited or truncated")
            self._table = t
        return self._table

    @property
    def index(self):  # geopandas.GeoDataFrame of this view's rows
        if self._index is None:
            self._index = _geo_frame(self._rows())
        return self._index

    def presence(self) -> dict[str, np.ndarray]:
        if self._presence is None:
            self._presence = self._presence_of(self._rows())
        return self._presence

    @property
    def root(self) -> zarr.Group:
        return self.parent.root

    def array(self, name: str) -> zarr.Array:
        return self.parent.array(name)

    def layout(self, name: str) -> ChunkLayout:
        """The store's chunk layout; on object storage a chunk checked by one HEAD (once per view) instead of
        the listing of every chunk of the store."""
        if not self.remote:
            return self.parent.layout(name)
        lay = self._layouts.get(name)
        if lay is None:
            base = ChunkLayout.of(self.path, name, self.array(name))  # type: ignore[arg-type]  (URLs join like paths)
            lay = self._layouts[name] = CachedHeadLayout(base.chunk_chips, base.paths, {})
        return lay

    def _holds_data(self, name: str, start: int, stop: int) -> bool:
        pres = self.presence().get(name)
        return pres is None or bool(pres[max(0, start - self.start) : max(0, stop - self.start)].any())

    def _read_rows(self, name: str, rows: int | slice | np.ndarray) -> np.ndarray:
        n = len(self)
        if isinstance(rows, int):
            r = rows + n if rows < 0 else rows
            if not 0 <= r < n:
                raise IndexError(f"{self}: chip index out of range for {n} chips")
            return super()._read_rows(name, self.start + r)
        if isinstance(rows, slice):
            s, e, step = rows.indices(n)
            if step == 1:
                return super()._read_rows(name, slice(self.start + s, self.start + max(s, e)))
            rows = np.arange(s, e, step)
        r = np.where(rows < 0, rows + n, rows)
        if r.size and (r.min() < 0 or r.max() >= n):
            raise IndexError(f"{self}: chip index out of range for {n} chips")
        return super()._read_rows(name, r + self.start)

    def set_stats(self, stats: dict[str, Any], lock: Any = None) -> None:
        raise StoreError(f"{self}: a view of some chips is read-only")

    def lock(self) -> Any:
        raise StoreError(f"{self}: a view of some chips is read-only")
