"""segment: metrics, label fractions, the fine-tuning harness end to end, resume, and bad input."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from earthembed.data.modalities import BandMismatchError, get_modality
from earthembed.data.normalize import Normalizer
from earthembed.data.store import ChipRecord, ChipStore, StoreWriter
from earthembed.evaluate.budgets import composition_strata, parse_fractions, sample_fractions
from earthembed.evaluate.metrics import confusion_matrices, segmentation_metrics

CLASSES = ["water", "field", "town"]
FAST = ["train.max_steps=2", "train.val_every_n_steps=1", "train.warmup_steps=0", "data.batch_size=4",
        "eval.n_boot=20", "eval.n_show=2"]


def _mask_store(path, n=24, size=16, bad_value=None, seed=0):
    """RGB chips whose brightest channel is the class of each 4x4 block; a labelled border of -1."""
    rng = np.random.default_rng(seed)
    schema = {"mask": {"kind": "mask", "classes": CLASSES, "dtype": "int16", "nodata": -1},
              "scene": {"kind": "class", "classes": ["a", "b"]}}
    with StoreWriter(path, [get_modality("rgb")], size, schema, batch_size=8) as w:
        for i in range(n):
            cls = rng.integers(0, 3, (size // 4, size // 4)).repeat(4, 0).repeat(4, 1)
            img = rng.integers(0, 60, (3, size, size))
            for c in range(3):
                img[c][cls == c] += 150
            m = cls.astype(np.int16)
            m[0] = -1
            if bad_value is not None and i == 5:
                m[3, 3] = bad_value
            w.add(ChipRecord(f"chip{i:02d}", {"rgb": img.astype(np.uint8)}, split=["train", "train", "val", "test"][i % 4],
                             labels={"scene": "a" if i % 2 else "b"}, masks={"mask": m}))
    return ChipStore(path)


@pytest.fixture(scope="module")
def mask_store(tmp_path_factory):
    return _mask_store(tmp_path_factory.mktemp("stores") / "masks")


@pytest.fixture(scope="module")
def vit_export(mask_store, tmp_path_factory):
    """An exported multimodal_vit_tiny on the store's RGB bands (weights as initialised: a stand-in export)."""
    import torch

    from earthembed.models import build_model, export_model, modality_products

    torch.manual_seed(1)
    model = build_model("multimodal_vit_tiny", modalities={"rgb": ["R", "G", "B"]}, embed_dim=16, depth=1, num_heads=2)
    return export_model(model, tmp_path_factory.mktemp("exports") / "vit" / "export", Normalizer.from_store(mask_store),
                        products=modality_products(mask_store.modalities))


def test_segmentation_metrics_against_a_hand_computation():
    y = np.array([[[0, 0, 1, -1]], [[1, 1, 1, 0]]])  # 2 chips of 1x4 px, -1 = unlabelled
    p = np.array([[[0, 1, 1, 2]], [[1, 0, 1, 0]]])
    conf = confusion_matrices(y, p, 4, ignore_index=-1)
    assert conf.shape == (2, 4, 4) and conf.sum() == 7  # the unlabelled pixel (predicted 2) is not counted
    # class 0: tp 2 (chip0 px0, chip1 px3), fn 1, fp 1 -> IoU 2/4; class 1: tp 3, fn 1, fp 1 -> 3/5;
    # class 2: never labelled, predicted only on the ignored pixel -> absent; class 3: absent everywhere
    m = segmentation_metrics(conf, ["a", "b", "c", "d"], n_boot=50, seed=0)
    assert m["iou_a"][0] == pytest.approx(0.5) and m["iou_b"][0] == pytest.approx(0.6)
    assert np.isnan(m["iou_c"][0]) and np.isnan(m["iou_d"][0])
    assert m["miou"][0] == pytest.approx(0.55)  # absent classes are not counted as 0 or 1
    assert m["pixel_accuracy"][0] == pytest.approx(5 / 7)
    assert m["macro_f1"][0] == pytest.approx(np.mean([2 * 2 / (3 + 3), 2 * 3 / (4 + 4)]))
    for v, lo, hi in (m["miou"], m["pixel_accuracy"]):
        assert lo <= v + 1e-9 and v <= hi + 1e-9
    with pytest.raises(ValueError, match=r"label values \[7\] are neither classes 0..3 nor the ignore index -1"):
        confusion_matrices(np.array([[[7]]]), np.array([[[0]]]), 4, -1)


