"""EuroSAT multispectral (Helber et al. 2019) -> chip store.

Layout of the official ``EuroSAT_MS.zip``: ``EuroSAT_MS/<Class>/<Class>_<n>.tif``, 13 bands, uint16, 64x64,
each file in its own UTM zone. The file band order is B01..B08, B09, B10, B11, B12, **B8A** (B8A last); chips
are reordered into the registry's ``s2_l1c`` order by band name.

EuroSAT has no official split. Within each class, chips are ranked by the SHA-256 of their chip id and the
first 60 % go to ``train``, the next 20 % to ``val``, the rest to ``test`` (12/4/4 for 20 chips). The split
depends only on the chip ids, so it is the same on every machine and on a resumed run.

"""

from __future__ import annotations

from pathlib import Path

from earthembed.data.ingest.common import IngestError, crs_string, footprint_wgs84, read_raster
from earthembed.data.ingest.splits import stratified_splits
from earthembed.data.modalities import band_indices, get_modality
from earthembed.data.store import ChipRecord, ChipStore, StoreWriter
from earthembed.progress import progress as make_progress

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


def ingest_eurosat(
    src: str | Path, out: str | Path, overwrite: bool = False, batch_size: int = 64, *, progress: bool = False
) -> ChipStore:
    """Ingest EuroSAT_MS into a store with ``s2`` (s2_l1c order) and a ``label`` class column.

    Unreadable files and files with the wrong band count or size are recorded as skipped (see
    ``ingest_report.json``) and the ingest goes on; an interrupted run is finished by running it again.
    ``progress=True`` reports progress per file on stderr.
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
    with StoreWriter(
        out, [s2], EUROSAT_CHIP_SIZE, schema, source=source, batch_size=batch_size, overwrite=overwrite,
        inputs=[src, root],
    ) as w, make_progress(total=sum(map(len, files.values())), desc=f"ingest eurosat {Path(out).name}", unit="file",
                          quiet=not progress) as bar:
        for d in unknown:
            w.skip(str(d), f"folder is not a EuroSAT class ({', '.join(EUROSAT_CLASSES)})")
        for cls, paths in files.items():
            for path in paths:
                bar.update()
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
