"""CLIP-style contrastive pretraining between modalities (Jungbluth et al. 2023), as a LightningModule.

* **Multimodal stores**: every chip is augmented once (geometry shared by its modalities so they stay
  co-registered; band-group dropout, band dropout and noise per modality), each modality is encoded by the
  shared encoder,
  projected by its own MLP head, and the symmetric InfoNCE loss is averaged over all pairs of modalities,
  each pair over the chips where both are present (a pair with < 2 such chips is skipped).
* **Single-modality stores**: two independently augmented views of each chip are contrasted with the same
  symmetric loss (SimCLR-style positives, CLIP-style symmetric cross-entropy, one shared head).
* **Missing bands** are trained by ``augment.group_dropout`` (whole band groups, passed to the model as
  ``group_present`` so they contribute no tokens, as at inference) and ``augment.band_dropout`` (channels
  inside kept groups); see :mod:`earthembed.augment`.
* **Modality dropout** (``augment.modality_dropout``): per chip, each modality is marked absent with
  probability p, but at least two present modalities are always kept. Missing *modalities* need no
  training: the encoder towers are independent (tokens of a modality attend only to themselves), so a
  modality's embedding is the same whether or not the chip's other modalities are present, and the fused
  embedding is a parameter-free mean over the modalities present. Dropping a modality therefore only
  varies which pairs each chip contributes and saves the compute of the dropped rows. With only two
  modalities it is a no-op by design: dropping either would leave the chip without a positive pair. We do
  not substitute a two-view pair of the remaining modality, because that would mix an intra-modal
  (SimCLR) objective into the cross-modal one and train nothing that inference with a missing modality
  needs; the single-modality two-view objective is used only for single-modality models.
* **Temperature**: a learnable CLIP ``logit_scale`` (initialised to 1/0.07), clamped at ``max_logit_scale``.
* **DDP**: with ``gather_distributed`` the projected embeddings and presence masks are gathered across
  ranks (``all_gather(sync_grads=True)``) so every rank sees the global batch's negatives.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from timm.layers import Mlp
from torch import Tensor, nn

from earthembed.augment import augment_batch, modality_dropout
from earthembed.contract import ChipBatch, as_chip_batch
from earthembed.optim import warmup_cosine
from earthembed.pretrain.base import PretrainModule
from earthembed.pretrain.losses import clip_accuracy, clip_loss, multimodal_clip_loss

__all__ = ["ContrastivePretrainModule", "warmup_cosine"]


class ContrastivePretrainModule(PretrainModule):
    """Wraps a registry encoder with per-modality projection heads and a learnable temperature.

    Args:
        proj_dim, proj_hidden_dim: projection MLP (``embed_dim -> hidden -> proj_dim``).
        init_temperature, max_logit_scale: CLIP temperature initialisation and clamp.
        Others: see :class:`~earthembed.pretrain.base.PretrainModule`.
    """

    def __init__(
        self,
        model_name: str,
        model_args: dict[str, Any],
        proj_dim: int = 128,
        proj_hidden_dim: int | None = None,
        init_temperature: float = 0.07,
        max_logit_scale: float = 100.0,
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
        hidden = proj_hidden_dim or d
        self.heads = nn.ModuleDict({k: Mlp(d, hidden, proj_dim) for k in self.model.modalities})
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))
        self.max_logit_scale = float(max_logit_scale)
        self.views = len(self.model.modalities) == 1

    @classmethod
    def validate_config(cls, cfg: Mapping[str, Any], where: str) -> None:
        if int(cfg["data"]["batch_size"]) < 2:
            raise ValueError(f"{where}: data.batch_size must be >= 2 for a contrastive loss")

    @property
    def scale(self) -> Tensor:
        return self.logit_scale.exp().clamp(max=self.max_logit_scale)

    def _gather(self, z: dict[str, Tensor], present: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        trainer = self._trainer
        if not (self.hparams.gather_distributed and trainer is not None and trainer.world_size > 1):
            return z, present
        z = {k: self.all_gather(v, sync_grads=True).flatten(0, 1) for k, v in z.items()}
        present = {k: self.all_gather(v.to(torch.uint8)).flatten(0, 1).bool() for k, v in present.items()}
        return z, present

    def contrastive_step(self, batch: Mapping[str, Any] | ChipBatch) -> tuple[Tensor, dict[str, Tensor]]:
        """Alias of :meth:`step` (kept for scripts written against earlier versions)."""
        return self.step(batch)

    def step(self, batch: Mapping[str, Any] | ChipBatch) -> tuple[Tensor, dict[str, Tensor]]:
        batch = as_chip_batch(batch)
        keys = list(self.model.modalities)
        present = self.presence(batch, keys)
        stats: dict[str, Tensor]
        if self.views:
            k = keys[0]
            rows = present[k]
            v1 = augment_batch(batch, self._groups, self.aug)
            v2 = augment_batch(batch, self._groups, self.aug)
            e1 = self.model(v1, present=present).modality[k]  # the views carry their band-group presence
            e2 = self.model(v2, present=present).modality[k]
            z1, z2 = self.heads[k](e1), self.heads[k](e2)
            z, pres = self._gather({"a": z1, "b": z2}, {"a": rows, "b": rows})
            both = pres["a"] & pres["b"]
            if int(both.sum()) < 2:
                loss, stats = (z1.sum() + z2.sum()) * 0.0, {"pairs": torch.tensor(0.0)}
            else:
                a, b = z["a"][both], z["b"][both]
                loss, stats = clip_loss(a, b, self.scale), {"pairs": torch.tensor(1.0), "acc": clip_accuracy(a, b)}
        else:
            x = augment_batch(batch, self._groups, self.aug)
            present = modality_dropout(present, self.aug.modality_dropout)
            out = self.model(x, present=present)
            z = {k: self.heads[k](e) for k, e in out.modality.items()}
            z, pres = self._gather(z, out.present)
            maybe, stats = multimodal_clip_loss(z, pres, self.scale)
            # no pair with >= 2 rows: a zero loss that still touches the graph
            loss = maybe if maybe is not None else sum(v.sum() for v in z.values()) * 0.0
        stats["logit_scale"] = self.scale.detach()
        return loss, stats
