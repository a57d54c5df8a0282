import json

import numpy as np
import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from earthembed.data.modalities import get_modality
from earthembed.data.store import ChipRecord, ChipStore, StoreWriter
from earthembed.embed.io import write_embedding_table
from earthembed.evaluate.budgets import parse_budget_modes, parse_budgets, sample_budgets, split_pool_test
from earthembed.evaluate.features import band_statistics_features
from earthembed.evaluate.metrics import evaluate_predictions
from earthembed.evaluate.summary import summarize
from earthembed.evaluate.tasks import load_task


@pytest.fixture(autouse=True)
def _small_forests(monkeypatch):
    monkeypatch.setattr("earthembed.evaluate.estimators.RF_TREES", 25)  # keep the grid fast on 2 CPUs


def write_embeddings(path, chip_ids, columns, split=None, model_id="test-model"):
    """An embedding table in the embed/io.py format; NaN rows of a column are written as nulls."""
    return write_embedding_table(path, list(chip_ids), columns, split=split, model_id=model_id)


def tiny_tables(tiny_store, tmp_path):
    """Informative emb_fused, noise emb_s2, emb_s1 null where the chip lacks S1 (every 4th)."""
    idx = ChipStore(tiny_store).index
    rng = np.random.default_rng(1)
    water = (idx["label"] == "water").to_numpy(dtype=float)
    fused = np.column_stack([water * 3, 1 - water * 3, *rng.normal(size=(6, 20))]) + rng.normal(0, 0.3, (20, 8))
    s1 = rng.normal(size=(20, 4)) + water[:, None]
    s1[~idx["has_s1"].to_numpy()] = np.nan
    cols = {"emb_fused": fused, "emb_s2": rng.normal(size=(20, 8)), "emb_s1": s1}
    return write_embeddings(tmp_path / "emb.parquet", idx["chip_id"], cols, idx["split"])


@pytest.fixture(scope="module")
def small_store(tmp_path_factory):
    """60 chips of s2 8x8, no splits: 3 classes (2 chips unlabelled), multilabel, value and mask labels."""
    path = tmp_path_factory.mktemp("stores") / "small"
    rng = np.random.default_rng(0)
    schema = {
        "cls": {"kind": "class", "classes": ["a", "b", "c"]},
        "ml": {"kind": "multilabel", "classes": ["crop", "urban", "water", "rare"]},
        "height": {"kind": "value"},
        "seg": {"kind": "mask"},
    }
    with StoreWriter(path, [get_modality("s2_l1c")], 8, schema, batch_size=32) as w:
        for i in range(60):
            ml = [c for j, c in enumerate(["crop", "urban", "water"]) if (i >> j) & 1] + (["rare"] if i in (7, 40) else [])
            w.add(ChipRecord(
                f"c{i:02d}",
                {"s2": rng.integers(100, 3000, (13, 8, 8)).astype("uint16")},
                labels={"cls": None if i in (5, 6) else "abc"[i % 3], "ml": ml, "height": float(i % 10)},
                masks={"seg": np.zeros((8, 8), "int16")},
            ))
    return path


def small_tables(store, tmp_path):
    idx = ChipStore(store).index
    i = np.arange(len(idx))
    rng = np.random.default_rng(2)
    onehot = np.eye(3)[i % 3] * 4
    bits = np.column_stack([(i >> j) & 1 for j in range(3)]) * 4.0
    informative = np.column_stack([onehot, bits, (i % 10)[:, None] / 2.0]) + rng.normal(0, 0.5, (len(i), 7))
    cols = {"emb_fused": informative, "emb_noise": rng.normal(size=(len(i), 7))}
    return write_embeddings(tmp_path / "small.parquet", idx["chip_id"], cols)


def test_load_task_kinds_and_errors(tiny_store, small_store):
    t = load_task(tiny_store, "label")
    assert t.kind == "classification" and t.classes == ["water", "forest"]
    assert t.y.tolist()[:4] == [0, 1, 0, 1] and t.split.tolist()[:4] == ["train", "val", "test", "train"]
    r = load_task(tiny_store, "frac_water")
    assert r.kind == "regression" and r.y[:2].tolist() == [0.9, 0.1] and r.primary_metric == "r2"
    c = load_task(small_store, "cls")
    assert len(c) == 58 and c.n_dropped == 2
    m = load_task(small_store, "ml")
    assert m.kind == "multilabel" and m.y.shape == (60, 4) and m.y[7].tolist() == [1, 1, 1, 1]
    assert m.y[0].sum() == 0  # an empty list is "no class", not missing
    with pytest.raises(KeyError, match="available label columns.*frac_water"):
        load_task(tiny_store, "nope")
    with pytest.raises(ValueError, match="dense"):
        load_task(small_store, "seg")


