"""From the tidy results table to the answers people ask for, plus the label-efficiency plot.

1. How good is each feature set with all labels, and how many labels does it need to get 95% of that
   ("label reduction" = 1 - budget_n / n_full)?  2. The primary metric per budget, mean ± std over seeds.
3. Per task and budget, which feature set is best, and is that a win or a tie (:func:`best_by_budget`)?
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from earthembed.evaluate.compare import (
    best_per_set,
    budget_scores,
    paired_difference,
    primary_rows,
    resamples,
)
from earthembed.evaluate.metrics import LOWER_IS_BETTER
from earthembed.evaluate.tasks import PRIMARY_METRIC
from earthembed.outputs import atomic_path, save_png

RGB_BANDS = (("R", "G", "B"), ("B04", "B03", "B02"), ("red", "green", "blue"))

FRACTION = 0.95
BUDGET_UNITS = {"per_class": "labelled chips per class", "total": "labelled chips",
                "fraction": "fraction of the labelled training chips"}


def _per_budget(results: pd.DataFrame) -> pd.DataFrame:
    """Mean/std over seeds of the primary metric and the mean number of training chips per budget."""
    keys = ["task", "features", "estimator", "budget"]
    g = primary_rows(results).groupby(keys, sort=False)
    agg = g.agg(metric=("metric", "first"), mean=("value", "mean"), std=("value", "std"),
                budget_n=("budget_n", "mean"), n_seeds=("seed", "nunique"))
    return agg.reset_index().sort_values([*keys[:3], "budget_n"], kind="stable")


def summarize(results: pd.DataFrame, fraction: float = FRACTION) -> pd.DataFrame:
    """Per task, feature set and estimator: full-label score and the smallest budget reaching
    ``fraction`` of it. The reference is the ``all`` budget (else the largest one, named in the table).
    With a full score <= 0 (e.g. R2) a fraction of it means nothing, so those columns stay empty."""
    rows = []
    for (task, feats, est), d in _per_budget(results).groupby(["task", "features", "estimator"], sort=False):
        d = d.sort_values("budget_n")
        ref = d[d["budget"] == "all"]
        ref = ref.iloc[0] if len(ref) else d.iloc[-1]
        row = {
            "task": task, "features": feats, "estimator": est, "metric": ref["metric"],
            "reference_budget": ref["budget"], "n_full": ref["budget_n"],
            "full_score": ref["mean"], "full_std": ref["std"],
            "budget_95": None, "budget_n_95": np.nan, "score_95": np.nan, "label_reduction_pct": np.nan,
        }
        if np.isfinite(ref["mean"]) and ref["mean"] > 0:
            hit = d[d["mean"] >= fraction * ref["mean"]].iloc[0]
            row.update(budget_95=hit["budget"], budget_n_95=hit["budget_n"], score_95=hit["mean"],
                       label_reduction_pct=100.0 * (1.0 - hit["budget_n"] / ref["budget_n"]))
        rows.append(row)
    out = pd.DataFrame(rows)
    return out.sort_values(["task", "full_score"], ascending=[True, False], kind="stable").reset_index(drop=True)


BEST_COLUMNS = [
    "task", "metric", "budget", "budget_n", "best", "best_estimator", "best_mean", "best_std", "best_ci_low",
    "best_ci_high", "runner_up", "runner_up_estimator", "runner_up_mean", "runner_up_ci_low", "runner_up_ci_high",
    "verdict", "tied_with", "paired_diff_ci_low", "paired_diff_ci_high", "paired_verdict",
]


def best_by_budget(results: pd.DataFrame, boot: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per task and budget: the best feature set, the runner-up, and whether their 95% CIs overlap.

    Each feature set enters with its best estimator at that budget (mean over seeds of the primary metric),
    so a set is not judged by an estimator that suits it badly. Its interval is the seed mean of the per-seed
    bootstrap CIs (test-chip resampling at the seed's budget draw). ``verdict`` is ``tie`` when the best set's
    interval overlaps the runner-up's (or any other set's, should a wider one reach it), ``win`` when it overlaps
    none, ``no CI`` without bootstrap intervals and
    ``only set`` with a single feature set; ``tied_with`` lists every set whose interval overlaps the best's.
    With ``boot`` (``bootstrap.parquet``: every fit scored on the same test resamples) also the paired 95%
    interval of best - runner-up (``paired_diff_ci_*``) and ``paired_verdict``: ``win`` when it is above 0,
    else ``tie`` (empty without ``boot``; see :mod:`earthembed.evaluate.compare`).
    Rejected: a paired test on the per-seed differences (three seeds give no power, and the intervals are what
    the tables already show). The paired bootstrap over test chips, which has power, is in
    :func:`earthembed.evaluate.compare.compare` (from ``bootstrap.parquet``).
    """
    cell = budget_scores(results)
    if not len(cell):
        return pd.DataFrame(columns=BEST_COLUMNS)
    samples = resamples(boot) if boot is not None and len(boot) else None
    rows = []
    for (task, budget), d in cell.groupby(["task", "budget"], sort=False):
        per_set, sign = best_per_set(d)
        best = per_set.iloc[0]
        row = {"task": task, "metric": best["metric"], "budget": budget, "budget_n": float(d["budget_n"].mean()),
               "best": best["features"], "best_estimator": best["estimator"], "best_mean": best["mean"],
               "best_std": best["std"], "best_ci_low": best["ci_low"], "best_ci_high": best["ci_high"],
               "runner_up": None, "runner_up_estimator": None, "runner_up_mean": np.nan, "runner_up_ci_low": np.nan,
               "runner_up_ci_high": np.nan, "verdict": "only set", "tied_with": "", "paired_diff_ci_low": np.nan,
               "paired_diff_ci_high": np.nan, "paired_verdict": ""}
        if len(per_set) > 1:
            ru = per_set.iloc[1]
            row.update(runner_up=ru["features"], runner_up_estimator=ru["estimator"], runner_up_mean=ru["mean"],
                       runner_up_ci_low=ru["ci_low"], runner_up_ci_high=ru["ci_high"])
            others = per_set.iloc[1:]
            if not (np.isfinite(best[["ci_low", "ci_high"]].astype(float)).all()
                    and np.isfinite(ru[["ci_low", "ci_high"]].astype(float)).all()):
                row["verdict"] = "no CI"
            else:
                tied = others[(others["ci_low"] <= best["ci_high"]) & (others["ci_high"] >= best["ci_low"])]
                row["verdict"] = "tie" if len(tied) else "win"
                row["tied_with"] = ", ".join(tied["features"])
            if samples is not None:
                lo, hi = paired_difference(samples.get((task, best["features"], best["estimator"], str(budget)), {}),
                                           samples.get((task, ru["features"], ru["estimator"], str(budget)), {}), sign)
                row.update(paired_diff_ci_low=lo, paired_diff_ci_high=hi,
                           paired_verdict="no CI" if not np.isfinite(lo) else "win" if lo > 0 else "tie")
        rows.append(row)
    out = pd.DataFrame(rows, columns=BEST_COLUMNS)
    order = {t: i for i, t in enumerate(dict.fromkeys(out["task"]))}
    return out.sort_values(["task", "budget_n"], key=lambda c: c.map(order) if c.name == "task" else c,
                           kind="stable").reset_index(drop=True)


