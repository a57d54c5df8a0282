"""Markdown tables of docs/label_efficiency.md from fewshot output directories (their results.csv).

For each task: every feature set x estimator x budget as ``mean ± seed std [mean 95% CI]`` of the primary
metric, then the comparison of the pretrained embedding with each baseline (earthembed.evaluate.compare):
``WIN``/``LOSS`` = CIs apart, ``win``/``loss`` = the means only; where the run wrote ``bootstrap.parquet``,
``(p+)``/``(p-)`` = the paired 95% interval of the difference is above / below 0, followed by the paired
comparison of each feature set at its best estimator (``compare_best_estimators``).

    .venv/bin/python scripts/label_efficiency_tables.py runs/label_efficiency/eurosat/fewshot [...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from earthembed.evaluate.compare import (
    budget_scores,
    compare_best_estimators,
    comparison_sentence,
    load_bootstrap,
    win_table,
)

PRETRAINED = "pretrained:emb_fused"
BASELINES = ("band_stats", "rcf", "random_init:emb_fused")


def _table(df: pd.DataFrame, index: list[str], columns: str, values: str, order: list[str]) -> str:
    t = df.pivot(index=index, columns=columns, values=values)[order].reset_index()
    lines = ["| " + " | ".join(map(str, t.columns)) + " |", "|" + "---|" * len(t.columns)]
    lines += ["| " + " | ".join("" if pd.isna(v) else str(v) for v in r) + " |" for r in t.itertuples(index=False)]
    return "\n".join(lines)


def tables(results: pd.DataFrame, boot: pd.DataFrame | None = None) -> str:
    """All tables of one fewshot run, one section per task (``boot``: its bootstrap.parquet)."""
    out = []
    s = budget_scores(results)
    for task, d in s.groupby("task", sort=False):
        order = d.groupby("budget")["budget_n"].mean().sort_values().index.tolist()
        d = d.assign(cell=[f"{m:.3f} ± {sd:.3f} [{lo:.2f}, {hi:.2f}]" for m, sd, lo, hi
                           in zip(d["mean"], d["std"].fillna(0.0), d["ci_low"], d["ci_high"], strict=True)])
        metric = d["metric"].iloc[0]
        out.append(f"### {task} ({metric}; mean ± std over seeds [mean 95% bootstrap CI])\n")
        out.append(_table(d, ["estimator", "features"], "budget", "cell", order))
        w = win_table(results[results["task"] == task], PRETRAINED, BASELINES, boot)
        if len(w):
            paired = w["paired"].str[-1].map({"+": " (p+)", "-": " (p-)"}).fillna("") if "paired" in w else ""
            w = w.assign(cell=[f"{r.result} {r.score:.3f} vs {r.other_score:.3f}" for r in w.itertuples(index=False)])
            w["cell"] = w["cell"] + paired
            out.append(f"\n`{PRETRAINED}` against each baseline (WIN/LOSS: CIs apart):\n")
            out.append(_table(w, ["estimator", "other"], "budget", "cell", [b for b in order if b in set(w["budget"])]))
        out.append("")
    out.append(comparison_sentence(results, PRETRAINED, ("band_stats", "rcf", "random_init:emb_fused"), boot=boot))
    return "\n".join(out)


def paired_tables(results: pd.DataFrame, boot: pd.DataFrame) -> str:
    """Per task: the pretrained embedding at its best estimator against each baseline at its own, as the paired
    difference [95% paired bootstrap interval] with **WIN** / LOSS where the interval excludes 0."""
    c = compare_best_estimators(results, PRETRAINED, BASELINES, boot)
    if c.empty:
        return ""
    c = c.assign(n=c["budget_n"].round().astype(int), cell=[
        f"{r.diff:+.3f} [{r.diff_ci_low:+.3f}, {r.diff_ci_high:+.3f}]"
        + (" **WIN**" if r.wins_paired else " LOSS" if r.loses_paired else " tie") for r in c.itertuples(index=False)])
    out = []
    for task, g in c.groupby("task", sort=False):
        first = g.drop_duplicates("n")
        ests = ", ".join(f"{n}: {e}" for n, e in zip(first["n"], first["estimator"], strict=True))
        out.append(f"#### {task} ({g['metric'].iloc[0]}, paired; `{PRETRAINED}` at {ests})\n")
        out.append(_table(g, ["other"], "n", "cell", list(first["n"])))
        out.append("")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dirs", nargs="+", type=Path, help="fewshot output directories")
    for d in ap.parse_args().dirs:
        print(f"## {d}\n")
        results, boot = pd.read_csv(d / "results.csv"), load_bootstrap(d)
        print(tables(results, boot))
        print()
        if boot is not None:
            print(paired_tables(results, boot))


if __name__ == "__main__":
    main()
