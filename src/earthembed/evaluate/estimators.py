"""Few-shot estimators on frozen features (scikit-learn), one name per estimator across task kinds.

``logreg`` (classification / multilabel) and ``ridge`` (regression) choose their regularisation by
cross-validation *inside* the label budget, as in Jungbluth et al. 2023; with fewer than two examples of
a class there is nothing to cross-validate and C is fixed to 1. What was used is returned in ``extra`` so
it lands in the results table. Features are standardised (StandardScaler) for the linear and kNN models.
The scaler's mean and std come from ``X_ref`` when given: the features of every chip that may be labelled
(``fewshot`` passes the pool, train + val; their labels are not used, the test chips never). Fitted on a
10-chip budget alone, a feature that is nearly constant in those chips got a std near 0, and test chips
came out at |z| up to 10^6: ridge R2 of -200,000 on the demo, fixed by the pool's scale (0.87 on the same
budget). kNN uses k = min(5, n_train) with distance weights: with one chip per class, k=5 uniform votes
would be a tie broken by class order.

Logistic regression is the grid's cost, so it is made cheap without changing what it computes (issue 13;
numbers from ``benchmarks/bench_fewshot.py demo``, benchmarks/README.md):

* C is scored by :func:`neg_log_loss` on the fitted coefficients (scikit-learn's scorer spent ~10 ms a call
  validating inputs), over :data:`CV_FOLDS` folds, solver tolerance :data:`LOGREG_TOL`.
* A budget with fewer chips than features is fitted in its row space (:class:`RowSpace`): the same optimum
  with at most n instead of d features (2,048 RCF features at 10-750 chips).
* Binary problems (every multilabel class, two-class tasks) of up to :data:`NEWTON_MAX_FEATURES` features
  use Newton-Cholesky, the others L-BFGS: same objective, but Newton needs a few iterations where L-BFGS
  needs hundreds, until its (features)^2 Hessian costs more than they do (measured: 64 features 3-10x faster,
  500 features 2x slower); a multinomial Hessian is (features x classes)^2, so multinomial fits keep L-BFGS.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import warnings
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.dummy import DummyClassifier
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV, Ridge, RidgeCV
from sklearn.model_selection import StratifiedKFold
from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

C_GRID: np.ndarray = np.logspace(-3, 3, 7)
#: folds of the C search (fewer when a class has fewer examples); 5 folds cost 2x and, on a sample of the demo
#: grid (2 feature sets x 2 tasks x 6 budgets), picked another C in half the fits but moved no score by > 0.013
CV_FOLDS = 3
NEWTON_MAX_FEATURES = 256
#: solver tolerance (scikit-learn's default is 1e-4): on the demo grid 1e-3 halved L-BFGS time and moved no
#: seed-averaged score by more than 0.012 (mean |change| 0.001)
LOGREG_TOL = 1e-3
ALPHA_GRID: np.ndarray = np.logspace(-3, 3, 7)
RF_TREES = 100
#: Breiman's p/3 features per split (scikit-learn's default is all p: ~3x slower); "sqrt" was 8x faster on 2,048
#: RCF features but raised the MAE by 5-25%, so p/3 stays
RF_REGRESSION_MAX_FEATURES: float | str = 1 / 3

ESTIMATORS: dict[str, tuple[str, ...]] = {
    "classification": ("logreg", "rf", "knn"),
    "multilabel": ("logreg", "rf", "knn"),
    "regression": ("ridge", "rf", "knn"),
}
_ALIASES = {"linear": {"classification": "logreg", "multilabel": "logreg", "regression": "ridge"}}


def resolve_estimators(kind: str, names: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """Estimator names for a task kind; ``linear`` means logreg or ridge. Unknown names raise ValueError."""
    if names is None:
        return list(ESTIMATORS[kind])
    if isinstance(names, str):
        names = [s.strip() for s in names.split(",") if s.strip()]
    out = []
    for n in names:
        n = _ALIASES.get(n, {}).get(kind, n)
        if n not in ESTIMATORS[kind]:
            raise ValueError(f"estimator {n!r} is not available for {kind} tasks (choose from {ESTIMATORS[kind]})")
        if n not in out:
            out.append(n)
    return out


@dataclasses.dataclass
class Fitted:
    """A fitted model and what was chosen while fitting (``extra``: C, alpha, k, skipped classes...)."""

    model: Any
    kind: str
    extra: dict[str, Any]
    n_outputs: int = 0
    columns: np.ndarray | None = None  # multilabel: the classes that were fitted
    constant: np.ndarray | None = None  # multilabel: score given to classes that were not fitted

    def predict(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(predictions, scores): scores are class-1 probabilities [N, K] for multilabel, else None."""
        if self.kind != "multilabel":
            return self.model.predict(X), None
        scores = np.tile(self.constant.astype(np.float64), (len(X), 1))
        if self.columns is not None and len(self.columns):
            scores[:, self.columns] = self.model(X)
        return (scores >= 0.5).astype(np.int8), scores