def test_budgets_per_mode():
    assert parse_budget_modes(None) == {}
    assert parse_budget_modes("1,5,all") == {"per_class": [1, 5, "all"], "total": [1, 5, "all"]}
    assert parse_budget_modes("total=10,50,all") == {"total": [10, 50, "all"]}
    assert parse_budget_modes("per_class=1,all; total=10") == {"per_class": [1, "all"], "total": [10]}
    assert parse_budget_modes({"total": [10, "all"]}) == {"total": [10, "all"]}
    for bad, msg in [("pixel=1,2", "budget mode 'pixel'"), ("total=1;10", "not MODE=BUDGETS"),
                     ("total=1;total=2", "given twice"), ("total=0", "must be >= 1")]:
        with pytest.raises(ValueError, match=msg):
            parse_budget_modes(bad)


def test_budgets_nested_stratified_clipped():
    y = np.repeat([0, 1, 2], [30, 12, 3])
    s = sample_budgets(y, "classification", parse_budgets("1,5,10,all"), "per_class", seed=0)
    assert list(s) == ["1", "5", "10", "all"]
    assert np.bincount(y[s["5"]]).tolist() == [5, 5, 3]  # class with 3 chips clipped
    assert np.bincount(y[s["10"]]).tolist() == [10, 10, 3]
    assert set(s["1"]) <= set(s["5"]) <= set(s["10"])
    t = sample_budgets(y, "classification", [6, 20, 100, 200], "total", seed=3)
    assert list(t) == ["6", "20", "100"]  # 200 clips to the same 45 chips as 100
    assert len(t["100"]) == 45 and set(np.unique(y[t["6"]])) == {0, 1, 2}
    assert abs(np.bincount(y[t["20"]])[0] - 20 * 30 / 45) <= 2  # roughly proportional
    assert not np.array_equal(t["20"], sample_budgets(y, "classification", [20], "total", seed=4)["20"])
    ml = np.zeros((50, 3), dtype=np.int8)
    ml[:, 0] = 1
    ml[17, 2] = 1
    ml[30:40, 1] = 1
    m = sample_budgets(ml, "multilabel", [3, 10], "total", seed=0)
    assert ml[m["3"]].any(axis=0).all() and set(m["3"]) <= set(m["10"])  # the rare class is in the budget
    split = np.array(["train", "val", "test", ""] * 5)
    pool, test, note = split_pool_test(split)
    assert set(test) == set(np.flatnonzero(split == "test")) and "store splits" in note
    pool, test, note = split_pool_test(np.array([""] * 20), np.repeat([0, 1], 10))
    assert len(test) == 4 and np.bincount(np.repeat([0, 1], 10)[test]).tolist() == [2, 2] and "80%/20%" in note


def test_metrics_match_sklearn_and_ci_brackets():
    from sklearn.metrics import average_precision_score, f1_score, r2_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 300)
    p = np.where(rng.random(300) < 0.7, y, rng.integers(0, 4, 300))
    m = evaluate_predictions("classification", y, p, n_boot=100)
    assert m["macro_f1"][0] == pytest.approx(f1_score(y, p, average="macro"))
    assert all(lo <= v <= hi and hi - lo < 0.2 for v, lo, hi in m.values())
    Y = rng.integers(0, 2, (200, 5))
    Y[:, 4] = 0  # absent from test: left out of mAP
    S = np.clip(Y * 0.4 + rng.random((200, 5)) * 0.8, 0, 1).round(1)  # ties
    P = (S >= 0.5).astype(int)
    assert P[:, 4].any()  # false positives on the absent class must count
    ml = evaluate_predictions("multilabel", Y, P, S, n_boot=100)
    # macro AP is undefined for the absent class; everything else is over all columns, as in scikit-learn
    assert ml["macro_map"][0] == pytest.approx(average_precision_score(Y[:, :4], S[:, :4], average="macro"))
    assert ml["micro_map"][0] == pytest.approx(average_precision_score(Y, S, average="micro"))
    assert ml["micro_f1"][0] == pytest.approx(f1_score(Y, P, average="micro"))
    assert ml["macro_f1"][0] == pytest.approx(f1_score(Y, P, average="macro", zero_division=0))
    yr = rng.normal(size=200)
    pr = yr + rng.normal(0, 0.5, 200)
    r = evaluate_predictions("regression", yr, pr, n_boot=100)
    assert r["r2"][0] == pytest.approx(r2_score(yr, pr))
    for res in (ml, r):
        assert all(lo <= v <= hi for v, lo, hi in res.values())


