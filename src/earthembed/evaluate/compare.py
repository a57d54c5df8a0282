"""Does a feature set beat the baselines? Pairwise comparisons at each label budget, from ``results.csv``.

The question a label-efficiency table is read for: at a small budget, is the pretrained embedding better than
band statistics / random convolutional features / a random-init encoder, and is the gap larger than the noise?
Each comparison is made *within one estimator* (kNN against kNN, linear against linear): choosing each feature
set's best estimator by its test score would select on the test split. The interval of a feature set is the
mean over seeds of its per-seed bootstrap 95% CI (test chips resampled); a win "with CIs apart" needs the lower
end of the winner's interval above the upper end of the other's, which is conservative (two 95% intervals that
just touch correspond to a difference significant at roughly p < 0.01).

Paired intervals (``boot``, from ``bootstrap.parquet``): every fit of a ``fewshot`` run is scored on the same
resamples of the test chips, so the difference of two feature sets can be bootstrapped directly: per resample,
the seed mean of (mine - theirs). Both sets err on many of the same chips, so this interval is much narrower
than the two intervals side by side; ``wins_paired`` says its lower end is above 0 (a 95% paired bootstrap
interval, test chips resampled, the seeds' budget draws held fixed as in every interval here). On a few dozen
test chips it can find a difference that non-overlapping intervals cannot; it is reported next to them, not
instead of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from earthembed.evaluate.metrics import LOWER_IS_BETTER
from earthembed.evaluate.tasks import PRIMARY_METRIC


def primary_rows(results: pd.DataFrame) -> pd.DataFrame:
    """Rows of each task's primary metric (macro-F1, macro mAP or R2)."""
    prim = results["task_kind"].map(PRIMARY_METRIC)
    return results[results["metric"] == prim]


def budget_scores(results: pd.DataFrame) -> pd.DataFrame:
    """Primary metric per (task, features, estimator, budget): seed mean and std, mean CI, mean chips."""
    keys = ["task", "task_kind", "metric", "features", "estimator", "budget"]
    g = primary_rows(results).groupby(keys, sort=False)
    out = g.agg(mean=("value", "mean"), std=("value", "std"), ci_low=("ci_low", "mean"),
                ci_high=("ci_high", "mean"), budget_n=("budget_n", "mean"), n_seeds=("seed", "nunique"))
    return out.reset_index()


def best_per_set(scores: pd.DataFrame) -> tuple[pd.DataFrame, float]:
    """(each feature set at its best estimator, best set first; sign: 1 if higher is better, else -1) of the
    :func:`budget_scores`-like rows of one (task, budget), ranked by mean score (NaN last)."""
    sign = -1.0 if scores["metric"].iloc[0] in LOWER_IS_BETTER else 1.0
    ranked = scores.assign(score=sign * scores["mean"].fillna(-np.inf * sign))
    return ranked.sort_values("score", ascending=False, kind="stable").drop_duplicates("features"), sign


def load_bootstrap(fewshot_dir: str | Path) -> pd.DataFrame | None:
    """``bootstrap.parquet`` of a ``fewshot`` output directory, or None (runs made before it existed)."""
    path = Path(fewshot_dir) / "bootstrap.parquet"
    return pd.read_parquet(path) if path.exists() else None


def resamples(boot: pd.DataFrame) -> dict[tuple[str, str, str, str], dict[int, np.ndarray]]:
    """``{(task, features, estimator, budget): {seed: resample values}}`` of a bootstrap.parquet table."""
    out: dict[tuple[str, str, str, str], dict[int, np.ndarray]] = {}
    for r in boot.itertuples(index=False):
        out.setdefault((r.task, r.features, r.estimator, str(r.budget)), {})[int(r.seed)] = np.asarray(r.values, float)
    return out


