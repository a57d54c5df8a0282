"""Test-set metrics with bootstrap 95% confidence intervals over test chips.

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


def _ci(values: np.ndarray) -> tuple[float, float]:
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


def _classification(y: np.ndarray, p: np.ndarray, n_boot: int, seed: int) -> dict[str, tuple[float, ...]]:
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
        "accuracy": (accuracy_score(y, p), *_ci(np.concatenate(acc))),
        "macro_f1": (point_f1, *_ci(np.concatenate(f1))),
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


def _multilabel(Y: np.ndarray, P: np.ndarray, S: np.ndarray, n_boot: int, seed: int) -> dict[str, tuple[float, ...]]:
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

    def cat(v: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(v) if v else np.array([np.nan])

    return {
        "micro_map": (point_micro, *_ci(cat(mic))),
        "macro_map": (point_macro, *_ci(cat(mac))),
        "micro_f1": (point_f1mi, *_ci(cat(f1mi))),
        "macro_f1": (point_f1ma, *_ci(cat(f1ma))),
    }


def _regression(y: np.ndarray, p: np.ndarray, n_boot: int, seed: int) -> dict[str, tuple[float, ...]]:
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
        "r2": (point_r2, *_ci(np.concatenate(r2))),
        "mae": (float(mean_absolute_error(y, p)), *_ci(np.concatenate(mae))),
        "pearson_r": (pr, *_ci(np.concatenate(r))),
    }


def evaluate_predictions(
    kind: str,
    y_true: np.ndarray,
    y_pred: np.ndarray,
    y_score: np.ndarray | None = None,
    n_boot: int = 200,
    seed: int = 0,
) -> dict[str, tuple[float, float, float]]:
    """``{metric: (value, ci_low, ci_high)}`` for a task ``kind`` (see :data:`METRICS`).

    ``y_score`` (class-1 probabilities [N, K]) is required for multilabel mAP. ``n_boot=0`` gives NaN CIs.
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
    return {k: (float(v[0]), float(v[1]), float(v[2])) for k, v in out.items()}
