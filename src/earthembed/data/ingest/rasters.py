"""Ingest co-registered AOI rasters (GeoTIFF/COG, one per modality, plus an optional label map) as chips.

Rasters may differ in CRS and resolution. The reference grid is the first modality's CRS and pixel size
(or ``resolution``), snapped to its pixel grid and limited to the intersection of all modality footprints.
Every modality is read through a :class:`rasterio.vrt.WarpedVRT` aligned to that grid, chip window by chip
window, so rasters never need to fit in memory: bilinear resampling for continuous data, nearest for
categorical modalities and labels. Conventions:

* Tiles: full ``chip_size`` windows every ``stride`` px (edge remainders are dropped); chip_id
  ``<aoi>_<row>_<col>`` (tile indices). Tiles that are entirely nodata in every modality are skipped and
  recorded in the ingest report; a chip lacking one modality is stored with ``has_<mod> = False``.
* Bands: the file must hold exactly the product's bands. When every band has a description (``B1`` ==
  ``B01``, case-insensitive; generic ones like ``Band 1`` are ignored), they must name the product's bands and
  the file order is reconciled by name; otherwise the file order is taken to be the product's.
* Labels: a categorical raster, resampled with nearest. Invalid pixels are the file's nodata, pixels outside
  it, negative values and 255 (or, with ``label_classes``, every value that is not one of its keys); 0 is also
  invalid when the values are ESA WorldCover codes (its no-data). Classes: ``label_classes`` names, else
  WorldCover names, else ``class_<value>``. Per chip: mask ``landcover_mask`` (class index into the class
  list, -1 invalid), ``frac_<class>`` (share of valid pixels) and majority class ``landcover``.
* Split: the grid is cut into cells of ``chip_size`` px; a tile belongs to the cell holding its pixel origin
  (``row * stride // chip_size``, ``col * stride // chip_size``), so with ``stride < chip_size`` overlapping
  tiles starting in the same cell share it. Cells are grouped in square blocks of 4x4 cells, shrunk (3x3,
  2x2, down to 1 cell) until the tile grid has at least 10 blocks, so a small AOI does not land in a single
  split. A block goes to train/val/test (60/20/20) by a seeded hash of ``<aoi>_<block row>_<block col>``,
  so neighbouring chips share a split (limits spatial leakage); with at least 3 blocks, train and test are
  never empty: if the hash leaves one empty, the block with the lowest hash becomes train, the one with the
  highest hash test (val may stay empty for very small AOIs). Remaining leakage: a tile is wholly assigned
  to the block of its origin, so a tile at a block's right/bottom edge can share up to
  ``chip_size - stride`` px (none when ``stride >= chip_size``) with tiles of the neighbouring block.
* Read errors: a raster that fails while being read (corrupt or truncated file; opening only reads the
  header) raises :class:`IngestError` naming the file and the window. Chips committed before stay committed
  and the store stays incomplete; re-running the same command (with the file fixed) resumes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import math
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from earthembed.data.ingest.common import IngestError, crs_string, footprint_wgs84, open_raster
from earthembed.data.ingest.splits import block_size_for, block_splits
from earthembed.data.modalities import WORLDCOVER_CLASSES, Modality, get_modality, list_modalities
from earthembed.data.store import ChipRecord, ChipStore, StoreWriter, valid_pixels
from earthembed.progress import progress as make_progress

DEFAULT_PRODUCTS = {"s1": "s1_grd_db", "coh": "insar_coherence", "dem": "elevation", "lc": "worldcover"}
S2_PRODUCTS_BY_COUNT = {12: "s2_l2a", 13: "s2_l1c"}
MASK_LABEL = "landcover_mask"
CLASS_LABEL = "landcover"
SPLIT_BLOCK = 4  # largest split block side, in chip_size cells
MIN_SPLIT_BLOCKS = 10
_EPS = 1e-6
_SCAN_BLOCK = 1024


def normalize_band_name(name: str) -> str:
    """Canonical band name for matching: ``B1``/``b01`` -> ``B01``, ``b8a`` -> ``B8A``, others upper-cased."""
    s = name.strip().upper()
    m = re.fullmatch(r"B0*(\d+)(A?)", s)
    if m:
        n, a = int(m.group(1)), m.group(2)
        return f"B{n}A" if a else f"B{n:02d}"
    return s


def _generic_descriptions(desc: Sequence[str]) -> bool:
    """Descriptions like ``Band 1`` carry no band identity and are ignored."""
    return all(re.fullmatch(r"(BAND)?[ _-]?\d+", d.strip().upper()) for d in desc)


def band_indexes(path: Path, descriptions: Sequence[str | None], modality: Modality) -> list[int]:
    """1-based file band indexes that yield ``modality``'s bands in order; IngestError naming ``path``."""
    want = modality.band_names
    count = len(descriptions)
    if count != len(want):
        raise IngestError(
            f"{path}: has {count} bands, product {modality.product!r} has {len(want)} ({','.join(want)}); "
            "pass the right --product"
        )
    desc = [d for d in descriptions if d and d.strip()]
    if len(desc) == count and not _generic_descriptions(desc):
        have = [normalize_band_name(d) for d in desc]
        if len(set(have)) != len(have):
            raise IngestError(f"{path}: duplicate band descriptions {list(descriptions)}")
        missing = [b for b in want if normalize_band_name(b) not in have]
        if missing:
            raise IngestError(
                f"{path}: band descriptions {list(descriptions)} do not match product {modality.product!r} "
                f"bands {want} (missing {missing}); pass the right --product"
            )
        return [have.index(normalize_band_name(b)) + 1 for b in want]
    return list(range(1, count + 1))


