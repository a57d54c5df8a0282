"""Time in a chip store: which modality keys are dates of one series, in which order, and each chip's dates.

A store holds several dates of a modality as separate modality keys (``s2``, ``s2_t2``, ``s2_t3``, ...: ``ingest
rasters -m s2_t2=2020.tif --date s2_t2=2020-06-01``, ``earthembed synth --dates N``) with each chip's acquisition
date in the index column ``date_<key>``. The on-disk format has no time axis, so this module is the one place that
reads one into it:

* keys of the same product and the same bands (in the same order) are one :class:`DateSeries`: the same
  observation at several dates. Product *and* bands, because a band subset or another processing level of the same
  place is another modality, not another date.
* a series is ordered by date: each key's :func:`typical_date` (its most common ``date_<key>``), so keys named
  ``naip_2010`` / ``naip_2012`` order as well as ``s2_t2`` / ``s2_t3``. When some key has no date at all, the
  ``_t<k>`` suffix orders them instead (the base key is date 1): a partial order by date would be a guess.
* its ``base`` is the key the others extend (``s2`` for ``s2_t2``, ``s2_t3``) when there is one, else the earliest
  key: the name a model trained on one date knows the modality by, so per-date embedding feeds key k of the series
  to the model under the base name.
* each chip has its own dates (:meth:`DateSeries.chip_dates`, NaT where a chip lacks the date); the series' date of
  a key is the typical one, since a per-date table (``embed --dates``) names one date per date index.

A modality with one key is a series of length 1 (static data such as elevation, or a single acquisition).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import numpy as np

SUFFIX = re.compile(r"^(?P<base>.+)_t(?P<k>[0-9]+)$")
"""``<base>_t<k>``: the k-th date of ``<base>`` (k >= 2; the base key itself is date 1)."""


def date_key(base: str, t: int) -> str:
    """The store key of date index ``t`` (0-based) of ``base`` as ``synth`` and the docs name them: ``s2``,
    ``s2_t2``, ``s2_t3``, ..."""
    return base if t == 0 else f"{base}_t{t + 1}"


def _split_key(key: str) -> tuple[str, int]:
    """(base name, 1-based date number) of ``key``: ``s2_t3`` -> (``s2``, 3), ``s2`` -> (``s2``, 1)."""
    m = SUFFIX.match(key)
    return (m["base"], int(m["k"])) if m else (key, 1)


def typical_date(index: Any, key: str) -> str | None:
    """The most common ``date_<key>`` of the chips (ISO ``YYYY-MM-DD``; ties: the earliest), None when no chip has
    one. One date per key, as a per-date table or a model's timestep needs, even if chips differ by a few days."""
    col = f"date_{key}"
    if col not in index.columns:
        return None
    dates = index[col].dropna().astype(str).str.slice(0, 10)
    dates = dates[dates != ""]
    return str(dates.mode().iloc[0]) if len(dates) else None


def order_by_date(keys: list[str], dates: dict[str, str | None]) -> list[str]:
    """``keys`` in date order (ISO strings sort as dates; ties by key); by ``_t<k>`` suffix when any is undated."""
    if all(dates.get(k) for k in keys):
        return sorted(keys, key=lambda k: (str(dates[k]), _split_key(k)[1], k))
    return sorted(keys, key=lambda k: (_split_key(k)[1], k))


@dataclasses.dataclass(frozen=True)
class DateSeries:
    """One modality at several dates: the store ``keys`` in date order and the typical ISO date of each (None where
    the store records none). ``product`` and ``bands`` are what the keys share."""

    base: str
    keys: tuple[str, ...]
    dates: tuple[str | None, ...]
    product: str = ""
    bands: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.keys)

    def key_at(self, t: int) -> str | None:
        """The key of date index ``t`` (0-based), None past the end of the series."""
        return self.keys[t] if 0 <= t < len(self.keys) else None

    def chip_dates(self, index: Any) -> np.ndarray:
        """``[N, T]`` datetime64[D] of each chip's ``date_<key>`` (NaT where the chip has no date for it)."""
        import pandas as pd

        out = np.full((len(index), len(self.keys)), np.datetime64("NaT"), dtype="datetime64[D]")
        for j, k in enumerate(self.keys):
            col = f"date_{k}"
            if col in index.columns:
                d = pd.to_datetime(index[col].astype("string").str.slice(0, 10), errors="coerce")
                out[:, j] = d.to_numpy(dtype="datetime64[D]")
        return out


def date_series(store: Any) -> dict[str, DateSeries]:
    """Every modality of ``store`` as a :class:`DateSeries` keyed by its base, in the store's modality order (of
    each series' first key): keys of the same product and bands grouped and ordered by date (module docstring)."""
    groups: dict[tuple[str, tuple[str, ...]], list[str]] = {}
    for k, m in store.modalities.items():
        groups.setdefault((m.product or m.name, tuple(m.band_names)), []).append(k)
    index = store.index
    out: dict[str, DateSeries] = {}
    for (product, bands), keys in groups.items():
        dates = {k: typical_date(index, k) for k in keys}
        ordered = order_by_date(keys, dates)
        bases = {_split_key(k)[0] for k in keys}
        base = next(iter(bases)) if len(bases) == 1 and next(iter(bases)) in keys else ordered[0]
        out[base] = DateSeries(base, tuple(ordered), tuple(dates[k] for k in ordered), product, bands)
    return out


def time_series(store: Any) -> dict[str, DateSeries]:
    """The series of ``store`` with more than one date (what ``embed --dates`` and change detection use)."""
    return {b: s for b, s in date_series(store).items() if len(s) > 1}