def test_multilabel_false_positives_on_absent_class_count():
    from sklearn.metrics import average_precision_score, f1_score

    # every chip is "a"; the model also predicts "b", which no test chip has
    Y = np.array([[1, 0]] * 4)
    P = np.array([[1, 1]] * 4)
    S = np.array([[0.9, 0.9]] * 4)
    m = evaluate_predictions("multilabel", Y, P, S, n_boot=50)
    assert m["micro_f1"][0] == pytest.approx(f1_score(Y, P, average="micro")) == pytest.approx(2 / 3)
    assert m["micro_map"][0] == pytest.approx(average_precision_score(Y, S, average="micro")) == pytest.approx(0.5)
    assert m["macro_f1"][0] == pytest.approx(0.5) and m["macro_map"][0] == pytest.approx(1.0)
    assert m["micro_f1"][2] < 1 and m["micro_map"][2] < 1  # the bootstrap uses the same columns
    none = evaluate_predictions("multilabel", 0 * Y, P, S, n_boot=20)
    assert np.isnan(none["micro_map"][0]) and np.isnan(none["macro_map"][0]) and none["micro_f1"][0] == 0


def test_band_statistics_features(tiny_store):
    st = ChipStore(tiny_store)
    ids, X, names = band_statistics_features(st, batch_size=7)
    assert X.shape == (20, 15 * 5) and len(names) == 75 and names[0] == "s2:B01:mean"
    a = st.read("s2", 4).astype(np.float64)
    j = names.index("s2:B04:p90")
    assert X[4, j] == pytest.approx(np.percentile(a[3], 90), rel=1e-5)
    s1 = [k for k, n in enumerate(names) if n.startswith("s1:")]
    assert np.isnan(X[3, s1]).all() and np.isfinite(X[0, s1]).all() and np.isfinite(X[3, :65]).all()


def test_nan_percentiles_match_numpy():
    from earthembed.evaluate.features import nan_percentiles

    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 4, 50)).astype(np.float32)
    x[rng.random(x.shape) < 0.3] = np.nan
    x[1, 2] = np.nan  # all-NaN band
    x[2, 3, 1:] = np.nan  # one valid pixel
    with pytest.warns(RuntimeWarning):
        want = np.moveaxis(np.nanpercentile(x, [10, 50, 90], axis=-1), 0, -1)
    got = nan_percentiles(x, [10, 50, 90])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert np.isnan(got[1, 2]).all() and (got[2, 3] == x[2, 3, 0]).all()


def test_fewshot_tiny_store_tidy_rows(tiny_store, tmp_path):
    from earthembed.evaluate.fewshot import RESULT_COLUMNS, run_fewshot

    emb = tiny_tables(tiny_store, tmp_path)
    out = tmp_path / "out"
    df = run_fewshot({"pre": emb}, tiny_store, "label", out, budgets="1,2,5,all", seeds=(0, 1),
                     estimators="logreg,knn", baselines="band_stats", n_boot=50)
    assert list(df.columns) == RESULT_COLUMNS
    assert set(df["features"]) == {"pre:emb_fused", "pre:emb_s2", "pre:emb_s1", "band_stats"}
    # chips without S1 drop out of every feature set: test = chips 2, 12 (water), 17 (forest);
    # pool = 12 train/val chips, 8 water + 4 forest, so 5/class takes 5 + 4 and "all" 12
    idx = ChipStore(tiny_store).index
    test_labels = idx[(idx["split"] == "test") & idx["has_s1"]]["label"]
    assert set(test_labels) == {"water", "forest"}  # a constant classifier cannot be perfect
    assert set(df["budget"]) == {"1", "2", "5", "all"} and set(df["n_test"]) == {3}
    assert df.groupby("budget")["budget_n"].agg(set).to_dict() == {"1": {2}, "2": {4}, "5": {9}, "all": {12}}
    assert len(df) == 4 * 2 * 2 * 4 * 2  # features x estimators x seeds x budgets x metrics
    fin = df.dropna(subset=["ci_low"])
    assert ((fin["ci_low"] <= fin["value"] + 1e-9) & (fin["value"] <= fin["ci_high"] + 1e-9)).all()
    lr = df[(df["estimator"] == "logreg") & (df["budget"] == "1")]
    assert all(json.loads(e)["C"] == 1.0 for e in lr["extra"])  # 1 per class: nothing to cross-validate
    run = json.loads((out / "run.json").read_text())["tasks"][0]
    assert run["feature_sets"]["pre:emb_s1"]["n_excluded_null"] == 5 and run["n_test"] == 3
    members = pd.read_parquet(out / "budgets.parquet")
    test_ids = set(ChipStore(tiny_store).index.query("split == 'test'")["chip_id"])
    assert not set(members["chip_id"]) & test_ids
    for f in ("results.csv", "results.parquet", "summary.csv", "summary.md", "label_efficiency.png"):
        assert (out / f).stat().st_size > 0
    full = df[(df["features"] == "pre:emb_fused") & (df["budget"] == "all")]
    # perfect on a two-class test set: a constant classifier would score accuracy 2/3 and macro F1 0.4
    assert (full.loc[full["metric"] == "accuracy", "value"] == 1.0).all()
    assert (full.loc[full["metric"] == "macro_f1", "value"] == 1.0).all()
    noise = df[(df["features"] == "pre:emb_s2") & (df["budget"] == "all") & (df["metric"] == "macro_f1")]
    assert noise["value"].mean() < 1.0


