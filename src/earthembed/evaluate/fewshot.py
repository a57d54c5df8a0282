"""Few-shot label-efficiency evaluation (Jungbluth et al. 2023 protocol, torchgeo-bench style).

For each task, every feature set (embedding columns of each table, plus baselines) is scored on the *same*
test chips with the *same* nested budget samples per seed, and every fit's interval comes from the *same*
bootstrap resamples of those chips (:data:`BOOTSTRAP_SEED`), so differences between feature sets are not
differences in what they were trained or tested on, and can be bootstrapped pairwise
(:mod:`earthembed.evaluate.compare`, from ``bootstrap.parquet``). Linear and kNN inputs are standardised by the
features of the whole pool (no labels; see :mod:`earthembed.evaluate.estimators`). Test chips are the intersection of labelled chips
that have every feature set: a feature set with missing chips (e.g. ``emb_s1`` where S1 is absent)
narrows the evaluation for all of them; restrict ``feature_columns`` to avoid that.

Baselines run by the same call on the same splits (:mod:`earthembed.evaluate.baselines`): ``band_stats``
(per-band statistics of the chip), ``rcf`` (random convolutional features, MOSAIKS / TorchGeo; empirical
filters from the store's train split) and ``random_init`` (embeddings of a randomly initialised encoder of the
first table's architecture, computed into the output directory unless a ``random_init`` table is given).

The output directory follows :mod:`earthembed.outputs`: a new or empty directory, or one ``fewshot`` made before
(its results are refreshed there, its baseline tables reused); any other directory, a path inside a store or a run
and an input are refused before anything is computed. A table with NaN/Inf inside an embedding is an error naming
it (not a missing chip), and a constant feature set (e.g. all zeros) is warned about, in ``summary.md`` too.
"""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.preprocessing import StandardScaler

from earthembed.data.store import ChipStore
from earthembed.errors import EvaluationWarning
from earthembed.evaluate.baselines import (
    RANDOM_INIT,
    RANDOM_INIT_SEED,
    RCF,
    random_init_table,
    rcf_feature_set,
)
from earthembed.evaluate.budgets import (
    ALL,
    default_budgets,
    parse_budget_modes,
    resolve_mode,
    sample_budgets,
    split_pool_test,
)
from earthembed.evaluate.estimators import fit_estimator, resolve_estimators
from earthembed.evaluate.features import FeatureSet, band_statistics_feature_set, load_feature_sets
from earthembed.evaluate.metrics import bootstrap_ci, bootstrap_metrics
from earthembed.evaluate.summary import plot_label_efficiency, write_summary
from earthembed.evaluate.tasks import PRIMARY_METRIC, RESULT_COLUMNS, Task, load_task
from earthembed.explore.tables import check_embedding_table
from earthembed.outputs import atomic_path, check_output, claim_dir, write_json
from earthembed.progress import Progress
from earthembed.progress import progress as make_progress

BASELINES = ("band_stats", RCF, RANDOM_INIT)
DEFAULT_BASELINES = ("band_stats", RCF, RANDOM_INIT)
__all__ = ["BASELINES", "DEFAULT_BASELINES", "RANDOM_INIT", "RANDOM_INIT_SEED", "RESULT_COLUMNS", "evaluate_task",
           "load_all_feature_sets", "random_init_table", "run_fewshot"]


def _split_names(v: str | Sequence[str] | None) -> list[str]:
    if v is None:
        return []
    if isinstance(v, str):
        return [s.strip() for s in v.split(",") if s.strip()]
    return [s for x in v for s in _split_names(x)]


