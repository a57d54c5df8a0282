"""True-colour thumbnails of chips, read from the store.

The red, green and blue bands are chosen by wavelength (nearest to 665, 560 and 492 nm) among the bands of
an optical modality, so Sentinel-2 (B04/B03/B02), Landsat (B4/B3/B2), NAIP (R/G/B) and user modalities
declared with wavelengths all work without a table of band names. A modality without wavelengths but with
bands named R, G, B is used as such; otherwise the first band is shown in grey. The stretch is the store's
2nd-98th percentile per band (its statistics), else the percentiles of the chips shown.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

RGB_NM = (665.0, 560.0, 492.0)


def rgb_bands(store: Any) -> tuple[str, list[str]] | None:
    """(modality, [red, green, blue] band names) for true colour, or (modality, [band]) for grey, or None."""
    optical = [m for m in store.modalities.values() if m.kind == "optical"]
    for m in optical:
        waves = [(b.wavelength_nm, b.name) for b in m.bands if b.wavelength_nm]
        if len(waves) >= 3:
            picks = [min(waves, key=lambda w, t=t: abs(w[0] - t))[1] for t in RGB_NM]
            if len(set(picks)) == 3:
                return m.name, picks
    for m in optical:
        names = {b.upper(): b for b in m.band_names}
        if {"R", "G", "B"} <= set(names):
            return m.name, [names["R"], names["G"], names["B"]]
    mods = optical or list(store.modalities.values())
    return (mods[0].name, [mods[0].band_names[0]]) if mods else None


def true_colour(store: Any, chip_ids: Sequence[str]) -> tuple[np.ndarray, str]:
    """[N, H, W, 3] float in [0, 1] (NaN where nodata) for ``chip_ids``, and a caption of the bands used."""
    pick = rgb_bands(store)
    if pick is None:
        raise ValueError(f"{store.path}: no modality to draw thumbnails from")
    mod, bands = pick
    pos = pd.Series(store.index["idx"].to_numpy() if "idx" in store.index else np.arange(len(store)),
                    index=store.index["chip_id"].astype(str).to_numpy())
    idx = pos.reindex([str(c) for c in chip_ids]).to_numpy()
    if np.isnan(idx.astype(float)).any():
        raise KeyError(f"{store.path}: chips {[c for c, i in zip(chip_ids, idx, strict=True) if i != i]} not in the store")
    order = np.argsort(idx)
    a = store.read(mod, idx[order].astype(np.int64), bands=bands).astype(np.float32)
    a = a[np.argsort(order)]
    m = store.modality(mod)
    if m.nodata is not None:
        a[a == m.nodata] = np.nan
    stats = (store.stats or {}).get(mod, {})
    out = np.empty_like(a)
    for k, b in enumerate(bands):
        band = a[:, k]
        lo = hi = None
        if b in stats.get("bands", []) and "p02" in stats and "p98" in stats:
            j = stats["bands"].index(b)
            lo, hi = stats["p02"][j], stats["p98"][j]
        if lo is None or hi is None or not hi > lo:
            finite = band[np.isfinite(band)]
            lo, hi = (np.percentile(finite, [2, 98]) if finite.size else (0.0, 1.0))
        out[:, k] = np.clip((band - lo) / max(hi - lo, 1e-9), 0, 1)
    if len(bands) == 1:
        out = np.repeat(out, 3, axis=1)
    return np.moveaxis(out, 1, -1), f"{mod}: {', '.join(bands)}"


def hits_grid(store: Any, positives: Sequence[str], negatives: Sequence[str], hits: pd.DataFrame,
              png: str | Path, columns: int = 10, max_hits: int = 50, overwrite: bool = True) -> Path:
    """A PNG grid: the query chips (positives, then negatives) in the first row(s), then hits by rank."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from earthembed.outputs import save_png

    hits = hits.head(max_hits)
    query = [(c, "positive", "tab:green") for c in positives] + [(c, "negative", "tab:red") for c in negatives]
    ids = [c for c, _, _ in query] + hits["chip_id"].astype(str).tolist()
    imgs, caption = true_colour(store, ids)
    q_rows = -(-len(query) // columns) if query else 0
    h_rows = -(-len(hits) // columns)
    fig, axes = plt.subplots(q_rows + h_rows, columns, figsize=(1.25 * columns, 1.45 * (q_rows + h_rows)),
                             squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i, (cid, role, colour) in enumerate(query):
        ax = axes[i // columns, i % columns]
        ax.imshow(np.nan_to_num(imgs[i]), interpolation="nearest")
        ax.set_title(f"{role}\n{cid[-18:]}", fontsize=5.5, color=colour)
    for j, r in enumerate(hits.itertuples()):
        ax = axes[q_rows + j // columns, j % columns]
        ax.imshow(np.nan_to_num(imgs[len(query) + j]), interpolation="nearest")
        ax.set_title(f"#{r.rank} {r.score:.3f}\n{str(r.chip_id)[-18:]}", fontsize=5.5)
    fig.suptitle(f"query and top {len(hits)} hits (true colour {caption})", fontsize=8)
    return save_png(fig, png, overwrite)
