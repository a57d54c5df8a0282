"""Change between dates from per-date embeddings: scores per chip (and date), thresholds, accuracy, plots.

Input: per-date embedding tables (``earthembed embed --dates``): the usual embedding table plus ``t`` (date
index), ``date`` and ``date_key``, one row per (chip, date) with ``chip_id`` repeated across dates, metadata
``earthembed.time.mode == "per_date"``. Several tables (e.g. dates embedded separately) are read as one, and
must come from one model. A null embedding (the chip's imagery missing at that date) is a missing date.

Methods, all on unit-normalised embeddings (the annual-embedding-product conventions), distance = 1 - cosine:

* ``cosine`` (``--from D1 --to D2``): one score per chip, 1 - u(D1) . u(D2).
* ``zscore``: per chip and date, the distance d_i of the date to the mean of the chip's *other* dates, as a
  z-score against the distances of those other dates (mean and sample std of d_j, j != i): a location that
  always varies (crops, water levels) needs a larger distance to stand out. Needs >= 3 dates; the std is
  floored at :data:`ZSCORE_STD_FLOOR` so that a chip whose other dates are identical does not divide by ~0.
* ``loo-medoid``: per chip and date, the distance to the medoid of the chip's other dates (the date among them
  with the least summed distance to the rest): robust to one odd date among the others. Needs >= 2 dates.
* ``consecutive``: per chip and date step, the distance between consecutive available dates.

Everything is vectorised over chips: rows are sorted by (chip, date) once; per-chip sums are one sparse product /
``bincount``; medoids are computed for all chips with the same number of dates as one batched Gram matrix.
No Python loop runs per chip (1M (chip, date) rows of 128 dims: ``benchmarks/bench_change.py``).

Thresholds (``--threshold``): ``percentile:Q`` (score above the Q-th percentile), ``otsu`` (scikit-image's
``threshold_otsu`` when installed, else the same on a 256-bin numpy histogram), ``fixed:X`` and
``fitted:LABELS.csv`` (``chip_id[,date],changed`` with 0/1): the cut that maximises F1 on those chips, with a
bootstrap 95% CI of the cut and of its F1 (:func:`earthembed.evaluate.metrics.bootstrap_weights` resamples, in
sample: optimistic with few labels), plus a probability of change per row from the few-shot logistic
regression (:func:`earthembed.evaluate.estimators.fit_estimator`, C by CV) on the score. A row is ``changed``
when its score is above the threshold.

Output (GeoParquet, :func:`detect_change`): ``chip_id``, ``geometry``, ``crs``/``transform`` (when the store the
table was embedded from is known, so ``earthembed map`` needs no ``--store``), ``split``, then ``date_from``,
``date_to``, ``t_from``, ``t_to`` (two-date), ``date``, ``t`` (zscore, loo-medoid), ``date_from``, ``t_from``,
``date``, ``t`` (consecutive), ``score``, ``changed`` and ``prob_changed`` (fitted threshold). Metadata (key
``earthembed``): ``earthembed_output: "change"``, method, column, dates, model, threshold, what was skipped.
Output policy (:mod:`earthembed.outputs`): refused if it exists unless ``overwrite`` and it is an earthembed
change table; never an input; written atomically.

Bad input is one line: a table that is not per-date (or embeds a whole series as one vector), tables of
different models, a date no chip has (the dates are listed), a series of one date, a chip whose footprint or
CRS differs between dates (not the same place: mixed grids). Chips lacking a date the method needs are
skipped and counted by date, with examples (:attr:`ChangeResult.skipped`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from earthembed.outputs import OUTPUT_KEY, atomic_path, check_output

METHODS = ("cosine", "zscore", "loo-medoid", "consecutive")
SERIES_METHODS = ("zscore", "loo-medoid", "consecutive")
MIN_DATES = {"cosine": 2, "zscore": 3, "loo-medoid": 2, "consecutive": 2}
ZSCORE_STD_FLOOR = 1e-3
"""Smallest std of a chip's other distances in a z-score (cosine-distance units: below it is numerical noise)."""
CHUNK_ROWS = 1 << 16
MEDOID_CELLS = 1 << 24  # Gram entries per batch of chips with the same number of dates
N_BOOT = 200
KIND = "change"


# -- reading --------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Series:
    """Per-date unit embeddings sorted by (chip, date); per-chip columns (footprint, CRS) by chip."""

    chip_ids: np.ndarray  # [C] unique chip ids (str)
    starts: np.ndarray  # [C] first row of each chip
    counts: np.ndarray  # [C] dates of each chip
    chip: np.ndarray  # [N] chip of each row
    t: np.ndarray  # [N] date index of each row (into dates)
    U: np.ndarray  # [N, D] unit embeddings (float32)
    dates: list[str]  # date keys, ordered by date
    iso: list[str | None]  # the date of each key (ISO), None where unknown
    per_chip: dict[str, Any]  # pyarrow arrays [C]: geometry, split, crs, transform (those known)
    meta: dict[str, Any]
    notes: list[str]
    skipped: dict[str, Any]

    def match_date(self, value: str, option: str) -> int:
        """Index of the date named ``value`` (a date key or an ISO date); ValueError listing the dates."""
        for i, (k, d) in enumerate(zip(self.dates, self.iso, strict=True)):
            if value == k or (d is not None and value == d):
                return i
        raise ValueError(f"{option} {value}: no chip has this date; the table's dates are "
                         f"{', '.join(_label(k, d) for k, d in zip(self.dates, self.iso, strict=True))}")


def _label(key: str, iso: str | None) -> str:
    return key if iso in (None, key) else f"{key} ({iso})"


def _examples(ids: np.ndarray, k: int = 3) -> str:
    ids = [str(x) for x in ids[:k]]
    return ", ".join(ids) + (", ..." if len(ids) == k else "")