def test_fewshot_holdout_val_scores_val_draws_budgets_from_train_and_leaves_test_out(tiny_store, tmp_path):
    from earthembed.evaluate.fewshot import holdout_split, run_fewshot
    from earthembed.evaluate.tasks import load_task

    emb = tiny_tables(tiny_store, tmp_path)
    out = tmp_path / "val"
    df = run_fewshot({"pre": emb}, tiny_store, "label", out, budgets="1,all", seeds=(0,), estimators="knn",
                     baselines="band_stats", n_boot=20, feature_columns="emb_s2", holdout="val")
    idx = ChipStore(tiny_store).index.set_index("chip_id")
    members = pd.read_parquet(out / "budgets.parquet")
    assert set(idx.loc[members["chip_id"], "split"]) == {"train"}  # budgets from train only
    run = json.loads((out / "run.json").read_text())
    both = idx["has_s1"]  # band statistics need every modality: chips without S1 drop out
    assert run["holdout"] == "val" and run["tasks"][0]["n_test"] == int(((idx["split"] == "val") & both).sum())
    assert (df.loc[df["budget"] == "all", "budget_n"] == int(((idx["split"] == "train") & both).sum())).all()
    t = load_task(tiny_store, "label")
    assert holdout_split(t, "test") is t
    v = holdout_split(t, "val")
    assert not set(v.chip_ids) & set(idx.index[idx["split"] == "test"]) and set(v.split) == {"train", "test"}
    with pytest.raises(ValueError, match="holdout must be one of"):
        holdout_split(t, "train")
    with pytest.raises(ValueError, match="no"):
        holdout_split(t.subset(t.split != "val"), "val")


def test_random_init_baseline_run_by_fewshot(tiny_store, tmp_path):
    import torch

    from earthembed.data.normalize import Normalizer
    from earthembed.embed.io import read_metadata
    from earthembed.embed.run import embed_store
    from earthembed.evaluate.fewshot import run_fewshot
    from earthembed.models.export import export_model
    from earthembed.models.registry import build_model

    st = ChipStore(tiny_store)
    torch.manual_seed(0)
    model = build_model("multimodal_vit", modalities={k: st.band_names(k) for k in ("s2", "s1")},
                        patch_size=8, embed_dim=16, depth=1, num_heads=2)
    export = export_model(model, tmp_path / "export", Normalizer.from_store(st))
    emb = embed_store(export, st, tmp_path / "pre.parquet", modalities=["s2"], progress=False)
    out = tmp_path / "o"
    kw = dict(budgets="1,all", seeds=(0,), estimators="knn", feature_columns="emb_fused", n_boot=10)
    df = run_fewshot({"pre": emb}, tiny_store, "label", out, **kw)  # default baselines
    assert set(df["features"]) == {"pre:emb_fused", "random_init:emb_fused", "band_stats", "rcf"}
    rand = out / "random_init.parquet"
    meta = read_metadata(rand)
    assert meta["model_id"].startswith("random-init-seed0-") and meta["modalities"] == ["s2"]  # as the table
    run = json.loads((out / "run.json").read_text())["tasks"][0]
    assert run["feature_sets"]["random_init:emb_fused"]["source"] == str(rand)
    a = df[df["features"] == "random_init:emb_fused"].reset_index(drop=True)
    mtime = rand.stat().st_mtime_ns
    df2 = run_fewshot({"pre": emb}, tiny_store, "label", out, **kw)  # same model: the table is reused
    assert rand.stat().st_mtime_ns == mtime
    pd.testing.assert_frame_equal(a[["metric", "value"]],
                                  df2[df2["features"] == "random_init:emb_fused"].reset_index(drop=True)[["metric", "value"]])
    # an explicit random-init table takes precedence; without a model the baseline says what to do
    hand = tiny_tables(tiny_store, tmp_path)
    df3 = run_fewshot({"pre": emb, "random_init": hand}, tiny_store, "label", tmp_path / "o3", **kw)
    assert set(df3["features"]) == {"pre:emb_fused", "random_init:emb_fused", "band_stats", "rcf"}
    assert not (tmp_path / "o3" / "random_init.parquet").exists()
    with pytest.raises(ValueError, match="--random-init"):
        run_fewshot({"pre": hand}, tiny_store, "label", tmp_path / "o4", **kw)
    only_stats = run_fewshot({"pre": hand}, tiny_store, "label", tmp_path / "o5", baselines="band_stats", **kw)
    assert "band_stats" in set(only_stats["features"])


