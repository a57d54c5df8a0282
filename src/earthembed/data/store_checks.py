"""The integrity checks every store open runs (:func:`open_problems`: metadata, index and array row counts,
chunk files of present chips, finite statistics) and the index checks ``earthembed verify`` adds
(:func:`index_problems`); :mod:`earthembed.data.verify` says what damage each catches. Below the store, which
runs them on open, and above its format.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from earthembed.data.modalities import Modality
from earthembed.data.store_format import ARRAYS, INDEX_FILE, LABEL_KINDS, META_FILE, SPLITS
from earthembed.errors import StoreError
from earthembed.storage import ObjectPath, parquet_path, read_parquet_tables


class CheckedStore(Protocol):
    """What the checks read of the store being opened (a :class:`~earthembed.data.store.ChipStore`): typed by
    shape, so that the store can run the checks on itself without the checks importing it."""

    path: Path | ObjectPath
    meta: dict[str, Any]
    modalities: dict[str, Modality]
    labels: dict[str, dict[str, Any]]
    chip_size: int

    def __len__(self) -> int: ...

    def array(self, name: str) -> Any: ...

    def layout(self, name: str) -> Any: ...

    def presence(self) -> dict[str, np.ndarray]: ...


_META_TYPES: dict[str, type | tuple[type, ...]] = {"modalities": dict, "chip_size": int, "n_chips": int}
STAT_KEYS = ("mean", "std", "p01", "p02", "p50", "p98", "p99")


def check_meta(path: Path, meta: dict[str, Any]) -> None:
    """Raise :class:`StoreError` naming ``earthembed.json`` and the key when the metadata is not usable."""
    f = path / META_FILE
    for key, typ in _META_TYPES.items():
        if key not in meta:
            raise StoreError(f"{f}: missing key {key!r} (the file was edited or truncated)")
        v = meta[key]
        if not isinstance(v, typ) or isinstance(v, bool):
            raise StoreError(f"{f}: {key!r} must be a JSON {'object' if typ is dict else 'integer'}, got {v!r}")
    if meta["chip_size"] <= 0 or meta["n_chips"] < 0:
        raise StoreError(f"{f}: chip_size {meta['chip_size']} / n_chips {meta['n_chips']} out of range")
    if not meta["modalities"]:
        raise StoreError(f"{f}: 'modalities' is empty")
    for k, d in meta["modalities"].items():
        if not isinstance(d, dict):
            raise StoreError(f"{f}: modality {k!r} must be a JSON object, got {d!r}")
        try:
            Modality.from_dict(d)
        except (ValueError, TypeError) as e:
            raise StoreError(f"{f}: modality {k!r} is malformed ({e})") from e
    labels = meta.get("labels", {})
    if not isinstance(labels, dict) or any(
        not isinstance(s, dict) or s.get("kind") not in LABEL_KINDS for s in labels.values()
    ):
        raise StoreError(f"{f}: 'labels' must map each label to an object with a kind in {LABEL_KINDS}")
    if not isinstance(meta.get("stats", {}), dict):
        raise StoreError(f"{f}: 'stats' must be a JSON object")


def stats_problems(path: Path, meta: dict[str, Any]) -> list[str]:
    """Non-finite statistics (one line per modality). ``None`` is allowed only for a band with no valid pixel."""
    out = []
    for mod, st in (meta.get("stats") or {}).items():
        if not isinstance(st, dict):
            out.append(f"{path / META_FILE}: statistics of {mod!r} are malformed")
            continue
        bands = st.get("bands") or []
        counts = st.get("count") or [None] * len(bands)
        bad: list[str] = []
        for key in STAT_KEYS:
            vals = st.get(key)
            if vals is None:
                continue
            for band, v, c in zip(bands, vals, counts, strict=False):
                if v is None and c == 0:
                    continue
                if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                    bad.append(f"{band} {key}={v!r}")
        if bad:
            shown = ", ".join(bad[:4]) + (", ..." if len(bad) > 4 else "")
            out.append(
                f"{path / META_FILE}: statistics of {mod} are not finite ({shown}); "
                f"run `earthembed stats {path}` to recompute them"
            )
    return out


def chunk_problem(store_path: Path, name: str, chunk: int, chunk_chips: int, n: int, what: str) -> str:
    """One line naming the store, array, chip range and what is wrong with one chunk."""
    s, e = chunk * chunk_chips, min((chunk + 1) * chunk_chips, n)
    return f"{store_path}: array arrays.zarr/{name}, chips {s}-{e - 1}: {what}"


def array_names(store: CheckedStore) -> list[str]:
    return list(store.modalities) + [f"labels/{n}" for n, s in store.labels.items() if s.get("kind") == "mask"]


def expected_shape(store: CheckedStore, name: str) -> tuple[int, ...]:
    bands = store.modalities[name].num_bands if name in store.modalities else 1
    return (len(store), bands, store.chip_size, store.chip_size)


def structure_problems(store: CheckedStore) -> list[str]:
    """Index readable with one row per chip; every array present with the expected shape."""
    idx = store.path / INDEX_FILE
    try:
        src, fs = parquet_path(idx)
        rows = pq.read_metadata(src, filesystem=fs).num_rows
    except FileNotFoundError:
        return [f"{idx}: missing (the store index was deleted)"]
    except (OSError, pa.ArrowException) as e:
        return [f"{idx}: unreadable ({e})"]
    out = []
    n = len(store)
    if rows != n:
        out.append(
            f"{idx}: has {rows} rows but {META_FILE} says {n} chips (row i is array position i): the index was "
            "edited or truncated, so labels and pixels would no longer line up"
        )
    for name in array_names(store):
        try:
            arr = store.array(name)
        except Exception as e:  # zarr raises KeyError, FileNotFoundError, JSON errors...
            out.append(f"{store.path / ARRAYS / name}: array missing or unreadable ({type(e).__name__}: {e})")
            continue
        want = expected_shape(store, name)
        if tuple(arr.shape) != want:
            out.append(f"{store.path / ARRAYS / name}: shape {tuple(arr.shape)}, expected {want}")
    return out


def missing_chunks(store: CheckedStore, name: str) -> list[str]:
    """Chunks holding a chip marked present whose file is missing (one ``stat`` per such chunk; on object
    storage a HEAD each, or one listing of the array when that is fewer requests)."""
    layout = store.layout(name)
    pres = store.presence()[name]
    cc = layout.chunk_chips
    if not len(pres):
        return []
    per_chunk = np.add.reduceat(pres.astype(np.int64), np.arange(0, len(pres), cc))
    out = []
    held = np.flatnonzero(per_chunk).tolist()
    layout.will_check(len(held))
    for c in held:
        lost = layout.missing(c)
        if lost:
            out.append(chunk_problem(store.path, name, c, cc, len(pres),
                                     f"chunk file {lost} is missing ({per_chunk[c]} of these chips hold data per the index)"))
    return out


def content_problems(store: CheckedStore, check_stats: bool) -> list[str]:
    """Chunk files of present chips exist; statistics are finite. Assumes the structure is sound."""
    try:
        store.presence()
    except StoreError as e:
        return [str(e)]
    f = store.path / INDEX_FILE
    try:
        out = chip_id_problems(f, read_parquet_tables([f], columns=["chip_id"])[0].column("chip_id"))
    except (KeyError, pa.ArrowException) as e:
        out = [f"{f}: no readable chip_id column ({e})"]
    for name in array_names(store):
        out += missing_chunks(store, name)
    if check_stats:
        out += stats_problems(store.path, store.meta)
    return out


def open_problems(store: CheckedStore, check_stats: bool = True) -> list[str]:
    """The cheap checks run by every :class:`ChipStore` open; no chunk data is read."""
    # the content checks assume rows and array positions line up
    return structure_problems(store) or content_problems(store, check_stats)


def chip_id_problems(f: Path, ids_column: Any) -> list[str]:
    """Missing or repeated chip ids: every reader keys chips, labels and embedding rows by them, so a repeated id
    would silently join the wrong rows."""
    import pyarrow.compute as pc

    # Arrow compute, not pandas: a country's index holds tens of millions of ids, and Python strings of them all
    # would cost gigabytes for a check that finds nothing on a good store
    out = []
    nulls = ids_column.null_count
    if nulls:
        out.append(f"{f}: {nulls} rows have no chip_id")
    ids = ids_column.drop_null()
    if pc.count_distinct(ids).as_py() < len(ids):
        counts = pc.value_counts(ids)
        dup = counts.field("values").filter(pc.greater(counts.field("counts"), 1)).to_pylist()
        out.append(f"{f}: duplicate chip ids {dup[:5]}{' ...' if len(dup) > 5 else ''} (each chip needs its "
                   "own id; the index was edited or merged)")
    return out


def index_problems(store: CheckedStore) -> list[str]:
    f = store.path / INDEX_FILE
    try:
        t = read_parquet_tables([f])[0]
    except (OSError, pa.ArrowException) as e:
        return [f"{f}: unreadable ({e})"]
    out = []
    if "chip_id" not in t.column_names:
        return [f"{f}: no chip_id column"]
    out += chip_id_problems(f, t.column("chip_id"))
    if "idx" in t.column_names:
        idx = t.column("idx").to_numpy(zero_copy_only=False)
        if not np.array_equal(idx, np.arange(len(idx))):
            out.append(f"{f}: column idx is not 0..{len(idx) - 1} in order (rows were reordered or edited)")
    if "split" in t.column_names:
        bad = sorted(set(t.column("split").to_pandas().fillna("").astype(str)) - {"", *SPLITS})
        if bad:
            out.append(f"{f}: unknown split values {bad} (allowed: {list(SPLITS)} or empty)")
    return out
