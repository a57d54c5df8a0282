"""Per-chip values derived from a store's index: targets that are not pixels (MMEarth's image-level tasks).

Each function returns a :class:`ChipValues` over *all* store positions (row i = chip i), computed once from
``index.parquet`` so a batch read only slices it: the chip centre's latitude / longitude and the acquisition
month as (sin, cos) pairs (cyclic encodings: December and January, or -179 and 179 degrees, stay close), a
numeric column z-scored, a categorical column as class ids. Missing values stay missing (NaN rows / id -1,
``present`` False) so a consumer can leave them out of a loss rather than train on invented zeros.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import shapely

from earthembed.data.store import ChipStore


@dataclasses.dataclass
class ChipValues:
    """Values by store position.

    Attributes:
        values: ``[N, d]`` float32 (NaN where missing) or ``[N, 1]`` int64 class ids (-1 where missing).
        names: what each of the ``d`` components is (e.g. ``["sin", "cos"]``).
        classes: class names in id order for categorical values, else None.
    """

    values: np.ndarray
    names: list[str]
    classes: list[str] | None = None

    @property
    def categorical(self) -> bool:
        return self.classes is not None

    @property
    def present(self) -> np.ndarray:
        """``[N]`` bool: the chip has a (complete) value."""
        if self.categorical:
            return self.values[:, 0] >= 0
        return np.isfinite(self.values).all(axis=1)

    @property
    def dim(self) -> int:
        """Regression: number of components; classification: number of classes."""
        return len(self.classes) if self.classes is not None else self.values.shape[1]


def _sincos(radians: np.ndarray) -> np.ndarray:
    return np.stack([np.sin(radians), np.cos(radians)], axis=1).astype(np.float32)


def centre_coordinate(store: ChipStore, axis: str) -> ChipValues:
    """(sin, cos) of the chip centre's latitude (``axis="lat"``) or longitude (``"lon"``) in EPSG:4326;
    NaN for chips without a footprint (e.g. non-georeferenced sources)."""
    if axis not in ("lat", "lon"):
        raise ValueError(f"axis must be 'lat' or 'lon', got {axis!r}")
    geom = np.asarray(store.index.geometry.values, dtype=object)
    ok = np.array([g is not None and not g.is_empty for g in geom], dtype=bool)
    deg = np.full(len(store), np.nan)
    if ok.any():
        c = shapely.centroid(geom[ok])  # degrees in EPSG:4326; chips are small, so planar centroids are fine
        deg[ok] = shapely.get_y(c) if axis == "lat" else shapely.get_x(c)
    return ChipValues(_sincos(np.deg2rad(deg)), [f"sin_{axis}", f"cos_{axis}"])


def acquisition_month(store: ChipStore, modality: str) -> ChipValues:
    """(sin, cos) of the month of ``date_<modality>`` (2 pi (month - 1) / 12); NaN where the date is missing."""
    col = f"date_{modality}"
    if col not in store.index:
        return ChipValues(np.full((len(store), 2), np.nan, dtype=np.float32), ["sin_month", "cos_month"])
    month = pd.to_datetime(store.index[col], errors="coerce", utc=True).dt.month.to_numpy(dtype=float)
    return ChipValues(_sincos(2 * math.pi * (month - 1) / 12), ["sin_month", "cos_month"])


def _as_matrix(col: pd.Series, where: str) -> np.ndarray:
    """[N, d] float64 from a numeric column or a column of equal-length numeric lists (NaN for nulls)."""
    first = next((v for v in col if isinstance(v, (list, tuple, np.ndarray))), None)
    if first is None:
        num = pd.to_numeric(col, errors="coerce")
        if num.notna().sum() < col.notna().sum():
            raise ValueError(f"{where}: column {col.name!r} holds non-numeric values (e.g. {col[num.isna() & col.notna()].iloc[0]!r})")
        return num.to_numpy(dtype=float)[:, None]
    d = len(first)
    rows = []
    for v in col:
        if v is None or (np.isscalar(v) and pd.isna(v)):
            rows.append(np.full(d, np.nan))
        elif len(v) != d:
            raise ValueError(f"{where}: column {col.name!r} mixes list lengths ({d} and {len(v)})")
        else:
            try:
                rows.append(np.asarray(v, dtype=float))
            except (TypeError, ValueError):
                raise ValueError(f"{where}: column {col.name!r} holds non-numeric lists (e.g. {list(v)!r})") from None
    return np.stack(rows)


def standardised(v: ChipValues, rows: Sequence[int] | np.ndarray | None = None) -> ChipValues:
    """Regression values z-scored per component with the mean / std over ``rows`` (default: all chips), so a
    loss on them is on the scale of the others and measures what varies: within one AOI the sin / cos of the
    latitude differ in the fourth decimal, and a raw target would be a constant that an uncertainty weight
    then inflates without bound. Constant components stay centred (std taken as 1)."""
    if v.categorical:
        raise ValueError("class ids are not standardised")
    x = v.values.astype(np.float64)
    ref = x if rows is None else x[np.asarray(rows, dtype=np.int64)]
    finite = np.isfinite(ref).any(axis=0)
    mean = np.array([np.nanmean(ref[:, j]) if finite[j] else 0.0 for j in range(x.shape[1])])
    std = np.array([np.nanstd(ref[:, j]) if finite[j] else 1.0 for j in range(x.shape[1])])
    std = np.where(np.isfinite(std) & (std > 1e-12), std, 1.0)
    return ChipValues(((x - mean) / std).astype(np.float32), list(v.names))


def numeric_column(store: ChipStore, name: str, rows: Sequence[int] | np.ndarray | None = None) -> ChipValues:
    """A numeric index column (scalar or fixed-length list, e.g. monthly climate), :func:`standardised`
    over ``rows``."""
    col = _column(store, name)
    x = _as_matrix(col.reset_index(drop=True), str(store.path))
    names = [name] if x.shape[1] == 1 else [f"{name}[{i}]" for i in range(x.shape[1])]
    return standardised(ChipValues(x.astype(np.float32), names), rows)


def category_column(store: ChipStore, name: str) -> ChipValues:
    """A categorical index column as class ids (classes sorted by their text); nulls get id -1."""
    col = _column(store, name)
    ok = col.notna().to_numpy()
    text = col[ok].astype(str)
    classes = sorted(text.unique().tolist())
    ids = np.full((len(col), 1), -1, dtype=np.int64)
    ids[ok, 0] = pd.Categorical(text, categories=classes).codes
    return ChipValues(ids, [name], classes)


def _column(store: ChipStore, name: str) -> Any:
    if name not in store.index.columns or name == "geometry":
        cols = [c for c in store.index.columns if c != "geometry"]
        raise ValueError(f"{store.path}: the index has no column {name!r} (columns: {cols})")
    return store.index[name]