def test_informative_beats_noise_without_splits(small_store, tmp_path):
    from earthembed.evaluate.fewshot import run_fewshot

    emb = small_tables(small_store, tmp_path)
    df = run_fewshot({"m": emb}, small_store, "cls", tmp_path / "o", budgets="2,5,all", seeds=(0, 1),
                     estimators="logreg,rf", baselines="none", n_boot=20)
    run = json.loads((tmp_path / "o" / "run.json").read_text())["tasks"][0]
    assert "no evaluated chip is in a test split" in run["split"] and run["n_test"] == 12 and run["n_dropped_unlabelled"] == 2
    f1 = df[df["metric"] == "macro_f1"].groupby("features")["value"].mean()
    assert f1["m:emb_fused"] > 0.9 and f1["m:emb_fused"] > f1["m:emb_noise"] + 0.3


def test_fewshot_regression_and_multilabel(small_store, tmp_path):
    from earthembed.evaluate.fewshot import run_fewshot

    emb = small_tables(small_store, tmp_path)
    df = run_fewshot({"m": emb}, small_store, "height,ml", tmp_path / "o", budgets="5,20,all", seeds=(0,),
                     estimators="linear,knn", baselines="none", feature_columns="emb_fused,emb_noise", n_boot=20)
    assert set(df["task"]) == {"height", "ml"}
    assert set(df.loc[df["task"] == "height", "estimator"]) == {"ridge", "knn"}
    assert set(df.loc[df["task"] == "ml", "metric"]) == {"micro_map", "macro_map", "micro_f1", "macro_f1"}
    prim = df[df["metric"].isin(["r2", "macro_map"]) & (df["budget"] == "all")].set_index(["task", "features", "estimator"])["value"]
    assert prim["height", "m:emb_fused", "ridge"] > 0.7 > prim["height", "m:emb_noise", "ridge"]
    assert prim["ml", "m:emb_fused", "logreg"] > prim["ml", "m:emb_noise", "logreg"] + 0.2
    extra = df[(df["task"] == "ml") & (df["budget"] == "5")]["extra"].map(json.loads)
    assert all(e.get("skipped_classes") in (None, ["rare"]) for e in extra)
    assert (tmp_path / "o" / "label_efficiency.png").stat().st_size > 0
    # budgets per budget mode: classification per class, regression in total
    df = run_fewshot({"m": emb}, small_store, "cls,height", tmp_path / "o2", budgets="per_class=2,all; total=5",
                     seeds=(0,), estimators="knn", baselines="none", feature_columns="emb_fused", n_boot=0)
    assert set(df.loc[df["task"] == "cls", "budget"]) == {"2", "all"} and set(df.loc[df["task"] == "height", "budget"]) == {"5"}
    assert df["ci_low"].isna().all() and df["value"].notna().all()  # n_boot=0: scores without intervals
    # paired comparisons: every fit's primary metric on the same resamples of the test chips
    from earthembed.evaluate.compare import compare, load_bootstrap

    boot = load_bootstrap(tmp_path / "o")
    df_ml = pd.read_csv(tmp_path / "o" / "results.csv")
    prim = df_ml[df_ml["metric"].isin(["r2", "macro_map"])]
    assert len(boot) == len(prim) and boot["values"].map(len).eq(20).all()
    c = compare(df_ml, "m:emb_fused", ["m:emb_noise"], boot)
    r = c[(c["task"] == "height") & (c["estimator"] == "ridge") & (c["budget"] == "all")].iloc[0]
    assert r["wins_paired"] and 0 < r["diff_ci_low"] <= r["diff"] <= r["diff_ci_high"]


def test_summary_label_reduction():
    rows = []
    for seed, jitter in ((0, -0.01), (1, 0.01)):
        for b, n, v in (("1", 10, 0.5), ("5", 50, 0.78), ("10", 100, 0.8), ("all", 1000, 0.82)):
            rows.append(dict(task="t", task_kind="classification", features="A", estimator="logreg", budget=b,
                             budget_n=n, seed=seed, metric="macro_f1", value=v + jitter))
            rows.append(dict(task="t", task_kind="classification", features="A", estimator="logreg", budget=b,
                             budget_n=n, seed=seed, metric="accuracy", value=1.0))
        rows.append(dict(task="r", task_kind="regression", features="A", estimator="ridge", budget="all",
                         budget_n=100, seed=seed, metric="r2", value=-0.2))
    s = summarize(pd.DataFrame(rows)).set_index("task")
    assert s.loc["t", "budget_95"] == "5" and s.loc["t", "budget_n_95"] == 50  # 0.78 >= 0.95 * 0.82
    assert s.loc["t", "label_reduction_pct"] == pytest.approx(95.0)
    assert s.loc["t", "full_score"] == pytest.approx(0.82) and s.loc["t", "metric"] == "macro_f1"
    assert np.isnan(s.loc["r", "label_reduction_pct"])  # R2 <= 0: no meaningful 95% target


