"""Pairwise comparisons of feature sets from a fewshot results table (evaluate.compare)."""

import pandas as pd

from earthembed.evaluate.compare import compare, comparison_sentence, win_table


def _rows(task, kind, metric, features, estimator, budget, n, values, ci):
    return [{"task": task, "task_kind": kind, "features": features, "estimator": estimator, "budget": budget,
             "budget_n": n, "seed": s, "metric": metric, "value": v, "ci_low": v - ci, "ci_high": v + ci}
            for s, v in enumerate(values)]


def _results():
    r = []
    for est in ("logreg", "knn"):
        r += _rows("lc", "classification", "macro_f1", "pre:emb_fused", est, "1", 10, [0.70, 0.72], 0.05)
        r += _rows("lc", "classification", "macro_f1", "band_stats", est, "1", 10, [0.40, 0.42], 0.05)
        r += _rows("lc", "classification", "macro_f1", "pre:emb_fused", est, "all", 80, [0.80, 0.80], 0.05)
        r += _rows("lc", "classification", "macro_f1", "band_stats", est, "all", 80, [0.78, 0.80], 0.05)
    r += _rows("water", "regression", "r2", "pre:emb_fused", "ridge", "10", 10, [0.30, 0.34], 0.1)
    r += _rows("water", "regression", "r2", "band_stats", "ridge", "10", 10, [0.60, 0.62], 0.05)
    r += _rows("water", "regression", "mae", "band_stats", "ridge", "10", 10, [0.1, 0.1], 0.01)  # not primary
    return pd.DataFrame(r)


def test_compare_within_estimator_and_ci_apart():
    c = compare(_results(), "pre:emb_fused", ["band_stats", "rcf"])  # rcf absent: skipped
    assert set(c["other"]) == {"band_stats"} and len(c) == 5  # 2 estimators x 2 budgets + ridge x 1
    small = c[(c["task"] == "lc") & (c["budget"] == "1")]
    assert small["wins_ci_apart"].all() and small["diff"].round(2).eq(0.30).all()
    full = c[(c["task"] == "lc") & (c["budget"] == "all")]
    assert full["wins"].all() and not full["wins_ci_apart"].any() and not full["loses_ci_apart"].any()
    water = c[c["task"] == "water"].iloc[0]
    assert not water["wins"] and water["loses_ci_apart"]
    w = win_table(_results(), "pre:emb_fused", ["band_stats"])
    assert set(w["result"]) == {"WIN", "win", "LOSS"}


def test_comparison_sentence_counts_tasks_at_the_smallest_budget():
    s = comparison_sentence(_results(), "pre:emb_fused", ("band_stats", "rcf"))
    assert "band statistics on 1 of 2 tasks (1 with CIs apart, 1 lost with CIs apart)" in s
    assert "random convolutional features (RCF) was not evaluated" in s
    assert "No comparison" in comparison_sentence(_results(), "other:emb_fused")
