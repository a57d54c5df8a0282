"""STAC ingest, offline: a static catalog of local COGs made here with pystac (S2 L2A, S1 dB, DEM)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pytest

from earthembed.data.ingest.stac import S2_ASSET_ALIASES, find_items, ingest_stac, parse_datetime
from earthembed.data.store import ChipStore
from earthembed.errors import IngestError, StoreError

CRS = "EPSG:32633"
ORIGIN = (500_000.0, 5_300_000.0)  # top-left, UTM 33N
S2_BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]


def _cog(path: Path, data: np.ndarray, crs: str, transform, nodata=None) -> str:
    import rasterio
    from rasterio.io import MemoryFile
    from rasterio.shutil import copy

    prof = dict(driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0], dtype=data.dtype,
                crs=crs, transform=transform, nodata=nodata)
    with MemoryFile() as mem:
        with mem.open(**prof) as ds:
            ds.write(data)
        with mem.open() as src:
            copy(src, path, driver="COG", BLOCKSIZE=32)
    with rasterio.open(path) as chk:
        assert chk.profile["blockxsize"] == 32
    return str(path)


def _bbox(crs: str, transform, w: int, h: int) -> list[float]:
    from rasterio.warp import transform_bounds

    left, top = transform @ (0, 0)
    right, bottom = transform @ (w, h)
    return list(transform_bounds(crs, "EPSG:4326", left, bottom, right, top))


def _item(pystac, item_id: str, when: dt.datetime, bbox: list[float], crs: str | None, cloud: float | None = None):
    from pystac.extensions.projection import ProjectionExtension

    b = bbox
    geom = {"type": "Polygon", "coordinates": [[[b[0], b[1]], [b[2], b[1]], [b[2], b[3]], [b[0], b[3]], [b[0], b[1]]]]}
    props = {"eo:cloud_cover": cloud} if cloud is not None else {}
    it = pystac.Item(item_id, geom, b, when, props)
    if crs:
        ProjectionExtension.ext(it, add_if_missing=True).code = crs
    return it


def make_catalog(root: Path) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    """Two S2 items (a cloudy full one, a clear one over the left half), one S1 item at 20 m, one DEM in 4326."""
    import pystac
    from rasterio.transform import from_origin

    rng = np.random.default_rng(0)
    cat = pystac.Catalog("test-cat", "local COGs")
    truth = {}
    # S2: 64 x 64 px at 10 m; Earth-Search-like asset keys (blue, red, nir08 ...) -> mapped by alias
    s2 = pystac.Collection("s2-l2a", "S2", pystac.Extent(pystac.SpatialExtent([[14.9, 47.8, 15.1, 47.9]]),
                                                          pystac.TemporalExtent([[None, None]])))
    t = from_origin(ORIGIN[0], ORIGIN[1], 10, 10)
    full = rng.integers(100, 3000, (12, 64, 64)).astype("uint16")
    clear = rng.integers(100, 3000, (12, 64, 32)).astype("uint16")
    truth["s2_full"], truth["s2_clear"] = full, clear
    for item_id, data, tr, cloud, day in (("S2_full", full, t, 60.0, 1), ("S2_clear_left", clear, t, 5.0, 11)):
        it = _item(pystac, item_id, dt.datetime(2023, 7, day, 10, tzinfo=dt.UTC), _bbox(CRS, tr, data.shape[2], 64),
                   CRS, cloud)
        for k, band in enumerate(S2_BANDS):
            key = S2_ASSET_ALIASES[band][0]
            href = _cog(root / f"{item_id}_{key}.tif", data[k : k + 1], CRS, tr, nodata=0)
            it.add_asset(key, pystac.Asset(href, media_type=pystac.MediaType.COG, roles=["data"]))
        it.add_asset("thumbnail", pystac.Asset(str(root / "none.png"), media_type=pystac.MediaType.PNG, roles=["thumbnail"]))
        s2.add_item(it)
    # S1: 32 x 32 px at 20 m over the same ground, VV/VH in one 2-band asset described by eo:bands names
    s1 = pystac.Collection("s1-grd", "S1", pystac.Extent(pystac.SpatialExtent([[14.9, 47.8, 15.1, 47.9]]),
                                                          pystac.TemporalExtent([[None, None]])))
    t20 = from_origin(ORIGIN[0], ORIGIN[1], 20, 20)
    s1d = rng.normal(-12, 2, (2, 32, 32)).astype("float32")
    truth["s1"] = s1d
    it = _item(pystac, "S1_a", dt.datetime(2023, 7, 3, 5, tzinfo=dt.UTC), _bbox(CRS, t20, 32, 32), CRS)
    href = _cog(root / "S1_a.tif", s1d, CRS, t20)
    it.add_asset("data", pystac.Asset(href, media_type=pystac.MediaType.COG, roles=["data"],
                                      extra_fields={"eo:bands": [{"name": "VH"}, {"name": "VV"}]}))
    s1.add_item(it)
    truth["s1_order"] = ["VH", "VV"]
    # DEM: EPSG:4326 grid covering the AOI generously, single "data" asset -> reprojected onto the grid
    dem = pystac.Collection("dem", "DEM", pystac.Extent(pystac.SpatialExtent([[14.9, 47.8, 15.1, 47.9]]),
                                                         pystac.TemporalExtent([[None, None]])))
    b = _bbox(CRS, t, 64, 64)
    td = from_origin(b[0] - 0.01, b[3] + 0.01, 0.0005, 0.0005)
    demd = np.full((1, int((b[3] - b[1] + 0.02) / 0.0005) + 1, int((b[2] - b[0] + 0.02) / 0.0005) + 1), 420.0, "float32")
    it = _item(pystac, "DEM_1", dt.datetime(2000, 2, 11, tzinfo=dt.UTC), [b[0] - 0.01, b[1] - 0.01, b[2] + 0.01, b[3] + 0.01], None)
    it.add_asset("data", pystac.Asset(_cog(root / "dem.tif", demd, "EPSG:4326", td), media_type=pystac.MediaType.COG, roles=["data"]))
    dem.add_item(it)
    for c in (s2, s1, dem):
        cat.add_child(c)
    cat.normalize_hrefs(str(root / "catalog"))
    cat.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    truth["bbox"] = b
    return {"catalog": root / "catalog" / "catalog.json", **truth}


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    return make_catalog(tmp_path_factory.mktemp("stac"))


PRODUCTS = {"s2-l2a": "s2_l2a", "s1-grd": "s1_grd_db", "dem": "elevation"}


def test_parse_datetime():
    s, e = parse_datetime("2023-07-01/2023-07-05")
    assert s == dt.datetime(2023, 7, 1, tzinfo=dt.UTC) and e.date() == dt.date(2023, 7, 5) and e.hour == 23
    assert parse_datetime("../2023-01-01")[0] is None
    with pytest.raises(ValueError, match="not an ISO"):
        parse_datetime("yesterday")
    with pytest.raises(ValueError, match="start is after end"):
        parse_datetime("2023-02-01/2023-01-01")


def _source_window(transform, chip: int) -> tuple[int, int]:
    """(row, col) of a chip's first pixel in the 10 m S2 source grid."""
    return round((ORIGIN[1] - transform[5]) / 10), round((transform[2] - ORIGIN[0]) / 10)


