"""Run a pretraining job from a YAML config: ``pretrain(config, store, out)``.

Config (TerraTorch-style; every section optional, unknown keys are errors naming the file and key)::

    model: {name: multimodal_vit_tiny, modalities: [s2, s1], <MultiModalViT args>}
    objective: contrastive
    objective_args: {proj_dim: 128, proj_hidden_dim: null, init_temperature: 0.07, max_logit_scale: 100}
    data: {batch_size: 64, crop_size: 32, num_workers: 2, splits: train}
    train: {max_steps: 300, lr: 1e-3, base_lr: null, weight_decay: 0.05, warmup_steps: 20, precision: 32-true, ...}
    augment: {crop_scale: [0.5, 1.0], flip: true, rot90: true, band_dropout: 0.1, group_dropout: 0.25, noise_std: 0.02, ...}
    export: {pool: multiscale_meanstd, tta: d4}

``export``: ``model.*`` settings of the *exported* encoder that change how it embeds but not its weights
(pooling, test-time augmentation): pretraining runs with ``model``, the export (and so ``embed``, ``fewshot``
and its random-init baseline) with ``model`` + ``export``. Checked before training: keys against the model,
weight shapes against the trained model. The online probe sees the training model.

The learning rate is ``train.lr``, or, when ``train.base_lr`` is set, ``base_lr * effective batch / 256`` with
effective batch = ``data.batch_size`` x processes (devices x nodes) x ``accumulate_grad_batches`` (the linear
scaling rule of MAE / ConvNeXt-V2 / MMEarth, so one config serves a laptop and a cluster).

Outputs under ``out``: ``config.yaml`` (resolved, with the store's path and modalities, and the objective's
``plan``: e.g. MP-MAE's pretext tasks with loss kind and target source), ``checkpoints/last.ckpt``
(re-running the same command resumes from it; a different config or store is refused), ``metrics.csv`` and
``export/`` (safetensors + model.json with the store's normaliser and modality products/units).

``init`` (``--init SPEC``) starts from published weights or an earthembed export instead of random ones
(:func:`earthembed.models.published.load_encoder`): the model is the init's architecture and config
(``model.name`` of the config file is replaced; other ``model.*`` keys override the init's config where they
keep its weight shapes, e.g. ``model.drop_path_rate``), fitted to the store's bands (``extra_bands="add"`` by
default, so bands the publisher never saw get zero-initialised channels this run can learn), and the data are
normalised as the init expects; the export records that normalisation and the init's provenance. Resuming
works as for any run; a different init in the same ``out`` is refused.
"""

from __future__ import annotations

import dataclasses
import gc
import inspect
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from earthembed.augment import AugmentConfig
from earthembed.config import packaged_config, packaged_configs, parse_overrides, resolve_config
from earthembed.registry import Registry

if TYPE_CHECKING:
    from earthembed.models.export import ModelMeta

__all__ = ["OBJECTIVES", "load_config", "packaged_config", "packaged_configs", "parse_overrides", "pretrain",
           "register_objective"]

OBJECTIVES: Registry[Any] = Registry("objective")
"""Objective name -> :class:`~earthembed.pretrain.base.PretrainModule` subclass (lazy ``module:Class``)."""
OBJECTIVES.register("contrastive", "earthembed.pretrain.contrastive:ContrastivePretrainModule")
OBJECTIVES.register("mpmae", "earthembed.pretrain.mpmae:MPMAEPretrainModule")
OBJECTIVES.register("dense_contrastive", "earthembed.pretrain.dense_contrastive:DenseContrastivePretrainModule")
OBJECTIVES.register("byol", "earthembed.pretrain.byol:BYOLPretrainModule")

TRAIN_DEFAULTS: dict[str, Any] = {
    "max_steps": -1,
    "max_epochs": None,
    "lr": 1e-3,
    "base_lr": None,  # if set: lr = base_lr * batch_size * world_size * accumulate_grad_batches / 256
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
    "export": {},
}
_FREE_SECTIONS = ("model", "objective_args", "export")  # keys checked against the model / objective signatures
_NUMERIC: dict[str, tuple[type, bool]] = {
    "train.max_steps": (int, True), "train.max_epochs": (int, True), "train.lr": (float, False),
    "train.weight_decay": (float, False), "train.warmup_steps": (int, False), "train.num_nodes": (int, False),
    "train.seed": (int, False), "train.log_every_n_steps": (int, False), "train.accumulate_grad_batches": (int, False),
    "train.checkpoint_every_n_steps": (int, False), "train.gradient_clip_val": (float, True),
    "data.batch_size": (int, False), "data.num_workers": (int, False), "data.crop_size": (int, True),
}
"""Numeric config keys: (type, may be null). Checked up front so a bad value names its key, not int()'s text."""


