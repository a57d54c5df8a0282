"""Run a pretraining job from a YAML config: ``pretrain(config, store, out)``.

Config (TerraTorch-style; every section optional, unknown keys are errors naming the file and key)::

    model: {name: multimodal_vit_tiny, modalities: [s2, s1], <MultiModalViT args>}
    objective: contrastive
    objective_args: {proj_dim: 128, proj_hidden_dim: null, init_temperature: 0.07, max_logit_scale: 100}
    data: {batch_size: 64, crop_size: 32, num_workers: 2, splits: train}
    train: {max_steps: 300, lr: 1e-3, weight_decay: 0.05, warmup_steps: 20, precision: 32-true, ...}
    augment: {crop_scale: [0.5, 1.0], flip: true, rot90: true, band_dropout: 0.1, group_dropout: 0.25, noise_std: 0.02, ...}

Outputs under ``out``: ``config.yaml`` (resolved, with the store's path and modalities), ``checkpoints/last.ckpt``
(re-running the same command resumes from it; a different config or store is refused), ``metrics.csv`` and
``export/`` (safetensors + model.json with the store's normaliser and modality products/units).
"""

from __future__ import annotations

import dataclasses
import gc
import inspect
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from earthembed.augment import AugmentConfig
from earthembed.config import packaged_config, packaged_configs, parse_overrides, resolve_config
from earthembed.registry import Registry

__all__ = ["OBJECTIVES", "load_config", "packaged_config", "packaged_configs", "parse_overrides", "pretrain",
           "register_objective"]

OBJECTIVES: Registry[Any] = Registry("objective")
"""Objective name -> :class:`~earthembed.pretrain.base.PretrainModule` subclass (lazy ``module:Class``)."""
OBJECTIVES.register("contrastive", "earthembed.pretrain.contrastive:ContrastivePretrainModule")
OBJECTIVES.register("dense_contrastive", "earthembed.pretrain.dense_contrastive:DenseContrastivePretrainModule")

TRAIN_DEFAULTS: dict[str, Any] = {
    "max_steps": -1,
    "max_epochs": None,
    "lr": 1e-3,
    "weight_decay": 0.05,
    "warmup_steps": 0,
    "betas": [0.9, 0.999],
    "precision": "32-true",
    "accelerator": "auto",
    "devices": "auto",
    "strategy": "auto",
    "num_nodes": 1,
    "seed": 0,
    "log_every_n_steps": 10,
    "gather_distributed": True,
    "gradient_clip_val": None,
    "accumulate_grad_batches": 1,
    "checkpoint_every_n_steps": 100,
    "progress_bar": True,
}
DEFAULTS: dict[str, Any] = {
    "model": {"name": "multimodal_vit_tiny", "modalities": None},
    "objective": "contrastive",
    "objective_args": {},
    "data": {"batch_size": 64, "crop_size": None, "num_workers": 0, "splits": "train"},
    "train": TRAIN_DEFAULTS,
    "augment": {f.name: (list(f.default) if isinstance(f.default, tuple) else f.default) for f in dataclasses.fields(AugmentConfig)},
}
_FREE_SECTIONS = ("model", "objective_args")  # keys checked against the model / objective signatures


def register_objective(name: str, target: str | type) -> None:
    """Register a pretraining objective: a PretrainModule subclass or ``"package.module:Class"``."""
    OBJECTIVES.register(name, target)


def _objective_class(name: str, where: str) -> type:
    if name not in OBJECTIVES:
        raise ValueError(f"{where}: unknown objective {name!r} (known: {OBJECTIVES.names()})")
    return OBJECTIVES.get(name)  # type: ignore[return-value]


def load_config(config: str | Path | Mapping[str, Any], overrides: Sequence[str] | None = None) -> tuple[dict[str, Any], str]:
    """(resolved config, its name for messages): YAML file, packaged config name or dict, plus overrides."""
    cfg, where = resolve_config(DEFAULTS, config, overrides, _FREE_SECTIONS)
    _validate(cfg, where)
    return cfg, where


