"""CLI of the explore stage: ``plot-embeddings``, ``map``, ``index``, ``search``, ``change`` and ``report``."""

from __future__ import annotations

from pathlib import Path

import typer

from earthembed.cli_utils import fail_on


def plot_embeddings(
    embeddings: Path = typer.Argument(..., help="embedding table (GeoParquet)"),
    color_by: str = typer.Option(..., "--color-by", help="label of the store, or a column of the table (e.g. split)"),
    out: Path = typer.Option(..., "--out", help="PNG to write"),
    store: Path = typer.Option(None, "--store", help="chip store with the labels (default: the one the table was embedded from)"),
    column: str = typer.Option("emb_fused", "--column", help="embedding column"),
    method: str = typer.Option("pca", "--method", help="pca | umap (umap needs umap-learn)"),
    max_points: int = typer.Option(20000, "--max-points"),
    multilabel: str = typer.Option("first", "--multilabel", help="colour multilabel chips by 'first' label or 'count'"),
    seed: int = typer.Option(0),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an earlier earthembed PNG at --out (never any other file)"),
) -> None:
    """2-D projection (PCA or UMAP) of an embedding column, coloured by a label."""
    from earthembed.explore.projection import plot_embeddings as _plot

    with fail_on(ImportError):
        path = _plot(embeddings, color_by, out, store=store, column=column, method=method,
                     max_points=max_points, seed=seed, multilabel=multilabel, overwrite=overwrite)
    typer.echo(f"wrote {path}")


def map_(
    table: Path = typer.Option(..., "--table", help="per-chip table: predictions, embeddings, a change table, or a store directory"),
    column: str = typer.Option(None, "--column", help="class, probability, fraction or embedding (emb_*) column "
                               "(a change table: score and mask by default, or score | changed)"),
    out: Path = typer.Option(..., "--out", help="Cloud-Optimised GeoTIFF to write (a .png preview goes beside it)"),
    store: Path = typer.Option(None, "--store", help="store with the chips' CRS/transform (default: recorded in the table)"),
    crs: str = typer.Option(None, "--crs", help="reproject every chip into this CRS (default: one map per CRS)"),
    pixel_size: float = typer.Option(None, "--pixel-size", help="map pixel size in CRS units (default: see docs)"),
    date: str = typer.Option(None, "--date", help="change table of a series method: map this date's scores "
                             "(default: each chip's highest score)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace earlier earthembed maps and previews at --out (never any other file)"),
) -> None:
    """Rasterise per-chip values back onto the AOI grid as a COG, with a PNG preview (a change table: the
    score, and the changed mask as OUT_mask.tif when it was thresholded)."""
    from earthembed.explore.change import is_change_table
    from earthembed.explore.maps import write_change_map, write_map

    with fail_on():
        if is_change_table(table):
            paths = write_change_map(table, out, column=column, date=date, store=store, crs=crs,
                                     pixel_size=pixel_size, overwrite=overwrite)
        else:
            if column is None:
                raise ValueError(f"{table}: --column is required (which column of the table to map)")
            if date is not None:
                raise ValueError(f"{table}: --date applies to change tables (earthembed change --out ...)")
            paths = write_map(table, column, out, store=store, crs=crs, pixel_size=pixel_size, overwrite=overwrite)
    for p in paths:
        typer.echo(f"wrote {p} (preview {p.with_suffix('.png')})")


def _ids(values: list[str]) -> list[str]:
    return [x.strip() for v in values for x in v.split(",") if x.strip()]


def _point(value: str | None) -> tuple[float, float] | None:
    if value is None:
        return None
    try:
        lon, lat = (float(x) for x in value.split(","))
    except ValueError:
        raise ValueError(f"--point {value!r}: expected LON,LAT in degrees (EPSG:4326)") from None
    if not (-180 <= lon <= 180 and -90 <= lat <= 90):
        raise ValueError(f"--point {value!r}: LON,LAT out of range (is it LAT,LON or not in degrees?)")
    return lon, lat


