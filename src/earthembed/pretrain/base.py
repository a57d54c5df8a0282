"""The shared base of every pretraining objective (one LightningModule per objective on top of it).

It owns what objectives must not copy: the exported encoder (``self.model``, built by name through the
model registry, so ``export_checkpoint`` can rebuild it from ``model_name`` / ``model_args`` without
pickle), augmentation settings, AdamW parameter groups (no decay on 1-D parameters and on what the
encoder's ``no_weight_decay()`` names), the warmup + cosine schedule, logging of every statistic an
objective returns, and the DDP detail that every parameter must take part in each step's graph.

An objective implements :meth:`PretrainModule.step` (``batch -> (loss, stats)``) and its heads, and may
override :meth:`PretrainModule.validate_config` for rules of its own (checked before any work starts) and
:meth:`PretrainModule.plan` to decide from the store what the model reads and what else the data
pipeline must deliver (e.g. MP-MAE's targets), instead of the runner knowing every objective.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import lightning as L
import torch
from torch import Tensor

from earthembed.augment import AugmentConfig
from earthembed.contract import ChipBatch, as_chip_batch
from earthembed.data.dataset import ReadRequest, resolve_bands
from earthembed.data.store import ChipStore
from earthembed.models.base import Encoder
from earthembed.models.registry import build_model
from earthembed.optim import adamw_warmup_cosine, param_groups

RUNNER_ARGS = ("model_name", "model_args", "lr", "weight_decay", "warmup_steps", "betas", "augment",
               "gather_distributed")
"""Constructor arguments the runner fills from the config's ``model`` / ``train`` / ``augment`` sections;
the rest of an objective's arguments come from ``objective_args``."""


@dataclasses.dataclass
class ObjectivePlan:
    """What an objective decides from the store before training (:meth:`PretrainModule.plan`).

    Attributes:
        inputs: model modality -> band names (the encoder's ``modalities``).
        args: constructor arguments derived from the store (names in ``planned_args``; saved in the checkpoint).
        reads: what the data pipeline must read beyond the inputs (None: nothing).
        summary: JSON-able record of the decisions, written to ``RUN/config.yaml`` (``plan``) and to the
            export's ``model.json`` (``pretrain.plan``).
        notes: sentences for the user, printed when training starts.
    """

    inputs: dict[str, list[str]]
    args: dict[str, Any] = dataclasses.field(default_factory=dict)
    reads: ReadRequest | None = None
    summary: dict[str, Any] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)


def config_modalities(cfg: Mapping[str, Any]) -> list[str] | dict[str, Any] | None:
    """``model.modalities`` of a resolved config as None, a list of keys or a key -> bands mapping."""
    mods = cfg["model"].get("modalities")
    return [mods] if isinstance(mods, str) else mods


