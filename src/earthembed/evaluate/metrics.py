"""Test-set metrics with bootstrap 95% confidence intervals over test chips.

Segmentation is scored from one confusion matrix per test chip: a resample of chips is a weighted sum of
their matrices, so mIoU, per-class IoU, F1 and pixel accuracy of every resample come from one product too.

Few-shot scores on a few hundred test chips move by points between draws of the test set; the interval
says whether a gap between two feature sets means anything. Resamples are drawn as multinomial weights
[n_boot, n_test], so confusion counts, F1 and R2 of every resample are a matrix product, not a loop.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import numpy as np
from scipy import stats
from sklearn.metrics import accuracy_score, f1_score, mean_absolute_error, r2_score

METRICS: dict[str, tuple[str, ...]] = {
    "classification": ("accuracy", "macro_f1"),
    "multilabel": ("micro_map", "macro_map", "micro_f1", "macro_f1"),
    "regression": ("r2", "mae", "pearson_r"),
    "segmentation": ("miou", "pixel_accuracy", "macro_f1"),  # plus iou_<class> per class
}
#: metrics where lower is better (everything else: higher is better)
LOWER_IS_BETTER = frozenset({"mae"})


def bootstrap_weights(n: int, n_boot: int, seed: int = 0, max_cells: int = 4_000_000) -> Iterator[np.ndarray]:
    """Chunks of resampling weights (how often each test row is drawn), [b, n] each, ``n_boot`` rows in all."""
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_boot, max_cells // max(n, 1)))
    done = 0
    while done < n_boot:
        b = min(chunk, n_boot - done)
        yield rng.multinomial(n, np.full(n, 1.0 / n), size=b).astype(np.float64)
        done += b


def _cat(chunks: list[np.ndarray]) -> np.ndarray:
    """Bootstrap values of all chunks; none (``n_boot=0``, or a metric undefined on the test set) is empty,
    which :func:`bootstrap_metrics` turns into ``n_boot`` NaN."""
    return np.concatenate(chunks) if chunks else np.empty(0)


def bootstrap_ci(values: np.ndarray) -> tuple[float, float]:
    """95% percentile interval of bootstrap values (non-finite values ignored; none left: NaN, NaN)."""
    values = np.asarray(values, dtype=np.float64)
    v = values[np.isfinite(values)]
    if not len(v):
        return float("nan"), float("nan")
    lo, hi = np.percentile(v, [2.5, 97.5])
    return float(lo), float(hi)


def _f1_from_counts(tp: np.ndarray, n_true: np.ndarray, n_pred: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Macro F1 per row over classes where ``present``; F1 = 2 tp / (n_true + n_pred)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(present, 2 * tp / np.maximum(n_true + n_pred, 1e-12), np.nan)
        return np.nanmean(np.where(present.any(axis=1, keepdims=True), f1, 0.0), axis=1)


def _classification(y: np.ndarray, p: np.ndarray, n_boot: int, seed: int) -> dict[str, tuple[float, np.ndarray]]:
    k = int(max(y.max(initial=0), p.max(initial=0))) + 1
    T = np.eye(k)[y]
    P = np.eye(k)[p]
    correct = (y == p).astype(np.float64)
    acc, f1 = [], []
    for W in bootstrap_weights(len(y), n_boot, seed):
        acc.append(W @ correct / len(y))
        nt, npred, tp = W @ T, W @ P, W @ (T * P)
        f1.append(_f1_from_counts(tp, nt, npred, (nt + npred) > 0))
    point_f1 = f1_score(y, p, average="macro", zero_division=0)
    return {
        "accuracy": (accuracy_score(y, p), _cat(acc)),
        "macro_f1": (point_f1, _cat(f1)),
    }


def average_precision(y: np.ndarray, s: np.ndarray, W: np.ndarray) -> np.ndarray:
    """Average precision of binary ``y`` ranked by scores ``s`` under each row of weights ``W`` [B, n].

    Same definition as :func:`sklearn.metrics.average_precision_score` (tied scores form one threshold):
    every positive contributes its weight times the precision at its score's threshold.
    """
    order = np.argsort(-s, kind="stable")
    ys, ss = y[order].astype(np.float64), s[order]
    Wo = W[:, order]
    ctp = np.cumsum(Wo * ys, axis=1)
    cnt = np.cumsum(Wo, axis=1)
    # index of the last row of each tie group, so tied rows share one precision
    last = np.r_[np.flatnonzero(np.diff(ss) != 0), len(ss) - 1]
    end = last[np.searchsorted(last, np.arange(len(ss)))]
    with np.errstate(invalid="ignore", divide="ignore"):
        prec = ctp[:, end] / cnt[:, end]
        return np.nansum(Wo * ys * prec, axis=1) / ctp[:, -1]


def _maps(Y: np.ndarray, S: np.ndarray, W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(micro mAP, macro mAP) per weight row.

    Micro AP ranks every (chip, class) pair of all ``K`` columns, so scores on a class without positives
    still count as false positives; macro AP averages the classes with a positive in the resample (AP is
    undefined without one).
    """
    n, k = Y.shape
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.column_stack([average_precision(Y[:, j], S[:, j], W) for j in range(k)])
    has_pos = (W @ Y) > 0
    macro = np.full(len(W), np.nan)
    rows = has_pos.any(axis=1)
    if k and rows.any():
        macro[rows] = np.nanmean(np.where(has_pos[rows], per_class[rows], np.nan), axis=1)
    micro = average_precision(Y.ravel(), S.ravel(), np.repeat(W, k, axis=1))
    return micro, macro


