"""Per-chip values back onto the AOI grid: Cloud-Optimised GeoTIFF maps with a PNG preview beside them.

What a column becomes:

* a class column (strings, e.g. the predicted ``landcover``): uint8 class codes, 255 = no chip, a colour
  table and the class names in the tags (``class_<code>``); codes follow the class order recorded in the
  table's metadata or the store's label schema (so a prediction and the truth get the same codes);
* a numeric column (probability, fraction, value): float32, NaN = no chip;
* an embedding column (``emb_*``): its first 3 principal components as false colour, uint8 1..255 per
  band (2-98 % stretch), 0 = no chip.

Grid: each chip's box in its own CRS (from the store's ``transform`` column, see
:mod:`earthembed.data.chipgeo`). With overlapping chips (stride < chip size) each chip paints only the
stride-sized cell around its centre, so neighbours never overwrite each other. The pixel size is the chips'
native pixel size, coarsened by the smallest divisor of the stride (in pixels) that keeps the map within
``MAX_SIDE`` px (one pixel per chip at most); ``pixel_size`` overrides it.

Several CRSs (chips from several UTM zones): by default one COG per CRS, ``MAP_<EPSG>.tif`` (each exact on
its own grid, no resampling); with ``crs=`` every chip box is reprojected (densified edges) into that CRS
and all go into one COG, the boxes no longer aligned to the pixel grid (a pixel takes the chip that covers
its centre). Rejected: always reprojecting to EPSG:4326, which distorts areas and resamples every map.

A change table (``earthembed change``, :func:`write_change_map`) gives the score (float32) and, when it was
thresholded, the changed mask beside it (``OUT_mask.tif``, classes unchanged / changed); a series table maps one
date's scores or each chip's highest.

Output policy (:mod:`earthembed.outputs`): the COG(s) and their previews are all checked before anything is
computed (an existing file is replaced only with ``overwrite`` and only when earthembed wrote it: the
``earthembed_output`` tag of a map, the text chunk of a PNG); each is written under a temporary name beside it
and renamed into place only once complete. A grid of more than :data:`MAX_PIXELS` pixels is refused with its
size before any memory is allocated.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from earthembed.data.chipgeo import chip_frames, locate, read_chip_table
from earthembed.outputs import OUTPUT_KEY, atomic_path, check_output, save_png

MAX_SIDE = 4096
MAX_PIXELS = 1 << 28  # per band (16384 x 16384): a float32 map of this size needs 1 GiB, twice while written
BLOCKSIZE = 256
CLASS_NODATA = 255
RGB_NODATA = 0
MAX_CLASSES = 254
# ESA WorldCover colours for the land-cover names used across earthembed; other classes get tab20 colours
CLASS_COLOURS: dict[str, str] = {
    "water": "#0064c8", "tree_cover": "#006400", "forest": "#006400", "shrubland": "#ffbb22",
    "grassland": "#ffff4c", "cropland": "#f096ff", "built_up": "#fa0000", "bare": "#b4b4b4",
    "bare_sparse": "#b4b4b4", "snow_ice": "#f0f0f0", "herbaceous_wetland": "#0096a0", "mangroves": "#00cf75",
    "moss_lichen": "#fae6a0", "changed": "#d62728", "unchanged": "#d9d9d9",
}


@dataclasses.dataclass
class MapValues:
    """What goes into a map: per-chip values [N, bands] with their kind, dtype, nodata and class names."""

    kind: str  # "class" | "continuous" | "rgb"
    values: np.ndarray  # [N, bands] (NaN rows = nothing to paint)
    dtype: str
    nodata: float
    classes: list[str] | None = None
    note: str = ""


def class_colours(classes: list[str]) -> list[tuple[int, int, int]]:
    """RGB per class: the WorldCover colour for known land-cover names, tab20 otherwise."""
    from matplotlib import colormaps
    from matplotlib.colors import to_rgb

    tab = colormaps["tab20"]
    out = []
    for i, c in enumerate(classes):
        rgb = to_rgb(CLASS_COLOURS.get(str(c).lower(), tab(i % 20)))
        out.append(tuple(int(round(255 * v)) for v in rgb))
    return out


def map_values(df: pd.DataFrame, column: str, meta: dict[str, Any], what: str) -> MapValues:
    """Per-chip values of ``column`` for a map; ValueError naming the column when it cannot be mapped."""
    import pyarrow as pa

    if column not in df.columns:
        raise KeyError(f"{what}: no column {column!r} (it has {[c for c in df.columns if c != 'geometry']})")
    s = df[column]
    sample = s.dropna()
    first = sample.iloc[0] if len(sample) else None
    if column.startswith("emb_") or isinstance(first, (np.ndarray, list)) and not isinstance(first, str):
        if not column.startswith("emb_"):
            raise ValueError(
                f"{what}: column {column!r} holds lists, not numbers; map takes a class, a probability, a "
                "fraction or an embedding (emb_*) column"
            )
        from earthembed.embed.io import to_matrix
        from earthembed.explore.tables import check_finite

        X = to_matrix(pa.array(list(s.map(lambda v: None if v is None else np.asarray(v, np.float32)))))
        check_finite(X, df["chip_id"].to_numpy() if "chip_id" in df.columns else np.arange(len(X)), what, column)
        return _pca_rgb(X, column, what)
    if pd.api.types.is_bool_dtype(s) or pd.api.types.is_numeric_dtype(s):
        v = pd.to_numeric(s, errors="coerce").to_numpy(np.float64)[:, None]
        return MapValues("continuous", v, "float32", float("nan"))
    if pd.api.types.is_object_dtype(s) or pd.api.types.is_string_dtype(s) or isinstance(s.dtype, pd.CategoricalDtype):
        if len(sample) and not all(isinstance(v, str) for v in sample.iloc[:1000]):
            raise ValueError(
                f"{what}: column {column!r} is not numeric ({type(first).__name__} values); map takes a class, "
                "a probability, a fraction or an embedding (emb_*) column"
            )
        present = sorted(pd.unique(sample.astype(str)))
        classes = _recorded_classes(meta, column) or present
        classes = classes + [c for c in present if c not in classes]
        if len(classes) > MAX_CLASSES or (len(present) == len(sample) > 50):
            raise ValueError(
                f"{what}: column {column!r} is not numeric and has {len(present)} distinct values"
                + (", one per chip" if len(present) == len(sample) else "")
                + f"; a class map takes at most {MAX_CLASSES} classes (is it an identifier?)"
            )
        code = {c: i for i, c in enumerate(classes)}
        v = s.map(lambda x: np.nan if x is None or (isinstance(x, float) and np.isnan(x)) else code[str(x)])
        return MapValues("class", v.to_numpy(np.float64)[:, None], "uint8", CLASS_NODATA, classes)
    raise ValueError(
        f"{what}: column {column!r} is not numeric (dtype {s.dtype}); map takes a class, a probability, a "
        "fraction or an embedding (emb_*) column"
    )


def _recorded_classes(meta: dict[str, Any], column: str) -> list[str] | None:
    if meta.get("task") == column and meta.get("classes"):
        return [str(c) for c in meta["classes"]]
    spec = (meta.get("labels") or {}).get(column) or {}
    return [str(c) for c in spec["classes"]] if spec.get("classes") else None


def _pca_rgb(X: np.ndarray, column: str, what: str) -> MapValues:
    from sklearn.decomposition import PCA

    ok = np.isfinite(X).all(axis=1)
    if ok.sum() < 3:
        raise ValueError(f"{what}: column {column!r} has {int(ok.sum())} non-null embeddings; a PCA map needs 3")
    pca = PCA(n_components=3, random_state=0).fit(X[ok])
    Z = np.full((len(X), 3), np.nan)
    Z[ok] = pca.transform(X[ok])
    lo, hi = np.percentile(Z[ok], 2, axis=0), np.percentile(Z[ok], 98, axis=0)
    scaled = 1 + np.round(254 * np.clip((Z - lo) / np.where(hi > lo, hi - lo, 1), 0, 1))
    ev = ", ".join(f"{v:.1%}" for v in pca.explained_variance_ratio_)
    return MapValues("rgb", scaled, "uint8", RGB_NODATA, note=f"PCA of {column}: R, G, B = PC1-3 ({ev} of variance)")


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _stride(edges: np.ndarray, fallback: float) -> float:
    """Smallest positive spacing between chip origins along one axis (the tiling stride)."""
    u = np.unique(np.round(edges, 6))
    d = np.diff(u)
    d = d[d > 1e-6]
    return float(d.min()) if len(d) else fallback


def _grid_boxes(fr: pd.DataFrame, chip_size: int, pixel_size: float | None, reproject_to: Any,
                what: str) -> tuple[Any, float, list[Any]]:
    """(crs, pixel size, shapely box per chip) in the output CRS, each box the chip's own cell."""
    import shapely

    xres = float(np.nanmedian(fr["xres"]))
    side_x = fr["right"] - fr["left"]
    side_y = fr["top"] - fr["bottom"]
    sx = min(_stride(fr["left"].to_numpy(), float(side_x.median())), float(side_x.median()))
    sy = min(_stride(fr["top"].to_numpy(), float(side_y.median())), float(side_y.median()))
    cx, cy = (fr["left"] + fr["right"]) / 2, (fr["bottom"] + fr["top"]) / 2
    boxes = shapely.box(cx - sx / 2, cy - sy / 2, cx + sx / 2, cy + sy / 2)
    crs = fr["crs"].iloc[0]
    if reproject_to is not None and str(reproject_to) != str(crs):
        import geopandas as gpd

        seg = shapely.segmentize(boxes, max(sx, sy) / 8)
        boxes = gpd.GeoSeries(seg, crs=crs).to_crs(reproject_to).to_numpy()
        crs = reproject_to
        if pixel_size is None:
            b = shapely.bounds(boxes)
            pixel_size = float(np.median(np.sqrt((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])))) / max(
                1, round(sx / xres))
    if pixel_size is None:
        span = max(float(fr["right"].max() - fr["left"].min()), float(fr["top"].max() - fr["bottom"].min()))
        cell_px = max(1, int(round(sx / xres)))
        for f in _divisors(cell_px):
            pixel_size = xres * f
            if span / pixel_size <= MAX_SIDE:
                break
    if not pixel_size or not math.isfinite(pixel_size) or pixel_size <= 0:
        raise ValueError(f"{what}: pixel size must be positive, got {pixel_size}")
    return crs, float(pixel_size), list(boxes)


