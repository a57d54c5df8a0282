"""Sharded embedding: the engine's overhead (``--engine ray`` with 2 workers vs ``--engine local`` on the same
store, one run) and memory per worker as the store grows (10k -> 100k chips: it must stay flat, a worker holds
one shard at a time).

    .venv/bin/python benchmarks/bench_shards.py --chips 10000,100000 --chip-size 16 --shard-chips 2048

Each size gets its own synthetic store (S2 only, generated in a child process) and a small export
(``resnet18_small`` on S2, ``--model``). Throughput: chips per second of the whole command (model load, reads,
forward, shard writes and commits; Ray's cluster start excluded: ``ray.init`` is timed apart). Memory: the peak
resident set of the process doing the work: the local engine in a child process (``ru_maxrss``), each Ray
worker from its own ``ru_maxrss`` (reported by the worker with every shard), and one shard worker alone
(``--worker-shards`` shards after its model load, in a child process, one torch thread: a Ray worker's work
without Ray or the driver).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def _make(work: Path, chips: int, size: int, model: str) -> tuple[Path, Path]:
    store = work / f"store{chips}"
    if not (store / "earthembed.json").exists():
        gen = ("from earthembed.data.synth import generate_synthetic_aoi as g; from earthembed.data.store import ChipStore; "
               f"g({str(store)!r}, chips={chips}, chip_size={size}, overwrite=True)")
        subprocess.run([sys.executable, "-c", gen], check=True)
    from earthembed.data.normalize import Normalizer
    from earthembed.data.store import ChipStore
    from earthembed.models.export import export_model
    from earthembed.models.registry import build_model

    st = ChipStore(store)
    torch.manual_seed(0)
    export = work / f"export_{model}"
    if not (export / "model.json").exists():
        export_model(build_model(model, modalities={"s2": st.band_names("s2")}), export, Normalizer.from_store(st))
    return store, export


def _local(q: mp.Queue, export: str, store: str, out: str, shard_chips: int, batch: int) -> None:
    from earthembed.embed.run import embed_store

    t0 = time.perf_counter()
    embed_store(export, store, out + "/", shard_chips=shard_chips, batch_size=batch, modalities=["s2"], progress=False)
    q.put((time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


def _worker(q: mp.Queue, export: str, store: str, out: str, shard_chips: int, batch: int, shards: int) -> None:
    from earthembed.embed.engines import ShardJob, ShardWorker
    from earthembed.embed.shards import plan_shards, prepare_dataset
    from earthembed.models.export import load_model
    from earthembed.storage import location

    torch.set_num_threads(1)  # as a Ray worker of 2 on 2 CPUs
    _, meta = load_model(export)
    with open(Path(store) / "earthembed.json") as f:  # not ChipStore(store): its open checks are the driver's
        sm = json.load(f)
    bands = {"s2": [b["name"] for b in sm["modalities"]["s2"]["bands"]]}
    plan = plan_shards(int(sm["n_chips"]), 16, shard_chips)[:shards]
    prepare_dataset(location(out), {"format": "bench"}, overwrite=False)
    job = ShardJob(export, store, out, bands, meta["normalization"], batch, "cpu", "bench", "bench",
                   {"model_id": "bench", "n_chips": int(sm["n_chips"])})
    t0 = time.perf_counter()
    worker = ShardWorker(job)
    for s in plan:
        worker.run(s)
    q.put((time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


def run_worker(export: Path, store: Path, out: Path, shard_chips: int, batch: int, shards: int) -> tuple[float, float]:
    """(seconds, peak RSS MiB) of one shard worker alone (the one Ray runs in an actor: model load, then
    ``shards`` shards) in a fresh child process: memory per worker without the driver or Ray."""
    q: mp.Queue = mp.get_context("spawn").Queue()
    p = mp.get_context("spawn").Process(target=_worker, args=(q, str(export), str(store), str(out), shard_chips,
                                                              batch, shards))
    p.start()
    res = q.get()
    p.join()
    return res


def run_local(export: Path, store: Path, out: Path, shard_chips: int, batch: int) -> tuple[float, float]:
    """(seconds, peak RSS MiB) of the local engine in a fresh child process."""
    q: mp.Queue = mp.get_context("spawn").Queue()
    p = mp.get_context("spawn").Process(target=_local, args=(q, str(export), str(store), str(out), shard_chips, batch))
    p.start()
    res = q.get()
    p.join()
    return res


def run_ray(export: Path, store: Path, out: Path, shard_chips: int, batch: int, workers: int) -> tuple[float, dict]:
    """(seconds, the dataset's ``last_run`` record: peak RSS of each Ray worker) on the running Ray cluster."""
    from earthembed.embed.run import embed_store

    t0, c0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    embed_store(export, store, f"{out}/", engine="ray", workers=workers, shard_chips=shard_chips, batch_size=batch,
                modalities=["s2"], progress=False)
    seconds, c1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    run = json.loads((out / "_manifest.json").read_text())["last_run"]
    # CPU seconds of this process (the driver: planning, Ray Data's executor, collecting results) on the same cores
    run["driver_cpu_s"] = c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime
    return seconds, run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chips", default="10000,100000")
    ap.add_argument("--chip-size", type=int, default=16)
    ap.add_argument("--shard-chips", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--model", default="resnet18_small")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--json", default=None)
    ap.add_argument("--worker-shards", type=int, default=2,
                    help="shards embedded by one worker alone, for its peak RSS (0: skip)")
    args = ap.parse_args()
    import ray

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_shards_"))
    t0 = time.perf_counter()
    ray.init(num_cpus=mp.cpu_count(), include_dashboard=False, log_to_driver=False)
    ray_start = time.perf_counter() - t0
    rows = []
    try:
        for n in [int(x) for x in args.chips.split(",")]:
            store, export = _make(work, n, args.chip_size, args.model)
            for d in ("local", "ray", "worker"):
                shutil.rmtree(work / f"out_{d}{n}", ignore_errors=True)
            rss_worker = None
            if args.worker_shards:
                _, rss_worker = run_worker(export, store, work / f"out_worker{n}", args.shard_chips, args.batch_size,
                                           args.worker_shards)
                shutil.rmtree(work / f"out_worker{n}", ignore_errors=True)
            tl, rss_local = run_local(export, store, work / f"out_local{n}", args.shard_chips, args.batch_size)
            tr, rep = run_ray(export, store, work / f"out_ray{n}", args.shard_chips, args.batch_size, args.workers)
            shutil.rmtree(work / f"out_local{n}", ignore_errors=True)  # 100k chips of embeddings: keep the disk free
            shutil.rmtree(work / f"out_ray{n}", ignore_errors=True)
            peaks = rep.get("peak_rss_mib", {})
            rows.append({"chips": n, "local_s": tl, "ray_s": tr, "local_chips_per_s": n / tl, "ray_chips_per_s": n / tr,
                         "ray_vs_local": tl / tr, "local_peak_rss_mib": rss_local,
                         "ray_worker_peak_rss_mib": max(peaks.values()) if peaks else None, "ray_workers_seen": len(peaks),
                         "worker_alone_peak_rss_mib": rss_worker, "ray_driver_cpu_s": rep.get("driver_cpu_s")})
    finally:
        ray.shutdown()
    print(f"{args.model} on S2, {args.chip_size} px chips, shards of {args.shard_chips}, batch {args.batch_size}, "
          f"{args.workers} Ray workers on {mp.cpu_count()} CPUs (ray.init {ray_start:.1f} s, not counted)")
    print("| chips | local chips/s | ray chips/s | ray / local | local peak RSS MiB | ray worker peak RSS MiB | "
          f"one worker alone ({args.worker_shards} shards) peak RSS MiB | ray driver CPU s / ray wall s |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['chips']} | {r['local_chips_per_s']:.0f} | {r['ray_chips_per_s']:.0f} | {r['ray_vs_local']:.2f} | "
              f"{r['local_peak_rss_mib']:.0f} | {r['ray_worker_peak_rss_mib'] or float('nan'):.0f} | "
              f"{r['worker_alone_peak_rss_mib'] or float('nan'):.0f} | {r['ray_driver_cpu_s']:.0f} / {r['ray_s']:.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"ray_init_s": ray_start, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
