"""Ingest imagery from a STAC catalog (a STAC API or a static catalog) into chips on one grid.

Items are found with pystac-client (STAC API item search) or, for a static catalog (a local path or a URL of a
catalog.json without the item-search API), by walking it with pystac and filtering by collection, bbox and
datetime. Each collection becomes one store modality (``--modality``: its registered product, e.g. S2 L2A,
S1 dB, elevation; the store key is the product's name: ``s2``, ``s1``, ``dem``).

Grid: one for all collections, so an S2, an S1 and a DEM chip are the same ground. CRS: ``crs``, else the CRS
of the first collection's first item's first band asset, read from the raster itself (the native UTM zone of
S2), when it is projected, else the UTM zone of the bbox centre; pixel size: ``resolution``, else the first
product's resolution. The bbox (lon/lat) is transformed into it and snapped outwards to multiples of the pixel
size, so S2 10 m pixels are read without resampling. Tiles as in ``ingest rasters`` (full chips, edge remainders
dropped; chip id ``<aoi>_<row>_<col>``; spatial-block splits); every chip keeps its CRS and pixel transform.
A grid of more than ``max_chips`` chips (a whole-world ``--bbox``) is refused before anything is searched or
written, with its size: estimated from the bbox's area before the search, counted exactly once the grid is known.

Metadata is checked against the rasters, and the rasters win: every band asset is opened (header only) before
anything is written. An item whose ``proj:code``/``proj:epsg`` disagrees with its assets' CRS, or whose
geometry (bbox) does not overlap its assets' footprint, is used where its rasters really are, and the
disagreement is reported: a :class:`StacWarning` naming the item and both values, and the ``warnings`` list of
``ingest_report.json``. An item whose assets do not overlap ``--bbox`` at all is skipped with that reason
(``skipped`` in the report); when no item of a collection is left, the error names each item, where its assets
are and where its geometry says they are.

Reading: every band asset is read as a (Cloud-Optimised) GeoTIFF through a :class:`rasterio.vrt.WarpedVRT`
aligned to the grid, chip window by chip window (bilinear, nearest for categorical products), with the same
machinery as ``ingest rasters``. Where several items of a collection cover a chip, each pixel takes the first
valid value in the order: least cloud cover (``eo:cloud_cover``), then newest. ``datetime`` selects the
items of every collection except elevation products (a DEM's date says nothing about the scene). The chip's ``date_<key>`` is
the date of the item that gave it the most pixels; the item ids per chip are in the index ``source`` column.
Rejected: odc-stac/stackstac, which build the same aligned cube but bring xarray + dask + odc-geo for what a
few WarpedVRT windows already do here, and load by time slice rather than by chip.

Composites (``--composite month|quarter|year|Nd``): instead of one mosaic over the whole ``--datetime`` range, one
per-period composite per dated collection, stored as a date series ``s2``, ``s2_t2``, ... in period order (read by
:mod:`earthembed.data.dates`): per pixel the median of the period's valid values, each chip dated by the median
acquisition date of the items it used, absent where no item of the period has a valid pixel; periods without any
item are counted (one note), not written. The reducer and date choices are argued in :func:`ingest_stac`.
Cloud mask (``--cloud-mask scl|none``, ``--mask-classes``, ``--min-clear``): for Sentinel-2 L2A items with an SCL
(scene classification) asset, pixels of cloud, shadow, cirrus, no-data and defective classes are left out of the
median, as stackstac / odc-stac tutorials do before theirs; a pixel with no clear acquisition is nodata and a
chip-date with too few clear pixels is absent (counted in the note, listed in ``ingest_report.json``).

Band -> asset: an explicit ``assets`` mapping, else the asset named like the band (``B04``, ``B4``, ``vv``),
else the asset whose ``eo:bands`` / ``bands`` entry has that name, else the Earth Search name of an S2 band
(``red``, ``nir08``, ``swir16`` ...), else, for a one-band product, the item's only data asset. An item lacking
a band is an error naming the item, the band and the assets it has, raised before anything is written.

Bad input: an unknown collection, no item in the bbox/datetime, a band without an asset, an asset that
cannot be read or has no CRS (named, with the item), no item's assets in the bbox, and a grid too large raise
:class:`IngestError`. Nothing is written before the items, their band assets and the grid are checked; a read
failure mid-way leaves an incomplete store (readers refuse it) that the same command resumes.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import datetime as _dt
import functools
import json
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from earthembed.data.dates import date_key
from earthembed.data.ingest.common import IngestError, crs_string, footprint_wgs84, open_raster
from earthembed.data.ingest.rasters import (
    MIN_SPLIT_BLOCKS,
    SPLIT_BLOCK,
    _check_fits,
    _pairs,
    _read,
    _warped,
    normalize_band_name,
    pending_tiles,
)
from earthembed.data.ingest.splits import block_size_for, block_splits
from earthembed.data.modalities import Modality, get_modality
from earthembed.data.store import LOCK_FILE, REPORT_FILE, ChipRecord, ChipStore, StoreWriter
from earthembed.errors import LockedError
from earthembed.outputs import OutputLock, write_json
from earthembed.progress import progress as make_progress

# Earth Search (element84) asset keys of Sentinel-2 bands
S2_ASSET_ALIASES: dict[str, tuple[str, ...]] = {
    "B01": ("coastal",), "B02": ("blue",), "B03": ("green",), "B04": ("red",), "B05": ("rededge1",),
    "B06": ("rededge2",), "B07": ("rededge3",), "B08": ("nir",), "B8A": ("nir08",), "B09": ("nir09",),
    "B10": ("cirrus",), "B11": ("swir16",), "B12": ("swir22",),
}
_DATA_MEDIA = ("image/tiff", "image/vnd.stac.geotiff", "application/x-geotiff")

#: Sentinel-2 L2A scene classification (SCL) classes, by code
SCL_CLASSES: dict[int, str] = {
    0: "no data", 1: "saturated/defective", 2: "dark area", 3: "cloud shadow", 4: "vegetation", 5: "not vegetated",
    6: "water", 7: "unclassified", 8: "cloud medium probability", 9: "cloud high probability", 10: "thin cirrus",
    11: "snow",
}
#: the SCL classes ``--cloud-mask scl`` masks by default (snow, 11, is kept: it is the ground in winter)
SCL_MASK_DEFAULT = (0, 1, 3, 8, 9, 10)

#: the most chips one ingest lays out (about 1 GB of bookkeeping; 64 px S2 chips of 10 m cover 410 000 km2)
MAX_CHIPS = 1_000_000
_EARTH_RADIUS_M = 6_371_008.8


class StacWarning(UserWarning):
    """Catalogue metadata that disagrees with the rasters (which were trusted); also in ``ingest_report.json``."""


@dataclasses.dataclass
class BandSource:
    """Where one band of an item is: asset key, absolute href and 1-based band index in that file."""

    asset: str
    href: str
    bidx: int


@dataclasses.dataclass
class ItemBands:
    """One item of a collection with its band sources (in the product's band order), date and footprint."""

    item: Any  # pystac.Item
    bands: list[BandSource]
    date: str
    cloud: float | None
    window: tuple[int, int, int, int] | None = None  # (col0, row0, col1, row1) on the grid
    scl: BandSource | None = None  # the scene classification asset (--cloud-mask scl), when it is used


@dataclasses.dataclass
class AssetInfo:
    """What an asset's raster says of itself: CRS, bounds in it, and its footprint in lon/lat."""

    crs: Any  # rasterio CRS
    bounds: tuple[float, float, float, float]
    lonlat: tuple[float, float, float, float]


# -- finding items ----------------------------------------------------------------------------------------
def parse_datetime(value: str | None) -> tuple[_dt.datetime | None, _dt.datetime | None]:
    """``A/B``, ``A/..``, ``../B`` or a single instant/date (a date means that whole day), as UTC datetimes."""
    if value is None or not str(value).strip():
        return None, None

    def one(s: str, end: bool) -> _dt.datetime | None:
        s = s.strip()
        if s in ("", ".."):
            return None
        try:
            if len(s) == 10:  # a date: the whole day
                d = _dt.datetime.fromisoformat(s).replace(tzinfo=_dt.UTC)
                return d + _dt.timedelta(days=1) - _dt.timedelta(microseconds=1) if end else d
            d = _dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"--datetime {value!r}: {s!r} is not an ISO date or datetime") from None
        return d if d.tzinfo else d.replace(tzinfo=_dt.UTC)

    parts = str(value).split("/")
    if len(parts) == 1:
        return one(parts[0], False), one(parts[0], True)
    if len(parts) != 2:
        raise ValueError(f"--datetime {value!r}: expected START/END, START/.., ../END or one date")
    start, end = one(parts[0], False), one(parts[1], True)
    if start and end and start > end:
        raise ValueError(f"--datetime {value!r}: start is after end")
    return start, end