def _grid(boxes: list[Any], pixel: float) -> tuple[float, float, int, int]:
    """(left, top, width, height) of the grid of ``pixel`` covering every box."""
    import shapely

    b = shapely.bounds(np.asarray(boxes, dtype=object))
    left, bottom, right, top = b[:, 0].min(), b[:, 1].min(), b[:, 2].max(), b[:, 3].max()
    return left, top, max(1, math.ceil((right - left) / pixel - 1e-6)), max(1, math.ceil((top - bottom) / pixel - 1e-6))


def _check_grid_size(boxes: list[Any], pixel: float, values: MapValues, path: Path) -> None:
    """Refuse, with its size and a pixel size that fits, a grid too large to hold in memory."""
    _, _, w, h = _grid(boxes, pixel)
    if w * h > MAX_PIXELS:
        gib = w * h * values.values.shape[1] * np.dtype(values.dtype).itemsize / 2**30
        fit = pixel * max(w, h) / MAX_SIDE
        raise ValueError(
            f"{path}: the map would be {w} x {h} px ({gib:.1f} GiB) at --pixel-size {pixel:g}, more than "
            f"{MAX_PIXELS:,} px; choose a larger --pixel-size, e.g. {float(f'{fit:.2g}'):g} for about {MAX_SIDE} px a side"
        )


