"""Batched tensor augmentations shared by pretraining objectives and fine-tuning (run on the training device,
not in workers). A neutral module, like :mod:`earthembed.optim`: evaluation code never imports ``pretrain``.

Geometric transforms (random resized crop, flips, 90-degree rotations) are drawn once per chip and applied
to every modality of that chip through one affine grid, so co-registered modalities stay co-registered.
The crop is either ``crop_scale`` (side-length fraction, square) or, when ``crop_area`` is set, the
torchvision ``RandomResizedCrop`` convention: an area fraction and a log-uniform ``aspect_ratio``; the
returned affine (:data:`AFFINE_KEY`) describes either exactly.

Photometric transforms are drawn per chip *and per modality* (a sensor's radiometry is its own):

* **Brightness / contrast jitter** (``brightness``, ``contrast``, applied with ``jitter_prob``): in z-score
  units, ``x_c -> (x_c - m_c) * k_c + m_c + b_c`` with ``m_c`` the chip's mean of band ``c``. ``jitter_per_band``
  mixes a factor shared by all bands (an illumination change, 0) with an independent one per band (1). Fully
  per-band jitter also teaches invariance to the band *ratios* that distinguish e.g. crops from pasture in
  multispectral data, so the recipes keep it partly shared; RGB photo recipes use it at full strength.
* **Gaussian blur** (``blur_prob``, sigma uniform in ``blur_sigma`` px): separable, reflect-padded; teaches
  invariance to resolution and focus differences between sensors and dates.

Order: geometry, jitter, blur, noise, band dropout, band-group dropout (so dropped channels stay exactly 0).

Missing bands are trained at two levels, matching what the model sees at inference:

* **Band-group dropout** (``group_dropout``): per chip and modality, each band group is dropped with
  probability p, keeping at least one group. Dropped groups are returned as band-group presence ``[B, G]``
  (``Observation.group_present``; ``<k>_group_present`` of a dict batch) that
  :class:`~earthembed.models.multimodal_vit.MultiModalViT` reads, so a dropped group contributes *no tokens* —
  exactly as when its bands are absent from the input at inference (e.g. a Sentinel-2 chip with only the 10 m
  bands), never zero-valued tokens. Its channels are also zeroed.
* **Band dropout** (``band_dropout``): zeroes random channels inside the kept groups, as the model does for
  the missing slots of a partially given group (e.g. B04 B03 B02 without B08), keeping >= 1 channel of
  each kept group. Together they produce e.g. RGB-only Sentinel-2 input.

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

from earthembed.contract import AFFINE_KEY, ChipBatch, Observation


@dataclasses.dataclass
class AugmentConfig:
    """Augmentation settings (the ``augment:`` section of a pretraining config)."""

    crop_scale: tuple[float, float] = (0.5, 1.0)  # side length fraction of the random resized crop
    crop_area: tuple[float, float] | None = None  # area fraction (torchvision RandomResizedCrop); overrides crop_scale
    aspect_ratio: tuple[float, float] = (1.0, 1.0)  # crop width/height, log-uniform (used with crop_area)
    size: int | None = None  # side of the output views in px (None: the input's); smaller = cheaper steps
    flip: bool = True
    rot90: bool = True
    brightness: float = 0.0  # additive offset U(-b, b), z-score units
    contrast: float = 0.0  # factor U(1 - c, 1 + c) around the chip's band mean
    jitter_per_band: float = 1.0  # 0: one factor for all bands of a modality, 1: independent per band
    jitter_prob: float = 1.0  # probability that a chip is jittered at all
    blur_prob: float = 0.0  # probability of a Gaussian blur per chip and modality
    blur_sigma: tuple[float, float] = (0.1, 1.5)  # blur sigma range in pixels
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
        for key in ("band_dropout", "group_dropout", "modality_dropout", "jitter_per_band", "jitter_prob", "blur_prob"):
            if key in d and not 0 <= float(d[key]) <= 1:
                raise ValueError(f"augment.{key} must be in [0, 1], got {d[key]}")
        if d.get("size") is not None and int(d["size"]) < 1:
            raise ValueError(f"augment.size must be a positive number of pixels or null, got {d['size']}")
        for key in ("brightness", "contrast", "noise_std"):
            if key in d and float(d[key]) < 0:
                raise ValueError(f"augment.{key} must be >= 0, got {d[key]}")
        if "contrast" in d and float(d["contrast"]) >= 1:
            raise ValueError(f"augment.contrast must be < 1 (a factor 1 - c must stay positive), got {d['contrast']}")
        for key, top in (("crop_scale", 1.0), ("crop_area", 1.0), ("aspect_ratio", None), ("blur_sigma", None)):
            if key in d and d[key] is not None:
                d[key] = _range(d[key], f"augment.{key}", top)
        return cls(**d)


def _range(v: Any, where: str, top: float | None) -> tuple[float, float]:
    """``[lo, hi]`` as floats with 0 < lo <= hi (<= ``top``), else ValueError naming ``where``."""
    try:
        lo, hi = (float(x) for x in v)
    except (TypeError, ValueError):
        raise ValueError(f"{where} must be two numbers [lo, hi], got {v!r}") from None
    if not 0 < lo <= hi or (top is not None and hi > top):
        bound = f" <= {top:g}" if top is not None else ""
        raise ValueError(f"{where} must satisfy 0 < lo <= hi{bound}, got {v!r}")
    return lo, hi


def _uniform(n: int, lo: float, hi: float, generator: torch.Generator | None) -> Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=generator)


def crop_sides(n: int, cfg: AugmentConfig, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Crop width and height as fractions of the chip side ([n] each): square ``crop_scale`` sides, or
    ``crop_area`` x log-uniform ``aspect_ratio`` (sides clipped to 1, as torchvision's fallback does)."""
    if cfg.crop_area is None:
        s = _uniform(n, *cfg.crop_scale, generator)
        return s, s
    area = _uniform(n, *cfg.crop_area, generator)
    lo, hi = cfg.aspect_ratio
    ratio = torch.exp(_uniform(n, math.log(lo), math.log(hi), generator))
    return (area * ratio).sqrt().clamp(max=1.0), (area / ratio).sqrt().clamp(max=1.0)


