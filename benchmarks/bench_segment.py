"""Fine-tuning throughput (chips/s) and peak memory of ``segment``: Lightning Trainer vs a bare PyTorch loop.

Both paths run the same ``SegmentationModule.step`` (encoder + U-Net decoder, one geometry for image and mask,
cross-entropy with the ignore index), the same AdamW groups and warmup-cosine schedule
(``configure_optimizers``) on the same pre-materialised batches; the difference is the Trainer's per-step
overhead. A third path is what ``segment`` runs: Lightning over ``ChipDataset`` batches read from a synthetic
store on disk (``--store-chips 0`` skips it). Every (path, round) runs in its own spawned process, alternating
the paths, so each peak memory (CPU: peak RSS; CUDA: allocator peak) is that path's own.

    .venv/bin/python benchmarks/bench_segment.py --model multimodal_vit_tiny --steps 20 --warmup 3 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import bare_rate, lightning_rate, measure_in_child, print_rows  # noqa: E402

S2 = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]
CLASSES = 6


def _module(model: str, device: str, seed: int = 0):
    from earthembed.evaluate.finetune import SegmentationModule
    from earthembed.evaluate.segment import load_segment_config
    from earthembed.models import build_model
    from earthembed.models.dense import Segmenter

    cfg, _ = load_segment_config("segment")
    torch.manual_seed(seed)
    seg = Segmenter(build_model(model, modalities={"s2": S2}), CLASSES)
    t = cfg["train"]
    mod = SegmentationModule(seg, {"s2": S2}, "m", CLASSES, -1, lr=t["lr"], weight_decay=t["weight_decay"],
                             warmup_steps=t["warmup_steps"], augment=cfg["augment"])
    return mod.to(device)


def _batches(n: int, batch: int, size: int, device: str) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        mask = torch.randint(0, CLASSES, (batch, size, size), generator=g)
        mask[:, :2] = -1  # unlabelled rows
        out.append({"s2": torch.randn(batch, len(S2), size, size, generator=g).to(device),
                    "s2_present": torch.ones(batch, dtype=torch.bool, device=device), "mask_m": mask.to(device)})
    return out


def _chips(batch, module=None) -> int:
    return int(batch["s2"].shape[0])


def bare(model: str, batch: int, size: int, steps: int, warmup: int, device: str) -> list[float]:
    mod = _module(model, device)
    mod.train()
    opt = mod.configure_optimizers()
    return [bare_rate(lambda b: mod.step(b)[0], opt["optimizer"], opt["lr_scheduler"]["scheduler"],
                      _batches(8, batch, size, device), steps, warmup, _chips)]


def lightning(model: str, batch: int, size: int, steps: int, warmup: int, device: str) -> list[float]:
    from torch.utils.data import DataLoader

    loader = DataLoader(_batches(8, batch, size, "cpu"), batch_size=None)
    return [lightning_rate(_module(model, "cpu"), loader, steps, warmup, _chips, "gpu" if device != "cpu" else "cpu")]


def from_store(model: str, batch: int, size: int, steps: int, warmup: int, device: str, store: str) -> list[float]:
    """What ``segment`` runs: ChipDataset reads (+ normalisation) of a store's chips and masks in the loop."""
    from torch.utils.data import DataLoader, RandomSampler

    from earthembed.data.dataset import ChipDataset

    ds = ChipDataset(store, {"s2": S2}, masks=["landcover_mask"])
    sampler = RandomSampler(ds, replacement=True, num_samples=(steps + warmup) * batch)
    loader = DataLoader(ds, batch_size=batch, sampler=sampler)
    mod = _module(model, "cpu")
    mod.task = "landcover_mask"
    return [lightning_rate(mod, loader, steps, warmup, _chips, "gpu" if device != "cpu" else "cpu")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="multimodal_vit_tiny")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--store-chips", type=int, default=512, help="0 skips the on-disk store path")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args()
    args = (a.model, a.batch_size, a.size, a.steps, a.warmup, a.device)
    paths = {"bare PyTorch loop, in-memory batches": (bare, args),
             "Lightning Trainer, in-memory batches": (lightning, args)}
    with tempfile.TemporaryDirectory() as tmp:
        if a.store_chips:
            from earthembed.data.synth import generate_synthetic_aoi

            generate_synthetic_aoi(Path(tmp) / "store", chips=a.store_chips, chip_size=a.size)
            paths["Lightning Trainer + ChipDataset (disk)"] = (from_store, (*args, str(Path(tmp) / "store")))
        rates: dict[str, list[float]] = {k: [] for k in paths}
        peaks: dict[str, float] = dict.fromkeys(paths, 0.0)
        for _ in range(a.repeats):  # alternate the paths: this VM drifts between runs
            for name, (fn, fargs) in paths.items():
                r, peak = measure_in_child(fn, *fargs, device=a.device)
                rates[name] += r
                peaks[name] = max(peaks[name], peak)
    print_rows(f"segment fine-tuning, {a.model} + U-Net, batch {a.batch_size} of {a.size}x{a.size} px, s2 (12 bands), "
               f"{CLASSES} classes, {a.steps} timed steps after {a.warmup} warm-up, {a.repeats} rounds, device {a.device}, "
               f"torch threads {torch.get_num_threads()}", [(k, rates[k], peaks[k]) for k in paths])
    b, light = max(rates["bare PyTorch loop, in-memory batches"]), max(rates["Lightning Trainer, in-memory batches"])
    print(f"Lightning throughput relative to bare loop (best rounds): {100 * (light / b - 1):+.1f}%")


if __name__ == "__main__":
    main()
