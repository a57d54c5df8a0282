"""Optimiser helpers shared by pretraining objectives and fine-tuning (a neutral module: evaluate code
never imports pretrain): AdamW parameter groups without decay where it hurts, warmup + cosine schedule."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """LR multiplier: linear warmup from ~0, then cosine decay to 0 at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    t = min(1.0, (step - warmup_steps) / span)
    return 0.5 * (1.0 + math.cos(math.pi * t))


def param_groups(module: nn.Module, weight_decay: float, no_decay: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Two AdamW groups: decayed, and not decayed (every 1-D parameter - biases, norms, GRN, temperatures -
    plus the names in ``no_decay``, e.g. an encoder's ``no_weight_decay()`` with its prefix)."""
    skip = set(no_decay)
    decay, keep = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        (keep if p.ndim <= 1 or name in skip else decay).append(p)
    return [{"params": decay, "weight_decay": float(weight_decay)}, {"params": keep, "weight_decay": 0.0}]


def adamw_warmup_cosine(groups: list[dict[str, Any]], lr: float, betas: Sequence[float], warmup_steps: int,
                        total_steps: int) -> dict[str, Any]:
    """Lightning ``configure_optimizers`` dict: AdamW + per-step warmup-cosine LambdaLR."""
    opt = torch.optim.AdamW(groups, lr=float(lr), betas=(float(betas[0]), float(betas[1])))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, int(warmup_steps), int(total_steps)))
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
