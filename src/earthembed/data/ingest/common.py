"""Raster reading shared by the ingesters: every failure names the file and the problem."""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from earthembed.errors import IngestError

MAX_IMAGE_BYTES = 1 << 30
"""Largest decoded size (width x height x bands x bytes per sample) of one raster read whole. A compressed
file can declare far more than it holds (a 197 KB TIFF declaring 40000 x 40000 x 13 px decodes to 39 GiB), so
the header is checked before reading; whole-image ingesters (folder, EuroSAT, Sen1Floods11) read chip-sized
images, far below this."""


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
