"""Where shards are embedded: ``local`` (this process, shard after shard) or ``ray`` (a Ray Data actor pool).

Both run :class:`ShardWorker` (the model loaded once per worker, a shard read in chunk-aligned batches, one
GeoParquet file and a commit marker per shard: :mod:`earthembed.embed.shards`), so the output and its resume
are the same whichever engine made them. Ray is an optional extra (``pip install earthembed[ray]``):
``ray.data.from_items(shards).map_batches(ShardWorkerActor, concurrency=N)`` gives retries, backpressure and
placement on a cluster (``--address``) or a local one; outputs are written by the workers themselves, never by
``Dataset.write_parquet`` (its file names are random, which breaks resume).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from earthembed.embed.shards import (
    Shard,
    committed,
    order_check,
    record_failure,
    shard_table,
    table_metadata,
    write_shard,
)
from earthembed.storage import location, settings_env

ENGINES = ("local", "ray")
# what each Ray worker reports (``last_run["workers"]`` of the manifest, by pid): see ShardWorkerActor.__call__
WORKER_TIMES = ("cpu_s", "wall_s", "spawn_s", "spawn_cpu_s", "init_s", "threads", "open_s", "read_s", "forward_s",
                "write_s", "shards")


def _process_age() -> float:
    """Seconds since this process started (Linux ``/proc``; NaN elsewhere)."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])  # field 22: starttime
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


def worker_threads(cpus: float) -> int:
    """Size this process's thread pools to the ``cpus`` CPUs a worker was given (at least 1): torch's intra-op
    threads, and zarr's ``threading.max_workers``, which also sizes the zarrs codec pipeline's thread pool for
    arrays opened afterwards (``RAYON_NUM_THREADS`` too, for rayon's global pool if not yet started). Without it
    every worker of a machine sizes its pools to all of the machine's cores. Returns the thread count."""
    import zarr

    n = max(1, int(cpus))
    torch.set_num_threads(n)
    zarr.config.set({"threading.max_workers": n})
    os.environ["RAYON_NUM_THREADS"] = str(n)
    return n


@dataclasses.dataclass
class ShardJob:
    """What a worker needs to embed any shard (picklable: sent to Ray actors).

    ``export``: the model's export directory (None only for the local engine given a model object).
    ``table_meta``: the earthembed metadata every shard file carries. ``tta``: an embed-time override of the
    encoder's test-time augmentation (None: as exported). ``time``: per-date embedding's plan (None: one row per
    chip). ``series``: the modalities read as whole series, with their keys."""

    export: str | None
    store: str
    out: str
    request: dict[str, list[str]]
    normalization: dict[str, Any]
    batch_size: int
    device: str
    model_id: str
    label: str
    table_meta: dict[str, Any]
    tta: str | None = None
    prefetch: bool | None = None
    time: Any = None  # earthembed.data.dates.DatePlan
    series: dict[str, tuple[str, ...]] | None = None  # modalities read as whole series (make_passes)
    store_fingerprint: str | None = None  # ChipStore.fingerprint when the job was planned
    export_files: dict[str, bytes] | None = None  # the export's files, for workers on nodes that cannot see it


def _export_here(job: ShardJob) -> str:
    """The export directory on this node: ``job.export`` where it exists, else a copy of ``job.export_files``
    (a Ray worker on another machine, no shared filesystem) in a temporary directory."""
    if job.export and (Path(job.export).is_dir() or Path(job.export).is_file()) or not job.export_files:
        return str(job.export)
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="earthembed-export-"))
    for name, data in job.export_files.items():
        (d / name).write_bytes(data)
    return str(d)


def _export_files(export: str) -> dict[str, bytes]:
    """The files of an export directory (model.json, weights) by name, to ship with a job."""
    p = Path(export)
    p = p.parent if p.is_file() else p
    return {f.name: f.read_bytes() for f in sorted(p.iterdir()) if f.is_file()}


