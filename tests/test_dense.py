"""Dense features (fusion, necks, decoders by name), the segmenter, and dense contrastive pretraining."""

import math

import numpy as np
import pytest
import torch

from earthembed.augment import AFFINE_KEY, AugmentConfig, apply_affine, augment_batch
from earthembed.data.modalities import get_modality
from earthembed.data.store import ChipRecord, StoreWriter
from earthembed.models import build_model
from earthembed.models.decoders import DECODERS
from earthembed.models.dense import PixelDecoder, Segmenter, check_chip_size, fuse_levels
from earthembed.models.necks import NECKS
from earthembed.pretrain.dense_contrastive import corresponding_points, sample_points
from earthembed.pretrain.losses import dense_info_nce

S2 = ["B02", "B03", "B04", "B08"]
TINY_VIT = {"embed_dim": 32, "depth": 1, "num_heads": 2}


def _batch(n=2, size=32, s1_rows=1):
    g = torch.Generator().manual_seed(0)
    return {"s2": torch.randn(n, 4, size, size, generator=g), "s1": torch.randn(n, 2, size, size, generator=g),
            "s1_present": torch.arange(n) < s1_rows}


@pytest.mark.parametrize("name,kw,strides,size", [
    ("multimodal_vit_tiny", TINY_VIT, [2, 4, 8, 16], 32),                   # one token map -> pyramid neck
    ("resnet18_small", {}, [1, 2, 4, 8, 16], 16),                          # timm's levels (coarsest 1x1)
])
def test_segmenter_shapes_for_vit_and_cnn(name, kw, strides, size):
    enc = build_model(name, modalities={"s2": S2, "s1": ["VV", "VH"]}, **kw)
    seg = Segmenter(enc, num_classes=5)
    assert seg.pixel.neck.out_strides == strides
    assert seg.pixel.neck_name == ("tokens_to_pyramid" if name.startswith("multimodal") else "identity")
    # (a BatchNorm CNN cannot train on one present row at a 1x1 level, so both rows carry s1 there)
    rows = 1 if name.startswith("multimodal") else 2
    assert seg(_batch(size=size, s1_rows=rows)).shape == (2, 5, size, size)
    hyper = Segmenter(enc, num_classes=3, decoder="hypercolumn", freeze_encoder=True)
    assert hyper.pixel.out_channels == sum(hyper.pixel.neck.out_channels)
    out = hyper.train()(_batch(size=size, s1_rows=rows))
    assert out.shape == (2, 3, size, size) and not hyper.encoder.training  # frozen: eval mode while training
    out.sum().backward()
    assert all(p.grad is None for p in hyper.encoder.parameters())
    assert hyper.head.weight.grad is not None


def test_fusion_neck_decoder_registry_and_chip_size():
    a = [torch.ones(2, 3, 4, 4)]
    b = [torch.full((2, 3, 4, 4), 3.0)]
    fused = fuse_levels({"s2": a, "s1": b}, {"s2": torch.tensor([True, True]), "s1": torch.tensor([True, False])})
    assert torch.allclose(fused[0][0], torch.full((3, 4, 4), 2.0))  # both present: mean
    assert torch.allclose(fused[0][1], torch.ones(3, 4, 4))  # s1 absent: s2 alone, not half of it
    assert {"unet", "hypercolumn"} <= set(DECODERS.names()) and {"identity", "tokens_to_pyramid"} <= set(NECKS.names())
    with pytest.raises(ValueError, match="unknown decoder 'nope'; registered"):
        PixelDecoder([8, 16], [2, 4], decoder="nope")
    with pytest.raises(ValueError, match="unet: channels needs 1 entries"):
        PixelDecoder([8, 16], [2, 4], decoder_args={"channels": [8, 8]})
    with pytest.raises(ValueError, match="tokens_to_pyramid needs exactly one input level"):
        PixelDecoder([8, 16], [2, 4], neck="tokens_to_pyramid")
    vit = build_model("multimodal_vit_tiny", modalities={"s2": S2}, **TINY_VIT)
    check_chip_size(vit, 32, 32)
    with pytest.raises(ValueError, match=r"chip size 20x20 px does not fit .* multiple of the coarsest stride 8"):
        check_chip_size(vit, 20, 20)


