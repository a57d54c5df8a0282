"""Feature sets for few-shot evaluation: embedding columns of tables, and a band-statistics baseline.

A chip whose embedding is null (the modality was missing) is *excluded* from that feature set and counted,
never zero-filled: a zero vector is a point in embedding space and would be scored as if it were data.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from earthembed.data.store import ChipStore
from earthembed.embed.io import embedding_columns, read_metadata, read_table, to_matrix

STATS = ("mean", "std", "p10", "p50", "p90")


@dataclasses.dataclass
class FeatureSet:
    """Features [N, D] for the chips in ``chip_ids``; ``n_excluded`` chips of the source had none."""

    name: str
    chip_ids: np.ndarray
    X: np.ndarray
    n_excluded: int = 0
    source: str = ""
    model_id: str = ""

    @property
    def dim(self) -> int:
        return int(self.X.shape[1])


def _finite_rows(X: np.ndarray) -> np.ndarray:
    return np.isfinite(X).all(axis=1) if X.shape[1] else np.zeros(len(X), dtype=bool)


def load_feature_sets(
    name: str, path: str | Path, columns: Sequence[str] | None = None
) -> list[FeatureSet]:
    """One :class:`FeatureSet` per ``emb_*`` column of the table at ``path``, named ``<name>:<column>``.

    ``columns`` restricts (and orders) the columns; asking for a column the table lacks raises KeyError.
    """
    from earthembed.storage import location

    path = location(path)  # a Path, or an s3:// / gs:// URL
    if not path.exists():
        raise FileNotFoundError(f"{path}: embedding table not found")
    meta = read_metadata(path)
    table = read_table(path)
    avail = embedding_columns(table)
    cols = list(columns) if columns else avail
    missing = [c for c in cols if c not in avail]
    if missing:
        raise KeyError(f"{path}: no embedding column(s) {missing} (it has {avail})")
    if "chip_id" not in table.column_names:
        raise ValueError(f"{path}: embedding table has no chip_id column")
    ids = np.asarray(table.column("chip_id").to_pylist(), dtype=str)
    model_id = str(meta.get("model_id", ""))
    out = []
    for c in cols:
        X = to_matrix(table.column(c))
        ok = _finite_rows(X)
        out.append(FeatureSet(f"{name}:{c}", ids[ok], X[ok], int((~ok).sum()), str(path), model_id))
    return out


def nan_percentiles(x: np.ndarray, q: Sequence[float]) -> np.ndarray:
    """``np.nanpercentile(x, q, axis=-1)`` (linear interpolation) moved to the last axis: [..., len(q)].

    numpy's nanpercentile falls back to one Python call per row as soon as a row holds a NaN (3.8 s of the
    demo's few-shot step for 1,024 chips); sorting puts NaN last, so every row is interpolated at once.
    All-NaN rows give NaN.
    """
    v = np.sort(np.asarray(x, dtype=np.float64), axis=-1)
    m = (~np.isnan(v)).sum(axis=-1, keepdims=True)
    pos = np.asarray(q, dtype=np.float64) / 100.0 * np.maximum(m - 1, 0)  # [..., Q]
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, np.maximum(m - 1, 0))
    a, b = np.take_along_axis(v, lo, -1), np.take_along_axis(v, hi, -1)
    out = a + (b - a) * (pos - lo)
    return np.where(m > 0, out, np.nan)


def _batch_stats(x: np.ndarray) -> np.ndarray:
    """[B, C, P] float with NaN for invalid pixels -> [B, C, 5] (mean, std, p10, p50, p90) ignoring NaN."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN bands give NaN, handled by the caller
        mean = np.nanmean(x, axis=2)
        std = np.nanstd(x, axis=2)
    pct = nan_percentiles(x, [10, 50, 90]).astype(x.dtype)  # [B, C, 3]
    return np.concatenate([mean[..., None], std[..., None], pct], axis=-1)


def band_statistics_features(
    store: str | Path | ChipStore,
    modalities: Sequence[str] | None = None,
    bands: dict[str, Sequence[str]] | None = None,
    batch_size: int = 256,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(chip_ids, X [N, F], feature names) of per-band mean, std, p10, p50, p90 over valid pixels.

    The classic "no deep learning" baseline. Every non-categorical modality is used unless ``modalities``
    says otherwise; NaN and nodata pixels are ignored. A chip lacking a modality (or with no valid pixel in
    a band) gets NaN features, so it drops out of the baseline like a null embedding would.
    """
    st = store if isinstance(store, ChipStore) else ChipStore(store)
    mods = list(modalities) if modalities else [k for k, m in st.modalities.items() if m.kind != "categorical"]
    bands = dict(bands or {})
    names: list[str] = []
    sel: dict[str, list[str]] = {}
    for k in mods:
        m = st.modality(k)
        sel[k] = list(bands.get(k) or m.band_names)
        names += [f"{k}:{b}:{s}" for b in sel[k] for s in STATS]
    has = {k: st.present(k) for k in mods}
    X = np.full((len(st), len(names)), np.nan, dtype=np.float32)
    for rows, data in st.iter_batches(mods, batch_size=batch_size, bands=sel):
        col = 0
        for k in mods:
            m = st.modalities[k]
            a = data[k].astype(np.float32)
            if m.nodata is not None and not (isinstance(m.nodata, float) and np.isnan(m.nodata)):
                a[data[k] == m.nodata] = np.nan
            a[~has[k][rows]] = np.nan
            f = _batch_stats(a.reshape(a.shape[0], a.shape[1], -1)).reshape(len(rows), -1)
            X[rows, col : col + f.shape[1]] = f
            col += f.shape[1]
    return st.index["chip_id"].to_numpy(dtype=str), X, names


def band_statistics_feature_set(store: str | Path | ChipStore, name: str = "band_stats", **kwargs) -> FeatureSet:
    """:func:`band_statistics_features` as a :class:`FeatureSet` (chips with NaN features excluded)."""
    ids, X, _ = band_statistics_features(store, **kwargs)
    ok = _finite_rows(X)
    path = store.path if isinstance(store, ChipStore) else store
    return FeatureSet(name, ids[ok], X[ok], int((~ok).sum()), str(path), "band_stats")
