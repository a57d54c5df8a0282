"""One self-contained HTML page for a run: store summary, label efficiency, embedding space, maps, search hits,
change between dates.

Everything is inline (CSS, images as base64 PNG data URIs), so the page can be mailed or archived as one
file and opened offline. Every part is optional: the page shows what it is given. A few lines of script at
the end check that every image decoded and report any that did not to the browser console (the test opens
the page in headless Chromium and fails on any console message); the page reads fine without script.
Rejected: a Jinja template (one more dependency for one page) and linking the PNGs (the page would break
when moved without them). Inputs are checked before the page is made: ``images`` must decode as PNG or JPEG,
``fewshot`` must be an ``earthembed fewshot`` output directory. The page follows the output policy of
:mod:`earthembed.outputs` (``<meta name="generator" content="earthembed">`` marks it as earthembed's).
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from earthembed.outputs import HTML_MARKER, atomic_path, check_output, output_kind
from earthembed.storage import ObjectPath, location

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1200px;margin:24px auto;padding:0 16px;
color:#1d2329;line-height:1.45}
h1{font-size:1.6em;margin-bottom:0}h2{border-bottom:1px solid #d0d7de;padding-bottom:4px;margin-top:2em}
.meta{color:#57606a;font-size:.9em}figure{margin:12px 0}figcaption{color:#57606a;font-size:.85em}
img{max-width:100%;height:auto;border:1px solid #eaeef2}
table{border-collapse:collapse;font-size:.82em;margin:8px 0}th,td{border:1px solid #d0d7de;padding:3px 7px;text-align:left}
th{background:#f6f8fa}td.num{text-align:right;font-variant-numeric:tabular-nums}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(420px,1fr));gap:12px}
.err{color:#b00020;font-weight:bold}
"""

# Marks undecodable images in the page and logs them: headless tests fail on console messages.
_CHECK = """
window.addEventListener('load', function () {
  var bad = Array.prototype.filter.call(document.images, function (i) { return !(i.complete && i.naturalWidth > 0); });
  bad.forEach(function (i) { i.insertAdjacentHTML('afterend', '<p class="err">image failed to load: ' + i.alt + '</p>');
    console.error('earthembed report: image failed to load: ' + i.alt); });
  document.body.setAttribute('data-images', document.images.length + ' images, ' + bad.length + ' broken');
});
"""


IMAGE_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg"}


