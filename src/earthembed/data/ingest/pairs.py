"""Ingest image / mask pairs (semantic segmentation datasets) into a chip store of tiles with a pixel ``mask`` label.

``earthembed ingest pairs --images DIR --masks DIR --out STORE --chip-size N [--stride S] [--classes YAML]``

* **Pairing.** ``--images`` and ``--masks`` are folders or glob patterns of folders (quote them:
  ``'data/*/images'``; spaces in paths are fine). Files are found recursively; a file's pairing key is the part of
  its folder matched by wildcards plus its path inside that folder without the suffix, so
  ``Tile 1/images/image_part_001.jpg`` (``--images 'SRC/*/images'``) pairs with ``Tile 1/masks/image_part_001.png``
  (``--masks 'SRC/*/masks'``). Unpaired files are skipped and listed in ``ingest_report.json``.
* **Masks** are class ids, or RGB colours mapped to classes by a YAML file (``--classes``)::

      classes:                 # store class ids 0..K-1, in this order
        building: [60, 16, 152]  # an RGB colour ([r, g, b] or "#3c1098") ...
        road: 3                  # ... or a class id in the mask (not both kinds in one file)
      ignore:                  # optional: mask values that mean "unlabelled" (list, or name: value)
        unlabeled: [155, 155, 155]

  Palette PNGs are converted to RGB before colours are read (or read as ids when the mapping uses ids).
  Without ``--classes`` masks hold ids, named ``class_<id>``; ``--ignore`` lists unlabelled ids. Every mask is
  scanned first: a colour or id the mapping does not know stops the ingest before anything is written, naming
  the file, the values and their pixel counts. JPEG masks are refused (lossy: colours and ids are not exact).
* **Tiles.** Each image is tiled into ``chip_size`` chips every ``stride`` px (default: no overlap); the last
  row and column are shifted to end at the image edge, so every pixel is covered (edge tiles overlap their
  neighbour). Images smaller than a chip are skipped with the reason.
* **Labels.** ``mask`` (int16, -1 = unlabelled), ``frac_<class>`` (fraction of the chip's labelled pixels) and
  ``classes_present`` (multi-label: classes covering more than ``present_min_fraction``). A tile without any
  labelled pixel keeps its imagery with no mask (usable for pretraining).
* **Splits by source image** (``split_by="image"``): 60/20/20 of the images, ranked by a hash of their key, so
  tiles of one image never straddle train and test; ``split_by="folder"`` groups images by their folder (e.g. a
  tile of a larger scene split into parts), for less spatial leakage between neighbouring images.
"""

from __future__ import annotations

import dataclasses
import glob
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from earthembed.data.ingest.common import (
    IMAGE_SUFFIXES,
    TIFF_SUFFIXES,
    IngestError,
    crs_string,
    read_image,
    read_raster,
    resolve_modality,
    store_key,
    unfit_reason,
    window_footprint,
)
from earthembed.data.ingest.splits import stratified_splits
from earthembed.data.store import ChipRecord, ChipStore, StoreWriter
from earthembed.progress import progress as make_progress

MASK_LABEL = "mask"
PRESENT_LABEL = "classes_present"
MASK_SUFFIXES = (".png", ".tif", ".tiff", ".bmp", ".gif")
SPLIT_BY = ("image", "folder")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


