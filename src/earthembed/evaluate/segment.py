"""``earthembed segment``: segmentation with few labels, the evaluation of Embedding Earth (Tarasiou & Zafeiriou 2022).

For every init (random, any exported encoder, ...), label fraction and seed, a U-Net-style segmenter
(:class:`~earthembed.models.dense.Segmenter`) is fine-tuned on the labelled training chips of a store's mask
label and scored on its fixed test split. The protocol, beside ``fewshot``'s:

* **Splits**: the store's ``test`` split is the test set (never sampled, never used for choices); ``val`` chips
  choose the checkpoint (best val mIoU); the label fractions are drawn from the remaining labelled chips
  (``train`` + unassigned). Without a test split, a deterministic 80/20 split is made and noted.
* **Label fractions**, per seed, stratified by each chip's class composition (PANGAEA's limited-label protocol)
  and nested: every fraction holds the smaller ones (:func:`~earthembed.evaluate.budgets.sample_fractions`).
  Training runs a fixed number of steps whatever the fraction, so a small fraction is seen more often, not
  for less compute.
* **Metrics** on test chips, each with a bootstrap 95% CI over chips: mIoU, per-class IoU, macro F1, pixel
  accuracy; unlabelled pixels (the mask's nodata) are ignored, never a class.
* **Outputs** (in the style of ``fewshot``): tidy ``results.csv`` / ``.parquet`` (columns
  :data:`~earthembed.evaluate.tasks.RESULT_COLUMNS`: ``features`` = init, ``estimator`` = decoder,
  ``budget`` = label fraction), ``summary.md`` / ``.csv`` (mIoU per init x fraction with the gain over the
  random init of the same architecture, and the smallest fraction reaching 95% of the full-label mIoU),
  ``label_fraction.png``, ``predictions.png`` (labels next to predictions for a few test chips),
  ``budgets.parquet`` (the chips of every fraction) and ``run.json``.
* **Resume**: each finished (init, fraction, seed) cell is committed to ``cells/`` (its rows plus a fingerprint
  of everything it depends on); re-running the command skips finished cells and never duplicates a row, and a
  cell computed under other settings is refused rather than mixed in.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from earthembed.augment import AugmentConfig
from earthembed.config import resolve_config
from earthembed.data.store import ChipStore
from earthembed.evaluate.budgets import composition_strata, parse_fractions, sample_fractions, split_pool_test
from earthembed.evaluate.inits import RANDOM, InitSource, resolve_inits
from earthembed.evaluate.metrics import segmentation_metrics
from earthembed.evaluate.tasks import RESULT_COLUMNS

TASK_KIND = "segmentation"
BUDGET_MODE = "fraction"
DEFAULT_FRACTIONS = (0.01, 0.05, 0.1, 0.25, 1.0)
CELL_META = b"earthembed_segment_cell"
FREE_SECTIONS = ("model", "decoder.args", "decoder.neck_args")

SEGMENT_DEFAULTS: dict[str, Any] = {
    "model": {"name": None, "modalities": None},  # architecture of `--init random` (+ its arguments)
    "decoder": {"name": "unet", "args": {}, "neck": "auto", "neck_args": {}},
    "data": {"batch_size": 16, "eval_batch_size": 64, "num_workers": 0},
    "train": {
        "max_steps": 300, "epochs": None, "lr": 1e-3, "encoder_lr_scale": 1.0, "weight_decay": 0.01, "warmup_steps": 20,
        "betas": [0.9, 0.999], "freeze_encoder": False, "val_every_n_steps": 50, "seed": 0,
        "precision": "32-true", "accelerator": "auto", "devices": 1, "strategy": "auto", "num_nodes": 1,
        "gradient_clip_val": None, "progress_bar": False,
    },
    "augment": {"crop_scale": [0.75, 1.0], "flip": True, "rot90": True, "band_dropout": 0.0, "group_dropout": 0.0,
                "noise_std": 0.0, "modality_dropout": 0.0},
    "eval": {"n_boot": 200, "n_show": 6, "max_val_chips": 512},
}
#: settings that do not change a cell's result (left out of its fingerprint)
_RUNTIME_KEYS = {"progress_bar", "accelerator", "devices", "strategy", "num_nodes", "num_workers", "eval_batch_size"}


def cell_steps(train: Mapping[str, Any], n_train: int, batch_size: int) -> int:
    """Optimiser steps of a cell: ``train.max_steps`` for every fraction (``epochs`` null: small fractions are seen
    more often), or ``train.epochs`` passes over the cell's labelled chips, at most ``max_steps`` (so a large
    fraction is not trained on a sliver of its chips, as the fixed count does)."""
    if train.get("epochs") is None:
        return int(train["max_steps"])
    return max(1, min(int(train["max_steps"]), math.ceil(float(train["epochs"]) * n_train / batch_size)))


def load_segment_config(config: str | Path | Mapping[str, Any] | None = "segment",
                        overrides: Sequence[str] | None = None) -> tuple[dict[str, Any], str]:
    """(resolved segment config, its name for messages); bad keys and values are errors naming the file."""
    from earthembed.models.decoders import DECODERS
    from earthembed.models.necks import NECKS
    from earthembed.models.registry import check_model_config

    cfg, where = resolve_config(SEGMENT_DEFAULTS, config, overrides, FREE_SECTIONS)
    if cfg["model"].get("name") is not None:
        check_model_config(cfg["model"], where)
    d = cfg["decoder"]
    if d["name"] not in DECODERS:
        raise ValueError(f"{where}: unknown decoder.name {d['name']!r} (registered: {DECODERS.names()})")
    if d["neck"] != "auto" and d["neck"] not in NECKS:
        raise ValueError(f"{where}: unknown decoder.neck {d['neck']!r} (registered: auto, {', '.join(NECKS.names())})")
    t = cfg["train"]
    for key in ("max_steps", "val_every_n_steps", "warmup_steps"):
        if not isinstance(t[key], int) or t[key] < 0 or (key == "max_steps" and t[key] < 1):
            raise ValueError(f"{where}: train.{key} must be a {'positive' if key == 'max_steps' else 'non-negative'} integer, got {t[key]!r}")
    if t["epochs"] is not None and (isinstance(t["epochs"], bool) or not isinstance(t["epochs"], (int, float))
                                    or t["epochs"] <= 0):
        raise ValueError(f"{where}: train.epochs must be a positive number or null, got {t['epochs']!r}")
    if not (isinstance(t["betas"], (list, tuple)) and len(t["betas"]) == 2):
        raise ValueError(f"{where}: train.betas must be two numbers, e.g. [0.9, 0.999], got {t['betas']!r}")
    if int(cfg["data"]["batch_size"]) < 1:
        raise ValueError(f"{where}: data.batch_size must be >= 1")
    try:
        AugmentConfig.from_dict(cfg["augment"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: {e}") from e
    return cfg, where


@dataclasses.dataclass
class MaskTask:
    """A store's pixel-mask label: class names, ignore value and the labelled chips (store positions)."""

    name: str
    classes: list[str]
    ignore_index: int
    positions: np.ndarray
    chip_ids: np.ndarray
    split: np.ndarray

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def load_mask_task(store: ChipStore, column: str) -> MaskTask:
    """The mask label ``column`` of ``store`` and its labelled chips; errors name the problem (not a mask,
    missing, no classes, no labelled chip)."""
    spec = store.labels.get(column)
    masks = [k for k, v in store.labels.items() if v.get("kind") == "mask"]
    if spec is None:
        raise KeyError(f"{store.path}: no label column {column!r}; mask labels: {masks or 'none'}")
    if spec.get("kind") != "mask":
        raise ValueError(
            f"{store.path}: label {column!r} is a chip-level {spec.get('kind')} label, not a pixel mask (mask labels: "
            f"{masks or 'none'}); chip-level labels are evaluated with `earthembed fewshot`"
        )
    classes = [str(c) for c in spec.get("classes") or []]
    if len(classes) < 2:
        raise ValueError(f"{store.path}: mask label {column!r} declares {len(classes)} classes; segmentation needs >= 2")
    idx = store.index
    has = idx[f"has_mask_{column}"].to_numpy(dtype=bool)
    if not has.any():
        raise ValueError(f"{store.path}: no chip has a {column!r} mask")
    pos = np.flatnonzero(has)
    return MaskTask(column, classes, int(spec.get("nodata", -1)), pos, idx["chip_id"].to_numpy(dtype=str)[pos],
                    idx["split"].fillna("").to_numpy(dtype=str)[pos])