def test_s2_s1_dem_on_one_grid(catalog, tmp_path):
    store = ingest_stac(catalog["catalog"], ["s2-l2a", "s1-grd", "dem"], tmp_path / "store", PRODUCTS, chip_size=16,
                        bbox=catalog["bbox"], datetime="2023-06-01/2023-08-01", aoi="t")
    assert set(store.modalities) == {"s2", "s1", "dem"}
    idx = store.index
    assert (idx["crs"] == CRS).all() and idx["transform"].notna().all()
    full, clear = catalog["s2_full"], catalog["s2_clear"]
    checked = {"clear": 0, "full": 0}
    for i, row in idx.iterrows():
        t = np.asarray(row["transform"])
        assert t[0] == 10 and t[4] == -10
        r0, c0 = _source_window(t, 16)
        if not (0 <= r0 <= 48 and 0 <= c0 <= 48) or not row["has_s2"]:
            continue
        s2 = store.read("s2", int(i))
        # least cloudy item first: its pixels where it has data (left half), the cloudy full item elsewhere
        if c0 + 16 <= 32:
            np.testing.assert_array_equal(s2, clear[:, r0 : r0 + 16, c0 : c0 + 16])
            assert row["date_s2"] == "2023-07-11"
            checked["clear"] += 1
        elif c0 >= 32:
            np.testing.assert_array_equal(s2, full[:, r0 : r0 + 16, c0 : c0 + 16])
            assert row["date_s2"] == "2023-07-01"
            checked["full"] += 1
        # S1 (20 m, bands VH, VV in the file) resampled onto the same 10 m chip, bands reordered by name
        if row["has_s1"]:
            s1 = store.read("s1", int(i))
            src = catalog["s1"][:, r0 // 2 : (r0 + 16) // 2, c0 // 2 : (c0 + 16) // 2]
            assert abs(np.nanmean(s1[0]) - src[1].mean()) < 1.5 and abs(np.nanmean(s1[1]) - src[0].mean()) < 1.5
            assert row["date_s1"] == "2023-07-03"
        assert row["has_dem"] and row["date_dem"] == "2000-02-11"  # a DEM is not filtered by --datetime
        np.testing.assert_allclose(store.read("dem", int(i)), 420.0)
    assert checked["clear"] >= 2 and checked["full"] >= 2
    assert store.meta["source"]["items"]["s2-l2a"][0]["id"] == "S2_clear_left"


def test_cli_and_bad_input(catalog, tmp_path):
    from typer.testing import CliRunner

    from earthembed.cli import app

    bbox = ",".join(map(str, catalog["bbox"]))
    cat = str(catalog["catalog"])
    r = CliRunner().invoke(app, ["ingest", "stac", "--catalog", cat, "--collections", "s2-l2a,s1-grd",
                                 "--modality", "s2_l2a,s1_grd_db", "--bbox", bbox, "--chip-size", "16",
                                 "--batch-size", "2", "--out", str(tmp_path / "ok")])
    assert r.exit_code == 0, r.output
    assert "s2 dates: 2023-07-01, 2023-07-11" in r.output
    # a bbox outside the catalog: the collection and its extent are named
    r = CliRunner().invoke(app, ["ingest", "stac", "--catalog", cat, "--collections", "s2-l2a", "--modality",
                                 "s2_l2a", "--bbox", "30,10,30.1,10.1", "--out", str(tmp_path / "far")])
    assert r.exit_code == 1 and "no item of collection 's2-l2a' intersects bbox" in r.output
    assert "extent" in r.output and not (tmp_path / "far").exists()
    # an unknown collection
    with pytest.raises(IngestError, match=r"no collection \['s3'\]"):
        ingest_stac(cat, ["s3"], tmp_path / "x", {"s3": "s2_l2a"}, bbox=catalog["bbox"])
    # an item without a requested band: L1C has B10 (cirrus), the L2A items do not
    with pytest.raises(IngestError, match="item S2_.* of collection 's2-l2a': no asset for band B10"):
        ingest_stac(cat, ["s2-l2a"], tmp_path / "l1c", {"s2-l2a": "s2_l1c"}, chip_size=16, bbox=catalog["bbox"])
    assert not (tmp_path / "l1c").exists()


def test_unreadable_cog_is_named(catalog, tmp_path):
    made = make_catalog(tmp_path / "cat")
    bad = tmp_path / "cat" / "S1_a.tif"
    bad.write_bytes(b"II*\x00 this is not a tiff")
    cat = made["catalog"]
    assert find_items(cat, ["s1-grd"], None, None)["s1-grd"][0].assets["data"].get_absolute_href() == str(bad)
    out = tmp_path / "store"
    with pytest.raises(IngestError, match=r"item S1_a of collection 's1-grd', asset 'data': .*S1_a.tif"):
        ingest_stac(cat, ["s2-l2a", "s1-grd"], out, PRODUCTS, chip_size=16, bbox=catalog["bbox"])
    assert not out.exists()  # every asset's header is read before anything is written
    # a header that reads but data that does not (truncated): named mid-way, the store left incomplete
    good = (catalog["catalog"].parent.parent / "S1_a.tif").read_bytes()
    bad.write_bytes(good[: len(good) - 3000])
    with pytest.raises(IngestError, match=r"S1_a.tif: cannot read window .* re-run the same command to resume"):
        ingest_stac(cat, ["s2-l2a", "s1-grd"], out, PRODUCTS, chip_size=16, bbox=catalog["bbox"])
    with pytest.raises(StoreError, match="incomplete"):
        ChipStore(out)  # nothing partially written looks complete
    assert json.loads((out / "earthembed.json").read_text())["complete"] is False


def test_static_catalog_over_http(catalog, tmp_path):
    """A static catalog served over HTTP: pystac-client opens it (no item-search API, so it is walked) and the
    COG assets are read remotely through GDAL. The server is another process: GDAL holds the GIL while it
    fetches, so a server thread in this process would never answer."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    import pystac

    made, root = catalog, catalog["catalog"].parent.parent
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory",
                               str(root)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(base, timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        cat = pystac.read_file(str(made["catalog"]))  # asset hrefs as URLs (the saved ones are local paths)
        for it in cat.get_items(recursive=True):
            for a in it.assets.values():
                a.href = f"{base}/{Path(a.get_absolute_href()).name}"
        cat.normalize_hrefs(str(root / "web"))
        cat.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
        store = ingest_stac(f"{base}/web/catalog.json", ["s1-grd"], tmp_path / "store", {"s1-grd": "s1_grd_db"},
                            chip_size=16, bbox=made["bbox"])
        assert len(store) >= 4 and store.index["date_s1"].eq("2023-07-03").all()
        assert store.meta["source"]["catalog"].startswith("http://")
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_stac_api_item_search(catalog, tmp_path):
    """A STAC API (landing page declaring item-search, ``/search``): pystac-client searches it per collection with
    the bbox and datetime instead of walking a catalog, and the COGs it points to are read over HTTP."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    import pystac

    made, root = catalog, catalog["catalog"].parent.parent
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    items = []
    for it in pystac.read_file(str(made["catalog"])).get_items(recursive=True):
        d = it.to_dict()
        d["collection"], d["links"] = it.collection_id, []
        for a in d["assets"].values():
            a["href"] = f"{base}/files/{Path(a['href']).name}"
        items.append(d)
    (tmp_path / "items.json").write_text(json.dumps(items))
    files = tmp_path / "files"
    files.mkdir()
    for f in root.glob("*.tif"):
        (files / f.name).symlink_to(f)
    server = subprocess.Popen([sys.executable, str(Path(__file__).with_name("fake_stac_api.py")),
                               str(tmp_path / "items.json"), str(files), str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(base, timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        found = find_items(base, ["s2-l2a"], made["bbox"], "2023-07-05/2023-07-31")
        assert [i.id for i in found["s2-l2a"]] == ["S2_clear_left"]  # the datetime filter reached the API
        with pytest.raises(IngestError, match="s1-grd"):  # no S1 item in that interval: named
            find_items(base, ["s2-l2a", "s1-grd"], made["bbox"], "2023-07-05/2023-07-31")
        store = ingest_stac(base, ["s1-grd"], tmp_path / "store", {"s1-grd": "s1_grd_db"}, chip_size=16,
                            bbox=made["bbox"])
        assert len(store) >= 4 and store.index["date_s1"].eq("2023-07-03").all()
        searches = [json.loads(line) for line in (files / "search.log").read_text().splitlines()]
        assert searches and all(s.get("collections") for s in searches)  # searched, not walked
    finally:
        server.terminate()
        server.wait(timeout=10)
