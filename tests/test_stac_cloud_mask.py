"""``ingest stac --composite --cloud-mask scl``: composites that leave the pixels of masked Sentinel-2 scene
classification (SCL) classes out of the median, offline on a static catalog of local COGs made here (bands at
10 m, SCL at 20 m as in Sentinel-2 L2A), with hand-computed medians."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pytest

from earthembed.data.ingest.stac import SCL_MASK_DEFAULT, ingest_stac, parse_mask_classes
from earthembed.data.store import ChipStore
from test_hostile_inputs import cli, one_line_error
from test_ingest_stac import CRS, ORIGIN, S2_ASSET_ALIASES, S2_BANDS, _bbox, _cog, _item

N = 32  # the S2 scenes are 32 x 32 px at 10 m (2 x 2 chips of 16 px); their SCL is 16 x 16 px at 20 m
P = (np.arange(N)[:, None] * N + np.arange(N)[None, :]) % 50  # every item: base + 10 x band + P
BAND = 10 * np.arange(12)[:, None, None]
# regions in 10 m pixels (rows, cols), all on the 20 m SCL grid
B_CLOUD = (slice(8, 24), slice(0, 16))  # jun15 cloudy (9): half of chip (0, 0) and half of chip (1, 0)
ALL_CLOUD = (slice(0, 8), slice(16, 24))  # every June item masked (3, 8, 10): a quarter of chip (0, 1)
A_SATURATED = (slice(24, 32), slice(0, 8))  # jun05 saturated/defective (1), in chip (1, 0)
C_SNOW = (slice(24, 32), slice(24, 32))  # jun25 snow (11): kept by default, in chip (1, 1)
ITEMS = {  # id: (date, base, {SCL class: region}, SCL asset key)
    "jun05": (dt.date(2023, 6, 5), 1000, {3: ALL_CLOUD, 1: A_SATURATED}, "scl"),
    "jun15": (dt.date(2023, 6, 15), 2000, {8: ALL_CLOUD, 9: B_CLOUD}, "scl"),
    "jun25": (dt.date(2023, 6, 25), 4000, {10: ALL_CLOUD, 11: C_SNOW}, "scl"),
    "jul10": (dt.date(2023, 7, 10), 700, {}, "SCL"),  # Planetary Computer's key
}
DATETIME = "2023-06-01/2023-07-31"


def _s2(base: int) -> np.ndarray:
    return (base + BAND + P[None]).astype("uint16")


def _scl(classes: dict) -> np.ndarray:
    """[1, 16, 16] uint8 at 20 m: vegetation (4) but for ``classes`` (regions in 10 m pixels)."""
    s = np.full((N, N), 4, "uint8")
    for k, region in classes.items():
        s[region] = k
    return s[None, ::2, ::2].copy()


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    """Collection ``s2-l2a``: the items with their SCL asset; ``s2-noscl``: the same items without one."""
    import pystac
    from rasterio.transform import from_origin

    root = tmp_path_factory.mktemp("cloudmask")
    cat = pystac.Catalog("cloudmask-cat", "S2 L2A with SCL")
    ext = pystac.Extent(pystac.SpatialExtent([[14.9, 47.8, 15.1, 47.9]]), pystac.TemporalExtent([[None, None]]))
    t, t20 = from_origin(ORIGIN[0], ORIGIN[1], 10, 10), from_origin(ORIGIN[0], ORIGIN[1], 20, 20)
    for coll_id, prefix, with_scl in (("s2-l2a", "", True), ("s2-noscl", "n_", False)):
        coll = pystac.Collection(coll_id, "S2", ext)
        for item_id, (day, base, classes, scl_key) in ITEMS.items():
            it = _item(pystac, prefix + item_id, dt.datetime(day.year, day.month, day.day, 10, tzinfo=dt.UTC),
                       _bbox(CRS, t, N, N), CRS, 5.0)
            data = _s2(base)
            for k, band in enumerate(S2_BANDS):
                key = S2_ASSET_ALIASES[band][0]
                href = _cog(root / f"{item_id}_{key}.tif", data[k : k + 1], CRS, t, nodata=0) if not prefix else (
                    str(root / f"{item_id}_{key}.tif"))
                it.add_asset(key, pystac.Asset(href, media_type=pystac.MediaType.COG, roles=["data"]))
            if with_scl:
                href = _cog(root / f"{item_id}_scl.tif", _scl(classes), CRS, t20, nodata=0)
                it.add_asset(scl_key, pystac.Asset(href, media_type=pystac.MediaType.COG, roles=["data"]))
            coll.add_item(it)
        cat.add_child(coll)
    cat.normalize_hrefs(str(root / "catalog"))
    cat.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    inset = from_origin(ORIGIN[0] + 3, ORIGIN[1] - 3, 10, 10)  # 3 m inside the scenes: the grid is theirs
    left, bottom, right, top = _bbox(CRS, inset, N - 0.6, N - 0.6)
    return {"catalog": root / "catalog" / "catalog.json", "bbox": f"{left},{bottom},{right},{top}"}


def _ingest(catalog, out, *extra, collection="s2-l2a"):
    return cli(*["ingest", "stac", "--catalog", str(catalog["catalog"]), "--collections", collection, "--modality",
                 "s2_l2a", "--bbox", catalog["bbox"], "--datetime", DATETIME, "--composite", "month", "--chip-size",
                 "16", "--out", str(out), "--quiet", *extra])


def _where(transform) -> tuple[int, int]:
    """(row, col) of a chip's first pixel in the scenes' pixel grid."""
    return round((ORIGIN[1] - transform[5]) / 10), round((transform[2] - ORIGIN[0]) / 10)


def _june(mask_snow: bool = False) -> np.ndarray:
    """The masked June composite, by hand: median(1000, 2000, 4000) = 2000 + pattern where all three are clear;
    jun15 cloudy -> median(1000, 4000) = 2500; jun05 saturated -> median(2000, 4000) = 3000; all masked -> 0
    (nodata); jun25's snow kept (2000) unless masked too (median(1000, 2000) = 1500)."""
    base = np.full((N, N), 2000)
    base[B_CLOUD], base[A_SATURATED], base[C_SNOW] = 2500, 3000, 1500 if mask_snow else 2000
    out = base[None] + BAND + P[None]
    out[(slice(None), *ALL_CLOUD)] = 0
    return out


