"""``ingest stac --composite``: per-period median composites as a date series (issue 22), offline on a static
catalog of local COGs made here: S2 items at several dates with nodata regions, and a DEM."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from earthembed.data.dates import date_series
from earthembed.data.ingest.stac import composite_periods, parse_composite
from earthembed.data.store import ChipStore
from test_hostile_inputs import cli, one_line_error
from test_ingest_stac import CRS, ORIGIN, S2_ASSET_ALIASES, S2_BANDS, _bbox, _cog, _item

N = 32  # the S2 scenes are 32 x 32 px at 10 m: 2 x 2 chips of 16 px
# every item: base + 10 x band + the same pixel pattern, so the median of items is median(bases) + 10 x band + P
P = (np.arange(N)[:, None] * N + np.arange(N)[None, :]) % 50
S2_ITEMS = {  # id: (date, base, nodata region as (rows, cols) slices, width in px)
    "jun05": (dt.date(2023, 6, 5), 1000, None, N),
    "jun15": (dt.date(2023, 6, 15), 2000, (slice(None), slice(0, 16)), N),  # nodata over the left half
    "jun25": (dt.date(2023, 6, 25), 4000, (slice(0, 8), slice(None)), N),  # nodata over the top 8 rows
    "aug10": (dt.date(2023, 8, 10), 3000, None, 16),  # covers the left half only: right chips lack August
    "sep02": (dt.date(2023, 9, 2), 500, None, N),
    "sep12": (dt.date(2023, 9, 12), 700, None, N),
    "oct05": (dt.date(2023, 10, 5), 9000, None, N),  # after --datetime: never used
}
DATETIME = "2023-06-01/2023-09-30"  # months 06..09; July has no item


def _s2(base: int, width: int) -> np.ndarray:
    return (base + 10 * np.arange(12)[:, None, None] + P[None, :, :width]).astype("uint16")


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    import pystac
    from rasterio.transform import from_origin

    root = tmp_path_factory.mktemp("composite")
    cat = pystac.Catalog("composite-cat", "S2 at several dates")
    ext = pystac.Extent(pystac.SpatialExtent([[14.9, 47.8, 15.1, 47.9]]), pystac.TemporalExtent([[None, None]]))
    s2 = pystac.Collection("s2-l2a", "S2", ext)
    t = from_origin(ORIGIN[0], ORIGIN[1], 10, 10)
    for item_id, (day, base, hole, width) in S2_ITEMS.items():
        data = _s2(base, width)
        if hole is not None:
            data[(slice(None), *hole)] = 0
        it = _item(pystac, item_id, dt.datetime(day.year, day.month, day.day, 10, tzinfo=dt.UTC),
                   _bbox(CRS, t, width, N), CRS, 5.0)
        for k, band in enumerate(S2_BANDS):
            key = S2_ASSET_ALIASES[band][0]
            href = _cog(root / f"{item_id}_{key}.tif", data[k : k + 1], CRS, t, nodata=0)
            it.add_asset(key, pystac.Asset(href, media_type=pystac.MediaType.COG, roles=["data"]))
        s2.add_item(it)
    dem = pystac.Collection("dem", "DEM", ext)
    it = _item(pystac, "DEM_1", dt.datetime(2000, 2, 11, tzinfo=dt.UTC), _bbox(CRS, t, N, N), CRS)
    it.add_asset("data", pystac.Asset(_cog(root / "dem.tif", np.full((1, N, N), 420.0, "float32"), CRS, t),
                                      media_type=pystac.MediaType.COG, roles=["data"]))
    dem.add_item(it)
    cat.add_child(s2)
    cat.add_child(dem)
    cat.normalize_hrefs(str(root / "catalog"))
    cat.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    # a bbox 3 m inside the scenes: the grid snaps onto their pixels (origin ORIGIN, 32 x 32 px)
    inset = from_origin(ORIGIN[0] + 3, ORIGIN[1] - 3, 10, 10)
    left, bottom, right, top = _bbox(CRS, inset, N - 0.6, N - 0.6)
    return {"catalog": root / "catalog" / "catalog.json", "bbox": f"{left},{bottom},{right},{top}"}


def test_composite_periods():
    d = dt.date
    assert parse_composite(" Month") == "month" and parse_composite("010d") == "10d"
    for bad in ("weekly", "0d", "d", "-3d"):
        with pytest.raises(ValueError, match="--composite .*expected month, quarter, year or Nd"):
            parse_composite(bad)
    q = composite_periods("quarter", d(2023, 2, 10), d(2023, 7, 4))
    assert [(p.label, p.start, p.end) for p in q] == [("2023-Q1", d(2023, 2, 10), d(2023, 3, 31)),
                                                      ("2023-Q2", d(2023, 4, 1), d(2023, 6, 30)),
                                                      ("2023-Q3", d(2023, 7, 1), d(2023, 7, 4))]
    y = composite_periods("year", d(2022, 12, 31), d(2024, 1, 1))
    assert [p.label for p in y] == ["2022", "2023", "2024"] and y[1].end == d(2023, 12, 31)
    m = composite_periods("month", d(2023, 11, 15), d(2024, 2, 1))
    assert [p.label for p in m] == ["2023-11", "2023-12", "2024-01", "2024-02"] and m[2].end == d(2024, 1, 31)
    n = composite_periods("10d", d(2023, 6, 1), d(2023, 6, 25))
    assert [(p.start, p.end) for p in n] == [(d(2023, 6, 1), d(2023, 6, 10)), (d(2023, 6, 11), d(2023, 6, 20)),
                                             (d(2023, 6, 21), d(2023, 6, 25))]


def _where(transform) -> tuple[int, int]:
    """(row, col) of a chip's first pixel in the scenes' pixel grid."""
    return round((ORIGIN[1] - transform[5]) / 10), round((transform[2] - ORIGIN[0]) / 10)


def test_monthly_composites_are_a_date_series_of_pixel_medians(catalog, tmp_path):
    out = tmp_path / "store"
    r = cli(*["ingest", "stac", "--catalog", str(catalog["catalog"]), "--collections", "s2-l2a,dem", "--modality",
             "s2_l2a,elevation", "--bbox", catalog["bbox"], "--datetime", DATETIME, "--composite", "month",
             "--chip-size", "16", "--out", str(out), "--quiet"])
    assert r.exit_code == 0, r.output
    assert ("note: --composite month: collection 's2-l2a': 1 of 4 periods without any item (2023-07); no composite "
            "is written for those, the others are s2-l2a s2 s2_t2 s2_t3") in r.output
    st = ChipStore(out)
    assert list(st.meta["source"]["transform"][2::3]) == [ORIGIN[0], ORIGIN[1]] and len(st) == 4
    assert set(st.modalities) == {"s2", "s2_t2", "s2_t3", "dem"}  # the DEM is not composited
    comp = st.meta["source"]["composite"]
    assert [(p["key"], p["period"], sorted(p["items"])) for p in comp["periods"]["s2-l2a"]] == [
        ("s2", "2023-06", ["jun05", "jun15", "jun25"]), ("s2_t2", "2023-08", ["aug10"]),
        ("s2_t3", "2023-09", ["sep02", "sep12"])]
    s = date_series(st)["s2"]
    # typical dates: June chips are dated 06-05 (items jun05 + jun25, left) or 06-15 (all three, right): a tie, the
    # earlier wins; August 08-10; September 09-02 (the earlier middle date of two)
    assert s.keys == ("s2", "s2_t2", "s2_t3") and s.dates == ("2023-06-05", "2023-08-10", "2023-09-02")
    assert date_series(st)["dem"].keys == ("dem",) and st.present("dem").all()

    band = 10 * np.arange(12)[:, None, None]
    # June, by hand: left rows 0-7 only jun05 (1000); left rows 8+ jun05, jun25 -> (1000 + 4000) / 2 = 2500;
    # right rows 0-7 jun05, jun15 -> 1500; right rows 8+ all three -> 2000
    june = np.empty((N, N), int)
    june[:8, :16], june[8:, :16], june[:8, 16:], june[8:, 16:] = 1000, 2500, 1500, 2000
    idx = st.index
    for i in range(len(st)):
        r0, c0 = _where(np.asarray(idx["transform"].iloc[i]))
        win = (slice(None), slice(r0, r0 + 16), slice(c0, c0 + 16))
        pattern = (band + P[None])[win]
        np.testing.assert_array_equal(st.read("s2", i), june[None, r0:r0 + 16, c0:c0 + 16] + pattern)
        assert idx["date_s2"].iloc[i] == ("2023-06-05" if c0 == 0 else "2023-06-15")
        used = dict(x.split("=") for x in idx["source"].iloc[i].split(";"))
        assert set(used["s2"].split("+")) == ({"jun05", "jun25"} if c0 == 0 else {"jun05", "jun15", "jun25"})
        if c0 == 0:  # August: the one item covering the left half
            np.testing.assert_array_equal(st.read("s2_t2", i), 3000 + pattern)
            assert idx["date_s2_t2"].iloc[i] == "2023-08-10"
        else:  # no valid August pixel: absent, not zero-filled
            assert not idx["has_s2_t2"].iloc[i] and idx["date_s2_t2"].isna().iloc[i]
        np.testing.assert_array_equal(st.read("s2_t3", i), (500 + 700) // 2 + pattern)
        assert idx["date_s2_t3"].iloc[i] == "2023-09-02"
    assert "oct05" not in " ".join(idx["source"])

    # per-date embedding of the composites: one row per (chip, date) where the chip has that date
    from earthembed.embed.io import read_metadata, read_table

    emb = tmp_path / "rcf.parquet"
    r = cli(*["embed", "--featurizer", "rcf", "--rcf-mode", "gaussian", "--rcf-features", "8", "--store", str(out),
             "--out", str(emb), "--dates", "all", "--quiet"])
    assert r.exit_code == 0, r.output
    t = read_table(emb)
    assert sorted(zip(t.column("t").to_pylist(), map(str, t.column("date").to_pylist()), strict=True)) == (
        [(0, "2023-06-05")] * 4 + [(1, "2023-08-10")] * 2 + [(2, "2023-09-02")] * 4)
    time = read_metadata(emb)["time"]
    assert time["static"] == ["dem"] and [x["chips"] for x in time["skipped"]] == [2]


def test_composite_bad_input(catalog, tmp_path):
    base = ["ingest", "stac", "--catalog", str(catalog["catalog"]), "--bbox", catalog["bbox"], "--chip-size", "16"]
    r = cli(*[*base, "--collections", "s2-l2a", "--modality", "s2_l2a", "--datetime", DATETIME, "--composite",
             "weekly", "--out", str(tmp_path / "a")])
    one_line_error(r, "--composite 'weekly': expected month, quarter, year or Nd")
    # no item in the whole range: the collection, bbox and datetime are named
    r = cli(*[*base, "--collections", "s2-l2a", "--modality", "s2_l2a", "--datetime", "2021-01-01/2021-12-31",
             "--composite", "quarter", "--out", str(tmp_path / "b")])
    one_line_error(r, "no item of collection 's2-l2a' intersects bbox", "within datetime 2021-01-01/2021-12-31")
    r = cli(*[*base, "--collections", "dem", "--modality", "elevation", "--composite", "year", "--out",
             str(tmp_path / "c")])
    one_line_error(r, "--composite year: no collection to composite over time")
    assert not any((tmp_path / d).exists() for d in "abc")


def test_composite_keys_follow_the_periods_and_open_ranges_use_the_items(catalog, tmp_path):
    """Quarterly from an open start: periods from the first item (June) to the range's end; Q2 holds June, Q3
    July..September (aug10, sep02, sep12: per pixel their median, absent nowhere since sep items cover all)."""
    from earthembed.data.ingest.stac import ingest_stac

    st = ingest_stac(catalog["catalog"], ["s2-l2a"], tmp_path / "q", {"s2-l2a": "s2_l2a"}, chip_size=16,
                     bbox=catalog["bbox"], datetime="../2023-09-30", composite="quarter")
    assert [p["period"] for p in st.meta["source"]["composite"]["periods"]["s2-l2a"]] == ["2023-Q2", "2023-Q3"]
    idx = st.index
    band = 10 * np.arange(12)[:, None, None]
    for i in range(len(st)):
        r0, c0 = _where(np.asarray(idx["transform"].iloc[i]))
        pattern = (band + P[None])[:, r0:r0 + 16, c0:c0 + 16]
        # left: aug10 (3000), sep02 (500), sep12 (700) -> 700, dated 09-02; right: 500, 700 -> 600, dated 09-02
        np.testing.assert_array_equal(st.read("s2_t2", i), (700 if c0 == 0 else 600) + pattern)
        assert idx["date_s2_t2"].iloc[i] == "2023-09-02"
