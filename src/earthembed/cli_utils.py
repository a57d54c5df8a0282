"""Shared CLI helpers: turn expected errors into one clear line and a non-zero exit."""

from __future__ import annotations

import contextlib
import warnings
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


@contextlib.contextmanager
def echo_warnings(category: type[Warning]) -> Iterator[None]:
    """Show warnings of ``category`` raised inside as ``warning: <message>`` lines on stderr (each once),
    instead of Python's ``file:line: Category: message`` format; other warnings go on as usual."""
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", category)
            yield
    finally:  # outside the recording context: re-emitted inside it, warnings would be recorded again
        for msg in dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, category)):
            typer.secho(f"warning: {msg}", err=True, fg=typer.colors.YELLOW)
        for w in caught:
            if not issubclass(w.category, category):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