def _item_interval(item: Any) -> tuple[_dt.datetime, _dt.datetime]:
    p = item.properties
    if item.datetime is not None:
        return item.datetime, item.datetime
    parse = _dt.datetime.fromisoformat
    return parse(p["start_datetime"].replace("Z", "+00:00")), parse(p["end_datetime"].replace("Z", "+00:00"))


def _bbox_overlaps(a: Sequence[float], b: Sequence[float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _open_catalog(catalog: str | Path) -> Any:
    """A pystac_client Client for a URL, a pystac Catalog/Collection for a local path."""
    s = str(catalog)
    if s.startswith(("http://", "https://")):
        import warnings

        from pystac_client import Client
        from pystac_client.warnings import NoConformsTo

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NoConformsTo)  # a static catalog: it is walked, not searched
                return Client.open(s)
        except Exception as e:  # network errors, non-STAC responses
            raise IngestError(f"{s}: cannot open the STAC catalog ({e})") from e
    import pystac

    path = Path(s)
    if path.is_dir():
        for name in ("catalog.json", "collection.json"):
            if (path / name).exists():
                path = path / name
                break
    if not path.exists():
        raise IngestError(f"{path}: STAC catalog not found")
    try:
        return pystac.read_file(str(path))
    except Exception as e:
        raise IngestError(f"{path}: not a readable STAC catalog ({e})") from e


def find_items(
    catalog: str | Path, collections: Sequence[str], bbox: Sequence[float] | None, datetime: str | None,
    timeless: Sequence[str] = (),
) -> dict[str, list[Any]]:
    """Items per collection intersecting ``bbox`` (lon/lat) within ``datetime`` (not applied to the collections
    in ``timeless``); IngestError naming the collection when one has none."""
    import warnings

    import pystac
    from pystac_client import Client
    from pystac_client.warnings import PystacClientWarning

    start, end = parse_datetime(datetime)
    cat = _open_catalog(catalog)

    out: dict[str, list[Any]] = {}
    if isinstance(cat, Client) and cat.conforms_to("ITEM_SEARCH"):
        for c in collections:
            try:
                search = cat.search(collections=[c], bbox=list(bbox) if bbox else None,
                                    datetime=None if c in timeless else datetime)
                out[c] = list(search.items())
            except Exception as e:
                raise IngestError(f"{catalog}: item search in collection {c!r} failed ({e})") from e
        extents: dict[str, Any] = {}
    else:
        children = {ch.id: ch for ch in cat.get_children()} if hasattr(cat, "get_children") else {}
        own_id = getattr(cat, "id", None)
        extents = {k: getattr(getattr(v, "extent", None), "spatial", None) for k, v in children.items()}
        if own_id is not None and hasattr(cat, "extent"):
            extents[own_id] = cat.extent.spatial
        known = set(children) | ({own_id} if own_id else set())
        missing = [c for c in collections if c not in known]
        with warnings.catch_warnings():  # pystac-client says a static catalog is walked: that is the plan
            warnings.simplefilter("ignore", PystacClientWarning)
            items_all = list(cat.get_items(recursive=True)) if hasattr(cat, "get_items") else []
        found_ids = {it.collection_id for it in items_all}
        missing = [c for c in missing if c not in found_ids]
        if missing:
            raise IngestError(f"{catalog}: no collection {missing} (it has {sorted(known | found_ids - {None})})")
        for c in collections:
            keep = []
            for it in items_all:
                coll = it.collection_id or (own_id if isinstance(cat, pystac.Collection) else None)
                if coll != c:
                    continue
                if bbox and it.bbox and not _bbox_overlaps(it.bbox, bbox):
                    continue
                t0, t1 = _item_interval(it)
                if c not in timeless and ((start and t1 < start) or (end and t0 > end)):
                    continue
                keep.append(it)
            out[c] = keep
    for c, items in out.items():
        if not items:
            ext = extents.get(c)
            ext_s = f"; the collection's extent is {ext.bboxes[0]}" if ext is not None and ext.bboxes else ""
            raise IngestError(
                f"{catalog}: no item of collection {c!r} intersects bbox {list(bbox) if bbox else 'any'} "
                f"within datetime {datetime or 'any'}{ext_s}"
            )
    return out


# -- composites (--composite) ---------------------------------------------------------------------------------
CALENDAR_PERIODS = ("month", "quarter", "year")


@dataclasses.dataclass(frozen=True)
class Period:
    """One composite period: its label (``2023-07``, ``2023-Q3``, ``2023``, ``2023-07-01/2023-07-10``) and first
    and last day (inclusive, clipped to the time range)."""

    label: str
    start: _dt.date
    end: _dt.date


def parse_composite(value: str) -> str:
    """``month``, ``quarter``, ``year`` or ``<N>d`` (N-day periods), normalised; ValueError naming the option."""
    v = str(value).strip().lower()
    if v in CALENDAR_PERIODS or (v.endswith("d") and v[:-1].isdigit() and int(v[:-1]) > 0):
        return v if v in CALENDAR_PERIODS else f"{int(v[:-1])}d"
    raise ValueError(f"--composite {value!r}: expected month, quarter, year or Nd (N-day periods, e.g. 10d)")


def composite_periods(composite: str, first: _dt.date, last: _dt.date) -> list[Period]:
    """The periods of ``composite`` (:func:`parse_composite`) covering ``first`` .. ``last``: calendar months,
    quarters or years, or N-day periods from ``first``; the first and last clipped to the range."""
    out: list[Period] = []
    if composite.endswith("d"):
        step = _dt.timedelta(days=int(composite[:-1]))
        start = first
        while start <= last:
            end = min(start + step - _dt.timedelta(days=1), last)
            out.append(Period(f"{start.isoformat()}/{end.isoformat()}", start, end))
            start += step
        return out
    months = {"month": 1, "quarter": 3, "year": 12}[composite]
    y, m = first.year, (first.month - 1) // months * months + 1
    while _dt.date(y, m, 1) <= last:
        ny, nm = (y + (m - 1 + months) // 12, (m - 1 + months) % 12 + 1)
        label = {"month": f"{y}-{m:02d}", "quarter": f"{y}-Q{(m - 1) // 3 + 1}", "year": f"{y}"}[composite]
        out.append(Period(label, max(_dt.date(y, m, 1), first),
                          min(_dt.date(ny, nm, 1) - _dt.timedelta(days=1), last)))
        y, m = ny, nm
    return out


def split_by_period(items: list[ItemBands], periods: list[Period]) -> list[list[ItemBands]]:
    """``items`` per period (in their order), each by its acquisition date (an interval's start), clipped to the
    periods' range so an item whose interval began before the range goes to the first period."""
    starts = [p.start for p in periods]
    out: list[list[ItemBands]] = [[] for _ in periods]
    for x in items:
        day = min(max(_item_interval(x.item)[0].date(), periods[0].start), periods[-1].end)
        out[bisect.bisect_right(starts, day) - 1].append(x)
    return out


def parse_cloud_mask(value: str | None) -> str | None:
    """``scl`` or ``none`` (normalised), None for the default; ValueError naming the option."""
    if value is None:
        return None
    v = str(value).strip().lower()
    if v not in ("scl", "none"):
        raise ValueError(f"--cloud-mask {value!r}: expected scl (mask with the Sentinel-2 SCL asset) or none")
    return v


def parse_mask_classes(value: str | Sequence[int] | None) -> tuple[int, ...]:
    """SCL class codes to mask (``0,1,3,8,9,10``), sorted and unique; None: :data:`SCL_MASK_DEFAULT`.
    ValueError naming the option and the value that is not a class."""
    if value is None:
        return SCL_MASK_DEFAULT
    parts = [p.strip() for p in value.split(",")] if isinstance(value, str) else list(value)
    known = ", ".join(f"{k} {n}" for k, n in SCL_CLASSES.items())
    if not parts or any(p == "" for p in parts):
        raise ValueError(f"--mask-classes {value!r}: expected comma-separated SCL class codes ({known}); "
                         "to mask nothing, pass --cloud-mask none")
    out = set()
    for p in parts:
        if isinstance(p, str):
            k = int(p) if p.isascii() and p.isdigit() else None
        else:
            k = p if isinstance(p, int | np.integer) and not isinstance(p, bool) else None
        if k not in SCL_CLASSES:
            raise ValueError(f"--mask-classes {value!r}: {p!r} is not an SCL class code ({known})")
        out.add(int(k))
    return tuple(sorted(out))


def _check_min_clear(value: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    if not 0.0 <= v <= 1.0:  # NaN too
        raise ValueError(f"--min-clear {value!r}: expected a fraction of the chip's pixels, 0.0 .. 1.0")
    return v


def _is_s2_l2a(m: Modality) -> bool:
    """A Sentinel-2 L2A product (its items carry the scene classification, SCL)."""
    return m.kind == "optical" and "l2a" in m.product.lower()


def composite_note(source: dict[str, Any], report: dict[str, Any] | None = None) -> str | None:
    """Notes on a composite ingest from a store's ``source`` metadata (and its ``ingest_report.json``), one line
    each: the composite periods without any item per collection; the cloud mask applied (SCL classes and asset per
    collection), an S2 L2A collection left unmasked for want of an SCL asset, and the chip-dates left absent as
    too cloudy (``--min-clear``). None when there is nothing to say (or the ingest made no composites)."""
    comp = source.get("composite")
    if not comp:
        return None
    lines = []
    parts = []
    for c, empty in comp["empty"].items():
        if empty:
            shown = ", ".join(empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
            parts.append(f"collection {c!r}: {len(empty)} of {comp['n_periods']} periods without any item ({shown})")
    if parts:
        lines.append(
            f"note: --composite {comp['period']}: {'; '.join(parts)}; no composite is written for those, the others "
            "are " + ", ".join(f"{c} {' '.join(p['key'] for p in ps)}" for c, ps in comp["periods"].items()))
    mask = comp.get("cloud_mask")
    if mask:
        parts = []
        for c, m in mask["collections"].items():
            if m["mask"] == "scl":
                unmasked = m["unmasked_items"]
                parts.append(
                    f"collection {c!r}: SCL classes {','.join(map(str, m['classes']))} "
                    f"({', '.join(SCL_CLASSES[k] for k in m['classes'])}) of asset {'/'.join(m['assets'])} "
                    f"masked before the median in {m['masked_items']} of {m['masked_items'] + len(unmasked)} items"
                    + (f" (not in {', '.join(unmasked[:3])}{' ...' if len(unmasked) > 3 else ''}: no SCL asset)"
                       if unmasked else ""))
            elif m["reason"] == "no SCL asset":
                parts.append(f"collection {c!r} is not cloud-masked: its items have no SCL asset (map one with "
                             f"--asset {c}:SCL=ASSET), so clouds the assets do not mask as nodata enter the median")
        low = (report or {}).get("below_min_clear") or []
        if low:
            by_key: dict[str, int] = {}
            for x in low:
                by_key[x["key"]] = by_key.get(x["key"], 0) + 1
            why = (f"a clear fraction below --min-clear {mask['min_clear']:g} or no clear pixel" if mask["min_clear"]
                   else "no clear pixel")
            parts.append(f"{len(low)} chip-date(s) left absent with {why} ("
                         + ", ".join(f"{k}: {n}" for k, n in by_key.items()) + f"; listed in {REPORT_FILE})")
        if parts:
            lines.append(f"note: cloud mask: {'; '.join(parts)}")
    return "\n".join(lines) or None


# -- band -> asset ------------------------------------------------------------------------------------------
def _asset_bands(asset: Any) -> list[dict[str, Any]]:
    d = asset.to_dict() if hasattr(asset, "to_dict") else dict(asset)
    return list(d.get("eo:bands") or d.get("bands") or [])


def _is_data(asset: Any) -> bool:
    roles = asset.roles or []
    media = asset.media_type or ""
    return "data" in roles or any(media.startswith(m) for m in _DATA_MEDIA)


def item_band_sources(item: Any, collection: str, modality: Modality, explicit: dict[str, str] | None = None) -> list[BandSource]:
    """Where each band of ``modality`` is in ``item`` (see the module docstring for the rules)."""
    assets = item.assets
    by_norm = {normalize_band_name(k): k for k in assets}
    out = []
    for band in modality.band_names:
        nb = normalize_band_name(band)
        key, bidx = None, 1
        if explicit and band in explicit:
            key = explicit[band]
            if key not in assets:
                raise IngestError(
                    f"item {item.id} of collection {collection!r}: asset {key!r} given for band {band} does not "
                    f"exist (assets: {sorted(assets)})"
                )
        elif nb in by_norm:
            key = by_norm[nb]
        else:
            for k, a in assets.items():
                names = [normalize_band_name(str(b.get("name", ""))) for b in _asset_bands(a)]
                if nb in names:
                    key, bidx = k, names.index(nb) + 1
                    break
            if key is None:
                for alias in S2_ASSET_ALIASES.get(nb, ()) if modality.kind == "optical" else ():
                    if alias in assets:
                        key = alias
                        break
            if key is None and modality.num_bands == 1:
                data = [k for k, a in assets.items() if _is_data(a)]
                if len(data) == 1:
                    key = data[0]
        if key is None:
            raise IngestError(
                f"item {item.id} of collection {collection!r}: no asset for band {band} of {modality.product!r} "
                f"(assets: {sorted(assets)}); map it with --asset {collection}:{band}=ASSET"
            )
        if len(_asset_bands(assets[key])) > 1 and (not explicit or band not in explicit) and bidx == 1:
            names = [normalize_band_name(str(b.get("name", ""))) for b in _asset_bands(assets[key])]
            bidx = names.index(nb) + 1 if nb in names else 1
        out.append(BandSource(key, assets[key].get_absolute_href() or assets[key].href, bidx))
    return out


def scl_source(item: Any, collection: str, explicit: str | None = None, required: bool = False) -> BandSource | None:
    """The item's scene classification asset: ``explicit`` (``--asset COLLECTION:SCL=ASSET``), else the asset
    keyed ``scl``/``SCL`` (Earth Search / Planetary Computer), else the one-band asset whose ``eo:bands`` name is
    SCL. None without one, unless ``required`` (``--cloud-mask scl`` given): then IngestError naming the item."""
    assets = item.assets
    key = None
    if explicit is not None:
        if explicit not in assets:
            raise IngestError(f"item {item.id} of collection {collection!r}: asset {explicit!r} given for SCL does "
                              f"not exist (assets: {sorted(assets)})")
        key = explicit
    else:
        key = next((k for k in assets if k.lower() == "scl"), None)
        if key is None:
            key = next((k for k, a in assets.items()
                        if [str(b.get("name", "")).upper() for b in _asset_bands(a)] == ["SCL"]), None)
    if key is None:
        if required:
            raise IngestError(f"item {item.id} of collection {collection!r} has no SCL asset for --cloud-mask scl "
                              f"(assets: {sorted(assets)}); map it with --asset {collection}:SCL=ASSET or pass "
                              "--cloud-mask none")
        return None
    return BandSource(key, assets[key].get_absolute_href() or assets[key].href, 1)


def _item_date(item: Any) -> str:
    return _item_interval(item)[0].date().isoformat()


def _item_crs(item: Any) -> tuple[str, str] | None:
    """(property, CRS) the item declares: ``proj:code``, else ``proj:epsg`` as ``EPSG:<n>``; None without one."""
    p = item.properties
    if p.get("proj:code"):
        return "proj:code", str(p["proj:code"])
    if p.get("proj:epsg"):
        try:
            return "proj:epsg", f"EPSG:{int(p['proj:epsg'])}"
        except (TypeError, ValueError):
            return "proj:epsg", str(p["proj:epsg"])
    return None


def _fmt_box(b: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:.4f}" for v in b) + "]"


def _open_asset(href: str) -> Any:
    return open_raster(href) if "://" not in href else _open_remote(href)


def probe_assets(collection: str, items: Sequence[ItemBands]) -> dict[str, AssetInfo]:
    """Open every band asset of ``items`` (header only): its CRS and footprint, read from the raster itself.
    IngestError naming the item and asset for one that cannot be read, has no CRS or lacks the band wanted."""
    from rasterio.warp import transform_bounds

    out: dict[str, AssetInfo] = {}
    for x in items:
        for src in [*x.bands, *([x.scl] if x.scl is not None else [])]:
            if src.href in out:
                continue
            where = f"item {x.item.id} of collection {collection!r}, asset {src.asset!r}"
            try:
                with _open_asset(src.href) as ds:
                    crs, bounds, count = ds.crs, tuple(ds.bounds), ds.count
            except IngestError as e:
                raise IngestError(f"{where}: {e}") from e
            if crs is None:
                raise IngestError(f"{src.href}: {where} has no CRS")
            if src.bidx > count:
                raise IngestError(f"{src.href}: {where} has {count} band(s), band {src.bidx} wanted")
            try:
                lonlat = tuple(transform_bounds(crs, "EPSG:4326", *bounds, densify_pts=21))
            except Exception as e:  # a CRS PROJ cannot transform
                raise IngestError(f"{src.href}: {where}: its bounds cannot be placed in lon/lat ({e})") from e
            out[src.href] = AssetInfo(crs, bounds, lonlat)  # type: ignore[arg-type]
    return out


def _footprint(x: ItemBands, info: dict[str, AssetInfo]) -> tuple[float, float, float, float]:
    """The lon/lat box of all the item's band assets."""
    boxes = [info[s.href].lonlat for s in x.bands]
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))


def check_metadata(collection: str, items: list[ItemBands], info: dict[str, AssetInfo],
                   bbox: Sequence[float] | None) -> tuple[list[ItemBands], list[dict[str, Any]], list[dict[str, Any]]]:
    """The items to use, the disagreements found (item metadata vs its rasters) and the items skipped.

    A ``proj:code``/``proj:epsg`` unlike the assets' CRS, or a geometry (bbox) away from the assets, is a
    disagreement (the rasters are used as they are); an item whose assets do not overlap ``bbox`` is skipped.
    IngestError when every item is skipped, naming each, its assets' footprint and its geometry."""
    from rasterio.crs import CRS

    keep, notes, skipped = [], [], []
    for x in items:
        iid = x.item.id
        declared = _item_crs(x.item)
        if declared is not None:
            prop, value = declared
            for src in x.bands:
                actual = info[src.href].crs
                try:
                    same = CRS.from_user_input(value) == actual
                except Exception:  # not a CRS at all
                    same = False
                if not same:
                    msg = (f"item {iid} of collection {collection!r}: {prop} says {value} but its asset "
                           f"{src.asset!r} is in {crs_string(actual)} (read from {src.href}); the asset's CRS is used")
                    notes.append({"item": iid, "collection": collection, "kind": "crs", "declared": value,
                                  "property": prop, "asset": src.asset, "asset_crs": crs_string(actual),
                                  "message": msg})
                    break
        fp = _footprint(x, info)
        away = bool(x.item.bbox) and not _bbox_overlaps(x.item.bbox, fp)
        geom = f"its geometry's bbox {_fmt_box(x.item.bbox)}" if x.item.bbox else "it has no geometry"
        if bbox is not None and not _bbox_overlaps(fp, bbox):
            skipped.append({"item": f"item {iid}", "collection": collection, "footprint": list(fp),
                            "geometry_bbox": list(x.item.bbox) if x.item.bbox else None,
                            "reason": f"item {iid} of collection {collection!r}: its assets cover "
                                      f"{_fmt_box(fp)} (lon/lat, read from the rasters), outside --bbox "
                                      f"{_fmt_box(bbox)}" + (f"; {geom} does not overlap them" if away else "")})
            continue
        if away:
            msg = (f"item {iid} of collection {collection!r}: {geom} does not overlap its assets, which cover "
                   f"{_fmt_box(fp)} (lon/lat, read from the rasters); the assets are used where they are")
            notes.append({"item": iid, "collection": collection, "kind": "geometry", "geometry_bbox": list(x.item.bbox),
                          "footprint": list(fp), "message": msg})
        keep.append(x)
    if not keep:
        shown = "; ".join(
            f"{s['item']}'s assets cover {_fmt_box(s['footprint'])}"
            + (f" but its geometry says {_fmt_box(s['geometry_bbox'])}" if s["geometry_bbox"] else "")
            for s in skipped[:5]
        )
        more = f"; and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        raise IngestError(
            f"collection {collection!r}: no item's assets overlap --bbox {_fmt_box(bbox or ())}, although the "
            f"search matched {len(items)} item(s) by their geometry: {shown}{more}; the catalogue's geometries "
            "disagree with where the rasters are"
        )
    return keep, notes, skipped


