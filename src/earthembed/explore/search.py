"""Similarity search in an embedding table: "show me places that look like these ones".

Cosine similarity with faiss on L2-normalised vectors (inner product). The query is
``normalise(mean(positives) - mean(negatives))`` of the normalised example embeddings: the negatives push the
query away from what the user does not want (e.g. "water but not rivers"), the Rocchio form that survives
as the simplest relevance-feedback rule. Positives are chip ids and/or a ``lon,lat`` point (the chip that
contains it).

Exact search (``IndexFlatIP``) is the default and is fast for tables up to a few hundred thousand chips
(benchmarks/README.md). For larger tables, :func:`build_index` stores an approximate index beside the table
(``<table>.<column>.faiss`` + a ``.json`` sidecar with the table's fingerprint and the parameters), and
:func:`search` uses it when present: IVF-Flat (default; compact, quick to build, recall set by ``nprobe``)
or HNSW (higher recall at the same latency, slower to build and ~1.5x the memory). A sidecar whose fingerprint
does not match the table (the table was rewritten) is an error, never a silent fall-back to other results.
The query chips themselves are left out of the hits unless ``include_query``. An index or sidecar that cannot be
read (truncated, garbage, edited) is an error naming the file, never a fall-back. Output policy
(:mod:`earthembed.outputs`): an existing index, sidecar, hits table or thumbnail grid is replaced only with
``overwrite`` and only when earthembed wrote it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from earthembed.explore.tables import read_embedding_matrix
from earthembed.outputs import OUTPUT_KEY, atomic_path, check_output
from earthembed.storage import is_remote, location

INDEX_KINDS = ("ivf", "hnsw")
DEFAULT_NPROBE = 64
# k-means training vectors per IVF list: faiss wants >= 39; 256 per list made the 1M build take 44 min on 2
# busy cores (benchmarks/README.md), 64 keeps the lists balanced at a quarter of the cost
TRAIN_PER_LIST = 64
ADD_CHUNK = 20_000  # vectors per faiss add call: the unit of index-build progress
DEFAULT_EF_SEARCH = 128


class single_thread:
    """faiss with one OpenMP thread inside the block: one query has nothing to share out, and on a busy machine
    OpenMP's spinning threads made a single exact query 40x slower (54 ms vs 1.3 ms at 20k x 128)."""

    def __enter__(self) -> None:
        faiss = _faiss()
        self.before = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)

    def __exit__(self, *exc: Any) -> None:
        _faiss().omp_set_num_threads(self.before)


def _faiss() -> Any:
    try:
        import faiss
    except ImportError:
        raise ImportError("search needs faiss: pip install 'earthembed[search]' (faiss-cpu)") from None
    return faiss


def index_path(table: str | Path, column: str = "emb_fused") -> Path:
    """Where the approximate index of ``column`` of ``table`` lives (its sidecar adds ``.json``): beside a local
    table. A table on object storage has none (faiss reads and writes local files): a one-line ValueError."""
    loc = location(table)
    if is_remote(loc):
        raise ValueError(f"{loc}: a search index is a local file beside its table, and this table is on object "
                         "storage; search it without one (exact search) or index a local copy of the table")
    return loc.with_name(f"{loc.name}.{column}.faiss")


def _where(p: str | Path) -> str:
    """``p`` as recorded in metadata: an absolute local path, or the object-storage URL as it is."""
    return str(location(p).resolve())


@dataclasses.dataclass
class Vectors:
    """Normalised embeddings of the rows that have one, with the table (sorted by ``idx``) and a fingerprint."""

    df: pd.DataFrame
    X: np.ndarray  # [n_valid, D] float32, unit norm
    rows: np.ndarray  # table row of each vector
    fingerprint: str


