import json

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from earthembed.data.cli import synth as command
from earthembed.data.store import ChipStore, StoreError
from earthembed.data.synth import CLASSES, WORLDCOVER_CODES, SyntheticAOI, generate_synthetic_aoi

N, SIZE = 144, 16


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> ChipStore:
    return generate_synthetic_aoi(tmp_path_factory.mktemp("synth") / "aoi", chips=N, chip_size=SIZE, seed=3, batch_size=64)


@pytest.fixture(scope="module")
def big_batch():
    """1024 chips generated in memory (no store): enough chips for frequency checks."""
    return SyntheticAOI(1024, SIZE, seed=0).batch(0, 1024)


def _frac(idx) -> np.ndarray:
    return idx[[f"frac_{c}" for c in CLASSES]].to_numpy(dtype=np.float64)


def test_same_seed_same_store_independent_of_batch_size(tmp_path, store):
    other = generate_synthetic_aoi(tmp_path / "again", chips=N, chip_size=SIZE, seed=3, batch_size=50)
    for m in store.modalities:
        np.testing.assert_array_equal(store.read(m, slice(None)), other.read(m, slice(None)))
    np.testing.assert_array_equal(store.read_mask("landcover_mask", slice(None)), other.read_mask("landcover_mask", slice(None)))
    a, b = store.index, other.index
    assert a.drop(columns="geometry").equals(b.drop(columns="geometry"))
    assert a.geometry.geom_equals_exact(b.geometry, tolerance=0).all()
    assert store.stats == other.stats


def test_seed_changes_content_and_chips_are_independent():
    a, b = SyntheticAOI(64, SIZE, seed=0), SyntheticAOI(64, SIZE, seed=1)
    assert not np.array_equal(a.batch(0, 8).arrays["s2"], b.batch(0, 8).arrays["s2"])
    full, part = a.batch(0, 64), a.batch(21, 30)
    for k in full.arrays:
        np.testing.assert_array_equal(full.arrays[k][21:30], part.arrays[k])
    np.testing.assert_array_equal(full.mask[21:30], part.mask)


def test_neighbouring_chips_are_continuous():
    aoi = SyntheticAOI(64, SIZE, seed=0)
    dem = aoi.batch(0, 64).arrays["dem"][:, 0]
    across = np.abs(dem[0:7, :, -1] - dem[1:8, :, 0]).mean()  # chips side by side in the first grid row
    within = np.abs(dem[0:7, :, -2] - dem[0:7, :, -1]).mean()  # neighbouring pixels inside a chip
    far = np.abs(dem[0:7, :, -1] - dem[56:63, :, 0]).mean()  # chips far apart
    assert across < 1.5 * within and far > 3 * across


def test_modalities_shapes_dtypes(store):
    assert len(store) == N
    expect = {"s2": ("s2_l2a", 12, "uint16"), "s1": ("s1_grd_db", 2, "float32"), "coh": ("insar_coherence", 1, "float32"),
              "dem": ("elevation", 1, "float32"), "lc": ("worldcover", 1, "uint8")}
    assert set(store.modalities) == set(expect)
    for k, (product, c, dtype) in expect.items():
        m = store.modality(k)
        assert m.product == product and m.num_bands == c
        x = store.read(k, slice(0, 4))
        assert x.shape == (4, c, SIZE, SIZE) and x.dtype == np.dtype(dtype)
    assert store.band_names("s2")[7] == "B08" and "B10" not in store.band_names("s2")
    assert store.band_names("s1") == ["VV", "VH"]
    present = store.index["has_s1"].to_numpy() & store.index["has_coh"].to_numpy()
    s1, coh = store.read("s1", np.flatnonzero(present)), store.read("coh", np.flatnonzero(present))
    assert np.isfinite(s1).all() and s1.min() > -45 and s1.max() < 15
    assert coh.min() >= 0 and coh.max() <= 1
    assert set(np.unique(store.read("lc", slice(None)))) <= set(WORLDCOVER_CODES.values())
    assert set(store.stats) == {"s2", "s1", "coh", "dem"}