class RowSpace(TransformerMixin, BaseEstimator):
    """Coordinates in the span of the training rows, when there are fewer rows than features (else identity).

    The optimum of an L2-penalised linear model with an unpenalised intercept lies in the span of its
    training rows (representer theorem), and so does that of every CV fold, whose rows are a subset. Fitting
    on ``X @ V`` (``V``: orthonormal basis of the span, from a pivoted QR) therefore gives the same decision function,
    the same C and the same norms with ``rank(X) <= n`` instead of ``d`` features. Not an approximation: a
    speed-up for wide features at small budgets (e.g. 2,048 RCF features of 50-750 chips).
    """

    def fit(self, X: np.ndarray, y: Any = None) -> RowSpace:
        n, d = X.shape
        self.basis_: np.ndarray | None = None
        if n < d:  # rank-revealing (pivoted) QR of X^T: 3x cheaper than an SVD, any orthonormal basis will do
            from scipy.linalg import qr

            q, r, _ = qr(np.asarray(X, dtype=np.float64).T, mode="economic", pivoting=True)
            diag = np.abs(np.diag(r))
            keep = diag > diag[0] * max(n, d) * np.finfo(np.float64).eps
            keep[0] = True  # an all-zero budget still gets one (zero) feature
            self.basis_ = q[:, keep]
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        return X if self.basis_ is None else np.asarray(X, dtype=np.float64) @ self.basis_


@functools.cache
def _lrcv_kwargs() -> dict[str, Any]:
    """Pin LogisticRegressionCV defaults that scikit-learn >= 1.8 is changing (plain L2, new attributes)."""
    params = inspect.signature(LogisticRegressionCV).parameters
    kw: dict[str, Any] = {}
    if "use_legacy_attributes" in params:
        kw["use_legacy_attributes"] = False
    if "l1_ratios" in params and params["l1_ratios"].default == "warn":
        kw["l1_ratios"] = (0.0,)
    return kw


def neg_log_loss(est: Any, X: np.ndarray, y: np.ndarray) -> float:
    """Negative mean log-loss of a fitted linear ``est`` on (X, y): the C-selection score of
    :class:`~sklearn.linear_model.LogisticRegressionCV`, computed from ``coef_`` / ``intercept_`` in log space.

    Same criterion as the ``"neg_log_loss"`` scorer, without its per-call validation: that scorer took ~10 ms
    a call, ~30% of the few-shot grid's time, for a few microseconds of arithmetic (one call per C value and
    fold of every fit, and per class for multilabel tasks). Probabilities are clipped to [eps, 1 - eps] as that scorer does.
    """
    from scipy.special import log_expit, log_softmax

    coef = np.asarray(est.coef_, dtype=np.float64)
    z = X @ coef.T + np.asarray(est.intercept_, dtype=np.float64)
    classes = np.asarray(est.classes_)
    if z.ndim == 1 or z.shape[1] == 1:  # binary: z is the logit of classes_[-1]
        z = z.reshape(-1)
        logp = np.where(y == classes[-1], log_expit(z), log_expit(-z))
    else:
        logp = log_softmax(z, axis=1)[np.arange(len(y)), np.searchsorted(classes, y)]
    eps = np.finfo(np.float64).eps
    return float(np.mean(np.clip(logp, np.log(eps), np.log1p(-eps))))


