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


def series_info(store: Any) -> list[dict[str, Any]]:
    """What ``earthembed info`` says of each time series of ``store`` (:func:`time_series`): its base, keys in date
    order, and per key the typical date, the chips that have it and the range of their own dates; ``coverage``:
    how many chips have 0, 1, ... of the series' dates (the chips each date index would skip in ``embed --dates``)."""
    out = []
    index = store.index
    for base, s in time_series(store).items():
        has = np.stack([store.present(k) for k in s.keys])
        chip_dates = s.chip_dates(index)
        keys = []
        for j, k in enumerate(s.keys):
            d = chip_dates[has[j], j]
            d = d[~np.isnat(d)]
            keys.append({"key": k, "date": s.dates[j], "chips": int(has[j].sum()),
                         "date_range": [str(d.min()), str(d.max())] if len(d) else None})
        counts = np.bincount(has.sum(axis=0), minlength=len(s) + 1)
        out.append({"base": base, "product": s.product, "keys": list(s.keys), "dates": keys,
                    "coverage": {str(n): int(c) for n, c in enumerate(counts) if c}})
    return out


def later_keys(store: Any) -> set[str]:
    """Keys that are a later date of a series (``s2_t2``, ``s2_t3``; not the base): what per-date reading renames."""
    return {k for s in date_series(store).values() for k in s.keys if k != s.base}


@dataclasses.dataclass(frozen=True)
class DatePlan:
    """What per-date reading (``embed --dates``) reads at each date index ``t`` of the store's series.

    ``series``: base -> its keys by date (the requested modalities with several dates); ``static``: requested
    modalities with one date (elevation, a single-date product), fed at every date as a single-date store feeds
    them; ``ts``: the date indices chosen; ``dates``/``date_keys``: per date index (the whole series, not only the
    chosen ones) the ISO date and key of the first series that has one: a per-date table names one date per index.
    ``skipped``: per chosen date index, chips with none of the series at that date (no row is written for them).
    """

    series: dict[str, tuple[str, ...]]
    static: tuple[str, ...]
    ts: tuple[int, ...]
    dates: tuple[str | None, ...]
    date_keys: tuple[str, ...]
    skipped: dict[int, int]

    def keys_at(self, t: int) -> dict[str, str]:
        """Base -> store key read at date index ``t`` (series that reach ``t``, and the static modalities)."""
        out = {b: keys[t] for b, keys in self.series.items() if t < len(keys)}
        out.update({k: k for k in self.static})
        return out

    def label(self, t: int) -> str:
        d = self.dates[t]
        return f"t={t} {d} ({self.date_keys[t]})" if d else f"t={t} ({self.date_keys[t]})"

    def metadata(self) -> dict[str, Any]:
        """The ``time`` entry of a per-date embedding table's metadata."""
        return {"mode": "per_date", "series": {b: list(k) for b, k in self.series.items()}, "dates": list(self.dates),
                "date_keys": list(self.date_keys), "t": list(self.ts), "static": list(self.static),
                "skipped": [{"t": t, "date": self.dates[t], "date_key": self.date_keys[t], "chips": n}
                            for t, n in self.skipped.items() if n]}



def skipped_line(time: dict[str, Any]) -> str | None:
    """One line counting the (chip, date) rows a per-date table left out for want of imagery, from its ``time``
    metadata (:meth:`DatePlan.metadata`); None when none was."""
    rows = time.get("skipped") or []
    if not rows:
        return None
    parts = "; ".join(f"t={r['t']} {r['date'] or ''} ({r['date_key']}): {r['chips']}".replace("  ", " ") for r in rows)
    return (f"{sum(r['chips'] for r in rows)} (chip, date) rows skipped: no imagery of "
            f"{', '.join(time.get('series', {}))} at that date ({parts})")


def base_modalities(store: Any) -> list[str]:
    """The store's modalities without the later dates of its series (``s2``, ``s1``, ``dem``; not ``s2_t2``) and
    without categorical maps: what per-date embedding feeds by default."""
    return [b for b, s in date_series(store).items() if store.modality(b).kind != "categorical"]