class ShardWorker:
    """Embeds shards of one store with one model (loaded once)."""

    def __init__(self, job: ShardJob, model: torch.nn.Module | None = None) -> None:
        from earthembed.data.store import ChipStore
        from earthembed.embed.tta import set_tta
        from earthembed.models.export import load_model

        self.job = job
        if model is None:
            if job.export is None:
                raise ValueError("a shard worker needs the model's export directory")
            model, _ = load_model(_export_here(job))
        set_tta(model, job.tta)
        self.model = model.to(job.device).eval()
        # the driver opened (and checked) the whole store; a worker loads only its shards' rows (StoreRows): its
        # memory stays flat however large the store is. The chip count is checked: the plan depends on it.
        self.store = ChipStore(job.store, check=False)
        planned = job.table_meta.get("n_chips")
        if planned is not None and len(self.store) != int(planned):
            raise ValueError(f"{self.store.path}: has {len(self.store)} chips, but this embedding job was planned "
                             f"for {planned}: the store changed since the job started; embed it into a new --out")
        if job.store_fingerprint is not None and self.store.fingerprint != job.store_fingerprint:
            raise ValueError(f"{self.store.path}: was re-ingested or replaced since this embedding job started "
                             f"(store fingerprint {job.store_fingerprint} -> {self.store.fingerprint}); embed it into "
                             "a new --out")
        self.meta = table_metadata(job.table_meta, job.out)
        # seconds spent per stage over the shards this worker ran: the shard's rows of the index (``open_s``),
        # waiting for a batch of pixels (``read_s``), the model and the rows of a batch (``forward_s``), the
        # shard's table, file and commit (``write_s``)
        self.times = {"open_s": 0.0, "read_s": 0.0, "forward_s": 0.0, "write_s": 0.0, "shards": 0}

    def run(self, shard: Shard) -> dict[str, Any]:
        """Embed ``shard``, write its file and commit it; a failure is recorded (``_failed/``) and re-raised."""
        out, job = location(self.job.out), self.job
        done = committed(out, shard)
        if done is not None:  # committed by an earlier attempt (a retried task): never embedded or written again
            return done
        try:
            tables = self.embed(shard)
            t0 = time.perf_counter()
            table = shard_table(tables, self.meta)
            if job.time is None:  # per date, a chip without imagery at a date has no row
                order_check(table, shard)
            done = write_shard(out, shard, table, partition=job.time is not None)  # per date: by year
            self.times["write_s"] += time.perf_counter() - t0
            self.times["shards"] += 1
            return done
        except Exception as e:
            record_failure(out, shard, e)
            raise

    def embed(self, shard: Shard) -> list[pa.Table]:
        """The rows of ``shard``, one table per batch, read from the store's rows of the shard only
        (:meth:`~earthembed.data.store.ChipStore.rows`: index rows, presence, dates and footprints of its chips)."""
        from earthembed.embed.batches import (
            BatchReader,
            chip_columns,
            embed_batch,
            make_passes,
            prefetch_batches,
        )

        job, t0 = self.job, time.perf_counter()
        rows = self.store.rows(shard.start, shard.end)
        chips = chip_columns(rows.index)
        prefetch = job.prefetch if job.prefetch is not None else torch.device(job.device).type != "cpu"
        starts = list(range(0, len(rows), job.batch_size))
        tables = []
        self.times["open_s"] += time.perf_counter() - t0
        with torch.inference_mode():
            for p in make_passes(rows, job.request, job.normalization, job.time, job.series):  # one, or one per date
                reader = BatchReader(p.dataset, starts, job.batch_size)
                batches = iter(prefetch_batches(reader) if prefetch else (reader[i] for i in range(len(reader))))
                while True:
                    t0 = time.perf_counter()
                    batch = next(batches, None)
                    t1 = time.perf_counter()
                    self.times["read_s"] += t1 - t0
                    if batch is None:
                        break
                    local = batch["idx"].numpy()  # positions in the shard
                    emb, present = embed_batch(self.model, batch, job.request, job.device, chips, job.label)
                    t = p.table(local, chips, emb, present, job.request, job.model_id)
                    at = t.schema.get_field_index("idx")  # rows name their chips by store position
                    tables.append(t.set_column(at, "idx", pc.add(t.column(at), pa.scalar(shard.start, pa.int64()))))
                    self.times["forward_s"] += time.perf_counter() - t1
        return tables


def run_local(job: ShardJob, shards: Sequence[Shard], model: torch.nn.Module | None = None,
              progress: bool = True, report: dict[str, Any] | None = None) -> None:
    """Every shard in this process, in order; the first failure stops the run (a re-run resumes). ``report``
    (a dict) receives the worker's start (``init_s``) and stage times (:attr:`ShardWorker.times`)."""
    from earthembed.progress import progress as make_progress

    t0 = time.perf_counter()
    worker = ShardWorker(job, model)
    if report is not None:
        report["init_s"] = time.perf_counter() - t0
    bar = make_progress(total=sum(len(s) for s in shards), unit="chip", desc=f"embed {Path(job.store).name}",
                        quiet=not progress)
    try:
        for s in shards:
            worker.run(s)
            bar.update(len(s))
    finally:
        if report is not None:
            report.update(worker.times)
    bar.close()


