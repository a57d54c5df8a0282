import json
import warnings

import numpy as np
import pytest
import rasterio
import typer
from rasterio.transform import from_origin
from rasterio.warp import Resampling, calculate_default_transform, reproject
from typer.testing import CliRunner

from earthembed.data.ingest import rasters
from earthembed.data.ingest.cli import rasters as command
from earthembed.data.ingest.common import IngestError
from earthembed.data.ingest.rasters import ingest_rasters, normalize_band_name
from earthembed.data.ingest.splits import block_size_for, block_split, block_splits
from earthembed.data.store import ChipStore

warnings.filterwarnings("ignore", category=PendingDeprecationWarning)  # affine `*` inside rasterio

UTM = "EPSG:32631"
X0, Y0 = 500000.0, 4600000.0  # s2 grid origin: 96 x 96 px at 10 m -> 3 x 3 chips of 32 px
S2_FILE_ORDER = ["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B9", "B10", "B11", "B12", "B8A"]
SQUARE = (slice(40, 56), slice(40, 56))  # bright square: inside chip (1, 1)


def _write(path, a, crs, transform, nodata=None, descriptions=None):
    with rasterio.open(
        path, "w", driver="GTiff", width=a.shape[2], height=a.shape[1], count=a.shape[0], dtype=a.dtype,
        crs=crs, transform=transform, nodata=nodata,
    ) as d:
        d.write(a)
        for i, name in enumerate(descriptions or []):
            d.set_band_description(i + 1, name)
    return path


def _s2(path, bands=13, descriptions=S2_FILE_ORDER):
    a = (np.arange(1, bands + 1, dtype=np.uint16) * 100)[:, None, None] + np.zeros((1, 96, 96), np.uint16)
    a[:, SQUARE[0], SQUARE[1]] += 5000
    a[:, 0:32, 64:96] = 0  # chip (0, 2) is nodata in s2 ...
    return _write(path, a, UTM, from_origin(X0, Y0, 10, 10), nodata=0, descriptions=descriptions)


def _s1(path):
    """VV/VH (stored VH first) in EPSG:4326 at ~20 m, covering more than the s2 tile."""
    src = np.full((2, 128, 128), -20.0, np.float32)  # 10 m UTM, origin 16 px up-left of s2
    src[:, 16 + 40 : 16 + 56, 16 + 40 : 16 + 56] = -2.0
    src[:, 0 : 16 + 40, 16 + 56 :] = np.nan  # ... and in s1 (with margin)
    src[0] -= 7.0  # band 1 = VH = VV - 7
    src_t = from_origin(X0 - 160, Y0 + 160, 10, 10)
    bounds = (X0 - 160, Y0 + 160 - 1280, X0 - 160 + 1280, Y0 + 160)
    t, w, h = calculate_default_transform(UTM, "EPSG:4326", 128, 128, *bounds, resolution=0.0002)
    dst = np.full((2, h, w), np.nan, np.float32)
    reproject(src, dst, src_transform=src_t, src_crs=UTM, dst_transform=t, dst_crs="EPSG:4326",
              src_nodata=np.nan, dst_nodata=np.nan, resampling=Resampling.nearest)
    return _write(path, dst, "EPSG:4326", t, nodata=float("nan"), descriptions=["VH", "VV"])


def _labels(path, x0=X0):
    """WorldCover codes at 20 m: water (80) left of s2 column 48, trees (10) right; rows < 16 nodata (0)."""
    a = np.full((1, 48, 48), 10, np.uint8)
    a[:, :, :24] = 80
    a[:, :8, :] = 0
    return _write(path, a, UTM, from_origin(x0, Y0, 20, 20), nodata=0)


@pytest.fixture
def aoi(tmp_path):
    return {
        "s2": _s2(tmp_path / "s2.tif"),
        "s1": _s1(tmp_path / "s1.tif"),
        "labels": _labels(tmp_path / "lc.tif"),
    }


def _ingest(aoi, out, **kw):
    return ingest_rasters({"s2": aoi["s2"], "s1": aoi["s1"]}, out, 32, labels=aoi["labels"], aoi="t", **kw)


