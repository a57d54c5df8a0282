"""Model registry: build encoders by name (TerraTorch-style), so configs and exports refer to a string."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

F = TypeVar("F", bound=Callable[..., nn.Module])

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[F], F]:
    """Decorator registering a factory (or class) under ``name``; a second registration is an error."""

    def deco(fn: F) -> F:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered")
        _MODELS[name] = fn
        return fn

    return deco


def _ensure_builtins() -> None:
    # imported lazily: the built-in models import this module to register themselves
    import earthembed.models.multimodal_vit  # noqa: F401


def list_models() -> list[str]:
    """Names accepted by :func:`build_model`."""
    _ensure_builtins()
    return sorted(_MODELS)


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name``; ``kwargs`` override the variant's defaults."""
    _ensure_builtins()
    try:
        factory = _MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; registered: {sorted(_MODELS)}") from None
    try:
        return factory(**kwargs)
    except TypeError as e:
        raise ValueError(f"model {name!r}: {e}") from e
