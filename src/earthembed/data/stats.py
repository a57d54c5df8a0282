"""Per-band normalisation statistics, ignoring NaN, Inf and nodata.

Mean/std feed z-score normalisation; robust percentiles (1/2/98/99) let users clip heavy-tailed SAR and
bright clouds. Computed on a random subset of chips (``max_chips``) so it scales to large stores.
Statistics are always finite numbers: non-finite pixels are ignored like nodata, and a band without a single
valid pixel gets ``null`` values with ``count`` 0 (the normaliser refuses to use it rather than guess).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

from earthembed.data.modalities import Modality

if TYPE_CHECKING:
    from earthembed.data.store import ChipStore

PERCENTILES = (1, 2, 50, 98, 99)


def band_stats(data: np.ndarray, modality: Modality, max_pixels: int = 2_000_000, seed: int = 0) -> dict[str, Any]:
    """Statistics of [N, C, H, W] ``data`` per band; pixels equal to nodata, NaN or +-Inf are ignored."""
    from earthembed.data.store import valid_pixels

    rng = np.random.default_rng(seed)
    out: dict[str, list[Any]] = {"mean": [], "std": [], "count": [], **{f"p{p:02d}": [] for p in PERCENTILES}}
    for c in range(data.shape[1]):
        v = data[:, c].reshape(-1)
        v = v[valid_pixels(v, modality.nodata)].astype(np.float64)
        out["count"].append(int(v.size))
        if v.size == 0:
            for k in out:
                if k != "count":
                    out[k].append(None)
            continue
        out["mean"].append(float(v.mean()))
        out["std"].append(float(v.std()))
        sample = v if v.size <= max_pixels else rng.choice(v, max_pixels, replace=False)
        for p, q in zip(PERCENTILES, np.percentile(sample, PERCENTILES), strict=True):
            out[f"p{p:02d}"].append(float(q))
        if not all(np.isfinite(out[k][-1]) for k in out if k != "count"):  # e.g. values near float64's limit
            raise ValueError(f"statistics of {modality.name} band {modality.band_names[c]} overflow: values too large")
    return {"bands": modality.band_names, **out}


def compute_stats(
    store_path: str | Path | ChipStore, max_chips: int | None = 2000, seed: int = 0, _allow_incomplete: bool = False
) -> dict[str, Any]:
    """Statistics for every non-categorical modality of a store (a random subset of ``max_chips`` chips): a path,
    an ``s3://`` / ``gs://`` URL or an open :class:`~earthembed.data.store.ChipStore`."""
    from earthembed.data.store import ARRAYS, ChipStore, _read_meta

    if _allow_incomplete:
        path = Path(store_path)  # type: ignore[arg-type]  # called by StoreWriter.close, which holds the lock, before the store is complete
        meta = _read_meta(path)
        mods = {k: Modality.from_dict(v) for k, v in meta["modalities"].items()}
        root = zarr.open_group(path / ARRAYS, mode="r")
        import pandas as pd

        from earthembed.data.store import PARTS_DIR

        parts = sorted((path / PARTS_DIR).glob("part-*.parquet"))
        has = pd.concat([pd.read_parquet(f, columns=[f"has_{k}" for k in mods]) for f in parts], ignore_index=True)
        present = {k: has[f"has_{k}"].to_numpy(dtype=bool) for k in mods}
        read = {k: (lambda ii, k=k: root[k].get_orthogonal_selection((ii, slice(None), slice(None), slice(None))))
                for k in mods}
    else:
        store = store_path if isinstance(store_path, ChipStore) else ChipStore(store_path, check_stats=False)
        mods = store.modalities
        present = {k: store.present(k) for k in mods}
        read = {k: (lambda ii, k=k: store.read(k, ii)) for k in mods}
    rng = np.random.default_rng(seed)
    stats: dict[str, Any] = {}
    for k, m in mods.items():
        if m.kind == "categorical":
            continue
        chips = np.flatnonzero(present[k])
        if chips.size == 0:
            continue
        if max_chips is not None and chips.size > max_chips:
            chips = np.sort(rng.choice(chips, max_chips, replace=False))
        stats[k] = {**band_stats(read[k](chips), m, seed=seed), "n_chips": int(chips.size)}
    return stats


def update_store_stats(store_path: str | Path, max_chips: int | None = 2000, seed: int = 0) -> dict[str, Any]:
    """Recompute and save statistics of a complete store (``earthembed stats``), holding the store's lock (a lease
    lock on object storage: ``s3://`` / ``gs://`` stores are read and written back through :mod:`earthembed.storage`).

    Opens the store without the finite-statistics check, so this is how non-finite statistics get fixed."""
    from earthembed.data.store import ChipStore

    first = ChipStore(store_path, check=False, check_stats=False)  # is a complete store: its metadata only
    with first.lock() as lock:
        store = ChipStore(store_path, check_stats=False)  # checked and read under the lock
        stats = compute_stats(store, max_chips=max_chips, seed=seed)
        store.set_stats(stats, lock)
    return stats
