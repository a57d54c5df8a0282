"""A store's time series as a model reads it: one date at a time (:class:`DateView`, ``embed --dates``) or every
date at once (:class:`SeriesView`, ``embed --dates series``: one observation ``[B, T, C, H, W]`` per series).

Both read the store keys of a series (:mod:`earthembed.data.dates`: ``s2``, ``s2_t2``, ... in date order) under
the series' base name (``s2``), normalised with the base's statistics: the name and statistics a model knows the
modality by. So a model trained on ``s2`` embeds ``s2_t3`` exactly as it would a store whose ``s2`` held it, and a
model with a time axis gets the series through the data contract (:class:`~earthembed.contract.Observation`)
instead of as separate modality keys.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from earthembed.contract import NO_DATE, NO_MONTH, ChipBatch, Observation
from earthembed.data.dataset import ChipDataset
from earthembed.data.normalize import Normalizer


def _dataset_of_keys(store: Any, request: Mapping[str, Sequence[str]], normalizer: Normalizer,
                     keys: Mapping[str, Sequence[str]]) -> ChipDataset:
    """A dataset reading the store keys ``keys[base]`` of each base in ``request`` with the base's bands, each
    normalised with the base's statistics (``normalizer`` is keyed by base, as a model's is)."""
    base_of = {k: b for b, ks in keys.items() for k in ks}
    stats = {k: normalizer.stats[b] for k, b in base_of.items() if b in normalizer.stats}
    nodata = {k: normalizer.nodata[b] for k, b in base_of.items() if b in normalizer.nodata}
    return ChipDataset(store, {k: list(request[b]) for k, b in base_of.items()}, normalizer=Normalizer(stats, nodata))


class DateView:
    """One date of a store seen as a single-date store: reads key ``t`` of every series (and the static modalities)
    whose batches name them by their base (``s2_t3`` -> ``s2``, with its presence and month), normalised with the
    base's statistics. A series without a date ``t`` reads as absent."""

    def __init__(self, store: Any, request: dict[str, list[str]], normalizer: Normalizer, keys: dict[str, str]) -> None:
        self.store, self.request = store, request
        self.keys = {b: k for b, k in keys.items() if b in request}
        self.dataset = _dataset_of_keys(store, request, normalizer, {b: [k] for b, k in self.keys.items()})

    def __len__(self) -> int:
        return len(self.dataset)

    def read_batch(self, positions: np.ndarray) -> ChipBatch:
        """The chips at ``positions`` as one-date observations named by their base (:class:`ChipBatch`, with the
        dates and months of date ``t``); a series without a date ``t`` is absent on every chip."""
        raw = self.dataset.read_batch(positions)
        n, cs = len(positions), self.store.chip_size
        obs: dict[str, Observation] = {}
        for b, bands in self.request.items():
            k = self.keys.get(b)
            if k is None:  # this series has no date t: absent, as a chip lacking the modality
                obs[b] = Observation.single(torch.zeros((n, len(bands), cs, cs), dtype=torch.float32),
                                            torch.zeros(n, dtype=torch.bool),
                                            dates=torch.full((n,), NO_DATE, dtype=torch.int64),
                                            month=torch.full((n,), NO_MONTH, dtype=torch.int64))
            else:
                obs[b] = raw.obs[k]
        return ChipBatch(obs, idx=raw.idx)


class SeriesView:
    """Every date of a store's series at once: each base of ``series`` (``{"s2": ("s2", "s2_t2", "s2_t3")}``, keys
    in date order) is one observation of ``T = len(keys)`` dates, ``x`` ``[B, T, C, H, W]`` with each chip's
    presence, dates and months per date; the other modalities of ``request`` stay one-date observations."""

    def __init__(self, store: Any, request: dict[str, list[str]], normalizer: Normalizer,
                 series: Mapping[str, Sequence[str]]) -> None:
        unknown = sorted(set(series) - set(request))
        if unknown:
            raise ValueError(f"series {unknown} are not among the modalities read ({list(request)})")
        self.store, self.request = store, request
        self.series = {b: tuple(series.get(b, (b,))) for b in request}
        self.dataset = _dataset_of_keys(store, request, normalizer, self.series)

    def __len__(self) -> int:
        return len(self.dataset)

    def read_batch(self, positions: np.ndarray) -> ChipBatch:
        """The chips at ``positions``: per base, its dates stacked on the observation's date axis."""
        raw = self.dataset.read_batch(positions)
        obs: dict[str, Observation] = {}
        for b, keys in self.series.items():
            parts = [raw.obs[k] for k in keys]
            obs[b] = parts[0] if len(parts) == 1 else Observation(
                torch.cat([o.x for o in parts], 1), torch.cat([o.present for o in parts], 1),
                torch.cat([o.dates for o in parts], 1), torch.cat([o.month for o in parts], 1))
        return ChipBatch(obs, idx=raw.idx)
