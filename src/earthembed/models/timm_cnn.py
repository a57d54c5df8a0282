"""CNN encoders from timm (ResNet, ConvNeXt V2, ...) behind the :class:`~earthembed.models.base.Encoder` contract.

* **One backbone per modality.** Each modality gets its own timm backbone with ``in_chans`` = its number of
  bands (CNN stems cannot share weights across band counts). Per-modality embeddings are therefore
  independent, as for the ViT, and the fused embedding is the same parameter-free mean
  (:func:`~earthembed.models.base.fuse_embeddings`).
* **Bands by name.** Inputs with a subset of bands (any order) are scattered into the model's channel
  order with zeros in the missing slots: after z-score normalisation zero is the band mean, which is what
  band dropout trains for. ``group_present`` zeroes the channels of absent band groups per row (a CNN has
  no tokens to drop, so absence is imputation here, and band-group dropout in pretraining trains for it).
* **Small chips.** timm CNNs reduce the input 4x in the stem and 32x overall, which leaves a 1x1 map for a
  32 px chip. ``stem_stride`` (4 = timm's, 2 or 1) changes only strides and padding of the stem, never a
  weight shape, so published weights still load: ResNet: 2 = stride-1 conv then the max-pool, 1 = no
  max-pool either (the CIFAR recipe); ConvNeXt: the 4x4 patchify conv with stride 2 (padding 1) or 1
  ('same'). ``input_size`` instead resizes inputs (e.g. to 224 for ImageNet weights), at 16-50x the compute.
  We default the registered small-chip variants to ``stem_stride=2``: a 32 px chip ends at 2x2 (ResNet) or
  2x2 (ConvNeXt), 64 px at 4x4, at ~4x the compute of timm's stem.
* **MMEarth stem** (``stem="mmearth"``). MMEarth's ConvNeXt V2 (Nedungadi et al. 2024) replaces the 4x4
  patchify conv by a 3x3 conv (stride 1) + LayerNorm + GELU and a depthwise ``s x s`` conv (stride ``s`` =
  patch size / 8) + LayerNorm, so its published 56 px / patch-8 checkpoints work at stride 1-8 instead of
  4-32. ``stem_stride`` is then that ``s`` (1, 2 or 4); every other weight is timm's ``convnextv2_*``, so
  MMEarth checkpoints load into this class (:mod:`earthembed.models.published.mmearth`).
* **Embedding.** ``pool="last"``: timm's own head without the classifier (``forward_head(pre_logits=True)``):
  global average pool (+ LayerNorm for ConvNeXt). ``pool="multiscale"``: the global average of *every*
  level of :meth:`TimmEncoder.forward_features` (stem and stages), concatenated (ResNet-18: 64+64+128+256+512
  = 1024 dims). The last stage of a small CNN trained on a small pool keeps texture and layout but only a
  lossy trace of the per-band radiometry, which is what separates many land-cover classes (water, bare
  soil, vegetation types): raw band means alone are a strong baseline on multispectral chips. Pooling the
  early levels keeps that signal in the embedding next to the deep one, as multi-layer probes of
  self-supervised models do; we rejected concatenating raw band statistics to the embedding (that would be
  the baseline inside the model, not a learned feature). ``pool="multiscale_meanstd"`` adds each level's
  spatial standard deviation (2048 dims): how much a learned feature varies within the chip (texture, mixed
  cover), which means alone average away. ``tta="d4"`` averages the embedding over the chip's 8
  rotations/flips in eval mode. :meth:`TimmEncoder.forward_features` gives timm's
  intermediate maps (``forward_intermediates``), so U-Net decoders work unchanged.

The state-dict keys of each backbone (``backbones.<modality>.<timm key>``) are timm's own, so timm / TorchGeo
checkpoints map onto them by prefix.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import timm
import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from torch import Tensor, nn

from earthembed.models.base import Encoder, ModalityInput, check_band_groups
from earthembed.models.registry import register_model, variant

STEM_STRIDES = (1, 2, 4)
STEMS = ("timm", "mmearth")
POOLS = ("last", "multiscale", "multiscale_meanstd")
TTAS = (None, "d4")
# stride-1 ConvNeXt stems pad 'same' around an even kernel; torch warns on every call that it copies the input
warnings.filterwarnings("ignore", message="Using padding='same' with even kernel lengths", category=UserWarning)


def set_stem_stride(model: nn.Module, stride: int) -> None:
    """Make a timm ResNet / ConvNeXt stem reduce by ``stride`` (1, 2 or 4) without changing weight shapes."""
    if stride not in STEM_STRIDES:
        raise ValueError(f"stem_stride must be one of {STEM_STRIDES}, got {stride}")
    if stride == 4:
        return
    conv1, pool = getattr(model, "conv1", None), getattr(model, "maxpool", None)
    if isinstance(conv1, nn.Conv2d) and conv1.stride == (2, 2) and isinstance(pool, nn.MaxPool2d):  # ResNet
        conv1.stride = (1, 1)
        if stride == 1:
            model.maxpool = nn.Identity()
        return
    stem = getattr(model, "stem", None)
    conv = stem[0] if isinstance(stem, nn.Sequential) and len(stem) else None
    if isinstance(conv, nn.Conv2d) and conv.stride == (4, 4) and conv.kernel_size == (4, 4):  # ConvNeXt
        conv.stride = (stride, stride)
        conv.padding = (1, 1) if stride == 2 else "same"
        return
    raise ValueError(f"stem_stride={stride}: {type(model).__name__} has no ResNet or ConvNeXt stem to change")


def mmearth_stem(in_chans: int, dim: int, stride: int) -> nn.Sequential:
    """MMEarth's ConvNeXt V2 stem: 3x3 conv + LayerNorm + GELU, then a depthwise ``stride`` x ``stride`` conv
    (stride ``stride``) + LayerNorm. Padding follows MMEarth's sparse pretraining (a 3x3 sparse conv keeps every
    pixel: ``padding=1``; the depthwise conv has none), not its dense fine-tuning model, whose unpadded 3x3 conv
    drops a 1-px border and would misalign feature maps with the chip's pixels."""
    if stride not in STEM_STRIDES:
        raise ValueError(f"stem_stride must be one of {STEM_STRIDES}, got {stride}")
    return nn.Sequential(
        nn.Conv2d(in_chans, dim, kernel_size=3, padding=1),
        LayerNorm2d(dim, eps=1e-6),
        nn.GELU(),
        nn.Conv2d(dim, dim, kernel_size=stride, stride=stride, groups=dim),
        LayerNorm2d(dim, eps=1e-6),
    )


