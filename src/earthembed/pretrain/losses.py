"""Contrastive losses: symmetric InfoNCE (CLIP) between modalities, or between two views of one modality."""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor


def clip_loss(a: Tensor, b: Tensor, logit_scale: Tensor | float) -> Tensor:
    """Symmetric InfoNCE of paired rows ``a[i] <-> b[i]`` (Radford et al. 2021); inputs need not be normalised.

    Row ``i`` of ``a`` must pick row ``i`` of ``b`` among all rows of ``b`` and vice versa; the mean of both
    cross-entropies is returned.
    """
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"clip_loss needs two [N, D] tensors of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    a, b = F.normalize(a.float(), dim=-1), F.normalize(b.float(), dim=-1)
    logits = logit_scale * a @ b.T
    target = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


@torch.no_grad()
def clip_accuracy(a: Tensor, b: Tensor) -> Tensor:
    """Top-1 retrieval accuracy of the pairing in both directions (a monitoring metric, chance = 1/N)."""
    sim = F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).T
    target = torch.arange(a.shape[0], device=a.device)
    return 0.5 * ((sim.argmax(1) == target).float().mean() + (sim.argmax(0) == target).float().mean())


def multimodal_clip_loss(
    embeddings: Mapping[str, Tensor],
    present: Mapping[str, Tensor],
    logit_scale: Tensor | float,
    min_rows: int = 2,
) -> tuple[Tensor | None, dict[str, Tensor]]:
    """Mean :func:`clip_loss` over all modality pairs, each over the rows where both are present.

    A pair with fewer than ``min_rows`` such rows is skipped (one row has no negatives). Returns
    ``(loss or None when no pair qualifies, {"acc": ..., "pairs": ...})``.
    """
    losses, accs = [], []
    for ka, kb in itertools.combinations(sorted(embeddings), 2):
        both = present[ka] & present[kb]
        if int(both.sum()) < min_rows:
            continue
        a, b = embeddings[ka][both], embeddings[kb][both]
        losses.append(clip_loss(a, b, logit_scale))
        accs.append(clip_accuracy(a, b))
    stats = {"pairs": torch.tensor(float(len(losses)))}
    if not losses:
        return None, stats
    stats["acc"] = torch.stack(accs).mean()
    return torch.stack(losses).mean(), stats


def dense_info_nce(
    a: Tensor, b: Tensor, group: Tensor, xy: Tensor, temperature: float, radius: float = 0.0
) -> tuple[Tensor, Tensor]:
    """Symmetric InfoNCE over sampled pixel pairs ``a[i] <-> b[i]`` ([N, D] each, any scale).

    Every other sampled point of the batch is a negative, except points of the same chip (``group`` [N])
    closer than ``radius`` to the anchor in chip coordinates (``xy`` [N, 2]): neighbours of the positive
    are the same ground a pixel or two away, and pushing them apart would fight the spatial smoothness a
    land-cover map needs. Returns ``(loss, top-1 retrieval accuracy)``.
    """
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"dense_info_nce needs two [N, D] tensors of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    a, b = F.normalize(a.float(), dim=-1), F.normalize(b.float(), dim=-1)
    logits = a @ b.T / float(temperature)
    n = a.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=a.device)
    if radius > 0:
        near = (group[:, None] == group[None, :]) & (torch.cdist(xy.float(), xy.float()) < radius) & ~eye
        logits = logits.masked_fill(near, float("-inf"))
    target = torch.arange(n, device=a.device)
    loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    with torch.no_grad():
        acc = 0.5 * ((logits.argmax(1) == target).float().mean() + (logits.argmax(0) == target).float().mean())
    return loss, acc
