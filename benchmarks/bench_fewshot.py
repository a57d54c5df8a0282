"""Wall time of a few-shot grid on synthetic embeddings: N chips, D-dim clustered classes.

    .venv/bin/python benchmarks/bench_fewshot.py --n-chips 10000 --dim 128 --classes 6 --seeds 5 \\
        --budgets 1,5,10,20,50 --estimators logreg,rf,knn

Builds a label-only chip store (3x4x4 RGB chips, 70/10/20 train/val/test split) and an embedding table in
a temporary directory, then times :func:`earthembed.evaluate.run_fewshot` (fit, predict, bootstrap CIs,
summary and plot; no band-statistics baseline). Prints the total and the fit time per estimator x budget.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def make_store(path: Path, n: int, classes: int, seed: int) -> np.ndarray:
    from earthembed.data.modalities import get_modality
    from earthembed.data.store import ChipRecord, StoreWriter

    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    split = rng.choice(["train", "val", "test"], n, p=[0.7, 0.1, 0.2])
    pix = np.zeros((3, 4, 4), "uint8")
    schema = {"landcover": {"kind": "class", "classes": [f"class{c}" for c in range(classes)]}}
    with StoreWriter(path, [get_modality("rgb")], 4, schema, batch_size=2000, chunk_chips=2000) as w:
        for i in range(n):
            w.add(ChipRecord(f"c{i:06d}", {"rgb": pix}, split=str(split[i]), labels={"landcover": f"class{y[i]}"}))
    return y


def make_embeddings(path: Path, y: np.ndarray, dim: int, separation: float, seed: int) -> None:
    rng = np.random.default_rng(seed + 1)
    centres = rng.normal(0, separation, (int(y.max()) + 1, dim))
    X = (centres[y] + rng.normal(0, 1, (len(y), dim))).astype(np.float32)
    emb = pa.FixedSizeListArray.from_arrays(pa.array(X.ravel()), dim)
    t = pa.table({"idx": np.arange(len(y)), "chip_id": [f"c{i:06d}" for i in range(len(y))], "emb_fused": emb})
    meta = {"model_id": "synthetic", "dims": {"emb_fused": dim}}
    pq.write_table(t.replace_schema_metadata({b"earthembed": json.dumps(meta).encode()}), path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-chips", type=int, default=10000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--classes", type=int, default=6)
    ap.add_argument("--separation", type=float, default=0.3, help="std of class centres (noise std is 1)")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--budgets", default="1,5,10,20,50", help="per-class budgets; add 'all' for the full pool")
    ap.add_argument("--estimators", default="logreg,rf,knn")
    ap.add_argument("--n-boot", type=int, default=200)
    ap.add_argument("--n-jobs", type=int, default=1, help="processes over (feature set x estimator) cells")
    ap.add_argument("--out", type=Path, default=None, help="keep results here (default: a temporary dir)")
    args = ap.parse_args()

    from earthembed.evaluate import run_fewshot

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        y = make_store(tmp / "store", args.n_chips, args.classes, 0)
        make_embeddings(tmp / "emb.parquet", y, args.dim, args.separation, 0)
        t_setup = time.perf_counter() - t0
        out = args.out or tmp / "out"
        t0 = time.perf_counter()
        df = run_fewshot({"synthetic": tmp / "emb.parquet"}, tmp / "store", "landcover", out,
                         budgets=args.budgets, seeds=tuple(range(args.seeds)), estimators=args.estimators,
                         baselines=(), n_boot=args.n_boot, n_jobs=args.n_jobs)
        total = time.perf_counter() - t0
    fits = df.drop_duplicates(["estimator", "budget", "seed"])
    n_fits = len(fits)
    per = fits.groupby(["estimator", "budget"], sort=False).agg(fit_s=("fit_s", "sum"), budget_n=("budget_n", "mean"))
    f1 = df[df["metric"] == "macro_f1"].groupby(["estimator", "budget"], sort=False)["value"].mean()
    print(f"setup (store + table): {t_setup:.1f} s")
    print(f"grid: {args.n_chips} chips x {args.dim}-d, {args.classes} classes, budgets {args.budgets} per class, "
          f"{args.seeds} seeds, estimators {args.estimators}: {n_fits} fits, n_test {int(df['n_test'].iloc[0])}")
    print(f"total run_fewshot: {total:.1f} s  (fitting {fits['fit_s'].sum():.1f} s, "
          f"scoring + bootstrap + outputs {total - fits['fit_s'].sum():.1f} s)")
    print(per.assign(macro_f1=f1).round(3).to_string())


if __name__ == "__main__":
    main()
