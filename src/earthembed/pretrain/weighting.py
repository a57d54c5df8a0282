"""Combining the losses of several tasks into one: learned uncertainty weights, or a plain sum.

Uncertainty weighting (Kendall et al. 2018, in MMEarth's form): ``total = sum_k exp(-s_k) * L_k + s_k`` with
one learnable ``s_k = log sigma_k^2`` per task, initialised at 0 (all weights 1). A task with a large or noisy
loss learns a large sigma and a small weight; the ``+ s_k`` term stops sigmas from growing without bound.
A task absent from a batch contributes neither term (its ``s_k`` gets no gradient that step), as MMEarth
drops tasks whose loss is 0. ``s_k`` must not be weight-decayed (decay would pull every weight to 1): the
objective lists it in ``no_weight_decay()``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

WEIGHTINGS = ("uncertainty", "equal")


class TaskWeighting(nn.Module):
    """``forward({task: (loss, present)}) -> (total, stats)``; ``stats`` has ``loss_<task>`` (NaN when absent)
    and, for uncertainty weighting, ``sigma_<task>`` (sqrt(exp(s_k)))."""

    def __init__(self, tasks: Sequence[str], mode: str = "uncertainty") -> None:
        super().__init__()
        if mode not in WEIGHTINGS:
            raise ValueError(f"loss_weighting must be one of {WEIGHTINGS}, got {mode!r}")
        self.tasks = list(tasks)
        self.mode = mode
        self.log_vars = nn.Parameter(torch.zeros(len(self.tasks))) if mode == "uncertainty" else None

    def forward(self, losses: Mapping[str, tuple[Tensor, Tensor]]) -> tuple[Tensor, dict[str, Tensor]]:
        unknown = sorted(set(losses) - set(self.tasks))
        if unknown:
            raise ValueError(f"losses for unknown tasks {unknown} (weighting has {self.tasks})")
        total = None
        stats: dict[str, Tensor] = {}
        for i, name in enumerate(self.tasks):
            if name not in losses:
                continue
            loss, present = losses[name]
            term = loss
            if self.log_vars is not None:
                s = self.log_vars[i]
                term = torch.exp(-s) * loss + s
                stats[f"sigma_{name}"] = torch.exp(0.5 * s).detach()
            term = torch.where(present, term, torch.zeros_like(term))
            total = term if total is None else total + term
            stats[f"loss_{name}"] = torch.where(present, loss.detach(), torch.full_like(loss, float("nan")))
        if total is None:
            raise ValueError("no task losses to combine")
        return total, stats
