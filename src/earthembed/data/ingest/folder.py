"""Ingest a class-subfolder image dataset (``SRC/<class>/<image>``) into a chip store.

Images may be GeoTIFF (read with rasterio, any band count) or PNG/JPEG (read with pillow). The user declares
the modality (a registered product id) and which of its bands the files hold, in file order; without a
declaration RGB (the ``rgb`` product) is assumed for PNG/JPEG and 3-band TIFFs. Conventions:

* Store key of the modality: ``s2`` for ``s2_*`` products, ``s1`` for ``s1_*`` products, else the modality's
  name, so folder and raster stores of the same sensor line up for the models.
* Chip size: the first readable image's (shorter) side unless given; larger images are centre-cropped, smaller
  ones are skipped with a recorded reason.
* Labels: column ``label`` (kind ``class``), classes = sorted class-folder names. At least 2 classes are
  required, and a class folder must not hold images in subfolders (SRC given one level too high, e.g.
  ``SRC/data/<class>/<image>``): both are refused with an error naming the folder.
* Splits: if the top-level folders are ``train/``, ``val/`` (or ``valid/``/``validation/``) and ``test/``, each
  holding class folders, those splits are used; otherwise a deterministic stratified 60/20/20 split of each
  class's image files (ordered by a hash of their relative path, so independent of listing order).
* chip_id = the file's path relative to SRC. Dot-files are ignored; other non-image files, images with the
  wrong band count, too small, unreadable or with values that do not fit the modality's dtype are skipped,
  each with a reason naming the file (``ingest_report.json``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer

from earthembed.data.ingest.common import (
    IMAGE_SUFFIXES,
    IngestError,
    crs_string,
    parse_band_list,
    read_image,
    resolve_modality,
    store_key,
    unfit_reason,
    window_footprint,
)
from earthembed.data.ingest.splits import stratified_splits
from earthembed.data.store import ChipRecord, ChipStore, StoreWriter

SPLIT_DIRS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
LABEL = "label"


def _split_layout(src: Path) -> dict[str, Path] | None:
    """``{split: folder}`` when the top level holds train/val/test folders, else None."""
    dirs = [d for d in sorted(src.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    named = [d for d in dirs if d.name.lower() in SPLIT_DIRS]
    if not named:
        return None
    others = [d.name for d in dirs if d.name.lower() not in SPLIT_DIRS]
    if others:
        raise IngestError(
            f"{src}: has split folders {[d.name for d in named]} next to other folders {others}; "
            "use either SRC/<split>/<class>/<image> or SRC/<class>/<image>"
        )
    out: dict[str, Path] = {}
    for d in named:
        split = SPLIT_DIRS[d.name.lower()]
        if split in out:
            raise IngestError(f"{src}: two folders for split {split!r}: {out[split].name}, {d.name}")
        out[split] = d
    return out


def _class_files(root: Path, in_split: bool = False) -> dict[str, list[Path]]:
    """Files (recursively, dot-files excluded) of each class folder under ``root``.

    A class folder whose subfolders hold images is refused: that is the layout of SRC given one level too
    high (``SRC/data/<class>/<image>``), which would otherwise label every image with the parent's name.
    """
    out: dict[str, list[Path]] = {}
    for d in sorted(root.iterdir()):
        if d.is_dir() and not d.name.startswith("."):
            files = sorted(
                f for f in d.rglob("*") if f.is_file() and not any(p.startswith(".") for p in f.relative_to(d).parts)
            )
            nested = sorted(
                {f.relative_to(d).parts[0] for f in files if f.parent != d and f.suffix.lower() in IMAGE_SUFFIXES}
            )
            if nested:
                shown = ", ".join(nested[:5]) + (", ..." if len(nested) > 5 else "")
                hint = (
                    f"the expected layout is SRC/<split>/<class>/<image>; if those subfolders are the classes, "
                    f"move them up into {root}"
                    if in_split
                    else f"the expected layout is SRC/<class>/<image>; if those subfolders are the classes, "
                    f"point SRC one level down: {d}"
                )
                raise IngestError(f"{d}: class folder {d.name!r} holds images in subfolders ({shown}); {hint}")
            out[d.name] = files
    return out


def _plan(src: Path) -> tuple[list[tuple[Path, str, str]], list[str], list[Path]]:
    """(file, class, split) for every candidate file, the sorted class names, and stray top-level files."""
    if not src.is_dir():
        raise IngestError(f"{src}: not a folder" if src.exists() else f"{src}: folder not found")
    entries = [p for p in src.iterdir() if not p.name.startswith(".")]
    if not entries:
        raise IngestError(f"{src}: folder is empty")
    stray = sorted(p for p in entries if p.is_file())
    layout = _split_layout(src)
    items: list[tuple[Path, str, str]] = []
    classes: set[str] = set()
    if layout is None:
        per_class = _class_files(src)
        for cls, files in per_class.items():
            splits = stratified_splits(
                {cls: [f.relative_to(src).as_posix() for f in files if f.suffix.lower() in IMAGE_SUFFIXES]}
            )
            items += [(f, cls, splits.get(f.relative_to(src).as_posix(), "")) for f in files]
        classes = set(per_class)
    else:
        for split, d in layout.items():
            per_class = _class_files(d, in_split=True)
            stray += sorted(p for p in d.iterdir() if p.is_file() and not p.name.startswith("."))
            items += [(f, cls, split) for cls, files in per_class.items() for f in files]
            classes |= set(per_class)
    if not classes:
        raise IngestError(f"{src}: no class subfolders (expected SRC/<class>/<image>)")
    if len(classes) < 2:
        raise IngestError(
            f"{src}: only one class folder ({', '.join(sorted(classes))}) found; a classification dataset needs "
            "at least 2 classes (SRC/<class>/<image>, one folder per class)"
        )
    if not items:
        raise IngestError(f"{src}: class folders {sorted(classes)} hold no files")
    return items, sorted(classes), stray


def _centre_crop(a: np.ndarray, size: int) -> tuple[np.ndarray, int, int]:
    top, left = (a.shape[1] - size) // 2, (a.shape[2] - size) // 2
    return a[:, top : top + size, left : left + size], top, left


def ingest_folder(
    src: str | Path,
    out: str | Path,
    modality: str | None = None,
    bands: list[str] | None = None,
    chip_size: int | None = None,
    overwrite: bool = False,
    batch_size: int = 64,
) -> ChipStore:
    """Ingest ``SRC/<class>/<image>`` (or ``SRC/<split>/<class>/<image>``) into a store at ``out``.

    ``modality`` is a registered product id; ``bands`` the bands each file holds, in file order (default: all
    of the product's bands). Re-running after an interruption resumes; see the module docstring for the rules.
    """
    src, out = Path(src), Path(out)
    items, classes, stray = _plan(src)
    # the first readable image fixes the modality (when not declared) and the chip size
    probe: tuple[Path, np.ndarray] | None = None
    for f, _, _ in items:
        if f.suffix.lower() in IMAGE_SUFFIXES:
            try:
                probe = (f, read_image(f)[0])
                break
            except IngestError:
                continue
    if probe is None:
        raise IngestError(f"{src}: no readable image ({', '.join(IMAGE_SUFFIXES)}) in the class folders")
    mod = resolve_modality(modality, bands, probe[0], probe[1].shape[0])
    if chip_size is None:
        chip_size = int(min(probe[1].shape[1:]))
    if chip_size <= 0:
        raise ValueError(f"chip size must be positive, got {chip_size}")
    key = store_key(mod)
    mod = mod.renamed(key)
    schema = {LABEL: {"kind": "class", "classes": classes}}
    source = {
        "ingester": "folder",
        "path": str(src.resolve()),
        "product": mod.product,
        "bands": mod.band_names,
    }
    with StoreWriter(
        out, [mod], chip_size, schema, source=source, batch_size=batch_size, overwrite=overwrite, inputs=[src]
    ) as w:
        for f in stray:
            w.skip(str(f), "not inside a class folder")
        for f, cls, split in items:
            chip_id = f.relative_to(src).as_posix()
            if w.is_done(chip_id):
                continue
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                w.skip(str(f), f"not an image (expected one of {', '.join(IMAGE_SUFFIXES)})")
                continue
            try:
                a, crs, transform = read_image(f)
            except IngestError as e:
                w.skip(str(f), str(e))
                continue
            if a.shape[0] != mod.num_bands:
                w.skip(
                    str(f),
                    f"{f}: has {a.shape[0]} bands, expected {mod.num_bands} ({mod.product}: {','.join(mod.band_names)});"
                    " declare the file's bands with --modality/--bands",
                )
                continue
            h, wd = a.shape[1:]
            if h < chip_size or wd < chip_size:
                w.skip(str(f), f"{f}: {h}x{wd} px is smaller than the chip size {chip_size}")
                continue
            a, top, left = _centre_crop(a, chip_size)
            reason = unfit_reason(a, mod)
            if reason:
                w.skip(str(f), f"{f}: {reason}")
                continue
            geom = window_footprint(crs, transform, top, left, chip_size)
            w.add(
                ChipRecord(
                    chip_id,
                    {key: a},
                    geometry=geom,
                    crs=crs_string(crs) if geom is not None else None,
                    aoi=src.name,
                    split=split,
                    labels={LABEL: cls},
                    source=str(f),
                )
            )
    return ChipStore(out)


def command(
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
) -> None:
    """Ingest a class-subfolder image dataset (GeoTIFF/PNG/JPEG) into a chip store."""
    from earthembed.cli_utils import fail_on
    from earthembed.data.modalities import load_modalities_file

    with fail_on():
        if modalities_file is not None:
            load_modalities_file(modalities_file)
        store = ingest_folder(
            src, out, modality=modality, bands=parse_band_list(bands), chip_size=chip_size,
            overwrite=overwrite, batch_size=batch_size,
        )
    info = store.info()
    typer.echo(f"{store.path}: {info['chips']} chips of {info['chip_size']} px, splits {info['splits']}")
    for k, m in info["modalities"].items():
        typer.echo(f"  {k}: {m['product']} bands {','.join(m['bands'])}")
    typer.echo(f"  classes {info['labels'][LABEL]['class_counts']}")
    if info["skipped"]:
        typer.echo(f"  skipped {info['skipped']} items (see {store.path / 'ingest_report.json'})")
