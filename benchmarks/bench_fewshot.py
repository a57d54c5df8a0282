"""Wall time of few-shot grids: the demo's grid on a synthetic AOI (``demo``), or a large synthetic one (``synthetic``).

Demo grid (issue 13): the store, embedding tables and few-shot call of ``earthembed demo`` (1,024 chips of
32 px; 4 tasks x the demo's feature sets + baselines x 3 estimators x 6-7 budgets x 3 seeds, ``n_jobs=-1``)::

    .venv/bin/python benchmarks/bench_fewshot.py demo --cache /tmp/bench_fewshot_demo --repeats 3

The store and tables are made once into ``--cache`` (reused by later runs, also by another checkout of the
code: run the "before" code with ``PYTHONPATH=<old checkout>/src``). The "pretrained" tables come from a
``multimodal_vit_tiny`` encoder (contrastive_tiny's model) with random weights unless ``--export`` names a real
pretrained export (e.g. ``demo_out/run/export``); a real one changes the scores, not what is fitted. Every repeat
runs ``run_fewshot`` exactly as the demo does (its tasks, feature columns, seeds, estimators) into a fresh
output directory; ``--baselines`` overrides the default baselines (e.g. ``band_stats,random_init`` = the grid
before the rcf baseline existed). Prints each repeat and the median; ``--json`` writes them.

Large synthetic grid (issue 3): N chips of D-dim clustered classes, label-only store::

    .venv/bin/python benchmarks/bench_fewshot.py synthetic --n-chips 10000 --dim 128 --classes 6 --seeds 5 \\
        --budgets 1,5,10,20,50 --estimators logreg,rf,knn
"""

from __future__ import annotations

import argparse
import inspect
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


# -- demo grid ----------------------------------------------------------------------------------------------
def prepare_demo(cache: Path, export: Path | None, chips: int, chip_size: int) -> dict[str, Path]:
    """Synthetic AOI + the demo's three embedding tables in ``cache`` (made once); returns the tables."""
    from earthembed.data.normalize import Normalizer
    from earthembed.data.store import ChipStore, StoreError
    from earthembed.data.synth import generate_synthetic_aoi
    from earthembed.demo import RGB
    from earthembed.embed.run import embed_random_init, embed_store
    from earthembed.models.export import export_model, modality_products
    from earthembed.models.registry import build_model

    cache.mkdir(parents=True, exist_ok=True)
    store_dir = cache / "store"
    try:
        store = ChipStore(store_dir)
    except StoreError:
        store = generate_synthetic_aoi(store_dir, chips=chips, chip_size=chip_size, seed=0)
    if export is None:
        export = cache / "export"
        if not (export / "model.json").exists():
            import torch

            mods = {k: m.band_names for k, m in store.modalities.items() if m.kind != "categorical"}
            torch.manual_seed(1)
            model = build_model("multimodal_vit_tiny", modalities=mods)
            export_model(model, export, Normalizer.from_store(store), products=modality_products(store.modalities, mods))
    emb = {"pretrained": cache / "emb_pretrained.parquet", "pretrained_rgb": cache / "emb_pretrained_rgb.parquet",
           "random_init": cache / "emb_random_init.parquet"}
    if not emb["pretrained"].exists():
        embed_store(export, store, emb["pretrained"], progress=False)
    if not emb["pretrained_rgb"].exists():
        embed_store(export, store, emb["pretrained_rgb"], modalities=["s2"], bands={"s2": RGB}, progress=False)
    if not emb["random_init"].exists():
        embed_random_init(export, store, emb["random_init"], seed=0, progress=False)
    return emb


