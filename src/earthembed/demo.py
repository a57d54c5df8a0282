"""The embedded-default pipeline, end to end and offline: synthetic AOI -> pretrain -> embed -> few-shot.

Every step calls the same Python API as the CLI, so the demo is also the reference for scripting it.
Re-running it reuses finished steps (store, checkpoint, embedding tables). Pretraining uses the default CPU
recipe for the store (what ``earthembed pretrain`` picks without ``--config``), shortened by
:data:`DEMO_OVERRIDES` so the whole demo stays under 10 minutes on 2 cores; the report ends with one sentence
comparing the pretrained embedding with band statistics and random convolutional features. When the published
Galileo-nano weights are at hand (the user cache, or ``download``), its embedding joins the few-shot table as
``galileo:emb_fused``; when they are not, one line says how to add it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

DEMO_TASKS = ("landcover", "classes_present", "frac_water", "frac_built_up")
# S2+S1 fused, S2 only, S1 only and RGB-only from one checkpoint; random init; band_stats and rcf are added as baselines
DEMO_FEATURES = (
    "pretrained:emb_fused",
    "pretrained:emb_s2",
    "pretrained:emb_s1",
    "pretrained_rgb:emb_s2",
    "random_init:emb_fused",
)
RGB = ["B04", "B03", "B02"]
DEMO_OVERRIDES = ("model.modalities=[s2,s1]", "data.batch_size=32", "train.max_steps=80", "train.warmup_steps=8",
                  "probe.every_n_steps=40")
"""The default recipe, cut to the demo's time budget: S2 + S1 only (one ResNet-18 each; all four synthetic
modalities cost ~10 s per step of 64 chips on 2 cores), batch 32, 80 steps (~2.3 s per step measured on the idle
2-core VM). The recipe's own length is for real pools."""
COMPARE_BASELINES = ("band_stats", "rcf")
DEMO_ESTIMATORS = "linear,knn"
"""The demo's few-shot estimators: logistic / ridge regression and kNN (torchgeo-bench's pair). The random
forest, the third default of ``earthembed fewshot``, costs 5x both together on this grid (2,048 RCF features);
``earthembed demo --full-grid`` adds it (benchmarks/README.md, "Few-shot grid of the demo")."""
DEMO_BUDGETS = "total=10,50,100,200,all"
"""The demo's label budgets: the defaults (1-50 labels per class + all; 10-200 chips + all) without the
500-chip budget of the multilabel and regression tasks, which is 70% of the demo's ~700-chip pool, next to
``all``, and cost a third of the few-shot step (benchmarks/README.md). ``--full-grid`` restores it."""


GALILEO = "galileo:nano"
"""The published model the demo adds as a feature set when its weights are found."""


def _galileo_source(download: bool) -> Any:
    """The opened published Galileo, or None after one line saying why it is left out and how to add it."""
    from earthembed.models.published import WeightsNotFoundError, open_source

    try:
        return open_source(GALILEO, download=download)
    except WeightsNotFoundError as e:
        print(f"[demo] {GALILEO} left out of the few-shot table: {e}. `earthembed demo --download` adds it.",
              flush=True)
        return None


def _step(log: list[dict[str, Any]], name: str, command: str, fn, *args, **kwargs):
    t0 = time.perf_counter()
    print(f"[demo] {name}: {command}", flush=True)
    result = fn(*args, **kwargs)
    log.append({"step": name, "command": command, "seconds": round(time.perf_counter() - t0, 1)})
    return result