def logreg_solver(n_features: int, n_classes: int) -> str:
    """``newton-cholesky`` for binary problems of up to :data:`NEWTON_MAX_FEATURES` features, else ``lbfgs``."""
    return "newton-cholesky" if n_classes <= 2 and n_features <= NEWTON_MAX_FEATURES else "lbfgs"


def _fit_logreg(X: np.ndarray, y: np.ndarray, seed: int, solver: str | None = None) -> tuple[Any, dict[str, Any]]:
    """LogisticRegression with C by stratified CV (``min(CV_FOLDS, smallest class)`` folds, log-loss, warm-started
    along the C path), or C=1 when a class has fewer than two examples. ``solver`` defaults to
    :func:`logreg_solver`."""
    _, counts = np.unique(y, return_counts=True)
    if len(counts) < 2:
        return DummyClassifier(strategy="most_frequent").fit(X, y), {"C": None, "note": "one class in budget: constant"}
    solver = solver or logreg_solver(X.shape[1], len(counts))
    n_min = int(counts.min())
    if n_min < 2:
        est: Any = LogisticRegression(C=1.0, max_iter=1000, solver=solver, tol=LOGREG_TOL)
        extra: dict[str, Any] = {"C": 1.0, "C_selection": "fixed (a class has < 2 examples)"}
    else:
        cv = StratifiedKFold(n_splits=min(CV_FOLDS, n_min), shuffle=True, random_state=seed)
        est = LogisticRegressionCV(Cs=C_GRID, cv=cv, scoring=neg_log_loss, max_iter=1000, solver=solver, tol=LOGREG_TOL,
                                   **_lrcv_kwargs())
        extra = {"C_selection": f"{cv.n_splits}-fold CV"}
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always", ConvergenceWarning)
        est.fit(X, y)
    if isinstance(est, LogisticRegressionCV):
        extra["C"] = float(np.ravel(est.C_)[0])
    if any(issubclass(x.category, ConvergenceWarning) for x in w):
        extra["converged"] = False
    return est, extra


def _scaled(scaler: StandardScaler, model: Any, X: np.ndarray, y: np.ndarray) -> Pipeline:
    """``model`` fitted on ``scaler``-standardised ``X``, as one pipeline for prediction."""
    return Pipeline([("scale", scaler), ("model", model.fit(scaler.transform(X), y))])


def _logreg_inputs(X: np.ndarray, scaler: StandardScaler) -> tuple[Pipeline, np.ndarray]:
    """The fitted input transform of logistic regression (standardise, then :class:`RowSpace` of the budget)
    and the budget's features through it, computed once."""
    rows = RowSpace()
    Xs = rows.fit_transform(scaler.transform(X))
    return Pipeline([("scale", scaler), ("rows", rows)]), Xs


def _fit_single(name: str, kind: str, X: np.ndarray, y: np.ndarray, seed: int, scaler: StandardScaler
                ) -> tuple[Any, dict[str, Any]]:
    n = len(X)
    if name == "knn":
        k = min(5, n)
        cls = KNeighborsRegressor if kind == "regression" else KNeighborsClassifier
        return _scaled(scaler, cls(k, weights="distance"), X, y), {"k": k}
    if name == "rf":
        if kind == "regression":
            rf: Any = RandomForestRegressor(n_estimators=RF_TREES, max_features=RF_REGRESSION_MAX_FEATURES,
                                           random_state=seed, n_jobs=1)
        else:
            rf = RandomForestClassifier(n_estimators=RF_TREES, random_state=seed, n_jobs=1)
        return rf.fit(X, y), {"n_trees": RF_TREES}
    if name == "ridge":
        if n < 3:
            return _scaled(scaler, Ridge(alpha=1.0), X, y), {"alpha": 1.0, "alpha_selection": "fixed (n < 3)"}
        pipe = _scaled(scaler, RidgeCV(alphas=ALPHA_GRID), X, y)
        return pipe, {"alpha": float(pipe[-1].alpha_), "alpha_selection": "efficient LOO CV"}
    if name == "logreg":
        prep, Xs = _logreg_inputs(X, scaler)
        est, extra = _fit_logreg(Xs, y, seed)
        return Pipeline([("prep", prep), ("clf", est)]), extra
    raise ValueError(f"unknown estimator {name!r}")