def _chips(st: ChipStore, key: str) -> dict[tuple[int, int], np.ndarray | None]:
    """Chip arrays by their first pixel (row, col) in the scenes' grid; None where absent."""
    idx = st.index
    return {_where(np.asarray(idx["transform"].iloc[i])): st.read(key, i) if idx[f"has_{key}"].iloc[i] else None
            for i in range(len(st))}


def test_scl_masked_composite_is_the_median_of_the_clear_acquisitions(catalog, tmp_path):
    out = tmp_path / "masked"
    r = _ingest(catalog, out)  # the default: S2 L2A with an SCL asset is masked
    assert r.exit_code == 0, r.output
    assert ("note: cloud mask: collection 's2-l2a': SCL classes 0,1,3,8,9,10 (no data, saturated/defective, cloud "
            "shadow, cloud medium probability, cloud high probability, thin cirrus) of asset SCL/scl masked before "
            "the median in 4 of 4 items") in r.output
    st = ChipStore(out)
    assert len(st) == 4 and set(st.modalities) == {"s2", "s2_t2"}
    r = cli("info", out)  # the store says how it was composited, after the ingest's own output is gone
    assert r.exit_code == 0 and "composite  per month: " in r.output, r.output
    assert ("           cloud mask: collection 's2-l2a': SCL classes 0,1,3,8,9,10 (no data, saturated/defective, "
            "cloud shadow") in r.output
    assert json.loads(cli("info", out, "--json").output)["composite"]["cloud_mask"]["collections"]["s2-l2a"]["mask"] == "scl"
    june = _june()
    for (r0, c0), a in _chips(st, "s2").items():
        np.testing.assert_array_equal(a, june[:, r0:r0 + 16, c0:c0 + 16], err_msg=f"chip at {(r0, c0)}")
    # the all-cloudy quarter is nodata (0 in every band); July (clear) is the one item
    assert (_chips(st, "s2")[(0, 16)][:, :8, :8] == 0).all()
    for (r0, c0), a in _chips(st, "s2_t2").items():
        np.testing.assert_array_equal(a, (700 + BAND + P[None])[:, r0:r0 + 16, c0:c0 + 16])
    # every chip had a clear pixel of each June item: dated by the middle one; the ids used are those items
    idx = st.index
    assert set(idx["date_s2"]) == {"2023-06-15"} and set(idx["date_s2_t2"]) == {"2023-07-10"}
    assert all(set(dict(x.split("=") for x in s.split(";"))["s2"].split("+")) == {"jun05", "jun15", "jun25"}
               for s in idx["source"])
    mask = st.meta["source"]["composite"]["cloud_mask"]
    assert mask == {"option": "default", "min_clear": 0.0, "collections": {"s2-l2a": {
        "mask": "scl", "classes": [0, 1, 3, 8, 9, 10], "assets": ["SCL", "scl"], "masked_items": 4,
        "unmasked_items": []}}}
    assert st.report().get("below_min_clear") == []

    # snow masked too, explicitly: its pixels take the median of the two other items
    out2 = tmp_path / "snow"
    r = _ingest(catalog, out2, "--cloud-mask", "scl", "--mask-classes", "0,1,3,8,9,10,11")
    assert r.exit_code == 0, r.output
    june = _june(mask_snow=True)
    for (r0, c0), a in _chips(ChipStore(out2), "s2").items():
        np.testing.assert_array_equal(a, june[:, r0:r0 + 16, c0:c0 + 16])