def run_demo_grid(cache: Path, emb: dict[str, Path], out: Path, baselines: str | None, n_jobs: int,
                  estimators: str | None = None, budgets: str | None = None) -> tuple[float, int]:
    """(seconds, result rows) of the demo's few-shot call (``estimators`` / ``budgets``: override the demo's;
    code without ``DEMO_BUDGETS`` ran ``run_fewshot``'s default budgets)."""
    import earthembed.demo as demo
    from earthembed.demo import DEMO_FEATURES, DEMO_TASKS
    from earthembed.evaluate.fewshot import run_fewshot

    kw: dict = {} if baselines is None else {"baselines": baselines}
    if estimators is not None:
        kw["estimators"] = estimators
    budgets = budgets if budgets is not None else getattr(demo, "DEMO_BUDGETS", None)
    if budgets and budgets != "default":
        kw["budgets"] = budgets
    if "progress" in inspect.signature(run_fewshot).parameters:
        kw["progress"] = False
    t0 = time.perf_counter()
    df = run_fewshot(emb, cache / "store", list(DEMO_TASKS), out, seeds=[0, 1, 2], feature_columns=list(DEMO_FEATURES),
                     n_jobs=n_jobs, **kw)
    return time.perf_counter() - t0, len(df)


def main_demo(args: argparse.Namespace) -> None:
    import earthembed

    emb = prepare_demo(args.cache, args.export, args.chips, args.chip_size)
    times = []
    for r in range(args.repeats):
        with tempfile.TemporaryDirectory(dir=args.cache) as tmp:
            out = args.keep / f"repeat{r + 1}" if args.keep else Path(tmp) / "few"
            s, n = run_demo_grid(args.cache, emb, out, args.baselines, args.n_jobs, args.estimators, args.budgets)
        times.append(s)
        print(f"repeat {r + 1}/{args.repeats}: {s:.1f} s ({n} result rows)", flush=True)
    code = str(Path(earthembed.__file__).parent)
    print(f"code {code}; baselines {args.baselines or 'default'}; median {statistics.median(times):.1f} s "
          f"(min {min(times):.1f}, max {max(times):.1f})")
    if args.json:
        args.json.write_text(json.dumps({"code": code, "baselines": args.baselines, "times_s": times,
                                         "median_s": statistics.median(times), "rows": n}, indent=2))


# -- large synthetic grid --------------------------------------------------------------------------------------
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


def main_synthetic(args: argparse.Namespace) -> None:
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="grid")
    d = sub.add_parser("demo", help="the demo's few-shot grid on a synthetic AOI")
    d.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "bench_fewshot_demo")
    d.add_argument("--export", type=Path, default=None, help="a pretrained export (default: random-weight tiny ViT)")
    d.add_argument("--chips", type=int, default=1024)
    d.add_argument("--chip-size", type=int, default=32)
    d.add_argument("--repeats", type=int, default=1)
    d.add_argument("--baselines", default=None, help="override run_fewshot's default baselines")
    d.add_argument("--n-jobs", type=int, default=-1, help="as the demo: all cores")
    d.add_argument("--estimators", default=None, help="override the demo's estimators (e.g. knn: the grid's fixed costs)")
    d.add_argument("--budgets", default=None, help="override the demo's budgets ('default': run_fewshot's defaults, "
                   "the demo's grid before DEMO_BUDGETS)")
    d.add_argument("--json", type=Path, default=None)
    d.add_argument("--keep", type=Path, default=None, help="write each repeat's few-shot outputs here (results.csv has fit_s per fit)")
    s = sub.add_parser("synthetic", help="a large synthetic classification grid")
    s.add_argument("--n-chips", type=int, default=10000)
    s.add_argument("--dim", type=int, default=128)
    s.add_argument("--classes", type=int, default=6)
    s.add_argument("--separation", type=float, default=0.3, help="std of class centres (noise std is 1)")
    s.add_argument("--seeds", type=int, default=5)
    s.add_argument("--budgets", default="1,5,10,20,50", help="per-class budgets; add 'all' for the full pool")
    s.add_argument("--estimators", default="logreg,rf,knn")
    s.add_argument("--n-boot", type=int, default=200)
    s.add_argument("--n-jobs", type=int, default=1, help="processes over (feature set x estimator) cells")
    s.add_argument("--out", type=Path, default=None, help="keep results here (default: a temporary dir)")
    argv = sys.argv[1:]
    if not argv or argv[0] not in ("demo", "synthetic", "-h", "--help"):
        argv = ["synthetic", *argv]  # the pre-demo command lines keep working
    args = ap.parse_args(argv)
    (main_demo if args.grid == "demo" else main_synthetic)(args)


if __name__ == "__main__":
    main()
