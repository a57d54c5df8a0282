"""One output policy for every command (earthembed.outputs), proved by walking the CLI.

For every registered command and every option that names an output, a case below writes to a path given by
the test and proves: a foreign file there (or a foreign directory, for directory outputs) is refused without
``--overwrite`` and with it, and is byte-identical afterwards; an output equal to the command's input is
refused; a path inside a chip store or a pretraining run is refused; a foreign file where a sibling output
goes (a map's ``.png`` preview, search's thumbnails, an index's sidecar) is refused. Every refusal is one line
naming the output, exit code 1, and leaves the directory as it was. A command that is neither a case nor
listed as read-only fails :func:`test_every_command_and_output_option_has_a_case`, so the next command cannot
forget the policy. Inputs are tiny (a 32-chip store of 16 px, an 8-dim table) and every refusal comes before
any computation, so the whole file runs in seconds.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from tempfile import mkdtemp

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from earthembed.cli import app
from earthembed.data.normalize import Normalizer
from earthembed.data.store import ChipStore
from earthembed.data.synth import generate_synthetic_aoi
from earthembed.embed.io import write_embedding_table
from earthembed.errors import OutputError
from earthembed.models.export import export_model
from earthembed.models.registry import build_model
from earthembed.outputs import (
    DIR_MARKER,
    atomic_path,
    check_output,
    claim_dir,
    output_kind,
    protected_dir_above,
    save_png,
)

FOREIGN = b"someone's work: months of it\n"
READ_ONLY = {"info": "reads a store", "verify": "reads a store",
             "embed-status": "reads a sharded embedding dataset's manifest and markers",
             "stats": "writes statistics into the store it is given, under the store's own lock"}
"""Commands that write no output of their own (and why); every other command needs a case."""


@dataclasses.dataclass
class Env:
    root: Path
    store: Path
    emb: Path
    model: Path
    weights: Path
    table_tif: Path  # the embedding table under a .tif name: map's input, to prove out == input is refused
    img_html: Path  # a PNG under a .html name: report's input, likewise
    ckpt: Path
    src: Path
    raster: Path
    catalog: Path
    run: Path  # a pretraining run directory (claimed as such)

    @property
    def chip(self) -> str:
        return str(ChipStore(self.store).index["chip_id"].iloc[0])


@dataclasses.dataclass
class Case:
    argv: Callable[[Env, Path], list]  # the command line writing its output to the given path
    suffix: str = ""  # of a file output; "" for a directory output
    overwrite: bool = True  # the command has --overwrite
    input: Callable[[Env], Path] | None = None  # an input of argv(env, ...), to give as the output too
    siblings: tuple[str, ...] = ()  # suffixes of outputs written beside the main one
    derived: bool = False  # the output path follows from the input (index); argv gets the output path

    @property
    def is_dir(self) -> bool:
        return not self.suffix


def _ingest(name: str) -> Case:
    return Case(lambda e, o: ["ingest", name, e.src, "--out", o, "-q"], input=lambda e: e.src)


def _index_argv(e: Env, out: Path) -> list:
    table = out.with_name(out.name.removesuffix(".emb_fused.faiss"))
    if not table.exists():
        shutil.copy(e.emb, table)
    return ["index", "--embeddings", table, "--kind", "hnsw", "--quiet"]


CASES: dict[tuple[str, str], Case] = {
    ("synth", "--out"): Case(lambda e, o: ["synth", "--out", o, "--chips", 16, "--chip-size", 16, "-q"]),
    **{("ingest " + n, "--out"): _ingest(n) for n in ("eurosat", "bigearthnet", "sen1floods11", "folder")},
    ("ingest rasters", "--out"): Case(lambda e, o: ["ingest", "rasters", "--modality", f"s2={e.raster}",
                                                    "--chip-size", 16, "--out", o, "-q"], input=lambda e: e.raster),
    ("ingest stac", "--out"): Case(lambda e, o: ["ingest", "stac", "--catalog", e.catalog, "--collections", "c",
                                                 "--modality", "s2_l2a", "--out", o, "-q"], input=lambda e: e.catalog),
    ("ingest pairs", "--out"): Case(lambda e, o: ["ingest", "pairs", "--images", e.src, "--masks", e.src,
                                                  "--chip-size", 16, "--out", o, "-q"], input=lambda e: e.src),
    ("pretrain", "--out"): Case(lambda e, o: ["pretrain", "--store", e.store, "--out", o, "train.max_steps=1"],
                                overwrite=False, input=lambda e: e.store),
    ("export-checkpoint", "--out"): Case(lambda e, o: ["export-checkpoint", "--ckpt", e.ckpt, "--store", e.store,
                                                       "--out", o], input=lambda e: e.ckpt),
    ("embed", "--out"): Case(lambda e, o: ["embed", "--checkpoint", e.model, "--store", e.store, "--out", o, "--quiet"],
                             ".parquet", input=lambda e: e.store),
    ("embed", "--export-dir"): Case(lambda e, o: ["embed", "--encoder", "timm:resnet18", "--weights", e.weights,
                                                  "--store", e.store, "--out", Path(mkdtemp(dir=e.root)) / "t.parquet",
                                                  "--quiet", "--export-dir", o], overwrite=False, input=lambda e: e.store),
    ("fewshot", "--out"): Case(lambda e, o: ["fewshot", "--embeddings", f"e={e.emb}", "--store", e.store, "--task",
                                             "landcover", "--baselines", "none", "--seeds", 1, "--estimators", "knn",
                                             "--budgets", "1,all", "--n-boot", 5, "-q", "--out", o],
                               overwrite=False, input=lambda e: e.emb),
    ("predict", "--out"): Case(lambda e, o: ["predict", "--embeddings", e.emb, "--store", e.store, "--task",
                                             "landcover", "--estimator", "knn", "--out", o], ".parquet",
                               input=lambda e: e.emb),
    ("segment", "--out"): Case(lambda e, o: ["segment", "--init", "random", "--store", e.store, "--task",
                                             "landcover_mask", "--out", o, "train.max_steps=1"],
                               overwrite=False, input=lambda e: e.store),
    ("plot-embeddings", "--out"): Case(lambda e, o: ["plot-embeddings", e.emb, "--color-by", "split", "--out", o],
                                       ".png", input=lambda e: e.emb),
    ("map", "--out"): Case(lambda e, o: ["map", "--table", e.table_tif, "--column", "emb_fused", "--store", e.store,
                                         "--out", o], ".tif", input=lambda e: e.table_tif, siblings=(".png",)),
    ("index", "(beside --embeddings)"): Case(_index_argv, ".faiss", derived=True, siblings=(".faiss.json",)),
    ("search", "--out"): Case(lambda e, o: ["search", "--embeddings", e.emb, "--positive", e.chip, "--k", 5, "--store",
                                            e.store, "--exact", "--out", o], ".parquet", input=lambda e: e.emb,
                              siblings=(".png",)),
    ("change", "--out"): Case(lambda e, o: ["change", "--embeddings", e.emb, "--method", "zscore", "--plot", "top:3",
                                            "--out", o], ".parquet", input=lambda e: e.emb, siblings=(".png",)),
    ("report", "--out"): Case(lambda e, o: ["report", "--image", e.img_html, "--out", o], ".html",
                              input=lambda e: e.img_html),
    ("demo", "--out"): Case(lambda e, o: ["demo", "--out", o, "--chips", 16], overwrite=False),
}
"""(command, output option) -> how to run it; the index's output has no option: it goes beside its table."""

