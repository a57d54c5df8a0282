"""Dense (pixel-level) contrastive pretraining, after Embedding Earth (Tarasiou & Zafeiriou 2022).

The paper's code was never released; this is the design we chose, and why.

* **Pixel embeddings**: the encoder's multi-scale maps (fused over the modalities present, see
  :mod:`earthembed.models.dense`) go through the same U-Net decoder that ``segment`` fine-tunes (a ViT gets the
  tokens-to-pyramid neck first), then a 2-layer MLP projection head applied only at sampled points. Only the
  encoder is exported, as for every objective; the decoder and head are pretext machinery.
* **Views with known geometry**: each chip is augmented twice (:func:`earthembed.augment.augment_batch`: random
  resized crop, flips, 90-degree rotations, band / band-group dropout, noise); both affines are kept, so every
  point of one view has its ground-truth partner in the other. We sample ``points_per_chip`` points uniformly
  in the region both crops cover (:func:`corresponding_points`) and read both feature maps there by bilinear
  interpolation. Positives therefore come from geometry, as in PixPro (Xie et al. 2021) and VICRegL's location
  matching (Bardes et al. 2022), not from feature similarity as in DenseCL (Wang et al. 2021), whose argmax
  matching is noisy early in training and needs no geometry we do not already have.
* **Two dates as views**: with ``date_views: {s2: s2_t2}`` the second view of modality ``s2`` is read from the
  store's co-registered modality ``s2_t2`` (e.g. ``ingest rasters -m s2=2019.tif -m s2_t2=2020.tif``), so the
  positive is the same ground at another acquisition date, as in Embedding Earth; geometric augmentation is
  still applied on top, and chips lacking the second date fall back to the first.
* **Negatives**: every other sampled point of the batch (and, with DDP and ``gather_distributed``, of the global
  batch), i.e. other locations of the same chip and of other chips. Memory is bounded by sampling:
  the logits are ``(B * points_per_chip)^2`` whatever the chip size (64 points x 32 chips = 2048^2 = 16 MB),
  instead of DenseCL's 65k-entry momentum queue, which would add a second (momentum) encoder. Points of the
  same chip closer than ``neighbour_px`` pixels are not used as negatives (they are the same ground).
* **Loss**: symmetric InfoNCE (:func:`~earthembed.pretrain.losses.dense_info_nce`) with a fixed temperature
  (default 0.2, PixPro/DenseCL use 0.2-0.3 for pixels; a learnable one, as in our CLIP objective, tends to
  collapse on pixel tasks where many negatives are near-positives), plus optionally ``global_weight`` x a
  chip-level InfoNCE on the pooled coarsest map (DenseCL's global term; 0 = pure dense, the paper's setting).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from torch import Tensor

from earthembed.augment import augment_batch
from earthembed.contract import ChipBatch, as_chip_batch
from earthembed.models.dense import PixelDecoder, encode_levels
from earthembed.pretrain.base import PretrainModule
from earthembed.pretrain.losses import clip_loss, dense_info_nce

__all__ = ["DenseContrastivePretrainModule", "corresponding_points", "sample_points"]

_CORNERS = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0], [1.0, 1.0]])


def _to_input(theta: Tensor, u: Tensor) -> Tensor:
    """Input coordinates ``A u + t`` of output points ``u`` [B, P, 2] under ``theta`` [B, 2, 3]."""
    return u @ theta[:, :, :2].transpose(1, 2) + theta[:, None, :, 2]


def _to_output(theta: Tensor, x: Tensor) -> Tensor:
    """Output coordinates ``A^-1 (x - t)`` of input points ``x`` [B, P, 2]."""
    inv = torch.linalg.inv(theta[:, :, :2].double()).to(x.dtype)
    return (x - theta[:, None, :, 2]) @ inv.transpose(1, 2)


def corresponding_points(theta1: Tensor, theta2: Tensor, n_points: int, generator: torch.Generator | None = None
                         ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Points seen by both views: ``(u1, u2, x, valid)``.

    ``theta1`` / ``theta2`` [B, 2, 3] map each view's output coordinates to the chip's (``affine_grid``
    convention, x before y, [-1, 1] = the chip's outer pixel edges). ``x`` [B, P, 2] are points drawn
    uniformly in the intersection of the two crops' bounding boxes in chip coordinates; ``u1`` / ``u2``
    [B, P, 2] are where they appear in each view; ``valid`` [B, P] is False for points outside either crop
    (only possible for rotations that are not multiples of 90 degrees) and for chips whose crops do not overlap.
    """
    theta1, theta2 = theta1.float(), theta2.float()
    b = theta1.shape[0]
    corners = _CORNERS.to(theta1.device).expand(b, 4, 2)
    boxes = [(_to_input(t, corners).amin(1), _to_input(t, corners).amax(1)) for t in (theta1, theta2)]
    lo = torch.maximum(boxes[0][0], boxes[1][0])
    hi = torch.minimum(boxes[0][1], boxes[1][1])
    r = torch.rand(b, n_points, 2, generator=generator).to(theta1.device)
    x = lo[:, None] + r * (hi - lo).clamp(min=0)[:, None]
    u1, u2 = _to_output(theta1, x), _to_output(theta2, x)
    eps = 1e-4
    inside = (u1.abs() <= 1 + eps).all(-1) & (u2.abs() <= 1 + eps).all(-1)
    overlap = ((hi - lo) > 0).all(-1)
    return u1, u2, x, inside & overlap[:, None]


