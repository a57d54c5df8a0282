"""Fitting a publisher's input bands to a store's, by name, and carrying its normalisation into store units.

* **Matching by name.** Publisher band names are compared with the store's after canonicalisation
  (``B1`` -> ``B01``, ``B8a`` -> ``B8A``); generic RGB (``R``, ``G``, ``B``: timm's ImageNet models) matches
  Sentinel-2 ``B04``, ``B03``, ``B02`` and vice versa. Channels are reordered/selected accordingly.
* **Publisher bands the store lacks** are dropped from the first layer, and their contribution at a typical
  value (the publisher's data mean, :attr:`PublishedInput.fill`) is folded into the layer's bias (or, for a
  bias-free ResNet stem, into the following BatchNorm's running mean), so the network sees them as "average"
  instead of as an out-of-range zero. For z-score normalisations the fill is the normalised zero and the
  fold changes nothing. A warning lists them. (Exact for padding-free stems - ConvNeXt, ViT; ResNet's
  padded 7x7 stem differs in the 3-pixel border only.)
* **Store bands the publisher lacks** are ignored by default (``extra_bands="ignore"``). With
  ``extra_bands="add"`` they become new input channels with zero weights - the model's output is unchanged
  until continued pretraining learns to use them - normalised with the store's own per-band statistics.
* **Normalisation in store units.** A publisher normalises ``(x_pub - mean) / std`` with ``x_pub`` in its
  units; with ``x_pub = x_store * scale`` (:func:`unit_scale`) that is ``(x_store - mean / scale) /
  (std / scale)``, i.e. the per-band z-score :class:`~earthembed.data.normalize.Normalizer` already applies,
  recorded in the export under the store's band names. Publishers that normalise with the data's own
  statistics (MMEarth) get the store's statistics.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from earthembed.data.modalities import BandMismatchError
from earthembed.models.published.spec import PublishedInput

EXTRA_BANDS = ("ignore", "add")
ALIASES: dict[str, str] = {"R": "B04", "G": "B03", "B": "B02", "B04": "R", "B03": "G", "B02": "B"}
UNIT_INTERVAL = "unit interval"
S2_DN = "reflectance x 10000 (DN)"
BYTE = "8-bit DN"
DISPLAY_MAX_DN = 3000.0
"""Sentinel-2 DN mapped to 1.0 (or 255) when an RGB-trained model reads reflectance: 0.3 reflectance is the
usual true-colour stretch (TorchGeo's and most S2 RGB renderings clip there)."""
UNIT_SCALES: dict[tuple[str, str], float] = {
    (BYTE, UNIT_INTERVAL): 1.0 / 255.0,
    (S2_DN, UNIT_INTERVAL): 1.0 / DISPLAY_MAX_DN,
    (S2_DN, BYTE): 255.0 / DISPLAY_MAX_DN,
    (BYTE, S2_DN): DISPLAY_MAX_DN / 255.0,
    ("reflectance", S2_DN): 10000.0,
    ("reflectance", UNIT_INTERVAL): 10000.0 / DISPLAY_MAX_DN,
}
"""(store units, publisher units) -> factor with ``x_publisher = x_store * factor``; equal units give 1."""
_FOLD_NORM = {"conv1": "bn1"}  # bias-free first convs and the BatchNorm after them (timm ResNet)


class PublishedWeightsWarning(UserWarning):
    """Something about fitting published weights to a store the user should know (bands filled, ignored)."""


def canonical_band(name: str) -> str:
    """``B1`` -> ``B01``, ``B8a`` -> ``B8A``; other names unchanged."""
    m = re.fullmatch(r"[Bb](\d{1,2})([Aa]?)", name.strip())
    if not m:
        return name.strip()
    return f"B{int(m.group(1))}A" if m.group(2) else f"B{int(m.group(1)):02d}"


def unit_scale(store_units: str, publisher_units: str, where: str) -> float:
    """Factor turning store values into the publisher's units (see :data:`UNIT_SCALES`)."""
    if store_units == publisher_units:
        return 1.0
    try:
        return UNIT_SCALES[(store_units, publisher_units)]
    except KeyError:
        known = sorted({f"{a!r} -> {b!r}" for a, b in UNIT_SCALES})
        raise BandMismatchError(
            f"{where}: the published weights expect values in {publisher_units!r} but the store holds "
            f"{store_units!r}, and no conversion is known (known: {', '.join(known)}); declare the units of your "
            "modality (--modalities-file) if they are one of these"
        ) from None


def match_bands(publisher: Sequence[str], store: Sequence[str]) -> dict[str, str]:
    """Publisher band -> store band, by canonical name or RGB alias; bands without a partner are left out."""
    by_canon = {canonical_band(b): b for b in store}
    out: dict[str, str] = {}
    for p in publisher:
        c = canonical_band(p)
        hit = by_canon.get(c) or by_canon.get(ALIASES.get(c, ""))
        if hit is not None and hit not in out.values():
            out[p] = hit
    return out


def choose_modality(store: Any, pub: PublishedInput, modality: str | None = None) -> tuple[str, dict[str, str]]:
    """(store modality key, publisher band -> store band) for the modality that best matches ``pub``."""
    cands = {k: m for k, m in store.modalities.items() if m.kind != "categorical"}
    if modality is not None:
        if modality not in store.modalities:
            raise BandMismatchError(f"{store.path}: store has no modality {modality!r} (it has {list(store.modalities)})")
        cands = {modality: store.modalities[modality]}
    scored = {k: match_bands(pub.bands, m.band_names) for k, m in cands.items() if m.kind == pub.kind}
    scored = {k: v for k, v in scored.items() if v}
    if not scored:
        have = {k: (m.kind, m.band_names) for k, m in cands.items()}
        raise BandMismatchError(
            f"{store.path}: no {pub.kind} modality shares a band with the published weights "
            f"(they read {pub.bands}; the store has {have})"
        )
    best = max(len(v) for v in scored.values())
    top = [k for k, v in scored.items() if len(v) == best]
    if len(top) > 1:
        raise BandMismatchError(f"{store.path}: modalities {top} match the published bands equally well; choose one "
                                "(--modalities KEY, or model.modalities=[KEY] when pretraining)")
    return top[0], scored[top[0]]


def adapt_first_layer(
    state: Mapping[str, Tensor],
    first_conv: str,
    sources: Sequence[int | None],
    dropped: Sequence[int],
    fill: Sequence[float],
) -> tuple[dict[str, Tensor], str]:
    """The state dict with the first layer reading the model's channels; returns (state, how the fill was folded).

    ``sources[i]``: publisher channel feeding model channel ``i`` (None: a new, zero-initialised channel).
    ``dropped``: publisher channels with no store band; their weights times the normalised ``fill`` value
    (per publisher channel) are folded into the bias, or into the running mean of the BatchNorm that follows
    a bias-free ResNet stem.
    """
    out = dict(state)
    w = state[f"{first_conv}.weight"]
    new = w.new_zeros(w.shape[0], len(sources), *w.shape[2:])
    for i, j in enumerate(sources):
        if j is not None:
            new[:, i] = w[:, j]
    out[f"{first_conv}.weight"] = new
    if not dropped:
        return out, "none"
    f = torch.tensor([fill[j] for j in dropped], dtype=w.dtype)
    delta = (w[:, list(dropped)].sum(dim=tuple(range(2, w.ndim))) * f).sum(1)  # [out channels]
    if not bool(delta.abs().max() > 0):
        return out, "zero (the normalised fill is 0)"
    bias = f"{first_conv}.bias"
    if bias in out:
        out[bias] = out[bias] + delta
        return out, f"{bias}"
    norm = _FOLD_NORM.get(first_conv)
    if norm is not None and f"{norm}.running_mean" in out:
        out[f"{norm}.running_mean"] = out[f"{norm}.running_mean"] - delta
        return out, f"{norm}.running_mean"
    warnings.warn(f"{first_conv} has no bias to fold the missing bands' typical value into; they read as the "
                  "normalised zero", PublishedWeightsWarning, stacklevel=2)
    return out, "not folded"


def store_normalization(
    pub: PublishedInput,
    band_map: Mapping[str, str],
    added: Sequence[str],
    store: Any,
    key: str,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(``Normalizer`` dict for the model's bands in store units, description for model.json)."""
    m = store.modality(key)
    where = f"{store.path} modality {key!r}"
    model_bands = [band_map[p] for p in pub.bands if p in band_map] + list(added)
    mean: list[float] = []
    std: list[float] = []
    store_stats = (store.stats or {}).get(key)
    need_store = pub.units is None or bool(added)
    if need_store and not store_stats:
        raise ValueError(f"{store.path}: store has no statistics for {key!r}, needed to normalise "
                         f"{'the bands' if pub.units is None else added}; run `earthembed stats {store.path}`")
    info: dict[str, Any] = {"store_units": m.units}
    if pub.units is None:
        info.update(source="store statistics", formula="(x - store mean) / store std", why=pub.note)
    else:
        scale = unit_scale(m.units, pub.units, where)
        info.update(source="publisher", publisher_units=pub.units, unit_scale=scale,
                    formula=f"(x * {scale:.6g} - publisher mean) / publisher std",
                    publisher_mean={p: pub.mean[i] for i, p in enumerate(pub.bands)},
                    publisher_std={p: pub.std[i] for i, p in enumerate(pub.bands)}, note=pub.note)
    for p_i, p in enumerate(pub.bands):
        if p not in band_map:
            continue
        if pub.units is None:
            j = store_stats["bands"].index(band_map[p])
            mean.append(float(store_stats["mean"][j]))
            std.append(float(store_stats["std"][j]))
        else:
            mean.append(pub.mean[p_i] / scale)
            std.append(pub.std[p_i] / scale)
    for b in added:
        j = store_stats["bands"].index(b)
        mean.append(float(store_stats["mean"][j]))
        std.append(float(store_stats["std"][j]))
    if added:
        info["added_bands"] = "store statistics (x - store mean) / store std"
    nodata = m.nodata
    norm = {"stats": {key: {"bands": model_bands, "mean": mean, "std": std}},
            "nodata": {key: "nan" if isinstance(nodata, float) and nodata != nodata else nodata}}
    return norm, info