KNOWN_GAPS: dict[tuple[tuple[str, str], str], str] = {}
"""Cases that fail today in code the policy's owners do not edit (reported); strict: fixing one fails the test
until its entry is removed."""


def _params(check: str, keep: Callable[[Case], bool] = lambda c: True) -> list:
    out = []
    for key, case in CASES.items():
        if keep(case):
            gap = KNOWN_GAPS.get((key, check))
            marks = [pytest.mark.xfail(strict=True, reason=gap)] if gap else []
            out.append(pytest.param(key, id=" ".join(key), marks=marks))
    return out


def _leaf_commands() -> dict[str, list[str]]:
    """Every registered command ("ingest folder" for a sub-command) -> the flags of its options."""
    import typer.main

    found: dict[str, list[str]] = {}

    def walk(cmd, path: str) -> None:
        if hasattr(cmd, "commands"):
            for name, sub in cmd.commands.items():
                walk(sub, f"{path} {name}".strip())
        else:
            found[path] = [o for p in cmd.params for o in (p.opts or []) if o.startswith("--")]

    walk(typer.main.get_command(app), "")
    return found


def _is_output_option(flag: str) -> bool:
    return flag == "--out" or flag.startswith("--out-") or flag.endswith(("-dir", "-out"))


def test_every_command_and_output_option_has_a_case():
    commands = _leaf_commands()
    assert len(commands) > 20 and "ingest pairs" in commands and "map" in commands
    covered = {c for c, _ in CASES}
    unknown = sorted(set(commands) - covered - set(READ_ONLY))
    assert not unknown, f"commands with no output-policy case and not read-only: {unknown}"
    missing = sorted((c, f) for c, flags in commands.items() for f in flags
                     if _is_output_option(f) and (c, f) not in CASES)
    assert not missing, f"output options with no output-policy case: {missing}"
    assert not covered - set(commands), f"cases for commands that do not exist: {covered - set(commands)}"
    for (c, f), case in CASES.items():
        assert case.derived or f in commands[c], (c, f)
        assert not case.overwrite or "--overwrite" in commands[c], (c, "has no --overwrite")
    for c, flags in commands.items():  # where --overwrite exists, the walk tests that it refuses foreign files
        assert "--overwrite" not in flags or any(case.overwrite for (k, _), case in CASES.items() if k == c), c