def load_all_feature_sets(
    embeddings: Mapping[str, str | Path],
    store: ChipStore,
    baselines: Sequence[str] = ("band_stats",),
    feature_columns: Sequence[str] | None = None,
    work_dir: str | Path | None = None,
    rcf_options: Mapping[str, Any] | None = None,
) -> list[FeatureSet]:
    """Feature sets of every table (``<name>:<column>``) followed by the requested baselines.

    ``feature_columns`` entries are plain (``emb_fused``: every table) or qualified (``random_init:emb_fused``:
    that table only); a table with no entry that applies keeps all its ``emb_*`` columns. Baseline
    ``random_init`` uses the table named ``random_init`` in ``embeddings`` if there is one, otherwise it is
    embedded into ``work_dir`` (see :func:`random_init_table`) and gives sets ``random_init:<column>``.
    ``band_stats`` and ``rcf`` are one set each over every non-categorical modality of the store; ``rcf`` is
    embedded into ``work_dir`` (options: :data:`earthembed.evaluate.baselines.RCF_DEFAULTS`).
    """
    for b in baselines:
        if b not in BASELINES:
            raise ValueError(f"unknown baseline {b!r} (available: {BASELINES})")
    def columns(name: str) -> list[str] | None:  # plain entries, and those qualified with this table's name
        plain = [c for c in feature_columns or [] if ":" not in c]
        return plain + [c.split(":", 1)[1] for c in feature_columns or [] if c.startswith(f"{name}:")] or None

    tables = dict(embeddings)
    for name, path in tables.items():  # a damaged table is named before any baseline is computed
        check_embedding_table(path, columns(name), option=f"--embeddings {name}")
    if work_dir is not None and ((RANDOM_INIT in baselines and RANDOM_INIT not in tables) or RCF in baselines):
        claim_dir(work_dir, "fewshot")  # checked by run_fewshot; baselines are embedded into it
    if RANDOM_INIT in baselines and RANDOM_INIT not in tables:
        if work_dir is None:
            raise ValueError("the random_init baseline needs a work_dir to write its embedding table to")
        tables[RANDOM_INIT] = random_init_table(embeddings, store, work_dir)
    sets: list[FeatureSet] = []
    for name, path in tables.items():
        sets += load_feature_sets(name, path, columns(name))
    if "band_stats" in baselines:
        sets.append(band_statistics_feature_set(store))
    if RCF in baselines:
        if work_dir is None:
            raise ValueError("the rcf baseline needs a work_dir to write its featurizer and embedding table to")
        sets.append(rcf_feature_set(store, work_dir, **dict(rcf_options or {})))
    if not sets:
        raise ValueError("nothing to evaluate: give at least one embedding table or baseline")
    for fs in sets:
        if len(np.unique(fs.chip_ids)) != len(fs.chip_ids):
            raise ValueError(f"{fs.source}: duplicate chip_id rows in feature set {fs.name}")
    return sets


def _common(task: Task, sets: Sequence[FeatureSet]) -> tuple[Task, list[np.ndarray]]:
    """The task restricted to chips every feature set has, and each set's matrix aligned to it."""
    keep = np.ones(len(task), dtype=bool)
    for fs in sets:
        keep &= np.isin(task.chip_ids, fs.chip_ids)
    if not keep.any():
        overlap = {fs.name: int(np.isin(task.chip_ids, fs.chip_ids).sum()) for fs in sets}
        raise ValueError(
            f"task {task.name!r}: no labelled chip has every feature set (labelled chips per set: {overlap}); "
            "are the embedding tables from this store?"
        )
    t = task.subset(keep)
    mats = [fs.X[pd.Index(fs.chip_ids).get_indexer(t.chip_ids)] for fs in sets]
    return t, mats


def constant_warnings(sets: Sequence[FeatureSet], rel: float = 1e-6) -> list[str]:
    """One line per feature set whose every dimension is (nearly) the same on all its chips (spread at most
    ``rel`` x its largest absolute value; e.g. an all-zero embedding): whatever it scores, it carries no
    information, so its label reduction is that of a guess."""
    out = []
    for fs in sets:
        if len(fs.X) < 2 or not fs.X.shape[1]:
            continue
        spread = float((fs.X.max(axis=0) - fs.X.min(axis=0)).max())
        if spread <= rel * float(np.abs(fs.X).max()):
            out.append(f"feature set {fs.name} ({fs.source or 'computed'}) is constant across its {len(fs.X)} chips "
                       f"(largest spread of a dimension {spread:.3g}): it carries no information, so its scores and "
                       "label reduction are those of a guess")
    return out


