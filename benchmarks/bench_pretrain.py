"""Pretraining throughput (chips/s) and peak memory: Lightning Trainer vs a bare PyTorch loop.

Both paths use the same objective module (model, heads, augmentation, loss), the same AdamW param groups and
warmup-cosine schedule, and the same pre-materialised batches; the difference is the Trainer's per-step
overhead (hooks, logging, schedulers). A further row adds real data loading: Lightning over
``ChipDataModule`` reading a synthetic chip store on disk.

``--objective contrastive`` (default): the ``contrastive_tiny`` config on random s2 + s1 tensors.
``--objective mpmae``: the ``mpmae_atto`` config (ConvNeXt V2 atto, every pretext task of the synthetic AOI:
S1, coherence, DEM + slope, WorldCover, chip location); its batches come from a generated synthetic store.

Every (path, round) runs in a fresh spawned process, so its peak resident memory (``ru_maxrss``; on CUDA
``max_memory_allocated``) belongs to that path alone; "base" is the process's RSS before training starts
(interpreter, torch, batches), so peak - base is what training adds.

    .venv/bin/python benchmarks/bench_pretrain.py --steps 30 --warmup 5
    .venv/bin/python benchmarks/bench_pretrain.py --objective mpmae --batch-size 16 --steps 10 --warmup 2 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    bare_rate,
    lightning_rate,
    measure_in_child,
    peak_memory_mb,
    random_s2_s1_batches,
    s2_s1_bands,
    s2_s1_store,
)

CONFIGS = {"contrastive": "contrastive_tiny", "mpmae": "mpmae_atto"}


def _config(objective: str, batch: int, crop: int) -> dict[str, Any]:
    from earthembed.pretrain.run import load_config

    return load_config(CONFIGS[objective], [f"data.batch_size={batch}", f"data.crop_size={crop}"])[0]


def _module(spec: dict[str, Any]):
    """The objective's module as ``earthembed pretrain`` builds it (plan from the store for mpmae)."""
    from earthembed.pretrain.run import OBJECTIVES

    cfg = _config(spec["objective"], spec["batch"], spec["crop"])
    t = cfg["train"]
    cls = OBJECTIVES.get(cfg["objective"])
    if spec["objective"] == "contrastive":
        inputs, planned = s2_s1_bands(), {}
    else:
        from earthembed.data.store import ChipStore

        plan = cls.plan(ChipStore(spec["store"]), cfg, "bench")
        inputs, planned = plan.inputs, plan.args
    lr = t["lr"] if t["base_lr"] is None else t["base_lr"] * spec["batch"] / 256
    torch.manual_seed(0)
    args = {k: v for k, v in cfg["model"].items() if k not in ("name", "modalities")}
    return cls(cfg["model"]["name"], {**args, "modalities": inputs}, lr=lr, weight_decay=t["weight_decay"],
               warmup_steps=t["warmup_steps"], betas=t["betas"], augment=cfg["augment"], gather_distributed=False,
               **cfg["objective_args"], **planned)


def _datamodule(spec: dict[str, Any]):
    from earthembed.data.store import ChipStore
    from earthembed.pretrain.datamodule import ChipDataModule
    from earthembed.pretrain.run import OBJECTIVES

    cfg = _config(spec["objective"], spec["batch"], spec["crop"])
    store = ChipStore(spec["store"])
    plan = OBJECTIVES.get(cfg["objective"]).plan(store, cfg, "bench")
    return ChipDataModule(store, plan.inputs, batch_size=spec["batch"], crop_size=spec["crop"], splits="all",
                          reads=plan.reads)


def _rows(batch: dict[str, Any], mod) -> int:
    return int(next(v for k, v in batch.items() if k in mod.model.modalities).shape[0])


def bare_loop(mod, batches, steps: int, warmup: int) -> float:
    from earthembed.optim import warmup_cosine

    mod.train()
    hp = mod.hparams
    opt = torch.optim.AdamW(mod.param_groups(), lr=hp.lr, betas=tuple(hp.betas))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, hp.warmup_steps, steps + warmup))
    return bare_rate(lambda b: mod.step(b)[0], opt, sched, batches, steps, warmup, lambda b: _rows(b, mod))


