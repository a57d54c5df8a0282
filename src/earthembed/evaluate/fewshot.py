"""Few-shot label-efficiency evaluation (Jungbluth et al. 2023 protocol, torchgeo-bench style).

For each task, every feature set (embedding columns of each table, plus baselines) is scored on the *same*
test chips with the *same* nested budget samples per seed, so differences between feature sets are not
differences in what they were trained or tested on. Test chips are the intersection of labelled chips
that have every feature set: a feature set with missing chips (e.g. ``emb_s1`` where S1 is absent)
narrows the evaluation for all of them; restrict ``feature_columns`` to avoid that.

Baselines run by the same call on the same splits: ``band_stats`` (per-band statistics of the chip) and
``random_init`` (embeddings of a randomly initialised encoder of the first table's architecture, computed
into the output directory unless a ``random_init`` table is given).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from earthembed.data.store import ChipStore
from earthembed.embed.io import read_metadata
from earthembed.evaluate.budgets import (
    default_budgets,
    parse_budgets,
    resolve_mode,
    sample_budgets,
    split_pool_test,
)
from earthembed.evaluate.estimators import fit_estimator, resolve_estimators
from earthembed.evaluate.features import FeatureSet, band_statistics_feature_set, load_feature_sets
from earthembed.evaluate.metrics import evaluate_predictions
from earthembed.evaluate.summary import plot_label_efficiency, write_summary
from earthembed.evaluate.tasks import RESULT_COLUMNS, Task, load_task

BASELINES = ("band_stats", "random_init")
DEFAULT_BASELINES = ("band_stats", "random_init")
RANDOM_INIT = "random_init"
RANDOM_INIT_SEED = 0


def _split_names(v: str | Sequence[str] | None) -> list[str]:
    if v is None:
        return []
    if isinstance(v, str):
        return [s.strip() for s in v.split(",") if s.strip()]
    return [s for x in v for s in _split_names(x)]


def _model_path(meta: Mapping[str, Any], table: Path) -> Path | None:
    """The exported model a table was embedded with, if it still exists (as recorded, or beside the table)."""
    mp = meta.get("model_path")
    if not mp:
        return None
    for cand in (Path(mp), table.parent / mp):
        if cand.exists():
            return cand
    return None


def random_init_table(
    embeddings: Mapping[str, str | Path], store: ChipStore, out_dir: str | Path, seed: int = RANDOM_INIT_SEED
) -> Path:
    """``out_dir/random_init.parquet``: a randomly initialised encoder of the FIRST table's model, same
    modalities and bands, embedding ``store``. An existing file from the same model, store and bands is reused.
    """
    if not embeddings:
        raise ValueError(
            "the random_init baseline needs an embedding table to copy the architecture from; "
            "give --embeddings, pass --random-init PATH, or drop random_init from --baselines"
        )
    name, first = next(iter(embeddings.items()))
    first = Path(first)
    if not first.exists():
        raise FileNotFoundError(f"{first}: embedding table not found")
    meta = read_metadata(first)
    model_path = _model_path(meta, first)
    if model_path is None:
        raise ValueError(
            f"random_init baseline: the model of embedding table {name!r} ({first}) is not available "
            f"(model_path={meta.get('model_path')!r}); pass --random-init PATH (a table embedded with a "
            "randomly initialised encoder) or drop random_init from --baselines"
        )
    modalities = list(meta["modalities"]) if meta.get("modalities") else None
    bands = {k: list(v) for k, v in meta["bands"].items()} if meta.get("bands") else None
    out = Path(out_dir) / f"{RANDOM_INIT}.parquet"
    want = f"random-init-seed{seed}-{meta.get('model_id', '')}"
    if out.exists():
        try:
            old = read_metadata(out)
        except ValueError:
            old = {}
        if (old.get("model_id") == want and old.get("store") == str(store.path.resolve())
                and old.get("n_chips") == len(store) and (bands is None or old.get("bands") == bands)):
            return out
    from earthembed.embed.run import embed_random_init

    out.parent.mkdir(parents=True, exist_ok=True)
    return embed_random_init(model_path, store, out, seed=seed, modalities=modalities, bands=bands, progress=False)


def load_all_feature_sets(
    embeddings: Mapping[str, str | Path],
    store: ChipStore,
    baselines: Sequence[str] = ("band_stats",),
    feature_columns: Sequence[str] | None = None,
    work_dir: str | Path | None = None,
) -> list[FeatureSet]:
    """Feature sets of every table (``<name>:<column>``) followed by the requested baselines.

    ``feature_columns`` entries are plain (``emb_fused``: every table) or qualified (``random_init:emb_fused``:
    that table only); a table with no entry that applies keeps all its ``emb_*`` columns. Baseline
    ``random_init`` uses the table named ``random_init`` in ``embeddings`` if there is one, otherwise it is
    embedded into ``work_dir`` (see :func:`random_init_table`) and gives sets ``random_init:<column>``.
    """
    for b in baselines:
        if b not in BASELINES:
            raise ValueError(f"unknown baseline {b!r} (available: {BASELINES})")
    tables = dict(embeddings)
    if RANDOM_INIT in baselines and RANDOM_INIT not in tables:
        if work_dir is None:
            raise ValueError("the random_init baseline needs a work_dir to write its embedding table to")
        tables[RANDOM_INIT] = random_init_table(embeddings, store, work_dir)
    sets: list[FeatureSet] = []
    for name, path in tables.items():
        cols = [c for c in feature_columns or [] if ":" not in c]
        cols += [c.split(":", 1)[1] for c in feature_columns or [] if c.startswith(f"{name}:")]
        sets += load_feature_sets(name, path, cols or None)
    if "band_stats" in baselines:
        sets.append(band_statistics_feature_set(store))
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


def evaluate_task(
    task: Task,
    sets: Sequence[FeatureSet],
    budgets: Sequence[int | str] | None = None,
    budget_mode: str = "auto",
    seeds: Sequence[int] = (0, 1, 2),
    estimators: Sequence[str] | str | None = None,
    n_boot: int = 200,
    progress: bool = False,
    n_jobs: int = 1,
) -> tuple[pd.DataFrame, dict[str, Any], pd.DataFrame]:
    """(tidy results, run notes, budget membership) of one task over all feature sets."""
    from tqdm.auto import tqdm

    t, mats = _common(task, sets)
    mode = resolve_mode(t.kind, budget_mode)
    budgets = list(budgets) if budgets else default_budgets(mode)
    ests = resolve_estimators(t.kind, estimators)
    pool, test, note = split_pool_test(t.split, t.y if t.kind == "classification" else None)
    if not len(pool):
        raise ValueError(f"task {t.name!r}: no training chips (all labelled chips are in the test split)")
    notes = {
        "task": t.name, "kind": t.kind, "classes": t.classes, "budget_mode": mode, "budgets": [str(b) for b in budgets],
        "split": note, "n_labelled": len(task) + task.n_dropped, "n_dropped_unlabelled": task.n_dropped,
        "n_common": len(t), "n_pool": len(pool), "n_test": len(test),
        "feature_sets": {fs.name: {"dim": fs.dim, "n_chips": len(fs.chip_ids), "n_excluded_null": fs.n_excluded,
                                   "source": fs.source, "model_id": fs.model_id} for fs in sets},
    }
    membership: list[pd.DataFrame] = []
    samples = {s: sample_budgets(t.y[pool], t.kind, budgets, mode, s) for s in seeds}
    for s, bud in samples.items():
        for b, p in bud.items():
            membership.append(pd.DataFrame({"task": t.name, "seed": s, "budget": b, "chip_id": t.chip_ids[pool[p]]}))
    total = len(sets) * len(ests) * sum(len(b) for b in samples.values())
    bar = tqdm(total=total, desc=f"few-shot {t.name}", disable=not progress)
    rows = _fit_all(t, sets, mats, ests, samples, pool, test, n_boot, mode, bar, n_jobs)
    bar.close()
    members = pd.concat(membership, ignore_index=True) if membership else pd.DataFrame()
    return pd.DataFrame(rows, columns=RESULT_COLUMNS), notes, members


def _fit_all(
    t: Task, sets: Sequence[FeatureSet], mats: Sequence[np.ndarray], ests: Sequence[str],
    samples: dict[int, dict[str, np.ndarray]], pool: np.ndarray, test: np.ndarray, n_boot: int, mode: str,
    bar: Any, n_jobs: int = 1,
) -> list[dict[str, Any]]:
    """Tidy rows of every feature set x estimator x seed x budget (each fitted once, scored on ``test``).

    Cells (feature set x estimator) run in ``n_jobs`` processes (joblib); results do not depend on it."""
    from joblib import Parallel, delayed

    cells = [(fs.name, X, est) for fs, X in zip(sets, mats, strict=True) for est in ests]
    per_cell = sum(len(b) for b in samples.values())
    rows: list[dict[str, Any]] = []
    run = Parallel(n_jobs=n_jobs, return_as="generator")
    for cell_rows in run(delayed(_fit_cell)(t, name, X, est, samples, pool, test, n_boot, mode) for name, X, est in cells):
        rows.extend(cell_rows)
        bar.update(per_cell)
    return rows


def _fit_cell(
    t: Task, features: str, X: np.ndarray, est: str, samples: dict[int, dict[str, np.ndarray]],
    pool: np.ndarray, test: np.ndarray, n_boot: int, mode: str,
) -> list[dict[str, Any]]:
    from threadpoolctl import threadpool_limits

    y_test = t.y[test]
    rows: list[dict[str, Any]] = []
    # budgets are small: BLAS threads cost more in start-up and contention than they save (10x on 2 cores)
    with threadpool_limits(limits=1):
        for s, bud in samples.items():
            for b, p in bud.items():
                tr = pool[p]
                t0 = time.perf_counter()
                fitted = fit_estimator(est, t.kind, X[tr], t.y[tr], seed=s, classes=t.classes)
                fit_s = time.perf_counter() - t0
                pred, score = fitted.predict(X[test])
                metrics = evaluate_predictions(t.kind, y_test, pred, score, n_boot=n_boot, seed=s)
                extra = json.dumps(fitted.extra, default=float)
                for m, (v, lo, hi) in metrics.items():
                    rows.append({
                        "task": t.name, "task_kind": t.kind, "features": features, "estimator": est,
                        "budget_mode": mode, "budget": b, "budget_n": len(tr), "seed": s, "metric": m,
                        "value": v, "ci_low": lo, "ci_high": hi, "n_train": len(tr), "n_test": len(test),
                        "fit_s": fit_s, "extra": extra,
                    })
    return rows


def run_fewshot(
    embeddings: Mapping[str, str | Path],
    store: str | Path | ChipStore,
    task: str | Sequence[str],
    out_dir: str | Path,
    budgets: str | Sequence[int | str] | None = None,
    budget_mode: str = "auto",
    seeds: Sequence[int] = (0, 1, 2),
    estimators: str | Sequence[str] | None = None,
    baselines: str | Sequence[str] = DEFAULT_BASELINES,
    n_boot: int = 200,
    feature_columns: str | Sequence[str] | None = None,
    progress: bool = False,
    n_jobs: int = 1,
) -> pd.DataFrame:
    """Label-efficiency curves of every feature set on one or more label columns (``task``, comma list ok).

    ``embeddings`` maps a name to an embedding table; each of its ``emb_*`` columns (or those in
    ``feature_columns``) becomes feature set ``<name>:<column>``. ``baselines`` (``"none"`` for none) adds
    ``band_stats`` from the store and ``random_init``: the table named ``random_init`` in ``embeddings`` if
    given, else ``out_dir/random_init.parquet`` embedded with a randomly initialised (seed 0) encoder of the
    first table's model, modalities and bands (a ValueError if that model's export is gone). ``n_jobs`` processes fit (feature set x estimator) cells in parallel (-1: all cores). Writes ``results.csv``/``.parquet`` (tidy), ``summary.csv``/``.md``, ``label_efficiency.png``,
    ``budgets.parquet`` (chip ids of every budget sample) and ``run.json`` (split, exclusions) to ``out_dir``
    and returns the tidy results.
    """
    st = store if isinstance(store, ChipStore) else ChipStore(store)
    tasks = _split_names(task)
    if not tasks:
        raise ValueError("no task given")
    if not seeds:
        raise ValueError("need at least one seed")
    bl = _split_names(baselines)
    bl = [] if bl in (["none"], ["no"]) else bl
    parsed = parse_budgets(budgets)
    loaded = [load_task(st, name) for name in tasks]  # fail on a bad column before any fitting
    out_dir = Path(out_dir)
    sets = load_all_feature_sets(embeddings, st, bl, _split_names(feature_columns) or None, work_dir=out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results, notes, members = [], [], []
    for tk in loaded:
        r, n, m = evaluate_task(tk, sets, parsed, budget_mode, list(seeds), estimators, n_boot, progress, n_jobs)
        results.append(r)
        notes.append(n)
        members.append(m)
    df = pd.concat(results, ignore_index=True)
    df.to_csv(out_dir / "results.csv", index=False)
    df.to_parquet(out_dir / "results.parquet", index=False)
    pd.concat(members, ignore_index=True).to_parquet(out_dir / "budgets.parquet", index=False)
    (out_dir / "run.json").write_text(json.dumps({"store": str(st.path), "seeds": list(seeds), "n_boot": n_boot,
                                                  "tasks": notes}, indent=2, default=str))
    write_summary(df, out_dir)
    plot_label_efficiency(df, out_dir / "label_efficiency.png")
    return df
