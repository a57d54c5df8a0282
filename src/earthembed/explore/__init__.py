"""Looking at embeddings: 2-D projections coloured by labels (imported lazily for a fast CLI start)."""

from __future__ import annotations

from typing import Any

__all__ = ["plot_embeddings", "project"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from earthembed.explore import projection

        return getattr(projection, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
