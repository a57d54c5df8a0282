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
