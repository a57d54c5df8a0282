"""The per-batch embedding machinery that both ways of embedding a store share: reading contiguous batches of chips
(:class:`BatchReader`, :func:`prefetch_batches`), the reads of one embed (:class:`Pass`: the store once, or once per
date index), running the model on a batch (:func:`embed_batch`) and turning its output into rows. The single-table
loop (:mod:`earthembed.embed.run`) and the shard workers (:mod:`earthembed.embed.engines`) both build on it, so a
table and a sharded dataset hold the same rows; it lives apart from both so neither has to import the other.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from earthembed.contract import ChipBatch, as_chip_batch
from earthembed.data.dataset import ChipDataset
from earthembed.data.date_views import DateView, SeriesView
from earthembed.data.dates import DatePlan
from earthembed.data.normalize import Normalizer
from earthembed.data.store import ChipStore
from earthembed.embed.io import fixed_size_list


class BatchReader(torch.utils.data.Dataset):
    """Item i is the i-th contiguous batch of chips: one vectorised store read per batch (batches end at
    ``stop``, the end of a shard, or of the store)."""

    def __init__(self, dataset: ChipDataset, starts: Sequence[int], batch_size: int, stop: int | None = None) -> None:
        self.dataset, self.starts, self.batch_size = dataset, list(starts), batch_size
        self.stop = len(dataset) if stop is None else int(stop)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> dict[str, Any]:
        s = self.starts[i]
        e = min(s + self.batch_size, self.stop)
        return self.dataset.read_batch(np.arange(s, e))


def prefetch_batches(reader: BatchReader, depth: int = 2) -> Iterator[dict[str, Any]]:
    """Read the next batches in a background thread while an accelerator runs the model.

    Zarr decoding and the normalisation release the GIL, so this overlaps I/O with the forward pass without
    the start-up and pickling cost of DataLoader worker processes."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = [pool.submit(reader.__getitem__, i) for i in range(min(depth, len(reader)))]
        for i in range(len(reader)):
            batch = pending.pop(0).result()
            if i + depth < len(reader):
                pending.append(pool.submit(reader.__getitem__, i + depth))
            yield batch


def chip_columns(index: Any) -> pa.Table:
    """The per-chip columns every batch copies from the store index (chip_id, WKB footprint, aoi, split),
    converted once, vectorised, instead of per batch and per row."""
    import shapely

    return pa.table({
        "chip_id": pa.array(index["chip_id"].astype(str).to_numpy(), pa.string()),
        "geometry": pa.array(shapely.to_wkb(index.geometry.to_numpy()), pa.binary()),
        "aoi": pa.array(index["aoi"].astype(str).to_numpy(), pa.string()),
        "split": pa.array(index["split"].astype(str).to_numpy(), pa.string()),
    })


@dataclasses.dataclass
class Pass:
    """One read of the whole store: the only one of a plain embed (``t`` None), or date index ``t`` of a per-date
    one, whose rows get ``t``, ``date`` and ``date_key`` and exist only where one of ``series`` is present."""

    dataset: Any  # ChipDataset, DateView or SeriesView: read_batch(positions), len()
    t: int | None = None
    date: str | None = None
    date_key: str | None = None
    series: tuple[str, ...] = ()

    def part(self, start: int) -> str:
        """Part file stem of the batch at ``start`` (sorted names are the table's row order)."""
        return f"part-{start:09d}" if self.t is None else f"part-t{self.t:05d}-{start:09d}"

    def table(self, idx: np.ndarray, chips: pa.Table, emb: dict[str, np.ndarray], present: dict[str, torch.Tensor],
              request: dict[str, list[str]], model_id: str) -> pa.Table:
        """The rows of one embedded batch (:func:`_batch_table`, plus the date columns of a per-date pass)."""
        table = _batch_table(idx, chips, emb, present, request, model_id)
        if self.t is None:
            return table
        keep = np.logical_or.reduce([present[b].numpy().astype(bool) for b in self.series])
        table = table.filter(pa.array(keep))
        n, at = table.num_rows, table.column_names.index("split") + 1
        date = _dt.date.fromisoformat(self.date) if self.date else None
        for i, (name, col) in enumerate((("t", pa.array(np.full(n, self.t, np.int16))),
                                         ("date", pa.array([date] * n, pa.date32())),
                                         ("date_key", pa.array([self.date_key] * n, pa.string())))):
            table = table.add_column(at + i, name, col)
        return table


