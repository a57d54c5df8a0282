"""Plain timm Vision Transformers (``vit_*``) behind the :class:`~earthembed.models.base.Encoder` contract.

Published ViTs (TorchGeo's SSL4EO-S12 MoCo / DINO / MAE / SoftCon, timm's ImageNet ViTs) are timm
``VisionTransformer`` state dicts; this class holds one per modality so they load key for key
(``backbones.<modality>.<timm key>``). It is :class:`~earthembed.models.timm_cnn.TimmEncoder` (bands by name,
band groups, absent rows, the fused embedding) with two ViT-specific choices:

* **Any chip size, same weights.** Backbones are built with timm's ``dynamic_img_size=True``: the position
  embedding keeps the published grid (e.g. 14x14 for 224 px) and is interpolated to the chip's grid at each
  forward, so a 64 px chip (4x4 tokens of 16 px) uses the weights unchanged. Resizing chips to 224 px
  (``input_size=224``) costs ~12x the compute of a 64 px chip and is left to the caller.
* **Multi-scale features.** A ViT has one stride (its patch size) for every block; :meth:`forward_features`
  returns ``feature_blocks`` (default: the last block of each quarter of the depth, as ViTDet-style necks
  use) rather than all blocks, so decoders get 4 maps at stride = patch size.

The embedding is timm's own ``forward_head(pre_logits=True)`` (class token, or average pooling for models
without one).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from earthembed.models.registry import register_model
from earthembed.models.timm_cnn import TimmEncoder


def default_feature_blocks(depth: int) -> list[int]:
    """The last block of each quarter of ``depth`` blocks (``[2, 5, 8, 11]`` for 12)."""
    return sorted({max(0, round(depth * q / 4) - 1) for q in (1, 2, 3, 4)})


class TimmViTEncoder(TimmEncoder):
    """A timm ``VisionTransformer`` per modality; see the module docstring.

    Args:
        modalities: modality key -> band names in the order the model stores them.
        backbone: timm ViT name (``vit_small_patch16_224``, ``vit_small_patch14_dinov2``, ...).
        band_groups: modality key -> band-name groups (used by band-group dropout and ``group_present``).
        feature_blocks: block indices returned by :meth:`forward_features` (default
            :func:`default_feature_blocks`).
        input_size: resize inputs to this side length first (None: keep the chip size).
        drop_path_rate: stochastic depth of the backbone.
        timm_kwargs: extra keyword arguments for ``timm.create_model`` (e.g. ``img_size`` of the published grid).
    """

    architecture = "timm_vit"

    def __init__(
        self,
        modalities: Mapping[str, Sequence[str]],
        backbone: str = "vit_tiny_patch16_224",
        band_groups: Mapping[str, Sequence[Sequence[str]]] | None = None,
        feature_blocks: Sequence[int] | None = None,
        input_size: int | None = None,
        drop_path_rate: float = 0.0,
        timm_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        user_kwargs = dict(timm_kwargs or {})
        super().__init__(modalities, backbone=backbone, band_groups=band_groups, stem_stride=4,
                         input_size=input_size, drop_path_rate=drop_path_rate,
                         timm_kwargs={**user_kwargs, "dynamic_img_size": True})
        self.timm_kwargs = user_kwargs  # the config records what the caller chose; dynamic size is implied
        ref = next(iter(self.backbones.values()))
        if not isinstance(ref, VisionTransformer):
            raise ValueError(f"timm_vit needs a timm VisionTransformer backbone, {backbone!r} is a {type(ref).__name__}")
        depth = len(ref.blocks)
        blocks = default_feature_blocks(depth) if feature_blocks is None else sorted({int(b) for b in feature_blocks})
        if not blocks or blocks[0] < 0 or blocks[-1] >= depth:
            raise ValueError(f"feature_blocks {feature_blocks} must be block indices in [0, {depth})")
        self.feature_blocks = blocks
        self.feature_channels = [int(ref.embed_dim)] * len(blocks)
        self.feature_strides = [int(ref.patch_embed.patch_size[0])] * len(blocks)

    @property
    def config(self) -> dict[str, Any]:
        return {
            "modalities": {k: list(v) for k, v in self.modalities.items()},
            "backbone": self.backbone,
            "band_groups": {k: [list(g) for g in gs] for k, gs in self.band_groups.items()},
            "feature_blocks": list(self.feature_blocks),
            "input_size": self.input_size,
            "drop_path_rate": self.drop_path_rate,
            "timm_kwargs": dict(self.timm_kwargs),
        }

    def intermediates(self, net: nn.Module, x: Tensor) -> list[Tensor]:
        return list(net.forward_intermediates(x, indices=self.feature_blocks, intermediates_only=True))


register_model("timm_vit")(TimmViTEncoder)
