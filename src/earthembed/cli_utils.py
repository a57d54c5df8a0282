"""Shared CLI helpers: turn expected errors into one clear line and a non-zero exit."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import typer

from earthembed.data.modalities import BandMismatchError
from earthembed.errors import IngestError, StoreError

EXPECTED = (IngestError, StoreError, BandMismatchError, FileNotFoundError, KeyError, ValueError)


@contextlib.contextmanager
def fail_on(*extra: type[BaseException]) -> Iterator[None]:
    """Print ``error: <message>`` to stderr and exit 1 for expected errors (bad input), not a traceback."""
    try:
        yield
    except (*EXPECTED, *extra) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        typer.secho(f"error: {msg}", err=True, fg=typer.colors.RED)
        raise typer.Exit(1) from e