@dataclasses.dataclass
class ClassMap:
    """Mask value -> store class id. ``colour``: values are RGB triples packed as ``r << 16 | g << 8 | b``."""

    classes: list[str]
    values: list[int]  # mask value of each class, aligned with ``classes``
    ignore: list[int]
    colour: bool
    source: str

    def to_dict(self) -> dict[str, Any]:
        def show(v: int) -> Any:
            return [(v >> 16) & 255, (v >> 8) & 255, v & 255] if self.colour else v

        return {"classes": {c: show(v) for c, v in zip(self.classes, self.values, strict=True)},
                "ignore": [show(v) for v in self.ignore], "colour": self.colour}

    def describe(self, v: int) -> str:
        return f"({(v >> 16) & 255}, {(v >> 8) & 255}, {v & 255})" if self.colour else str(v)

    def lookup(self, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(class index map int16 with -1 for ignored values, mask of values the mapping does not know)."""
        known = np.asarray(self.values + self.ignore, dtype=np.int64)
        target = np.asarray(list(range(len(self.values))) + [-1] * len(self.ignore), dtype=np.int16)
        order = np.argsort(known)
        known, target = known[order], target[order]
        pos = np.clip(np.searchsorted(known, m), 0, len(known) - 1)
        hit = known[pos] == m
        return np.where(hit, target[pos], -1).astype(np.int16), ~hit


def _value(v: Any, where: str) -> tuple[int, bool]:
    """(packed value, is a colour) of a YAML value: an int id, [r, g, b] or "#rrggbb"."""
    if isinstance(v, bool):
        raise ValueError(f"{where}: {v!r} is not a class id or an RGB colour")
    if isinstance(v, int):
        if v < 0:
            raise ValueError(f"{where}: class id {v} must be >= 0")
        return v, False
    if isinstance(v, str) and re.fullmatch(r"#[0-9a-fA-F]{6}", v.strip()):
        return int(v.strip()[1:], 16), True
    if isinstance(v, (list, tuple)) and len(v) == 3 and all(isinstance(c, int) and 0 <= c <= 255 for c in v):
        return (v[0] << 16) | (v[1] << 8) | v[2], True
    raise ValueError(f"{where}: {v!r} is neither a class id (integer) nor an RGB colour ([r, g, b] or '#rrggbb')")


def load_class_map(spec: str | Path | Mapping[str, Any]) -> ClassMap:
    """A :class:`ClassMap` from a YAML file (or the same structure as a dict); errors name the file."""
    if isinstance(spec, Mapping):
        doc, where = dict(spec), "<classes dict>"
    else:
        path = Path(spec)
        where = str(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: class mapping not found")
        try:
            doc = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not valid YAML ({e})") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("classes"), dict) or not doc["classes"]:
        raise ValueError(f"{where}: expected a mapping with 'classes: {{name: value, ...}}' (and optionally 'ignore:')")
    unknown = sorted(set(doc) - {"classes", "ignore"})
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown} (known: classes, ignore)")
    classes, values, kinds = [], [], set()
    for name, v in doc["classes"].items():
        name = str(name)
        if not _NAME.match(name):
            raise ValueError(f"{where}: class name {name!r} must be letters, digits, '_' or '-' (it names the "
                             f"column frac_{name})")
        packed, colour = _value(v, f"{where}: class {name!r}")
        classes.append(name)
        values.append(packed)
        kinds.add(colour)
    raw_ignore = doc.get("ignore") or []
    if isinstance(raw_ignore, Mapping):
        raw_ignore = list(raw_ignore.values())
    elif not isinstance(raw_ignore, list) or (len(raw_ignore) == 3 and all(isinstance(c, int) for c in raw_ignore)
                                              and kinds == {True}):
        raw_ignore = [raw_ignore]
    ignore = []
    for v in raw_ignore:
        packed, colour = _value(v, f"{where}: ignore value")
        ignore.append(packed)
        kinds.add(colour)
    if len(kinds) != 1:
        raise ValueError(f"{where}: mixes class ids and RGB colours; use one kind for all classes and ignore values")
    dup = sorted({v for v in values + ignore if (values + ignore).count(v) > 1})
    if dup:
        raise ValueError(f"{where}: mask values used twice: {dup}")
    return ClassMap(classes, values, ignore, kinds.pop(), where)


def _pattern_roots(pattern: str | Path, what: str) -> list[tuple[Path, tuple[str, ...]]]:
    """(folder, the parts of it matched by wildcards) for a folder or a glob pattern of folders."""
    p = Path(pattern)
    if p.is_dir():
        return [(p, ())]
    text = str(pattern)
    if not glob.has_magic(text):
        raise IngestError(f"{pattern}: {what} folder not found")
    if "**" in text:
        raise ValueError(f"{what} pattern {text!r}: '**' is not supported; folders are searched recursively anyway")
    parts = Path(text).parts
    roots = []
    for hit in sorted(glob.glob(text)):
        h = Path(hit)
        if h.is_dir():
            roots.append((h, tuple(x for x, q in zip(h.parts[-len(parts):], parts, strict=True) if glob.has_magic(q))))
    if not roots:
        raise IngestError(f"{pattern}: no {what} folder matches this pattern")
    return roots


def list_files(pattern: str | Path, suffixes: Sequence[str], what: str) -> tuple[dict[str, Path], list[Path]]:
    """(pairing key -> file, files with other suffixes) under a folder or glob pattern (module docstring)."""
    found: dict[str, Path] = {}
    other: list[Path] = []
    for root, wild in _pattern_roots(pattern, what):
        for f in sorted(root.rglob("*")):
            if not f.is_file() or any(x.startswith(".") for x in f.relative_to(root).parts):
                continue
            if f.suffix.lower() not in suffixes:
                other.append(f)
                continue
            key = "/".join([*wild, *f.relative_to(root).with_suffix("").parts])
            if key in found:
                raise IngestError(f"{f} and {found[key]}: two {what} files with the pairing key {key!r}")
            found[key] = f
    return found, other


def read_mask_values(path: Path, colour: bool) -> np.ndarray:
    """[H, W] int64 mask values: packed RGB colours (``colour``) or class ids; errors name the file."""
    if path.suffix.lower() in TIFF_SUFFIXES:
        a = read_raster(path).data
    else:
        from PIL import Image

        try:
            with Image.open(path) as im:
                im.load()
                if colour and im.mode != "RGB":
                    im = im.convert("RGB")  # palette / grey / RGBA: read the colours shown
                a = np.asarray(im)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise IngestError(f"{path}: cannot read mask (corrupt or truncated?): {e}") from e
        a = a[None] if a.ndim == 2 else np.moveaxis(a, -1, 0)
    a = a.astype(np.int64)
    if colour:
        if a.shape[0] == 1:
            a = np.repeat(a, 3, axis=0)
        if a.shape[0] < 3:
            raise IngestError(f"{path}: mask has {a.shape[0]} bands; an RGB colour mapping needs 3")
        return (a[0] << 16) | (a[1] << 8) | a[2]
    if a.shape[0] != 1:
        raise IngestError(f"{path}: mask has {a.shape[0]} bands but the classes are ids; map its colours with a "
                          "--classes YAML ([r, g, b] values) or give a single-band id mask")
    return a[0]


def _scan_masks(masks: Mapping[str, Path], cmap: ClassMap | None, ignore: Sequence[int]) -> ClassMap:
    """Read every mask once: check every value is mapped (or build the id classes when none are given)."""
    colour = cmap.colour if cmap else False
    seen: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for key, path in masks.items():
        vals, counts = np.unique(read_mask_values(path, colour), return_counts=True)
        seen[key] = (vals, counts)
    if cmap is None:
        ids = sorted({int(v) for vals, _ in seen.values() for v in vals} - set(ignore))
        if not ids:
            raise IngestError("every mask value is an --ignore value: no class to learn")
        cmap = ClassMap([f"class_{i}" for i in ids], ids, [int(i) for i in ignore], False, "mask ids")
    known = set(cmap.values) | set(cmap.ignore)
    bad = []
    for key, (vals, counts) in seen.items():
        miss = [(int(v), int(c)) for v, c in zip(vals, counts, strict=True) if int(v) not in known]
        if miss:
            shown = ", ".join(f"{cmap.describe(v)} x {c} px" for v, c in miss[:5])
            bad.append(f"{masks[key]}: {shown}{' ...' if len(miss) > 5 else ''}")
    if bad:
        listed = "; ".join(bad[:5]) + (f"; and {len(bad) - 5} more files" if len(bad) > 5 else "")
        raise IngestError(
            f"mask values not in the class mapping ({cmap.source}: classes {dict(zip(cmap.classes, map(cmap.describe, cmap.values), strict=True))}, "
            f"ignore {[cmap.describe(v) for v in cmap.ignore]}): {listed}; add them to 'classes' or 'ignore'"
        )
    return cmap


def tile_starts(size: int, chip: int, stride: int) -> list[int]:
    """Tile origins along one axis: every ``stride`` px, plus one ending at the edge if the last stops short."""
    starts = list(range(0, size - chip + 1, stride))
    if starts and starts[-1] + chip < size:
        starts.append(size - chip)
    return starts


def ingest_pairs(
    images: str | Path,
    masks: str | Path,
    out: str | Path,
    chip_size: int,
    stride: int | None = None,
    classes: str | Path | Mapping[str, Any] | None = None,
    ignore: Sequence[int] = (),
    modality: str | None = None,
    bands: Sequence[str] | None = None,
    split_by: str = "image",
    present_min_fraction: float = 0.0,
    overwrite: bool = False,
    batch_size: int = 64,
    *,
    progress: bool = False,
) -> ChipStore:
    """Tile image / mask pairs into a store at ``out`` (see the module docstring); re-running resumes.
    ``progress=True`` reports progress per image on stderr."""
    if chip_size < 1 or (stride is not None and stride < 1):
        raise ValueError(f"chip size and stride must be positive, got {chip_size} and {stride}")
    if split_by not in SPLIT_BY:
        raise ValueError(f"split_by must be one of {SPLIT_BY}, got {split_by!r}")
    if classes is not None and ignore:
        raise ValueError("give ignore values in the --classes YAML ('ignore:'), not with --ignore")
    stride = stride or chip_size
    image_files, stray = list_files(images, IMAGE_SUFFIXES, "image")
    mask_files, stray_masks = list_files(masks, MASK_SUFFIXES + (".jpg", ".jpeg"), "mask")
    if not image_files:
        raise IngestError(f"{images}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    lossy = {k: f for k, f in mask_files.items() if f.suffix.lower() in (".jpg", ".jpeg")}
    mask_files = {k: f for k, f in mask_files.items() if k not in lossy}
    pairs = {k: (f, mask_files[k]) for k, f in image_files.items() if k in mask_files}
    if not pairs:
        raise IngestError(f"no image in {images} has a mask with the same name in {masks} "
                          f"(e.g. image key {next(iter(image_files))!r}; mask keys {list(mask_files)[:3]})")
    cmap = _scan_masks({k: m for k, (_, m) in pairs.items()}, load_class_map(classes) if classes is not None else None,
                       [int(i) for i in ignore])
    first = next(iter(pairs.values()))[0]
    mod = resolve_modality(modality, list(bands) if bands else None, first, read_image(first)[0].shape[0])
    key_mod = store_key(mod)
    mod = mod.renamed(key_mod)
    groups = {k: (k.rsplit("/", 1)[0] if "/" in k else "") if split_by == "folder" else k for k in pairs}
    group_split = stratified_splits({"all": sorted(set(groups.values()))})
    schema: dict[str, dict[str, Any]] = {
        MASK_LABEL: {"kind": "mask", "classes": cmap.classes, "dtype": "int16", "nodata": -1},
        **{f"frac_{c}": {"kind": "fraction", "of": c} for c in cmap.classes},
        PRESENT_LABEL: {"kind": "multilabel", "classes": cmap.classes,
                        "description": f"classes covering more than {present_min_fraction:.0%} of the labelled pixels"},
    }
    source = {
        "ingester": "pairs", "images": str(Path(images).resolve()), "masks": str(Path(masks).resolve()),
        "class_map": cmap.to_dict(), "stride": stride, "split_by": split_by, "product": mod.product,
        "bands": mod.band_names, "present_min_fraction": present_min_fraction,
    }
    inputs = [images, masks, *([classes] if isinstance(classes, (str, Path)) else [])]
    with StoreWriter(out, [mod], chip_size, schema, source=source, batch_size=batch_size, overwrite=overwrite,
                     inputs=inputs) as w:
        for f in stray + stray_masks:
            w.skip(str(f), f"{f}: not an image or mask file")
        for f in lossy.values():
            w.skip(str(f), f"{f}: JPEG mask refused (lossy compression changes colours and ids); use PNG or TIFF")
        for k, f in image_files.items():
            if k not in pairs:
                w.skip(str(f), f"{f}: no mask with pairing key {k!r} under {masks}")
        for k, f in mask_files.items():
            if k not in image_files:
                w.skip(str(f), f"{f}: no image with pairing key {k!r} under {images}")
        for k, (img_path, mask_path) in make_progress(pairs.items(), desc=f"ingest pairs {Path(out).name}",
                                                      unit="image", quiet=not progress):
            _add_pair(w, k, img_path, mask_path, mod, key_mod, cmap, chip_size, stride, group_split[groups[k]],
                      groups[k] or k, present_min_fraction)
    return ChipStore(out)


def _add_pair(w: StoreWriter, key: str, img_path: Path, mask_path: Path, mod: Any, key_mod: str, cmap: ClassMap,
              cs: int, stride: int, split: str, aoi: str, present_min: float) -> None:
    """Tiles of one image / mask pair (skipped with a reason when unreadable, mismatched or too small)."""
    try:
        a, crs, transform = read_image(img_path)
        m = read_mask_values(mask_path, cmap.colour)
    except IngestError as e:
        w.skip(str(img_path), str(e))
        return
    if a.shape[0] != mod.num_bands:
        w.skip(str(img_path), f"{img_path}: has {a.shape[0]} bands, expected {mod.num_bands} ({mod.product}: "
                              f"{','.join(mod.band_names)}); declare the file's bands with --modality/--bands")
        return
    if a.shape[1:] != m.shape:
        w.skip(str(img_path), f"{img_path} is {a.shape[2]}x{a.shape[1]} px but its mask {mask_path} is "
                              f"{m.shape[1]}x{m.shape[0]} px")
        return
    h, wd = m.shape
    if h < cs or wd < cs:
        w.skip(str(img_path), f"{img_path}: {wd}x{h} px is smaller than the chip size {cs}")
        return
    reason = unfit_reason(a, mod)
    if reason:
        w.skip(str(img_path), f"{img_path}: {reason}")
        return
    idx, unknown = cmap.lookup(m)
    if unknown.any():  # the scan saw this file; it changed since
        w.skip(str(img_path), f"{mask_path}: values not in the class mapping (the file changed during the ingest)")
        return
    k = len(cmap.classes)
    for i, y in enumerate(tile_starts(h, cs, stride)):
        for j, x in enumerate(tile_starts(wd, cs, stride)):
            chip_id = f"{key}_{i}_{j}"
            if w.is_done(chip_id):
                continue
            mk = idx[y : y + cs, x : x + cs]
            valid = mk >= 0
            n_valid = int(valid.sum())
            if n_valid:
                frac = np.bincount(mk[valid], minlength=k) / n_valid
                labels: dict[str, Any] = {f"frac_{c}": float(v) for c, v in zip(cmap.classes, frac, strict=True)}
                labels[PRESENT_LABEL] = [c for c, v in zip(cmap.classes, frac, strict=True) if v > present_min]
            else:
                labels = {f"frac_{c}": None for c in cmap.classes} | {PRESENT_LABEL: None}
            geom = window_footprint(crs, transform, y, x, cs)
            w.add(ChipRecord(
                chip_id, {key_mod: a[:, y : y + cs, x : x + cs]}, geometry=geom,
                crs=crs_string(crs) if geom is not None else None, aoi=aoi, split=split, labels=labels,
                masks={MASK_LABEL: mk.astype(np.int16)} if n_valid else {},
                source=f"{img_path}[{y}:{y + cs},{x}:{x + cs}]",
            ))