def run_demo(
    out: str | Path = "demo_out",
    chips: int = 1024,
    chip_size: int = 32,
    seed: int = 0,
    max_steps: int | None = None,
    tasks: Sequence[str] = DEMO_TASKS,
    seeds: Sequence[int] = (0, 1, 2),
    overrides: Sequence[str] = (),
    jobs: int = -1,
    full_grid: bool = False,
    download: bool = False,
) -> Path:
    """Run the whole pipeline into ``out`` and write ``out/report.md``; returns the report path.

    ``full_grid``: few-shot with every default estimator and budget of ``earthembed fewshot`` instead of
    :data:`DEMO_ESTIMATORS` and :data:`DEMO_BUDGETS` (adds the random forest and 500 chips; several minutes
    more). ``download``: fetch the published Galileo-nano weights (sha256-checked) if they are not cached."""
    from earthembed.data.store import ChipStore, StoreError
    from earthembed.data.synth import generate_synthetic_aoi
    from earthembed.embed.run import embed_random_init, embed_store
    from earthembed.evaluate.fewshot import run_fewshot
    from earthembed.explore.projection import plot_embeddings
    from earthembed.pretrain.run import default_recipe, pretrain

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    log: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    store_dir = out / "store"
    try:
        store = ChipStore(store_dir)
        if len(store) != chips or store.chip_size != chip_size:
            raise StoreError("different size")
        log.append({"step": "synth", "command": "(reused)", "seconds": 0.0})
    except StoreError:
        store = _step(
            log, "synth", f"earthembed synth --out {store_dir} --chips {chips} --chip-size {chip_size} --seed {seed}",
            generate_synthetic_aoi, store_dir, chips=chips, chip_size=chip_size, seed=seed,
            overwrite=store_dir.exists() and (store_dir / "earthembed.json").exists()
            and json.loads((store_dir / "earthembed.json").read_text()).get("complete", False),
        )
    ov = [*DEMO_OVERRIDES, *overrides]
    if max_steps is not None:
        ov.append(f"train.max_steps={max_steps}")
    ov.append(f"train.seed={seed}")
    run_dir = out / "run"
    recipe, _ = default_recipe(store)
    export = _step(
        log, "pretrain",
        f"earthembed pretrain --store {store_dir} --out {run_dir} {' '.join(ov)}  (default recipe: {recipe})",
        pretrain, None, store_dir, run_dir, overrides=ov,
    )
    emb = {
        "pretrained": out / "emb_pretrained.parquet",
        "pretrained_rgb": out / "emb_pretrained_rgb.parquet",
        "random_init": out / "emb_random_init.parquet",
    }
    # re-running the demo re-embeds into its own tables: --overwrite (only earthembed tables are ever replaced)
    _step(log, "embed",
          f"earthembed embed --checkpoint {export} --store {store_dir} --out {emb['pretrained']} --overwrite",
          embed_store, export, store, emb["pretrained"], progress=True, overwrite=True)
    _step(log, "embed (RGB bands only)",
          f"earthembed embed --checkpoint {export} --store {store_dir} --out {emb['pretrained_rgb']} "
          f"--modalities s2 --bands 's2:{','.join(RGB)}' --overwrite",
          embed_store, export, store, emb["pretrained_rgb"], modalities=["s2"], bands={"s2": RGB}, progress=True,
          overwrite=True)
    _step(log, "embed (random init)",
          f"earthembed embed --checkpoint {export} --store {store_dir} --out {emb['random_init']} --random-init "
          "--overwrite",
          embed_random_init, export, store, emb["random_init"], seed=seed, progress=True, overwrite=True)
    features = list(DEMO_FEATURES)
    galileo = _galileo_source(download)
    if galileo is not None:
        from earthembed.models.published import export_encoder

        emb["galileo"] = out / "emb_galileo.parquet"
        weights = galileo.opened.provenance["weights_file"]
        from earthembed.cli_utils import echo_warnings
        from earthembed.models.published import PublishedWeightsWarning

        with echo_warnings(PublishedWeightsWarning):  # which store bands it does not read: one line
            gexport = _step(log, "fit Galileo-nano (published)", f"(fit {GALILEO} from {weights} to the store's bands)",
                            export_encoder, galileo.spec, store, out / "emb_galileo.model", weights=weights)
        _step(log, "embed (Galileo-nano)",
              f"earthembed embed --encoder {GALILEO} --store {store_dir} --out {emb['galileo']} --overwrite",
              embed_store, gexport, store, emb["galileo"], progress=True, overwrite=True)
        features.append("galileo:emb_fused")
    few_dir = out / "fewshot"
    args = " ".join(f"--embeddings {k}={v}" for k, v in emb.items() if k != "random_init")
    estimators, budgets = (None, None) if full_grid else (DEMO_ESTIMATORS, DEMO_BUDGETS)
    results = _step(
        log, "fewshot",
        f"earthembed fewshot {args} --random-init {emb['random_init']} --store {store_dir} "
        f"--task {','.join(tasks)} --out {few_dir} --seeds {len(seeds)} --feature-columns {','.join(features)} "
        f"--jobs {jobs}" + (f" --estimators {estimators} --budgets '{budgets}'" if not full_grid else ""),
        run_fewshot, emb, store, list(tasks), few_dir, seeds=list(seeds), feature_columns=features,
        n_jobs=jobs, estimators=estimators, budgets=budgets, progress=True,
    )
    png = out / "embeddings_pca.png"
    _step(log, "plot-embeddings",
          f"earthembed plot-embeddings {emb['pretrained']} --store {store_dir} --color-by landcover --out {png}",
          plot_embeddings, emb["pretrained"], "landcover", png, store=store)
    from earthembed.evaluate.compare import comparison_sentence, load_bootstrap

    boot = load_bootstrap(few_dir)
    report = write_report(out, store, export, results, few_dir, png, log, time.perf_counter() - t_start, boot)
    print((few_dir / "summary.md").read_text())
    print(f"[demo] {comparison_sentence(results, 'pretrained:emb_fused', COMPARE_BASELINES, boot=boot)}")
    print(f"[demo] report: {report}")
    html = map_and_search(out, store, emb["pretrained"], few_dir, log, seed=seed)
    print(f"[demo] HTML report (store, label efficiency, maps, search): {html}")
    for line in closing_sentences(results, boot):
        print(line)
    return report


