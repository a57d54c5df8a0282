"""Published weights (timm, TorchGeo, MMEarth) as earthembed encoders: offline, from files made here in each
publisher's key layout (tests/published_layouts.py)."""

from __future__ import annotations

import json
import types
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from earthembed.cli import app
from earthembed.data.dataset import ChipDataset
from earthembed.data.modalities import BandMismatchError
from earthembed.data.normalize import Normalizer
from earthembed.data.store import ChipStore
from earthembed.embed.io import read_embeddings, read_metadata
from earthembed.models import load_model
from earthembed.models.published import (
    PublishedWeightsWarning,
    UnsafeCheckpointError,
    WeightsNotFoundError,
    export_encoder,
    load_encoder,
    parse_spec,
    read_checkpoint,
)
from earthembed.models.published.torchgeo_weights import S2_TOA, WEIGHTS, verify_against
from published_layouts import (
    MMEARTH_ORDER,
    CodeOnUnpickle,
    make_store,
    mmearth_dense_state,
    mmearth_reference,
    random_timm,
    save_mmearth_checkpoint,
)

RN18 = "torchgeo:ResNet18_Weights.SENTINEL2_ALL_MOCO"


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("pub")
    return {p: make_store(root / p, p) for p in ("s2_l1c", "s2_l2a", "rgb", "s1_grd_linear")}


@pytest.fixture(scope="module")
def rn18_file(tmp_path_factory):
    """A TorchGeo ResNet18 SENTINEL2_ALL file: timm resnet18, 13 input channels, with its fc head."""
    path = tmp_path_factory.mktemp("w") / "rn18_s2.pth"
    net = random_timm("resnet18", 13)
    torch.save(net.state_dict(), path)
    return path, net


def _batch(store, meta):
    """The store's chips as the export would feed them (its normaliser, its band order)."""
    st = ChipStore(store)
    ds = ChipDataset(st, meta["modalities"], normalizer=Normalizer.from_dict(meta["normalization"]))
    return ds.read_batch(np.arange(len(st)))


def test_spec_forms_and_errors(tmp_path):
    assert parse_spec("timm:resnet18").family == "timm"
    assert parse_spec(f"mmearth:{tmp_path}/pt-S2/checkpoint-199.pth").label == "mmearth:pt-S2/checkpoint-199"
    with pytest.raises(ValueError, match="expected timm:<model name>"):
        parse_spec("resnet18")
    with pytest.raises(ValueError, match="nothing after 'torchgeo:'"):
        parse_spec("torchgeo:")


def test_pickle_that_runs_code_is_refused_in_one_line(tmp_path):
    marker = tmp_path / "code-ran"
    bad = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": CodeOnUnpickle(marker)}, bad)
    with pytest.raises(UnsafeCheckpointError) as e:
        read_checkpoint(bad)
    msg = str(e.value)
    assert "\n" not in msg and str(bad) in msg and "os.makedirs" in msg and "refused" in msg
    assert not marker.exists()
    r = CliRunner().invoke(app, ["embed", "--encoder", RN18, "--weights", str(bad), "--store", str(tmp_path),
                                 "--out", str(tmp_path.parent / f"{tmp_path.name}-e.parquet")])
    assert r.exit_code == 1 and "refused" in r.output and not marker.exists()
    # the plain training arguments MMEarth / ConvNeXt-V2 checkpoints carry are allowed
    ok = tmp_path / "args.pth"
    import argparse

    torch.save({"model": {"w": torch.ones(2)}, "args": argparse.Namespace(patch_size=8, data_dir=tmp_path)}, ok)
    assert read_checkpoint(ok)["args"].patch_size == 8


def test_torchgeo_resnet_embeddings_equal_the_in_memory_model(stores, rn18_file, tmp_path):
    path, net = rn18_file
    store = stores["s2_l1c"]
    exp = export_encoder(RN18, store, tmp_path / "exp", weights=path)
    model, meta = load_model(exp)  # an ordinary export: safetensors + model.json
    pub = meta["published"]
    assert meta["architecture"] == "timm_cnn" and meta["modalities"] == {"s2": list(S2_TOA)}
    assert pub["weights_sha256"] and pub["load_report"]["dropped"] == ["fc.bias", "fc.weight"]
    assert meta["normalization"]["stats"]["s2"]["std"] == [10000.0] * 13 and pub["normalization"]["unit_scale"] == 1.0
    assert meta["model_id"].startswith(RN18 + "@")
    b = _batch(store, meta)
    x = ChipStore(store).read("s2", np.arange(6), list(S2_TOA)).astype("float32") / 10000.0
    with torch.no_grad():
        want = net.forward_head(net.forward_features(torch.from_numpy(x)), pre_logits=True)
        got = model({"s2": b["s2"]}).modality["s2"]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    # through the CLI: the table is embedded with that export, written beside it
    out = tmp_path / "emb.parquet"
    r = CliRunner().invoke(app, ["embed", "--encoder", RN18, "--weights", str(path), "--store", str(store),
                                 "--out", str(out), "--quiet"])
    assert r.exit_code == 0, r.output
    df, X = read_embeddings(out, "emb_s2")
    torch.testing.assert_close(torch.from_numpy(X), want, rtol=1e-4, atol=1e-5)
    md = read_metadata(out)
    assert md["model_id"] == meta["model_id"] and (tmp_path / "emb.model" / "model.json").exists()