def sample_points(feature_map: Tensor, u: Tensor) -> Tensor:
    """Bilinear samples of ``feature_map`` [B, C, h, w] at output coordinates ``u`` [B, P, 2] -> [B, P, C]; points
    in the outer half cell read the edge cell (border padding), never a blend with zeros."""
    s = F.grid_sample(feature_map, u[:, :, None, :].to(feature_map.dtype), mode="bilinear", padding_mode="border",
                      align_corners=False)
    return s[..., 0].transpose(1, 2)


class DenseContrastivePretrainModule(PretrainModule):
    """Encoder + U-Net decoder + point projection head trained with pixel-level InfoNCE (module docstring).

    Args:
        decoder, decoder_args, neck, neck_args: the :class:`~earthembed.models.dense.PixelDecoder` by name.
        proj_dim: size of the projected point embeddings the loss compares.
        temperature: InfoNCE temperature (0.1-0.3 recommended; must be in (0, 1]).
        points_per_chip: points sampled per chip and view (memory grows with (batch x points)^2).
        neighbour_px: same-chip points closer than this (in chip pixels) are not negatives.
        global_weight: weight of a chip-level InfoNCE term on the pooled coarsest map (0: none).
        date_views: ``{model modality: store modality}`` read as the second view (another acquisition date).
        Others: see :class:`~earthembed.pretrain.base.PretrainModule`.
    """

    def __init__(
        self,
        model_name: str,
        model_args: dict[str, Any],
        decoder: str = "unet",
        decoder_args: Mapping[str, Any] | None = None,
        neck: str = "auto",
        neck_args: Mapping[str, Any] | None = None,
        proj_dim: int = 64,
        temperature: float = 0.2,
        points_per_chip: int = 64,
        neighbour_px: float = 2.0,
        global_weight: float = 0.0,
        date_views: Mapping[str, str] | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        warmup_steps: int = 0,
        betas: Sequence[float] = (0.9, 0.999),
        augment: Mapping[str, Any] | None = None,
        gather_distributed: bool = True,
    ) -> None:
        super().__init__(model_name, model_args, lr=lr, weight_decay=weight_decay, warmup_steps=warmup_steps,
                         betas=betas, augment=augment, gather_distributed=gather_distributed)
        self._check_args(temperature, points_per_chip, global_weight, "DenseContrastivePretrainModule")
        self.date_views = dict(date_views or {})
        unknown = [k for k in self.date_views if k not in self.model.modalities]
        if unknown:
            raise ValueError(f"date_views: {unknown} are not model modalities ({list(self.model.modalities)})")
        m = self.model
        self.pixel = PixelDecoder(m.feature_channels, m.feature_strides, decoder, decoder_args, neck, neck_args)
        c = self.pixel.out_channels
        self.head = Mlp(c, max(c, proj_dim), proj_dim)
        self.global_head = Mlp(m.feature_channels[-1], m.feature_channels[-1], proj_dim) if global_weight > 0 else None
        self.temperature = float(temperature)
        self.points_per_chip = int(points_per_chip)
        self.neighbour_px = float(neighbour_px)
        self.global_weight = float(global_weight)

    @staticmethod
    def _check_args(temperature: float, points: int, global_weight: float, where: str) -> None:
        if not 0 < float(temperature) <= 1:
            raise ValueError(f"{where}: objective_args.temperature must be in (0, 1] (0.1-0.3 recommended), got {temperature}")
        if int(points) < 2:
            raise ValueError(f"{where}: objective_args.points_per_chip must be >= 2, got {points}")
        if float(global_weight) < 0:
            raise ValueError(f"{where}: objective_args.global_weight must be >= 0, got {global_weight}")

    @classmethod
    def validate_config(cls, cfg: Mapping[str, Any], where: str) -> None:
        a = cfg.get("objective_args", {})
        cls._check_args(a.get("temperature", 0.2), a.get("points_per_chip", 64), a.get("global_weight", 0.0), where)
        dv = a.get("date_views") or {}
        if not isinstance(dv, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in dv.items()):
            raise ValueError(f"{where}: objective_args.date_views must map model modalities to store modalities, got {dv!r}")

    @classmethod
    def extra_modalities(cls, objective_args: Mapping[str, Any]) -> dict[str, str]:
        """Store modalities read only as second views: ``{store modality: model modality}``."""
        return {v: k for k, v in (objective_args.get("date_views") or {}).items()}

    def _second_source(self, batch: ChipBatch) -> ChipBatch:
        """``batch`` with each date-view modality's pixels in place of its model modality (rows lacking the
        second date keep the first)."""
        for k, alt in self.date_views.items():
            if alt in batch.obs and k in batch.obs:
                first, second = batch.obs[k], batch.obs[alt]
                have = second.present.to(first.x.device)[:, :, None, None, None]
                batch = batch.with_obs(k, x=torch.where(have, second.x, first.x))
        return batch

    def _gather(self, *tensors: Tensor, grads: Sequence[bool]) -> list[Tensor]:
        """Tensors of every DDP rank concatenated (gradients flow back only where ``grads``); as given otherwise."""
        trainer = self._trainer
        if not (self.hparams.gather_distributed and trainer is not None and trainer.world_size > 1):
            return list(tensors)
        out = []
        for t, g in zip(tensors, grads, strict=True):
            flag = t.dtype == torch.bool
            got = self.all_gather(t.to(torch.uint8) if flag else t, sync_grads=g).flatten(0, 1)
            out.append(got.bool() if flag else got)
        return out

    def step(self, batch: Mapping[str, Any] | ChipBatch) -> tuple[Tensor, dict[str, Tensor]]:
        batch = as_chip_batch(batch)
        keys = [k for k in self.model.modalities if batch.has(k)]
        n = batch.batch_size
        present = self.presence(batch, keys)
        v1 = augment_batch(batch, self._groups, self.aug)
        v2 = augment_batch(self._second_source(batch), self._groups, self.aug)
        size = v1.image(keys[0]).shape[-2:]
        maps, pooled = [], []
        for v in (v1, v2):  # each view carries its band-group presence
            levels = encode_levels(self.model, v, present=present)
            maps.append(self.pixel(levels))
            pooled.append(levels[-1].mean((2, 3)))
        u1, u2, x, valid = corresponding_points(v1.affine, v2.affine, self.points_per_chip)
        any_present = torch.stack(list(present.values())).any(0)
        valid = valid & any_present[:, None]
        z1 = self.head(sample_points(maps[0], u1))  # [B, P, D]
        z2 = self.head(sample_points(maps[1], u2))
        chip = torch.arange(n, device=z1.device)[:, None].expand(n, self.points_per_chip)
        rank = self._trainer.global_rank if self._trainer is not None else 0
        z1, z2, chip, x, valid = self._gather(z1, z2, chip + rank * n, x, valid, grads=(True, True, False, False, False))
        keep = valid.reshape(-1)
        radius = self.neighbour_px * 2.0 / float(min(size))
        stats: dict[str, Tensor] = {"points": keep.sum().float()}
        if int(keep.sum()) < 2:  # nothing to contrast: a zero loss that still touches the graph
            loss = (z1.sum() + z2.sum()) * 0.0
        else:
            flat = [t.reshape(-1, t.shape[-1])[keep] for t in (z1, z2, x)]
            loss, stats["acc"] = dense_info_nce(flat[0], flat[1], chip.reshape(-1)[keep], flat[2], self.temperature, radius)
        stats["dense_loss"] = loss.detach()
        if self.global_head is not None:
            g1, g2 = self.global_head(pooled[0]), self.global_head(pooled[1])
            g1, g2, rows = self._gather(g1, g2, any_present, grads=(True, True, False))
            if int(rows.sum()) >= 2:
                glob = clip_loss(g1[rows], g2[rows], 1.0 / self.temperature)
                stats["global_loss"] = glob.detach()
                loss = loss + self.global_weight * glob
            else:
                loss = loss + (g1.sum() + g2.sum()) * 0.0
        return loss, stats