@dataclasses.dataclass
class _Plan:
    """One task ready to fit: the common chips, each set's matrix, estimators, budget samples per seed."""

    t: Task
    mats: list[np.ndarray]
    ests: list[str]
    mode: str
    samples: dict[int, dict[str, np.ndarray]]
    pool: np.ndarray
    test: np.ndarray
    notes: dict[str, Any]
    members: pd.DataFrame

    def n_fits(self) -> int:
        return len(self.mats) * len(self.ests) * sum(len(b) for b in self.samples.values())


def coverage_warnings(t: Task, pool: np.ndarray, test: np.ndarray, budgets: Sequence[int | str], mode: str) -> list[str]:
    """What the scores of task ``t`` cannot tell: classes with no test chip (a macro score over the classes
    that are tested can be perfect while they are never recognised), classes or pools smaller than a budget
    (those budgets are clipped, so neighbouring budgets are the same experiment). Written to summary.md."""
    out: list[str] = []
    numeric = sorted(int(b) for b in budgets if b != ALL)
    if t.kind in ("classification", "multilabel"):
        k = len(t.classes)
        if t.kind == "classification":
            n_pool = np.bincount(t.y[pool], minlength=k)
            n_test = np.bincount(t.y[test], minlength=k)
        else:
            n_pool = np.asarray(t.y[pool]).sum(axis=0)
            n_test = np.asarray(t.y[test]).sum(axis=0)
        counts = {c: (int(a), int(b)) for c, a, b in zip(t.classes, n_pool, n_test, strict=True)}
        unused = [c for c, (a, b) in counts.items() if a + b == 0]
        untested = {c: a for c, (a, b) in counts.items() if b == 0 and a > 0}
        untrained = {c: b for c, (a, b) in counts.items() if a == 0 and b > 0}
        if untested:
            out.append(
                f"{t.name}: classes absent from the test split (training chips): {untested}; no score measures "
                "them, so a high macro score does not mean they are recognised"
            )
        if untrained:
            out.append(f"{t.name}: classes only in the test split (test chips), never trained: {untrained}")
        if unused:
            out.append(f"{t.name}: declared classes with no labelled chip (never trained or tested): {unused}")
        if mode == "per_class" and numeric:
            few = {c: a for c, (a, _) in counts.items() if 0 < a < numeric[-1]}
            if few:
                out.append(
                    f"{t.name}: classes with fewer training chips than the largest budget ({numeric[-1]} per class): "
                    f"{few}; a budget above a class's count uses all of its chips"
                )
    if mode == "total":
        clipped = [b for b in numeric if b > len(pool)]
        if clipped:
            out.append(f"{t.name}: budgets {clipped} exceed the {len(pool)} training chips; they are not evaluated")
    return out


def _plan_task(
    task: Task, sets: Sequence[FeatureSet], budgets: Mapping[str, Sequence[int | str]], budget_mode: str,
    seeds: Sequence[int], estimators: Sequence[str] | str | None,
) -> _Plan:
    t, mats = _common(task, sets)
    mode = resolve_mode(t.kind, budget_mode)
    budgets = list(budgets.get(mode) or default_budgets(mode))
    ests = resolve_estimators(t.kind, estimators)
    pool, test, note = split_pool_test(t.split, t.y if t.kind == "classification" else None)
    if not len(pool):
        raise ValueError(f"task {t.name!r}: no training chips (all labelled chips are in the test split)")
    notes = {
        "task": t.name, "kind": t.kind, "classes": t.classes, "budget_mode": mode, "budgets": [str(b) for b in budgets],
        "warnings": coverage_warnings(t, pool, test, budgets, mode),
        "split": note, "n_labelled": len(task) + task.n_dropped, "n_dropped_unlabelled": task.n_dropped,
        "n_common": len(t), "n_pool": len(pool), "n_test": len(test),
        "feature_sets": {fs.name: {"dim": fs.dim, "n_chips": len(fs.chip_ids), "n_excluded_null": fs.n_excluded,
                                   "source": fs.source, "model_id": fs.model_id} for fs in sets},
    }
    samples = {s: sample_budgets(t.y[pool], t.kind, budgets, mode, s) for s in seeds}
    membership = [pd.DataFrame({"task": t.name, "seed": s, "budget": b, "chip_id": t.chip_ids[pool[p]]})
                  for s, bud in samples.items() for b, p in bud.items()]
    members = pd.concat(membership, ignore_index=True) if membership else pd.DataFrame()
    return _Plan(t, mats, ests, mode, samples, pool, test, notes, members)


