"""MP-MAE (MMEarth): masking, pretext-task discovery, losses, weighting, config errors and a run end to end.

Models are shrunk with ``timm_kwargs`` (ConvNeXt V2 blocks with dims 8-64) so every step takes milliseconds;
parameter counts of the real sizes are checked on the meta device.
"""

import json

import numpy as np
import pandas as pd
import pytest
import shapely
import torch

from earthembed.augment import AugmentConfig, random_dihedral
from earthembed.data.modalities import get_modality
from earthembed.data.store import ChipRecord, ChipStore, StoreWriter
from earthembed.models import build_model, load_model
from earthembed.pretrain.masking import PatchMask, mask_grid, masked_convnext_features, random_patch_mask
from earthembed.pretrain.pretext import PretextTask
from earthembed.pretrain.pretext_losses import LOSSES
from earthembed.pretrain.run import load_config, pretrain
from earthembed.pretrain.weighting import TaskWeighting

SMALL = {"depths": [1, 1, 1, 1], "dims": [8, 16, 32, 64]}
FAST = [
    "model.timm_kwargs={depths: [1, 1, 1, 1], dims: [8, 16, 32, 64]}", "objective_args.decoder_dim=16",
    "data.batch_size=6", "data.crop_size=16", "data.splits=all", "train.progress_bar=false",
    "train.log_every_n_steps=1", "train.warmup_steps=0",
]
S2 = get_modality("s2_l2a").band_names
BIOMES = ["boreal", "temperate"]


def _write(path, modalities, n=12, size=16):
    """A georeferenced store: S2 always; S1 missing on every 3rd chip; DEM with a nodata hole on chip 1;
    WorldCover; monthly dates; a numeric (`climate`) and a categorical (`biome`) per-chip column."""
    rng = np.random.default_rng(0)
    schema = {"climate": {"kind": "value"}, "biome": {"kind": "class", "classes": BIOMES}}
    keys = {m.name for m in modalities}
    with StoreWriter(path, modalities, size, schema, batch_size=8) as w:
        for i in range(n):
            arrays = {"s2": rng.integers(200, 3000, (12, size, size)).astype("uint16")}
            if "s1" in keys and i % 3:
                arrays["s1"] = rng.normal(-12, 3, (2, size, size)).astype("float32")
            if "dem" in keys:
                dem = rng.normal(300, 40, (1, size, size)).astype("float32")
                if i == 1:
                    dem[:, :4] = np.nan
                arrays["dem"] = dem
            if "lc" in keys:
                arrays["lc"] = rng.choice([10, 30, 80], (1, size, size)).astype("uint8")
            w.add(ChipRecord(f"c{i:02d}", arrays, geometry=shapely.box(10 + i * 0.1, 45 + i * 0.05, 10.1 + i * 0.1, 45.1 + i * 0.05),
                             crs="EPSG:4326", dates={"s2": f"2021-{1 + i % 12:02d}-15"}, split=["train", "val", "test"][i % 3],
                             labels={"climate": float(i), "biome": BIOMES[i % 2]}))
    return path


@pytest.fixture(scope="module")
def mm_store(tmp_path_factory):
    mods = [get_modality("s2_l2a"), get_modality("s1_grd_db"), get_modality("elevation"), get_modality("worldcover")]
    return _write(tmp_path_factory.mktemp("stores") / "mm", mods)


@pytest.fixture(scope="module")
def optical_store(tmp_path_factory):
    return _write(tmp_path_factory.mktemp("stores") / "s2", [get_modality("s2_l2a")])


def _cfg(*overrides):
    return load_config("mpmae_atto", [*FAST, *overrides])[0]


