"""Random convolutional features: the encoder, its empirical filters, export, `embed --featurizer rcf`, fewshot."""

import numpy as np
import pandas as pd
import pytest
import torch
import typer
from typer.testing import CliRunner

from earthembed.data.normalize import Normalizer
from earthembed.data.store import ChipStore
from earthembed.embed.io import read_embeddings, read_metadata
from earthembed.models.export import load_model
from earthembed.models.rcf import (
    RCFEncoder,
    export_rcf,
    rcf_from_store,
    sample_patches,
    train_chip_positions,
    zca_whiten_patches,
)
from earthembed.models.registry import build_model

S2 = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]  # the store's order
SMALL = dict(features=16, kernel_size=3)


def _batch(n=3, size=8):
    g = torch.Generator().manual_seed(0)
    return {"s2": torch.randn(n, 13, size, size, generator=g), "s1": torch.randn(n, 2, size, size, generator=g),
            "s1_present": torch.tensor([True, False, True])}


def test_rcf_shapes_determinism_and_activations():
    m = build_model("rcf", modalities={"s2": S2, "s1": ["VV", "VH"]}, **SMALL)
    assert m.banks["s2"].weight.shape == (8, 13, 3, 3) and m.embed_dim == 16
    assert list(m.parameters()) == [] and {"banks.s2.weight", "banks.s2.bias"} <= set(m.state_dict())
    b = _batch()
    out = m(b)
    assert out.modality["s2"].shape == (3, 16) and out.fused.shape == (3, 16)
    assert torch.all(out.modality["s1"][1] == 0) and out.present["s1"].tolist() == [True, False, True]
    # the definition: y = conv(x, w) + b, features = mean ReLU(y), mean ReLU(-y) over valid positions
    y = torch.nn.functional.conv2d(b["s2"], m.banks["s2"].weight) - 1.0
    torch.testing.assert_close(out.modality["s2"], torch.cat([y.clamp(min=0).mean((2, 3)), (-y).clamp(min=0).mean((2, 3))], 1))
    # same seed -> same filters; per-modality seeds: S2 filters do not depend on the other modalities
    again = build_model("rcf", modalities={"s2": S2}, **SMALL)
    torch.testing.assert_close(again.banks["s2"].weight, m.banks["s2"].weight, rtol=0, atol=0)
    other = build_model("rcf", modalities={"s2": S2}, seed=1, **SMALL)
    assert not torch.equal(other.banks["s2"].weight, m.banks["s2"].weight)
    mos = build_model("rcf", modalities={"s2": S2}, relu_pair="mosaiks", **SMALL)
    e = mos({"s2": b["s2"]}).modality["s2"]
    torch.testing.assert_close(e[:, 8:], (-y - 2.0).clamp(min=0).mean((2, 3)))  # ReLU(-w*x - 1)
    # chips are convolved in chunks (memory): one chip per call gives the same features
    import earthembed.models.rcf as rcf_mod

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(rcf_mod, "CHUNK_ELEMENTS", 1)
        torch.testing.assert_close(m(b).modality["s2"], out.modality["s2"])
    with pytest.raises(ValueError, match="even"):
        RCFEncoder({"s2": S2}, features=15)
    with pytest.raises(ValueError, match="smaller than"):
        m({"s2": torch.zeros(1, 13, 2, 2)})


def test_zca_whitening_is_inverse_covariance_of_normalised_patches():
    rng = np.random.default_rng(0)
    p = rng.normal(size=(64, 2, 3, 3)) * np.linspace(1, 5, 18).reshape(1, 2, 3, 3) + 3.0  # unequal variances
    w = zca_whiten_patches(p, zca_bias=1e-3).reshape(64, -1).astype(np.float64)
    flat = p.reshape(64, -1)
    flat = flat - flat.mean(1, keepdims=True)
    flat /= np.linalg.norm(flat, axis=1, keepdims=True)
    cov = flat.T @ flat / 64
    np.testing.assert_allclose(w @ (cov + 1e-3 * np.eye(18)), flat, atol=1e-4)
    # whitened: the filters' responses to the patches are decorrelated compared with the raw patches
    off = lambda c: np.abs(c - np.diag(np.diag(c))).mean() / np.abs(np.diag(c)).mean()  # noqa: E731
    assert off(np.cov((flat @ w.T).T)) < off(np.cov((flat @ flat.T).T))