def random_affine(n: int, cfg: AugmentConfig, device: torch.device | str = "cpu", generator: torch.Generator | None = None) -> Tensor:
    """[n, 2, 3] affine matrices (output -> input, normalised coords): crop size, shift, flip, rot90."""
    sx, sy = crop_sides(n, cfg, generator)
    k = torch.randint(0, 4, (n,), generator=generator) if cfg.rot90 else torch.zeros(n, dtype=torch.long)
    ang = k.float() * (math.pi / 2)
    cos, sin = torch.cos(ang).round(), torch.sin(ang).round()
    fx = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0) if cfg.flip else torch.ones(n)
    rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)  # [n, 2, 2]
    # input coords = R @ (F @ S @ output coords) + shift: scale the crop in the input frame, then flip/rotate
    lin = rot * torch.stack([fx * sx, sy], -1)[:, None, :]
    odd = (k % 2).bool()  # a quarter turn swaps which side of the crop lies along x in the input
    ex, ey = torch.where(odd, sy, sx), torch.where(odd, sx, sy)
    shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * torch.stack([1 - ex, 1 - ey], -1)
    return torch.cat([lin, shift[:, :, None]], -1).to(device)


# AFFINE_KEY (imported from the contract): the key of the per-chip affine matrices [B, 2, 3] (output -> input
# coordinates) in :func:`augment_batch` output, so dense objectives can pair pixels across views and
# segmentation can warp masks alike (``ChipBatch.affine``)


def apply_affine(x: Tensor, theta: Tensor, mode: str = "bilinear", size: int | None = None) -> Tensor:
    """Resample [B, C, H, W] ``x`` with per-sample ``theta`` (crops stay inside the image) onto a
    ``size`` x ``size`` grid (default: ``x``'s own)."""
    shape = list(x.shape) if size is None else [*x.shape[:2], int(size), int(size)]
    grid = F.affine_grid(theta.to(x.dtype), shape, align_corners=False)
    return F.grid_sample(x, grid, mode=mode, padding_mode="border", align_corners=False)


def warp_mask(mask: Tensor, theta: Tensor) -> Tensor:
    """A label mask [B, H, W] (integer classes) warped like the image by ``theta``: nearest neighbour, so
    no class is ever blended; dtype kept."""
    out = apply_affine(mask[:, None].to(torch.float32), theta.to(mask.device), mode="nearest")[:, 0]
    return out.round().to(mask.dtype)


def _rand(shape: Sequence[int], generator: torch.Generator | None, like: Tensor) -> Tensor:
    """Uniform [0, 1) numbers drawn on the CPU (reproducible with ``generator``), moved to ``like``'s device."""
    return torch.rand(*shape, generator=generator).to(like.device, like.dtype)


def color_jitter(x: Tensor, brightness: float, contrast: float, per_band: float = 1.0, p: float = 1.0,
                 generator: torch.Generator | None = None) -> Tensor:
    """Brightness/contrast jitter of [B, C, H, W] z-scored ``x`` (see the module docstring): per chip a
    shared draw and one per band, mixed by ``per_band``; chips are jittered with probability ``p``."""
    if (brightness <= 0 and contrast <= 0) or p <= 0:
        return x
    b, c = x.shape[:2]

    def draw(amp: float) -> Tensor:  # U(-amp, amp) per chip and band, shared part mixed with per-band part
        shared = _rand((b, 1), generator, x) * 2 - 1
        own = _rand((b, c), generator, x) * 2 - 1
        return amp * ((1 - per_band) * shared + per_band * own)

    on = (_rand((b, 1), generator, x) < p).to(x.dtype)
    offset, factor = draw(brightness) * on, 1 + draw(contrast) * on
    mean = x.mean((2, 3), keepdim=True)
    return (x - mean) * factor[:, :, None, None] + mean + offset[:, :, None, None]


