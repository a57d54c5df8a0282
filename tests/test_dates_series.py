"""Time series of a store as `earthembed info` shows them, and `embed --dates series` (issue 22)."""

from __future__ import annotations

import json

import pytest

from earthembed.data.modalities import get_modality
from test_dates import _store
from test_galileo import WEIGHTS
from test_hostile_inputs import cli, one_line_error


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


# -- embed --dates series ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def series_store(tmp_path_factory):
    """A 3-date synthetic store (s2, s1 at 3 dates; dem) and a flat one, 8 chips of 16 px each."""
    from earthembed.data.synth import generate_synthetic_aoi

    d = tmp_path_factory.mktemp("series")
    return (generate_synthetic_aoi(d / "dated", chips=8, chip_size=16, seed=3, dates=3),
            generate_synthetic_aoi(d / "flat", chips=8, chip_size=16, seed=3))


@pytest.mark.skipif(not (WEIGHTS / "encoder.pt").exists(), reason="no Galileo-nano weights here")
def test_dates_series_embeds_each_chips_series_as_one_vector_with_galileo(series_store, tmp_path):
    import numpy as np

    from earthembed.data.synth import date_of
    from earthembed.embed.io import read_embeddings, read_metadata

    st, _ = series_store
    out = tmp_path / "g.parquet"
    r = cli("embed", "--encoder", "galileo:nano", "--weights", WEIGHTS, "--store", st.path, "--out", out,
            "--dates", "series", "--quiet")
    assert r.exit_code == 0, r.output
    time = read_metadata(out)["time"]
    # Galileo's timestep is a month: s1, 2 days after s2 at each date index, shares s2's timestep
    keys = ["s2", "s2_t2", "s2_t3"]
    assert time["mode"] == "series" and time["date_keys"] == keys and time["t"] == [0, 1, 2]
    assert time["dates"] == [date_of(t, "s2") for t in range(3)]
    assert time["timesteps"] == {"s2": 0, "s1": 0, "s2_t2": 1, "s1_t2": 1, "s2_t3": 2, "s1_t3": 2, "dem": 0}
    assert time["series"] == {"s2": keys, "s1": ["s1", "s1_t2", "s1_t3"]} and time["static"] == ["dem"]
    assert ("each chip's series of 3 dates of s2, s1 as one vector: t=0 2023-07-01, t=1 2024-04-12, "
            "t=2 2025-10-23") in r.output
    index, emb = read_embeddings(out)
    assert len(index) == len(st) and "t" not in index.columns  # one row per chip, not per (chip, date)
    # the explicit name of what the fitted export does with a multi-date store: the same vectors
    plain = tmp_path / "plain.parquet"
    r = cli("embed", "--checkpoint", tmp_path / "g.model", "--store", st.path, "--out", plain, "--quiet")
    assert r.exit_code == 0, r.output
    np.testing.assert_array_equal(read_embeddings(plain)[1], emb)
    assert "time" not in read_metadata(plain)
    # through the data contract: the export reads each series whole, one observation of 3 dates (issue 22)
    model_json = json.loads((tmp_path / "g.model" / "model.json").read_text())
    assert model_json["config"]["timesteps"] == {"s2": [0, 1, 2], "s1": [0, 1, 2], "dem": 0}
    assert {k: m["dates"] for k, m in model_json["input_spec"]["modalities"].items()} == {"s2": 3, "s1": 3, "dem": 1}
    assert model_json["published"]["series"] == {"s2": keys, "s1": ["s1", "s1_t2", "s1_t3"]}
    # the sharded path reads the same way (each shard worker gets the series with the job)
    shards = tmp_path / "g_shards"
    r = cli("embed", "--checkpoint", tmp_path / "g.model", "--store", st.path, "--out", f"{shards}/",
            "--shard-chips", "4", "--dates", "series", "--quiet")
    assert r.exit_code == 0, r.output
    np.testing.assert_array_equal(read_embeddings(shards)[1], emb)
    # one date at a time is not what this model reads
    r = cli("embed", "--checkpoint", tmp_path / "g.model", "--store", st.path, "--out", tmp_path / "pd.parquet",
            "--dates", "all")
    one_line_error(r, "this model reads each series whole (s2: 3 dates, s1: 3 dates)", "--dates all")

    # --modalities names a series by its base: all its dates are read, and only those
    one = tmp_path / "s2.parquet"
    r = cli("embed", "--checkpoint", tmp_path / "g.model", "--store", st.path, "--out", one, "--dates", "series",
            "--modalities", "s2", "--quiet")
    assert r.exit_code == 0, r.output
    time = read_metadata(one)["time"]
    assert time["t"] == [0, 1, 2] and time["date_keys"] == keys  # the model's timesteps s2 fills
    assert time["series"] == {"s2": ["s2", "s2_t2", "s2_t3"]} and time["static"] == []
    assert time["timesteps"] == {"s2": 0, "s2_t2": 1, "s2_t3": 2}
    assert "each chip's series of 3 dates of s2 as one vector: t=0 2023-07-01, t=1 2024-04-12, t=2 2025-10-23" in r.output
    assert not np.array_equal(read_embeddings(one)[1], emb)  # without s1 and dem: another vector
    r = cli("embed", "--checkpoint", tmp_path / "g.model", "--store", st.path, "--out", tmp_path / "x.parquet",
            "--dates", "series", "--modalities", "s2_t2")
    one_line_error(r, "'s2_t2' is date 2 of the series s2", "ask for 's2'")
    # a store without a time series: no series to embed as one vector
    _, flat = series_store
    r = cli("embed", "--encoder", "galileo:nano", "--weights", WEIGHTS, "--store", flat.path, "--out",
            tmp_path / "flat.parquet", "--dates", "series")
    lines = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert r.exit_code == 1 and len(lines) == 1, r.output
    assert "--dates series: no time series to embed as one vector: no modality has several dates" in lines[0]
    assert not (tmp_path / "x.parquet").exists() and not (tmp_path / "flat.parquet").exists()


def test_dates_series_without_a_time_axis_is_one_line(series_store, tmp_path):
    import torch

    from earthembed.data.normalize import Normalizer
    from earthembed.models.export import export_model
    from earthembed.models.registry import build_model

    st, _ = series_store
    hint = "use --dates all for one row per (chip, date)"
    r = cli("embed", "--featurizer", "rcf", "--store", st.path, "--out", tmp_path / "r.parquet", "--dates", "series")
    one_line_error(r, "--dates series: the rcf featurizer has no time axis", hint)
    assert not list(tmp_path.iterdir())  # not even the featurizer export
    r = cli("embed", "--encoder", "timm:resnet18", "--store", st.path, "--out", tmp_path / "t.parquet", "--dates",
            "series")
    one_line_error(r, "--dates series: timm:resnet18 has no time axis", hint)  # refused before it is fitted
    torch.manual_seed(0)
    model = build_model("multimodal_vit", modalities={k: st.band_names(k) for k in ("s2", "s1")}, patch_size=8,
                        embed_dim=16, depth=1, num_heads=2)
    export = export_model(model, tmp_path / "vit", Normalizer.from_store(st))
    r = cli("embed", "--checkpoint", export, "--store", st.path, "--out", tmp_path / "v.parquet", "--dates", "series")
    one_line_error(r, "--dates series: multimodal_vit has no time axis", hint)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vit"]
