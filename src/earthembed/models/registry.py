"""Model registry: build encoders by name (TerraTorch-style), so configs and exports refer to a string.

Built-in encoders register themselves when their module is imported; the modules listed here are
imported on the first lookup.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from torch import nn

from earthembed.registry import Registry

F = TypeVar("F", bound=Callable[..., nn.Module])

MODELS: Registry[nn.Module] = Registry(
    "model", builtins=("earthembed.models.multimodal_vit", "earthembed.models.timm_cnn",
                       "earthembed.models.timm_vit", "earthembed.models.rcf", "earthembed.models.galileo",
                       "earthembed.models.band_stats")
)


def register_model(name: str) -> Callable[[F], F]:
    """Decorator registering a factory (or class) under ``name``; a second registration is an error."""
    return MODELS.register(name)


def list_models() -> list[str]:
    """Names accepted by :func:`build_model`."""
    return MODELS.names()


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name``; ``kwargs`` override the variant's defaults."""
    return MODELS.build(name, **kwargs)


def variant(cls: type, **defaults: Any) -> Callable[..., nn.Module]:
    """A factory for ``cls`` with other defaults (``multimodal_vit_tiny`` = ``MultiModalViT`` + sizes).

    The factory declares ``cls``'s signature (``__signature_of__``), so configs are checked against it."""

    def factory(modalities: Any, **kwargs: Any) -> nn.Module:
        return cls(modalities, **{**defaults, **kwargs})

    factory.__signature_of__ = cls  # type: ignore[attr-defined]
    factory.defaults = dict(defaults)  # type: ignore[attr-defined]
    return factory


def check_model_config(section: Mapping[str, Any], where: str, prefix: str = "model") -> None:
    """A config's ``model:`` section (``name``, ``modalities`` + constructor arguments) checked against the
    registered factory's signature, so a CNN's ``depths`` is refused for a ViT and vice versa. ``prefix``
    names the keys in messages (``export`` for a pretraining config's export settings)."""
    name = section.get("name")
    if name not in MODELS:
        raise ValueError(f"{where}: unknown model.name {name!r} (registered: {MODELS.names()})")
    accepted, anything = MODELS.params(name)
    allowed = (accepted - {"modalities"}) | {"name", "modalities"}
    for k in section:
        if k not in allowed and not anything:
            raise ValueError(f"{where}: unknown config key '{prefix}.{k}' for model {name!r} (known: {sorted(allowed)})")
