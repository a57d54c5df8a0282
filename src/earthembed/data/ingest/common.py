"""Raster reading shared by the ingesters: every failure names the file and the problem."""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from earthembed.data.modalities import Modality, get_modality
from earthembed.errors import IngestError

MAX_IMAGE_BYTES = 1 << 30
"""Largest decoded size (width x height x bands x bytes per sample) of one raster read whole. A compressed
file can declare far more than it holds (a 197 KB TIFF declaring 40000 x 40000 x 13 px decodes to 39 GiB), so
the header is checked before reading; whole-image ingesters (folder, EuroSAT, Sen1Floods11) read chip-sized
images, far below this."""

TIFF_SUFFIXES = (".tif", ".tiff")
PIL_SUFFIXES = (".png", ".jpg", ".jpeg")
IMAGE_SUFFIXES = TIFF_SUFFIXES + PIL_SUFFIXES


@dataclasses.dataclass
class Raster:
    """Pixels [C, H, W] plus georeferencing (crs/transform None when the file is not georeferenced)."""

    path: Path
    data: np.ndarray
    crs: Any
    transform: Any
    nodata: float | None
    descriptions: tuple[str | None, ...]

    @property
    def georeferenced(self) -> bool:
        return self.crs is not None


@contextlib.contextmanager
def open_raster(path: str | Path) -> Iterator[Any]:
    """``rasterio.open`` that names ``path`` in an :class:`IngestError` when the file is missing, corrupt or
    truncated (also for reads inside the block), and stays quiet about files without georeferencing."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioError

    path = Path(path)
    if not path.exists():
        raise IngestError(f"{path}: file not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                yield src
    except RasterioError as e:
        raise IngestError(f"{path}: cannot read raster (corrupt or truncated?): {e.__cause__ or e}") from e


def check_declared_size(path: Path, src: Any, max_bytes: int = MAX_IMAGE_BYTES) -> None:
    """Refuse a raster whose header declares more than ``max_bytes`` decoded, before anything is decoded."""
    declared = src.width * src.height * sum(np.dtype(d).itemsize for d in src.dtypes)
    if declared > max_bytes:
        raise IngestError(
            f"{path}: declares {src.width}x{src.height} px x {src.count} bands ({declared / 2**30:.1f} GiB decoded), "
            f"more than the {max_bytes / 2**30:g} GiB allowed for one image (a decompression bomb?); not read"
        )


def read_raster(
    path: str | Path, expect_bands: int | None = None, masked_nan: bool = False, max_bytes: int = MAX_IMAGE_BYTES
) -> Raster:
    """Read a whole raster; raise :class:`IngestError` naming ``path`` for missing, corrupt or truncated files
    and for files declaring more than ``max_bytes`` of pixels (checked from the header, before reading)."""
    path = Path(path)
    with open_raster(path) as src:
        check_declared_size(path, src, max_bytes)
        data = src.read()
        crs = src.crs
        transform = src.transform if crs is not None else None
        nodata = src.nodata
        desc = tuple(src.descriptions)
    if expect_bands is not None and data.shape[0] != expect_bands:
        raise IngestError(f"{path}: has {data.shape[0]} bands, expected {expect_bands}")
    if masked_nan and nodata is not None and not np.isnan(nodata):
        data = data.astype(np.float32)
        data[data == nodata] = np.nan
    return Raster(path, data, crs, transform, nodata, desc)


def footprint_wgs84(crs: Any, transform: Any, height: int, width: int):
    """Footprint polygon of a pixel grid in EPSG:4326 (None when not georeferenced)."""
    if crs is None or transform is None:
        return None
    import shapely
    from rasterio.warp import transform_geom

    left, top = transform @ (0, 0)
    right, bottom = transform @ (width, height)
    box = shapely.box(min(left, right), min(top, bottom), max(left, right), max(top, bottom))
    geom = transform_geom(crs, "EPSG:4326", shapely.geometry.mapping(box))
    return shapely.geometry.shape(geom)


def window_footprint(crs: Any, transform: Any, row_off: int, col_off: int, size: int):
    """EPSG:4326 footprint of the ``size`` x ``size`` window at (``row_off``, ``col_off``) of a grid (None when
    not georeferenced)."""
    if crs is None or transform is None:
        return None
    from rasterio.windows import Window
    from rasterio.windows import transform as window_transform

    return footprint_wgs84(crs, window_transform(Window(col_off, row_off, size, size), transform), size, size)


def crs_string(crs: Any) -> str | None:
    if crs is None:
        return None
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.to_wkt()


def echo_summary(store: Any, dataset: str, max_listed: int = 10) -> None:
    """Print what was ingested and every skipped item with its reason (the first ``max_listed``)."""
    import typer

    info = store.info()
    typer.echo(f"{dataset}: {info['chips']} chips in {store.path}; splits {info['splits']}")
    for k, m in info["modalities"].items():
        typer.echo(f"  {k}: {m['product']} {m['chip_shape']} present in {m['present']} chips")
    skipped = store.report().get("skipped", [])
    if skipped:
        typer.echo(f"  {len(skipped)} item(s) skipped or incomplete (see {store.path / 'ingest_report.json'}):")
        for s in skipped[:max_listed]:
            reason = s["reason"]  # reasons from IngestError already start with the file name
            typer.echo(f"    {reason if reason.startswith(s['item']) else s['item'] + ': ' + reason}")
        if len(skipped) > max_listed:
            typer.echo(f"    ... and {len(skipped) - max_listed} more")


def store_key(modality: Modality) -> str:
    """Store key for a modality: ``s2``/``s1`` for Sentinel-2/-1 products, else the modality name."""
    for k in ("s2", "s1"):
        if modality.product.startswith(k):
            return k
    return modality.name


def read_image(path: Path) -> tuple[np.ndarray, Any, Any]:
    """Pixels [C, H, W], crs and transform (None for PNG/JPEG); :class:`IngestError` naming unreadable files."""
    if path.suffix.lower() in TIFF_SUFFIXES:
        r = read_raster(path)
        return r.data, r.crs, r.transform
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode == "P":  # a palette is an encoding, not a band
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            a = np.asarray(im)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise IngestError(f"{path}: cannot read image (corrupt or truncated?): {e}") from e
    a = a[None] if a.ndim == 2 else np.moveaxis(a, -1, 0)
    return a, None, None


def unfit_reason(a: np.ndarray, m: Modality) -> str | None:
    """Why ``a`` cannot be stored as ``m.dtype`` (checked per file so one bad file cannot fail a batch)."""
    target = np.dtype(m.dtype)
    if not np.issubdtype(target, np.integer):
        return None
    if np.issubdtype(a.dtype, np.floating):
        bad = ~np.isfinite(a)  # NaN/Inf are stored as nodata, if the modality has one
        if bad.any() and m.nodata is None:
            return f"has non-finite (NaN/Inf) pixels but {m.name} ({m.dtype}) has no nodata value"
        a = a[~bad]
    info = np.iinfo(target)
    if a.size and (a.min() < info.min or a.max() > info.max):
        return f"values [{a.min()}, {a.max()}] do not fit {m.name} dtype {m.dtype}"
    return None


def resolve_modality(
    modality: str | None, bands: Sequence[str] | None, first: Path | None, first_bands: int | None
) -> Modality:
    """The declared modality (restricted to ``bands``), or ``rgb`` for PNG/JPEG and 3-band TIFFs; other
    undeclared band counts raise, naming the first file."""
    if modality is None:
        if bands:
            raise ValueError("--bands needs --modality (the product the bands belong to)")
        if first is not None and first.suffix.lower() in TIFF_SUFFIXES and first_bands != 3:
            raise IngestError(
                f"{first}: has {first_bands} bands; say what they are with --modality PRODUCT "
                "(e.g. s2_l1c) and, unless they are all of its bands in order, --bands B01,B02,..."
            )
        modality = "rgb"
    m = get_modality(modality)
    return m.select(list(bands)) if bands else m


def parse_band_list(bands: str | None) -> list[str] | None:
    """``"B04,B03,B02"`` -> ``["B04", "B03", "B02"]`` (``--bands`` of the ingest commands); None stays None."""
    if not bands:
        return None
    out = [b.strip() for b in bands.split(",") if b.strip()]
    if not out:
        raise ValueError(f"--bands {bands!r}: no band names")
    return out