def evaluate_task(
    task: Task,
    sets: Sequence[FeatureSet],
    budgets: str | Sequence[int | str] | Mapping[str, str | Sequence[int | str]] | None = None,
    budget_mode: str = "auto",
    seeds: Sequence[int] = (0, 1, 2),
    estimators: Sequence[str] | str | None = None,
    n_boot: int = 200,
    progress: bool = False,
    n_jobs: int = 1,
    bar: Progress | None = None,
) -> tuple[pd.DataFrame, dict[str, Any], pd.DataFrame]:
    """(tidy results, run notes, budget membership) of one task over all feature sets.

    ``bar``: advance this :class:`~earthembed.progress.Progress` by one per fit (``progress`` is then
    ignored); otherwise ``progress`` shows one of its own for this task."""
    plan = _plan_task(task, sets, parse_budget_modes(budgets), budget_mode, seeds, estimators)
    own = bar is None
    if own:
        bar = make_progress(total=plan.n_fits(), desc=f"few-shot {plan.t.name}", unit="fits", quiet=not progress)
    try:
        ((rows, _),) = _fit_plans([plan], [fs.name for fs in sets], n_boot, bar, n_jobs)
    finally:
        if own:
            bar.close()
    return rows, plan.notes, plan.members


#: CPU-seconds of prediction + bootstrap scoring per fit (demo grid, 2026-11-30)
SCORE_S = 0.025


def _unit_cost(kind: str, est: str, dim: int, sizes: Sequence[int], n_outputs: int) -> float:
    """Rough CPU-seconds of fitting and scoring ``est`` on budgets of ``sizes`` chips, fitted to the demo
    grid's per-fit times (log-log correlation 0.97). Used to start the most expensive units first (so no core
    idles at the end) and for the progress ETA (the cheap kNN fits would otherwise make the early ETA 4x long)."""
    n = float(sum(sizes))
    score = SCORE_S * len(sizes)
    if est == "logreg":  # C by CV: one path per fold (per class for multilabel)
        return score + 1e-4 * n * (n_outputs if kind == "multilabel" else 2) * (1.0 + dim / 256)
    if est == "rf":  # features tried per split: p/3 (regression) or sqrt(p)
        return score + 6e-6 * n * np.log2(n + 2) * (dim / 3 if kind == "regression" else np.sqrt(dim))
    if est == "ridge":
        return score + 1.5e-4 * n
    return score + 2e-5 * n


def _same_as_first_seed(p: _Plan) -> dict[int, set[str]]:
    """Per seed, the budgets whose training chips are exactly those of the first seed's same budget (``all``,
    and budgets clipped to a whole pool): fitted once, their rows repeated for the other seeds."""
    first = min(p.samples)
    ref = p.samples[first]
    return {s: {b for b, v in bud.items() if s != first and b in ref and np.array_equal(v, ref[b])}
            for s, bud in p.samples.items()}


def _repeat_row(row: dict[str, Any], seed: int, first: int) -> dict[str, Any]:
    extra = json.loads(row["extra"])
    return {**row, "seed": seed, "fit_s": 0.0, "extra": json.dumps({**extra, "fit_of_seed": first}, default=float)}


#: seed of the test-chip resamples, the same for every fit: all feature sets, estimators and seeds of a task are
#: scored on the same resamples, so differences between them can be bootstrapped pairwise (compare.py)
BOOTSTRAP_SEED = 0
_SAMPLES = "_bootstrap"  # key of a row's primary-metric resample values, split off into bootstrap.parquet
BOOTSTRAP_COLUMNS = ["task", "features", "estimator", "budget", "seed", "metric", "n_test", "values"]


