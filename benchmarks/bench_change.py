"""``earthembed change`` on a large per-date table: every method, end to end and by stage.

    nice -n 10 .venv/bin/python benchmarks/bench_change.py --chips 100000 --dates 10 --dim 128 --json out.json

A per-date embedding table as ``embed --dates`` writes it (GeoParquet, ``emb_fused`` FixedSizeList<float32>[D],
``t``/``date``/``date_key``, one row per (chip, date), written date by date) of ``--chips`` x ``--dates`` rows:
each chip a random unit vector plus per-date noise, 1% of the chips replaced by another vector from a random
date on (the changes), and ``--missing`` of the (chip, date) rows null (imagery missing). Each method runs
through :func:`earthembed.explore.change.detect_change` (read, sort, score, threshold, write the change table),
``--repeats`` times, median wall time reported; the stages (read into a sorted unit matrix, score, write) are
timed once more separately. The score quality on the injected changes (ROC AUC of the chip's highest score
against "changed") is printed as a sanity check, not a benchmark.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def write_table(path: Path, chips: int, dates: int, dim: int, missing: float, seed: int) -> np.ndarray:
    """The per-date table at ``path``; returns which chips changed [chips]."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from earthembed.embed.io import META_KEY, fixed_size_list, parquet_options

    rng = np.random.default_rng(seed)
    base = rng.standard_normal((chips, dim), dtype=np.float32)
    changed = rng.random(chips) < 0.01
    other = rng.standard_normal((chips, dim), dtype=np.float32)
    when = rng.integers(1, dates, chips)
    ids = pa.array([f"chip_{i:07d}" for i in range(chips)], pa.string())
    keys = [(dt.date(2015, 7, 1) + dt.timedelta(days=365 * k)) for k in range(dates)]
    meta = {"model_id": "bench", "dims": {"emb_fused": dim},
            "time": {"mode": "per_date", "series": {}, "dates": [k.isoformat() for k in keys]}}
    writer = None
    for k in range(dates):  # date by date: bounded memory
        X = base + 0.3 * rng.standard_normal((chips, dim), dtype=np.float32)
        X[changed & (when <= k)] = other[changed & (when <= k)] + 0.3 * rng.standard_normal(
            (int((changed & (when <= k)).sum()), dim), dtype=np.float32)
        ok = rng.random(chips) >= missing
        t = pa.table({
            "idx": pa.array(np.arange(chips) + k * chips, pa.int64()), "chip_id": ids,
            "split": pa.array(np.full(chips, "train")), "model_id": pa.array(np.full(chips, "bench")),
            "emb_fused": fixed_size_list(X, ok), "t": pa.array(np.full(chips, k, np.int16)),
            "date": pa.array([keys[k]] * chips, pa.date32()), "date_key": pa.array([keys[k].isoformat()] * chips),
        }).replace_schema_metadata({META_KEY: json.dumps(meta).encode()})
        if writer is None:
            writer = pq.ParquetWriter(path, t.schema, **parquet_options(t.schema))
        writer.write_table(t, row_group_size=1 << 17)
    writer.close()
    return changed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chips", type=int, default=100_000)
    ap.add_argument("--dates", type=int, default=10)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--missing", type=float, default=0.01)
    ap.add_argument("--methods", default="cosine,zscore,loo-medoid,consecutive")
    ap.add_argument("--threshold", default="otsu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from sklearn.metrics import roc_auc_score

    from earthembed.explore import change as ch

    print(f"$ nice -n 10 .venv/bin/python benchmarks/bench_change.py --chips {args.chips} --dates {args.dates} "
          f"--dim {args.dim} --missing {args.missing} --threshold {args.threshold} --repeats {args.repeats}")
    print(f"cores: {os.cpu_count()}, numpy {np.__version__}")
    results = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "methods": {}}
    with tempfile.TemporaryDirectory() as td:
        emb = Path(td) / "emb.parquet"
        t0 = time.perf_counter()
        changed = write_table(emb, args.chips, args.dates, args.dim, args.missing, args.seed)
        rows = args.chips * args.dates
        print(f"table: {rows:,} (chip, date) rows x {args.dim} dims, {emb.stat().st_size / 2**20:.0f} MiB "
              f"(written in {time.perf_counter() - t0:.1f} s)")
        t0 = time.perf_counter()
        s = ch.read_series(emb)
        t_read = time.perf_counter() - t0
        print(f"read + sort + normalise: {t_read:.2f} s")
        results["read_s"] = t_read
        for method in args.methods.split(","):
            two = method == "cosine"
            kw = {"date_from": s.dates[0], "date_to": s.dates[-1]} if two else {"method": method}
            t0 = time.perf_counter()
            _, res, _, _ = ch.change_scores(s, **kw)
            t_score = time.perf_counter() - t0
            times = []
            for r in range(args.repeats):
                out = Path(td) / f"{method}_{r}.parquet"
                t0 = time.perf_counter()
                result = ch.detect_change(emb, out, threshold=args.threshold, **kw)
                times.append(time.perf_counter() - t0)
            peak = result.table.groupby("chip_id", sort=False)["score"].max()
            idx = np.array([int(c[5:]) for c in peak.index])
            fin = np.isfinite(peak.to_numpy())
            auc = roc_auc_score(changed[idx][fin], peak.to_numpy()[fin])
            med = float(np.median(times))
            results["methods"][method] = {"end_to_end_s": times, "median_s": med, "score_s": t_score,
                                          "rows_out": int(len(result.table)), "auc_sanity": float(auc)}
            print(f"{method:12s} end to end (read, score, {args.threshold} threshold, write): median {med:.2f} s of "
                  f"{', '.join(f'{x:.2f}' for x in times)}; scoring alone {t_score:.2f} s; "
                  f"{len(result.table):,} rows out; AUC of injected changes {auc:.3f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
