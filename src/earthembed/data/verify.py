"""Store integrity: the cheap checks every open runs, and ``earthembed verify`` that decodes every chunk.

A damaged store must fail loudly, never be read as fill values or mislabelled rows. What can go wrong and who
catches it:

=======================================================  ===================================================
damage                                                   caught by
=======================================================  ===================================================
``earthembed.json`` edited: key missing or wrong type    every open (:func:`check_meta`), names file and key
``index.parquet`` rows removed / added                   every open: row count vs ``n_chips`` vs array shape
array missing, wrong shape                               every open
chunk file of a chip the index marks present deleted     every local open (one ``stat`` per chunk), every read
                                                         and ``verify`` (object storage: not at open)
chunk file corrupt or truncated                          every read (names the chunk) and ``verify``
statistics NaN/Infinity                                  every open (``stats`` itself skips it, to fix them)
duplicate chip ids, ``idx`` out of order, bad splits     ``verify``
a chip marked present that holds only nodata             ``verify``
=======================================================  ===================================================

Opening never reads chunk data, so its cost is one Parquet footer, a few columns of the index and one
``stat`` per chunk holding a present chip. On object storage opening checks no chunk object (listing them
would be one LIST per 1,000 objects, millions of keys for a continent): a read checks the chunks it reads
(:class:`earthembed.data.store.ObjectChunkLayout`), ``verify`` all of them.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from earthembed.errors import StoreError
from earthembed.storage import location, parquet_path, read_parquet_tables

if TYPE_CHECKING:
    from earthembed.data.store import ChipStore

_META_TYPES: dict[str, type | tuple[type, ...]] = {"modalities": dict, "chip_size": int, "n_chips": int}
STAT_KEYS = ("mean", "std", "p01", "p02", "p50", "p98", "p99")


def check_meta(path: Path, meta: dict[str, Any]) -> None:
    """Raise :class:`StoreError` naming ``earthembed.json`` and the key when the metadata is not usable."""
    from earthembed.data.modalities import Modality
    from earthembed.data.store import LABEL_KINDS, META_FILE

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
    from earthembed.data.store import META_FILE

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


def array_names(store: ChipStore) -> list[str]:
    return list(store.modalities) + [f"labels/{n}" for n, s in store.labels.items() if s.get("kind") == "mask"]


def _expected_shape(store: ChipStore, name: str) -> tuple[int, ...]:
    bands = store.modalities[name].num_bands if name in store.modalities else 1
    return (len(store), bands, store.chip_size, store.chip_size)


def _structure_problems(store: ChipStore) -> list[str]:
    """Index readable with one row per chip; every array present with the expected shape."""
    from earthembed.data.store import ARRAYS, INDEX_FILE, META_FILE

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
        want = _expected_shape(store, name)
        if tuple(arr.shape) != want:
            out.append(f"{store.path / ARRAYS / name}: shape {tuple(arr.shape)}, expected {want}")
    return out


def _missing_chunks(store: ChipStore, name: str) -> list[str]:
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


def _content_problems(store: ChipStore, check_stats: bool) -> list[str]:
    """Chunk files of present chips exist; statistics are finite. Assumes the structure is sound."""
    try:
        store.presence()
    except StoreError as e:
        return [str(e)]
    from earthembed.data.store import INDEX_FILE

    f = store.path / INDEX_FILE
    try:
        out = _chip_id_problems(f, read_parquet_tables([f], columns=["chip_id"])[0].column("chip_id"))
    except (KeyError, pa.ArrowException) as e:
        out = [f"{f}: no readable chip_id column ({e})"]
    for name in array_names(store):
        out += _missing_chunks(store, name)
    if check_stats:
        out += stats_problems(store.path, store.meta)
    return out


def open_problems(store: ChipStore, check_stats: bool = True) -> list[str]:
    """The cheap checks run by every :class:`ChipStore` open; no chunk data is read."""
    # the content checks assume rows and array positions line up
    return _structure_problems(store) or _content_problems(store, check_stats)


@dataclasses.dataclass
class VerifyReport:
    """What ``earthembed verify`` found: ``problems`` (damage) is empty for a sound store."""

    path: Path
    chips: int = 0
    arrays: int = 0
    chunks_checked: int = 0
    problems: list[str] = dataclasses.field(default_factory=list)
    shard_chips: int | None = None
    """Chips per shard file when the store is sharded (``chunks_checked`` then counts shards)."""

    @property
    def ok(self) -> bool:
        return not self.problems


def _chip_id_problems(f: Path, ids_column: Any) -> list[str]:
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


def _index_problems(store: ChipStore) -> list[str]:
    from earthembed.data.store import INDEX_FILE, SPLITS

    f = store.path / INDEX_FILE
    try:
        t = read_parquet_tables([f])[0]
    except (OSError, pa.ArrowException) as e:
        return [f"{f}: unreadable ({e})"]
    out = []
    if "chip_id" not in t.column_names:
        return [f"{f}: no chip_id column"]
    out += _chip_id_problems(f, t.column("chip_id"))
    if "idx" in t.column_names:
        idx = t.column("idx").to_numpy(zero_copy_only=False)
        if not np.array_equal(idx, np.arange(len(idx))):
            out.append(f"{f}: column idx is not 0..{len(idx) - 1} in order (rows were reordered or edited)")
    if "split" in t.column_names:
        bad = sorted(set(t.column("split").to_pandas().fillna("").astype(str)) - {"", *SPLITS})
        if bad:
            out.append(f"{f}: unknown split values {bad} (allowed: {list(SPLITS)} or empty)")
    return out


def verify_store(path: str | Path, progress: bool = False) -> VerifyReport:
    """Full check of a store: the open checks, the index, and a decode of every chunk of every array.

    Also reports chips the index marks present whose pixels are all nodata (they would be embedded as data)."""
    from earthembed.data.store import ChipStore, valid_pixels

    rep = VerifyReport(location(path))
    try:
        store = ChipStore(path, check=False)
    except StoreError as e:
        rep.problems.append(str(e))
        return rep
    rep.chips = len(store)
    names = array_names(store)
    rep.arrays = len(names)
    rep.problems += _structure_problems(store)
    if not rep.problems:
        try:
            store.presence()
        except StoreError as e:
            rep.problems.append(str(e))
    if rep.problems:
        return rep  # the rest assumes rows, arrays and the index's presence columns line up
    rep.problems += _content_problems(store, check_stats=True) + _index_problems(store)
    from earthembed.progress import progress as make_progress

    bar = make_progress(total=sum(-(-len(store) // store.layout(n).chunk_chips) for n in names), unit="chunk",
                        desc=f"verify {store.path.name}", quiet=not progress)
    rep.shard_chips = next((c["shard_chips"] for c in store.chunking().values() if c["shard_chips"]), None)
    for name in names:
        arr = store.array(name)
        pres = store.presence()[name]
        nodata = store.modalities[name].nodata if name in store.modalities else None
        cc = store.layout(name).chunk_chips  # per file: a shard's chips in a sharded store
        empty: list[int] = []
        for c in range(-(-len(store) // cc)):
            s, e = c * cc, min((c + 1) * cc, len(store))
            rep.chunks_checked += 1
            bar.update(1)
            if store.layout(name).missing(c):
                continue  # reported above when it holds present chips; fill values otherwise
            try:
                data = arr[s:e]
            except Exception as ex:  # any codec failure is damage
                rep.problems.append(chunk_problem(
                    store.path, name, c, cc, len(store),
                    f"chunk file {store.layout(name).files(c)[0]} cannot be decoded ({type(ex).__name__}: {ex})"))
                continue
            if name in store.modalities:
                empty += [s + i for i in np.flatnonzero(pres[s:e]) if not valid_pixels(data[i], nodata).any()]
        if empty:
            ids = store.index["chip_id"].iloc[empty[:5]].tolist()
            rep.problems.append(
                f"{store.path}: {len(empty)} chips marked present in {name} hold only nodata ({ids}"
                f"{' ...' if len(empty) > 5 else ''}); they would be embedded as data - re-ingest the store"
            )
    if bar is not None:
        bar.close()
    return rep
