"""Patch masking for masked-image pretraining, and a ConvNeXt run as if its convolutions were sparse.

* :func:`random_patch_mask` hides the same number of patches (``int(L * ratio)`` of ``L``) in every chip, at
  random places (ConvNeXt-V2 / MMEarth FCMAE), and returns a :class:`PatchMask`.
* :func:`masked_convnext_features` runs a timm ConvNeXt (the *exported* encoder's own backbone, so no weight
  is copied or renamed) on the visible patches only. FCMAE uses sparse convolutions (MinkowskiEngine) so
  that nothing of a hidden patch reaches the visible features; a CPU/GPU dense emulation gives the same
  result: hidden pixels are zeroed before the stem and hidden positions after the stem, after every
  downsampling layer and after every block, and each block's Global Response Norm sees zeros there (its
  L2 statistics then cover visible positions only, as the sparse GRN's do). A depthwise convolution reading
  a zeroed neighbour adds nothing, which is what a sparse convolution does with an absent one (tested: with
  the right half hidden, the visible features equal the network run on the left half alone). We rejected
  MinkowskiEngine itself (CUDA-only build, unmaintained) and masking only the input (MMEarth's dense
  fallback), which lets biases and GRN statistics of hidden positions leak into visible features.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclasses.dataclass
class PatchMask:
    """Which patches of each chip are hidden.

    Attributes:
        hidden: ``[B, h, w]`` bool, True = hidden (the encoder must not see it; the loss is computed there).
        patch_size: side of a patch in input pixels (the encoder's total stride).
    """

    hidden: Tensor
    patch_size: int

    @property
    def grid(self) -> tuple[int, int]:
        return int(self.hidden.shape[1]), int(self.hidden.shape[2])

    def hidden_at(self, size: tuple[int, int] | torch.Size) -> Tensor:
        """``[B, 1, H, W]`` bool: the mask on a ``size`` grid that is a whole multiple of the patch grid."""
        h, w = self.grid
        fy, fx = int(size[0]) // h, int(size[1]) // w
        if fy * h != int(size[0]) or fx * w != int(size[1]):
            raise ValueError(f"a {tuple(size)} map is not a whole multiple of the {h}x{w} patch grid")
        return self.hidden.repeat_interleave(fy, 1).repeat_interleave(fx, 2)[:, None]

    def keep_at(self, size: tuple[int, int] | torch.Size, dtype: torch.dtype) -> Tensor:
        """``[B, 1, H, W]`` 1.0 at visible and 0.0 at hidden positions, to multiply feature maps by."""
        return (~self.hidden_at(size)).to(dtype)


def _splits(patches: int, ratio: float) -> bool:
    """Whether ``patches`` patches leave >= 1 visible and >= 1 hidden one at ``ratio``."""
    return 1 <= int(patches * (1 - ratio)) < patches


def mask_grid(size: int, patch_size: int, ratio: float, where: str = "") -> tuple[int, int]:
    """The ``(h, w)`` patch grid of ``size`` px chips, or a ValueError naming what the masking needs: the
    size must be a multiple of the patch and leave >= 1 visible and >= 1 hidden patch at ``ratio``."""
    prefix = f"{where}: " if where else ""
    if not 0 < ratio < 1:
        raise ValueError(f"{prefix}mask_ratio must be in (0, 1), got {ratio}")
    side = size // patch_size
    if size % patch_size or not _splits(side * side, ratio):
        need = next(s for s in range(1, 64) if _splits(s * s, ratio)) * patch_size
        raise ValueError(
            f"{prefix}chips of {size} px do not fit the masking grid: it needs a multiple of the patch size "
            f"{patch_size} px (the encoder's total stride) and at least {need} px to leave a visible and a hidden "
            f"patch at mask_ratio {ratio} (set data.crop_size, or a smaller model.stem_stride for a smaller patch)"
        )
    return side, side


def random_patch_mask(n: int, grid: tuple[int, int], ratio: float, patch_size: int,
                      device: torch.device | str = "cpu", generator: torch.Generator | None = None) -> PatchMask:
    """Hide ``L - int(L * (1 - ratio))`` of the ``L = h * w`` patches of each of ``n`` chips, uniformly at random."""
    h, w = grid
    total = h * w
    keep = int(total * (1 - ratio))
    order = torch.rand(n, total, generator=generator).argsort(1)
    hidden = torch.ones(n, total, dtype=torch.bool)
    hidden.scatter_(1, order[:, :keep], False)
    return PatchMask(hidden.view(n, h, w).to(device), int(patch_size))


def convnext_parts(backbone: nn.Module | None) -> tuple[nn.Module, list[nn.Module]]:
    """(stem, stages) of a timm ConvNeXt, or a ValueError for any other backbone."""
    stem, stages = getattr(backbone, "stem", None), getattr(backbone, "stages", None)
    if stem is None or stages is None or not all(hasattr(s, "blocks") and hasattr(s, "downsample") for s in stages):
        raise ValueError(f"masked pretraining needs a timm ConvNeXt backbone (stem + stages of blocks), "
                         f"got {type(backbone).__name__}")
    return stem, list(stages)


@contextlib.contextmanager
def _grn_sees(backbone: nn.Module, keep: dict[tuple[int, int], Tensor]) -> Iterator[None]:
    """While active, every GRN of ``backbone`` gets zeros at hidden positions; ``keep`` maps (H, W) to the
    ``[B, 1, H, W]`` visible mask. timm's GRN is channels-first or channels-last (its ``spatial_dim``)."""

    def zero_hidden(module: nn.Module, args: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        x = args[0]
        if tuple(getattr(module, "spatial_dim", (1, 2))) == (2, 3):
            return (x * keep[(int(x.shape[2]), int(x.shape[3]))].to(x.dtype), *args[1:])
        return (x * keep[(int(x.shape[1]), int(x.shape[2]))].permute(0, 2, 3, 1).to(x.dtype), *args[1:])

    handles = [m.register_forward_pre_hook(zero_hidden) for n, m in backbone.named_modules() if n.endswith(".grn")]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def masked_convnext_features(backbone: nn.Module, x: Tensor, mask: PatchMask) -> Tensor:
    """The last feature map ``[B, C, h, w]`` (patch grid) of a timm ConvNeXt seeing only the visible patches
    of ``x`` (``[B, C_in, H, W]``); hidden positions of the output are 0. See the module docstring."""
    stem, stages = convnext_parts(backbone)
    cache: dict[tuple[int, int], Tensor] = {}

    def keep(t: Tensor) -> Tensor:
        key = (int(t.shape[-2]), int(t.shape[-1]))
        if key not in cache:
            cache[key] = mask.keep_at(key, t.dtype)
        return cache[key]

    x = x * keep(x)
    with _grn_sees(backbone, cache):
        x = stem(x)
        x = x * keep(x)
        for stage in stages:
            x = stage.downsample(x)
            x = x * keep(x)
            for block in stage.blocks:
                x = block(x) * keep(x)
    norm_pre = getattr(backbone, "norm_pre", None)
    return norm_pre(x) * keep(x) if norm_pre is not None else x


def patch_features_to_pixels(pred: Tensor, patch_size: int) -> Tensor:
    """``[B, C * p * p, h, w]`` per-patch predictions -> ``[B, C, h * p, w * p]`` pixels (pixel shuffle)."""
    return F.pixel_shuffle(pred, patch_size)
