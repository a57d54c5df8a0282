"""The CPU pretraining recipe: augmentations, the BYOL objective, the online probe, the chunk-aware sampler and
the default recipe choice."""

import numpy as np
import pandas as pd
import pytest
import torch

from earthembed.augment import (
    AFFINE_KEY,
    AugmentConfig,
    augment_batch,
    color_jitter,
    gaussian_blur,
    random_affine,
    random_blur,
)
from earthembed.data.modalities import get_modality
from earthembed.data.store import ChipRecord, ChipStore, StoreWriter
from earthembed.pretrain.run import default_recipe, load_config, pretrain

TINY_CNN = ["model.name=timm_cnn", "model.backbone=resnet10t", "data.batch_size=8", "augment.size=16",
            "objective_args.proj_dim=16", "objective_args.proj_hidden_dim=32", "train.progress_bar=false",
            "train.log_every_n_steps=1", "train.warmup_steps=0"]


# -- augmentations --------------------------------------------------------------------------------------
def test_random_resized_crop_area_shared_geometry_and_output_size():
    cfg = AugmentConfig.from_dict({"crop_area": [0.2, 1.0], "aspect_ratio": [0.75, 4 / 3], "size": 8,
                                   "band_dropout": 0.0, "group_dropout": 0.0, "noise_std": 0.0})
    x = torch.randn(32, 3, 16, 16)
    out = augment_batch({"a": x, "b": x[:, :2].clone()}, {"a": [[0, 1, 2]], "b": [[0, 1]]}, cfg)
    assert out["a"].shape == (32, 3, 8, 8) and out["b"].shape == (32, 2, 8, 8) and out[AFFINE_KEY].shape == (32, 2, 3)
    torch.testing.assert_close(out["a"][:, :2], out["b"])  # one geometry per chip for all modalities
    theta = random_affine(4000, cfg, generator=torch.Generator().manual_seed(0))
    corners = torch.tensor([[-1.0, -1, 1], [1, -1, 1], [-1, 1, 1], [1, 1, 1]]).T
    assert (theta @ corners).abs().max() <= 1 + 1e-5  # every crop (rotated or not) stays inside the chip
    area = torch.linalg.det(theta[:, :, :2]).abs()  # fraction of the chip's area the crop covers
    assert float(area.min()) > 0.19 and float(area.max()) <= 1 + 1e-5 and 0.5 < float(area.mean()) < 0.7
    with pytest.raises(ValueError, match="crop_area"):
        AugmentConfig.from_dict({"crop_area": [0.0, 1.0]})
    with pytest.raises(ValueError, match="contrast"):
        AugmentConfig.from_dict({"contrast": 1.5})


def test_color_jitter_shared_vs_per_band_and_bounded():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 4, 8, 8, generator=g)
    shared = color_jitter(x, brightness=0.5, contrast=0.0, per_band=0.0, generator=g)
    offset = (shared - x).mean((2, 3))  # [B, C]: brightness offsets
    torch.testing.assert_close(offset, offset[:, :1].expand_as(offset))  # one offset for all bands
    assert float(offset.abs().max()) <= 0.5 and float(offset.std()) > 0.2
    own = color_jitter(x, brightness=0.5, contrast=0.0, per_band=1.0, generator=g)
    assert float((own - x).mean((2, 3)).std(1).mean()) > 0.1  # bands move independently
    scaled = color_jitter(x, brightness=0.0, contrast=0.3, per_band=1.0, generator=g)
    ratio = (scaled - scaled.mean((2, 3), keepdim=True)).std((2, 3)) / (x - x.mean((2, 3), keepdim=True)).std((2, 3))
    assert float(ratio.min()) >= 0.7 - 1e-4 and float(ratio.max()) <= 1.3 + 1e-4 and float(ratio.std()) > 0.1
    torch.testing.assert_close(scaled.mean((2, 3)), x.mean((2, 3)))  # contrast keeps each band's mean
    assert torch.equal(color_jitter(x, 0.5, 0.3, p=0.0, generator=g), x)


