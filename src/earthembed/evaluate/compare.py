"""Does a feature set beat the baselines? Pairwise comparisons at each label budget, from ``results.csv``.

The question a label-efficiency table is read for: at a small budget, is the pretrained embedding better than
band statistics / random convolutional features / a random-init encoder, and is the gap larger than the noise?
Each comparison is made *within one estimator* (kNN against kNN, linear against linear): choosing each feature
set's best estimator by its test score would select on the test split. The interval of a feature set is the
mean over seeds of its per-seed bootstrap 95% CI (test chips resampled); a win "with CIs apart" needs the lower
end of the winner's interval above the upper end of the other's, which is conservative (two 95% intervals that
just touch correspond to a difference significant at roughly p < 0.01).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from earthembed.evaluate.metrics import LOWER_IS_BETTER
from earthembed.evaluate.tasks import PRIMARY_METRIC


def budget_scores(results: pd.DataFrame) -> pd.DataFrame:
    """Primary metric per (task, features, estimator, budget): seed mean and std, mean CI, mean chips."""
    prim = results[results["metric"] == results["task_kind"].map(PRIMARY_METRIC)]
    keys = ["task", "task_kind", "metric", "features", "estimator", "budget"]
    g = prim.groupby(keys, sort=False)
    out = g.agg(mean=("value", "mean"), std=("value", "std"), ci_low=("ci_low", "mean"),
                ci_high=("ci_high", "mean"), budget_n=("budget_n", "mean"), n_seeds=("seed", "nunique"))
    return out.reset_index()


def compare(results: pd.DataFrame, features: str, others: Sequence[str]) -> pd.DataFrame:
    """One row per (task, estimator, budget, other): ``features`` against each feature set in ``others``
    (those absent from ``results`` are skipped): both scores, the difference and whether it wins with CIs apart."""
    s = budget_scores(results)
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
            rows.append({
                "task": r.task, "metric": r.metric, "estimator": r.estimator, "budget": r.budget,
                "budget_n": r.budget_n, "features": features, "other": other, "score": r.mean, "std": r.std,
                "ci_low": r.ci_low, "ci_high": r.ci_high, "other_score": r.mean_other, "other_std": r.std_other,
                "other_ci_low": r.ci_low_other, "other_ci_high": r.ci_high_other, "diff": diff,
                "wins": bool(diff > 0), "wins_ci_apart": bool(mine_apart), "loses_ci_apart": bool(theirs_apart),
            })
    return pd.DataFrame(rows)


def smallest_budget(results: pd.DataFrame) -> pd.DataFrame:
    """Rows of each task's smallest budget (by mean number of training chips)."""
    n = results.groupby(["task", "budget"])["budget_n"].mean().reset_index()
    first = n.loc[n.groupby("task")["budget_n"].idxmin(), ["task", "budget"]]
    return results.merge(first, on=["task", "budget"])


def comparison_sentence(results: pd.DataFrame, features: str, baselines: Sequence[str] = ("band_stats", "rcf"),
                        estimator: str = "linear") -> str:
    """One sentence: at each task's smallest budget, with ``estimator`` (``linear`` = logreg / ridge), on how
    many tasks ``features`` beats each baseline, and on how many with CIs apart."""
    linear = {"logreg", "ridge"} if estimator == "linear" else {estimator}
    small = smallest_budget(results)
    c = compare(small[small["estimator"].isin(linear)], features, baselines)
    if c.empty:
        return f"No comparison possible: `{features}` or the baselines {list(baselines)} are missing from the results."
    parts = []
    for b in baselines:
        d = c[c["other"] == b]
        if d.empty:
            parts.append(f"{_NAMES.get(b, b)} was not evaluated")
            continue
        n = d["task"].nunique()
        parts.append(f"{_NAMES.get(b, b)} on {int(d['wins'].sum())} of {n} tasks "
                     f"({int(d['wins_ci_apart'].sum())} with CIs apart, {int(d['loses_ci_apart'].sum())} lost with CIs apart)")
    est = "logistic/ridge regression" if estimator == "linear" else estimator
    return (f"At the smallest label budget of each task ({est}, mean of seeds, 95% bootstrap CIs), `{features}` beat "
            + "; ".join(parts) + ".")


_NAMES = {"band_stats": "band statistics", "rcf": "random convolutional features (RCF)", "random_init": "random init"}


def win_table(results: pd.DataFrame, features: str, others: Sequence[str]) -> pd.DataFrame:
    """Per task, estimator and budget: ``features``' score with CI next to each other feature set's, and
    ``win`` / ``WIN`` (CIs apart) / ``loss`` / ``LOSS`` (CIs apart) markers; for docs tables."""
    c = compare(results, features, others)
    if c.empty:
        return c

    def mark(r) -> str:
        return "WIN" if r.wins_ci_apart else "LOSS" if r.loses_ci_apart else "win" if r.wins else "loss"

    c = c.assign(result=[mark(r) for r in c.itertuples(index=False)])
    c["n"] = np.round(c["budget_n"]).astype(int)
    return c[["task", "estimator", "budget", "n", "other", "score", "ci_low", "ci_high", "other_score",
              "other_ci_low", "other_ci_high", "result"]]
