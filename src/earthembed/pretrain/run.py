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

import copy
import dataclasses
import gc
import importlib.resources
import inspect
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from earthembed.pretrain.augment import AugmentConfig
from earthembed.registry import Registry

OBJECTIVES: Registry[Any] = Registry("objective")
"""Objective name -> :class:`~earthembed.pretrain.base.PretrainModule` subclass (lazy ``module:Class``)."""
OBJECTIVES.register("contrastive", "earthembed.pretrain.contrastive:ContrastivePretrainModule")
OBJECTIVES.register("byol", "earthembed.pretrain.byol:BYOLPretrainModule")

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
PROBE_DEFAULTS: dict[str, Any] = {
    "every_n_steps": 0,  # 0: off; else probe frozen embeddings on the store's labels (train -> val) every N steps
    "tasks": None,  # label columns; None: every chip-level label with chips in train and val
    "estimators": ["knn", "linear"],
    "max_chips": 2000,  # labelled train+val chips embedded per probe (a fixed random subset)
    "batch_size": 128,
}
"""The ``probe`` section: :class:`earthembed.pretrain.callbacks.OnlineProbe` settings."""
DEFAULTS: dict[str, Any] = {
    "model": {"name": "multimodal_vit_tiny", "modalities": None},
    "objective": "contrastive",
    "objective_args": {},
    "data": {"batch_size": 64, "crop_size": None, "num_workers": 0, "splits": "train", "sampler": "chunks",
             "shuffle_window": 16},
    "train": TRAIN_DEFAULTS,
    "augment": {f.name: (list(f.default) if isinstance(f.default, tuple) else f.default) for f in dataclasses.fields(AugmentConfig)},
    "probe": PROBE_DEFAULTS,
}
_FREE_SECTIONS = ("model", "objective_args")  # keys checked against the model / objective signatures


def register_objective(name: str, target: str | type) -> None:
    """Register a pretraining objective: a PretrainModule subclass or ``"package.module:Class"``."""
    OBJECTIVES.register(name, target)


def _objective_class(name: str, where: str) -> type:
    if name not in OBJECTIVES:
        raise ValueError(f"{where}: unknown objective {name!r} (known: {OBJECTIVES.names()})")
    return OBJECTIVES.get(name)  # type: ignore[return-value]


DEFAULT_RECIPES: dict[str, str] = {"single": "cpu_single_modality", "multimodal": "cpu_multimodal"}
"""Packaged config used when ``pretrain`` gets no config, by kind of store (see :func:`default_recipe`)."""


def default_recipe(store: Any) -> tuple[str, str]:
    """(packaged config name, one-line reason) of the best CPU recipe we measured for this kind of store:
    one input modality (optical, or any single sensor) or several (cross-modal pairs); see
    docs/label_efficiency.md for the measurements behind both."""
    inputs = [k for k, m in store.modalities.items() if m.kind != "categorical"]
    if not inputs:
        raise ValueError(f"{store.path}: no input modality to pretrain on (only categorical layers)")
    if len(inputs) > 1:
        return DEFAULT_RECIPES["multimodal"], f"{len(inputs)} input modalities ({', '.join(inputs)}): cross-modal + two-view pairs"
    m = store.modalities[inputs[0]]
    return DEFAULT_RECIPES["single"], f"one input modality ({inputs[0]}: {m.product}, {m.kind}): two augmented views"


def packaged_configs() -> list[str]:
    """Names of the configs shipped with earthembed (``src/earthembed/configs/*.yaml``)."""
    root = importlib.resources.files("earthembed") / "configs"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def packaged_config(name: str) -> Path:
    """Path of a config shipped with earthembed (``contrastive_tiny``, ``contrastive_full``)."""
    stem = name[:-5] if name.endswith(".yaml") else name
    return Path(str(importlib.resources.files("earthembed") / "configs" / f"{stem}.yaml"))


def _merge(base: dict[str, Any], new: Mapping[str, Any], where: str, prefix: str = "") -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in new.items():
        key = f"{prefix}{k}"
        if prefix.rstrip(".") in _FREE_SECTIONS:
            out[k] = v
            continue
        if k not in base:
            raise ValueError(f"{where}: unknown config key {key!r} (known: {sorted(base)})")
        if isinstance(base[k], dict):
            if not isinstance(v, Mapping):
                raise ValueError(f"{where}: config key {key!r} must be a mapping, got {v!r}")
            out[k] = _merge(base[k], v, where, f"{key}.")
        else:
            out[k] = v
    return out


def parse_overrides(overrides: Sequence[str] | None, where: str = "overrides") -> dict[str, Any]:
    """``["train.max_steps=20", "model.modalities=[s2]"]`` -> nested dict; values are parsed as YAML."""
    nested: dict[str, Any] = {}
    for o in overrides or []:
        key, sep, raw = o.partition("=")
        if not sep or not key.strip() or any(not p for p in key.strip().split(".")):
            raise ValueError(f"{where}: bad override {o!r}; expected dotted.key=value, e.g. train.max_steps=20")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as e:
            raise ValueError(f"{where}: override {o!r}: value is not valid YAML ({e})") from e
        d = nested
        parts = key.strip().split(".")
        for p in parts[:-1]:
            d = d.setdefault(p, {})
            if not isinstance(d, dict):
                raise ValueError(f"{where}: override {o!r} conflicts with another override")
        d[parts[-1]] = value
    return nested