def test_index_geometry_and_metadata(store):
    idx = store.index
    assert (idx["crs"] == "EPSG:32633").all() and (idx["aoi"] == "synthetic").all()
    assert idx.crs.to_epsg() == 4326 and idx.chip_id.is_unique
    c = idx.geometry.union_all().centroid
    assert abs(c.x - 15) < 0.1 and abs(c.y - 48) < 0.1
    # neighbours on the grid share an edge, each chip is 160 m (16 px x 10 m) wide
    g = idx.to_crs("EPSG:32633").geometry
    assert g.iloc[0].touches(g.iloc[1]) and not g.iloc[0].intersection(g.iloc[1]).area > 1e-3
    assert g.area.round(1).eq((SIZE * 10) ** 2).all()
    assert (idx.loc[idx["has_s1"], "date_s1"] == "2023-07-03").all() and idx.loc[~idx["has_s1"], "date_s1"].isna().all()


def test_fractions_sum_to_one_and_match_mask(store):
    idx = store.index
    frac = _frac(idx)
    np.testing.assert_allclose(frac.sum(axis=1), 1.0, atol=1e-9)
    mask = store.read_mask("landcover_mask", slice(None))
    counts = np.stack([(mask == k).mean(axis=(1, 2)) for k in range(len(CLASSES))], axis=1)
    np.testing.assert_allclose(frac, counts, atol=1e-9)
    assert (idx["landcover"].to_numpy() == np.asarray(CLASSES)[frac.argmax(axis=1)]).all()
    np.testing.assert_allclose(idx["frac_vegetation"], frac[:, 1:4].sum(axis=1), atol=1e-9)
    present = [sorted(p) for p in idx["classes_present"]]
    assert present == [sorted(c for c, v in zip(CLASSES, row, strict=True) if v >= 0.1) for row in frac]
    lc = store.read("lc", slice(None))[:, 0]
    codes = np.asarray([WORLDCOVER_CODES[c] for c in CLASSES])
    np.testing.assert_array_equal(lc, codes[mask])
    assert store.labels["landcover_mask"]["classes"] == list(CLASSES)


def test_spectra_and_backscatter_follow_land_cover(big_batch):
    dom = big_batch.fractions.argmax(axis=1)
    pure = big_batch.fractions.max(axis=1) > 0.6
    s2 = big_batch.arrays["s2"].astype(np.float64)
    ok = (s2 > 0).all(axis=(1, 2, 3)) & (s2[:, 1] < 3000).all(axis=(1, 2))  # no nodata stripe, no cloud

    def mean(a, cls):
        sel = (dom == CLASSES.index(cls)) & pure & ok
        assert sel.sum() >= 10
        return a[sel].mean()

    nir, red, swir = s2[:, 7].mean(axis=(1, 2)), s2[:, 3].mean(axis=(1, 2)), s2[:, 10].mean(axis=(1, 2))
    assert mean(nir, "water") * 5 < mean(nir, "forest")
    assert mean(nir / red, "forest") > 5 > mean(nir / red, "built_up")  # red-edge/NIR jump only for vegetation
    assert mean(swir, "bare") > max(mean(swir, c) for c in CLASSES if c != "bare")
    vv = big_batch.arrays["s1"][:, 0].mean(axis=(1, 2))
    vh = big_batch.arrays["s1"][:, 1].mean(axis=(1, 2))
    assert mean(vv, "water") + 10 < mean(vv, "built_up")
    assert mean(vh, "forest") > mean(vh, "grassland") > mean(vh, "water")
    coh = big_batch.arrays["coh"][:, 0].mean(axis=(1, 2))
    assert mean(coh, "water") < mean(coh, "forest") < mean(coh, "cropland") < mean(coh, "built_up")
    dem = big_batch.arrays["dem"][:, 0].mean(axis=(1, 2))
    assert mean(dem, "water") < np.median(dem) - 30  # lakes sit in the low basins


