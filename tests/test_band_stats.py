"""The band statistics featurizer (`embed --featurizer band_stats`): the few-shot baseline as an embedding table."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from earthembed.data.synth import generate_synthetic_aoi
from earthembed.models.band_stats import STATS, BandStatsEncoder, band_statistics
from test_hostile_inputs import cli, one_line_error


@pytest.fixture(scope="module")
def dated(tmp_path_factory):
    return generate_synthetic_aoi(tmp_path_factory.mktemp("bs") / "store", chips=12, chip_size=16, seed=2, dates=3)


def test_statistics_are_numpys_per_band_and_large_chips_are_summarised_in_chunks(monkeypatch):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 4, 9, 7)).astype(np.float32)
    got = band_statistics(torch.from_numpy(x)).numpy().reshape(3, 4, len(STATS))
    flat = x.reshape(3, 4, -1)
    want = np.stack([flat.mean(-1), flat.std(-1), *np.percentile(flat, [10, 50, 90], axis=-1)], -1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    import earthembed.models.band_stats as bs

    monkeypatch.setattr(bs, "QUANTILE_LIMIT", 100)  # 63 pixels a band: one band per quantile call
    np.testing.assert_allclose(band_statistics(torch.from_numpy(x)).numpy().reshape(3, 4, 5), want, rtol=1e-5,
                               atol=1e-5)
    monkeypatch.setattr(bs, "QUANTILE_LIMIT", 10)  # a band larger than torch.quantile takes: numpy's
    np.testing.assert_allclose(band_statistics(torch.from_numpy(x)).numpy().reshape(3, 4, 5), want, rtol=1e-5,
                               atol=1e-5)


def test_each_modality_has_its_slice_and_fused_is_the_weighted_concatenation():
    m = BandStatsEncoder({"a": ["x", "y"], "b": ["z"]})
    assert m.embed_dim == 15 and m.feature_names()[:6] == [f"a:x:{s}" for s in STATS] + ["a:y:mean"]
    rng = np.random.default_rng(1)
    batch = {"a": torch.from_numpy(rng.normal(size=(4, 2, 8, 8)).astype(np.float32)),
             "b": torch.from_numpy(rng.normal(size=(4, 1, 8, 8)).astype(np.float32)),
             "b_present": torch.tensor([True, True, False, True])}
    out = m(batch)
    assert torch.equal(out.modality["a"][:, 10:], torch.zeros(4, 5))
    assert torch.equal(out.modality["b"][:, :10], torch.zeros(4, 10)) and not out.modality["b"][2].any()
    torch.testing.assert_close(out.modality["a"][:, :10], band_statistics(batch["a"]))
    a = torch.nn.functional.normalize(out.modality["a"], dim=1)
    b = torch.nn.functional.normalize(out.modality["b"], dim=1)
    torch.testing.assert_close(out.fused[0], torch.nn.functional.normalize(a[0] + b[0], dim=0))
    torch.testing.assert_close(out.fused[2], a[2])  # b absent: a alone
    maps = m.forward_features(batch)["a"][0]
    assert maps.shape == (4, 15, 8, 8)
    torch.testing.assert_close(maps[:, 0], batch["a"][:, 0]) and torch.testing.assert_close(maps[:, 2], batch["a"][:, 0])
    assert not maps[:, 1].any() and not maps[:, 10:].any()


def test_cli_per_date_band_statistics_equal_the_fewshot_baseline_up_to_normalisation(dated, tmp_path):
    from earthembed.data.normalize import Normalizer
    from earthembed.embed.io import read_embeddings, read_metadata
    from earthembed.evaluate.features import band_statistics_features

    out = tmp_path / "bs.parquet"
    r = cli("embed", "--featurizer", "band_stats", "--modalities", "s2", "--dates", "all", "--store", dated.path,
            "--out", out, "--quiet")
    assert r.exit_code == 0, r.output
    index, emb = read_embeddings(out, column="emb_s2")
    assert read_metadata(out)["time"]["mode"] == "per_date" and set(index["t"]) == {0, 1, 2}
    # t=0 is the s2 key: the few-shot baseline's raw statistics, mapped per band by the store's normalisation
    ids, raw, names = band_statistics_features(dated, modalities=["s2"])
    bands = dated.modality("s2").band_names
    norm = Normalizer.from_store(dated)
    mean, std = (np.asarray(v, dtype=np.float64) for v in norm.mean_std("s2", bands))
    raw = raw.reshape(len(ids), len(bands), len(STATS)).astype(np.float64)
    want = (raw - mean[None, :, None]) / std[None, :, None]
    want[:, :, 1] = raw[:, :, 1] / std[None, :]  # a standard deviation is only scaled
    first = index["t"].to_numpy() == 0
    got = dict(zip(index.loc[first, "chip_id"], emb[first], strict=True))
    ok = np.isfinite(want).all(axis=(1, 2))
    assert ok.sum() >= 8
    for cid, w in zip(ids[ok], want[ok], strict=True):
        np.testing.assert_allclose(got[cid].reshape(len(bands), len(STATS)), w, rtol=1e-3, atol=1e-3)
    # change reads it like any per-date table
    r = cli("change", "--embeddings", out, "--method", "consecutive", "--column", "emb_s2", "--out",
            tmp_path / "chg.parquet")
    assert r.exit_code == 0, r.output


def test_featurizer_options_are_checked(dated, tmp_path):
    r = cli("embed", "--featurizer", "band_stats", "--rcf-features", "64", "--store", dated.path, "--out",
            tmp_path / "x.parquet")
    one_line_error(r, "--rcf-features goes with --featurizer rcf")
    r = cli("embed", "--featurizer", "pca", "--store", dated.path, "--out", tmp_path / "x.parquet")
    one_line_error(r, "--featurizer 'pca': one of rcf, band_stats")
    r = cli("embed", "--featurizer", "band_stats", "--dates", "series", "--store", dated.path, "--out",
            tmp_path / "x.parquet")
    one_line_error(r, "the band_stats featurizer has no time axis", "--dates all")
    assert not (tmp_path / "x.parquet").exists() and not (tmp_path / "x_featurizer").exists()
