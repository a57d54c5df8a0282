"""Pretraining from disk vs from memory per sampler (chips/s), tiny contrastive config; issue 8's target is
disk >= 0.9x in-memory with the chunk-aware sampler.

Both paths use the same ``ContrastivePretrainModule`` (model, heads, augmentation, loss), the same AdamW
param groups and warmup-cosine schedule, and the same pre-materialised batches; the difference is the
Trainer's per-step overhead (hooks, logging, schedulers). Further rows add real data loading: Lightning
over ``ChipDataModule`` reading a synthetic chip store on disk, once per sampler (``chunks``: the
chunk-aware shuffle, the default; ``shuffle``: a uniform permutation), interleaved with the in-memory
Lightning rounds so that machine drift hits both alike; the last lines give disk / in-memory per sampler
(target >= 0.9).

    .venv/bin/python benchmarks/bench_sampler.py --steps 30 --warmup 5
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import bare_rate, lightning_timer, random_s2_s1_batches, s2_s1_bands, s2_s1_store  # noqa: E402


def _module(bands: dict[str, list[str]], seed: int = 0):
    from earthembed.pretrain.contrastive import ContrastivePretrainModule
    from earthembed.pretrain.run import load_config

    cfg, _ = load_config("contrastive_tiny")
    torch.manual_seed(seed)
    args = {k: v for k, v in cfg["model"].items() if k not in ("name", "modalities")}
    return ContrastivePretrainModule(
        cfg["model"]["name"], {**args, "modalities": bands}, lr=cfg["train"]["lr"],
        weight_decay=cfg["train"]["weight_decay"], warmup_steps=cfg["train"]["warmup_steps"],
        augment=cfg["augment"], gather_distributed=False, **cfg["objective_args"],
    ), cfg


def _chips(batch, mod) -> int:
    return int(batch["s2"].shape[0])


def bare_loop(bands, batches, steps: int, warmup: int) -> float:
    from earthembed.optim import warmup_cosine

    mod, cfg = _module(bands)
    mod.train()
    opt = torch.optim.AdamW(mod.param_groups(), lr=cfg["train"]["lr"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, cfg["train"]["warmup_steps"], steps + warmup))
    return bare_rate(lambda b: mod.contrastive_step(b)[0], opt, sched, batches, steps, warmup, lambda b: _chips(b, mod))


CPU_RATES: list[float] = []  # chips per CPU-second of every lightning_fit call, in call order


def lightning_fit(bands, loader, steps: int, warmup: int) -> float:
    timer = lightning_timer(_module(bands)[0], loader, steps, warmup, _chips)
    CPU_RATES.append(timer.cpu_rate)
    return timer.rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--crop", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--store-chips", type=int, default=1024, help="0 skips the on-disk store row")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    ap.add_argument("--samplers", default="chunks,shuffle", help="ChipDataModule samplers to time on disk")
    ap.add_argument("--shuffle-window", type=int, default=16, help="chunks per shuffle window (chunks sampler)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    bands = s2_s1_bands()
    batches = random_s2_s1_batches(8, a.batch_size, a.crop)
    samplers = [x for x in a.samplers.split(",") if x] if a.store_chips else []
    with tempfile.TemporaryDirectory() as tmp:
        store = s2_s1_store(Path(tmp) / "store", a.store_chips, a.crop) if samplers else None
        # alternate all paths over several rounds: on a shared machine the per-round ratios are the fair numbers
        bare, light = [], []
        read: dict[str, list[float]] = {s: [] for s in samplers}
        disk: dict[str, list[float]] = {s: [] for s in samplers}
        cpu: dict[str, list[float]] = {s: [] for s in ["memory", *samplers]}
        for _ in range(a.repeats):
            bare.append(bare_loop(bands, batches, a.steps, a.warmup))
            light.append(lightning_fit(bands, DataLoader(batches, batch_size=None), a.steps, a.warmup))
            cpu["memory"].append(CPU_RATES[-1])
            for smp in samplers:
                read[smp].append(_read_rate(store, bands, a, smp))
                disk[smp].append(lightning_fit(bands, _datamodule(store, bands, a, smp).train_dataloader(), a.steps, a.warmup))
                cpu[smp].append(CPU_RATES[-1])
    rows = [("bare PyTorch loop, in-memory batches", bare), ("Lightning Trainer, in-memory batches", light)]
    for smp in samplers:
        rows.append((f"ChipDataModule alone, sampler={smp}", read[smp]))
        rows.append((f"Lightning + ChipDataModule (disk), {smp}", disk[smp]))
    print(f"\ntiny contrastive config, batch {a.batch_size}, {a.crop}x{a.crop} chips, s2 (13) + s1 (2), "
          f"{a.steps} timed steps after {a.warmup} warm-up, {a.repeats} rounds, torch threads {torch.get_num_threads()}"
          + (f", store {a.store_chips} chips, shuffle window {a.shuffle_window} chunks" if samplers else ""))
    print(f"{'path':<46}{'best':>9}{'median':>9}  chips/s")
    for name, rates in rows:
        print(f"{name:<46}{max(rates):>9.1f}{float(np.median(rates)):>9.1f}")
    print(f"Lightning throughput relative to bare loop (best rounds): {100 * (max(light) / max(bare) - 1):+.1f}%")
    for smp in samplers:
        ratios = [d / m for d, m in zip(disk[smp], light, strict=True)]
        cpu_ratios = [d / m for d, m in zip(cpu[smp], cpu["memory"], strict=True)]
        print(f"disk / in-memory Lightning, sampler={smp}: wall chips/s median of rounds {np.median(ratios):.2f} "
              f"(rounds {', '.join(f'{r:.2f}' for r in ratios)}); chips per CPU-second {np.median(cpu_ratios):.2f} "
              f"(rounds {', '.join(f'{r:.2f}' for r in cpu_ratios)})")


def _datamodule(store: Path, bands, a: argparse.Namespace, sampler: str):
    from earthembed.pretrain.datamodule import ChipDataModule

    return ChipDataModule(store, bands, batch_size=a.batch_size, crop_size=a.crop, splits="all", sampler=sampler,
                          shuffle_window=a.shuffle_window)


def _read_rate(store: Path, bands, a: argparse.Namespace, sampler: str) -> float:
    """Chips/s of one epoch of the data module alone (read + normalise + crop, no model)."""
    t = time.perf_counter()
    n = sum(b["s2"].shape[0] for b in _datamodule(store, bands, a, sampler).train_dataloader())
    return n / (time.perf_counter() - t)


if __name__ == "__main__":
    main()
