"""Embed every chip of a store with an exported model, streaming and resumable.

Batches are written as Arrow IPC part files next to the output (``<out>.parts/``), each renamed into place
only when complete, so a killed run restarts where it stopped and never writes a chip twice. The final
GeoParquet table is assembled at the end, renamed into place (readers see the old table or the new one) and
the parts are removed.

The output is protected before anything is computed: an existing ``--out`` is refused unless ``overwrite``,
and even then only an earthembed embedding table is replaced; a directory, a path inside a chip store and a
``<out>.parts/`` that earthembed did not make are refused; ``<out>.lock`` keeps a second process off the same
output. A present modality whose embedding is not finite (e.g. NaN weights) is an error naming the chips.

**Per date** (``dates``, ``embed --dates all|LIST``): one row per (chip, date) of the store's time series
(:mod:`earthembed.data.dates`): the store is read once per date index t, key t of every series under its base name
(:class:`~earthembed.data.dates.DateView`), so the model sees each date exactly as it sees a single-date store and
the cost is T times one date. Rows carry ``t``, ``date`` and ``date_key`` (:mod:`earthembed.embed.io`); a chip
with none of the series at a date gets no row there (counted in the metadata's ``time.skipped``).

**A whole series as one vector** (``dates="series"``, ``embed --dates series``): one row per chip, from a model with
a time axis (its ``timesteps``, Galileo's) fed every date of each series at once; the metadata's ``time`` says
``mode: series`` with the date and key of each timestep (:func:`earthembed.data.dates.series_metadata`). A model whose
input spec reads ``T > 1`` dates of a modality (a Galileo fitted with ``series=True``, as ``embed --encoder galileo:...
--dates series`` fits it) gets each such series as one observation ``[B, T, C, H, W]``
(:class:`~earthembed.data.date_views.SeriesView`), with or without ``--dates series``.
A model without one (any other architecture, the rcf featurizer) is a one-line error pointing to ``--dates all``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from earthembed.contract import as_chip_batch
from earthembed.data.dates import (
    DatePlan,
    is_series,
    later_keys,
    plan_dates,
    series_keys,
    series_metadata,
    series_of,
    series_reads,
)
from earthembed.data.store import ChipStore
from earthembed.embed.batches import (
    BatchReader,
    Pass,
    chip_columns,
    embed_batch,
    make_passes,
    prefetch_batches,
)
from earthembed.embed.engines import ENGINES
from earthembed.embed.io import is_embedding_table
from earthembed.embed.shards import DATASET_FORMAT, DATASET_VERSION, wants_dataset
from earthembed.embed.table_format import META_KEY, parquet_options
from earthembed.embed.tta import set_tta, tta_model_id
from earthembed.errors import OutputError
from earthembed.outputs import OutputLock, dumps, write_json
from earthembed.storage import ObjectPath, location

if TYPE_CHECKING:
    from earthembed.models.export import ModelMeta

PART_FORMAT = "arrow-ipc-1"  # in the resume manifest: parts of another format are never mixed in
TABLE_TMP = "table.parquet.tmp"  # the final table while it is assembled, inside <out>.parts/


def parse_bands(spec: str | None) -> dict[str, list[str]] | None:
    """``"s2:B04,B03,B02;s1:VV"`` -> ``{"s2": ["B04", "B03", "B02"], "s1": ["VV"]}``."""
    if not spec:
        return None
    out: dict[str, list[str]] = {}
    for part in spec.split(";"):
        if ":" not in part:
            raise ValueError(f"--bands {spec!r}: expected MODALITY:BAND,BAND[;MODALITY:BAND...]")
        mod, names = part.split(":", 1)
        out[mod.strip()] = [b.strip() for b in names.split(",") if b.strip()]
    return out


def embed_store(
    model: str | Path | torch.nn.Module,
    store: str | Path | ChipStore,
    out: str | Path,
    modalities: Sequence[str] | None = None,
    bands: dict[str, Sequence[str]] | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    meta: ModelMeta | dict[str, Any] | None = None,
    resume: bool = True,
    progress: bool = True,
    device: str = "cpu",
    prefetch: bool | None = None,
    overwrite: bool = False,
    engine: str = "local",
    shard_chips: int | None = None,
    workers: int = 1,
    gpus_per_worker: float = 0.0,
    address: str | None = None,
    tta: str | None = None,
    dates: str | Sequence[str | int] | None = None,
) -> Path:
    """Write one GeoParquet row per chip with the fused and per-modality embeddings.

    ``dates``: ``"all"`` or date indices / ISO dates / date keys (a comma-separated string or a list): one row per
    (chip, date) of the store's time series instead (module docstring); ``modalities`` then names series by their
    base (``s2``, not ``s2_t3``), and by default the model's modalities that are not a later date of a series.
    ``"series"``: one row per chip embedding its whole series, for a model with a time axis (module docstring);
    ``modalities`` names series by their base too, each read with all its dates.

    ``overwrite`` allows replacing an existing embedding table at ``out`` (never any other file); see the
    module docstring for what else is refused.

    **Sharded output** (``out`` ending with ``/`` or a directory, or ``engine="ray"`` / ``shard_chips``): an
    embedding dataset of one file per shard of ``shard_chips`` chips with commit markers, resumable shard by
    shard (:mod:`earthembed.embed.shards`), run by ``engine`` ``local`` or ``ray`` (``workers`` actors with
    ``gpus_per_worker`` each, on the cluster at ``address`` or a local one: :mod:`earthembed.embed.engines`).

    ``tta``: ``"none"`` or ``"d4"`` overrides the encoder's test-time augmentation at embed time (the default
    recipes export an 8-view average, 8x the compute per chip); the table's ``model_id`` then says so.

    ``prefetch``: read the next batch in a background thread while the model runs. ``None`` (default) turns
    it on for accelerators and off on CPU, where the model already keeps every core busy and a reader
    thread only preempts torch's threads (measured slower, benchmarks/README.md); reading is then itself
    parallel (zarrs decoding, torch normalisation). ``num_workers > 0`` uses DataLoader processes instead.

    ``model`` is an exported model directory / ``model.json`` (see :mod:`earthembed.models.export`), or a
    module plus its ``meta`` (a :class:`~earthembed.models.export.ModelMeta`, or the same dict ``load_model``
    returns).
    """
    from earthembed.models.export import ModelMeta, load_export

    if isinstance(model, (str, Path)):
        model_path = str(model)
        model, info = load_export(model)
    else:
        if meta is None:
            raise ValueError("embed_store: pass meta=... with a module (the exported model.json dict)")
        info = ModelMeta.of(meta, "embed_store: meta")
        model_path = info.path if info.path is not None else ""
    store = store if isinstance(store, ChipStore) else ChipStore(store)
    spec = info.input_spec
    whole = {m.key: m.dates for m in spec.modalities if m.dates > 1}  # modalities the model reads whole series of
    series = is_series(dates)
    if series:
        time_axis(model, info)  # a model without one is refused first
        dates = None
        if modalities is not None:  # a series by its base: read whole, or as the model's per-key timesteps
            modalities = [x for m in modalities for x in ([m] if m in whole else series_keys(store, [m]))]
    elif dates is not None and whole:
        what = ", ".join(f"{k}: {n} dates" for k, n in whole.items())
        raise ValueError(f"--dates {dates}: this model reads each series whole ({what}), not one date at a time; "
                         "embed without --dates (or with --dates series), or fit a model per "
                         "date (embed --encoder ... --dates all)")
    if dates is not None and modalities is None:
        later = later_keys(store)
        modalities = [m for m in info.modalities if m in store.modalities and m not in later] or None
    elif dates is not None:
        series_of(store, list(modalities))  # s2_t3 instead of s2: say so before the model is asked about it
    request = spec.request(store, modalities, bands)
    spec.check(store, request)
    reads = series_reads(store, {k: whole.get(k, 1) for k in request})
    plan = plan_dates(store, list(request), dates) if dates is not None else None
    time = plan.metadata() if plan is not None else None
    if series:
        time = series_metadata(store, time_axis(model, info, reads), [x for k in request for x in reads.get(k, (k,))])
    model_id = tta_model_id(model, str(info.model_id) if info.model_id is not None else "unknown", tta)
    if engine not in ENGINES:
        raise ValueError(f"--engine {engine!r}: choose one of {', '.join(ENGINES)}")
    if wants_dataset(out, engine, shard_chips):
        return _embed_dataset(model, model_path, info, store, location(out), request, model_id, batch_size, device,
                              prefetch, overwrite, engine, shard_chips, workers, gpus_per_worker, address, tta,
                              progress, plan, time, reads)
    if tta is not None:
        set_tta(model, tta)
    out = Path(out)
    passes = make_passes(store, request, info.normalization, plan, reads)
    manifest = {
        "model_id": model_id,
        "store": str(store.path.resolve()),
        "n_chips": len(store),
        "bands": request,
        "batch_size": batch_size,
        "part_format": PART_FORMAT,
        **({"time": time} if time is not None else {}),
    }
    check_output(out, overwrite)
    with OutputLock(out, out.with_name(out.name + ".lock")):
        check_output(out, overwrite)  # again under the lock: another process may have just finished
        _embed(model, model_path, info, store, out, request, passes, manifest, batch_size, num_workers, resume,
               progress, device, prefetch)
    return out


def time_axis(model: torch.nn.Module, meta: ModelMeta | None, reads: dict[str, tuple[str, ...]] | None = None
              ) -> dict[str, int]:
    """Store key -> date index of a model with a time axis (``timesteps``: Galileo); ``embed --dates series`` on any
    other model is a one-line error saying to embed per date instead. A modality read as a whole series (its
    timesteps a list) gives each of its store keys in ``reads`` its date's index."""
    steps = getattr(model, "timesteps", None)
    if not isinstance(steps, dict):
        raise no_time_axis((meta.architecture if meta is not None else None) or getattr(model, "architecture", None)
                           or type(model).__name__)
    out: dict[str, int] = {}
    for k, t in steps.items():
        if isinstance(t, list):
            out.update({key: int(ti) for key, ti in zip((reads or {}).get(k, ()), t, strict=False)})
        else:
            out[str(k)] = int(t)
    return out


