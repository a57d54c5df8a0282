"""Shared CLI helpers: turn errors into one clear line and a non-zero exit (``--debug``: the traceback)."""

from __future__ import annotations

import contextlib
import os
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


def _output_params() -> list[str]:
    """The output paths the running command was given (``--out``, ``--out-*``, ``--*-dir``, ``--*-out``)."""
    try:  # typer >= 0.20 carries its own copy of click
        from typer._click.globals import get_current_context
    except ImportError:  # pragma: no cover - older typer on click
        from click import get_current_context

    ctx = get_current_context(silent=True)
    if ctx is None:
        return []
    out = []
    for p in ctx.command.params:
        flag = max(p.opts, key=len) if p.opts else ""
        value = ctx.params.get(p.name or "")
        if value and (flag == "--out" or flag.startswith("--out-") or flag.endswith(("-dir", "-out"))):
            out.append(str(value))
    return out


def storage_message(e: BaseException) -> str | None:
    """One line for a write that failed because of the storage (disk full, quota, read-only, I/O error) and whose
    error names no file: the command's output path(s), the cause and the re-run; None for other errors."""
    from earthembed.outputs import STORAGE_ERRNOS, WriteError, os_error_of

    err = os_error_of(e)
    if err is None or isinstance(e, WriteError) or err.errno not in STORAGE_ERRNOS or err.filename:
        return None
    where = " or ".join(_output_params()) or "this command's output"
    return (f"{where}: {os.strerror(err.errno)} while writing it; free space and re-run the same command (what "
            "an earlier run wrote is kept)")


def error_message(e: BaseException) -> str:
    """The one line shown for ``e``. A bare ``KeyError('modalities')`` becomes "missing key 'modalities'"."""
    storage = storage_message(e)
    if storage is not None:
        return storage
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
