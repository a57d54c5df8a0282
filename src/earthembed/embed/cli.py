"""CLI of the embed stage."""

from __future__ import annotations

from pathlib import Path

import typer

from earthembed.cli_utils import echo_warnings, fail_on


def embed(
    checkpoint: Path = typer.Option(None, "--checkpoint", help="exported model directory (or its model.json)"),
    encoder: str = typer.Option(
        None, "--encoder",
        help="published model instead of --checkpoint: timm:<model name>, torchgeo:<weights name>, "
        "mmearth:<checkpoint file>, galileo:<nano|tiny|base> or an earthembed export (docs/published_weights.md)"),
    weights: Path = typer.Option(None, "--weights", help="weights file (or, for galileo:, its folder) of --encoder "
                                 "(default: the usual caches)"),
    patch_size: int = typer.Option(None, "--patch-size", help="galileo: pixels per token side, 1-8 (default 8; "
                                   "4 gives 4x the tokens: finer, slower)"),
    default_month: int = typer.Option(None, "--default-month", help="galileo: month (1-12) fed for chips without a "
                                      "date_<modality> (default 6, June, as the publisher)"),
    extra_bands: str = typer.Option("ignore", help="store bands --encoder never saw: ignore | add (zero-initialised channels)"),
    input_size: int = typer.Option(None, help="--encoder: resize chips to this size first (default: native size)"),
    download: bool = typer.Option(False, help="--encoder: fetch missing weights (only where HF_HUB_OFFLINE is unset)"),
    export_dir: Path = typer.Option(None, help="--encoder: where its earthembed export goes (default: OUT with suffix .model)"),
    store: Path = typer.Option(..., "--store", help="chip store to embed"),
    out: str = typer.Option(..., "--out", help="output GeoParquet table (.parquet), or a directory (ending with /) "
                            "for a sharded, shard-by-shard resumable embedding dataset"),
    engine: str = typer.Option("local", help="where shards run: local (this process) | ray (a Ray cluster; "
                               "pip install earthembed[ray]); ray implies a sharded --out directory"),
    address: str = typer.Option(None, help="--engine ray: the cluster to join (e.g. auto); default: start a local one"),
    workers: int = typer.Option(1, help="--engine ray: model workers (actors), each loading the model once"),
    gpus_per_worker: float = typer.Option(0.0, help="--engine ray: GPUs per worker"),
    shard_chips: int = typer.Option(None, help="chips per shard (rounded up to whole Zarr chunks; default 4096); "
                                    "implies a sharded --out directory"),
    tta: str = typer.Option(None, help="override the model's test-time augmentation at embed time: none | d4 "
                            "(the default recipes export an 8-view average, 8x the compute per chip)"),
    modalities: str = typer.Option(None, help="comma-separated subset, e.g. s2,s1 (default: all the model knows; "
                                   "with a published --encoder: the one store modality to feed)"),
    dates: str = typer.Option(None, "--dates", help="one row per (chip, date) of the store's time series (s2, s2_t2, "
                              "...): all, or date indices / ISO dates / date keys, e.g. 0,2 or 2023-07-01,2025-10-23; "
                              "each date is embedded as a single-date store would be (--modalities names series by "
                              "their base: s2). series: one row per chip embedding its whole series as one vector "
                              "(models with a time axis: galileo)"),
    bands: str = typer.Option(None, help="band subset per modality, e.g. 's2:B04,B03,B02;s1:VV'"),
    batch_size: int = typer.Option(64, help="chips per forward pass"),
    num_workers: int = typer.Option(0, help="DataLoader workers reading the store"),
    random_init: bool = typer.Option(False, help="use a randomly initialised encoder of the same architecture"),
    seed: int = typer.Option(0, help="seed of the random-init encoder or of the rcf filters"),
    restart: bool = typer.Option(False, help="ignore the parts of an interrupted run and start again"),
    overwrite: bool = typer.Option(False, help="replace an existing embedding table at --out (never any other file)"),
    device: str = typer.Option("cpu", help="torch device, e.g. cuda"),
    prefetch: bool = typer.Option(None, "--prefetch/--no-prefetch",
                                  help="read the next batch in a thread (default: on for accelerators, off on CPU)"),
    quiet: bool = typer.Option(False, help="no progress bar"),
    featurizer: str = typer.Option(
        None, help="embeddings built from --store, no model (no --checkpoint): 'rcf' (random convolutional "
        "features) | 'band_stats' (per-band mean, std, p10, p50, p90); exported to <out stem>_featurizer/ so "
        "--checkpoint can reuse it on another store"),
    rcf_mode: str = typer.Option(None, help="rcf filters: empirical (whitened train-split patches, the default) | "
                                 "gaussian"),
    rcf_features: int = typer.Option(None, help="rcf features per modality (even; half as many filters; default 512)"),
    rcf_kernel: int = typer.Option(None, help="rcf filter size in pixels (default 3)"),
) -> None:
    """Embed every chip: one row per chip with fused and per-modality embeddings (resumable); with --dates, one
    row per chip and date.

    With --featurizer rcf or band_stats, no model is needed: random convolutional features (MOSAIKS; TorchGeo's
    RCF) or per-band statistics of every modality, e.g. `earthembed embed --featurizer rcf --store STORE --out
    rcf.parquet`."""
    from earthembed.data.dates import is_series
    from earthembed.embed.run import (
        FEATURIZERS,
        embed_featurizer,
        embed_random_init,
        embed_store,
        no_time_axis,
        parse_bands,
    )

    with fail_on():
        mods = [m.strip() for m in modalities.split(",")] if modalities else None
        if featurizer not in (None, *FEATURIZERS):
            raise ValueError(f"--featurizer {featurizer!r}: one of {', '.join(FEATURIZERS)}")
        rcf = {k: v for k, v in (("mode", rcf_mode), ("features", rcf_features), ("kernel_size", rcf_kernel))
               if v is not None}
        if rcf and featurizer != "rcf":
            flags = {"mode": "--rcf-mode", "features": "--rcf-features", "kernel_size": "--rcf-kernel"}
            raise ValueError(f"{', '.join(flags[k] for k in rcf)} go{'es' if len(rcf) == 1 else ''} with "
                             "--featurizer rcf")
        if sum(x is not None for x in (checkpoint, encoder, featurizer)) != 1:
            raise ValueError("give exactly one of --checkpoint (an earthembed export), --encoder SPEC "
                             "(published weights) and --featurizer rcf|band_stats")
        if random_init and featurizer:
            raise ValueError("--random-init needs --checkpoint (a random RCF is --featurizer rcf --rcf-mode gaussian)")
        fit_mods, as_series = mods, None
        if is_series(dates):  # (featurizers are refused by embed_featurizer, before anything is computed)
            if encoder is not None:
                from earthembed.models.published import parse_spec

                family = parse_spec(encoder).family
                if family not in ("galileo", "export"):  # before it is fitted to the store
                    raise no_time_axis(encoder)
                as_series = True if family == "galileo" else None  # each series one observation of T dates
                if mods is not None:  # fitted to every date of the series named
                    from earthembed.data.dates import series_keys
                    from earthembed.data.store import ChipStore

                    fit_mods = series_keys(ChipStore(store), mods)
        elif dates is not None and mods is None and (encoder is not None or featurizer):
            from earthembed.data.dates import base_modalities
            from earthembed.data.store import ChipStore

            fit_mods = base_modalities(ChipStore(store))  # fitted to the series' bases, not to each date's key
            mods = fit_mods if featurizer else None
        if encoder is not None:
            checkpoint, _ = _published_export(encoder, store, Path(out.rstrip("/")), weights, fit_mods, extra_bands,
                                              input_size, download, export_dir,
                                              {"patch_size": patch_size, "default_month": _month(default_month),
                                               "series": as_series})
        elif weights is not None or patch_size is not None or default_month is not None:
            raise ValueError("--weights, --patch-size and --default-month go with --encoder; an export (--checkpoint) "
                             "carries its weights and settings")
        kw = dict(
            modalities=mods,
            bands=parse_bands(bands),
            batch_size=batch_size,
            num_workers=num_workers,
            resume=not restart,
            progress=not quiet,
            device=device,
            prefetch=prefetch,
            overwrite=overwrite,
            dates=dates,
        )
        shard_kw = dict(engine=engine, shard_chips=shard_chips, workers=workers, gpus_per_worker=gpus_per_worker,
                        address=address, tta=tta)
        if featurizer or random_init:
            unsharded = {k: v for k, v in shard_kw.items() if v not in (None, "local", 1, 0.0)}
            if unsharded or str(out).endswith("/"):
                raise ValueError("--featurizer and --random-init write one table (a .parquet --out); "
                                 f"drop {', '.join('--' + k.replace('_', '-') for k in unsharded) or 'the trailing /'}")
            from earthembed.storage import is_remote

            if is_remote(out):
                raise ValueError(f"{out}: --featurizer and --random-init write one local table; embed to a local "
                                 ".parquet (the store may be on object storage) and upload it, or embed with "
                                 "--checkpoint into a sharded s3:// dataset")
        if featurizer:
            options = {"mode": "empirical", **rcf, "seed": seed} if featurizer == "rcf" else None
            path = embed_featurizer(featurizer, store, Path(out), options=options, **kw)
            typer.echo(f"featurizer: {path.with_name(path.stem + '_featurizer')}")
        elif random_init:
            path = embed_random_init(checkpoint, store, Path(out), seed=seed, **kw)
        else:
            path = embed_store(checkpoint, store, out, **kw, **shard_kw)
        if dates is not None:
            from earthembed.data.dates import skipped_line
            from earthembed.embed.io import read_metadata

            time = read_metadata(path)["time"]
            what = (f"each chip's series of {len(time['t'])} dates of {', '.join(time['series'])} as one vector"
                    if time["mode"] == "series" else
                    f"{len(time['t'])} date{'s' if len(time['t']) != 1 else ''} of {', '.join(time['series'])}")
            typer.echo(f"{what}: " + ", ".join(f"t={t} {time['dates'][t] or time['date_keys'][t]}" for t in time["t"]))
            line = skipped_line(time)
            if line:
                typer.echo(line)
    typer.echo(f"wrote {path}")