def test_corresponding_points_pair_the_same_ground():
    """A chip whose channels are its own pixel coordinates: after two known random affines, the points that
    corresponding_points pairs must read the same chip coordinates in both views."""
    n, size = 16, 32
    centres = (torch.arange(size) + 0.5) / size * 2 - 1
    yy, xx = torch.meshgrid(centres, centres, indexing="ij")
    chip = torch.stack([xx, yy])[None].repeat(n, 1, 1, 1)
    cfg = AugmentConfig(crop_scale=(0.5, 1.0), band_dropout=0.0, group_dropout=0.0, noise_std=0.0)
    g = torch.Generator().manual_seed(0)
    v1 = augment_batch({"c": chip}, {"c": [[0, 1]]}, cfg, generator=g)
    v2 = augment_batch({"c": chip}, {"c": [[0, 1]]}, cfg, generator=g)
    u1, u2, x, valid = corresponding_points(v1[AFFINE_KEY], v2[AFFINE_KEY], 64, generator=g)
    assert valid.float().mean() > 0.5  # most chips' crops overlap
    seen1, seen2 = sample_points(v1["c"], u1), sample_points(v2["c"], u2)  # [B, P, 2] chip coordinates
    # exact away from the outer half pixel of the chip and of each view (there bilinear reads clamp to the edge)
    half = 1 - 1.0 / size
    inner = valid & (x.abs() < half).all(-1) & (u1.abs() < half).all(-1) & (u2.abs() < half).all(-1)
    assert inner.float().mean() > 0.4
    torch.testing.assert_close(seen1[inner], x[inner], atol=1e-3, rtol=0)  # 1/60 of a pixel (float32 bilinear twice)
    torch.testing.assert_close(seen2[inner], x[inner], atol=1e-3, rtol=0)  # 1/60 of a pixel (float32 bilinear twice)
    # the views differ (rotations / flips / crops), so pairing by position alone would be wrong
    assert (sample_points(v2["c"], u1)[inner] - x[inner]).abs().max() > 0.1
    # identity geometry: every point pairs with itself
    ident = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).expand(2, 2, 3)
    a, b, _, ok = corresponding_points(ident, ident, 8)
    assert ok.all() and torch.allclose(a, b)
    # disjoint crops: no valid point
    left = torch.tensor([[[0.25, 0, -0.75], [0, 0.25, 0]]])
    right = torch.tensor([[[0.25, 0, 0.75], [0, 0.25, 0]]])
    assert not corresponding_points(left, right, 8)[3].any()
    assert torch.allclose(apply_affine(chip[:2], ident), chip[:2], atol=1e-6)


def test_dense_info_nce_pairs_and_neighbour_masking():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(12, 8, generator=g)
    group = torch.arange(12) // 4
    xy = torch.rand(12, 2, generator=g)
    good, acc = dense_info_nce(a, a + 0.01 * torch.randn(12, 8, generator=g), group, xy, 0.2)
    bad, _ = dense_info_nce(a, a[torch.randperm(12, generator=g)], group, xy, 0.2)
    assert good < bad and acc == 1.0
    # a same-chip neighbour identical to the anchor: a hard "negative" unless masked by the radius
    b = a.clone()
    b[1] = a[0]
    xy2 = xy.clone()
    xy2[1] = xy2[0] + 0.01
    unmasked, _ = dense_info_nce(a, b, group, xy2, 0.2, radius=0.0)
    masked, _ = dense_info_nce(a, b, group, xy2, 0.2, radius=0.05)
    assert masked < unmasked


@pytest.fixture(scope="module")
def two_date_store(tmp_path_factory):
    """10 chips of 16 px with s2 and a second date s2b (same product), one chip lacking the second date."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("stores") / "twodate"
    s2 = get_modality("s2_l2a")
    with StoreWriter(path, [s2, s2.renamed("s2b")], 16, batch_size=8) as w:
        for i in range(10):
            arrays = {"s2": rng.integers(100, 3000, (12, 16, 16)).astype("uint16")}
            if i != 3:
                arrays["s2b"] = (arrays["s2"] * 1.1).astype("uint16")
            w.add(ChipRecord(f"c{i}", arrays, split="train"))
    return path


FAST_DENSE = ["train.max_steps=2", "data.batch_size=4", "data.crop_size=16", "model.embed_dim=16", "model.depth=1",
              "train.progress_bar=false", "train.log_every_n_steps=1", "train.warmup_steps=0",
              "objective_args.points_per_chip=8"]


def test_dense_contrastive_pretrain_export_embed(two_date_store, tmp_path):
    from earthembed.embed.run import embed_store
    from earthembed.models import load_model
    from earthembed.pretrain.run import load_config, pretrain

    cfg, _ = load_config("dense_tiny")
    assert cfg["objective"] == "dense_contrastive" and 0.1 <= cfg["objective_args"]["temperature"] <= 0.3
    with pytest.raises(ValueError, match="temperature must be in"):
        load_config("dense_tiny", ["objective_args.temperature=0"])
    with pytest.raises(ValueError, match="unknown config key 'objective_args.tau'"):
        load_config("dense_tiny", ["objective_args.tau=0.1"])
    # two acquisition dates as views, plus the chip-level term
    export = pretrain("dense_tiny", two_date_store, tmp_path / "run", overrides=[
        *FAST_DENSE, "model.modalities=[s2]", "objective_args.date_views={s2: s2b}", "objective_args.global_weight=0.5"])
    model, meta = load_model(export)
    assert meta["architecture"] == "multimodal_vit" and list(meta["modalities"]) == ["s2"]
    assert not any(k.startswith(("pixel.", "head.")) for k in model.state_dict())  # the encoder only
    metrics = (tmp_path / "run" / "metrics.csv").read_text()
    assert "train/dense_loss" in metrics and "train/global_loss" in metrics
    loss = [float(r.split(",")[-1]) for r in metrics.splitlines()[1:] if r.strip()]
    assert all(math.isfinite(v) for v in loss)
    emb = embed_store(export, two_date_store, tmp_path / "emb.parquet", progress=False)
    import pyarrow.parquet as pq

    assert pq.read_table(emb).num_rows == 10
    with pytest.raises(ValueError, match="has no modality 'nope'"):
        pretrain("dense_tiny", two_date_store, tmp_path / "bad", overrides=[
            *FAST_DENSE, "model.modalities=[s2]", "objective_args.date_views={s2: nope}"])
