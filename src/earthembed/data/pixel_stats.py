"""Per-band statistics of pixel arrays, ignoring NaN, Inf and nodata: what normalisation is computed from.

Mean/std feed z-score normalisation; robust percentiles (1/2/98/99) let users clip heavy-tailed SAR and
bright clouds. Computed on a random subset of chips (``max_chips``) so it scales to large stores.
Statistics are always finite numbers: non-finite pixels are ignored like nodata, and a band without a single
valid pixel gets ``null`` values with ``count`` 0 (the normaliser refuses to use it rather than guess).
Pure computation on arrays and readers: the store's writer and ``earthembed stats``
(:mod:`earthembed.data.stats`) both call :func:`sample_stats` with their own ways of reading chips.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from earthembed.data.modalities import Modality

PERCENTILES = (1, 2, 50, 98, 99)


def valid_pixels(a: np.ndarray, nodata: Any) -> np.ndarray:
    """Boolean mask of ``a``: finite (not NaN/Inf) and not the modality's ``nodata`` value."""
    valid = np.isfinite(a) if np.issubdtype(a.dtype, np.floating) else np.ones(a.shape, dtype=bool)
    if nodata is not None and not (isinstance(nodata, float) and np.isnan(nodata)):
        valid &= a != nodata
    return valid


def band_stats(data: np.ndarray, modality: Modality, max_pixels: int = 2_000_000, seed: int = 0) -> dict[str, Any]:
    """Statistics of [N, C, H, W] ``data`` per band; pixels equal to nodata, NaN or +-Inf are ignored."""
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


def sample_stats(modalities: Mapping[str, Modality], present: Mapping[str, np.ndarray],
                 read: Mapping[str, Callable[[np.ndarray], np.ndarray]], max_chips: int | None = 2000, seed: int = 0
                 ) -> dict[str, Any]:
    """Statistics of every non-categorical modality from a random subset of ``max_chips`` of its present chips
    (``present[k]``: ``[N]`` bool; ``read[k](sorted positions)``: ``[n, C, H, W]``)."""
    rng = np.random.default_rng(seed)
    stats: dict[str, Any] = {}
    for k, m in modalities.items():
        if m.kind == "categorical":
            continue
        chips = np.flatnonzero(present[k])
        if chips.size == 0:
            continue
        if max_chips is not None and chips.size > max_chips:
            chips = np.sort(rng.choice(chips, max_chips, replace=False))
        stats[k] = {**band_stats(read[k](chips), m, seed=seed), "n_chips": int(chips.size)}
    return stats
