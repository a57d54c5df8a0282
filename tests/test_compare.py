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


def test_paired_interval_finds_what_side_by_side_intervals_cannot():
    """40 test chips; B makes A's errors plus 5 more: the two intervals overlap, the paired one excludes 0."""
    import numpy as np

    from earthembed.evaluate.compare import paired_difference
    from earthembed.evaluate.metrics import bootstrap_metrics, evaluate_predictions

    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 40)
    a = y.copy()
    a[:8] = (y[:8] + 1) % 4  # 80% right
    b = a.copy()
    b[8:13] = (y[8:13] + 1) % 4  # 5 more errors: 67.5% right
    ma, mb = evaluate_predictions("classification", y, a), evaluate_predictions("classification", y, b)
    assert ma["accuracy"][1] < mb["accuracy"][2]  # side by side: the intervals overlap
    sa = bootstrap_metrics("classification", y, a)["accuracy"][1]
    sb = bootstrap_metrics("classification", y, b)["accuracy"][1]
    lo, hi = paired_difference({0: sa}, {0: sb})
    assert 0 < lo < 0.125 < hi  # paired: every resample sees A ahead
    assert paired_difference({0: sb}, {0: sa}, sign=-1.0) == (lo, hi)
    assert np.isnan(paired_difference({0: sa}, {1: sb})[0])  # no common seed


def test_best_estimator_comparison_is_paired_across_estimators():
    import numpy as np

    from earthembed.evaluate.compare import compare_best_estimators

    r = _results()
    r = r[r["task"] == "lc"]
    rng = np.random.default_rng(0)
    base = rng.normal(0, 0.02, 50)
    boot = []
    for f, est, b, v in [("pre:emb_fused", "logreg", "1", 0.71), ("pre:emb_fused", "knn", "1", 0.71),
                         ("band_stats", "logreg", "1", 0.41), ("band_stats", "knn", "1", 0.41)]:
        for seed in (0, 1):
            boot.append({"task": "lc", "features": f, "estimator": est, "budget": b, "seed": seed, "metric": "macro_f1",
                         "n_test": 40, "values": v + base})
    c = compare_best_estimators(r, "pre:emb_fused", ["band_stats", "rcf"], pd.DataFrame(boot))
    one = c[c["budget"] == "1"].iloc[0]
    assert one["other"] == "band_stats" and one["wins_paired"] and np.isclose(one["diff_ci_low"], 0.30)
    assert np.isnan(c[c["budget"] == "all"].iloc[0]["diff_ci_low"])  # no resamples for that budget
