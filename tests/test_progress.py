"""The shared progress helper: a tqdm bar on a terminal, a plain line every N% otherwise, nothing when quiet."""

import io

import pytest

from earthembed.progress import progress


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_not_a_terminal_prints_a_line_every_n_percent():
    out = io.StringIO()
    with progress(total=40, desc="few-shot", unit="fits", every_pct=25, stream=out) as bar:
        assert bar.mode == "lines"
        for _ in range(40):
            bar.update()
    lines = out.getvalue().splitlines()
    assert [ln.split(":")[1].split("%")[0].strip() for ln in lines] == ["25", "50", "75", "100"]
    assert lines[0].startswith("few-shot: 25% (10/40 fits)") and "ETA" in lines[0]
    assert "\r" not in out.getvalue() and "ETA" not in lines[-1]


def test_a_failed_step_prints_no_final_line_after_its_error():
    import gc

    out = io.StringIO()
    with pytest.raises(ValueError), progress(total=10, desc="ingest", unit="file", every_pct=50, stream=out) as bar:
        bar.update(3)
        raise ValueError("corrupt file")
    assert out.getvalue() == ""  # 30%: below the first 50% line, and no "final" line for a failed step

    def consume() -> None:
        for i in progress(range(10), desc="ingest", unit="file", every_pct=50, stream=out):
            if i == 7:
                raise ValueError("corrupt file")

    with pytest.raises(ValueError):
        consume()
    gc.collect()  # the wrapped generator is finalised here, after the error
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ingest: 50% (5/10 file)")  # no partial line after the error


def test_big_steps_print_one_line_and_the_default_is_ten_percent(monkeypatch):
    out = io.StringIO()
    bar = progress(total=100, desc="x", stream=out)
    bar.update(35)  # crosses 10, 20, 30: one line, not three
    bar.update(65)
    bar.close()
    bar.close()  # idempotent
    assert [ln.split("%")[0].split()[-1] for ln in out.getvalue().splitlines()] == ["35", "100"]
    monkeypatch.setenv("EARTHEMBED_PROGRESS_PCT", "50")
    out = io.StringIO()
    for _ in progress(range(4), desc="it", stream=out):
        pass
    assert len(out.getvalue().splitlines()) == 2  # 50% and the final line
    monkeypatch.setenv("EARTHEMBED_PROGRESS_PCT", "lots")
    with pytest.raises(ValueError, match="EARTHEMBED_PROGRESS_PCT"):
        progress(total=3, stream=io.StringIO())


def test_terminal_gets_a_tqdm_bar_and_quiet_gets_nothing():
    tty = _Tty()
    with progress(total=10, desc="embed", unit="chip", stream=tty) as bar:
        assert bar.mode == "bar"
        bar.update(10)
    text = tty.getvalue()
    assert "embed" in text and "10/10" in text and "\r" in text  # a redrawn bar with the count
    for stream in (_Tty(), io.StringIO()):
        with progress(total=10, desc="q", quiet=True, stream=stream) as bar:
            assert bar.mode == "quiet"
            bar.update(10)
        assert stream.getvalue() == ""


def test_eta_from_work_when_items_cost_different_amounts(monkeypatch):
    """Few-shot runs its expensive fits first: an ETA from the count would say 9x too long at 10%."""
    import earthembed.progress as prog

    now = [0.0]
    monkeypatch.setattr(prog.time, "perf_counter", lambda: now[0])
    out = io.StringIO()
    bar = progress(total=10, desc="few-shot", unit="fits", every_pct=10, stream=out)
    bar.set_total_work(20.0)
    now[0] = 10.0
    bar.update(1, work=10.0)  # one fit of half the work in 10 s
    assert "ETA 10 s" in out.getvalue().splitlines()[0]  # count-based would be 90 s
    tty = _Tty()
    bar = progress(total=10, desc="few-shot", unit="fits", stream=tty)
    bar.set_total_work(20.0)
    now[0] = 20.0
    bar.update(1, work=10.0)
    bar.close()
    assert "ETA 10 s" in tty.getvalue() and "1/10" in tty.getvalue()


def test_every_ingest_reports_progress_unless_quiet(tmp_path, capsys, monkeypatch):
    import numpy as np
    import rasterio
    from PIL import Image
    from rasterio.transform import from_origin
    from typer.testing import CliRunner

    from earthembed.cli import app
    from earthembed.data.ingest.folder import ingest_folder
    from earthembed.data.ingest.rasters import ingest_rasters

    monkeypatch.setenv("EARTHEMBED_PROGRESS_PCT", "50")
    for i, cls in enumerate(["forest", "forest", "water", "water"]):  # 4 files
        (tmp_path / "src" / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(tmp_path / "src" / cls / f"{i}.png")
    tif = tmp_path / "s2.tif"  # 64x64 px: 4 windows of 32 px
    with rasterio.open(tif, "w", driver="GTiff", width=64, height=64, count=13, dtype="uint16", crs="EPSG:32631",
                       transform=from_origin(500000, 4600000, 10, 10)) as d:
        d.write(np.full((13, 64, 64), 1000, np.uint16))
    ingest_folder(tmp_path / "src", tmp_path / "f", progress=True)
    ingest_rasters({"s2": tif}, tmp_path / "r", 32, progress=True)
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("ingest folder f: 50% (2/4 file)")
    assert err[1].startswith("ingest folder f: 100% (4/4 file)")
    assert err[3].startswith("ingest rasters r: 100% (4/4 window)") and len(err) == 4
    ingest_folder(tmp_path / "src", tmp_path / "f2")
    ingest_rasters({"s2": tif}, tmp_path / "r2", 32)
    assert capsys.readouterr().err == ""  # the Python API is silent by default
    runner = CliRunner()
    r = runner.invoke(app, ["ingest", "folder", str(tmp_path / "src"), "--out", str(tmp_path / "c1")])
    assert r.exit_code == 0 and "ingest folder c1: 100% (4/4 file)" in r.output, r.output
    r = runner.invoke(app, ["ingest", "rasters", "-m", f"s2={tif}", "--chip-size", "32", "-o", str(tmp_path / "c2"),
                            "--quiet"])
    assert r.exit_code == 0 and "ingest rasters" not in r.output, r.output