def test_cli_fewshot(tiny_store, tmp_path):
    from earthembed.evaluate.cli import register

    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)
    emb = tiny_tables(tiny_store, tmp_path)
    runner = CliRunner()
    args = ["fewshot", "--embeddings", f"pre={emb}", "--random-init", str(emb), "--store", str(tiny_store),
            "--out", str(tmp_path / "o"), "--budgets", "1,all", "--seeds", "1", "--estimators", "knn",
            "--feature-columns", "emb_fused", "--n-boot", "10"]
    res = runner.invoke(app, [*args, "--task", "label,frac_water"])
    assert res.exit_code == 0, res.output
    assert "label reduction" not in res.output and "pre:emb_fused" in res.output and "random_init:emb_fused" in res.output
    df = pd.read_csv(tmp_path / "o" / "results.csv")
    assert set(df["task"]) == {"label", "frac_water"} and "band_stats" in set(df["features"])
    bad = runner.invoke(app, [*args, "--task", "nope"])
    assert bad.exit_code == 1 and "error:" in bad.output and "label" in bad.output


def test_parallel_jobs_give_identical_results(small_store, tmp_path):
    from earthembed.evaluate.fewshot import run_fewshot

    emb = small_tables(small_store, tmp_path)
    kw = dict(budgets="2,5,all", seeds=(0, 1), estimators="logreg,knn", baselines="band_stats", n_boot=20)
    a = run_fewshot({"m": emb}, small_store, "cls", tmp_path / "a", n_jobs=1, **kw)
    b = run_fewshot({"m": emb}, small_store, "cls", tmp_path / "b", n_jobs=2, **kw)
    cols = ["task", "features", "estimator", "budget", "seed", "metric", "value", "ci_low", "ci_high"]
    pd.testing.assert_frame_equal(a[cols].reset_index(drop=True), b[cols].reset_index(drop=True))


def test_all_budget_fitted_once_and_repeated_for_every_seed(small_store, tmp_path, monkeypatch, capsys):
    """`all` has the same chips for every seed: one fit, its rows repeated (fit_s 0, extra names the seed)."""
    from earthembed.evaluate import fewshot

    emb = small_tables(small_store, tmp_path)
    sizes = []
    real = fewshot.fit_estimator
    monkeypatch.setattr(fewshot, "fit_estimator", lambda *a, **k: sizes.append(len(a[2])) or real(*a, **k))
    monkeypatch.setenv("EARTHEMBED_PROGRESS_PCT", "50")
    df = fewshot.run_fewshot({"m": emb}, small_store, "cls", tmp_path / "o", budgets="2,all", seeds=(0, 1, 2),
                             estimators="logreg", baselines="none", n_boot=10, progress=True)
    n_fits = len(df.drop_duplicates(["features", "estimator", "seed", "budget"]))
    err = capsys.readouterr().err.splitlines()  # repeated fits count when their first seed's fit is done
    assert err[-1].startswith("few-shot (1 task x") and f"100% ({n_fits}/{n_fits} fits)" in err[-1]
    assert not any(f"(0/{n_fits}" in x for x in err)
    n_all = int(df.loc[df["budget"] == "all", "budget_n"].iloc[0])
    n_sets = df["features"].nunique()
    assert sizes.count(n_all) == n_sets and len(sizes) == 4 * n_sets  # per set: 3 seeds x budget 2, one fit of all
    rows = df[(df["budget"] == "all") & (df["features"] == df["features"].iloc[0])].sort_values(["seed", "metric"])
    assert sorted(rows["seed"].unique()) == [0, 1, 2] and len(rows) == 3 * df["metric"].nunique()
    per_seed = [g[["metric", "value", "ci_low", "ci_high"]].to_numpy() for _, g in rows.groupby("seed")]
    assert all((x == per_seed[0]).all() for x in per_seed)
    assert (rows.loc[rows["seed"] > 0, "fit_s"] == 0).all()
    assert all(json.loads(e)["fit_of_seed"] == 0 for e in rows.loc[rows["seed"] > 0, "extra"])
    # the table keeps the (task, features, estimator, seed, budget) order
    one = df[df["features"] == df["features"].iloc[0]]
    assert one.drop_duplicates(["seed", "budget"])[["seed", "budget"]].values.tolist() == [
        [0, "2"], [0, "all"], [1, "2"], [1, "all"], [2, "2"], [2, "all"]]


def _scored(task, budget, n, features, est, values, half_width):
    return [dict(task=task, task_kind="classification", features=features, estimator=est, budget=budget,
                 budget_n=n, seed=s, metric="macro_f1", value=v, ci_low=v - half_width, ci_high=v + half_width)
            for s, v in enumerate(values)]


