"""Similarity search: exact vs IVF / HNSW index on N synthetic D-dim embeddings.

    .venv/bin/python benchmarks/bench_search.py --sizes 100000,1000000 --dim 128 --kinds ivf,hnsw --json out.json

Vectors: a mixture of ``--clusters`` Gaussian clusters (unit-norm centres, within-cluster noise ``--noise``
per dimension), L2-normalised: embeddings of land cover are clustered, and uniform random vectors would be
the worst case for any approximate index. Queries are built like ``earthembed search`` builds them:
normalised mean of 3 random members of one cluster. For each size: index build time
(:func:`earthembed.explore.search.build_index`, with the default parameters of ``earthembed index``),
query latency (one query at a time, median and p95 of ``--queries`` queries, k = 50) and recall@50 of the
index against exact search on the same queries. Index builds use all cores (``--threads`` to limit);
queries run one at a time on one thread, as ``earthembed search`` runs them.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def make_vectors(n: int, dim: int, clusters: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    label = rng.integers(0, clusters, n)
    X = np.empty((n, dim), np.float32)
    for s in range(0, n, 100_000):  # bounded temporary memory
        e = min(s + 100_000, n)
        X[s:e] = centres[label[s:e]] + noise * rng.standard_normal((e - s, dim), dtype=np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return X, label


def queries(X: np.ndarray, label: np.ndarray, n_q: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed + 1)
    qs = []
    ids, counts = np.unique(label, return_counts=True)
    for c in rng.choice(ids[counts >= 3], n_q):  # clusters that have 3 members to average
        members = np.flatnonzero(label == c)
        q = X[rng.choice(members, 3, replace=False)].mean(axis=0)
        qs.append(q / np.linalg.norm(q))
    return np.asarray(qs, np.float32)


def timed_search(index, Q: np.ndarray, k: int) -> tuple[np.ndarray, list[float]]:
    """One query at a time with one faiss thread, as ``earthembed search`` runs them."""
    from earthembed.explore.search import single_thread

    ids, lat = [], []
    with single_thread():
        for q in Q:
            t0 = time.perf_counter()
            _, found = index.search(q[None], k)
            lat.append(time.perf_counter() - t0)
            ids.append(found[0])
    return np.asarray(ids), lat


def main() -> None:
    import faiss

    from earthembed.explore.search import DEFAULT_EF_SEARCH, Vectors, build_index, index_path

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--noise", type=float, default=0.08)
    ap.add_argument("--kinds", default="ivf,hnsw")
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--nprobe", default="16,64,256", help="IVF nprobe values to report")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        t0 = time.perf_counter()
        X, label = make_vectors(n, args.dim, args.clusters, args.noise, args.seed)
        print(f"n={n}: generated in {time.perf_counter() - t0:.1f} s", flush=True)
        Q = queries(X, label, args.queries, args.seed)
        flat = faiss.IndexFlatIP(args.dim)
        flat.add(X)
        truth, lat = timed_search(flat, Q, args.k)
        rows.append({"n": n, "method": "exact (IndexFlatIP)", "build_s": 0.0, "median_ms": 1e3 * np.median(lat),
                     "p95_ms": 1e3 * np.percentile(lat, 95), "recall@k": 1.0})
        print(rows[-1], flush=True)
        vec = Vectors(None, X, np.arange(n), "bench")  # type: ignore[arg-type]
        with tempfile.TemporaryDirectory() as tmp:
            table = Path(tmp) / "emb.parquet"
            for kind in args.kinds.split(","):
                t0 = time.perf_counter()
                build_index(table, "emb_fused", kind=kind, vectors=vec, seed=args.seed)
                build_s = time.perf_counter() - t0
                index = faiss.read_index(str(index_path(table, "emb_fused")))
                side = json.loads(Path(str(index_path(table, "emb_fused")) + ".json").read_text())
                settings = ([("nprobe", int(p)) for p in args.nprobe.split(",")] if kind == "ivf"
                            else [("efSearch", max(DEFAULT_EF_SEARCH, args.k))])
                for name, value in settings:
                    faiss.ParameterSpace().set_index_parameter(index, name, value)
                    found, lat = timed_search(index, Q, args.k)
                    recall = np.mean([len(set(f) & set(t)) / args.k for f, t in zip(found, truth, strict=True)])
                    label_ = (f"IVF-Flat nlist={side['nlist']} {name}={value}" if kind == "ivf"
                              else f"HNSW M={side['M']} efC={side['ef_construction']} {name}={value}")
                    rows.append({"n": n, "method": label_, "build_s": build_s, "median_ms": 1e3 * np.median(lat),
                                 "p95_ms": 1e3 * np.percentile(lat, 95), "recall@k": float(recall)})
                    print(rows[-1], flush=True)
                del index
        del X, flat
    print(f"\n| N | method | build s | query median ms | p95 ms | recall@{args.k} |\n|---:|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['n']:,} | {r['method']} | {r['build_s']:.1f} | {r['median_ms']:.2f} | {r['p95_ms']:.2f} | "
              f"{r['recall@k']:.3f} |")
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