def resolve_product(key: str, path: Path, count: int, products: dict[str, str] | None = None) -> str:
    """Product id for modality ``key``: explicit, else by key (``s2`` by band count), else the key itself."""
    if products and key in products:
        return products[key]
    if key == "s2":
        if count not in S2_PRODUCTS_BY_COUNT:
            raise IngestError(
                f"{path}: has {count} bands; Sentinel-2 needs 12 (s2_l2a) or 13 (s2_l1c), or pass --product s2=PRODUCT"
            )
        return S2_PRODUCTS_BY_COUNT[count]
    if key in DEFAULT_PRODUCTS:
        return DEFAULT_PRODUCTS[key]
    if key in list_modalities():
        return key
    raise IngestError(
        f"{path}: no default product for modality key {key!r}; pass --product {key}=PRODUCT "
        f"(registered: {list_modalities()})"
    )


@dataclasses.dataclass
class _Source:
    key: str
    path: Path
    ds: Any  # rasterio DatasetReader
    modality: Modality
    indexes: list[int]
    vrt: Any = None


def _open(path: Path, stack: contextlib.ExitStack) -> Any:
    ds = stack.enter_context(open_raster(path))
    if ds.crs is None:
        raise IngestError(f"{path}: has no CRS; AOI rasters must be georeferenced")
    return ds


def _bounds_in(ds: Any, crs: Any) -> tuple[float, float, float, float]:
    from rasterio.warp import transform_bounds

    return transform_bounds(ds.crs, crs, *ds.bounds, densify_pts=21)