def _measure(spec: dict[str, Any]) -> dict[str, float]:
    """One path in this (fresh) process: chips/s and memory."""
    from torch.utils.data import DataLoader

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    mod = _module(spec)
    if spec["path"] == "datamodule":
        dm = _datamodule(spec)
        base = peak_memory_mb()
        t = time.perf_counter()
        n = sum(_rows(b, mod) for b in dm.train_dataloader())
        return {"rate": n / (time.perf_counter() - t), "base": base}
    if spec["path"] == "lightning_disk":
        loader = _datamodule(spec).train_dataloader()
        batches = None
    else:
        batches = torch.load(spec["batches"], weights_only=True)
        loader = DataLoader(batches, batch_size=None)
    base = peak_memory_mb()
    if spec["path"] == "bare":
        rate = bare_loop(mod, batches, spec["steps"], spec["warmup"])
    else:
        rate = lightning_rate(mod, loader, spec["steps"], spec["warmup"], _rows)
    return {"rate": rate, "base": base}


def run_isolated(spec: dict[str, Any]) -> dict[str, float]:
    """:func:`_measure` in a spawned process, so its peak memory is its own."""
    out, peak = measure_in_child(_measure, spec)
    return {**out, "peak": peak}


def _synthetic_store(path: Path, n: int, size: int, objective: str) -> Path:
    """The synthetic AOI for mpmae (it needs targets); s2 + s1 random pixels for contrastive."""
    if objective == "mpmae":
        from earthembed.data.synth import generate_synthetic_aoi

        generate_synthetic_aoi(path, chips=n, chip_size=size)
        return path
    return s2_s1_store(path, n, size)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--objective", choices=sorted(CONFIGS), default="contrastive")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--crop", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--store-chips", type=int, default=1024, help="0 skips the on-disk store rows (contrastive)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = None
        if a.store_chips or a.objective == "mpmae":
            store = _synthetic_store(Path(tmp) / "store", max(a.store_chips, 4 * a.batch_size), a.crop, a.objective)
        spec = {"objective": a.objective, "batch": a.batch_size, "crop": a.crop, "steps": a.steps, "warmup": a.warmup,
                "threads": a.threads, "store": str(store) if store else None, "batches": str(Path(tmp) / "batches.pt")}
        if a.objective == "mpmae":  # real targets: the first batches of the data module, materialised once
            it = iter(_datamodule(spec).train_dataloader())
            batches = [next(it) for _ in range(4)]
        else:
            batches = random_s2_s1_batches(8, a.batch_size, a.crop)
        torch.save(batches, spec["batches"])
        # alternate the two paths over several rounds: on a shared machine the best round is the fair number
        res: dict[str, list[dict[str, float]]] = {"bare": [], "lightning": []}
        for _ in range(a.repeats):
            for path in res:
                res[path].append(run_isolated({**spec, "path": path}))
        rows = [("bare PyTorch loop, in-memory batches", res["bare"]), ("Lightning Trainer, in-memory batches", res["lightning"])]
        if a.store_chips:
            rows.append(("ChipDataModule alone (read + normalise)", [run_isolated({**spec, "path": "datamodule"})]))
            rows.append(("Lightning Trainer + ChipDataModule (disk)", [run_isolated({**spec, "path": "lightning_disk"})]))
    print(f"\n{CONFIGS[a.objective]} config, batch {a.batch_size}, {a.crop}x{a.crop} chips, {a.steps} timed steps after "
          f"{a.warmup} warm-up, {a.repeats} rounds, torch threads {a.threads or torch.get_num_threads()}")
    print(f"{'path':<44}{'best':>9}{'median':>9}  chips/s {'peak RSS':>10}{'base':>8}  MiB")
    for name, r in rows:
        rates = [x["rate"] for x in r]
        print(f"{name:<44}{max(rates):>9.1f}{float(np.median(rates)):>9.1f}  {'':7}{max(x['peak'] for x in r):>10.0f}"
              f"{min(x['base'] for x in r):>8.0f}")
    ratios = [lt["rate"] / b["rate"] for lt, b in zip(res["lightning"], res["bare"], strict=True)]
    best = max(x["rate"] for x in res["lightning"]) / max(x["rate"] for x in res["bare"])
    print(f"Lightning / bare loop: best rounds {best:.3f}, median of per-round ratios {float(np.median(ratios)):.3f}")


if __name__ == "__main__":
    main()
