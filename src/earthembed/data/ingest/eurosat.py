"""EuroSAT multispectral (Helber et al. 2019) -> chip store.

Layout of the official ``EuroSAT_MS.zip``: ``EuroSAT_MS/<Class>/<Class>_<n>.tif``, 13 bands, uint16, 64x64,
each file in its own UTM zone. The file band order is B01..B08, B09, B10, B11, B12, **B8A** (B8A last); chips
are reordered into the registry's ``s2_l1c`` order by band name.

EuroSAT has no official split. Within each class, chips are ranked by the SHA-256 of their chip id and the
first 60 % go to ``train``, the next 20 % to ``val``, the rest to ``test`` (12/4/4 for 20 chips). The split
depends only on the chip ids, so it is the same on every machine and on a resumed run.

This module also holds small helpers the other ingesters share (:func:`hash_unit`, :func:`hash_split`,
:func:`echo_summary`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import typer

from earthembed.cli_utils import fail_on
from earthembed.data.ingest.common import IngestError, crs_string, footprint_wgs84, read_raster
from earthembed.data.modalities import band_indices, get_modality
from earthembed.data.store import ChipRecord, ChipStore, StoreWriter

EUROSAT_CLASSES: tuple[str, ...] = (
    "AnnualCrop",
    "Forest",
    "HerbaceousVegetation",
    "Highway",
    "Industrial",
    "Pasture",
    "PermanentCrop",
    "Residential",
    "River",
    "SeaLake",
)
#: band order inside the EuroSAT_MS GeoTIFFs (B8A is stored last)
EUROSAT_FILE_BANDS: tuple[str, ...] = (
    "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11", "B12", "B8A",
)
EUROSAT_CHIP_SIZE = 64
SPLIT_FRACTIONS: tuple[float, float, float] = (0.6, 0.2, 0.2)


# --- helpers shared by the ingesters ---------------------------------------------------------------


def hash_unit(key: str) -> float:
    """A number in [0, 1) from the SHA-256 of ``key``: a seed-free, platform-independent shuffle key."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2**64


def hash_split(key: str, fractions: Sequence[float] = SPLIT_FRACTIONS) -> str:
    """``train``/``val``/``test`` for ``key`` by its hash, so an item keeps its split whatever else is ingested."""
    u = hash_unit(key)
    if u < fractions[0]:
        return "train"
    return "val" if u < fractions[0] + fractions[1] else "test"


def stratified_splits(
    ids_by_class: dict[str, Iterable[str]], fractions: Sequence[float] = SPLIT_FRACTIONS
) -> dict[str, str]:
    """Exact per-class proportions: rank each class's ids by hash, cut at the cumulative fractions."""
    out: dict[str, str] = {}
    for ids in ids_by_class.values():
        ranked = sorted(ids, key=lambda i: (hash_unit(i), i))
        n = len(ranked)
        n_train = round(n * fractions[0])
        n_val = round(n * (fractions[0] + fractions[1])) - n_train
        for k, chip_id in enumerate(ranked):
            out[chip_id] = "train" if k < n_train else "val" if k < n_train + n_val else "test"
    return out


def echo_summary(store: ChipStore, dataset: str, max_listed: int = 10) -> None:
    """Print what was ingested and every skipped item with its reason (the first ``max_listed``)."""
    info = store.info()
    typer.echo(f"{dataset}: {info['chips']} chips in {store.path}; splits {info['splits']}")
    for k, m in info["modalities"].items():
        typer.echo(f"  {k}: {m['product']} {m['chip_shape']} present in {m['present']} chips")
    skipped = store.report().get("skipped", [])
    if skipped:
        typer.echo(f"  {len(skipped)} item(s) skipped or incomplete (see {store.path / 'ingest_report.json'}):")
        for s in skipped[:max_listed]:
            typer.echo(f"    {s['item']}: {s['reason']}")
        if len(skipped) > max_listed:
            typer.echo(f"    ... and {len(skipped) - max_listed} more")


# --- EuroSAT -------------------------------------------------------------------------------------------


def find_eurosat_root(src: str | Path) -> Path:
    """The directory holding the class folders: ``src/EuroSAT_MS`` if present, else ``src`` itself."""
    src = Path(src)
    if not src.is_dir():
        raise IngestError(f"{src}: EuroSAT directory not found")
    nested = src / "EuroSAT_MS"
    return nested if nested.is_dir() else src


