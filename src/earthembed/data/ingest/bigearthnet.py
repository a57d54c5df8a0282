"""BigEarthNet v2.0 (reBEN, Clasen et al. 2025) -> chip store with ``s2`` (L2A, 12 bands) and ``s1`` (VV, VH).

Layout::

    SRC/metadata.parquet                               patch_id, labels, split, country, s1_name, flags
    SRC/metadata_for_patches_with_snow_cloud_or_shadow.parquet   (optional, read when present)
    SRC/BigEarthNet-S2/<S2 product>/<patch_id>/<patch_id>_<band>.tif
    SRC/BigEarthNet-S1/<S1 product>/<s1_name>/<s1_name>_{VV,VH}.tif

S2 bands are stored at native size (120/60/20 px for 10/20/60 m). Every band is read onto the 120x120 10 m
grid with GDAL's bilinear resampling on read (the approach of TorchGeo's BigEarthNet), which keeps pixel
centres aligned; 10 m bands are read unchanged. The GeoTIFFs carry no CRS or geotransform, so chips have no
geometry. Acquisition dates come from the product names (``..._MSIL2A_20170613T101031_...``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from earthembed.data.ingest.common import IngestError, open_raster
from earthembed.data.modalities import get_modality
from earthembed.data.store import ChipRecord, ChipStore, StoreWriter
from earthembed.progress import progress as make_progress

#: the 19-class nomenclature of BigEarthNet, in the official order
BEN19_CLASSES: tuple[str, ...] = (
    "Urban fabric",
    "Industrial or commercial units",
    "Arable land",
    "Permanent crops",
    "Pastures",
    "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation",
    "Agro-forestry areas",
    "Broad-leaved forest",
    "Coniferous forest",
    "Mixed forest",
    "Natural grassland and sparsely vegetated areas",
    "Moors, heathland and sclerophyllous vegetation",
    "Transitional woodland, shrub",
    "Beaches, dunes, sands",
    "Inland wetlands",
    "Coastal wetlands",
    "Inland waters",
    "Marine waters",
)
#: the ten countries of BigEarthNet v2.0
BEN_COUNTRIES: tuple[str, ...] = (
    "Austria", "Belgium", "Finland", "Ireland", "Kosovo", "Lithuania", "Luxembourg", "Portugal", "Serbia",
    "Switzerland",
)
CHIP_SIZE = 120
PATCH_SIZE_M = 1200
METADATA = "metadata.parquet"
SNOW_CLOUD_METADATA = "metadata_for_patches_with_snow_cloud_or_shadow.parquet"
REQUIRED_COLUMNS = ("patch_id", "labels", "split", "country", "s1_name")
FLAGS = ("contains_seasonal_snow", "contains_cloud_or_shadow")
SPLIT_NAMES = {"train": "train", "validation": "val", "val": "val", "test": "test"}
_DATE = re.compile(r"_(\d{4})(\d{2})(\d{2})T\d+")


def product_date(name: str) -> str | None:
    """ISO date of the first ``_YYYYMMDDThhmmss`` in a Sentinel product or patch name."""
    m = _DATE.search(name)
    return f"{m[1]}-{m[2]}-{m[3]}" if m else None


def read_metadata(src: Path) -> Any:  # pandas.DataFrame
    """metadata.parquet (plus the snow/cloud table when present), checked for the columns the ingest needs."""
    import pandas as pd

    path = src / METADATA
    if not path.exists():
        raise IngestError(f"{path}: BigEarthNet metadata not found (expected the v2.0 layout with {METADATA})")
    frames = []
    for p in (path, src / SNOW_CLOUD_METADATA):
        if not p.exists():
            continue
        try:
            df = pd.read_parquet(p)
        except Exception as e:  # pyarrow raises several types for corrupt files
            raise IngestError(f"{p}: cannot read parquet: {e}") from e
        missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
        if missing:
            raise IngestError(f"{p}: lacks columns {missing} (it has {list(df.columns)})")
        frames.append(df)
    df = pd.concat(frames, ignore_index=True).drop_duplicates("patch_id", keep="first")
    if df.empty:
        raise IngestError(f"{path}: no patches listed")
    return df.reset_index(drop=True)


def _flag(v: Any) -> bool | None:
    """A metadata flag as bool; None where the table has no value (not silently False)."""
    return None if v is None or (isinstance(v, float) and np.isnan(v)) else bool(v)


def _read_band(path: Path, native: int) -> np.ndarray:
    """One single-band GeoTIFF of native size ``native`` px, read onto the 120x120 grid (bilinear)."""
    from rasterio.enums import Resampling

    with open_raster(path) as f:
        if f.count != 1:
            raise IngestError(f"{path}: has {f.count} bands, expected 1")
        if (f.height, f.width) != (native, native):
            raise IngestError(f"{path}: is {f.height}x{f.width} px, expected {native}x{native}")
        if native == CHIP_SIZE:
            return f.read(1)
        return f.read(1, out_shape=(CHIP_SIZE, CHIP_SIZE), resampling=Resampling.bilinear)


def patch_dirs(src: Path, patch_id: str, s1_name: str) -> tuple[Path, Path]:
    """S2 and S1 patch folders; products are the name without ``_row_col`` (S2) / the first five parts (S1)."""
    s2 = src / "BigEarthNet-S2" / patch_id.rsplit("_", 2)[0] / patch_id
    s1 = src / "BigEarthNet-S1" / "_".join(s1_name.split("_")[:5]) / s1_name
    return s2, s1


def ingest_bigearthnet(
    src: str | Path, out: str | Path, overwrite: bool = False, batch_size: int = 64, *, progress: bool = False
) -> ChipStore:
    """Ingest BigEarthNet v2.0: ``s2`` (s2_l2a), ``s1`` (s1_grd_db), 19-class ``labels``, country and flags.

    A patch with a missing or unreadable S2 band is skipped with the reason; a patch whose S1 pair is missing
    or unreadable is kept without ``s1`` and the S1 item is listed in ``ingest_report.json``. Splits are the
    metadata's (``validation`` -> ``val``). ``progress=True`` reports progress per patch on stderr.
    """
    src = Path(src)
    if not src.is_dir():
        raise IngestError(f"{src}: BigEarthNet directory not found")
    if not (src / "BigEarthNet-S2").is_dir():
        raise IngestError(f"{src}: no BigEarthNet-S2 folder (expected the BigEarthNet v2.0 layout)")
    meta = read_metadata(src)
    s2m, s1m = get_modality("s2_l2a"), get_modality("s1_grd_db")
    native = {b.name: round(CHIP_SIZE * 10 / (b.resolution_m or 10)) for b in s2m.bands}
    countries = list(BEN_COUNTRIES) + sorted(set(meta["country"].astype(str)) - set(BEN_COUNTRIES))
    schema: dict[str, dict[str, Any]] = {
        "labels": {"kind": "multilabel", "classes": list(BEN19_CLASSES)},
        "country": {"kind": "class", "classes": countries},
        **{f: {"kind": "value", "dtype": "bool"} for f in FLAGS},
    }
    source = {
        "dataset": "bigearthnet-v2",
        "path": str(src.resolve()),
        "s2_resampling": "20 m and 60 m bands bilinear to the 120x120 10 m grid (GDAL, on read)",
    }
    classes = set(BEN19_CLASSES)
    with StoreWriter(
        out, [s2m, s1m], CHIP_SIZE, schema, source=source, batch_size=batch_size, overwrite=overwrite, inputs=[src]
    ) as w:
        for row in make_progress(meta.itertuples(index=False), total=len(meta),
                                 desc=f"ingest bigearthnet {Path(out).name}", unit="patch", quiet=not progress):
            patch_id, s1_name = str(row.patch_id), str(row.s1_name)
            if w.is_done(patch_id):
                continue
            s2_dir, s1_dir = patch_dirs(src, patch_id, s1_name)
            labels = [str(x) for x in row.labels]
            unknown = [x for x in labels if x not in classes]
            split = SPLIT_NAMES.get(str(row.split))
            if unknown:
                w.skip(patch_id, f"{src / METADATA}: labels {unknown} are not BigEarthNet 19-class names")
                continue
            if split is None:
                w.skip(patch_id, f"{src / METADATA}: split {row.split!r} is not train/validation/test")
                continue
            try:
                s2 = np.stack([_read_band(s2_dir / f"{patch_id}_{b}.tif", native[b]) for b in s2m.band_names])
            except IngestError as e:
                w.skip(str(s2_dir), str(e))
                continue
            arrays = {"s2": s2}
            dates = {"s2": product_date(patch_id)}
            try:
                arrays["s1"] = np.stack(
                    [_read_band(s1_dir / f"{s1_name}_{b}.tif", CHIP_SIZE) for b in s1m.band_names]
                ).astype(np.float32)
                dates["s1"] = product_date(s1_name)
            except IngestError as e:
                w.skip(str(s1_dir), f"{e}; patch {patch_id} kept without s1")
            w.add(
                ChipRecord(
                    patch_id,
                    arrays,
                    split=split,
                    dates={k: v for k, v in dates.items() if v},
                    labels={
                        "labels": labels,
                        "country": str(row.country),
                        **{f: _flag(getattr(row, f, None)) for f in FLAGS},
                    },
                    source=str(s2_dir),
                )
            )
    return ChipStore(out)
