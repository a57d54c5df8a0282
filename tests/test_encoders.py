"""The encoder contract, held for every registered model: build, forward, multi-scale features, export."""

import numpy as np
import pytest
import torch

from earthembed.augment import AFFINE_KEY, AugmentConfig, apply_affine, augment_batch, warp_mask
from earthembed.contract import ChipBatch, ContractError, Observation
from earthembed.data.dataset import ChipDataset
from earthembed.data.modalities import BandMismatchError, get_modality
from earthembed.data.normalize import Normalizer
from earthembed.data.store import ChipStore
from earthembed.models import Encoder, EncoderOutput, build_model, export_model, list_models, load_model
from earthembed.models.registry import MODELS
from earthembed.pretrain.run import load_config

S2 = get_modality("s2_l1c").band_names
MODS = {"s2": S2, "s1": ["VV", "VH"]}
# small settings per family so every registered model runs a real forward pass in a test
SMALL = {"multimodal_vit": dict(embed_dim=32, depth=1, num_heads=2),
         "galileo": dict(embedding_size=32, depth=1, num_heads=2)}


def _small_kwargs(name: str) -> dict:
    accepted, _ = MODELS.params(name)
    if "embedding_size" in accepted:
        return SMALL["galileo"]
    if "depth" in accepted:
        return SMALL["multimodal_vit"]
    return {}


def _batch(n=3, size=32):
    g = torch.Generator().manual_seed(0)
    return {"s2": torch.randn(n, 13, size, size, generator=g), "s1": torch.randn(n, 2, size, size, generator=g),
            "s1_present": torch.tensor([True, False, True])}


def test_every_registered_model_builds_on_meta_and_is_an_encoder():
    for name in list_models():
        with torch.device("meta"):
            m = build_model(name, modalities=MODS)
        assert isinstance(m, Encoder), name
        assert m.architecture in MODELS and len(m.feature_channels) == len(m.feature_strides), name
        assert sorted(m.feature_strides) == m.feature_strides, name


CONTRACT = ["multimodal_vit_tiny", "resnet18_small", "convnextv2_atto_small", "timm_vit", "rcf", "galileo_nano",
            "band_stats"]


def test_the_contract_sweep_covers_every_registered_architecture():
    with torch.device("meta"):
        every = {build_model(n, modalities=MODS).architecture for n in list_models()}
        swept = {build_model(n, modalities=MODS).architecture for n in CONTRACT}
    assert every == swept, f"add a model of {sorted(every - swept)} to CONTRACT"