def list_eurosat(root: Path) -> tuple[dict[str, list[Path]], list[Path]]:
    """``{class: [tif, ...]}`` for the known class folders, plus unknown folders that hold GeoTIFFs."""
    files: dict[str, list[Path]] = {}
    unknown: list[Path] = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        tifs = sorted(
            (f for f in d.iterdir() if f.is_file() and f.suffix.lower() in (".tif", ".tiff")),
            key=lambda f: (len(f.stem), f.stem),  # AnnualCrop_2 before AnnualCrop_10
        )
        if d.name in EUROSAT_CLASSES:
            if tifs:
                files[d.name] = tifs
        elif tifs:
            unknown.append(d)
    if not files:
        raise IngestError(
            f"{root}: no EuroSAT class folders with GeoTIFFs found (expected EuroSAT_MS/<Class>/<Class>_<n>.tif "
            f"with classes {', '.join(EUROSAT_CLASSES)})"
        )
    return files, unknown


def ingest_eurosat(src: str | Path, out: str | Path, overwrite: bool = False, batch_size: int = 64) -> ChipStore:
    """Ingest EuroSAT_MS into a store with ``s2`` (s2_l1c order) and a ``label`` class column.

    Unreadable files and files with the wrong band count or size are recorded as skipped (see
    ``ingest_report.json``) and the ingest goes on; an interrupted run is finished by running it again.
    """
    root = find_eurosat_root(src)
    files, unknown = list_eurosat(root)
    s2 = get_modality("s2_l1c")
    order = band_indices(EUROSAT_FILE_BANDS, s2.band_names, what="EuroSAT file bands")
    splits = stratified_splits({c: [f.stem for f in fs] for c, fs in files.items()})
    schema = {"label": {"kind": "class", "classes": list(EUROSAT_CLASSES)}}
    source = {
        "dataset": "eurosat",
        "path": str(root.resolve()),
        "file_band_order": list(EUROSAT_FILE_BANDS),
        "split": "per class, ranked by sha256(chip_id): 60% train, 20% val, 20% test",
    }
    with StoreWriter(out, [s2], EUROSAT_CHIP_SIZE, schema, source=source, batch_size=batch_size, overwrite=overwrite) as w:
        for d in unknown:
            w.skip(str(d), f"folder is not a EuroSAT class ({', '.join(EUROSAT_CLASSES)})")
        for cls, paths in files.items():
            for path in paths:
                chip_id = path.stem
                if w.is_done(chip_id):
                    continue
                try:
                    r = read_raster(path, expect_bands=len(EUROSAT_FILE_BANDS))
                    if r.data.shape[1:] != (EUROSAT_CHIP_SIZE, EUROSAT_CHIP_SIZE):
                        raise IngestError(
                            f"{path}: is {r.data.shape[1]}x{r.data.shape[2]} px, expected "
                            f"{EUROSAT_CHIP_SIZE}x{EUROSAT_CHIP_SIZE}"
                        )
                    geom = footprint_wgs84(r.crs, r.transform, EUROSAT_CHIP_SIZE, EUROSAT_CHIP_SIZE)
                except IngestError as e:
                    w.skip(str(path), str(e))
                    continue
                w.add(
                    ChipRecord(
                        chip_id,
                        {"s2": r.data[order]},
                        geometry=geom,
                        crs=crs_string(r.crs),
                        split=splits[chip_id],
                        labels={"label": cls},
                        source=str(path),
                    )
                )
    return ChipStore(out)


def command(
    src: Path = typer.Argument(..., help="EuroSAT folder: EuroSAT_MS itself or the folder containing it"),
    out: Path = typer.Option(..., "--out", "-o", help="chip store directory to create (or resume)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing store at --out"),
    batch_size: int = typer.Option(64, "--batch-size", help="chips per committed batch"),
) -> None:
    """Ingest EuroSAT multispectral (13-band L1C, 64x64) with class labels and a stratified 60/20/20 split."""
    with fail_on():
        store = ingest_eurosat(src, out, overwrite=overwrite, batch_size=batch_size)
    echo_summary(store, "eurosat")
