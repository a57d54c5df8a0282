"""Multi-pretext masked autoencoding (MP-MAE, MMEarth: Nedungadi et al., ECCV 2024) as a LightningModule.

The pieces, each in its own module so they can be read and tested alone:

* **Encoder**: the exported encoder itself, a :class:`~earthembed.models.timm_cnn.TimmEncoder` with a timm
  ConvNeXt V2 backbone on the store's optical modality (timm's parameter names, so timm / published FCMAE
  weights map onto it and the export embeds like any other encoder: pooled features + LayerNorm).
  ``model.stem_stride`` sets the patch: ConvNeXt reduces by ``stem_stride x 8``, so 1 = patch 8 (MMEarth's
  setting for 56-64 px chips), 2 = patch 16 (112-128 px).
* **Masking** (:mod:`earthembed.pretrain.masking`): 60% of the patches hidden per chip; the encoder runs as
  if its convolutions were sparse, so nothing of a hidden patch reaches the visible features.
* **Decoder**: a 1x1 projection, a learned mask token at hidden positions and one ConvNeXt V2 block shared
  by all tasks (FCMAE), then one head per task: a 1x1 conv to ``p*p*C`` values per patch for pixel tasks,
  global pooling + LayerNorm + Linear for image-level tasks.
* **Tasks** (:mod:`earthembed.pretrain.pretext`) discovered from the store by kind; their losses
  (:mod:`earthembed.pretrain.pretext_losses`) skip missing targets; combined by learned uncertainty weights
  or a plain sum (:mod:`earthembed.pretrain.weighting`). MMEarth's reference implementation instead
  branches on modality names in the model, the loss and the data loader; here a new layer in a store
  needs no code.
* **Missing bands**: band-group and band dropout on the *input* only (``augment.group_dropout`` /
  ``band_dropout``), while the optical target stays complete, so ``embed --bands`` with e.g. RGB only is
  trained for. Geometry: the data module's random crop plus flips / 90-degree rotations applied exactly to
  every raster of the chip (``augment.crop_scale`` and ``modality_dropout`` are not used by this objective).

Optimiser as the reference: AdamW with ``train.betas: [0.9, 0.95]``, weight decay 0.05 (not on norms, biases,
GRN, the mask token or the uncertainty weights), ``train.base_lr`` scaled by batch / 256, warmup + cosine.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from timm.layers import trunc_normal_
from timm.models.convnext import ConvNeXtBlock
from torch import Tensor, nn

from earthembed.augment import channel_augment, random_dihedral
from earthembed.contract import ChipBatch, as_chip_batch
from earthembed.data.dataset import resolve_bands
from earthembed.data.store import ChipStore
from earthembed.models.registry import build_model
from earthembed.pretrain.base import ObjectivePlan, PretrainModule, config_modalities
from earthembed.pretrain.masking import (
    convnext_parts,
    mask_grid,
    masked_convnext_features,
    patch_features_to_pixels,
    random_patch_mask,
)
from earthembed.pretrain.pretext import PretextTask, describe_modalities, discover_tasks, select_tasks
from earthembed.pretrain.pretext_losses import LOSSES
from earthembed.pretrain.weighting import WEIGHTINGS, TaskWeighting


def _backbone(encoder: nn.Module, key: str) -> nn.Module | None:
    """The timm backbone of modality ``key`` of a TimmEncoder (None for other encoders)."""
    nets = getattr(encoder, "backbones", None)
    return nets[key] if isinstance(nets, nn.ModuleDict) and key in nets else None


def _task_head(task: PretextTask, dim: int, patch: int) -> nn.Module:
    if task.pixelwise:
        return nn.Conv2d(dim, patch * patch * task.channels, kernel_size=1)
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, task.channels))


def _init_weights(m: nn.Module) -> None:
    """FCMAE's decoder initialisation: truncated normal (std 0.02) weights, zero biases, unit LayerNorms."""
    if isinstance(m, (nn.Conv2d, nn.Linear)):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


