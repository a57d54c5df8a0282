"""Galileo-nano embedding throughput (issue 21): `embed_store` (what `earthembed embed --encoder galileo:nano` runs
after fitting the model to the store) against a bare forward loop of the same module on the same batches, at
patch sizes 8 and 4, on 64 px 13-band Sentinel-2 L1C chips; peak memory; and where the forward pass spends its
time. Target: pipeline >= 0.9x bare.

    .venv/bin/python benchmarks/bench_galileo.py --weights ../shared/data/weights/galileo-nano --threads 2

* **Ratio in one run.** For each patch size, rounds interleave the bare loop, the reads alone and the pipeline
  (bare, read, pipeline; pipeline, read, bare; ...); the table gives the best round of each and the median of the
  per-round ratios (robust to a shared machine whose speed drifts between rounds), and the per-round ratios are
  printed. Because a shared machine's speed drifts within a round too, the pipeline rounds also time the model's
  forward *inside* ``embed_store`` (the encoder class's ``forward`` wrapped with a timer): its share of the same
  run's wall time is the pipeline's efficiency without drift between two measurements. The reads alone
  (``ChipDataset.read_batch`` over the store: Zarr decode + normalisation) show what the pipeline adds before
  the forward.
* **Bare** = ``model(x, bands, present)`` on batches read and normalised beforehand (``ChipDataset.read_batch``,
  months included, exactly what ``embed_batch`` passes), under ``torch.inference_mode``. **Pipeline** =
  ``embed_store`` end to end from the export: Zarr reads, normalisation, forward, finiteness check, Arrow part
  writes, the final GeoParquet.
* **Peak memory**: the peak RSS of a fresh spawned process that loads the export and runs ``embed_store`` once
  (``_common.measure_in_child``).
* **Where the time goes**: one extra pass over the same batches with timers around the parts of the forward
  (input build: unit scaling, normalisation, NDVI, group masks; patch projection convolutions; the resize of the
  8 x 8 projections for another patch size; per block the attention and the MLP; the rest: encodings, gathers,
  LayerNorms, pooling), plus the token count per family (visible / all slots) and one batch of the transformer
  blocks with and without the padding mask that hidden groups bring.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import measure_in_child  # noqa: E402

GEN = """
import numpy as np
from earthembed.data.modalities import get_modality
from earthembed.data.store import ChipRecord, StoreWriter
rng = np.random.default_rng(0)
with StoreWriter({path!r}, [get_modality("s2_l1c")], {size}, batch_size=256) as w:
    for i in range({n}):
        # DN-like values per band; the content does not change the compute
        w.add(ChipRecord(f"c{{i:05d}}", {{"s2": rng.integers(100, 4000, (13, {size}, {size})).astype("uint16")}},
                         split=("train", "val", "test")[i % 3], dates={{"s2": "2021-07-15"}}))