def _mark_best(summary: pd.DataFrame, best: pd.DataFrame) -> pd.DataFrame:
    """``summary`` plus, per (task, features, estimator), the budgets where it is the best set with a win
    (``best_at``) and where it is the best or overlaps the best (``tied_best_at``), ';'-joined."""
    win: dict[tuple[str, str, str], list[str]] = {}
    tie: dict[tuple[str, str, str], list[str]] = {}
    for r in best.itertuples(index=False):
        if r.verdict == "win":
            win.setdefault((r.task, r.best, r.best_estimator), []).append(str(r.budget))
        elif r.verdict == "tie":
            tie.setdefault((r.task, r.best, r.best_estimator), []).append(str(r.budget))
            if r.runner_up is not None:
                tie.setdefault((r.task, r.runner_up, r.runner_up_estimator), []).append(str(r.budget))
    key = list(zip(summary["task"], summary["features"], summary["estimator"], strict=True))
    return summary.assign(best_at=[";".join(win.get(k, [])) for k in key],
                          tied_best_at=[";".join(tie.get(k, [])) for k in key])


def _has_paired(best: pd.DataFrame) -> bool:
    """Whether a :func:`best_by_budget` table carries paired verdicts (its run wrote bootstrap.parquet)."""
    return "paired_verdict" in best and bool(best["paired_verdict"].fillna("").astype(bool).any())


