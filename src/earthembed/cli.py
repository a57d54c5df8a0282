"""``earthembed`` command line: a thin layer over the Python API, one sub-module per pipeline stage."""

from __future__ import annotations

from pathlib import Path

import typer

from earthembed.data import cli as data_cli
from earthembed.embed import cli as embed_cli
from earthembed.evaluate import cli as evaluate_cli
from earthembed.explore import cli as explore_cli
from earthembed.pretrain import cli as pretrain_cli

app = typer.Typer(
    name="earthembed",
    help="Pretrain multimodal EO foundation models, embed every chip, map new things from few labels.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain click help: rich costs ~0.3 s per call (issue 13: --help < 0.3 s)
)

for _stage in (data_cli, pretrain_cli, embed_cli, evaluate_cli, explore_cli):
    _stage.register(app)


@app.callback()
def _global_options(
    ctx: typer.Context,
    debug: bool = typer.Option(False, "--debug", help="on an error, show the full traceback instead of one line"),
) -> None:
    """Options for every command (``earthembed --debug COMMAND ...``)."""
    from earthembed import cli_utils

    cli_utils.DEBUG = debug
    ctx.call_on_close(lambda: setattr(cli_utils, "DEBUG", False))


@app.command("demo")
def demo(
    out: Path = typer.Option(Path("demo_out"), "--out", help="output directory (reused steps are skipped)"),
    chips: int = typer.Option(1024, help="synthetic AOI size in chips"),
    chip_size: int = typer.Option(32, help="chip size in pixels"),
    max_steps: int = typer.Option(None, help="override the tiny config's training steps"),
    seeds: int = typer.Option(3, help="few-shot seeds"),
    seed: int = typer.Option(0, help="seed of the synthetic AOI and of training"),
    full_grid: bool = typer.Option(False, "--full-grid", help="few-shot with the random forest and the 500-chip budget too (several minutes more)"),
    download: bool = typer.Option(False, "--download", help="fetch the published Galileo-nano weights (4 MB, sha256-checked) "
                                  "into the user cache if absent, so the few-shot table includes galileo:emb_fused"),
) -> None:
    """Synthetic AOI -> tiny pretraining -> embed -> few-shot vs baselines -> plots and report.md.

    Galileo-nano joins the few-shot table when its weights are in the user cache (or with --download);
    otherwise one line says how to add it."""
    from earthembed.cli_utils import fail_on
    from earthembed.demo import run_demo
    from earthembed.outputs import prepare_output_dir

    with fail_on():
        prepare_output_dir(out, "demo")  # new, empty or an earlier demo's: never a directory it did not make
        run_demo(out, chips=chips, chip_size=chip_size, seed=seed, max_steps=max_steps, seeds=tuple(range(seeds)),
                 full_grid=full_grid, download=download)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