@pytest.mark.parametrize("name", CONTRACT)
def test_contract_forward_features_export(name, tiny_store, tmp_path):
    torch.manual_seed(0)
    m = build_model(name, modalities=MODS, **_small_kwargs(name)).eval()
    b = _batch()
    out = m(b)
    assert isinstance(out, EncoderOutput)
    assert out.fused.shape == (3, m.embed_dim) and out.modality["s1"].shape == (3, m.embed_dim)
    assert out.present["s1"].tolist() == [True, False, True] and torch.all(out.modality["s1"][1] == 0)
    # row 1 has s2 only: its fused embedding is s2's (normalised, or as it is for a joint-attention model)
    alone = out.modality["s2"][1] if m.joint_fused else torch.nn.functional.normalize(out.modality["s2"][1], dim=0)
    torch.testing.assert_close(out.fused[1], alone)
    # a ChipBatch embeds exactly as the dict with its string keys
    typed = m(ChipBatch.from_mapping(b))
    assert all(torch.equal(typed.modality[k], out.modality[k]) for k in MODS) and torch.equal(typed.fused, out.fused)
    feats = m.forward_features(b)
    for k in ("s2", "s1"):
        assert [f.shape[1] for f in feats[k]] == m.feature_channels
        assert [32 // f.shape[-1] for f in feats[k]] == m.feature_strides
    assert torch.all(feats["s1"][-1][1] == 0)  # absent row
    # band subset in another order == full input with those bands only (the rest zero / absent)
    rgb = ["B04", "B03", "B02"]
    sub = m({"s2": b["s2"][:, [S2.index(x) for x in rgb]]}, bands={"s2": rgb}).modality["s2"]
    assert sub.shape == (3, m.embed_dim) and torch.isfinite(sub).all()
    with pytest.raises(BandMismatchError, match="unknown to this model"):
        m({"s2": b["s2"][:, :1]}, bands={"s2": ["B99"]})
    # export -> load gives the same embeddings, rebuilt through the registry
    st = ChipStore(tiny_store)
    exp = export_model(m, tmp_path / "exp", Normalizer.from_store(st))
    loaded, meta = load_model(exp)
    assert meta["architecture"] == m.architecture and type(loaded) is type(m)
    torch.testing.assert_close(loaded(b).fused, out.fused, rtol=0, atol=0)


class _MeanEncoder(Encoder):
    """A backbone that implements only its per-modality features: the band means, and the pixels as its map."""

    architecture = "test_mean"

    def __init__(self) -> None:
        super().__init__()
        self.modalities, self.band_groups = {"a": ["x", "y"], "b": ["z", "w"]}, {"a": [["x"], ["y"]], "b": [["z", "w"]]}
        self.embed_dim, self.feature_channels, self.feature_strides = 2, [2], [1]
        self.seen: list[torch.Tensor] = []

    def embed_modality(self, k, inp):
        self.seen.append(inp.present)
        return self.model_input(k, inp).mean((2, 3))

    def modality_features(self, k, inp):
        self.seen.append(inp.present)
        return [self.model_input(k, inp)]


def test_the_template_gives_backbones_present_rows_and_fuses_them():
    m = _MeanEncoder()
    xa, xb = torch.rand(3, 2, 4, 4) + 1, torch.rand(3, 2, 4, 4) + 1
    gp = torch.tensor([[True, False], [True, True], [True, True]])
    batch = ChipBatch({"a": Observation.single(xa, group_present=gp),
                       "b": Observation.single(xb, torch.tensor([False, True, False]))})
    out = m(batch)
    assert all(bool(p.all()) for p in m.seen)  # the backbone never sees an absent row
    assert out.present["b"].tolist() == [False, True, False] and torch.all(out.modality["b"][[0, 2]] == 0)
    torch.testing.assert_close(out.modality["b"][1], xb[1].mean((1, 2)))
    torch.testing.assert_close(out.modality["a"][0], torch.stack([xa[0, 0].mean(), torch.tensor(0.0)]))  # y dropped
    fused = torch.nn.functional.normalize(out.modality["a"][1], dim=0) + torch.nn.functional.normalize(out.modality["b"][1], dim=0)
    torch.testing.assert_close(out.fused[1], torch.nn.functional.normalize(fused / 2, dim=0))
    torch.testing.assert_close(out.fused[0], torch.nn.functional.normalize(out.modality["a"][0], dim=0))
    feats = m.forward_features(batch)
    assert torch.equal(feats["b"][0][1], xb[1]) and torch.all(feats["b"][0][[0, 2]] == 0)
    none = m.forward_features(batch.with_obs("b", present=torch.zeros(3, 1, dtype=torch.bool)))
    assert feats["b"][0].shape == none["b"][0].shape and torch.all(none["b"][0] == 0)
    series = ChipBatch({"a": Observation(torch.rand(3, 2, 2, 4, 4), torch.ones(3, 2, dtype=torch.bool))})
    with pytest.raises(ContractError, match="'a' has 2 dates; this encoder reads one date"):
        m(series)
    torch.testing.assert_close(m(ChipBatch({"a": series.obs["a"].date(1)})).modality["a"],
                               series.obs["a"].x[:, 1].mean((2, 3)))


def test_cnn_zero_slots_equal_missing_bands_and_group_present_zeroes_channels():
    m = build_model("resnet18_small", modalities={"s2": S2}).eval()
    x = torch.randn(2, 13, 16, 16)
    rgb = ["B04", "B03", "B02"]
    keep = torch.zeros(13, dtype=torch.bool)
    keep[[S2.index(b) for b in rgb]] = True
    sub = m({"s2": x[:, [S2.index(b) for b in rgb]]}, bands={"s2": rgb}).modality["s2"]
    zeroed = m({"s2": x * keep[None, :, None, None]}).modality["s2"]
    torch.testing.assert_close(sub, zeroed)
    gp = torch.tensor([[True, False, False], [True, True, True]])  # row 0: 10 m group only
    out = m({"s2": x}, group_present={"s2": gp}).modality["s2"]
    ten = [S2.index(b) for b in m.band_groups["s2"][0]]
    only10 = torch.zeros_like(x)
    only10[:, ten] = x[:, ten]
    torch.testing.assert_close(out[0], m({"s2": only10}).modality["s2"][0])
    torch.testing.assert_close(out[1], m({"s2": x}).modality["s2"][1])


def test_stem_stride_keeps_weight_shapes_and_refuses_other_families():
    a = build_model("timm_cnn", modalities={"s2": ["B02", "B03", "B04"]}, backbone="convnextv2_atto")
    b = build_model("timm_cnn", modalities={"s2": ["B02", "B03", "B04"]}, backbone="convnextv2_atto", stem_stride=1)
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}
    assert b.feature_strides == [1, 2, 4, 8]
    assert b.forward_features({"s2": torch.randn(1, 3, 16, 16)})["s2"][0].shape[-1] == 16
    with pytest.raises(ValueError, match="no ResNet or ConvNeXt stem"):
        build_model("timm_cnn", modalities={"s2": ["B02"]}, backbone="vit_tiny_patch16_224", stem_stride=2)
    with pytest.raises(ValueError, match="unknown timm backbone"):
        build_model("timm_cnn", modalities={"s2": ["B02"]}, backbone="resnet_nope")