def _rasterise(values: MapValues, rows: np.ndarray, boxes: list[Any], pixel: float) -> tuple[np.ndarray, Any]:
    from rasterio.features import rasterize
    from rasterio.transform import from_origin

    left, top, width, height = _grid(boxes, pixel)
    transform = from_origin(left, top, pixel, pixel)
    nb = values.values.shape[1]
    out = np.full((nb, height, width), values.nodata, dtype=values.dtype)
    v = values.values[rows]
    ok = np.isfinite(v).all(axis=1)
    for k in range(nb):
        shapes = [(g, float(x)) for g, x, good in zip(boxes, v[:, k], ok, strict=True) if good]
        if shapes:
            out[k] = rasterize(shapes, out_shape=(height, width), transform=transform, fill=values.nodata,
                               dtype=values.dtype)
    return out, transform


def _write_cog(path: Path, data: np.ndarray, crs: Any, transform: Any, values: MapValues,
               tags: dict[str, str], overwrite: bool = False) -> None:
    """GTiff in memory -> COG (tiled, DEFLATE, overviews) under a temporary name, renamed into place."""
    import rasterio
    from rasterio.io import MemoryFile
    from rasterio.shutil import copy as rio_copy

    nb, h, w = data.shape
    levels = max(1, math.ceil(math.log2(max(h, w) / BLOCKSIZE))) if max(h, w) > 1 else 1
    profile = dict(driver="GTiff", width=w, height=h, count=nb, dtype=values.dtype, crs=crs, transform=transform,
                   nodata=values.nodata)
    with MemoryFile() as mem, atomic_path(path, "map", overwrite) as tmp:
        with mem.open(**profile) as ds:
            ds.write(data)
            ds.update_tags(**tags)
            if values.kind == "class":
                cols = class_colours(values.classes or [])
                ds.write_colormap(1, {i: (*c, 255) for i, c in enumerate(cols)} | {CLASS_NODATA: (0, 0, 0, 0)})
            if values.kind == "rgb":
                for i, name in enumerate(("PC1 (red)", "PC2 (green)", "PC3 (blue)"), start=1):
                    ds.set_band_description(i, name)
        with mem.open() as src:
            rio_copy(src, tmp, driver="COG", BLOCKSIZE=BLOCKSIZE, COMPRESS="DEFLATE", OVERVIEWS="AUTO",
                     OVERVIEW_COUNT=levels, RESAMPLING="NEAREST" if values.kind == "class" else "AVERAGE")
        with rasterio.open(tmp) as chk:  # a broken write must not be renamed into place
            chk.read(1, out_shape=(1, 1))


