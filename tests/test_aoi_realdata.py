"""Real georeferenced scenes (../shared/data): Landsat-8 and NAIP through `ingest rasters` with modalities
declared in YAML; chips keep CRS + transform, labels join by location and maps land back on the scene grid."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from earthembed.data.chipgeo import chip_frames, write_chip_table
from earthembed.data.ingest.rasters import ingest_rasters
from earthembed.data.modalities import load_modalities_file
from earthembed.evaluate.label_join import join_labels
from earthembed.explore.maps import write_map

pytestmark = pytest.mark.realdata
LANDSAT = "landsat8-aoi/LC08_L1TP_224078_20200518_20200518_01_RT"


@pytest.fixture(scope="module")
def modalities():
    import importlib.resources

    return load_modalities_file(Path(str(importlib.resources.files("earthembed") / "configs" / "modalities" / "landsat_naip.yaml")))


def test_landsat_scene_chips_labels_and_map(shared_data, modalities, tmp_path):
    src = shared_data / f"{LANDSAT}.TIF"
    store = ingest_rasters({"ls8": src}, tmp_path / "ls8", 128, products={"ls8": "landsat8_oli_rgb"},
                           aoi="ls8", dates={"ls8": "2020-05-18"})
    idx = store.index
    # tiles that are all Landsat fill (DN 0, the YAML's nodata) are skipped and reported
    assert len(store) + store.meta["n_skipped"] == (1860 // 128) * (2041 // 128) and store.meta["n_skipped"] > 0
    assert store.band_names("ls8") == ["B2", "B3", "B4"]
    assert (idx["crs"] == "EPSG:32621").all() and (idx["date_ls8"] == "2020-05-18").all()
    with rasterio.open(src) as ds:
        for k in (0, 37, len(store) - 1):
            i, j = (int(v) for v in idx["chip_id"].iloc[k].split("_")[1:])
            t = ds.window_transform(Window(j * 128, i * 128, 128, 128))
            np.testing.assert_allclose(idx["transform"].iloc[k], tuple(t)[:6])  # the scene's own pixel grid
            np.testing.assert_array_equal(store.read("ls8", k), ds.read(window=Window(j * 128, i * 128, 128, 128)))
    # the scene's point and polygon labels (EPSG:32621) land on chips; nothing is silently dropped
    pts = gpd.read_file(shared_data / f"{LANDSAT}_points.gpkg")
    j = join_labels(pts, "name", idx, store.chip_size)
    r = j.report
    assert r["features_used"] + r["n_outside"] + r["n_no_value"] == len(pts) and r["features_used"] >= 1
    assert set(j.values) <= {"water", "crop", "tree", "developed"}
    polys = gpd.read_file(shared_data / f"{LANDSAT}_polygons.gpkg").to_crs(4326)  # another CRS: reprojected
    jp = join_labels(polys, "name", idx, store.chip_size, min_cover=0.01)
    assert len(jp.values) >= 1 and jp.report["features"] == len(polys)
    # per-chip values written back: the map is on the scene's grid (30 m, same origin), value per chip
    table = idx[["chip_id", "crs", "transform", "geometry"]].copy()
    table["brightness"] = store.read("ls8", slice(0, len(store))).astype(np.float64).mean(axis=(1, 2, 3))
    write_chip_table(table, tmp_path / "b.parquet", {"chip_size": store.chip_size})
    [tif] = write_map(tmp_path / "b.parquet", "brightness", tmp_path / "b.tif")
    fr = chip_frames(idx, store.chip_size)
    with rasterio.open(tif) as m, rasterio.open(src) as ds:
        assert m.crs == ds.crs and m.res == (30.0, 30.0)
        assert (m.transform.c, m.transform.f) == (ds.transform.c, ds.transform.f)
        for k in (0, 100):
            r_, c_ = m.index((fr["left"].iloc[k] + fr["right"].iloc[k]) / 2, (fr["bottom"].iloc[k] + fr["top"].iloc[k]) / 2)
            assert m.read(1)[r_, c_] == pytest.approx(table["brightness"].iloc[k], rel=1e-6)


def test_naip_dates_as_modalities(shared_data, modalities, tmp_path):
    d = shared_data / "naip-timeseries"
    files = {"n2009": d / "m_4709963_se_14_1_20090818.tif", "n2020": d / "m_4709963_se_14_1_20200831.tif"}
    store = ingest_rasters(files, tmp_path / "naip", 128, products=dict.fromkeys(files, "naip_rgbn"), aoi="naip",
                           dates={"n2009": "2009-08-18", "n2020": "2020-08-31"})
    idx = store.index
    assert len(store) + store.meta["n_skipped"] == (724 // 128) * (934 // 128)
    assert (idx["crs"] == "EPSG:26914").all() and idx["transform"].notna().all()
    assert (idx["date_n2009"] == "2009-08-18").all() and (idx["date_n2020"] == "2020-08-31").all()
    assert store.band_names("n2020") == ["R", "G", "B", "NIR"]
    a, b = store.read("n2009", 3).astype(int), store.read("n2020", 3).astype(int)
    assert not np.array_equal(a, b)  # two acquisitions of the same ground
    with pytest.raises(ValueError, match="'n2030' is not one of the modality keys"):
        ingest_rasters(files, tmp_path / "x", 128, products=dict.fromkeys(files, "naip_rgbn"), dates={"n2030": "2030-01-01"})
