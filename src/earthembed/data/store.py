"""The chip store: N co-registered multimodal chips on disk.

Layout of a store directory::

    STORE/
      earthembed.json     format version, modalities (bands in order), chip size, label schema, statistics,
                          and ``complete``: only a finished ingest sets it, readers refuse a store without it
      arrays.zarr/        Zarr v3 group: one [N, C, H, W] array per modality, masks under ``labels/<name>``
      index.parquet       GeoParquet index, one row per chip (row i <-> array position i)
      _parts/             while ingesting: one Parquet file per committed batch (removed when complete)
      ingest_report.json  items skipped with reasons

Writes are atomic per batch: arrays of a batch are written first, then its index part is renamed into
place, so a batch exists only once its part file does. Re-running an interrupted ingest reopens the
store, skips chips already committed, and finishes it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
import os
import shutil
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import shapely
import zarr

from earthembed.data.modalities import Modality, band_indices
from earthembed.errors import StoreError

FORMAT_VERSION = "1.0"

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


def open_array(group: zarr.Group, name: str) -> zarr.Array:
    """``group[name]`` with the array's codec pipeline chosen by :func:`codec_pipeline` (fixed at open)."""
    pipeline = codec_pipeline()
    if pipeline is None:
        return group[name]
    with _config_lock, zarr.config.set({"codec_pipeline.path": pipeline}):
        return group[name]


META_FILE = "earthembed.json"
ARRAYS = "arrays.zarr"
INDEX_FILE = "index.parquet"
PARTS_DIR = "_parts"
REPORT_FILE = "ingest_report.json"
SPLITS = ("train", "val", "test")
LABEL_KINDS = ("class", "multilabel", "fraction", "mask", "value")


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


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _read_meta(path: Path) -> dict[str, Any]:
    f = path / META_FILE
    if not f.exists():
        raise StoreError(f"{path}: not an earthembed chip store (no {META_FILE})")
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise StoreError(f"{f}: corrupt store metadata ({e})") from e


def _compressor() -> Any:
    """Blosc LZ4 with byte shuffle: decodes faster than Zarr's default zstd and compresses multi-byte EO
    rasters better (byte shuffle groups the high bytes of uint16/float32 samples)."""
    from zarr.codecs import BloscCodec

    return BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")


def _fill_value(m: Modality) -> Any:
    if m.nodata is None:
        return 0
    return m.nodata


def _validity(a: np.ndarray, m: Modality) -> np.ndarray:
    """Boolean [C, H, W]: pixel is neither NaN nor the modality's nodata value."""
    valid = np.ones(a.shape, dtype=bool)
    if np.issubdtype(a.dtype, np.floating):
        valid &= ~np.isnan(a)
    if m.nodata is not None and not (isinstance(m.nodata, float) and np.isnan(m.nodata)):
        valid &= a != m.nodata
    return valid