def test_gaussian_blur_smooths_keeps_mean_and_identity_at_zero():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 32, 32, generator=g)
    y = gaussian_blur(x, torch.tensor([0.0, 1.0, 2.0]))
    torch.testing.assert_close(y[0], x[0])
    assert float(y[1].std()) < 0.5 * float(x[1].std()) and float(y[2].std()) < float(y[1].std())
    const = torch.full((2, 3, 16, 16), 7.0)
    torch.testing.assert_close(gaussian_blur(const, torch.tensor([1.5, 0.7])), const)
    some = random_blur(torch.randn(400, 1, 16, 16, generator=g), p=0.5, sigma_range=(1.0, 1.0), generator=g)
    blurred = some.std((1, 2, 3)) < 0.7
    assert 0.35 < float(blurred.float().mean()) < 0.65


# -- BYOL -----------------------------------------------------------------------------------------------
def _vit(bands):
    return {"modalities": bands, "embed_dim": 32, "depth": 1}


def test_byol_loss_decreases_on_fixed_batch_and_teacher_follows_student(tiny_store):
    from earthembed.pretrain.byol import BYOLPretrainModule
    from earthembed.pretrain.datamodule import ChipDataModule

    dm = ChipDataModule(tiny_store, batch_size=16, crop_size=16, splits="all")
    batch = next(iter(dm.train_dataloader()))
    fixed = {"band_dropout": 0.0, "group_dropout": 0.0, "noise_std": 0.0, "crop_scale": [1.0, 1.0], "flip": False,
             "rot90": False}
    for bands, pairs in ((dm.bands, 4), ({"s2": dm.bands["s2"]}, 1)):  # multimodal (2x2 pairs) and two views
        torch.manual_seed(0)
        mod = BYOLPretrainModule("multimodal_vit_tiny", _vit(bands), proj_dim=16, proj_hidden_dim=32, augment=fixed)
        assert len(mod.pairs) == pairs and not any(p.requires_grad for p in mod.teacher.parameters())
        assert all(not n.startswith("teacher") for n, _ in mod.model.named_parameters())  # export = student only
        opt = torch.optim.AdamW(mod.param_groups(), lr=3e-3)
        before = [p.clone() for p in mod.teacher.parameters()]
        losses = []
        for _ in range(6):
            loss, stats = mod.step(batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
            mod.update_teacher(0.5)
            losses.append(loss.item())
        assert np.isfinite(losses).all() and losses[-1] < losses[0], losses
        assert stats["z_std"] > 0 and stats["pairs"] > 0
        moved = [not torch.equal(a, b) for a, b in zip(before, mod.teacher.parameters(), strict=True)]
        assert all(moved)
        # the update is an EMA: teacher <- m teacher + (1 - m) student
        t0 = [p.clone() for p in mod.teacher["model"].parameters()]
        mod.update_teacher(0.9)
        for t_old, t_new, s in zip(t0, mod.teacher["model"].parameters(), mod.model.parameters(), strict=True):
            torch.testing.assert_close(t_new, 0.9 * t_old + 0.1 * s)
        frozen = [p.clone() for p in mod.teacher.parameters()]
        mod.update_teacher(1.0)
        assert all(torch.equal(a, b) for a, b in zip(frozen, mod.teacher.parameters(), strict=True))
    cross = BYOLPretrainModule("multimodal_vit_tiny", _vit(dm.bands), proj_dim=16, pairs="cross")
    assert sorted(cross.pairs) == [("s1", "s2"), ("s2", "s1")]


def test_byol_run_with_probe_writes_probe_columns_from_val_only(tiny_store, tmp_path):
    from earthembed.pretrain.callbacks import OnlineProbe

    out = tmp_path / "run"
    pretrain("cpu_multimodal", tiny_store, out, TINY_CNN + ["train.max_steps=3", "probe.every_n_steps=2"])
    m = pd.read_csv(out / "metrics.csv")
    cols = {"probe/label/knn_macro_f1", "probe/label/logreg_macro_f1", "probe/frac_water/knn_r2",
            "probe/frac_water/ridge_r2"}
    assert cols <= set(m.columns), sorted(m.columns)
    probed = m.dropna(subset=["probe/label/knn_macro_f1"])
    assert sorted(probed["step"]) == [0, 2, 3]  # before training, every 2 steps, after the last step
    assert probed["probe/label/knn_macro_f1"].between(0, 1).all()
    st = ChipStore(tiny_store)
    probe = OnlineProbe(st, {"s2": st.band_names("s2")}, every_n_steps=1)
    used = set(st.index["split"].to_numpy()[probe.dataset.indices])
    assert used == {"train", "val"}  # never the test split
    with pytest.raises(KeyError, match="nope"):
        OnlineProbe(st, {"s2": st.band_names("s2")}, tasks=["nope"])
    unlabelled = ChipStore(_unlabelled_store(tmp_path / "u"))
    assert not OnlineProbe(unlabelled, {"s2": unlabelled.band_names("s2")}).active


def _unlabelled_store(path, n=12, size=16):
    rng = np.random.default_rng(0)
    with StoreWriter(path, [get_modality("s2_l2a")], size, batch_size=8) as w:
        for i in range(n):
            w.add(ChipRecord(f"c{i}", {"s2": rng.normal(1500, 400, (12, size, size)).clip(1).astype("uint16")}))
    return path


# -- default recipe ------------------------------------------------------------------------------------
def test_default_recipe_by_kind_of_store(tiny_store, tmp_path, capsys):
    assert default_recipe(ChipStore(tiny_store))[0] == "cpu_multimodal"
    single = _unlabelled_store(tmp_path / "single")
    name, why = default_recipe(ChipStore(single))
    assert name == "cpu_single_modality" and "s2_l2a" in why
    rgb = tmp_path / "rgb"
    with StoreWriter(rgb, [get_modality("rgb")], 8, batch_size=4) as w:
        w.add(ChipRecord("c0", {"rgb": np.zeros((3, 8, 8), "uint8")}))
    assert default_recipe(ChipStore(rgb))[0] == "cpu_rgb"  # photo-like: the plain export
    for n in ("cpu_single_modality", "cpu_rgb", "cpu_multimodal"):
        cfg, _ = load_config(n)
        assert cfg["objective"] == "byol" and cfg["model"]["name"] == "timm_cnn"
    same = {k for k in load_config("cpu_rgb")[0] if k != "export"}  # one training recipe, two exports
    assert all(load_config("cpu_rgb")[0][k] == load_config("cpu_single_modality")[0][k] for k in same)
    assert load_config("cpu_rgb")[0]["export"] == {}
    assert load_config("cpu_single_modality")[0]["export"] == {"pool": "multiscale_meanstd", "tta": "d4"}
    exp = pretrain(None, single, tmp_path / "run", TINY_CNN + ["train.max_steps=1"])
    said = capsys.readouterr().out
    assert "default CPU recipe 'cpu_single_modality'" in said and "probe: off" in said  # no labels to probe
    assert (exp / "model.json").exists()


def test_export_settings_change_how_the_export_embeds_not_its_weights(tmp_path):
    from safetensors.torch import load_file

    from earthembed.models.export import load_model

    single = _unlabelled_store(tmp_path / "single")
    base = TINY_CNN + ["train.max_steps=1", "model.pool=multiscale"]
    plain = pretrain("cpu_rgb", single, tmp_path / "plain", base)  # cpu_rgb: no export settings of its own
    exp = pretrain("cpu_rgb", single, tmp_path / "run",
                   base + ["export.pool=multiscale_meanstd", "export.tta=d4"])
    model, meta = load_model(exp)
    trained, plain_meta = load_model(plain)
    assert meta["config"]["pool"] == "multiscale_meanstd" and meta["config"]["tta"] == "d4"
    assert meta["pretrain"]["config"]["model"]["pool"] == "multiscale"  # trained with the mean pool
    assert meta["embed_dim"] == 2 * plain_meta["embed_dim"]
    w, w_plain = load_file(str(exp / "model.safetensors")), load_file(str(plain / "model.safetensors"))
    assert all(torch.equal(w[k], w_plain[k]) for k in w_plain)  # same seed, same step: same weights
    assert meta["model_id"] != plain_meta["model_id"]  # same weights embedding differently: another id
    trained.pool = "multiscale_meanstd"  # the trained weights, pooled as the export pools, one view at a time
    x = torch.randn(2, 12, 16, 16)
    with torch.no_grad():
        views = [trained({"s2": v.rot90(k, (2, 3))}).modality["s2"] for v in (x, x.flip(3)) for k in range(4)]
        torch.testing.assert_close(model({"s2": x}).modality["s2"], torch.stack(views).mean(0))
    with pytest.raises(ValueError, match="export.name"):
        load_config("cpu_single_modality", ["export.name=multimodal_vit_tiny"])
    with pytest.raises(ValueError, match="unknown config key 'export.nope'"):
        load_config("cpu_single_modality", ["export.nope=1"])
    with pytest.raises(ValueError, match="export.* settings change the model's weight shapes"):
        pretrain("cpu_rgb", single, tmp_path / "bad", base + ["export.backbone=resnet18"])
    assert not (tmp_path / "bad" / "checkpoints").exists()  # refused before any training


# -- chunk-aware sampler -------------------------------------------------------------------------------
def test_chunk_sampler_covers_each_position_once_keeps_locality_and_shards():
    from earthembed.pretrain.datamodule import ChunkShuffledBatches, ShuffledBatches

    chunk_of = np.repeat(np.arange(25), 16)[:390]  # 390 chips in 16-chip chunks, the last one partial
    s = ChunkShuffledBatches(chunk_of, batch_size=32, window=4, seed=3)
    s.drop_last = False
    order = [i for b in s for i in b]
    assert sorted(order) == list(range(390))  # every position exactly once per epoch
    for b in s:
        assert len(set(chunk_of[b])) <= 8  # a batch comes from one window of 4 chunks (or straddles two)
        assert set(b) <= set(b.window) and len(set(chunk_of[b.window])) <= 8
    s.set_epoch(1)
    assert [i for b in s for i in b] != order
    ranks = [ChunkShuffledBatches(chunk_of, 32, window=4, rank=r, world_size=2, seed=3) for r in range(2)]
    got = [[i for b in r for i in b] for r in ranks]
    assert not set(got[0]) & set(got[1]) and len(ranks[0]) == len(ranks[1]) == 390 // 2 // 32
    assert len(ShuffledBatches(390, 32)) == len(ChunkShuffledBatches(chunk_of, 32))


def test_chunk_reader_returns_the_same_chips_as_a_scattered_read(tiny_store):
    from earthembed.pretrain.datamodule import ChipDataModule

    by_chunk = ChipDataModule(tiny_store, batch_size=6, splits="train", sampler="chunks", shuffle_window=2)
    scattered = ChipDataModule(tiny_store, batch_size=6, splits="train", sampler="shuffle")
    batches = list(by_chunk.train_dataloader())  # batches served from windows read once
    assert len(batches) == 2 and sorted(i for a in batches for i in a["idx"].tolist()) == list(by_chunk.dataset.indices)
    for a in batches:
        pos = np.searchsorted(by_chunk.dataset.indices, a["idx"].numpy())  # store rows -> dataset positions
        b = scattered.train_dataloader().dataset[pos.tolist()]
        for k in ("idx", "s2", "s1", "s1_present"):
            torch.testing.assert_close(a[k], b[k])
    with pytest.raises(ValueError, match="data.sampler"):
        ChipDataModule(tiny_store, sampler="random")