def test_best_feature_set_win_and_tie():
    from earthembed.evaluate.summary import best_by_budget

    rows = []
    # budget 1: A 0.80 [0.75, 0.85] vs B 0.60 [0.55, 0.65] (B's rf: 0.62 is its best) -> a clear win for A
    rows += _scored("t", "1", 10, "A", "logreg", [0.79, 0.81], 0.05)
    rows += _scored("t", "1", 10, "B", "logreg", [0.59, 0.61], 0.05)
    rows += _scored("t", "1", 10, "B", "rf", [0.61, 0.63], 0.05)
    rows += _scored("t", "1", 10, "A", "rf", [0.10, 0.12], 0.05)  # a bad estimator does not hide A's best
    # budget all: B 0.82 [0.72, 0.92] vs A 0.80 [0.70, 0.90] -> B is best, but a tie
    rows += _scored("t", "all", 100, "A", "logreg", [0.80, 0.80], 0.10)
    rows += _scored("t", "all", 100, "B", "rf", [0.82, 0.82], 0.10)
    results = pd.DataFrame(rows).assign(budget_mode="per_class")
    best = best_by_budget(results).set_index("budget")
    assert best.loc["1", ["best", "best_estimator", "runner_up", "runner_up_estimator", "verdict"]].tolist() == [
        "A", "logreg", "B", "rf", "win"]
    assert best.loc["1", "best_mean"] == pytest.approx(0.80) and best.loc["1", "runner_up_ci_high"] == pytest.approx(0.67)
    assert best.loc["all", ["best", "runner_up", "verdict", "tied_with"]].tolist() == ["B", "A", "tie", "A"]
    assert best.index.tolist() == ["1", "all"]  # by budget size
    one = best_by_budget(results[results["features"] == "A"])
    assert set(one["verdict"]) == {"only set"}
    nan = best_by_budget(results.assign(ci_low=np.nan, ci_high=np.nan))
    assert set(nan["verdict"]) == {"no CI"}


def test_best_feature_set_in_summary_files(tmp_path):
    from earthembed.evaluate.summary import write_summary

    rows = _scored("t", "1", 10, "A", "logreg", [0.79, 0.81], 0.05) + _scored("t", "1", 10, "B", "logreg", [0.5, 0.5], 0.05)
    rows += _scored("t", "all", 99, "A", "logreg", [0.9, 0.9], 0.1) + _scored("t", "all", 99, "B", "logreg", [0.85, 0.85], 0.1)
    md = write_summary(pd.DataFrame(rows).assign(budget_mode="per_class"), tmp_path)
    assert "## Best feature set per budget" in md
    assert "| t | 1 | 10 | A (logreg) | 0.800 [0.750, 0.850] | B (logreg) | 0.500 [0.450, 0.550] | win |" in md
    assert "| t | all | 99 | A (logreg) |" in md and "| tie |" in md
    s = pd.read_csv(tmp_path / "summary.csv", keep_default_na=False).set_index("features")
    assert str(s.loc["A", "best_at"]) == "1" and s.loc["A", "tied_best_at"] == "all" and s.loc["B", "tied_best_at"] == "all"
    # paired: the same test resamples move both scores together, so "all" is a tie side by side, a paired win
    noise = np.random.default_rng(0).normal(0, 0.05, 100)
    boot = pd.DataFrame([{"task": "t", "features": f, "estimator": "logreg", "budget": b, "seed": sd, "metric": "macro_f1",
                          "n_test": 50, "values": v + noise} for f, b, v in [("A", "1", 0.8), ("B", "1", 0.5),
                                                                            ("A", "all", 0.9), ("B", "all", 0.85)]
                         for sd in (0, 1)])
    md = write_summary(pd.DataFrame(rows).assign(budget_mode="per_class"), tmp_path, boot=boot)
    best = pd.read_csv(tmp_path / "best.csv").set_index("budget")
    assert best.loc["all", "verdict"] == "tie" and best.loc["all", "paired_verdict"] == "win"
    assert best.loc["all", "paired_diff_ci_low"] == pytest.approx(0.05)
    assert "paired verdict" in md and "+0.050 [+0.050, +0.050] | win |" in md
    assert len(pd.read_csv(tmp_path / "best.csv")) == 2


