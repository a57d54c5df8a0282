"""Object storage vs local disk for the same chip store: chips/s read, the cost of opening a store, and a sharded
embed end to end (store and output both on S3).

    .venv/bin/python benchmarks/bench_object_storage.py --chips 2048 --chip-size 64 --repeats 3

A synthetic store (5 modalities; S2 is read: 12 bands uint16, 16 chips per Zarr chunk) is written to a temporary
directory and uploaded to a moto S3 server (``moto`` from the test extra, in a child process on 127.0.0.1: the
zarrs pipeline holds the GIL while it fetches, so an in-process server would stall). Reads: every chip of S2 in
store order, ``batch`` chips per ``ChipStore.read`` (what ``embed`` does), best of ``repeats`` after one warm-up
pass, through the zarrs pipeline and through zarr's own (``EARTHEMBED_ZARRS=0``). Open: ``ChipStore(path)``
(metadata, index, the open checks; on S3 one LIST of the chunk objects per array). Embed: ``resnet18_small`` on
S2, shards of 512 chips, local engine. moto is a Python server on the same 2 cores as the reader: it measures
earthembed's overhead per request, not S3's throughput (real S3: ~10-50 ms first-byte latency per GET, far more
parallelism).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SERVER = ("import sys, time\nfrom moto.server import ThreadedMotoServer\n"
          "ThreadedMotoServer(ip_address='127.0.0.1', port=int(sys.argv[1]), verbose=False).start()\ntime.sleep(1e9)\n")


def start_moto(bucket: str) -> subprocess.Popen:
    """A moto S3 server in a child process; the standard AWS variables point at it; ``bucket`` created."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_REGION="us-east-1",
                      AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}")
    import boto3

    for _ in range(300):
        try:
            boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"]).create_bucket(Bucket=bucket)
            return proc
        except Exception:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("moto did not start")


def read_all(path: str, batch: int, pipeline: str) -> tuple[float, float]:
    """(best chips/s over the timed passes, open seconds) reading S2 of every chip."""
    from earthembed.data.store import ChipStore

    os.environ["EARTHEMBED_ZARRS"] = "1" if pipeline == "zarrs" else "0"
    t0 = time.perf_counter()
    st = ChipStore(path)
    opened = time.perf_counter() - t0
    n = len(st)
    best = 0.0
    for rep in range(ARGS.repeats + 1):
        t0 = time.perf_counter()
        total = 0
        for s in range(0, n, batch):
            total += int(st.read("s2", slice(s, min(s + batch, n))).shape[0])
        dt = time.perf_counter() - t0
        if rep:  # the first pass warms caches and connections
            best = max(best, total / dt)
    return best, opened


def embed(store: str, out: str, export: Path) -> float:
    from earthembed.embed.run import embed_store

    t0 = time.perf_counter()
    embed_store(export, store, out, shard_chips=512, batch_size=64, modalities=["s2"], progress=False)
    return ARGS.chips / (time.perf_counter() - t0)


def main() -> None:
    global ARGS
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chips", type=int, default=2048)
    ap.add_argument("--chip-size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-embed", action="store_true")
    ap.add_argument("--json", default=None)
    ARGS = ap.parse_args()

    import torch

    from earthembed.data.normalize import Normalizer
    from earthembed.data.synth import generate_synthetic_aoi
    from earthembed.models.export import export_model
    from earthembed.models.registry import build_model
    from earthembed.storage import location, upload_dir

    work = Path(tempfile.mkdtemp(prefix="bench_obj_"))
    proc = start_moto("bench")
    try:
        local = generate_synthetic_aoi(work / "store", chips=ARGS.chips, chip_size=ARGS.chip_size, seed=0)
        url = "s3://bench/store"
        t0 = time.perf_counter()
        n_obj = upload_dir(local.path, location(url))
        up = time.perf_counter() - t0
        size = sum(f.stat().st_size for f in local.path.rglob("*") if f.is_file())
        res: dict = {"chips": ARGS.chips, "chip_size": ARGS.chip_size, "batch": ARGS.batch, "objects": n_obj,
                     "store_mib": size / 2**20, "upload_s": up, "read": {}}
        for where, path in (("local disk", str(local.path)), ("S3 (moto)", url)):
            for pipe in ("zarrs", "zarr"):
                cps, opened = read_all(path, ARGS.batch, pipe)
                res["read"][f"{where} / {pipe}"] = {"chips_per_s": cps, "open_s": opened}
        os.environ["EARTHEMBED_ZARRS"] = "1"
        if not ARGS.no_embed:
            torch.manual_seed(0)
            export = export_model(build_model("resnet18_small", modalities={"s2": local.band_names("s2")}),
                                  work / "export", Normalizer.from_store(local))
            res["embed"] = {"local disk": embed(str(local.path), str(work / "emb") + "/", export),
                            "S3 (moto)": embed(url, "s3://bench/emb/", export)}
    finally:
        proc.kill()
    print(f"{ARGS.chips} chips of {ARGS.chip_size} px ({res['store_mib']:.0f} MiB, {n_obj} objects; upload "
          f"{up:.1f} s), S2 read in batches of {ARGS.batch}, best of {ARGS.repeats}")
    print("| store on | pipeline | chips/s | open s |")
    print("|---|---|---:|---:|")
    for k, v in res["read"].items():
        w, p = k.split(" / ")
        print(f"| {w} | {p} | {v['chips_per_s']:.0f} | {v['open_s']:.2f} |")
    if "embed" in res:
        e = res["embed"]
        print(f"embed (resnet18_small, local engine, shards of 512): local {e['local disk']:.0f} chips/s, store and "
              f"output on S3 {e['S3 (moto)']:.0f} chips/s ({e['S3 (moto)'] / e['local disk']:.2f}x)")
    if ARGS.json:
        Path(ARGS.json).write_text(json.dumps(res, indent=2, default=float))
    ratio = np.array([res["read"]["S3 (moto) / zarrs"]["chips_per_s"], res["read"]["local disk / zarrs"]["chips_per_s"]])
    print(f"S3 / local (zarrs): {ratio[0] / ratio[1]:.2f}x")


ARGS: argparse.Namespace

if __name__ == "__main__":
    main()
