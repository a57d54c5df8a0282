"""Necks: turn an encoder's list of feature maps into the list a decoder wants, built by name (TerraTorch-style).

A neck is an ``nn.Module`` built as ``NECKS.build(name, in_channels=[...], in_strides=[...], **args)``; it
exposes ``out_channels`` / ``out_strides`` and maps ``list[Tensor] -> list[Tensor]`` (finest first, coarsest
last, as :attr:`earthembed.models.base.Encoder.feature_strides`).

* ``identity``: the encoder's levels unchanged (CNNs already give a pyramid).
* ``tokens_to_pyramid``: a ViT gives one token map at stride ``patch_size``; a U-Net needs finer levels to
  upsample through. Learned 2x2 transposed convolutions make 4x / 2x finer maps and a max-pool a 2x coarser
  one (the "simple feature pyramid" of ViTDet, Li et al. 2022). Rejected: plain bilinear upsampling of the token
  map (TerraTorch's ``InterpolateToPyramidal``): it adds no parameters, so every level carries the same
  patch-blocky information and the decoder's skip connections add nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from earthembed.registry import Registry

NECKS: Registry[nn.Module] = Registry("neck", builtins=("earthembed.models.necks",))


class IdentityNeck(nn.Module):
    """The encoder's levels unchanged."""

    def __init__(self, in_channels: Sequence[int], in_strides: Sequence[int]) -> None:
        super().__init__()
        self.out_channels, self.out_strides = list(in_channels), list(in_strides)

    def forward(self, levels: list[Tensor]) -> list[Tensor]:
        return list(levels)


class TokensToPyramid(nn.Module):
    """One token map at stride ``s`` -> maps at strides ``s / f`` for each factor ``f`` in ``scales``.

    Args:
        scales: upsampling factors, each a power of two (``4`` = 4x finer, ``0.5`` = 2x coarser).
        channels: channels per output level (default: ``C / f`` for finer levels, at least 16, else ``C``).
    """

    def __init__(self, in_channels: Sequence[int], in_strides: Sequence[int], scales: Sequence[float] = (4, 2, 1, 0.5),
                 channels: Sequence[int] | None = None) -> None:
        super().__init__()
        if len(in_channels) != 1:
            raise ValueError(f"tokens_to_pyramid needs exactly one input level (a ViT token map), got {len(in_channels)}")
        c, s = int(in_channels[0]), int(in_strides[0])
        scales = sorted((float(f) for f in scales), reverse=True)  # finest first
        for f in scales:
            if f <= 0 or abs(math.log2(f) - round(math.log2(f))) > 1e-9:
                raise ValueError(f"tokens_to_pyramid: scale {f} is not a power of two")
            if f > s:
                raise ValueError(f"tokens_to_pyramid: scale {f} of a stride-{s} token map gives a stride below 1 pixel")
        chans = list(channels) if channels is not None else [max(16, int(c // f)) if f > 1 else c for f in scales]
        if len(chans) != len(scales):
            raise ValueError(f"tokens_to_pyramid: {len(chans)} channels given for {len(scales)} scales")
        self.out_channels = [int(x) for x in chans]
        self.out_strides = [int(round(s / f)) for f in scales]
        self.levels = nn.ModuleList(self._level(c, out, f) for f, out in zip(scales, self.out_channels, strict=True))

    @staticmethod
    def _level(c: int, out: int, f: float) -> nn.Module:
        """4x finer: two 2x2 transposed convs (GroupNorm + GELU between); 1x: identity or a 1x1 conv to ``out``
        channels; coarser: max-pool (+ 1x1 conv)."""
        if f > 1:
            n = int(round(math.log2(f)))
            widths = [c] + [max(out, c // 2 ** (i + 1)) for i in range(n - 1)] + [out]
            steps: list[nn.Module] = []
            for i in range(n):
                steps.append(nn.ConvTranspose2d(widths[i], widths[i + 1], kernel_size=2, stride=2))
                if i < n - 1:
                    steps += [nn.GroupNorm(1, widths[i + 1]), nn.GELU()]
            return nn.Sequential(*steps)
        pool = nn.MaxPool2d(int(round(1 / f))) if f < 1 else nn.Identity()
        return nn.Sequential(pool, nn.Conv2d(c, out, 1) if out != c else nn.Identity())

    def forward(self, levels: list[Tensor]) -> list[Tensor]:
        if len(levels) != 1:
            raise ValueError(f"tokens_to_pyramid expects one level, got {len(levels)}")
        return [m(levels[0]) for m in self.levels]


NECKS.register("identity", IdentityNeck)
NECKS.register("tokens_to_pyramid", TokensToPyramid)


def default_neck(in_channels: Sequence[int]) -> str:
    """``tokens_to_pyramid`` for a single-level encoder (a ViT), ``identity`` for a pyramid (a CNN)."""
    return "tokens_to_pyramid" if len(in_channels) == 1 else "identity"