def gaussian_blur(x: Tensor, sigma: Tensor) -> Tensor:
    """Blur each chip of [B, C, H, W] ``x`` with its own Gaussian ``sigma`` [B] (px; 0 = unchanged):
    separable, reflect padding, one grouped convolution per axis for the whole batch."""
    b, c, h, w = x.shape
    radius = max(1, min(int(math.ceil(3 * float(sigma.max()))), (min(h, w) - 1) // 2))
    if float(sigma.max()) <= 0 or min(h, w) < 3:
        return x
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    s = sigma.to(x.device, x.dtype).clamp(min=1e-6)[:, None]
    k = torch.exp(-0.5 * (t[None] / s) ** 2)
    k = torch.where(sigma.to(x.device)[:, None] > 0, k, (t[None] == 0).to(x.dtype))  # sigma 0: identity kernel
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # [B*C, K]
    y = F.pad(x.reshape(1, b * c, h, w), (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, k[:, None, None, :], groups=b * c)  # along x
    y = F.conv2d(y, k[:, None, :, None], groups=b * c)  # along y
    return y.reshape(b, c, h, w)


def random_blur(x: Tensor, p: float, sigma_range: tuple[float, float], generator: torch.Generator | None = None) -> Tensor:
    """:func:`gaussian_blur` on each chip with probability ``p``, sigma uniform in ``sigma_range`` px."""
    if p <= 0:
        return x
    n = x.shape[0]
    sigma = _uniform(n, *sigma_range, generator) * (torch.rand(n, generator=generator) < p)
    return gaussian_blur(x, sigma)


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


def group_masks(augmented: Mapping[str, Tensor] | ChipBatch) -> dict[str, Tensor]:
    """The band-group presence ``[B, G]`` of :func:`augment_batch` output, keyed by modality (for the model): a
    ChipBatch's ``group_present`` of its observations, or a dict's ``<k>_group_present`` entries."""
    if isinstance(augmented, ChipBatch):
        return {k: gp for k in augmented.obs if (gp := augmented.group_present(k)) is not None}
    suffix = "_group_present"
    return {k[: -len(suffix)]: v for k, v in augmented.items() if k.endswith(suffix)}


def augment_batch(
    batch: Mapping[str, Tensor] | ChipBatch,
    groups: Mapping[str, Sequence[Sequence[int]]],
    cfg: AugmentConfig,
    generator: torch.Generator | None = None,
    theta: Tensor | None = None,
) -> dict[str, Tensor] | ChipBatch:
    """Augment the modality tensors of ``batch`` (keys of ``groups``): shared geometry; per-modality jitter,
    blur, noise and dropout.

    A :class:`~earthembed.contract.ChipBatch` gives a new ChipBatch of the augmented one-date observations with
    their presence, their band-group presence ``group_present`` ``[B, G]`` (for modalities with >= 2 band groups
    when ``cfg.group_dropout > 0``, so dropped groups contribute no tokens; on the tensor's device), the chips' own
    acquisition dates and months (a view moves pixels, not the calendar: a month-aware encoder such as Galileo
    sees in pretraining and fine-tuning the months it sees when embedding), the geometry used as ``affine``
    (``theta`` if given, else drawn by :func:`random_affine`) and ``idx``. A dict (today's string keys) gives a
    dict: each modality's augmented ``[B, C, H, W]`` tensor, its ``<k>_group_present`` mask and the geometry under
    :data:`AFFINE_KEY`.
    """
    typed = isinstance(batch, ChipBatch)
    keys = [k for k in groups if (batch.has(k) if typed else k in batch)]
    if not keys:
        return ChipBatch(idx=batch.idx) if typed else {}
    pixels = {k: batch.image(k) if typed else batch[k] for k in keys}
    ref = pixels[keys[0]]
    theta = random_affine(ref.shape[0], cfg, ref.device, generator) if theta is None else theta.to(ref.device)
    xs: dict[str, Tensor] = {}
    gmasks: dict[str, Tensor | None] = {}
    for k in keys:
        x = apply_affine(pixels[k], theta, size=cfg.size)
        x = color_jitter(x, cfg.brightness, cfg.contrast, cfg.jitter_per_band, cfg.jitter_prob, generator)
        x = random_blur(x, cfg.blur_prob, cfg.blur_sigma, generator)
        xs[k], gmasks[k] = channel_augment(x, groups[k], cfg, generator)
    if typed:
        obs = {k: Observation.single(xs[k], batch.present(k), batch.dates(k), batch.month(k), gmasks[k])
               for k in keys}
        return ChipBatch(obs, affine=theta, idx=batch.idx)
    out: dict[str, Tensor] = {AFFINE_KEY: theta}
    for k in keys:
        if gmasks[k] is not None:
            out[f"{k}_group_present"] = gmasks[k]
        out[k] = xs[k]
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
