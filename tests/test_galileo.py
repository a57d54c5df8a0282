"""Galileo: equal to the publisher's reference, fitted to stores by band name, weights found/fetched safely.

The reference numbers (``tests/fixtures/galileo_nano_reference.npz``) were recorded once with the publisher's
``single_file_galileo.py`` at nasaharvest/galileo 0f0b5b95ac81acef4b74cf4686dc877202f4541b on the published
nano weights (``scripts/make_galileo_fixture.py`` has the command).
"""

from __future__ import annotations

import functools
import http.server
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from earthembed.data.modalities import BandMismatchError, get_modality
from earthembed.data.store import ChipRecord, StoreWriter
from earthembed.models.galileo import GalileoInput, GalileoNet
from earthembed.models.published.galileo import (
    GALILEO,
    PRETRAINING_STATS,
    fit_galileo,
    open_galileo,
    pixel_stats,
)
from earthembed.models.published.spec import parse_spec
from test_hostile_inputs import cli, one_line_error

WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "data" / "weights" / "galileo-nano"
FIXTURE = Path(__file__).parent / "fixtures" / "galileo_nano_reference.npz"
NANO = parse_spec("galileo:nano")


@pytest.fixture(scope="module")
def nano():
    return open_galileo(NANO, WEIGHTS)


def _net(nano) -> GalileoNet:
    net = GalileoNet(**GALILEO["nano"].arch).eval()
    net.load_state_dict({k[len("net."):]: v for k, v in nano.state.items()}, strict=True)
    return net


@pytest.mark.parametrize("patch", [8, 4])
def test_tokens_and_embedding_equal_the_reference_implementation(nano, patch):
    d = np.load(FIXTURE)
    assert str(d["reference_commit"]) == "0f0b5b95ac81acef4b74cf4686dc877202f4541b"

    def t(k: str) -> torch.Tensor:
        return torch.from_numpy(d[f"input_{k}"])

    # the reference's [B, H, W, T, C] pixels and per-pixel masks; ours [B, T, C, H, W] and per-group flags
    inp = GalileoInput(t("s_t_x").permute(0, 3, 4, 1, 2), t("s_t_m")[:, 0, 0].bool(), t("months"),
                       t("sp_x").permute(0, 3, 1, 2), t("sp_m")[:, 0, 0].bool(), t("t_x"), t("t_m").bool(),
                       t("st_x"), t("st_m").bool())
    with torch.no_grad():
        tok = _net(nano)(inp, patch_size=patch)
    for name, ours, hidden in (("s_t", tok.space_time, tok.space_time_hidden), ("sp", tok.space, tok.space_hidden),
                               ("t", tok.time, tok.time_hidden), ("st", tok.static, tok.static_hidden)):
        ref, ref_hidden = d[f"p{patch}_{name}_x"], d[f"p{patch}_{name}_m"] != 0
        np.testing.assert_array_equal(hidden.numpy(), ref_hidden)
        assert (~ref_hidden).any()
        np.testing.assert_allclose(ours.numpy()[~ref_hidden], ref[~ref_hidden], rtol=0, atol=1e-5)
    np.testing.assert_allclose(tok.pooled().numpy(), d[f"p{patch}_pooled"], rtol=0, atol=1e-5)


