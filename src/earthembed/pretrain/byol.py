"""Non-contrastive pretraining with an EMA teacher (BYOL, Grill et al. 2020), as a LightningModule.

Why a second objective next to :mod:`earthembed.pretrain.contrastive`: InfoNCE learns from the other chips of
the batch as negatives. On the small pools a CPU user has (a few hundred to a few thousand chips, batches of
64) many of those "negatives" are the same land cover as the anchor, so the loss pushes apart what a
land-cover probe needs together; BYOL has no negatives (a student predicts an exponential-moving-average
teacher's projection of another view), so it is indifferent to batch composition and batch size. We chose
BYOL over DINO (centring + sharpening of a K-way output whose K and temperatures need tuning per pool) and
over VICReg (needs wide projectors, 2-8k dims, to work well, which costs most of a CPU step).

* **Views**: two independently augmented views of each chip (geometry shared by a chip's modalities within a
  view, as in the contrastive objective). The student (encoder -> projector -> predictor) of modality ``a`` in
  one view regresses the teacher's (encoder -> projector) normalised projection of modality ``b`` in the
  other view; loss ``2 - 2 cos``, symmetrised over the views, averaged over the (chip, a, b) present.
* **Pairs** (``pairs``): ``all`` uses every (a, b), i.e. the two-view (same modality) terms and the
  cross-modal terms (a != b: the modalities are each other's positives, as in the CLIP objective);
  ``cross`` keeps only a != b on multimodal stores. A single-modality store has only a == b (plain BYOL).
* **Teacher**: a frozen copy of the encoder and projectors, updated after each optimiser step as
  ``t <- m t + (1 - m) s`` with ``m`` rising from ``base_momentum`` to ``final_momentum`` on a cosine over the
  run; buffers (BatchNorm statistics) are copied. The exported encoder is the student (``self.model``), as
  in BYOL; the teacher lives in the checkpoint only, so resuming restores it.
* **Collapse monitor**: ``train/z_std`` is the mean per-dimension std of the student's normalised projections;
  it falls towards 0 if the representation collapses (healthy: near ``1/sqrt(proj_dim)``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from earthembed.augment import augment_batch, modality_dropout
from earthembed.contract import ChipBatch, as_chip_batch
from earthembed.pretrain.base import PretrainModule

PAIRS = ("all", "cross")


def mlp_head(dim_in: int, hidden: int, dim_out: int) -> nn.Sequential:
    """BYOL's projector / predictor: Linear -> BatchNorm -> ReLU -> Linear."""
    return nn.Sequential(nn.Linear(dim_in, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim_out))


def regression_loss(p: Tensor, z: Tensor) -> Tensor:
    """BYOL's normalised regression loss per row: ``2 - 2 cos(p, z)`` (``z`` is a target, no gradient)."""
    return 2 - 2 * F.cosine_similarity(p.float(), z.detach().float(), dim=-1)


def cosine_momentum(step: int, total: int, base: float, final: float) -> float:
    """EMA momentum at ``step`` of ``total``: ``base`` at the start, ``final`` at the end, cosine in between."""
    t = min(1.0, max(0.0, step / max(1, total)))
    return final - (final - base) * (math.cos(math.pi * t) + 1) / 2


