"""Galileo from the command line (issue 21): ``segment --init galileo:nano --weights/--download/--patch-size`` and
``demo --download``. Offline: the weights are ``../shared/data/weights/galileo-nano``; downloads come from a
local HTTP server serving that folder (``EARTHEMBED_WEIGHTS_MIRROR``), never the network."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from test_galileo import WEIGHTS, _serve
from test_hostile_inputs import cli, one_line_error
from test_segment import FAST, _mask_store

pytestmark = pytest.mark.skipif(not (WEIGHTS / "encoder.pt").exists(), reason="no Galileo-nano weights here")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return _mask_store(tmp_path_factory.mktemp("galileo_cli") / "masks")  # RGB chips of 16 px, 3 classes


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EARTHEMBED_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _segment(store, out, *args):
    return cli("segment", "--store", store.path, "--task", "mask", "--out", out, "--fractions", "1", "--seeds", "1",
               "--quiet", *args, *FAST)


def test_segment_from_galileo_with_weights_and_patch_size(store, tmp_path, empty_cache):
    out = tmp_path / "seg"
    r = _segment(store, out, "--init", "galileo:nano", "--weights", WEIGHTS, "--patch-size", "4", "--compare", "random")
    assert r.exit_code == 0, r.output
    res = pd.read_csv(out / "results.csv")
    miou = res[res.metric == "miou"].set_index("features")["value"]
    assert set(miou.index) == {"galileo:nano", "random"} and miou.notna().all()
    # the Galileo init was fitted at patch 4 from --weights; random copied its architecture (random weights)
    inits = {i["name"]: i for i in json.loads((out / "run.json").read_text())["inits"]}
    assert inits["galileo:nano"]["kind"] == "published" and inits["galileo:nano"]["model_id"].startswith("galileo:nano-p4@")
    assert inits["random"]["kind"] == "random" and inits["random"]["architecture"] == "galileo"
    assert inits["galileo:nano"]["modalities"] == inits["random"]["modalities"] == {"rgb": ["R", "G", "B"]}
    assert not list(empty_cache.rglob("*.pt"))  # --weights: nothing cached


def test_segment_download_fetches_into_the_cache(store, tmp_path, empty_cache, monkeypatch):
    out = tmp_path / "seg"
    r = _segment(store, out, "--init", "galileo:nano")
    one_line_error(r, "galileo:nano: no weights file found", str(empty_cache), "--download", "--weights")
    assert not out.exists()
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    srv = _serve(WEIGHTS.parent)  # a mirror of the publisher's files: ../shared/data/weights
    try:
        monkeypatch.setenv("EARTHEMBED_WEIGHTS_MIRROR", f"http://127.0.0.1:{srv.server_port}")
        r = _segment(store, out, "--init", "galileo:nano", "--download", "--patch-size", "8", "--freeze-encoder")
    finally:
        srv.shutdown()
    assert r.exit_code == 0, r.output
    cached = empty_cache / "galileo" / "nano" / "encoder.pt"
    assert cached.read_bytes() == (WEIGHTS / "encoder.pt").read_bytes()
    res = pd.read_csv(out / "results.csv")
    assert set(res["features"]) == {"galileo:nano"}


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--init", "timm:resnet18", "--patch-size", "4"], ["--patch-size does not apply to timm models", "galileo:"]),
        (["--init", "random", "--model", "galileo", "--patch-size", "4"],
         ["--patch-size goes with a published init", "galileo:nano"]),
        (["--init", "galileo:nano", "--weights", WEIGHTS, "--patch-size", "3"], ["patch size 3 does not divide"]),
        (["--init", "galileo:nano", "--weights", WEIGHTS, "--patch-size", "9"], ["patch_size 9 is outside 1..8"]),
        (["--init", "random", "--model", "galileo", "--weights", WEIGHTS], ["--weights names the file of one published init"]),
        (["--init", "galileo:nano", "--weights", "/nonexistent/encoder.pt"], ["/nonexistent"]),
    ],
)
def test_segment_bad_galileo_options_are_one_line_and_write_nothing(store, tmp_path, empty_cache, args, fragments):
    out = tmp_path / "seg"
    r = _segment(store, out, *args)
    one_line_error(r, *fragments)
    assert not out.exists() or not any(out.iterdir())


def test_demo_download_reaches_the_galileo_weights(tmp_path, empty_cache, monkeypatch, capsys):
    """``demo --download`` passes through to ``run_demo``; without it (and no cache) the demo says in one line how
    to add Galileo, with it the weights are fetched (sha256-checked) into the cache. ``run_demo`` is replaced by
    its Galileo step, so this takes seconds, not the demo's minutes."""
    import earthembed.demo as demo

    seen = []

    def fake_run_demo(out, download=False, **kw):
        seen.append(download)
        src = demo._galileo_source(download)
        seen.append(None if src is None else Path(src.opened.provenance["weights_file"]))

    monkeypatch.setattr(demo, "run_demo", fake_run_demo)
    r = cli("demo", "--out", tmp_path / "d1")
    assert r.exit_code == 0, r.output
    assert seen == [False, None]
    said = capsys.readouterr().out + r.output
    lines = [ln for ln in said.splitlines() if "galileo:nano left out" in ln]
    assert len(lines) == 1 and "earthembed demo --download" in lines[0], said
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    srv = _serve(WEIGHTS.parent)
    try:
        monkeypatch.setenv("EARTHEMBED_WEIGHTS_MIRROR", f"http://127.0.0.1:{srv.server_port}")
        r = cli("demo", "--out", tmp_path / "d2", "--download")
    finally:
        srv.shutdown()
    assert r.exit_code == 0, r.output
    assert seen[2] is True and seen[3] == empty_cache / "galileo" / "nano" / "encoder.pt"
    assert seen[3].read_bytes() == (WEIGHTS / "encoder.pt").read_bytes()
