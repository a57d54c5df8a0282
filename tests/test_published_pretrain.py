"""``pretrain --init SPEC``: continued pretraining from published weights, resumable, with their normalisation."""

from __future__ import annotations

import warnings

import pandas as pd
import pytest
import torch
import yaml
from typer.testing import CliRunner

from earthembed.cli import app
from earthembed.models import load_model
from earthembed.models.published import PublishedWeightsWarning, load_encoder
from earthembed.pretrain.run import pretrain
from published_layouts import (
    MMEARTH_ORDER,
    make_store,
    mmearth_dense_state,
    random_timm,
    save_mmearth_checkpoint,
)

FAST = ["data.batch_size=4", "data.crop_size=8", "train.progress_bar=false", "train.log_every_n_steps=1",
        "train.warmup_steps=0", "data.splits=all", "objective_args.proj_dim=8"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("pt")
    store = make_store(root / "l1c", "s2_l1c")
    folder = root / "pt-S2_atto_1M_64_uncertainty_56-8"
    folder.mkdir()
    ckpt = save_mmearth_checkpoint(folder / "checkpoint-199.pth", mmearth_dense_state(12), MMEARTH_ORDER)
    return store, ckpt


def test_continued_pretraining_starts_from_the_published_weights_and_resumes(setup, tmp_path):
    store, ckpt = setup
    spec = f"mmearth:{ckpt}"
    out = tmp_path / "run"
    # lr 0: the exported encoder must be exactly the published one fitted to the store (B10 added as a
    # zero-initialised channel, the default for pretraining)
    exp = pretrain("contrastive_tiny", store, out, [*FAST, "train.max_steps=1", "train.lr=0"], init=spec)
    model, meta = load_model(exp)
    init, init_meta = load_encoder(spec, store, extra_bands="add")
    assert meta["architecture"] == "timm_cnn" and meta["config"]["stem"] == "mmearth"
    assert meta["modalities"] == init_meta["modalities"] and meta["modalities"]["s2"][-1] == "B10"
    assert meta["normalization"] == init_meta["normalization"]  # trained and exported with the init's normalisation
    assert meta["init"]["spec"] == spec and meta["init"]["published"]["weights_sha256"]
    for k, v in init.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["model"]["name"] == "timm_cnn" and cfg["init"]["spec"] == spec
    # the same command with a larger budget resumes (through the CLI); a different init is refused
    r = CliRunner().invoke(app, ["pretrain", "--config", "contrastive_tiny", "--store", str(store), "--out", str(out),
                                 "--init", spec, *FAST, "train.max_steps=2", "train.lr=0"])
    assert r.exit_code == 0, r.output
    assert list(pd.read_csv(out / "logs" / "metrics.csv")["step"]) == [1]
    model, meta = load_model(exp)
    assert meta["pretrain"]["global_step"] == 2
    # an earthembed export is a SPEC too: its architecture, weights and normalisation carry over
    again = pretrain("contrastive_tiny", store, tmp_path / "again", [*FAST, "train.max_steps=1", "train.lr=0"],
                     init=str(exp))
    model2, meta2 = load_model(again)
    assert meta2["init"]["spec"] == str(exp) and meta2["config"] == meta["config"]
    assert meta2["normalization"] == meta["normalization"]
    assert all(torch.equal(v, model2.state_dict()[k]) for k, v in model.state_dict().items())
    f = tmp_path / "rn18.pth"
    torch.save(random_timm("resnet18", 13).state_dict(), f)
    with pytest.raises(ValueError, match="different model, init config"):
        pretrain("contrastive_tiny", store, out, [*FAST, "train.max_steps=3"],
                 init="torchgeo:ResNet18_Weights.SENTINEL2_ALL_MOCO", weights=f)


def test_init_training_changes_weights_and_model_overrides_are_checked(setup, tmp_path):
    store, ckpt = setup
    f = tmp_path / "rn18.pth"
    torch.save(random_timm("resnet18", 13).state_dict(), f)
    spec = "torchgeo:ResNet18_Weights.SENTINEL2_ALL_MOCO"
    exp = pretrain("contrastive_tiny", store, tmp_path / "run", [*FAST, "train.max_steps=1", "model.stem_stride=2"],
                   init=spec, weights=f)
    model, meta = load_model(exp)
    assert meta["config"]["stem_stride"] == 2 and meta["config"]["backbone"] == "resnet18"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PublishedWeightsWarning)
        init, _ = load_encoder(spec, store, weights=f, extra_bands="add")
    w0 = init.backbones["s2"].conv1.weight
    assert not torch.equal(model.backbones["s2"].conv1.weight, w0)
    with pytest.raises(ValueError, match="change the weight shapes of --init"):
        pretrain("contrastive_tiny", store, tmp_path / "run2", [*FAST, "train.max_steps=1", "model.backbone=resnet34"],
                 init=spec, weights=f)
    with pytest.raises(ValueError, match="unknown config key 'model.depth' for model 'timm_cnn'"):
        pretrain("contrastive_tiny", store, tmp_path / "run3", [*FAST, "model.depth=2"], init=spec, weights=f)
