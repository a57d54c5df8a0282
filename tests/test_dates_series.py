"""Time series of a store as `earthembed info` shows them, and `embed --dates series` (issue 22)."""

from __future__ import annotations

import json

from earthembed.data.modalities import get_modality
from test_dates import _store
from test_hostile_inputs import cli


def test_info_lists_each_time_series_with_dates_and_coverage(tmp_path):
    s2 = get_modality("s2_l2a")
    mods = [("s2_t2", s2), ("s2", s2), ("s2_t3", s2), ("dem", get_modality("elevation"))]
    d = {"s2": "2020-06-01", "s2_t2": "2021-03-01", "s2_t3": "2019-09-01"}
    st = _store(tmp_path / "s", mods, [
        (["s2", "s2_t2", "s2_t3", "dem"], d),
        (["s2", "s2_t3", "dem"], {"s2": "2020-06-03", "s2_t3": d["s2_t3"]}),
        (["s2", "s2_t2", "s2_t3", "dem"], d),
        (["s2", "dem"], {"s2": d["s2"]}),
    ])
    info = st.info()
    assert [s["base"] for s in info["time_series"]] == ["s2"]  # dem has one date: not a time series
    ts = info["time_series"][0]
    assert ts["keys"] == ["s2_t3", "s2", "s2_t2"] and ts["product"] == "s2_l2a"  # by date, not by name
    assert ts["dates"] == [
        {"key": "s2_t3", "date": "2019-09-01", "chips": 3, "date_range": ["2019-09-01", "2019-09-01"]},
        {"key": "s2", "date": "2020-06-01", "chips": 4, "date_range": ["2020-06-01", "2020-06-03"]},
        {"key": "s2_t2", "date": "2021-03-01", "chips": 2, "date_range": ["2021-03-01", "2021-03-01"]},
    ]
    assert ts["coverage"] == {"1": 1, "2": 1, "3": 2}  # chips by how many of the 3 dates they hold

    r = cli("info", st.path, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["time_series"] == info["time_series"]
    r = cli("info", st.path)
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    at = next(i for i, ln in enumerate(lines) if ln.startswith("series"))
    assert lines[at:at + 4] == [
        "series     s2: 3 dates (s2_l2a); chips by dates held: 2 with 3, 1 with 2, 1 with 1",
        "           s2_t3: 2019-09-01, 3 chips",
        "           s2: 2020-06-01, 4 chips (chips' dates 2020-06-01 .. 2020-06-03)",
        "           s2_t2: 2021-03-01, 2 chips",
    ]
    flat = _store(tmp_path / "flat", [("s2", s2)], [(["s2"], {"s2": d["s2"]})])
    assert flat.info()["time_series"] == [] and "series" not in cli("info", flat.path).output