def _set_stem(net: nn.Module, stem: str, stride: int, in_chans: int) -> None:
    """Give ``net`` the stem named ``stem`` at total reduction ``stride`` (see :data:`STEMS`)."""
    if stem not in STEMS:
        raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
    if stem == "timm":
        set_stem_stride(net, stride)
        return
    old = getattr(net, "stem", None)
    conv = old[0] if isinstance(old, nn.Sequential) and len(old) else None
    if not (isinstance(conv, nn.Conv2d) and type(net).__name__ == "ConvNeXt"):
        raise ValueError(f"stem='mmearth' needs a ConvNeXt backbone, got {type(net).__name__}")
    net.stem = mmearth_stem(in_chans, conv.out_channels, stride)


class TimmEncoder(Encoder):
    """A timm CNN per modality; see the module docstring.

    Args:
        modalities: modality key -> band names in the order the model stores them.
        backbone: timm model name (``resnet18``, ``convnextv2_atto``, ...).
        band_groups: modality key -> band-name groups (default :func:`~earthembed.models.base.default_band_groups`);
            used by band-group dropout and ``group_present``.
        stem_stride: 4 (timm's stem), 2 or 1 for small chips; with ``stem="mmearth"`` MMEarth's patch size / 8.
        stem: ``"timm"`` (the backbone's own) or ``"mmearth"`` (MMEarth's ConvNeXt V2 stem, see the module doc).
        input_size: resize inputs to this side length first (None: keep the chip size).
        drop_path_rate: stochastic depth of the backbone.
        timm_kwargs: extra keyword arguments for ``timm.create_model``.
        pool: ``last`` (timm's head), ``multiscale`` (every level's global average, concatenated) or
            ``multiscale_meanstd`` (every level's global average and standard deviation).
        tta: ``"d4"``: in eval mode, the embedding is the mean over the 8 rotations/flips of the chip (the
            pretraining views teach invariance to them; the average removes what is left, for 8x the compute of
            an embedding; training and ``forward_features`` are unchanged). None: one pass.
    """

    architecture = "timm_cnn"

    def __init__(
        self,
        modalities: Mapping[str, Sequence[str]],
        backbone: str = "resnet18",
        band_groups: Mapping[str, Sequence[Sequence[str]]] | None = None,
        stem_stride: int = 4,
        input_size: int | None = None,
        drop_path_rate: float = 0.0,
        timm_kwargs: Mapping[str, Any] | None = None,
        stem: str = "timm",
        pool: str = "last",
        tta: str | None = None,
    ) -> None:
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        if tta not in TTAS:
            raise ValueError(f"tta must be one of {TTAS}, got {tta!r}")
        self.pool = str(pool)
        self.tta = tta
        self.modalities, self.band_groups = check_band_groups(modalities, band_groups)
        if backbone not in timm.list_models():
            raise ValueError(f"unknown timm backbone {backbone!r} (see timm.list_models())")
        self.backbone = str(backbone)
        self.stem_stride = int(stem_stride)
        self.stem = str(stem)
        self.input_size = None if input_size is None else int(input_size)
        self.drop_path_rate = float(drop_path_rate)
        self.timm_kwargs = dict(timm_kwargs or {})
        kw = {**self.timm_kwargs, **({"drop_path_rate": self.drop_path_rate} if self.drop_path_rate else {})}
        nets = {}
        for k, bands in self.modalities.items():
            net = timm.create_model(self.backbone, pretrained=False, in_chans=len(bands), num_classes=0, **kw)
            _set_stem(net, self.stem, self.stem_stride, len(bands))
            nets[k] = net
        self.backbones = nn.ModuleDict(nets)
        ref = next(iter(nets.values()))
        factor = 4 // self.stem_stride
        self.feature_channels = [int(f["num_chs"]) for f in ref.feature_info]
        levels = sum(self.feature_channels) * (2 if self.pool == "multiscale_meanstd" else 1)
        self.embed_dim = int(ref.num_features) if self.pool == "last" else levels
        self.feature_strides = [max(1, int(f["reduction"]) // factor) for f in ref.feature_info]

    @property
    def config(self) -> dict[str, Any]:
        return {
            "modalities": {k: list(v) for k, v in self.modalities.items()},
            "backbone": self.backbone,
            "band_groups": {k: [list(g) for g in gs] for k, gs in self.band_groups.items()},
            "stem_stride": self.stem_stride,
            "input_size": self.input_size,
            "drop_path_rate": self.drop_path_rate,
            "timm_kwargs": dict(self.timm_kwargs),
            "stem": self.stem,
            "pool": self.pool,
            "tta": self.tta,
        }

    def _prepare(self, k: str, inp: ModalityInput) -> Tensor:
        """Model-ordered input of ``inp``'s rows with absent groups zeroed, resized to ``input_size`` if set."""
        x = self.model_input(k, inp)
        if self.input_size is not None and tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        return x

    def embed_modality(self, k: str, inp: ModalityInput) -> Tensor:
        return self._pooled(self.backbones[k], self._prepare(k, inp))

    def _pooled(self, net: nn.Module, x: Tensor) -> Tensor:
        """[B, embed_dim] float32 embedding of one backbone (see ``pool`` and ``tta``)."""
        if self.tta == "d4" and not self.training:
            views = (v.rot90(k, (2, 3)) for v in (x, x.flip(3)) for k in range(4))
            return torch.stack([self._pooled_once(net, v) for v in views]).mean(0)
        return self._pooled_once(net, x)

    def _pooled_once(self, net: nn.Module, x: Tensor) -> Tensor:
        if self.pool == "last":
            return net.forward_head(net.forward_features(x), pre_logits=True).float()
        maps = [m.float() for m in net.forward_intermediates(x, intermediates_only=True)]
        if self.pool == "multiscale_meanstd":  # a 1x1 map (a late stage of a small chip) has std 0, not NaN
            return torch.cat([t for m in maps for t in (m.mean((2, 3)), m.std((2, 3), correction=0))], 1)
        return torch.cat([m.mean((2, 3)) for m in maps], 1)

    def modality_features(self, k: str, inp: ModalityInput) -> list[Tensor]:
        return self.intermediates(self.backbones[k], self._prepare(k, inp))

    def intermediates(self, net: nn.Module, x: Tensor) -> list[Tensor]:
        """The maps of :meth:`forward_features` for one backbone (timm's ``forward_intermediates``)."""
        return list(net.forward_intermediates(x, intermediates_only=True))

    def no_weight_decay(self) -> set[str]:
        """1-D parameters plus what each timm backbone itself exempts (position embeddings and the like)."""
        names = super().no_weight_decay()
        for k, net in self.backbones.items():
            own = net.no_weight_decay() if hasattr(net, "no_weight_decay") else set()
            names |= {f"backbones.{k}.{n}" for n in own}
        return names


register_model("timm_cnn")(TimmEncoder)
register_model("resnet18_small")(variant(TimmEncoder, backbone="resnet18", stem_stride=2))
register_model("resnet34_small")(variant(TimmEncoder, backbone="resnet34", stem_stride=2))
register_model("convnextv2_atto_small")(variant(TimmEncoder, backbone="convnextv2_atto", stem_stride=2))
register_model("convnextv2_femto_small")(variant(TimmEncoder, backbone="convnextv2_femto", stem_stride=2))
