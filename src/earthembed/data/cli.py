"""CLI of the data stage: ``info``, ``stats``, ``verify``, ``synth`` and the ``ingest`` sub-commands."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from earthembed.cli_utils import fail_on

SHARD_HELP = ("Zarr sharding: one file (object) per K chips of each array instead of one per chunk of 16; for "
              "object storage use 1024-4096 (docs/scale.md); default: not sharded")


ingest_app = typer.Typer(help="Ingest datasets and AOI rasters into a chip store.", no_args_is_help=True,
                         rich_markup_mode=None)


def info(
    store: Path = typer.Argument(..., help="chip store directory"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """Chip count, modalities with band names and chip shape, label columns with class counts, time series (keys
    in date order, each one's typical date and chips, chips by how many dates they hold), splits."""
    from earthembed.data.store import ChipStore

    with fail_on():
        st = ChipStore(store)
        summary = {**st.info(), "chunking": st.chunking()}
        source = st.meta.get("source") or {}
        if source.get("composite"):  # how a STAC composite was made (periods, cloud mask), as ingest said it
            from earthembed.data.ingest.stac import composite_note

            summary["composite"] = source["composite"]
            note = composite_note(source, st.report())
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    typer.echo(f"store      {summary['path']}  (format {summary['format_version']})")
    typer.echo(f"chips      {summary['chips']}  ({summary['chip_size']}x{summary['chip_size']} px)")
    for k, m in summary["modalities"].items():
        typer.echo(f"modality   {k}: {m['product']} {m['kind']} {m['chip_shape']} {m['dtype']} present in {m['present']}")
        typer.echo(f"           bands {', '.join(m['bands'])}")
    for k, lab in summary["labels"].items():
        extra = lab.get("class_counts") or {x: lab[x] for x in ("min", "mean", "max") if x in lab}
        typer.echo(f"label      {k} ({lab['kind']}): {extra}")
    for ts in summary["time_series"]:
        cover = ", ".join(f"{c} with {n}" for n, c in sorted(ts["coverage"].items(), key=lambda x: -int(x[0])))
        typer.echo(f"series     {ts['base']}: {len(ts['keys'])} dates ({ts['product']}); chips by dates held: {cover}")
        for d in ts["dates"]:
            span = d["date_range"]
            spread = f" (chips' dates {span[0]} .. {span[1]})" if span and span[0] != span[1] else ""
            typer.echo(f"           {d['key']}: {d['date'] or 'no date'}, {d['chips']} chips{spread}")
    comp = summary.get("composite")
    if comp:
        typer.echo(f"composite  per {comp['period']}: {comp['n_periods']} periods")
        for line in (note or "").splitlines():
            typer.echo(f"           {line.removeprefix('note: ')}")
    typer.echo(f"splits     {summary['splits']}")
    typer.echo(f"skipped    {summary['skipped']}")
    typer.echo(f"files      {_chunking_line(summary['chunking'])}")


def _chunking_line(chunking: dict) -> str:
    """How the arrays are cut into files (chunks, or shards of chunks), in one line."""
    c = next(iter(chunking.values()))
    per = (f"shards of {c['shard_chips']} chips (chunks of {c['chunk_chips']} inside)" if c["shard_chips"]
           else f"chunks of {c['chunk_chips']} chips, not sharded")
    return f"{per}; {sum(v['files'] for v in chunking.values())} array files in all"


def stats(
    store: Path = typer.Argument(..., help="chip store directory"),
    max_chips: int = typer.Option(2000, help="random subset of chips to use (0 = all)"),
    seed: int = typer.Option(0),
) -> None:
    """(Re)compute per-band mean/std and robust percentiles, ignoring nodata, and save them in the store."""
    from earthembed.data.stats import update_store_stats

    with fail_on():
        s = update_store_stats(store, max_chips=max_chips or None, seed=seed)
    for k, v in s.items():
        typer.echo(f"{k}: " + ", ".join(
            f"{b}={m:.4g}±{sd:.3g}" if m is not None else f"{b}=no valid pixel"
            for b, m, sd in zip(v["bands"], v["mean"], v["std"], strict=True)
        ))


def verify(
    store: Path = typer.Argument(..., help="chip store directory"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
    quiet: bool = typer.Option(False, help="no progress bar"),
) -> None:
    """Full integrity check: decode every chunk, index/array consistency, finite statistics, complete flag.

    Exits 1 and lists every problem when the store is damaged. (Opening a store runs the cheap part of these
    checks every time; this one reads all the data.)"""
    from earthembed.data.verify import verify_store

    with fail_on():
        rep = verify_store(store, progress=not quiet and not as_json)
    if as_json:
        typer.echo(json.dumps({"path": str(rep.path), "ok": rep.ok, "chips": rep.chips, "arrays": rep.arrays,
                               "chunks_checked": rep.chunks_checked, "shard_chips": rep.shard_chips,
                               "problems": rep.problems}, indent=2))
    elif rep.ok:
        what = f"shards of {rep.shard_chips} chips" if rep.shard_chips else "chunks"
        typer.echo(f"{rep.path}: ok ({rep.chips} chips; {rep.chunks_checked} {what} of {rep.arrays} arrays decoded; "
                   "index, arrays and statistics consistent)")
    else:
        typer.secho(f"{rep.path}: {len(rep.problems)} problem(s)", err=True, fg=typer.colors.RED)
        for p in rep.problems:
            typer.secho(f"  {p}", err=True)
    if not rep.ok:
        raise typer.Exit(1)


def synth(
    out: Path = typer.Option(..., "--out", help="store directory to create"),
    chips: int = typer.Option(1024, help="number of chips"),
    chip_size: int = typer.Option(32, help="chip side in pixels (10 m)"),
    seed: int = typer.Option(0, help="random seed: same seed, same store"),
    dates: int = typer.Option(1, "--dates", help="dates of S2 and S1 (s2, s2_t2, ...; about a year apart, other "
                              "months), with seasonal variation and injected changes (flood, clearing, "
                              "construction) recorded as change_t<k> labels; 1: a single-date store"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing store"),
    batch_size: int = typer.Option(256, help="chips generated and committed per batch"),
    shard_chips: int | None = typer.Option(None, "--shard-chips", help=SHARD_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress"),
) -> None:
    """Generate a synthetic multimodal AOI (S2, S1, coherence, DEM, WorldCover + labels) as a chip store."""
    import time

    from earthembed.data.synth import CLASSES, generate_synthetic_aoi
    from earthembed.outputs import check_output

    t0 = time.perf_counter()
    with fail_on():
        check_output(out, "store", [], overwrite)
        store = generate_synthetic_aoi(out, chips, chip_size, seed, overwrite, batch_size, progress=not quiet,
                                       dates=dates, shard_chips=shard_chips)
    dt = time.perf_counter() - t0
    counts = store.index["landcover"].value_counts().to_dict()
    typer.echo(f"wrote {len(store)} chips of {chip_size}x{chip_size} px to {store.path} in {dt:.1f} s")
    typer.echo("dominant classes: " + ", ".join(f"{c}={counts.get(c, 0)}" for c in CLASSES))
    if dates > 1:
        idx = store.index
        steps = [f"t{t}: {int(idx[f'change_t{t}'].sum())}" for t in range(1, dates)]
        typer.echo(f"{dates} dates; chips changed per date step (change_t<k>): {', '.join(steps)}")


def _with_shard_chips(command):
    """``command`` with a ``--shard-chips K`` option: the stores it creates are sharded (see
    :func:`earthembed.data.store.shard_chips_default`), whatever ingester it runs."""
    import functools
    import inspect

    @functools.wraps(command)
    def run(*args, shard_chips: int | None = None, **kwargs):
        from earthembed.data.store import shard_chips_default  # when it runs: `earthembed --help` stays light

        with shard_chips_default(shard_chips):
            return command(*args, **kwargs)

    sig = inspect.signature(command)
    opt = inspect.Parameter("shard_chips", inspect.Parameter.KEYWORD_ONLY, annotation=int | None,
                            default=typer.Option(None, "--shard-chips", help=SHARD_HELP))
    params = list(sig.parameters.values())
    run.__signature__ = sig.replace(parameters=[*params[:-1], opt.replace(kind=params[-1].kind), params[-1]])
    return run


def register(app: typer.Typer) -> None:
    from earthembed.data.ingest import cli as ingest_cli

    for name in ingest_cli.INGESTERS:
        ingest_app.command(name)(_with_shard_chips(getattr(ingest_cli, name)))
    app.command("info")(info)
    app.command("stats")(stats)
    app.command("verify")(verify)
    app.command("synth")(synth)
    app.add_typer(ingest_app, name="ingest")
