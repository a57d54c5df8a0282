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


# -- per-date embedding (embed --dates) ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dated(tmp_path_factory):
    """A 3-date synthetic store (40 chips of 16 px) and a tiny multimodal_vit export over s2 + s1."""
    import torch

    from earthembed.data.normalize import Normalizer
    from earthembed.models.export import export_model
    from earthembed.models.registry import build_model

    d = tmp_path_factory.mktemp("dated")
    st = generate_synthetic_aoi(d / "store", chips=40, chip_size=16, seed=1, dates=3)
    torch.manual_seed(0)
    model = build_model("multimodal_vit", modalities={k: st.band_names(k) for k in ("s2", "s1")}, patch_size=8,
                        embed_dim=16, depth=1, num_heads=2)
    return st, export_model(model, d / "export", Normalizer.from_store(st))


def _single_date_store(st: ChipStore, t: int, path) -> ChipStore:
    """Date ``t`` of ``st`` as a store of its own: s2 and s1 hold s2_t<t+1> and s1_t<t+1> (and their dates); dem
    keeps every chip in it, so its batches are the per-date run's."""
    keys = {b: date_key(b, t) for b in ("s2", "s1")}
    idx = st.index
    with StoreWriter(path, [st.modality(k).renamed(b) for b, k in keys.items()] + [st.modality("dem")],
                     st.chip_size, {}, batch_size=16) as w:
        for i in range(len(st)):
            arrays = {b: st.read(k, i) for b, k in keys.items() if st.present(k)[i]}
            w.add(ChipRecord(idx["chip_id"].iloc[i], {**arrays, "dem": st.read("dem", i)},
                             geometry=idx.geometry.iloc[i], crs=idx["crs"].iloc[i], aoi=idx["aoi"].iloc[i],
                             split=idx["split"].iloc[i],
                             dates={b: idx[f"date_{k}"].iloc[i] for b, k in keys.items() if b in arrays}))
    return ChipStore(path)


def test_per_date_rows_equal_each_date_embedded_alone(dated, tmp_path):
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from earthembed.embed.run import embed_store

    st, export = dated
    per = pq.read_table(embed_store(export, st, tmp_path / "per.parquet", dates="all", batch_size=16,
                                    progress=False))
    assert per.num_rows == 120 and per.column("t").type == "int16" and per.column("date").type == "date32[day]"
    names = per.column_names
    assert names[names.index("split") + 1:names.index("split") + 4] == ["t", "date", "date_key"]
    assert not [n for n in names if "_t2" in n or "_t3" in n]  # columns by base: emb_s2, never emb_s2_t2
    cols = [n for n in names if n not in ("t", "date", "date_key")]
    for t in range(3):
        rows = per.filter(pc.equal(per.column("t"), t))
        assert set(rows.column("date_key").to_pylist()) == {date_key("s2", t)}
        assert {str(d) for d in rows.column("date").to_pylist()} == {date_of(t)}
        one = _single_date_store(st, t, tmp_path / f"date{t}")
        alone = pq.read_table(embed_store(export, one, tmp_path / f"alone{t}.parquet", batch_size=16, progress=False))
        assert rows.select(cols).equals(alone.select(cols)), t  # bit-equal rows
    assert per.column("chip_id").to_pylist()[:40] == per.column("chip_id").to_pylist()[40:80]


def test_per_date_table_is_what_change_reads_and_shards_alike(dated, tmp_path):
    import pyarrow.parquet as pq

    from earthembed.embed.io import read_metadata, read_table
    from earthembed.embed.run import embed_store
    from earthembed.explore.change import read_series

    st, export = dated
    one = embed_store(export, st, tmp_path / "e.parquet", dates="0,2025-10-23", batch_size=16, progress=False)
    time = read_metadata(one)["time"]
    assert time["mode"] == "per_date" and time["t"] == [0, 2] and time["static"] == []
    assert time["series"] == {"s2": ["s2", "s2_t2", "s2_t3"], "s1": ["s1", "s1_t2", "s1_t3"]}
    assert time["dates"] == [date_of(t) for t in range(3)]
    s = read_series(one)
    assert s.dates == ["s2", "s2_t3"] and s.iso == [date_of(0), date_of(2)] and len(s.chip_ids) == 40
    ds = embed_store(export, st, str(tmp_path / "ds") + "/", dates=[0, "s2_t3"], shard_chips=16, batch_size=16,
                     progress=False)
    a, b = pq.read_table(one), read_table(ds)
    assert b.sort_by([("t", "ascending"), ("idx", "ascending")]).equals(a.select(b.column_names))
    assert read_metadata(ds)["time"] == time