def paired_difference(mine: dict[int, np.ndarray], theirs: dict[int, np.ndarray], sign: float = 1.0
                      ) -> tuple[float, float]:
    """95% interval of the seed mean of ``sign * (mine - theirs)`` over paired resamples (per seed: the
    resample values of the primary metric); NaN, NaN without a common seed of equal length."""
    seeds = [s for s in mine if s in theirs and len(mine[s]) == len(theirs[s]) and len(mine[s])]
    if not seeds or len({len(mine[s]) for s in seeds}) > 1:
        return float("nan"), float("nan")
    with np.errstate(invalid="ignore"):  # resamples where a score is undefined (inf - inf) drop out below
        d = sign * np.mean([mine[s] - theirs[s] for s in seeds], axis=0)
    d = d[np.isfinite(d)]
    if not len(d):
        return float("nan"), float("nan")
    lo, hi = np.percentile(d, [2.5, 97.5])
    return float(lo), float(hi)


def compare(results: pd.DataFrame, features: str, others: Sequence[str], boot: pd.DataFrame | None = None
            ) -> pd.DataFrame:
    """One row per (task, estimator, budget, other): ``features`` against each feature set in ``others``
    (those absent from ``results`` are skipped): both scores, the difference and whether it wins with CIs apart.
    With ``boot`` (:func:`load_bootstrap`) also the paired interval of the difference (``diff_ci_low``,
    ``diff_ci_high``, in "higher is better" orientation) and ``wins_paired`` / ``loses_paired``."""
    s = budget_scores(results)
    samples = resamples(boot) if boot is not None and len(boot) else None
    mine = s[s["features"] == features]
    rows = []
    for other in others:
        theirs = s[s["features"] == other]
        if theirs.empty or mine.empty:
            continue
        m = mine.merge(theirs, on=["task", "task_kind", "metric", "estimator", "budget"], suffixes=("", "_other"))
        for r in m.itertuples(index=False):
            higher = r.metric not in LOWER_IS_BETTER
            diff = (r.mean - r.mean_other) * (1.0 if higher else -1.0)
            mine_apart = r.ci_low > r.ci_high_other if higher else r.ci_high < r.ci_low_other
            theirs_apart = r.ci_high < r.ci_low_other if higher else r.ci_low > r.ci_high_other
            row = {
                "task": r.task, "metric": r.metric, "estimator": r.estimator, "budget": r.budget,
                "budget_n": r.budget_n, "features": features, "other": other, "score": r.mean, "std": r.std,
                "ci_low": r.ci_low, "ci_high": r.ci_high, "other_score": r.mean_other, "other_std": r.std_other,
                "other_ci_low": r.ci_low_other, "other_ci_high": r.ci_high_other, "diff": diff,
                "wins": bool(diff > 0), "wins_ci_apart": bool(mine_apart), "loses_ci_apart": bool(theirs_apart),
            }
            if samples is not None:
                lo, hi = paired_difference(samples.get((r.task, features, r.estimator, str(r.budget)), {}),
                                           samples.get((r.task, other, r.estimator, str(r.budget)), {}),
                                           1.0 if higher else -1.0)
                row.update(diff_ci_low=lo, diff_ci_high=hi, wins_paired=bool(lo > 0), loses_paired=bool(hi < 0))
            rows.append(row)
    return pd.DataFrame(rows)


def compare_best_estimators(results: pd.DataFrame, features: str, others: Sequence[str], boot: pd.DataFrame
                            ) -> pd.DataFrame:
    """Like :func:`compare`, but each feature set at *its* best estimator per (task, budget) (by mean score, as
    ``best.csv`` does), paired across estimators: all fits share the test resamples. The question a user asks
    ("with the better model for each, is mine better?"); the estimator choice looks at the test score for both
    sides alike. Rows: task, budget, budget_n, features/estimator, other/other_estimator, scores, diff and its
    paired interval, ``wins_paired`` / ``loses_paired``."""
    s = budget_scores(results)
    samples = resamples(boot)
    rows = []
    for (task, budget), d in s.groupby(["task", "budget"], sort=False):
        ranked, sign = best_per_set(d)
        best = ranked.set_index("features")
        if features not in best.index:
            continue
        mine = best.loc[features]
        for other in others:
            if other not in best.index:
                continue
            theirs = best.loc[other]
            lo, hi = paired_difference(samples.get((task, features, mine["estimator"], str(budget)), {}),
                                       samples.get((task, other, theirs["estimator"], str(budget)), {}), sign)
            rows.append({"task": task, "metric": mine["metric"], "budget": budget, "budget_n": mine["budget_n"],
                         "features": features, "estimator": mine["estimator"], "score": mine["mean"],
                         "other": other, "other_estimator": theirs["estimator"], "other_score": theirs["mean"],
                         "diff": sign * (mine["mean"] - theirs["mean"]), "diff_ci_low": lo, "diff_ci_high": hi,
                         "wins_paired": bool(lo > 0), "loses_paired": bool(hi < 0)})
    return pd.DataFrame(rows)