# -- fixtures ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Env:
    root = tmp_path_factory.mktemp("policy")
    st = generate_synthetic_aoi(root / "store", chips=32, chip_size=16, batch_size=16)
    emb = write_embedding_table(root / "emb.parquet", st.index["chip_id"].tolist(),
                                {"emb_fused": np.random.default_rng(0).normal(size=(32, 8))},
                                split=st.index["split"].tolist())
    torch.manual_seed(0)
    model = build_model("multimodal_vit", modalities={"s2": st.band_names("s2")}, patch_size=8, embed_dim=16,
                        depth=1, num_heads=2)
    export = export_model(model, root / "export", Normalizer.from_store(st))
    from published_layouts import random_timm

    torch.save(random_timm("resnet18", 3).state_dict(), root / "rn18.pth")
    Image.new("RGB", (8, 8), (10, 120, 200)).save(root / "img.png")
    (root / "src").mkdir()
    (root / "r.tif").write_bytes(b"raster input")
    (root / "catalog.json").write_text("{}")
    (root / "last.ckpt").write_bytes(b"a checkpoint")
    run = claim_dir(root / "run", "pretrain")
    (run / "config.yaml").write_text("objective: byol\n")
    return Env(root, st.path, emb, export, root / "rn18.pth", Path(shutil.copy(emb, root / "emb_table.tif")),
               Path(shutil.copy(root / "img.png", root / "img.html")), root / "last.ckpt", root / "src",
               root / "r.tif", root / "catalog.json", run)


