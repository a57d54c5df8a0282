"""CLI of the embed stage."""

from __future__ import annotations

from pathlib import Path

import typer

from earthembed.cli_utils import fail_on


def embed(
    checkpoint: Path = typer.Option(None, "--checkpoint", help="exported model directory (or its model.json)"),
    store: Path = typer.Option(..., "--store", help="chip store to embed"),
    out: Path = typer.Option(..., "--out", help="output GeoParquet table"),
    modalities: str = typer.Option(None, help="comma-separated subset, e.g. s2,s1 (default: all the model knows)"),
    bands: str = typer.Option(None, help="band subset per modality, e.g. 's2:B04,B03,B02;s1:VV'"),
    batch_size: int = typer.Option(64, help="chips per forward pass"),
    num_workers: int = typer.Option(0, help="DataLoader workers reading the store"),
    random_init: bool = typer.Option(False, help="use a randomly initialised encoder of the same architecture"),
    seed: int = typer.Option(0, help="seed of the random-init encoder or of the rcf filters"),
    restart: bool = typer.Option(False, help="ignore the parts of an interrupted run and start again"),
    device: str = typer.Option("cpu", help="torch device, e.g. cuda"),
    prefetch: bool = typer.Option(None, "--prefetch/--no-prefetch",
                                  help="read the next batch in a thread (default: on for accelerators, off on CPU)"),
    quiet: bool = typer.Option(False, help="no progress bar"),
    featurizer: str = typer.Option(
        None, help="'rcf': random convolutional features built from --store (no --checkpoint; the featurizer is "
        "exported to <out stem>_featurizer/ so --checkpoint can reuse it on another store)"),
    rcf_mode: str = typer.Option("empirical", help="rcf filters: empirical (whitened train-split patches) | gaussian"),
    rcf_features: int = typer.Option(512, help="rcf features per modality (even; half as many filters)"),
    rcf_kernel: int = typer.Option(3, help="rcf filter size in pixels"),
) -> None:
    """Embed every chip: one row per chip with fused and per-modality embeddings (resumable).

    With --featurizer rcf, no model is needed: random convolutional features (MOSAIKS; TorchGeo's RCF) of
    every modality, e.g. `earthembed embed --featurizer rcf --store STORE --out rcf.parquet`."""
    from earthembed.embed.run import embed_random_init, embed_rcf, embed_store, parse_bands

    with fail_on():
        if featurizer not in (None, "rcf"):
            raise ValueError(f"--featurizer {featurizer!r}: the only featurizer is 'rcf'")
        if (checkpoint is None) == (featurizer is None):
            raise ValueError("give exactly one of --checkpoint (an exported model) or --featurizer rcf")
        if random_init and featurizer:
            raise ValueError("--random-init needs --checkpoint (a random RCF is --featurizer rcf --rcf-mode gaussian)")
        kw = dict(
            modalities=[m.strip() for m in modalities.split(",")] if modalities else None,
            bands=parse_bands(bands),
            batch_size=batch_size,
            num_workers=num_workers,
            resume=not restart,
            progress=not quiet,
            device=device,
            prefetch=prefetch,
        )
        if featurizer:
            rcf = {"mode": rcf_mode, "features": rcf_features, "kernel_size": rcf_kernel, "seed": seed}
            path = embed_rcf(store, out, rcf=rcf, **kw)
            typer.echo(f"featurizer: {path.with_name(path.stem + '_featurizer')}")
        elif random_init:
            path = embed_random_init(checkpoint, store, out, seed=seed, **kw)
        else:
            path = embed_store(checkpoint, store, out, **kw)
    typer.echo(f"wrote {path}")


def register(app: typer.Typer) -> None:
    app.command("embed")(embed)
