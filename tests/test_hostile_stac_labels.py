"""STAC catalogues and label files that lie or say nothing useful: the rasters are trusted over the metadata, and
every refusal is one line naming the file/item/option and the cause, with nothing written (issue 20).

The catalogue is the one of ``test_ingest_stac`` (S2 L2A items in UTM 33N, an S1 item, a DEM), rewritten per case;
the labels are points on a 32-chip synthetic store.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pystac
import pytest
import shapely

from earthembed.data.chipgeo import chip_frames
from earthembed.data.ingest.stac import StacWarning, ingest_stac
from earthembed.data.store import ChipStore
from earthembed.data.synth import generate_synthetic_aoi
from earthembed.embed.io import write_embedding_table
from earthembed.errors import IngestError
from earthembed.evaluate.label_join import join_labels, read_label_file
from earthembed.evaluate.tasks import load_task
from test_hostile_inputs import cli, one_line_error
from test_ingest_stac import CRS, PRODUCTS, S2_ASSET_ALIASES, S2_BANDS, _cog, _item, make_catalog

COLLS = ["s2-l2a", "s1-grd"]


# == STAC ==================================================================================================
@pytest.fixture(scope="module")
def stac_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("stac")
    make_catalog(root / "cat")
    return root / "cat"


def _copy(src_root: Path, dst: Path, edit) -> Path:
    """A copy of the catalogue (COGs shared) whose items are changed by ``edit(item)``; its catalog.json."""
    shutil.copytree(src_root / "catalog", dst / "catalog")
    cat = pystac.read_file(str(dst / "catalog" / "catalog.json"))
    for it in cat.get_items(recursive=True):
        for a in it.assets.values():  # absolute hrefs to the original COGs
            a.href = str(src_root / Path(a.href).name)
        edit(it)
    cat.normalize_hrefs(str(dst / "catalog"))
    cat.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    return dst / "catalog" / "catalog.json"


def _truth_bbox(stac_root: Path) -> list[float]:
    s2 = pystac.read_file(str(stac_root / "catalog" / "catalog.json"))
    return next(it.bbox for it in s2.get_items(recursive=True) if it.id == "S2_full")


@pytest.fixture(scope="module")
def reference(stac_root, tmp_path_factory) -> ChipStore:
    """The store the correct catalogue gives (S2 + S1, 16 px chips, the S2 tile's bbox)."""
    return ingest_stac(stac_root / "catalog" / "catalog.json", COLLS, tmp_path_factory.mktemp("ref") / "store",
                       PRODUCTS, chip_size=16, bbox=_truth_bbox(stac_root))


def _same_store(a: ChipStore, b: ChipStore) -> None:
    cols = ["chip_id", "crs", "split", "date_s2", "date_s1", "has_s2", "has_s1"]
    pd.testing.assert_frame_equal(pd.DataFrame(a.index[cols]), pd.DataFrame(b.index[cols]))
    np.testing.assert_array_equal(np.stack(a.index["transform"]), np.stack(b.index["transform"]))
    for k in ("s2", "s1"):
        np.testing.assert_array_equal(a.read(k, slice(0, len(a))), b.read(k, slice(0, len(b))))


@pytest.mark.parametrize("claim", ["EPSG:32632", "EPSG:4326"])
def test_items_whose_proj_crs_disagrees_with_their_assets_give_the_store_of_correct_metadata(
        stac_root, reference, tmp_path, claim):
    """The wrong UTM zone (32N for assets in 33N) built the grid in the wrong zone (30 distorted chips instead of
    16); EPSG:4326 on UTM assets was taken for a geographic grid ("pass --resolution in degrees")."""
    def lie(it):
        if it.collection_id in COLLS:
            it.properties["proj:code"] = claim

    cat = _copy(stac_root, tmp_path, lie)
    with pytest.warns(StacWarning) as record:
        st = ingest_stac(cat, COLLS, tmp_path / "store", PRODUCTS, chip_size=16, bbox=_truth_bbox(stac_root))
    assert len(st) == len(reference) == 16
    _same_store(st, reference)
    msgs = [str(w.message) for w in record if issubclass(w.category, StacWarning)]
    for item in ("S2_full", "S2_clear_left", "S1_a"):  # each item named once, with both CRSs
        [m] = [m for m in msgs if m.startswith(f"item {item} ")]
        assert f"proj:code says {claim}" in m and "is in EPSG:32633" in m, m
    report = json.loads((st.path / "ingest_report.json").read_text())
    assert report["n_warnings"] == 3 and report["n_skipped"] == 0
    assert {(w["item"], w["declared"], w["asset_crs"]) for w in report["warnings"]} == {
        (i, claim, CRS) for i in ("S2_full", "S2_clear_left", "S1_a")}


def test_proj_crs_disagreement_through_the_cli_exits_0_with_the_report(stac_root, reference, tmp_path):
    def lie(it):
        if it.collection_id == "s2-l2a":
            it.properties["proj:code"] = "EPSG:4326"

    cat = _copy(stac_root, tmp_path, lie)
    r = cli("ingest", "stac", "--catalog", cat, "--collections", ",".join(COLLS), "--modality", "s2_l2a,s1_grd_db",
            "--bbox", ",".join(map(str, _truth_bbox(stac_root))), "--chip-size", 16, "--out", tmp_path / "store", "-q")
    assert r.exit_code == 0, r.output
    st = ChipStore(tmp_path / "store")
    _same_store(st, reference)
    assert {w["item"] for w in st.report()["warnings"]} == {"S2_full", "S2_clear_left"}
    warned = [line for line in r.output.splitlines() if line.startswith("warning: ")]  # one line each, no Python
    assert len(warned) == 2 and all("S2_" in w for w in warned) and "StacWarning" not in r.output, r.output


def _move(it, dlon: float) -> None:
    """Shift an item's geometry and bbox by ``dlon`` degrees (its assets stay where they are)."""
    it.bbox = [it.bbox[0] + dlon, it.bbox[1], it.bbox[2] + dlon, it.bbox[3]]
    it.geometry = shapely.geometry.mapping(shapely.affinity.translate(shapely.geometry.shape(it.geometry), dlon))


def test_item_geometry_away_from_its_assets_names_the_items_instead_of_no_chip_was_ingested(stac_root, tmp_path):
    cat = _copy(stac_root, tmp_path, lambda it: _move(it, 2.0) if it.collection_id == "s2-l2a" else None)
    b = _truth_bbox(stac_root)
    where = ",".join(str(v) for v in (b[0] + 2.0, b[1], b[2] + 2.0, b[3]))  # where the geometries say
    r = cli("ingest", "stac", "--catalog", cat, "--collections", "s2-l2a", "--modality", "s2_l2a", "--bbox", where,
            "--chip-size", 16, "--out", tmp_path / "store", "-q")
    one_line_error(r, "collection 's2-l2a': no item's assets overlap --bbox", "item S2_full's assets cover",
                   "item S2_clear_left's assets cover", "but its geometry says")
    assert not (tmp_path / "store").exists()


def test_an_item_geometry_away_from_its_assets_is_warned_and_its_rasters_used(stac_root, tmp_path):
    """Without --bbox the grid is the items' extent: an item whose geometry is elsewhere counts where its rasters
    are, so the store equals the one of the correct catalogue."""
    good = ingest_stac(stac_root / "catalog" / "catalog.json", ["s2-l2a"], tmp_path / "good", PRODUCTS, chip_size=16)
    cat = _copy(stac_root, tmp_path, lambda it: _move(it, 2.0) if it.id == "S2_clear_left" else None)
    with pytest.warns(StacWarning, match=r"item S2_clear_left of collection 's2-l2a': its geometry's bbox \[.*\] "
                                         r"does not overlap its assets, which cover"):
        st = ingest_stac(cat, ["s2-l2a"], tmp_path / "store", PRODUCTS, chip_size=16)
    assert len(st) == len(good) == 16
    np.testing.assert_array_equal(st.read("s2", slice(0, 16)), good.read("s2", slice(0, 16)))
    assert st.index["date_s2"].eq("2023-07-11").sum() == good.index["date_s2"].eq("2023-07-11").sum() >= 2
    assert [w["kind"] for w in st.report()["warnings"]] == ["geometry"]


def test_an_item_whose_assets_lie_outside_the_bbox_is_a_reported_skip(stac_root, reference, tmp_path):
    """A third S2 item claims the tile's geometry but its rasters are 50 km east: skipped with the reason (in
    ingest_report.json and the CLI's summary); the other items give the reference store."""
    from rasterio.transform import from_origin

    far = from_origin(550_000.0, 5_300_000.0, 10, 10)
    data = np.full((12, 16, 16), 500, "uint16")

    def add_far(it):
        if it.id != "S2_full":
            return
        coll = it.get_parent()
        twin = _item(pystac, "S2_far", it.datetime, list(it.bbox), CRS, 1.0)
        for k, band in enumerate(S2_BANDS):
            key = S2_ASSET_ALIASES[band][0]
            href = _cog(tmp_path / f"far_{key}.tif", data[k : k + 1], CRS, far, nodata=0)
            twin.add_asset(key, pystac.Asset(href, media_type=pystac.MediaType.COG, roles=["data"]))
        coll.add_item(twin)

    cat = _copy(stac_root, tmp_path, add_far)
    bbox = _truth_bbox(stac_root)
    r = cli("ingest", "stac", "--catalog", cat, "--collections", ",".join(COLLS), "--modality", "s2_l2a,s1_grd_db",
            "--bbox", ",".join(map(str, bbox)), "--chip-size", 16, "--out", tmp_path / "store", "-q")
    assert r.exit_code == 0, r.output
    assert "item S2_far of collection 's2-l2a': its assets cover" in r.output and "outside --bbox" in r.output
    st = ChipStore(tmp_path / "store")
    _same_store(st, reference)
    [skip] = st.report()["skipped"]
    assert skip["item"] == "item S2_far"
    cover = [float(v) for v in skip["reason"].split("its assets cover [")[1].split("]")[0].split(", ")]
    assert bbox[2] < cover[0] < cover[2] < bbox[2] + 1  # in lon/lat (not metres), east of the bbox


def test_a_whole_world_bbox_is_refused_with_the_number_of_chips_before_searching(stac_root, tmp_path):
    r = cli("ingest", "stac", "--catalog", stac_root / "catalog" / "catalog.json", "--collections", "s2-l2a",
            "--modality", "s2_l2a", "--bbox=-180,-90,180,90", "--chip-size", 16, "--out", tmp_path / "store")
    one_line_error(r, "--bbox [-180.0000, -90.0000, 180.0000, 90.0000]: about 19,92", "chips of 16 px at 10 m",
                   "more than the 1,000,000", "nothing was searched or written", "--chip-size")
    assert not (tmp_path / "store").exists()


def test_the_grid_is_counted_exactly_once_known(stac_root, tmp_path):
    cat = stac_root / "catalog" / "catalog.json"
    with pytest.raises(IngestError, match=r"--bbox .*: about 1\d chips of 16 px .* more than the 3 "):
        ingest_stac(cat, ["s2-l2a"], tmp_path / "a", PRODUCTS, chip_size=16, bbox=_truth_bbox(stac_root), max_chips=3)
    # no --bbox: only the grid of the items' extent says how large it is (4 x 4 chips)
    with pytest.raises(IngestError, match=r"the items' extent .* \(no --bbox given\): 16 chips of 16 px at 10 m, a "
                                          r"grid of 6\d x 6\d px, more than the 15 one ingest lays out; nothing was written"):
        ingest_stac(cat, ["s2-l2a"], tmp_path / "b", PRODUCTS, chip_size=16, max_chips=15)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert len(ingest_stac(cat, ["s2-l2a"], tmp_path / "c", PRODUCTS, chip_size=16, max_chips=16)) == 16


# == labels ==================================================================================================
@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """A 32-chip synthetic store, a random embedding table of it and the chip centres (store CRS)."""
    root = tmp_path_factory.mktemp("labels")
    st = generate_synthetic_aoi(root / "store", chips=32, chip_size=16, batch_size=16)
    rng = np.random.default_rng(0)
    emb = write_embedding_table(root / "emb.parquet", st.index["chip_id"].to_numpy(),
                                {"emb_fused": rng.normal(size=(len(st), 8)).astype("float32")})
    fr = chip_frames(st.index, st.chip_size)
    centres = [shapely.Point(x, y) for x, y in zip((fr["left"] + fr["right"]) / 2, (fr["bottom"] + fr["top"]) / 2,
                                                    strict=True)]
    return st, Path(emb), centres, fr["crs"].iloc[0]


def _predict(labelled, gpkg: Path, task: str, out: Path):
    st, emb, _, _ = labelled
    return cli("predict", "--embeddings", emb, "--store", st.path, "--task", task, "--labels", gpkg, "--out", out)


def test_a_geopackage_without_features_says_so(labelled, tmp_path):
    _, _, _, crs = labelled
    gpd.GeoDataFrame({"lc": pd.Series([], dtype=str)}, geometry=gpd.GeoSeries([], crs=crs)).to_file(
        tmp_path / "empty.gpkg", layer="field_points")
    r = _predict(labelled, tmp_path / "empty.gpkg", "lc", tmp_path / "p.parquet")
    one_line_error(r, "empty.gpkg (layer 'field_points', column 'lc'): layer 'field_points' has no features (0 rows)")
    assert "no label falls" not in r.output and not (tmp_path / "p.parquet").exists()


def test_points_that_all_conflict_are_not_reported_as_outside(labelled, tmp_path):
    _, _, centres, crs = labelled
    pts = centres[:6] * 2  # two points on each of 6 chips, one "forest" and one "water": every chip a tie
    gpd.GeoDataFrame({"lc": ["forest"] * 6 + ["water"] * 6}, geometry=pts, crs=crs).to_file(tmp_path / "conf.gpkg")
    r = _predict(labelled, tmp_path / "conf.gpkg", "lc", tmp_path / "p.parquet")
    one_line_error(r, "conf.gpkg (layer 'conf', column 'lc'): every chip a label falls on has tied conflicting labels",
                   "6 chip(s) from 12 of 12 features", "forest, water")
    assert "no label falls" not in r.output and not (tmp_path / "p.parquet").exists()


def test_labels_outside_the_store_still_say_so_with_counts(labelled, tmp_path):
    _, _, centres, crs = labelled
    gpd.GeoDataFrame({"lc": ["a", "b", None]}, geometry=[shapely.affinity.translate(p, 1e6) for p in centres[:3]],
                     crs=crs).to_parquet(tmp_path / "away.parquet")
    r = _predict(labelled, tmp_path / "away.parquet", "lc", tmp_path / "p.parquet")
    one_line_error(r, "away.parquet (column 'lc'): no label falls on a chip of the store: of 3 features, 2 outside "
                      "every chip, 1 without a value")


def test_points_without_any_value_say_so(labelled, tmp_path):
    _, _, centres, crs = labelled
    gpd.GeoDataFrame({"h": [np.nan] * 4}, geometry=centres[:4], crs=crs).to_file(tmp_path / "nan.gpkg")
    one_line_error(_predict(labelled, tmp_path / "nan.gpkg", "h", tmp_path / "p.parquet"),
                   "nan.gpkg (layer 'nan', column 'h'): none of its 4 features has a value")


def test_infinite_label_values_in_a_geopackage_are_counted_and_named(labelled, tmp_path):
    _, _, centres, crs = labelled
    v = np.linspace(0.0, 5.0, 12)
    v[[2, 7]] = [np.inf, -np.inf]
    gpd.GeoDataFrame({"height": v}, geometry=centres[:12], crs=crs).to_file(tmp_path / "h.gpkg")
    r = _predict(labelled, tmp_path / "h.gpkg", "height", tmp_path / "p.parquet")
    one_line_error(r, "h.gpkg (layer 'h', column 'height'): 2 of 12 features have an infinite value (#2 (+inf), "
                      "#7 (-inf))")
    assert "Input y" not in r.output and not (tmp_path / "p.parquet").exists()
    # the Python API says the same
    with pytest.raises(ValueError, match=r"h.gpkg \(layer 'h', column 'height'\): 2 of 12"):
        join_labels(read_label_file(tmp_path / "h.gpkg", "height"), "height", labelled[0].index, 16,
                    what=str(tmp_path / "h.gpkg"))


@pytest.fixture
def inf_store(labelled, tmp_path) -> Path:
    """The store with frac_water = inf on 3 chips and null on 2 (null is a missing label, inf a broken one)."""
    st = Path(shutil.copytree(labelled[0].path, tmp_path / "store"))
    idx = gpd.read_parquet(st / "index.parquet")
    idx.loc[[0, 5, 9], "frac_water"] = [np.inf, -np.inf, np.inf]
    idx.loc[[1, 2], "frac_water"] = np.nan
    idx.to_parquet(st / "index.parquet")
    return st


def test_infinite_values_in_a_store_label_column_are_an_error_for_predict_and_fewshot(labelled, inf_store, tmp_path):
    _, emb, _, _ = labelled
    r = cli("predict", "--embeddings", emb, "--store", inf_store, "--task", "frac_water", "--out", tmp_path / "p.parquet")
    one_line_error(r, f"{inf_store / 'index.parquet'}: label column 'frac_water' has an infinite value on 3 of 32 chips",
                   "synth_r0000_c0000")
    assert not (tmp_path / "p.parquet").exists()
    r = cli("fewshot", "--embeddings", f"e={emb}", "--store", inf_store, "--task", "frac_water", "--baselines", "none",
            "--seeds", 1, "--out", tmp_path / "fs", "-q")
    one_line_error(r, "label column 'frac_water' has an infinite value on 3 of 32 chips")
    assert not (tmp_path / "fs").exists() or not any((tmp_path / "fs").iterdir())


def test_null_store_labels_stay_missing_and_counted(inf_store):
    idx = gpd.read_parquet(inf_store / "index.parquet")
    idx.loc[[0, 5, 9], "frac_water"] = 0.5
    idx.to_parquet(inf_store / "index.parquet")
    t = load_task(inf_store, "frac_water")
    assert len(t) == 30 and t.n_dropped == 2 and np.isfinite(t.y).all()