# -- grid ---------------------------------------------------------------------------------------------------------
def utm_crs(lon: float, lat: float) -> str:
    """The WGS 84 / UTM zone of a point (EPSG:326xx north, 327xx south)."""
    zone = min(60, int(math.floor((lon + 180) / 6)) + 1)
    return f"EPSG:{32600 + zone if lat >= 0 else 32700 + zone}"


def stac_grid(bbox: Sequence[float], crs: str, resolution: float) -> tuple[Any, Any, int, int]:
    """(crs, transform, width, height): ``bbox`` (lon/lat) in ``crs``, snapped outwards to the pixel size."""
    from rasterio.crs import CRS
    from rasterio.transform import from_origin
    from rasterio.warp import transform_bounds

    if resolution <= 0:
        raise ValueError(f"resolution must be positive, got {resolution}")
    c = CRS.from_user_input(crs)
    left, bottom, right, top = transform_bounds("EPSG:4326", c, *bbox, densify_pts=21)
    if not all(math.isfinite(v) for v in (left, bottom, right, top)):
        raise IngestError(f"bbox {list(bbox)} cannot be placed in {crs} (it gives {[left, bottom, right, top]}); "
                          "narrow --bbox or choose another --crs")
    left = math.floor(left / resolution) * resolution
    top = math.ceil(top / resolution) * resolution
    width = math.ceil((right - left) / resolution - 1e-9)
    height = math.ceil((top - bottom) / resolution - 1e-9)
    return c, from_origin(left, top, resolution, resolution), width, height