def _row(st, chip_id):
    idx = st.index
    return int(idx.index[idx["chip_id"] == chip_id][0])


def test_grid_alignment_bands_and_labels(aoi, tmp_path):
    st = _ingest(aoi, tmp_path / "st")
    assert st.modalities["s2"].product == "s2_l1c" and st.modalities["s1"].product == "s1_grd_db"
    assert len(st) == 8  # 9 tiles, chip (0, 2) is nodata everywhere
    assert st.report()["skipped"] == [{"item": "t_0_2", "reason": "entirely nodata in every modality"}]
    idx = st.index
    assert (idx["crs"] == UTM).all() and set(idx["split"]) <= {"train", "val", "test"}
    # 3x3 tiles: blocks shrink to 1 tile (9 blocks), and train and test are both non-empty
    assert {"train", "test"} <= set(idx["split"])
    # s2 is the reference grid: read without resampling, bands reordered by description (B8A last in file)
    c = st.read("s2", _row(st, "t_1_1"))
    assert c[st.band_names("s2").index("B8A"), 0, 0] == 1300 and c[st.band_names("s2").index("B09"), 0, 0] == 900
    assert (c[:, 8:24, 8:24] >= 5100).all() and (c[:, :8] < 5000).all()
    # s1 came from EPSG:4326 at ~20 m: its bright square lands in the same chip, VV/VH reconciled by name
    for i in range(len(st)):
        s1 = st.read("s1", i)
        vv, vh = s1[0], s1[1]
        if idx.loc[i, "chip_id"] == "t_1_1":
            assert vv[11:21, 11:21].min() > -4 and np.nanmax(vv[:, :4]) < -15
        else:
            assert np.nanmax(vv) < -15
        ok = ~np.isnan(vv)
        np.testing.assert_allclose(vh[ok], vv[ok] - 7, atol=0.05)
    # chip (1, 2) lacks s1 in its upper part, chip (0, 1) keeps s2
    assert idx.loc[_row(st, "t_1_2"), "valid_s1"][0] < 1 and idx.loc[_row(st, "t_0_0"), "valid_s1"][0] == 1
    # footprints in EPSG:4326 near (3 E, 41.5 N), one chip 320 m wide
    minx, miny, maxx, maxy = idx.geometry.iloc[0].bounds
    assert 2.99 < minx < 3.01 and 41.5 < maxy < 41.6 and abs((maxx - minx) - 320 / 83400) < 2e-4
    # labels: WorldCover codes -> names, mask = class index, fractions of valid pixels match the mask
    assert st.labels["landcover_mask"]["classes"] == ["tree_cover", "water"]
    assert st.labels["landcover"]["classes"] == ["tree_cover", "water"]
    for i in range(len(st)):
        m = st.read_mask("landcover_mask", i)
        valid = m >= 0
        fw, ft = idx.loc[i, "frac_water"], idx.loc[i, "frac_tree_cover"]
        assert fw + ft == pytest.approx(1.0)
        assert fw == pytest.approx((m[valid] == 1).mean())
        assert idx.loc[i, "landcover"] == ("water" if fw > 0.5 else "tree_cover")
    m00 = st.read_mask("landcover_mask", _row(st, "t_0_0"))
    assert (m00[:16] == -1).all() and (m00[16:] == 1).all()  # label nodata rows, then water
    m01 = st.read_mask("landcover_mask", _row(st, "t_0_1"))
    assert (m01[16:, :16] == 1).all() and (m01[16:, 16:] == 0).all()  # water | trees boundary at s2 col 48
    assert idx.loc[_row(st, "t_2_2"), "frac_tree_cover"] == 1.0


