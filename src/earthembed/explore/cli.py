"""CLI of the explore stage: ``plot-embeddings``."""

from __future__ import annotations

from pathlib import Path

import typer

from earthembed.cli_utils import fail_on


def plot_embeddings(
    embeddings: Path = typer.Argument(..., help="embedding table (GeoParquet)"),
    color_by: str = typer.Option(..., "--color-by", help="label of the store, or a column of the table (e.g. split)"),
    out: Path = typer.Option(..., "--out", help="PNG to write"),
    store: Path = typer.Option(None, "--store", help="chip store with the labels (default: the one the table was embedded from)"),
    column: str = typer.Option("emb_fused", "--column", help="embedding column"),
    method: str = typer.Option("pca", "--method", help="pca | umap (umap needs umap-learn)"),
    max_points: int = typer.Option(20000, "--max-points"),
    multilabel: str = typer.Option("first", "--multilabel", help="colour multilabel chips by 'first' label or 'count'"),
    seed: int = typer.Option(0),
) -> None:
    """2-D projection (PCA or UMAP) of an embedding column, coloured by a label."""
    from earthembed.explore.projection import plot_embeddings as _plot

    with fail_on(ImportError):
        path = _plot(embeddings, color_by, out, store=store, column=column, method=method,
                     max_points=max_points, seed=seed, multilabel=multilabel)
    typer.echo(f"wrote {path}")


def register(app: typer.Typer) -> None:
    app.command("plot-embeddings")(plot_embeddings)