def test_prefixes_are_stripped_and_wrong_files_refused(stores, rn18_file, tmp_path):
    path, net = rn18_file
    store = stores["s2_l1c"]
    sd = net.state_dict()
    wrapped = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": {f"model.backbone.{k}": v for k, v in sd.items()}, "epoch": 3}, wrapped)
    m, meta = load_encoder(RN18, store, weights=wrapped)
    assert meta["published"]["load_report"]["prefix"] == "model.backbone."
    assert meta["published"]["state_dict_key"] == "state_dict"
    cases = {
        "resnet34": ({k: v for k, v in random_timm("resnet34", 13).state_dict().items()}, "unexpected keys layer1.2"),
        "12 bands": ({**sd, "conv1.weight": sd["conv1.weight"][:, :12]}, r"conv1.weight \(64, 12, 7, 7\) vs \(64, 13, 7, 7\)"),
        "missing": ({k: v for k, v in sd.items() if not k.startswith("layer4.1.bn2")}, "missing keys layer4.1.bn2"),
        "stray key": ({**sd, "projector.0.weight": torch.zeros(2, 2)}, "unexpected keys projector.0.weight"),
    }
    for name, (state, msg) in cases.items():
        f = tmp_path / f"{name}.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(f))
        with pytest.raises(ValueError, match=msg) as e:
            load_encoder(RN18, store, weights=f)
        assert str(f) in str(e.value), name


def test_missing_bands_are_folded_and_extra_bands_ignored_or_added(stores, rn18_file):
    path, net = rn18_file
    l2a = stores["s2_l2a"]  # no B10
    with pytest.warns(PublishedWeightsWarning, match=r"lacks published bands \['B10'\]"):
        m, meta = load_encoder(RN18, l2a, weights=path)
    bands = meta["modalities"]["s2"]
    assert "B10" not in bands and meta["published"]["missing_bands_folded_into"] == "bn1.running_mean"
    # conv1 + bn1 of the adapted model == the published one fed B10 at its SSL4EO-S12 mean (22 DN), away from
    # the 3-px border its zero padding reaches
    b = _batch(l2a, meta)["s2"]
    full = torch.zeros(b.shape[0], 13, *b.shape[2:])
    full[:, [S2_TOA.index(x) for x in bands]] = b
    full[:, S2_TOA.index("B10")] = 22.0 / 10000.0
    net_bb = m.backbones["s2"]
    with torch.no_grad():
        got = net_bb.bn1(net_bb.conv1(b))[..., 4:-4, 4:-4]
        want = net.bn1(net.conv1(full))[..., 4:-4, 4:-4]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    # a store band the publisher never saw (the RGB store against the ResNet18 RGB weights: none) / added channels
    vit = random_timm("vit_small_patch16_224", 13, dynamic_img_size=True)
    sd = {k: v for k, v in vit.state_dict().items() if not k.startswith(("norm.", "head."))}  # an MAE encoder file
    f = stores["s2_l2a"].parent / "vits16_mae.pth"
    torch.save(sd, f)
    spec = "torchgeo:ViTSmall16_Weights.SENTINEL2_ALL_MAE"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PublishedWeightsWarning)
        v_ign, meta_i = load_encoder(spec, l2a, weights=f)
    assert meta_i["architecture"] == "timm_vit" and meta_i["published"]["load_report"]["initialised"] == ["norm.bias", "norm.weight"]
    # ViT patch embedding has a bias and no padding: the fold is exact for the whole embedding
    b = _batch(l2a, meta_i)["s2"]
    full = torch.zeros(b.shape[0], 13, *b.shape[2:])
    full[:, [S2_TOA.index(x) for x in meta_i["modalities"]["s2"]]] = b
    full[:, S2_TOA.index("B10")] = 22.0 / 10000.0
    vit.norm.reset_parameters()  # the file has no final norm: identity, as in the adapted model
    with torch.no_grad():
        want = vit.forward_head(vit.forward_features(full), pre_logits=True)
        got = v_ign({"s2": b}).modality["s2"]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_timm_rgb_weights_from_the_hf_cache_on_rgb_and_s2_stores(stores, tmp_path, monkeypatch):
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    with pytest.raises(WeightsNotFoundError, match=r"models--timm--resnet18.a1_in1k/snapshots/\*/model.safetensors.*--download"):
        load_encoder("timm:resnet18.a1_in1k", stores["rgb"])
    snap = cache / "models--timm--resnet18.a1_in1k" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (cache / "models--timm--resnet18.a1_in1k" / "refs").mkdir()
    (cache / "models--timm--resnet18.a1_in1k" / "refs" / "main").write_text("abc123")
    net = random_timm("resnet18", 3, seed=1)
    save_file(net.state_dict(), str(snap / "model.safetensors"))
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    for product, scale, bands in (("rgb", 255.0, ["R", "G", "B"]), ("s2_l2a", 3000.0, ["B04", "B03", "B02"])):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PublishedWeightsWarning)  # the S2 store's other bands are ignored
            m, meta = load_encoder("timm:resnet18.a1_in1k", stores[product])
        key = next(iter(meta["modalities"]))
        stats = meta["normalization"]["stats"][key]
        assert stats["bands"] == bands
        np.testing.assert_allclose(stats["mean"], mean * scale, rtol=1e-6)
        np.testing.assert_allclose(stats["std"], std * scale, rtol=1e-6)
        raw = ChipStore(stores[product]).read(key, np.arange(6), bands).astype("float64")
        x = torch.from_numpy(((raw / scale - mean[:, None, None]) / std[:, None, None]).astype("float32"))
        with torch.no_grad():
            want = net.forward_head(net.forward_features(x), pre_logits=True)
            got = m({key: _batch(stores[product], meta)[key]}).modality[key]
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert meta["published"]["ignored_store_bands"] == ["B01", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]