def _target_crs(out: Path, crs: str | None) -> str | None:
    """``crs`` as a CRS string (None: one map per CRS); ValueError unless ``out`` is a .tif path."""
    if out.suffix.lower() not in (".tif", ".tiff"):
        raise ValueError(f"{out}: the map is a GeoTIFF; give a .tif path")
    if crs is None:
        return None
    from rasterio.crs import CRS

    from earthembed.data.ingest.common import crs_string

    return crs_string(CRS.from_user_input(crs))


def write_map(
    table: str | Path,
    column: str,
    out: str | Path,
    store: str | Path | None = None,
    crs: str | None = None,
    pixel_size: float | None = None,
    preview: bool = True,
    overwrite: bool = False,
) -> list[Path]:
    """Rasterise ``column`` of a per-chip table (predictions, embeddings, a store) into COG(s) at ``out``.

    Returns the COG paths: ``out`` itself, or ``out`` with ``_<EPSG>`` per CRS when the chips span several
    CRSs and ``crs`` is not given. A ``.png`` preview is written beside each COG unless ``preview=False``.
    ``overwrite``: replace earlier earthembed maps and previews at those paths (never any other file).
    """
    out = Path(out)
    crs = _target_crs(out, crs)
    check_output(out, "map", [table, store], overwrite)
    df, meta = read_chip_table(table)
    values = map_values(df, column, meta, str(table))
    return _write_layers(df, meta, [(out, column, values, {})], table, store, crs, pixel_size, preview, overwrite)


CHANGE_CLASSES = ["unchanged", "changed"]