def test_label_fractions_stratified_and_nested():
    rng = np.random.default_rng(0)
    frac = rng.dirichlet([0.3, 0.3, 0.3], size=200)
    frac[frac < 0.05] = 0
    strata = composition_strata(frac)
    assert strata.shape == (200,) and len(np.unique(strata)) > 3
    assert parse_fractions("1, 0.05,0.01,0.05") == [0.01, 0.05, 1.0]
    with pytest.raises(ValueError, match="must be in"):
        parse_fractions("0,0.5")
    with pytest.raises(ValueError, match="not a number"):
        parse_fractions("a")
    fr = [0.01, 0.05, 0.1, 0.25, 1.0]
    s0, s0b, s1 = sample_fractions(strata, fr, 0), sample_fractions(strata, fr, 0), sample_fractions(strata, fr, 1)
    assert [len(v) for v in s0.values()] == [2, 10, 20, 50, 200]
    assert all(np.array_equal(s0[k], s0b[k]) for k in s0) and not np.array_equal(s0["0.1"], s1["0.1"])
    keys = list(s0)
    for small, big in zip(keys, keys[1:], strict=False):  # nested: each fraction holds the smaller ones
        assert set(s0[small]) <= set(s0[big])
    k = len(np.unique(strata))
    order = sample_fractions(strata, [k / 200], 0)
    assert set(strata[next(iter(order.values()))]) == set(strata)  # a prefix as long as the strata covers them all
    assert list(sample_fractions(np.zeros(10, int), [0.01, 0.05, 1], 0)) == ["0.01", "1"]  # 0.05 = the same 1 chip


def test_segment_two_inits_two_fractions_outputs_and_resume(mask_store, vit_export, tmp_path):
    from earthembed.evaluate.segment import run_segment
    from earthembed.evaluate.tasks import RESULT_COLUMNS

    out = tmp_path / "seg"
    df = run_segment(mask_store, "mask", [f"vit={vit_export}", "random"], out, fractions="0.5,1", seeds=(0,),
                     overrides=FAST)
    assert list(df.columns) == RESULT_COLUMNS
    assert set(df["features"]) == {"vit", "random"} and set(df["budget"]) == {"0.5", "1"}
    assert set(df["metric"]) == {"miou", "pixel_accuracy", "macro_f1", *(f"iou_{c}" for c in CLASSES)}
    assert set(df["task_kind"]) == {"segmentation"} and set(df["budget_mode"]) == {"fraction"}
    miou = df[df["metric"] == "miou"]
    assert len(miou) == 4 and miou["value"].between(0, 1).all() and (miou["n_test"] == 6).all()
    assert sorted(miou["budget_n"].unique()) == [6, 12]  # 12 train chips (6 val, 6 test)
    extra = json.loads(miou["extra"].iloc[0])
    assert extra["best_step"] in (1, 2) and extra["architecture"] == "multimodal_vit"
    for f in ("results.csv", "results.parquet", "summary.md", "summary.csv", "label_fraction.png", "predictions.png",
              "budgets.parquet", "run.json"):
        assert (out / f).exists(), f
    md = (out / "summary.md").read_text()
    assert "mIoU by label fraction" in md and "Δ" in md  # the gain of vit over random (same architecture)
    run = json.loads((out / "run.json").read_text())
    assert run["baselines"] == {"vit": "random", "random": "random"}
    assert run["inits"][1]["architecture"] == "multimodal_vit" and run["n_test"] == 6
    members = pd.read_parquet(out / "budgets.parquet")
    assert set(members[members["budget"] == "0.5"]["chip_id"]) <= set(members[members["budget"] == "1"]["chip_id"])

    # interrupted run: one cell never committed -> re-running recomputes it alone, no duplicate rows
    cells = sorted((out / "cells").glob("*.parquet"))
    assert len(cells) == 4
    lost = out / "cells" / "random__f0.5__s0.parquet"
    lost.unlink()
    kept = {c: c.stat().st_mtime_ns for c in cells if c != lost}
    from earthembed.cli import app

    args = ["segment", "--init", f"vit={vit_export}", "--compare", "random", "--store", str(mask_store.path),
            "--task", "mask", "--out", str(out), "--fractions", "0.5,1", "--seeds", "1", *FAST]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert lost.exists() and all(c.stat().st_mtime_ns == t for c, t in kept.items())
    again = pd.read_csv(out / "results.csv")
    assert len(again) == len(df)
    assert not again.duplicated(["features", "budget", "seed", "metric"]).any()
    # a finished cell made under other settings is refused, not mixed in
    r = CliRunner().invoke(app, [*args, "train.lr=0.5"])
    assert r.exit_code == 1 and "computed with a different config" in r.output