class StoreWriter:
    """Writes chips into a new store, or resumes an interrupted one at ``path``.

    Use as a context manager; :meth:`close` finalises (index, statistics, ``complete`` flag).
    ``chunk_chips`` chips share a Zarr chunk: 16 streams ~8x faster and uses ~3x less disk than 1 while random
    reads cost the same (benchmarks/README.md). Chunk files are replaced atomically by Zarr, so a batch that
    shares a chunk with committed chips cannot corrupt them.
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
    ) -> None:
        self.path = Path(path)
        self.modalities = {m.name: m for m in modalities}
        self.chip_size = int(chip_size)
        self.label_schema = dict(label_schema or {})
        for name, spec in self.label_schema.items():
            if spec.get("kind") not in LABEL_KINDS:
                raise ValueError(f"label {name!r}: kind must be one of {LABEL_KINDS}")
        self.source = dict(source or {})
        self.batch_size = int(batch_size)
        self.chunk_chips = int(chunk_chips)
        self._buffer: list[ChipRecord] = []
        self._skipped: list[dict[str, str]] = []
        self._closed = False
        self._prepare(overwrite)

    # -- setup / resume ---------------------------------------------------------------------------
    def _definition(self) -> dict[str, Any]:
        return {
            "modalities": {k: m.to_dict() for k, m in self.modalities.items()},
            "chip_size": self.chip_size,
            "labels": self.label_schema,
        }

    def _prepare(self, overwrite: bool) -> None:
        p = self.path
        if p.exists() and any(p.iterdir()):
            if (p / META_FILE).exists():
                meta = _read_meta(p)
                if meta.get("complete") and not overwrite:
                    raise StoreError(f"{p}: a complete store already exists here (pass --overwrite / overwrite=True to replace it)")
                if not overwrite:
                    self._check_same_ingest(meta)
                    self._resume()
                    return
                shutil.rmtree(p)
            elif overwrite:
                shutil.rmtree(p)
            else:
                raise StoreError(f"{p}: directory exists and is not an earthembed store; refusing to write into it")
        p.mkdir(parents=True, exist_ok=True)
        (p / PARTS_DIR).mkdir()
        root = zarr.open_group(p / ARRAYS, mode="w")
        for name, m in self.modalities.items():
            root.create_array(
                name,
                shape=(0, m.num_bands, self.chip_size, self.chip_size),
                chunks=(self.chunk_chips, m.num_bands, self.chip_size, self.chip_size),
                dtype=m.dtype,
                fill_value=_fill_value(m),
                compressors=_compressor(),
                dimension_names=("chip", "band", "y", "x"),
            )
        for name, spec in self.label_schema.items():
            if spec["kind"] == "mask":
                root.create_array(
                    f"labels/{name}",
                    shape=(0, 1, self.chip_size, self.chip_size),
                    chunks=(self.chunk_chips, 1, self.chip_size, self.chip_size),
                    dtype=spec.get("dtype", "int16"),
                    fill_value=spec.get("nodata", -1),
                    compressors=_compressor(),
                    dimension_names=("chip", "band", "y", "x"),
                )
        meta = {
            "format": "earthembed-chip-store",
            "format_version": FORMAT_VERSION,
            "complete": False,
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "source": self.source,
            **self._definition(),
        }
        _atomic_write_text(p / META_FILE, json.dumps(meta, indent=2))
        self._n = 0
        self._done: set[str] = set()

    def _check_same_ingest(self, meta: dict[str, Any]) -> None:
        """Refuse to resume an interrupted ingest of another definition or source (it would mix datasets)."""
        now = json.loads(json.dumps({**self._definition(), "source": self.source}))
        stored = {k: meta.get(k) for k in ("modalities", "chip_size", "labels")}
        stored["source"] = meta.get("source") or {}
        differ = [k for k in ("modalities", "chip_size", "labels") if stored[k] != now[k]]
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
        parts = sorted((self.path / PARTS_DIR).glob("part-*.parquet"))
        ids: list[str] = []
        for f in parts:
            ids.extend(pq.read_table(f, columns=["chip_id"]).column("chip_id").to_pylist())
        self._n = len(ids)
        self._done = set(ids)
        for f in (self.path / PARTS_DIR).glob("*.tmp"):
            f.unlink()
        rep = self.path / REPORT_FILE
        if rep.exists():
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
        if rec.chip_id in self._done or any(r.chip_id == rec.chip_id for r in self._buffer):
            if rec.chip_id in self._done:
                return
            raise StoreError(f"duplicate chip_id {rec.chip_id!r}")
        self._validate(rec)
        self._buffer.append(rec)
        if len(self._buffer) >= self.batch_size:
            self.flush()

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
        target = np.dtype(m.dtype)
        if np.issubdtype(target, np.integer):
            a = np.asarray(a)
            if np.issubdtype(a.dtype, np.floating):
                bad = np.isnan(a)
                if bad.any():
                    if m.nodata is None:
                        raise StoreError(f"{where}: {m.name} has NaN pixels and no nodata value to mark them")
                    a = np.where(bad, m.nodata, a)
            info = np.iinfo(target)
            if a.size and (a.min() < info.min or a.max() > info.max):
                raise StoreError(
                    f"{where}: {m.name} values [{a.min()}, {a.max()}] do not fit {m.dtype}"
                )
        return np.asarray(a).astype(target, copy=False)

    def flush(self) -> None:
        if not self._buffer:
            return
        batch, self._buffer = self._buffer, []
        b = len(batch)
        start, end = self._n, self._n + b
        root = zarr.open_group(self.path / ARRAYS, mode="r+")
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
            arr = open_array(root, name)
            data = np.full((b, m.num_bands, self.chip_size, self.chip_size), _fill_value(m), dtype=m.dtype)
            has, valid = [], []
            for i, r in enumerate(batch):
                if name in r.arrays:
                    a = self._cast(r.arrays[name], m, r.source or r.chip_id)
                    data[i] = a
                    has.append(True)
                    valid.append(_validity(a, m).mean(axis=(1, 2)).astype(np.float32).tolist())
                else:
                    has.append(False)
                    valid.append([0.0] * m.num_bands)
            if arr.shape[0] < end:
                arr.resize((end, *arr.shape[1:]))
            arr[start:end] = data
            rows[f"has_{name}"] = has
            rows[f"valid_{name}"] = valid
            rows[f"date_{name}"] = [r.dates.get(name) for r in batch]
        for name, spec in self.label_schema.items():
            if spec["kind"] == "mask":
                arr = open_array(root, f"labels/{name}")
                nod = spec.get("nodata", -1)
                data = np.full((b, 1, self.chip_size, self.chip_size), nod, dtype=arr.dtype)
                for i, r in enumerate(batch):
                    if name in r.masks:
                        data[i, 0] = r.masks[name]
                if arr.shape[0] < end:
                    arr.resize((end, *arr.shape[1:]))
                arr[start:end] = data
                rows[f"has_mask_{name}"] = [name in r.masks for r in batch]
            else:
                rows[name] = [r.labels.get(name) for r in batch]
        table = pa.table(rows)
        part = self.path / PARTS_DIR / f"part-{start:09d}.parquet"
        tmp = part.with_suffix(".tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, part)  # the commit point of this batch
        self._n = end
        self._done.update(rows["chip_id"])
        self._write_report()

    def _write_report(self) -> None:
        _atomic_write_text(
            self.path / REPORT_FILE, json.dumps({"skipped": self._skipped, "n_skipped": len(self._skipped)}, indent=2)
        )

    def close(self, compute_stats: bool = True, stats_max_chips: int = 2000) -> ChipStore:
        """Flush, write the GeoParquet index, set ``complete`` and (by default) compute band statistics."""
        if self._closed:
            return ChipStore(self.path)
        self.flush()
        if self._n == 0:
            self._write_report()
            raise StoreError(
                f"{self.path}: no chip was ingested"
                + (f"; {len(self._skipped)} items skipped, see {self.path / REPORT_FILE}" if self._skipped else "")
            )
        parts = sorted((self.path / PARTS_DIR).glob("part-*.parquet"))
        df = pd.concat([pq.read_table(f).to_pandas() for f in parts], ignore_index=True)
        _write_index(df, self.path / INDEX_FILE)
        # arrays may be longer than the committed rows after an interrupted batch: trim them
        root = zarr.open_group(self.path / ARRAYS, mode="r+")
        for name in list(self.modalities) + [f"labels/{n}" for n, s in self.label_schema.items() if s["kind"] == "mask"]:
            arr = root[name]
            if arr.shape[0] != self._n:
                arr.resize((self._n, *arr.shape[1:]))
        self._write_report()
        meta = _read_meta(self.path)
        meta.update({"n_chips": self._n, "n_skipped": len(self._skipped)})
        _atomic_write_text(self.path / META_FILE, json.dumps(meta, indent=2))
        if compute_stats:
            from earthembed.data.stats import compute_stats

            meta["stats"] = compute_stats(self.path, max_chips=stats_max_chips, _allow_incomplete=True)
        meta["complete"] = True
        meta["completed"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        _atomic_write_text(self.path / META_FILE, json.dumps(meta, indent=2))
        shutil.rmtree(self.path / PARTS_DIR, ignore_errors=True)
        self._closed = True
        return ChipStore(self.path)

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            # keep what is committed; buffered (validated) chips are committed too so a resume has less to do
            with contextlib.suppress(Exception):
                self.flush()


def _write_index(df: pd.DataFrame, path: Path) -> None:
    import geopandas as gpd

    geom = gpd.GeoSeries.from_wkb(df["geometry"], crs="EPSG:4326")
    gdf = gpd.GeoDataFrame(df.drop(columns=["geometry"]), geometry=geom, crs="EPSG:4326")
    tmp = path.with_name(path.name + ".tmp")
    gdf.to_parquet(tmp, index=False)
    os.replace(tmp, path)


class ChipStore:
    """Read access to a complete store: random access by index, streaming batches, labels and stats."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise StoreError(f"{self.path}: store not found")
        self.meta = _read_meta(self.path)
        if not self.meta.get("complete"):
            raise StoreError(
                f"{self.path}: store is incomplete (an ingest was interrupted); re-run the same ingest command to finish it"
            )
        self.modalities: dict[str, Modality] = {
            k: Modality.from_dict(v) for k, v in self.meta["modalities"].items()
        }
        self.chip_size: int = int(self.meta["chip_size"])
        self.labels: dict[str, dict[str, Any]] = self.meta.get("labels", {})
        self._root: zarr.Group | None = None
        self._arrays: dict[str, zarr.Array] = {}
        self._pid = os.getpid()
        self._index: Any = None

    def __len__(self) -> int:
        return int(self.meta["n_chips"])

    def __repr__(self) -> str:
        return f"ChipStore({str(self.path)!r}, n={len(self)}, modalities={list(self.modalities)})"

    def __getstate__(self) -> dict[str, Any]:  # picklable for DataLoader workers: reopen lazily
        s = self.__dict__.copy()
        s["_root"] = None
        s["_arrays"] = {}
        return s

    @property
    def root(self) -> zarr.Group:
        if self._root is None:
            self._root = zarr.open_group(self.path / ARRAYS, mode="r")
        return self._root

    def array(self, name: str) -> zarr.Array:
        """The Zarr array of a modality (or ``labels/<mask>``), cached: the lookup costs ~1 ms per read.

        Arrays opened before a fork are reopened in the child (see :func:`codec_pipeline`)."""
        if self._pid != os.getpid():
            self._root, self._arrays, self._pid = None, {}, os.getpid()
        arr = self._arrays.get(name)
        if arr is None:
            arr = self._arrays[name] = open_array(self.root, name)
        return arr

    @property
    def index(self):  # geopandas.GeoDataFrame
        if self._index is None:
            import geopandas as gpd

            self._index = gpd.read_parquet(self.path / INDEX_FILE)
        return self._index

    @property
    def stats(self) -> dict[str, Any]:
        return self.meta.get("stats", {})

    def band_names(self, modality: str) -> list[str]:
        return self.modality(modality).band_names

    def modality(self, name: str) -> Modality:
        try:
            return self.modalities[name]
        except KeyError:
            raise StoreError(f"{self.path}: no modality {name!r} (it has {list(self.modalities)})") from None

    def read(self, modality: str, idx: int | slice | Sequence[int] | np.ndarray, bands: Sequence[str] | None = None) -> np.ndarray:
        """Pixels of ``modality`` for chips ``idx`` as [N, C, H, W] (or [C, H, W] for an int), bands by name."""
        m = self.modality(modality)
        sel = band_indices(m.band_names, bands, what=f"{self.path} modality {modality!r}")
        arr = self.array(modality)
        if isinstance(idx, (int, np.integer)):
            out = arr[int(idx)]
            return out if bands is None or sel == list(range(m.num_bands)) else np.take(out, sel, axis=0)
        if isinstance(idx, slice):
            out = arr[idx]
        else:
            ii = np.asarray(idx, dtype=np.int64)
            if ii.size == 0:
                out = np.empty((0, m.num_bands, self.chip_size, self.chip_size), dtype=m.dtype)
            elif ii.size > 1 and np.all(np.diff(ii) == 1):
                out = arr[int(ii[0]) : int(ii[-1]) + 1]
            else:
                out = arr.get_orthogonal_selection((ii, slice(None), slice(None), slice(None)))
        # np.take keeps C order (fancy indexing on axis 1 does not, costing a copy later)
        return out if bands is None or sel == list(range(m.num_bands)) else np.take(out, sel, axis=1)

    def read_mask(self, name: str, idx: int | slice | Sequence[int] | np.ndarray) -> np.ndarray:
        spec = self.labels.get(name)
        if spec is None or spec.get("kind") != "mask":
            raise StoreError(f"{self.path}: no mask label {name!r}")
        arr = self.array(f"labels/{name}")
        if isinstance(idx, (int, np.integer)):
            return arr[int(idx), 0]
        if isinstance(idx, slice):
            return arr[idx][:, 0]
        return arr.get_orthogonal_selection((np.asarray(idx, dtype=np.int64), slice(None), slice(None), slice(None)))[:, 0]

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

    def set_stats(self, stats: dict[str, Any]) -> None:
        self.meta["stats"] = stats
        _atomic_write_text(self.path / META_FILE, json.dumps(self.meta, indent=2))

    def report(self) -> dict[str, Any]:
        f = self.path / REPORT_FILE
        return json.loads(f.read_text()) if f.exists() else {"skipped": [], "n_skipped": 0}

    def info(self) -> dict[str, Any]:
        """Summary for ``earthembed info``: chips, modalities, label columns with class counts, splits."""
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
                "present": int(idx[f"has_{k}"].sum()),
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
        }
