"""Dense (per-pixel) features of any :class:`~earthembed.models.base.Encoder`: fused multi-scale maps -> neck ->
decoder, composed by name. Used by dense contrastive pretraining and by ``segment``.

**Multimodal fusion.** ``Encoder.forward_features`` gives per-modality pyramids (zeros for absent rows). Per
level, :func:`fuse_levels` takes the mean over the modalities *present* for each row: parameter-free, defined
for any subset of modalities (a chip without S1 gets its S2 maps, not half of them), and the same rule as the
fused embedding (:func:`~earthembed.models.base.fuse_embeddings`, minus the L2 normalisation, which would
discard the feature magnitudes a decoder uses). Rejected: concatenating modalities (the decoder's input width
would depend on which modalities a store has, and a missing one would feed zeros the decoder reads as data)
and a learned per-modality gate (parameters a few hundred labels cannot fit).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from earthembed.contract import ChipBatch, as_chip_batch
from earthembed.models.base import Encoder
from earthembed.models.decoders import DECODERS
from earthembed.models.necks import NECKS, default_neck


def modality_presence(encoder: Encoder, batch: Mapping[str, Any], bands: Mapping[str, Sequence[str]] | None = None,
                      present: Mapping[str, Any] | None = None, group_present: Mapping[str, Any] | None = None
                      ) -> dict[str, Tensor]:
    """``{k: [B] bool}`` for the model modalities in ``batch`` (a row without any band group is absent)."""
    _, inputs = encoder.resolve_inputs(batch, bands, present, group_present)
    return {k: inp.present for k, inp in inputs.items()}


def fuse_levels(features: Mapping[str, Sequence[Tensor]], present: Mapping[str, Tensor]) -> list[Tensor]:
    """Per level, the mean of the modalities' maps over the modalities present per row (zeros if none)."""
    keys = list(features)
    if not keys:
        raise ValueError("no modality feature maps to fuse")
    n_levels = {len(features[k]) for k in keys}
    if len(n_levels) != 1:
        raise ValueError(f"modalities have different numbers of levels: { {k: len(features[k]) for k in keys} }")
    ref = features[keys[0]][0]
    w = torch.stack([present[k].to(ref.device, torch.float32) for k in keys])  # [M, B]
    count = w.sum(0).clamp(min=1.0)
    out = []
    for i in range(n_levels.pop()):
        acc = sum(features[k][i].float() * w[j][:, None, None, None] for j, k in enumerate(keys))
        out.append(acc / count[:, None, None, None])
    return out


def encode_levels(encoder: Encoder, batch: Mapping[str, Any], bands: Mapping[str, Sequence[str]] | None = None,
                  present: Mapping[str, Any] | None = None, group_present: Mapping[str, Any] | None = None
                  ) -> list[Tensor]:
    """The encoder's multi-scale maps of ``batch``, fused over the modalities present (see the module docstring)."""
    feats = encoder.forward_features(batch, bands, present, group_present)
    return fuse_levels(feats, modality_presence(encoder, batch, bands, present, group_present))


def check_chip_size(encoder: Encoder, height: int, width: int, where: str = "") -> None:
    """Raise a ValueError naming the sizes when a chip is not a multiple of the encoder's coarsest stride
    (the decoder's levels would not line up and the ViT would resize its input)."""
    if getattr(encoder, "input_size", None):
        return  # the encoder resizes every input itself; its maps are upsampled back to the chip size
    s = max(int(x) for x in encoder.feature_strides)
    if height < s or width < s or height % s or width % s:
        prefix = f"{where}: " if where else ""
        raise ValueError(
            f"{prefix}chip size {height}x{width} px does not fit the encoder ({type(encoder).__name__}, feature "
            f"strides {list(encoder.feature_strides)}): the decoder needs a side that is a multiple of the coarsest "
            f"stride {s}; re-tile the store (ingest --chip-size) or crop (data.crop_size), e.g. to "
            f"{max(s, (min(height, width) // s) * s)} px"
        )


