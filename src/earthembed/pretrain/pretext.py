"""Pretext tasks of multi-pretext masked autoencoding, discovered from what a store holds (MMEarth, MP-MAE).

A task is *(target source, loss kind, head)*: the loss kind follows from the target's kind, never from a
modality's name, so a store with other layers gets the matching tasks without code changes:

=======================  ==========================================================  =======================
loss kind                target (each only if the pretraining chips have it)          head
=======================  ==========================================================  =======================
``pixel_regression``     the optical input itself (per-patch normalised:              1x1 conv to p*p*C
                         ``norm_pix``), every other continuous raster modality
                         (SAR, coherence, elevation, ...), slope from elevation
``pixel_classification`` categorical raster modalities (WorldCover-style maps)        1x1 conv to p*p*K
``image_regression``     chip centre latitude / longitude (sin, cos), month of the     pool + LayerNorm +
                         input's acquisition (sin, cos), numeric index columns        Linear
                         named in the config; all z-scored over the chips
``image_classification`` categorical index columns named in the config                pool + LayerNorm +
                                                                                      Linear to K
=======================  ==========================================================  =======================

Discovery also says what the data pipeline must read (:class:`~earthembed.data.dataset.ReadRequest`):
targets that are not model inputs, categorical maps raw, per-chip values, and NaN instead of 0 at
nodata so losses skip it. Pixel-mask *labels* are never used: they are what few-shot evaluation and
segmentation score against, and pretraining on them would leak the answer. Index columns (stored as
per-chip labels) are used only when the config names them, for the same reason: never name the column a
few-shot evaluation will score.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from earthembed.data.chip_values import (
    ChipValues,
    acquisition_month,
    category_column,
    centre_coordinate,
    numeric_column,
    standardised,
)
from earthembed.data.dataset import ReadRequest
from earthembed.data.store import ChipStore

LOSS_KINDS = ("pixel_regression", "pixel_classification", "image_regression", "image_classification")
INPUT_ALIAS = "input"  # names the reconstruction of the model input in ``objective_args.tasks``
SLOPE_SAMPLE_CHIPS = 256  # chips read to scale the slope target


@dataclasses.dataclass(frozen=True)
class PretextTask:
    """One pretext task; plain data so it travels in checkpoints and ``model.json``.

    Attributes:
        name: unique name (logs: ``train/loss_<name>``, ``train/sigma_<name>``).
        loss: one of :data:`LOSS_KINDS`.
        key: the target: a modality of the batch for pixel tasks; ``value_<name>`` for image tasks (the per-chip
            value's string key in dict batches; the losses read it as ``ChipBatch.chip_values[name]``, which
            :meth:`Discovery.read_request` asks the data pipeline for under the task's name).
        source: what the target is, for people (run config, model.json).
        channels: values per pixel / chip (regression) or number of classes (classification).
        norm_pix: per-patch normalised targets (the input reconstruction, as in FCMAE / MMEarth).
        derive: ``"slope"``: the target is computed from the elevation in ``key``.
        codes: pixel classification: the raster's class codes in class order (other codes are ignored).
        scale: slope: (elevation std in the store's units, slope mean, slope std) to undo / apply z-scores.
    """

    name: str
    loss: str
    key: str
    source: str
    channels: int
    norm_pix: bool = False
    derive: str = ""
    codes: tuple[int, ...] = ()
    scale: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.loss not in LOSS_KINDS:
            raise ValueError(f"task {self.name!r}: loss kind {self.loss!r} is not one of {LOSS_KINDS}")

    @property
    def pixelwise(self) -> bool:
        return self.loss.startswith("pixel_")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["codes"], d["scale"] = list(self.codes), list(self.scale)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PretextTask:
        d = dict(d)
        d["codes"], d["scale"] = tuple(int(c) for c in d.get("codes", ())), tuple(float(v) for v in d.get("scale", ()))
        return cls(**d)


def elevation_slope(elevation: Tensor) -> Tensor:
    """Gradient magnitude ``[B, 1, H, W]`` of an elevation raster ``[B, 1, H, W]`` in elevation units per
    pixel (central differences, one-sided at the border; NaN where a neighbour is NaN). The store holds no
    pixel spacing for every source, so this is the slope up to the pixel size, which z-scoring removes."""
    e = F.pad(elevation, (1, 1, 1, 1), mode="replicate")
    gx = (e[..., 1:-1, 2:] - e[..., 1:-1, :-2]) / 2
    gy = (e[..., 2:, 1:-1] - e[..., :-2, 1:-1]) / 2
    return torch.sqrt(gx * gx + gy * gy)


def _slope_scale(store: ChipStore, key: str, rows: np.ndarray) -> tuple[float, float, float]:
    """(elevation std of the store statistics, mean and std of the slope over a sample of chips)."""
    m = store.modality(key)
    stats = store.stats.get(key, {})
    std = float(stats["std"][0]) if stats.get("std") else 1.0
    present = rows[store.index[f"has_{key}"].to_numpy(dtype=bool)[rows]]
    sample = np.sort(np.random.default_rng(0).permutation(present)[:SLOPE_SAMPLE_CHIPS])
    h = store.read(key, sample)[:, :1].astype(np.float32)
    if m.nodata is not None and not (isinstance(m.nodata, float) and np.isnan(m.nodata)):
        h[h == m.nodata] = np.nan
    s = elevation_slope(torch.from_numpy(h)).numpy()
    s = s[np.isfinite(s)]
    if s.size < 2:
        return std if np.isfinite(std) and std > 0 else 1.0, 0.0, 1.0
    sd = float(s.std())
    return (std if np.isfinite(std) and std > 0 else 1.0), float(s.mean()), (sd if sd > 0 else 1.0)


def _category_codes(store: ChipStore, key: str, rows: np.ndarray) -> tuple[int, ...]:
    """Class codes of a categorical raster: its declared classes, else the codes seen in a sample of chips."""
    m = store.modality(key)
    if m.classes:
        return tuple(sorted(int(c) for c in m.classes if c != m.nodata))
    present = rows[store.index[f"has_{key}"].to_numpy(dtype=bool)[rows]]
    seen = np.unique(store.read(key, np.sort(present[:512])))
    return tuple(int(c) for c in seen if c != m.nodata)


@dataclasses.dataclass
class Discovery:
    """What :func:`discover_tasks` found: the tasks, per-chip values they need, and notes for people."""

    tasks: list[PretextTask]
    values: dict[str, ChipValues]
    notes: list[str]

    def read_request(self, input_key: str) -> ReadRequest:
        """What the data pipeline must read for these tasks beyond the model input ``input_key``."""
        regress = [t.key for t in self.tasks if t.loss == "pixel_regression" and t.key != input_key]
        return ReadRequest(
            modalities={k: None for k in dict.fromkeys(regress)},
            categorical=list(dict.fromkeys(t.key for t in self.tasks if t.loss == "pixel_classification")),
            values={t.name: self.values[t.name] for t in self.tasks if not t.pixelwise},
            keep_nodata=[input_key, *dict.fromkeys(regress)],
        )


def discover_tasks(
    store: ChipStore,
    input_key: str,
    input_bands: Sequence[str],
    rows: np.ndarray,
    chip_regression: Sequence[str] = (),
    chip_classification: Sequence[str] = (),
    norm_pix_loss: bool = True,
    where: str = "",
) -> Discovery:
    """Every pretext task the chips at store positions ``rows`` support (see the module docstring)."""
    idx = store.index
    has = {k: bool(idx[f"has_{k}"].to_numpy(dtype=bool)[rows].any()) for k in store.modalities}
    inp = store.modality(input_key)
    tasks = [PretextTask(input_key, "pixel_regression", input_key, f"{input_key} ({inp.kind} input, masked patches)",
                         len(input_bands), norm_pix=bool(norm_pix_loss))]
    notes: list[str] = []
    for k, m in store.modalities.items():
        if k == input_key or not has[k]:
            continue
        if m.kind == "categorical":
            codes = _category_codes(store, k, rows)
            if len(codes) >= 2:
                tasks.append(PretextTask(k, "pixel_classification", k, f"{k} ({m.product} classes)", len(codes),
                                         codes=codes))
            continue
        tasks.append(PretextTask(k, "pixel_regression", k, f"{k} ({m.kind}, {m.units or 'no units'})", m.num_bands))
        if m.kind == "elevation":
            tasks.append(PretextTask(f"{k}_slope", "pixel_regression", k, f"slope of {k} (gradient magnitude)", 1,
                                     derive="slope", scale=_slope_scale(store, k, rows)))
    values: dict[str, ChipValues] = {}
    derived = {"lat": centre_coordinate(store, "lat"), "lon": centre_coordinate(store, "lon"),
               "month": acquisition_month(store, input_key)}
    sources = {"lat": "latitude of the chip centre (sin, cos, z-scored)",
               "lon": "longitude of the chip centre (sin, cos, z-scored)",
               "month": f"month of date_{input_key} (sin, cos, z-scored)"}
    for name, v in derived.items():
        have = v.values[rows][v.present[rows]]
        if not len(have):
            continue
        if np.ptp(have, axis=0).max() == 0:  # e.g. one acquisition date: nothing to learn
            notes.append(f"{name}: the same value on every pretraining chip ({sources[name]}); task skipped")
            continue
        values[name] = standardised(v, rows)
        tasks.append(PretextTask(name, "image_regression", f"value_{name}", sources[name], v.dim))
    prefix = f"{where}: " if where else ""
    for kind, names in (("image_regression", chip_regression), ("image_classification", chip_classification)):
        for col in names:
            if col in {t.name for t in tasks}:
                raise ValueError(f"{prefix}index column {col!r} has the name of another pretext task")
            try:
                v = numeric_column(store, col, rows) if kind == "image_regression" else category_column(store, col)
            except ValueError as e:
                raise ValueError(f"{prefix}objective_args names a task source that is absent: {e}") from None
            if kind == "image_classification" and v.dim < 2:
                raise ValueError(f"{prefix}index column {col!r} has {v.dim} class(es); a classification task needs >= 2")
            values[col] = v
            what = "numeric, z-scored" if kind == "image_regression" else f"{v.dim} classes"
            tasks.append(PretextTask(col, kind, f"value_{col}", f"index column {col} ({what})", v.dim))
    if not any(t.pixelwise for t in tasks[1:]):
        extra = [t.name for t in tasks[1:]]
        notes.insert(0, f"{store.path} has no layer besides {input_key} (modalities: {describe_modalities(store)}): "
                     f"training an optical-only MAE" + (f", plus per-chip tasks {extra}" if extra else ""))
    return Discovery(tasks, values, notes)


def describe_modalities(store: ChipStore) -> str:
    return ", ".join(f"{k} ({m.kind})" for k, m in store.modalities.items()) or "none"


def select_tasks(found: Discovery, wanted: str | Sequence[str], input_key: str, store: ChipStore,
                 where: str = "") -> Discovery:
    """The tasks named in ``wanted`` (``"all"``, or names; ``"input"`` = the input reconstruction), or a
    ValueError naming each task that the store cannot provide and what it has."""
    if wanted == "all":
        return found
    if isinstance(wanted, str):
        wanted = [wanted]
    names = [input_key if w == INPUT_ALIAS else str(w) for w in wanted]
    by_name = {t.name: t for t in found.tasks}
    missing = [n for n in names if n not in by_name]
    if missing:
        prefix = f"{where}: " if where else ""
        raise ValueError(
            f"{prefix}objective_args.tasks names {missing} but {store.path} provides no such target; tasks found: "
            f"{[t.name for t in found.tasks]} (store modalities: {describe_modalities(store)})"
        )
    tasks = [by_name[n] for n in dict.fromkeys(names)]
    return Discovery(tasks, {t.name: found.values[t.name] for t in tasks if t.name in found.values}, found.notes)