def index(
    embeddings: Path = typer.Option(..., "--embeddings", help="embedding table (GeoParquet)"),
    column: str = typer.Option("emb_fused", "--column", help="embedding column"),
    kind: str = typer.Option("ivf", "--kind", help="ivf (IVF-Flat) | hnsw"),
    nlist: int = typer.Option(None, "--nlist", help="IVF lists (default 4*sqrt(N))"),
    nprobe: int = typer.Option(64, "--nprobe", help="IVF lists visited per query (default for searches)"),
    hnsw_m: int = typer.Option(32, "--hnsw-m", help="HNSW links per node"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress output"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an earlier index of the column (never any other file)"),
) -> None:
    """Build an approximate faiss index of an embedding column, stored beside the table (used by search)."""
    from earthembed.explore.search import build_index

    with fail_on(ImportError):
        path = build_index(embeddings, column, kind=kind, nlist=nlist, nprobe=nprobe, hnsw_m=hnsw_m, quiet=quiet,
                           overwrite=overwrite)
    typer.echo(f"wrote {path} (+ {path.name}.json)")


def search(
    embeddings: Path = typer.Option(..., "--embeddings", help="embedding table (GeoParquet)"),
    positive: list[str] = typer.Option([], "--positive", help="chip id(s) to look like (comma-separated, repeatable)"),
    negative: list[str] = typer.Option([], "--negative", help="chip id(s) not to look like"),
    point: str = typer.Option(None, "--point", help="LON,LAT: the chip containing it is a positive"),
    k: int = typer.Option(50, "--k", help="number of hits"),
    out: Path = typer.Option(..., "--out", help="hits GeoParquet (a .png grid of thumbnails goes beside it)"),
    column: str = typer.Option("emb_fused", "--column", help="embedding column"),
    store: Path = typer.Option(None, "--store", help="store for thumbnails/footprints (default: recorded in the table)"),
    exact: bool = typer.Option(False, "--exact", help="exact search even if an index exists"),
    nprobe: int = typer.Option(None, "--nprobe", help="IVF lists to visit (default: the index's)"),
    include_query: bool = typer.Option(False, "--include-query", help="keep the query chips among the hits"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace earlier earthembed hits and thumbnails at --out (never any other file)"),
) -> None:
    """Chips most similar (cosine) to normalised mean(positives) - mean(negatives), with thumbnails."""
    from earthembed.explore.search import search as _search
    from earthembed.explore.search import write_hits

    with fail_on(ImportError):
        hits = _search(embeddings, _ids(positive), _ids(negative), _point(point), k=k, column=column,
                       store=store, exact=exact, nprobe=nprobe, include_query=include_query)
        paths = write_hits(hits, out, store=store, overwrite=overwrite)
    m = hits.meta
    typer.echo(f"{len(hits.table)} hits ({m['method']}) for {len(m['positives'])} positive(s), "
               f"{len(m['negatives'])} negative(s): " + ", ".join(map(str, paths)))
    for r in hits.table.head(5).itertuples():
        typer.echo(f"  #{r.rank} {r.chip_id} {r.score:.4f}")


def change(
    embeddings: list[Path] = typer.Option(..., "--embeddings", help="per-date embedding table (embed --dates); "
                                          "repeatable: tables of one model are read as one"),
    out: Path = typer.Option(..., "--out", help="change table (GeoParquet) to write"),
    column: str = typer.Option("emb_fused", "--column", help="embedding column"),
    date_from: str = typer.Option(None, "--from", help="first date (date key or YYYY-MM-DD): cosine change to --to"),
    date_to: str = typer.Option(None, "--to", help="second date"),
    method: str = typer.Option(None, "--method", help="cosine (with --from/--to) | zscore | loo-medoid | consecutive"),
    threshold: str = typer.Option(None, "--threshold", help="percentile:Q | otsu | fixed:X | fitted:LABELS.csv "
                                  "(chip_id[,date],changed 0/1): adds the changed column"),
    plot: list[str] = typer.Option([], "--plot", help="chip id(s) or top:K whose scores over time are drawn into "
                                   "OUT.png (series methods; comma-separated, repeatable)"),
    truth: Path = typer.Option(None, "--truth", help="store with change_t<k> truth columns (earthembed synth "
                               "--dates): print F1 / ROC AUC per chip (and per date) and keep them in the metadata"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an earlier earthembed change table (and its "
                                   "plot) at --out (never any other file)"),
) -> None:
    """Change per chip between two dates, or per chip and date over a series, from per-date embeddings."""
    from earthembed.explore.change import detect_change

    with fail_on():
        res = detect_change(embeddings, out, column=column, method=method, date_from=date_from, date_to=date_to,
                            threshold=threshold, plot=_ids(plot), overwrite=overwrite, truth=truth)
    m = res.meta
    iso = {d["date_key"]: d["date"] for d in m["dates"]}
    label = lambda k: k if iso.get(k) in (None, k) else f"{k} ({iso[k]})"  # noqa: E731
    span = f"{label(m['from'])} -> {label(m['to'])}" if m["method"] == "cosine" else f"{len(m['dates'])} dates"
    typer.echo(f"change ({m['method']}, {m['column']}, {span}): {m['n_rows']:,} score(s) for {m['n_chips']:,} of "
               f"{m['n_chips_input']:,} chips")
    for note in res.notes:
        typer.echo(f"  {note}")
    thr = m["threshold"]
    if thr:
        line = f"threshold {thr['spec']} = {thr['value']:.4g}: {thr['n_changed']:,} changed"
        if thr["kind"] == "fitted":
            lo, hi = thr["threshold_ci"]
            f_lo, f_hi = thr["f1_ci"]
            line += (f" (F1 {thr['f1']:.3f} [{f_lo:.3f}, {f_hi:.3f}] on {thr['n_labels']} labels, cut 95% CI "
                     f"[{lo:.4g}, {hi:.4g}])")
        typer.echo(line)
    for a in (m.get("accuracy") or {}).get("levels", []):
        f1 = "-" if a["f1"] is None else f"{a['f1']:.3f}"
        auc = "-" if a["auc"] is None else f"{a['auc']:.3f}"
        typer.echo(f"accuracy per {a['level'].replace('_', ' and ')}: ROC AUC {auc}, F1 {f1} (best cut "
                   f"{'-' if a['best_f1'] is None else format(a['best_f1'], '.3f')}), {a['n_changed']} of {a['n']} changed")
    top = res.table.sort_values("score", ascending=False).head(5)
    for r in top.to_dict("records"):
        when = " -> ".join(str(r[c]) for c in m["date_columns"])
        typer.echo(f"  {r['chip_id']} {when} {r['score']:.4f}")
    typer.echo(f"wrote {res.path}" + (f" (plot {res.plot})" if res.plot else ""))


def report(
    out: Path = typer.Option(..., "--out", help="HTML page to write (self-contained)"),
    store: Path = typer.Option(None, "--store", help="chip store to summarise"),
    fewshot: Path = typer.Option(None, "--fewshot", help="`earthembed fewshot` output directory"),
    embeddings: Path = typer.Option(None, "--embeddings", help="embedding table to project (PCA)"),
    color_by: str = typer.Option(None, "--color-by", help="label colouring the projection (default: split)"),
    predictions: list[Path] = typer.Option([], "--predictions", help="predictions GeoParquet (repeatable)"),
    map_: list[Path] = typer.Option([], "--map", help="map COG (repeatable)"),
    image: list[str] = typer.Option([], "--image", help="PNG[=CAPTION] to include with the maps (repeatable)"),
    hits: list[Path] = typer.Option([], "--hits", help="search hits GeoParquet (repeatable; its .png is shown)"),
    change_: list[Path] = typer.Option([], "--change", help="change table (repeatable): score histogram, top changed "
                                       "chips, threshold, scores over time of the top chips"),
    title: str = typer.Option("earthembed report", "--title"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an earlier earthembed report at --out (never any other file)"),
) -> None:
    """One self-contained HTML page: store summary, label efficiency, embedding space, maps and search hits."""
    from earthembed.explore.report import write_report

    imgs = [(Path(p), c or Path(p).stem) for p, _, c in (i.partition("=") for i in image)]
    with fail_on(ImportError):
        path = write_report(out, store=store, fewshot=fewshot, embeddings=embeddings, color_by=color_by,
                            predictions=predictions, maps=map_, images=imgs, hits=hits, changes=change_, title=title,
                            overwrite=overwrite)
    typer.echo(f"wrote {path}")


def register(app: typer.Typer) -> None:
    app.command("plot-embeddings")(plot_embeddings)
    app.command("map")(map_)
    app.command("index")(index)
    app.command("search")(search)
    app.command("change")(change)
    app.command("report")(report)