def _check_numbers(cfg: dict[str, Any], where: str) -> None:
    for dotted, (typ, nullable) in _NUMERIC.items():
        section, key = dotted.split(".")
        v = cfg[section][key]
        if v is None and nullable:
            continue
        if typ is int:
            ok = isinstance(v, int) and not isinstance(v, bool)
        else:  # YAML reads 1e-3 (no dot) as a string: accept what float() accepts
            try:
                ok = not isinstance(v, bool) and v is not None and float(v) == float(v)
            except (TypeError, ValueError):
                ok = False
        if not ok:
            kind = "an integer" if typ is int else "a number"
            raise ValueError(f"{where}: {dotted} must be {kind}{' or null' if nullable else ''}, got {v!r}")


def register_objective(name: str, target: str | type) -> None:
    """Register a pretraining objective: a PretrainModule subclass or ``"package.module:Class"``."""
    OBJECTIVES.register(name, target)


def _objective_class(name: str, where: str) -> type:
    if name not in OBJECTIVES:
        raise ValueError(f"{where}: unknown objective {name!r} (known: {OBJECTIVES.names()})")
    return OBJECTIVES.get(name)  # type: ignore[return-value]


DEFAULT_RECIPES: dict[str, str] = {"single": "cpu_single_modality", "rgb": "cpu_rgb", "multimodal": "cpu_multimodal"}
"""Packaged config used when ``pretrain`` gets no config, by kind of store (see :func:`default_recipe`)."""


RGB_MAX_BANDS = 4
"""An optical modality with at most this many bands gets the ``rgb`` recipe (RGB / RGBN photos)."""


def default_recipe(store: Any) -> tuple[str, str]:
    """(packaged config name, one-line reason) of the best CPU recipe we measured for this kind of store:
    several input modalities (cross-modal pairs), one photo-like optical modality (<= 4 bands: RGB, RGBN) or
    one other modality (multispectral, radar); see docs/label_efficiency.md for the measurements behind each."""
    inputs = [k for k, m in store.modalities.items() if m.kind != "categorical"]
    if not inputs:
        raise ValueError(f"{store.path}: no input modality to pretrain on (only categorical layers)")
    if len(inputs) > 1:
        return DEFAULT_RECIPES["multimodal"], f"{len(inputs)} input modalities ({', '.join(inputs)}): cross-modal + two-view pairs"
    m = store.modalities[inputs[0]]
    n = len(store.band_names(inputs[0]))
    if m.kind == "optical" and n <= RGB_MAX_BANDS:
        return DEFAULT_RECIPES["rgb"], (f"one photo-like optical modality ({inputs[0]}: {m.product}, {n} bands): "
                                        "two augmented views, plain multiscale pool")
    return DEFAULT_RECIPES["single"], (f"one input modality ({inputs[0]}: {m.product}, {m.kind}, {n} bands): two "
                                       "augmented views, mean+std pool averaged over 8 rotations/flips")


def load_config(config: str | Path | Mapping[str, Any], overrides: Sequence[str] | None = None,
                name: str | None = None) -> tuple[dict[str, Any], str]:
    """(resolved config, its name for messages): YAML file, packaged config name or dict, plus overrides."""
    cfg, where = resolve_config(DEFAULTS, config, overrides, _FREE_SECTIONS, name)
    _validate(cfg, where)
    return cfg, where


