"""Per-date embedding (`embed_store(..., dates="all")`) against embedding one date: (chip, date) pairs per second
vs chips per second, on the same synthetic store. Target (issue 22): T dates cost T times one date, so the ratio
is ~100%.

    .venv/bin/python benchmarks/bench_dates.py --chips 2048 --dates 4 --chip-size 32 --batch-size 256

The store (``synth --dates T``) is generated in a child process. Both paths embed every non-categorical base
modality (s2, s1, coh, dem: the static ones are read at every date, as a single-date store of that date holds
them) with the same export. Runs are interleaved (single date, all dates) for ``--repeats`` rounds; the table
gives the best round of each and the median of the per-round ratios, in wall time and in CPU time of this process
(all its threads: robust to other load on a shared machine, which wall time is not).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import synth_in_child  # noqa: E402

from earthembed.data.dates import base_modalities, time_series  # noqa: E402
from earthembed.data.normalize import Normalizer
from earthembed.data.store import ChipStore
from earthembed.embed.io import read_metadata
from earthembed.embed.run import embed_store
from earthembed.models.export import export_model
from earthembed.models.registry import build_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chips", type=int, default=2048)
    ap.add_argument("--dates", type=int, default=4)
    ap.add_argument("--chip-size", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--model", default="multimodal_vit_tiny")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_dates_"))
    synth_in_child(work / "store", chips=args.chips, chip_size=args.chip_size, dates=args.dates)
    store = ChipStore(work / "store")
    mods = {k: store.band_names(k) for k in base_modalities(store)}
    torch.manual_seed(0)
    export = export_model(build_model(args.model, modalities=mods), work / "export", Normalizer.from_store(store))
    n, t_n = len(store), max(len(s) for s in time_series(store).values())

    def single() -> None:
        embed_store(export, store, work / "one.parquet", batch_size=args.batch_size, progress=False, resume=False,
                    overwrite=True, device=args.device)

    def per_date() -> None:
        embed_store(export, store, work / "all.parquet", dates="all", batch_size=args.batch_size, progress=False,
                    resume=False, overwrite=True, device=args.device)

    single()  # warm-up
    times: dict[str, list[float]] = {"single": [], "per_date": [], "single_cpu": [], "per_date_cpu": []}
    for _ in range(args.repeats):
        for key, fn in (("single", single), ("per_date", per_date)):
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            times[key].append(time.perf_counter() - t0)
            times[f"{key}_cpu"].append(time.process_time() - c0)
    rows = n * t_n  # (chip, date) pairs read and embedded; pairs without imagery are embedded, then left out
    written = rows - sum(r["chips"] for r in read_metadata(work / "all.parquet")["time"]["skipped"])
    one, alld = min(times["single"]), min(times["per_date"])
    one_c, alld_c = min(times["single_cpu"]), min(times["per_date_cpu"])
    ratio = float(np.median([(rows / p) / (n / s) for s, p in zip(times["single"], times["per_date"], strict=True)]))
    ratio_c = float(np.median([(rows / p) / (n / s) for s, p in zip(times["single_cpu"], times["per_date_cpu"],
                                                                   strict=True)]))
    res = {"chips": n, "dates": t_n, "chip_size": args.chip_size, "batch_size": args.batch_size, "model": args.model,
           "modalities": list(mods), "device": args.device, "threads": torch.get_num_threads(),
           "single_date_chips_per_s": n / one, "per_date_chip_dates_per_s": rows / alld,
           "rows_written": written, "per_date_vs_single_best": (rows / alld) / (n / one),
           "per_date_vs_single_median_round": ratio, "single_date_chips_per_cpu_s": n / one_c,
           "per_date_chip_dates_per_cpu_s": rows / alld_c, "per_date_vs_single_cpu_best": (rows / alld_c) / (n / one_c),
           "per_date_vs_single_cpu_median_round": ratio_c, "rounds": times}
    print(f"{args.model} over {', '.join(mods)}; {n} chips x {t_n} dates of {args.chip_size} px, batch "
          f"{args.batch_size}, {args.device}, {res['threads']} torch threads, {args.repeats} rounds")
    print("| path | best s | (chip, date)/s (best) | vs one date: best, median of rounds | per CPU-s (best) | "
          "vs one date, CPU: best, median |\n|---|---:|---:|---:|---:|---:|")
    print(f"| one date (no --dates), {n} chips | {one:.2f} | {n / one:.0f} | 100%, 100% | {n / one_c:.0f} | "
          "100%, 100% |")
    print(f"| --dates all, {n} x {t_n} ({written} rows written) | {alld:.2f} | {rows / alld:.0f} | "
          f"{100 * res['per_date_vs_single_best']:.0f}%, {100 * ratio:.0f}% | {rows / alld_c:.0f} | "
          f"{100 * res['per_date_vs_single_cpu_best']:.0f}%, {100 * ratio_c:.0f}% |")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
