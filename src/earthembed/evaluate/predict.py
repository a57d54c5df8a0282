"""Predict every chip of an area from a few labels: fit on the labelled chips' embeddings, apply to all.

The estimator is the one the few-shot evaluation scores (:func:`earthembed.evaluate.estimators.fit_estimator`,
same names and the same regularisation choice by CV), so a label-efficiency curve says how good the map made
with the same number of labels will be. Labels come from the store (a label column) or from a point/polygon
file joined to the chips by location (:mod:`earthembed.evaluate.label_join`).

Output: GeoParquet, one row per chip with an embedding: ``chip_id``, ``idx``, ``geometry`` (EPSG:4326),
``crs``, ``transform`` (so ``earthembed map`` can rasterise it without the store), ``split``, ``labelled``
(used for fitting), ``label`` (its training label), then ``<task>`` (predicted class, value or fraction; a
list of classes for multilabel), ``prob_<class>`` per class and ``confidence`` (largest probability) for
class tasks. Metadata (``earthembed`` key): task, kind, classes, estimator and what it chose, label report.
Chips with a null embedding (the modality missing) are not predicted and are counted in the metadata.
Output policy (:mod:`earthembed.outputs`): an existing ``out`` is replaced only with ``overwrite`` and only when it
is an earthembed predictions table; an input or a path inside a store or a run is refused before anything is fitted.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from earthembed.data.chipgeo import locate, write_chip_table
from earthembed.data.store import ChipStore
from earthembed.evaluate.estimators import fit_estimator, resolve_estimators
from earthembed.evaluate.tasks import Task, load_task
from earthembed.explore.tables import read_embedding_matrix
from earthembed.outputs import OUTPUT_KEY, atomic_path, check_output
from earthembed.storage import location

_TASK_KIND = {"class": "classification", "fraction": "regression", "value": "regression"}


@dataclasses.dataclass
class Prediction:
    """Where the predictions were written, and what was fitted on what."""

    path: Path
    meta: dict[str, Any]
    label_report: dict[str, Any] | None


def _file_task(labels: str | Path, column: str, layer: str | None, chips: pd.DataFrame, chip_size: int,
               min_cover: float) -> tuple[Task, str, dict[str, Any]]:
    from earthembed.evaluate.label_join import join_labels, read_label_file

    gdf = read_label_file(labels, column, layer)
    joined = join_labels(gdf, column, chips, chip_size, min_cover=min_cover, what=str(labels))
    if not len(joined.values):
        raise ValueError(
            f"{labels}: no label falls on a chip of the store ({joined.report['n_outside']} outside, "
            f"{joined.report['n_too_small']} too small); check the file covers the store's area"
        )
    ids = joined.values.index.to_numpy(dtype=str)
    split = chips.set_index(chips["chip_id"].astype(str))["split"].reindex(ids).fillna("").to_numpy(dtype=str)
    if joined.kind == "class":
        classes = sorted(set(joined.values.astype(str)))
        y = pd.Categorical(joined.values.astype(str), categories=classes).codes.astype(np.int64)
    else:
        classes, y = [], joined.values.to_numpy(np.float64)
    task = Task(column, _TASK_KIND[joined.kind], y, classes, ids, split)  # type: ignore[arg-type]
    return task, joined.kind, joined.report


def predict_chips(
    embeddings: str | Path,
    store: str | Path | ChipStore,
    task: str,
    out: str | Path,
    labels: str | Path | None = None,
    estimator: str = "linear",
    column: str = "emb_fused",
    seed: int = 0,
    max_labels: int | None = None,
    min_cover: float = 0.5,
    layer: str | None = None,
    overwrite: bool = False,
) -> Prediction:
    """Fit ``estimator`` on the labelled chips and predict every chip of ``embeddings``; write GeoParquet ``out``.

    ``labels``: a GeoPackage/GeoParquet of points or polygons with a ``task`` column (any CRS); without it
    the store's label column ``task`` is used. ``max_labels``: fit on a seeded random subset of that many
    labelled chips (to see what a smaller labelling effort gives). ``overwrite``: replace an earlier predictions
    table at ``out`` (never any other file).
    """
    st = store if isinstance(store, ChipStore) else ChipStore(store)
    out = check_output(out, "predictions", [embeddings, st.path, labels], overwrite)
    df, X = read_embedding_matrix(embeddings, column)
    df, chip_size = locate(df, {}, st, str(embeddings))
    label_report = None
    if labels is not None:
        t, label_kind, label_report = _file_task(labels, task, layer, df, chip_size, min_cover)
    else:
        t = load_task(st, task)
        label_kind = st.labels[task]["kind"]
    name = resolve_estimators(t.kind, estimator)[0]
    has_emb = np.isfinite(X).all(axis=1)
    row_of = pd.Series(np.arange(len(df)), index=df["chip_id"].astype(str).to_numpy())
    rows = row_of.reindex(t.chip_ids).to_numpy()
    usable = ~np.isnan(rows)
    usable[usable] = has_emb[rows[usable].astype(int)]
    fit = np.flatnonzero(usable)
    if max_labels is not None:
        if max_labels < 1:
            raise ValueError(f"max_labels must be >= 1, got {max_labels}")
        if len(fit) > max_labels:
            fit = np.sort(np.random.default_rng(seed).choice(fit, max_labels, replace=False))
    if len(fit) < 2:
        raise ValueError(
            f"task {task!r}: {len(fit)} labelled chip(s) with an embedding in {column!r}; need at least 2 to fit"
        )
    fit_rows = rows[fit].astype(int)
    y = t.y[fit]
    if t.kind == "classification" and len(np.unique(y)) < 2:
        raise ValueError(f"task {task!r}: all {len(fit)} labelled chips have the same class {t.classes[y[0]]!r}")
    from threadpoolctl import threadpool_limits

    # a few hundred labels: BLAS threads cost more in contention than they save (as in fewshot, 5x here)
    with threadpool_limits(limits=1 if len(fit) < 20000 else None):
        # standardised by every chip to be mapped (features only), as fewshot scales by its pool
        pred_rows = np.flatnonzero(has_emb)
        fitted = fit_estimator(name, t.kind, X[fit_rows], y, seed=seed, classes=t.classes, X_ref=X[pred_rows])
    res = df.iloc[pred_rows][[c for c in ("idx", "chip_id", "geometry", "crs", "transform", "aoi", "split")
                              if c in df.columns]].reset_index(drop=True)
    labelled = np.zeros(len(df), dtype=bool)
    labelled[fit_rows] = True
    label_val = np.full(len(df), None, dtype=object)
    for r, v in zip(fit_rows, y, strict=True):
        label_val[r] = (t.classes[int(v)] if t.kind == "classification" else
                        [c for c, b in zip(t.classes, v, strict=True) if b] if t.kind == "multilabel" else float(v))
    store_split = st.index.set_index(st.index["chip_id"].astype(str))["split"]
    res["split"] = res["chip_id"].astype(str).map(store_split).fillna("").to_numpy()
    res["labelled"] = labelled[pred_rows]
    res["label"] = label_val[pred_rows]
    Xp = X[pred_rows]
    if t.kind == "classification":
        proba = np.zeros((len(Xp), len(t.classes)))
        model_classes = np.asarray(fitted.model.classes_).astype(int)
        proba[:, model_classes] = fitted.model.predict_proba(Xp)
        res[task] = np.asarray(t.classes, dtype=object)[proba.argmax(axis=1)]
        res["confidence"] = proba.max(axis=1)
        for k, c in enumerate(t.classes):
            res[f"prob_{c}"] = proba[:, k]
    elif t.kind == "multilabel":
        _, scores = fitted.predict(Xp)
        res[task] = [[c for c, s in zip(t.classes, row, strict=True) if s >= 0.5] for row in scores]
        for k, c in enumerate(t.classes):
            res[f"prob_{c}"] = scores[:, k]
    else:
        v, _ = fitted.predict(Xp)
        res[task] = np.clip(v, 0, 1) if label_kind == "fraction" else v
    meta = {
        OUTPUT_KEY: "predictions", "task": task, "kind": t.kind, "label_kind": label_kind, "classes": t.classes, "estimator": name,
        "estimator_extra": fitted.extra, "n_train": int(len(fit)), "n_labelled": int(usable.sum()),
        "n_predicted": int(len(pred_rows)), "n_no_embedding": int((~has_emb).sum()), "column": column,
        "embeddings": str(location(embeddings).resolve()), "store": str(st.path.resolve()), "chip_size": chip_size,
        "label_source": str(Path(labels).resolve()) if labels is not None else f"store:{task}", "seed": seed,
        "label_report": label_report,
    }
    with atomic_path(out, "predictions", overwrite) as tmp:
        write_chip_table(res, tmp, meta)
    return Prediction(out, meta, label_report)
