"""What a user sees while a Lightning Trainer runs: earthembed's own progress, not third-party chatter.

Lightning prints banners on every ``Trainer`` (``GPU available: False, used: False``, ``TPU available``, an
advertisement for its cloud logger, ``Trainer.fit stopped: max_steps reached``, a warning when an epoch has fewer
batches than the logging interval) and its pytree helper triggers a torch ``FutureWarning`` about ``LeafSpec``
on every run; none of it is actionable for a user of earthembed. :func:`quiet_lightning` drops exactly those
messages (by their start) and leaves every other log line and warning alone, so what matters to the user (a
checkpoint that cannot be read, a config Lightning rejects, too few batches for the logging interval) still
reaches them.

:class:`StepProgress` replaces Lightning's progress bar, which counts epochs (``Epoch 27/-2`` when only
``max_steps`` is set), by optimiser steps done / total steps through :mod:`earthembed.progress`: a tqdm bar on a
terminal, a plain line every 10% in logs, nothing with ``quiet``.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import lightning as L

from earthembed.progress import Progress, progress

NOISE_PREFIXES = ("GPU available:", "TPU available:", "HPU available:", "IPU available:", "\N{ELECTRIC LIGHT BULB} Tip:",
                  "`Trainer.fit` stopped:")
"""Start of the Lightning info messages that are dropped (everything else passes)."""
_RANK_ZERO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).lstrip().startswith(NOISE_PREFIXES)


def quiet_lightning() -> None:
    """Drop Lightning's device banners and logger tip, and torch's ``LeafSpec`` deprecation warning raised
    inside Lightning (idempotent; other messages are untouched)."""
    for name in _RANK_ZERO_LOGGERS:
        log = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) for f in log.filters):
            log.addFilter(_DropNoise())
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)
    # small stores have fewer batches per epoch than the logging interval: metrics are still logged per step
    warnings.filterwarnings("ignore", message=r"The number of training batches \(\d+\) is smaller than the logging")


class StepProgress(L.Callback):
    """Optimiser steps done / total of a fit (rank 0 only), through :func:`earthembed.progress.progress`.

    The total is ``max_steps`` when set, else Lightning's estimate from ``max_epochs``; a resumed run counts
    the steps still to do (its description says where it resumed)."""

    def __init__(self, desc: str = "pretrain", quiet: bool = False) -> None:
        self.desc, self.quiet = desc, quiet
        self._bar: Progress | None = None
        self._done = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else trainer.estimated_stepping_batches
        start = int(trainer.global_step)
        desc = self.desc + (f" (resumed at step {start})" if start else "")
        self._done = start
        self._bar = progress(total=max(0, int(total) - start), desc=desc, unit="step", quiet=self.quiet)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._bar is None:
            return
        delta = int(trainer.global_step) - self._done
        if delta > 0:
            self._done += delta
            self._bar.update(delta)

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._close()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._close()