class BYOLPretrainModule(PretrainModule):
    """Student encoder + per-modality projector and predictor; EMA teacher of encoder + projectors.

    Args:
        proj_dim, proj_hidden_dim: projector/predictor MLP sizes (hidden default: 2 x the embedding dim).
        base_momentum, final_momentum: teacher EMA momentum schedule (cosine over the run's steps).
        pairs: ``all`` (same-modality and cross-modal terms) or ``cross`` (cross-modal only; multimodal stores).
        Others: see :class:`~earthembed.pretrain.base.PretrainModule`.
    """

    def __init__(
        self,
        model_name: str,
        model_args: dict[str, Any],
        proj_dim: int = 128,
        proj_hidden_dim: int | None = None,
        base_momentum: float = 0.99,
        final_momentum: float = 1.0,
        pairs: str = "all",
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        warmup_steps: int = 0,
        betas: Sequence[float] = (0.9, 0.999),
        augment: Mapping[str, Any] | None = None,
        gather_distributed: bool = True,
    ) -> None:
        super().__init__(model_name, model_args, lr=lr, weight_decay=weight_decay, warmup_steps=warmup_steps,
                         betas=betas, augment=augment, gather_distributed=gather_distributed)
        d = self.model.embed_dim
        hidden = proj_hidden_dim or 2 * d
        keys = list(self.model.modalities)
        self.projectors = nn.ModuleDict({k: mlp_head(d, hidden, proj_dim) for k in keys})
        self.predictors = nn.ModuleDict({k: mlp_head(proj_dim, hidden, proj_dim) for k in keys})
        self.teacher = nn.ModuleDict({"model": copy.deepcopy(self.model), "projectors": copy.deepcopy(self.projectors)})
        self.teacher.requires_grad_(False)
        if pairs not in PAIRS:
            raise ValueError(f"objective_args.pairs must be one of {PAIRS}, got {pairs!r}")
        self.pairs = [(a, b) for a in keys for b in keys if a != b or pairs == "all" or len(keys) == 1]
        self._ema_step = -1

    @classmethod
    def validate_config(cls, cfg: Mapping[str, Any], where: str) -> None:
        if int(cfg["data"]["batch_size"]) < 2:
            raise ValueError(f"{where}: data.batch_size must be >= 2 (the projector's BatchNorm needs a batch)")
        args = cfg["objective_args"]
        if args.get("pairs", "all") not in PAIRS:
            raise ValueError(f"{where}: objective_args.pairs must be one of {PAIRS}, got {args['pairs']!r}")
        base, final = float(args.get("base_momentum", 0.99)), float(args.get("final_momentum", 1.0))
        if not 0 <= base <= final <= 1:
            raise ValueError(f"{where}: objective_args needs 0 <= base_momentum <= final_momentum <= 1, got {base}, {final}")

    # -- student and teacher ---------------------------------------------------------------------------
    def _targets(self, x: ChipBatch, present: Mapping[str, Tensor]) -> dict[str, Tensor]:
        with torch.no_grad():
            out = self.teacher["model"](x, present=present)
            return {k: self.teacher["projectors"][k](e) for k, e in out.modality.items()}

    def _student(self, x: ChipBatch, present: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]:
        """(projections, predictions, presence) of the student per modality (the view ``x`` carries its
        band-group presence)."""
        out = self.model(x, present=present)
        z = {k: self.projectors[k](e) for k, e in out.modality.items()}
        return z, {k: self.predictors[k](v) for k, v in z.items()}, out.present

    def step(self, batch: Mapping[str, Any] | ChipBatch) -> tuple[Tensor, dict[str, Tensor]]:
        batch = as_chip_batch(batch)
        present = self.presence(batch, list(self.model.modalities))
        views = []
        for _ in range(2):
            x = augment_batch(batch, self._groups, self.aug)
            pres = modality_dropout(present, self.aug.modality_dropout)
            z, p, pres = self._student(x, pres)
            views.append((z, p, pres, self._targets(x, pres)))
        terms: list[Tensor] = []
        for (_, p, pres_s, _), (_, _, pres_t, t) in ((views[0], views[1]), (views[1], views[0])):
            for a, b in self.pairs:
                terms.append(regression_loss(p[a], t[b])[pres_s[a] & pres_t[b]])
        rows_used = sum(int(v.numel()) for v in terms)
        # no chip with a pair: a zero loss that still touches the graph
        loss = torch.cat(terms).mean() if rows_used else sum(v.sum() for v in views[0][1].values()) * 0.0
        z, _, pres, _ = views[0]
        zs = torch.cat([z[k][pres[k]] for k in z])
        stats = {"pairs": torch.tensor(float(rows_used)), "momentum": torch.tensor(self.momentum)}
        if len(zs) > 1:
            stats["z_std"] = F.normalize(zs.detach().float(), dim=-1).std(0).mean()
        return loss, stats

    # -- EMA teacher -----------------------------------------------------------------------------------
    @property
    def momentum(self) -> float:
        """The EMA momentum of the current step (cosine from base to final over the run)."""
        trainer = self._trainer
        total = int(trainer.estimated_stepping_batches) if trainer is not None else 1
        step = int(trainer.global_step) if trainer is not None else 0
        return cosine_momentum(step, total, self.hparams.base_momentum, self.hparams.final_momentum)

    @torch.no_grad()
    def update_teacher(self, momentum: float | None = None) -> None:
        """``teacher <- m teacher + (1 - m) student`` for encoder and projectors; buffers copied."""
        m = self.momentum if momentum is None else float(momentum)
        for name, student in (("model", self.model), ("projectors", self.projectors)):
            teacher = self.teacher[name]
            for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
                t.mul_(m).add_(s.detach(), alpha=1 - m)
            for t, s in zip(teacher.buffers(), student.buffers(), strict=True):
                t.copy_(s)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        trainer = self._trainer
        step = int(trainer.global_step) if trainer is not None else batch_idx
        if step != self._ema_step:  # once per optimiser step (gradient accumulation runs several batches)
            self._ema_step = step
            self.update_teacher()