def _matrix(col: Any) -> tuple[np.ndarray, np.ndarray]:
    """([N, D] float32 with NaN rows for nulls, valid [N]) of a FixedSizeList column, one copy per chunk."""
    import pyarrow as pa

    from earthembed.embed.io import to_matrix

    if not pa.types.is_fixed_size_list(col.type):
        X = to_matrix(col)
        return X, ~np.isnan(X).all(axis=1)
    d = col.type.list_size
    n = len(col)
    X = np.empty((n, d), dtype=np.float32)
    valid = np.ones(n, dtype=bool)
    a = 0
    for ch in col.chunks:
        b = a + len(ch)
        flat = np.asarray(ch.flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
        if ch.null_count:
            ok = ~np.asarray(ch.is_null().to_numpy(zero_copy_only=False))
            valid[a:b] = ok
            X[a:b] = np.nan
            X[a:b][ok] = flat.reshape(-1, d) if len(flat) == int(ok.sum()) * d else flat.reshape(-1, d)[ok]
        else:
            X[a:b] = flat.reshape(-1, d)
        a = b
    return X, valid


def _check_finite(X: np.ndarray, valid: np.ndarray, ids: Any, what: str, column: str) -> None:
    """A NaN/Inf inside a non-null embedding is damage: error naming the table, column and chips."""
    from earthembed.explore.tables import check_finite

    with np.errstate(invalid="ignore", over="ignore"):
        bad = np.flatnonzero(valid & ~np.isfinite(X.sum(axis=1, dtype=np.float64)))
    if bad.size:
        check_finite(X[bad], np.asarray(ids)[bad], what, column)


def _read_one(path: Path, column: str) -> dict[str, Any]:
    import pyarrow as pa

    from earthembed.embed.io import read_schema, read_table
    from earthembed.explore.tables import table_path

    path = table_path(path)
    try:
        schema = read_schema(path)
    except (OSError, pa.ArrowException) as e:
        raise ValueError(f"{path}: --embeddings cannot be read as an embedding table ({e})") from None
    md = schema.metadata or {}
    meta = json.loads(md[b"earthembed"]) if b"earthembed" in md else None
    if meta is None:
        raise ValueError(f"{path}: --embeddings is not an earthembed embedding table (no 'earthembed' metadata)")
    mode = (meta.get("time") or {}).get("mode")
    if mode not in (None, "per_date"):
        raise ValueError(f"{path}: --embeddings embeds each chip's whole series as one vector (time mode {mode!r}); "
                         "change compares dates: embed with --dates (one row per chip and date)")
    if not {"t", "date_key", "chip_id"} <= set(schema.names):
        raise ValueError(f"{path}: --embeddings is not a per-date embedding table (no t/date_key columns: one row "
                         "per chip); embed each date with `earthembed embed --dates all ...`")
    emb = [n for n in schema.names if n.startswith("emb_")]
    if column not in emb:
        raise KeyError(f"{path}: no embedding column {column!r} (it has {emb})")
    want = ["chip_id", "t", "date_key", column, *(c for c in ("date", "geometry", "split", "model_id", "crs", "transform")
                                                  if c in schema.names)]
    table = read_table(path, columns=want)
    models = set(table.column("model_id").unique().to_pylist()) - {None} if "model_id" in want else set()
    if meta.get("model_id"):
        models.add(meta["model_id"])
    if len(models) > 1:
        raise ValueError(f"{path}: rows of {len(models)} models ({', '.join(sorted(map(str, models)))}); change "
                         "compares embeddings of one model")
    return {"path": path, "meta": meta, "table": table, "model": next(iter(models), None)}


def _dates_of(part: dict[str, Any]) -> pd.DataFrame:
    """(t, date_key, iso) of the dates of one table."""
    import pyarrow as pa
    import pyarrow.compute as pc

    tab = part["table"]
    cols = {"t": tab.column("t"), "key": tab.column("date_key")}
    if "date" in tab.column_names:
        cols["iso"] = pc.cast(tab.column("date"), pa.string())
    u = pa.table(cols).group_by(list(cols)).aggregate([]).to_pandas()
    if "iso" not in u:
        u["iso"] = None
    u["iso"] = u["iso"].astype(object).where(u["iso"].notna(), None)
    return u


def read_series(embeddings: str | Path | Sequence[str | Path], column: str = "emb_fused") -> Series:
    """Per-date tables (one or several, one model) as a :class:`Series`; see the module docstring for errors."""
    import pyarrow as pa
    import pyarrow.compute as pc

    paths = [Path(embeddings)] if isinstance(embeddings, str | Path) else [Path(p) for p in embeddings]
    if not paths:
        raise ValueError("--embeddings: give at least one per-date embedding table")
    parts = [_read_one(p, column) for p in paths]
    models = {str(p["path"]): p["model"] for p in parts if p["model"] is not None}
    if len(set(models.values())) > 1:
        desc = "; ".join(f"{k}: {v}" for k, v in models.items())
        raise ValueError(f"--embeddings: tables of different models ({desc}); change compares embeddings of one model "
                         "(embed every date with the same model)")
    dims = {str(p["path"]): p["table"].schema.field(column).type for p in parts}
    if len({str(v) for v in dims.values()}) > 1:
        raise ValueError(f"--embeddings: column {column!r} has different types/dims across tables ({dims})")
    # one date list over every table, ordered by date (then key): t of each table is re-indexed into it
    dparts = [_dates_of(p) for p in parts]
    alld = pd.concat(dparts, ignore_index=True)
    iso_of: dict[str, str | None] = {}
    for k, d in zip(alld["key"], alld["iso"], strict=True):
        k = str(k)
        if k in iso_of and d is not None and iso_of[k] not in (None, d):
            raise ValueError(f"--embeddings: date key {k!r} stands for {iso_of[k]} in one table and {d} in another")
        if iso_of.get(k) is None:
            iso_of[k] = d
    dates = sorted(iso_of, key=lambda k: (iso_of[k] is None, iso_of[k] or "", k))
    pos = {k: i for i, k in enumerate(dates)}
    chip_arrs, t_arrs, mats, valids, extra = [], [], [], [], {}
    keep_cols = ("geometry", "split", "crs", "transform")
    for p, dp in zip(parts, dparts, strict=True):
        tab = p["table"]
        keyed = dp.groupby("t")["key"].nunique()
        if (keyed > 1).any():
            raise ValueError(f"{p['path']}: date index t={int(keyed.index[keyed > 1][0])} has several date keys")
        remap = np.full(int(dp["t"].max()) + 1 if len(dp) else 1, -1, dtype=np.int64)
        remap[dp["t"].to_numpy(np.int64)] = [pos[str(k)] for k in dp["key"]]
        t_arrs.append(remap[tab.column("t").to_numpy().astype(np.int64)])
        chip_arrs.append(pc.cast(tab.column("chip_id"), pa.string()).combine_chunks())
        X, ok = _matrix(tab.column(column))
        _check_finite(X, ok, chip_arrs[-1].to_numpy(zero_copy_only=False), str(p["path"]), column)
        mats.append(X)
        valids.append(ok)
        for c in keep_cols:
            if c in tab.column_names:
                extra.setdefault(c, []).append(tab.column(c).combine_chunks())
        p["table"] = tab = None  # free the Arrow copy of the embeddings
    t = np.concatenate(t_arrs)
    ids_arr = pa.concat_arrays(chip_arrs) if len(chip_arrs) > 1 else chip_arrs[0]
    X = np.concatenate(mats) if len(mats) > 1 else mats[0]
    ok = np.concatenate(valids)
    del mats
    enc = ids_arr.dictionary_encode()
    codes = enc.indices.to_numpy().astype(np.int64)
    chip_ids = np.asarray(enc.dictionary.to_numpy(zero_copy_only=False), dtype=object)
    skipped: dict[str, Any] = {}
    notes: list[str] = []
    # a chip's rows must be one place: footprint (and CRS) equal at every date
    per_row = {c: (pa.concat_arrays(v) if len(v) > 1 else v[0]) for c, v in extra.items() if len(v) == len(parts)}
    norms = np.sqrt(_rowdot(X)) if len(X) else np.zeros(0)
    null_rows = ~ok
    zero_rows = ok & ~(norms > 0)
    if zero_rows.any():
        notes.append(f"{int(zero_rows.sum())} all-zero embeddings treated as missing (chips "
                     f"{_examples(chip_ids[codes[zero_rows]])})")
    use = ok & (norms > 0)
    if null_rows.any():
        skipped["null_embedding"] = int(null_rows.sum())
        notes.append(f"{int(null_rows.sum())} (chip, date) rows with a null {column} (imagery missing) left out")
    key = codes * len(dates) + t
    order = np.argsort(key, kind="stable")
    order = order[use[order]]
    ks = key[order]
    dup = np.flatnonzero(ks[1:] == ks[:-1])
    if dup.size:
        r = order[dup[0]]
        raise ValueError(f"--embeddings: chip {chip_ids[codes[r]]} has more than one row for date {dates[t[r]]} "
                         f"({dup.size} duplicated (chip, date) row(s) in all); give each date of a chip once")
    chip_sorted = codes[order]
    first = np.r_[True, chip_sorted[1:] != chip_sorted[:-1]] if len(order) else np.zeros(0, dtype=bool)
    starts = np.flatnonzero(first)
    counts = np.diff(np.r_[starts, len(order)])
    present_codes = chip_sorted[starts]
    new_code = np.full(len(chip_ids), -1, dtype=np.int64)
    new_code[present_codes] = np.arange(len(present_codes))
    chip = new_code[chip_sorted]
    for c in ("geometry", "crs"):
        if c in per_row:
            _check_same_place(per_row[c], order, chip, starts, chip_ids[present_codes], dates, t[order], c)
    per_chip = {c: a.take(pa.array(order[starts])) for c, a in per_row.items()}
    U = X[order]
    del X
    U /= norms[order].astype(np.float32)[:, None]
    meta = {**parts[0]["meta"]}
    meta = {k: meta[k] for k in ("model_id", "store", "chip_size", "model_path", "dims", "time") if k in meta}
    meta["model_id"] = next(iter(models.values()), meta.get("model_id"))
    meta["embeddings"] = [str(p["path"].resolve()) for p in parts]
    return Series(np.asarray(chip_ids[present_codes], dtype=str), starts, counts, chip, t[order].astype(np.int64), U,
                  dates, [iso_of[k] for k in dates], per_chip, meta, notes, skipped)


def _check_same_place(arr: Any, order: np.ndarray, chip: np.ndarray, starts: np.ndarray, ids: np.ndarray,
                      dates: list[str], t: np.ndarray, what: str) -> None:
    """A chip's ``what`` (geometry WKB, CRS) must be the same at every date: error naming the first that is not."""
    import pyarrow as pa

    v = np.asarray(arr.take(pa.array(order)).to_numpy(zero_copy_only=False), dtype=object)
    ref = v[starts][chip]
    diff = np.flatnonzero(ref != v)
    if diff.size:
        r = diff[0]
        c = chip[r]
        name = "footprint (geometry)" if what == "geometry" else "CRS"
        raise ValueError(
            f"--embeddings: chip {ids[c]} has another {name} at {dates[t[r]]} than at {dates[t[starts[c]]]} "
            f"({len(np.unique(chip[diff]))} chip(s) differ): not the same place at every date (mixed grids or "
            "CRSs); embed every date on one grid (ingest the dates together)"
        )


# -- scores ---------------------------------------------------------------------------------------------------
def _rowdot(A: np.ndarray, B: np.ndarray | None = None, ia: np.ndarray | None = None, ib: np.ndarray | None = None
            ) -> np.ndarray:
    """sum(A[ia] * B[ib], axis=1) as float64, in chunks: the gathered rows are never materialised whole."""
    B = A if B is None else B
    n = len(ia) if ia is not None else len(ib) if ib is not None else len(A)
    out = np.empty(n, dtype=np.float64)
    for a in range(0, n, CHUNK_ROWS):
        b = min(n, a + CHUNK_ROWS)
        x = A[ia[a:b]] if ia is not None else A[a:b]
        y = B[ib[a:b]] if ib is not None else B[a:b]
        out[a:b] = np.einsum("nd,nd->n", x, y)  # float32 sums of D products: ~1e-7 relative, 5x faster
    return out


def chip_sums(U: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """[C, D] sums of the rows of each chip (rows sorted by chip, chip c from ``starts[c]``): one sparse
    product (``np.add.reduceat`` over rows took 2.5 s for 1M x 128, this 0.14 s)."""
    import scipy.sparse as sp

    n = len(U)
    M = sp.csr_matrix((np.ones(n, U.dtype), np.arange(n), np.r_[starts, n]), shape=(len(starts), n))
    return np.asarray(M @ U)


def _missing_report(s: Series, need: Sequence[int], skipped: dict[str, Any], notes: list[str]) -> np.ndarray:
    """Chips lacking any of the date indices ``need``: counted and named per date; returns has-all [C]."""
    has_all = np.ones(len(s.chip_ids), dtype=bool)
    for ti in need:
        has = np.zeros(len(s.chip_ids), dtype=bool)
        has[s.chip[s.t == ti]] = True
        if not has.any():
            raise ValueError(f"date {s.dates[ti]}: no chip has an embedding at this date")
        miss = ~has
        if miss.any():
            skipped.setdefault("missing_date", {})[s.dates[ti]] = int(miss.sum())
            notes.append(f"{int(miss.sum())} chip(s) lack {_label(s.dates[ti], s.iso[ti])} (skipped): "
                         f"{_examples(s.chip_ids[miss])}")
        has_all &= has
    return has_all


def two_date_scores(s: Series, t_from: int, t_to: int, skipped: dict[str, Any], notes: list[str]
                    ) -> dict[str, np.ndarray]:
    """1 - u(from) . u(to) per chip having both dates."""
    if t_from == t_to:
        raise ValueError(f"--from and --to are the same date ({s.dates[t_from]})")
    has = _missing_report(s, [t_from, t_to], skipped, notes)
    pos = {}
    for ti in (t_from, t_to):
        p = np.full(len(s.chip_ids), -1, dtype=np.int64)
        rows = np.flatnonzero(s.t == ti)
        p[s.chip[rows]] = rows
        pos[ti] = p
    chips = np.flatnonzero(has)
    if not len(chips):
        raise ValueError(f"no chip has both {s.dates[t_from]} and {s.dates[t_to]}")
    score = 1.0 - _rowdot(s.U, ia=pos[t_from][chips], ib=pos[t_to][chips])
    n = len(chips)
    return {"chip": chips, "t_from": np.full(n, t_from), "t_to": np.full(n, t_to), "score": score}


def _enough_dates(s: Series, method: str, skipped: dict[str, Any], notes: list[str]) -> np.ndarray:
    """Rows of chips with at least MIN_DATES[method] dates; fewer: skipped and counted."""
    need = MIN_DATES[method]
    if len(s.dates) < need:
        what = "one date" if len(s.dates) == 1 else f"{len(s.dates)} dates"
        raise ValueError(f"the table holds {what} ({', '.join(s.dates)}); {method} needs a series of at least "
                         f"{need} dates")
    few = s.counts < need
    total = len(s.dates)
    lacking = s.counts < total
    if lacking.any():
        present = np.bincount(s.t, minlength=total)
        by_date = {s.dates[i]: int(len(s.chip_ids) - present[i]) for i in range(total) if present[i] < len(s.chip_ids)}
        skipped["dates_missing"] = by_date
        notes.append(f"{int(lacking.sum())} chip(s) lack some of the {total} dates (scored on the dates they have): "
                     + ", ".join(f"{k}: {v} chip(s)" for k, v in by_date.items()))
    if few.any():
        skipped["too_few_dates"] = int(few.sum())
        notes.append(f"{int(few.sum())} chip(s) with fewer than {need} dates skipped: {_examples(s.chip_ids[few])}")
    if few.all():
        raise ValueError(f"no chip has the {need} dates {method} needs (most dates of a chip: {int(s.counts.max())})")
    return ~few[s.chip]


def zscore_scores(s: Series, keep: np.ndarray) -> dict[str, np.ndarray]:
    """Leave-one-out z-score of each date's distance to the mean of the chip's other dates."""
    C = len(s.chip_ids)
    S = chip_sums(s.U, s.starts)
    S2 = np.einsum("cd,cd->c", S, S).astype(np.float64)
    uS = _rowdot(s.U, S, ib=s.chip)
    n = s.counts[s.chip].astype(np.float64)
    # u . (S - u) / |S - u|, with |u| = 1
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = (uS - 1.0) / np.sqrt(np.maximum(S2[s.chip] - 2.0 * uS + 1.0, 0.0))
    d = 1.0 - np.clip(cos, -1.0, 1.0)
    d = np.where(np.isfinite(d), d, 0.0)
    Sd = np.bincount(s.chip, d, minlength=C)[s.chip]
    Sd2 = np.bincount(s.chip, d * d, minlength=C)[s.chip]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_o = (Sd - d) / (n - 1)
        var_o = ((Sd2 - d * d) - (n - 1) * mean_o**2) / (n - 2)
        z = (d - mean_o) / np.maximum(np.sqrt(np.maximum(var_o, 0.0)), ZSCORE_STD_FLOOR)
    rows = np.flatnonzero(keep)
    return {"chip": s.chip[rows], "t": s.t[rows], "score": z[rows], "distance": d[rows]}


def medoid_scores(s: Series, keep: np.ndarray) -> dict[str, np.ndarray]:
    """Distance of each date to the medoid of the chip's other dates; chips batched by their number of dates."""
    score = np.full(len(s.U), np.nan)
    ok_chips = keep[s.starts]
    for n in np.unique(s.counts[ok_chips]):
        chips = np.flatnonzero(ok_chips & (s.counts == n))
        step = max(1, MEDOID_CELLS // (n * n))
        ar = np.arange(n)
        for a in range(0, len(chips), step):
            rows = s.starts[chips[a:a + step]][:, None] + ar  # [c, n]
            V = s.U[rows]  # [c, n, D]
            G = np.matmul(V, V.transpose(0, 2, 1)).astype(np.float64)
            Dm = 1.0 - (G + G.transpose(0, 2, 1)) / 2  # [c, n, n] cosine distances, exactly symmetric
            Dm[:, ar, ar] = 0.0  # so that ties (two other dates) are exact and go to the earlier date
            rowsum = Dm.sum(axis=2)  # [c, n]: summed distance of date j to all dates
            # cost of j as medoid of the dates other than i: rowsum_j - D[j, i]; j = i is not a candidate
            M = rowsum[:, None, :] - Dm
            M[:, ar, ar] = np.inf
            med = M.argmin(axis=2)  # [c, n]
            score[rows] = np.take_along_axis(Dm, med[..., None], axis=2)[..., 0]
    rows = np.flatnonzero(keep)
    return {"chip": s.chip[rows], "t": s.t[rows], "score": np.maximum(score[rows], 0.0)}


def consecutive_scores(s: Series, keep: np.ndarray) -> dict[str, np.ndarray]:
    """1 - u(previous date) . u(date) for every step between consecutive dates of a chip."""
    i = np.flatnonzero((s.chip[1:] == s.chip[:-1]) & keep[1:]) + 1
    return {"chip": s.chip[i], "t_from": s.t[i - 1], "t": s.t[i], "score": 1.0 - _rowdot(s.U, ia=i - 1, ib=i)}


# -- thresholds -----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Threshold:
    """A threshold and how it was chosen (``info``: percentile, labels, F1, CIs, ...)."""

    spec: str
    kind: str
    value: float
    info: dict[str, Any]
    prob: np.ndarray | None = None  # fitted: P(changed | score) per scored row


def otsu(scores: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold (scikit-image's when installed, else the same on a numpy histogram)."""
    x = scores[np.isfinite(scores)]
    if len(x) < 2 or x.min() == x.max():
        raise ValueError("--threshold otsu: the scores are constant; nothing to separate")
    try:
        from skimage.filters import threshold_otsu
    except ImportError:
        hist, edges = np.histogram(x, bins=bins)
        centers = (edges[:-1] + edges[1:]) / 2
        h = hist.astype(np.float64)
        w1 = np.cumsum(h)[:-1]  # below-or-at each candidate centre
        s1 = np.cumsum(h * centers)[:-1]
        w2 = h.sum() - w1
        with np.errstate(invalid="ignore", divide="ignore"):
            between = w1 * w2 * (s1 / w1 - (np.dot(h, centers) - s1) / w2) ** 2
        return float(centers[:-1][np.nanargmax(between)])
    return float(threshold_otsu(x, nbins=bins))


def parse_threshold(spec: str) -> tuple[str, str]:
    """``percentile:Q`` | ``otsu`` | ``fixed:X`` | ``fitted:LABELS.csv`` -> (kind, argument)."""
    kind, _, arg = spec.partition(":")
    kind = kind.strip().lower()
    if kind not in ("percentile", "otsu", "fixed", "fitted") or (kind != "otsu" and not arg) or (kind == "otsu" and arg):
        raise ValueError(f"--threshold {spec!r}: expected percentile:Q (0-100), otsu, fixed:X or fitted:LABELS.csv")
    if kind in ("percentile", "fixed"):
        try:
            v = float(arg)
        except ValueError:
            raise ValueError(f"--threshold {spec!r}: {arg!r} is not a number") from None
        if not np.isfinite(v) or (kind == "percentile" and not 0 <= v <= 100):
            raise ValueError(f"--threshold {spec!r}: {'a percentile is in [0, 100]' if kind == 'percentile' else 'not finite'}")
    return kind, arg


def read_change_labels(path: str | Path) -> pd.DataFrame:
    """``chip_id[,date],changed`` (0/1, true/false) as a DataFrame; ValueError naming the file otherwise."""
    path = Path(path)
    try:
        df = pd.read_csv(path, dtype={"chip_id": str, "date": str})
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: change labels not found") from None
    except (OSError, ValueError, pd.errors.ParserError) as e:
        raise ValueError(f"{path}: cannot read change labels as CSV ({e})") from None
    missing = [c for c in ("chip_id", "changed") if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: change labels need columns chip_id[,date],changed (missing {missing}; it has "
                         f"{list(df.columns)})")
    v = df["changed"].astype(str).str.strip().str.lower().map({"1": 1, "0": 0, "true": 1, "false": 0,
                                                                "1.0": 1, "0.0": 0, "yes": 1, "no": 0})
    if v.isna().any():
        bad = df["changed"][v.isna()].iloc[0]
        raise ValueError(f"{path}: 'changed' must be 0/1 ({int(v.isna().sum())} other value(s), e.g. {bad!r})")
    df["changed"] = v.astype(np.int64)
    df["chip_id"] = df["chip_id"].astype(str)
    return df


def _f1_cuts(s_sorted: np.ndarray, y_sorted: np.ndarray, W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """F1 [B, n] of "top k by score are changed" for k = 1..n under resampling weights W [B, n] (columns in
    score order), and whether each cut lies between two distinct scores [n]."""
    tp = np.cumsum(W * y_sorted, axis=1)
    k = np.cumsum(W, axis=1)
    P = tp[:, -1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(P + k > 0, 2 * tp / (P + k), 0.0)
    valid = np.r_[s_sorted[:-1] > s_sorted[1:], True]
    return f1, valid


def fit_threshold(scores: np.ndarray, y: np.ndarray, all_scores: np.ndarray, n_boot: int = N_BOOT, seed: int = 0
                  ) -> tuple[float, dict[str, Any], np.ndarray]:
    """The score cut maximising F1 on labelled rows (``scores``, ``y``), its bootstrap CI and that of its F1, and
    P(changed | score) for ``all_scores`` from the few-shot logistic regression."""
    from earthembed.evaluate.estimators import fit_estimator
    from earthembed.evaluate.metrics import bootstrap_ci, bootstrap_weights

    order = np.argsort(-scores, kind="stable")
    ss, ys = scores[order], y[order].astype(np.float64)
    f1, valid = _f1_cuts(ss, ys, np.ones((1, len(ss))))
    k = int(np.argmax(np.where(valid, f1[0], -1.0)))
    cut = lambda j: float((ss[j] + ss[j + 1]) / 2) if j + 1 < len(ss) else float(np.nextafter(ss[-1], -np.inf))  # noqa: E731
    thr = cut(k)
    thr_b, f1_b = [], []
    for W in bootstrap_weights(len(ss), n_boot, seed):
        Wo = W[:, order]
        fb, _ = _f1_cuts(ss, ys, Wo)
        kb = np.argmax(np.where(valid, fb, -1.0), axis=1)
        thr_b.append([cut(int(j)) for j in kb])
        f1_b.append(fb[:, k])
    thr_b = np.concatenate(thr_b) if thr_b else np.empty(0)
    f1_b = np.concatenate(f1_b) if f1_b else np.empty(0)
    fitted = fit_estimator("logreg", "classification", scores[:, None], y.astype(np.int64), seed=seed,
                           X_ref=all_scores[np.isfinite(all_scores)][:, None])
    proba = np.full(len(all_scores), np.nan)
    fin = np.isfinite(all_scores)
    pc = fitted.model.predict_proba(all_scores[fin][:, None])
    cls = list(np.asarray(fitted.model.classes_).astype(int))
    proba[fin] = pc[:, cls.index(1)] if 1 in cls else 0.0
    info = {"f1": float(f1[0, k]), "f1_ci": list(bootstrap_ci(f1_b)), "threshold_ci": list(bootstrap_ci(thr_b)),
            "n_boot": n_boot, "n_labels": int(len(y)), "n_changed": int(y.sum()),
            "logreg": {k2: v for k2, v in fitted.extra.items()}, "note": "F1 and CIs on the labels the cut was fitted to "
            "(in sample: optimistic)"}
    return thr, info, proba


def _label_rows(res: pd.DataFrame, labels: pd.DataFrame, series: bool, where: str,
                notes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(score, label) of the labelled rows of the change rows ``res`` (chip-level: a chip's highest score)."""
    by_date = series and "date" in labels.columns and labels["date"].notna().all()
    if by_date:
        key = res["chip_id"].astype(str) + "\x00" + res["date"].astype(str)
        lab_key = labels["chip_id"] + "\x00" + labels["date"].astype(str)
        sc = pd.Series(res["score"].to_numpy(), index=key.to_numpy())
    else:
        if series:
            notes.append(f"{where}: labels without a date are matched to each chip's highest score")
        sc = res.groupby("chip_id", sort=False)["score"].max()
        lab_key = labels["chip_id"]
    found = lab_key.isin(sc.index).to_numpy()
    if not found.any():
        raise ValueError(f"{where}: none of the {len(labels)} labelled chips{'/dates' if by_date else ''} was scored "
                         f"(e.g. {lab_key.iloc[0]!r}); are they from this table?")
    if not found.all():
        notes.append(f"{where}: {int((~found).sum())} label(s) match no scored chip{'/date' if by_date else ''} "
                     f"(not used): {_examples(lab_key[~found].to_numpy())}")
    y = labels["changed"].to_numpy()[found]
    if len(np.unique(y)) < 2:
        raise ValueError(f"{where}: the labels used are all {'changed' if y[0] else 'unchanged'}; a fitted threshold "
                         "needs both changed and unchanged chips")
    return sc.loc[lab_key[found].to_numpy()].to_numpy(np.float64), y


def choose_threshold(spec: str, res: pd.DataFrame, series: bool, notes: list[str], n_boot: int = N_BOOT,
                     seed: int = 0) -> Threshold:
    kind, arg = parse_threshold(spec)
    scores = res["score"].to_numpy(np.float64)
    fin = scores[np.isfinite(scores)]
    if not len(fin):
        raise ValueError("no finite change score to threshold")
    if kind == "percentile":
        return Threshold(spec, kind, float(np.percentile(fin, float(arg))), {"percentile": float(arg)})
    if kind == "fixed":
        return Threshold(spec, kind, float(arg), {})
    if kind == "otsu":
        return Threshold(spec, kind, otsu(fin), {})
    labels = read_change_labels(arg)
    s, y = _label_rows(res, labels, series, arg, notes)
    thr, info, proba = fit_threshold(s, y, scores, n_boot=n_boot, seed=seed)
    info["labels"] = str(Path(arg).resolve())
    return Threshold(spec, kind, thr, info, proba)


# -- the command ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class ChangeResult:
    path: Path
    meta: dict[str, Any]
    table: pd.DataFrame  # without geometry
    notes: list[str]
    plot: Path | None = None

    @property
    def skipped(self) -> dict[str, Any]:
        return self.meta["skipped"]


def change_scores(s: Series, method: str | None = None, date_from: str | None = None, date_to: str | None = None
                  ) -> tuple[str, pd.DataFrame, dict[str, Any], list[str]]:
    """(method, rows: chip_id, date columns, t columns, score; skipped; notes) of a :class:`Series`."""
    if (date_from is None) != (date_to is None):
        raise ValueError("give both --from and --to (two dates), or a series --method without them")
    if date_from is not None:
        if method not in (None, "cosine"):
            raise ValueError(f"--method {method} scores every date of a series; drop --from/--to (or use --method "
                             "cosine with them)")
        method = "cosine"
    if method is None:
        raise ValueError("give --from D1 --to D2 (cosine between two dates) or --method zscore|loo-medoid|consecutive")
    if method not in METHODS:
        raise ValueError(f"--method {method!r}: choose from {', '.join(METHODS)}")
    if method == "cosine" and date_from is None:
        raise ValueError("--method cosine compares two dates: give --from D1 --to D2")
    skipped, notes = dict(s.skipped), list(s.notes)
    if method == "cosine":
        if len(s.dates) < 2:
            raise ValueError(f"the table holds one date ({s.dates[0]}); change needs at least two")
        a, b = s.match_date(str(date_from), "--from"), s.match_date(str(date_to), "--to")
        r = two_date_scores(s, a, b, skipped, notes)
    else:
        keep = _enough_dates(s, method, skipped, notes)
        r = {"zscore": zscore_scores, "loo-medoid": medoid_scores, "consecutive": consecutive_scores}[method](s, keep)
    dates = np.asarray(s.dates, dtype=object)
    cols: dict[str, Any] = {"chip_id": s.chip_ids[r["chip"]]}
    for tk, dk in (("t_from", "date_from"), ("t_to", "date_to"), ("t", "date")):
        if tk in r:
            cols[dk] = dates[r[tk]]
    for tk in ("t_from", "t_to", "t"):
        if tk in r:
            cols[tk] = r[tk].astype(np.int16)
    cols["score"] = r["score"].astype(np.float64)
    if "distance" in r:
        cols["distance"] = r["distance"]
    df = pd.DataFrame(cols)
    df["_chip"] = r["chip"]
    return method, df, skipped, notes


def _write_table(df: pd.DataFrame, per_chip: dict[str, Any], path: Path, meta: dict[str, Any]) -> None:
    """GeoParquet (as :func:`earthembed.data.chipgeo.write_chip_table` writes it) built in Arrow directly: the
    per-chip geometry/CRS/transform are gathered, never decoded."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pyproj import CRS

    take = pa.array(df["_chip"].to_numpy())
    arrays: dict[str, Any] = {"chip_id": pa.array(df["chip_id"].to_numpy(), pa.string())}
    for c in ("crs", "transform", "split"):
        if c in per_chip:
            arrays[c] = per_chip[c].take(take)
    for c in df.columns:
        if c not in arrays and c != "_chip":
            arrays[c] = pa.array(df[c].to_numpy())
    md: dict[bytes, bytes] = {}
    if "geometry" in per_chip:
        arrays["geometry"] = per_chip["geometry"].take(take)
        md[b"geo"] = json.dumps({"version": "1.1.0", "primary_column": "geometry", "columns": {"geometry": {
            "encoding": "WKB", "geometry_types": [], "crs": CRS.from_epsg(4326).to_json_dict()}}}).encode()
    from earthembed.outputs import dumps

    md[b"earthembed"] = dumps(meta, indent=None, where=path).encode()
    pq.write_table(pa.table(arrays).replace_schema_metadata(md), path)


def _store_frames(s: Series) -> None:
    """Add per-chip ``crs``/``transform`` (and ``geometry`` when the table has none) from the store the table was
    embedded from, when it still exists, so maps need no --store; a chip missing there leaves them out."""
    import pyarrow as pa

    store = s.meta.get("store")
    if not store or not Path(store).exists() or {"crs", "transform"} <= s.per_chip.keys():
        return
    from earthembed.data.store import ChipStore

    try:
        idx = ChipStore(store).index
    except Exception:  # noqa: BLE001 - a moved or damaged store only costs the map its --store shortcut
        return
    pos = pd.Index(idx["chip_id"].astype(str)).get_indexer(s.chip_ids)
    if (pos < 0).any():
        return
    import shapely

    for c in ("crs", "transform", "geometry"):
        if c in idx.columns and c not in s.per_chip:
            v = idx[c].to_numpy()[pos]
            if c == "geometry":
                s.per_chip[c] = pa.array(shapely.to_wkb(v), pa.binary())
            elif c == "transform":
                s.per_chip[c] = pa.array([None if x is None else list(map(float, x)) for x in v], pa.list_(pa.float64()))
            else:
                s.per_chip[c] = pa.array([None if x is None else str(x) for x in v], pa.string())


def detect_change(
    embeddings: str | Path | Sequence[str | Path],
    out: str | Path,
    column: str = "emb_fused",
    method: str | None = None,
    date_from: str | None = None,
    date_to: str | None = None,
    threshold: str | None = None,
    plot: Sequence[str] = (),
    overwrite: bool = False,
    truth: str | Path | None = None,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> ChangeResult:
    """Score change in per-date embeddings and write the change table ``out`` (see the module docstring).

    ``plot``: chip ids (or ``top:K``, the K highest-scoring chips) whose scores over time are drawn into
    ``out`` with ``.png`` (series methods). ``truth``: a store with ``change_t<k>`` columns: the accuracy
    (:func:`change_accuracy`) goes into the metadata (``accuracy``). ``overwrite``: replace an earlier earthembed
    change table (and plot)."""
    paths = [Path(embeddings)] if isinstance(embeddings, str | Path) else [Path(p) for p in embeddings]
    out = Path(out)
    if out.suffix.lower() not in (".parquet", ".geoparquet"):
        raise ValueError(f"{out}: the change table is GeoParquet; give a .parquet path")
    labels = threshold.partition(":")[2] if threshold and threshold.strip().lower().startswith("fitted") else None
    if threshold:
        parse_threshold(threshold)
    check_output(out, KIND, [*paths, labels, truth], overwrite)
    png = out.with_suffix(".png") if plot else None
    if png is not None:
        check_output(png, "png", [*paths, labels, truth], overwrite, option="the .png plot beside --out")
    if labels is not None and not Path(labels).exists():
        raise FileNotFoundError(f"{labels}: change labels not found (--threshold fitted:LABELS.csv)")
    s = read_series(paths, column)
    method, res, skipped, notes = change_scores(s, method, date_from, date_to)
    series = method in SERIES_METHODS
    if plot and not series:
        raise ValueError("--plot draws a chip's scores over its dates: use a series --method (zscore, loo-medoid, "
                         "consecutive)")
    thr = None
    if threshold:
        thr = choose_threshold(threshold, res, series, notes, n_boot=n_boot, seed=seed)
        res["changed"] = res["score"].to_numpy() > thr.value
        if thr.prob is not None:
            res["prob_changed"] = thr.prob
    _store_frames(s)
    if "crs" in s.per_chip:
        crs = pd.Series(s.per_chip["crs"].to_numpy(zero_copy_only=False)).value_counts()
        if len(crs) > 1:
            notes.append(f"chips in {len(crs)} CRSs ({', '.join(f'{c}: {n}' for c, n in crs.items())}): scored alike; "
                         "`earthembed map` writes one COG per CRS (or --crs for one grid)")
    date_cols = ["date_from", "date_to"] if method == "cosine" else (["date_from", "date"] if method == "consecutive"
                                                                     else ["date"])
    meta = {
        OUTPUT_KEY: KIND, "method": method, "column": column, **s.meta,
        "dates": [{"t": i, "date_key": k, "date": d} for i, (k, d) in enumerate(zip(s.dates, s.iso, strict=True))],
        "date_columns": date_cols, "series": series,
        "from": s.dates[int(res["t_from"].iloc[0])] if method == "cosine" else None,
        "to": s.dates[int(res["t_to"].iloc[0])] if method == "cosine" else None,
        "n_chips": int(res["_chip"].nunique()), "n_rows": int(len(res)), "n_chips_input": int(len(s.chip_ids)),
        "threshold": None if thr is None else {"spec": thr.spec, "kind": thr.kind, "value": thr.value,
                                               "n_changed": int(res["changed"].sum()), **thr.info},
        "skipped": skipped, "notes": notes,
        **({"zscore_std_floor": ZSCORE_STD_FLOOR} if method == "zscore" else {}),
    }
    if truth is not None:
        acc = change_accuracy(res, truth, meta)
        meta["accuracy"] = {"truth": str(Path(truth).resolve()), "levels": acc.drop(columns=["method", "column"])
                            .astype(object).where(acc.notna(), None).to_dict("records")}
    with atomic_path(out, KIND, overwrite) as tmp:
        _write_table(res, s.per_chip, tmp, meta)
    table = res.drop(columns="_chip")
    plotted = None
    if png is not None:
        plotted = plot_change_series(table, meta, plot, png, overwrite=overwrite)
    return ChangeResult(out, meta, table, notes, plotted)


# -- reading results back -------------------------------------------------------------------------------------
def is_change_table(path: str | Path) -> bool:
    from earthembed.outputs import _parquet_meta

    p = Path(path)
    if not p.is_file():
        return False
    meta = _parquet_meta(p)
    return meta is not None and meta.get(OUTPUT_KEY) == KIND


def read_change(path: str | Path, geometry: bool = False) -> tuple[pd.DataFrame, dict[str, Any]]:
    """(DataFrame, metadata) of a change table; ValueError when ``path`` is not one."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: change table not found")
    if not is_change_table(path):
        raise ValueError(f"{path}: not an earthembed change table (`earthembed change ... --out CHANGE.parquet`)")
    if geometry:
        from earthembed.data.chipgeo import read_chip_table

        return read_chip_table(path)
    names = [n for n in pq.read_schema(path).names if n not in ("geometry", "transform")]
    t = pq.read_table(path, columns=names)
    return t.to_pandas(), json.loads(t.schema.metadata[b"earthembed"])


def peak_per_chip(df: pd.DataFrame, meta: dict[str, Any], date: str | None = None) -> pd.DataFrame:
    """One row per chip: the row of ``date`` (a date key or ISO date; series tables), else each chip's highest
    score (its date in ``date``). Two-date tables are one row per chip already."""
    if not meta.get("series"):
        if date is not None:
            raise ValueError(f"--date {date}: a two-date change table ({meta.get('from')} -> {meta.get('to')}) has one "
                             "score per chip; --date picks a date of a series table")
        return df
    if date is not None:
        keys = {d["date_key"]: d["date_key"] for d in meta.get("dates", [])}
        keys.update({d["date"]: d["date_key"] for d in meta.get("dates", []) if d.get("date")})
        if date not in keys:
            raise ValueError(f"--date {date}: not a date of the change table (dates: "
                             f"{', '.join(d['date_key'] for d in meta.get('dates', []))})")
        sub = df[df["date"] == keys[date]]
        if not len(sub):
            raise ValueError(f"--date {date}: no chip has a score at this date ({meta.get('method')} scores "
                             f"{'steps to a date' if meta.get('method') == 'consecutive' else 'each date'})")
        return sub
    best = df["score"].fillna(-np.inf).groupby(df["chip_id"], sort=False).idxmax()
    return df.loc[best.to_numpy()]


# -- accuracy -------------------------------------------------------------------------------------------------
def _truth_frame(truth: Any) -> pd.DataFrame:
    if isinstance(truth, pd.DataFrame):
        return truth
    from earthembed.data.store import ChipStore

    st = truth if isinstance(truth, ChipStore) else ChipStore(truth)
    return st.index


def change_accuracy(change: str | Path | pd.DataFrame, truth: Any, meta: dict[str, Any] | None = None
                    ) -> pd.DataFrame:
    """F1 (of ``changed``, when thresholded) and ROC AUC (of ``score``) against truth columns ``change_t<k>``
    (bool: a change happened between date k-1 and date k) of a store index or DataFrame with ``chip_id``.

    Levels: ``chip`` (a chip changed in the scored interval vs its highest score / any ``changed``; for a
    two-date table the interval is (from, to]) and, for series tables, ``chip_date`` (for consecutive steps
    (t_from, t]; for zscore/loo-medoid the event at date t). Also ``best_f1``: F1 at the best cut of the
    score (an oracle threshold, what a fitted one can reach at most). NaN where a level has one class only."""
    from sklearn.metrics import roc_auc_score

    if not isinstance(change, pd.DataFrame):
        change, meta = read_change(change)
    meta = meta or {}
    tr = _truth_frame(truth)
    tcols = sorted((c for c in tr.columns if str(c).startswith("change_t") and str(c)[8:].isdigit()),
                   key=lambda c: int(str(c)[8:]))
    if not tcols:
        raise ValueError("truth has no change_t<k> columns (a store made by `earthembed synth --dates N`)")
    T = np.zeros((len(tr), max(int(c[8:]) for c in tcols) + 1), dtype=bool)
    for c in tcols:
        T[:, int(c[8:])] = tr[c].fillna(False).astype(bool).to_numpy()
    pos = pd.Index(tr["chip_id"].astype(str)).get_indexer(change["chip_id"].astype(str))
    ok = pos >= 0
    if not ok.any():
        raise ValueError("no chip of the change table is in the truth (another store?)")
    df = change[ok].reset_index(drop=True)
    rows = T[pos[ok]]
    cum = np.concatenate([np.zeros((len(rows), 1), dtype=np.int64), np.cumsum(rows, axis=1)], axis=1)  # [n, K+1]
    K = rows.shape[1]

    def any_in(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:  # any truth in (lo, hi]
        lo, hi = np.clip(lo, -1, K - 1), np.clip(hi, -1, K - 1)
        r = np.arange(len(df))
        return cum[r, hi + 1] - cum[r, lo + 1] > 0

    if "t_to" in df.columns:
        y_row = any_in(df["t_from"].to_numpy(np.int64), df["t_to"].to_numpy(np.int64))
    elif "t_from" in df.columns:
        y_row = any_in(df["t_from"].to_numpy(np.int64), df["t"].to_numpy(np.int64))
    else:
        t = df["t"].to_numpy(np.int64)
        y_row = any_in(t - 1, t)
    out = []
    levels = [("chip_date", df, y_row)] if meta.get("series", "t" in df.columns) else []
    g = pd.DataFrame({"chip_id": df["chip_id"].to_numpy(), "score": df["score"].to_numpy(), "y": y_row,
                      **({"changed": df["changed"].to_numpy()} if "changed" in df.columns else {})})
    agg = g.groupby("chip_id", sort=False).agg(score=("score", "max"), y=("y", "any"),
                                               **({"changed": ("changed", "any")} if "changed" in g.columns else {}))
    levels.insert(0, ("chip", agg, agg["y"].to_numpy()))
    for name, frame, y in levels:
        s = frame["score"].to_numpy(np.float64)
        fin = np.isfinite(s)
        y = np.asarray(y, dtype=bool)
        both = fin.any() and len(np.unique(y[fin])) == 2
        auc = float(roc_auc_score(y[fin], s[fin])) if both else float("nan")
        f1 = float("nan")
        if "changed" in frame.columns:
            p = frame["changed"].to_numpy(bool)
            tp = int((p & y).sum())
            f1 = 2 * tp / max(int(p.sum()) + int(y.sum()), 1) if y.any() or p.any() else float("nan")
        best = float("nan")
        if both:
            o = np.argsort(-s[fin], kind="stable")
            f, valid = _f1_cuts(s[fin][o], y[fin][o].astype(np.float64), np.ones((1, int(fin.sum()))))
            best = float(np.where(valid, f[0], 0).max())
        out.append({"level": name, "n": int(len(frame)), "n_changed": int(y.sum()), "auc": auc, "f1": f1,
                    "best_f1": best, "method": meta.get("method"), "column": meta.get("column")})
    return pd.DataFrame(out)


# -- plots ----------------------------------------------------------------------------------------------------
def _chips_to_plot(df: pd.DataFrame, chips: Sequence[str]) -> list[str]:
    out: list[str] = []
    have = set(df["chip_id"].astype(str))
    for c in chips:
        if str(c).startswith("top:"):
            try:
                k = int(str(c)[4:])
            except ValueError:
                raise ValueError(f"--plot {c!r}: expected top:K (K a number) or chip ids") from None
            top = df.groupby("chip_id", sort=False)["score"].max().sort_values(ascending=False).head(k).index
            out += [str(x) for x in top]
        elif str(c) not in have:
            raise ValueError(f"--plot {c}: no score for this chip (not in the table, or skipped: "
                             "see the change table's notes)")
        else:
            out.append(str(c))
    return list(dict.fromkeys(out))


def plot_change_series(df: pd.DataFrame, meta: dict[str, Any], chips: Sequence[str], png: str | Path,
                       overwrite: bool = False, own: bool = False) -> Path:
    """One line per chip: its change score at each date (series methods), the threshold dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from earthembed.outputs import save_png

    ids = _chips_to_plot(df, chips)
    dates = [d["date_key"] for d in meta.get("dates", [])]
    fig, ax = plt.subplots(figsize=(8, 4))
    sub = df[df["chip_id"].astype(str).isin(ids)]
    for cid, g in sub.groupby("chip_id", sort=False):
        g = g.sort_values("t")
        ax.plot(g["t"].to_numpy(), g["score"].to_numpy(), marker="o", label=str(cid))
    thr = meta.get("threshold")
    if thr:
        ax.axhline(thr["value"], ls="--", color="k", lw=1, label=f"threshold ({thr['spec']})")
    ax.set_xticks(range(len(dates)))
    ax.set_xticklabels(dates, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel(f"{meta.get('method')} score")
    ax.set_title(f"change score over time ({meta.get('method')}, {meta.get('column')})", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return save_png(fig, png, overwrite, own=own)


def plot_score_histogram(df: pd.DataFrame, meta: dict[str, Any], png: str | Path, own: bool = True) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from earthembed.outputs import save_png

    s = df["score"].to_numpy(np.float64)
    s = s[np.isfinite(s)]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.hist(s, bins=min(100, max(10, int(np.sqrt(len(s))))), color="#4c72b0")
    thr = meta.get("threshold")
    if thr:
        ax.axvline(thr["value"], color="#c44e52", ls="--", label=f"{thr['spec']} = {thr['value']:.4g}")
        ax.legend(fontsize=8)
    ax.set_yscale("log" if len(s) > 1000 else "linear")
    ax.set_xlabel(f"{meta.get('method')} score")
    ax.set_ylabel("chips x dates" if meta.get("series") else "chips")
    return save_png(fig, png, own=own)