def class_fractions(store: ChipStore, task: MaskTask, positions: np.ndarray, batch: int = 256) -> np.ndarray:
    """Per chip (store positions), the fraction of its labelled pixels in each class [N, K]; values that are
    neither a class nor the ignore value are an error naming the chip (a mask the schema does not describe)."""
    k = task.num_classes
    out = np.zeros((len(positions), k), dtype=np.float64)
    for s in range(0, len(positions), batch):
        pos = positions[s : s + batch]
        m = store.read_mask(task.name, pos).astype(np.int64).reshape(len(pos), -1)
        bad = (m != task.ignore_index) & ((m < 0) | (m >= k))
        if bad.any():
            row = int(np.flatnonzero(bad.any(1))[0])
            vals = np.unique(m[row][bad[row]])[:10].tolist()
            chip = store.index["chip_id"].iloc[int(pos[row])]
            raise ValueError(
                f"{store.path}: chip {chip!r}: mask {task.name!r} has values {vals}, which are neither its classes "
                f"0..{k - 1} ({task.classes}) nor the ignore value {task.ignore_index}"
            )
        valid = m != task.ignore_index
        counts = np.stack([((m == c) & valid).sum(1) for c in range(k)], 1)
        out[s : s + len(pos)] = counts / np.maximum(valid.sum(1, keepdims=True), 1)
    return out


