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

Large images (aerial / satellite scenes) are handled by one of two options instead of the centre crop:

* ``resize``: every image is resampled to ``chip_size`` x ``chip_size`` (area-averaging when shrinking,
  bilinear when enlarging, per band in float, then rounded back to the modality's dtype); non-square images
  are stretched, as a scene classifier's resize does, so no part of the scene is cut away. Smaller images are
  enlarged, not skipped.
* ``tile``: every image is cut into non-overlapping ``chip_size`` tiles from its top-left corner (the
  remainders at the right and bottom edges are dropped), one store row per tile with chip_id
  ``<file>#<row>_<col>`` (tile indices) and the image in the ``source`` column. A tile takes its image's
  label and split, so tiles of one image never land in two splits. Georeferenced images give each tile its
  own footprint.

``unlabelled`` ingests an unlabelled pool instead of a class-folder dataset (e.g. scenes for pretraining):
every image under SRC whose relative path matches ``pattern`` (a glob, default every image), no label
column, splits by a hash of the file's path (60/20/20, deterministic). Usually combined with ``tile``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from earthembed.data.ingest.common import (
    IMAGE_SUFFIXES,
    IngestError,
    crs_string,
    footprint_wgs84,
    read_image,
    resolve_modality,
    store_key,
    unfit_reason,
)
from earthembed.data.ingest.splits import hash_split, stratified_splits
from earthembed.data.store import ChipRecord, ChipStore, StoreWriter
from earthembed.progress import progress as make_progress

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


def _plan_unlabelled(src: Path, pattern: str | None) -> list[tuple[Path, str, str]]:
    """(file, "", split) for every image under ``src`` (recursively, dot-files excluded) whose path relative to
    ``src`` matches ``pattern``; split by a hash of that path. A single image file is a pool of one."""
    if not src.exists():
        raise IngestError(f"{src}: folder not found")
    if src.is_file():
        root, files = src.parent, [src]
    else:
        root = src
        files = sorted(f for f in src.rglob("*") if f.is_file() and not any(p.startswith(".") for p in f.relative_to(src).parts))
    images = [
        f for f in files
        if f.suffix.lower() in IMAGE_SUFFIXES and (pattern is None or fnmatch.fnmatch(f.relative_to(root).as_posix(), pattern))
    ]
    if not images:
        what = f" matching {pattern!r}" if pattern else ""
        raise IngestError(f"{src}: no image ({', '.join(IMAGE_SUFFIXES)}){what} found")
    return [(f, "", hash_split(f.relative_to(root).as_posix())) for f in images]


