"""Helpers shared by the training benchmarks (``bench_pretrain.py``, ``bench_sampler.py``, ``bench_segment.py``): the
same batches through a bare PyTorch loop and through the Lightning Trainer, timed after a warm-up, and each path's
peak memory; the random s2 + s1 inputs (tensors and an on-disk store) of the contrastive benchmarks.

Peak memory is measured in a child process per path (``measure_in_child``): on CPU the peak resident set size
(``ru_maxrss``) of a process that ran only that path; on CUDA ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import multiprocessing as mp
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch


class StepTimer:
    """Lightning callback timing the training steps after ``warmup`` (chips per step: ``key(batch, module)``),
    in wall time and in CPU time of this process (all its threads)."""

    def __init__(self, warmup: int, key: Callable[[Any, Any], int]) -> None:
        import lightning as L

        outer = self

        class CB(L.Callback):
            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                if trainer.global_step == warmup:
                    outer.t0, outer.c0 = time.perf_counter(), time.process_time()

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                if trainer.global_step > warmup:
                    outer.chips += key(batch, pl_module)
                outer.t1, outer.c1 = time.perf_counter(), time.process_time()

        self.cb, self.chips, self.t0, self.t1, self.c0, self.c1 = CB(), 0, 0.0, 0.0, 0.0, 0.0

    @property
    def rate(self) -> float:
        """Chips per wall-clock second."""
        return self.chips / (self.t1 - self.t0)

    @property
    def cpu_rate(self) -> float:
        """Chips per CPU-second of this process: robust to other load on the machine."""
        return self.chips / (self.c1 - self.c0)


def lightning_timer(module: Any, loader: Iterable, steps: int, warmup: int, key: Callable[[Any, Any], int],
                    device: str = "cpu") -> StepTimer:
    """The :class:`StepTimer` of ``Trainer.fit`` over ``loader`` for ``steps`` timed steps after ``warmup`` (no
    logger, no checkpoints, no progress bar: the Trainer's own per-step cost)."""
    import lightning as L

    timer = StepTimer(warmup, key)
    trainer = L.Trainer(
        max_steps=steps + warmup, accelerator=device, devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[timer.cb], log_every_n_steps=10,
        use_distributed_sampler=False,
    )
    trainer.fit(module, train_dataloaders=loader)
    return timer


def lightning_rate(module: Any, loader: Iterable, steps: int, warmup: int, key: Callable[[Any, Any], int],
                   device: str = "cpu") -> float:
    """Chips/s of ``Trainer.fit`` (see :func:`lightning_timer`)."""
    return lightning_timer(module, loader, steps, warmup, key, device).rate


def bare_rate(step: Callable[[Any], torch.Tensor], optimizer: torch.optim.Optimizer, scheduler: Any, batches: list,
              steps: int, warmup: int, count: Callable[[Any], int]) -> float:
    """Chips/s of a plain loop: ``loss = step(batch)``, backward, optimizer and scheduler step."""
    n = 0
    t0 = time.perf_counter()
    for i in range(steps + warmup):
        if i == warmup:
            t0 = time.perf_counter()
        b = batches[i % len(batches)]
        loss = step(b)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if i >= warmup:
            n += count(b)
    return n / (time.perf_counter() - t0)


def peak_memory_mb(device: str = "cpu") -> float:
    """Peak memory of this process so far: CUDA allocator peak on a GPU, else peak RSS (Linux: KiB)."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(fn: Callable[..., Any], args: tuple, device: str, q: Any) -> None:
    rates = fn(*args)
    q.put((rates, peak_memory_mb(device)))


def measure_in_child(fn: Callable[..., Any], *args: Any, device: str = "cpu") -> tuple[Any, float]:
    """(``fn(*args)``, peak memory in MiB) with ``fn`` run in a fresh spawned process, so the peak is its own."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(fn, args, device, q))
    p.start()
    rates, peak = q.get()
    p.join()
    return rates, peak


def print_rows(title: str, rows: list[tuple[str, list[float], float | None]], unit: str = "chips/s") -> None:
    """A table: path, best and median rate over rounds, peak memory (MiB) when measured."""
    print(f"\n{title}")
    print(f"{'path':<46}{'best':>9}{'median':>9}{'peak MiB':>10}  {unit}")
    for name, rates, peak in rows:
        mem = f"{peak:>10.0f}" if peak is not None else f"{'':>10}"
        print(f"{name:<46}{max(rates):>9.1f}{float(np.median(rates)):>9.1f}{mem}")


# -- the contrastive benchmarks' inputs ----------------------------------------------------------------------------
def s2_s1_bands() -> dict[str, list[str]]:
    """Sentinel-2 L1C (13 bands) + Sentinel-1 (VV, VH)."""
    from earthembed.data.modalities import get_modality

    return {"s2": get_modality("s2_l1c").band_names, "s1": ["VV", "VH"]}


def random_s2_s1_batches(n: int, batch: int, size: int) -> list[dict[str, torch.Tensor]]:
    """``n`` batches of random s2 + s1 tensors, S1 absent on ~25% of chips (as in the synthetic AOI)."""
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        b = {k: torch.randn(batch, len(v), size, size, generator=g) for k, v in s2_s1_bands().items()}
        b.update({f"{k}_present": torch.rand(batch, generator=g) > (0.25 if k == "s1" else 0.0) for k in ("s2", "s1")})
        out.append(b)
    return out


def s2_s1_store(path: Path, n: int, size: int) -> Path:
    """A chip store of ``n`` random s2 + s1 chips (S1 missing on every fourth) at ``path``."""
    from earthembed.data.modalities import get_modality
    from earthembed.data.store import ChipRecord, StoreWriter

    rng = np.random.default_rng(0)
    with StoreWriter(path, [get_modality("s2_l1c"), get_modality("s1_grd_db")], size, batch_size=256) as w:
        for i in range(n):
            arrays = {"s2": rng.integers(100, 4000, (13, size, size)).astype("uint16")}
            if i % 4:
                arrays["s1"] = rng.normal(-12, 3, (2, size, size)).astype("float32")
            w.add(ChipRecord(f"c{i:05d}", arrays))
    return path


def synth_in_child(path: Path, **kwargs: Any) -> Path:
    """``generate_synthetic_aoi(path, overwrite=True, **kwargs)`` in a child process, so the benchmark's own process
    starts as `earthembed embed` does (a fresh heap: generating thousands of chips in-process first was measured to
    cost the pipeline a few % more than a bare loop)."""
    args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    gen = f"from earthembed.data.synth import generate_synthetic_aoi as g; g({str(path)!r}, {args}, overwrite=True)"
    subprocess.run([sys.executable, "-c", gen], check=True)
    return path