def _is_geographic(crs: str) -> bool:
    from rasterio.crs import CRS

    try:
        return bool(CRS.from_user_input(crs).is_geographic)
    except Exception as e:
        raise ValueError(f"--crs {crs!r}: not a CRS ({e})") from e


def _estimate_chips(bbox: Sequence[float], res: float, chip_size: int, geographic: bool) -> int:
    """Chips of a ``res`` grid over ``bbox`` (lon/lat) from its area on the sphere (degrees when ``geographic``)."""
    if geographic:
        return int((bbox[2] - bbox[0]) / res / chip_size) * int((bbox[3] - bbox[1]) / res / chip_size)
    area = (_EARTH_RADIUS_M ** 2 * math.radians(bbox[2] - bbox[0])
            * abs(math.sin(math.radians(bbox[3])) - math.sin(math.radians(bbox[1]))))
    return int(area / (res * chip_size) ** 2)


def _check_grid_size(n: int, bbox: Sequence[float], user_bbox: bool, chip_size: int, res: float, max_chips: int,
                     estimated: bool = False, size: tuple[int, int] | None = None, geographic: bool = False) -> None:
    if n <= max_chips:
        return
    what = f"--bbox {_fmt_box(bbox)}" if user_bbox else f"the items' extent {_fmt_box(bbox)} (no --bbox given)"
    unit = "degrees" if geographic else "m"
    px = f", a grid of {size[0]:,} x {size[1]:,} px" if size else ""
    raise IngestError(
        f"{what}: {'about ' if estimated else ''}{n:,} chips of {chip_size} px at {res:g} {unit}{px}, more than "
        f"the {max_chips:,} one ingest lays out; nothing was {'searched or ' if estimated else ''}written. Give --bbox the area you need "
        "(a whole-world or continental bbox is rarely meant), or larger --chip-size / --resolution"
    )


