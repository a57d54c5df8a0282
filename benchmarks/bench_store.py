"""Chip-store throughput: ingest a synthetic AOI, then read it back the ways the pipeline does.

Measures ingest (synthetic generation alone, and generation + store writes + index + statistics),
sequential streaming (``ChipStore.iter_batches``, used by embed), random access by index
(``ChipStore.read`` per chip, and sorted random batches), and a ``ChipDataset`` + ``DataLoader`` pass
(used by pretraining). MB/s always counts raw array bytes as stored (dtype of the store), so the rows
are comparable; the store size on disk is reported separately.

    python benchmarks/bench_store.py --chips 10000 --chip-size 32 --json /tmp/bench_store.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

MB = 1e6


def _disk_usage(path: Path) -> tuple[int, int, int]:
    """(apparent bytes, allocated bytes, number of files) under ``path``."""
    apparent = allocated = files = 0
    for root, _dirs, names in os.walk(path):
        for n in [*names, *_dirs]:
            st = os.lstat(os.path.join(root, n))
            allocated += st.st_blocks * 512
            if n in names:
                apparent += st.st_size
                files += 1
    return apparent, allocated, files


def _chip_bytes(store: Any, modalities: list[str]) -> int:
    cs = store.chip_size
    return sum(store.modality(m).num_bands * cs * cs * np.dtype(store.modality(m).dtype).itemsize for m in modalities)


def _row(name: str, chips: int, nbytes: float, seconds: float, note: str = "") -> dict[str, Any]:
    return {
        "test": name,
        "chips": chips,
        "seconds": round(seconds, 3),
        "chips_per_s": round(chips / seconds, 1),
        "MB_per_s": round(nbytes / MB / seconds, 1),
        "note": note,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from torch.utils.data import DataLoader

    from earthembed.data.dataset import ChipDataset
    from earthembed.data.synth import SyntheticAOI, generate_synthetic_aoi

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="earthembed-bench-", dir="/tmp"))
    path = work / f"synth_{args.chips}_{args.chip_size}_cc{args.chunk_chips}"
    rows: list[dict[str, Any]] = []
    n = args.chips

    # -- ingest ---------------------------------------------------------------------------------------
    aoi = SyntheticAOI(n, args.chip_size, args.seed)
    t = time.perf_counter()
    raw = 0
    for s in range(0, n, args.batch_size):
        raw += aoi.batch(s, min(s + args.batch_size, n)).nbytes
    rows.append(_row("generate only (no store)", n, raw, time.perf_counter() - t, "numpy, vectorised per batch"))
    t = time.perf_counter()
    store = generate_synthetic_aoi(
        path, n, args.chip_size, args.seed, overwrite=True, batch_size=args.batch_size, chunk_chips=args.chunk_chips
    )
    rows.append(_row("ingest: generate + write + index + stats", n, raw, time.perf_counter() - t,
                     f"batch {args.batch_size}, chunk {args.chunk_chips} chip(s)"))
    apparent, allocated, files = _disk_usage(path)

    mods = list(store.modalities)
    per_chip = _chip_bytes(store, mods)

    # -- sequential streaming ---------------------------------------------------------------------------
    t = time.perf_counter()
    seen = 0
    for ii, _batch in store.iter_batches(mods, batch_size=256):
        seen += len(ii)
    rows.append(_row("sequential iter_batches (256)", seen, seen * per_chip, time.perf_counter() - t, "all modalities"))

    # -- random access -----------------------------------------------------------------------------------
    rng = np.random.default_rng(args.seed)
    k = min(args.random, n)
    pick = rng.choice(n, k, replace=False)
    t = time.perf_counter()
    for i in pick.tolist():
        for m in mods:
            store.read(m, i)
    rows.append(_row(f"random read, 1 chip x {len(mods)} modalities", k, k * per_chip, time.perf_counter() - t,
                     f"{k} random chips"))
    t = time.perf_counter()
    for s in range(0, k, 256):
        sel = np.sort(pick[s : s + 256])
        for m in mods:
            store.read(m, sel)
    rows.append(_row("random read, sorted batches of 256", k, k * per_chip, time.perf_counter() - t,
                     "orthogonal selection"))

    # -- ChipDataset + DataLoader ----------------------------------------------------------------------------
    ds = ChipDataset(store)  # non-categorical modalities, normalised float32
    ds_mods = list(ds.bands)
    ds_bytes = _chip_bytes(store, ds_mods)
    m = min(args.loader_chips or len(ds), len(ds))
    sub = torch.utils.data.Subset(ds, rng.choice(len(ds), m, replace=False).tolist())
    for workers in args.workers:
        loader = DataLoader(sub, batch_size=args.loader_batch, shuffle=True, num_workers=workers,
                            generator=torch.Generator().manual_seed(args.seed))
        t = time.perf_counter()
        got = sum(len(b["idx"]) for b in loader)
        rows.append(_row(f"ChipDataset + DataLoader, {workers} workers", got, got * ds_bytes, time.perf_counter() - t,
                         f"shuffled, batch {args.loader_batch}, {'+'.join(ds_mods)}"))

    result = {
        "config": {
            "chips": n, "chip_size": args.chip_size, "seed": args.seed, "batch_size": args.batch_size,
            "chunk_chips": args.chunk_chips, "modalities": mods, "raw_bytes_per_chip": per_chip,
        },
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "store": {
            "path": str(path), "raw_MB": round(raw / MB, 1), "disk_apparent_MB": round(apparent / MB, 1),
            "disk_allocated_MB": round(allocated / MB, 1), "files": files,
        },
        "results": rows,
    }
    if not args.keep:
        shutil.rmtree(path, ignore_errors=True)
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return result


def markdown(result: dict[str, Any]) -> str:
    c, s = result["config"], result["store"]
    lines = [
        f"{c['chips']} chips of {c['chip_size']}x{c['chip_size']} px, modalities {', '.join(c['modalities'])} "
        f"({c['raw_bytes_per_chip'] / 1e3:.1f} kB raw per chip), chunk {c['chunk_chips']} chip(s), "
        f"{result['machine']['cpus']} CPUs",
        "",
        f"Store: {s['raw_MB']} MB raw arrays (incl. mask), {s['disk_apparent_MB']} MB in files, "
        f"{s['disk_allocated_MB']} MB allocated on disk, {s['files']} files",
        "",
        "| test | chips | s | chips/s | MB/s | note |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in result["results"]:
        lines.append(f"| {r['test']} | {r['chips']} | {r['seconds']:.2f} | {r['chips_per_s']:.0f} | "
                     f"{r['MB_per_s']:.1f} | {r['note']} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--chips", type=int, default=10_000)
    p.add_argument("--chip-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=256, help="ingest batch size")
    p.add_argument("--chunk-chips", type=int, default=16, help="Zarr chunk length along the chip axis")
    p.add_argument("--random", type=int, default=2000, help="chips read by random access")
    p.add_argument("--loader-chips", type=int, default=2000, help="random chips per DataLoader pass (0 = all)")
    p.add_argument("--loader-batch", type=int, default=64)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--workdir", help="where to write the store (default: a new temp dir under /tmp)")
    p.add_argument("--keep", action="store_true", help="keep the store afterwards")
    p.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = p.parse_args()
    result = run(args)
    print(markdown(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