NEXT_STEPS = (
    "earthembed ingest folder|rasters|stac ... --out STORE; earthembed pretrain --store STORE --out RUN; "
    "earthembed embed --checkpoint RUN/export --store STORE --out EMB.parquet; "
    "earthembed fewshot --embeddings mine=EMB.parquet --store STORE --task YOUR_LABEL --out FEWSHOT"
)
"""What to run on one's own data (the demo's last sentence)."""


def closing_sentences(results: pd.DataFrame, boot: pd.DataFrame | None = None) -> list[str]:
    """The demo's last two lines: what won at small budgets here, and the commands to run on one's own data."""
    from earthembed.evaluate.compare import comparison_sentence

    sentence = comparison_sentence(results, "pretrained:emb_fused", COMPARE_BASELINES, boot=boot)
    return [f"What won at small budgets: {sentence}",
            f"Next, on your own data: {NEXT_STEPS} (README.md, 'The pipeline')."]


def write_report(out: Path, store: Any, export: Path, results: pd.DataFrame, few_dir: Path, png: Path,
                 log: list[dict[str, Any]], seconds: float, boot: pd.DataFrame | None = None) -> Path:
    """A short markdown report: what ran (commands, timings), the data, the label-efficiency tables and one
    sentence comparing the pretrained embedding with the baselines (paired too, given ``boot``)."""
    from earthembed.evaluate.compare import comparison_sentence
    from earthembed.models.export import read_export

    meta, _ = read_export(export)
    info = store.info()
    lines = [
        "# earthembed demo report",
        "",
        f"Synthetic multimodal AOI: {info['chips']} chips of {info['chip_size']}x{info['chip_size']} px, modalities "
        + ", ".join(f"{k} ({len(v['bands'])} bands, present in {v['present']})" for k, v in info["modalities"].items())
        + f"; splits {info['splits']}.",
        f"Model `{meta.model_id}` ({meta.architecture}, embed dim {meta.embed_dim}), "
        f"total run time {seconds / 60:.1f} min.",
        "",
        "Feature sets: `pretrained:emb_fused` (all modalities), `pretrained:emb_<modality>` (one modality, same "
        "checkpoint), `pretrained_rgb:emb_s2` (the S2 tower fed only B04/B03/B02), `random_init:*` (same "
        "architecture, random weights), `band_stats` (per-band mean/std/percentiles of the raw chip)"
        + (", `galileo:emb_fused` (the published Galileo-nano encoder, Tseng et al. 2025, fitted to the store "
           "by band name: S2 + S1 + elevation)." if "galileo:emb_fused" in set(results["features"]) else "."),
        "",
        "**" + comparison_sentence(results, "pretrained:emb_fused", COMPARE_BASELINES, boot=boot) + "**",
        "",
        "## Steps",
        "",
        "| step | seconds | command |",
        "|---|---|---|",
        *[f"| {r['step']} | {r['seconds']} | `{r['command']}` |" for r in log],
        "",
        f"![label efficiency]({(few_dir / 'label_efficiency.png').relative_to(out)})",
        "",
        f"![embedding space]({png.relative_to(out)})",
        "",
        (few_dir / "summary.md").read_text(),
    ]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    return report


DEMO_POINTS = 200


def sample_points(store: Any, n: int, path: Path, seed: int = 0) -> Path:
    """``n`` labelled points as a user would bring them: random spots of the train/val chips, each with the
    land cover of the pixel under it (from the store's mask), in lon/lat (EPSG:4326, not the store's CRS)."""
    import geopandas as gpd
    import numpy as np
    import shapely
    from rasterio.transform import Affine
    from rasterio.warp import transform as warp

    from earthembed.data.synth import CLASSES

    idx = store.index
    rng = np.random.default_rng(seed)
    pool = np.flatnonzero(idx["split"].isin(["train", "val"]).to_numpy())
    chips = np.sort(rng.choice(pool, n, replace=len(pool) < n))  # a small AOI: several points per chip
    masks = store.read_mask("landcover_mask", chips)
    rc = rng.integers(0, store.chip_size, (n, 2))
    xs, ys, labels = [], [], []
    for k, i in enumerate(chips):
        x, y = Affine(*idx["transform"].iloc[i][:6]) * (rc[k, 1] + 0.5, rc[k, 0] + 0.5)
        xs.append(x)
        ys.append(y)
        labels.append(CLASSES[int(masks[k, rc[k, 0], rc[k, 1]])])
    lon, lat = warp(idx["crs"].iloc[0], "EPSG:4326", xs, ys)
    gdf = gpd.GeoDataFrame({"landcover": labels}, geometry=shapely.points(lon, lat), crs="EPSG:4326")
    gdf.to_file(path, layer="labels")
    return path