def _plan_and_module(store, *overrides):
    from earthembed.pretrain.mpmae import MPMAEPretrainModule

    cfg = _cfg(*overrides)
    plan = MPMAEPretrainModule.plan(ChipStore(store), cfg, "test")
    args = {k: v for k, v in cfg["model"].items() if k not in ("name", "modalities")}
    torch.manual_seed(0)
    mod = MPMAEPretrainModule(cfg["model"]["name"], {**args, "modalities": plan.inputs}, augment=cfg["augment"],
                              **cfg["objective_args"], **plan.args)
    return plan, mod


def _batch(store, plan, n=6):
    from earthembed.pretrain.datamodule import ChipDataModule

    dm = ChipDataModule(store, plan.inputs, batch_size=n, crop_size=16, splits="all", reads=plan.reads)
    return next(iter(dm.train_dataloader()))


# -- encoder and masking --------------------------------------------------------------------------------
def test_parameter_counts_match_the_reference():
    with torch.device("meta"):
        atto = build_model("timm_cnn", modalities={"s2": S2}, backbone="convnextv2_atto", stem_stride=1)
        tiny = build_model("timm_cnn", modalities={"s2": S2}, backbone="convnextv2_tiny", stem_stride=2)
    n_atto = sum(p.numel() for p in atto.parameters())
    n_tiny = sum(p.numel() for p in tiny.parameters())
    assert abs(n_atto - 3.4e6) < 0.02e6 and abs(n_tiny - 27.9e6) < 0.05e6, (n_atto, n_tiny)
    assert atto.feature_strides[-1] == 8 and tiny.feature_strides[-1] == 16  # patch 8 / patch 16


def test_masked_encoder_sees_nothing_of_hidden_patches():
    torch.manual_seed(0)
    net = build_model("timm_cnn", modalities={"s2": S2}, backbone="convnextv2_atto", stem_stride=1,
                      timm_kwargs=SMALL).backbones["s2"].train()
    mask = random_patch_mask(3, (4, 4), 0.6, 8)
    assert (mask.hidden.flatten(1).sum(1) == 16 - int(16 * 0.4)).all()  # same count per chip
    x = torch.randn(3, 12, 32, 32)
    other = torch.where(mask.hidden_at((32, 32)), torch.randn_like(x) * 10, x)  # only hidden pixels differ
    a, b = masked_convnext_features(net, x, mask), masked_convnext_features(net, other, mask)
    visible = ~mask.hidden_at(a.shape[-2:])
    assert a.shape == (3, 64, 4, 4) and (a * visible).abs().sum() > 0
    torch.testing.assert_close(a * visible, b * visible, rtol=0, atol=0)
    assert not (a * ~visible).any()
    # the same change does reach visible positions through a plain forward pass (the test can fail)
    assert not torch.allclose(net.forward_features(x) * visible, net.forward_features(other) * visible)
    assert not any(h for m in net.modules() for h in m._forward_pre_hooks.values())  # GRN hooks removed


