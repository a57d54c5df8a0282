"""``earthembed`` command line: a thin layer over the Python API, one sub-module per pipeline stage."""

from __future__ import annotations

import typer

from earthembed.data import cli as data_cli

app = typer.Typer(
    name="earthembed",
    help="Pretrain multimodal EO foundation models, embed every chip, map new things from few labels.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

for _stage in (data_cli,):
    _stage.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