def best_markdown(best: pd.DataFrame) -> str:
    """The :func:`best_by_budget` table as markdown (scores with their 95% CI)."""
    def score(m: float, lo: float, hi: float) -> str:
        if not np.isfinite(m):
            return ""
        return f"{m:.3f} [{lo:.3f}, {hi:.3f}]" if np.isfinite(lo) and np.isfinite(hi) else f"{m:.3f}"

    t = pd.DataFrame({
        "task": best["task"], "budget": best["budget"], "chips": best["budget_n"].round().astype("Int64"),
        "best (estimator)": [f"{f} ({e})" for f, e in zip(best["best"], best["best_estimator"], strict=True)],
        "score [95% CI]": [score(*v) for v in best[["best_mean", "best_ci_low", "best_ci_high"]].to_numpy(float)],
        "runner-up (estimator)": [f"{f} ({e})" if f is not None else "" for f, e in
                                  zip(best["runner_up"], best["runner_up_estimator"], strict=True)],
        "runner-up score [95% CI]": [score(*v) for v in
                                     best[["runner_up_mean", "runner_up_ci_low", "runner_up_ci_high"]].to_numpy(float)],
        "verdict": best["verdict"],
    })
    if _has_paired(best):
        t["paired Δ [95% CI]"] = [
            f"{sign * (m - r):+.3f} [{lo:+.3f}, {hi:+.3f}]" if np.isfinite(lo) else ""
            for sign, m, r, lo, hi in zip(
                [-1.0 if x in LOWER_IS_BETTER else 1.0 for x in best["metric"]], best["best_mean"],
                best["runner_up_mean"], best["paired_diff_ci_low"], best["paired_diff_ci_high"], strict=True)]
        t["paired verdict"] = best["paired_verdict"].fillna("")
    return markdown_table(t)


def budget_table(results: pd.DataFrame) -> pd.DataFrame:
    """Primary metric as "mean ± std" per (task, features, estimator) x budget (columns by budget size)."""
    d = _per_budget(results)
    order = d.groupby("budget")["budget_n"].mean().sort_values().index.tolist()
    d = d.assign(cell=[f"{m:.3f} ± {s:.3f}" if np.isfinite(s) else f"{m:.3f}" for m, s in zip(d["mean"], d["std"], strict=True)])
    t = d.pivot(index=["task", "features", "estimator"], columns="budget", values="cell")
    return t[[b for b in order if b in t.columns]].reset_index()


def markdown_table(df: pd.DataFrame, floatfmt: str = ".3f") -> str:
    def cell(v: object) -> str:
        if isinstance(v, float):
            return "" if np.isnan(v) else format(v, floatfmt)
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in df.itertuples(index=False)]
    return "\n".join(lines)


def summary_markdown(summary: pd.DataFrame, results: pd.DataFrame, fraction: float = FRACTION,
                     best: pd.DataFrame | None = None) -> str:
    """Both tables as markdown; the budget table is one per task, since budgets are per class for
    classification and in chips for the others, so their columns only sort within a task. ``best``: the
    :func:`best_by_budget` table (computed from ``results`` when not given)."""
    s = summary.copy()
    s["n_full"] = s["n_full"].round().astype("Int64")
    s["budget_n_95"] = s["budget_n_95"].round().astype("Int64")
    s = s.drop(columns=[c for c in ("best_at", "tied_best_at") if c in s.columns])
    parts = [f"## Full-label score and labels needed for {fraction:.0%} of it\n\n" + markdown_table(s)]
    best = best_by_budget(results) if best is None else best
    if len(best):
        paired = _has_paired(best)
        parts.append(
            "## Best feature set per budget\n\nEach feature set with its best estimator; mean over seeds of the "
            "primary metric with its 95% CI (bootstrap over test chips, averaged over seeds). **win**: the "
            "intervals of the best and the runner-up do not overlap; **tie**: they do."
            + (" Paired: the 95% interval of best - runner-up over the same test resamples (seed mean per "
               "resample); **win** when it is above 0." if paired else "") + "\n\n" + best_markdown(best))
    for task in dict.fromkeys(results["task"]):
        r = results[results["task"] == task]
        kind = r["task_kind"].iloc[0]
        unit = BUDGET_UNITS.get(r["budget_mode"].iloc[0], "labelled chips")
        parts.append(
            f"## {task} ({kind}, {PRIMARY_METRIC[kind]}): mean ± std over seeds by budget ({unit})\n\n"
            + markdown_table(budget_table(r).drop(columns="task"))
        )
    return "\n\n".join(parts) + "\n"