def test_per_date_bad_inputs_and_skipped_chips(dated, tiny_store, tmp_path):
    from earthembed.embed.run import embed_store

    st, export = dated
    with pytest.raises(ValueError, match=r"--dates 2030-01-01: no chip has this date; the dates are t=0 2023-07-01 "
                                         r"\(s2\); t=1 2024-04-12 \(s2_t2\); t=2 2025-10-23 \(s2_t3\)"):
        embed_store(export, st, tmp_path / "x.parquet", dates="2030-01-01", progress=False)
    with pytest.raises(ValueError, match="no date index 3"):
        embed_store(export, st, tmp_path / "x.parquet", dates="1,3", progress=False)
    with pytest.raises(ValueError, match="not a date index, an ISO date"):
        embed_store(export, st, tmp_path / "x.parquet", dates="spring", progress=False)
    with pytest.raises(ValueError, match="'s2_t2' is date 2 of the series s2 .* ask for 's2'"):
        embed_store(export, st, tmp_path / "x.parquet", dates="all", modalities=["s2_t2"], progress=False)
    flat = generate_synthetic_aoi(tmp_path / "flat", chips=8, chip_size=16, seed=1)
    with pytest.raises(ValueError, match="no time series to embed per date: no modality has several dates"):
        embed_store(export, flat, tmp_path / "x.parquet", dates="all", progress=False)
    assert not (tmp_path / "x.parquet").exists()

    # s1 is missing at some dates of some chips: those (chip, date) rows are left out and counted
    out = embed_store(export, st, tmp_path / "s1.parquet", dates="all", modalities=["s1"], progress=False)
    from earthembed.data.dates import skipped_line
    from earthembed.embed.io import read_metadata, read_table

    missing = [int((~st.present(date_key("s1", t))).sum()) for t in range(3)]
    assert min(missing) > 0 and read_table(out).num_rows == 120 - sum(missing)
    time = read_metadata(out)["time"]
    assert [r["chips"] for r in time["skipped"]] == missing
    assert skipped_line(time) == (f"{sum(missing)} (chip, date) rows skipped: no imagery of s1 at that date "
                                  f"(t=0 2023-07-03 (s1): {missing[0]}; t=1 2024-04-14 (s1_t2): {missing[1]}; "
                                  f"t=2 2025-10-25 (s1_t3): {missing[2]})")


def test_embed_cli_dates(dated, tmp_path):
    from typer.testing import CliRunner

    from earthembed.cli import app

    st, export = dated
    base = ["embed", "--checkpoint", str(export), "--store", str(st.path), "--quiet"]
    r = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "e.parquet"), "--dates", "1,2", "--modalities", "s1"])
    assert r.exit_code == 0, r.output
    assert "2 dates of s1: t=1 2024-04-14, t=2 2025-10-25" in r.output
    assert "(chip, date) rows skipped: no imagery of s1 at that date (t=1 2024-04-14 (s1_t2): " in r.output
    r = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "f.parquet"), "--dates", "2019-01-01"])
    assert r.exit_code == 1 and r.output.startswith("error: --dates 2019-01-01: no chip has this date; the dates "
                                                    "are t=0 2023-07-01 (s2)") and len(r.output.splitlines()) == 1


def test_per_date_embed_resumes_after_kill(dated, tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    import earthembed.embed.run as run

    st, export = dated
    real, calls = run._write_part, {"n": 0}

    def dying_write(*a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt("killed")
        return real(*a, **k)

    monkeypatch.setattr(run, "_write_part", dying_write)
    out = tmp_path / "e.parquet"
    with pytest.raises(KeyboardInterrupt):
        run.embed_store(export, st, out, dates="all", batch_size=16, progress=False)
    monkeypatch.setattr(run, "_write_part", real)
    done = sorted(f.name for f in (tmp_path / "e.parquet.parts").glob("part-*.arrow"))
    assert done == ["part-t00000-000000000.arrow", "part-t00000-000000016.arrow", "part-t00000-000000032.arrow"]
    run.embed_store(export, st, out, dates="all", batch_size=16, progress=False)
    full = run.embed_store(export, st, tmp_path / "full.parquet", dates="all", batch_size=16, progress=False)
    assert pq.read_table(out).equals(pq.read_table(full))


def test_embed_cli_dates_published_encoder(dated, shared_data, tmp_path):
    """A published model is fitted to the series' bases (not to s2_t2 as a second s2) and embeds every date."""
    from typer.testing import CliRunner

    from earthembed.cli import app
    from earthembed.embed.io import read_metadata, read_table

    st, _ = dated
    out = tmp_path / "g.parquet"
    r = CliRunner().invoke(app, ["embed", "--encoder", "galileo:nano", "--weights", str(shared_data / "weights" /
                                 "galileo-nano"), "--store", str(st.path), "--out", str(out), "--dates", "all",
                                 "--quiet"])
    assert r.exit_code == 0, r.output
    time = read_metadata(out)["time"]
    assert time["series"] == {"s2": ["s2", "s2_t2", "s2_t3"], "s1": ["s1", "s1_t2", "s1_t3"]}
    assert time["static"] == ["dem"] and read_table(out).num_rows == 120