def _split_samples(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The primary metric's resample values of ``rows`` (removed from them) as bootstrap.parquet rows."""
    out = []
    for r in rows:
        v = r.pop(_SAMPLES, None)
        if v is not None:
            out.append({**{k: r[k] for k in BOOTSTRAP_COLUMNS[:-1]}, "values": v})
    return pd.DataFrame(out, columns=BOOTSTRAP_COLUMNS)


def _fit_plans(plans: Sequence[_Plan], names: Sequence[str], n_boot: int, bar: Progress | None, n_jobs: int = 1
               ) -> list[tuple[pd.DataFrame, pd.DataFrame]]:
    """(tidy results, bootstrap rows) of every plan: each feature set x estimator x seed x budget fitted once,
    scored on the test split; the bootstrap rows hold each fit's primary metric on the shared resamples.

    Units of work are (task, feature set, estimator, seed), all tasks in one pool of ``n_jobs`` processes
    (joblib), the most expensive first; a pool per task would leave a core idle at every task's tail. A budget
    with the same chips for every seed (``all``) is fitted for the first seed only and its rows repeated for the
    others (``fit_s`` 0, ``extra.fit_of_seed``): seeds are there to resample the labelled chips, and refitting the
    same chips only re-rolled the CV folds (it was the most expensive fit, done once per seed). Rows come back in
    the order (task, feature set, estimator, seed, budget) whatever ``n_jobs`` and the schedule."""
    from joblib import Parallel, delayed

    units = []
    same = [_same_as_first_seed(p) for p in plans]
    for i, p in enumerate(plans):
        n_out = p.t.y.shape[1] if p.t.kind == "multilabel" else 1
        first = min(p.samples)
        todos = {s: {b: v for b, v in bud.items() if b not in same[i][s]} for s, bud in p.samples.items()}
        # the first seed's unit also does the other seeds' repeated fits (for the progress count)
        repeats = {s: sum(len(v) for v in same[i].values()) if s == first else 0 for s in p.samples}
        for j, X in enumerate(p.mats):
            for k, est in enumerate(p.ests):
                for s, todo in todos.items():
                    if not todo:
                        continue
                    cost = _unit_cost(p.t.kind, est, X.shape[1], [len(v) for v in todo.values()], n_out)
                    units.append(((i, j, k, s), cost, p, names[j], X, est, s, todo, repeats[s]))
    order = sorted(range(len(units)), key=lambda u: -units[u][1])
    if bar is not None:
        bar.set_total_work(sum(u[1] for u in units))
    done: dict[tuple[int, int, int, int], dict[str, list[dict[str, Any]]]] = {}
    run = Parallel(n_jobs=n_jobs, return_as="generator")
    jobs = (delayed(_fit_unit)(u[2].t, u[3], u[4], u[5], u[6], u[7], u[2].pool, u[2].test, n_boot, u[2].mode)
            for u in (units[o] for o in order))
    for o, rows in zip(order, run(jobs), strict=True):
        by_budget: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            by_budget.setdefault(r["budget"], []).append(r)
        done[units[o][0]] = by_budget
        if bar is not None:
            bar.update(len(units[o][7]) + units[o][8], work=units[o][1])
    out = []
    for i, p in enumerate(plans):
        first = min(p.samples)
        rows = []
        for j in range(len(p.mats)):
            for k in range(len(p.ests)):
                for s in sorted(p.samples):
                    for b in p.samples[s]:
                        if b in same[i][s]:
                            rows += [_repeat_row(r, s, first) for r in done[(i, j, k, first)][b]]
                        else:
                            rows += done[(i, j, k, s)][b]
        boot = _split_samples(rows)  # repeated rows are copies made above, so they keep their samples
        out.append((pd.DataFrame(rows, columns=RESULT_COLUMNS), boot))
    return out


def _fit_unit(
    t: Task, features: str, X: np.ndarray, est: str, seed: int, budgets: dict[str, np.ndarray],
    pool: np.ndarray, test: np.ndarray, n_boot: int, mode: str,
) -> list[dict[str, Any]]:
    """Rows of one feature set x estimator x seed over the seed's budgets."""
    from threadpoolctl import threadpool_limits

    y_test = t.y[test]
    # scale of the linear / kNN inputs: every chip a budget may draw from (features only), fitted once per unit
    pool_scale = StandardScaler().fit(X[pool])
    rows: list[dict[str, Any]] = []
    # budgets are small: BLAS threads cost more in start-up and contention than they save (10x on 2 cores)
    with threadpool_limits(limits=1):
        for b, p in budgets.items():
            tr = pool[p]
            t0 = time.perf_counter()
            fitted = fit_estimator(est, t.kind, X[tr], t.y[tr], seed=seed, classes=t.classes, X_ref=pool_scale)
            fit_s = time.perf_counter() - t0
            pred, score = fitted.predict(X[test])
            metrics = bootstrap_metrics(t.kind, y_test, pred, score, n_boot=n_boot, seed=BOOTSTRAP_SEED)
            extra = json.dumps(fitted.extra, default=float)
            for m, (v, samples) in metrics.items():
                lo, hi = bootstrap_ci(samples)
                rows.append({
                    "task": t.name, "task_kind": t.kind, "features": features, "estimator": est,
                    "budget_mode": mode, "budget": b, "budget_n": len(tr), "seed": seed, "metric": m,
                    "value": v, "ci_low": lo, "ci_high": hi, "n_train": len(tr), "n_test": len(test),
                    "fit_s": fit_s, "extra": extra,
                    **({_SAMPLES: samples.astype(np.float32)} if m == PRIMARY_METRIC[t.kind] else {}),
                })
    return rows


HOLDOUTS = ("test", "val")


def holdout_split(task: Task, holdout: str) -> Task:
    """``task`` as scored on ``holdout``: unchanged for ``test``; for ``val`` its test chips dropped and its val
    chips in the test role (so budgets come from train alone and the test split stays unseen while tuning)."""
    if holdout not in HOLDOUTS:
        raise ValueError(f"holdout must be one of {HOLDOUTS}, got {holdout!r}")
    if holdout == "test":
        return task
    if not (task.split == "val").any():
        raise ValueError(f"task {task.name!r}: holdout 'val' needs labelled chips in the store's val split, it has none")
    t = task.subset(task.split != "test")
    return dataclasses.replace(t, split=np.where(t.split == "val", "test", "train"))


def run_fewshot(
    embeddings: Mapping[str, str | Path],
    store: str | Path | ChipStore,
    task: str | Sequence[str],
    out_dir: str | Path,
    budgets: str | Sequence[int | str] | Mapping[str, str | Sequence[int | str]] | None = None,
    budget_mode: str = "auto",
    seeds: Sequence[int] = (0, 1, 2),
    estimators: str | Sequence[str] | None = None,
    baselines: str | Sequence[str] = DEFAULT_BASELINES,
    n_boot: int = 200,
    feature_columns: str | Sequence[str] | None = None,
    progress: bool = False,
    n_jobs: int = 1,
    rcf: Mapping[str, Any] | None = None,
    holdout: str = "test",
) -> pd.DataFrame:
    """Label-efficiency curves of every feature set on one or more label columns (``task``, comma list ok).

    ``budgets``: one list for every task (``"1,5,10,all"``) or one per budget mode (``"total=10,50,all"``,
    ``{"per_class": [1, 5], "total": [10, 50]}``; see :func:`~earthembed.evaluate.budgets.parse_budget_modes`),
    default :func:`~earthembed.evaluate.budgets.default_budgets`. ``embeddings`` maps a name to an embedding table; each of its ``emb_*`` columns (or those in
    ``feature_columns``) becomes feature set ``<name>:<column>``. ``baselines`` (``"none"`` for none) adds
    ``band_stats`` from the store; ``rcf``: random convolutional features of the store (``out_dir/rcf.parquet``,
    featurizer in ``out_dir/rcf_featurizer/``; ``rcf`` overrides its options, e.g. ``{"mode": "gaussian"}``);
    and ``random_init``: the table named ``random_init`` in ``embeddings`` if given, else
    ``out_dir/random_init.parquet`` embedded with a randomly initialised (seed 0) encoder of the first table's
    model, modalities and bands (a ValueError if that model's export is gone). ``n_jobs`` processes fit
    (feature set x estimator) cells in parallel (-1: all cores). ``progress``: a bar with ETA on a terminal, a
    line every 10% otherwise (:mod:`earthembed.progress`). Writes ``results.csv``/``.parquet`` (tidy),
    ``summary.csv``/``.md``, ``best.csv`` (best feature set per task and budget, tie or not),
    ``label_efficiency.png``, ``budgets.parquet`` (chip ids of every budget sample), ``bootstrap.parquet`` (the
    primary metric of every fit on each test-chip resample, the same resamples for every fit: paired comparisons,
    :mod:`earthembed.evaluate.compare`) and ``run.json`` (split, exclusions) to ``out_dir`` and returns the tidy
    results. ``holdout="val"`` scores on the val split instead, budgets drawn from train alone, test chips
    left out of budgets and scores (:func:`holdout_split`): compare recipes there, report the winner on test.
    """
    st = store if isinstance(store, ChipStore) else ChipStore(store)
    out_dir = check_output(out_dir, "fewshot", [*embeddings.values(), st.path])
    tasks = _split_names(task)
    if not tasks:
        raise ValueError("no task given")
    if not seeds:
        raise ValueError("need at least one seed")
    bl = _split_names(baselines)
    bl = [] if bl in (["none"], ["no"]) else bl
    parsed = parse_budget_modes(budgets)
    loaded = [holdout_split(load_task(st, name), holdout) for name in tasks]  # bad column: fail before fitting
    sets = load_all_feature_sets(embeddings, st, bl, _split_names(feature_columns) or None, work_dir=out_dir,
                                 rcf_options=rcf)
    constant = constant_warnings(sets)
    for w in constant:
        warnings.warn(w, EvaluationWarning, stacklevel=2)
    claim_dir(out_dir, "fewshot")
    plans = [_plan_task(tk, sets, parsed, budget_mode, list(seeds), estimators) for tk in loaded]
    desc = f"few-shot ({len(plans)} task{'s' * (len(plans) > 1)} x {len(sets)} feature sets)"
    with make_progress(total=sum(p.n_fits() for p in plans), desc=desc, unit="fits", quiet=not progress) as bar:
        results = _fit_plans(plans, [fs.name for fs in sets], n_boot, bar, n_jobs)
    notes = [p.notes for p in plans]
    members = [p.members for p in plans]
    df = pd.concat([r for r, _ in results], ignore_index=True)
    with atomic_path(out_dir / "results.csv") as tmp:
        df.to_csv(tmp, index=False)
    with atomic_path(out_dir / "results.parquet") as tmp:
        df.to_parquet(tmp, index=False)
    boot = pd.concat([b for _, b in results], ignore_index=True)
    with atomic_path(out_dir / "bootstrap.parquet") as tmp:
        boot.to_parquet(tmp, index=False)
    with atomic_path(out_dir / "budgets.parquet") as tmp:
        pd.concat(members, ignore_index=True).to_parquet(tmp, index=False)
    write_json(out_dir / "run.json", json.loads(json.dumps(
        {"store": str(st.path), "holdout": holdout, "seeds": list(seeds), "n_boot": n_boot, "tasks": notes,
         "warnings": constant}, default=str)))
    write_summary(df, out_dir, warnings=constant + [w for n in notes for w in n["warnings"]], boot=boot,
                  models={fs.name: {"model_id": fs.model_id, "source": fs.source} for fs in sets})
    plot_label_efficiency(df, out_dir / "label_efficiency.png")
    return df