def models_markdown(models: dict[str, dict[str, str]]) -> str:
    """Which model made each feature set: ``{features: {"model_id", "source"}}`` as a markdown table, so a
    published encoder (``torchgeo:...@<sha>``) and earthembed's own runs are told apart in the same tables."""
    rows = pd.DataFrame([{"features": f, "model": m.get("model_id", ""), "source": m.get("source", "")}
                         for f, m in models.items()])
    return "## Feature sets\n\n" + markdown_table(rows)


def write_summary(
    results: pd.DataFrame, out_dir: str | Path, fraction: float = FRACTION, warnings: list[str] | None = None,
    models: dict[str, dict[str, str]] | None = None, boot: pd.DataFrame | None = None,
) -> str:
    """Write ``summary.csv`` (with ``best_at`` / ``tied_best_at`` budgets), ``best.csv``
    (:func:`best_by_budget`, paired verdicts with ``boot``) and ``summary.md`` (all tables, then ``models``: see
    :func:`models_markdown`) into ``out_dir``; returns the markdown.

    ``warnings`` (e.g. classes absent from the test split, see ``fewshot.coverage_warnings``) open the markdown,
    before any number, so a reader sees what the scores cannot say."""
    out_dir = Path(out_dir)
    best = best_by_budget(results, boot)
    summary = _mark_best(summarize(results, fraction), best)
    with atomic_path(out_dir / "summary.csv") as tmp:
        summary.to_csv(tmp, index=False)
    with atomic_path(out_dir / "best.csv") as tmp:
        best.to_csv(tmp, index=False)
    md = summary_markdown(summary, results, fraction, best)
    if warnings:
        md = "## Warnings\n\n" + "".join(f"- {w}\n" for w in warnings) + "\n" + md
    if models:
        md += "\n" + models_markdown(models) + "\n"
    with atomic_path(out_dir / "summary.md") as tmp:
        tmp.write_text(md)
    return md


def gain_table(results: pd.DataFrame, baselines: dict[str, str]) -> pd.DataFrame:
    """Primary metric per (task, estimator, features) x budget as "mean ± std [CI]" and, for each feature set
    with a baseline (``{features: baseline features}``, e.g. each init -> the random init of its architecture),
    the gain "Δ +0.052" over it, starred where the mean 95% bootstrap intervals (over test chips, averaged over
    seeds) of the two do not overlap."""
    prim = primary_rows(results)
    keys = ["task", "estimator", "features", "budget"]
    g = prim.groupby(keys, sort=False).agg(mean=("value", "mean"), std=("value", "std"), lo=("ci_low", "mean"),
                                           hi=("ci_high", "mean"), budget_n=("budget_n", "mean"))
    g = g.reset_index()
    order = g.groupby("budget")["budget_n"].mean().sort_values().index.tolist()
    idx = g.set_index(keys)
    cells = []
    for r in g.itertuples(index=False):
        std = f" ± {r.std:.3f}" if np.isfinite(r.std) else ""
        cell = f"{r.mean:.3f}{std} [{r.lo:.2f}, {r.hi:.2f}]"
        base = baselines.get(r.features)
        if base and base != r.features and (r.task, r.estimator, base, r.budget) in idx.index:
            b = idx.loc[(r.task, r.estimator, base, r.budget)]
            clear = r.lo > b["hi"] or r.hi < b["lo"]
            cell += f" Δ {r.mean - b['mean']:+.3f}{'*' if clear else ''}"
        cells.append(cell)
    t = g.assign(cell=cells).pivot(index=["task", "estimator", "features"], columns="budget", values="cell")
    return t[[b for b in order if b in t.columns]].reset_index()