def test_min_clear_leaves_a_cloudy_chip_date_absent_and_says_so(catalog, tmp_path):
    out = tmp_path / "minclear"
    # chip (0, 16) is 3/4 clear in June (a quarter masked in every item): below 0.8; the others are all clear
    r = _ingest(catalog, out, "--min-clear", "0.8")
    assert r.exit_code == 0, r.output
    assert ("1 chip-date(s) left absent with a clear fraction below --min-clear 0.8 or no clear pixel (s2: 1; "
            "listed in ingest_report.json)") in r.output
    st = ChipStore(out)
    chips = _chips(st, "s2")
    assert chips[(0, 16)] is None and all(a is not None for k, a in chips.items() if k != (0, 16))
    assert all(a is not None for a in _chips(st, "s2_t2").values())  # July is clear: the chip stays, one date less
    idx = st.index
    row = [i for i in range(len(st)) if _where(np.asarray(idx["transform"].iloc[i])) == (0, 16)][0]
    assert not idx["has_s2"].iloc[row] and idx["date_s2"].isna().iloc[row]
    rep = st.report()
    assert rep["below_min_clear"] == [{"chip": idx["chip_id"].iloc[row], "key": "s2", "clear": 0.75}]
    assert rep["n_below_min_clear"] == 1 and st.meta["source"]["composite"]["cloud_mask"]["min_clear"] == 0.8
    assert "s2" in r.output and "present in 3 chips" in r.output  # the summary's count for s2


def test_cloud_mask_none_gives_the_unmasked_median_bytes(catalog, tmp_path):
    """--cloud-mask none on items with SCL, and the default on the same items without SCL, write what the
    composite wrote before the cloud mask existed: median(1000, 2000, 4000) = 2000 + pattern in June, bytes equal."""
    a, b = tmp_path / "none", tmp_path / "noscl"
    r = _ingest(catalog, a, "--cloud-mask", "none")
    assert r.exit_code == 0, r.output
    assert "cloud mask" not in r.output  # asked for: nothing to note
    r = _ingest(catalog, b, collection="s2-noscl")
    assert r.exit_code == 0, r.output
    assert ("note: cloud mask: collection 's2-noscl' is not cloud-masked: its items have no SCL asset (map one with "
            "--asset s2-noscl:SCL=ASSET), so clouds the assets do not mask as nodata enter the median") in r.output
    sa, sb = ChipStore(a), ChipStore(b)
    for key in ("s2", "s2_t2"):
        ca, cb = _chips(sa, key), _chips(sb, key)
        assert ca.keys() == cb.keys() and len(ca) == 4
        for k in ca:
            assert ca[k].tobytes() == cb[k].tobytes()
            base = 2000 if key == "s2" else 700
            np.testing.assert_array_equal(ca[k], (base + BAND + P[None])[:, k[0]:k[0] + 16, k[1]:k[1] + 16])
    assert sa.meta["source"]["composite"]["cloud_mask"]["collections"] == {
        "s2-l2a": {"mask": "none", "reason": "--cloud-mask none"}}
    assert sb.meta["source"]["composite"]["cloud_mask"]["collections"] == {
        "s2-noscl": {"mask": "none", "reason": "no SCL asset"}}


