"""The real samples through pretrain -> embed -> few-shot with the tiny config (a few steps: a smoke test of
the whole path on real data; the full runs are in scripts/real_samples.sh and docs/real_samples.md)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from earthembed.embed.io import read_embeddings, read_metadata
from earthembed.embed.run import embed_random_init, embed_store
from earthembed.evaluate.fewshot import run_fewshot
from earthembed.pretrain.run import pretrain

pytestmark = pytest.mark.realdata

FAST = [
    "data.batch_size=8", "data.crop_size=32", "model.embed_dim=32", "model.depth=1", "train.progress_bar=false",
    "train.warmup_steps=0", "data.splits=all", "objective_args.proj_dim=16", "train.max_steps=3",
]


def test_bigearthnet_s1_s2_from_one_checkpoint(shared_data, tmp_path):
    from earthembed.data.ingest.bigearthnet import ingest_bigearthnet

    store = ingest_bigearthnet(shared_data / "bigearthnet", tmp_path / "store")
    export = pretrain("contrastive_tiny", store.path, tmp_path / "run", FAST)
    meta = json.loads((export / "model.json").read_text())
    assert set(meta["modalities"]) == {"s1", "s2"} and len(meta["modalities"]["s2"]) == 12
    tables = {}
    for name, mods in {"s1s2": ["s2", "s1"], "s2only": ["s2"], "s1only": ["s1"]}.items():
        tables[name] = embed_store(export, store, tmp_path / f"{name}.parquet", modalities=mods, progress=False)
        df, x = read_embeddings(tables[name])
        assert len(df) == 54 and np.isfinite(x).all() and read_metadata(tables[name])["modalities"] == mods
    # per-modality towers: S2 embedding identical whether or not S1 was fed alongside
    np.testing.assert_allclose(read_embeddings(tables["s1s2"], "emb_s2")[1],
                               read_embeddings(tables["s2only"], "emb_s2")[1], rtol=1e-4, atol=1e-5)
    assert not np.allclose(read_embeddings(tables["s1s2"])[1], read_embeddings(tables["s2only"])[1])
    tables["random_init"] = embed_random_init(export, store, tmp_path / "rand.parquet", progress=False)
    res = run_fewshot(tables, store, "labels", tmp_path / "few", budgets="10,all", seeds=(0,),
                      estimators="knn", n_boot=20, feature_columns="emb_fused")
    feats = set(res["features"])
    assert {"s1s2:emb_fused", "s2only:emb_fused", "s1only:emb_fused", "random_init:emb_fused", "band_stats",
            "rcf"} == feats
    assert set(res["metric"]) >= {"macro_map", "micro_map", "macro_f1", "micro_f1"}
    assert (res["n_test"] == 18).all()  # the 18 test-split pairs
    assert (tmp_path / "few" / "label_efficiency.png").stat().st_size > 0


def test_eurosat_single_modality(shared_data, tmp_path):
    from earthembed.data.ingest.eurosat import ingest_eurosat

    store = ingest_eurosat(shared_data / "eurosat-ms", tmp_path / "store")
    export = pretrain("contrastive_tiny", store.path, tmp_path / "run", FAST)
    emb = embed_store(export, store, tmp_path / "emb.parquet", progress=False)
    rgb = embed_store(export, store, tmp_path / "rgb.parquet", bands={"s2": ["B04", "B03", "B02"]}, progress=False)
    res = run_fewshot({"pre": emb, "rgb": rgb}, store, "label", tmp_path / "few", budgets="1,5,all", seeds=(0,),
                      estimators="logreg", n_boot=20)
    summary = pd.read_csv(tmp_path / "few" / "summary.csv")
    assert set(summary["features"]) == {"pre:emb_fused", "pre:emb_s2", "rgb:emb_fused", "rgb:emb_s2", "band_stats",
                                        "rcf", "random_init:emb_fused", "random_init:emb_s2"}  # baselines by default
    f1 = res[(res["metric"] == "macro_f1") & (res["budget"] == "all")].set_index("features")["value"]
    assert (f1 > 0.1).all()  # 10 classes: chance is 0.1
    assert (res["n_test"] == 40).all()