def _published_export(
    encoder: str, store: Path, out: Path, weights: Path | None, mods: list[str] | None, extra_bands: str,
    input_size: int | None, download: bool, export_dir: Path | None, options: dict | None = None,
) -> tuple[Path, list[str] | None]:
    """(export to embed with, modalities to request) for ``--encoder``: an export as it is, or a published
    model fitted to the store and exported beside the output (``fewshot`` finds it there for its baselines)."""
    from earthembed.models.published import PublishedWeightsWarning, export_encoder, parse_spec
    from earthembed.models.published.load import check_options

    spec = parse_spec(encoder)
    check_options(spec, options)
    if spec.family == "export":
        if weights is not None:
            raise ValueError(f"{encoder}: an earthembed export carries its weights; drop --weights")
        return Path(spec.name), mods
    from earthembed.outputs import check_output
    from earthembed.storage import is_remote, location

    if export_dir is None and is_remote(out):  # the fitted model is written locally, beside --out by default
        raise ValueError(f"{location(out)}: --encoder with --out on object storage needs --export-dir (a local directory "
                         "for the fitted model, which the embedding workers load)")
    target = export_dir or out.with_name(out.stem + ".model")
    # before anything is fitted: a new or empty directory, or an earlier model export (which is replaced)
    check_output(target, "export", inputs=[store], overwrite=True, option="--export-dir")
    with echo_warnings(PublishedWeightsWarning):
        path = export_encoder(spec, store, target, weights=weights, modality=mods, extra_bands=extra_bands,
                              input_size=input_size, download=download, options=options)
    typer.echo(f"{encoder}: fitted to {store} and exported to {path}")
    return path, mods


def embed_status(
    dataset: Path = typer.Argument(..., help="a sharded embedding dataset (the --out directory of embed)"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """Done / pending / failed shards of a sharded embedding dataset (a re-run of embed does the rest)."""
    import json

    from earthembed.embed.shards import status

    with fail_on():
        st = status(dataset)
    if as_json:
        typer.echo(json.dumps(st, indent=2))
        return
    state = "complete" if st["complete"] else ("failed shards" if st["failed"] else "incomplete")
    typer.echo(f"{st['path']}: {state}: {len(st['done'])} done, {len(st['pending'])} pending, {len(st['failed'])} "
               f"failed of {st['shards']} shards ({st['chips']} chips; model {st['model_id']})")
    for name, err in st["failed"].items():
        typer.echo(f"  failed {name}: {err}")
    if not st["complete"]:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("embed")(embed)
    app.command("embed-status")(embed_status)


def _month(month: int | None) -> int | None:
    """``--default-month`` (1-12, as people count) as the model's 0-based month; None when not given."""
    if month is None:
        return None
    if not 1 <= month <= 12:
        raise ValueError(f"--default-month {month}: a month is 1-12 (6 = June)")
    return month - 1