def test_cloud_mask_bad_input(catalog, tmp_path):
    r = _ingest(catalog, tmp_path / "a", "--cloud-mask", "scl", collection="s2-noscl")
    one_line_error(r, "item n_", "of collection 's2-noscl' has no SCL asset for --cloud-mask scl", "--asset")
    for bad, frag in (("3,x", "'x' is not an SCL class code"), ("12", "'12' is not an SCL class code"),
                      ("", "expected comma-separated SCL class codes"), ("3,,9", "expected comma-separated")):
        r = _ingest(catalog, tmp_path / "b", "--mask-classes", bad)
        one_line_error(r, f"--mask-classes {bad!r}", frag)
    r = _ingest(catalog, tmp_path / "c", "--cloud-mask", "none", "--mask-classes", "9")
    one_line_error(r, "--mask-classes: nothing is masked with --cloud-mask none")
    r = _ingest(catalog, tmp_path / "d", "--cloud-mask", "fmask")
    one_line_error(r, "--cloud-mask 'fmask': expected scl")
    r = _ingest(catalog, tmp_path / "e", "--min-clear", "1.5")
    one_line_error(r, "--min-clear 1.5: expected a fraction")
    r = cli(*["ingest", "stac", "--catalog", str(catalog["catalog"]), "--collections", "s2-l2a", "--modality",
              "s2_l2a", "--bbox", catalog["bbox"], "--cloud-mask", "scl", "--chip-size", "16", "--out",
              str(tmp_path / "f")])
    one_line_error(r, "--cloud-mask scl: cloud masking applies to --composite only")
    assert not any((tmp_path / d).exists() for d in "abcdef")


def test_parse_mask_classes_and_the_asset_override(catalog, tmp_path):
    assert parse_mask_classes(None) == SCL_MASK_DEFAULT == (0, 1, 3, 8, 9, 10)
    assert parse_mask_classes(" 9, 8,9 ") == (8, 9) and parse_mask_classes([np.int64(3), 10]) == (3, 10)
    for bad in ("cloud", "-1", "3.0", [True], [3.5]):
        with pytest.raises(ValueError, match="--mask-classes"):
            parse_mask_classes(bad)
    # --asset COLLECTION:SCL=ASSET names the scene classification asset; a missing one is named
    st = ingest_stac(catalog["catalog"], ["s2-l2a"], tmp_path / "asset", {"s2-l2a": "s2_l2a"}, chip_size=16,
                     bbox=catalog["bbox"], datetime="2023-06-01/2023-06-30", composite="month", cloud_mask="scl",
                     assets={"s2-l2a": {"SCL": "scl"}})
    mask = st.meta["source"]["composite"]["cloud_mask"]["collections"]["s2-l2a"]
    assert mask["assets"] == ["scl"] and mask["masked_items"] == 3
    june = _june()
    for (r0, c0), a in _chips(st, "s2").items():
        np.testing.assert_array_equal(a, june[:, r0:r0 + 16, c0:c0 + 16])
    from earthembed.errors import IngestError

    with pytest.raises(IngestError, match="asset 'cloudmask' given for SCL does not exist"):
        ingest_stac(catalog["catalog"], ["s2-l2a"], tmp_path / "bad", {"s2-l2a": "s2_l2a"}, chip_size=16,
                    bbox=catalog["bbox"], datetime=DATETIME, composite="month", assets={"s2-l2a": {"SCL": "cloudmask"}})
    assert json.loads(json.dumps(mask)) == mask


def test_a_resumed_ingest_keeps_the_chip_dates_left_absent_before(catalog, tmp_path, monkeypatch):
    """Interrupted after chip (0, 16) was committed without its June date: the resume does not read that chip again
    and still lists it in ingest_report.json (and the note)."""
    from earthembed.data.ingest import stac
    from earthembed.errors import IngestError

    out = tmp_path / "resume"
    kw = dict(chip_size=16, bbox=catalog["bbox"], datetime=DATETIME, composite="month", min_clear=0.8, batch_size=1)
    chip = stac._MedianReader.chip

    def failing(self, window, note):
        if int(window.row_off) == 16:
            raise IngestError("interrupted")
        return chip(self, window, note)

    monkeypatch.setattr(stac._MedianReader, "chip", failing)
    with pytest.raises(IngestError, match="interrupted"):
        ingest_stac(catalog["catalog"], ["s2-l2a"], out, {"s2-l2a": "s2_l2a"}, **kw)
    monkeypatch.setattr(stac._MedianReader, "chip", chip)
    st = ingest_stac(catalog["catalog"], ["s2-l2a"], out, {"s2-l2a": "s2_l2a"}, **kw)
    assert st.report()["below_min_clear"] == [{"chip": "stac_0_1", "key": "s2", "clear": 0.75}]
    assert "1 chip-date(s) left absent" in stac.composite_note(st.meta["source"], st.report())
