"""Losses of the pretext tasks (:mod:`earthembed.pretrain.pretext`), one per loss kind.

Each takes the head's prediction, the batch (a :class:`~earthembed.contract.ChipBatch`, read by its typed fields; a
dict with today's string keys is taken through :func:`~earthembed.contract.as_chip_batch`), the task, the hidden
pixels and the patch size, and returns ``(loss, present)``: the mean loss
over the *valid* targets, and whether there was any (a 0-d bool tensor). A batch without the target (no
chip with that layer, all pixels nodata) gives ``present = False`` and a loss of 0 with no gradient, which the
task weighting leaves out entirely: a missing target contributes no loss, never a zero used as a fake target.
Returning a flag instead of None keeps the step free of host-device synchronisation. Pixel losses count
only hidden patches (the visible ones are trivially copied by a fully convolutional model) and skip nodata
(NaN targets, class codes outside the task's classes). Predictions are cast to float32 first, so bf16
autocast does not round the losses.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from earthembed.contract import ChipBatch, as_chip_batch
from earthembed.pretrain.pretext import PretextTask, elevation_slope

NORM_PIX_EPS = 1e-6
LossFn = Callable[[Tensor, ChipBatch, PretextTask, Tensor, int], tuple[Tensor, Tensor]]


def _mean(total: Tensor, count: Tensor) -> tuple[Tensor, Tensor]:
    return total / count.clamp(min=1), count > 0


def _target(batch: ChipBatch, task: PretextTask) -> tuple[Tensor, Tensor]:
    """(the target of ``task`` as the batch holds it, ``[B]`` bool: the chips that have it): a modality's
    ``[B, C, H, W]`` for pixel tasks, the per-chip value ``[B, d]`` for image tasks (read under the task's name,
    :meth:`~earthembed.pretrain.pretext.Discovery.read_request`)."""
    if task.pixelwise:
        return batch.image(task.key), batch.present(task.key)
    value = batch.chip_values[task.name]
    return value.x, value.present


def regression_target(batch: Mapping[str, Any] | ChipBatch, task: PretextTask) -> Tensor:
    """``[B, C, H, W]`` float target of a pixel-regression task, NaN where invalid (slope derived here)."""
    x = _target(as_chip_batch(batch), task)[0].float()
    if task.derive == "slope":
        elev_std, mean, std = task.scale
        x = (elevation_slope(x[:, :1] * elev_std) - mean) / std
    elif task.derive:
        raise ValueError(f"task {task.name!r}: unknown derived target {task.derive!r}")
    return x


def normalise_patches(target: Tensor, valid: Tensor, p: int) -> tuple[Tensor, Tensor]:
    """Per-patch z-scores of ``target`` ``[B, C, H, W]`` over its valid values (FCMAE's ``norm_pix_loss``,
    computed on valid pixels only); patches with < 2 valid values become invalid."""
    b, c, h, w = target.shape
    t = torch.where(valid, target, 0.0).view(b, c, h // p, p, w // p, p)
    v = valid.expand_as(target).reshape(b, c, h // p, p, w // p, p).to(target.dtype)
    dims = (1, 3, 5)
    n = v.sum(dims, keepdim=True)
    mean = (t * v).sum(dims, keepdim=True) / n.clamp(min=1)
    var = (((t - mean) * v) ** 2).sum(dims, keepdim=True) / (n - 1).clamp(min=1)
    z = ((t - mean) / (var + NORM_PIX_EPS).sqrt()).view(b, c, h, w)
    ok = (v.bool() & (n >= 2)).view(b, c, h, w)
    return z, ok


def pixel_regression(pred: Tensor, batch: Mapping[str, Any] | ChipBatch, task: PretextTask, hidden: Tensor,
                     p: int) -> tuple[Tensor, Tensor]:
    """MSE on hidden patches over valid pixels; ``pred`` and ``hidden`` are ``[B, C, H, W]`` / ``[B, 1, H, W]``."""
    batch = as_chip_batch(batch)
    target = regression_target(batch, task)
    rows = _target(batch, task)[1].to(target.device)
    valid = torch.isfinite(target) & hidden & rows[:, None, None, None]
    if task.norm_pix:
        target, valid = normalise_patches(target, valid, p)
    diff = torch.where(valid, pred.float() - torch.where(valid, target, 0.0), 0.0)
    return _mean((diff * diff).sum(), valid.sum())


def pixel_classification(pred: Tensor, batch: Mapping[str, Any] | ChipBatch, task: PretextTask, hidden: Tensor,
                         p: int) -> tuple[Tensor, Tensor]:
    """Cross-entropy on hidden patches over pixels whose code is one of the task's classes."""
    codes = torch.as_tensor(task.codes, dtype=torch.int64, device=pred.device)
    target, rows = _target(as_chip_batch(batch), task)
    raw = target[:, 0].to(pred.device)
    pos = torch.searchsorted(codes, raw).clamp(max=len(codes) - 1)
    valid = (codes[pos] == raw) & hidden[:, 0] & rows.to(raw.device)[:, None, None]
    ce = F.cross_entropy(pred.float(), torch.where(valid, pos, -100), ignore_index=-100, reduction="sum")
    return _mean(ce, valid.sum())


def image_regression(pred: Tensor, batch: Mapping[str, Any] | ChipBatch, task: PretextTask, hidden: Tensor,
                     p: int) -> tuple[Tensor, Tensor]:
    """MSE over the chips (and components) that have the value."""
    target, rows = _target(as_chip_batch(batch), task)
    target = target.to(pred.device).float()
    valid = torch.isfinite(target) & rows.to(target.device)[:, None]
    diff = torch.where(valid, pred.float() - torch.where(valid, target, 0.0), 0.0)
    return _mean((diff * diff).sum(), valid.sum())


def image_classification(pred: Tensor, batch: Mapping[str, Any] | ChipBatch, task: PretextTask, hidden: Tensor,
                         p: int) -> tuple[Tensor, Tensor]:
    """Cross-entropy over the chips that have a class."""
    target, rows = _target(as_chip_batch(batch), task)
    target = target.to(pred.device)[:, 0].long()
    valid = (target >= 0) & rows.to(target.device)
    ce = F.cross_entropy(pred.float(), torch.where(valid, target, -100), ignore_index=-100, reduction="sum")
    return _mean(ce, valid.sum())


LOSSES: dict[str, LossFn] = {
    "pixel_regression": pixel_regression,
    "pixel_classification": pixel_classification,
    "image_regression": image_regression,
    "image_classification": image_classification,
}
