"""Batched tensor augmentations shared by pretraining objectives and fine-tuning (run on the training device,
not in workers). A neutral module, like :mod:`earthembed.optim`: evaluation code never imports ``pretrain``.

Geometric transforms (random resized crop, flips, 90-degree rotations) are drawn once per chip and applied
to every modality of that chip through one affine grid, so co-registered modalities stay co-registered.

Missing bands are trained at two levels, matching what the model sees at inference:

* **Band-group dropout** (``group_dropout``): per chip and modality, each band group is dropped with
  probability p, keeping at least one group. Dropped groups are returned as ``<k>_group_present`` masks
  ``[B, G]`` that :class:`~earthembed.models.multimodal_vit.MultiModalViT` reads, so a dropped group
  contributes *no tokens* — exactly as when its bands are absent from the input at inference (e.g. a
  Sentinel-2 chip with only the 10 m bands), never zero-valued tokens. Its channels are also zeroed.
* **Band dropout** (``band_dropout``): zeroes random channels inside the kept groups, as the model does for
  the missing slots of a partially given group (e.g. B04 B03 B02 without B08), keeping >= 1 channel of
  each kept group. Together they produce e.g. RGB-only Sentinel-2 input.

Additive Gaussian noise is applied before both, so dropped channels stay exactly zero.

Modality dropout (:func:`modality_dropout`) only marks whole modalities absent and keeps >= 2 per chip;
see :mod:`earthembed.pretrain.contrastive` for why it is a no-op with two modalities.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclasses.dataclass
class AugmentConfig:
    """Augmentation settings (the ``augment:`` section of a pretraining config)."""

    crop_scale: tuple[float, float] = (0.5, 1.0)  # side length fraction of the random resized crop
    flip: bool = True
    rot90: bool = True
    band_dropout: float = 0.1  # probability of zeroing each channel of a kept band group (>= 1 channel kept)
    group_dropout: float = 0.25  # probability of dropping each band group (>= 1 group per modality kept)
    noise_std: float = 0.02  # additive Gaussian noise, in normalised (z-score) units
    modality_dropout: float = 0.0  # per chip and modality, keeping >= 2 modalities (see ContrastivePretrainModule)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> AugmentConfig:
        d = dict(d or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"augment: unknown keys {unknown} (known: {sorted(known)})")
        for key in ("band_dropout", "group_dropout", "modality_dropout"):
            if key in d and not 0 <= float(d[key]) <= 1:
                raise ValueError(f"augment.{key} must be in [0, 1], got {d[key]}")
        if "crop_scale" in d:
            lo, hi = (float(v) for v in d["crop_scale"])
            if not 0 < lo <= hi <= 1:
                raise ValueError(f"augment.crop_scale must satisfy 0 < lo <= hi <= 1, got {d['crop_scale']}")
            d["crop_scale"] = (lo, hi)
        return cls(**d)


def random_affine(n: int, cfg: AugmentConfig, device: torch.device | str = "cpu", generator: torch.Generator | None = None) -> Tensor:
    """[n, 2, 3] affine matrices (output -> input, normalised coords): crop scale, shift, flip, rot90."""
    lo, hi = cfg.crop_scale
    s = lo + (hi - lo) * torch.rand(n, generator=generator)
    k = torch.randint(0, 4, (n,), generator=generator) if cfg.rot90 else torch.zeros(n, dtype=torch.long)
    ang = k.float() * (math.pi / 2)
    cos, sin = torch.cos(ang).round(), torch.sin(ang).round()
    fx = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0) if cfg.flip else torch.ones(n)
    rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)  # [n, 2, 2]
    lin = rot * torch.stack([fx, torch.ones(n)], -1)[:, None, :] * s[:, None, None]
    shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * (1 - s)[:, None]
    return torch.cat([lin, shift[:, :, None]], -1).to(device)


AFFINE_KEY = "_affine"
"""Key of the per-chip affine matrices [B, 2, 3] in :func:`augment_batch` output (output -> input
coordinates), so dense objectives can pair pixels across views and segmentation can warp masks alike."""


def apply_affine(x: Tensor, theta: Tensor, mode: str = "bilinear") -> Tensor:
    """Resample [B, C, H, W] ``x`` with per-sample ``theta`` (crops stay inside the image)."""
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode=mode, padding_mode="border", align_corners=False)


def warp_mask(mask: Tensor, theta: Tensor) -> Tensor:
    """A label mask [B, H, W] (integer classes) warped like the image by ``theta``: nearest neighbour, so
    no class is ever blended; dtype kept."""
    out = apply_affine(mask[:, None].to(torch.float32), theta.to(mask.device), mode="nearest")[:, 0]
    return out.round().to(mask.dtype)


def band_dropout(x: Tensor, groups: Sequence[Sequence[int]], p: float, generator: torch.Generator | None = None) -> Tensor:
    """Zero each channel with probability ``p`` per sample, keeping at least one channel of every group."""
    if p <= 0:
        return x
    b, c = x.shape[:2]
    keep = torch.rand(b, c, generator=generator) >= p
    for g in groups:
        idx = torch.as_tensor(list(g), dtype=torch.long)
        none = ~keep[:, idx].any(1)
        pick = idx[torch.randint(0, len(idx), (b,), generator=generator)]
        keep[torch.arange(b)[none], pick[none]] = True
    return x * keep.to(x.device, x.dtype)[:, :, None, None]


def group_dropout(n: int, n_groups: int, p: float, generator: torch.Generator | None = None) -> Tensor:
    """[n, n_groups] bool: each group kept with probability ``1 - p``, at least one per row (chosen at random)."""
    keep = torch.rand(n, n_groups, generator=generator) >= p if p > 0 else torch.ones(n, n_groups, dtype=torch.bool)
    none = ~keep.any(1)
    if bool(none.any()):
        pick = torch.randint(0, n_groups, (n,), generator=generator)
        keep[torch.arange(n)[none], pick[none]] = True
    return keep


def modality_dropout(
    present: Mapping[str, Tensor], p: float, min_keep: int = 2, generator: torch.Generator | None = None
) -> dict[str, Tensor]:
    """Mark modalities absent per chip with probability ``p``, never leaving fewer than ``min_keep`` present."""
    out = {k: v.clone() for k, v in present.items()}
    if p <= 0 or len(out) <= min_keep:
        return out
    keys = list(out)
    pres = torch.stack([out[k] for k in keys], 1).cpu()  # [B, M]
    # protect min_keep present modalities per chip, chosen at random, so no modality is favoured
    prio = torch.rand(pres.shape, generator=generator) + pres.float()  # present ones rank first
    rank = prio.argsort(1, descending=True).argsort(1)
    protected = rank < min_keep
    drop = (torch.rand(pres.shape, generator=generator) < p) & pres & ~protected
    kept = pres & ~drop
    return {k: kept[:, i].to(present[k].device) for i, k in enumerate(keys)}


def augment_batch(
    batch: Mapping[str, Tensor],
    groups: Mapping[str, Sequence[Sequence[int]]],
    cfg: AugmentConfig,
    generator: torch.Generator | None = None,
    theta: Tensor | None = None,
) -> dict[str, Tensor]:
    """Augment the modality tensors of ``batch`` (keys of ``groups``): shared geometry, per-modality noise/dropout.

    Returns the augmented ``[B, C, H, W]`` tensor of each modality; for modalities with >= 2 band groups
    when ``cfg.group_dropout > 0``, its ``<k>_group_present`` mask ``[B, G]`` (bool, on the tensor's device)
    to pass to the model so dropped groups contribute no tokens; and the geometry used under
    :data:`AFFINE_KEY` (``theta`` if given, else drawn by :func:`random_affine`).
    """
    keys = [k for k in groups if k in batch]
    if not keys:
        return {}
    ref = batch[keys[0]]
    theta = random_affine(ref.shape[0], cfg, ref.device, generator) if theta is None else theta.to(ref.device)
    out = {AFFINE_KEY: theta}
    for k in keys:
        x, gmask = channel_augment(apply_affine(batch[k], theta), groups[k], cfg, generator)
        if gmask is not None:
            out[f"{k}_group_present"] = gmask
        out[k] = x
    return out


def channel_augment(x: Tensor, groups: Sequence[Sequence[int]], cfg: AugmentConfig,
                    generator: torch.Generator | None = None) -> tuple[Tensor, Tensor | None]:
    """Noise, band dropout and band-group dropout of one modality ``[B, C, H, W]`` (no geometry): returns the
    new tensor and the ``[B, G]`` group-presence mask (None when groups are not dropped)."""
    if cfg.noise_std > 0:
        if generator is None:
            noise = torch.randn_like(x)
        else:
            noise = torch.randn(x.shape, generator=generator).to(x.device, x.dtype)
        x = x + cfg.noise_std * noise
    x = band_dropout(x, groups, cfg.band_dropout, generator)
    if not (cfg.group_dropout > 0 and len(groups) > 1):
        return x, None
    gmask = group_dropout(x.shape[0], len(groups), cfg.group_dropout, generator)
    chan = torch.ones(x.shape[:2], dtype=torch.bool)
    for g, idx in enumerate(groups):
        chan[:, list(idx)] = gmask[:, g : g + 1]
    return x * chan.to(x.device, x.dtype)[:, :, None, None], gmask.to(x.device)


def random_dihedral(tensors: Mapping[str, Tensor], cfg: AugmentConfig, generator: torch.Generator | None = None
                    ) -> dict[str, Tensor]:
    """The same random flip / 90-degree rotation per chip applied to every ``[B, ..., H, W]`` tensor (square
    chips): exact pixel permutations, so integer class maps and NaN-marked targets stay intact, which a
    resampling affine would blend (this is the geometry of objectives with pixel targets)."""
    if not tensors or not (cfg.flip or cfg.rot90):
        return dict(tensors)
    n = next(iter(tensors.values())).shape[0]
    k = torch.randint(0, 4, (n,), generator=generator) if cfg.rot90 else torch.zeros(n, dtype=torch.long)
    f = torch.rand(n, generator=generator) < 0.5 if cfg.flip else torch.zeros(n, dtype=torch.bool)
    out = {}
    for name, x in tensors.items():
        y = x.clone()
        for rot in range(4):
            for flip in (False, True):
                rows = ((k == rot) & (f == flip)).nonzero().flatten().to(x.device)
                if (rot == 0 and not flip) or not len(rows):
                    continue
                z = x[rows].flip(-1) if flip else x[rows]
                y[rows] = z.rot90(rot, dims=(-2, -1))
        out[name] = y
    return out