def _validate(cfg: dict[str, Any], where: str) -> None:
    """Config rules owned by what is configured: ``model.*`` keys by the registered model factory,
    ``objective_args`` by the objective's constructor, objective-specific rules by the objective."""
    from earthembed.models.registry import check_model_config
    from earthembed.pretrain.base import RUNNER_ARGS

    check_model_config(cfg["model"], where)
    cls = _objective_class(cfg["objective"], where)
    allowed_obj = set(inspect.signature(cls.__init__).parameters) - {"self", *RUNNER_ARGS}
    for k in cfg["objective_args"]:
        if k not in allowed_obj:
            raise ValueError(f"{where}: unknown config key 'objective_args.{k}' (known: {sorted(allowed_obj)})")
    betas = cfg["train"].get("betas")
    if not (isinstance(betas, (list, tuple)) and len(betas) == 2 and all(isinstance(b, (int, float)) for b in betas)):
        raise ValueError(f"{where}: train.betas must be two numbers, e.g. [0.9, 0.999], got {betas!r}")
    t = cfg["train"]
    if (t["max_steps"] in (None, -1)) and t["max_epochs"] is None:
        raise ValueError(f"{where}: set train.max_steps or train.max_epochs")
    try:
        AugmentConfig.from_dict(cfg["augment"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: {e}") from e
    cls.validate_config(cfg, where)


def _merge_metrics(run_csv: Path, target: Path) -> None:
    """Append this run's metrics to ``target``; the CSV logger starts afresh on every (resumed) run."""
    import pandas as pd

    if not run_csv.exists():
        return
    new = pd.read_csv(run_csv)
    if target.exists() and "step" in new and len(new):
        old = pd.read_csv(target)
        if "step" in old:
            new = pd.concat([old[old["step"] < new["step"].min()], new], ignore_index=True)
    tmp = target.with_name(target.name + ".tmp")
    new.to_csv(tmp, index=False)
    tmp.replace(target)


def _destroy_process_group() -> None:
    """Close the process group after trainer and model are released (DDP/gloo clean-exit fix)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def pretrain(
    config: str | Path | dict[str, Any],
    store: str | Path,
    out: str | Path,
    overrides: list[str] | None = None,
    resume: bool = True,
) -> Path:
    """Pretrain an encoder on ``store`` and export it; returns the export directory ``out/export``."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    from earthembed.data.dataset import resolve_bands
    from earthembed.data.normalize import Normalizer
    from earthembed.data.store import ChipStore
    from earthembed.models.export import export_model, modality_products
    from earthembed.pretrain.datamodule import ChipDataModule

    cfg, where = load_config(config, overrides)
    out = Path(out)
    chips = ChipStore(store)
    mods = cfg["model"]["modalities"]
    if isinstance(mods, str):
        mods = [mods]
    for k in mods or []:
        if k in chips.modalities and chips.modalities[k].kind == "categorical":
            raise ValueError(f"{where}: model.modalities: {k!r} is categorical (a label map), not an input")
    cls = _objective_class(cfg["objective"], where)
    # store modalities an objective reads besides the model's (e.g. a second acquisition date as a view)
    extra = cls.extra_modalities(cfg["objective_args"])
    if mods is None and extra:
        mods = [k for k in resolve_bands(chips, None) if k not in extra]
    bands = resolve_bands(chips, mods)
    for alt, k in extra.items():
        if k not in bands:
            raise ValueError(f"{where}: objective_args.date_views: {k!r} is not a model modality ({list(bands)})")
        if alt not in chips.modalities:
            raise ValueError(f"{where}: objective_args.date_views: store {store} has no modality {alt!r} "
                             f"(it has {list(chips.modalities)})")
    data_bands = {**bands, **{alt: bands[k] for alt, k in extra.items()}}
    normalizer = Normalizer.from_store(chips)
    t, d = cfg["train"], cfg["data"]
    model_args = {k: v for k, v in cfg["model"].items() if k not in ("name", "modalities")}
    model_args["modalities"] = bands

    out.mkdir(parents=True, exist_ok=True)
    store_path = str(Path(store).resolve())
    store_mods = {k: {**v, "bands": chips.band_names(k)} for k, v in modality_products(chips.modalities).items()}
    resolved = {
        **cfg, "store": store_path, "store_modalities": store_mods, "model": {**cfg["model"], "modalities": bands},
    }
    last = out / "checkpoints" / "last.ckpt"
    if resume and last.exists() and (out / "config.yaml").exists():
        before = yaml.safe_load((out / "config.yaml").read_text()) or {}
        changed = [k for k in ("model", "objective", "objective_args") if before.get(k) != resolved[k]]
        if changed:
            raise ValueError(
                f"{where}: {out} holds a run with a different {', '.join(changed)} config; resuming it would fail "
                "- use a new --out (or delete its checkpoints/ to start over)"
            )
        # runs recorded before store_modalities existed are compared by path only
        diff = [k for k in ("store", "store_modalities") if k in before and before[k] != resolved[k]]
        if diff:
            if "store" in diff:
                what = f"store {before.get('store')} (now {store_path})"
            else:
                was = before["store_modalities"] or {}
                keys = [k for k in {**was, **store_mods} if was.get(k) != store_mods.get(k)]
                what = "store content (" + "; ".join(f"{k}: {was.get(k)} -> now {store_mods.get(k)}" for k in keys) + ")"
            raise ValueError(
                f"{where}: {out} holds a run pretrained on a different {what}; resuming it would silently mix "
                "training data - use a new --out for this store (or delete its checkpoints/ to start over)"
            )
    (out / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))

    L.seed_everything(int(t["seed"]), workers=True, verbose=False)
    module = cls(
        model_name=cfg["model"]["name"],
        model_args=model_args,
        lr=float(t["lr"]),
        weight_decay=float(t["weight_decay"]),
        warmup_steps=int(t["warmup_steps"]),
        betas=[float(b) for b in t["betas"]],
        augment=cfg["augment"],
        gather_distributed=bool(t["gather_distributed"]),
        **cfg["objective_args"],
    )
    dm = ChipDataModule(
        chips, data_bands, batch_size=int(d["batch_size"]), crop_size=d["crop_size"], num_workers=int(d["num_workers"]),
        splits=d["splits"], seed=int(t["seed"]),
    )
    ckpt_dir = out / "checkpoints"
    max_steps = int(t["max_steps"]) if t["max_steps"] is not None else -1
    log_every = int(t["log_every_n_steps"]) if max_steps <= 0 else max(1, min(int(t["log_every_n_steps"]), max_steps))
    trainer = L.Trainer(
        max_steps=max_steps,
        max_epochs=t["max_epochs"],
        accelerator=t["accelerator"],
        devices=t["devices"],
        strategy=t["strategy"],
        num_nodes=int(t["num_nodes"]),
        precision=t["precision"],
        logger=CSVLogger(out / "logs", name="", version=""),
        callbacks=[ModelCheckpoint(dirpath=ckpt_dir, save_last=True, save_top_k=0,
                                   every_n_train_steps=int(t["checkpoint_every_n_steps"]))],
        default_root_dir=out,
        log_every_n_steps=log_every,
        gradient_clip_val=t["gradient_clip_val"],
        accumulate_grad_batches=int(t["accumulate_grad_batches"]),
        use_distributed_sampler=False,  # ChipDataModule shards batches per rank itself
        enable_progress_bar=bool(t["progress_bar"]),
        enable_model_summary=False,
    )
    # resuming reads our own checkpoint with torch.load(weights_only=True): tensors and plain containers only
    trainer.fit(module, datamodule=dm, ckpt_path=str(last) if resume and last.exists() else None, weights_only=True)
    trainer.save_checkpoint(last, weights_only=False)  # the final state (with optimizer, for resuming)
    export = out / "export"
    if trainer.is_global_zero:
        info = {
            "objective": cfg["objective"],
            "global_step": int(trainer.global_step),
            "store": str(Path(store).resolve()),
            "n_chips": len(dm.dataset) if dm.dataset is not None else None,
            "config": resolved,
        }
        export_model(module.model, export, normalizer, extra={"pretrain": info},
                     products=modality_products(chips.modalities, bands))
        _merge_metrics(out / "logs" / "metrics.csv", out / "metrics.csv")
    del trainer, module, dm
    gc.collect()
    _destroy_process_group()
    return export