def load_vectors(table: str | Path, column: str = "emb_fused") -> Vectors:
    """Read ``column`` of an embedding table and L2-normalise it; null or zero rows are left out."""
    df, X = read_embedding_matrix(table, column)
    norm = np.linalg.norm(X, axis=1)
    ok = np.isfinite(X).all(axis=1) & (norm > 0)
    rows = np.flatnonzero(ok)
    Xn = np.ascontiguousarray(X[rows] / norm[rows, None], dtype=np.float32)
    h = hashlib.sha1(f"{column}|{X.shape}".encode())
    h.update("\n".join(df["chip_id"].astype(str)).encode())
    h.update(rows.astype(np.int64).tobytes())
    h.update(Xn[:: max(1, len(Xn) // 64)].tobytes())  # a sample of values: a re-embedded table changes it
    return Vectors(df, Xn, rows, h.hexdigest())


def build_index(
    table: str | Path,
    column: str = "emb_fused",
    kind: str = "ivf",
    nlist: int | None = None,
    hnsw_m: int = 32,
    ef_construction: int = 80,
    nprobe: int = DEFAULT_NPROBE,
    seed: int = 0,
    vectors: Vectors | None = None,
    quiet: bool = True,
    overwrite: bool = False,
) -> Path:
    """Build an IVF-Flat or HNSW index of ``column`` and store it beside ``table``; returns its path.

    IVF: ``nlist`` lists (default ``4 * sqrt(n)``, at most n / 39), k-means trained on at most
    :data:`TRAIN_PER_LIST` vectors per list. ``nprobe`` (lists visited per query) is recorded as the default for searches.
    ``quiet=False``: one line when IVF k-means starts (faiss trains in one call) and progress of the vectors
    added (:data:`ADD_CHUNK` at a time; the same index as one call: IVF assigns each vector to its nearest list
    and HNSW inserts in order either way). ``overwrite``: replace an earlier index of the column (never any
    other file).
    """
    from earthembed.progress import progress

    faiss = _faiss()
    if kind not in INDEX_KINDS:
        raise ValueError(f"unknown index kind {kind!r} (choose from {INDEX_KINDS})")
    path = index_path(table, column)
    side_f = path.with_name(path.name + ".json")
    check_output(path, "faiss", [table], overwrite, option="the index file")
    check_output(side_f, "faiss sidecar", [table], overwrite, option="the index sidecar")
    v = vectors or load_vectors(table, column)
    n, d = v.X.shape
    if n < 2:
        raise ValueError(f"{table}: {n} non-null embedding(s) in {column!r}; nothing to index")
    t0 = time.perf_counter()
    params: dict[str, Any] = {"kind": kind}
    if kind == "ivf":
        nlist = int(nlist or max(1, min(int(4 * np.sqrt(n)), n // 39)))
        if not 1 <= nlist <= n:
            raise ValueError(f"nlist must be in 1..{n}, got {nlist}")
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        sample = v.X if n <= TRAIN_PER_LIST * nlist else v.X[np.sort(rng.choice(n, TRAIN_PER_LIST * nlist, replace=False))]
        index.cp.seed = seed
        if not quiet:
            print(f"index: training IVF k-means, {nlist} lists on {len(sample):,} vectors of {d} dims", file=sys.stderr,
                  flush=True)
        index.train(sample)
        params.update(nlist=nlist, nprobe=min(nprobe, nlist))
    else:
        index = faiss.IndexIDMap2(faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT))
        faiss.downcast_index(index.index).hnsw.efConstruction = ef_construction
    ids = v.rows.astype(np.int64)
    with progress(total=n, desc=f"index {kind}: add", unit="vectors", quiet=quiet) as bar:
        for i in range(0, n, ADD_CHUNK):
            index.add_with_ids(v.X[i : i + ADD_CHUNK], ids[i : i + ADD_CHUNK])
            bar.update(min(ADD_CHUNK, n - i))
    if kind == "hnsw":
        params.update(M=hnsw_m, ef_construction=ef_construction, ef_search=DEFAULT_EF_SEARCH)
    build_s = time.perf_counter() - t0
    with atomic_path(path, "faiss", overwrite, option="the index file") as tmp:
        faiss.write_index(index, str(tmp))
    side = {OUTPUT_KEY: "faiss sidecar", "table": _where(table), "column": column, "n": n, "dim": d,
            "fingerprint": v.fingerprint, "build_seconds": round(build_s, 3), **params}
    with atomic_path(side_f, "faiss sidecar", overwrite, option="the index sidecar") as tmp:  # last: the commit point
        tmp.write_text(json.dumps(side, indent=2))
    return path


_SIDECAR_KEYS = {"ivf": ("fingerprint", "nlist", "nprobe"), "hnsw": ("fingerprint", "M", "ef_search")}


def load_index(table: str | Path, column: str, vectors: Vectors) -> tuple[Any, dict[str, Any]] | None:
    """The stored index of ``column`` beside ``table`` with its sidecar, or None when there is none. A sidecar or
    index that cannot be read, or that was built for another version of the table, is a ValueError naming it."""
    if is_remote(table):  # no index beside a table on object storage (index_path)
        return None
    path = index_path(table, column)
    side_f = path.with_name(path.name + ".json")
    if not side_f.exists() or not path.exists():
        return None
    fix = f"rebuild with `earthembed index --embeddings {table} --column {column} --overwrite` or search with `--exact`"
    try:
        side = json.loads(side_f.read_text())
        if not isinstance(side, dict):
            raise ValueError("not a JSON object")
        missing = [k for k in _SIDECAR_KEYS.get(side.get("kind"), ("kind",)) if k not in side]
        if missing:
            raise ValueError(f"kind {side.get('kind')!r} with keys {sorted(side)}: missing {missing}")
    except (OSError, ValueError) as e:
        raise ValueError(f"{side_f}: not a readable index sidecar ({e}); {fix}") from None
    if side.get("fingerprint") != vectors.fingerprint:
        raise ValueError(f"{path}: this index was built for another version of {table} (the table changed since); {fix}")
    try:
        index = _faiss().read_index(str(path))
    except RuntimeError as e:
        cause = str(e).strip().splitlines()[-1][:160]
        raise ValueError(f"{path}: not a readable faiss index (truncated or corrupt? faiss: {cause}); {fix}") from None
    if index.d != vectors.X.shape[1] or index.ntotal != side.get("n", index.ntotal):
        raise ValueError(f"{path}: index of {index.ntotal} vectors of {index.d} dims does not match its sidecar "
                         f"{side_f} ({side.get('n')} vectors of {vectors.X.shape[1]} dims); {fix}")
    return index, side


def chip_at_point(df: pd.DataFrame, lon: float, lat: float, what: str) -> str:
    """chip_id of the chip whose EPSG:4326 footprint contains (lon, lat); the nearest centre among several."""
    import shapely

    if "geometry" not in df.columns or df["geometry"].isna().all():
        raise ValueError(f"{what}: chips have no footprints; --point needs a georeferenced table or --store")
    geom = df["geometry"].to_numpy()
    if len(geom) and isinstance(geom[0], bytes | bytearray):
        geom = shapely.from_wkb(geom)
    p = shapely.Point(lon, lat)
    inside = np.flatnonzero(shapely.contains(geom, p) | shapely.touches(geom, p))
    if not len(inside):
        raise ValueError(f"{what}: point ({lon}, {lat}) is inside no chip (lon,lat in EPSG:4326)")
    best = inside[np.argmin(shapely.distance(shapely.centroid(geom[inside]), p))]
    return str(df["chip_id"].iloc[best])


def _rows_of(ids: Sequence[str], df: pd.DataFrame, vectors: Vectors, what: str, role: str) -> list[int]:
    pos = pd.Series(np.arange(len(df)), index=df["chip_id"].astype(str).to_numpy())
    out = []
    valid = set(vectors.rows.tolist())
    for cid in ids:
        if cid not in pos.index:
            sample = ", ".join(repr(c) for c in df["chip_id"].astype(str).iloc[:3])
            raise KeyError(f"{what}: {role} chip id {cid!r} does not exist (ids look like {sample})")
        r = int(pos[cid])
        if r not in valid:
            raise ValueError(f"{what}: {role} chip {cid!r} has no embedding in this column (modality missing)")
        out.append(r)
    return out


def query_vector(vectors: Vectors, pos_rows: Sequence[int], neg_rows: Sequence[int] = ()) -> np.ndarray:
    """normalise(mean(normalised positives) - mean(normalised negatives)) as a [1, D] float32 array."""
    if not pos_rows:
        raise ValueError("search needs at least one positive example (--positive or --point)")
    at = pd.Series(np.arange(len(vectors.rows)), index=vectors.rows)
    q = vectors.X[at[list(pos_rows)].to_numpy()].mean(axis=0)
    if len(neg_rows):
        q = q - vectors.X[at[list(neg_rows)].to_numpy()].mean(axis=0)
    n = float(np.linalg.norm(q))
    if n < 1e-6:
        raise ValueError("the positives and negatives cancel out (their means are equal); the query is empty")
    return (q / n).astype(np.float32)[None]


@dataclasses.dataclass
class Hits:
    """Search results: the hits table (rank, score, chip columns) and how it was searched."""

    table: pd.DataFrame
    meta: dict[str, Any]


def search(
    embeddings: str | Path,
    positives: Sequence[str] = (),
    negatives: Sequence[str] = (),
    point: tuple[float, float] | None = None,
    k: int = 50,
    column: str = "emb_fused",
    store: str | Path | None = None,
    exact: bool = False,
    nprobe: int | None = None,
    ef_search: int | None = None,
    include_query: bool = False,
) -> Hits:
    """The ``k`` chips most similar (cosine) to the query built from ``positives``/``point`` and ``negatives``."""
    faiss = _faiss()
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    what = str(embeddings)
    v = load_vectors(embeddings, column)
    df = v.df
    pos_ids = [str(p) for p in positives]
    if point is not None:
        from earthembed.data.chipgeo import read_chip_table, store_of, with_store_geometry

        if "geometry" not in df.columns or df["geometry"].isna().all():
            _, meta = read_chip_table(embeddings, columns=["chip_id"])
            st = store_of(meta, store)
            if st is None:
                raise ValueError(f"{what}: the table has no footprints; pass --store to search by --point")
            df = with_store_geometry(df, st, what)
        pos_ids.append(chip_at_point(df, point[0], point[1], what))
    pos_rows = _rows_of(pos_ids, df, v, what, "positive")
    neg_rows = _rows_of([str(x) for x in negatives], df, v, what, "negative")
    q = query_vector(v, pos_rows, neg_rows)
    stored = None if exact else load_index(embeddings, column, v)
    exclude = set() if include_query else set(pos_rows) | set(neg_rows)
    kk = min(len(v.rows), k + len(exclude))
    if stored is None:
        index = faiss.IndexFlatIP(v.X.shape[1])
        index.add(v.X)
        method: dict[str, Any] = {"method": "exact"}
        with single_thread():
            scores, found = index.search(q, kk)
        found = v.rows[found[0][found[0] >= 0]]
        scores = scores[0][: len(found)]
    else:
        index, side = stored
        ps = faiss.ParameterSpace()
        if side["kind"] == "ivf":
            ps.set_index_parameter(index, "nprobe", int(nprobe or side.get("nprobe", DEFAULT_NPROBE)))
            method = {"method": "ivf", "nlist": side["nlist"], "nprobe": int(nprobe or side.get("nprobe"))}
        else:
            ef = int(max(ef_search or side.get("ef_search", DEFAULT_EF_SEARCH), kk))
            ps.set_index_parameter(index, "efSearch", ef)
            method = {"method": "hnsw", "M": side["M"], "ef_search": ef}
        with single_thread():
            scores, found = index.search(q, kk)
        keep = found[0] >= 0
        found, scores = found[0][keep], scores[0][keep]
    sel = [i for i, r in enumerate(found) if int(r) not in exclude][:k]
    rows = np.asarray(found)[sel].astype(int)
    hits = df.iloc[rows].drop(columns=[c for c in ("modalities_used", "bands_used") if c in df.columns])
    hits = hits.reset_index(drop=True)
    hits.insert(0, "score", np.asarray(scores)[sel].astype(np.float64))
    hits.insert(0, "rank", np.arange(1, len(rows) + 1))
    meta = {"embeddings": _where(embeddings), "column": column, "k": k,
            "positives": pos_ids, "negatives": [str(x) for x in negatives],
            "point": list(point) if point is not None else None, **method,
            "query_excluded": not include_query}
    return Hits(hits, meta)


def write_hits(hits: Hits, out: str | Path, store: str | Path | None = None, thumbnails: bool = True,
               overwrite: bool = False) -> list[Path]:
    """Hits as GeoParquet (``rank, score, chip_id, ..., geometry`` + the chips' CRS/transform from the store)
    and a PNG grid of the query and hit thumbnails beside it (true colour from the store). ``overwrite``: replace
    earlier earthembed hits and grid at those paths (never any other file); both are checked before either is
    written."""
    from earthembed.data.chipgeo import read_chip_table, store_of, with_store_geometry, write_chip_table

    out = Path(out)
    if out.suffix.lower() == ".png":
        raise ValueError(f"{out}: the hits are a GeoParquet table (their thumbnails go beside it as .png); "
                         "give a .parquet path")
    inputs = [hits.meta["embeddings"], store]
    check_output(out, "hits", inputs, overwrite)
    _, meta = read_chip_table(hits.meta["embeddings"], columns=["chip_id"])
    st = store_of(meta, store)
    png = out.with_suffix(".png") if thumbnails and st is not None and len(hits.table) else None
    if png is not None:
        check_output(png, "png", [*inputs, st.path], overwrite, option="the .png thumbnails of --out")
    df = hits.table
    if st is not None:
        df = with_store_geometry(df, st, hits.meta["embeddings"])
        hits.meta["store"] = _where(st.path)
        hits.meta["chip_size"] = st.chip_size
    elif "geometry" in df.columns and len(df) and isinstance(df["geometry"].iloc[0], bytes | bytearray):
        import shapely

        df = df.assign(geometry=shapely.from_wkb(df["geometry"].to_numpy()))
    with atomic_path(out, "hits", overwrite) as tmp:
        write_chip_table(df, tmp, {OUTPUT_KEY: "hits", **hits.meta})
    written = [out]
    if png is not None:
        from earthembed.explore.thumbnails import hits_grid

        written.append(hits_grid(st, hits.meta["positives"], hits.meta["negatives"], df, png, overwrite=overwrite))
    return written