class PixelDecoder(nn.Module):
    """Neck + decoder by name over an encoder's levels: ``forward(levels) -> [B, out_channels, h, w]`` at
    ``out_stride`` (upsample with :meth:`to_size`).

    Args:
        in_channels, in_strides: the encoder's ``feature_channels`` / ``feature_strides``.
        decoder, decoder_args: a :data:`~earthembed.models.decoders.DECODERS` name and its arguments.
        neck, neck_args: a :data:`~earthembed.models.necks.NECKS` name (``auto``: ``tokens_to_pyramid`` for a
            single-level encoder, else ``identity``) and its arguments.
    """

    def __init__(self, in_channels: Sequence[int], in_strides: Sequence[int], decoder: str = "unet",
                 decoder_args: Mapping[str, Any] | None = None, neck: str = "auto",
                 neck_args: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.neck_name = default_neck(in_channels) if neck == "auto" else neck
        self.neck = NECKS.build(self.neck_name, in_channels=list(in_channels), in_strides=list(in_strides), **dict(neck_args or {}))
        self.decoder_name = decoder
        self.decoder = DECODERS.build(decoder, in_channels=self.neck.out_channels, in_strides=self.neck.out_strides,
                                      **dict(decoder_args or {}))
        self.out_channels = int(self.decoder.out_channels)
        self.out_stride = int(self.decoder.out_stride)

    def forward(self, levels: list[Tensor]) -> Tensor:
        return self.decoder(self.neck(levels))

    @staticmethod
    def to_size(x: Tensor, size: Sequence[int]) -> Tensor:
        """``x`` bilinearly resized to ``size`` (a no-op when it already has it)."""
        return x if tuple(x.shape[-2:]) == tuple(size) else F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class Segmenter(nn.Module):
    """Encoder + :class:`PixelDecoder` + 1x1 classifier: ``forward(batch) -> logits [B, K, H, W]`` at the chip size.

    ``freeze_encoder`` keeps the encoder's weights and normalisation statistics fixed (``requires_grad`` off and
    eval mode even while the module trains): decoder-only training ("linear probe" with the ``hypercolumn``
    decoder) versus full fine-tuning is this one flag, as in TorchGeo's ``freeze_backbone``.
    """

    def __init__(self, encoder: Encoder, num_classes: int, decoder: str = "unet",
                 decoder_args: Mapping[str, Any] | None = None, neck: str = "auto",
                 neck_args: Mapping[str, Any] | None = None, freeze_encoder: bool = False) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"a segmentation task needs at least 2 classes, got {num_classes}")
        self.encoder = encoder
        self.pixel = PixelDecoder(encoder.feature_channels, encoder.feature_strides, decoder, decoder_args, neck, neck_args)
        self.head = nn.Conv2d(self.pixel.out_channels, num_classes, 1)
        self.freeze_encoder = bool(freeze_encoder)
        if self.freeze_encoder:
            for p in self.encoder.parameters():
                p.requires_grad_(False)
            self.encoder.eval()

    def train(self, mode: bool = True) -> Segmenter:
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()
        return self

    def forward(self, batch: Mapping[str, Any] | ChipBatch, bands: Mapping[str, Sequence[str]] | None = None,
                present: Mapping[str, Any] | None = None, group_present: Mapping[str, Any] | None = None) -> Tensor:
        """Logits of ``batch`` (a :class:`~earthembed.contract.ChipBatch`; a dict with today's string keys is
        taken through :func:`~earthembed.contract.as_chip_batch`) at the size of its chips."""
        batch = as_chip_batch(batch)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_encoder):
            levels = encode_levels(self.encoder, batch, bands, present, group_present)
        size = next(batch.obs[k].x for k in self.encoder.modalities if k in batch.obs).shape[-2:]
        return self.pixel.to_size(self.head(self.pixel(levels)), size)