def _reference_grid(sources: Sequence[_Source], resolution: float | None) -> tuple[Any, Any, int, int]:
    """(crs, transform, width, height) of the grid: first modality's CRS/pixels over the common footprint."""
    from rasterio.transform import from_origin

    ref = sources[0].ds
    crs = ref.crs
    left, bottom, right, top = ref.bounds
    for s in sources[1:]:
        b = _bounds_in(s.ds, crs)
        left, bottom, right, top = max(left, b[0]), max(bottom, b[1]), min(right, b[2]), min(top, b[3])
        if left >= right or bottom >= top:
            raise IngestError(
                f"{s.path}: does not overlap {', '.join(str(x.path) for x in sources[: sources.index(s)])}"
            )
    t = ref.transform
    north_up = t.b == 0 and t.d == 0 and t.a > 0 and t.e < 0
    if resolution is None and north_up:  # snap to the reference pixels so it is read without resampling
        xres, yres = t.a, -t.e
        c0 = math.ceil((left - t.c) / xres - _EPS)
        c1 = math.floor((right - t.c) / xres + _EPS)
        r0 = math.ceil((t.f - top) / yres - _EPS)
        r1 = math.floor((t.f - bottom) / yres + _EPS)
        return crs, from_origin(t.c + c0 * xres, t.f - r0 * yres, xres, yres), c1 - c0, r1 - r0
    xres, yres = (resolution, resolution) if resolution else ref.res
    if resolution is not None and resolution <= 0:
        raise ValueError(f"resolution must be positive, got {resolution}")
    width = math.floor((right - left) / xres + _EPS)
    height = math.floor((top - bottom) / yres + _EPS)
    return crs, from_origin(left, top, xres, yres), width, height


def _warped(
    ds: Any, grid: tuple[Any, Any, int, int], categorical: bool, nodata: Any, dtype: str | None = None,
    src_nodata: Any = None,
) -> Any:
    """WarpedVRT of ``ds`` on ``grid``: nearest for categorical data, bilinear otherwise."""
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    crs, transform, width, height = grid
    kw: dict[str, Any] = {"dtype": dtype} if dtype else {}
    if src_nodata is not None:
        kw["src_nodata"] = src_nodata
    return WarpedVRT(
        ds, crs=crs, transform=transform, width=width, height=height, nodata=nodata,
        resampling=Resampling.nearest if categorical else Resampling.bilinear, **kw,
    )


def _modality_vrt(s: _Source, grid: tuple[Any, Any, int, int], stack: contextlib.ExitStack) -> Any:
    """VRT on the grid whose nodata is the product's; the file's nodata (else the product's) marks invalid input."""
    m = s.modality
    src_nodata = s.ds.nodata if s.ds.nodata is not None else m.nodata
    nodata = m.nodata if m.nodata is not None else (src_nodata if src_nodata is not None else 0)
    floating = np.issubdtype(np.dtype(m.dtype), np.floating)
    vrt = _warped(s.ds, grid, m.kind == "categorical", nodata, "float32" if floating else None, src_nodata)
    return stack.enter_context(vrt)


def _read(vrt: Any, path: Path, window: Any, indexes: Any, note: str = "") -> np.ndarray:
    """``vrt.read`` of one window; a read failure (corrupt/truncated file) raises IngestError naming both."""
    from rasterio.errors import RasterioError

    try:
        return vrt.read(indexes=indexes, window=window)
    except RasterioError as e:
        r0, c0 = int(window.row_off), int(window.col_off)
        raise IngestError(
            f"{path}: cannot read window rows {r0}:{r0 + int(window.height)}, cols {c0}:{c0 + int(window.width)} "
            f"of the grid (corrupt or truncated file?): {str(e.__cause__ or e).rstrip('.')}{note}"
        ) from e


def _any_valid(a: np.ndarray, nodata: Any) -> bool:
    return bool(valid_pixels(a, nodata).any())


def _check_fits(a: np.ndarray, m: Modality, path: Path) -> None:
    target = np.dtype(m.dtype)
    if not np.issubdtype(target, np.integer):
        return
    v = a
    if np.issubdtype(a.dtype, np.floating):
        v = a[np.isfinite(a)]  # NaN/Inf become nodata in the store
        if v.size and not np.array_equal(v, np.round(v)):
            raise IngestError(
                f"{path}: has fractional values but product {m.product!r} stores {m.dtype} "
                f"({m.units or 'integers'}); rescale the file or pass the right --product"
            )
    info = np.iinfo(target)
    if v.size and (v.min() < info.min or v.max() > info.max):
        raise IngestError(
            f"{path}: values [{v.min()}, {v.max()}] do not fit product {m.product!r} dtype {m.dtype}; "
            "pass the right --product"
        )


