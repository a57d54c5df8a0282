"""Pretraining throughput (chips/s): Lightning Trainer vs a bare PyTorch loop, tiny contrastive config.

Both paths use the same ``ContrastivePretrainModule`` (model, heads, augmentation, loss), the same AdamW
param groups and warmup-cosine schedule, and the same pre-materialised batches; the difference is the
Trainer's per-step overhead (hooks, logging, schedulers). A third row adds real data loading: Lightning
over ``ChipDataModule`` reading a synthetic chip store on disk.

    .venv/bin/python benchmarks/bench_pretrain.py --steps 30 --warmup 5
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
from _common import bare_rate, lightning_rate, print_rows  # noqa: E402


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


def _batches(bands: dict[str, list[str]], n: int, batch: int, size: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        b = {k: torch.randn(batch, len(v), size, size, generator=g) for k, v in bands.items()}
        b.update({f"{k}_present": torch.rand(batch, generator=g) > (0.25 if k == "s1" else 0.0) for k in bands})
        out.append(b)
    return out


def _chips(batch, module=None) -> int:
    return int(batch["s2"].shape[0])


def bare_loop(bands, batches, steps: int, warmup: int) -> float:
    from earthembed.optim import warmup_cosine

    mod, cfg = _module(bands)
    mod.train()
    opt = torch.optim.AdamW(mod.param_groups(), lr=cfg["train"]["lr"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, cfg["train"]["warmup_steps"], steps + warmup))
    return bare_rate(lambda b: mod.step(b)[0], opt, sched, batches, steps, warmup, _chips)


def lightning_fit(bands, loader, steps: int, warmup: int) -> float:
    mod, _ = _module(bands)
    return lightning_rate(mod, loader, steps, warmup, _chips)


def _synthetic_store(path: Path, n: int, size: int) -> Path:
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--crop", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--store-chips", type=int, default=1024, help="0 skips the on-disk store row")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    from earthembed.data.modalities import get_modality

    bands = {"s2": get_modality("s2_l1c").band_names, "s1": ["VV", "VH"]}
    batches = _batches(bands, 8, a.batch_size, a.crop)
    # alternate the two paths over several rounds: on a shared machine the best round is the fair number
    bare, light = [], []
    for _ in range(a.repeats):
        bare.append(bare_loop(bands, batches, a.steps, a.warmup))
        light.append(lightning_fit(bands, DataLoader(batches, batch_size=None), a.steps, a.warmup))
    rows = [("bare PyTorch loop, in-memory batches", bare), ("Lightning Trainer, in-memory batches", light)]
    if a.store_chips:
        from earthembed.pretrain.datamodule import ChipDataModule

        with tempfile.TemporaryDirectory() as tmp:
            store = _synthetic_store(Path(tmp) / "store", a.store_chips, a.crop)
            dm = ChipDataModule(store, bands, batch_size=a.batch_size, crop_size=a.crop, splits="all")
            t = time.perf_counter()
            n = sum(b["s2"].shape[0] for b in dm.train_dataloader())
            rows.append(("ChipDataModule alone (read + normalise)", [n / (time.perf_counter() - t)]))
            rows.append(("Lightning Trainer + ChipDataModule (disk)", [lightning_fit(bands, dm.train_dataloader(), a.steps, a.warmup)]))
    print_rows(f"tiny contrastive config, batch {a.batch_size}, {a.crop}x{a.crop} chips, s2 (13) + s1 (2), "
               f"{a.steps} timed steps after {a.warmup} warm-up, {a.repeats} rounds, torch threads {torch.get_num_threads()}",
               [(name, rates, None) for name, rates in rows])
    print(f"Lightning throughput relative to bare loop (best rounds): {100 * (max(light) / max(bare) - 1):+.1f}%")


if __name__ == "__main__":
    main()