def _multilabel_fit(name: str, X: np.ndarray, Y: np.ndarray, seed: int, classes: list[str],
                    scaler: StandardScaler) -> Fitted:
    """One model over the classes that have both positives and negatives in the budget; the others are
    skipped and scored with their (constant) budget prevalence, which is recorded in ``extra``."""
    Y = np.asarray(Y, dtype=np.int8)
    prev = Y.mean(axis=0) if len(Y) else np.zeros(Y.shape[1])
    cols = np.flatnonzero((prev > 0) & (prev < 1))
    skipped = [classes[i] for i in np.flatnonzero(~((prev > 0) & (prev < 1)))]
    extra: dict[str, Any] = {"skipped_classes": skipped} if skipped else {}
    if not len(cols):
        return Fitted(lambda X: np.zeros((len(X), 0)), "multilabel", extra, Y.shape[1], cols, prev)
    Yc = Y[:, cols]
    if name == "logreg":
        prep, Xs = _logreg_inputs(X, scaler)
        models, cs = [], []
        for j in range(Yc.shape[1]):
            m, e = _fit_logreg(Xs, Yc[:, j], seed)
            models.append(m)
            cs.append(e.get("C"))
            if e.get("converged") is False:
                extra["converged"] = False
        extra["C"] = cs
        extra["C_selection"] = f"per class: CV with min({CV_FOLDS}, min(pos, neg)) folds, C=1 when < 2"

        def score(Xn: np.ndarray) -> np.ndarray:
            Z = prep.transform(Xn)
            return np.column_stack([m.predict_proba(Z)[:, 1] for m in models])

        return Fitted(score, "multilabel", extra, Y.shape[1], cols, prev)
    if name == "rf":
        model = RandomForestClassifier(n_estimators=RF_TREES, random_state=seed, n_jobs=1).fit(X, Yc)
        extra["n_trees"] = RF_TREES
    elif name == "knn":
        k = min(5, len(X))
        model = _scaled(scaler, KNeighborsClassifier(k, weights="distance"), X, Yc)
        extra["k"] = k
    else:
        raise ValueError(f"unknown estimator {name!r}")

    def proba(Xn: np.ndarray) -> np.ndarray:
        ps = model.predict_proba(Xn)
        ps = ps if isinstance(ps, list) else [ps]
        return np.column_stack([p[:, 1] for p in ps])

    return Fitted(proba, "multilabel", extra, Y.shape[1], cols, prev)


def fit_estimator(
    name: str, kind: str, X: np.ndarray, y: np.ndarray, seed: int = 0, classes: list[str] | None = None,
    X_ref: np.ndarray | StandardScaler | None = None,
) -> Fitted:
    """Fit estimator ``name`` for a task ``kind`` on a budget; see :data:`ESTIMATORS` for the names.
    ``X_ref``: features (no labels) whose mean / std standardise the inputs of the linear and kNN models,
    e.g. every chip that could be labelled, or a StandardScaler already fitted on them (shared by many
    budgets); default the budget ``X`` itself (see the module docstring)."""
    if kind not in ESTIMATORS:
        raise ValueError(f"unknown task kind {kind!r}")
    if name not in ESTIMATORS[kind]:
        raise ValueError(f"estimator {name!r} is not available for {kind} tasks (choose from {ESTIMATORS[kind]})")
    # the linear and kNN inputs' scale (the random forest ignores it): see the module docstring
    scaler = X_ref if isinstance(X_ref, StandardScaler) else StandardScaler().fit(X if X_ref is None else X_ref)
    if kind == "multilabel":
        classes = classes or [str(i) for i in range(np.shape(y)[1])]
        return _multilabel_fit(name, X, y, seed, classes, scaler)
    model, extra = _fit_single(name, kind, X, y, seed, scaler)
    return Fitted(model, kind, extra)