def _multilabel(Y: np.ndarray, P: np.ndarray, S: np.ndarray, n_boot: int, seed: int) -> dict[str, tuple[float, np.ndarray]]:
    """mAP and F1 of multilabel predictions, on every label column as scikit-learn computes them.

    Micro mAP, micro F1 and macro F1 use all ``K`` columns: a class with no positive test chip still
    contributes its false positives (and to macro F1 an F1 of 0, scikit-learn's ``zero_division=0``).
    Only macro mAP is restricted to classes with a positive test chip, since AP is undefined without one;
    with no positive at all both mAPs are NaN. Bootstrap resamples use the same definitions.
    """
    Y = np.asarray(Y, dtype=np.float64)
    P = np.asarray(P, dtype=np.float64)
    S = np.asarray(S, dtype=np.float64)
    k = Y.shape[1]
    any_pos = bool(Y.sum() > 0)
    one = np.ones((1, len(Y)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        (point_micro,), (point_macro,) = _maps(Y, S, one) if any_pos else ((np.nan,), (np.nan,))
    mic, mac, f1mi, f1ma = [], [], [], []
    for W in bootstrap_weights(len(Y), n_boot, seed, max_cells=4_000_000 // max(k, 1)):
        if any_pos:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                a, b = _maps(Y, S, W)
            mic.append(a)
            mac.append(b)
        tp, nt, npred = W @ (Y * P), W @ Y, W @ P
        with np.errstate(invalid="ignore", divide="ignore"):
            per_class = np.where(nt + npred > 0, 2 * tp / np.maximum(nt + npred, 1e-12), 0.0)
            f1ma.append(per_class.mean(axis=1) if k else np.full(len(W), np.nan))
            den = nt.sum(1) + npred.sum(1)
            f1mi.append(np.where(den > 0, 2 * tp.sum(1) / np.maximum(den, 1e-12), 0.0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        point_f1mi = f1_score(Y, P, average="micro", zero_division=0)
        point_f1ma = f1_score(Y, P, average="macro", zero_division=0)

    return {
        "micro_map": (point_micro, _cat(mic)),
        "macro_map": (point_macro, _cat(mac)),
        "micro_f1": (point_f1mi, _cat(f1mi)),
        "macro_f1": (point_f1ma, _cat(f1ma)),
    }


def _regression(y: np.ndarray, p: np.ndarray, n_boot: int, seed: int) -> dict[str, tuple[float, np.ndarray]]:
    n = len(y)
    mu = y.mean()
    yc, pc = y - mu, p - mu  # centred for numerically stable weighted moments
    r2, mae, r = [], [], []
    for W in bootstrap_weights(n, n_boot, seed):
        my, mp = W @ yc / n, W @ pc / n
        vy = W @ (yc**2) / n - my**2
        vp = W @ (pc**2) / n - mp**2
        cov = W @ (yc * pc) / n - my * mp
        with np.errstate(invalid="ignore", divide="ignore"):
            r2.append(1 - (W @ ((yc - pc) ** 2) / n) / vy)
            r.append(cov / np.sqrt(vy * vp))
        mae.append(W @ np.abs(yc - pc) / n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pr = float(stats.pearsonr(y, p).statistic) if n > 1 and np.ptp(y) > 0 and np.ptp(p) > 0 else float("nan")
        point_r2 = float(r2_score(y, p)) if n > 1 else float("nan")
    return {
        "r2": (point_r2, _cat(r2)),
        "mae": (float(mean_absolute_error(y, p)), _cat(mae)),
        "pearson_r": (pr, _cat(r)),
    }


def evaluate_predictions(kind: str, y_true: np.ndarray, y_pred: np.ndarray, y_score: np.ndarray | None = None,
                         n_boot: int = 200, seed: int = 0) -> dict[str, tuple[float, float, float]]:
    """``{metric: (value, ci_low, ci_high)}`` for a task ``kind`` (see :data:`METRICS`).

    ``y_score`` (class-1 probabilities [N, K]) is required for multilabel mAP. ``n_boot=0`` gives NaN CIs.
    """
    out = bootstrap_metrics(kind, y_true, y_pred, y_score, n_boot, seed)
    return {k: (v, *bootstrap_ci(b)) for k, (v, b) in out.items()}


def bootstrap_metrics(
    kind: str,
    y_true: np.ndarray,
    y_pred: np.ndarray,
    y_score: np.ndarray | None = None,
    n_boot: int = 200,
    seed: int = 0,
) -> dict[str, tuple[float, np.ndarray]]:
    """``{metric: (value, [n_boot] values on the resamples)}``: what :func:`evaluate_predictions` summarises.

    The resamples depend only on ``(len(y_true), n_boot, seed)``, so two models scored on the same test chips
    with the same seed see the same resamples: the per-resample differences of their scores give a *paired*
    interval of the difference (:func:`earthembed.evaluate.compare.paired_difference`).
    """
    if len(y_true) == 0:
        raise ValueError("no test chips to evaluate on")
    if kind == "classification":
        out = _classification(np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64), n_boot, seed)
    elif kind == "multilabel":
        if y_score is None:
            raise ValueError("multilabel metrics need scores (y_score) for mAP")
        out = _multilabel(np.asarray(y_true), np.asarray(y_pred), np.asarray(y_score, dtype=np.float64), n_boot, seed)
    elif kind == "regression":
        out = _regression(np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64), n_boot, seed)
    else:
        raise ValueError(f"unknown task kind {kind!r}")
    full = np.full(n_boot, np.nan)  # a metric undefined on this test set (no positive label) on every resample
    return {k: (float(v), np.asarray(b, dtype=np.float64) if len(b) == n_boot else full) for k, (v, b) in out.items()}


def confusion_matrices(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int, ignore_index: int | None = None
                       ) -> np.ndarray:
    """Per-chip confusion counts [N, K, K] (rows: true class, columns: predicted) of label maps [N, H, W].

    Pixels whose true label is ``ignore_index`` (nodata / unlabelled) are not counted; any other true label
    outside ``0..K-1`` is an error (a class the task does not know), as is a prediction outside it.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"labels {y_true.shape} and predictions {y_pred.shape} differ in shape")
    n = y_true.shape[0]
    t = y_true.reshape(n, -1)
    p = y_pred.reshape(n, -1)
    valid = np.ones_like(t, dtype=bool) if ignore_index is None else t != ignore_index
    bad = valid & ((t < 0) | (t >= n_classes))
    if bad.any():
        raise ValueError(f"label values {np.unique(t[bad])[:10].tolist()} are neither classes 0..{n_classes - 1} "
                         f"nor the ignore index {ignore_index}")
    if ((p < 0) | (p >= n_classes))[valid].any():
        raise ValueError(f"predictions outside classes 0..{n_classes - 1}")
    rows = np.repeat(np.arange(n), t.shape[1])[valid.ravel()]
    flat = rows * n_classes * n_classes + t[valid] * n_classes + p[valid]
    return np.bincount(flat, minlength=n * n_classes * n_classes).reshape(n, n_classes, n_classes)


def segmentation_scores(C: np.ndarray) -> dict[str, np.ndarray]:
    """Scores of confusion matrices ``C`` [b, K, K]: per-class IoU / F1 (NaN where the class is neither in the
    labels nor predicted), their means over the classes that are, and pixel accuracy."""
    tp = np.diagonal(C, axis1=1, axis2=2).astype(np.float64)
    n_true, n_pred = C.sum(2).astype(np.float64), C.sum(1).astype(np.float64)
    union = n_true + n_pred - tp
    seen = union > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(seen, tp / union, np.nan)
        f1 = np.where(seen, 2 * tp / (n_true + n_pred), np.nan)
        total = n_true.sum(1)
        acc = np.where(total > 0, tp.sum(1) / total, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a resample with no labelled pixel: NaN
        return {"miou": np.nanmean(iou, axis=1), "macro_f1": np.nanmean(f1, axis=1), "pixel_accuracy": acc, "iou": iou}


def segmentation_metrics(conf: np.ndarray, classes: list[str], n_boot: int = 200, seed: int = 0
                         ) -> dict[str, tuple[float, float, float]]:
    """``{metric: (value, ci_low, ci_high)}`` from per-chip confusion matrices [N, K, K] (:func:`confusion_matrices`).

    ``miou`` and ``macro_f1`` average the classes present in the labels or the predictions of the test set (a
    class absent from both says nothing about the model; counting it as 0 or 1 would move the mean by chance);
    ``iou_<class>`` per class (NaN when absent); ``pixel_accuracy`` over labelled pixels. The 95% CIs resample
    test chips (a chip's pixels are not independent draws).
    """
    conf = np.asarray(conf)
    n, k = conf.shape[0], conf.shape[1]
    if n == 0:
        raise ValueError("no test chips to evaluate on")
    if len(classes) != k:
        raise ValueError(f"{len(classes)} class names for {k}x{k} confusion matrices")
    point = segmentation_scores(conf.sum(0, keepdims=True))
    flat = conf.reshape(n, k * k).astype(np.float64)
    boot: dict[str, list[np.ndarray]] = {m: [] for m in ("miou", "macro_f1", "pixel_accuracy", "iou")}
    for W in bootstrap_weights(n, n_boot, seed, max_cells=4_000_000 // max(k * k, 1)):
        for m, v in segmentation_scores((W @ flat).reshape(-1, k, k)).items():
            boot[m].append(v)

    def ci(m: str, j: int | None = None) -> tuple[float, float]:
        if not boot[m]:
            return float("nan"), float("nan")
        v = np.concatenate(boot[m])
        return bootstrap_ci(v if j is None else v[:, j])

    out = {m: (float(point[m][0]), *ci(m)) for m in ("miou", "pixel_accuracy", "macro_f1")}
    for j, c in enumerate(classes):
        out[f"iou_{c}"] = (float(point["iou"][0, j]), *ci("iou", j))
    return out
