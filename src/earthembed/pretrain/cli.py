"""CLI of the pretrain stage: ``pretrain`` (train + export) and ``export-checkpoint``."""

from __future__ import annotations

from pathlib import Path

import typer

from earthembed.cli_utils import echo_warnings, fail_on


def pretrain(
    config: Path = typer.Option(
        None, "--config",
        help="YAML config, or the name of a packaged one (earthembed/configs/*.yaml, e.g. contrastive_tiny); default: "
        "the best CPU recipe for the store's kind (cpu_single_modality, cpu_rgb or cpu_multimodal), printed at start",
    ),
    store: Path = typer.Option(..., "--store", help="chip store to pretrain on"),
    out: Path = typer.Option(..., "--out", help="run directory (checkpoints, metrics.csv, export/)"),
    overrides: list[str] = typer.Argument(None, help="dotted overrides, e.g. train.max_steps=20 model.embed_dim=32"),
    init: str = typer.Option(
        None, "--init",
        help="start from published weights: timm:<model name>, torchgeo:<weights name>, mmearth:<checkpoint file>, "
        "galileo:<size> or an earthembed export (the model is then its architecture; docs/published_weights.md)"),
    weights: Path = typer.Option(None, "--weights", help="weights file of --init (default: the usual caches)"),
    extra_bands: str = typer.Option("add", help="store bands --init never saw: add (zero-initialised channels) | ignore"),
    download: bool = typer.Option(False, help="--init: fetch missing weights (only where HF_HUB_OFFLINE is unset)"),
    patch_size: int = typer.Option(None, "--patch-size", help="--init galileo:<size>: the patch size (default 8)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress (same as train.progress_bar=false)"),
) -> None:
    """Pretrain an encoder on a chip store and export it; re-running the same command resumes.

    Progress is steps done / train.max_steps: a bar on a terminal, a line every 10% in logs."""
    from earthembed.models.published import PublishedWeightsWarning
    from earthembed.pretrain.run import pretrain as run_pretrain

    with fail_on(), echo_warnings(PublishedWeightsWarning):
        check_run_dir(out, store, config, weights, init)
        ov = list(overrides or []) + (["train.progress_bar=false"] if quiet else [])
        export = run_pretrain(config, store, out, overrides=ov, init=init, weights=weights,
                              extra_bands=extra_bands, download=download, options={"patch_size": patch_size})
    typer.echo(f"exported model to {export}")


def export_checkpoint(
    ckpt: Path = typer.Option(..., "--ckpt", help="Lightning checkpoint of a pretraining run"),
    store: Path = typer.Option(..., "--store", help="store whose normalisation statistics travel with the model"),
    out: Path = typer.Option(..., "--out", help="export directory (model.safetensors + model.json)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an earthembed model export at --out (never anything else)"),
) -> None:
    """Convert a pretraining checkpoint into the self-describing export (safe load, no pickle code)."""
    from earthembed.data.normalize import Normalizer
    from earthembed.data.store import ChipStore
    from earthembed.models.export import export_checkpoint as run_export
    from earthembed.models.export import modality_products
    from earthembed.outputs import check_output

    with fail_on():
        check_output(out, "export", [ckpt, store], overwrite)
        chips = ChipStore(store)
        path = run_export(ckpt, out, Normalizer.from_store(chips), products=modality_products(chips.modalities))
    typer.echo(f"exported model to {path}")


def check_run_dir(out: Path, store: Path, config: Path | None = None, weights: Path | None = None,
                  init: str | None = None) -> None:
    """The output policy of a pretraining run directory (:mod:`earthembed.outputs`), before anything is loaded: a
    new or empty directory or an earlier run to resume, never an input, a file, a store or another directory."""
    from earthembed.outputs import check_output

    init_path = Path(init.partition(":")[2] or init) if init else None
    inputs = [store, weights, *(p for p in (config, init_path) if p is not None and p.exists())]
    check_output(out, "pretrain", inputs)


def register(app: typer.Typer) -> None:
    app.command("pretrain")(pretrain)
    app.command("export-checkpoint")(export_checkpoint)