def write_change_map(
    table: str | Path,
    out: str | Path,
    column: str | None = None,
    date: str | None = None,
    store: str | Path | None = None,
    crs: str | None = None,
    pixel_size: float | None = None,
    preview: bool = True,
    overwrite: bool = False,
) -> list[Path]:
    """Maps of a change table (``earthembed change``): the score at ``out`` (float32) and, when the table was
    thresholded, the changed mask at ``OUT_mask.tif`` (classes unchanged / changed). ``column``: only
    ``score`` or only ``changed`` (written at ``out``). Series tables (a score per chip and date) map ``date``'s
    scores, by default each chip's highest score over its dates. Every output is checked before any is written.
    """
    from earthembed.explore.change import peak_per_chip, read_change

    out = Path(out)
    crs = _target_crs(out, crs)
    if column not in (None, "score", "changed"):
        raise ValueError(f"{table}: --column {column!r}: a change table maps score or changed (default: both)")
    check_output(out, "map", [table, store], overwrite)
    df, meta = read_change(table, geometry=True)
    thresholded = "changed" in df.columns
    if column == "changed" and not thresholded:
        raise ValueError(f"{table}: the change table has no changed column (run change with --threshold)")
    names = [column] if column else (["score", "changed"] if thresholded else ["score"])
    paths = {n: out if (column or n == "score") else out.with_name(f"{out.stem}_mask{out.suffix}") for n in names}
    for p in paths.values():
        check_output(p, "map", [table, store], overwrite)
        if preview:
            check_output(p.with_suffix(".png"), "png", [table, store], overwrite, option="the .png preview of --out")
    df = peak_per_chip(df, meta, date).reset_index(drop=True)
    when = (f"{meta.get('from')} -> {meta.get('to')}" if not meta.get("series")
            else f"date {date}" if date else "highest score over the dates")
    tags = {"earthembed_change": json.dumps({"method": meta.get("method"), "column": meta.get("column"),
                                             "when": when, "threshold": (meta.get("threshold") or {}).get("spec")})}
    layers = []
    for n in names:
        if n == "score":
            v = MapValues("continuous", df["score"].to_numpy(np.float64)[:, None], "float32", float("nan"),
                          note=f"{meta.get('method')} change score ({when})")
        else:
            ok = np.isfinite(df["score"].to_numpy(np.float64))
            code = np.where(ok, df["changed"].to_numpy(bool).astype(np.float64), np.nan)
            thr = meta.get("threshold") or {}
            v = MapValues("class", code[:, None], "uint8", CLASS_NODATA, list(CHANGE_CLASSES),
                          note=f"changed: score > {thr.get('value', float('nan')):.4g} ({thr.get('spec')}, {when})")
        layers.append((paths[n], n, v, tags))
    return _write_layers(df, meta, layers, table, store, crs, pixel_size, preview, overwrite)


def _write_layers(df: pd.DataFrame, meta: dict[str, Any], layers: list[tuple[Path, str, MapValues, dict[str, str]]],
                  table: str | Path, store: str | Path | None, crs: str | None, pixel_size: float | None,
                  preview: bool, overwrite: bool) -> list[Path]:
    """Rasterise each layer (path, column, values, extra tags) of the per-chip ``df``; every output (per CRS) is
    checked and every grid sized before anything is written."""
    what = str(table)
    df, chip_size = locate(df, meta, store, what)
    fr = chip_frames(df, chip_size, what)
    plan = []
    for out, column, values, extra in layers:
        geo = fr["left"].notna().to_numpy() & np.isfinite(values.values).all(axis=1)
        if not geo.any():
            raise ValueError(f"{what}: no georeferenced chip with a value in {column!r}; nothing to map")
        groups = [(crs, np.flatnonzero(geo))] if crs else [
            (c, np.flatnonzero(geo & (fr["crs"].to_numpy() == c))) for c in pd.unique(fr["crs"][geo])
        ]
        for target, rows in groups:
            path = out if len(groups) == 1 else out.with_name(f"{out.stem}_{_crs_tag(target)}{out.suffix}")
            check_output(path, "map", [table, store], overwrite)
            if preview:
                check_output(path.with_suffix(".png"), "png", [table, store], overwrite,
                             option="the .png preview of --out")
            sub = fr.iloc[rows]
            if crs is None or sub["crs"].nunique() == 1 and str(sub["crs"].iloc[0]) == str(crs):
                gcrs, pixel, boxes = _grid_boxes(sub, chip_size, pixel_size, None, what)
            else:
                parts = [(_grid_boxes(sub[sub["crs"] == c], chip_size, pixel_size, crs, what),
                          np.flatnonzero(sub["crs"] == c)) for c in pd.unique(sub["crs"])]
                pixel = pixel_size or min(p[0][1] for p in parts)
                boxes = [None] * len(sub)
                for (_, _, bx), pos in parts:
                    for p, bxi in zip(pos, bx, strict=True):
                        boxes[p] = bxi
                gcrs = crs
            _check_grid_size(boxes, pixel, values, path)
            plan.append((path, column, values, extra, rows, gcrs, pixel, boxes))
    paths = []
    for path, column, values, extra, rows, gcrs, pixel, boxes in plan:
        data, transform = _rasterise(values, rows, boxes, pixel)
        tags = {
            OUTPUT_KEY: "map", "earthembed_column": column, "earthembed_kind": values.kind,
            "earthembed_table": str(table), "earthembed_chips": str(len(rows)),
            **({"earthembed_note": values.note} if values.note else {}), **extra,
        }
        if values.classes:
            tags.update({f"class_{i}": c for i, c in enumerate(values.classes)})
            tags["earthembed_classes"] = json.dumps(values.classes)
        _write_cog(path, data, gcrs, transform, values, tags, overwrite)
        if preview:
            write_preview(path, path.with_suffix(".png"), overwrite)
        paths.append(path)
    return paths


