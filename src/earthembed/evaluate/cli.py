"""CLI of the evaluate stage: ``fewshot`` label-efficiency curves of embeddings against store labels,
``predict`` every chip from a few labels, and ``segment`` (fine-tuned segmentation from several inits at
several label fractions)."""

from __future__ import annotations

from pathlib import Path

import typer

from earthembed.cli_utils import echo_warnings, fail_on


def parse_embedding_args(items: list[str], random_init: Path | None = None) -> dict[str, Path]:
    """``["NAME=PATH" | "PATH", ...]`` -> ``{name: path}``; a bare PATH is named after its file stem."""
    out: dict[str, Path] = {}
    for it in items:
        name, sep, path = it.partition("=")
        if not sep:
            name, path = Path(it).stem, it
        name = name.strip()
        if not name or not path:
            raise ValueError(f"--embeddings {it!r}: expected PATH or NAME=PATH")
        if name in out:
            raise ValueError(f"--embeddings: feature-set name {name!r} is used twice; name them with NAME=PATH")
        out[name] = Path(path)
    if random_init is not None:
        if "random_init" in out:
            raise ValueError("--random-init: the name 'random_init' is already used by --embeddings")
        out["random_init"] = Path(random_init)
    return out


def fewshot(
    embeddings: list[str] = typer.Option(..., "--embeddings", help="PATH or NAME=PATH, repeatable"),
    store: Path = typer.Option(..., "--store", help="chip store holding the labels"),
    task: str = typer.Option(..., "--task", help="label column(s), comma-separated"),
    out: Path = typer.Option(..., "--out", help="output directory"),
    budgets: str = typer.Option(None, help="e.g. '1,5,10,20,50,all' for every task, or per budget mode "
                                "'per_class=1,5,all; total=10,100,all' (default: per class 1..50 or total 10..1000, + all)"),
    budget_mode: str = typer.Option("auto", help="auto | per_class | total"),
    seeds: int = typer.Option(3, help="number of seeds (budget draws): 0..N-1"),
    estimators: str = typer.Option(None, help="comma list: logreg/ridge (or linear), rf, knn (default: all)"),
    baselines: str = typer.Option(
        "band_stats,rcf,random_init",
        help="comma list of baselines, or 'none': band_stats (per-band statistics of the chip), rcf (random "
        "convolutional features of every modality, MOSAIKS/TorchGeo, embedded into --out), random_init "
        "(a randomly initialised encoder of the first table's model, embedded into --out unless --random-init is given)",
    ),
    rcf_mode: str = typer.Option("empirical", help="rcf baseline filters: empirical (whitened train-split patches) | gaussian"),
    rcf_features: int = typer.Option(512, help="rcf baseline features per modality"),
    random_init: Path = typer.Option(
        None, help="embedding table of a random-init encoder of the same architecture (used instead of embedding one)"
    ),
    feature_columns: str = typer.Option(None, help="embedding columns, plain (emb_fused: every table) or NAME:COLUMN (one table); default all"),
    n_boot: int = typer.Option(200, help="bootstrap resamples for the 95% CIs"),
    jobs: int = typer.Option(1, "--jobs", "-j", help="parallel processes over feature set x estimator (-1: all cores)"),
    holdout: str = typer.Option("test", help="split to score on: test, or val to tune recipes (budgets from "
                                "train only; the test chips' labels are left out)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress (a bar on a terminal, a line every 10% otherwise)"),
) -> None:
    """Few-shot label efficiency: train estimators on growing label budgets, score on the fixed test split.

    --out is a new or empty directory, or one an earlier fewshot wrote (its results are refreshed, its baseline
    tables reused); anything else is refused."""
    from earthembed.errors import EvaluationWarning
    from earthembed.evaluate.fewshot import run_fewshot

    with fail_on(), echo_warnings(EvaluationWarning):
        if seeds < 1:
            raise ValueError("--seeds must be >= 1")
        run_fewshot(
            parse_embedding_args(embeddings, random_init),
            store,
            task,
            out,
            budgets=budgets,
            budget_mode=budget_mode,
            seeds=tuple(range(seeds)),
            estimators=estimators,
            baselines=baselines,
            n_boot=n_boot,
            feature_columns=feature_columns,
            progress=not quiet,
            n_jobs=jobs,
            rcf={"mode": rcf_mode, "features": rcf_features},
            holdout=holdout,
        )
    typer.echo((out / "summary.md").read_text())
    typer.echo(f"results: {out / 'results.csv'}  plot: {out / 'label_efficiency.png'}")


