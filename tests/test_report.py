"""The HTML report of a run renders in headless Chromium without errors (images decoded, no console output)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from aoi_helpers import band_stat_embeddings
from earthembed.data.synth import generate_synthetic_aoi
from earthembed.evaluate.fewshot import run_fewshot
from earthembed.evaluate.predict import predict_chips
from earthembed.explore.maps import side_by_side, write_map
from earthembed.explore.report import write_report
from earthembed.explore.search import search, write_hits

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run"]


def chromium() -> str:
    """Debian's chromium; CI installs it (.ci/run), so there its absence fails the test instead of skipping it."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is required in CI to check the HTML report (apt-get install -y chromium)")
        pytest.skip("chromium not installed (apt-get install -y chromium)")
    return exe


def render(page, tmp_path) -> tuple[str, str]:
    """(DOM after load and scripts, browser log) of a local page."""
    r = subprocess.run(
        [chromium(), *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
         "--virtual-time-budget=10000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout, r.stderr


def test_report_renders_in_chromium(tmp_path):
    store = generate_synthetic_aoi(tmp_path / "store", chips=64, chip_size=8, seed=3)
    emb = band_stat_embeddings(tmp_path / "store", tmp_path / "emb.parquet")
    run_fewshot({"stats": emb}, store, "landcover", tmp_path / "few", budgets="2,5,all", seeds=(0,),
                estimators="knn", baselines="none", n_boot=20)
    pred = predict_chips(emb, store, "landcover", tmp_path / "pred.parquet", estimator="knn").path
    [m_pred] = write_map(pred, "landcover", tmp_path / "pred.tif")
    [m_true] = write_map(store.path, "landcover", tmp_path / "true.tif")
    sbs = side_by_side([m_pred, m_true], ["predicted", "truth"], tmp_path / "sbs.png")
    hits = search(emb, ["synth_r0000_c0000"], k=8)
    write_hits(hits, tmp_path / "hits.parquet")
    page = write_report(tmp_path / "report.html", store=store.path, fewshot=tmp_path / "few", embeddings=emb,
                        color_by="landcover", predictions=[pred], maps=[m_pred], images=[(sbs, "predicted vs truth")],
                        hits=[tmp_path / "hits.parquet"], title="test <run>")
    text = page.read_text()
    assert "src=\"http" not in text and "href=\"http" not in text  # self-contained
    dom, log = render(page, tmp_path)
    for heading in ("Chip store", "Label efficiency", "Embedding space", "Predictions: landcover", "Maps",
                    "Similarity search", "test &lt;run&gt;"):
        assert heading in dom, heading
    assert 'data-images="5 images, 0 broken"' in dom, dom[:500]
    console = [line for line in log.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not console, console


def test_broken_image_is_reported(tmp_path):
    """The check itself can fail: a page with an undecodable image logs it to the console (the image is broken
    after the page is written: write_report refuses a file that is not an image)."""
    import re

    from PIL import Image

    good = tmp_path / "good.png"
    Image.new("RGB", (4, 4)).save(good)
    page = write_report(tmp_path / "r.html", images=[(good, "broken")])
    text = re.sub(r"base64,[^\"]+", "base64,bm90IHJlYWxseQ==", page.read_text())
    page.write_text(text)
    dom, log = render(page, tmp_path)
    assert 'data-images="1 images, 1 broken"' in dom
    assert any("image failed to load: broken" in line for line in log.splitlines())