def image_type(path: str | Path, option: str = "--image") -> str:
    """The MIME type of an image file to embed (PNG or JPEG, fully decoded once); ValueError naming the file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            fmt = im.format
            im.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"{path}: {option} is not a readable image ({e}); give a PNG or JPEG file") from None
    if fmt not in IMAGE_TYPES:
        raise ValueError(f"{path}: {option} is a {fmt} image; the report embeds PNG or JPEG")
    return IMAGE_TYPES[fmt]


def _img(png: str | Path | bytes, alt: str, mime: str = "image/png") -> str:
    data = png if isinstance(png, bytes) else Path(png).read_bytes()
    return f'<img alt="{html.escape(alt)}" src="data:{mime};base64,{base64.b64encode(data).decode()}">'


def _figure(png: str | Path | bytes, caption: str, mime: str = "image/png") -> str:
    return f"<figure>{_img(png, caption, mime)}<figcaption>{html.escape(caption)}</figcaption></figure>"


def _table(df: pd.DataFrame, max_rows: int = 60) -> str:
    """An HTML table (numbers right-aligned, 3 significant decimals), at most ``max_rows`` rows."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    rows = []
    for r in df.head(max_rows).itertuples(index=False):
        cells = []
        for v in r:
            if isinstance(v, float | np.floating):
                cells.append(f'<td class="num">{"" if np.isnan(v) else f"{v:.3f}"}</td>')
            elif isinstance(v, int | np.integer):
                cells.append(f'<td class="num">{v}</td>')
            else:
                cells.append(f"<td>{html.escape('' if v is None else str(v))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    more = f'<p class="meta">... {len(df) - max_rows} more rows</p>' if len(df) > max_rows else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>{more}"


def _store_section(store: Any) -> str:
    info = store.info()
    mods = pd.DataFrame([
        {"modality": k, "product": m["product"], "bands": ", ".join(m["bands"]), "dtype": m["dtype"],
         "units": m["units"], "present in": m["present"]} for k, m in info["modalities"].items()
    ])
    labels = pd.DataFrame([
        {"label": k, "kind": v["kind"],
         "summary": json.dumps(v.get("class_counts") or {x: round(v[x], 4) for x in ("min", "mean", "max") if x in v}
                               or {x: v[x] for x in ("classes", "present") if x in v})}
        for k, v in info["labels"].items()
    ])
    crs = sorted(store.index["crs"].dropna().astype(str).unique()) if "crs" in store.index else []
    return (
        f"<h2>Chip store</h2><p>{html.escape(str(store.path))}: <b>{info['chips']}</b> chips of "
        f"{info['chip_size']}x{info['chip_size']} px, splits {html.escape(json.dumps(info['splits']))}, "
        f"{info['georeferenced']} georeferenced ({html.escape(', '.join(crs) or 'no CRS')}), "
        f"{info['skipped']} inputs skipped.</p>" + _table(mods) + (_table(labels) if len(labels) else "")
    )


def check_fewshot_dir(few_dir: Path, option: str = "--fewshot") -> Path:
    """``few_dir`` when it is an ``earthembed fewshot`` output (results.csv with the few-shot columns); a
    ValueError saying what it is otherwise."""
    from earthembed.evaluate.tasks import RESULT_COLUMNS
    from earthembed.outputs import DIR_KINDS

    kind = output_kind(few_dir)
    if not few_dir.is_dir():
        raise ValueError(f"{few_dir}: {option} is not a directory; give an `earthembed fewshot` output directory")
    if kind not in (None, "fewshot"):
        raise ValueError(f"{few_dir}: {option} is an earthembed {DIR_KINDS[kind].what}, not a few-shot output "
                         "directory (`earthembed fewshot --out DIR`)")
    res_f = few_dir / "results.csv"
    try:
        head = pd.read_csv(res_f, nrows=5)
    except FileNotFoundError:
        raise ValueError(f"{few_dir}: {option} has no results.csv; it is not an `earthembed fewshot` output "
                         "directory (or that run did not finish)") from None
    except (OSError, ValueError) as e:
        raise ValueError(f"{res_f}: {option} results cannot be read ({e})") from None
    missing = [c for c in RESULT_COLUMNS if c not in head.columns]
    if missing or (head["task_kind"] == "segmentation").any():
        why = f"columns {missing} are missing" if missing else "it holds segment results"
        raise ValueError(f"{res_f}: {option} is not `earthembed fewshot` output ({why})")
    return few_dir


def _fewshot_section(few_dir: Path) -> str:
    from earthembed.evaluate.summary import budget_table, summarize

    res_f = few_dir / "results.csv"
    results = pd.read_csv(res_f)
    parts = ["<h2>Label efficiency</h2>"]
    png = few_dir / "label_efficiency.png"
    if png.exists():
        parts.append(_figure(png, "primary metric vs training chips, mean ± std over seeds"))
    s = summarize(results)
    parts.append("<h3>Full-label score and labels needed for 95% of it</h3>" + _table(s))
    for task in dict.fromkeys(results["task"]):
        parts.append(f"<h3>{html.escape(str(task))}: mean ± std by budget</h3>"
                     + _table(budget_table(results[results["task"] == task]).drop(columns="task")))
    return "".join(parts)


def _projection_section(embeddings: Path | ObjectPath, color_by: str | None, store: Any, tmp: Path) -> str:
    from earthembed.explore.projection import plot_embeddings

    png = plot_embeddings(embeddings, color_by or "split", tmp / "projection.png", store=store)
    return "<h2>Embedding space</h2>" + _figure(png, f"PCA of emb_fused of {embeddings.name}, coloured by "
                                                      f"{color_by or 'split'}")


def _prediction_section(pred: Path) -> str:
    from earthembed.data.chipgeo import read_chip_table
    from earthembed.evaluate.label_join import summarise

    df, meta = read_chip_table(pred)
    lines = [f"<h2>Predictions: {html.escape(str(meta.get('task')))}</h2><p>{html.escape(pred.name)}: "
             f"{meta.get('estimator')} ({html.escape(json.dumps(meta.get('estimator_extra', {}), default=str))}) "
             f"fitted on {meta.get('n_train')} labelled chips from {html.escape(str(meta.get('label_source')))}, "
             f"{meta.get('n_predicted')} chips predicted.</p>"]
    task = meta.get("task")
    if task in df.columns and meta.get("kind") == "classification":
        counts = df[task].value_counts().rename_axis("class").reset_index(name="chips")
        lines.append(_table(counts))
    if meta.get("label_report"):
        lines.append("<pre>" + html.escape("\n".join(summarise(meta["label_report"]))) + "</pre>")
    return "".join(lines)


def _map_section(maps: Sequence[Path], images: Sequence[tuple[Path, str, str]], tmp: Path) -> str:
    from earthembed.explore.maps import write_preview

    wide = [_figure(p, c, mime) for p, c, mime in images]  # e.g. prediction next to the truth: full width
    figs = []
    for k, m in enumerate(maps):
        png = write_preview(m, tmp / f"{m.stem}_{k}.png")
        figs.append(_figure(png, f"{m.name} (Cloud-Optimised GeoTIFF)"))
    return "<h2>Maps</h2>" + "".join(wide) + "<div class='grid'>" + "".join(figs) + "</div>"


def _hits_section(hits: Path) -> str:
    from earthembed.data.chipgeo import read_chip_table

    df, meta = read_chip_table(hits)
    q = (f"positives {', '.join(meta.get('positives') or [])}"
         + (f"; negatives {', '.join(meta['negatives'])}" if meta.get("negatives") else "")
         + (f"; point {meta['point']}" if meta.get("point") else ""))
    parts = [f"<h3>{html.escape(hits.name)}: {html.escape(q)} ({html.escape(str(meta.get('method')))})</h3>"]
    png = hits.with_suffix(".png")
    if png.exists():
        parts.append(_figure(png, "query chips and hits by rank (true colour)"))
    cols = [c for c in ("rank", "score", "chip_id", "split") if c in df.columns]
    extra = [c for c in df.columns if c not in cols and c not in ("geometry", "transform", "idx", "crs", "aoi",
                                                                   "model_id") and not c.startswith("present_")]
    parts.append(_table(df[cols + extra[:3]], max_rows=20))
    return "".join(parts)


def _change_section(path: Path, tmp: Path, k: int) -> str:
    """A change table: what was compared, the threshold, the score histogram, the top changed chips and (series
    methods) the scores over time of the top 5 chips."""
    from earthembed.explore.change import plot_change_series, plot_score_histogram, read_change

    df, meta = read_change(path)
    method, series = meta.get("method"), meta.get("series")
    span = f"{meta.get('from')} -> {meta.get('to')}" if not series else f"{len(meta.get('dates', []))} dates"
    parts = [f"<h3>{html.escape(path.name)}: {html.escape(str(method))} change of "
             f"{html.escape(str(meta.get('column')))} ({html.escape(span)})</h3>"
             f"<p>{meta.get('n_rows')} score(s) for {meta.get('n_chips')} of {meta.get('n_chips_input')} chips, model "
             f"{html.escape(str(meta.get('model_id')))}.</p>"]
    thr = meta.get("threshold")
    if thr:
        line = f"Threshold {thr['spec']}: score &gt; {thr['value']:.4g}, {thr['n_changed']} changed"
        if thr.get("kind") == "fitted":
            line += (f"; F1 {thr['f1']:.3f} (95% CI {thr['f1_ci'][0]:.3f}-{thr['f1_ci'][1]:.3f}) on "
                     f"{thr['n_labels']} labelled chips ({thr['n_changed']} changed), cut 95% CI "
                     f"{thr['threshold_ci'][0]:.4g}-{thr['threshold_ci'][1]:.4g}; {html.escape(thr.get('note', ''))}")
        parts.append(f"<p>{line}.</p>")
    else:
        parts.append("<p>No threshold (scores only; <code>earthembed change --threshold</code> adds one).</p>")
    if meta.get("notes"):
        parts.append("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in meta["notes"]) + "</ul>")
    hist = plot_score_histogram(df, meta, tmp / f"change_hist_{k}.png")
    parts.append(_figure(hist, f"{method} change scores" + (f" and the threshold ({thr['spec']})" if thr else "")))
    cols = [c for c in ("chip_id", *meta.get("date_columns", []), "score", "changed", "prob_changed", "split")
            if c in df.columns]
    parts.append("<h4>Top changed chips</h4>" + _table(df.sort_values("score", ascending=False)[cols], max_rows=20))
    if series:
        png = plot_change_series(df, meta, ["top:5"], tmp / f"change_series_{k}.png", own=True)
        parts.append(_figure(png, "scores over time of the 5 chips with the highest score"))
    return "".join(parts)


def write_report(
    out: str | Path,
    store: str | Path | None = None,
    fewshot: str | Path | None = None,
    embeddings: str | Path | None = None,
    color_by: str | None = None,
    predictions: Sequence[str | Path] = (),
    maps: Sequence[str | Path] = (),
    images: Sequence[tuple[str | Path, str]] = (),
    hits: Sequence[str | Path] = (),
    changes: Sequence[str | Path] = (),
    title: str = "earthembed report",
    notes: Sequence[str] = (),
    overwrite: bool = False,
) -> Path:
    """Write one self-contained HTML page with the parts given; returns its path (written atomically).

    Every input is checked first (``images`` are PNG/JPEG, ``fewshot`` is few-shot output); ``overwrite``:
    replace an earlier earthembed report at ``out`` (never any other file)."""
    from earthembed.data.store import ChipStore

    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"{out}: the report is an HTML page; give a .html path")
    inputs = [*predictions, *maps, *hits, *changes, *(i for i, _ in images),
              *(x for x in (fewshot, embeddings, store) if x)]
    check_output(out, "html", inputs, overwrite)
    for p in inputs:
        if not location(p).exists():  # a table or store may be on object storage
            raise FileNotFoundError(f"{location(p)}: not found (report input)")
    imgs = [(Path(p), c, image_type(p)) for p, c in images]
    if fewshot is not None:
        check_fewshot_dir(Path(fewshot))
    if changes:
        from earthembed.explore.change import is_change_table

        for c in changes:  # a table that is not one: named before the page is made
            if not is_change_table(c):
                raise ValueError(f"{c}: --change is not an earthembed change table (earthembed change --out ...)")
    st = ChipStore(store) if store is not None else None
    body = [f"<h1>{html.escape(title)}</h1><p class='meta'>written "
            f"{_dt.datetime.now(_dt.UTC).isoformat(timespec='seconds')} by earthembed</p>"]
    body += [f"<p>{html.escape(n)}</p>" for n in notes]
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        if st is not None:
            body.append(_store_section(st))
        if fewshot is not None:
            body.append(_fewshot_section(Path(fewshot)))
        if embeddings is not None:
            body.append(_projection_section(location(embeddings), color_by, st, tmp))
        for p in predictions:
            body.append(_prediction_section(Path(p)))
        if maps or imgs:
            body.append(_map_section([Path(m) for m in maps], imgs, tmp))
        if hits:
            body.append("<h2>Similarity search</h2>" + "".join(_hits_section(Path(h)) for h in hits))
        if changes:
            body.append("<h2>Change between dates</h2>"
                        + "".join(_change_section(Path(c), tmp, k) for k, c in enumerate(changes)))
        page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>{HTML_MARKER}"
                f"<title>{html.escape(title)}</title>"
                f"<meta name='viewport' content='width=device-width, initial-scale=1'><style>{_CSS}</style></head>"
                f"<body>{''.join(body)}<script>{_CHECK}</script></body></html>")
    with atomic_path(out, "html", overwrite) as tmp_out:
        tmp_out.write_text(page, encoding="utf-8")
    return out