class PretrainModule(L.LightningModule):
    """Base LightningModule of the pretraining objectives.

    Args:
        model_name, model_args: passed to :func:`earthembed.models.registry.build_model` (``model_args``
            must include ``modalities``); saved in the checkpoint.
        lr, weight_decay, warmup_steps, betas: AdamW with linear warmup + cosine decay over the run's steps.
        augment: :class:`~earthembed.augment.AugmentConfig` fields.
        gather_distributed: objectives that compare samples gather them across DDP ranks.
    """

    def __init__(
        self,
        model_name: str,
        model_args: dict[str, Any],
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        warmup_steps: int = 0,
        betas: Sequence[float] = (0.9, 0.999),
        augment: Mapping[str, Any] | None = None,
        gather_distributed: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        model = build_model(model_name, **model_args)
        if not isinstance(model, Encoder):
            raise ValueError(f"model {model_name!r} is not an earthembed Encoder and cannot be pretrained/exported")
        self.model: Encoder = model
        self.aug = AugmentConfig.from_dict(augment)
        self._groups = {k: self.model.group_channel_indices(k) for k in self.model.modalities}

    planned_args: ClassVar[tuple[str, ...]] = ()
    """Constructor arguments that :meth:`plan` fills from the store (not config keys)."""

    # -- what an objective implements ----------------------------------------------------------------
    @classmethod
    def plan(cls, store: ChipStore, cfg: Mapping[str, Any], where: str) -> ObjectivePlan:
        """Decide from ``store`` and the resolved config what the model reads (default: ``model.modalities``,
        or every non-categorical modality) and what else to read; raise ValueError naming ``where``."""
        mods = config_modalities(cfg)
        for k in mods or []:
            if k in store.modalities and store.modalities[k].kind == "categorical":
                raise ValueError(f"{where}: model.modalities: {k!r} is categorical (a label map), not an input")
        # store modalities the objective reads besides the model's (e.g. a second acquisition date as a view)
        extra = cls.extra_modalities(cfg.get("objective_args") or {})
        if mods is None and extra:
            mods = [k for k in resolve_bands(store, None) if k not in extra]
        inputs = resolve_bands(store, mods)
        for alt, k in extra.items():
            if k not in inputs:
                raise ValueError(f"{where}: objective_args.date_views: {k!r} is not a model modality ({list(inputs)})")
            if alt not in store.modalities:
                raise ValueError(f"{where}: objective_args.date_views: store {store.path} has no modality {alt!r} "
                                 f"(it has {list(store.modalities)})")
        reads = ReadRequest(modalities={alt: inputs[k] for alt, k in extra.items()}) if extra else None
        return ObjectivePlan(inputs, reads=reads)

    def step(self, batch: Mapping[str, Any] | ChipBatch) -> tuple[Tensor, dict[str, Tensor]]:
        """(loss, statistics to log) of one batch (a :class:`~earthembed.contract.ChipBatch`; a dict with today's
        string keys is taken through :func:`~earthembed.contract.as_chip_batch`); also used by bare-loop
        benchmarks."""
        raise NotImplementedError

    @classmethod
    def validate_config(cls, cfg: Mapping[str, Any], where: str) -> None:
        """Raise ValueError naming ``where`` if the resolved config breaks a rule of this objective."""

    @classmethod
    def extra_modalities(cls, objective_args: Mapping[str, Any]) -> dict[str, str]:
        """Store modalities the objective reads besides the model's, ``{store modality: model modality}`` (e.g.
        a second acquisition date used as a view); the runner loads them with the model modality's bands."""
        return {}

    def no_weight_decay(self) -> set[str]:
        """Parameter names (of this module) without weight decay; objectives add heads' extras by name."""
        return {f"model.{n}" for n in self.model.no_weight_decay()}

    # -- shared machinery ----------------------------------------------------------------------------
    def batch_rows(self, batch: Mapping[str, Any] | ChipBatch) -> int:
        return as_chip_batch(batch).batch_size

    def presence(self, batch: ChipBatch, keys: Sequence[str]) -> dict[str, Tensor]:
        """``{k: [B] bool}`` on this module's device: which chips have modality ``k`` (every chip for a
        modality the batch lacks; the encoder leaves such a modality out anyway)."""
        n = batch.batch_size
        return {k: (batch.present(k) if batch.has(k) else torch.ones(n, dtype=torch.bool)).to(self.device)
                for k in keys}

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        loss, stats = self.step(batch)
        trainer = self._trainer
        if trainer is not None and trainer.world_size > 1:
            # dropout of bands, groups or modalities (and tasks a chip lacks) can leave parameters unused on
            # one rank for a step, which DDP (find_unused_parameters=False) rejects: a zero term keeps every
            # parameter in the graph, whatever the architecture
            loss = loss + 0.0 * sum(p.sum() for p in self.parameters() if p.requires_grad)
        n = self.batch_rows(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        for k, v in stats.items():
            self.log(f"train/{k}", torch.as_tensor(v, dtype=torch.float32).to(self.device), batch_size=n)
        return loss

    def param_groups(self) -> list[dict[str, Any]]:
        return param_groups(self, self.hparams.weight_decay, self.no_weight_decay())

    def configure_optimizers(self) -> dict[str, Any]:
        trainer = self._trainer
        total = int(trainer.estimated_stepping_batches) if trainer is not None else 1
        return adamw_warmup_cosine(self.param_groups(), self.hparams.lr, self.hparams.betas,
                                   self.hparams.warmup_steps, total)