def series_of(store: Any, modalities: list[str], all_series: dict[str, DateSeries] | None = None
              ) -> dict[str, DateSeries]:
    """The series of each of ``modalities``, which must be base keys: a later date (``s2_t3``) is a one-line error
    saying which base to ask for, since per-date reading reads every date of a series under its base name."""
    all_series = date_series(store) if all_series is None else all_series
    of_key = {k: s for s in all_series.values() for k in s.keys}
    out: dict[str, DateSeries] = {}
    for m in modalities:
        s = of_key.get(m)
        if s is None:
            raise ValueError(f"{store.path}: no modality {m!r} (it has {list(store.modalities)})")
        if s.base != m:
            raise ValueError(f"--dates: {m!r} is date {s.keys.index(m) + 1} of the series {s.base} ({', '.join(s.keys)}); "
                             f"--dates reads every date of a series by its base name: ask for {s.base!r}")
        out[m] = s
    return out


SERIES = "series"
"""``embed --dates series``: each chip's whole series as one vector, by a model with a time axis (Galileo)."""


def is_series(spec: Any) -> bool:
    """True for ``--dates series`` (any case, spaces around)."""
    return isinstance(spec, str) and spec.strip().lower() == SERIES


def series_keys(store: Any, modalities: list[str]) -> list[str]:
    """Every key of the series of each of ``modalities`` (base keys, as :func:`series_of` checks): ``s2`` ->
    ``s2``, ``s2_t2``, ``s2_t3`` in date order; a single-date modality stays itself."""
    return [k for s in series_of(store, modalities).values() for k in s.keys]


def series_reads(store: Any, dates: dict[str, int]) -> dict[str, tuple[str, ...]]:
    """``{modality: its series' keys in date order}`` for each modality a model reads ``T > 1`` dates of at once
    (``dates``: its input spec's ``dates`` per requested modality), which must be the base of a series of exactly
    ``T`` dates in ``store``: what :class:`~earthembed.data.date_views.SeriesView` reads as one observation."""
    out: dict[str, tuple[str, ...]] = {}
    for k, n in dates.items():
        if n == 1:
            continue
        s = series_of(store, [k])[k]
        if len(s) != n:
            raise ValueError(f"{store.path}: the model reads {n} dates of {k!r} at once, the store's series {k!r} has "
                             f"{len(s)} ({', '.join(s.keys)}); fit the model to this store (embed --encoder) instead")
        out[k] = s.keys
    return out


def series_metadata(store: Any, timesteps: dict[str, int], keys: list[str]) -> dict[str, Any]:
    """The ``time`` entry of a table embedding each chip's whole series as one vector (``embed --dates series``).

    ``timesteps``: the date index (0-based) a model with a time axis feeds each store key at (Galileo's
    ``timesteps``); ``keys``: the store keys read. As a per-date table's (:meth:`DatePlan.metadata`), ``dates`` and
    ``date_keys`` name each date index of the model's whole axis (the typical date of its first dated key in store
    order: a timestep is one date) and ``t`` the indices ``keys`` fill; ``series``/``static``: the keys read by
    series. ValueError (one line) when ``keys`` fill a single date index: a time series of one date is no series."""
    n = max(timesteps.values(), default=0) + 1
    used = sorted({timesteps[k] for k in keys if k in timesteps})
    if len(used) < 2:
        have = {b: list(s.keys) for b, s in time_series(store).items()}
        why = (f"{sorted(keys)} are read at one date (the store's series: {have}; embed a whole series with a model "
               "fitted to all its dates)" if have else
               "no modality has several dates (a series is keys of one product and bands with their date_<key>, "
               "e.g. s2, s2_t2, ...: `ingest rasters --date KEY=YYYY-MM-DD`, `ingest stac --composite`, "
               "`synth --dates N`)")
        raise ValueError(f"{store.path}: --dates series: no time series to embed as one vector: {why}")
    dates: list[str | None] = []
    date_keys: list[str] = []
    for t in range(n):
        at = [k for k in store.modalities if timesteps.get(k) == t]
        dated = [(k, d) for k in at if (d := typical_date(store.index, k))]
        k, d = dated[0] if dated else (at[0] if at else "", None)
        dates.append(d)
        date_keys.append(k)
    series = {b: [k for k in s.keys if k in keys] for b, s in date_series(store).items()}
    return {"mode": SERIES, "t": used, "dates": dates, "date_keys": date_keys,
            "timesteps": {k: t for k, t in timesteps.items() if k in keys},
            "series": {b: ks for b, ks in series.items() if len(ks) > 1},
            "static": [ks[0] for ks in series.values() if len(ks) == 1]}