class ShardWorkerActor:
    """Ray Data callable class: one :class:`ShardWorker` per actor; a batch is one or more shards. A failed
    shard is recorded and reported in the output row, so the other shards go on."""

    def __init__(self, job: ShardJob, threads: int = 1) -> None:
        self.started, self.cpu0 = time.perf_counter(), time.process_time()
        # before this constructor: the worker process's start, Ray's and this module's imports (torch included)
        self.spawn_s, self.spawn_cpu_s = _process_age(), self.cpu0
        self.threads = worker_threads(threads)
        self.worker = ShardWorker(job)
        self.init_s = time.perf_counter() - self.started  # the model's load and the store's open

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import resource

        names, rows, errors = [], [], []
        for start, end in zip(batch["start"], batch["end"], strict=True):
            shard = Shard(int(start), int(end))
            try:
                rows.append(int(self.worker.run(shard)["rows"]))
                errors.append("")
            except Exception as e:  # recorded in _failed/ by the worker
                rows.append(0)
                errors.append(f"{type(e).__name__}: {e}"[:500])
            names.append(shard.name)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB on Linux: a worker's memory so far
        # this actor's totals so far (the driver keeps each worker's last): CPU seconds of all its threads against
        # the wall seconds since it started, its start (model load), and the stages of its shards
        totals = {"cpu_s": time.process_time() - self.cpu0, "wall_s": time.perf_counter() - self.started,
                  "spawn_s": self.spawn_s, "spawn_cpu_s": self.spawn_cpu_s, "init_s": self.init_s,
                  "threads": self.threads, **self.worker.times}
        return {"shard": np.array(names), "rows": np.array(rows), "error": np.array(errors),
                "pid": np.array([os.getpid()] * len(names)), "peak_rss_mib": np.array([peak] * len(names)),
                **{k: np.array([float(v)] * len(names)) for k, v in totals.items()}}


def ray_local_options(num_cpus: int) -> dict[str, Any]:
    """``ray.init`` keyword arguments for a local cluster of ``num_cpus`` CPUs started to embed: no dashboard,
    workers' logs not forwarded, Ray's own log at WARNING."""
    import logging

    return {"num_cpus": int(num_cpus), "include_dashboard": False, "log_to_driver": False,
            "logging_level": logging.WARNING}


def run_ray(job: ShardJob, shards: Sequence[Shard], workers: int = 1, gpus_per_worker: float = 0.0,
            address: str | None = None, progress: bool = True, report: dict[str, Any] | None = None) -> list[str]:
    """Every shard on a Ray Data actor pool of ``workers`` actors; returns the errors of failed shards.
    ``report`` (a dict) receives each worker's peak resident memory (``peak_rss_mib`` by pid)."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise ValueError("--engine ray needs Ray: pip install 'earthembed[ray]' (or ray[data])") from None
    from earthembed.progress import progress as make_progress

    if job.export is None:
        raise ValueError("--engine ray embeds with an exported model (--checkpoint or --encoder), not an in-memory one")
    started = False
    if not ray.is_initialized():
        import logging

        logging.getLogger("ray").setLevel(logging.WARNING)  # one line per shard is ours to print, not Ray's
        kw: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
        if settings_env():  # workers on other nodes talk to the same object store (never credentials: their own)
            kw["runtime_env"] = {"env_vars": settings_env()}
        if address:
            ray.init(address=address, include_dashboard=False, **kw)
        else:
            ray.init(**{**ray_local_options(os.cpu_count() or 1), **kw})
        started = True
    try:
        import logging

        logging.getLogger("ray.data").setLevel(logging.WARNING)
        cpus = float(ray.cluster_resources().get("CPU", 1))
        per = max(1.0, cpus // max(1, workers)) if not gpus_per_worker else 1.0
        import warnings

        with warnings.catch_warnings():  # Ray's own deprecation notes about its defaults are not the user's
            warnings.simplefilter("ignore", DeprecationWarning)
            ray.data.DataContext.get_current().enable_progress_bars = False
        if address and not address.startswith("local"):  # a cluster: nodes may not share a filesystem, so
            job = dataclasses.replace(job, export_files=_export_files(job.export))  # the export travels with the job
        pool = max(1, min(int(workers), len(shards)))  # a resume of fewer shards than workers starts no idle actor
        ds = ray.data.from_items([{"start": s.start, "end": s.end} for s in shards],
                                 override_num_blocks=len(shards))
        res = ds.map_batches(ShardWorkerActor, fn_constructor_kwargs={"job": job, "threads": int(per)},
                             batch_size=1, compute=ray.data.ActorPoolStrategy(size=pool), num_cpus=per,
                             num_gpus=float(gpus_per_worker) or None, zero_copy_batch=True)
        by_name = {s.name: len(s) for s in shards}
        bar = make_progress(total=sum(by_name.values()), unit="chip", desc=f"embed {Path(job.store).name} (ray)",
                            quiet=not progress)
        errors = []
        peaks: dict[int, float] = {}
        stages: dict[int, dict[str, float]] = {}
        for row in res.iter_rows():
            if row["error"]:
                errors.append(f"{row['shard']}: {row['error']}")
            pid = int(row["pid"])
            peaks[pid] = max(peaks.get(pid, 0.0), float(row["peak_rss_mib"]))
            if row["wall_s"] >= stages.get(pid, {}).get("wall_s", -1.0):  # totals: the latest row is the whole run
                stages[pid] = {k: round(float(row[k]), 3) for k in WORKER_TIMES}
            bar.update(by_name.get(str(row["shard"]), 0))
        if report is not None:
            report["peak_rss_mib"] = {str(k): v for k, v in peaks.items()}
            report["workers"] = {str(k): v for k, v in stages.items()}
        bar.close()
        return errors
    finally:
        if started:
            ray.shutdown()