def _grid_window(x: ItemBands, info: dict[str, AssetInfo], gcrs: Any, inv: Any) -> tuple[int, int, int, int] | None:
    """(col0, row0, col1, row1) of the item's assets on the grid (None: not placeable, read everywhere)."""
    from rasterio.warp import transform_bounds

    cols, rows = [], []
    for src in x.bands:
        a = info[src.href]
        try:
            left, bottom, right, top = transform_bounds(a.crs, gcrs, *a.bounds, densify_pts=21)
        except Exception:
            return None
        for c, r in (inv @ p for p in ((left, top), (right, bottom))):
            cols.append(c)
            rows.append(r)
    if not all(math.isfinite(v) for v in cols + rows):
        return None
    return math.floor(min(cols)), math.floor(min(rows)), math.ceil(max(cols)), math.ceil(max(rows))


def _add_to_report(out: Path, name: str, entries: list[dict[str, Any]], if_empty: bool = False) -> None:
    """Add ``entries`` to the store's ``ingest_report.json`` as ``name`` and ``n_<name>``, under its lock: the
    metadata disagreements (``warnings``) and the chip-dates left absent as too cloudy (``below_min_clear``).
    Run on the way out of a failed ingest too: a writer that holds the lock by then must not hide the first error."""
    report = out / REPORT_FILE
    if not (entries or if_empty) or not report.exists():
        return
    with contextlib.suppress(LockedError), OutputLock(out, out / LOCK_FILE):
        data = json.loads(report.read_text())
        data[name], data[f"n_{name}"] = list(entries), len(entries)
        write_json(report, data)


