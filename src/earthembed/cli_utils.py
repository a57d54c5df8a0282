"""Shared CLI helpers: turn errors into one clear line and a non-zero exit (``--debug``: the traceback)."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import typer
import typer.exceptions

from earthembed.data.modalities import BandMismatchError
from earthembed.errors import IngestError, OutputError, StoreError

EXPECTED = (IngestError, StoreError, OutputError, BandMismatchError, OSError, KeyError, ValueError)
"""Bad input: their messages name the file and the problem, so the traceback adds nothing for a user."""

DEBUG = False
"""Set by the global ``earthembed --debug`` option for one invocation (reset when it ends, so it never leaks
into the next command run in the same process): errors then propagate with their traceback."""

_PASS_THROUGH = (typer.Exit, typer.Abort, typer.exceptions.TyperException)  # typer's own control flow


def error_message(e: BaseException) -> str:
    """The one line shown for ``e``. A bare ``KeyError('modalities')`` becomes "missing key 'modalities'"."""
    if isinstance(e, KeyError):
        key = e.args[0] if e.args else None
        return key if isinstance(key, str) and " " in key else f"missing key {key!r}"
    if isinstance(e, (*EXPECTED,)):
        return str(e)
    return f"{type(e).__name__}: {e} (unexpected; `earthembed --debug ...` shows the traceback)"


@contextlib.contextmanager
def fail_on(*extra: type[BaseException]) -> Iterator[None]:
    """Print ``error: <message>`` to stderr and exit 1 for any error, as one line (``extra``: more exception
    types whose message is enough). With ``--debug`` the exception propagates with its traceback."""
    try:
        yield
    except _PASS_THROUGH:
        raise
    except Exception as e:
        if DEBUG:
            raise
        msg = str(e) if isinstance(e, extra) else error_message(e)
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