def make_passes(store: ChipStore, request: dict[str, list[str]], normalization: dict[str, Any],
                plan: DatePlan | None, series: dict[str, tuple[str, ...]] | None = None) -> list[Pass]:
    """The reads of one embed: the store once, or once per chosen date index of ``plan``. ``series``: the
    modalities the model reads whole series of (:func:`~earthembed.data.dates.series_reads`), each read as one
    observation of its dates (:class:`~earthembed.data.date_views.SeriesView`); not with ``plan``."""
    normalizer = Normalizer.from_dict(normalization)
    if series:
        if plan is not None:
            raise ValueError("per-date passes feed one date of each series; a model reading whole series has none")
        return [Pass(SeriesView(store, request, normalizer, series))]
    if plan is None:
        return [Pass(ChipDataset(store, request, normalizer=normalizer))]
    return [Pass(DateView(store, request, normalizer, plan.keys_at(t)), t, plan.dates[t], plan.date_keys[t],
                 tuple(plan.series)) for t in plan.ts]


def embed_batch(model: torch.nn.Module, batch: ChipBatch | dict[str, Any], request: dict[str, list[str]], device: str,
                chips: pa.Table, label: str) -> tuple[dict[str, np.ndarray], dict[str, torch.Tensor]]:
    """(``{"fused"|modality: [B, D]}``, presence) of one read batch (a :class:`~earthembed.contract.ChipBatch`
    with ``idx``; a dict is taken through :func:`~earthembed.contract.as_chip_batch`); non-finite embeddings are
    an error. The model gets the requested observations with their dates and months (the calendar of
    time-aware models)."""
    batch = as_chip_batch(batch)
    present = {k: batch.obs[k].present.any(1) for k in request}  # a chip has a series when it has any of its dates
    x = ChipBatch({k: batch.obs[k].apply(lambda t: t.to(device, non_blocking=True)) for k in request})
    res = model(x, bands=request)
    emb = {"fused": res.fused.float().cpu().numpy(), **{k: res.modality[k].float().cpu().numpy() for k in request}}
    _check_finite(emb, present, batch.idx.numpy(), chips, label)
    return emb, present


def _check_finite(emb: dict[str, np.ndarray], present: dict[str, torch.Tensor], idx: np.ndarray, chips: pa.Table,
                  model: str) -> None:
    """Raise naming the chips when a present modality's (or the fused) embedding is NaN/Inf: written as zeros
    or nulls it would only show up later as chance-level few-shot scores."""
    pres = {k: v.numpy().astype(bool) for k, v in present.items()}
    for name, x in emb.items():
        rows = np.logical_or.reduce(list(pres.values())) if name == "fused" else pres[name]
        bad = rows & ~np.isfinite(x).all(axis=1)
        if bad.any():
            ids = chips.column("chip_id").take(pa.array(idx[bad])).to_pylist()
            raise ValueError(
                f"model {model} gave non-finite (NaN/Inf) emb_{name} for {int(bad.sum())} chips "
                f"({', '.join(map(str, ids[:5]))}{', ...' if len(ids) > 5 else ''}) that have the modality; are the "
                "model's weights finite? Nothing was written for this batch"
            )


def _batch_table(idx: np.ndarray, chips: pa.Table, emb: dict[str, np.ndarray], present: dict[str, torch.Tensor],
                 request: dict[str, list[str]], model_id: str) -> pa.Table:
    rows = chips.take(pa.array(idx))
    pres = {k: v.numpy().astype(bool) for k, v in present.items()}
    mask = np.stack([pres[k] for k in request], axis=1)  # [chips, modalities]
    any_present = mask.any(axis=1)
    names = np.array(list(request), dtype=object)
    used = [",".join(names[row]) for row in mask]
    cols: dict[str, Any] = {
        "idx": pa.array(idx.astype(np.int64)),
        **{c: rows.column(c) for c in ("chip_id", "geometry", "aoi", "split")},
        "modalities_used": pa.array(used, pa.string()),
        "bands_used": pa.array([json.dumps(request)] * len(idx)),
        "emb_fused": fixed_size_list(emb["fused"], any_present),
    }
    for k in request:
        cols[f"emb_{k}"] = fixed_size_list(emb[k], pres[k])
        cols[f"present_{k}"] = pa.array(pres[k])
    cols["model_id"] = pa.array([model_id] * len(idx))
    return pa.table(cols)