class MPMAEPretrainModule(PretrainModule):
    """A ConvNeXt encoder, a shared light decoder and one head per pretext task.

    Args:
        pretext_tasks: the tasks as :meth:`PretextTask.to_dict` dicts (filled by :meth:`plan` from the store;
            default: reconstruct the input only).
        tasks: which discovered tasks to train: ``"all"`` or a list of names (``"input"`` = the input
            reconstruction; ``[input]`` is the optical-only MAE baseline).
        chip_regression, chip_classification: index columns to predict per chip (numeric, z-scored /
            categorical), e.g. climate or biome; used only when named.
        mask_ratio: fraction of patches hidden per chip.
        decoder_dim, decoder_depth: width and number of ConvNeXt V2 blocks of the shared decoder.
        norm_pix_loss: per-patch normalised targets for the input reconstruction.
        loss_weighting: ``uncertainty`` (learned ``log sigma^2`` per task) or ``equal``.
        Others: see :class:`~earthembed.pretrain.base.PretrainModule`.
    """

    planned_args: ClassVar[tuple[str, ...]] = ("pretext_tasks",)

    def __init__(
        self,
        model_name: str,
        model_args: dict[str, Any],
        pretext_tasks: Sequence[Mapping[str, Any]] | None = None,
        tasks: str | Sequence[str] = "all",
        chip_regression: Sequence[str] = (),
        chip_classification: Sequence[str] = (),
        mask_ratio: float = 0.6,
        decoder_dim: int = 512,
        decoder_depth: int = 1,
        norm_pix_loss: bool = True,
        loss_weighting: str = "uncertainty",
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        warmup_steps: int = 0,
        betas: Sequence[float] = (0.9, 0.95),
        augment: Mapping[str, Any] | None = None,
        gather_distributed: bool = True,
    ) -> None:
        super().__init__(model_name, model_args, lr=lr, weight_decay=weight_decay, warmup_steps=warmup_steps,
                         betas=betas, augment=augment, gather_distributed=gather_distributed)
        if len(self.model.modalities) != 1:
            raise ValueError(f"mpmae reconstructs one input modality; the model has {list(self.model.modalities)}")
        self.input_key = next(iter(self.model.modalities))
        convnext_parts(_backbone(self.model, self.input_key))  # raises unless a timm ConvNeXt
        if getattr(self.model, "input_size", None) is not None:
            raise ValueError("mpmae needs model.input_size: null (masks are drawn on the chip's own pixel grid)")
        self.patch_size = int(self.model.feature_strides[-1])
        self.mask_ratio = float(mask_ratio)
        if not 0 < self.mask_ratio < 1:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        if pretext_tasks is None:
            bands = self.model.modalities[self.input_key]
            pretext_tasks = [PretextTask(self.input_key, "pixel_regression", self.input_key, f"{self.input_key} input",
                                         len(bands), norm_pix=bool(norm_pix_loss)).to_dict()]
        self.tasks = [PretextTask.from_dict(t) for t in pretext_tasks]
        bad = [t.name for t in self.tasks if not t.name or "." in t.name]
        if bad or len({t.name for t in self.tasks}) != len(self.tasks):
            raise ValueError(f"pretext task names must be unique, non-empty and without '.': {[t.name for t in self.tasks]}")
        enc_dim = int(self.model.feature_channels[-1])
        self.proj = nn.Conv2d(enc_dim, int(decoder_dim), kernel_size=1)
        self.mask_token = nn.Parameter(torch.zeros(1, int(decoder_dim), 1, 1))
        self.decoder = nn.Sequential(*[ConvNeXtBlock(int(decoder_dim), use_grn=True, ls_init_value=None)
                                       for _ in range(int(decoder_depth))])
        self.heads = nn.ModuleDict({t.name: _task_head(t, int(decoder_dim), self.patch_size) for t in self.tasks})
        for m in (self.proj, self.decoder, self.heads):
            m.apply(_init_weights)
        nn.init.normal_(self.mask_token, std=0.02)
        self.weighting = TaskWeighting([t.name for t in self.tasks], loss_weighting)
        self._pixel_keys = list(dict.fromkeys([self.input_key, *(t.key for t in self.tasks if t.pixelwise)]))

    # -- configuration ---------------------------------------------------------------------------------
    @classmethod
    def _default(cls, name: str) -> Any:
        return inspect.signature(cls.__init__).parameters[name].default

    @classmethod
    def _arg(cls, cfg: Mapping[str, Any], name: str) -> Any:
        return cfg["objective_args"].get(name, cls._default(name))

    @classmethod
    def validate_config(cls, cfg: Mapping[str, Any], where: str) -> None:
        mode = cls._arg(cfg, "loss_weighting")
        if mode not in WEIGHTINGS:
            raise ValueError(f"{where}: objective_args.loss_weighting must be one of {WEIGHTINGS}, got {mode!r}")
        ratio = cls._arg(cfg, "mask_ratio")
        if not (isinstance(ratio, (int, float)) and 0 < ratio < 1):
            raise ValueError(f"{where}: objective_args.mask_ratio must be in (0, 1), got {ratio!r}")
        for key in ("decoder_dim", "decoder_depth"):
            v = cls._arg(cfg, key)
            if not (isinstance(v, int) and v >= 1):
                raise ValueError(f"{where}: objective_args.{key} must be a positive integer, got {v!r}")
        for key in ("chip_regression", "chip_classification"):
            v = cls._arg(cfg, key)
            if isinstance(v, str) or not all(isinstance(c, str) for c in v or []):
                raise ValueError(f"{where}: objective_args.{key} must be a list of index column names, got {v!r}")
        mods = config_modalities(cfg)
        if mods is not None and len(mods) != 1:
            raise ValueError(f"{where}: mpmae reconstructs one input modality; model.modalities names {list(mods)}")

    @classmethod
    def plan(cls, store: ChipStore, cfg: Mapping[str, Any], where: str) -> ObjectivePlan:
        """The input (the store's optical modality unless ``model.modalities`` names one), the mask grid,
        and the pretext tasks found on the pretraining chips; ValueError naming what is missing."""
        from earthembed.pretrain.datamodule import select_indices

        mods = config_modalities(cfg)
        if mods is None:
            optical = [k for k, m in store.modalities.items() if m.kind == "optical"]
            if len(optical) != 1:
                what = "no optical modality" if not optical else f"several optical modalities {optical}"
                raise ValueError(f"{where}: mpmae reconstructs the store's optical modality, but {store.path} has {what} "
                                 f"(modalities: {describe_modalities(store)}); name the input with model.modalities=[KEY]")
            mods = optical
        key = next(iter(mods))
        if key in store.modalities and store.modalities[key].kind == "categorical":
            raise ValueError(f"{where}: model.modalities: {key!r} is categorical (a label map), not an input")
        inputs = resolve_bands(store, mods)
        model_args = {k: v for k, v in cfg["model"].items() if k not in ("name", "modalities")}
        with torch.device("meta"):  # shapes only: the patch size is the encoder's total stride
            enc = build_model(cfg["model"]["name"], **model_args, modalities=inputs)
        backbone = _backbone(enc, key)
        try:
            convnext_parts(backbone)
        except ValueError as e:
            # a model without a single-modality timm backbone (galileo, multimodal_vit) needs no detail about it
            detail = f": {e}" if backbone is not None else ""
            raise ValueError(f"{where}: mpmae needs a ConvNeXt encoder (model.name timm_cnn with backbone "
                             f"convnextv2_*), got model {cfg['model']['name']!r}{detail}") from None
        patch = int(enc.feature_strides[-1])
        ratio = float(cls._arg(cfg, "mask_ratio"))
        size = int(cfg["data"]["crop_size"] or store.chip_size)
        mask_grid(size, patch, ratio, where)
        rows = select_indices(store, cfg["data"]["splits"])
        found = discover_tasks(store, key, inputs[key], rows, cls._arg(cfg, "chip_regression") or (),
                               cls._arg(cfg, "chip_classification") or (), bool(cls._arg(cfg, "norm_pix_loss")), where)
        chosen = select_tasks(found, cls._arg(cfg, "tasks"), key, store, where)
        listing = [{"name": t.name, "loss": t.loss, "source": t.source, "channels": t.channels} for t in chosen.tasks]
        unused = [{"name": t.name, "loss": t.loss, "source": t.source} for t in found.tasks if t not in chosen.tasks]
        summary = {"input": key, "patch_size": patch, "mask_ratio": ratio, "grid": size // patch,
                   "loss_weighting": cls._arg(cfg, "loss_weighting"), "tasks": listing,
                   "found_not_used": unused, "notes": list(chosen.notes)}
        notes = [*chosen.notes, f"mpmae: input {key}, patch {patch} px ({size // patch}x{size // patch} grid), "
                 f"{len(chosen.tasks)} pretext task(s): " + "; ".join(f"{t['name']} [{t['loss']}] <- {t['source']}"
                                                                   for t in listing)]
        return ObjectivePlan(inputs, {"pretext_tasks": [t.to_dict() for t in chosen.tasks]},
                             chosen.read_request(key), summary, notes)

    def no_weight_decay(self) -> set[str]:
        """The encoder's exemptions, the mask token and the uncertainty weights (decay would pull them to 0)."""
        names = super().no_weight_decay() | {"mask_token"}
        if self.weighting.log_vars is not None:
            names.add("weighting.log_vars")
        return names

    # -- the step --------------------------------------------------------------------------------------
    def _usable_rows(self, batch: ChipBatch) -> ChipBatch:
        """``batch`` restricted to the chips that have the input (the others have nothing to encode)."""
        rows = batch.present(self.input_key)
        return batch if bool(rows.all()) else batch.index_select(rows)

    def step(self, batch: Mapping[str, Any] | ChipBatch) -> tuple[Tensor, dict[str, Tensor]]:
        k, p = self.input_key, self.patch_size
        batch = self._usable_rows(as_chip_batch(batch))
        if batch.batch_size == 0:
            return self.mask_token.sum() * 0.0, {}
        pixel = [key for key in self._pixel_keys if batch.has(key)]
        turned = random_dihedral({key: batch.image(key) for key in pixel}, self.aug)
        for key in pixel:
            batch = batch.with_obs(key, x=turned[key][:, None])
        x = torch.nan_to_num(batch.image(k).float(), nan=0.0, posinf=0.0, neginf=0.0)  # the target keeps its NaNs
        x, _ = channel_augment(x, self._groups[k], self.aug)
        if x.shape[-1] != x.shape[-2]:
            raise ValueError(f"mpmae needs square chips, got {tuple(x.shape[-2:])}")
        grid = mask_grid(x.shape[-1], p, self.mask_ratio)
        mask = random_patch_mask(x.shape[0], grid, self.mask_ratio, p, x.device)
        z = self.proj(masked_convnext_features(self.model.backbones[k], x, mask))
        hidden = mask.hidden_at(z.shape[-2:]).to(z.dtype)
        z = z * (1 - hidden) + self.mask_token.to(z.dtype) * hidden
        dec = self.decoder(z)
        pooled = dec.mean((2, 3))
        hidden_px = mask.hidden_at(x.shape[-2:])
        losses = {}
        for t in self.tasks:
            head = self.heads[t.name]
            pred = patch_features_to_pixels(head(dec), p) if t.pixelwise else head(pooled)
            losses[t.name] = LOSSES[t.loss](pred, batch, t, hidden_px, p)
        return self.weighting(losses)