def test_newton_solver_picks_the_same_C_as_lbfgs(monkeypatch):
    """The speed-up (Newton-Cholesky for binary problems) solves the same objective: same C, same model
    (at a tight solver tolerance; the default LOGREG_TOL stops both a little short of the optimum)."""
    from earthembed.evaluate import estimators
    from earthembed.evaluate.estimators import _fit_logreg, logreg_solver

    monkeypatch.setattr(estimators, "LOGREG_TOL", 1e-6)
    assert logreg_solver(64, 2) == "newton-cholesky" and logreg_solver(64, 6) == "lbfgs"
    assert logreg_solver(2048, 2) == "lbfgs"
    rng = np.random.default_rng(0)
    for n, d, scale in ((12, 8, 1.0), (80, 16, 0.5), (200, 32, 3.0)):
        X = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) * scale  # correlated, ill-conditioned features
        y = (X[:, 0] - X[:, 1] + rng.normal(0, 1, n) > 0).astype(int)
        Xt = rng.normal(size=(50, d)) @ rng.normal(size=(d, d)) * scale
        fast, e_fast = _fit_logreg(X, y, seed=0)
        slow, e_slow = _fit_logreg(X, y, seed=0, solver="lbfgs")
        assert e_fast["C"] == e_slow["C"] and e_fast["C_selection"] == e_slow["C_selection"]
        np.testing.assert_allclose(fast.predict_proba(Xt), slow.predict_proba(Xt), atol=2e-3)


def test_neg_log_loss_scorer_matches_sklearn():
    """C selection scores with our fast log-loss exactly as with scikit-learn's "neg_log_loss" scorer."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss, make_scorer

    from earthembed.evaluate.estimators import neg_log_loss

    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 5))
    for k, C in ((2, 1.0), (4, 0.1), (3, 1e4)):
        y = rng.integers(0, k, 60)
        est = LogisticRegression(C=C, max_iter=2000).fit(X * (10 if C > 100 else 1), y)
        Xt, yt = rng.normal(size=(25, 5)) * 10, rng.integers(0, k, 25)  # large logits: clipping matters
        yt[yt == k - 1] = 0 if k > 2 else yt[yt == k - 1]  # a class absent from the fold's test part
        # what LogisticRegressionCV builds from "neg_log_loss" (labels: a fold may miss a class)
        ref = make_scorer(log_loss, greater_is_better=False, response_method="predict_proba", labels=est.classes_)
        assert neg_log_loss(est, Xt, yt) == pytest.approx(ref(est, Xt, yt), rel=1e-9)


def test_row_space_fit_is_the_same_model():
    """Fewer chips than features: logistic regression in the row space is the same classifier, same C."""
    from sklearn.linear_model import LogisticRegression

    from earthembed.evaluate.estimators import RowSpace, fit_estimator

    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 300))
    y = (X[:, :5].sum(1) + rng.normal(0, 1, 40) > 0).astype(int)
    Xt = rng.normal(size=(30, 300))
    rs = RowSpace().fit(X)
    assert rs.basis_.shape == (300, 40)
    full = LogisticRegression(C=0.1, tol=1e-8, max_iter=5000).fit(X, y)
    small = LogisticRegression(C=0.1, tol=1e-8, max_iter=5000).fit(rs.transform(X), y)
    np.testing.assert_allclose(small.predict_proba(rs.transform(Xt)), full.predict_proba(Xt), atol=1e-5)
    np.testing.assert_allclose(rs.basis_ @ small.coef_.ravel(), full.coef_.ravel(), atol=1e-5)
    assert RowSpace().fit(X[:, :30]).basis_ is None  # n >= d: nothing to gain, identity
    assert RowSpace().fit(np.vstack([X[:20], X[:20]])).basis_.shape == (300, 20)  # repeated rows: their rank
    assert RowSpace().fit(np.zeros((5, 10))).transform(np.ones((2, 10))).shape == (2, 1)
    # through the estimator: three classes, budget narrower than the features
    y3 = np.digitize(X[:, 0] + X[:, 1], [-0.7, 0.7])
    fitted = fit_estimator("logreg", "classification", X, y3, seed=0)
    assert fitted.model.named_steps["prep"][-1].basis_.shape[1] <= 40 and fitted.predict(Xt)[0].shape == (30,)


def test_linear_inputs_scaled_by_the_pool_not_the_budget():
    """A feature nearly constant in a 10-chip budget: scaled by the budget, test chips land at |z| ~ 1e5 and
    ridge / logistic predictions explode; scaled by the pool's features (no labels) they stay sane."""
    from sklearn.metrics import r2_score

    from earthembed.evaluate.estimators import fit_estimator

    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 6))
    y = X[:, 1] + 0.1 * rng.normal(size=300)
    X[:10, 0] = 1e-5 * rng.normal(size=10) + 1e-5 * y[:10]  # budget: feature 0 ~ constant, slightly tied to y
    budget, pool, test = np.arange(10), np.arange(200), np.arange(200, 300)
    r2 = {}
    for name, ref in (("budget", None), ("pool", X[pool])):
        f = fit_estimator("ridge", "regression", X[budget], y[budget], X_ref=ref)
        r2[name] = r2_score(y[test], f.predict(X[test])[0])
    assert r2["pool"] > 0.8 and r2["budget"] < 0
    knn = fit_estimator("knn", "regression", X[budget], y[budget], X_ref=X[pool])
    assert knn.model.named_steps["scale"].n_samples_seen_ == 200  # kNN distances on the same scale
