"""Ingest of the real EuroSAT, BigEarthNet and Sen1Floods11 samples, and of broken copies of them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
import typer
from typer.testing import CliRunner

from earthembed.data.ingest import eurosat as eurosat_mod
from earthembed.data.ingest.bigearthnet import BEN19_CLASSES, ingest_bigearthnet
from earthembed.data.ingest.common import IngestError
from earthembed.data.ingest.eurosat import EUROSAT_CLASSES, ingest_eurosat
from earthembed.data.ingest.sen1floods11 import ingest_sen1floods11
from earthembed.data.ingest.splits import stratified_splits
from earthembed.data.store import ChipStore, StoreError

pytestmark = pytest.mark.realdata


class Interrupt(Exception):
    """Stands in for a crash or Ctrl-C in the middle of an ingest."""


def _ms(shared: Path) -> Path:
    return shared / "eurosat-ms" / "EuroSAT_MS"


def _small_eurosat(shared: Path, dst: Path, classes=("Forest", "River"), n: int = 3) -> Path:
    """A copy of a few EuroSAT files in the official layout under ``dst/EuroSAT_MS``."""
    for c in classes:
        (dst / "EuroSAT_MS" / c).mkdir(parents=True)
        for i in range(1, n + 1):
            shutil.copy(_ms(shared) / c / f"{c}_{i}.tif", dst / "EuroSAT_MS" / c / f"{c}_{i}.tif")
    return dst


@pytest.fixture(scope="module")
def eurosat_store(shared_data, tmp_path_factory) -> ChipStore:
    return ingest_eurosat(shared_data / "eurosat-ms", tmp_path_factory.mktemp("es") / "store")


@pytest.fixture(scope="module")
def ben_store(shared_data, tmp_path_factory) -> ChipStore:
    return ingest_bigearthnet(shared_data / "bigearthnet", tmp_path_factory.mktemp("ben") / "store")


@pytest.fixture(scope="module")
def floods_store(shared_data, tmp_path_factory) -> ChipStore:
    return ingest_sen1floods11(shared_data / "sen1floods11", tmp_path_factory.mktemp("sf") / "store", chip_size=64)


# --- EuroSAT -------------------------------------------------------------------------------------------


def test_eurosat_sample(eurosat_store, shared_data):
    info = eurosat_store.info()
    assert info["chips"] == 200
    assert info["modalities"]["s2"]["num_bands"] == 13
    assert info["modalities"]["s2"]["bands"][8] == "B8A"
    assert info["labels"]["label"]["num_classes"] == 10
    assert info["labels"]["label"]["class_counts"] == {c: 20 for c in EUROSAT_CLASSES}
    assert info["splits"] == {"train": 120, "val": 40, "test": 40}
    assert info["georeferenced"] == 200 and info["skipped"] == 0
    idx = eurosat_store.index
    assert (idx.groupby("label")["split"].value_counts().unstack()[["train", "val", "test"]].values == [12, 4, 4]).all()
    assert idx["crs"].str.match(r"EPSG:326\d\d").all()
    # footprints are ~640 m squares in lon/lat, in Europe
    b = idx.geometry.bounds
    assert b.minx.between(-15, 40).all() and b.miny.between(34, 72).all()


def test_eurosat_b8a_reordered_by_name(eurosat_store, shared_data):
    idx = eurosat_store.index
    i = int(idx.index[idx["chip_id"] == "River_7"][0])
    with rasterio.open(_ms(shared_data) / "River" / "River_7.tif") as f:
        raw = f.read()
    chip = eurosat_store.read("s2", i)
    # the file stores B8A as its 13th band and B09 as its 9th; the store has them by name
    np.testing.assert_array_equal(eurosat_store.read("s2", i, bands=["B8A"])[0], raw[12])
    np.testing.assert_array_equal(eurosat_store.read("s2", i, bands=["B09", "B12"]), raw[[8, 11]])
    assert not np.array_equal(chip[8], raw[8])  # position 8 is B8A now, not the file's B09
    np.testing.assert_array_equal(chip[:8], raw[:8])


def test_stratified_split_is_exact_and_order_free():
    ids = {"a": [f"a_{i}" for i in range(20)], "b": [f"b_{i}" for i in range(7)]}
    s1 = stratified_splits(ids)
    s2 = stratified_splits({k: list(reversed(v)) for k, v in ids.items()})
    assert s1 == s2
    a = pd.Series([s1[i] for i in ids["a"]]).value_counts().to_dict()
    assert a == {"train": 12, "val": 4, "test": 4}


def test_eurosat_truncated_and_wrong_band_count_are_skipped(shared_data, tmp_path):
    src = _small_eurosat(shared_data, tmp_path / "src")
    bad = src / "EuroSAT_MS" / "Forest" / "Forest_2.tif"
    with open(bad, "r+b") as f:
        f.truncate(3000)
    twelve = src / "EuroSAT_MS" / "River" / "River_99.tif"
    with rasterio.open(src / "EuroSAT_MS" / "River" / "River_1.tif") as f:
        profile, data = f.profile, f.read()
    profile.update(count=12)
    with rasterio.open(twelve, "w", **profile) as f:
        f.write(data[:12])
    store = ingest_eurosat(src, tmp_path / "store")
    assert len(store) == 5
    assert "Forest_2" not in set(store.index["chip_id"]) and "River_99" not in set(store.index["chip_id"])
    reasons = {Path(s["item"]).name: s["reason"] for s in store.report()["skipped"]}
    assert set(reasons) == {"Forest_2.tif", "River_99.tif"}
    assert "Forest_2.tif" in reasons["Forest_2.tif"] and "corrupt or truncated" in reasons["Forest_2.tif"]
    assert "River_99.tif" in reasons["River_99.tif"] and "12 bands, expected 13" in reasons["River_99.tif"]
    assert json.loads((tmp_path / "store" / "ingest_report.json").read_text())["n_skipped"] == 2


def test_eurosat_empty_folder_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(IngestError, match=r"empty: no EuroSAT class folders"):
        ingest_eurosat(tmp_path / "empty", tmp_path / "store")
    (tmp_path / "empty" / "EuroSAT_MS" / "Forest").mkdir(parents=True)
    with pytest.raises(IngestError, match="EuroSAT_MS: no EuroSAT class folders"):
        ingest_eurosat(tmp_path / "empty", tmp_path / "store")
    assert not (tmp_path / "store").exists()


def test_eurosat_interrupted_ingest_resumes(shared_data, tmp_path, monkeypatch):
    src = _small_eurosat(shared_data, tmp_path / "src", n=5)
    real = eurosat_mod.read_raster
    calls: list[Path] = []

    def flaky(path, *a, **k):
        calls.append(Path(path))
        if len(calls) == 7:
            raise Interrupt
        return real(path, *a, **k)

    monkeypatch.setattr(eurosat_mod, "read_raster", flaky)
    with pytest.raises(Interrupt):
        ingest_eurosat(src, tmp_path / "store", batch_size=4)
    with pytest.raises(StoreError, match="incomplete"):
        ChipStore(tmp_path / "store")
    calls.clear()
    store = ingest_eurosat(src, tmp_path / "store", batch_size=4)
    assert len(calls) == 4  # the 6 committed chips are not read again
    assert len(store) == 10 and store.index["chip_id"].is_unique


def test_cli_ingest_eurosat_and_info(shared_data, tmp_path):
    from earthembed.data.cli import info
    from earthembed.data.ingest.cli import eurosat as command

    app = typer.Typer()
    app.command("eurosat")(command)
    app.command("info")(info)
    src = _small_eurosat(shared_data, tmp_path / "src")
    runner = CliRunner()
    res = runner.invoke(app, ["eurosat", str(src / "EuroSAT_MS"), "--out", str(tmp_path / "st")])
    assert res.exit_code == 0, res.output
    assert "eurosat: 6 chips" in res.output
    res = runner.invoke(app, ["info", str(tmp_path / "st"), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary["chips"] == 6 and summary["labels"]["label"]["class_counts"] == {"Forest": 3, "River": 3}
    # a second run onto the complete store, and an empty source, fail with one clear line
    res = runner.invoke(app, ["eurosat", str(src), "--out", str(tmp_path / "st")])
    assert res.exit_code == 1 and "complete store already exists" in res.output
    (tmp_path / "nothing").mkdir()
    res = runner.invoke(app, ["eurosat", str(tmp_path / "nothing"), "--out", str(tmp_path / "st2")])
    assert res.exit_code == 1 and "error:" in res.output and "nothing" in res.output


# --- BigEarthNet ---------------------------------------------------------------------------------------


def test_bigearthnet_sample(ben_store, shared_data):
    info = ben_store.info()
    meta = pd.read_parquet(shared_data / "bigearthnet" / "metadata.parquet")
    assert info["chips"] == 54
    assert info["modalities"]["s2"]["num_bands"] == 12 and "B10" not in info["modalities"]["s2"]["bands"]
    assert info["modalities"]["s1"]["bands"] == ["VV", "VH"] and info["modalities"]["s1"]["present"] == 54
    assert info["chip_size"] == 120
    lab = info["labels"]["labels"]
    assert lab["num_classes"] == 19 and ben_store.labels["labels"]["classes"] == list(BEN19_CLASSES)
    assert lab["class_counts"] == meta["labels"].explode().value_counts().to_dict()
    assert info["splits"] == {"train": 18, "val": 18, "test": 18}
    assert info["labels"]["country"]["class_counts"]["Austria"] == 22
    idx = ben_store.index.set_index("chip_id")
    assert idx["contains_seasonal_snow"].sum() == 3 and idx["contains_cloud_or_shadow"].sum() == 3
    assert idx.geometry.isna().all() and idx["crs"].isna().all()
    pid = "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_26_57"
    assert idx.loc[pid, "date_s2"] == "2017-06-13" and idx.loc[pid, "date_s1"] == "2017-06-12"
    assert idx.loc["S2A_MSIL2A_20180413T95032_90_7", "date_s2"] == "2018-04-13"


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_bigearthnet_pixels(ben_store, shared_data):
    pid = "S2B_MSIL2A_20170906T101019_82_41"
    i = int(ben_store.index.index[ben_store.index["chip_id"] == pid][0])
    d = shared_data / "bigearthnet" / "BigEarthNet-S2" / "S2B_MSIL2A_20170906T101019" / pid
    with rasterio.open(d / f"{pid}_B04.tif") as f:
        b04 = f.read(1)
    with rasterio.open(d / f"{pid}_B8A.tif") as f:
        b8a = f.read(1).astype(float)
    np.testing.assert_array_equal(ben_store.read("s2", i, bands=["B04"])[0], b04)  # 10 m: unchanged
    up = ben_store.read("s2", i, bands=["B8A"])[0].astype(float)
    assert up.shape == (120, 120) and abs(up.mean() - b8a.mean()) < 0.01 * b8a.mean()
    # bilinear keeps pixel centres: each 2x2 block averages back close to its 20 m source pixel
    assert np.abs(up.reshape(60, 2, 60, 2).mean(axis=(1, 3)) - b8a).mean() < 0.1 * b8a.std()
    s1 = ben_store.read("s1", i)
    assert s1.dtype == np.float32 and s1.min() > -60 and s1.max() < 30


def test_bigearthnet_missing_s1_and_s2_band(shared_data, tmp_path):
    ben = shared_data / "bigearthnet"
    meta = pd.read_parquet(ben / "metadata.parquet").iloc[[24, 25, 26]]
    src = tmp_path / "ben"
    for row in meta.itertuples():
        s2 = Path("BigEarthNet-S2") / row.patch_id.rsplit("_", 2)[0] / row.patch_id
        s1 = Path("BigEarthNet-S1") / "_".join(row.s1_name.split("_")[:5]) / row.s1_name
        for d in (s2, s1):
            shutil.copytree(ben / d, src / d)
    meta.to_parquet(src / "metadata.parquet")
    no_s1, no_band = meta.iloc[0], meta.iloc[1]
    shutil.rmtree(src / "BigEarthNet-S1" / "_".join(no_s1.s1_name.split("_")[:5]) / no_s1.s1_name)
    band = next((src / "BigEarthNet-S2").glob(f"*/{no_band.patch_id}/{no_band.patch_id}_B11.tif"))
    band.unlink()
    store = ingest_bigearthnet(src, tmp_path / "store")
    idx = store.index.set_index("chip_id")
    assert list(idx.index) == [no_s1.patch_id, meta.iloc[2].patch_id]
    assert not idx.loc[no_s1.patch_id, "has_s1"] and idx.loc[meta.iloc[2].patch_id, "has_s1"]
    assert np.isnan(store.read("s1", 0)).all()
    rep = {s["item"]: s["reason"] for s in store.report()["skipped"]}
    assert any(no_s1.s1_name in k and "kept without s1" in v for k, v in rep.items())
    assert any(str(band) in v and "file not found" in v for v in rep.values())


def test_bigearthnet_without_metadata_is_a_clear_error(tmp_path):
    (tmp_path / "BigEarthNet-S2").mkdir()
    with pytest.raises(IngestError, match="metadata.parquet: BigEarthNet metadata not found"):
        ingest_bigearthnet(tmp_path, tmp_path / "store")


# --- Sen1Floods11 --------------------------------------------------------------------------------------


def test_sen1floods11_sample(floods_store, shared_data):
    info = floods_store.info()
    assert info["chips"] == 64 and info["georeferenced"] == 64
    assert info["modalities"]["s2"]["num_bands"] == 13 and info["modalities"]["s1"]["num_bands"] == 2
    wf = floods_store.index["water_fraction"]
    assert wf.between(0, 1).all() and 0 < wf.mean() < 1
    sf = shared_data / "sen1floods11"
    with rasterio.open(sf / "LabelHand" / "Spain_7370579_LabelHand.tif") as f:
        label = f.read(1)
    with rasterio.open(sf / "S2Hand" / "Spain_7370579_S2Hand.tif") as f:
        s2 = f.read()
        bounds, px = f.bounds, f.transform.a
    masks = floods_store.read_mask("water_mask", slice(None))
    assert masks.dtype == np.int16
    assert (masks == -1).sum() == (label == -1).sum() == 99  # nodata kept as -1, not turned into a class
    idx = floods_store.index.set_index("chip_id")
    i = int(idx.loc["Spain_7370579_2_5", "idx"])
    tile = label[128:192, 320:384]
    np.testing.assert_array_equal(masks[i], tile)
    assert idx.loc["Spain_7370579_2_5", "water_fraction"] == pytest.approx((tile == 1).sum() / (tile != -1).sum())
    np.testing.assert_array_equal(floods_store.read("s2", i, bands=["B8A"])[0], s2[8, 128:192, 320:384])
    g = idx.loc["Spain_7370579_2_5"].geometry
    assert g.bounds[0] == pytest.approx(bounds.left + 320 * px, abs=1e-9)
    assert idx.geometry.union_all().bounds == pytest.approx(tuple(bounds), abs=1e-9)


def test_sen1floods11_drops_edge_tiles(shared_data, tmp_path):
    store = ingest_sen1floods11(shared_data / "sen1floods11", tmp_path / "s", chip_size=200)
    assert len(store) == 4 and store.chip_size == 200
    assert sorted(store.index["chip_id"]) == [f"Spain_7370579_{i}_{j}" for i in (0, 1) for j in (0, 1)]


def _write(path: Path, data: np.ndarray, transform, descriptions=None, nodata=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(
        path, "w", driver="GTiff", height=data.shape[1], width=data.shape[2], count=data.shape[0],
        dtype=data.dtype, crs="EPSG:4326", transform=transform, nodata=nodata,
    ) as f:
        f.write(data)
        for k, d in enumerate(descriptions or []):
            f.set_band_description(k + 1, d)


def _scene(root: Path, scene: str, label_shift: float = 0.0, s2_names=None) -> None:
    from rasterio.transform import from_origin

    t = from_origin(10.0, 50.0, 0.0001, 0.0001)
    rng = np.random.default_rng(0)
    names = s2_names or ["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12"]
    _write(root / "S2Hand" / f"{scene}_S2Hand.tif", rng.integers(1, 5000, (13, 32, 32)).astype("int16"), t, names, 0)
    _write(root / "S1Hand" / f"{scene}_S1Hand.tif", rng.normal(-10, 3, (2, 32, 32)).astype("float32"), t, ["VV", "VH"])
    lab = np.zeros((1, 32, 32), "int16")
    lab[0, :16] = -1  # the top chips have no valid label
    lab[0, 16:, :8] = 1
    _write(root / "LabelHand" / f"{scene}_LabelHand.tif", lab, from_origin(10.0 + label_shift, 50.0, 0.0001, 0.0001))


def test_sen1floods11_grid_and_band_mismatch_name_the_files(tmp_path):
    _scene(tmp_path / "a", "X_1", label_shift=0.01)
    with pytest.raises(IngestError, match=r"X_1_LabelHand.tif and .*X_1_S2Hand.tif.*not on the same grid"):
        ingest_sen1floods11(tmp_path / "a", tmp_path / "sa", chip_size=16)
    swapped = ["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B9", "B8A", "B10", "B11", "B12"]
    _scene(tmp_path / "b", "X_2", s2_names=[*swapped[:-1], "B13"])
    with pytest.raises(IngestError, match=r"X_2_S2Hand.tif: band descriptions"):
        ingest_sen1floods11(tmp_path / "b", tmp_path / "sb", chip_size=16)


def test_sen1floods11_synthetic_split_reorder_and_empty_labels(tmp_path):
    root = tmp_path / "v1.1" / "data" / "flood_events" / "HandLabeled"
    swapped = ["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B9", "B8A", "B10", "B11", "B12"]
    _scene(root, "X_1", s2_names=swapped)  # B9 before B8A in the file: reordered by description
    _scene(root, "X_2")
    _scene(root, "X_3")  # not in the split files: kept, unassigned
    (root / "S1Hand" / "X_2_S1Hand.tif").unlink()
    splits = tmp_path / "v1.1" / "splits" / "flood_handlabeled"
    splits.mkdir(parents=True)
    (splits / "flood_train_data.csv").write_text("X_1_S1Hand.tif,X_1_LabelHand.tif\n")
    (splits / "flood_test_data.csv").write_text("X_2_S1Hand.tif,X_2_LabelHand.tif\n")
    store = ingest_sen1floods11(root, tmp_path / "st", chip_size=16)
    idx = store.index.set_index("chip_id")
    assert len(store) == 12
    assert (idx.loc[idx.aoi == "X_1", "split"] == "train").all() and (idx.loc[idx.aoi == "X_2", "split"] == "test").all()
    assert (idx.loc[idx.aoi == "X_3", "split"] == "").all()
    assert idx.loc[idx.aoi == "X_2", "has_s1"].sum() == 0 and idx["has_s2"].all()
    assert pd.isna(idx.loc["X_1_0_0", "water_fraction"]) and not idx.loc["X_1_0_0", "has_mask_water_mask"]
    assert idx.loc["X_1_1_0", "water_fraction"] == pytest.approx(0.5)
    assert idx.loc["X_1_1_1", "water_fraction"] == 0.0
    with rasterio.open(root / "S2Hand" / "X_1_S2Hand.tif") as f:
        raw = f.read()
    i = int(idx.loc["X_1_1_1", "idx"])
    np.testing.assert_array_equal(store.read("s2", i, bands=["B8A", "B09"]), raw[[9, 8], 16:32, 16:32])
    assert any("X_2 S1Hand" in s["item"] for s in store.report()["skipped"])


def test_sen1floods11_interrupted_ingest_resumes(shared_data, tmp_path, monkeypatch):
    from earthembed.data.ingest import sen1floods11 as mod

    real, calls, done = mod.footprint_wgs84, [], []

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 7 and not done:
            done.append(True)
            raise Interrupt
        return real(*a, **k)

    monkeypatch.setattr(mod, "footprint_wgs84", flaky)
    with pytest.raises(Interrupt):
        ingest_sen1floods11(shared_data / "sen1floods11", tmp_path / "st", chip_size=128, batch_size=4)
    calls.clear()
    store = ingest_sen1floods11(shared_data / "sen1floods11", tmp_path / "st", chip_size=128, batch_size=4)
    assert len(calls) == 10  # 6 chips were committed (a batch of 4 + the buffer flushed on the interrupt)
    assert len(store) == 16 and store.index["chip_id"].is_unique