def resize_image(a: np.ndarray, size: int) -> np.ndarray:
    """[C, H, W] resampled to [C, size, size] in float (pillow: box filter when shrinking, bilinear when
    enlarging), rounded and clipped back to ``a``'s integer dtype."""
    from PIL import Image

    shrink = min(a.shape[1:]) >= size
    method = Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR
    out = np.stack([np.asarray(Image.fromarray(b.astype(np.float32), mode="F").resize((size, size), method)) for b in a])
    if np.issubdtype(a.dtype, np.integer):
        info = np.iinfo(a.dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    return out.astype(a.dtype)


def image_chips(a: np.ndarray, size: int, mode: str) -> Iterator[tuple[str, np.ndarray, tuple[int, int, int, int]]]:
    """Chips of one image [C, H, W]: (chip-id suffix, [C, size, size], source window (top, left, height,
    width)) for ``mode`` ``crop`` (the centre crop), ``resize`` (the whole image) or ``tile`` (every full
    non-overlapping tile, row-major). Yields nothing when the image is smaller than one chip (crop, tile)."""
    h, w = a.shape[1:]
    if mode == "resize":
        yield "", resize_image(a, size), (0, 0, h, w)
        return
    if h < size or w < size:
        return
    if mode == "crop":
        chip, top, left = _centre_crop(a, size)
        yield "", chip, (top, left, size, size)
        return
    if mode != "tile":
        raise ValueError(f"unknown chip mode {mode!r} (crop, resize or tile)")
    for r in range(h // size):
        for c in range(w // size):
            yield f"#{r:03d}_{c:03d}", a[:, r * size : (r + 1) * size, c * size : (c + 1) * size], (r * size, c * size, size, size)


def _chip_geometry(crs: Any, transform: Any, window: tuple[int, int, int, int], size: int) -> Any:
    """EPSG:4326 footprint of a chip cut (and possibly resampled) from ``window`` of a georeferenced image."""
    if crs is None or transform is None:
        return None
    from rasterio.windows import Window
    from rasterio.windows import transform as window_transform

    top, left, h, w = window
    t = window_transform(Window(left, top, w, h), transform)
    if (h, w) != (size, size):
        from affine import Affine

        t = t * Affine.scale(w / size, h / size)
    return footprint_wgs84(crs, t, size, size)


def _centre_crop(a: np.ndarray, size: int) -> tuple[np.ndarray, int, int]:
    top, left = (a.shape[1] - size) // 2, (a.shape[2] - size) // 2
    return a[:, top : top + size, left : left + size], top, left


MAX_INFERRED_CHIP = 2048
"""Without ``--chip-size`` the first image sets the chip size; a larger first image is a scene, not a chip (every
smaller image would then be skipped), so it is refused with the options that cut or resample it."""


def ingest_folder(
    src: str | Path,
    out: str | Path,
    modality: str | None = None,
    bands: list[str] | None = None,
    chip_size: int | None = None,
    overwrite: bool = False,
    batch_size: int = 64,
    resize: bool = False,
    tile: bool = False,
    unlabelled: bool = False,
    pattern: str | None = None,
    *,
    progress: bool = False,
) -> ChipStore:
    """Ingest ``SRC/<class>/<image>`` (or ``SRC/<split>/<class>/<image>``, or with ``unlabelled`` every image
    under SRC matching ``pattern``) into a store at ``out``.

    ``modality`` is a registered product id; ``bands`` the bands each file holds, in file order (default: all
    of the product's bands). ``resize`` / ``tile`` (exclusive, both need ``chip_size``) replace the centre crop.
    Re-running after an interruption resumes; see the module docstring for the rules. ``progress=True``
    reports progress per file on stderr.
    """
    src, out = Path(src), Path(out)
    if resize and tile:
        raise ValueError("--resize and --tile exclude each other: resample whole images or cut them into tiles")
    if (resize or tile) and chip_size is None:
        raise ValueError(f"--{'tile' if tile else 'resize'} needs --chip-size (the size of the chips to make)")
    if pattern is not None and not unlabelled:
        raise ValueError("--glob selects images of an --unlabelled pool; class-folder datasets take every image")
    if unlabelled:
        items, classes, stray = _plan_unlabelled(src, pattern), [], []
        root = src.parent if src.is_file() else src
    else:
        (items, classes, stray), root = _plan(src), src
    mode = "tile" if tile else "resize" if resize else "crop"
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
        if chip_size > MAX_INFERRED_CHIP:
            h, wd = probe[1].shape[1:]
            raise IngestError(
                f"{probe[0]}: {h}x{wd} px, the first image, would set the chip size to {chip_size} px (no "
                f"--chip-size given); give --chip-size (e.g. 256) with --tile to cut large images into chips, or "
                "--resize to resample them; nothing was written"
            )
    if chip_size <= 0:
        raise ValueError(f"chip size must be positive, got {chip_size}")
    key = store_key(mod)
    mod = mod.renamed(key)
    schema = {} if unlabelled else {LABEL: {"kind": "class", "classes": classes}}
    source = {
        "ingester": "folder",
        "path": str(src.resolve()),
        "product": mod.product,
        "bands": mod.band_names,
        **({"chips": mode} if mode != "crop" else {}),
        **({"unlabelled": True, "glob": pattern} if unlabelled else {}),
    }
    with StoreWriter(
        out, [mod], chip_size, schema, source=source, batch_size=batch_size, overwrite=overwrite, inputs=[src]
    ) as w:
        for f in stray:
            w.skip(str(f), "not inside a class folder")
        for f, cls, split in make_progress(items, desc=f"ingest folder {out.name}", unit="file", quiet=not progress):
            rel = f.relative_to(root).as_posix()
            if mode != "tile" and w.is_done(rel):
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
            made = 0
            for suffix, chip, window in image_chips(a, chip_size, mode):
                made += 1
                chip_id = rel + suffix
                if w.is_done(chip_id):
                    continue
                reason = unfit_reason(chip, mod)
                if reason:
                    w.skip(chip_id if suffix else str(f), f"{f}: {reason}")
                    continue
                geom = _chip_geometry(crs, transform, window, chip_size)
                w.add(
                    ChipRecord(
                        chip_id,
                        {key: chip},
                        geometry=geom,
                        crs=crs_string(crs) if geom is not None else None,
                        aoi=src.name,
                        split=split,
                        labels={} if unlabelled else {LABEL: cls},
                        source=str(f),
                    )
                )
            if not made:
                h, wd = a.shape[1:]
                w.skip(str(f), f"{f}: {h}x{wd} px is smaller than the chip size {chip_size}")
    return ChipStore(out)
