"""Time in stores (issue 22): date series, synth --dates truth, per-date embedding (embed --dates)."""

from __future__ import annotations

import numpy as np
import pytest
import shapely

from earthembed.data.dates import date_key, date_series, time_series
from earthembed.data.modalities import get_modality
from earthembed.data.store import ChipRecord, ChipStore, StoreWriter
from earthembed.data.synth import CHANGE_KINDS, CLASSES, SyntheticAOI, date_of, generate_synthetic_aoi


def _store(path, mods, chips):
    """A store of 8x8 chips: ``mods`` [(key, modality)], ``chips`` [(arrays keys, {key: date})]."""
    with StoreWriter(path, [m.renamed(k) for k, m in mods], 8, {}, batch_size=4) as w:
        for i, (keys, dates) in enumerate(chips):
            arrays = {k: np.full((m.num_bands, 8, 8), 100 + i, m.dtype) for k, m in mods if k in keys}
            w.add(ChipRecord(f"c{i}", arrays, geometry=shapely.box(i, 0, i + 1, 1), crs="EPSG:4326", split="train",
                             dates=dates))
    return ChipStore(path)


def test_date_series_groups_product_and_bands_and_orders_by_date(tmp_path):
    s2, rgb = get_modality("s2_l2a"), get_modality("rgb")
    mods = [("s2", s2), ("s2_t2", s2), ("s2_t3", s2), ("rgb", rgb), ("rgb_t2", rgb.select(["R", "G"])),
            ("naip_2012", rgb), ("naip_2010", rgb), ("dem", get_modality("elevation"))]
    mods = [m for m in mods if m[0] not in ("naip_2012", "naip_2010")]  # rgb and naip share product and bands
    d = {"s2": "2020-06-01", "s2_t2": "2021-03-01", "s2_t3": "2019-09-01"}
    chips = [(["s2", "s2_t2", "s2_t3", "rgb", "rgb_t2", "dem"], d),
             (["s2", "s2_t3", "rgb", "dem"], {**{k: v for k, v in d.items() if k != "s2_t2"}, "s2": "2020-06-03"}),
             (["s2", "s2_t2", "s2_t3", "dem"], d)]
    st = _store(tmp_path / "a", mods, chips)
    series = date_series(st)
    assert list(series) == ["s2", "rgb", "rgb_t2", "dem"]  # other bands: another modality, not another date
    s = series["s2"]
    assert s.keys == ("s2_t3", "s2", "s2_t2") and s.dates == ("2019-09-01", "2020-06-01", "2021-03-01")
    assert s.base == "s2" and s.product == "s2_l2a" and len(s) == 3 and s.key_at(3) is None
    cd = s.chip_dates(st.index)  # per chip: its own dates, NaT where it has none
    assert str(cd[1, 1]) == "2020-06-03" and np.isnat(cd[1, 2]) and str(cd[0, 2]) == "2021-03-01"
    assert list(time_series(st)) == ["s2"]
    assert series["dem"].keys == ("dem",) and series["dem"].dates == (None,)

    # keys named by year (no _t suffix): the earliest is the base; undated keys order by their _t suffix
    mods = [("naip_2012", rgb), ("naip_2010", rgb), ("x_t3", s2), ("x", s2), ("x_t2", s2)]
    st = _store(tmp_path / "b", mods, [(["naip_2012", "naip_2010", "x", "x_t2", "x_t3"],
                                        {"naip_2012": "2012-07-31", "naip_2010": "2010-06-29"})] * 2)
    series = date_series(st)
    assert series["naip_2010"].keys == ("naip_2010", "naip_2012")
    assert series["x"].keys == ("x", "x_t2", "x_t3") and series["x"].dates == (None, None, None)
    assert [date_key("s2", t) for t in range(3)] == ["s2", "s2_t2", "s2_t3"]


@pytest.fixture(scope="module")
def dated_batch():
    return SyntheticAOI(144, 16, seed=2, dates=4).batch(0, 144)


