"""Where chips are: per-chip tables (store index, embeddings, predictions, search hits) and native-CRS boxes.

Maps and label joins need each chip's box in its own CRS, exactly: the EPSG:4326 footprint is only an
approximation of a UTM square. Stores written since the ``transform`` index column exist carry each chip's
affine transform; older stores (and ingesters that do not record it) fall back to the footprint's vertices
transformed back to the chip's CRS, which is exact to rounding for the four-corner footprints the ingesters
write (a reprojected *envelope* would not be, so the vertices are used, not ``to_crs().envelope``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from earthembed.errors import StoreError

META_KEY = b"earthembed"
FRAME_COLUMNS = ("crs", "left", "bottom", "right", "top", "xres", "yres")


def read_chip_table(path: str | Path, columns: list[str] | None = None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """(DataFrame, earthembed metadata) of a per-chip Parquet table, or of a store directory's index.

    ``geometry`` (EPSG:4326 WKB) becomes shapely geometries. A store directory yields its index with
    ``{"store": path, "chip_size": N}`` as metadata, so every table kind is handled the same way.
    """
    import shapely

    from earthembed.embed.shards import is_dataset_dir
    from earthembed.storage import location, read_parquet_tables

    path = location(path)  # a Path, or an s3:// / gs:// URL (earthembed.storage.ObjectPath)
    meta: dict[str, Any] = {}
    if path.is_dir() and is_dataset_dir(path):  # a sharded embedding dataset: its shards as one table
        from earthembed.embed.io import read_table as read_embedding_table

        table = read_embedding_table(path, columns=columns)
    elif path.is_dir():
        from earthembed.data.store import INDEX_FILE, ChipStore

        store = ChipStore(path)
        meta = {"store": str(path), "chip_size": store.chip_size, "labels": store.labels}
        path = path / INDEX_FILE
    elif not path.exists():
        raise FileNotFoundError(f"{path}: table not found")
    if not (path.is_dir() and is_dataset_dir(path)):
        try:
            table = read_parquet_tables([path], columns=columns)[0]
        except Exception as e:  # pyarrow raises several types for a file that is not Parquet
            raise ValueError(f"{path}: cannot read as a Parquet table ({e})") from e
    md = table.schema.metadata or {}
    if META_KEY in md:
        meta = {**json.loads(md[META_KEY]), **meta}
    df = table.to_pandas()
    if "geometry" in df.columns:
        geom = df["geometry"].to_numpy()
        df["geometry"] = shapely.from_wkb(geom) if len(geom) and not isinstance(geom[0], shapely.Geometry) else geom
    return df, meta


def store_of(meta: dict[str, Any], store: str | Path | None) -> Any:
    """The ChipStore given, else the one recorded in a table's metadata (if it still exists), else None."""
    from earthembed.data.store import ChipStore
    from earthembed.storage import location

    if store is not None:
        return store if isinstance(store, ChipStore) else ChipStore(store)
    recorded = meta.get("store")
    if recorded and location(recorded).exists():
        return ChipStore(recorded)
    return None


def with_store_geometry(df: pd.DataFrame, store: Any, what: str) -> pd.DataFrame:
    """``df`` with the store's ``crs``, ``transform`` and ``geometry`` of each chip (joined on ``chip_id``)."""
    idx = store.index
    cols = [c for c in ("crs", "transform", "geometry") if c in idx.columns]
    lookup = pd.DataFrame({c: idx[c].to_numpy() for c in cols}, index=idx["chip_id"].astype(str).to_numpy())
    ids = df["chip_id"].astype(str)
    missing = ~ids.isin(lookup.index)
    if missing.any():
        raise StoreError(
            f"{what}: {int(missing.sum())} chip id(s) are not in the store {store.path} "
            f"(e.g. {ids[missing].iloc[0]!r}); pass the store the table was made from"
        )
    out = df.drop(columns=[c for c in cols if c in df.columns]).copy()
    for c in cols:
        out[c] = lookup.loc[ids.to_numpy(), c].to_numpy()
    return out