def _read_below(out: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """The chip-dates an interrupted ingest at ``out`` left absent as too cloudy (its ``ingest_report.json``),
    by (chip, key)."""
    try:
        return {(x["chip"], x["key"]): x for x in json.loads((out / REPORT_FILE).read_text()).get("below_min_clear") or []}
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return {}


def _parse_bbox(value: str | Sequence[float] | None) -> list[float] | None:
    if value is None:
        return None
    try:
        b = [float(x) for x in (value.split(",") if isinstance(value, str) else value)]
    except ValueError:
        raise ValueError(f"--bbox {value!r}: expected MINLON,MINLAT,MAXLON,MAXLAT") from None
    if len(b) != 4 or not (b[0] < b[2] and b[1] < b[3]) or not (b[0] >= -180 and b[2] <= 180 and b[1] >= -90 and b[3] <= 90):
        raise ValueError(f"--bbox {value!r}: expected MINLON,MINLAT,MAXLON,MAXLAT in degrees, min < max")
    return b


# -- reading ------------------------------------------------------------------------------------------------------
class _CollectionReader:
    """Mosaics the items of one collection onto chip windows of the grid (first valid pixel wins)."""

    #: the clear fraction of the last :meth:`chip` left absent as too cloudy (``--min-clear``), else None
    below: float | None = None

    def __init__(self, key: str, collection: str, modality: Modality, items: list[ItemBands], grid: Any,
                 stack: contextlib.ExitStack) -> None:
        self.key, self.collection, self.modality, self.items = key, collection, modality, items
        self.grid, self.stack = grid, stack
        self._vrts: dict[str, Any] = {}
        self.floating = np.issubdtype(np.dtype(modality.dtype), np.floating)
        self.nodata = modality.nodata if modality.nodata is not None else 0

    def _vrt(self, item: ItemBands, src: BandSource) -> Any:
        v = self._vrts.get(src.href)
        if v is None:
            try:  # CRS and band count were checked by probe_assets before anything was written
                ds = self.stack.enter_context(_open_asset(src.href))
            except IngestError as e:
                raise IngestError(f"item {item.item.id} of collection {self.collection!r}, asset {src.asset!r}: {e}") from e
            src_nodata = ds.nodata if ds.nodata is not None else self.modality.nodata
            v = self.stack.enter_context(_warped(
                ds, self.grid, self.modality.kind == "categorical", self.nodata,
                "float32" if self.floating else None, src_nodata,
            ))
            self._vrts[src.href] = v
        return v

    def _valid(self, a: np.ndarray) -> np.ndarray:
        ok = np.ones(a.shape, dtype=bool)
        if np.issubdtype(a.dtype, np.floating):
            ok &= ~np.isnan(a)
        nd = self.modality.nodata
        if nd is not None and not (isinstance(nd, float) and math.isnan(nd)):
            ok &= a != nd
        return ok

    def _covering(self, window: Any) -> list[tuple[int, ItemBands]]:
        """The items (with their position in ``self.items``) whose assets may cover ``window``."""
        c0, r0 = int(window.col_off), int(window.row_off)
        c1, r1 = c0 + int(window.width), r0 + int(window.height)
        return [(n, it) for n, it in enumerate(self.items)
                if it.window is None or (it.window[0] < c1 and c0 < it.window[2] and it.window[1] < r1
                                         and r0 < it.window[3])]

    def _read_item(self, it: ItemBands, window: Any, note: str) -> np.ndarray:
        """[C, H, W] of ``it`` over ``window`` on the grid (nodata where it has none)."""
        return np.stack([_read(self._vrt(it, src), Path(src.href), window, src.bidx, note) for src in it.bands])

    def chip(self, window: Any, note: str) -> tuple[np.ndarray | None, str | None, list[str]]:
        """(array [C, H, W] or None when no valid pixel, date of the main item, item ids used)."""
        out: np.ndarray | None = None
        valid: np.ndarray | None = None
        gained: dict[int, int] = {}
        for n, it in self._covering(window):
            a = self._read_item(it, window, note)
            ok = self._valid(a)
            if out is None:
                out, valid = a.copy(), ok
                gained[n] = int(ok.sum())
            else:
                take = ok & ~valid
                if take.any():
                    out[take] = a[take]
                    valid |= take
                    gained[n] = int(take.sum())
            if valid.all():
                break
        if out is None or not valid.any():
            return None, None, []
        used = [n for n, g in gained.items() if g > 0]
        main = max(used, key=lambda n: gained[n])
        return out, self.items[main].date, [self.items[n].item.id for n in used]


class _MedianReader(_CollectionReader):
    """The per-period composite of one collection (``--composite``): per pixel and band, the median of the valid
    (and, with ``mask_classes``, clear) values of the period's items covering it (see :func:`ingest_stac`)."""

    def __init__(self, *args: Any, mask_classes: Sequence[int] | None = None, min_clear: float = 0.0) -> None:
        super().__init__(*args)
        self.mask_classes = None if mask_classes is None else np.asarray(mask_classes)
        self.min_clear = min_clear

    def _clear(self, it: ItemBands, window: Any, note: str) -> np.ndarray:
        """[H, W]: True where the item's SCL (20 m, nearest onto the grid) is not a masked class; outside the
        SCL asset it reads as 0 (no data)."""
        src = it.scl
        assert src is not None and self.mask_classes is not None
        v = self._vrts.get(src.href)
        if v is None:
            try:
                ds = self.stack.enter_context(_open_asset(src.href))
            except IngestError as e:
                raise IngestError(f"item {it.item.id} of collection {self.collection!r}, asset {src.asset!r}: {e}") from e
            v = self.stack.enter_context(_warped(ds, self.grid, True, 0, None, ds.nodata if ds.nodata is not None else 0))
            self._vrts[src.href] = v
        return ~np.isin(_read(v, Path(src.href), window, src.bidx, note), self.mask_classes)

    def chip(self, window: Any, note: str) -> tuple[np.ndarray | None, str | None, list[str]]:
        """(median [C, H, W] or None when no item has a valid (clear) pixel there or the clear fraction is below
        ``min_clear`` (then :attr:`below` says it), the median acquisition date of the items that gave the chip a
        valid pixel (the earlier middle one of an even count), their ids)."""
        values, used = [], []
        self.below = None
        seen = False  # a valid pixel before the cloud mask
        for _, it in self._covering(window):
            a = self._read_item(it, window, note)
            ok = self._valid(a)
            if self.mask_classes is not None and it.scl is not None:
                seen = seen or bool(ok.any())
                ok &= self._clear(it, window, note)[None]
            if ok.any():
                values.append(np.where(ok, a.astype(np.float64), np.nan))
                used.append(it)
        if not used:
            if seen:  # every valid pixel masked: as cloudy as a chip-date gets
                self.below = 0.0
            return None, None, []
        with warnings.catch_warnings():  # pixels no item has: an all-NaN slice, nodata below
            warnings.simplefilter("ignore", RuntimeWarning)
            med = np.nanmedian(np.stack(values), axis=0)
        valid = ~np.isnan(med)
        clear = float(valid.all(axis=0).mean())
        if clear < self.min_clear:
            self.below = clear
            return None, None, []
        if not self.floating:
            med = np.rint(med)  # the middle of an even count (x.5) to the nearest integer, half to even
        fill = np.nan if self.floating and self.modality.nodata is None else self.nodata
        out = np.where(valid, med, fill).astype(self.modality.dtype)
        dates = sorted(it.date for it in used)
        return out, dates[(len(dates) - 1) // 2], [it.item.id for it in used]


@contextlib.contextmanager
def _open_remote(href: str):
    """``rasterio.open`` of a URL (GDAL /vsicurl/, /vsis3/ ...) with errors naming the URL."""
    import rasterio
    from rasterio.errors import RasterioError

    try:
        with rasterio.open(href) as src:
            yield src
    except RasterioError as e:
        raise IngestError(f"{href}: cannot read raster ({e.__cause__ or e})") from e


def ingest_stac(
    catalog: str | Path,
    collections: Sequence[str],
    out: str | Path,
    products: dict[str, str],
    chip_size: int = 64,
    bbox: Sequence[float] | str | None = None,
    datetime: str | None = None,
    crs: str | None = None,
    resolution: float | None = None,
    assets: dict[str, dict[str, str]] | None = None,
    aoi: str = "stac",
    overwrite: bool = False,
    batch_size: int = 64,
    *,
    progress: bool = False,
    max_chips: int = MAX_CHIPS,
    composite: str | None = None,
    cloud_mask: str | None = None,
    mask_classes: str | Sequence[int] | None = None,
    min_clear: float = 0.0,
) -> ChipStore:
    """Chips of ``collections`` of a STAC ``catalog`` over ``bbox`` (lon/lat) and ``datetime`` into a store.

    ``products`` maps each collection to a registered product (its store key is the product's name);
    ``assets`` maps ``{collection: {band: asset key}}`` where the automatic band -> asset rules fail.
    ``progress=True`` reports progress per chip window on stderr. ``max_chips``: a larger grid is refused.
    Metadata that disagrees with the rasters is warned about (:class:`StacWarning`) and recorded in
    ``ingest_report.json`` (see the module docstring).

    ``composite`` (``month``, ``quarter``, ``year`` or ``<N>d``): instead of one mosaic over the whole time range,
    one composite per period of every dated collection, stored as a date series ``s2``, ``s2_t2``, ... in period
    order (:mod:`earthembed.data.dates`); periods are calendar months / quarters / years, or N days from the range's
    start, within ``datetime`` (an open end: the items' first or last date). Per pixel and band a composite is the
    **median** of the valid values of the period's items covering it: valid as in a mosaic (not NaN, not the
    product's nodata, so clouds masked as nodata in the assets are left out; unmasked clouds are not detected),
    the median because it needs no cloud mask to resist a minority of cloudy, shadowed or hazy values where a mean
    takes a share of each, and it is always a value between observed ones (integer products: rounded, half to even).
    Categorical products take the mosaic's first valid value per period instead (a median of class codes is no
    class); elevation products are not composited (one key, as without ``composite``). A chip's
    ``date_<key>`` is the **median acquisition date** of the items that gave it a valid pixel in that period
    (the earlier middle one of an even count: always a real acquisition), not the period's middle: it says when the
    pixels were seen (a month-aware model such as Galileo reads it). A chip no item of a period covers with a valid
    pixel is absent for that key (never zero-filled). Periods without any item get no key and are counted in
    ``source.composite.empty`` (:func:`composite_note`).

    Cloud mask of composites (``cloud_mask``: ``"scl"``, ``"none"``, or None: ``scl`` for S2 L2A collections, i.e.
    optical products named ``*l2a*``, whose items have an SCL asset, none otherwise): before the median, each item's
    pixels whose Sentinel-2 scene classification (the ``scl``/``SCL`` asset, or ``--asset COLLECTION:SCL=ASSET``;
    20 m, read onto the grid with nearest neighbour) is one of ``mask_classes`` (default
    :data:`SCL_MASK_DEFAULT`: 0 no data, 1 saturated/defective, 3 cloud shadow, 8/9 cloud medium/high probability,
    10 thin cirrus; 11 snow is kept) are left out, so a pixel's median is over its clear acquisitions and a pixel
    with none is the product's nodata; an item without the asset is used unmasked (``"scl"`` given explicitly:
    an error naming it, before anything is written); ``"scl"`` applies to every composited optical collection.
    ``min_clear`` (0..1): a chip-date whose composite has a value in every band at a smaller fraction of the
    chip's pixels, or none clear at all, is absent for that key, and listed in ``ingest_report.json``
    (``below_min_clear``); 0 keeps any chip with a clear pixel. What was masked is in ``source.composite.cloud_mask``.
    With ``cloud_mask="none"`` (or no SCL asset) and ``min_clear=0`` the chips are those of the unmasked median.
    """
    from rasterio.windows import transform as window_transform

    collections = [c for c in collections if c]
    if not collections:
        raise ValueError("no collection given (--collections)")
    if len(set(collections)) != len(collections):
        raise ValueError(f"--collections {collections}: a collection is given twice")
    missing = [c for c in collections if c not in products]
    if missing:
        raise ValueError(f"no product (--modality) for collection(s) {missing}")
    if chip_size <= 0:
        raise ValueError(f"chip size must be positive, got {chip_size}")
    bbox = _parse_bbox(bbox)
    mods = {c: get_modality(products[c]) for c in collections}
    keys = [m.name for m in mods.values()]
    if len(set(keys)) != len(keys):
        raise ValueError(f"two collections map to the same store modality: {dict(zip(collections, keys, strict=True))}")
    first = mods[collections[0]]
    res = resolution or first.resolution_m
    if res is None:
        raise ValueError(f"product {first.product!r} has no resolution; pass --resolution")
    if bbox is not None:  # a whole-world bbox: refused before a search that would list every item of the planet
        geographic = crs is not None and _is_geographic(crs)
        _check_grid_size(_estimate_chips(bbox, float(res), chip_size, geographic), bbox, True, chip_size, res,
                         max_chips, estimated=True)
    # a DEM's acquisition date says nothing about the scene: --datetime is not applied to elevation products
    timeless = [c for c in collections if mods[c].kind == "elevation"]
    cloud_mask = parse_cloud_mask(cloud_mask)
    min_clear = _check_min_clear(min_clear)
    masked: set[str] = set()  # the collections whose items' SCL is looked up (--cloud-mask)
    if composite is not None:
        composite = parse_composite(composite)
        if len(timeless) == len(collections):
            raise ValueError(f"--composite {composite}: no collection to composite over time ({collections} are "
                             "elevation products, which are not filtered by date)")
        medians = [c for c in collections if c not in timeless and mods[c].kind != "categorical"]
        if cloud_mask == "scl":
            masked = {c for c in medians if mods[c].kind == "optical"}
            if not masked:
                raise ValueError(f"--cloud-mask scl: no optical collection to composite among {collections} "
                                 f"(products {[mods[c].product for c in collections]})")
        elif cloud_mask is None:
            masked = {c for c in medians if _is_s2_l2a(mods[c])}
    elif cloud_mask == "scl" or mask_classes is not None or min_clear > 0:
        given = [o for o, v in (("--cloud-mask scl", cloud_mask == "scl"), ("--mask-classes", mask_classes is not None),
                                ("--min-clear", min_clear > 0)) if v]
        raise ValueError(f"{', '.join(given)}: cloud masking applies to --composite only (a mosaic takes the least "
                         "cloudy item's valid pixels first)")
    if cloud_mask == "none" and mask_classes is not None:
        raise ValueError("--mask-classes: nothing is masked with --cloud-mask none")
    classes = parse_mask_classes(mask_classes)
    found = find_items(catalog, collections, bbox, datetime, timeless)
    per: dict[str, list[ItemBands]] = {}
    info: dict[str, AssetInfo] = {}
    notes: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    for c in collections:
        lst = []
        for it in found[c]:
            cloud = it.properties.get("eo:cloud_cover")
            scl = (scl_source(it, c, (assets or {}).get(c, {}).get("SCL"), required=cloud_mask == "scl")
                   if c in masked else None)
            lst.append(ItemBands(it, item_band_sources(it, c, mods[c], (assets or {}).get(c)), _item_date(it),
                                 float(cloud) if cloud is not None else None, scl=scl))
        # least cloudy first, then newest; ids break ties so the order never depends on the catalog's
        lst.sort(key=lambda x: (x.cloud is None, x.cloud or 0.0, -_item_interval(x.item)[0].timestamp(), x.item.id))
        info.update(probe_assets(c, lst))
        per[c], n, sk = check_metadata(c, lst, info, bbox)
        notes += n
        skipped += sk
    user_bbox = bbox is not None
    if bbox is None:  # the items' extent: where their rasters are when a geometry says otherwise
        bbs = [x.item.bbox if x.item.bbox and _bbox_overlaps(x.item.bbox, _footprint(x, info)) else _footprint(x, info)
               for x in per[collections[0]]]
        bbox = [min(b[0] for b in bbs), min(b[1] for b in bbs), max(b[2] for b in bbs), max(b[3] for b in bbs)]
    native = info[per[collections[0]][0].bands[0].href].crs
    if crs is None:
        crs = crs_string(native) if native.is_projected else utm_crs((bbox[0] + bbox[2]) / 2, (bbox[1] + bbox[3]) / 2)
    grid = stac_grid(bbox, crs, float(res))
    gcrs, transform, width, height = grid
    if gcrs.is_geographic and resolution is None:
        raise ValueError(f"--crs {crs} is geographic: pass --resolution in degrees")
    if width < chip_size or height < chip_size:
        raise IngestError(f"bbox {bbox} is {width}x{height} px at {res} in {crs}, smaller than one chip ({chip_size} px)")
    _check_grid_size((height // chip_size) * (width // chip_size), bbox, user_bbox, chip_size, res, max_chips,
                     size=(width, height), geographic=gcrs.is_geographic)
    inv = ~transform
    for c in collections:
        for x in per[c]:
            x.window = _grid_window(x, info, gcrs, inv)
    for note in notes:
        warnings.warn(note["message"], StacWarning, stacklevel=2)
    n_rows, n_cols = height // chip_size, width // chip_size
    block = block_size_for(((r, c) for r in range(n_rows) for c in range(n_cols)), SPLIT_BLOCK, MIN_SPLIT_BLOCKS)
    split_of = block_splits(aoi, ((r // block, c // block) for r in range(n_rows) for c in range(n_cols)))
    crs_s = crs_string(gcrs)
    source = {
        "ingester": "stac",
        "catalog": str(catalog),
        "collections": collections,
        "products": {c: mods[c].product for c in collections},
        "bbox": bbox,
        "datetime": datetime,
        "crs": crs_s,
        "transform": list(transform)[:6],
        "width": width,
        "height": height,
        "tiles": [n_rows, n_cols],
        "items": {c: [{"id": x.item.id, "date": x.date, "cloud_cover": x.cloud} for x in per[c]] for c in collections},
        "split_block_cells": block,
    }
    # the store keys and their items: one key per collection, or per composite period of each dated collection
    keyed: list[tuple[str, str, Modality, list[ItemBands], Any]] = []  # the last: the reader's class
    if composite is not None:
        dated = [c for c in collections if c not in timeless]
        first, last = parse_datetime(datetime)
        days = [_item_interval(x.item)[0].date() for c in dated for x in per[c]]
        periods = composite_periods(composite, first.date() if first else min(days), last.date() if last else max(days))
        comp: dict[str, Any] = {"period": composite, "reducer": "median (categorical: first valid value)",
                                "date": "median acquisition date of the items used per chip",
                                "n_periods": len(periods), "periods": {}, "empty": {}}
        mask_meta: dict[str, Any] = {"option": cloud_mask or "default", "min_clear": min_clear, "collections": {}}
        for c in collections:
            if c in timeless:
                keyed.append((mods[c].name, c, mods[c], per[c], _CollectionReader))
                continue
            groups = split_by_period(per[c], periods)
            full = [(p, g) for p, g in zip(periods, groups, strict=True) if g]
            with_scl = [x for x in per[c] if x.scl is not None]
            if mods[c].kind == "categorical":
                reader: Any = _CollectionReader
            else:
                reader = functools.partial(_MedianReader, mask_classes=classes if with_scl else None,
                                           min_clear=min_clear)
                if with_scl:
                    mask_meta["collections"][c] = {
                        "mask": "scl", "classes": list(classes), "assets": sorted({x.scl.asset for x in with_scl if x.scl}),
                        "masked_items": len(with_scl),
                        "unmasked_items": [x.item.id for x in per[c] if x.scl is None]}
                else:
                    why = ("--cloud-mask none" if cloud_mask == "none" else "no SCL asset" if c in masked
                           else f"not an optical product ({mods[c].product})" if cloud_mask == "scl"
                           else f"not a Sentinel-2 L2A product ({mods[c].product})")
                    mask_meta["collections"][c] = {"mask": "none", "reason": why}
            for j, (_, g) in enumerate(full):
                key = date_key(mods[c].name, j)
                keyed.append((key, c, mods[c].renamed(key), g, reader))
            comp["periods"][c] = [{"key": date_key(mods[c].name, j), "period": p.label, "start": p.start.isoformat(),
                                   "end": p.end.isoformat(), "items": [x.item.id for x in g]}
                                  for j, (p, g) in enumerate(full)]
            comp["empty"][c] = [p.label for p, g in zip(periods, groups, strict=True) if not g]
        comp["cloud_mask"] = mask_meta
        source["composite"] = comp
    else:
        keyed = [(mods[c].name, c, mods[c], per[c], _CollectionReader) for c in collections]
    note = f"; chips committed so far stay in the incomplete store {out}: re-run the same command to resume"
    # chip-dates left absent as too cloudy: this run's and, on a resume, those of the chips committed before
    below = {} if overwrite else _read_below(Path(out))
    with contextlib.ExitStack() as stack:
        # after the writer let go of the store, even on failure
        stack.callback(_add_to_report, Path(out), "warnings", notes)
        if composite is not None:
            stack.callback(lambda: _add_to_report(Path(out), "below_min_clear", list(below.values()), if_empty=True))
        readers = [cls(key, c, m, items, grid, stack) for key, c, m, items, cls in keyed]
        with StoreWriter(out, [r.modality for r in readers], chip_size, None, source=source, batch_size=batch_size,
                         overwrite=overwrite) as w:
            for sk in skipped:
                w.skip(sk["item"], sk["reason"])
            tiles = list(pending_tiles(w, aoi, n_rows, n_cols, chip_size, chip_size))
            for i, j, chip_id, win in make_progress(tiles, desc=f"ingest stac {Path(out).name}", unit="window",
                                                    quiet=not progress):
                arrays, dates, used, cloudy = {}, {}, [], []
                for r in readers:
                    a, date, ids = r.chip(win, note)
                    if r.below is not None:
                        cloudy.append(r.key)
                        below[(chip_id, r.key)] = {"chip": chip_id, "key": r.key, "clear": round(r.below, 4)}
                    if a is not None:
                        _check_fits(a, r.modality, Path(r.items[0].bands[0].href))
                        arrays[r.key], dates[r.key] = a, date
                        used.append(f"{r.key}=" + "+".join(ids))
                if not arrays:
                    w.skip(chip_id, f"no clear pixel, or fewer than --min-clear {min_clear:g}, in {', '.join(cloudy)} "
                           "and no valid pixel in the others" if cloudy else "no valid pixel in any collection")
                    continue
                wt = window_transform(win, transform)
                w.add(ChipRecord(
                    chip_id, arrays, geometry=footprint_wgs84(gcrs, wt, chip_size, chip_size), crs=crs_s,
                    transform=tuple(wt)[:6], aoi=aoi, split=split_of[(i // block, j // block)], dates=dates,
                    source=";".join(used),
                ))
    return ChipStore(out)


def _products(modality: list[str], collections: list[str]) -> dict[str, str]:
    """``--modality``: ``COLLECTION=PRODUCT`` pairs, or products in the order of ``--collections``."""
    if all("=" in m for m in modality):
        return _pairs(modality, "--modality")
    plain = [p.strip() for m in modality for p in m.split(",") if p.strip()]
    if any("=" in p for p in plain):
        raise ValueError("--modality: use either COLLECTION=PRODUCT pairs or products in --collections order")
    if len(plain) != len(collections):
        raise ValueError(
            f"--modality: {len(plain)} product(s) {plain} for {len(collections)} collection(s) {collections}; "
            "give one per collection (in order) or COLLECTION=PRODUCT"
        )
    return dict(zip(collections, plain, strict=True))


def _assets(values: list[str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for v in values:
        head, sep, asset = v.partition("=")
        coll, sep2, band = head.partition(":")
        if not sep or not sep2 or not coll or not band or not asset:
            raise ValueError(f"--asset {v!r}: expected COLLECTION:BAND=ASSET")
        out.setdefault(coll.strip(), {})[band.strip()] = asset.strip()
    return out