def cli(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def refused(r, path: Path, *fragments: str) -> None:
    """Exit 1 with one ``error:`` line naming ``path`` (``warning:`` lines before it aside), no traceback."""
    lines = [ln for ln in r.output.strip().splitlines() if ln.strip() and not ln.startswith("warning: ")]
    assert r.exit_code == 1, r.output
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.output, r.output
    for f in (str(path), *fragments):
        assert f in lines[0], (f, lines[0])


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with a file's bytes (None for a directory)."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def _out(case: Case, where: Path, name: str = "out") -> Path:
    return where / (f"emb.parquet.emb_fused{case.suffix}" if case.derived else name + case.suffix)


# -- the walk ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("key", _params("foreign"))
def test_a_foreign_output_is_refused_with_or_without_overwrite(key, env, tmp_path):
    case = CASES[key]
    out = _out(case, tmp_path)
    out.write_bytes(FOREIGN)  # a directory output given as a path that is a file is refused too
    argv = case.argv(env, out)
    before = snapshot(tmp_path)
    refused(cli(*argv), out)
    if case.overwrite:
        refused(cli(*argv, "--overwrite"), out)
    assert out.read_bytes() == FOREIGN and snapshot(tmp_path) == before
    if case.is_dir:  # and a directory of someone else's
        out.unlink()
        out.mkdir()
        (out / "thesis.tex").write_bytes(FOREIGN)
        before = snapshot(tmp_path)
        refused(cli(*argv), out)
        if case.overwrite:
            refused(cli(*argv, "--overwrite"), out)
        assert snapshot(tmp_path) == before


@pytest.mark.parametrize("key", _params("sibling", lambda c: bool(c.siblings)))
def test_a_foreign_file_where_a_sibling_output_goes_is_refused(key, env, tmp_path):
    case = CASES[key]
    out = _out(case, tmp_path)
    argv = case.argv(env, out)
    for suffix in case.siblings:
        sib = out.with_name(out.name.removesuffix(case.suffix) + suffix)
        sib.write_bytes(FOREIGN)
        before = snapshot(tmp_path)
        refused(cli(*argv), sib)
        refused(cli(*argv, "--overwrite"), sib)
        assert snapshot(tmp_path) == before and not out.exists()
        sib.unlink()


@pytest.mark.parametrize("key", _params("input", lambda c: c.input is not None))
def test_an_input_is_never_the_output(key, env):
    case = CASES[key]
    src = case.input(env)
    before = snapshot(src) if src.is_dir() else src.read_bytes()
    argv = case.argv(env, src)
    refused(cli(*argv), src)
    if case.overwrite:
        refused(cli(*argv, "--overwrite"), src)
    assert (snapshot(src) if src.is_dir() else src.read_bytes()) == before


@pytest.mark.parametrize("key", _params("inside_store"))
def test_nothing_is_written_inside_a_chip_store(key, env, tmp_path):
    case = CASES[key]
    store = Path(shutil.copytree(env.store, tmp_path / "store"))
    outs = [store / "sub"] if case.is_dir else [_out(case, store), store / f"index{case.suffix}"]
    if case.suffix == ".parquet":
        outs.append(store / "index.parquet")  # the store's own index: `--out STORE/index.parquet`
    for out in dict.fromkeys(outs):
        argv = case.argv(env, out)
        before = snapshot(store)
        refused(cli(*argv, *(["--overwrite"] if case.overwrite else [])), out)
        assert snapshot(store) == before
    assert len(ChipStore(store)) == 32


@pytest.mark.parametrize("key", _params("inside_run"))
def test_nothing_is_written_inside_a_pretraining_run(key, env):
    case = CASES[key]
    out = _out(case, env.run, "extra")
    argv = case.argv(env, out)
    before = snapshot(env.run)
    refused(cli(*argv, *(["--overwrite"] if case.overwrite else [])), out)
    assert snapshot(env.run) == before


# -- the policy module itself ----------------------------------------------------------------------------------
def test_overwrite_replaces_only_what_earthembed_wrote_and_recognises(env, tmp_path):
    out = tmp_path / "pred.parquet"
    args = ["predict", "--embeddings", env.emb, "--store", env.store, "--task", "landcover", "--estimator", "knn",
            "--out", out]
    assert cli(*args).exit_code == 0
    refused(cli(*args), out, "already exists; pass --overwrite")
    out.write_bytes(out.read_bytes())  # a new inode: replacing it shows
    inode = out.stat().st_ino
    assert cli(*args, "--overwrite").exit_code == 0 and out.stat().st_ino != inode
    # an earthembed table of another kind is not a predictions table: not replaced
    emb = Path(shutil.copy(env.emb, tmp_path / "emb.parquet"))
    refused(cli(*args[:-1], emb, "--overwrite"), emb, "is not an earthembed predictions table")
    assert emb.read_bytes() == env.emb.read_bytes()
    # a map, its preview and a report page are recognised by their markers, and replaced with --overwrite
    tif = tmp_path / "m.tif"
    margs = ["map", "--table", out, "--column", "landcover", "--out", tif]
    assert cli(*margs).exit_code == 0
    refused(cli(*margs), tif, "already exists")
    assert cli(*margs, "--overwrite").exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.parquet", "m.png", "m.tif", "pred.parquet"]


def test_directory_outputs_are_claimed_and_recognised(tmp_path):
    few = claim_dir(tmp_path / "few", "fewshot")
    assert (few / DIR_MARKER).exists() and output_kind(few) == "fewshot"
    (few / "results.csv").write_text("x")
    assert check_output(few, "fewshot") == few  # re-running reuses its own directory
    with pytest.raises(OutputError, match="holds an earthembed few-shot output directory, not an earthembed segment"):
        check_output(few, "segment")
    # an output written before the marker existed is recognised by its entries, and only when it holds nothing else
    old = tmp_path / "old_run"
    (old / "checkpoints").mkdir(parents=True)
    (old / "config.yaml").write_text("objective: byol")
    assert output_kind(old) == "pretrain" and protected_dir_above(old / "x.parquet") == (old, "pretraining run directory")
    (old / "notes.txt").write_text("mine")
    assert output_kind(old) is None
    with pytest.raises(OutputError, match="is a non-empty directory and not an earthembed pretraining run"):
        check_output(old, "pretrain")


def test_atomic_writes_leave_nothing_behind_on_failure(tmp_path):
    target = tmp_path / "a.parquet"
    with pytest.raises(RuntimeError, match="disk full"), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name != target.name
        tmp.write_bytes(b"whole")
    assert target.read_bytes() == b"whole" and [p.name for p in tmp_path.iterdir()] == ["a.parquet"]
    # a file that appeared meanwhile is checked again before the rename
    png = tmp_path / "p.png"
    with pytest.raises(OutputError, match="not an earthembed PNG"), atomic_path(png, "png", overwrite=True) as tmp:
        png.write_bytes(FOREIGN)
        tmp.write_bytes(b"ours")
    assert png.read_bytes() == FOREIGN and sorted(p.name for p in tmp_path.iterdir()) == ["a.parquet", "p.png"]
    import matplotlib.pyplot as plt

    png.unlink()
    save_png(plt.figure(), png)
    first = png.stat().st_mode
    save_png(plt.figure(), png)  # its own PNG: replaced
    mask = os.umask(0o022)
    os.umask(mask)
    assert first & 0o777 == png.stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's private 0600
