"""Exact resume of a pretraining run: what a checkpoint must hold beyond Lightning's, when it is written, and how.

A run killed after a checkpoint and re-run must end with the weights and the ``metrics.csv`` of a run that was
never interrupted. Lightning's checkpoint holds the model (with BYOL's EMA teacher), optimizer, scheduler and loop
progress, and the state of a stateful loader (:class:`earthembed.pretrain.datamodule.ResumableLoader`: the
sampler's position mid-epoch). :class:`ExactResume` adds the rest, measured as the causes of resumed runs that
drifted from uninterrupted ones:

* **Random states** (torch, numpy, python, CUDA): a resumed run started from the seed again, so its augmentations,
  masks and dropout differed from the first step on. They are captured when the checkpoint is written and
  restored right before the resumed run's first training step, so whatever the resumed process drew while
  starting (model init, loader iterators) does not matter. DataLoader workers hold no random state to restore:
  what they draw comes from the batch's place in the run (:class:`~earthembed.pretrain.datamodule.SampledBatch`).
* **Logged rows**: the rows the killed process had not yet flushed to its CSV were lost. Every row logged so far
  travels in the checkpoint (:class:`RunLogger`), and ``metrics.csv`` is written from them.
* **When** the checkpoint is written: at the start of the batch after every N-th optimiser step. Lightning's
  ``ModelCheckpoint`` saves in ``on_train_batch_end``, before Lightning logs that batch's metrics and before the
  LightningModule's own ``on_train_batch_end`` (BYOL's teacher update): its checkpoint lacked its own step's row,
  which the resumed run never logs again. At the next batch's start both have happened and nothing else has; the
  checkpoint records the loop as it stood between the two batches (the next one fetched but not yet counted),
  which Lightning restores as it restores its own end-of-training checkpoint.

:class:`AtomicCheckpointIO` writes a checkpoint to a temporary file in its own directory and renames it over the
old one when complete (Lightning's default stages it in the system temp dir and moves it, a copy across
filesystems that a kill or a full disk leaves truncated); a failed write removes the temporary file, keeps the
previous checkpoint and names the path it could not write.
"""

from __future__ import annotations

import io
import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_only

from earthembed.outputs import write_error


def rng_states() -> dict[str, Any]:
    """This process's random states, as tensors and plain containers (a ``weights_only`` checkpoint loads them)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, state, pgauss = random.getstate()
    out: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": int(version), "state": list(state), "gauss": pgauss},
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_states(states: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_states` captured."""
    torch.set_rng_state(states["torch"])
    n = states["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = states["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class RunLogger(CSVLogger):
    """Lightning's CSV logger (``logs/metrics.csv``: this process's rows) that also keeps every row of the run in
    ``rows``, those of the processes before a resume first (:class:`ExactResume` carries them in the checkpoint)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rows: list[dict[str, Any]] = []

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        row = {k: v.item() if isinstance(v, torch.Tensor) else v for k, v in metrics.items()}
        row["step"] = int(step) if step is not None else len(self.rows)
        self.rows.append(row)
        super().log_metrics(metrics, step)


def write_metrics(rows: list[dict[str, Any]], path: Path) -> None:
    """``metrics.csv`` of the whole run from ``rows`` (columns sorted as Lightning's CSV logger sorts them),
    written atomically."""
    import pandas as pd

    from earthembed.outputs import atomic_path

    df = pd.DataFrame(rows)
    df = df[sorted(df.columns)] if len(df.columns) else df
    try:
        with atomic_path(path) as tmp:
            df.to_csv(tmp, index=False)
    except OSError as e:
        raise write_error(path, e, "free space and re-run the same command: it resumes and writes it again") from e


def rows_before(path: Path, first_step: int) -> list[dict[str, Any]]:
    """Rows of an existing ``metrics.csv`` before ``first_step``: the history of a run resumed from a checkpoint
    written before checkpoints carried their rows."""
    import pandas as pd

    if not path.exists():
        return []
    old = pd.read_csv(path)
    if "step" not in old:
        return []
    old = old[old["step"] < first_step]
    return [{k: v for k, v in r.items() if not pd.isna(v)} for r in old.to_dict("records")]


class ExactResume(L.Callback):
    """Writes ``path`` every ``every_n_steps`` optimiser steps (at the start of the next batch, see the module
    docstring) and carries in it the random states and the logged rows (``logger.rows``), which it restores in a
    resumed run: the random states right before the first training step, the rows at once.

    ``restored_rows``: whether the checkpoint resumed from carried rows (older ones did not)."""

    def __init__(self, path: str | Path, every_n_steps: int, logger: RunLogger | None = None) -> None:
        self.path, self.every_n_steps, self.logger = Path(path), int(every_n_steps), logger
        self.restored_rows = False
        self._pending_rng: Mapping[str, Any] | None = None
        self._saved_step = -1
        self._between_batches = False

    def state_dict(self) -> dict[str, Any]:
        return {"rng": rng_states(), "rows": list(self.logger.rows) if self.logger is not None else []}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending_rng = state_dict.get("rng")
        if self.logger is not None and "rows" in state_dict:
            self.logger.rows = [dict(r) for r in state_dict["rows"]]
            self.restored_rows = True

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        step = int(trainer.global_step)
        if self._pending_rng is not None:  # the first batch of a resumed run: where the checkpoint was written
            set_rng_states(self._pending_rng)
            self._pending_rng = None
            self._saved_step = step
            return
        if self.every_n_steps > 0 and step > 0 and step % self.every_n_steps == 0 and step != self._saved_step:
            self._between_batches = True
            try:
                trainer.save_checkpoint(self.path, weights_only=False)
            finally:
                self._between_batches = False
            self._saved_step = step

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if not self._between_batches:
            return
        # Lightning counts a batch as "ready" once fetched, before its on_train_batch_start: recorded as such, a
        # restart would take the checkpoint for one written inside a batch and shift the logger's step by one
        progress = checkpoint["loops"]["fit_loop"]["epoch_loop.batch_progress"]
        for counts in (progress["total"], progress["current"]):
            counts["ready"] = counts["started"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written whole or not at all, beside their target (see the module docstring)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        from earthembed.outputs import atomic_path

        path = Path(path)
        buf = io.BytesIO()  # serialised first: torch's writer turns a failed file write into an opaque error
        torch.save(checkpoint, buf)
        try:
            with atomic_path(path) as tmp, open(tmp, "wb") as f:
                f.write(buf.getbuffer())
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            keep = "the previous checkpoint is kept; " if path.exists() else ""
            cause = OSError(e.errno, e.strerror)  # atomic_path's own WriteError says less about resuming
            raise write_error(path, cause, f"{keep}free space and re-run the same command to resume") from e
