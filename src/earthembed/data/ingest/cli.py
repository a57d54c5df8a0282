"""The ``ingest`` commands: thin typer wrappers that import their ingester only when run, so
``earthembed --help`` does not load zarr, pandas or rasterio (each ingester is a Python API of its own:
``earthembed.data.ingest.<name>.ingest_<name>``)."""

from __future__ import annotations

from pathlib import Path

import typer

from earthembed.outputs import check_output


def eurosat(
    src: Path = typer.Argument(..., help="EuroSAT folder: EuroSAT_MS itself or the folder containing it"),
    out: Path = typer.Option(..., "--out", "-o", help="chip store directory to create (or resume)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing store at --out"),
    batch_size: int = typer.Option(64, "--batch-size", help="chips per committed batch"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress"),
) -> None:
    """Ingest EuroSAT multispectral (13-band L1C, 64x64) with class labels and a stratified 60/20/20 split."""
    from earthembed.cli_utils import fail_on
    from earthembed.data.ingest.common import echo_summary
    from earthembed.data.ingest.eurosat import ingest_eurosat
    with fail_on():
        check_output(out, "store", [src], overwrite)
        store = ingest_eurosat(src, out, overwrite=overwrite, batch_size=batch_size, progress=not quiet)
    echo_summary(store, "eurosat")


def bigearthnet(
    src: Path = typer.Argument(..., help="BigEarthNet v2.0 folder (metadata.parquet, BigEarthNet-S2, BigEarthNet-S1)"),
    out: Path = typer.Option(..., "--out", "-o", help="chip store directory to create (or resume)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing store at --out"),
    batch_size: int = typer.Option(64, "--batch-size", help="chips per committed batch"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress"),
) -> None:
    """Ingest BigEarthNet v2.0 S2 + S1 pairs (120x120) with 19-class multi-labels and the official splits."""
    from earthembed.cli_utils import fail_on
    from earthembed.data.ingest.bigearthnet import ingest_bigearthnet
    from earthembed.data.ingest.common import echo_summary
    with fail_on():
        check_output(out, "store", [src], overwrite)
        store = ingest_bigearthnet(src, out, overwrite=overwrite, batch_size=batch_size, progress=not quiet)
    echo_summary(store, "bigearthnet")


def sen1floods11(
    src: Path = typer.Argument(..., help="HandLabeled folder with S1Hand/, S2Hand/ and LabelHand/"),
    out: Path = typer.Option(..., "--out", "-o", help="chip store directory to create (or resume)"),
    chip_size: int = typer.Option(64, "--chip-size", help="chip edge in pixels (non-overlapping tiles)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing store at --out"),
    batch_size: int = typer.Option(64, "--batch-size", help="chips per committed batch"),
    split_by: str = typer.Option("scene", "--split-by", help="scene (official files or hash) | block (spatial blocks "
                                 "within each scene, e.g. for segmentation on one scene)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress"),
) -> None:
    """Ingest Sen1Floods11 hand-labelled S1 + S2 scenes as chips with a water mask and water fraction."""
    from earthembed.cli_utils import fail_on
    from earthembed.data.ingest.common import echo_summary
    from earthembed.data.ingest.sen1floods11 import ingest_sen1floods11
    with fail_on():
        check_output(out, "store", [src], overwrite)
        store = ingest_sen1floods11(src, out, chip_size=chip_size, overwrite=overwrite, batch_size=batch_size,
                                    split_by=split_by, progress=not quiet)
    echo_summary(store, "sen1floods11")


def folder(
    src: Path = typer.Argument(..., help="dataset folder: SRC/<class>/<image> or SRC/<split>/<class>/<image>"),
    out: Path = typer.Option(..., "--out", "-o", help="chip store directory to create"),
    modality: str | None = typer.Option(
        None, help="registered product id of the images (s2_l1c, rgb, ...); default rgb for PNG/JPEG/3-band TIFF"
    ),
    bands: str | None = typer.Option(None, help="bands each file holds, in file order, e.g. B04,B03,B02"),
    chip_size: int | None = typer.Option(None, help="chip size in px (default: the first image's size)"),
    modalities_file: Path | None = typer.Option(None, help="YAML with user-defined modalities to register"),
    overwrite: bool = typer.Option(False, help="replace an existing store at --out"),
    batch_size: int = typer.Option(64, help="chips per committed batch"),
    resize: bool = typer.Option(False, "--resize", help="resample every image to --chip-size (instead of the centre crop)"),
    tile: bool = typer.Option(False, "--tile", help="cut every image into non-overlapping --chip-size tiles, one row each"),
    unlabelled: bool = typer.Option(
        False, "--unlabelled", help="an unlabelled pool: every image under SRC (see --glob), no class folders"
    ),
    pattern: str | None = typer.Option(None, "--glob", help="with --unlabelled: only paths (relative to SRC) matching this glob"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress"),
) -> None:
    """Ingest a class-subfolder image dataset (GeoTIFF/PNG/JPEG), or an unlabelled pool of images, into a chip store."""
    from earthembed.cli_utils import fail_on
    from earthembed.data.ingest.common import parse_band_list
    from earthembed.data.ingest.folder import LABEL, ingest_folder
    from earthembed.data.modalities import load_modalities_file

    with fail_on():
        check_output(out, "store", [src, modalities_file], overwrite)
        if modalities_file is not None:
            load_modalities_file(modalities_file)
        store = ingest_folder(
            src, out, modality=modality, bands=parse_band_list(bands), chip_size=chip_size,
            overwrite=overwrite, batch_size=batch_size, resize=resize, tile=tile, unlabelled=unlabelled,
            pattern=pattern, progress=not quiet,
        )
    info = store.info()
    typer.echo(f"{store.path}: {info['chips']} chips of {info['chip_size']} px, splits {info['splits']}")
    for k, m in info["modalities"].items():
        typer.echo(f"  {k}: {m['product']} bands {','.join(m['bands'])}")
    if LABEL in info["labels"]:
        typer.echo(f"  classes {info['labels'][LABEL]['class_counts']}")
    if info["skipped"]:
        typer.echo(f"  skipped {info['skipped']} items (see {store.path / 'ingest_report.json'})")


def rasters(
    modality: list[str] = typer.Option(..., "--modality", "-m", help="KEY=PATH, e.g. s2=s2.tif (repeat; first = reference grid)"),
    out: Path = typer.Option(..., "--out", "-o", help="chip store directory to create"),
    chip_size: int = typer.Option(..., help="chip size in px of the reference grid"),
    product: list[str] = typer.Option([], "--product", help="KEY=PRODUCT, e.g. s2=s2_l2a (default by key)"),
    labels: Path | None = typer.Option(None, help="categorical label raster (e.g. ESA WorldCover)"),
    label_class: list[str] = typer.Option([], "--label-class", help="VALUE=NAME label class names (repeat)"),
    stride: int | None = typer.Option(None, help="tile step in px (default: chip size)"),
    aoi: str = typer.Option("aoi", help="AOI name, prefix of chip ids"),
    resolution: float | None = typer.Option(None, help="grid pixel size in reference CRS units (default: first raster's)"),
    modalities_file: Path | None = typer.Option(None, help="YAML with user-defined modalities to register"),
    overwrite: bool = typer.Option(False, help="replace an existing store at --out"),
    batch_size: int = typer.Option(64, help="chips per committed batch"),
    date: list[str] = typer.Option([], "--date", help="KEY=YYYY-MM-DD acquisition date of a modality (repeat)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress"),
) -> None:
    """Tile AOI rasters (GeoTIFF/COG, any CRS/resolution) and an optional label raster into a chip store."""
    from earthembed.cli_utils import fail_on
    from earthembed.data.ingest.rasters import CLASS_LABEL, _pairs, ingest_rasters
    from earthembed.data.modalities import load_modalities_file

    with fail_on():
        check_output(out, "store", [*(v.partition("=")[2] for v in modality), labels, modalities_file], overwrite)
        if modalities_file is not None:
            load_modalities_file(modalities_file)
        classes = _pairs(label_class, "--label-class")
        try:
            label_classes = {int(k): v for k, v in classes.items()} or None
        except ValueError as e:
            raise ValueError(f"--label-class: values must be integers ({e})") from None
        store = ingest_rasters(
            _pairs(modality, "--modality"), out, chip_size, labels=labels, products=_pairs(product, "--product"),
            stride=stride, aoi=aoi, resolution=resolution, label_classes=label_classes, overwrite=overwrite,
            batch_size=batch_size, dates=_pairs(date, "--date"), progress=not quiet,
        )
    info = store.info()
    typer.echo(f"{store.path}: {info['chips']} chips of {info['chip_size']} px, splits {info['splits']}")
    for k, m in info["modalities"].items():
        typer.echo(f"  {k}: {m['product']} present in {m['present']}")
    if CLASS_LABEL in info["labels"]:
        typer.echo(f"  {CLASS_LABEL} {info['labels'][CLASS_LABEL]['class_counts']}")
    if info["skipped"]:
        typer.echo(f"  skipped {info['skipped']} tiles (see {store.path / 'ingest_report.json'})")


def stac(
    catalog: str = typer.Option(..., "--catalog", help="STAC API URL, or a static catalog (catalog.json path/URL)"),
    collections: str = typer.Option(..., "--collections", help="collection ids, comma-separated (first = grid)"),
    modality: list[str] = typer.Option(..., "--modality", "-m", help="product per collection: s2_l2a,s1_grd_db or COLLECTION=PRODUCT"),
    out: Path = typer.Option(..., "--out", "-o", help="chip store directory to create"),
    bbox: str = typer.Option(None, "--bbox", help="MINLON,MINLAT,MAXLON,MAXLAT (default: the items' extent)"),
    datetime: str = typer.Option(None, "--datetime", help="START/END (ISO), START/.., ../END or one date"),
    composite: str = typer.Option(None, "--composite", help="month | quarter | year | Nd: one composite per period of "
                                  "--datetime (per-pixel median of the valid values; keys s2, s2_t2, ... in period "
                                  "order, each chip dated by the median date of its items) instead of one mosaic"),
    cloud_mask: str = typer.Option(None, "--cloud-mask", help="scl | none, with --composite: leave the pixels of "
                                   "--mask-classes in each item's Sentinel-2 scene classification (asset scl/SCL, or "
                                   "--asset COLLECTION:SCL=ASSET; 20 m, nearest onto the grid) out of the median. "
                                   "Default: scl for S2 L2A collections whose items have the asset; otherwise none "
                                   "(said in a note: clouds the assets do not mark as nodata enter the median). scl "
                                   "given: every composited optical collection, an item without the asset an error"),
    mask_classes: str = typer.Option(None, "--mask-classes", help="SCL classes to mask, comma-separated (default "
                                     "0,1,3,8,9,10: no data, saturated/defective, cloud shadow, cloud medium and high "
                                     "probability, thin cirrus; 11 snow is kept)"),
    min_clear: float = typer.Option(0.0, "--min-clear", help="with --composite: a chip-date whose composite has a "
                                    "value at a smaller fraction (0..1) of the chip's pixels is absent (counted in "
                                    "the note); default 0: any chip with a clear pixel is kept"),
    chip_size: int = typer.Option(64, "--chip-size", help="chip size in px"),
    crs: str = typer.Option(None, "--crs", help="grid CRS (default: the first collection's native CRS)"),
    resolution: float = typer.Option(None, "--resolution", help="pixel size in CRS units (default: the first product's)"),
    asset: list[str] = typer.Option([], "--asset", help="COLLECTION:BAND=ASSET where the band's asset is not found by name"),
    aoi: str = typer.Option("stac", "--aoi", help="AOI name, prefix of chip ids"),
    modalities_file: Path = typer.Option(None, "--modalities-file", help="YAML with user-defined modalities"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing store at --out"),
    batch_size: int = typer.Option(64, "--batch-size", help="chips per committed batch"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress"),
) -> None:
    """Find items in a STAC API or static catalog and tile their COG assets into chips on one grid."""
    from earthembed.cli_utils import echo_warnings, fail_on
    from earthembed.data.ingest.common import echo_summary
    from earthembed.data.ingest.stac import StacWarning, _assets, _products, composite_note, ingest_stac
    from earthembed.data.modalities import load_modalities_file

    with fail_on(), echo_warnings(StacWarning):  # catalogue disagreements: one `warning:` line each
        check_output(out, "store", [catalog, modalities_file], overwrite)
        if modalities_file is not None:
            load_modalities_file(modalities_file)
        colls = [c.strip() for c in collections.split(",") if c.strip()]
        store = ingest_stac(catalog, colls, out, _products(modality, colls), chip_size=chip_size, bbox=bbox,
                            datetime=datetime, crs=crs, resolution=resolution, assets=_assets(asset), aoi=aoi,
                            overwrite=overwrite, batch_size=batch_size, progress=not quiet, composite=composite,
                            cloud_mask=cloud_mask, mask_classes=mask_classes, min_clear=min_clear)
    echo_summary(store, f"STAC {catalog}")
    note = composite_note(store.meta["source"], store.report())
    if note:
        typer.echo(note)
    idx = store.index
    for k in store.modalities:
        dates = sorted(idx[f"date_{k}"].dropna().unique())
        typer.echo(f"  {k} dates: {', '.join(dates[:5])}{' ...' if len(dates) > 5 else ''}")


def pairs(
    images: str = typer.Option(..., "--images", help="image folder or quoted glob of folders, e.g. 'SRC/*/images'"),
    masks: str = typer.Option(..., "--masks", help="mask folder or quoted glob of folders, e.g. 'SRC/*/masks'"),
    out: Path = typer.Option(..., "--out", "-o", help="chip store directory to create (or resume)"),
    chip_size: int = typer.Option(..., "--chip-size", help="tile size in px"),
    stride: int | None = typer.Option(None, "--stride", help="tile step in px (default: chip size; smaller = overlap)"),
    classes: Path | None = typer.Option(None, "--classes", help="YAML mapping class names to mask ids or RGB colours"),
    ignore: str | None = typer.Option(None, "--ignore", help="unlabelled mask ids when there is no --classes, e.g. 255"),
    modality: str | None = typer.Option(None, help="registered product id of the images (default rgb for PNG/JPEG)"),
    bands: str | None = typer.Option(None, help="bands each image holds, in file order, e.g. B04,B03,B02"),
    split_by: str = typer.Option("image", "--split-by", help="image | folder: the unit kept whole in one split"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing store at --out"),
    batch_size: int = typer.Option(64, "--batch-size", help="chips per committed batch"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress"),
) -> None:
    """Ingest image/mask pairs (segmentation datasets) as tiles with a pixel mask, class fractions and splits."""
    from earthembed.cli_utils import fail_on
    from earthembed.data.ingest.common import echo_summary, parse_band_list
    from earthembed.data.ingest.pairs import MASK_LABEL, ingest_pairs

    with fail_on():
        check_output(out, "store", [images, masks, classes], overwrite)
        try:
            ids = [int(v) for v in (ignore or "").split(",") if v.strip()]
        except ValueError:
            raise ValueError(f"--ignore {ignore!r}: expected comma-separated integer ids") from None
        store = ingest_pairs(images, masks, out, chip_size, stride=stride, classes=classes, ignore=ids,
                             modality=modality, bands=parse_band_list(bands), split_by=split_by, overwrite=overwrite,
                             batch_size=batch_size, progress=not quiet)
    echo_summary(store, "pairs")
    typer.echo(f"  mask classes {store.labels[MASK_LABEL]['classes']}; labelled chips "
               f"{int(store.index[f'has_mask_{MASK_LABEL}'].sum())}")


INGESTERS = ("eurosat", "bigearthnet", "sen1floods11", "folder", "rasters", "stac", "pairs")