def test_reference_crs_resolution_and_stride(aoi, tmp_path):
    st = ingest_rasters({"s2": aoi["s2"]}, tmp_path / "st", 16, resolution=20.0, stride=8, aoi="r")
    # 96 px at 10 m -> 48 px at 20 m; tiles of 16 every 8 px -> 5 x 5; only the one at 20 m px (0, 32) is nodata
    assert st.chip_size == 16 and len(st) == 24
    assert [s["item"] for s in st.report()["skipped"]] == ["r_0_4"]
    assert json.loads((st.path / "earthembed.json").read_text())["source"]["transform"] == [20, 0, X0, 0, -20, Y0]
    assert st.read("s2", _row(st, "r_2_2"))[0, 8, 8] > 5000  # the bright square at 20 m px (20..27)


def test_errors_name_the_file(aoi, tmp_path):
    far = _labels(tmp_path / "far.tif", x0=X0 + 100_000)
    with pytest.raises(IngestError, match=r"far\.tif: label raster does not overlap"):
        ingest_rasters({"s2": aoi["s2"]}, tmp_path / "o1", 32, labels=far)
    bad = _s2(tmp_path / "s2_5b.tif", bands=5, descriptions=None)
    with pytest.raises(IngestError, match=r"s2_5b\.tif: has 5 bands"):
        ingest_rasters({"s2": bad}, tmp_path / "o2", 32)
    with pytest.raises(IngestError, match=r"s2\.tif: has 13 bands, product 's2_l2a' has 12"):
        ingest_rasters({"s2": aoi["s2"]}, tmp_path / "o3", 32, products={"s2": "s2_l2a"})
    hh = _write(tmp_path / "hh.tif", np.zeros((2, 96, 96), np.float32), UTM, from_origin(X0, Y0, 10, 10),
                descriptions=["HH", "HV"])
    with pytest.raises(IngestError, match=r"hh\.tif: band descriptions \['HH', 'HV'\] do not match .*'s1_grd_db'"):
        ingest_rasters({"s2": aoi["s2"], "s1": hh}, tmp_path / "o4", 32)
    nocrs = tmp_path / "nocrs.tif"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(nocrs, "w", driver="GTiff", width=8, height=8, count=2, dtype="float32") as d:
            d.write(np.zeros((2, 8, 8), np.float32))
    with pytest.raises(IngestError, match=r"nocrs\.tif: has no CRS"):
        ingest_rasters({"s2": aoi["s2"], "s1": nocrs}, tmp_path / "o5", 32)
    away = _write(tmp_path / "away.tif", np.zeros((2, 8, 8), np.float32), UTM, from_origin(0, 0, 10, 10))
    with pytest.raises(IngestError, match=r"away\.tif: does not overlap .*s2\.tif"):
        ingest_rasters({"s2": aoi["s2"], "s1": away}, tmp_path / "o6", 32)
    with pytest.raises(IngestError, match=r"x\.tif: no default product for modality key 'x'"):
        ingest_rasters({"x": _copy(aoi["s2"], tmp_path / "x.tif")}, tmp_path / "o7", 32)
    refl = _write(tmp_path / "refl.tif", np.full((13, 96, 96), 0.25, np.float32), UTM, from_origin(X0, Y0, 10, 10))
    with pytest.raises(IngestError, match=r"refl\.tif: has fractional values but product 's2_l1c' stores uint16"):
        ingest_rasters({"s2": refl}, tmp_path / "o9", 32)
    with pytest.raises(IngestError, match="smaller than one chip"):
        ingest_rasters({"s2": aoi["s2"]}, tmp_path / "o8", 128)
    for i in range(1, 10):
        assert not (tmp_path / f"o{i}").exists()


def _copy(src, dst):
    dst.write_bytes(src.read_bytes())
    return dst


def test_interrupted_ingest_resumes_exactly_once(aoi, tmp_path, monkeypatch):
    clean = _ingest(aoi, tmp_path / "clean")
    real, calls = rasters.footprint_wgs84, []

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("killed")
        return real(*a, **k)

    monkeypatch.setattr(rasters, "footprint_wgs84", flaky)
    with pytest.raises(RuntimeError, match="killed"):
        _ingest(aoi, tmp_path / "st", batch_size=2)
    with pytest.raises(Exception, match="incomplete"):
        ChipStore(tmp_path / "st")
    monkeypatch.setattr(rasters, "footprint_wgs84", real)
    st = _ingest(aoi, tmp_path / "st", batch_size=2)
    assert st.index["chip_id"].tolist() == clean.index["chip_id"].tolist()
    for k in ("s2", "s1"):
        np.testing.assert_array_equal(st.read(k, slice(None)), clean.read(k, slice(None)))
    np.testing.assert_array_equal(
        st.read_mask("landcover_mask", slice(None)), clean.read_mask("landcover_mask", slice(None))
    )
    assert st.report()["n_skipped"] == 1


