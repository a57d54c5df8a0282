"""Per-band normalisation statistics, ignoring NaN and nodata.

Mean/std feed z-score normalisation; robust percentiles (1/2/98/99) let users clip heavy-tailed SAR and
bright clouds. Computed on a random subset of chips (``max_chips``) so it scales to large stores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import zarr

from earthembed.data.modalities import Modality

PERCENTILES = (1, 2, 50, 98, 99)


def band_stats(data: np.ndarray, modality: Modality, max_pixels: int = 2_000_000, seed: int = 0) -> dict[str, Any]:
    """Statistics of [N, C, H, W] ``data`` per band; pixels equal to nodata or NaN are ignored."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[float]] = {"mean": [], "std": [], "count": [], **{f"p{p:02d}": [] for p in PERCENTILES}}
    nod = modality.nodata
    for c in range(data.shape[1]):
        v = data[:, c].reshape(-1).astype(np.float64)
        keep = ~np.isnan(v)
        if nod is not None and not (isinstance(nod, float) and np.isnan(nod)):
            keep &= v != nod
        v = v[keep]
        out["count"].append(int(v.size))
        if v.size == 0:
            for k in out:
                if k != "count":
                    out[k].append(float("nan"))
            continue
        out["mean"].append(float(v.mean()))
        out["std"].append(float(v.std()))
        sample = v if v.size <= max_pixels else rng.choice(v, max_pixels, replace=False)
        for p, q in zip(PERCENTILES, np.percentile(sample, PERCENTILES), strict=True):
            out[f"p{p:02d}"].append(float(q))
    return {"bands": modality.band_names, **out}


def compute_stats(
    store_path: str | Path, max_chips: int | None = 2000, seed: int = 0, _allow_incomplete: bool = False
) -> dict[str, Any]:
    """Statistics for every non-categorical modality of a store (a random subset of ``max_chips`` chips)."""
    from earthembed.data.store import ARRAYS, ChipStore, _read_meta

    path = Path(store_path)
    if _allow_incomplete:
        meta = _read_meta(path)
        mods = {k: Modality.from_dict(v) for k, v in meta["modalities"].items()}
        int(meta["n_chips"])
        root = zarr.open_group(path / ARRAYS, mode="r")
        import pandas as pd

        from earthembed.data.store import PARTS_DIR

        parts = sorted((path / PARTS_DIR).glob("part-*.parquet"))
        has = pd.concat([pd.read_parquet(f, columns=[f"has_{k}" for k in mods]) for f in parts], ignore_index=True)
    else:
        store = ChipStore(path)
        mods, _n, root = store.modalities, len(store), store.root
        has = store.index[[f"has_{k}" for k in mods]]
    rng = np.random.default_rng(seed)
    stats: dict[str, Any] = {}
    for k, m in mods.items():
        if m.kind == "categorical":
            continue
        present = np.flatnonzero(has[f"has_{k}"].to_numpy())
        if present.size == 0:
            continue
        if max_chips is not None and present.size > max_chips:
            present = np.sort(rng.choice(present, max_chips, replace=False))
        data = root[k].get_orthogonal_selection((present, slice(None), slice(None), slice(None)))
        stats[k] = {**band_stats(data, m, seed=seed), "n_chips": int(present.size)}
    return stats


def update_store_stats(store_path: str | Path, max_chips: int | None = 2000, seed: int = 0) -> dict[str, Any]:
    """Recompute and save statistics of a complete store (``earthembed stats``)."""
    from earthembed.data.store import ChipStore

    store = ChipStore(store_path)
    stats = compute_stats(store_path, max_chips=max_chips, seed=seed)
    store.set_stats(stats)
    return stats
