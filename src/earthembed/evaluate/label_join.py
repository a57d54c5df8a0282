"""Point and polygon labels (GeoPackage / GeoParquet) joined to chips by location.

The labels a user brings ("200 points I checked in the field") rarely share the store's CRS or its chip
grid. Each CRS of the store is handled on its own: the labels are reprojected to it and joined against the
chips' exact native boxes (:func:`earthembed.data.chipgeo.chip_frames`), not against the approximate
EPSG:4326 footprints. Nothing is dropped silently; the returned report lists every feature that was not used
as it was given:

* a point inside no chip is reported as ``outside``;
* a point inside several chips (overlapping tiles, or exactly on a shared edge) is reported under
  ``multi_chip`` and assigned to the chip whose centre is nearest: counting it for every chip would
  repeat one observation as several training examples;
* a polygon labels each chip it covers by at least ``min_cover`` of the chip's area (largest cover wins);
  a polygon that covers no chip that much is reported as ``outside`` (touches no chip) or ``too_small``;
* several features on one chip: classes by majority (a tie is reported under ``conflicts`` and the chip
  left unlabelled), numbers averaged; a feature with no value (null, NaN, empty) is reported under ``no_value``.

A value that is not a label at all is an error naming the file, the column and how many features carry it:
an infinite number (inf/-inf), which would otherwise reach the estimator. A join that labels no chip is an
error too, saying why: the file (layer) has no feature, no feature has a value, every feature lies outside the
store's chips or covers too little of one, or every labelled chip has tied conflicting labels (with counts).

Kinds: a float column is a regression target (``fraction`` when every value is in [0, 1]); strings,
integers and booleans are classes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from earthembed.data.chipgeo import chip_frames

MAX_LISTED = 50


@dataclasses.dataclass
class JoinedLabels:
    """Labels per chip (``values`` indexed by chip_id), the task kind, and the report of what was not used."""

    values: pd.Series
    kind: str  # "class" | "fraction" | "value"
    report: dict[str, Any]


def read_label_file(path: str | Path, column: str, layer: str | None = None) -> Any:
    """GeoDataFrame of a GeoPackage (any OGR vector format) or GeoParquet file, checked for ``column`` and a CRS."""
    import geopandas as gpd

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: label file not found")
    try:
        if path.suffix.lower() in (".parquet", ".geoparquet"):
            gdf = gpd.read_parquet(path)
        else:
            import pyogrio

            layers = [str(x[0]) for x in pyogrio.list_layers(path)]
            if layer is None and len(layers) > 1:
                raise ValueError(f"{path}: has several layers {layers}; choose one with --layer")
            if layer is not None and layer not in layers:
                raise ValueError(f"{path}: no layer {layer!r} (it has {layers})")
            gdf = gpd.read_file(path, layer=layer)
            layer = layer if layer is not None else (layers[0] if layers else None)
    except (ValueError, KeyError):
        raise
    except Exception as e:  # pyogrio / pyarrow errors for unreadable files
        raise ValueError(f"{path}: cannot read labels ({e})") from e
    if gdf.crs is None:
        raise ValueError(f"{path}: labels have no CRS; set one (e.g. EPSG:4326) so they can be placed on the chips")
    if column not in gdf.columns:
        cols = [c for c in gdf.columns if c != gdf.geometry.name]
        raise KeyError(f"{path}: no label column {column!r} (it has {cols})")
    kinds = set(gdf.geometry.dropna().geom_type)
    if kinds - {"Point", "MultiPoint", "Polygon", "MultiPolygon"}:
        raise ValueError(f"{path}: labels must be points or polygons, found {sorted(kinds)}")
    if layer is not None:
        gdf.attrs["layer"] = layer  # named in the join report and its errors
    return gdf


def _where(what: str, layer: str | None, column: str) -> str:
    return f"{what} (layer {layer!r}, column {column!r})" if layer else f"{what} (column {column!r})"


def _check_finite(value: pd.Series, where: str) -> None:
    """Infinite numbers are not labels: an error naming the file, column and how many features have one."""
    if not pd.api.types.is_numeric_dtype(value) or pd.api.types.is_bool_dtype(value):
        return
    v = value.to_numpy(dtype=np.float64, na_value=np.nan)
    bad = np.flatnonzero(np.isinf(v))
    if len(bad):
        shown = ", ".join(f"#{i} ({v[i]:+})" for i in bad[:5]) + (" ..." if len(bad) > 5 else "")
        raise ValueError(
            f"{where}: {len(bad)} of {len(v)} features have an infinite value ({shown}); a label must be a finite "
            "number (leave it empty for no label)"
        )


def nothing_labelled(report: dict[str, Any]) -> str:
    """Why a join labelled no chip, from its report: the one-line message of the error it raises."""
    where = _where(report["file"], report.get("layer"), report["column"])
    n = report["features"]
    if n == 0:
        what = f"layer {report['layer']!r}" if report.get("layer") else "the file"
        return f"{where}: {what} has no features (0 rows), so no chip can be labelled; is it the right file or layer?"
    counts = {k: report.get(f"n_{k}", 0) for k in ("no_value", "outside", "too_small", "conflicts")}
    if counts["no_value"] == n:
        return (f"{where}: none of its {n} features has a value (all empty, null or NaN, or without a geometry), "
                "so no chip can be labelled")
    if counts["conflicts"]:
        ex = report["conflicts"][0]
        rest = "; ".join(f"{c} {t}" for t, c in (("outside every chip", counts["outside"]),
                                                  ("cover too little of a chip", counts["too_small"]),
                                                  ("without a value", counts["no_value"])) if c)
        return (f"{where}: every chip a label falls on has tied conflicting labels: {counts['conflicts']} chip(s) "
                f"from {report['features_used']} of {n} features (e.g. chip {ex['chip_id']}: {', '.join(ex['values'])})"
                f"{'; ' + rest if rest else ''}; no chip is labelled: give each chip one label (or a majority)")
    parts = [f"{counts['outside']} outside every chip"]
    if counts["too_small"]:
        parts.append(f"{counts['too_small']} polygon(s) covering too little of any chip (--min-cover)")
    if counts["no_value"]:
        parts.append(f"{counts['no_value']} without a value")
    return (f"{where}: no label falls on a chip of the store: of {n} features, {', '.join(parts)}; check the "
            "file covers the store's area (and its CRS)")


def _kind(values: pd.Series) -> str:
    if pd.api.types.is_float_dtype(values):
        v = values.dropna()
        return "fraction" if len(v) and v.between(0, 1).all() else "value"
    return "class"


def _feature(i: int, value: Any, geom: Any) -> dict[str, Any]:
    p = geom.representative_point() if geom is not None else None
    return {"feature": int(i), "value": None if value is None else str(value) if not isinstance(value, float) else value,
            **({"x": round(p.x, 6), "y": round(p.y, 6)} if p is not None else {})}


def join_labels(
    labels: Any, column: str, chips: pd.DataFrame, chip_size: int, min_cover: float = 0.5, what: str = "labels"
) -> JoinedLabels:
    """Join point/polygon ``labels`` (GeoDataFrame) to ``chips`` (chip_id + crs/transform/geometry).

    ValueError (one line naming ``what``, its layer and ``column``) for an infinite value, or when no chip gets a
    label (:func:`nothing_labelled` says why, with counts)."""
    import geopandas as gpd
    import shapely

    if not 0 < min_cover <= 1:
        raise ValueError(f"min_cover must be in (0, 1], got {min_cover}")
    layer = labels.attrs.get("layer")
    gdf = labels.reset_index(drop=True)
    value = gdf[column]
    _check_finite(value, _where(what, layer, column))
    kind = _kind(value)
    report: dict[str, Any] = {"file": what, **({"layer": layer} if layer else {}), "column": column,
                              "features": len(gdf), "no_value": [], "outside": [], "too_small": [], "multi_chip": [],
                              "conflicts": []}
    missing = value.isna() | gdf.geometry.isna() | (value.astype(str).str.strip() == "")
    for i in np.flatnonzero(missing.to_numpy()):
        report["no_value"].append(_feature(i, None, gdf.geometry.iloc[i]))
    gdf = gdf[~missing.to_numpy()]
    fr = chip_frames(chips, chip_size, what)
    ok = fr["left"].notna().to_numpy()
    if not ok.any():
        raise ValueError(f"{what}: the store's chips are not georeferenced; labels cannot be joined by location")
    points = gdf.geom_type.isin(["Point", "MultiPoint"]).to_numpy()
    hits: list[pd.DataFrame] = []  # rows: feature, chip position, score (point: -distance to centre; polygon: cover)
    for crs in pd.unique(fr["crs"][ok]):
        rows = np.flatnonzero(ok & (fr["crs"].to_numpy() == crs))
        f = fr.iloc[rows]
        boxes = gpd.GeoDataFrame({"pos": rows}, geometry=shapely.box(f["left"], f["bottom"], f["right"], f["top"]),
                                 crs=crs)
        lab = gdf.to_crs(crs)
        lab = gpd.GeoDataFrame({"feature": lab.index.to_numpy()}, geometry=lab.geometry.to_numpy(), crs=crs)
        j = gpd.sjoin(lab, boxes, predicate="intersects", how="inner")
        if not len(j):
            continue
        g = lab.geometry.loc[j.index].to_numpy()
        b = boxes.geometry.to_numpy()[j["index_right"].to_numpy()]
        is_pt = points[gdf.index.get_indexer(j["feature"])]
        score = np.empty(len(j))
        if is_pt.any():
            score[is_pt] = -shapely.distance(shapely.centroid(g[is_pt]), shapely.centroid(b[is_pt]))
        if (~is_pt).any():
            score[~is_pt] = shapely.area(shapely.intersection(g[~is_pt], b[~is_pt])) / shapely.area(b[~is_pt])
        hits.append(pd.DataFrame({"feature": j["feature"].to_numpy(), "pos": j["pos"].to_numpy(), "score": score,
                                  "point": is_pt}))
    h = pd.concat(hits, ignore_index=True) if hits else pd.DataFrame(columns=["feature", "pos", "score", "point"])
    chip_ids = chips["chip_id"].astype(str).to_numpy()
    assigned: list[tuple[int, int]] = []  # (feature, chip position)
    for feat in gdf.index:
        hf = h[h["feature"] == feat]
        geom = gdf.geometry.loc[feat]
        entry = _feature(feat, value.loc[feat], geom)
        if not len(hf):
            report["outside"].append(entry)
            continue
        if points[gdf.index.get_loc(feat)]:
            best = hf.sort_values("score", ascending=False)
            if len(hf) > 1:
                report["multi_chip"].append({**entry, "chips": [chip_ids[p] for p in best["pos"]],
                                             "assigned": chip_ids[int(best["pos"].iloc[0])]})
            assigned.append((feat, int(best["pos"].iloc[0])))
        else:
            good = hf[hf["score"] >= min_cover - 1e-9]
            if not len(good):
                report["too_small"].append({**entry, "max_cover": round(float(hf["score"].max()), 4)})
            assigned.extend((feat, int(p)) for p in good["pos"])
    # polygons: a chip covered by several polygons takes the one covering most of it
    per_chip: dict[int, list[Any]] = {}
    cover = {(int(r.feature), int(r.pos)): float(r.score) for r in h.itertuples()}
    poly_best: dict[int, tuple[float, int]] = {}
    for feat, pos in assigned:
        if points[gdf.index.get_loc(feat)]:
            per_chip.setdefault(pos, []).append(value.loc[feat])
        elif cover[(feat, pos)] > poly_best.get(pos, (-1.0, -1))[0]:
            poly_best[pos] = (cover[(feat, pos)], feat)
    for pos, (_, feat) in poly_best.items():
        per_chip.setdefault(pos, []).append(value.loc[feat])
    out: dict[str, Any] = {}
    for pos, vals in per_chip.items():
        if kind == "class":
            counts = pd.Series([str(v) for v in vals]).value_counts()
            if len(counts) > 1 and counts.iloc[0] == counts.iloc[1]:
                report["conflicts"].append({"chip_id": chip_ids[pos], "values": sorted(map(str, vals))})
                continue
            out[chip_ids[pos]] = counts.index[0]
        else:
            out[chip_ids[pos]] = float(np.mean(np.asarray(vals, dtype=np.float64)))
    report["chips_labelled"] = len(out)
    report["features_used"] = len({f for f, _ in assigned})
    for k in ("no_value", "outside", "too_small", "multi_chip", "conflicts"):
        report[f"n_{k}"] = len(report[k])
        if len(report[k]) > MAX_LISTED:
            report[k] = report[k][:MAX_LISTED]
    if not out:
        raise ValueError(nothing_labelled(report))
    return JoinedLabels(pd.Series(out, dtype=object if kind == "class" else np.float64), kind, report)


def summarise(report: dict[str, Any]) -> list[str]:
    """Human-readable lines of a join report (printed by the CLI)."""
    layer = f" (layer {report['layer']!r})" if report.get("layer") else ""
    lines = [f"{report['file']}{layer}: {report['features']} features, {report['features_used']} used, "
             f"{report['chips_labelled']} chips labelled"]
    texts = {
        "outside": "outside every chip of the store (not used)",
        "too_small": "cover no chip by the minimum share (not used)",
        "multi_chip": "inside several chips (assigned to the nearest chip centre)",
        "no_value": "without a value or geometry (not used)",
        "conflicts": "chips with tied conflicting labels (left unlabelled)",
    }
    for k, text in texts.items():
        n = report.get(f"n_{k}", 0)
        if n:
            listed = ", ".join(
                f"#{e['feature']}" + (f" ({e['x']}, {e['y']})" if "x" in e else "") if "feature" in e else e["chip_id"]
                for e in report[k][:10]
            )
            lines.append(f"  {n} {text}: {listed}{' ...' if n > 10 else ''}")
    return lines