def _crs_tag(crs: Any) -> str:
    from rasterio.crs import CRS

    epsg = CRS.from_user_input(crs).to_epsg()
    return str(epsg) if epsg else "crs"


def read_map(path: str | Path, max_side: int = 1024) -> tuple[np.ndarray, dict[str, Any]]:
    """(array [bands, h, w] read from the overview closest to ``max_side``, info: kind/classes/nodata/bounds)."""
    import rasterio

    with rasterio.open(path) as ds:
        scale = max(1.0, max(ds.width, ds.height) / max_side)
        shape = (ds.count, max(1, int(ds.height / scale)), max(1, int(ds.width / scale)))
        a = ds.read(out_shape=shape)
        tags = ds.tags()
        info = {
            "kind": tags.get("earthembed_kind", "continuous"),
            "column": tags.get("earthembed_column", Path(path).stem),
            "classes": json.loads(tags["earthembed_classes"]) if "earthembed_classes" in tags else None,
            "note": tags.get("earthembed_note", ""),
            "nodata": ds.nodata,
            "bounds": tuple(ds.bounds),
            "crs": ds.crs.to_string() if ds.crs else None,
        }
    return a, info


def draw_map(ax: Any, path: str | Path, title: str | None = None, legend: bool = True) -> Any:
    """Draw a map COG on a matplotlib axis (classes with their colours, numbers with viridis, PCA as RGB)."""
    a, info = read_map(path)
    left, bottom, right, top = info["bounds"]
    extent = (left, right, bottom, top)
    mappable = None
    if info["kind"] == "class":
        from matplotlib.colors import ListedColormap
        from matplotlib.patches import Patch

        classes = info["classes"] or []
        cols = np.array(class_colours(classes), dtype=float) / 255 if classes else np.zeros((1, 3))
        img = np.ma.masked_equal(a[0].astype(np.int32), CLASS_NODATA)
        ax.imshow(img, cmap=ListedColormap(cols), vmin=-0.5, vmax=len(cols) - 0.5, extent=extent,
                  interpolation="nearest")
        if legend and classes:
            ax.legend(handles=[Patch(color=c, label=n) for c, n in zip(cols, classes, strict=True)], fontsize=7,
                      loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    elif info["kind"] == "rgb":
        rgb = np.moveaxis(a[:3], 0, -1).astype(np.float32) / 255
        alpha = (a[:3] != RGB_NODATA).any(axis=0).astype(np.float32)[..., None]
        ax.imshow(np.concatenate([rgb, alpha], axis=-1), extent=extent, interpolation="nearest")
    else:
        img = np.ma.masked_invalid(a[0].astype(np.float32))
        mappable = ax.imshow(img, cmap="viridis", extent=extent, interpolation="nearest")
    ax.set_title(title or info["column"], fontsize=9)
    ax.set_xlabel(info["crs"] or "", fontsize=7)
    ax.tick_params(labelsize=6)
    return mappable


def write_preview(tif: str | Path, png: str | Path, overwrite: bool = True) -> Path:
    """PNG of a map COG (from its overviews), with a legend or colour bar; written atomically, replacing only an
    earthembed PNG (and only with ``overwrite``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 6))
    m = draw_map(ax, tif)
    _, info = read_map(tif, max_side=1)
    if m is not None:
        fig.colorbar(m, ax=ax, shrink=0.8, label=info["column"])
    if info["note"]:
        ax.set_title(f"{info['column']}\n{info['note']}", fontsize=8)
    return save_png(fig, png, overwrite)


def side_by_side(tifs: list[str | Path], titles: list[str], png: str | Path, overwrite: bool = True) -> Path:
    """Maps next to each other on one PNG (e.g. predicted land cover vs the truth); replaces only an earthembed
    PNG (and only with ``overwrite``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tifs), figsize=(5.5 * len(tifs), 5.5), squeeze=False)
    for ax, tif, title in zip(axes[0], tifs, titles, strict=True):
        m = draw_map(ax, tif, title)
        if m is not None:
            fig.colorbar(m, ax=ax, shrink=0.8)
    return save_png(fig, png, overwrite)