def test_published_normalisation_is_the_publishers_file():
    norm = json.loads((WEIGHTS / "normalization.json").read_text())
    st = ["VV", "VH", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"]  # key "13", NDVI last
    for i, b in enumerate(st):
        assert PRETRAINING_STATS[b] == (norm["13"]["mean"][i], norm["13"]["std"][i])
    for i, b in enumerate(["elevation", "slope"]):  # key "16": SRTM first
        assert PRETRAINING_STATS[b] == (norm["16"]["mean"][i], norm["16"]["std"][i])
    shift, div = pixel_stats()["B04"]
    m, s = PRETRAINING_STATS["B04"]
    assert (shift, div) == (m - 2 * s, 4 * s)


def _store(path: Path, modalities: dict, arrays: dict, n: int, size: int = 16, dates: dict | None = None):
    with StoreWriter(path, [m.renamed(k) for k, m in modalities.items()], chip_size=size) as w:
        for i in range(n):
            w.add(ChipRecord(chip_id=f"c{i}", arrays={k: a[i] for k, a in arrays.items()},
                             dates=dict(dates or {})))
    from earthembed.data.store import ChipStore

    return ChipStore(path)


def _s2(n: int, size: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(200, 4000, size=(n, 13, size, size)).astype(np.uint16)


def _embed(model, store, bands=None):
    from earthembed.data.dataset import ChipDataset
    from earthembed.data.normalize import Normalizer

    ds = ChipDataset(store, {k: list(v) for k, v in model.modalities.items()},
                     normalizer=Normalizer.from_dict(model._meta["normalization"]))
    batch = ds.read_batch(np.arange(len(ds)))
    with torch.no_grad():
        return model(batch, bands=bands)


def _fit(nano, store, **kw):
    model, meta = fit_galileo(nano, store, **kw)
    model._meta = meta
    return model, meta


def test_bands_are_matched_by_name_whatever_their_order(nano, tmp_path):
    s2 = get_modality("s2_l1c")
    x = _s2(4)
    order = list(reversed(range(13)))  # a store holding the same bands in reverse order
    rev = s2.select([s2.band_names[i] for i in order])
    a = _store(tmp_path / "a", {"s2": s2}, {"s2": x}, 4)
    b = _store(tmp_path / "b", {"s2": rev}, {"s2": x[:, order]}, 4)
    ma, meta = _fit(nano, a)
    mb, _ = _fit(nano, b)
    assert meta["published"]["ignored_store_bands"] == {"s2": ["B01", "B09", "B10"]}
    assert meta["published"]["derived_bands"] == {"s2": ["NDVI"]}
    torch.testing.assert_close(_embed(ma, a).fused, _embed(mb, b).fused, rtol=0, atol=1e-6)
    # feeding them by position instead (bands in the wrong order) changes the embedding
    wrong = _store(tmp_path / "w", {"s2": s2}, {"s2": x[:, order]}, 4)
    assert (_embed(ma, a).fused - _embed(ma, wrong).fused).abs().max() > 1e-2


def test_absent_modality_equals_the_model_without_it_and_groups_need_all_bands(nano, tmp_path):
    s2, s1 = get_modality("s2_l2a"), get_modality("s1_grd_db")
    rng = np.random.default_rng(1)
    x2 = _s2(3)[:, [i for i in range(13) if i != 10]]
    x1 = rng.normal(-12, 4, size=(3, 2, 16, 16)).astype(np.float32)
    both = _store(tmp_path / "both", {"s2": s2, "s1": s1}, {"s2": x2, "s1": x1}, 3)
    only = _store(tmp_path / "only", {"s2": s2}, {"s2": x2}, 3)
    mb, meta = _fit(nano, both)
    mo, _ = _fit(nano, only)
    assert set(meta["modalities"]) == {"s2", "s1"}
    full = _embed(mb, both)
    assert full.present["s1"].all() and (full.modality["s1"] != full.modality["s2"]).any()
    from earthembed.data.dataset import ChipDataset
    from earthembed.data.normalize import Normalizer

    batch = ChipDataset(both, mb.modalities, normalizer=Normalizer.from_dict(meta["normalization"])).read_batch(np.arange(3))
    batch = batch.with_obs("s1", present=torch.tensor([[True], [False], [True]]))
    with torch.no_grad():
        out = mb(batch)
    torch.testing.assert_close(out.fused[1], _embed(mo, only).fused[1], rtol=0, atol=1e-6)
    assert not out.present["s1"][1] and torch.all(out.modality["s1"][1] == 0)
    # an S2 store without B12: SWIR is hidden (B11 not read alone), with a warning
    part = s2.select([b for b in s2.band_names if b != "B12"])
    st = _store(tmp_path / "part", {"s2": part}, {"s2": x2[:, :-1]}, 3)
    with pytest.warns(UserWarning, match="B11"):
        m, meta = _fit(nano, st)
    assert "B11" not in m.modalities["s2"] and meta["published"]["incomplete_groups"] == {"s2": ["B11"]}


def test_rgb_store_feeds_the_rgb_group_in_s2_units_and_months_come_from_dates(nano, tmp_path):
    rgb = get_modality("rgb")
    x = np.random.default_rng(2).integers(0, 255, size=(2, 3, 16, 16)).astype(np.uint8)
    st = _store(tmp_path / "rgb", {"rgb": rgb}, {"rgb": x}, 2, dates={"rgb": "2020-01-15"})
    m, meta = _fit(nano, st)
    assert m.band_map == {"rgb": {"R": "B04", "G": "B03", "B": "B02"}}
    norm = meta["normalization"]["stats"]["rgb"]
    shift, div = pixel_stats()["B04"]
    assert norm["bands"][0] == "R" and norm["mean"][0] == pytest.approx(shift * 255 / 3000)
    assert "rgb_to_s2_dn" in meta["published"]["normalization"]
    from earthembed.data.dataset import ChipDataset
    from earthembed.data.normalize import Normalizer

    batch = ChipDataset(st, m.modalities, normalizer=Normalizer.from_dict(meta["normalization"])).read_batch(np.arange(2))
    assert batch["rgb_month"].tolist() == [0, 0]  # January
    with torch.no_grad():
        jan = m(batch).fused
        june = m({**batch, "rgb_month": torch.tensor([-1, 5])}).fused  # unknown -> default June
        may = m({**batch, "rgb_month": torch.tensor([4, 4])}).fused
    explicit = m({**batch, "rgb_month": torch.tensor([5, 5])}).fused
    torch.testing.assert_close(june[1], explicit[1], rtol=0, atol=0)
    assert (jan - june).abs().max() > 1e-4 and (may - june).abs().max() > 1e-4


def test_multi_date_inputs_become_timesteps(nano, tmp_path):
    from earthembed.models.galileo import GalileoEncoder

    s2 = get_modality("s2_l1c")
    bands = [b for b in s2.band_names if b not in ("B01", "B09", "B10")]
    m = GalileoEncoder({"s2": bands, "s2_t2": bands}, timesteps={"s2": 0, "s2_t2": 1}, **GALILEO["nano"].arch,
                       pixel_stats=pixel_stats()).eval()
    m.load_state_dict({**m.state_dict(), **nano.state})
    x = torch.randn(2, len(bands), 16, 16)
    batch = {"s2": x, "s2_t2": x.flip(-1), "s2_month": torch.tensor([0, 3]), "s2_t2_month": torch.tensor([6, 9])}
    _, inputs = m.resolve_inputs(batch, None, None)
    gin, _ = m.build_input(batch, inputs)
    assert gin.space_time.shape[1] == 2 and gin.months.tolist() == [[0, 6], [3, 9]]
    torch.testing.assert_close(gin.space_time[:, 1, 2:5], x.flip(-1)[:, :3])  # RGB of date 2
    with torch.no_grad():
        two = m(batch)
        one = m({"s2": x, "s2_month": torch.tensor([0, 3])})
    assert two.present["s2_t2"].all() and (two.fused - one.fused).abs().max() > 1e-4


def test_bad_weights_and_bad_stores_are_named(nano, tmp_path):
    # another size: shapes named
    state = torch.load(WEIGHTS / "encoder.pt", map_location="cpu", weights_only=True)
    with pytest.raises(ValueError, match=r"embedding size 128.*not 192.*galileo:nano"):
        from earthembed.models.published.galileo import _state_for

        _state_for(state, Path("x.pt"), GALILEO["tiny"].arch)
    # a truncated state dict: missing keys named
    bad = {k: v for k, v in state.items() if not k.startswith("blocks.3.mlp")}
    torch.save(bad, tmp_path / "trunc.pt")
    with pytest.raises(ValueError, match=r"trunc.pt: does not fit galileo.*missing keys.*blocks.3.mlp"):
        open_galileo(NANO, tmp_path / "trunc.pt")
    # non-finite weights: the user's file is named
    nan = dict(state)
    nan["norm.weight"] = nan["norm.weight"].clone()
    nan["norm.weight"][0] = float("nan")
    torch.save(nan, tmp_path / "nan.pt")
    with pytest.raises(ValueError, match=r"nan.pt: tensors \['norm.weight'\] hold NaN"):
        open_galileo(NANO, tmp_path / "nan.pt")
    # a store with none of the bands Galileo reads
    coh = get_modality("insar_coherence")
    st = _store(tmp_path / "coh", {"coh": coh}, {"coh": np.zeros((2, 1, 16, 16), np.float32)}, 2)
    with pytest.raises(BandMismatchError, match="no modality holds bands Galileo reads"):
        fit_galileo(nano, st)
    # a patch size that does not divide the chip, and one the model cannot take
    s2 = _store(tmp_path / "s2", {"s2": get_modality("s2_l1c")}, {"s2": _s2(2, size=12)}, 2, size=12)
    with pytest.raises(ValueError, match=r"patch size 8 does not divide the 12x12 px chip"):
        fit_galileo(nano, s2)
    with pytest.raises(ValueError, match=r"patch_size 9 is outside 1..8"):
        fit_galileo(nano, s2, patch_size=9)
    m, _ = fit_galileo(nano, s2, patch_size=4)
    assert m.feature_strides == [4]


def _serve(root: Path):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def test_download_checks_the_pinned_sha256_and_caches(tmp_path, monkeypatch):
    from earthembed.models.published.galileo import cached_file, find_weights

    monkeypatch.setenv("EARTHEMBED_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(FileNotFoundError, match=r"looked in: --weights not given; .*cache.*--download"):
        find_weights(NANO)
    srv = _serve(WEIGHTS.parent)  # a mirror of the publisher's files: ../shared/data/weights
    try:
        monkeypatch.setenv("EARTHEMBED_WEIGHTS_MIRROR", f"http://127.0.0.1:{srv.server_port}")
        got = find_weights(NANO, download=True)
    finally:
        srv.shutdown()
    assert got == cached_file(GALILEO["nano"]) and got.read_bytes() == (WEIGHTS / "encoder.pt").read_bytes()
    assert [p.name for p in got.parent.iterdir()] == ["encoder.pt"]  # no temporary file left
    assert find_weights(NANO) == got  # cached: no network needed
    # a mirror serving another file: sha256 mismatch, the download discarded, nothing cached
    got.unlink()
    bad = tmp_path / "bad" / "galileo-nano"
    bad.mkdir(parents=True)
    (bad / "encoder.pt").write_bytes(b"not the weights")
    srv = _serve(tmp_path / "bad")
    try:
        monkeypatch.setenv("EARTHEMBED_WEIGHTS_MIRROR", f"http://127.0.0.1:{srv.server_port}/")
        with pytest.raises(ValueError, match=r"sha256 .* not the published eab6acac.*discarded"):
            find_weights(NANO, download=True)
    finally:
        srv.shutdown()
    assert list(cached_file(GALILEO["nano"]).parent.iterdir()) == []
    with pytest.raises(FileNotFoundError, match="no sha256 is pinned"):
        find_weights(parse_spec("galileo:tiny"), download=True)


def test_cli_embed_with_galileo_and_its_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("EARTHEMBED_CACHE", str(tmp_path / "empty-cache"))
    s2 = get_modality("s2_l1c")
    _store(tmp_path / "st", {"s2": s2}, {"s2": _s2(6)}, 6)
    from earthembed.data.stats import update_store_stats

    update_store_stats(tmp_path / "st")
    r = cli("embed", "--encoder", "galileo:nano", "--store", tmp_path / "st", "--out", tmp_path / "e.parquet")
    one_line_error(r, "galileo:nano: no weights file found", "empty-cache", "--download", "--weights")
    assert not (tmp_path / "e.parquet").exists() and not (tmp_path / "e.model").exists()
    r = cli("embed", "--encoder", "galileo:nano", "--weights", WEIGHTS, "--patch-size", "4", "--store",
            tmp_path / "st", "--out", tmp_path / "e.parquet")
    assert r.exit_code == 0, r.output
    meta = json.loads((tmp_path / "e.model" / "model.json").read_text())
    assert meta["architecture"] == "galileo" and meta["config"]["patch_size"] == 4
    assert meta["published"]["sha256"] == GALILEO["nano"].sha256
    from earthembed.embed.io import read_embeddings

    index, emb = read_embeddings(tmp_path / "e.parquet")
    assert len(index) == 6 and emb.shape == (6, 128) and np.isfinite(emb).all()
    r = cli("embed", "--encoder", "timm:resnet18", "--patch-size", "4", "--store", tmp_path / "st", "--out",
            tmp_path / "f.parquet")
    one_line_error(r, "--patch-size does not apply to timm models", "galileo:")
    # undated chips: the month fed is the publisher's June unless --default-month says otherwise (another model id)
    r = cli("embed", "--encoder", "galileo:nano", "--weights", WEIGHTS, "--patch-size", "4", "--default-month", "1",
            "--store", tmp_path / "st", "--out", tmp_path / "jan.parquet")
    assert r.exit_code == 0, r.output
    jan = json.loads((tmp_path / "jan.model" / "model.json").read_text())
    assert jan["config"]["default_month"] == 0 and "-p4-m1@" in jan["model_id"] and "-m" not in meta["model_id"]
    assert not np.allclose(read_embeddings(tmp_path / "jan.parquet")[1], emb)
    r = cli("embed", "--encoder", "galileo:nano", "--weights", WEIGHTS, "--default-month", "13", "--store",
            tmp_path / "st", "--out", tmp_path / "g.parquet")
    one_line_error(r, "--default-month 13: a month is 1-12")
    r = cli("embed", "--checkpoint", tmp_path / "e.model", "--default-month", "2", "--store", tmp_path / "st",
            "--out", tmp_path / "g.parquet")
    one_line_error(r, "--default-month go with --encoder")
    assert not (tmp_path / "g.parquet").exists() and not (tmp_path / "g.model").exists()


def test_segment_starts_from_galileo_and_random_copies_it(tmp_path):
    from earthembed.evaluate.inits import resolve_inits
    from earthembed.evaluate.segment import run_segment
    from test_segment import FAST, _mask_store

    st = _mask_store(tmp_path / "masks")  # RGB chips of 16 px
    srcs = resolve_inits(["galileo:nano", "random"], st, weights=WEIGHTS, options={"patch_size": 4})
    gal, rnd = srcs
    assert gal.kind == "published" and gal.architecture == rnd.architecture == "galileo"
    assert gal.config["patch_size"] == rnd.config["patch_size"] == 4
    assert rnd.normalization == gal.normalization  # the random copy sees the same (published) inputs
    assert gal.build(0) is not gal.build(1)  # a fresh copy per seed
    with pytest.raises(ValueError, match="--weights names the file of one published init"):
        resolve_inits(["random"], st, {"name": "galileo_nano"}, weights=WEIGHTS)
    df = run_segment(st, "mask", ["galileo:nano", "random"], tmp_path / "seg", fractions="1", seeds=(0,),
                     overrides=FAST, weights=WEIGHTS, options={"patch_size": 4})
    miou = df[df.metric == "miou"].set_index("features")["value"]
    assert set(miou.index) == {"galileo:nano", "random"} and np.isfinite(miou).all()


def test_several_dates_of_one_place_become_a_time_series(nano, tmp_path):
    rgb = get_modality("rgb")
    rng = np.random.default_rng(3)
    x = {k: rng.integers(0, 255, size=(2, 3, 16, 16)).astype(np.uint8) for k in ("y2012", "y2010")}
    mods = {k: rgb for k in x}
    st = _store(tmp_path / "ts", mods, x, 2, dates={"y2012": "2012-08-01", "y2010": "2010-05-01"})
    m, meta = _fit(nano, st)
    assert m.timesteps == {"y2012": 1, "y2010": 0} and meta["published"]["timesteps"] == m.timesteps
    out = _embed(m, st)
    assert out.present["y2010"].all() and out.present["y2012"].all()
    one, _ = _fit(nano, st, modalities=["y2010"])
    assert (out.fused - _embed(one, st).fused).abs().max() > 1e-4  # the second date changes the embedding
    undated = _store(tmp_path / "nodate", mods, x, 2)
    with pytest.raises(BandMismatchError, match=r"feed the same Galileo bands .* no date_<modality>"):
        fit_galileo(nano, undated)


def test_a_timestep_is_a_month_unless_one_month_holds_two_dates_of_the_same_bands(tmp_path):
    from earthembed.models.published.galileo import plan_inputs

    rgb, s1 = get_modality("rgb"), get_modality("s1_grd_db")
    rng = np.random.default_rng(4)
    x = {"a": rng.integers(0, 255, (2, 3, 16, 16)).astype(np.uint8),
         "r": rng.normal(-12, 3, (2, 2, 16, 16)).astype(np.float32)}
    arrays = {"a": x["a"], "a_t2": x["a"], "r": x["r"], "r_t2": x["r"]}
    mods = {"a": rgb, "a_t2": rgb, "r": s1, "r_t2": s1}
    # radar two days after the optical image, in the same month: one timestep per month, as Galileo was trained
    st = _store(tmp_path / "month", mods, arrays, 2,
                dates={"a": "2020-05-01", "r": "2020-05-03", "a_t2": "2021-08-10", "r_t2": "2021-08-12"})
    assert plan_inputs(st)[1] == {"a": 0, "r": 0, "a_t2": 1, "r_t2": 1}
    # two optical dates in one month cannot share a timestep: every date is its own
    st = _store(tmp_path / "dates", mods, arrays, 2,
                dates={"a": "2020-05-01", "r": "2020-05-03", "a_t2": "2020-05-20", "r_t2": "2021-08-12"})
    assert plan_inputs(st)[1] == {"a": 0, "r": 1, "a_t2": 2, "r_t2": 3}
    # the same bands on the same day: the user chooses
    st = _store(tmp_path / "same", mods, arrays, 2,
                dates={"a": "2020-05-01", "r": "2020-05-03", "a_t2": "2020-05-01", "r_t2": "2021-08-12"})
    with pytest.raises(BandMismatchError, match=r"\['a', 'a_t2'\] feed the same Galileo bands on the same date "
                                                r"2020-05-01; choose"):
        plan_inputs(st)


def test_pretraining_continues_from_galileo_and_resumes(tmp_path):
    """`pretrain --init galileo:nano`: the recipe's CNN settings are left out (said), training starts from the
    published weights (step 0 equals them), the export is a Galileo encoder that embeds, and the run resumes; a
    different --patch-size on the same run directory is refused."""
    from earthembed.models import load_model
    from earthembed.models.published import load_encoder

    st = _store(tmp_path / "s2", {"s2": get_modality("s2_l1c")}, {"s2": _s2(12)}, 12)
    out = tmp_path / "run"
    args = ["pretrain", "--init", "galileo:nano", "--weights", WEIGHTS, "--store", st.path, "--out", out,
            "--patch-size", "4", "train.max_steps=2", "data.batch_size=4", "data.crop_size=16", "probe.every_n_steps=0",
            "train.progress_bar=false"]
    r = cli(*args)
    assert r.exit_code == 0, r.output
    from earthembed.pretrain.run import _config_for_init

    doc, _, notes = _config_for_init("cpu_single_modality", "galileo", "galileo:nano")
    assert set(doc["model"]) <= {"name", "modalities"} and "model.backbone" in notes[0] and "export.tta" in notes[1]
    model, meta = load_model(out / "export")
    assert meta["architecture"] == "galileo" and meta["config"]["patch_size"] == 4
    start, _ = load_encoder("galileo:nano", st, weights=WEIGHTS, options={"patch_size": 4})
    trained, init = model.state_dict(), start.state_dict()
    assert trained.keys() == init.keys() and any(not torch.equal(trained[k], init[k]) for k in init)
    model._meta = meta
    emb = _embed(model, st).fused
    assert emb.shape == (12, 128) and torch.isfinite(emb).all()
    r = cli(*args[:-4], "train.max_steps=3", *args[-3:])  # a larger budget resumes
    assert r.exit_code == 0, r.output
    assert load_model(out / "export")[1]["pretrain"]["global_step"] == 3
    r = cli(*[a if a != "4" else "8" for a in args[:-4]], "train.max_steps=4", *args[-3:])
    assert r.exit_code == 1 and "holds a run with a different model, init config" in r.output