def _hash(values: Any) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _cell_path(out: Path, init: str, fraction: str, seed: int) -> Path:
    return out / "cells" / f"{_safe(init)}__f{fraction}__s{seed}.parquet"


def _read_cell(path: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    meta = json.loads((table.schema.metadata or {}).get(CELL_META, b"{}"))
    return table.to_pandas(), meta


def _write_cell(path: Path, rows: pd.DataFrame, fingerprint: dict[str, Any]) -> None:
    """Rows of one finished cell, with its fingerprint in the Parquet metadata; the rename is the commit."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(rows, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), CELL_META: json.dumps(fingerprint).encode()})
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def _check_resumable(path: Path, fingerprint: dict[str, Any]) -> pd.DataFrame | None:
    """The rows of a finished cell computed under the same fingerprint; None if not finished; an error if it
    was computed under other settings (mixing them would make the table lie)."""
    if not path.exists():
        return None
    rows, old = _read_cell(path)
    diff = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
    if diff:
        raise ValueError(
            f"{path}: this (init, fraction, seed) cell was computed with a different {', '.join(diff)}; resuming would "
            f"mix settings in one table - use a new --out (or delete {path.parent} to recompute)"
        )
    return rows


def _show_positions(store: ChipStore, task: MaskTask, test: np.ndarray, n: int) -> np.ndarray:
    """Test positions (into ``test``) of the chips drawn in predictions.png: the ``n`` with the most classes."""
    if n <= 0 or not len(test):
        return np.zeros(0, dtype=np.int64)
    frac = class_fractions(store, task, task.positions[test])
    n_classes = (frac > 0).sum(1)  # ties keep store order
    return np.sort(np.argsort(-n_classes, kind="stable")[:n])


@dataclasses.dataclass
class _Plan:
    """Everything the cells share: splits, per-seed fraction samples, chips to draw."""

    pool: np.ndarray  # positions into task.positions: labelled training chips
    val: np.ndarray
    test: np.ndarray
    samples: dict[int, dict[str, np.ndarray]]  # seed -> fraction label -> positions into pool
    show: np.ndarray  # positions into test
    split_note: str


def _plan(store: ChipStore, task: MaskTask, fractions: Sequence[float], seeds: Sequence[int], n_show: int,
          max_val: int) -> _Plan:
    from earthembed.data.ingest.splits import hash_unit

    pool_all, test, note = split_pool_test(task.split)
    is_val = task.split[pool_all] == "val"
    val = pool_all[is_val] if is_val.any() and (~is_val).any() else np.zeros(0, dtype=np.int64)
    pool = pool_all[~is_val] if len(val) else pool_all
    if max_val and len(val) > max_val:  # checkpoint choice on a fixed subset (hash of chip ids): val runs often
        keep = np.argsort([hash_unit(c) for c in task.chip_ids[val]], kind="stable")[:max_val]
        val = np.sort(val[keep])
    if (task.split == "test").any():
        note = "store splits: label fractions of train (+unassigned) chips, val chooses the checkpoint, test = test"
    if not len(val):
        note += "; no val chips: the last weights are scored"
    if not len(pool):
        raise ValueError(f"{store.path}: mask {task.name!r}: no labelled training chips (all are in val/test)")
    strata = composition_strata(class_fractions(store, task, task.positions[pool]))
    samples = {s: sample_fractions(strata, fractions, s) for s in seeds}
    return _Plan(pool, val, test, samples, _show_positions(store, task, test, n_show), note)


def run_segment(
    store: str | Path | ChipStore,
    task: str,
    inits: Sequence[str],
    out: str | Path,
    fractions: str | Sequence[float] = DEFAULT_FRACTIONS,
    seeds: Sequence[int] = (0, 1, 2),
    config: str | Path | Mapping[str, Any] | None = "segment",
    overrides: Sequence[str] | None = None,
    freeze_encoder: bool | None = None,
    progress: bool = False,
    weights: str | Path | None = None,
    download: bool = False,
    options: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Fine-tune a segmenter from every init in ``inits`` (``NAME=SPEC`` or ``SPEC``; see
    :mod:`earthembed.evaluate.inits`) at every label fraction and seed; write the outputs listed in the module
    docstring to ``out`` and return the tidy results. Re-running resumes (finished cells are reused).
    ``weights``, ``download``, ``options`` (e.g. ``{"patch_size": 4}``): for a published init (``galileo:nano``)."""
    from earthembed.contract import InputSpec
    from earthembed.models.dense import check_chip_size
    from earthembed.outputs import check_output, claim_dir
    from earthembed.progress import progress as make_progress

    specs = [Path(i.partition("=")[2] or i) for i in inits]  # output policy: out is no input, store or other dir
    out = check_output(out, "segment", [getattr(store, "path", store), *(p for p in specs if p.exists())])
    cfg, where = load_segment_config(config, overrides)
    if freeze_encoder is not None:
        cfg["train"]["freeze_encoder"] = bool(freeze_encoder)
    st = store if isinstance(store, ChipStore) else ChipStore(store)
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("need at least one seed")
    fr = parse_fractions(fractions if isinstance(fractions, str) else [str(f) for f in fractions])
    mask_task = load_mask_task(st, task)
    sources = resolve_inits(inits, st, cfg["model"], weights=weights, download=download, options=options)
    requests: dict[str, dict[str, list[str]]] = {}
    for src in sources:  # fail on bands, units or chip size before any training
        try:
            spec = InputSpec.from_bands(src.modalities, src.products)
            requests[src.name] = spec.request(st)
            spec.check(st, requests[src.name])
        except ValueError as e:
            raise type(e)(f"--init {src.spec} ({src.name}): {e}") from e
        check_chip_size(src.build(0), st.chip_size, st.chip_size, where=f"--init {src.spec} on {st.path}")
    (claim_dir(out, "segment") / "cells").mkdir(exist_ok=True)
    plan = _plan(st, mask_task, fr, seeds, int(cfg["eval"]["n_show"]), int(cfg["eval"]["max_val_chips"]))
    estimator = cfg["decoder"]["name"] + ("_frozen" if cfg["train"]["freeze_encoder"] else "")
    cells = [(src, s, label) for src in sources for s in seeds for label in plan.samples[s]]
    bar = make_progress(total=len(cells), desc=f"segment {task}", unit="cell", quiet=not progress)
    results: list[pd.DataFrame] = []
    runner = _CellRunner(st, mask_task, plan, cfg, estimator, out)
    from earthembed.trainer_output import quiet_lightning

    quiet_lightning()
    lightning_log = logging.getLogger("lightning.pytorch")
    level = lightning_log.level
    lightning_log.setLevel(logging.WARNING)  # one trainer per cell: its start-up banner would drown the progress
    try:
        _run_cells(runner, sources, requests, seeds, plan, st, out, results, bar)
    finally:
        lightning_log.setLevel(level)
        bar.close()
    if not runner.is_global_zero:
        return pd.DataFrame(columns=RESULT_COLUMNS)
    df = pd.concat(results, ignore_index=True)[RESULT_COLUMNS]
    _write_outputs(df, st, mask_task, sources, plan, cfg, out, where, estimator, seeds)
    return df


def _run_cells(runner: _CellRunner, sources: Sequence[InitSource], requests: Mapping[str, dict[str, list[str]]],
               seeds: Sequence[int], plan: _Plan, st: ChipStore, out: Path, results: list[pd.DataFrame],
               bar: Any) -> None:
    """Every (init, seed, fraction) cell: reused when committed under the same fingerprint, else trained."""
    from earthembed.data.normalize import Normalizer

    for src in sources:
        norm = Normalizer.from_dict(src.normalization) if src.normalization else Normalizer.from_store(st)
        for s in seeds:
            for label, pos in plan.samples[s].items():
                path = _cell_path(out, src.name, label, s)
                fp = runner.fingerprint(src, label, s, pos)
                rows = _check_resumable(path, fp)
                if rows is None:
                    rows = runner.run(src, requests[src.name], norm, label, s, pos, path, fp)
                if rows is not None:
                    results.append(rows)
                bar.update(1)


class _CellRunner:
    """Trains and scores one (init, fraction, seed) cell; shares the store, splits and config."""

    def __init__(self, store: ChipStore, task: MaskTask, plan: _Plan, cfg: dict[str, Any], estimator: str, out: Path):
        self.store, self.task, self.plan, self.cfg, self.estimator, self.out = store, task, plan, cfg, estimator, out
        self.is_global_zero = True
        ids = task.chip_ids
        self._split_hash = {"val": _hash(ids[plan.val].tolist()), "test": _hash(ids[plan.test].tolist())}

    def fingerprint(self, src: InitSource, label: str, seed: int, pos: np.ndarray) -> dict[str, Any]:
        """Everything the cell's numbers depend on (not where or how fast it ran)."""
        strip = {sec: {k: v for k, v in self.cfg[sec].items() if k not in _RUNTIME_KEYS}
                 for sec in ("decoder", "data", "train", "augment", "eval")}
        return {
            "store": str(self.store.path.resolve()), "n_chips": len(self.store), "task": self.task.name,
            "classes": self.task.classes, "init": {k: v for k, v in src.describe().items() if k != "name"},
            "model": self.cfg["model"] if src.kind == RANDOM else None, "config": strip, "fraction": label,
            "seed": seed, "train_chips": _hash(self.task.chip_ids[self.plan.pool[pos]].tolist()), **self._split_hash,
        }

    def run(self, src: InitSource, bands: dict[str, list[str]], norm: Any, label: str, seed: int, pos: np.ndarray,
            path: Path, fingerprint: dict[str, Any]) -> pd.DataFrame | None:
        import lightning as L
        import torch

        from earthembed.data.dataset import ChipDataset
        from earthembed.evaluate.finetune import SegmentationModule, predict_confusions
        from earthembed.models.dense import Segmenter

        cfg, t, d, task, plan = self.cfg, self.cfg["train"], self.cfg["data"], self.task, self.plan
        L.seed_everything(int(t["seed"]) + seed, workers=True, verbose=False)
        seg = Segmenter(src.build(seed), task.num_classes, cfg["decoder"]["name"], cfg["decoder"]["args"],
                        cfg["decoder"]["neck"], cfg["decoder"]["neck_args"], freeze_encoder=bool(t["freeze_encoder"]))

        def data(p: np.ndarray) -> ChipDataset:
            return ChipDataset(self.store, bands, indices=task.positions[p], normalizer=norm, masks=[task.name])

        train = data(plan.pool[pos])
        module = SegmentationModule(
            seg, bands, task.name, task.num_classes, task.ignore_index, lr=t["lr"], weight_decay=t["weight_decay"],
            warmup_steps=t["warmup_steps"], betas=t["betas"], encoder_lr_scale=t["encoder_lr_scale"],
            augment=cfg["augment"], val_data=data(plan.val) if len(plan.val) else None,
            val_every_n_steps=int(t["val_every_n_steps"]), eval_batch_size=int(d["eval_batch_size"]),
        )
        bs, steps = int(d["batch_size"]), cell_steps(t, len(pos), int(d["batch_size"]))
        g = torch.Generator().manual_seed(int(t["seed"]) + seed)
        sampler = torch.utils.data.RandomSampler(train, replacement=True, num_samples=steps * bs, generator=g)
        loader = torch.utils.data.DataLoader(train, batch_size=bs, sampler=sampler, num_workers=int(d["num_workers"]),
                                             persistent_workers=False, collate_fn=train.collate)
        trainer = L.Trainer(
            max_steps=steps, max_epochs=-1, accelerator=t["accelerator"], devices=t["devices"], strategy=t["strategy"],
            num_nodes=int(t["num_nodes"]), precision=t["precision"], logger=False, enable_checkpointing=False,
            enable_progress_bar=bool(t["progress_bar"]), enable_model_summary=False, limit_val_batches=0,
            num_sanity_val_steps=0, gradient_clip_val=t["gradient_clip_val"], log_every_n_steps=max(1, min(50, steps)),
        )
        module.train()  # exports load in eval mode and Lightning keeps a module's mode (BatchNorm would stay frozen)
        t0 = time.perf_counter()
        trainer.fit(module, train_dataloaders=loader)
        fit_s = time.perf_counter() - t0
        self.is_global_zero = trainer.is_global_zero
        if not trainer.is_global_zero:
            return None
        chosen = module.restore_best()
        test = data(plan.test)
        conf, kept = predict_confusions(seg, test, bands, task.name, task.num_classes, task.ignore_index,
                                        int(d["eval_batch_size"]), module.device, keep=plan.show)
        metrics = segmentation_metrics(conf, task.classes, n_boot=int(cfg["eval"]["n_boot"]), seed=seed)
        extra = json.dumps({"init_kind": src.kind, "architecture": src.architecture, "model_id": src.model_id,
                            "steps": int(trainer.global_step), **chosen, "val_history": module.val_history})
        rows = pd.DataFrame([{
            "task": task.name, "task_kind": TASK_KIND, "features": src.name, "estimator": self.estimator,
            "budget_mode": BUDGET_MODE, "budget": label, "budget_n": len(pos), "seed": seed, "metric": m,
            "value": v, "ci_low": lo, "ci_high": hi, "n_train": len(pos), "n_test": len(plan.test), "fit_s": fit_s,
            "extra": extra,
        } for m, (v, lo, hi) in metrics.items()], columns=RESULT_COLUMNS)
        if len(plan.show):
            np.savez_compressed(path.with_suffix(".npz"), pred=np.stack([kept[int(i)] for i in plan.show]),
                                chip_ids=task.chip_ids[plan.test[plan.show]])
        _write_cell(path, rows, fingerprint)
        return rows


def _baselines(sources: Sequence[InitSource]) -> dict[str, str]:
    """Each init -> the random init of the same architecture and config (else the first random init)."""
    randoms = [s for s in sources if s.kind == RANDOM]
    if not randoms:
        return {}
    out = {}
    for s in sources:
        same = [r for r in randoms if r.architecture == s.architecture and r.config == s.config]
        out[s.name] = (same or randoms)[0].name
    return out


def _write_outputs(df: pd.DataFrame, store: ChipStore, task: MaskTask, sources: Sequence[InitSource], plan: _Plan,
                   cfg: dict[str, Any], out: Path, where: str, estimator: str, seeds: Sequence[int]) -> None:
    from earthembed.evaluate.summary import gain_table, markdown_table, plot_label_efficiency, write_summary

    df.to_csv(out / "results.csv", index=False)
    df.to_parquet(out / "results.parquet", index=False)
    members = [pd.DataFrame({"task": task.name, "seed": s, "budget": label, "chip_id": task.chip_ids[plan.pool[p]]})
               for s, samp in plan.samples.items() for label, p in samp.items()]
    pd.concat(members, ignore_index=True).to_parquet(out / "budgets.parquet", index=False)
    baselines = _baselines(sources)
    run = {
        "store": str(store.path), "task": task.name, "classes": task.classes, "ignore_index": task.ignore_index,
        "split": plan.split_note, "n_labelled": len(task.positions), "n_pool": len(plan.pool), "n_val": len(plan.val),
        "n_test": len(plan.test), "fractions": {str(s): {k: len(v) for k, v in samp.items()} for s, samp in plan.samples.items()},
        "seeds": list(seeds), "estimator": estimator, "config": cfg, "config_source": where,
        "inits": [s.describe() for s in sources], "baselines": baselines,
    }
    (out / "run.json").write_text(json.dumps(run, indent=2, default=str))
    md = write_summary(df, out)
    gains = gain_table(df, baselines)
    md = (f"# Segmentation with few labels: {task.name} ({', '.join(task.classes)})\n\n"
          f"Store {store.path}; {len(plan.pool)} labelled training chips, {len(plan.val)} val, {len(plan.test)} test "
          f"({plan.split_note}). Cells: mIoU mean ± std over seeds {list(seeds)} [mean 95% bootstrap CI over test "
          f"chips]; Δ = gain over {'the random init of the same architecture' if baselines else 'n/a'} "
          f"(* = the CIs do not overlap).\n\n## mIoU by label fraction\n\n" + markdown_table(gains) + "\n\n" + md)
    (out / "summary.md").write_text(md)
    plot_label_efficiency(df, out / "label_fraction.png", x="fraction")
    _plot_predictions(store, task, sources, plan, out, seeds[0])


def _plot_predictions(store: ChipStore, task: MaskTask, sources: Sequence[InitSource], plan: _Plan, out: Path,
                      seed: int) -> Path | None:
    """predictions.png: for the chips of ``plan.show``, the image, its label and each init's prediction at the
    smallest and the largest label fraction (seed ``seed``)."""
    from earthembed.evaluate.summary import plot_segmentation_examples

    if not len(plan.show):
        return None
    pos = task.positions[plan.test[plan.show]]
    labels = store.read_mask(task.name, pos)
    fracs = list(plan.samples[seed])
    columns: dict[str, np.ndarray] = {}
    for src in sources:
        for label in dict.fromkeys([fracs[0], fracs[-1]]):
            f = _cell_path(out, src.name, label, seed).with_suffix(".npz")
            if f.exists():
                columns[f"{src.name} @ {label}"] = np.load(f)["pred"]
    return plot_segmentation_examples(store, pos, labels, columns, task.classes, task.ignore_index,
                                      out / "predictions.png")