def map_and_search(out: Path, store: Any, emb: Path, few_dir: Path, log: list[dict[str, Any]], seed: int = 0) -> Path:
    """The end of the demo: 200 point labels -> predict every chip -> land-cover map next to the truth; a
    similarity search for water; one HTML page with all of it. Returns the page's path."""
    from earthembed.evaluate.predict import predict_chips
    from earthembed.explore.maps import side_by_side, write_map
    from earthembed.explore.report import write_report as write_html
    from earthembed.explore.search import search, write_hits

    points = out / "labels_points.gpkg"
    _step(log, "labels", f"(sample {DEMO_POINTS} labelled points in lon/lat -> {points})", sample_points, store,
          DEMO_POINTS, points, seed)
    pred = out / "predictions.parquet"
    res = _step(log, "predict", f"earthembed predict --embeddings {emb} --store {store.path} --task landcover "
                f"--labels {points} --estimator logreg --out {pred}",
                predict_chips, emb, store, "landcover", pred, labels=points, estimator="logreg", seed=seed)
    maps = out / "maps"
    maps.mkdir(exist_ok=True)
    [m_pred] = _step(log, "map (predicted)", f"earthembed map --table {pred} --column landcover --out "
                     f"{maps / 'predicted_landcover.tif'}", write_map, pred, "landcover", maps / "predicted_landcover.tif")
    [m_true] = _step(log, "map (truth)", f"earthembed map --table {store.path} --column landcover --out "
                     f"{maps / 'true_landcover.tif'}", write_map, store.path, "landcover", maps / "true_landcover.tif")
    [m_water] = _step(log, "map (P(water))", f"earthembed map --table {pred} --column prob_water --out "
                      f"{maps / 'prob_water.tif'}", write_map, pred, "prob_water", maps / "prob_water.tif")
    [m_pca] = _step(log, "map (embedding PCA)", f"earthembed map --table {emb} --column emb_fused --out "
                    f"{maps / 'embedding_pca.tif'}", write_map, emb, "emb_fused", maps / "embedding_pca.tif",
                    store=store.path)
    df = pd.read_parquet(pred, columns=["chip_id", "split", "labelled", "landcover"])
    truth = store.index.set_index("chip_id")["landcover"]
    test = df[df["split"] == "test"]
    acc = float((test["landcover"].to_numpy() == truth.loc[test["chip_id"]].to_numpy()).mean())
    title = (f"predicted from {DEMO_POINTS} point labels on {res.meta['n_train']} chips (test-chip accuracy "
             f"{acc:.1%}, {len(test)} chips)")
    sbs = side_by_side([m_pred, m_true], [title, "truth (majority class of each chip)"], maps / "landcover_vs_truth.png")
    idx = store.index
    water = idx[(idx["split"] == "train")].sort_values("frac_water", ascending=False)["chip_id"].head(3).tolist()
    hits_f = out / "search" / "water_hits.parquet"
    hits_f.parent.mkdir(exist_ok=True)
    hits = _step(log, "search", f"earthembed search --embeddings {emb} --positive {','.join(water)} --k 50 "
                 f"--out {hits_f}", search, emb, water, k=50, store=store.path)
    write_hits(hits, hits_f, store=store.path)
    prec = float((truth.loc[hits.table["chip_id"]].to_numpy() == "water").mean())
    print(f"[demo] map: {m_pred} vs {m_true} -> {sbs}; test-chip accuracy {acc:.1%} from "
          f"{res.meta['n_train']} point labels ({res.label_report['n_multi_chip']} on chip edges, "
          f"{res.label_report['n_outside']} outside)")
    print(f"[demo] search: {len(hits.table)} chips like {water}: {prec:.0%} of them are mostly water -> {hits_f}")
    html = out / "report.html"
    _step(log, "report", f"earthembed report --out {html} --store {store.path} --fewshot {few_dir} --embeddings "
          f"{emb} --color-by landcover --predictions {pred} --map {m_pred} --map {m_water} --map {m_pca} "
          f"--image {sbs} --hits {hits_f}",
          write_html, html, store=store.path, fewshot=few_dir, embeddings=emb, color_by="landcover",
          predictions=[pred], maps=[m_pred, m_water, m_pca], images=[(sbs, "predicted land cover vs the truth")],
          hits=[hits_f], title="earthembed demo: synthetic AOI",
          notes=[f"Search for water: {prec:.0%} of the {len(hits.table)} hits are chips whose majority class is water."])
    return html
