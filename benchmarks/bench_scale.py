"""Per-chip cost of a continental embedding run, measured on this machine (the inputs of docs/scale.md): chips/s of
``embed`` (sharded output, local engine, the whole path: reads, normalisation, forward, shard files, commit
markers) and the bytes each chip adds to a shard, on 64 px Sentinel-2 L2A chips (12 bands), for

* the default recipe of a single multispectral modality (``cpu_single_modality``: ResNet-18, stem stride 4,
  multiscale mean+std pool) as exported, i.e. averaged over 8 rotations/flips (``--tta d4``), and with
  ``--tta none``;
* Galileo-nano (``--encoder galileo:nano``, patch 8, the default), when its weights are given.

    .venv/bin/python benchmarks/bench_scale.py --chips 512 --weights ../shared/data/weights/galileo-nano

Weights are random for the recipe (the cost does not depend on them). Each model runs once after a warm-up shard
of its own; torch uses every core (``--threads``).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch


def run(export: Path, store, out: Path, tta: str | None, chips: int, shard: int, device: str = "cpu") -> dict:
    from earthembed.embed.run import embed_store

    embed_store(export, store, str(out / "warm") + "/", shard_chips=shard, modalities=["s2"], tta=tta,
                progress=False, batch_size=64, device=device)  # the first shards pay for allocator and thread pools
    t0 = time.perf_counter()
    d = embed_store(export, store, str(out / "run") + "/", shard_chips=shard, modalities=["s2"], tta=tta,
                    progress=False, batch_size=64, device=device)
    dt = time.perf_counter() - t0
    files = sorted(Path(d).glob("part-*.parquet"))
    size = sum(f.stat().st_size for f in files)
    from earthembed.embed.io import read_schema

    schema = read_schema(d)
    dims = {n: schema.field(n).type.list_size for n in schema.names if n.startswith("emb_")}
    return {"chips_per_s": chips / dt, "bytes_per_chip": size / chips, "dims": dims, "seconds": dt}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chips", type=int, default=512)
    ap.add_argument("--chip-size", type=int, default=64)
    ap.add_argument("--weights", default=None, help="Galileo-nano weights folder (skipped without it)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="torch device, e.g. cuda (the GPU figure docs/scale.md assumes)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from earthembed.data.normalize import Normalizer
    from earthembed.data.store import ChipStore
    from earthembed.data.synth import generate_synthetic_aoi
    from earthembed.models.export import export_model
    from earthembed.models.registry import build_model

    work = Path(tempfile.mkdtemp(prefix="bench_scale_"))
    store: ChipStore = generate_synthetic_aoi(work / "store", chips=args.chips, chip_size=args.chip_size, seed=0)
    bands = store.band_names("s2")
    torch.manual_seed(0)
    recipe = build_model("timm_cnn", modalities={"s2": bands}, backbone="resnet18", stem_stride=4,
                         pool="multiscale_meanstd", tta="d4")
    exp = export_model(recipe, work / "recipe", Normalizer.from_store(store))
    res = {"chips": args.chips, "chip_size": args.chip_size, "threads": torch.get_num_threads(), "models": {}}
    res["models"]["recipe cpu_single_modality, tta d4 (as exported)"] = run(exp, store, work / "d4", None,
                                                                           args.chips, 128, args.device)
    res["models"]["recipe cpu_single_modality, --tta none"] = run(exp, store, work / "none", "none", args.chips, 128,
                                                                     args.device)
    if args.weights:
        from earthembed.models.published.load import export_encoder

        gal = export_encoder("galileo:nano", store, work / "galileo", weights=args.weights, modality=["s2"])
        res["models"]["galileo:nano, patch 8"] = run(gal, store, work / "gal", None, args.chips, 128, args.device)
    print(f"{args.chips} chips of {args.chip_size} px S2 L2A (12 bands), embed to a sharded dataset, local engine, "
          f"{args.device}, {res['threads']} torch threads")
    print("| model | chips/s | ms per chip | bytes per chip in a shard | embedding dims |")
    print("|---|---:|---:|---:|---|")
    for k, v in res["models"].items():
        print(f"| {k} | {v['chips_per_s']:.1f} | {1000 / v['chips_per_s']:.1f} | {v['bytes_per_chip']:.0f} | "
              f"{', '.join(f'{n} {d}' for n, d in v['dims'].items())} |")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