def test_torch_hub_cache_files_are_checked_against_the_hash_in_their_name(stores, rn18_file, tmp_path, monkeypatch):
    path, _ = rn18_file
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "torchhub"))
    with pytest.raises(WeightsNotFoundError, match=r"torchhub/checkpoints/resnet18_sentinel2_all_moco-59bfdff9.pth.*--download"):
        load_encoder(RN18, stores["s2_l1c"])
    dst = tmp_path / "torchhub" / "checkpoints" / WEIGHTS[RN18.split(":")[1]].file_name
    dst.parent.mkdir(parents=True)
    dst.write_bytes(path.read_bytes())  # found, but not the published file
    with pytest.raises(ValueError, match="sha256 does not start with 59bfdff9"):
        load_encoder(RN18, stores["s2_l1c"])


def test_units_and_kinds_are_checked(stores, tmp_path):
    f = tmp_path / "s1.pth"
    torch.save(random_timm("resnet50", 2).state_dict(), f)
    with pytest.raises(BandMismatchError, match=r"expect values in 'dB' but the store holds 'linear amplitude'"):
        load_encoder("torchgeo:ResNet50_Weights.SENTINEL1_GRD_MOCO", stores["s1_grd_linear"], weights=f)
    with pytest.raises(BandMismatchError, match="no sar modality shares a band"):
        load_encoder("torchgeo:ResNet50_Weights.SENTINEL1_GRD_MOCO", stores["s2_l1c"], weights=f)