def predict(
    embeddings: Path = typer.Option(..., "--embeddings", help="embedding table (GeoParquet)"),
    store: Path = typer.Option(..., "--store", help="chip store the table was embedded from"),
    task: str = typer.Option(..., "--task", help="label column: of the store, or of --labels"),
    out: Path = typer.Option(..., "--out", help="predictions GeoParquet to write"),
    labels: Path = typer.Option(None, "--labels", help="points/polygons (GeoPackage or GeoParquet, any CRS) with a --task column"),
    layer: str = typer.Option(None, "--layer", help="layer of a multi-layer GeoPackage"),
    estimator: str = typer.Option("linear", "--estimator", help="logreg (classes) / ridge (numbers) / linear (either), rf, knn"),
    column: str = typer.Option("emb_fused", "--column", help="embedding column"),
    max_labels: int = typer.Option(None, "--max-labels", help="fit on a random subset of this many labelled chips"),
    min_cover: float = typer.Option(0.5, "--min-cover", help="share of a chip a polygon must cover to label it"),
    seed: int = typer.Option(0, "--seed"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an earlier predictions table at --out (never any other file)"),
) -> None:
    """Fit on the labelled chips, predict every chip: class + probabilities, or the value/fraction."""
    from earthembed.evaluate.label_join import summarise
    from earthembed.evaluate.predict import predict_chips

    with fail_on():
        res = predict_chips(embeddings, store, task, out, labels=labels, estimator=estimator, column=column,
                            seed=seed, max_labels=max_labels, min_cover=min_cover, layer=layer,
                            overwrite=overwrite)
    if res.label_report:
        for line in summarise(res.label_report):
            typer.echo(line)
    m = res.meta
    typer.echo(f"{m['estimator']} fitted on {m['n_train']} labelled chips ({m['kind']}); predicted "
               f"{m['n_predicted']} chips -> {res.path}"
               + (f" ({m['n_no_embedding']} chips without an embedding left out)" if m["n_no_embedding"] else ""))


def segment(
    init: str = typer.Option(..., "--init", help="export dir, 'random' (or random:MODEL / random:EXPORT), or NAME=SPEC"),
    store: Path = typer.Option(..., "--store", help="chip store with a pixel-mask label"),
    task: str = typer.Option(..., "--task", help="mask label column, e.g. water_mask"),
    out: Path = typer.Option(..., "--out", help="output directory (re-running resumes)"),
    compare: list[str] = typer.Option([], "--compare", help="more inits, same forms as --init (repeatable)"),
    fractions: str = typer.Option("0.01,0.05,0.1,0.25,1", "--fractions", help="label fractions of the training chips"),
    seeds: int = typer.Option(3, "--seeds", help="number of seeds: 0..N-1 (fraction draws and training)"),
    freeze_encoder: bool = typer.Option(False, "--freeze-encoder", help="train the decoder only (encoder frozen)"),
    model: str = typer.Option(None, "--model", help="architecture of a 'random' init (registered model name)"),
    weights: Path = typer.Option(None, "--weights", help="weights file (or, for galileo:, its folder) of the one "
                                 "published init among --init/--compare (default: the usual caches)"),
    download: bool = typer.Option(False, help="published inits: fetch missing weights (only where HF_HUB_OFFLINE is unset)"),
    patch_size: int = typer.Option(None, "--patch-size", help="galileo: pixels per token side, 1-8 (default 8; "
                                   "4 gives 4x the tokens: finer maps, slower)"),
    config: str = typer.Option("segment", "--config", help="YAML config or packaged name (earthembed/configs/segment.yaml)"),
    overrides: list[str] = typer.Argument(None, help="dotted overrides, e.g. train.max_steps=200 decoder.name=hypercolumn"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress (a bar on a terminal, a line every 10% otherwise)"),
) -> None:
    """Segmentation with few labels: fine-tune a U-Net from each init at each label fraction, score on test.

    A published init (e.g. `--init galileo:nano --weights DIR --compare random`) is fitted to the store by band
    name; `random` then copies its architecture (same patch size), so only the weights differ."""
    from earthembed.evaluate.segment import run_segment
    from earthembed.models.published import PublishedWeightsWarning

    with fail_on(), echo_warnings(PublishedWeightsWarning):
        if seeds < 1:
            raise ValueError("--seeds must be >= 1")
        inits = [init, *compare]
        options = _published_options(inits, {"patch_size": patch_size})
        ov = list(overrides or []) + ([f"model.name={model}"] if model else [])
        run_segment(store, task, inits, out, fractions=fractions, seeds=tuple(range(seeds)), config=config,
                    overrides=ov, freeze_encoder=True if freeze_encoder else None, progress=not quiet,
                    weights=weights, download=download, options=options)
    typer.echo((out / "summary.md").read_text())
    typer.echo(f"results: {out / 'results.csv'}  plots: {out / 'label_fraction.png'}, {out / 'predictions.png'}")


def _published_options(inits: list[str], options: dict) -> dict:
    """The set family ``options`` (``--patch-size``), checked against every published SPEC among ``inits``
    before anything is opened: an option no published init takes is refused, naming the flag."""
    from earthembed.evaluate.inits import _is_published, parse_init_args
    from earthembed.models.published import parse_spec
    from earthembed.models.published.load import check_options

    opts = {k: v for k, v in options.items() if v is not None}
    published = [spec for _, spec in parse_init_args(inits) if _is_published(spec)]
    if opts and not published:
        flags = ", ".join("--" + k.replace("_", "-") for k in opts)
        raise ValueError(f"{flags} goes with a published init (e.g. --init galileo:nano); an export carries its "
                         "settings and a random init copies them")
    for spec in published:
        check_options(parse_spec(spec), opts)
    return opts


def register(app: typer.Typer) -> None:
    app.command("fewshot")(fewshot)
    app.command("predict")(predict)
    app.command("segment")(segment)