def test_empirical_filters_from_train_split_only(tiny_store):
    st = ChipStore(tiny_store)
    pos, rule = train_chip_positions(st, "s1")
    idx = st.index
    assert rule == "train split"
    assert pos.tolist() == np.flatnonzero((idx["split"] == "train").to_numpy() & idx["has_s1"].to_numpy()).tolist()
    norm = Normalizer.from_store(st)
    patches = sample_patches(st, "s2", S2, 40, 3, seed=0, normalizer=norm, positions=pos)
    assert patches.shape == (40, 13, 3, 3)
    # every patch is a window of a train chip (the test chips never shape the featurizer)
    train = norm(st.read("s2", pos, S2), "s2", S2).numpy()
    wins = np.lib.stride_tricks.sliding_window_view(train, (3, 3), axis=(2, 3))  # [n, C, 14, 14, 3, 3]
    wins = np.moveaxis(wins, 1, 3).reshape(-1, 13, 3, 3)
    assert all(np.isclose(wins, q).all(axis=(1, 2, 3)).any() for q in patches[:5])
    emp, info = rcf_from_store(st, {"s2": S2}, mode="empirical", **SMALL)
    gau, _ = rcf_from_store(st, {"s2": S2}, mode="gaussian", **SMALL)
    emp2, _ = rcf_from_store(st, {"s2": S2}, mode="empirical", **SMALL)
    assert info["patches"]["s2"]["from"] == "train split" and info["patches"]["s2"]["n"] == 8
    torch.testing.assert_close(emp.banks["s2"].weight, emp2.banks["s2"].weight, rtol=0, atol=0)  # reproducible
    assert not torch.allclose(emp.banks["s2"].weight, gau.banks["s2"].weight)
    torch.testing.assert_close(gau.banks["s2"].weight, build_model("rcf", modalities={"s2": S2}, **SMALL).banks["s2"].weight)
    x = {"s2": norm(st.read("s2", slice(0, 20), S2), "s2", S2)}
    fe, fg = emp(x).modality["s2"], gau(x).modality["s2"]
    assert torch.isfinite(fe).all() and not torch.allclose(fe, fg)


def test_rcf_export_load_and_embed_cli(tiny_store, tmp_path):
    from earthembed.embed.cli import register

    st = ChipStore(tiny_store)
    exp = export_rcf(st, tmp_path / "feat", mode="empirical", **SMALL)
    model, meta = load_model(exp)
    built, _ = rcf_from_store(st, {"s2": S2, "s1": ["VV", "VH"]}, mode="empirical", **SMALL)
    assert isinstance(model, RCFEncoder) and meta["architecture"] == "rcf" and meta["rcf"]["mode"] == "empirical"
    for k, v in built.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v, rtol=0, atol=0)
    assert export_rcf(st, tmp_path / "feat2", mode="empirical", **SMALL) and \
        load_model(tmp_path / "feat2")[1]["model_id"] == meta["model_id"]  # deterministic -> same id
    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)
    runner = CliRunner()
    out = tmp_path / "rcf.parquet"
    res = runner.invoke(app, ["embed", "--featurizer", "rcf", "--store", str(tiny_store), "--out", str(out),
                              "--rcf-features", "16", "--modalities", "s2", "--quiet"])
    assert res.exit_code == 0, res.output
    _, X = read_embeddings(out, "emb_s2")
    assert X.shape == (20, 16) and read_metadata(out)["architecture"] == "rcf"
    again = tmp_path / "again.parquet"
    res = runner.invoke(app, ["embed", "--checkpoint", str(tmp_path / "rcf_featurizer"), "--store", str(tiny_store),
                              "--out", str(again), "--quiet"])
    assert res.exit_code == 0, res.output
    np.testing.assert_array_equal(read_embeddings(again, "emb_s2")[1], X)  # the exported featurizer, reused
    bad = runner.invoke(app, ["embed", "--store", str(tiny_store), "--out", str(tmp_path / "x.parquet")])
    assert bad.exit_code == 1 and "--featurizer rcf" in bad.output


def test_fewshot_rcf_baseline_rows(tiny_store, tmp_path):
    from earthembed.evaluate.fewshot import run_fewshot

    idx = ChipStore(tiny_store).index
    rng = np.random.default_rng(0)
    from earthembed.embed.io import write_embedding_table

    emb = write_embedding_table(tmp_path / "e.parquet", idx["chip_id"], {"emb_fused": rng.normal(size=(20, 4))},
                                split=idx["split"])
    out = tmp_path / "o"
    kw = dict(budgets="1,all", seeds=(0,), estimators="knn", n_boot=10, baselines="band_stats,rcf", rcf={"features": 16})
    df = run_fewshot({"m": emb}, tiny_store, "label", out, **kw)
    assert set(df["features"]) == {"m:emb_fused", "band_stats", "rcf"}
    assert (out / "rcf.parquet").exists() and (out / "rcf_featurizer" / "model.json").exists()
    rcf_rows = df[df["features"] == "rcf"]
    assert len(rcf_rows) == 2 * 2 and set(rcf_rows["budget"]) == {"1", "all"}
    # one set, both modalities side by side; chips without S1 drop out, as for band_stats
    import json

    run = json.loads((out / "run.json").read_text())["tasks"][0]
    assert run["feature_sets"]["rcf"]["dim"] == 32 and run["feature_sets"]["rcf"]["n_excluded_null"] == 5
    mtime = (out / "rcf.parquet").stat().st_mtime_ns
    df2 = run_fewshot({"m": emb}, tiny_store, "label", out, **kw)  # same featurizer: the table is reused
    assert (out / "rcf.parquet").stat().st_mtime_ns == mtime
    pd.testing.assert_series_equal(rcf_rows["value"].reset_index(drop=True),
                                   df2[df2["features"] == "rcf"]["value"].reset_index(drop=True))
    gauss = run_fewshot({"m": emb}, tiny_store, "label", tmp_path / "g", **{**kw, "rcf": {"features": 16, "mode": "gaussian"}})
    assert read_metadata(tmp_path / "g" / "rcf.parquet")["model_id"] != read_metadata(out / "rcf.parquet")["model_id"]
    assert "rcf" in set(gauss["features"])
    with pytest.raises(ValueError, match="unknown option"):
        run_fewshot({"m": emb}, tiny_store, "label", tmp_path / "b", **{**kw, "rcf": {"filters": 3}})