def test_epochs_scale_a_cells_steps_with_its_labels(mask_store, vit_export, tmp_path):
    """train.epochs: steps = epochs x labelled chips / batch, capped by max_steps; null keeps max_steps everywhere."""
    import json

    from earthembed.evaluate.segment import cell_steps, load_segment_config, run_segment

    assert cell_steps({"max_steps": 300, "epochs": None}, 5000, 16) == 300
    assert cell_steps({"max_steps": 300, "epochs": 2}, 40, 16) == 5 and cell_steps({"max_steps": 300, "epochs": 2}, 5000, 16) == 300
    assert cell_steps({"max_steps": 300, "epochs": 0.1}, 3, 16) == 1
    with pytest.raises(ValueError, match="train.epochs must be a positive number"):
        load_segment_config("segment", ["train.epochs=0"])
    df = run_segment(mask_store, "mask", ["random"], tmp_path / "ep", fractions="0.5,1", seeds=(0,),
                     overrides=[*FAST, "model.name=multimodal_vit_tiny", "train.epochs=1", "train.max_steps=100"])
    steps = {r.budget: json.loads(r.extra)["steps"] for r in df[df["metric"] == "miou"].itertuples()}
    n = {r.budget: r.n_train for r in df[df["metric"] == "miou"].itertuples()}
    assert steps == {b: -(-n[b] // 4) for b in n} and steps["1"] > steps["0.5"]  # FAST: batch 4


def test_segment_bad_input_is_named(mask_store, vit_export, tmp_path):
    from earthembed.evaluate.inits import INIT_SCHEMES, resolve_init
    from earthembed.evaluate.segment import run_segment

    def run(*inits, store=mask_store, task="mask", ov=()):
        return run_segment(store, task, list(inits), tmp_path / "o", fractions="1", seeds=(0,), overrides=[*FAST, *ov])

    with pytest.raises(KeyError, match="no label column 'nope'; mask labels: \\['mask'\\]"):
        run("random", task="nope", ov=["model.name=multimodal_vit_tiny"])
    with pytest.raises(ValueError, match="chip-level class label, not a pixel mask"):
        run("random", task="scene", ov=["model.name=multimodal_vit_tiny"])
    with pytest.raises(ValueError, match="a random init needs an architecture"):
        run("random")
    with pytest.raises(ValueError, match="expected an export directory"):
        run("not/a/thing")
    with pytest.raises(ValueError, match="used twice"):
        run(str(vit_export), str(vit_export))
    with pytest.raises(ValueError, match="unknown decoder.name 'fpnx'"):
        run(str(vit_export), ov=["decoder.name=fpnx"])
    bad = _mask_store(tmp_path / "bad", n=8, bad_value=7)
    with pytest.raises(ValueError, match=r"chip 'chip05': mask 'mask' has values \[7\]"):
        run(str(vit_export), store=bad)
    odd = _mask_store(tmp_path / "odd", n=8, size=12)
    with pytest.raises(ValueError, match="chip size 12x12 px does not fit"):
        run(str(vit_export), store=odd)
    # an init whose bands the store lacks: named before any training
    s2 = tmp_path / "s2store"
    with StoreWriter(s2, [get_modality("s2_l2a")], 16, {"mask": {"kind": "mask", "classes": CLASSES, "nodata": -1}}) as w:
        w.add(ChipRecord("a", {"s2": np.ones((12, 16, 16), "uint16")}, masks={"mask": np.zeros((16, 16), "int16")}))
    with pytest.raises(BandMismatchError, match="share none with the model"):
        run(f"vit={vit_export}", store=ChipStore(s2))
    # published weights (or anything else) plug in as a scheme of the one resolver
    INIT_SCHEMES.register("testzoo", lambda name, store: resolve_init(f"random:{vit_export}", store, name=f"zoo-{name}"))
    src = resolve_init("testzoo:tiny", mask_store)
    assert src.name == "zoo-tiny" and src.spec == "testzoo:tiny" and src.architecture == "multimodal_vit"


def test_evaluate_never_imports_pretrain():
    code = ("import sys, earthembed.evaluate.segment, earthembed.evaluate.finetune, earthembed.evaluate.inits, "
            "earthembed.evaluate.cli; bad = [m for m in sys.modules if m.startswith('earthembed.pretrain')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
