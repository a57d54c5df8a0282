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

Where the time went, printed after the throughput table: each Ray worker's wall and CPU seconds, its start
(process age and CPU seconds when its constructor begins: Ray's worker start and the imports), model load, and
its shards' index rows, reads, forward and writes (``last_run["workers"]`` of the manifest); the same stages of
the local engine (``run_local(..., report=)``); and the CPU seconds of every process under this one during the
Ray run (raylet, GCS, agents, monitors, workers; :class:`CpuSampler`). The local cluster is started with the
engine's own options (``ray_local_options``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import synth_in_child  # noqa: E402


def _make(work: Path, chips: int, size: int, model: str) -> tuple[Path, Path]:
    store = work / f"store{chips}"
    if not (store / "earthembed.json").exists():
        synth_in_child(store, chips=chips, chip_size=size)
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
    from earthembed.embed import engines
    from earthembed.embed.run import embed_store

    times: dict = {}
    plain = engines.run_local

    def run_local(*a, **kw):  # the same engine, with its worker's stage times kept for the report
        plain(*a, report=times, **kw)

    engines.run_local = run_local
    t0, c0 = time.perf_counter(), time.process_time()
    embed_store(export, store, out + "/", shard_chips=shard_chips, batch_size=batch, modalities=["s2"], progress=False)
    times.update(cpu_s=time.process_time() - c0, wall_s=time.perf_counter() - t0)
    q.put((time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, times))


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


def run_local(export: Path, store: Path, out: Path, shard_chips: int, batch: int) -> tuple[float, float, dict]:
    """(seconds, peak RSS MiB, CPU seconds and stage times) of the local engine in a fresh child process."""
    q: mp.Queue = mp.get_context("spawn").Queue()
    p = mp.get_context("spawn").Process(target=_local, args=(q, str(export), str(store), str(out), shard_chips, batch))
    p.start()
    res = q.get()
    p.join()
    return res


def _kind(p) -> str:
    """Which of Ray's processes ``p`` is (by its command line), for the CPU table."""
    cmd = " ".join(p.cmdline()).lower() if p.is_running() else ""
    for k in ("dashboardagent", "dashboard/agent", "runtimeenvagent", "runtime_env"):  # agents: "ray::..." too
        if k in cmd:
            return "runtime_env_agent" if "runtime" in k else "dashboard_agent"
    if "default_worker" in cmd or cmd.startswith("ray::"):  # a worker's arguments name the raylet: test it first
        return "worker"
    for k in ("gcs_server", "raylet", "log_monitor", "monitor", "dashboard"):
        if k in cmd:
            return k
    return p.name()


class CpuSampler:
    """CPU seconds of this process's descendants (Ray's raylet, GCS, agents and workers on a local cluster) during
    a run, summed by kind: each process is sampled every ``every`` seconds and its last sample kept, so that the
    actors Ray Data ends before the run returns are counted too."""

    def __init__(self, every: float = 0.25) -> None:
        import psutil  # Ray's own copy is on the path once ray is imported

        self.psutil, self.every, self.stop = psutil, every, threading.Event()
        self.first: dict[int, float] = {}
        self.last: dict[int, tuple[str, float]] = {}
        self.sample(first=True)
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def sample(self, first: bool = False) -> None:
        for p in self.psutil.Process().children(recursive=True):
            try:
                t = p.cpu_times()
                cpu = t.user + t.system
                kind = self.last[p.pid][0] if p.pid in self.last else _kind(p)
            except (self.psutil.NoSuchProcess, self.psutil.AccessDenied, self.psutil.ZombieProcess):
                continue
            if first:
                self.first[p.pid] = cpu
            self.last[p.pid] = (kind, cpu)

    def loop(self) -> None:
        while not self.stop.wait(self.every):
            self.sample()

    def done(self) -> dict[str, float]:
        self.stop.set()
        self.thread.join()
        self.sample()
        by: dict[str, float] = {}
        for pid, (kind, cpu) in self.last.items():
            by[kind] = by.get(kind, 0.0) + cpu - self.first.get(pid, 0.0)
        return {k: round(v, 2) for k, v in sorted(by.items(), key=lambda kv: -kv[1]) if v >= 0.005}


def run_ray(export: Path, store: Path, out: Path, shard_chips: int, batch: int, workers: int) -> tuple[float, dict]:
    """(seconds, the dataset's ``last_run`` record: peak RSS and stage times of each Ray worker, plus the driver's
    and Ray's processes' CPU seconds) on the running Ray cluster."""
    from earthembed.embed.run import embed_store

    sampler = CpuSampler()
    t0, c0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    embed_store(export, store, f"{out}/", engine="ray", workers=workers, shard_chips=shard_chips, batch_size=batch,
                modalities=["s2"], progress=False)
    seconds, c1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    run = json.loads((out / "_manifest.json").read_text())["last_run"]
    run["processes_cpu_s"] = sampler.done()
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

    from earthembed.embed.engines import ray_local_options

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_shards_"))
    t0 = time.perf_counter()
    ray.init(**ray_local_options(mp.cpu_count()))  # the options run_ray starts a local cluster with
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
            uptime = Path("/proc/loadavg").read_text().split()[0]
            tl, rss_local, local_times = run_local(export, store, work / f"out_local{n}", args.shard_chips, args.batch_size)
            tr, rep = run_ray(export, store, work / f"out_ray{n}", args.shard_chips, args.batch_size, args.workers)
            shutil.rmtree(work / f"out_local{n}", ignore_errors=True)  # 100k chips of embeddings: keep the disk free
            shutil.rmtree(work / f"out_ray{n}", ignore_errors=True)
            peaks = rep.get("peak_rss_mib", {})
            rows.append({"chips": n, "local_s": tl, "ray_s": tr, "local_chips_per_s": n / tl, "ray_chips_per_s": n / tr,
                         "ray_vs_local": tl / tr, "local_peak_rss_mib": rss_local,
                         "ray_worker_peak_rss_mib": max(peaks.values()) if peaks else None, "ray_workers_seen": len(peaks),
                         "worker_alone_peak_rss_mib": rss_worker, "ray_driver_cpu_s": rep.get("driver_cpu_s"),
                         "load_before": float(uptime), "load_after": float(Path("/proc/loadavg").read_text().split()[0]),
                         "local_times": local_times, "ray_workers": rep.get("workers", {}),
                         "ray_processes_cpu_s": rep.get("processes_cpu_s", {})})
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
    print("\nwhere the time went (seconds; spawn = a Ray worker's process start and imports before its constructor, "
          "init = model load and store open, open = the shards' index rows, read = waiting for a batch of pixels, "
          "forward = model + rows, write = shard file + commit; cpu = CPU seconds of all the process's threads "
          "from init on):")
    print("| chips | engine | wall | cpu | spawn (cpu) | init | open | read | forward | write | shards |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        lt = r["local_times"]
        print(f"| {r['chips']} | local (1 process, load {r['load_before']:.2f}) | {lt['wall_s']:.1f} | {lt['cpu_s']:.1f} | "
              f"| {lt.get('init_s', 0):.1f} | {lt.get('open_s', 0):.1f} | {lt.get('read_s', 0):.1f} | "
              f"{lt.get('forward_s', 0):.1f} | {lt.get('write_s', 0):.1f} | {lt.get('shards', 0):.0f} |")
        for pid, w in sorted(r["ray_workers"].items()):
            print(f"| {r['chips']} | ray worker {pid} ({w['threads']:.0f} thread) | {w['wall_s']:.1f} | {w['cpu_s']:.1f} | "
                  f"{w['spawn_s']:.1f} ({w['spawn_cpu_s']:.1f}) | {w['init_s']:.1f} | {w['open_s']:.1f} | "
                  f"{w['read_s']:.1f} | {w['forward_s']:.1f} | {w['write_s']:.1f} | {w['shards']:.0f} |")
        print(f"| {r['chips']} | ray run (load after {r['load_after']:.2f}) | {r['ray_s']:.1f} | "
              + ", ".join(f"{k} {v:.1f}" for k, v in r["ray_processes_cpu_s"].items())
              + f"; driver {r['ray_driver_cpu_s']:.1f} | | | | | | | | |")
    if args.json:
        Path(args.json).write_text(json.dumps({"ray_init_s": ray_start, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