def test_no_weight_decay_covers_grn_norms_and_embeddings():
    from earthembed.optim import param_groups

    cnx = build_model("convnextv2_atto_small", modalities={"s2": ["B02", "B03", "B04"]})
    nwd = cnx.no_weight_decay()
    assert any("grn" in n for n in nwd) and any(n.endswith("norm.weight") for n in nwd)
    assert not any(n.endswith("conv_dw.weight") for n in nwd)
    vit = build_model("multimodal_vit_tiny", modalities=MODS)
    assert {"modality_embed.s2", "group_embed.s2"} <= vit.no_weight_decay()
    groups = param_groups(vit, 0.05, vit.no_weight_decay())
    decayed = {id(p) for p in groups[0]["params"]}
    assert id(vit.modality_embed["s2"]) not in decayed and id(vit.blocks[0].attn.qkv.weight) in decayed


def test_config_keys_are_checked_against_the_chosen_model():
    cfg, _ = load_config("contrastive_tiny", ["model.name=resnet18_small", "model.stem_stride=1"])
    assert cfg["model"]["stem_stride"] == 1
    with pytest.raises(ValueError, match=r"unknown config key 'model.num_heads' for model 'resnet18_small'"):
        load_config("contrastive_tiny", ["model.name=resnet18_small", "model.num_heads=2"])
    with pytest.raises(ValueError, match=r"'model.stem_stride'"):
        load_config("contrastive_tiny", ["model.stem_stride=2"])  # the ViT has no stem_stride
    with pytest.raises(ValueError, match="train.betas"):
        load_config("contrastive_tiny", ["train.betas=0.9"])


def test_cnn_pretrain_export_embed_end_to_end(tiny_store, tmp_path):
    from earthembed.embed.io import read_embeddings
    from earthembed.embed.run import embed_store
    from earthembed.pretrain.run import pretrain

    export = pretrain("contrastive_tiny", tiny_store, tmp_path / "run", overrides=[
        "model.name=resnet18_small", "model.backbone=resnet18", "data.batch_size=8", "data.crop_size=16",
        "train.max_steps=2", "train.progress_bar=false", "data.splits=all", "objective_args.proj_dim=16"])
    model, meta = load_model(export)
    assert meta["architecture"] == "timm_cnn" and meta["config"]["stem_stride"] == 2
    out = embed_store(export, tiny_store, tmp_path / "emb.parquet", progress=False)
    df, X = read_embeddings(out)
    assert X.shape == (20, 512) and np.isfinite(X).all()


def test_augment_returns_its_geometry_and_masks_warp_alike(tiny_store):
    st = ChipStore(tiny_store)
    x = torch.arange(2 * 16 * 16, dtype=torch.float32).reshape(2, 1, 16, 16)
    cfg = AugmentConfig(crop_scale=(0.5, 0.5), band_dropout=0.0, group_dropout=0.0, noise_std=0.0)
    out = augment_batch({"a": x}, {"a": [[0]]}, cfg, generator=torch.Generator().manual_seed(0))
    theta = out[AFFINE_KEY]
    assert theta.shape == (2, 2, 3)
    mask = (x[:, 0] % 7).long()
    warped = warp_mask(mask, theta)
    assert warped.dtype == torch.long and set(warped.unique().tolist()) <= set(mask.unique().tolist())
    same = augment_batch({"a": x}, {"a": [[0]]}, cfg, theta=theta)
    torch.testing.assert_close(same["a"], out["a"])
    torch.testing.assert_close(apply_affine(x, theta), out["a"])
    ds = ChipDataset(st, ["s2"])
    with pytest.raises(ValueError, match="no pixel-mask label 'label'"):
        ChipDataset(st, ["s2"], masks=["label"])
    assert "mask_label" not in ds.read_batch(np.arange(2))


def test_multiscale_pools_are_every_level_mean_then_std():
    """``multiscale`` = each level's spatial mean; ``multiscale_meanstd`` adds each level's std (same weights)."""
    mods = {"s2": ["B02", "B03", "B04"]}
    torch.manual_seed(0)
    ms = build_model("timm_cnn", modalities=mods, backbone="resnet18", pool="multiscale").eval()
    both = build_model("timm_cnn", modalities=mods, backbone="resnet18", pool="multiscale_meanstd").eval()
    both.load_state_dict(ms.state_dict())
    x = {"s2": torch.randn(2, 3, 32, 32)}
    with torch.no_grad():
        maps = ms.forward_features(x)["s2"]
        mean, full = ms(x).modality["s2"], both(x).modality["s2"]
    assert both.embed_dim == 2 * ms.embed_dim == 2 * sum(m.shape[1] for m in maps)
    expected = torch.cat([t for m in maps for t in (m.mean((2, 3)), m.std((2, 3), correction=0))], 1)
    torch.testing.assert_close(full, expected)
    torch.testing.assert_close(mean, torch.cat([m.mean((2, 3)) for m in maps], 1))
    assert torch.isfinite(both({"s2": torch.randn(1, 3, 4, 4)}).modality["s2"]).all()  # 1x1 maps: std 0
    with pytest.raises(ValueError, match="pool must be one of"):
        build_model("timm_cnn", modalities=mods, backbone="resnet18", pool="max")