def chip_frames(df: pd.DataFrame, chip_size: int, what: str = "table") -> pd.DataFrame:
    """Native box of every chip: columns ``crs, left, bottom, right, top, xres, yres`` aligned with ``df``.

    From ``transform`` where present, else from the EPSG:4326 footprint's vertices (see module docstring).
    Rows without a CRS (not georeferenced) get NaN bounds; callers decide whether that is an error.
    """
    n = len(df)
    out = pd.DataFrame(
        {"crs": df["crs"].to_numpy() if "crs" in df.columns else np.full(n, None, dtype=object)}, index=df.index
    )
    bounds = np.full((n, 4), np.nan)
    res = np.full((n, 2), np.nan)
    have_t = np.zeros(n, dtype=bool)
    if "transform" in df.columns:
        tv = df["transform"].to_numpy()
        have_t = np.array([t is not None and not (isinstance(t, float) and np.isnan(t)) and len(t) >= 6 for t in tv])
        if have_t.any():
            T = np.stack([np.asarray(t, dtype=np.float64)[:6] for t in tv[have_t]])
            a, b, c, d, e, f = T.T
            s = float(chip_size)
            xs = np.stack([c, c + a * s, c + b * s, c + a * s + b * s], axis=1)
            ys = np.stack([f, f + d * s, f + e * s, f + d * s + e * s], axis=1)
            bounds[have_t] = np.stack([xs.min(1), ys.min(1), xs.max(1), ys.max(1)], axis=1)
            res[have_t] = np.stack([np.hypot(a, d), np.hypot(b, e)], axis=1)
    need = ~have_t & out["crs"].notna().to_numpy()
    if need.any():
        if "geometry" not in df.columns:
            raise ValueError(f"{what}: chips have neither a transform nor a footprint geometry")
        import geopandas as gpd
        import shapely

        for crs in pd.unique(out["crs"][need]):
            rows = np.flatnonzero(need & (out["crs"].to_numpy() == crs))
            geoms = gpd.GeoSeries(df["geometry"].to_numpy()[rows], crs="EPSG:4326")
            ok = geoms.notna().to_numpy()
            native = geoms[ok].to_crs(crs)
            coords = [shapely.get_coordinates(g) for g in native]
            bb = np.array([[c[:, 0].min(), c[:, 1].min(), c[:, 0].max(), c[:, 1].max()] for c in coords])
            if len(bb):
                bounds[rows[ok]] = bb
                res[rows[ok]] = np.stack([(bb[:, 2] - bb[:, 0]) / chip_size, (bb[:, 3] - bb[:, 1]) / chip_size], 1)
    for i, k in enumerate(("left", "bottom", "right", "top")):
        out[k] = bounds[:, i]
    out["xres"], out["yres"] = res[:, 0], res[:, 1]
    return out


def locate(df: pd.DataFrame, meta: dict[str, Any], store: str | Path | None, what: str) -> tuple[pd.DataFrame, int]:
    """(``df`` with ``crs``/``transform``/``geometry`` filled in from the store if it lacks them, chip size)."""
    st = None
    if not {"crs", "transform"} <= set(df.columns) or "chip_size" not in meta:
        st = store_of(meta, store)
        if st is None:
            raise StoreError(
                f"{what}: the table has no chip CRS/transform and no store is given or recorded in it; "
                "pass --store"
            )
        df = with_store_geometry(df, st, what) if not {"crs", "transform"} <= set(df.columns) else df
    chip_size = int(meta.get("chip_size") or st.chip_size)
    return df, chip_size


def write_chip_table(df: pd.DataFrame, path: str | Path, meta: dict[str, Any]) -> Path:
    """Write a per-chip table as GeoParquet 1.1 (``geometry``: EPSG:4326 footprints as WKB) with ``meta``
    under the ``earthembed`` key; written under a temporary name and renamed into place when complete."""
    import os

    import pyarrow as pa
    import pyarrow.parquet as pq
    import shapely
    from pyproj import CRS

    path = Path(path)
    body = df.drop(columns=["geometry"]) if "geometry" in df.columns else df
    table = pa.Table.from_pandas(body.reset_index(drop=True), preserve_index=False)
    if "geometry" in df.columns:
        table = table.append_column("geometry", pa.array(shapely.to_wkb(df["geometry"].to_numpy()), pa.binary()))
    md = {k: v for k, v in (table.schema.metadata or {}).items() if k != b"pandas"}
    if "geometry" in df.columns:
        md[b"geo"] = json.dumps({
            "version": "1.1.0",
            "primary_column": "geometry",
            "columns": {"geometry": {"encoding": "WKB", "geometry_types": [],
                                     "crs": CRS.from_epsg(4326).to_json_dict()}},
        }).encode()
    md[META_KEY] = json.dumps(meta, default=str).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table.replace_schema_metadata(md), tmp)
    os.replace(tmp, path)
    return path