@pytest.mark.parametrize("stem_stride", [1, 2])
def test_masked_encoder_equals_a_sparse_convolution(stem_stride):
    """With the right half of the patches hidden, the visible features must equal the network run on the left
    half alone (zero padding at its edge = an absent neighbour of a sparse convolution), GRN statistics
    included: masking only the input, or not masking GRN's input, fails this."""
    torch.manual_seed(0)
    net = build_model("timm_cnn", modalities={"s2": S2}, backbone="convnextv2_atto", stem_stride=stem_stride,
                      timm_kwargs=SMALL).backbones["s2"].eval()
    with torch.no_grad():  # timm initialises GRN as the identity; make it count
        for m in net.modules():
            if hasattr(m, "spatial_dim"):
                m.weight.normal_()
                m.bias.normal_()
    p = 8 * stem_stride
    x = torch.randn(2, 12, 4 * p, 4 * p)
    hidden = torch.zeros(2, 4, 4, dtype=torch.bool)
    hidden[:, :, 2:] = True
    visible = masked_convnext_features(net, x, PatchMask(hidden, p))[..., :2]
    torch.testing.assert_close(visible, net.forward_features(x[..., : 2 * p]), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(net.forward_features(x)[..., :2], visible, atol=1e-3)


def test_mask_grid_names_what_the_chip_needs():
    assert mask_grid(56, 8, 0.6) == (7, 7)
    with pytest.raises(ValueError, match=r"chips of 8 px .* at least 16 px"):
        mask_grid(8, 8, 0.6, "cfg.yaml")
    with pytest.raises(ValueError, match=r"multiple of the patch size 16"):
        mask_grid(40, 16, 0.6)


def test_dihedral_moves_all_rasters_alike():
    x = torch.arange(2 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    x[0, 0, 0, 1] = float("nan")
    out = random_dihedral({"a": x, "b": x.long().clone(), "c": x[:, 0]}, AugmentConfig(), torch.Generator().manual_seed(3))
    torch.testing.assert_close(out["a"].nan_to_num(-1), out["b"].float().where(~out["a"].isnan(), -1.0))
    torch.testing.assert_close(out["a"][:, 0], out["c"], equal_nan=True)
    assert int(out["a"].isnan().sum()) == 1 and out["b"].dtype == torch.int64


# -- tasks ----------------------------------------------------------------------------------------------
def test_tasks_discovered_by_kind(mm_store):
    plan, _ = _plan_and_module(mm_store, "objective_args.chip_regression=[climate]",
                               "objective_args.chip_classification=[biome]")
    tasks = {t["name"]: t for t in plan.summary["tasks"]}
    assert {n: t["loss"] for n, t in tasks.items()} == {
        "s2": "pixel_regression", "s1": "pixel_regression", "dem": "pixel_regression", "dem_slope": "pixel_regression",
        "lc": "pixel_classification", "lat": "image_regression", "lon": "image_regression", "month": "image_regression",
        "climate": "image_regression", "biome": "image_classification"}
    assert tasks["lc"]["channels"] == 11 and tasks["biome"]["channels"] == 2 and tasks["s2"]["channels"] == 12
    assert plan.inputs == {"s2": S2} and plan.summary["patch_size"] == 8
    r = plan.reads
    assert set(r.modalities) == {"s1", "dem"} and r.categorical == ["lc"] and set(r.keep_nodata) == {"s2", "s1", "dem"}
    assert set(r.values) == {"lat", "lon", "month", "climate", "biome"}
    lat = r.values["lat"].values  # z-scored over the pretraining chips: within an AOI sin/cos barely move
    assert np.allclose(lat.mean(0), 0, atol=1e-4) and np.allclose(lat.std(0), 1, atol=1e-3)
    b = _batch(mm_store, plan)
    assert b["lc"].dtype == torch.int64 and b["lc"].shape == (6, 1, 16, 16) and set(b["lc"].unique().tolist()) <= {10, 30, 80}
    assert b["value_biome"].dtype == torch.int64 and b["value_climate"].shape == (6, 1)
    assert torch.isnan(b["s1"][~b["s1_present"]]).all()  # absent chips are NaN targets, not zeros


def test_optical_only_store_runs_as_mae_and_says_so(optical_store):
    plan, _ = _plan_and_module(optical_store)
    assert [t["name"] for t in plan.summary["tasks"]] == ["s2", "lat", "lon", "month"]
    plan, _ = _plan_and_module(optical_store, "objective_args.tasks=[input]")
    assert [t["name"] for t in plan.summary["tasks"]] == ["s2"] and plan.reads.modalities == {}
    assert [t["name"] for t in plan.summary["found_not_used"]] == ["lat", "lon", "month"]
    assert any("optical-only MAE" in n for n in plan.notes)


def test_store_and_config_errors_name_what_is_missing(optical_store, tmp_path):
    from earthembed.pretrain.mpmae import MPMAEPretrainModule

    with pytest.raises(ValueError, match=r"tasks names \['s1'\] .*tasks found: \['s2'.*s2 \(optical\)"):
        _plan_and_module(optical_store, "objective_args.tasks=[input, s1]")
    with pytest.raises(ValueError, match=r"task source that is absent.*no column 'era5'"):
        _plan_and_module(optical_store, "objective_args.chip_regression=[era5]")
    s1 = tmp_path / "s1"
    with StoreWriter(s1, [get_modality("s1_grd_db")], 16) as w:
        w.add(ChipRecord("a", {"s1": np.zeros((2, 16, 16), "float32")}))
    with pytest.raises(ValueError, match=r"no optical modality \(modalities: s1 \(sar\)\)"):
        MPMAEPretrainModule.plan(ChipStore(s1), _cfg(), "test")
    with pytest.raises(ValueError, match=r"chips of 8 px do not fit the masking grid"):
        MPMAEPretrainModule.plan(ChipStore(optical_store), _cfg("data.crop_size=8"), "test")
    with pytest.raises(ValueError, match="needs a ConvNeXt encoder.*got model 'timm_cnn': .*got ResNet"):
        MPMAEPretrainModule.plan(ChipStore(optical_store), _cfg("model.backbone=resnet18", "model.timm_kwargs={}"), "t")
    with pytest.raises(ValueError, match=r"needs a ConvNeXt encoder \(.*\), got model 'multimodal_vit'$"):
        vit = _cfg()
        vit["model"] = {"name": "multimodal_vit", "modalities": vit["model"]["modalities"], "patch_size": 8}
        MPMAEPretrainModule.plan(ChipStore(optical_store), vit, "t")
    with pytest.raises(ValueError, match="loss_weighting must be one of"):
        _cfg("objective_args.loss_weighting=max")
    with pytest.raises(ValueError, match="'objective_args.pretext_tasks'"):  # filled from the store, not a key
        _cfg("objective_args.pretext_tasks=[]")
    for name in ("mpmae_atto", "mae_atto", "mpmae_tiny"):
        assert load_config(name)[0]["objective"] == "mpmae"
    assert load_config("mpmae_tiny")[0]["train"]["precision"] == "bf16-mixed"


# -- losses and weighting -------------------------------------------------------------------------------
def test_missing_targets_contribute_no_loss():
    torch.manual_seed(0)
    task = PretextTask("s1", "pixel_regression", "s1", "s1", 2)
    hidden = torch.zeros(4, 1, 8, 8, dtype=torch.bool)
    hidden[:, :, :4] = True
    pred, target = torch.randn(4, 2, 8, 8), torch.randn(4, 2, 8, 8)
    target[1, :, 0, 0] = float("nan")  # a nodata pixel
    present = torch.tensor([True, True, False, True])
    loss, ok = LOSSES["pixel_regression"](pred, {"s1": target, "s1_present": present}, task, hidden, 4)
    valid = torch.isfinite(target) & hidden & present[:, None, None, None]
    assert ok and torch.isclose(loss, ((pred - target)[valid] ** 2).mean())  # absent chip and nodata left out
    target[2] = 1e6  # whatever an absent chip holds does not matter
    assert torch.isclose(LOSSES["pixel_regression"](pred, {"s1": target, "s1_present": present}, task, hidden, 4)[0], loss)
    loss, ok = LOSSES["pixel_regression"](pred, {"s1": target, "s1_present": torch.zeros(4, dtype=torch.bool)}, task, hidden, 4)
    assert not ok and loss == 0
    lc = PretextTask("lc", "pixel_classification", "lc", "lc", 2, codes=(10, 80))
    codes = torch.full((4, 1, 8, 8), 0)  # nodata code everywhere
    loss, ok = LOSSES["pixel_classification"](torch.randn(4, 2, 8, 8), {"lc": codes}, lc, hidden, 4)
    assert not ok and loss == 0
    # the weighting leaves an absent task out entirely: no loss, no log-variance term, no gradient
    w = TaskWeighting(["s2", "s1"])
    with torch.no_grad():
        w.log_vars.copy_(torch.tensor([0.5, -0.3]))
    l2 = torch.tensor(2.0, requires_grad=True)
    total, stats = w({"s2": (l2, torch.tensor(True)), "s1": (torch.tensor(0.0), torch.tensor(False))})
    assert torch.isclose(total, torch.exp(torch.tensor(-0.5)) * 2.0 + 0.5)
    total.backward()
    assert w.log_vars.grad[1] == 0 and w.log_vars.grad[0] != 0
    assert torch.isnan(stats["loss_s1"]) and torch.isclose(stats["sigma_s2"], torch.exp(torch.tensor(0.25)))
    total, _ = TaskWeighting(["a", "b"], "equal")({"a": (torch.tensor(1.0), torch.tensor(True)),
                                                  "b": (torch.tensor(2.0), torch.tensor(True))})
    assert total == 3.0


def test_uncertainty_weights_learn_without_weight_decay(mm_store):
    plan, mod = _plan_and_module(mm_store)
    assert "weighting.log_vars" in mod.no_weight_decay() and "mask_token" in mod.no_weight_decay()
    groups = mod.param_groups()
    no_decay = {id(p) for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    assert id(mod.weighting.log_vars) in no_decay and mod.weighting.log_vars.requires_grad
    assert id(mod.proj.weight) not in no_decay
    opt = torch.optim.AdamW(groups, lr=1e-2)
    batch = _batch(mm_store, plan)
    before = mod.weighting.log_vars.detach().clone()
    for _ in range(2):
        loss, stats = mod.step(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.isfinite(loss) and not torch.equal(before, mod.weighting.log_vars.detach())
    assert {f"loss_{t.name}" for t in mod.tasks} | {f"sigma_{t.name}" for t in mod.tasks} == set(stats)
    _, equal = _plan_and_module(mm_store, "objective_args.loss_weighting=equal")
    assert equal.weighting.log_vars is None and "weighting.log_vars" not in equal.no_weight_decay()


# -- end to end -----------------------------------------------------------------------------------------
def test_pretrain_export_embed_and_resume(mm_store, tmp_path):
    from earthembed.embed.run import embed_store

    out = tmp_path / "run"
    exp = pretrain("mpmae_atto", mm_store, out, [*FAST, "train.max_steps=2"])
    metrics = pd.read_csv(out / "metrics.csv")
    assert list(metrics["step"]) == [0, 1] and {"train/loss_s1", "train/sigma_lc", "train/loss_month"} <= set(metrics)
    meta = json.loads((exp / "model.json").read_text())
    assert meta["architecture"] == "timm_cnn" and meta["pretrain"]["objective"] == "mpmae"
    assert [t["name"] for t in meta["pretrain"]["plan"]["tasks"]][:2] == ["s2", "s1"]
    assert "plan" in (out / "config.yaml").read_text() and meta["modalities"] == {"s2": S2}
    model, _ = load_model(exp)
    for bands, name in ((None, "all"), ({"s2": ["B04", "B03", "B02"]}, "rgb")):
        table = embed_store(exp, mm_store, tmp_path / f"{name}.parquet", bands=bands, progress=False)
        emb = pd.read_parquet(table)
        assert len(emb) == 12 and len(emb["emb_fused"].iloc[0]) == model.embed_dim == 64
    exp = pretrain("mpmae_atto", mm_store, out, [*FAST, "train.max_steps=3"])  # resumes: one more step
    assert list(pd.read_csv(out / "metrics.csv")["step"]) == [0, 1, 2]
    assert load_model(exp)[1]["pretrain"]["global_step"] == 3
    with pytest.raises(ValueError, match="different objective_args"):
        pretrain("mpmae_atto", mm_store, out, [*FAST, "train.max_steps=4", "objective_args.mask_ratio=0.5"])