def load_config(config: str | Path | Mapping[str, Any], overrides: Sequence[str] | None = None) -> tuple[dict[str, Any], str]:
    """(resolved config, its name for messages): YAML file, packaged config name or dict, plus overrides."""
    if isinstance(config, Mapping):
        where, doc = "<config dict>", dict(config)
    else:
        path = Path(config)
        if not path.exists() and packaged_config(str(config)).exists():
            path = packaged_config(str(config))
        where = str(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: config not found (packaged configs: {', '.join(packaged_configs())})")
        try:
            doc = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not valid YAML ({e})") from e
        if not isinstance(doc, dict):
            raise ValueError(f"{path}: expected a mapping at the top level")
    cfg = _merge(DEFAULTS, doc, where)
    cfg = _merge(cfg, parse_overrides(overrides, where), f"{where} (overrides)")
    _validate(cfg, where)
    return cfg, where


def _validate(cfg: dict[str, Any], where: str) -> None:
    """Config rules owned by what is configured: ``model.*`` keys by the registered model factory,
    ``objective_args`` by the objective's constructor, objective-specific rules by the objective."""
    from earthembed.models.registry import MODELS
    from earthembed.pretrain.base import RUNNER_ARGS

    name = cfg["model"].get("name")
    if name not in MODELS:
        raise ValueError(f"{where}: unknown model.name {name!r} (registered: {MODELS.names()})")
    accepted, anything = MODELS.params(name)
    allowed = (accepted - {"modalities"}) | {"name", "modalities"}
    for k in cfg["model"]:
        if k not in allowed and not anything:
            raise ValueError(f"{where}: unknown config key 'model.{k}' for model {name!r} (known: {sorted(allowed)})")
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


def _probe(p: Mapping[str, Any], chips: Any, bands: dict[str, list[str]], seed: int) -> Any:
    """The :class:`~earthembed.pretrain.callbacks.OnlineProbe` of the ``probe`` section, or None when it is
    off or the store has no label with chips in both train and val (said once, so the user knows why)."""
    from earthembed.pretrain.callbacks import OnlineProbe

    if not int(p["every_n_steps"]):
        return None
    probe = OnlineProbe(chips, bands, p["tasks"], int(p["every_n_steps"]), p["estimators"], int(p["max_chips"]),
                        int(p["batch_size"]), seed)
    if not probe.active:
        print(f"probe: off, {chips.path} has no chip label with chips in both the train and val splits")
        return None
    print(f"probe: every {probe.every_n_steps} steps on val, tasks {[t.name for t in probe.tasks]} "
          f"(probe/* columns in metrics.csv; tuning only, never the test split)")
    return probe


def _destroy_process_group() -> None:
    """Close the process group after trainer and model are released (DDP/gloo clean-exit fix)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def pretrain(
    config: str | Path | dict[str, Any] | None,
    store: str | Path,
    out: str | Path,
    overrides: list[str] | None = None,
    resume: bool = True,
) -> Path:
    """Pretrain an encoder on ``store`` and export it; returns the export directory ``out/export``.

    ``config`` None picks the default CPU recipe for the store (:func:`default_recipe`) and says which."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    from earthembed.data.dataset import resolve_bands
    from earthembed.data.normalize import Normalizer
    from earthembed.data.store import ChipStore
    from earthembed.models.export import export_model, modality_products
    from earthembed.pretrain.datamodule import ChipDataModule

    chips = ChipStore(store)
    if config is None:
        config, why = default_recipe(chips)
        print(f"pretrain: no --config given, using the default CPU recipe {config!r} for this store ({why}); "
              f"its file: {packaged_config(config)}")
    cfg, where = load_config(config, overrides)
    out = Path(out)
    mods = cfg["model"]["modalities"]
    if isinstance(mods, str):
        mods = [mods]
    for k in mods or []:
        if k in chips.modalities and chips.modalities[k].kind == "categorical":
            raise ValueError(f"{where}: model.modalities: {k!r} is categorical (a label map), not an input")
    bands = resolve_bands(chips, mods)
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
    cls = _objective_class(cfg["objective"], where)
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
        chips, bands, batch_size=int(d["batch_size"]), crop_size=d["crop_size"], num_workers=int(d["num_workers"]),
        splits=d["splits"], seed=int(t["seed"]), sampler=d["sampler"], shuffle_window=int(d["shuffle_window"]),
    )
    ckpt_dir = out / "checkpoints"
    callbacks: list[Any] = [ModelCheckpoint(dirpath=ckpt_dir, save_last=True, save_top_k=0,
                                            every_n_train_steps=int(t["checkpoint_every_n_steps"]))]
    probe = _probe(cfg["probe"], chips, bands, int(t["seed"]))
    if probe is not None:
        callbacks.append(probe)
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
        callbacks=callbacks,
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
