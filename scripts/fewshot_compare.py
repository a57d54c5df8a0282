"""Markdown table of a few-shot results.csv for one estimator: per task and budget, each feature set's primary
metric as mean ± std over seeds and the mean of the seeds' bootstrap 95% CI bounds, so two feature sets can be
compared the way docs/ claims are made (a win only where the intervals do not overlap).

    .venv/bin/python scripts/fewshot_compare.py runs/mpmae/synth/fewshot/results.csv --estimator logreg
"""

from __future__ import annotations

import argparse

import pandas as pd

from earthembed.evaluate.summary import primary_rows


def compare(results: pd.DataFrame, estimators: list[str]) -> str:
    prim = primary_rows(results)
    prim = prim[prim["estimator"].isin(estimators)]
    parts = []
    for (task, est), d in prim.groupby(["task", "estimator"], sort=False):
        g = d.groupby(["features", "budget"]).agg(mean=("value", "mean"), std=("value", "std"), lo=("ci_low", "mean"),
                                                   hi=("ci_high", "mean"), n=("budget_n", "mean")).reset_index()
        budgets = g.groupby("budget")["n"].mean().sort_values().index.tolist()
        g["cell"] = [f"{m:.3f} ± {s:.3f} [{lo:.2f}, {hi:.2f}]" if s == s else f"{m:.3f} [{lo:.2f}, {hi:.2f}]"
                     for m, s, lo, hi in zip(g["mean"], g["std"], g["lo"], g["hi"], strict=True)]
        t = g.pivot(index="features", columns="budget", values="cell")[budgets]
        order = g[g["budget"] == budgets[-1]].sort_values("mean", ascending=False)["features"].tolist()
        t = t.loc[order]
        metric = d["metric"].iloc[0]
        lines = [f"**{task}** ({metric}, {est}; columns: budget; cells: mean ± std over seeds [mean 95% CI])", "",
                 "| features | " + " | ".join(map(str, budgets)) + " |", "|---|" + "---|" * len(budgets)]
        lines += [f"| {f} | " + " | ".join(str(v) for v in row) + " |" for f, row in t.iterrows()]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results")
    ap.add_argument("--estimator", default="logreg,ridge", help="comma list (logreg for classes, ridge for values)")
    a = ap.parse_args()
    print(compare(pd.read_csv(a.results), a.estimator.split(",")))


if __name__ == "__main__":
    main()
