"""Dense decoders over a list of feature maps, built by name (``DECODERS``, one :class:`~earthembed.registry.Registry`
instance like models and objectives). The same decoders serve dense contrastive pretraining (pixel
embeddings) and ``segment`` (class logits via a 1x1 head), so neither bakes a decoder into an encoder (the
counter-example is MMEarth's U-Net inside the backbone).

A decoder is built as ``DECODERS.build(name, in_channels=[...], in_strides=[...], **args)``, takes the levels
finest first / coarsest last and returns one map ``[B, out_channels, H / out_stride, W / out_stride]``.

* ``unet``: from the coarsest level up, each stage upsamples (bilinear, to the skip's exact size, so odd sizes
  never misalign), concatenates the next finer level and applies two 3x3 conv + norm + ReLU (Ronneberger et
  al. 2015; TerraTorch / smp ``UnetDecoder`` do the same). Output at the finest level's stride.
* ``hypercolumn``: every level bilinearly upsampled to the finest one and concatenated, no parameters: with
  a frozen encoder and the 1x1 head of ``segment`` this is a true linear probe of the features.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from earthembed.registry import Registry

DECODERS: Registry[nn.Module] = Registry("decoder", builtins=("earthembed.models.decoders",))
NORMS = ("batch", "group")


def _check_levels(in_channels: Sequence[int], in_strides: Sequence[int], what: str) -> None:
    if not in_channels or len(in_channels) != len(in_strides):
        raise ValueError(f"{what}: need one stride per level, got channels {list(in_channels)} and strides {list(in_strides)}")
    if list(in_strides) != sorted(in_strides):
        raise ValueError(f"{what}: levels must go from finest to coarsest, got strides {list(in_strides)}")


def _upsample(x: Tensor, size: Sequence[int]) -> Tensor:
    return x if tuple(x.shape[-2:]) == tuple(size) else F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class ConvBlock(nn.Sequential):
    """Two 3x3 conv + norm + ReLU (the U-Net stage)."""

    def __init__(self, cin: int, cout: int, norm: str = "batch") -> None:
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")

        def n(c: int) -> nn.Module:
            return nn.BatchNorm2d(c) if norm == "batch" else nn.GroupNorm(min(8, c), c)

        super().__init__(nn.Conv2d(cin, cout, 3, padding=1, bias=False), n(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), n(cout), nn.ReLU(inplace=True))


class UNetDecoder(nn.Module):
    """U-Net decoder (see the module docstring).

    Args:
        in_channels, in_strides: of the levels, finest first.
        channels: output channels of each stage, coarsest stage first (``len(levels) - 1`` entries; one entry
            for a single level, which then gets one conv block). Default: half its skip level's channels,
            within [16, 128] (light enough for CPU fine-tuning; the encoder carries the representation).
        norm: ``batch`` or ``group`` (GroupNorm for tiny or single-chip batches).
    """

    def __init__(self, in_channels: Sequence[int], in_strides: Sequence[int], channels: Sequence[int] | None = None,
                 norm: str = "batch") -> None:
        super().__init__()
        _check_levels(in_channels, in_strides, "unet")
        cin = [int(c) for c in in_channels]
        n_stages = max(1, len(cin) - 1)
        default = [max(16, min(256, c) // 2) for c in reversed(cin[:-1])] or [max(16, min(256, cin[0]) // 2)]
        chans = [int(c) for c in channels] if channels is not None else default
        if len(chans) != n_stages:
            raise ValueError(f"unet: channels needs {n_stages} entries (one per stage, coarsest first), got {chans}")
        stages = []
        width = cin[-1]
        skips = list(reversed(cin[:-1]))  # the finer level each stage concatenates
        for i, out in enumerate(chans):
            skip = skips[i] if i < len(skips) else 0
            stages.append(ConvBlock(width + skip, out, norm))
            width = out
        self.stages = nn.ModuleList(stages)
        self.out_channels = chans[-1]
        self.out_stride = int(in_strides[0])
        self.config = {"channels": chans, "norm": norm}

    def forward(self, levels: list[Tensor]) -> Tensor:
        x = levels[-1]
        skips = list(reversed(levels[:-1]))
        for i, stage in enumerate(self.stages):
            if i < len(skips):
                x = torch.cat([_upsample(x, skips[i].shape[-2:]), skips[i]], dim=1)
            x = stage(x)
        return x


class HypercolumnDecoder(nn.Module):
    """Every level upsampled to the finest and concatenated; no parameters (a linear probe with a 1x1 head)."""

    def __init__(self, in_channels: Sequence[int], in_strides: Sequence[int]) -> None:
        super().__init__()
        _check_levels(in_channels, in_strides, "hypercolumn")
        self.out_channels = int(sum(in_channels))
        self.out_stride = int(in_strides[0])
        self.config: dict = {}

    def forward(self, levels: list[Tensor]) -> Tensor:
        size = levels[0].shape[-2:]
        return torch.cat([_upsample(x, size) for x in levels], dim=1)


DECODERS.register("unet", UNetDecoder)
DECODERS.register("hypercolumn", HypercolumnDecoder)
