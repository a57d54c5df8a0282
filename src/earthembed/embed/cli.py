"""CLI of the embed stage."""

from __future__ import annotations

from pathlib import Path

import typer

from earthembed.cli_utils import fail_on


def embed(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="exported model directory (or its model.json)"),
    store: Path = typer.Option(..., "--store", help="chip store to embed"),
    out: Path = typer.Option(..., "--out", help="output GeoParquet table"),
    modalities: str = typer.Option(None, help="comma-separated subset, e.g. s2,s1 (default: all the model knows)"),
    bands: str = typer.Option(None, help="band subset per modality, e.g. 's2:B04,B03,B02;s1:VV'"),
    batch_size: int = typer.Option(64, help="chips per forward pass"),
    num_workers: int = typer.Option(0, help="DataLoader workers reading the store"),
    random_init: bool = typer.Option(False, help="use a randomly initialised encoder of the same architecture"),
    seed: int = typer.Option(0, help="seed of the random-init encoder"),
    restart: bool = typer.Option(False, help="ignore the parts of an interrupted run and start again"),
    overwrite: bool = typer.Option(False, help="replace an existing embedding table at --out (never any other file)"),
    device: str = typer.Option("cpu", help="torch device, e.g. cuda"),
    prefetch: bool = typer.Option(None, "--prefetch/--no-prefetch",
                                  help="read the next batch in a thread (default: on for accelerators, off on CPU)"),
    quiet: bool = typer.Option(False, help="no progress bar"),
) -> None:
    """Embed every chip: one row per chip with fused and per-modality embeddings (resumable)."""
    from earthembed.embed.run import embed_random_init, embed_store, parse_bands

    with fail_on():
        kw = dict(
            modalities=[m.strip() for m in modalities.split(",")] if modalities else None,
            bands=parse_bands(bands),
            batch_size=batch_size,
            num_workers=num_workers,
            resume=not restart,
            progress=not quiet,
            device=device,
            prefetch=prefetch,
            overwrite=overwrite,
        )
        if random_init:
            path = embed_random_init(checkpoint, store, out, seed=seed, **kw)
        else:
            path = embed_store(checkpoint, store, out, **kw)
    typer.echo(f"wrote {path}")


def register(app: typer.Typer) -> None:
    app.command("embed")(embed)
