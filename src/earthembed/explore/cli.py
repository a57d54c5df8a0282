"""CLI of the explore stage: ``plot-embeddings``, ``map``, ``index``, ``search`` and ``report``."""

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


def map_(
    table: Path = typer.Option(..., "--table", help="per-chip table: predictions, embeddings, or a store directory"),
    column: str = typer.Option(..., "--column", help="class, probability, fraction or embedding (emb_*) column"),
    out: Path = typer.Option(..., "--out", help="Cloud-Optimised GeoTIFF to write (a .png preview goes beside it)"),
    store: Path = typer.Option(None, "--store", help="store with the chips' CRS/transform (default: recorded in the table)"),
    crs: str = typer.Option(None, "--crs", help="reproject every chip into this CRS (default: one map per CRS)"),
    pixel_size: float = typer.Option(None, "--pixel-size", help="map pixel size in CRS units (default: see docs)"),
) -> None:
    """Rasterise per-chip values back onto the AOI grid as a COG, with a PNG preview."""
    from earthembed.explore.maps import write_map

    with fail_on():
        paths = write_map(table, column, out, store=store, crs=crs, pixel_size=pixel_size)
    for p in paths:
        typer.echo(f"wrote {p} (preview {p.with_suffix('.png')})")


def register(app: typer.Typer) -> None:
    app.command("plot-embeddings")(plot_embeddings)
    app.command("map")(map_)
