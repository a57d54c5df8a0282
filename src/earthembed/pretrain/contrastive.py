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
  inside kept groups); see :mod:`earthembed.pretrain.augment`.
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
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from timm.layers import Mlp
from torch import Tensor, nn

from earthembed.models.registry import build_model
from earthembed.pretrain.augment import AugmentConfig, augment_batch, modality_dropout
from earthembed.pretrain.losses import clip_accuracy, clip_loss, multimodal_clip_loss


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """LR multiplier: linear warmup from ~0, then cosine decay to 0 at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    t = min(1.0, (step - warmup_steps) / span)
    return 0.5 * (1.0 + math.cos(math.pi * t))


def _group_masks(augmented: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The ``<k>_group_present`` masks of :func:`augment_batch` output, keyed by modality."""
    suffix = "_group_present"
    return {k[: -len(suffix)]: v for k, v in augmented.items() if k.endswith(suffix)}


class ContrastivePretrainModule(L.LightningModule):
    """Wraps a registry encoder with per-modality projection heads and a learnable temperature.

    Args:
        model_name, model_args: passed to :func:`earthembed.models.registry.build_model` (``model_args``
            must include ``modalities``; saved in the checkpoint so it can be exported without pickle).
        proj_dim, proj_hidden_dim: projection MLP (``embed_dim -> hidden -> proj_dim``).
        init_temperature, max_logit_scale: CLIP temperature initialisation and clamp.
        lr, weight_decay, warmup_steps: AdamW with linear warmup + cosine decay over the run's steps.
        augment: :class:`~earthembed.pretrain.augment.AugmentConfig` fields.
        gather_distributed: gather embeddings across DDP ranks for the loss.
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
        augment: Mapping[str, Any] | None = None,
        gather_distributed: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = build_model(model_name, **model_args)
        self.aug = AugmentConfig.from_dict(augment)
        d = self.model.embed_dim
        hidden = proj_hidden_dim or d
        self.heads = nn.ModuleDict({k: Mlp(d, hidden, proj_dim) for k in self.model.modalities})
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))
        self.max_logit_scale = float(max_logit_scale)
        self.views = len(self.model.modalities) == 1
        self._groups = {k: self.model.group_channel_indices(k) for k in self.model.modalities}

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

    def contrastive_step(self, batch: Mapping[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        """Loss and monitoring stats of one batch (used by Lightning and by the bare-loop benchmark)."""
        loss, stats = self._contrastive_step(batch)
        trainer = self._trainer
        if trainer is not None and trainer.world_size > 1:
            # band-group / modality dropout can leave a patch embedding unused on one rank for a step, which
            # DDP (find_unused_parameters=False) rejects; a zero term keeps every embedding in the graph
            emb = [*self.model.patch_embed.parameters(), *self.model.group_embed.parameters(),
                   *self.model.modality_embed.parameters()]
            loss = loss + 0.0 * sum(p.sum() for p in emb)
        return loss, stats

    def _contrastive_step(self, batch: Mapping[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        keys = list(self.model.modalities)
        n = batch[keys[0]].shape[0]
        present = {
            k: torch.as_tensor(batch.get(f"{k}_present", torch.ones(n, dtype=torch.bool)), device=self.device).bool()
            for k in keys
        }
        if self.views:
            k = keys[0]
            rows = present[k]
            v1 = augment_batch(batch, self._groups, self.aug)
            v2 = augment_batch(batch, self._groups, self.aug)
            e1 = self.model(v1, present=present, group_present=_group_masks(v1))["modality"][k]
            e2 = self.model(v2, present=present, group_present=_group_masks(v2))["modality"][k]
            z1, z2 = self.heads[k](e1), self.heads[k](e2)
            z, pres = self._gather({"a": z1, "b": z2}, {"a": rows, "b": rows})
            both = pres["a"] & pres["b"]
            if int(both.sum()) < 2:
                return (z1.sum() + z2.sum()) * 0.0, {"pairs": torch.tensor(0.0)}
            a, b = z["a"][both], z["b"][both]
            return clip_loss(a, b, self.scale), {"pairs": torch.tensor(1.0), "acc": clip_accuracy(a, b)}
        x = augment_batch(batch, self._groups, self.aug)
        present = modality_dropout(present, self.aug.modality_dropout)
        out = self.model(x, present=present, group_present=_group_masks(x))
        z = {k: self.heads[k](e) for k, e in out["modality"].items()}
        z, pres = self._gather(z, out["present"])
        loss, stats = multimodal_clip_loss(z, pres, self.scale)
        if loss is None:  # no pair with >= 2 rows: a zero loss that still touches the graph (DDP-safe)
            loss = sum(v.sum() for v in z.values()) * 0.0
        return loss, stats

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        loss, stats = self.contrastive_step(batch)
        n = int(batch[next(iter(self.model.modalities))].shape[0])
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self.log("train/logit_scale", self.scale.detach(), batch_size=n)
        for k, v in stats.items():
            self.log(f"train/{k}", v.to(self.device), batch_size=n)
        return loss

    def param_groups(self) -> list[dict[str, Any]]:
        """AdamW groups: no weight decay on biases, norms, embeddings and the temperature (as CLIP / timm)."""
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            embedding = ".modality_embed." in name or ".group_embed." in name
            (no_decay if p.ndim <= 1 or embedding else decay).append(p)
        return [{"params": decay, "weight_decay": self.hparams.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

    def configure_optimizers(self) -> dict[str, Any]:
        opt = torch.optim.AdamW(self.param_groups(), lr=self.hparams.lr)
        trainer = self._trainer
        total = int(trainer.estimated_stepping_batches) if trainer is not None else 1
        warm = int(self.hparams.warmup_steps)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, warm, total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
