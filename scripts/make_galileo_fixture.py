"""Record the Galileo reference implementation's outputs for a fixed input (tests/fixtures/galileo_nano_reference.npz).

Run once, outside the project, against the publisher's own code; the test (tests/test_galileo.py) then checks
earthembed's implementation against the recorded numbers without the reference code:

    git clone https://github.com/nasaharvest/galileo /tmp/galref/repo  # commit 0f0b5b95ac81acef4b74cf4686dc877202f4541b
    pip install --target /tmp/galref/deps einops
    PYTHONPATH=/tmp/galref/deps:/tmp/galref/repo .venv/bin/python scripts/make_galileo_fixture.py \
        --weights ../shared/data/weights/galileo-nano --out tests/fixtures/galileo_nano_reference.npz

The input has every token family (space-time S1/S2/NDVI groups, the SRTM space group, the ERA5 time group, the
location static group), two dates with different months, groups hidden for one row, one date or every row, and
is run at patch sizes 8 (the weights' own) and 4 (a resized patch projection).
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import numpy as np
import torch


def fixed_input(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    b, h, w, t = 2, 16, 16, 2
    s_t_m = np.zeros((b, h, w, t, 7), np.float32)
    s_t_m[1, :, :, :, 5] = 1  # S2_SWIR hidden in row 1
    s_t_m[:, :, :, :, 6] = 1  # NDVI hidden everywhere
    s_t_m[0, :, :, 1, 0] = 1  # S1 of the second date hidden in row 0
    sp_m = np.ones((b, h, w, 3), np.float32)
    sp_m[..., 0] = 0  # SRTM visible
    t_m = np.ones((b, t, 3), np.float32)
    t_m[..., 0] = 0  # ERA5 visible
    st_m = np.ones((b, 4), np.float32)
    st_m[:, 1] = 0  # location visible
    return {
        "s_t_x": rng.normal(size=(b, h, w, t, 13)).astype(np.float32),
        "sp_x": rng.normal(size=(b, h, w, 16)).astype(np.float32),
        "t_x": rng.normal(size=(b, t, 6)).astype(np.float32),
        "st_x": rng.normal(size=(b, 18)).astype(np.float32),
        "s_t_m": s_t_m, "sp_m": sp_m, "t_m": t_m, "st_m": st_m,
        "months": np.array([[0, 6], [11, 3]], np.int64),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=Path, required=True, help="folder with config.json and encoder.pt")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    import single_file_galileo as ref  # the publisher's file, from PYTHONPATH

    enc = ref.Encoder.load_from_folder(args.weights, torch.device("cpu")).eval()
    inp = fixed_input()
    out: dict[str, np.ndarray] = {f"input_{k}": v for k, v in inp.items()}
    t = {k: torch.from_numpy(v) for k, v in inp.items()}
    with torch.no_grad():
        for p in (8, 4):
            res = enc(t["s_t_x"], t["sp_x"], t["t_x"], t["st_x"], t["s_t_m"], t["sp_m"], t["t_m"], t["st_m"],
                      t["months"], patch_size=p)
            s_t_x, sp_x, t_x, st_x, s_t_m, sp_m, t_m, st_m, _ = res
            pooled = enc.average_tokens(s_t_x, sp_x, t_x, st_x, s_t_m, sp_m, t_m, st_m)
            for name, v in zip(("s_t_x", "sp_x", "t_x", "st_x", "s_t_m", "sp_m", "t_m", "st_m", "pooled"),
                               (s_t_x, sp_x, t_x, st_x, s_t_m, sp_m, t_m, st_m, pooled), strict=True):
                out[f"p{p}_{name}"] = v.numpy().astype(np.float32)
    ref_dir = Path(ref.__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(ref_dir), "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    out["reference_commit"] = np.array(commit)
    out["torch_version"] = np.array(torch.__version__)
    np.savez_compressed(args.out, **out)
    print(f"wrote {args.out} (reference commit {commit})")


if __name__ == "__main__":
    main()