def smallest_budget(results: pd.DataFrame) -> pd.DataFrame:
    """Rows of each task's smallest budget (by mean number of training chips)."""
    n = results.groupby(["task", "budget"])["budget_n"].mean().reset_index()
    first = n.loc[n.groupby("task")["budget_n"].idxmin(), ["task", "budget"]]
    return results.merge(first, on=["task", "budget"])


def comparison_sentence(results: pd.DataFrame, features: str, baselines: Sequence[str] = ("band_stats", "rcf"),
                        estimator: str = "linear", boot: pd.DataFrame | None = None) -> str:
    """One sentence: at each task's smallest budget, with ``estimator`` (``linear`` = logreg / ridge), on how
    many tasks ``features`` beats each baseline, on how many with CIs apart and (with ``boot``) on how many
    with the paired interval of the difference above 0."""
    linear = {"logreg", "ridge"} if estimator == "linear" else {estimator}
    small = smallest_budget(results)
    c = compare(small[small["estimator"].isin(linear)], features, baselines, boot)
    if c.empty:
        return f"No comparison possible: `{features}` or the baselines {list(baselines)} are missing from the results."
    parts = []
    for b in baselines:
        d = c[c["other"] == b]
        if d.empty:
            parts.append(f"{_NAMES.get(b, b)} was not evaluated")
            continue
        n = d["task"].nunique()
        paired = (f"; paired: {int(d['wins_paired'].sum())} won, {int(d['loses_paired'].sum())} lost"
                  if "wins_paired" in d else "")
        parts.append(f"{_NAMES.get(b, b)} on {int(d['wins'].sum())} of {n} tasks "
                     f"({int(d['wins_ci_apart'].sum())} with CIs apart, {int(d['loses_ci_apart'].sum())} lost with CIs apart"
                     f"{paired})")
    est = "logistic/ridge regression" if estimator == "linear" else estimator
    how = ("95% bootstrap CIs; paired = the 95% paired bootstrap interval of the difference excludes 0"
           if "wins_paired" in c else "95% bootstrap CIs")
    return (f"At the smallest label budget of each task ({est}, mean of seeds, {how}), `{features}` beat "
            + "; ".join(parts) + ".")


_NAMES = {"band_stats": "band statistics", "rcf": "random convolutional features (RCF)", "random_init": "random init"}


def win_table(results: pd.DataFrame, features: str, others: Sequence[str], boot: pd.DataFrame | None = None
              ) -> pd.DataFrame:
    """Per task, estimator and budget: ``features``' score with CI next to each other feature set's, and
    ``win`` / ``WIN`` (CIs apart) / ``loss`` / ``LOSS`` (CIs apart) markers; for docs tables. With ``boot``
    also ``paired``: the paired interval of the difference, ``+`` / ``-`` when it excludes 0."""
    c = compare(results, features, others, boot)
    if c.empty:
        return c

    def mark(r) -> str:
        return "WIN" if r.wins_ci_apart else "LOSS" if r.loses_ci_apart else "win" if r.wins else "loss"

    c = c.assign(result=[mark(r) for r in c.itertuples(index=False)])
    c["n"] = np.round(c["budget_n"]).astype(int)
    cols = ["task", "estimator", "budget", "n", "other", "score", "ci_low", "ci_high", "other_score",
            "other_ci_low", "other_ci_high", "result"]
    if "wins_paired" in c:
        c["paired"] = [f"[{r.diff_ci_low:+.3f}, {r.diff_ci_high:+.3f}]"
                       + (" +" if r.wins_paired else " -" if r.loses_paired else "") for r in c.itertuples(index=False)]
        cols.append("paired")
    return c[cols]