class _Labels:
    """Label raster on the grid: validity rule, class codes/names, and per-chip mask/fractions/majority."""

    def __init__(self, path: Path, ds: Any, grid: tuple[Any, Any, int, int], names: dict[int, str] | None,
                 stack: contextlib.ExitStack) -> None:
        self.path = path
        self.file_nodata = ds.nodata
        self.given = names
        crs, transform, width, height = grid
        left, top = transform @ (0, 0)
        right, bottom = transform @ (width, height)
        b = _bounds_in(ds, crs)
        aoi = (min(left, right), min(top, bottom), max(left, right), max(top, bottom))
        if b[0] >= aoi[2] or b[2] <= aoi[0] or b[1] >= aoi[3] or b[3] <= aoi[1]:
            raise IngestError(
                f"{path}: label raster does not overlap the AOI (its bounds {tuple(round(x, 6) for x in b)}, "
                f"AOI {tuple(round(x, 6) for x in aoi)} in {crs_string(crs)})"
            )
        self.vrt = stack.enter_context(_warped(ds, grid, True, float("nan"), "float64"))
        self.zero_invalid = False
        if names is not None:
            codes = sorted(int(k) for k in names)
            self.classes = [names[c] for c in codes]
        else:
            codes = self._scan(width, height)
            if not codes:
                raise IngestError(f"{path}: no valid label values inside the AOI")
            if set(codes) - {0} and set(codes) - {0} <= set(WORLDCOVER_CLASSES):
                self.zero_invalid = True
                codes = [c for c in codes if c != 0]
                self.classes = [WORLDCOVER_CLASSES[c] for c in codes]
            else:
                self.classes = [f"class_{c}" for c in codes]
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"{path}: duplicate class names {self.classes}")
        self.codes = np.asarray(codes, dtype=np.float64)

    def _valid(self, a: np.ndarray) -> np.ndarray:
        valid = ~np.isnan(a)
        if self.file_nodata is not None:
            valid &= a != self.file_nodata
        if self.given is not None:
            return valid & np.isin(a, self.codes)
        valid &= (a >= 0) & (a != 255)
        if self.zero_invalid:
            valid &= a != 0
        return valid

    def _scan(self, width: int, height: int) -> list[int]:
        """Distinct valid values on the grid, read block by block."""
        from rasterio.windows import Window

        found: set[float] = set()
        for r in range(0, height, _SCAN_BLOCK):
            for c in range(0, width, _SCAN_BLOCK):
                win = Window(c, r, min(_SCAN_BLOCK, width - c), min(_SCAN_BLOCK, height - r))
                a = _read(self.vrt, self.path, win, 1)
                found.update(np.unique(a[self._valid(a)]).tolist())
        bad = [v for v in found if v != int(v)]
        if bad:
            raise IngestError(f"{self.path}: label values must be integer class codes, found {sorted(bad)[:5]}")
        return sorted(int(v) for v in found)

    def schema(self) -> dict[str, dict[str, Any]]:
        s: dict[str, dict[str, Any]] = {
            MASK_LABEL: {"kind": "mask", "classes": self.classes, "codes": self.codes.astype(int).tolist(),
                         "dtype": "int16", "nodata": -1},
            CLASS_LABEL: {"kind": "class", "classes": self.classes},
        }
        s.update({f"frac_{c}": {"kind": "fraction"} for c in self.classes})
        return s

    def chip(self, window: Any, note: str = "") -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Label columns and mask of one chip (no mask and null columns when it has no valid pixel)."""
        a = _read(self.vrt, self.path, window, 1, note)
        valid = self._valid(a)
        if not valid.any():
            return {CLASS_LABEL: None, **{f"frac_{c}": None for c in self.classes}}, {}
        idx = np.full(a.shape, -1, dtype=np.int16)
        idx[valid] = np.searchsorted(self.codes, a[valid]).astype(np.int16)
        frac = np.bincount(idx[valid], minlength=len(self.classes)) / valid.sum()
        cols: dict[str, Any] = {f"frac_{c}": float(f) for c, f in zip(self.classes, frac, strict=True)}
        cols[CLASS_LABEL] = self.classes[int(np.argmax(frac))]
        return cols, {MASK_LABEL: idx}


def ingest_rasters(
    modalities: dict[str, str | Path],
    out: str | Path,
    chip_size: int,
    labels: str | Path | None = None,
    products: dict[str, str] | None = None,
    stride: int | None = None,
    aoi: str = "aoi",
    resolution: float | None = None,
    label_classes: dict[int, str] | None = None,
    overwrite: bool = False,
    batch_size: int = 64,
    dates: dict[str, str] | None = None,
    *,
    progress: bool = False,
) -> ChipStore:
    """Tile AOI rasters ``{key: path}`` (keys become store modality names) into a chip store at ``out``.

    ``products`` maps keys to registered product ids (defaults by key: s2 by band count, s1, coh, dem, lc);
    ``dates`` maps keys to acquisition dates (ISO ``YYYY-MM-DD``), recorded as ``date_<key>`` of every chip.
    Every chip keeps its CRS and pixel ``transform`` so per-chip results can be written back as maps.
    Re-running after an interruption resumes. See the module docstring for grid, label and split rules.
    ``progress=True`` reports progress per chip window on stderr.
    """
    from rasterio.windows import Window
    from rasterio.windows import transform as window_transform

    if not modalities:
        raise ValueError("no modality raster given (e.g. --modality s2=PATH)")
    if chip_size <= 0 or (stride is not None and stride <= 0):
        raise ValueError(f"chip size and stride must be positive, got {chip_size} and {stride}")
    stride = stride or chip_size
    dates = _check_dates(dates or {}, modalities)
    with contextlib.ExitStack() as stack:
        sources: list[_Source] = []
        for key, p in modalities.items():
            path = Path(p)
            ds = _open(path, stack)
            product = resolve_product(key, path, ds.count, products)
            mod = get_modality(product, name=key)
            sources.append(_Source(key, path, ds, mod, band_indexes(path, ds.descriptions, mod)))
        grid = _reference_grid(sources, resolution)
        crs, transform, width, height = grid
        if width < chip_size or height < chip_size:
            raise IngestError(
                f"{sources[0].path}: the common footprint of the modalities is {width}x{height} px, "
                f"smaller than one chip ({chip_size} px)"
            )
        for s in sources:
            s.vrt = _modality_vrt(s, grid, stack)
        lab = None
        if labels is not None:
            lpath = Path(labels)
            lab = _Labels(lpath, _open(lpath, stack), grid, label_classes, stack)
        n_rows = (height - chip_size) // stride + 1
        n_cols = (width - chip_size) // stride + 1
        centre = Window((n_cols // 2) * stride, (n_rows // 2) * stride, chip_size, chip_size)
        for s in sources:  # fail on a wrong product before anything is written
            a = _read(s.vrt, s.path, centre, s.indexes)
            if _any_valid(a, s.modality.nodata):
                _check_fits(a, s.modality, s.path)
        crs_s = crs_string(crs)
        # split blocks: tiles grouped by the chip_size cell of their origin (see the module docstring)
        cell_rows = [i * stride // chip_size for i in range(n_rows)]
        cell_cols = [j * stride // chip_size for j in range(n_cols)]
        block = block_size_for(
            ((r, c) for r in sorted(set(cell_rows)) for c in sorted(set(cell_cols))), SPLIT_BLOCK, MIN_SPLIT_BLOCKS
        )
        split_of = block_splits(aoi, ((r // block, c // block) for r in cell_rows for c in cell_cols))
        source = {
            "ingester": "rasters",
            "modalities": {s.key: str(s.path.resolve()) for s in sources},
            "products": {s.key: s.modality.product for s in sources},
            "labels": str(Path(labels).resolve()) if labels is not None else None,
            "aoi": aoi,
            "crs": crs_s,
            "transform": list(transform)[:6],
            "width": width,
            "height": height,
            "stride": stride,
            "tiles": [n_rows, n_cols],
            "split_block_cells": block,
            **({"dates": dates} if dates else {}),
        }
        writer = StoreWriter(
            out, [s.modality for s in sources], chip_size, lab.schema() if lab else None,
            source=source, batch_size=batch_size, overwrite=overwrite,
            inputs=[s.path for s in sources] + ([Path(labels)] if labels is not None else []),
        )
        note = (
            f"; chips committed so far stay in the incomplete store {out}: fix or replace the file and re-run "
            "the same command to resume"
        )
        with writer as w:
            tiles = list(pending_tiles(w, aoi, n_rows, n_cols, stride, chip_size))
            for i, j, chip_id, win in make_progress(tiles, desc=f"ingest rasters {Path(out).name}", unit="window",
                                                    quiet=not progress):
                arrays = {}
                for s in sources:
                    a = _read(s.vrt, s.path, win, s.indexes, note)
                    if _any_valid(a, s.modality.nodata):
                        _check_fits(a, s.modality, s.path)
                        arrays[s.key] = a
                if not arrays:
                    w.skip(chip_id, "entirely nodata in every modality")
                    continue
                cols, masks = lab.chip(win, note) if lab else ({}, {})
                w.add(
                    ChipRecord(
                        chip_id,
                        arrays,
                        geometry=footprint_wgs84(crs, window_transform(win, transform), chip_size, chip_size),
                        crs=crs_s,
                        transform=tuple(window_transform(win, transform))[:6],
                        aoi=aoi,
                        dates={k: d for k, d in dates.items() if k in arrays},
                        split=split_of[(cell_rows[i] // block, cell_cols[j] // block)],
                        labels=cols,
                        masks=masks,
                        source=f"{sources[0].path.name}[{i * stride}:{i * stride + chip_size},"
                        f"{j * stride}:{j * stride + chip_size}]",
                    )
                )
    return ChipStore(out)


def pending_tiles(writer: StoreWriter, aoi: str, n_rows: int, n_cols: int, stride: int,
                  chip_size: int) -> Iterator[tuple[int, int, str, Any]]:
    """(row, col, chip id ``<aoi>_<row>_<col>``, grid Window) of every tile not committed yet (resume)."""
    from rasterio.windows import Window

    for i in range(n_rows):
        for j in range(n_cols):
            chip_id = f"{aoi}_{i}_{j}"
            if not writer.is_done(chip_id):
                yield i, j, chip_id, Window(j * stride, i * stride, chip_size, chip_size)


def _check_dates(dates: dict[str, str], modalities: dict[str, Any]) -> dict[str, str]:
    """Dates by modality key, normalised to ``YYYY-MM-DD``; unknown keys or unparsable dates raise ValueError."""
    out = {}
    for k, d in dates.items():
        if k not in modalities:
            raise ValueError(f"--date {k}={d}: {k!r} is not one of the modality keys {list(modalities)}")
        try:
            out[k] = _dt.date.fromisoformat(str(d)[:10]).isoformat()
        except ValueError:
            raise ValueError(f"--date {k}={d}: not an ISO date (YYYY-MM-DD)") from None
    return out


def _pairs(values: Sequence[str] | None, option: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for v in values or []:
        k, sep, val = v.partition("=")
        if not sep or not k.strip() or not val.strip():
            raise ValueError(f"{option} {v!r}: expected KEY=VALUE")
        if k.strip() in out:
            raise ValueError(f"{option} {k.strip()!r} given twice")
        out[k.strip()] = val.strip()
    return out
