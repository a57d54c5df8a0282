"""Embedding export: one row per chip, modality/band subsets, missing modalities, resume after a kill."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from earthembed.data.modalities import BandMismatchError
from earthembed.data.normalize import Normalizer
from earthembed.data.store import ChipStore
from earthembed.embed.io import read_embeddings, read_metadata
from earthembed.embed.run import embed_random_init, embed_store, parse_bands
from earthembed.models.export import export_model
from earthembed.models.registry import build_model


@pytest.fixture(scope="module")
def exported(tiny_store, tmp_path_factory):
    store = ChipStore(tiny_store)
    torch.manual_seed(0)
    model = build_model("multimodal_vit", modalities={k: store.band_names(k) for k in ("s2", "s1")},
                        patch_size=8, embed_dim=16, depth=1, num_heads=2)
    return export_model(model, tmp_path_factory.mktemp("model") / "export", Normalizer.from_store(store))


def test_embed_all_and_subsets(exported, tiny_store, tmp_path):
    out = embed_store(exported, tiny_store, tmp_path / "emb.parquet", batch_size=6, progress=False)
    df, x = read_embeddings(out, "emb_fused")
    assert len(df) == 20 and df["chip_id"].is_unique and x.shape == (20, 16)
    assert np.isfinite(x).all()
    _, s1 = read_embeddings(out, "emb_s1")
    missing = ~df["present_s1"].to_numpy()
    assert missing.sum() == 5 and np.isnan(s1[missing]).all() and np.isfinite(s1[~missing]).all()
    assert set(df.loc[missing, "modalities_used"]) == {"s2"}
    meta = read_metadata(out)
    assert meta["embed_dim"] == 16 and meta["bands"]["s1"] == ["VV", "VH"]
    assert pq.read_schema(out).metadata[b"geo"]  # GeoParquet
    import geopandas as gpd

    assert gpd.read_parquet(out).crs.to_epsg() == 4326

    # S2-only, RGB-only from the same checkpoint
    rgb = embed_store(exported, tiny_store, tmp_path / "rgb.parquet", modalities=["s2"],
                      bands=parse_bands("s2:B04,B03,B02"), progress=False)
    _, xr = read_embeddings(rgb, "emb_s2")
    _, xs2 = read_embeddings(out, "emb_s2")
    assert xr.shape == xs2.shape and not np.allclose(xr, xs2)
    assert "emb_s1" not in pq.read_schema(rgb).names


@pytest.mark.parametrize("how", [{"prefetch": True}, {"num_workers": 1}])
def test_embed_read_strategies_give_the_same_table(exported, tiny_store, tmp_path, how):
    """A reader thread (the default on accelerators) and DataLoader workers yield exactly the table of the
    default CPU path (reading in the main thread)."""
    ref = pq.read_table(embed_store(exported, tiny_store, tmp_path / "ref.parquet", batch_size=6, progress=False))
    other = pq.read_table(embed_store(exported, tiny_store, tmp_path / "o.parquet", batch_size=6, progress=False, **how))
    assert other.num_rows == 20
    assert other.equals(ref)


def test_embed_rejects_unknown_modality_and_bands(exported, tiny_store, tmp_path):
    with pytest.raises(BandMismatchError, match="never trained on modality 'coh'"):
        embed_store(exported, tiny_store, tmp_path / "x.parquet", modalities=["coh"], progress=False)
    with pytest.raises(BandMismatchError, match="never saw s2 bands"):
        embed_store(exported, tiny_store, tmp_path / "x.parquet", bands={"s2": ["B99"]}, progress=False)
    assert not (tmp_path / "x.parquet").exists()


def test_embed_resumes_after_kill_without_duplicates(exported, tiny_store, tmp_path, monkeypatch):
    import earthembed.embed.batches as batches
    import earthembed.embed.run as run

    out = tmp_path / "emb.parquet"
    calls = {"n": 0}
    real = run._write_part

    def dying_write(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return real(*a, **k)

    monkeypatch.setattr(run, "_write_part", dying_write)
    with pytest.raises(KeyboardInterrupt):
        embed_store(exported, tiny_store, out, batch_size=4, progress=False)
    monkeypatch.setattr(run, "_write_part", real)
    assert calls["n"] == 3  # the failed write stopped the run: no later batch was submitted
    assert not out.exists() and len(list((tmp_path / "emb.parquet.parts").glob("part-*.arrow"))) == 2

    seen: list[int] = []
    orig_batch = batches._batch_table

    def spy(idx, *a, **k):
        seen.extend(idx.tolist())
        return orig_batch(idx, *a, **k)

    monkeypatch.setattr(batches, "_batch_table", spy)
    embed_store(exported, tiny_store, out, batch_size=4, progress=False)
    assert sorted(seen) == list(range(8, 20))  # committed batches were not recomputed
    df, _ = read_embeddings(out)
    assert df["idx"].tolist() == list(range(20))
    full = embed_store(exported, tiny_store, tmp_path / "full.parquet", batch_size=4, progress=False)
    np.testing.assert_allclose(read_embeddings(out)[1], read_embeddings(full)[1], rtol=1e-5, atol=1e-6)


def test_random_init_baseline_differs(exported, tiny_store, tmp_path):
    a = embed_store(exported, tiny_store, tmp_path / "a.parquet", progress=False)
    b = embed_random_init(exported, tiny_store, tmp_path / "b.parquet", seed=1, progress=False)
    assert read_metadata(b)["model_id"].startswith("random-init-seed1")
    assert not np.allclose(read_embeddings(a)[1], read_embeddings(b)[1])


def test_embed_cli(exported, tiny_store, tmp_path):
    from typer.testing import CliRunner

    from earthembed.cli import app

    r = CliRunner().invoke(app, ["embed", "--checkpoint", str(exported), "--store", str(tiny_store),
                                 "--out", str(tmp_path / "e.parquet"), "--modalities", "s1", "--prefetch", "--quiet"])
    assert r.exit_code == 0, r.output
    assert read_metadata(tmp_path / "e.parquet")["modalities"] == ["s1"]
    r = CliRunner().invoke(app, ["embed", "--checkpoint", str(exported), "--store", str(tiny_store),
                                 "--out", str(tmp_path / "f.parquet"), "--bands", "s2:NOPE", "--quiet"])
    assert r.exit_code == 1 and "NOPE" in r.output


def test_units_mismatch_refused(tiny_store, tmp_path):
    """A model trained on S1 in dB must not silently embed linear-amplitude S1 (same key, same band names)."""
    import json

    store = ChipStore(tiny_store)
    model = build_model("multimodal_vit", modalities={"s1": ["VV", "VH"]}, patch_size=8, embed_dim=16, depth=1,
                        num_heads=2)
    export = export_model(model, tmp_path / "m", Normalizer.from_store(store))
    meta = json.loads((export / "model.json").read_text())
    linear = {"product": "s1_grd_linear", "units": "linear amplitude", "kind": "sar"}
    meta["products"] = {"s1": linear}
    (export / "model.json").write_text(json.dumps(meta))
    # model.json v2: input_spec says what the model consumes; products (for version-1 readers) must agree
    with pytest.raises(ValueError, match=r"'input_spec' and 'products' disagree on s1's product and units"):
        embed_store(export, tiny_store, tmp_path / "x.parquet", progress=False)
    meta["input_spec"]["modalities"]["s1"].update(linear)
    (export / "model.json").write_text(json.dumps(meta))
    with pytest.raises(BandMismatchError, match="linear amplitude"):
        embed_store(export, tiny_store, tmp_path / "x.parquet", progress=False)
    for rec in (meta["products"]["s1"], meta["input_spec"]["modalities"]["s1"]):
        rec.update(product="s1_grd_db", units="dB")
    (export / "model.json").write_text(json.dumps(meta))
    out = embed_store(export, tiny_store, tmp_path / "y.parquet", progress=False)
    assert read_metadata(out)["store_products"] == {"s1": "s1_grd_db"}


def test_embed_process_sigkilled_then_rerun_gives_one_row_per_chip(tmp_path):
    """A real `earthembed embed` process killed with SIGKILL mid-run, then the same command again."""
    import os
    import shutil
    import signal
    import subprocess
    import sys
    import time

    from earthembed.data.synth import generate_synthetic_aoi

    store = generate_synthetic_aoi(tmp_path / "store", chips=400, chip_size=16)
    mods = {k: m.band_names for k, m in store.modalities.items() if m.kind != "categorical"}
    torch.manual_seed(0)
    model = build_model("multimodal_vit", modalities=mods, patch_size=8, embed_dim=16, depth=1, num_heads=2)
    export = export_model(model, tmp_path / "model", Normalizer.from_store(store))
    exe = shutil.which("earthembed", path=os.path.dirname(sys.executable))
    out = tmp_path / "emb.parquet"
    cmd = [exe, "embed", "--checkpoint", str(export), "--store", str(store.path), "--out", str(out),
           "--batch-size", "1", "--quiet"]
    parts = tmp_path / "emb.parquet.parts"
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(parts.glob("part-*.arrow")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and not out.exists(), "the run finished before it could be killed"
    n_done = len(list(parts.glob("part-*.arrow")))
    assert 0 < n_done < 400
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
    df, x = read_embeddings(out)
    assert df["idx"].tolist() == list(range(400)) and df["chip_id"].is_unique
    ref = embed_store(export, store, tmp_path / "ref.parquet", batch_size=64, progress=False)
    np.testing.assert_allclose(x, read_embeddings(ref)[1], rtol=1e-4, atol=1e-5)