def plan_dates(store: Any, modalities: list[str], spec: str | list[str | int] = "all") -> DatePlan:
    """The :class:`DatePlan` of reading ``modalities`` (base keys, e.g. ``s2``, ``s1``) of ``store`` per date.

    ``spec``: ``"all"``, or date indices / ISO dates / date keys (a comma-separated string or a list). Errors are one
    line: a later-date key asked for instead of its base, no series among ``modalities``, a date no chip has."""
    all_series = date_series(store)
    series: dict[str, DateSeries] = {}
    static: list[str] = []
    for m, s in series_of(store, modalities, all_series).items():
        if len(s) > 1:
            series[m] = s
        else:
            static.append(m)
    if not series:
        have = {b: list(s.keys) for b, s in all_series.items() if len(s) > 1}
        why = (f"none of {modalities} has several dates (the store's series: {have})" if have else
               "no modality has several dates (a series is keys of one product and bands with their date_<key>, "
               "e.g. s2, s2_t2, ...: `ingest rasters --date KEY=YYYY-MM-DD`, `synth --dates N`)")
        raise ValueError(f"{store.path}: --dates: no time series to embed per date: {why}")
    n = max(len(s) for s in series.values())
    first = [next(s for s in series.values() if t < len(s)) for t in range(n)]
    dates = tuple(s.dates[t] for t, s in enumerate(first))
    keys = tuple(s.keys[t] for t, s in enumerate(first))
    has = np.zeros((n, len(store)), dtype=bool)
    for s in series.values():
        for t, k in enumerate(s.keys):
            has[t] |= store.present(k)
    plan = DatePlan({b: s.keys for b, s in series.items()}, tuple(static), (), dates, keys, {})
    ts = _choose(plan, series, spec, has.any(axis=1))
    return dataclasses.replace(plan, ts=ts, skipped={t: int((~has[t]).sum()) for t in ts})


def _choose(plan: DatePlan, series: dict[str, DateSeries], spec: str | list[str | int], any_chip: np.ndarray
            ) -> tuple[int, ...]:
    """Date indices named by ``spec`` (see :func:`plan_dates`)."""
    import datetime as _dt

    n = len(plan.dates)
    if isinstance(spec, str) and spec.strip().lower() == "all":
        return tuple(range(n))
    items = [x.strip() for x in spec.split(",")] if isinstance(spec, str) else [str(x).strip() for x in spec]
    if not [x for x in items if x]:
        raise ValueError("--dates: give all, or date indices / ISO dates / date keys separated by commas")
    have = "; ".join(plan.label(t) for t in range(n))
    out: list[int] = []
    for x in filter(None, items):
        if x.isdigit():
            if int(x) >= n:
                raise ValueError(f"--dates {x}: no date index {x}; the dates are {have}")
            ts = [int(x)]
        else:
            iso = x
            if x not in {k for s in series.values() for k in s.keys}:
                try:
                    iso = _dt.date.fromisoformat(x).isoformat()
                except ValueError:
                    raise ValueError(f"--dates {x}: not a date index, an ISO date (YYYY-MM-DD) or a date key; "
                                     f"the dates are {have}") from None
            ts = [t for t in range(n) if any(t < len(s) and iso in (s.keys[t], s.dates[t]) for s in series.values())]
            if not ts:
                raise ValueError(f"--dates {x}: no chip has this date; the dates are {have}")
        for t in ts:
            if not any_chip[t]:
                raise ValueError(f"--dates {x}: no chip has imagery at {plan.label(t)}; the dates are {have}")
        out += ts
    return tuple(sorted(set(out)))