def _validate(cfg: dict[str, Any], where: str) -> None:
    """Config rules owned by what is configured: ``model.*`` keys by the registered model factory,
    ``objective_args`` by the objective's constructor, objective-specific rules by the objective."""
    from earthembed.models.registry import check_model_config
    from earthembed.pretrain.base import RUNNER_ARGS

    check_model_config(cfg["model"], where)
    fixed = sorted(set(cfg["export"]) & {"name", "modalities"})
    if fixed:
        raise ValueError(f"{where}: export.{fixed[0]} cannot differ from the trained model's (export: only settings "
                         "that keep the weights, e.g. pool, tta)")
    check_model_config({"name": cfg["model"]["name"], **cfg["export"]}, where, prefix="export")
    cls = _objective_class(cfg["objective"], where)
    allowed_obj = set(inspect.signature(cls.__init__).parameters) - {"self", *RUNNER_ARGS, *cls.planned_args}
    for k in cfg["objective_args"]:
        if k not in allowed_obj:
            raise ValueError(f"{where}: unknown config key 'objective_args.{k}' (known: {sorted(allowed_obj)})")
    _check_numbers(cfg, where)
    betas = cfg["train"].get("betas")
    if not (isinstance(betas, (list, tuple)) and len(betas) == 2 and all(isinstance(b, (int, float)) for b in betas)):
        raise ValueError(f"{where}: train.betas must be two numbers, e.g. [0.9, 0.999], got {betas!r}")
    t = cfg["train"]
    if t["base_lr"] is not None and not (isinstance(t["base_lr"], (int, float)) and t["base_lr"] > 0):
        raise ValueError(f"{where}: train.base_lr must be a positive number or null, got {t['base_lr']!r}")
    if (t["max_steps"] in (None, -1)) and t["max_epochs"] is None:
        raise ValueError(f"{where}: set train.max_steps or train.max_epochs")
    try:
        AugmentConfig.from_dict(cfg["augment"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: {e}") from e
    cls.validate_config(cfg, where)


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


def _export_variant(model: Any, name: str, model_args: dict[str, Any], export_args: dict[str, Any], where: str
                    ) -> Any:
    """The encoder to export: ``model`` itself, or (``export`` settings given) the same architecture built with
    them, checked now to take ``model``'s weights (a setting that changes weight shapes is refused before
    any training)."""
    if not export_args:
        return model
    import torch

    from earthembed.models.registry import build_model

    with torch.random.fork_rng(devices=[]):  # the training run's random stream stays as without export settings
        variant = build_model(name, **{**model_args, **export_args})
    try:
        variant.load_state_dict(model.state_dict(), strict=True)
    except RuntimeError as e:
        raise ValueError(f"{where}: the export.* settings change the model's weight shapes: "
                         f"{' '.join(str(e).split())[:300]}") from None
    return variant


def _destroy_process_group() -> None:
    """Close the process group after trainer and model are released (DDP/gloo clean-exit fix)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _open_init(init: str, weights: str | Path | None, download: bool) -> Any:
    """The opened ``--init`` SPEC (:func:`earthembed.models.published.open_source`, the one opener every command
    uses): its architecture is known before the config is checked."""
    from earthembed.models.published import open_source

    return open_source(init, weights, download)


def _config_for_init(config: str | Path | Mapping[str, Any], architecture: str, init: str
                     ) -> tuple[dict[str, Any], str, list[str]]:
    """(config document, its name, notes) for a run that starts from ``init``: the init decides the model, so the
    recipe's ``model.*`` and ``export.*`` settings (written for the recipe's own model: a CNN's ``backbone``,
    ``pool``, ``tta``) are left out with a note; the user's overrides still apply and are still checked."""
    from earthembed.config import read_config

    doc, where = read_config(config)
    notes = []
    for section in ("model", "export"):
        part = dict(doc.get(section) or {})
        dropped = [k for k in part if k not in ("name", "modalities")]
        if dropped:
            notes.append(f"--init {init} decides the model ({architecture}): {where}'s "
                         f"{', '.join(f'{section}.{k}' for k in dropped)} (set for its own model) are left out")
            doc[section] = {k: v for k, v in part.items() if k not in dropped}
    return doc, where, notes


def _fit_init(source: Any, chips: Any, cfg: dict[str, Any], extra_bands: str, options: dict[str, Any] | None,
              where: str) -> tuple[Any, ModelMeta]:
    """(initial encoder, its typed model.json-style meta) of an opened ``--init`` for this store and config."""
    from earthembed.models.export import ModelMeta
    from earthembed.models.published.load import MULTI_INPUT

    mods = cfg["model"]["modalities"]
    mods = [mods] if isinstance(mods, str) else mods
    if source.is_export:
        model, fitted = source.fit(options=options)
        meta = ModelMeta.of(fitted, source.spec.text)
        if mods is not None and sorted(mods) != sorted(meta.modalities):
            raise ValueError(f"{where}: model.modalities {mods} differ from the --init export's {list(meta.modalities)}")
        meta.input_spec.check(chips)
        return model, meta
    if source.spec.family in MULTI_INPUT:  # fitted to the store as a whole (its own band mapping)
        model, fitted = source.fit(chips, mods, options=options)
    else:
        model, fitted = source.fit(chips, mods, extra_bands, cfg["model"].get("input_size"), options)
    return model, ModelMeta.of(fitted, source.spec.text)


RUN_LOCK_FILE = ".earthembed-run.lock"


def _global_rank_zero() -> bool:
    """True in the process that launches (or is) global rank 0: RANK / SLURM_PROCID / NODE_RANK + LOCAL_RANK,
    whichever the launcher set, are all 0 or unset. Lightning's DDP children have LOCAL_RANK >= 1."""
    import os

    return all(os.environ.get(k, "0") == "0" for k in ("RANK", "SLURM_PROCID", "NODE_RANK", "LOCAL_RANK"))


def run_lock(out: Path) -> Any:
    """The lock of run directory ``out`` as a context manager, taken on entering it on global rank 0 only (the
    other ranks write nothing of their own there). A second ``pretrain`` on the same ``--out`` fails at once
    naming the holder."""
    import contextlib

    from earthembed.outputs import OutputLock

    return OutputLock(out, out / RUN_LOCK_FILE) if _global_rank_zero() else contextlib.nullcontext()


def pretrain(
    config: str | Path | dict[str, Any] | None,
    store: str | Path,
    out: str | Path,
    overrides: list[str] | None = None,
    resume: bool = True,
    init: str | None = None,
    weights: str | Path | None = None,
    extra_bands: str = "add",
    download: bool = False,
    options: dict[str, Any] | None = None,
) -> Path:
    """Pretrain an encoder on ``store`` and export it; returns the export directory ``out/export``.

    ``config`` None picks the default CPU recipe for the store (:func:`default_recipe`) and says which.
    ``init``: start from this SPEC (``timm:``, ``torchgeo:``, ``mmearth:``, ``galileo:`` or an export; see the
    module doc), with ``weights`` / ``download`` / ``extra_bands`` / family ``options`` (``patch_size``) as for
    :func:`earthembed.models.published.load_encoder`.

    The run directory's lock is taken first: a second ``pretrain`` on the same ``out`` stops before it reads or
    writes anything there (or loads anything at all), naming the holder."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with run_lock(out):
        return _pretrain_locked(config, store, out, overrides, resume, init, weights, extra_bands, download,
                                options)


def _check_same_run(out: Path, resolved: dict[str, Any], store_path: str, store_mods: dict[str, Any], where: str
                    ) -> None:
    """Refuse to resume a run of ``out`` trained with another model, objective, init, plan or store."""
    before = yaml.safe_load((out / "config.yaml").read_text()) or {}
    keys = ("model", "objective", "objective_args", "init",
            *(("plan",) if "plan" in before or "plan" in resolved else ()))
    changed = [k for k in keys if before.get(k) != resolved.get(k)]
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
            keys = tuple(k for k in {**was, **store_mods} if was.get(k) != store_mods.get(k))
            what = "store content (" + "; ".join(f"{k}: {was.get(k)} -> now {store_mods.get(k)}" for k in keys) + ")"
        raise ValueError(
            f"{where}: {out} holds a run pretrained on a different {what}; resuming it would silently mix "
            "training data - use a new --out for this store (or delete its checkpoints/ to start over)"
        )


def _resume_checkpoint(last: Path) -> Path | None:
    """``last`` when a run can resume from it, after checking that it is whole (memory-mapped: cheap); None when
    there is none. Temporary files of a checkpoint write that was killed are removed (the run is locked)."""
    from earthembed.models.export import read_checkpoint

    if last.parent.is_dir():
        for tmp in last.parent.glob(f".{last.name}.*.tmp{last.suffix}"):
            tmp.unlink(missing_ok=True)
    if not last.exists():
        return None
    try:
        read_checkpoint(last, mmap=True)  # a truncated, corrupt or code-carrying file is refused, never half-read
    except ValueError as e:
        raise ValueError(f"{e} - it cannot be resumed from; move it away (or delete {last.parent}) to start the "
                         "run over") from None
    return last


def _write_config(out: Path, resolved: dict[str, Any]) -> None:
    from earthembed.outputs import atomic_path, write_error

    path = out / "config.yaml"
    try:
        with atomic_path(path) as tmp:
            tmp.write_text(yaml.safe_dump(resolved, sort_keys=False))
    except OSError as e:
        raise write_error(path, e, "free space and re-run the same command") from e


def _write_run_metrics(out: Path, logger: Any, resumer: Any, resumed: bool) -> None:
    """``out/metrics.csv``: every row of the run, those before a resume from the checkpoint (or, for a checkpoint
    written before checkpoints carried them, from the previous ``metrics.csv``)."""
    from earthembed.pretrain.resume import rows_before, write_metrics

    rows = logger.rows
    if resumed and not resumer.restored_rows:
        first = min((int(r["step"]) for r in rows), default=0)
        rows = [*rows_before(out / "metrics.csv", first), *rows]
    if rows:
        write_metrics(rows, out / "metrics.csv")


def _pretrain_locked(config: str | Path | dict[str, Any] | None, store: str | Path, out: Path,
                     overrides: list[str] | None, resume: bool, init: str | None, weights: str | Path | None,
                     extra_bands: str, download: bool, options: dict[str, Any] | None) -> Path:
    import lightning as L
    from lightning.pytorch.utilities import rank_zero_info

    from earthembed.data.normalize import Normalizer
    from earthembed.data.store import ChipStore
    from earthembed.models.export import export_model, modality_products
    from earthembed.pretrain.datamodule import ChipDataModule
    from earthembed.pretrain.resume import AtomicCheckpointIO, ExactResume, RunLogger
    from earthembed.trainer_output import StepProgress, quiet_lightning

    options = {k: v for k, v in (options or {}).items() if v is not None}
    opened = None
    if init is not None:
        opened = _open_init(init, weights, download)
        overrides = [*(overrides or []), f"model.name={opened.architecture}"]  # the init decides the architecture
    elif weights is not None or options:
        raise ValueError(f"{'--weights' if weights is not None else ', '.join(options or {})} goes with --init")
    chips = ChipStore(store)
    if config is None:
        config, why = default_recipe(chips)
        print(f"pretrain: no --config given, using the default CPU recipe {config!r} for this store ({why}); "
              f"its file: {packaged_config(config)}")
    init_notes: list[str] = []
    if opened is not None:
        config, name, init_notes = _config_for_init(config, opened.architecture, init or "")
        cfg, where = load_config(config, overrides, name)
    else:
        cfg, where = load_config(config, overrides)
    cls = _objective_class(cfg["objective"], where)
    model_args = {k: v for k, v in cfg["model"].items() if k not in ("name", "modalities")}
    init_model, init_meta = None, None
    if opened is not None:
        init_model, init_meta = _fit_init(opened, chips, cfg, extra_bands, options, where)
        normalizer = init_meta.normalizer
        model_args = {**{k: v for k, v in init_meta.config.items() if k != "modalities"}, **model_args}
        # the init decides the inputs (its modalities and bands); the objective plans the rest from the store
        cfg["model"] = {"name": cfg["model"]["name"], **model_args,
                        "modalities": {k: list(v) for k, v in init_meta.modalities.items()}}
    else:
        normalizer = Normalizer.from_store(chips)
    plan = cls.plan(chips, cfg, where)
    bands = plan.inputs
    t, d = cfg["train"], cfg["data"]
    model_args["modalities"] = bands

    store_path = str(Path(store).resolve())
    store_mods = {k: {**v, "bands": chips.band_names(k)} for k, v in modality_products(chips.modalities).items()}
    resolved = {
        **cfg, "store": store_path, "store_modalities": store_mods, "model": {**cfg["model"], "modalities": bands},
        **({"plan": plan.summary} if plan.summary else {}),
    }
    if init_meta is not None:
        pub = init_meta.published or {}
        resolved["init"] = {"spec": init, "model_id": init_meta.model_id, "extra_bands": extra_bands,
                            "weights_sha256": pub.get("weights_sha256"), **({"options": options} if options else {})}
    last = out / "checkpoints" / "last.ckpt"
    ckpt = _resume_checkpoint(last) if resume else None
    if ckpt is not None and (out / "config.yaml").exists():
        _check_same_run(out, resolved, store_path, store_mods, where)
    _write_config(out, resolved)

    logger = RunLogger(out / "logs", name="", version="")
    resumer = ExactResume(last, int(t["checkpoint_every_n_steps"]), logger)
    callbacks: list[Any] = [resumer]
    probe = _probe(cfg["probe"], chips, bands, int(t["seed"]))
    if probe is not None:
        callbacks.append(probe)
    callbacks.append(StepProgress(f"pretrain {cfg['objective']}", quiet=not bool(t["progress_bar"])))
    quiet_lightning()
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
        logger=logger,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        enable_checkpointing=False,  # ExactResume writes last.ckpt (see earthembed.pretrain.resume)
        default_root_dir=out,
        log_every_n_steps=log_every,
        gradient_clip_val=t["gradient_clip_val"],
        accumulate_grad_batches=int(t["accumulate_grad_batches"]),
        use_distributed_sampler=False,  # ChipDataModule shards batches per rank itself
        enable_progress_bar=False,  # StepProgress: steps / max_steps, plain lines when not on a terminal
        enable_model_summary=False,
    )
    lr = float(t["lr"])
    if t["base_lr"] is not None:  # the linear scaling rule, with the world size the Trainer found
        lr = float(t["base_lr"]) * int(d["batch_size"]) * trainer.world_size * int(t["accumulate_grad_batches"]) / 256
    for note in [*init_notes, *plan.notes, f"learning rate {lr:.3g}" + (f" (base_lr {t['base_lr']} x effective batch / 256)"
                                                           if t["base_lr"] is not None else "")]:
        rank_zero_info(note)

    L.seed_everything(int(t["seed"]), workers=True, verbose=False)
    module = cls(
        model_name=cfg["model"]["name"],
        model_args=model_args,
        lr=lr,
        weight_decay=float(t["weight_decay"]),
        warmup_steps=int(t["warmup_steps"]),
        betas=[float(b) for b in t["betas"]],
        augment=cfg["augment"],
        gather_distributed=bool(t["gather_distributed"]),
        **cfg["objective_args"],
        **plan.args,
    )
    if init_model is not None:  # a resumed run then restores its own weights from last.ckpt
        try:
            module.model.load_state_dict(init_model.state_dict(), strict=True)
        except RuntimeError as e:
            raise ValueError(f"{where}: the model.* settings change the weight shapes of --init {init}: "
                             f"{' '.join(str(e).split())[:300]}") from None
        del init_model
    exported = _export_variant(module.model, cfg["model"]["name"], model_args, cfg["export"], where)
    dm = ChipDataModule(
        chips, bands, batch_size=int(d["batch_size"]), crop_size=d["crop_size"], num_workers=int(d["num_workers"]),
        splits=d["splits"], seed=int(t["seed"]), normalizer=normalizer, reads=plan.reads, sampler=d["sampler"],
        shuffle_window=int(d["shuffle_window"]),
    )
    # resuming reads our own checkpoint with torch.load(weights_only=True): tensors and plain containers only
    trainer.fit(module, datamodule=dm, ckpt_path=str(ckpt) if ckpt is not None else None, weights_only=True)
    trainer.save_checkpoint(last, weights_only=False)  # the final state (with optimizer, for resuming)
    export = out / "export"
    if trainer.is_global_zero:
        info = {
            "objective": cfg["objective"],
            "global_step": int(trainer.global_step),
            "store": str(Path(store).resolve()),
            "n_chips": len(dm.dataset) if dm.dataset is not None else None,
            "lr": lr,
            **({"plan": plan.summary} if plan.summary else {}),
            "config": resolved,
        }
        extra: dict[str, Any] = {"pretrain": info}
        if init_meta is not None:
            extra["init"] = {"spec": init, "model_id": init_meta.model_id, "path": init_meta.path,
                             "published": init_meta.published}
        if exported is not module.model:
            exported.load_state_dict(module.model.state_dict(), strict=True)
        export_model(exported, export, normalizer, extra=extra,
                     products=modality_products(chips.modalities, bands))
        _write_run_metrics(out, logger, resumer, resumed=ckpt is not None)
    del trainer, module, dm
    gc.collect()
    _destroy_process_group()
    return export