def plot_label_efficiency(results: pd.DataFrame, out_png: str | Path, x: str = "chips") -> Path:
    """Primary metric vs training chips (``x="chips"``) or label fraction (``x="fraction"``), log x: a row of
    panels per task (one per estimator), a line per feature set, mean over seeds with a ± std band. R2 axes
    stop at -1: tiny budgets can score -1000."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    d = _per_budget(results)
    tasks = list(dict.fromkeys(d["task"]))
    ests = {t: list(dict.fromkeys(d.loc[d["task"] == t, "estimator"])) for t in tasks}
    ncols = max(len(v) for v in ests.values())
    feats = list(dict.fromkeys(d["features"]))
    colors = {f: plt.get_cmap("tab10")(i % 10) for i, f in enumerate(feats)}
    fig, axes = plt.subplots(len(tasks), ncols, figsize=(4.2 * ncols, 3.4 * len(tasks)), squeeze=False)
    for i, task in enumerate(tasks):
        dt = d[d["task"] == task]
        metric = dt["metric"].iloc[0]
        for j in range(ncols):
            ax = axes[i, j]
            if j >= len(ests[task]):
                ax.set_visible(False)
                continue
            est = ests[task][j]
            for f in feats:
                c = dt[(dt["estimator"] == est) & (dt["features"] == f)]
                if not len(c):
                    continue
                xs = pd.to_numeric(c["budget"]) if x == "fraction" else c["budget_n"]
                order = np.argsort(xs.to_numpy(), kind="stable")
                xs, m, s = (v.to_numpy()[order] for v in (xs, c["mean"], c["std"].fillna(0)))
                ax.plot(xs, m, marker="o", ms=3, label=f, color=colors[f])
                ax.fill_between(xs, m - s, m + s, alpha=0.2, color=colors[f], lw=0)
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
            if metric == "r2":
                lo, hi = np.nanmin(dt["mean"]), np.nanmax(dt["mean"])
                ax.set_ylim(max(lo, -1.0) - 0.05, max(hi, 0.0) + 0.05)
            ax.grid(alpha=0.3, which="both")
            ax.set_title(f"{task} · {est}", fontsize=9)
            ax.set_xlabel("label fraction" if x == "fraction" else "training chips")
            ax.set_ylabel(metric)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    rows = (len(feats) - 1) // 4 + 1
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(feats)), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.05 * rows / len(tasks), 1, 1))
    return save_png(fig, out_png, dpi=120, tight=False, own=True)


def rgb_image(store: Any, positions: np.ndarray) -> np.ndarray:
    """[N, H, W, 3] floats in [0, 1] for drawing chips: true colour when a modality has red/green/blue bands
    (``R G B``, ``B04 B03 B02``), else the first modality's first band in grey; 2-98% stretch per chip."""
    mods = [k for k, m in store.modalities.items() if m.kind != "categorical"]
    for names in RGB_BANDS:
        k = next((k for k in mods if all(b in store.band_names(k) for b in names)), None)
        if k is not None:
            x = store.read(k, positions, list(names)).astype(np.float32)
            break
    else:
        x = np.repeat(store.read(mods[0], positions, [store.band_names(mods[0])[0]]).astype(np.float32), 3, axis=1)
    lo = np.nanpercentile(x, 2, axis=(1, 2, 3), keepdims=True)
    hi = np.nanpercentile(x, 98, axis=(1, 2, 3), keepdims=True)
    return np.nan_to_num(np.clip((x - lo) / np.maximum(hi - lo, 1e-6), 0, 1)).transpose(0, 2, 3, 1)


def plot_segmentation_examples(store: Any, positions: np.ndarray, labels: np.ndarray, predictions: dict[str, np.ndarray],
                               classes: list[str], ignore_index: int, out_png: str | Path) -> Path:
    """One row per chip: the image, its label and each prediction (``{column title: [N, H, W]}``); unlabelled
    pixels white, one colour per class with a legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    colours = [cmap(i % cmap.N) for i in range(len(classes))]
    lut = ListedColormap([(1, 1, 1, 1), *colours])  # index 0 = unlabelled

    def paint(m: np.ndarray) -> np.ndarray:
        m = np.asarray(m, dtype=np.int64)
        return np.where((m == ignore_index) | (m < 0) | (m >= len(classes)), 0, m + 1)

    images = rgb_image(store, positions)
    cols = ["image", "label", *predictions]
    fig, axes = plt.subplots(len(positions), len(cols), figsize=(1.6 * len(cols), 1.6 * len(positions) + 0.6),
                             squeeze=False)
    for i in range(len(positions)):
        panels = [images[i], paint(labels[i]), *(paint(p[i]) for p in predictions.values())]
        for j, (ax, img) in enumerate(zip(axes[i], panels, strict=True)):
            if j == 0:
                ax.imshow(img)
            else:
                ax.imshow(img, cmap=lut, vmin=0, vmax=len(classes), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(cols[j], fontsize=7)
    handles = [Patch(color=c, label=n) for c, n in zip(colours, classes, strict=True)]
    fig.legend(handles=handles, loc="lower center", ncol=min(6, len(classes)), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.6 / (1.6 * len(positions) + 0.6), 1, 1))
    return save_png(fig, out_png, dpi=110, tight=False, own=True)