def test_class_balance_missing_modalities_clouds_and_stripes(big_batch):
    dominant = np.bincount(big_batch.fractions.argmax(axis=1), minlength=len(CLASSES)) / 1024
    assert dominant.min() >= 0.05, dict(zip(CLASSES, dominant.round(3), strict=True))
    assert 0.02 < 1 - big_batch.has["s1"].mean() < 0.09
    assert 0.06 < 1 - big_batch.has["coh"].mean() < 0.15
    assert big_batch.has["s2"].all() and big_batch.has["dem"].all()
    s2 = big_batch.arrays["s2"]
    striped = (s2 == 0).all(axis=1).any(axis=(1, 2))
    assert 0.005 < striped.mean() < 0.05
    cloudy = (s2[:, 1] > 5000).mean(axis=(1, 2)) > 0.01  # bright in blue: cloud, not nodata
    assert 0.01 < cloudy.mean() < 0.15


def test_splits_are_spatial_blocks(store, big_batch):
    idx = store.index
    assert set(idx["split"]) == {"train", "val", "test"}
    shares = big_batch.splits
    frac = {s: (shares == s).mean() for s in ("train", "val", "test")}
    assert 0.6 < frac["train"] < 0.8 and 0.08 < frac["val"] < 0.22 and 0.08 < frac["test"] < 0.22
    aoi = SyntheticAOI(1024, SIZE, seed=0)
    b = aoi.block_chips
    assert b > 1
    blocks = (big_batch.rows // b) * 1000 + big_batch.cols // b
    for blk in np.unique(blocks):
        assert len(set(shares[blocks == blk])) == 1


def test_resume_after_interruption_and_refusals(tmp_path, monkeypatch):
    ref = generate_synthetic_aoi(tmp_path / "ref", chips=40, chip_size=8, seed=1, batch_size=16)
    calls = {"n": 0}
    real = SyntheticAOI.records

    def flaky(self, start, stop):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("interrupted")
        yield from real(self, start, stop)

    monkeypatch.setattr(SyntheticAOI, "records", flaky)
    with pytest.raises(RuntimeError, match="interrupted"):
        generate_synthetic_aoi(tmp_path / "st", chips=40, chip_size=8, seed=1, batch_size=16)
    monkeypatch.setattr(SyntheticAOI, "records", real)
    with pytest.raises(StoreError, match="other settings"):
        generate_synthetic_aoi(tmp_path / "st", chips=40, chip_size=8, seed=2, batch_size=16)
    st = generate_synthetic_aoi(tmp_path / "st", chips=40, chip_size=8, seed=1, batch_size=16)
    assert st.index["chip_id"].tolist() == ref.index["chip_id"].tolist()
    np.testing.assert_array_equal(st.read("s2", slice(None)), ref.read("s2", slice(None)))
    with pytest.raises(StoreError, match="already exists"):
        generate_synthetic_aoi(tmp_path / "st", chips=40, chip_size=8, seed=1)
    with pytest.raises(ValueError, match="chips"):
        SyntheticAOI(0)


def test_cli_writes_store_and_info_reads_it(tmp_path):
    from earthembed.data.cli import info

    app = typer.Typer()
    app.command("synth")(command)
    app.command("info")(info)
    runner = CliRunner()
    out = tmp_path / "cli"
    res = runner.invoke(app, ["synth", "--out", str(out), "--chips", "20", "--chip-size", "8", "--seed", "4"])
    assert res.exit_code == 0, res.output
    assert "wrote 20 chips" in res.output
    res = runner.invoke(app, ["info", str(out), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary["chips"] == 20 and summary["chip_size"] == 8
    assert summary["modalities"]["s2"]["num_bands"] == 12
    assert summary["labels"]["landcover"]["num_classes"] == 6
    assert sum(summary["labels"]["landcover"]["class_counts"].values()) == 20
    res = runner.invoke(app, ["synth", "--out", str(out), "--chips", "20", "--chip-size", "8"])
    assert res.exit_code == 1 and "error:" in res.output and "overwrite" in res.output
    res = runner.invoke(app, ["synth", "--out", str(out), "--chips", "20", "--chip-size", "8", "--overwrite"])
    assert res.exit_code == 0, res.output