def test_mmearth_checkpoint_maps_onto_timm_convnextv2(stores, tmp_path):
    dense = mmearth_dense_state(12)
    folder = tmp_path / "pt-S2_atto_1M_64_uncertainty_56-8"
    folder.mkdir()
    ckpt = save_mmearth_checkpoint(folder / "checkpoint-199.pth", dense, MMEARTH_ORDER)
    store = stores["s2_l1c"]  # 13 bands: B10 is extra
    with pytest.warns(PublishedWeightsWarning, match=r"store bands \['B10'\].*ignored"):
        m, meta = load_encoder(f"mmearth:{ckpt}", store)
    pub = meta["published"]
    assert meta["config"]["backbone"] == "convnextv2_atto" and meta["config"]["stem"] == "mmearth"
    assert meta["modalities"]["s2"][7:9] == ["B8A", "B08"]  # MMEarth's channel order, by name
    assert pub["load_report"]["initialised"] == ["head.norm.bias", "head.norm.weight"]
    assert pub["load_report"]["outside_encoder"] == ["decoder_dict", "mask_token", "pred_dict", "proj"]
    assert pub["normalization"]["source"] == "store statistics" and meta["model_id"].startswith(
        "mmearth:pt-S2_atto_1M_64_uncertainty_56-8/checkpoint-199@")
    b = _batch(store, meta)["s2"]
    with torch.no_grad():
        want = torch.nn.functional.layer_norm(mmearth_reference(dense, b), (320,), eps=1e-6)
        got = m({"s2": b}).modality["s2"]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    # extra store bands as new zero-initialised channels: same embeddings, one more input channel
    m2, meta2 = load_encoder(f"mmearth:{ckpt}", store, extra_bands="add")
    assert meta2["modalities"]["s2"][-1] == "B10" and meta2["published"]["added_bands"] == ["B10"]
    assert torch.all(m2.backbones["s2"].stem[0].weight[:, -1] == 0)
    with torch.no_grad():
        torch.testing.assert_close(m2({"s2": _batch(store, meta2)["s2"]}).modality["s2"], got, rtol=1e-5, atol=1e-5)


def test_torchgeo_table_verification_detects_a_wrong_entry():
    from torchvision.transforms import v2 as T

    def member(w, std=None):
        inp = w.input()
        tr = torch.nn.Sequential(T.Resize((256, 256)), T.Normalize(mean=inp.mean, std=std or inp.std))
        meta = {"model": w.model, "in_chans": len(w.bands), "bands": [b.replace("B0", "B") for b in w.bands]}
        if w.img_size:
            meta["img_size"] = w.img_size
        return types.SimpleNamespace(url=w.url, transforms=tr, meta=meta)

    members = {n: member(w) for n, w in WEIGHTS.items()}
    members.update({"ResNet50_Weights.SENTINEL1_ALL_DECUR": members["ResNet50_Weights.SENTINEL1_GRD_DECUR"],
                    "ResNet50_Weights.SENTINEL1_ALL_MOCO": members["ResNet50_Weights.SENTINEL1_GRD_MOCO"]})
    assert verify_against(members) == []
    members[RN18.split(":")[1]] = member(WEIGHTS[RN18.split(":")[1]], std=[255.0])
    assert [p.split(":")[0] for p in verify_against(members)] == [RN18.split(":")[1]]


def test_fewshot_tables_name_published_and_own_models(stores, rn18_file, tmp_path):
    from earthembed.embed.run import embed_store
    from earthembed.evaluate.fewshot import run_fewshot
    from earthembed.models import build_model, export_model

    path, _ = rn18_file
    store = stores["s2_l1c"]
    pub_exp = export_encoder(RN18, store, tmp_path / "pub.model", weights=path)
    pub = embed_store(pub_exp, store, tmp_path / "pub.parquet", progress=False)
    st = ChipStore(store)
    own_exp = export_model(build_model("resnet18_small", modalities={"s2": st.band_names("s2")}), tmp_path / "own",
                           Normalizer.from_store(st))
    own = embed_store(own_exp, store, tmp_path / "own.parquet", progress=False)
    df = run_fewshot({"torchgeo_rn18": pub, "own": own}, store, "label", tmp_path / "fs", budgets="1,all", seeds=(0,),
                     estimators="knn", baselines="band_stats,random_init", n_boot=10)
    assert {"torchgeo_rn18:emb_fused", "own:emb_fused", "random_init:emb_fused", "band_stats"} <= set(df["features"])
    md = (tmp_path / "fs" / "summary.md").read_text()
    assert "## Feature sets" in md and f"| torchgeo_rn18:emb_s2 | {RN18}@" in md
    run = json.loads((tmp_path / "fs" / "run.json").read_text())
    assert run["tasks"][0]["feature_sets"]["random_init:emb_fused"]["model_id"].startswith(f"random-init-seed0-{RN18}@")


def test_cli_shows_publisher_warnings_once_and_passes_others_on(capsys):
    from earthembed.cli_utils import echo_warnings

    with pytest.warns(DeprecationWarning, match="other"), echo_warnings(PublishedWeightsWarning):
        for _ in range(3):
            warnings.warn("bands ignored", PublishedWeightsWarning, stacklevel=1)
        warnings.warn("other", DeprecationWarning, stacklevel=1)
    assert capsys.readouterr().err.count("warning: bands ignored") == 1
