import json

import numpy as np
import pandas as pd
import pytest
import torch
import typer
from typer.testing import CliRunner

from earthembed.augment import (
    AugmentConfig,
    apply_affine,
    augment_batch,
    band_dropout,
    group_dropout,
    group_masks,
    modality_dropout,
    random_affine,
)
from earthembed.data.modalities import get_modality
from earthembed.data.store import ChipRecord, ChipStore, StoreWriter
from earthembed.models import load_model, random_init_like
from earthembed.pretrain.losses import clip_loss, multimodal_clip_loss
from earthembed.pretrain.run import load_config, parse_overrides, pretrain

FAST = [
    "data.batch_size=8", "data.crop_size=16", "model.embed_dim=32", "model.depth=1", "train.progress_bar=false",
    "train.log_every_n_steps=1", "train.warmup_steps=0", "data.splits=all", "objective_args.proj_dim=16",
]


@pytest.fixture(scope="module")
def s2_store(tmp_path_factory):
    """12 s2-only chips of 16x16: the single-modality (two-view) path."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("stores") / "s2only"
    with StoreWriter(path, [get_modality("s2_l2a")], 16, batch_size=8) as w:
        for i in range(12):
            w.add(ChipRecord(f"c{i}", {"s2": rng.normal(1500, 400, (12, 16, 16)).clip(1).astype("uint16")}))
    return path


# -- losses and augmentations -------------------------------------------------------------------------
def test_clip_loss_prefers_matched_pairs():
    a = torch.randn(6, 8)
    assert clip_loss(a, a, 10.0) < clip_loss(a, torch.randn(6, 8), 10.0)
    assert torch.isclose(clip_loss(a, a.roll(1, 0), 10.0), clip_loss(a.roll(1, 0), a, 10.0))
    emb = {"s2": a, "s1": a + 0.01 * torch.randn(6, 8), "coh": torch.randn(6, 8)}
    pres = {"s2": torch.ones(6, dtype=torch.bool), "s1": torch.ones(6, dtype=torch.bool),
            "coh": torch.tensor([True] + [False] * 5)}
    loss, stats = multimodal_clip_loss(emb, pres, 10.0)
    assert stats["pairs"] == 1 and torch.isclose(loss, clip_loss(emb["s1"], emb["s2"], 10.0))
    none, stats = multimodal_clip_loss({"s2": a}, {"s2": pres["s2"]}, 10.0)
    assert none is None and stats["pairs"] == 0


def test_augment_keeps_modalities_coregistered_and_groups_alive():
    x = torch.randn(16, 3, 8, 8)
    cfg = AugmentConfig(crop_scale=(0.5, 1.0), band_dropout=0.0, noise_std=0.0)
    out = augment_batch({"a": x, "b": x[:, :2].clone()}, {"a": [[0, 1, 2]], "b": [[0, 1]]}, cfg)
    torch.testing.assert_close(out["a"][:, :2], out["b"])  # one geometry per chip for all modalities
    assert not torch.allclose(out["a"], x)
    ident = AugmentConfig(crop_scale=(1.0, 1.0), flip=False, rot90=False)
    torch.testing.assert_close(apply_affine(x, random_affine(16, ident)), x)
    z = band_dropout(torch.ones(500, 5, 2, 2), [[0, 1], [2, 3, 4]], p=0.9)
    assert (z[:, :2].amax((2, 3)).sum(1) >= 1).all() and (z[:, 2:].amax((2, 3)).sum(1) >= 1).all()
    assert 0.2 < z.mean() < 0.6
    pres = {k: torch.ones(200, dtype=torch.bool) for k in ("s2", "s1", "coh")}
    kept = modality_dropout(pres, 0.9)
    assert (sum(v.long() for v in kept.values()) >= 2).all() and not all(v.all() for v in kept.values())
    two = modality_dropout({k: pres[k] for k in ("s2", "s1")}, 0.9)
    assert all(v.all() for v in two.values())


def test_group_dropout_drops_whole_groups_and_can_leave_rgb_only():
    from earthembed.models import build_model

    model = build_model("multimodal_vit_tiny", modalities={"s2": get_modality("s2_l1c").band_names, "s1": ["VV", "VH"]})
    groups = {k: model.group_channel_indices(k) for k in ("s2", "s1")}
    g = torch.Generator().manual_seed(0)
    x = {"s2": torch.ones(2000, 13, 8, 8), "s1": torch.ones(2000, 2, 8, 8)}
    cfg = AugmentConfig(crop_scale=(1.0, 1.0), noise_std=0.0, band_dropout=0.3, group_dropout=0.5)
    out = augment_batch(x, groups, cfg, generator=g)
    assert "s1_group_present" not in out  # one group: never dropped
    gp = out["s2_group_present"]
    assert gp.shape == (2000, 3) and gp.dtype == torch.bool and gp.any(1).all() and not gp.all(1).all()
    alive = out["s2"].amax((2, 3)) > 0  # [B, C] channels left
    for j, idx in enumerate(groups["s2"]):
        assert not alive[~gp[:, j]][:, idx].any()  # dropped groups are zero (and masked for the model)
        assert alive[gp[:, j]][:, idx].any(1).all()  # kept groups keep >= 1 channel
    rgb = [get_modality("s2_l1c").band_names.index(b) for b in ("B04", "B03", "B02")]
    only_rgb = (alive.sum(1) == 3) & alive[:, rgb].all(1)
    assert only_rgb.sum() > 10  # RGB-only Sentinel-2 input occurs in training
    m = group_dropout(1000, 3, 0.9, generator=g)
    assert (m.sum(1) >= 1).all() and (m.sum(1) == 1).float().mean() > 0.6
    assert "s2_group_present" not in augment_batch(x, groups, AugmentConfig(group_dropout=0.0))
    assert AugmentConfig().group_dropout == load_config("contrastive_tiny")[0]["augment"]["group_dropout"] == 0.25
    assert load_config("contrastive_full")[0]["augment"]["group_dropout"] == 0.25
    with pytest.raises(ValueError, match="group_dropout"):
        AugmentConfig.from_dict({"group_dropout": 1.5})


def test_module_passes_group_masks_to_the_model(tiny_store):
    from earthembed.pretrain.contrastive import ContrastivePretrainModule
    from earthembed.pretrain.datamodule import ChipDataModule

    dm = ChipDataModule(tiny_store, batch_size=16, crop_size=16, splits="all")
    batch = next(iter(dm.train_dataloader()))
    for bands in (dm.bands, {"s2": dm.bands["s2"]}):  # multimodal and single-modality (two views) paths
        torch.manual_seed(0)
        mod = ContrastivePretrainModule("multimodal_vit_tiny", {"modalities": bands, "embed_dim": 32, "depth": 1},
                                        proj_dim=16, augment={"group_dropout": 0.6})
        seen: list = []
        forward = mod.model.forward

        def spy(b, *a, _forward=forward, _seen=seen, **kw):
            _seen.append({**group_masks(b), **(kw.get("group_present") or {})})  # the view's own, or given
            return _forward(b, *a, **kw)

        mod.model.forward = spy
        loss, _ = mod.contrastive_step(batch)
        assert torch.isfinite(loss) and seen
        for gp in seen:
            assert set(gp) == {"s2"} and gp["s2"].shape == (16, 3) and not gp["s2"].all()


# -- config -------------------------------------------------------------------------------------------
def test_overrides_and_config_errors(tmp_path):
    assert parse_overrides(["train.max_steps=20", "model.modalities=[s2, s1]", "data.crop_size=null"]) == {
        "train": {"max_steps": 20}, "model": {"modalities": ["s2", "s1"]}, "data": {"crop_size": None}}
    cfg, where = load_config("contrastive_tiny", ["train.max_steps=20", "model.embed_dim=32"])
    assert cfg["train"]["max_steps"] == 20 and cfg["model"]["embed_dim"] == 32 and where.endswith("contrastive_tiny.yaml")
    with pytest.raises(ValueError, match=r"contrastive_tiny\.yaml.*'train\.foo'"):
        load_config("contrastive_tiny", ["train.foo=1"])
    with pytest.raises(ValueError, match="bad override 'train.max_steps'"):
        load_config("contrastive_tiny", ["train.max_steps"])
    with pytest.raises(ValueError, match="model.name 'vit_nope'"):
        load_config("contrastive_tiny", ["model.name=vit_nope"])
    with pytest.raises(ValueError, match="'model.depthh'"):
        load_config("contrastive_tiny", ["model.depthh=3"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {max_steps: 3}\nloss: {x: 1}\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: unknown config key 'loss'"):
        load_config(bad)
    full, _ = load_config("contrastive_full")
    assert full["train"]["strategy"] == "ddp" and full["model"]["name"] == "multimodal_vit_large"


# -- training -----------------------------------------------------------------------------------------
def test_module_loss_decreases_on_fixed_batch(tiny_store):
    from earthembed.pretrain.contrastive import ContrastivePretrainModule
    from earthembed.pretrain.datamodule import ChipDataModule

    dm = ChipDataModule(tiny_store, batch_size=16, crop_size=16, splits="all")
    batch = next(iter(dm.train_dataloader()))
    assert batch["s2"].shape == (16, 13, 16, 16) and batch["s1_present"].dtype == torch.bool
    torch.manual_seed(0)
    mod = ContrastivePretrainModule(
        "multimodal_vit_tiny", {"modalities": dm.bands, "embed_dim": 32, "depth": 1}, proj_dim=16,
        augment={"band_dropout": 0.0, "group_dropout": 0.0, "noise_std": 0.0, "crop_scale": [1.0, 1.0], "flip": False, "rot90": False},
    )
    opt = torch.optim.AdamW(mod.parameters(), lr=3e-3)
    losses = []
    for _ in range(6):
        loss, stats = mod.contrastive_step(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.isfinite(losses).all() and losses[-1] < losses[0], losses


def test_pretrain_multimodal_resume_and_export(tiny_store, tmp_path):
    out = tmp_path / "run"
    exp = pretrain("contrastive_tiny", tiny_store, out, FAST + ["train.max_steps=2"])
    assert (out / "checkpoints" / "last.ckpt").exists() and (out / "config.yaml").exists()
    m1 = pd.read_csv(out / "metrics.csv")
    assert list(m1["step"]) == [0, 1] and np.isfinite(m1["train/loss"]).all()
    model, meta = load_model(exp)
    assert meta["modalities"] == {"s2": ChipStore(tiny_store).band_names("s2"), "s1": ["VV", "VH"]}
    assert meta["pretrain"]["global_step"] == 2 and meta["embed_dim"] == 32
    st = ChipStore(tiny_store)
    assert meta["products"] == {k: {"product": st.modalities[k].product, "units": st.modalities[k].units,
                                    "kind": st.modalities[k].kind} for k in ("s2", "s1")}
    init = random_init_like(meta, seed=0)  # the run's initial weights (seed 0)
    assert any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(), init.state_dict().values(), strict=True))
    # the same command with a larger budget resumes from last.ckpt: only steps 2 and 3 are run
    exp = pretrain("contrastive_tiny", tiny_store, out, FAST + ["train.max_steps=4"])
    assert list(pd.read_csv(out / "logs" / "metrics.csv")["step"]) == [2, 3]
    assert list(pd.read_csv(out / "metrics.csv")["step"]) == [0, 1, 2, 3]
    _, meta = load_model(exp)
    assert meta["pretrain"]["global_step"] == 4
    with pytest.raises(ValueError, match="different model config"):
        pretrain("contrastive_tiny", tiny_store, out, FAST + ["train.max_steps=5", "model.embed_dim=64"])
    # a checkpoint converts to the same export
    from earthembed.data.normalize import Normalizer
    from earthembed.models.export import export_checkpoint, modality_products

    conv, conv_meta = load_model(export_checkpoint(out / "checkpoints" / "last.ckpt", tmp_path / "conv",
                                                   Normalizer.from_store(st), products=modality_products(st.modalities)))
    assert conv_meta["products"] == meta["products"]
    b = {"s2": torch.randn(2, 13, 16, 16), "s1": torch.randn(2, 2, 16, 16)}
    torch.testing.assert_close(conv(b).fused, load_model(exp)[0](b).fused, rtol=0, atol=0)


def _s1_store(path, product):
    rng = np.random.default_rng(0)
    with StoreWriter(path, [get_modality(product)], 16, batch_size=8, overwrite=True) as w:
        for i in range(8):
            w.add(ChipRecord(f"c{i}", {"s1": rng.normal(-12, 3, (2, 16, 16)).astype("float32")}))
    return path


def test_pretrain_resume_refuses_a_different_store(tmp_path):
    import shutil

    store = _s1_store(tmp_path / "s1", "s1_grd_db")
    out = tmp_path / "run"
    args = FAST + ["train.max_steps=1"]
    pretrain("contrastive_tiny", store, out, args)
    copy = tmp_path / "s1copy"
    shutil.copytree(store, copy)
    with pytest.raises(ValueError, match=r"different store .*s1\b.*now .*s1copy.*use a new --out"):
        pretrain("contrastive_tiny", copy, out, FAST + ["train.max_steps=2"])
    # same path, same key and bands, other product/units: refused too
    _s1_store(store, "s1_grd_linear")
    with pytest.raises(ValueError, match=r"different store content.*s1_grd_db.*s1_grd_linear.*use a new --out"):
        pretrain("contrastive_tiny", store, out, FAST + ["train.max_steps=2"])
    exp = pretrain("contrastive_tiny", store, tmp_path / "run2", args)  # a new --out is fine
    assert load_model(exp)[1]["products"]["s1"] == {"product": "s1_grd_linear", "units": "linear amplitude", "kind": "sar"}


def test_pretrain_single_modality_two_views(s2_store, tmp_path):
    exp = pretrain("contrastive_tiny", s2_store, tmp_path / "run", FAST + ["train.max_steps=2"])
    model, meta = load_model(exp)
    assert list(meta["modalities"]) == ["s2"] and "B10" not in meta["modalities"]["s2"]
    m = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert np.isfinite(m["train/loss"]).all() and (m["train/pairs"] == 1).all()


def test_cli_pretrain(tiny_store, tmp_path):
    from earthembed.pretrain.cli import register

    app = typer.Typer()
    register(app)
    runner = CliRunner()
    out = tmp_path / "cli"
    args = ["pretrain", "--config", "contrastive_tiny", "--store", str(tiny_store), "--out", str(out)]
    res = runner.invoke(app, [*args, *FAST, "train.max_steps=1", "model.modalities=[s2]"])
    assert res.exit_code == 0, res.output
    assert "exported model to" in res.output
    assert list(json.loads((out / "export" / "model.json").read_text())["modalities"]) == ["s2"]
    bad = runner.invoke(app, [*args, "train.nope=1"])
    assert bad.exit_code == 1 and "train.nope" in bad.output
    missing = runner.invoke(app, ["pretrain", "--config", "contrastive_tiny", "--store", str(tmp_path / "x"), "--out", str(out)])
    assert missing.exit_code == 1 and "not found" in missing.output
    # a second pretrain on a run directory that another one is writing stops at once, naming the holder
    import os

    from earthembed.outputs import OutputLock
    from earthembed.pretrain.run import RUN_LOCK_FILE

    before = (out / "config.yaml").read_text()
    with OutputLock(out, out / RUN_LOCK_FILE):
        busy = runner.invoke(app, [*args, *FAST, "train.max_steps=2", "model.modalities=[s2]"])
    assert busy.exit_code == 1 and f"pid {os.getpid()}" in busy.output and "being written" in busy.output
    assert (out / "config.yaml").read_text() == before  # nothing of the run was touched


def test_datamodule_splits_and_rank_sharding(tiny_store):
    from earthembed.pretrain.datamodule import ChipDataModule, ShuffledBatches, select_indices

    st = ChipStore(tiny_store)
    assert list(select_indices(st, "train")) == [i for i in range(20) if i % 5 in (0, 3, 4)]  # conftest splits
    assert len(select_indices(st, "all")) == 20 and list(select_indices(st, ["val"])) == [1, 6, 11, 16]
    with pytest.raises(ValueError, match="unknown splits"):
        select_indices(st, ["holdout"])
    with pytest.raises(ValueError, match="crop_size 32 exceeds"):
        ChipDataModule(tiny_store, crop_size=32)
    ranks = [list(ShuffledBatches(20, 4, rank=r, world_size=2, seed=1)) for r in range(2)]
    flat = [sorted(i for b in r for i in b) for r in ranks]
    assert all(len(b) == 4 for r in ranks for b in r) and not set(flat[0]) & set(flat[1])
    s = ShuffledBatches(20, 4, seed=1)
    first = list(s)
    s.set_epoch(1)
    assert first != list(s) and len(s) == 5
    dm = ChipDataModule(tiny_store, modalities={"s2": ["B04", "B03", "B02"]}, batch_size=4, crop_size=8)
    b = next(iter(dm.train_dataloader()))
    assert b["s2"].shape == (4, 3, 8, 8) and set(b) == {"idx", "s2", "s2_present", "s2_month"}


MPMAE_FAST = ["model.timm_kwargs={depths: [1, 1, 1, 1], dims: [8, 16, 32, 64]}", "objective_args.decoder_dim=16",
              "data.batch_size=8", "data.crop_size=16", "data.splits=all", "train.progress_bar=false",
              "train.log_every_n_steps=1"]


@pytest.mark.parametrize("config,args", [("contrastive_tiny", FAST), ("mpmae_atto", MPMAE_FAST)])
def test_ddp_two_cpu_processes(tmp_path, config, args):
    """Lightning DDP (gloo, 2 CPU processes) through the real CLI: the strategy clusters use, at toy size.
    MP-MAE: tasks a rank's batch lacks must not stall the gradient all-reduce."""
    import os
    import shutil
    import subprocess
    import sys

    from earthembed.data.synth import generate_synthetic_aoi

    generate_synthetic_aoi(tmp_path / "store", chips=48, chip_size=16)
    exe = shutil.which("earthembed", path=os.path.dirname(sys.executable))
    assert exe, "earthembed console script not installed next to the test interpreter"
    cmd = [exe, "pretrain", "--config", config, "--store", str(tmp_path / "store"),
           "--out", str(tmp_path / "run"), "train.strategy=ddp", "train.devices=2", "train.accelerator=cpu",
           "train.max_steps=2", *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    from earthembed.models.export import load_model

    model, meta = load_model(tmp_path / "run" / "export")
    assert meta["pretrain"]["global_step"] == 2
    assert ("s1" in meta["modalities"]) if config.startswith("contrastive") else (list(meta["modalities"]) == ["s2"])
