"""Sen1Floods11 hand-labelled scenes (Bonafilia et al. 2020) -> chip store of S1 + S2 chips with water masks.

Layout (v1.1 ``data/flood_events/HandLabeled``)::

    SRC/S1Hand/<scene>_S1Hand.tif        2 bands VV, VH, float32 dB, NaN nodata
    SRC/S2Hand/<scene>_S2Hand.tif        13 bands B1..B8, B8A, B9..B12, int16 DN, nodata 0 (L1C)
    SRC/LabelHand/<scene>_LabelHand.tif  int16: -1 no data, 0 not water, 1 water

Each 512x512 scene is tiled into non-overlapping ``chip_size`` chips (incomplete edge tiles are dropped);
chip ids are ``<scene>_<row>_<col>`` in tile units. The water label becomes the mask ``water_mask`` and the
column ``water_fraction`` = water pixels / valid label pixels; a chip without any valid label pixel keeps
its imagery but has no mask and a null fraction.

Splits (``split_by="scene"``, the default) are per scene, so chips of one scene never straddle train and test: from the official
``flood_{train,valid,test}_data.csv`` when found under a ``splits`` folder in SRC or up to three levels
above it (the v1.1 tree keeps them in ``v1.1/splits/flood_handlabeled``), otherwise by the SHA-256 of the
scene id (60/20/20). With split files, scenes they do not list (the held-out Bolivia event is in
``flood_bolivia_data.csv``) are kept with no split, usable for pretraining but not mixed into evaluation.
``split_by="block"`` instead splits every scene into spatial blocks of tiles (the rule of ``ingest rasters``:
:func:`~earthembed.data.ingest.splits.block_splits`), for segmentation on a single scene such as the sample in
``../shared/data``; split files are then not used.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from earthembed.data.ingest.common import (
    IngestError,
    Raster,
    crs_string,
    footprint_wgs84,
    open_raster,
    read_raster,
)
from earthembed.data.ingest.splits import block_size_for, block_splits, hash_split
from earthembed.data.modalities import band_indices, get_modality
from earthembed.data.store import ChipRecord, ChipStore, StoreWriter
from earthembed.progress import progress as make_progress

LAYERS = {"s1": "S1Hand", "s2": "S2Hand", "label": "LabelHand"}
#: band order of the S2Hand files, in the registry's names (the files say B1, B2, ...)
S2_FILE_BANDS: tuple[str, ...] = (
    "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12",
)
S1_FILE_BANDS: tuple[str, ...] = ("VV", "VH")
WATER_CLASSES = ["not_water", "water"]
LABEL_NODATA = -1


class LayoutError(IngestError):
    """Layers of a scene disagree in grid or band names: the input is not what this reader understands."""


SPLIT_BY = ("scene", "block")
# blocks of <= 4x4 tiles as in ingest rasters, but >= 40 per scene: one scene must give a test set of several
# blocks (with 10, a 512 px scene in 32 px chips put one 128 px block = 16 chips in test)
SPLIT_BLOCK, MIN_SPLIT_BLOCKS = 4, 40
SPLIT_FILES = {"train": "flood_train_data.csv", "val": "flood_valid_data.csv", "test": "flood_test_data.csv"}


def s2_band_name(description: str) -> str:
    """Registry name of a Sen1Floods11 band description: ``B1`` -> ``B01``, ``B8A`` stays ``B8A``."""
    d = description.strip().upper()
    return f"B{int(d[1:]):02d}" if d.startswith("B") and d[1:].isdigit() else d


def check_band_names(r: Raster, expected: tuple[str, ...], rename: Any = str) -> list[int]:
    """Indices that put ``r``'s bands into ``expected`` order, checked against its band descriptions.

    Files without descriptions are taken to be in the documented order; files with descriptions that are
    not exactly the documented bands raise, naming the file (a different product or a re-export).
    """
    if r.data.shape[0] != len(expected):
        raise IngestError(f"{r.path}: has {r.data.shape[0]} bands, expected {len(expected)} ({', '.join(expected)})")
    if not any(r.descriptions):
        return list(range(len(expected)))
    names = [rename(d) if d else "" for d in r.descriptions]
    if sorted(names) != sorted(expected):
        raise LayoutError(
            f"{r.path}: band descriptions {list(r.descriptions)} do not match the expected bands {list(expected)}"
        )
    return band_indices(names, expected, what=str(r.path))


def find_split_files(src: Path) -> dict[str, Path]:
    """The official split CSVs under ``splits/`` in ``src`` or up to three folders above (first found wins)."""
    for base in [src, *list(src.resolve().parents)[:3]]:
        d = base / "splits"
        if not d.is_dir():
            continue
        for split, name in SPLIT_FILES.items():
            hits = sorted(d.rglob(name), key=lambda p: ("handlabeled" not in str(p).lower(), str(p)))
            if hits:
                found = {split: hits[0]}
                for other, oname in SPLIT_FILES.items():
                    h = sorted(hits[0].parent.glob(oname))
                    if h:
                        found[other] = h[0]
                return found
    return {}


def read_scene_splits(files: dict[str, Path]) -> dict[str, str]:
    """``{scene: split}`` from the split CSVs (rows like ``Ghana_103272_S1Hand.tif,Ghana_103272_LabelHand.tif``)."""
    out: dict[str, str] = {}
    for split, path in files.items():
        try:
            with open(path, newline="") as f:
                for row in csv.reader(f):
                    if row and row[0].strip():
                        scene = Path(row[0].strip()).stem
                        for layer in LAYERS.values():
                            scene = scene.removesuffix(f"_{layer}")
                        out[scene] = split
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            raise IngestError(f"{path}: cannot read split file: {e}") from e
    return out


def list_scenes(src: Path) -> dict[str, dict[str, Path]]:
    """``{scene: {"s1"|"s2"|"label": path}}`` from the three layer folders."""
    if not src.is_dir():
        raise IngestError(f"{src}: Sen1Floods11 directory not found")
    scenes: dict[str, dict[str, Path]] = {}
    for key, layer in LAYERS.items():
        d = src / layer
        if not d.is_dir():
            continue
        for f in sorted(d.glob(f"*_{layer}.tif")):
            scenes.setdefault(f.name.removesuffix(f"_{layer}.tif"), {})[key] = f
    if not scenes:
        raise IngestError(
            f"{src}: no Sen1Floods11 scenes found (expected S1Hand/<id>_S1Hand.tif, S2Hand/<id>_S2Hand.tif, "
            "LabelHand/<id>_LabelHand.tif)"
        )
    return dict(sorted(scenes.items()))


def check_grid(rasters: dict[str, Raster]) -> None:
    """All layers of a scene must share shape, CRS and transform; else name the files that differ."""
    ref_key, ref = next(iter(rasters.items()))
    for k, r in rasters.items():
        diffs = []
        if r.data.shape[1:] != ref.data.shape[1:]:
            diffs.append(f"shape {r.data.shape[1:]} vs {ref.data.shape[1:]}")
        if r.crs != ref.crs:
            diffs.append(f"CRS {crs_string(r.crs)} vs {crs_string(ref.crs)}")
        if r.transform is not None and ref.transform is not None and not r.transform.almost_equals(ref.transform):
            diffs.append(f"transform {tuple(r.transform)[:6]} vs {tuple(ref.transform)[:6]}")
        if diffs:
            raise LayoutError(f"{r.path} and {ref.path}: {k} and {ref_key} are not on the same grid ({'; '.join(diffs)})")


def _read_scene(paths: dict[str, Path]) -> dict[str, Raster]:
    """Read and check the layers of one scene: band names, dtypes, label values, common grid."""
    rasters: dict[str, Raster] = {}
    if "s2" in paths:
        r = read_raster(paths["s2"])
        r.data = r.data[check_band_names(r, S2_FILE_BANDS, s2_band_name)]
        if r.data.min() < 0:
            raise IngestError(f"{r.path}: has negative S2 values (min {r.data.min()}); expected DN >= 0")
        rasters["s2"] = r
    if "s1" in paths:
        r = read_raster(paths["s1"], masked_nan=True)
        r.data = r.data[check_band_names(r, S1_FILE_BANDS, lambda d: d.strip().upper())].astype(np.float32)
        rasters["s1"] = r
    r = read_raster(paths["label"], expect_bands=1)
    bad = np.setdiff1d(np.unique(r.data), [LABEL_NODATA, 0, 1])
    if bad.size:
        raise IngestError(f"{r.path}: label values {bad.tolist()[:10]} are not -1 (no data), 0 or 1")
    rasters["label"] = r
    check_grid(rasters)
    return rasters


def ingest_sen1floods11(
    src: str | Path,
    out: str | Path,
    chip_size: int = 64,
    overwrite: bool = False,
    batch_size: int = 64,
    split_by: str = "scene",
    *,
    progress: bool = False,
) -> ChipStore:
    """Ingest Sen1Floods11 hand-labelled scenes as ``chip_size`` chips with ``s1``, ``s2`` and water labels.

    Band descriptions that contradict the documented order and layers on different grids raise
    :class:`IngestError` naming the files (the input is not what this reader understands). A scene without
    its label, or with an unreadable file, is skipped with the reason; a scene missing only S1 or S2 is kept
    without that modality and the gap is listed in ``ingest_report.json``. ``progress=True`` reports progress
    per scene on stderr.
    """
    src = Path(src)
    if chip_size < 1:
        raise ValueError(f"chip_size must be positive, got {chip_size}")
    if split_by not in SPLIT_BY:
        raise ValueError(f"split_by must be one of {SPLIT_BY}, got {split_by!r}")
    scenes = list_scenes(src)
    split_files = find_split_files(src) if split_by == "scene" else {}
    scene_split = read_scene_splits(split_files) if split_files else {}
    s2m, s1m = get_modality("s2_l1c"), get_modality("s1_grd_db")
    schema: dict[str, dict[str, Any]] = {
        "water_mask": {"kind": "mask", "classes": WATER_CLASSES, "nodata": LABEL_NODATA, "dtype": "int16"},
        "water_fraction": {"kind": "fraction", "of": "water"},
    }
    source = {
        "dataset": "sen1floods11-handlabeled",
        "path": str(src.resolve()),
        "split": (
            f"per scene from {', '.join(str(p.resolve()) for p in split_files.values())}"
            if split_files
            else "per scene by sha256(scene id): 60% train, 20% val, 20% test"
            if split_by == "scene"
            else f"spatial blocks of <= {SPLIT_BLOCK}x{SPLIT_BLOCK} tiles within each scene by sha256 (60/20/20)"
        ),
    }
    with StoreWriter(
        out, [s2m, s1m], chip_size, schema, source=source, batch_size=batch_size, overwrite=overwrite, inputs=[src]
    ) as w:
        for scene, paths in make_progress(scenes.items(), desc=f"ingest sen1floods11 {Path(out).name}", unit="scene",
                                          quiet=not progress):
            if "label" not in paths:
                w.skip(scene, f"{src / LAYERS['label']}: no {scene}_LabelHand.tif for this scene")
                continue
            if not ({"s1", "s2"} & set(paths)):
                w.skip(scene, f"{paths['label']}: scene has neither S1Hand nor S2Hand imagery")
                continue
            try:
                h, wd = _scene_shape(paths["label"])
                tiles = [(i, j) for i in range(h // chip_size) for j in range(wd // chip_size)]
                if not tiles:
                    raise IngestError(f"{paths['label']}: {h}x{wd} px is smaller than one {chip_size}x{chip_size} chip")
                if all(w.is_done(f"{scene}_{i}_{j}") for i, j in tiles):
                    continue
                rasters = _read_scene(paths)
            except LayoutError:
                raise
            except IngestError as e:
                w.skip(scene, str(e))
                continue
            for key in ("s1", "s2"):
                if key not in paths:
                    w.skip(f"{scene} {LAYERS[key]}", f"no {scene}_{LAYERS[key]}.tif; chips kept without {key}")
            if split_by == "block":
                b = block_size_for(tiles, SPLIT_BLOCK, MIN_SPLIT_BLOCKS)
                blocks = block_splits(scene, {(i // b, j // b) for i, j in tiles})
                splits = {(i, j): blocks[(i // b, j // b)] for i, j in tiles}
            else:
                # with official split files, unlisted scenes (e.g. the held-out Bolivia event) stay unassigned
                split = scene_split.get(scene, "") if scene_split else hash_split(scene)
                splits = dict.fromkeys(tiles, split)
            _add_chips(w, scene, rasters, tiles, chip_size, splits)
    return ChipStore(out)


def _scene_shape(path: Path) -> tuple[int, int]:
    """Height and width from the header only, so a finished scene is not read again on resume."""
    with open_raster(path) as f:
        return f.height, f.width


def _add_chips(
    w: StoreWriter, scene: str, rasters: dict[str, Raster], tiles: list[tuple[int, int]], cs: int,
    splits: dict[tuple[int, int], str],
) -> None:
    from affine import Affine

    label = rasters["label"]
    for i, j in tiles:
        chip_id = f"{scene}_{i}_{j}"
        if w.is_done(chip_id):
            continue
        ys, xs = slice(i * cs, (i + 1) * cs), slice(j * cs, (j + 1) * cs)
        mask = label.data[0, ys, xs].astype(np.int16)
        valid = mask != LABEL_NODATA
        n_valid = int(valid.sum())
        tr = label.transform @ Affine.translation(j * cs, i * cs) if label.transform is not None else None
        w.add(
            ChipRecord(
                chip_id,
                {k: r.data[:, ys, xs] for k, r in rasters.items() if k != "label"},
                geometry=footprint_wgs84(label.crs, tr, cs, cs),
                crs=crs_string(label.crs),
                aoi=scene,
                split=splits[(i, j)],
                labels={"water_fraction": float((mask == 1).sum() / n_valid) if n_valid else None},
                masks={"water_mask": mask} if n_valid else {},
                source=str(label.path),
            )
        )
