"""Few-shot tasks: a store label column turned into targets per chip.

The store keeps labels as written by the ingester (strings, lists, floats); estimators need integer codes,
indicator matrices or floats, and evaluation needs to know which chips carry a label at all. Chips without
a label (null/NaN, empty) are dropped here, once, and counted, so every later step sees the same labelled set.
An infinite number is not a missing label but a broken one: an error naming the store's index, the column and
how many chips carry one (an estimator would otherwise fail with its own message, or a class "inf" appear).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from earthembed.data.store import INDEX_FILE, ChipStore

TaskKind = Literal["classification", "multilabel", "regression"]

#: store label kind -> task kind (``mask`` is a dense task, not a few-shot chip task)
_KIND = {"class": "classification", "multilabel": "multilabel", "fraction": "regression", "value": "regression"}

#: the metric label-efficiency curves and summaries are built on
PRIMARY_METRIC: dict[str, str] = {"classification": "macro_f1", "multilabel": "macro_map", "regression": "r2",
                                  "segmentation": "miou"}


#: columns of the tidy result tables of ``fewshot`` and ``segment`` (one row per fitted model x metric), so
#: summaries and plots read either: ``features`` is the feature set (few-shot) or the init (segmentation),
#: ``estimator`` the estimator or decoder, ``budget`` a budget or a label fraction (``budget_mode``)
RESULT_COLUMNS = [
    "task", "task_kind", "features", "estimator", "budget_mode", "budget", "budget_n", "seed", "metric",
    "value", "ci_low", "ci_high", "n_train", "n_test", "fit_s", "extra",
]


@dataclasses.dataclass
class Task:
    """Targets of one label column, for labelled chips only (rows aligned across ``y``/``chip_ids``/``split``).

    ``y`` is int codes into ``classes`` (classification), a 0/1 indicator matrix [N, K] (multilabel), or
    floats (regression). ``split`` is the store split (``train``/``val``/``test`` or empty).
    """

    name: str
    kind: TaskKind
    y: np.ndarray
    classes: list[str]
    chip_ids: np.ndarray
    split: np.ndarray
    n_dropped: int = 0

    def __len__(self) -> int:
        return len(self.chip_ids)

    @property
    def primary_metric(self) -> str:
        return PRIMARY_METRIC[self.kind]

    def subset(self, rows: np.ndarray) -> Task:
        """The task restricted to ``rows`` (positions or boolean mask), e.g. chips that have features."""
        return dataclasses.replace(
            self, y=self.y[rows], chip_ids=self.chip_ids[rows], split=self.split[rows]
        )


def _missing(v: Any) -> bool:
    if v is None:
        return True
    if isinstance(v, float) and np.isnan(v):
        return True
    return isinstance(v, str) and v.strip() == ""


def _is_inf(v: Any, numeric: bool) -> bool:
    if isinstance(v, (float, np.floating)):
        return bool(np.isinf(v))
    if numeric and isinstance(v, str):  # a regression label read as text: "inf", "-Infinity"
        try:
            return bool(np.isinf(float(v)))
        except ValueError:
            return False
    return False


def _check_finite(st: ChipStore, column: str, kind: str, values: list[Any], chip_ids: pd.Series) -> None:
    if kind == "multilabel":
        return
    bad = [i for i, v in enumerate(values) if _is_inf(v, kind == "regression")]
    if bad:
        shown = ", ".join(str(chip_ids.iloc[i]) for i in bad[:3]) + (" ..." if len(bad) > 3 else "")
        raise ValueError(
            f"{st.path / INDEX_FILE}: label column {column!r} has an infinite value on {len(bad)} of "
            f"{len(values)} chips ({shown}); a label must be a finite number (null for no label): fix the column "
            "or choose another --task"
        )


def load_task(store: str | Path | ChipStore, column: str) -> Task:
    """Targets of label ``column`` of ``store`` for every chip that has a label.

    Missing labels (None, NaN, empty string) are dropped and counted in ``n_dropped``. For ``multilabel``
    an empty list is a valid label (no class present), not a missing one. An infinite value is a ValueError
    naming the store's index file, the column and the number of chips (see the module docstring).
    """
    st = store if isinstance(store, ChipStore) else ChipStore(store)
    schema = st.labels
    if column not in schema:
        avail = [f"{k} ({v.get('kind')})" for k, v in schema.items()]
        raise KeyError(f"{st.path}: no label column {column!r}; available label columns: {avail or 'none'}")
    spec = schema[column]
    if spec.get("kind") == "mask":
        raise ValueError(
            f"label {column!r} is a per-pixel mask (a dense segmentation task); few-shot evaluation needs a "
            "chip-level label (class, multilabel, fraction or value)"
        )
    kind = _KIND[spec["kind"]]
    idx = st.index
    values = idx[column].tolist()
    _check_finite(st, column, kind, values, idx["chip_id"])
    keep = np.array([not _missing(v) for v in values], dtype=bool)
    chip_ids = idx["chip_id"].to_numpy(dtype=str)[keep]
    split = idx["split"].fillna("").to_numpy(dtype=str)[keep]
    values = [v for v, k in zip(values, keep, strict=True) if k]
    declared = [str(c) for c in spec.get("classes") or []]
    if kind == "classification":
        labels = [str(v) for v in values]
        classes = declared + sorted(set(labels) - set(declared))
        y = pd.Categorical(labels, categories=classes).codes.astype(np.int64)
    elif kind == "multilabel":
        lists = [[str(c) for c in np.atleast_1d(v)] if not isinstance(v, str) else [v] for v in values]
        seen = sorted({c for lst in lists for c in lst} - set(declared))
        classes = declared + seen
        pos = {c: i for i, c in enumerate(classes)}
        y = np.zeros((len(lists), len(classes)), dtype=np.int8)
        for i, lst in enumerate(lists):
            y[i, [pos[c] for c in lst]] = 1
    else:
        classes = []
        y = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=np.float64)
        ok = np.isfinite(y)
        if not ok.all():  # non-numeric strings count as missing too
            keep_rows = np.flatnonzero(ok)
            y, chip_ids, split = y[keep_rows], chip_ids[keep_rows], split[keep_rows]
            keep[np.flatnonzero(keep)[~ok]] = False
    return Task(
        name=column,
        kind=kind,  # type: ignore[arg-type]
        y=y,
        classes=classes,
        chip_ids=chip_ids,
        split=split,
        n_dropped=int((~keep).sum()),
    )
