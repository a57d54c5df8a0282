"""Exceptions for bad input; kept import-light so the CLI can catch them without loading the stack."""

from __future__ import annotations


class StoreError(RuntimeError):
    """A chip store is missing, incomplete, or does not match what is asked of it."""


class IngestError(RuntimeError):
    """Bad input for an ingest (corrupt raster, wrong band count, missing file, ...); message names the file."""
