"""predict (store labels, points and polygons in another CRS) and map (COG properties read back)."""

from __future__ import annotations

import json

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
import shapely

from aoi_helpers import band_stat_embeddings
from earthembed.data.chipgeo import chip_frames, read_chip_table
from earthembed.data.synth import generate_synthetic_aoi
from earthembed.evaluate.label_join import join_labels
from earthembed.evaluate.predict import predict_chips
from earthembed.explore.maps import CLASS_NODATA, write_map


@pytest.fixture(scope="module")
def aoi(tmp_path_factory):
    root = tmp_path_factory.mktemp("aoi")
    store = generate_synthetic_aoi(root / "store", chips=144, chip_size=16, seed=1)
    emb = band_stat_embeddings(root / "store", root / "emb.parquet")
    return root, store, emb


def _points(store, n: int, seed: int = 0) -> gpd.GeoDataFrame:
    """Chip centres with the store's land cover, in Web Mercator (another CRS than the store's UTM 33N)."""
    idx = store.index
    rows = np.random.default_rng(seed).choice(len(idx) - 1, n, replace=False)
    pts = [idx.geometry.iloc[i].centroid for i in rows]
    return gpd.GeoDataFrame({"landcover": idx["landcover"].iloc[rows].to_numpy()}, geometry=pts, crs=4326).to_crs(3857)