def test_helpers():
    assert [normalize_band_name(b) for b in ("B1", "b01", "B8A", "b8a", "B08", " vv ")] == [
        "B01", "B01", "B8A", "B8A", "B08", "VV"
    ]
    assert block_split("a", 0, 0) == block_split("a", 3, 3) and block_split("a", 0, 0) == block_split("a", 1, 2)
    splits = [block_split("a", 4 * r, 4 * c) for r in range(30) for c in range(30)]
    assert 0.5 < splits.count("train") / 900 < 0.7 and 0.12 < splits.count("test") / 900 < 0.28


def _plain_s2(path, height=256, width=256, tiled=True):
    a = (np.arange(13, dtype=np.uint16)[:, None, None] * 100 + 1 + np.zeros((1, height, width), np.uint16))
    kw = {"tiled": True, "blockxsize": 64, "blockysize": 64} if tiled else {}
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=13, dtype="uint16", crs=UTM,
                       transform=from_origin(X0, Y0, 10, 10), **kw) as d:
        d.write(a)
    return path


def test_small_aoi_gets_train_and_test(tmp_path):
    # before: 4x4 tiles formed a single 4x4-tile block, e.g. {'val': 16}
    st = ingest_rasters({"s2": _plain_s2(tmp_path / "s2.tif")}, tmp_path / "st", 64, aoi="small")
    counts = st.index["split"].value_counts().to_dict()
    assert len(st) == 16 and counts.get("train", 0) > 0 and counts.get("test", 0) > 0, counts
    assert json.loads((st.path / "earthembed.json").read_text())["source"]["split_block_cells"] == 1
    # a strip of 3 tiles still gets train and test, for any AOI name
    strip = _plain_s2(tmp_path / "strip.tif", height=64, width=192)
    for name in ("a", "b", "c", "d", "e"):
        st = ingest_rasters({"s2": strip}, tmp_path / f"strip_{name}", 64, aoi=name)
        assert {"train", "test"} <= set(st.index["split"]), name
    # a large AOI keeps 4x4-tile blocks
    st = ingest_rasters({"s2": _plain_s2(tmp_path / "big.tif", 256, 256)}, tmp_path / "big", 16, aoi="big")
    assert json.loads((st.path / "earthembed.json").read_text())["source"]["split_block_cells"] == 4
    idx = st.index.set_index("chip_id")
    for i in range(16):
        for j in range(16):
            assert idx.loc[f"big_{i}_{j}", "split"] == idx.loc[f"big_{i - i % 4}_{j - j % 4}", "split"]


