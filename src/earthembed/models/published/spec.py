"""What a SPEC names and what opening it gives: :class:`Spec`, :class:`PublishedInput`, :class:`PublishedModel`.

A SPEC is ``timm:<model name>``, ``torchgeo:<weights name>``, ``mmearth:<checkpoint file>``,
``galileo:<size>`` or the path of an earthembed export (a directory with ``model.json``, or that file). Opening a published SPEC gives a
:class:`PublishedModel`: one backbone's state dict in timm's key layout, the earthembed architecture that
holds it, and the input the publisher trained on (bands by name, units, normalisation) - everything
:func:`earthembed.models.published.adapt_to_store` needs to fit it to a store's bands.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from torch import Tensor

FAMILIES = ("timm", "torchgeo", "mmearth", "galileo")
EXPORT = "export"


@dataclasses.dataclass(frozen=True)
class Spec:
    """A parsed SPEC: ``family`` (``timm``, ``torchgeo``, ``mmearth`` or ``export``) and ``name`` (model name,
    weights name, checkpoint path or export path); ``text`` is the SPEC as given."""

    family: str
    name: str
    text: str

    @property
    def label(self) -> str:
        """Short name for model ids and tables (a checkpoint's folder and file name, not its full path)."""
        if self.family in ("mmearth", EXPORT):
            p = Path(self.name)
            return f"{self.family}:{p.parent.name}/{p.stem}" if p.parent.name else f"{self.family}:{p.stem}"
        return self.text


def parse_spec(text: str) -> Spec:
    """``"timm:resnet18"`` -> ``Spec("timm", "resnet18", ...)``; a path to an export -> family ``export``."""
    text = str(text).strip()
    family, sep, name = text.partition(":")
    if sep and family in FAMILIES:
        if not name.strip():
            raise ValueError(f"encoder spec {text!r}: nothing after '{family}:'")
        return Spec(family, name.strip(), text)
    p = Path(text)
    if (p / "model.json").is_file() or (p.name == "model.json" and p.is_file()):
        return Spec(EXPORT, text, text)
    raise ValueError(
        f"encoder spec {text!r}: expected timm:<model name> (e.g. timm:convnextv2_atto.fcmae), "
        "torchgeo:<weights name> (e.g. torchgeo:ResNet18_Weights.SENTINEL2_ALL_MOCO), mmearth:<checkpoint file>, "
        "galileo:<size> (nano, tiny, base) or the directory of an earthembed export (with model.json)"
    )


@dataclasses.dataclass
class PublishedInput:
    """The input a publisher's weights expect.

    Attributes:
        bands: band names (earthembed's: ``B01``..``B12``, ``B8A``, ``VV``, ``VH``; ``R``/``G``/``B`` for
            generic RGB) in the order of the first layer's input channels.
        kind: modality kind the bands belong to (``optical``, ``sar``).
        units: units the raw values must be in for ``(x - mean) / std`` (``reflectance x 10000 (DN)``,
            ``dB``, ``unit interval`` for ImageNet-style [0, 1] images). None: the publisher normalises with
            the statistics of whatever data it is applied to, so the store's own per-band mean/std are used.
        mean, std: per band, in ``units`` (None with ``units=None``).
        fill: per band, a typical value in ``units`` (the pretraining data's mean): what a band the store
            lacks is assumed to be (None: the normalised zero, i.e. ``mean``).
        note: where these numbers come from.
    """

    bands: list[str]
    kind: str
    units: str | None
    mean: list[float] | None = None
    std: list[float] | None = None
    fill: list[float] | None = None
    note: str = ""

    def __post_init__(self) -> None:
        n = len(self.bands)
        for name in ("mean", "std", "fill"):
            v = getattr(self, name)
            if v is not None and len(v) != n:
                raise ValueError(f"published input: {name} has {len(v)} values for {n} bands")
        if (self.units is None) != (self.mean is None) or (self.mean is None) != (self.std is None):
            raise ValueError("published input: give units, mean and std together (or none of them)")

    def normalised_fill(self) -> list[float]:
        """``fill`` after the publisher's normalisation (zeros when there is no fill or no fixed statistics)."""
        if self.fill is None or self.mean is None or self.std is None:
            return [0.0] * len(self.bands)
        return [(f - m) / s for f, m, s in zip(self.fill, self.mean, self.std, strict=True)]


@dataclasses.dataclass
class PublishedModel:
    """One publisher's backbone, opened and mapped to timm's key layout (see the module docstring).

    Attributes:
        spec: what was opened.
        architecture: earthembed registry name holding it (``timm_cnn`` or ``timm_vit``).
        config: constructor arguments of that architecture besides ``modalities`` (``backbone``, ``stem``, ...).
        input: :class:`PublishedInput`.
        state: timm state dict of one backbone with ``len(input.bands)`` input channels.
        first_conv: key prefix of the layer that reads the bands (timm's ``pretrained_cfg["first_conv"]``).
        provenance: publisher, weights file, its sha256, url, publication, load report (goes to model.json).
    """

    spec: Spec
    architecture: str
    config: dict[str, Any]
    input: PublishedInput
    state: dict[str, Tensor]
    first_conv: str
    provenance: dict[str, Any]
