"""Exceptions for bad input; kept import-light so the CLI can catch them without loading the stack."""

from __future__ import annotations


class BandMismatchError(ValueError):
    """Requested bands are not available, or arrive in an order that cannot be matched by name."""


class StoreError(RuntimeError):
    """A chip store is missing, incomplete, damaged, or does not match what is asked of it."""


class IngestError(RuntimeError):
    """Bad input for an ingest (corrupt raster, wrong band count, missing file, ...); message names the file."""


class OutputError(RuntimeError):
    """An output path that earthembed refuses to write: it exists, is not earthembed's, or is (inside) an input."""


class LockedError(OutputError):
    """Another process is writing the same store or output; the message names it (pid, host, command)."""


class EvaluationWarning(UserWarning):
    """A result that was computed but may mean nothing (e.g. a constant feature set); the CLI shows it as one
    ``warning:`` line, and the outputs record it."""