def no_time_axis(what: str) -> ValueError:
    """The error of ``--dates series`` for a model without a time axis."""
    return ValueError(f"--dates series: {what} has no time axis (it embeds one date at a time; only Galileo embeds "
                      "a whole series as one vector); use --dates all for one row per (chip, date)")


def _embed_dataset(model: torch.nn.Module, model_path: str, meta: ModelMeta, store: ChipStore, out: Path | ObjectPath,
                   request: dict[str, list[str]], model_id: str, batch_size: int, device: str, prefetch: bool | None,
                   overwrite: bool, engine: str, shard_chips: int | None, workers: int, gpus_per_worker: float,
                   address: str | None, tta: str | None, progress: bool, plan: DatePlan | None = None,
                   time: dict[str, Any] | None = None, reads: dict[str, tuple[str, ...]] | None = None) -> Path:
    """The sharded path of :func:`embed_store`: plan, lock, run the pending shards on ``engine``, finish."""
    from earthembed.embed.engines import ShardJob, run_local, run_ray
    from earthembed.embed.shards import dataset_lock, finish, pending_shards, plan_shards, prepare_dataset

    shards = plan_shards(len(store), store.layout(next(iter(request))).chunk_chips, shard_chips)
    manifest = {"format": DATASET_FORMAT, "format_version": DATASET_VERSION, "model_id": model_id,
                "store": str(store.path.resolve()), "n_chips": len(store), "bands": request,
                "batch_size": batch_size, "shards": [[s.start, s.end] for s in shards], "complete": False,
                "store_fingerprint": store.fingerprint, **({"time": time} if time is not None else {})}
    table_meta = {"model_id": model_id, "store": manifest["store"], "n_chips": len(store), "bands": request,
                  "model_path": model_path, "embed_dim": int(model.embed_dim), "modalities": list(request),
                  "architecture": meta.architecture,
                  "store_products": {m: store.modality(m).product for m in request},
                  "model_products": _model_products(meta, request),
                  **({"time": time} if time is not None else {})}
    label = f"{model_id} ({model_path})"
    with dataset_lock(out):  # flock locally, a lease object (conditional put) on object storage
        prepare_dataset(out, manifest, overwrite)
        pending = pending_shards(out, shards)
        run: dict[str, Any] = {"engine": engine, "shards_run": len(pending)}
        if pending:
            job = ShardJob(model_path or None, str(store.path), str(out), request, meta.normalization, batch_size,
                           device, model_id, label, table_meta, tta, prefetch, plan, reads or None,
                           store_fingerprint=manifest["store_fingerprint"])
            if engine == "ray":
                errors = run_ray(job, pending, workers, gpus_per_worker, address, progress, report=run)
                if errors and len(errors) == len(pending):
                    raise ValueError(f"{out}: every shard failed; the first: {errors[0]}")
            else:
                import resource

                run_local(job, pending, model=model, progress=progress)
                run["peak_rss_mib"] = {str(os.getpid()): resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
        finish(out, {**manifest, "last_run": run}, shards, table_meta)
    return out


def check_output(out: Path, overwrite: bool) -> None:
    """Refuse what ``embed`` must never replace or remove: see the module docstring."""
    if out.is_dir():
        raise OutputError(f"{out}: is a directory; --out names the table to write, e.g. {out / 'embeddings.parquet'}")
    from earthembed.outputs import protected_dir_above

    inside = protected_dir_above(out)
    if inside is not None:
        raise OutputError(f"{out}: is inside the {inside[1]} {inside[0]}; write embedding tables outside stores and runs")
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise OutputError(f"{out}: already exists; pass --overwrite to replace it")
        if not is_embedding_table(out):
            raise OutputError(
                f"{out}: exists and is not an earthembed embedding table; refusing to replace it, even with --overwrite"
            )
    parts = out.with_name(out.name + ".parts")
    if parts.exists() and not _own_parts(parts):
        raise OutputError(
            f"{parts}: exists and holds files earthembed embed did not write; refusing to remove it - move it away"
        )


def _own_parts(parts: Path) -> bool:
    """True when ``parts`` is a directory holding only what :func:`_write_part` and the manifest write."""
    if not parts.is_dir() or parts.is_symlink():
        return False
    return all(
        f.is_file() and (f.name in ("manifest.json", "manifest.json.tmp", TABLE_TMP)
                         or (f.name.startswith("part-") and f.suffix in (".arrow", ".tmp")))
        for f in parts.iterdir()
    )


def _clear_parts(parts: Path, remove_dir: bool = False) -> None:
    """Delete the part files of an earlier run (only ours: checked by :func:`_own_parts`)."""
    if parts.exists():
        for f in parts.iterdir():
            f.unlink()
        if remove_dir:
            parts.rmdir()


def _embed(model: torch.nn.Module, model_path: str, meta: ModelMeta, store: ChipStore, out: Path,
           request: dict[str, list[str]], passes: list[Pass], manifest: dict[str, Any], batch_size: int,
           num_workers: int, resume: bool, progress: bool, device: str, prefetch: bool | None) -> None:
    """The embedding loop of :func:`embed_store`, run while holding the output's lock."""
    model_id = manifest["model_id"]
    parts = out.with_name(out.name + ".parts")
    done = _prepare_parts(parts, manifest, resume)
    n = len(store)
    todo = [(p, [s for s in range(0, n, batch_size) if p.part(s) not in done]) for p in passes]
    model = model.to(device).eval()
    chips = chip_columns(store.index)
    from earthembed.progress import progress as make_progress

    total = sum(min(batch_size, n - s) for _, starts in todo for s in starts)
    resumed = f" (resumed, {n * len(passes) - total} chips done)" if total < n * len(passes) else ""
    what = "chip" if len(passes) == 1 and passes[0].t is None else "chip-date"
    bar = make_progress(total=total, unit=what, desc=f"embed {store.path.name}{resumed}", quiet=not progress)
    # part writes run one batch behind in a thread (Arrow IPC, cheap), so the main thread mostly runs the
    # model. At most one write is in flight, so a failed write stopped the run before a later batch is committed.
    from concurrent.futures import Future, ThreadPoolExecutor

    def committed(write: Future[int] | None) -> None:  # re-raises a failed write here
        bar.update(write.result() if write is not None else 0)

    with torch.inference_mode(), ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed-write") as writer:
        pending: Future[int] | None = None
        for p, starts in todo:
            for start, batch in zip(starts, _loader(p.dataset, starts, batch_size, num_workers, prefetch, device),
                                    strict=True):
                emb, present = embed_batch(model, batch, request, device, chips, f"{model_id} ({model_path})")
                committed(pending)
                pending = writer.submit(_write_part, parts, p, start, as_chip_batch(batch).idx.numpy(), chips, emb, present,
                                        request, model_id)
        committed(pending)
    bar.close()
    _assemble(parts, out, {**manifest, "model_path": model_path, "embed_dim": int(model.embed_dim),
                           "modalities": list(request), "architecture": meta.architecture,
                           "store_products": {m: store.modality(m).product for m in request},
                           "model_products": _model_products(meta, request)})


def _model_products(meta: ModelMeta, request: dict[str, list[str]]) -> dict[str, str | None]:
    """The product each requested modality had when the model was trained (None where not recorded), for the
    table's metadata beside the store's."""
    return {m: (meta.products or {}).get(m, {}).get("product") for m in request}


def _loader(dataset: Any, starts: list[int], batch_size: int, num_workers: int, prefetch: bool | None,
            device: str) -> Any:
    """The batches at ``starts``: DataLoader workers, a reader thread (accelerators) or read in this thread."""
    reader = BatchReader(dataset, starts, batch_size)
    if num_workers > 0:
        return torch.utils.data.DataLoader(reader, batch_size=None, num_workers=num_workers, shuffle=False)
    if prefetch if prefetch is not None else torch.device(device).type != "cpu":
        return prefetch_batches(reader, depth=2)
    return (reader[i] for i in range(len(reader)))


def _prepare_parts(parts: Path, manifest: dict[str, Any], resume: bool) -> set[str]:
    mf = parts / "manifest.json"
    if parts.exists() and resume and mf.exists():
        try:
            old = json.loads(mf.read_text())
        except json.JSONDecodeError:
            old = None  # unreadable manifest: start the parts again
        if old == manifest:
            for t in parts.glob("*.tmp"):
                t.unlink()
            return {f.stem for f in parts.glob("part-*.arrow")}
    _clear_parts(parts)  # ours (checked by check_output): from another model, store or batch size
    parts.mkdir(parents=True, exist_ok=True)
    write_json(mf, manifest)
    return set()


def _write_part(parts: Path, p: Pass, start: int, idx: np.ndarray, chips: pa.Table, emb: dict[str, np.ndarray],
                present: dict[str, torch.Tensor], request: dict[str, list[str]], model_id: str) -> int:
    """Commit one batch of pass ``p`` as an Arrow IPC part (renamed into place when complete); returns its chip
    count.

    Parts are Arrow IPC, not Parquet: writing them is little more than a copy, and only the final table
    pays for Parquet encoding."""
    table = p.table(idx, chips, emb, present, request, model_id)
    f = parts / f"{p.part(start)}.arrow"
    tmp = f.with_suffix(".tmp")
    with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
        w.write_table(table)
    os.replace(tmp, f)
    return len(idx)


def _assemble(parts: Path, out: Path, meta: dict[str, Any]) -> None:
    """Stream the part files (named by their date index and first chip, so sorted = row order) into one GeoParquet
    file, one part in memory at a time, then rename it into place and drop the parts."""
    files = sorted(parts.glob("part-*.arrow"))

    def read(f: Path) -> pa.Table:
        with pa.memory_map(str(f)) as src:
            return pa.ipc.open_file(src).read_all()

    schema = read(files[0]).schema
    geo = {
        "version": "1.1.0",
        "primary_column": "geometry",
        "columns": {"geometry": {"encoding": "WKB", "geometry_types": [], "crs": _crs_4326()}},
    }
    md = dict(schema.metadata or {})
    md[b"geo"] = dumps(geo, indent=None).encode()
    md[META_KEY] = dumps(meta, indent=None, where=out).encode()
    schema = schema.with_metadata(md)
    tmp = parts / TABLE_TMP  # in our own directory: a user's "<out>.tmp" is never touched
    last = -1
    with pq.ParquetWriter(tmp, schema, **parquet_options(schema)) as writer:
        for f in files:
            table = read(f)
            idx = table.column("idx").to_numpy().astype(np.int64)
            if "t" in table.column_names:  # per date: rows in (t, chip) order
                idx = idx + (table.column("t").to_numpy().astype(np.int64) << 40)
            if idx.size and (idx[0] <= last or np.any(np.diff(idx) <= 0)):
                raise RuntimeError(f"{f}: embedding parts overlap or are out of order")
            last = int(idx[-1]) if idx.size else last
            writer.write_table(table.cast(schema))
    os.replace(tmp, out)
    _clear_parts(parts, remove_dir=True)


def _crs_4326() -> dict[str, Any]:
    from pyproj import CRS

    return CRS.from_epsg(4326).to_json_dict()


def embed_random_init(
    like: str | Path, store: str | Path | ChipStore, out: str | Path, seed: int = 0, **kwargs: Any
) -> Path:
    """Embeddings from a randomly initialised encoder of the same architecture and normalisation as ``like``.

    The baseline that tells how much of a score is pretraining and how much is architecture + pooling.
    """
    from earthembed.models.export import load_export, random_init_like

    _, meta = load_export(like)
    model = random_init_like(meta, seed=seed)
    meta = meta.with_keys(model_id=f"random-init-seed{seed}-{meta.model_id if meta.model_id is not None else ''}")
    return embed_store(model, store, out, meta=meta, **kwargs)


FEATURIZERS: tuple[str, ...] = ("rcf", "band_stats")
"""``embed --featurizer``: embeddings built from the store itself, no model (:mod:`earthembed.models.rcf`,
:mod:`earthembed.models.band_stats`)."""


def embed_featurizer(
    kind: str, store: str | Path | ChipStore, out: str | Path, export_dir: str | Path | None = None,
    modalities: Sequence[str] | None = None, bands: dict[str, Sequence[str]] | None = None,
    options: dict[str, Any] | None = None, **kwargs: Any,
) -> Path:
    """Embeddings of a featurizer (``kind`` in :data:`FEATURIZERS`) built from ``store``.

    The featurizer is exported to ``export_dir`` (default ``<out stem>_featurizer/`` beside ``out``) before
    embedding, so ``embed_store(export_dir, other_store, ...)`` maps another store with the same features.
    ``options``: keyword arguments of its builder (rcf: :func:`earthembed.models.rcf.rcf_from_store`'s mode,
    features, seed, ...; band_stats takes none)."""
    from earthembed.models.export import check_export_dir

    if kind not in FEATURIZERS:
        raise ValueError(f"--featurizer {kind!r}: one of {', '.join(FEATURIZERS)}")
    if is_series(kwargs.get("dates")):  # before anything is computed
        raise no_time_axis(f"the {kind} featurizer")
    store = store if isinstance(store, ChipStore) else ChipStore(store)
    out = Path(out)
    # checked before the features are built; export_model checks again when it writes
    export = check_export_dir(export_dir if export_dir is not None else out.with_name(f"{out.stem}_featurizer"))
    if kind == "rcf":
        from earthembed.models.rcf import export_rcf

        export_rcf(store, export, modalities=modalities, bands=bands, **(options or {}))
    else:
        from earthembed.models.band_stats import export_band_stats

        if options:
            raise ValueError(f"--featurizer band_stats takes no options (got {sorted(options)})")
        export_band_stats(store, export, modalities=modalities, bands=bands)
    return embed_store(export, store, out, modalities=modalities, bands=bands, **kwargs)


def embed_rcf(
    store: str | Path | ChipStore, out: str | Path, export_dir: str | Path | None = None,
    modalities: Sequence[str] | None = None, bands: dict[str, Sequence[str]] | None = None,
    rcf: dict[str, Any] | None = None, **kwargs: Any,
) -> Path:
    """Embeddings from random convolutional features (:mod:`earthembed.models.rcf`) built from ``store``
    (:func:`embed_featurizer` with ``kind="rcf"``; ``rcf``: :func:`earthembed.models.rcf.rcf_from_store`'s
    keyword arguments)."""
    return embed_featurizer("rcf", store, out, export_dir, modalities, bands, rcf, **kwargs)
