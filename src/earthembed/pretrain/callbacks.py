"""Lightning callbacks of pretraining: an online probe of the representation on the store's own labels.

Pretraining loss says little about whether embeddings got better for mapping (a two-view loss can fall
while the embedding learns to ignore what a probe needs). When the store has chip labels, the
:class:`OnlineProbe` embeds the labelled ``train`` and ``val`` chips with the frozen encoder every N steps,
fits the few-shot estimators of :mod:`earthembed.evaluate` (kNN, logistic / ridge regression) on train and
scores them on val, and logs ``probe/<task>/<estimator>_<metric>`` into ``metrics.csv``. Never the
``test`` split: probe numbers are for tuning and stopping, and reported results come from ``fewshot``.

Estimators and metrics are the ones ``fewshot`` uses (no second implementation to drift), on full chips
as ``embed`` sees them (no crop, no augmentation, encoder in eval mode). Probing leaves the training run's random
states as it found them (a run with the probe trains exactly as one without), and a resumed run neither repeats
nor skips a probe row.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch

from earthembed.data.dataset import ChipDataset
from earthembed.data.store import ChipStore
from earthembed.evaluate.estimators import fit_estimator, resolve_estimators
from earthembed.evaluate.metrics import evaluate_predictions
from earthembed.evaluate.tasks import PRIMARY_METRIC, Task, load_task

CHIP_LABEL_KINDS = ("class", "multilabel", "fraction", "value")


def probe_tasks(store: ChipStore, tasks: Sequence[str] | None = None) -> list[Task]:
    """Tasks the probe can score: the named label columns (error if one is unusable) or, with None, every
    chip-level label that has labelled chips in both ``train`` and ``val`` (possibly none)."""
    names = list(tasks) if tasks else [k for k, v in store.labels.items() if v.get("kind") in CHIP_LABEL_KINDS]
    out = []
    for name in names:
        t = load_task(store, name)
        t = t.subset(np.isin(t.split, ["train", "val"]))
        ok = (t.split == "train").sum() >= 2 and (t.split == "val").sum() >= 1
        if not ok and tasks:
            raise ValueError(f"{store.path}: probe task {name!r} needs labelled chips in the train and val splits")
        if ok:
            out.append(t)
    return out


class OnlineProbe(L.Callback):
    """Fit few-shot estimators on frozen train embeddings, score on val, every ``every_n_steps`` steps
    (also before the first and after the last step); see the module docstring.

    Args:
        store: the pretraining store (its labels and splits).
        bands: modality -> bands the model is fed (as in pretraining).
        tasks: label columns to probe (None: all usable, see :func:`probe_tasks`).
        every_n_steps: probe period in optimiser steps (> 0).
        estimators: few-shot estimator names (``knn``, ``linear`` = logreg/ridge, ``rf``).
        max_chips: at most this many labelled train+val chips are embedded (a fixed random subset).
        batch_size: chips per forward pass.
        seed: subset and estimator seed.
    """

    def __init__(self, store: ChipStore, bands: Mapping[str, Sequence[str]], tasks: Sequence[str] | None = None,
                 every_n_steps: int = 100, estimators: Sequence[str] = ("knn", "linear"), max_chips: int = 2000,
                 batch_size: int = 128, seed: int = 0) -> None:
        if int(every_n_steps) < 1:
            raise ValueError(f"probe.every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps, self.batch_size, self.seed = int(every_n_steps), int(batch_size), int(seed)
        self.tasks = probe_tasks(store, tasks)
        self.estimators = {t.name: resolve_estimators(t.kind, list(estimators)) for t in self.tasks}
        labelled = np.concatenate([t.chip_ids for t in self.tasks]) if self.tasks else np.empty(0, dtype=str)
        pos = np.flatnonzero(store.index["chip_id"].astype(str).isin(labelled))
        if len(pos) > max_chips:
            pos = np.sort(np.random.default_rng(seed).choice(pos, int(max_chips), replace=False))
        self.dataset = ChipDataset(store, {k: list(v) for k, v in bands.items()}, indices=pos)
        self.chip_ids = store.index["chip_id"].astype(str).to_numpy()[pos]
        self.history: list[dict[str, float]] = []
        self._last_step = -1

    @property
    def active(self) -> bool:
        return bool(self.tasks)

    @torch.no_grad()
    def embed(self, encoder: torch.nn.Module) -> np.ndarray:
        """Fused embeddings [N, D] of the probe chips (encoder in eval mode, restored afterwards)."""
        was_training = encoder.training
        encoder.eval()
        device = next(encoder.parameters()).device
        out = []
        try:
            for s in range(0, len(self.dataset), self.batch_size):
                b = self.dataset.read_batch(np.arange(s, min(s + self.batch_size, len(self.dataset))))
                b = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in b.items()}
                out.append(encoder(b).fused.float().cpu().numpy())
        finally:
            encoder.train(was_training)
        return np.concatenate(out)

    def score(self, encoder: torch.nn.Module) -> dict[str, float]:
        """``{"probe/<task>/<estimator>_<metric>": value}`` on val for the current encoder."""
        t0 = time.perf_counter()
        X_all = self.embed(encoder)
        where = {c: i for i, c in enumerate(self.chip_ids)}
        out: dict[str, float] = {}
        for task in self.tasks:
            rows = np.array([where.get(c, -1) for c in task.chip_ids])
            keep = rows >= 0
            t, X = task.subset(keep), X_all[rows[keep]]
            tr, va = t.split == "train", t.split == "val"
            if tr.sum() < 2 or not va.any():
                continue
            metric = PRIMARY_METRIC[t.kind]
            for est in self.estimators[t.name]:
                fitted = fit_estimator(est, t.kind, X[tr], t.y[tr], seed=self.seed, classes=t.classes)
                pred, sc = fitted.predict(X[va])
                value = evaluate_predictions(t.kind, t.y[va], pred, sc, n_boot=0)[metric][0]  # no CI needed
                out[f"probe/{t.name}/{est}_{metric}"] = float(value)
        out["probe/seconds"] = time.perf_counter() - t0
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"last_step": self._last_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._last_step = int(state_dict.get("last_step", -1))

    def _run(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from lightning.pytorch.utilities.seed import isolate_rng

        step = int(trainer.global_step)
        if step == self._last_step or not self.active:
            return
        self._last_step = step
        if not trainer.is_global_zero:
            return
        with isolate_rng():
            metrics = self.score(pl_module.model)
        self.history.append({"step": float(step), **metrics})
        if trainer.logger is not None:
            trainer.logger.log_metrics(metrics, step=step)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step == 0:  # a resumed run probed its steps before the checkpoint already
            self._run(trainer, pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.global_step % self.every_n_steps == 0:
            self._run(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._run(trainer, pl_module)