def test_synth_dates_truth_matches_injected_pixels(dated_batch):
    bt = dated_batch
    assert bt.classes_t.shape == (144, 4, 16, 16)
    np.testing.assert_array_equal(bt.classes_t[:, 0], bt.mask)
    assert not bt.change[:, 0].any()
    made = {"flood": CLASSES.index("water"), "clearing": CLASSES.index("bare"),
            "construction": CLASSES.index("built_up")}
    kinds_seen = set()
    for t in range(1, 4):
        before, after = bt.classes_t[:, t - 1], bt.classes_t[:, t]
        px = before != after
        np.testing.assert_array_equal(bt.change[:, t], px.any(axis=(1, 2)))
        np.testing.assert_allclose(bt.change_frac[:, t], px.mean(axis=(1, 2)))
        assert (bt.change_frac[bt.change[:, t], t] >= 0.03).all()
        assert 0.05 < bt.change[:, t].mean() < 0.35
        for j in np.flatnonzero(bt.change[:, t]):
            kind = CHANGE_KINDS[bt.change_kind[j, t]]
            kinds_seen.add(kind)
            assert (after[j][px[j]] == made[kind]).all()
            if kind == "clearing":
                assert (before[j][px[j]] == CLASSES.index("forest")).all()
        assert (bt.change_kind[~bt.change[:, t], t] == 0).all()
        # the pixels say so: red and SWIR (B04, B11) move far more where the ground changed than where only the
        # season did (NIR moves with the season too: leaf-off forest), and so does SAR
        a = bt.arrays[date_key("s2", t - 1)][:, [3, 10]].astype(float)
        b = bt.arrays[date_key("s2", t)][:, [3, 10]].astype(float)
        ok = ((a > 0) & (b > 0)).all(axis=1)  # not a nodata stripe
        diff = np.abs(b - a).mean(axis=1)
        assert np.median(diff[px & ok]) > 4 * np.median(diff[~px & ok])
        s1 = np.abs(bt.arrays[date_key("s1", t)][:, 0] - bt.arrays[date_key("s1", t - 1)][:, 0])
        assert np.median(s1[px]) > 2.5 * np.median(s1[~px])
    assert kinds_seen == {"flood", "clearing", "construction"}


def test_synth_dates_seasons_are_not_change_and_batches_are_independent(dated_batch):
    bt = dated_batch
    assert [date_of(t) for t in range(4)] == ["2023-07-01", "2024-04-12", "2025-10-23", "2026-01-05"]
    forest = (bt.classes_t[:, 3] == CLASSES.index("forest")).mean(axis=(1, 2)) > 0.8
    assert forest.sum() >= 3 and not bt.change[forest].any()
    nir = {t: bt.arrays[date_key("s2", t)][forest, 7].astype(float).mean() for t in (0, 3)}
    assert nir[3] < 0.7 * nir[0]  # leaf-off in January, same forest
    part = SyntheticAOI(144, 16, seed=2, dates=4).batch(50, 70)
    for k, v in part.arrays.items():
        np.testing.assert_array_equal(v, bt.arrays[k][50:70])
    np.testing.assert_array_equal(part.change_kind, bt.change_kind[50:70])
    assert 0.9 < bt.has["s2_t3"].mean() < 1 and bt.has["s2"].all()


def test_synth_dates_store_has_truth_labels_and_series(tmp_path):
    from earthembed.evaluate.tasks import load_task

    st = generate_synthetic_aoi(tmp_path / "d3", chips=48, chip_size=8, seed=1, dates=3)
    bt = SyntheticAOI(48, 8, seed=1, dates=3).batch(0, 48)
    idx = st.index
    for t in (1, 2):
        np.testing.assert_array_equal(idx[f"change_t{t}"].to_numpy(bool), bt.change[:, t])
        assert idx[f"change_kind_t{t}"].tolist() == [CHANGE_KINDS[k] for k in bt.change_kind[:, t]]
        np.testing.assert_allclose(idx[f"change_frac_t{t}"].to_numpy(float), bt.change_frac[:, t])
        assert st.labels[f"change_t{t}"]["kind"] == "class" and st.labels[f"change_frac_t{t}"]["kind"] == "fraction"
    assert "change_t3" not in idx.columns and "change_t0" not in idx.columns
    task = load_task(st, "change_kind_t1")
    assert task.classes[:4] == list(CHANGE_KINDS) and len(task.y) == 48
    assert set(load_task(st, "change_t2").classes) == {"False", "True"}
    s = date_series(st)
    assert s["s2"].keys == ("s2", "s2_t2", "s2_t3") and s["s1"].keys == ("s1", "s1_t2", "s1_t3")
    assert s["s2"].dates == tuple(date_of(t) for t in range(3)) and s["s1"].dates[1] == date_of(1, "s1")
    assert idx["date_s2_t2"].isna().sum() == (~st.present("s2_t2")).sum()


def test_synth_cli_dates(tmp_path):
    import typer
    from typer.testing import CliRunner

    from earthembed.data.cli import synth

    app = typer.Typer()
    app.command("synth")(synth)
    app.command("other")(lambda: None)
    res = CliRunner().invoke(app, ["synth", "--out", str(tmp_path / "s"), "--chips", "16", "--chip-size", "8",
                                   "--dates", "2", "-q"])
    assert res.exit_code == 0, res.output
    assert "2 dates; chips changed per date step (change_t<k>): t1: " in res.output
    assert set(ChipStore(tmp_path / "s").modalities) >= {"s2_t2", "s1_t2"}
    res = CliRunner().invoke(app, ["synth", "--out", str(tmp_path / "z"), "--dates", "0", "-q"])
    assert res.exit_code == 1 and "dates must be >= 1" in res.output