def test_overlapping_tiles_of_a_block_share_its_split(tmp_path):
    # stride 8 < chip 32: a tile's block is that of its pixel origin in chip_size cells, not of its tile index
    # (before: blocks of 4x4 tile indices, so the overlapping tiles of one 64 px block were split apart)
    st = ingest_rasters({"s2": _plain_s2(tmp_path / "s2.tif")}, tmp_path / "st", 32, stride=8, aoi="o")
    idx = st.index
    n = (256 - 32) // 8 + 1
    assert len(st) == n * n
    b = json.loads((st.path / "earthembed.json").read_text())["source"]["split_block_cells"]
    assert b == 2  # origins span 8x8 cells of 32 px: 4x4 cells -> 4 blocks, 3x3 -> 9 (< 10), 2x2 -> 16
    ij = idx["chip_id"].str.split("_", expand=True).iloc[:, 1:].astype(int).to_numpy()
    block = (ij[:, 0] * 8 // 32 // b) * 100 + ij[:, 1] * 8 // 32 // b
    per_block = idx.groupby(block)["split"].nunique()
    assert len(per_block) == 16 and (per_block == 1).all()
    assert {"train", "test"} <= set(idx["split"])


def test_block_split_helpers():
    assert block_size_for([(r, c) for r in range(4) for c in range(4)]) == 1
    assert block_size_for([(r, c) for r in range(8) for c in range(8)]) == 2  # 4x4 cells -> 4 blocks < 10
    assert block_size_for([(r, c) for r in range(16) for c in range(16)]) == 4
    for aoi in map(str, range(50)):
        s = block_splits(aoi, [(0, 0), (0, 1), (0, 2)])
        assert {"train", "test"} <= set(s.values()), (aoi, s)
        assert s == block_splits(aoi, [(0, 2), (0, 1), (0, 0)])  # order independent
    assert len(block_splits("a", [(0, 0), (0, 1)])) == 2  # < 3 blocks: the hash alone


def _truncate_at_block(path, col, row):
    with rasterio.open(path) as d:
        off = int(d.get_tag_item(f"BLOCK_OFFSET_{col}_{row}", "TIFF", bidx=1))
    with open(path, "r+b") as f:
        f.truncate(off + 100)


def test_truncated_raster_gives_ingest_error_and_resumes(tmp_path):
    # truncated to 60%: the header opens fine, the failure comes from a window read (before: RasterioIOError)
    bad = _plain_s2(tmp_path / "bad.tif")
    with open(bad, "r+b") as f:
        f.truncate(int(bad.stat().st_size * 0.6))
    with pytest.raises(IngestError, match=r"bad\.tif: cannot read window rows \d+:\d+, cols \d+:\d+ .*truncated"):
        ingest_rasters({"s2": bad}, tmp_path / "o1", 64)
    # truncated in the middle of the tiling: chips before the bad window stay committed, the store incomplete
    good = _plain_s2(tmp_path / "good.tif", height=512)
    clean = ingest_rasters({"s2": good}, tmp_path / "clean", 32, aoi="m")
    mid = _copy(good, tmp_path / "mid.tif")
    _truncate_at_block(mid, 0, 7)
    with pytest.raises(IngestError, match=r"mid\.tif: cannot read window rows \d+:\d+, cols 0:32 .*"
                       r"incomplete store .*re-run the same command to resume"):
        ingest_rasters({"s2": mid}, tmp_path / "st", 32, aoi="m", batch_size=4)
    with pytest.raises(Exception, match="incomplete"):
        ChipStore(tmp_path / "st")
    assert len(list((tmp_path / "st" / "_parts").glob("part-*.parquet"))) > 0
    _copy(good, mid)  # the file is fixed: re-running resumes and finishes
    st = ingest_rasters({"s2": mid}, tmp_path / "st", 32, aoi="m", batch_size=4)
    assert st.index["chip_id"].tolist() == clean.index["chip_id"].tolist()
    np.testing.assert_array_equal(st.read("s2", slice(None)), clean.read("s2", slice(None)))
    assert st.index["split"].tolist() == clean.index["split"].tolist()


def test_truncated_label_raster_gives_ingest_error(aoi, tmp_path):
    lc = tmp_path / "lc_bad.tif"
    a = np.full((1, 256, 256), 10, np.uint8)
    with rasterio.open(lc, "w", driver="GTiff", width=256, height=256, count=1, dtype="uint8", crs=UTM,
                       transform=from_origin(X0, Y0, 10 * 96 / 256, 10 * 96 / 256), tiled=True,
                       blockxsize=64, blockysize=64) as d:
        d.write(a)
    with open(lc, "r+b") as f:
        f.truncate(int(lc.stat().st_size * 0.6))
    with pytest.raises(IngestError, match=r"lc_bad\.tif: cannot read window"):  # the class scan
        ingest_rasters({"s2": aoi["s2"]}, tmp_path / "o1", 32, labels=lc)
    with pytest.raises(IngestError, match=r"lc_bad\.tif: cannot read window .*re-run the same command"):  # per chip
        ingest_rasters({"s2": aoi["s2"]}, tmp_path / "o2", 32, labels=lc, label_classes={10: "trees"})


def test_resume_refuses_a_different_source(aoi, tmp_path, monkeypatch):
    real, calls = rasters.footprint_wgs84, []

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("killed")
        return real(*a, **k)

    monkeypatch.setattr(rasters, "footprint_wgs84", flaky)
    with pytest.raises(RuntimeError, match="killed"):
        ingest_rasters({"s2": aoi["s2"]}, tmp_path / "st", 32, aoi="t", batch_size=1)
    monkeypatch.setattr(rasters, "footprint_wgs84", real)
    other = _copy(aoi["s2"], tmp_path / "other_s2.tif")
    with pytest.raises(Exception, match=r"different source \(modalities: .*s2\.tif.*other_s2\.tif.*--overwrite"):
        ingest_rasters({"s2": other}, tmp_path / "st", 32, aoi="t")
    st = ingest_rasters({"s2": aoi["s2"]}, tmp_path / "st", 32, aoi="t")
    assert len(st) == 8


def test_cli(aoi, tmp_path):
    app = typer.Typer()
    app.command("rasters")(command)
    app.command("other")(lambda: None)
    runner = CliRunner()
    args = ["rasters", "--modality", f"s2={aoi['s2']}", "-m", f"s1={aoi['s1']}", "--labels", str(aoi["labels"]),
            "--label-class", "10=forest", "--label-class", "80=lake", "--chip-size", "32", "--aoi", "cli"]
    r = runner.invoke(app, [*args, "--out", str(tmp_path / "st")])
    assert r.exit_code == 0, r.output
    assert "8 chips of 32 px" in r.output and "skipped 1" in r.output
    meta = json.loads((tmp_path / "st" / "earthembed.json").read_text())
    assert meta["labels"]["landcover"]["classes"] == ["forest", "lake"]
    assert meta["source"]["tiles"] == [3, 3]
    r = runner.invoke(app, [*args, "--out", str(tmp_path / "st")])
    assert r.exit_code == 1 and "error:" in r.output and "complete store already exists" in r.output
    r = runner.invoke(app, ["rasters", "-m", f"s2={aoi['s2']}", "--product", "s2=s2_l2a", "--chip-size", "32",
                            "--out", str(tmp_path / "st2")])
    assert r.exit_code == 1 and "s2.tif: has 13 bands" in r.output
    r = runner.invoke(app, ["rasters", "-m", "s2", "--chip-size", "32", "--out", str(tmp_path / "st3")])
    assert r.exit_code == 1 and "expected KEY=VALUE" in r.output


@pytest.mark.realdata
def test_sen1floods11_real(shared_data, tmp_path):
    d = shared_data / "sen1floods11"
    s2 = d / "S2Hand" / "Spain_7370579_S2Hand.tif"
    st = ingest_rasters(
        {"s2": s2, "s1": d / "S1Hand" / "Spain_7370579_S1Hand.tif"}, tmp_path / "st", 128,
        labels=d / "LabelHand" / "Spain_7370579_LabelHand.tif", products={"s2": "s2_l1c"},
        label_classes={0: "not_water", 1: "water"}, aoi="spain",
    )
    assert len(st) == 16 and st.band_names("s2")[8] == "B8A"
    with rasterio.open(s2) as src:
        np.testing.assert_array_equal(st.read("s2", _row(st, "spain_1_2")), src.read(window=((128, 256), (256, 384))))
    with rasterio.open(d / "LabelHand" / "Spain_7370579_LabelHand.tif") as src:
        lab = src.read(1)
    idx = st.index
    n_water = sum(int((st.read_mask("landcover_mask", i) == 1).sum()) for i in range(len(st)))
    assert n_water == int((lab == 1).sum())
    assert ((lab == -1).sum() == 0) or (st.read_mask("landcover_mask", slice(None)) == -1).sum() == (lab == -1).sum()
    np.testing.assert_allclose(idx["frac_water"] + idx["frac_not_water"], 1.0)
    assert idx["has_s1"].all() and set(idx["landcover"]) <= {"water", "not_water"}
