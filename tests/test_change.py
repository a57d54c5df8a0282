"""earthembed change: scores of every method against brute-force references and known answers, thresholds,
the output policy, bad inputs, and map/report/plot integration, on hand-built per-date embedding tables."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from earthembed.cli import app
from earthembed.embed.io import write_embedding_table
from earthembed.errors import OutputError
from earthembed.explore.change import (
    ZSCORE_STD_FLOOR,
    change_accuracy,
    detect_change,
    fit_threshold,
    otsu,
    read_change,
)


def per_date_table(path: Path, chips: list[str], dates: list[str], X: np.ndarray, model_id: str = "m",
                   store: Path | None = None, geometry: dict[str, bytes] | None = None, iso: bool = True) -> Path:
    """A per-date embedding table as ``embed --dates`` writes it: rows date by date, ``X`` [C, T, D] with NaN rows
    for a missing (chip, date), columns t/date/date_key, metadata time.mode = per_date."""
    C, T, _ = X.shape
    cc, tt = np.meshgrid(np.arange(C), np.arange(T), indexing="xy")
    cc, tt = cc.ravel(), tt.ravel()  # date-major
    meta = {"time": {"mode": "per_date", "series": {"s2": dates}, "dates": dates}}
    if store is not None:
        meta["store"] = str(store)
    write_embedding_table(path, [chips[c] for c in cc], {"emb_fused": X[cc, tt]}, split=["train"] * len(cc),
                          model_id=model_id, metadata=meta)
    t = pq.read_table(path)
    t = t.append_column("t", pa.array(tt, pa.int16()))
    import datetime as dt

    d = [dt.date.fromisoformat(dates[k]) if iso else None for k in tt]
    t = t.append_column("date", pa.array(d, pa.date32()))
    t = t.append_column("date_key", pa.array([dates[k] for k in tt], pa.string()))
    if geometry is not None:
        t = t.append_column("geometry", pa.array([geometry[chips[c]] for c in cc], pa.binary()))
    pq.write_table(t, path)
    return path


DATES = ["2019-06-01", "2020-06-01", "2021-06-01", "2022-06-01", "2023-06-01", "2024-06-01"]


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture
def flip(tmp_path):
    """5 chips x 3 dates of 4 dims: 'flip' turns around at the last date, 'same' never moves, others drift a bit."""
    rng = np.random.default_rng(0)
    base = rng.normal(size=(5, 1, 4))
    X = np.repeat(base, 3, axis=1) + rng.normal(scale=0.05, size=(5, 3, 4))
    X[1] = base[1]  # 'same': identical at every date
    X[0, 0], X[0, 2] = base[0, 0], -base[0, 0]  # 'flip'
    chips = ["flip", "same", "c2", "c3", "c4"]
    return per_date_table(tmp_path / "emb.parquet", chips, DATES[:3], X), X, chips


def test_cosine_between_two_dates(flip, tmp_path):
    emb, X, chips = flip
    r = cli("change", "--embeddings", emb, "--from", DATES[0], "--to", DATES[2], "--out", tmp_path / "c.parquet")
    assert r.exit_code == 0, r.output
    df, meta = read_change(tmp_path / "c.parquet")
    assert meta["method"] == "cosine" and meta["from"] == DATES[0] and meta["to"] == DATES[2]
    assert list(df.columns[:5]) == ["chip_id", "split", "date_from", "date_to", "t_from"]
    s = df.set_index("chip_id")["score"]
    U = unit(X)
    ref = 1 - (U[:, 0] * U[:, 2]).sum(-1)
    np.testing.assert_allclose(s.loc[chips].to_numpy(), ref, atol=1e-6)
    assert s.idxmax() == "flip" and s["flip"] == pytest.approx(2.0, abs=1e-5) and abs(s["same"]) < 1e-6
    assert "flip 2019-06-01 -> 2021-06-01 2.0000" in r.output, r.output
    # --method cosine needs the dates; a series method does not take them
    assert "give --from D1 --to D2" in cli("change", "--embeddings", emb, "--method", "cosine", "--out",
                                           tmp_path / "x.parquet").output


def _brute(X: np.ndarray, method: str) -> dict[tuple[int, int], float]:
    """Per-chip loops: the definitions of the module docstring, written out."""
    out = {}
    for c in range(len(X)):
        ts = [t for t in range(X.shape[1]) if np.isfinite(X[c, t]).all()]
        U = {t: X[c, t] / np.linalg.norm(X[c, t]) for t in ts}
        dist = lambda a, b: 0.0 if a is b else 1 - float(a @ b)  # noqa: E731
        if method == "consecutive":
            for a, b in zip(ts[:-1], ts[1:], strict=True):
                out[(c, b)] = dist(U[a], U[b])
        elif method == "loo-medoid" and len(ts) >= 2:
            for i in ts:
                others = [j for j in ts if j != i]
                med = min(others, key=lambda j: sum(dist(U[j], U[k]) for k in others))
                out[(c, i)] = dist(U[i], U[med])
        elif method == "zscore" and len(ts) >= 3:
            d = {}
            for i in ts:
                m = sum(U[j] for j in ts if j != i)
                d[i] = 1 - float(U[i] @ m / np.linalg.norm(m))
            for i in ts:
                o = np.array([d[j] for j in ts if j != i])
                out[(c, i)] = (d[i] - o.mean()) / max(o.std(ddof=1), ZSCORE_STD_FLOOR)
    return out


@pytest.mark.parametrize("method", ["zscore", "loo-medoid", "consecutive"])
def test_series_methods_equal_per_chip_loops(method, tmp_path):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(40, 6, 8)).astype(np.float32) + 2 * rng.normal(size=(40, 1, 8)).astype(np.float32)
    n_dates = rng.integers(1, 7, size=40)  # chips with 1..6 dates (some too few for the method), gaps inside
    for c in range(40):
        drop = rng.permutation(6)[: 6 - n_dates[c]]
        X[c, drop] = np.nan
    X[:, 3][~np.isfinite(X[:, 3]).all(axis=1)] = np.nan
    X[0] = X[0, 0]  # chip 0 identical at every date: zscore floors the std
    chips = [f"chip{c:02d}" for c in range(40)]
    emb = per_date_table(tmp_path / "e.parquet", chips, DATES, X)
    res = detect_change(emb, tmp_path / "c.parquet", method=method)
    ref = _brute(X, method)
    got = {(chips.index(c), DATES.index(d)): s for c, d, s in res.table[["chip_id", "date", "score"]].itertuples(index=False)}
    assert got.keys() == ref.keys() and len(got) > 50
    np.testing.assert_allclose([got[k] for k in ref], [ref[k] for k in ref], atol=2e-4, rtol=1e-4)
    few = {"zscore": 3, "loo-medoid": 2, "consecutive": 2}[method]
    n_few = int(sum(np.isfinite(X[c]).all(axis=1).sum() < few for c in range(40)))
    assert res.skipped.get("too_few_dates", 0) == n_few
    assert any("lack some of the 6 dates" in n for n in res.notes)


def test_a_chip_that_flips_scores_highest_for_every_series_method(tmp_path):
    rng = np.random.default_rng(2)
    base = rng.normal(size=(30, 1, 16))
    X = np.repeat(base, 6, axis=1) + rng.normal(scale=0.3, size=(30, 6, 16))  # seasonal-ish noise everywhere
    X[7, 3] = -base[7, 0]  # one date of one chip turns around
    chips = [f"c{i}" for i in range(30)]
    emb = per_date_table(tmp_path / "e.parquet", chips, DATES, X)
    for method in ("zscore", "loo-medoid", "consecutive"):
        res = detect_change(emb, tmp_path / f"{method}.parquet", method=method)
        top = res.table.sort_values("score").iloc[-1]
        assert top["chip_id"] == "c7", method
        assert top["date"] in (DATES[3], DATES[4]) if method == "consecutive" else top["date"] == DATES[3], method


def test_thresholds(flip, tmp_path):
    emb, _, chips = flip
    args = ["change", "--embeddings", emb, "--from", DATES[0], "--to", DATES[2]]
    r = cli(*args, "--threshold", "fixed:0.5", "--out", tmp_path / "f.parquet")
    assert r.exit_code == 0 and "threshold fixed:0.5 = 0.5: 1 changed" in r.output, r.output
    df, meta = read_change(tmp_path / "f.parquet")
    assert df.set_index("chip_id")["changed"].to_dict() == {c: c == "flip" for c in chips}
    assert meta["threshold"]["n_changed"] == 1
    r = cli(*args, "--threshold", "percentile:50", "--out", tmp_path / "p.parquet")
    df, meta = read_change(tmp_path / "p.parquet")
    assert meta["threshold"]["value"] == pytest.approx(np.percentile(df["score"], 50)) and df["changed"].sum() == 2
    for bad in ("percentile:101", "fixed:x", "otsu:3", "median", "fitted:"):
        r = cli(*args, "--threshold", bad, "--out", tmp_path / "bad.parquet")
        assert r.exit_code == 1 and "--threshold" in r.output and not (tmp_path / "bad.parquet").exists(), r.output


def test_otsu_splits_two_modes():
    rng = np.random.default_rng(0)
    s = np.r_[rng.normal(0.1, 0.02, 900), rng.normal(0.8, 0.05, 100)]
    thr = otsu(s)  # any cut in the empty gap separates as well: Otsu's is its first (as scikit-image's)
    assert 0.12 < thr < 0.7 and 100 <= (s > thr).sum() <= 102
    with pytest.raises(ValueError, match="constant"):
        otsu(np.ones(5))


def test_fitted_threshold_maximises_f1_with_a_ci(tmp_path):
    rng = np.random.default_rng(3)
    s = np.r_[rng.normal(0.1, 0.05, 40), rng.normal(0.6, 0.1, 10)]
    y = np.r_[np.zeros(40, int), np.ones(10, int)]
    thr, info, prob = fit_threshold(s, y, s, n_boot=100)
    pred = s > thr
    f1 = 2 * (pred & (y == 1)).sum() / (pred.sum() + y.sum())
    assert info["f1"] == pytest.approx(f1) and f1 >= 0.9
    grid = np.unique(s)  # no cut does better
    best = max(2 * ((s > g) & (y == 1)).sum() / ((s > g).sum() + y.sum()) for g in grid)
    assert f1 == pytest.approx(best)
    lo, hi = info["threshold_ci"]
    assert lo <= thr <= hi and info["f1_ci"][0] <= f1 <= info["f1_ci"][1] + 1e-9
    assert np.all((prob >= 0) & (prob <= 1)) and prob[s.argmax()] > 0.5 > prob[s.argmin()]


def test_fitted_threshold_from_a_labels_csv(tmp_path):
    rng = np.random.default_rng(4)
    base = rng.normal(size=(60, 1, 8))
    X = np.repeat(base, 2, axis=1) + rng.normal(scale=0.2, size=(60, 2, 8))
    X[:12, 1] = rng.normal(size=(12, 8))  # 12 changed chips
    chips = [f"c{i:02d}" for i in range(60)]
    emb = per_date_table(tmp_path / "e.parquet", chips, DATES[:2], X)
    lab = pd.DataFrame({"chip_id": chips[:6] + chips[30:40] + ["nowhere"], "changed": [1] * 6 + [0] * 10 + [1]})
    lab.to_csv(tmp_path / "labels.csv", index=False)
    r = cli("change", "--embeddings", emb, "--from", DATES[0], "--to", DATES[1], "--threshold",
            f"fitted:{tmp_path / 'labels.csv'}", "--out", tmp_path / "c.parquet")
    assert r.exit_code == 0, r.output
    assert "1 label(s) match no scored chip (not used): nowhere" in r.output and "F1 1.000" in r.output
    df, meta = read_change(tmp_path / "c.parquet")
    thr = meta["threshold"]
    assert thr["kind"] == "fitted" and thr["n_labels"] == 16 and len(thr["threshold_ci"]) == 2
    assert df.set_index("chip_id")["changed"][chips[:12]].mean() > 0.8  # the unlabelled changed chips too
    assert df["prob_changed"].between(0, 1).all()
    # labels of one class, or in the wrong format: one line
    pd.DataFrame({"chip_id": chips[:3], "changed": [0, 0, 0]}).to_csv(tmp_path / "one.csv", index=False)
    pd.DataFrame({"chip": chips[:3], "changed": [0, 1, 0]}).to_csv(tmp_path / "cols.csv", index=False)
    pd.DataFrame({"chip_id": chips[:3], "changed": [0, 2, 1]}).to_csv(tmp_path / "vals.csv", index=False)
    for name, msg in (("one.csv", "all unchanged"), ("cols.csv", "need columns chip_id"),
                      ("vals.csv", "must be 0/1"), ("none.csv", "not found")):
        r = cli("change", "--embeddings", emb, "--from", DATES[0], "--to", DATES[1], "--threshold",
                f"fitted:{tmp_path / name}", "--out", tmp_path / "x.parquet")
        assert r.exit_code == 1 and msg in r.output and r.output.count("\n") == 1, r.output


def test_output_policy(flip, tmp_path):
    emb, _, _ = flip
    args = ["change", "--embeddings", emb, "--method", "zscore"]
    foreign = tmp_path / "mine.parquet"
    foreign.write_bytes(b"my thesis")
    for extra in ([], ["--overwrite"]):
        r = cli(*args, "--out", foreign, *extra)
        assert r.exit_code == 1 and str(foreign) in r.output and foreign.read_bytes() == b"my thesis", r.output
    r = cli(*args, "--out", emb, "--overwrite")
    assert r.exit_code == 1 and "is the input" in r.output
    out = tmp_path / "c.parquet"
    assert cli(*args, "--out", out).exit_code == 0
    assert "already exists; pass --overwrite" in cli(*args, "--out", out).output
    assert cli(*args, "--out", out, "--overwrite").exit_code == 0
    # an embedding table is not a change table: not replaced, even with --overwrite
    other = tmp_path / "other.parquet"
    other.write_bytes(emb.read_bytes())
    r = cli(*args, "--out", other, "--overwrite")
    assert "is not an earthembed change table" in r.output and other.read_bytes() == emb.read_bytes()
    with pytest.raises(OutputError):
        detect_change(emb, tmp_path / "c.parquet", method="zscore")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.parquet", "emb.parquet", "mine.parquet", "other.parquet"]


def _err(r) -> str:
    assert r.exit_code == 1, r.output
    lines = [ln for ln in r.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.output
    return lines[0]


def test_bad_inputs_are_one_line(flip, tmp_path):
    emb, X, chips = flip
    out = tmp_path / "c.parquet"
    plain = write_embedding_table(tmp_path / "plain.parquet", chips, {"emb_fused": X[:, 0]})
    assert "not a per-date embedding table" in _err(cli("change", "--embeddings", plain, "--method", "zscore",
                                                        "--out", out))
    series = tmp_path / "series.parquet"  # a whole series as one vector (Galileo)
    t = pq.read_table(emb)
    md = json.loads(t.schema.metadata[b"earthembed"])
    md["time"]["mode"] = "series"
    pq.write_table(t.replace_schema_metadata({b"earthembed": json.dumps(md).encode()}), series)
    assert "whole series as one vector" in _err(cli("change", "--embeddings", series, "--method", "zscore",
                                                    "--out", out))
    other = per_date_table(tmp_path / "other.parquet", chips, DATES[3:5], X[:, :2], model_id="another")
    line = _err(cli("change", "--embeddings", emb, "--embeddings", other, "--method", "zscore", "--out", out))
    assert "tables of different models" in line and "another" in line
    line = _err(cli("change", "--embeddings", emb, "--from", DATES[0], "--to", "2030-01-01", "--out", out))
    assert "--to 2030-01-01: no chip has this date" in line and DATES[2] in line
    one = per_date_table(tmp_path / "one.parquet", chips, DATES[:1], X[:, :1])
    assert "holds one date" in _err(cli("change", "--embeddings", one, "--method", "loo-medoid", "--out", out))
    assert "needs a series of at least 3 dates" in _err(cli("change", "--embeddings", per_date_table(
        tmp_path / "two.parquet", chips, DATES[:2], X[:, :2]), "--method", "zscore", "--out", out))
    line = _err(cli("change", "--embeddings", emb, "--embeddings", emb, "--method", "zscore", "--out", out))
    assert "has more than one row for date 2019-06-01 (15 duplicated (chip, date) row(s) in all)" in line
    assert "give both --from and --to" in _err(cli("change", "--embeddings", emb, "--from", DATES[0], "--out", out))
    assert "drop --from/--to" in _err(cli("change", "--embeddings", emb, "--from", DATES[0], "--to", DATES[1],
                                          "--method", "zscore", "--out", out))
    assert "no embedding column 'emb_s2'" in _err(cli("change", "--embeddings", emb, "--column", "emb_s2",
                                                      "--method", "zscore", "--out", out))
    # a chip whose footprint differs between dates: not one place (mixed grids or CRSs)
    import shapely

    geo = {c: shapely.to_wkb(shapely.box(i, 0, i + 1, 1)) for i, c in enumerate(chips)}
    a = per_date_table(tmp_path / "a.parquet", chips, DATES[:2], X[:, :2], geometry=geo)
    geo["c3"] = shapely.to_wkb(shapely.box(500, 0, 501, 1))
    b = per_date_table(tmp_path / "b.parquet", chips, DATES[2:4], X[:, :2], geometry=geo)
    line = _err(cli("change", "--embeddings", a, "--embeddings", b, "--method", "consecutive", "--out", out))
    assert "chip c3 has another footprint (geometry) at 2021-06-01" in line and "not the same place" in line
    # the same chip in two CRSs at two dates: error; chips in several CRSs (each chip in one): a note
    t = pq.read_table(emb)
    crs = np.where(np.asarray(t.column("chip_id").to_pylist()) == "c4", "EPSG:32634", "EPSG:32633")
    pq.write_table(t.append_column("crs", pa.array(crs)), tmp_path / "zones.parquet")
    r = cli("change", "--embeddings", tmp_path / "zones.parquet", "--method", "zscore", "--out", tmp_path / "z.parquet")
    assert r.exit_code == 0 and "chips in 2 CRSs (EPSG:32633: 4, EPSG:32634: 1)" in r.output, r.output
    crs[np.asarray(t.column("t")) == 1] = "EPSG:32634"
    pq.write_table(t.append_column("crs", pa.array(crs)), tmp_path / "mixed.parquet")
    line = _err(cli("change", "--embeddings", tmp_path / "mixed.parquet", "--method", "zscore", "--out", out))
    assert "chip flip has another CRS at 2020-06-01 than at 2019-06-01 (4 chip(s) differ)" in line
    t = pq.read_table(emb)
    flat = np.asarray(t.column("emb_fused").combine_chunks().flatten()).copy()
    flat[(1 * 5 + 2) * 4] = np.inf  # date-major rows: (t=1, chip 2)
    col = pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), 4)
    pq.write_table(t.set_column(t.schema.get_field_index("emb_fused"), "emb_fused", col), tmp_path / "inf.parquet")
    assert "NaN/Inf values in 1 row(s) (chips c2)" in _err(cli("change", "--embeddings", tmp_path / "inf.parquet",
                                                               "--method", "zscore", "--out", out))
    assert not out.exists()


def test_missing_dates_are_named_and_counted(tmp_path):
    rng = np.random.default_rng(5)
    X = rng.normal(size=(6, 3, 4))
    X[4, 2] = np.nan  # chip4 lacks the last date
    X[5, 0] = np.nan  # chip5 lacks the first
    chips = [f"chip{i}" for i in range(6)]
    emb = per_date_table(tmp_path / "e.parquet", chips, DATES[:3], X)
    r = cli("change", "--embeddings", emb, "--from", DATES[0], "--to", DATES[2], "--out", tmp_path / "c.parquet")
    assert r.exit_code == 0, r.output
    assert "1 chip(s) lack 2019-06-01 (skipped): chip5" in r.output
    assert "1 chip(s) lack 2021-06-01 (skipped): chip4" in r.output and "4 score(s) for 4 of 6 chips" in r.output
    _, meta = read_change(tmp_path / "c.parquet")
    assert meta["skipped"]["missing_date"] == {DATES[0]: 1, DATES[2]: 1}
    assert meta["skipped"]["null_embedding"] == 2


def test_several_tables_of_one_model_are_one_series(flip, tmp_path):
    emb, X, chips = flip
    later = per_date_table(tmp_path / "later.parquet", chips, DATES[3:5], X[:, :2])  # its own t = 0, 1
    res = detect_change([later, emb], tmp_path / "c.parquet", method="consecutive")
    assert [d["date_key"] for d in res.meta["dates"]] == DATES[:5]
    steps = res.table[res.table["chip_id"] == "c2"]
    assert steps["date"].tolist() == DATES[1:5] and steps["t"].tolist() == [1, 2, 3, 4]
    assert steps["date_from"].tolist() == DATES[:4]


def test_accuracy_against_truth_columns(tmp_path):
    rng = np.random.default_rng(6)
    base = rng.normal(size=(20, 1, 8))
    X = np.repeat(base, 4, axis=1) + rng.normal(scale=0.1, size=(20, 4, 8))
    X[:5, 2:] = rng.normal(size=(5, 1, 8))  # chips 0-4 change between date 1 and date 2, and stay changed
    chips = [f"c{i:02d}" for i in range(20)]
    emb = per_date_table(tmp_path / "e.parquet", chips, DATES[:4], X)
    truth = pd.DataFrame({"chip_id": chips, **{f"change_t{k}": [k == 2 and i < 5 for i in range(20)] for k in range(4)}})
    two = detect_change(emb, tmp_path / "two.parquet", date_from=DATES[0], date_to=DATES[3], threshold="fixed:0.5")
    acc = change_accuracy(tmp_path / "two.parquet", truth)
    assert acc["level"].tolist() == ["chip"] and acc["auc"].iloc[0] == 1.0 and acc["f1"].iloc[0] == 1.0
    assert two.meta["threshold"]["n_changed"] == 5
    detect_change(emb, tmp_path / "early.parquet", date_from=DATES[0], date_to=DATES[1])  # before the change
    assert change_accuracy(tmp_path / "early.parquet", truth)["n_changed"].iloc[0] == 0
    detect_change(emb, tmp_path / "cons.parquet", method="consecutive", threshold="otsu")
    acc = change_accuracy(tmp_path / "cons.parquet", truth).set_index("level")
    assert acc.loc["chip_date", "auc"] == 1.0 and acc.loc["chip_date", "best_f1"] == 1.0
    assert acc.loc["chip_date", "n_changed"] == 5 and acc.loc["chip", "n"] == 20
    with pytest.raises(ValueError, match="no change_t"):
        change_accuracy(tmp_path / "cons.parquet", truth[["chip_id"]])
    # --truth: a store with the truth columns; the accuracy is printed and kept in the metadata
    from earthembed.data.store import ChipStore
    from earthembed.data.synth import generate_synthetic_aoi

    st = generate_synthetic_aoi(tmp_path / "store", chips=16, chip_size=8)
    ids = st.index["chip_id"].tolist()
    emb = per_date_table(tmp_path / "s.parquet", ids, DATES[:4], X[:16], store=st.path)
    idx = st.index.copy()
    for k in range(4):
        idx[f"change_t{k}"] = [k == 2 and i < 5 for i in range(16)]
    idx.to_parquet(st.path / "index.parquet")  # as synth --dates will write them
    assert "change_t2" in ChipStore(st.path).index.columns
    r = cli("change", "--embeddings", emb, "--method", "consecutive", "--threshold", "fixed:0.5", "--truth", st.path,
            "--out", tmp_path / "t.parquet")
    assert r.exit_code == 0, r.output
    assert "accuracy per chip and date: ROC AUC 1.000, F1 1.000 (best cut 1.000), 5 of 48 changed" in r.output
    _, meta = read_change(tmp_path / "t.parquet")
    assert meta["accuracy"]["levels"][0] == {"level": "chip", "n": 16, "n_changed": 5, "auc": 1.0, "f1": 1.0,
                                             "best_f1": 1.0}


def test_plot_map_and_report(tmp_path):
    import rasterio

    from earthembed.data.synth import generate_synthetic_aoi
    from earthembed.explore.report import write_report

    st = generate_synthetic_aoi(tmp_path / "store", chips=16, chip_size=16)
    chips = st.index["chip_id"].tolist()
    rng = np.random.default_rng(7)
    base = rng.normal(size=(16, 1, 8))
    X = np.repeat(base, 4, axis=1) + rng.normal(scale=0.1, size=(16, 4, 8))
    X[3, 2:] = -base[3]
    emb = per_date_table(tmp_path / "e.parquet", chips, DATES[:4], X, store=st.path)
    out = tmp_path / "c.parquet"
    r = cli("change", "--embeddings", emb, "--method", "loo-medoid", "--threshold", "percentile:90",
            "--plot", "top:2", "--plot", chips[0], "--out", out)
    assert r.exit_code == 0, r.output
    assert (tmp_path / "c.png").exists() and "plot" in r.output
    df, meta = read_change(out, geometry=True)
    assert {"crs", "transform", "geometry"} <= set(df.columns) and df["geometry"].notna().all()
    r = cli("map", "--table", out, "--out", tmp_path / "m.tif")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in tmp_path.glob("m*")) == ["m.png", "m.tif", "m_mask.png", "m_mask.tif"]
    with rasterio.open(tmp_path / "m.tif") as ds:
        a = ds.read(1)
        assert ds.tags()["earthembed_kind"] == "continuous" and np.nanmax(a) == pytest.approx(
            df.groupby("chip_id")["score"].max().max(), rel=1e-6)
    with rasterio.open(tmp_path / "m_mask.tif") as ds:
        assert json.loads(ds.tags()["earthembed_classes"]) == ["unchanged", "changed"]
        assert set(np.unique(ds.read(1))) <= {0, 1, 255} and (ds.read(1) == 1).any()
    assert cli("map", "--table", out, "--date", DATES[1], "--column", "score", "--out", tmp_path / "d.tif").exit_code == 0
    assert "not a date of the change table" in cli("map", "--table", out, "--date", "1999-01-01", "--out",
                                                   tmp_path / "e.tif").output
    # the mask's place is checked with the score's: a foreign file there stops both
    (tmp_path / "n_mask.tif").write_bytes(b"mine")
    r = cli("map", "--table", out, "--out", tmp_path / "n.tif")
    assert r.exit_code == 1 and "n_mask.tif" in r.output and not (tmp_path / "n.tif").exists()
    page = write_report(tmp_path / "r.html", changes=[out])
    text = page.read_text()
    assert "Change between dates" in text and "Top changed chips" in text and "percentile:90" in text
    assert text.count("<img") == 2 and chips[3] in text
    with pytest.raises(ValueError, match="not an earthembed change table"):
        write_report(tmp_path / "r2.html", changes=[emb])
    from test_report import render

    dom, log = render(page, tmp_path)  # every image decodes in a browser (skipped without chromium)
    assert 'data-images="2 images, 0 broken"' in dom and "earthembed report" not in log


def test_a_table_of_embed_dates_and_the_synthetic_truth(tmp_path):
    """What `embed --dates` writes of `synth --dates` goes straight into change --truth, and its map."""
    from earthembed.data.synth import generate_synthetic_aoi

    st = generate_synthetic_aoi(tmp_path / "st", chips=16, chip_size=8, dates=3)
    emb = tmp_path / "e.parquet"
    r = cli("embed", "--featurizer", "rcf", "--rcf-mode", "gaussian", "--rcf-features", 8, "--dates", "all", "--store", st.path, "--out", emb,
            "--quiet")
    assert r.exit_code == 0, r.output
    out = tmp_path / "c.parquet"
    r = cli("change", "--embeddings", emb, "--method", "consecutive", "--threshold", "otsu", "--truth", st.path,
            "--out", out)
    assert r.exit_code == 0, r.output
    assert "change (consecutive, emb_fused, 3 dates)" in r.output and "accuracy per chip and date: ROC AUC" in r.output
    _, meta = read_change(out)
    n_truth = int(sum(st.index[f"change_t{k}"].sum() for k in (1, 2)))
    assert meta["accuracy"]["levels"][1]["n_changed"] == n_truth and meta["threshold"]["kind"] == "otsu"
    r = cli("change", "--embeddings", emb, "--from", "s2", "--to", "s2_t3", "--out", tmp_path / "cos.parquet")
    assert r.exit_code == 0 and "s2 (" in r.output, r.output
    assert cli("map", "--table", out, "--out", tmp_path / "m.tif").exit_code == 0
    assert (tmp_path / "m_mask.tif").exists()