def test_predict_from_points_in_another_crs(aoi, tmp_path):
    root, store, emb = aoi
    pts = _points(store, 60)
    far = gpd.GeoDataFrame({"landcover": ["water"]}, geometry=[shapely.Point(0, 0)], crs=3857)  # off the AOI
    pd.concat([pts, far], ignore_index=True).to_file(tmp_path / "points.gpkg", layer="labels")
    from typer.testing import CliRunner

    from earthembed.cli import app

    out = tmp_path / "pred.parquet"
    r = CliRunner().invoke(app, ["predict", "--embeddings", str(emb), "--store", str(store.path), "--task",
                                 "landcover", "--labels", str(tmp_path / "points.gpkg"), "--estimator", "logreg",
                                 "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "1 outside every chip of the store (not used): #60" in r.output
    df, meta = read_chip_table(out)
    assert meta["n_train"] == 60 and meta["label_report"]["n_outside"] == 1
    assert meta["label_report"]["outside"][0]["feature"] == 60
    assert len(df) == len(store) - 1 and meta["n_no_embedding"] == 1  # the chip without an embedding
    probs = df[[f"prob_{c}" for c in meta["classes"]]].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    assert (df["landcover"].to_numpy() == np.asarray(meta["classes"])[probs.argmax(axis=1)]).all()
    truth = store.index.set_index("chip_id")["landcover"]
    acc = (df["landcover"].to_numpy() == truth.loc[df["chip_id"]].to_numpy()).mean()
    assert acc > 0.6, acc
    assert df["labelled"].sum() == 60 and (df.loc[df["labelled"], "label"] == truth.loc[df.loc[df["labelled"], "chip_id"]].to_numpy()).all()
    assert {"crs", "transform", "geometry"} <= set(df.columns)


def test_label_join_edges_polygons_and_conflicts(aoi):
    _, store, _ = aoi
    idx = store.index
    fr = chip_frames(idx, store.chip_size)
    a, b = fr.iloc[0], fr.iloc[1]  # two neighbours in a row: a's right edge is b's left edge
    edge = shapely.Point(a["right"], (a["top"] + a["bottom"]) / 2)
    centre_a = shapely.Point((a["left"] + a["right"]) / 2, (a["top"] + a["bottom"]) / 2)
    labels = gpd.GeoDataFrame({"lc": ["water", "forest", "water"]}, geometry=[edge, centre_a, centre_a], crs="EPSG:32633")
    j = join_labels(labels, "lc", idx, store.chip_size)
    assert j.report["n_multi_chip"] == 1 and sorted(j.report["multi_chip"][0]["chips"]) == sorted(idx["chip_id"].iloc[:2])
    # the edge point went to one chip (a or b); chip a has 2 water vs 1 forest, or 1 vs 1 (a tie: reported)
    assert j.report["n_conflicts"] + len(j.values) >= 1
    # polygons: one covers chips 0 and 1 fully, one covers 10% of chip 2 (too small), one is far away
    c = fr.iloc[2]
    big = shapely.box(a["left"], a["bottom"], b["right"], b["top"])
    small = shapely.box(c["left"], c["bottom"], c["left"] + 0.1 * (c["right"] - c["left"]), c["top"])
    far = shapely.box(0, 0, 10, 10)
    polys = gpd.GeoDataFrame({"frac": [0.7, 0.2, 0.5]}, geometry=[big, small, far], crs="EPSG:32633").to_crs(4326)
    j = join_labels(polys, "frac", idx, store.chip_size)
    assert j.kind == "fraction"
    assert sorted(j.values.index) == sorted(idx["chip_id"].iloc[:2]) and np.allclose(j.values.to_numpy(), 0.7, atol=1e-9)
    assert j.report["n_too_small"] == 1 and j.report["too_small"][0]["feature"] == 1
    assert j.report["n_outside"] == 1 and j.report["outside"][0]["feature"] == 2


def test_predict_store_fraction_and_bad_input(aoi, tmp_path):
    _, store, emb = aoi
    res = predict_chips(emb, store, "frac_water", tmp_path / "f.parquet", estimator="rf", max_labels=40)
    df, meta = read_chip_table(res.path)
    assert meta["n_train"] == 40 and meta["kind"] == "regression"
    assert df["frac_water"].between(0, 1).all()
    with pytest.raises(ValueError, match="not available for regression"):
        predict_chips(emb, store, "frac_water", tmp_path / "x.parquet", estimator="logreg")
    pts = _points(store, 5)
    pts.to_file(tmp_path / "p.gpkg")
    with pytest.raises(KeyError, match=r"p.gpkg: no label column 'water'"):
        predict_chips(emb, store, "water", tmp_path / "x.parquet", labels=tmp_path / "p.gpkg")
    pts.set_crs(None, allow_override=True).to_file(tmp_path / "nocrs.gpkg")
    with pytest.raises(ValueError, match="nocrs.gpkg: labels have no CRS"):
        predict_chips(emb, store, "landcover", tmp_path / "x.parquet", labels=tmp_path / "nocrs.gpkg")
    pts.set_geometry(pts.geometry.translate(5e6, 0)).to_file(tmp_path / "away.gpkg")
    with pytest.raises(ValueError, match="no label falls on a chip"):
        predict_chips(emb, store, "landcover", tmp_path / "x.parquet", labels=tmp_path / "away.gpkg")
    assert not (tmp_path / "x.parquet").exists()


def test_map_cog_properties(aoi, tmp_path):
    root, store, emb = aoi
    pred = predict_chips(emb, store, "landcover", tmp_path / "pred.parquet", estimator="knn").path
    [tif] = write_map(pred, "landcover", tmp_path / "lc.tif")
    fr = chip_frames(store.index, store.chip_size)
    with rasterio.open(tif) as ds:
        assert ds.crs.to_epsg() == 32633 and ds.count == 1 and ds.dtypes[0] == "uint8" and ds.nodata == CLASS_NODATA
        assert ds.transform.a == 10 and ds.transform.e == -10  # native pixels (small AOI)
        assert (ds.transform.c, ds.transform.f) == (fr["left"].min(), fr["top"].max())
        assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG" and ds.block_shapes[0] == (256, 256)
        assert ds.overviews(1), "a COG needs overviews"
        classes = json.loads(ds.tags()["earthembed_classes"])
        assert ds.colormap(1)[classes.index("water")][:3] == (0, 100, 200)
        a = ds.read(1)
        df, _ = read_chip_table(pred)
        pos = df.set_index("chip_id")["landcover"]
        for i in (0, 5, 77):
            row = fr.iloc[i]
            r, c = ds.index((row["left"] + row["right"]) / 2, (row["bottom"] + row["top"]) / 2)
            assert classes[a[r, c]] == pos[store.index["chip_id"].iloc[i]]
        last = fr.iloc[-1]  # the chip without an embedding is not predicted: nodata there
        r, c = ds.index((last["left"] + last["right"]) / 2, (last["bottom"] + last["top"]) / 2)
        assert a[r, c] == CLASS_NODATA
    assert tif.with_suffix(".png").stat().st_size > 1000
    [p] = write_map(pred, "prob_water", tmp_path / "pw.tif")
    with rasterio.open(p) as ds:
        assert ds.dtypes[0] == "float32" and np.isnan(ds.nodata)
        v = ds.read(1)
        assert np.nanmin(v) >= 0 and np.nanmax(v) <= 1 and np.isnan(v).any()
    [p] = write_map(emb, "emb_fused", tmp_path / "pca.tif", store=store.path)
    with rasterio.open(p) as ds:
        assert ds.count == 3 and ds.dtypes[0] == "uint8" and ds.nodata == 0 and "PCA" in ds.tags()["earthembed_note"]
    with pytest.raises(ValueError, match="'classes_present' holds lists, not numbers"):
        write_map(store.path, "classes_present", tmp_path / "bad.tif")
    with pytest.raises(ValueError, match="'chip_id' is not numeric and has 143 distinct values, one per chip"):
        write_map(pred, "chip_id", tmp_path / "bad.tif")
    with pytest.raises(KeyError, match="no column 'nope'"):
        write_map(pred, "nope", tmp_path / "bad.tif")
    assert not list(tmp_path.glob("bad*"))


def test_map_several_crs(tmp_path):
    """Chips in two UTM zones: one COG per CRS by default, one reprojected COG with crs=."""
    from rasterio.transform import from_origin

    from earthembed.data.ingest.common import footprint_wgs84
    from earthembed.data.modalities import get_modality
    from earthembed.data.store import ChipRecord, StoreWriter

    schema = {"frac_water": {"kind": "fraction"}}
    with StoreWriter(tmp_path / "st", [get_modality("rgb")], 8, schema) as w:
        for zone, x0 in ((32632, 700_000.0), (32633, 300_000.0)):
            for i in range(4):
                t = from_origin(x0 + 80 * (i % 2), 5_300_000.0 - 80 * (i // 2), 10, 10)
                w.add(ChipRecord(f"z{zone}_{i}", {"rgb": np.full((3, 8, 8), 9, "uint8")},
                                 geometry=footprint_wgs84(f"EPSG:{zone}", t, 8, 8), crs=f"EPSG:{zone}",
                                 transform=tuple(t)[:6], labels={"frac_water": i / 4}))
    paths = write_map(tmp_path / "st", "frac_water", tmp_path / "m.tif")
    assert sorted(p.name for p in paths) == ["m_32632.tif", "m_32633.tif"] and not (tmp_path / "m.tif").exists()
    with rasterio.open(tmp_path / "m_32632.tif") as ds:
        assert ds.crs.to_epsg() == 32632 and ds.shape == (16, 16) and ds.transform.c == 700_000.0
        np.testing.assert_allclose(ds.read(1)[[0, 0, 15, 15], [0, 15, 0, 15]], [0, 0.25, 0.5, 0.75])
    [one] = write_map(tmp_path / "st", "frac_water", tmp_path / "all.tif", crs="EPSG:4326")
    with rasterio.open(one) as ds:
        assert ds.crs.to_epsg() == 4326
        v = ds.read(1)
        assert np.isfinite(v).sum() > 0 and np.isnan(v).sum() > 0  # the gap between the zones is nodata