"""


def make_store(path: Path, n: int, size: int) -> Path:
    """``n`` random 13-band S2 L1C chips of ``size`` px, written in a child process (this one starts fresh, as
    `earthembed embed` does)."""
    subprocess.run([sys.executable, "-c", GEN.format(path=str(path), size=size, n=n)], check=True)
    return path


def pipeline_once(export: str, store: str, out: str, batch_size: int, threads: int) -> float:
    """One ``embed_store`` run (seconds); top level so that a spawned child can run it for its peak RSS."""
    from earthembed.embed.run import embed_store

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    embed_store(export, store, out, batch_size=batch_size, progress=False, resume=False, overwrite=True)
    return time.perf_counter() - t0


class Timers:
    """Wall-clock totals of wrapped callables (synchronous CPU ops: a timer around a call is its cost)."""

    def __init__(self) -> None:
        self.total: dict[str, float] = defaultdict(float)

    def wrap(self, obj: Any, attr: str, label: str) -> None:
        fn = getattr(obj, attr)

        def timed(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.total[label] += time.perf_counter() - t0

        setattr(obj, attr, timed)


def token_counts(model: Any, batch: dict[str, Any], request: dict[str, list[str]]) -> dict[str, list[int]]:
    """Per token family: [visible tokens per chip, all token slots per chip] (first chip of ``batch``)."""
    x = {k: batch[k] for k in request}
    x.update({f"{k}_month": batch[f"{k}_month"] for k in request})
    with torch.inference_mode():
        tokens, _, _ = model.encode(x, bands=request, present={k: batch[f"{k}_present"] for k in request})
    fams = {"space-time": tokens.space_time_hidden, "space": tokens.space_hidden, "time": tokens.time_hidden,
            "static": tokens.static_hidden}
    out = {f: [int((~h[0]).sum()), int(h[0].numel())] for f, h in fams.items()}
    out["total"] = [sum(v[0] for v in out.values()), sum(v[1] for v in out.values())]
    return out


def profile(model: Any, batches: list[dict[str, Any]], forward: Callable[[dict[str, Any]], Any]) -> dict[str, float]:
    """Seconds per part of the forward over ``batches`` (see the module docstring); the model is a fresh copy."""
    tm = Timers()
    net = model.net
    tm.wrap(model, "build_input", "input build (scale, normalise, NDVI, masks)")
    tm.wrap(net, "_patch_weight", "patch resize (resample_patch_embed)")
    tm.wrap(net, "_project_pixels", "_project_pixels")
    for blk in net.blocks:
        tm.wrap(blk.attn, "forward", "attention (qkv, SDPA, proj)")
        tm.wrap(blk.mlp, "forward", "MLP")
    tm.wrap(model, "forward", "forward")
    with torch.inference_mode():
        for b in batches:
            forward(b)
    t = dict(tm.total)
    total = t.pop("forward")
    resize = t.get("patch resize (resample_patch_embed)", 0.0)
    t["patch projection (conv)"] = t.pop("_project_pixels") - resize
    t["rest (encodings, gather/scatter, LayerNorms, pooling)"] = total - sum(t.values())
    t["forward (total)"] = total
    return t


def mask_cost(model: Any, batch: dict[str, Any], request: dict[str, list[str]], reps: int = 3) -> dict[str, float]:
    """Seconds of the transformer blocks on one batch of visible tokens, with the all-True padding mask that
    ``_attend`` passes when any token slot is hidden, and without a mask (best of ``reps``)."""
    x = {k: batch[k] for k in request}
    x.update({f"{k}_month": batch[f"{k}_month"] for k in request})
    with torch.inference_mode():
        tokens, _, _ = model.encode(x, bands=request, present={k: batch[f"{k}_present"] for k in request})
        flat, hidden = tokens.flat()
        n_vis = int((~hidden[0]).sum())
        seq = flat[:, ~hidden[0]][:, :n_vis].contiguous()  # every chip of this store has the same visible slots
        mask = torch.ones(seq.shape[0], 1, 1, n_vis, dtype=torch.bool)
        res = {}
        for name, m in (("blocks with padding mask", mask), ("blocks without mask", None)):
            best = float("inf")
            for _ in range(reps):
                t0 = time.perf_counter()
                s = seq
                for blk in model.net.blocks:
                    s = blk(s, attn_mask=m) if m is not None else blk(s)
                best = min(best, time.perf_counter() - t0)
            res[name] = best
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", required=True, help="Galileo-nano encoder.pt or its folder")
    ap.add_argument("--chips", type=int, default=256)
    ap.add_argument("--chip-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64, help="as `earthembed embed`'s default")
    ap.add_argument("--patch-sizes", default="8,4")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds per patch size")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-RSS child runs")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from earthembed.data.dataset import ChipDataset
    from earthembed.data.normalize import Normalizer
    from earthembed.data.store import ChipStore
    from earthembed.embed.run import embed_store
    from earthembed.models.export import load_model, model_input_spec
    from earthembed.models.published import export_encoder

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_galileo_"))
    store = ChipStore(make_store(work / "store", args.chips, args.chip_size))
    res: dict[str, Any] = {"chips": len(store), "chip_size": args.chip_size, "batch_size": args.batch_size,
                           "threads": torch.get_num_threads(), "per_patch": {}}
    print(f"galileo:nano, {len(store)} chips of {args.chip_size} px (S2 L1C, 13 bands), batch {args.batch_size}, "
          f"{res['threads']} torch threads, {args.repeats} interleaved rounds")
    for p in [int(s) for s in args.patch_sizes.split(",")]:
        export = export_encoder("galileo:nano", store, work / f"p{p}.model", weights=args.weights,
                                options={"patch_size": p})
        model, meta = load_model(export)
        model = model.eval()
        request = model_input_spec(meta).request(store)
        ds = ChipDataset(store, request, normalizer=Normalizer.from_dict(meta["normalization"]))
        batches = [ds.read_batch(np.arange(s, min(s + args.batch_size, len(ds))))
                   for s in range(0, len(ds), args.batch_size)]

        def forward(b: dict[str, Any], model: Any = model, request: dict = request) -> Any:
            x = {k: b[k] for k in request}
            x.update({f"{k}_month": b[f"{k}_month"] for k in request})
            return model(x, bands=request, present={k: b[f"{k}_present"] for k in request})

        def bare(forward: Callable = forward, batches: list = batches) -> None:
            with torch.inference_mode():
                for b in batches:
                    forward(b)

        def read(ds: Any = ds) -> None:  # what the pipeline adds before the forward: Zarr reads + normalisation
            for s in range(0, len(ds), args.batch_size):
                ds.read_batch(np.arange(s, min(s + args.batch_size, len(ds))))

        inside: list[float] = []  # per pipeline round: seconds spent in the model's forward inside embed_store

        def pipe(export: Path = export, p: int = p, cls: type = type(model), inside: list = inside) -> None:
            fwd, spent = cls.forward, [0.0]

            def timed(self: Any, *a: Any, **kw: Any) -> Any:
                t0 = time.perf_counter()
                try:
                    return fwd(self, *a, **kw)
                finally:
                    spent[0] += time.perf_counter() - t0

            cls.forward = timed
            try:
                embed_store(export, store, work / f"emb_p{p}.parquet", batch_size=args.batch_size, progress=False,
                            resume=False, overwrite=True)
            finally:
                cls.forward = fwd
            inside.append(spent[0])

        forward(batches[0])  # warm-up
        times: dict[str, list[float]] = {"bare": [], "pipeline": [], "read": []}
        for i in range(args.repeats):  # the order alternates between rounds, so drift hits both paths alike
            order = (("bare", bare), ("read", read), ("pipeline", pipe))
            for key, fn in (order if i % 2 == 0 else order[::-1]):
                t0 = time.perf_counter()
                fn()
                times[key].append(time.perf_counter() - t0)
        n = len(store)
        ratios = [b / q for b, q in zip(times["bare"], times["pipeline"], strict=True)]
        r: dict[str, Any] = {
            "bare_chips_per_s": n / min(times["bare"]), "pipeline_chips_per_s": n / min(times["pipeline"]),
            "pipeline_vs_bare_best": min(times["bare"]) / min(times["pipeline"]),
            "pipeline_vs_bare_median_round": float(np.median(ratios)), "round_ratios": ratios, "rounds_s": times,
            "read_ms_per_chip_best": 1000 * min(times["read"]) / n,
            # drift-free: the share of each embed_store run spent in the forward, both timed in the same interval
            "forward_share_of_pipeline": [f / t for f, t in zip(inside, times["pipeline"], strict=True)],
            "tokens_per_chip": token_counts(model, batches[0], request),
        }
        prof_model, _ = load_model(export)
        prof_model = prof_model.eval()

        def fwd2(b: dict[str, Any], m: Any = prof_model, request: dict = request) -> Any:
            x = {k: b[k] for k in request}
            x.update({f"{k}_month": b[f"{k}_month"] for k in request})
            return m(x, bands=request, present={k: b[f"{k}_present"] for k in request})

        r["time_split_s"] = profile(prof_model, batches, fwd2)
        r["mask_cost_one_batch_s"] = mask_cost(model, batches[0], request)
        if not args.no_memory:
            _, peak = measure_in_child(pipeline_once, str(export), str(store.path), str(work / f"mem_p{p}.parquet"),
                                       args.batch_size, args.threads)
            r["pipeline_peak_rss_mib"] = peak
        res["per_patch"][p] = r
        tok = r["tokens_per_chip"]
        print(f"\n## patch {p}: tokens per chip (visible / slots): "
              + ", ".join(f"{f} {v[0]}/{v[1]}" for f, v in tok.items()))
        print("| measure | chips/s (best round) | vs bare (best) | vs bare (median of rounds) | peak RSS MiB |")
        print("|---|---:|---:|---:|---:|")
        print(f"| bare forward (batches in memory) | {r['bare_chips_per_s']:.1f} | 100% | 100% | |")
        mem = f"{r['pipeline_peak_rss_mib']:.0f}" if "pipeline_peak_rss_mib" in r else ""
        print(f"| embed_store (read, normalise, forward, write) | {r['pipeline_chips_per_s']:.1f} | "
              f"{100 * r['pipeline_vs_bare_best']:.0f}% | {100 * r['pipeline_vs_bare_median_round']:.0f}% | {mem} |")
        share = r["forward_share_of_pipeline"]
        print(f"\nper-round ratios (bare / pipeline): {', '.join(f'{x:.2f}' for x in ratios)}; the forward's share "
              f"of each embed_store run (same interval, immune to drift): {', '.join(f'{x:.2f}' for x in share)} "
              f"(median {np.median(share):.2f})")
        print(f"reading + normalising "
              f"alone: {r['read_ms_per_chip_best']:.2f} ms per chip (best round), "
              f"{100 * min(times['read']) / min(times['bare']):.1f}% of the bare forward")
        split = r["time_split_s"]
        tot = split["forward (total)"]
        print("\n| part of the forward | ms per chip | share |\n|---|---:|---:|")
        for k, v in split.items():
            print(f"| {k} | {1000 * v / n:.2f} | {100 * v / tot:.0f}% |")
        mc = r["mask_cost_one_batch_s"]
        print(f"\none batch of {len(batches[0]['idx'])} chips through the 4 blocks: "
              + ", ".join(f"{k} {1000 * v:.0f} ms" for k, v in mc.items()))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2, default=str))


if __name__ == "__main__":
    main()
