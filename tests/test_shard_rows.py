"""A shard worker reads only its shard's rows of the store (issue 23: per-worker memory flat with store size):
the index through the row groups holding them, presence, dates and footprints of those chips only; the whole
store's index and presence are never loaded by a worker, and its rows equal the whole-store read."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import earthembed.data.store as store_mod
import earthembed.embed.batches as batches_mod
from earthembed.data.normalize import Normalizer
from earthembed.data.store import ChipStore, StoreRows
from earthembed.data.synth import generate_synthetic_aoi
from earthembed.embed.engines import ShardJob, ShardWorker
from earthembed.embed.run import embed_store
from earthembed.embed.shards import Shard
from earthembed.errors import StoreError
from earthembed.models.export import export_model
from earthembed.models.registry import build_model
from earthembed.storage import read_parquet_rows

ROW_GROUP = 24  # not a multiple of the 16-chip chunks: shards straddle row groups


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("shard_rows")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(store_mod, "INDEX_ROW_GROUP_CHIPS", ROW_GROUP)
        store = generate_synthetic_aoi(root / "store", chips=80, chip_size=16, seed=2)
    torch.manual_seed(0)
    model = build_model("resnet18_small", modalities={"s2": store.band_names("s2")}).eval()
    export = export_model(model, root / "export", Normalizer.from_store(store))
    return store, export


def test_the_index_is_written_in_row_groups_and_read_by_range(setup):
    store, _ = setup
    f = store.path / "index.parquet"
    assert pq.ParquetFile(f).metadata.num_row_groups == 4  # 80 chips in groups of 24
    t, n, groups = read_parquet_rows(f, 32, 64)
    assert (n, groups, t.num_rows) == (80, [1, 2], 32)  # rows 24..72: only the two groups holding 32..63
    assert t.column("chip_id").to_pylist() == pq.read_table(f).column("chip_id").to_pylist()[32:64]
    assert b"geo" in t.schema.metadata
    assert read_parquet_rows(f, 0, 0)[0].num_rows == 0
    with pytest.raises(IndexError, match="80 rows"):
        read_parquet_rows(f, 70, 90)


def test_store_rows_equal_the_whole_store_read(setup):
    store, _ = setup
    whole = ChipStore(store.path)
    rows = whole.rows(32, 64)
    assert isinstance(rows, StoreRows) and len(rows) == 32
    pd.testing.assert_frame_equal(rows.index, whole.index.iloc[32:64].reset_index(drop=True))
    assert rows.index.crs == whole.index.crs
    for k, v in whole.presence().items():
        np.testing.assert_array_equal(rows.presence()[k], v[32:64])
    for idx in (slice(0, 32), slice(5, 9), np.array([0, 3, 31]), np.array([-1, 2])):
        want = np.arange(32, 64)[idx]
        np.testing.assert_array_equal(rows.read("s2", idx), whole.read("s2", want))
    np.testing.assert_array_equal(rows.read("s2", 3, ["B04"]), whole.read("s2", 35, ["B04"]))
    np.testing.assert_array_equal(rows.read("s2", -1), whole.read("s2", 63))
    with pytest.raises(IndexError, match="out of range for 32 chips"):
        rows.read("s2", np.array([32]))
    with pytest.raises(IndexError, match="not within its 80 chips"):
        whole.rows(70, 90)


def test_a_shard_worker_reads_only_its_shards_rows(setup, tmp_path, monkeypatch):
    """The mechanism: the worker's store never loads the whole index or presence; the index reader is asked
    for each shard's row range only; the per-chip columns it builds have the shard's length. And the result
    equals one table embedded from the whole store."""
    store, export = setup
    asked, built = [], []
    real_rows, real_chips = store_mod.read_parquet_rows, batches_mod.chip_columns

    def rows_spy(path, start, stop, *a, **kw):
        out = real_rows(path, start, stop, *a, **kw)
        asked.append((start, stop, out[2]))
        return out

    def chips_spy(index):
        out = real_chips(index)
        built.append(out.num_rows)
        return out

    monkeypatch.setattr(store_mod, "read_parquet_rows", rows_spy)
    monkeypatch.setattr(batches_mod, "chip_columns", chips_spy)
    one = embed_store(export, store, tmp_path / "one.parquet", progress=False)
    built.clear()

    meta = json.loads((export / "model.json").read_text())
    job = ShardJob(str(export), str(store.path), str(tmp_path / "emb"), {"s2": store.band_names("s2")},
                   meta["normalization"], 16, "cpu", "m", "m", {"model_id": "m", "n_chips": 80})
    worker = ShardWorker(job)
    (tmp_path / "emb" / "_committed").mkdir(parents=True)
    (tmp_path / "emb" / "_failed").mkdir()
    shards = [Shard(0, 32), Shard(32, 64), Shard(64, 80)]
    tables = [worker.embed(s) for s in shards]
    assert worker.store._index is None and worker.store._presence is None  # the whole store's: never loaded
    assert asked == [(0, 32, [0, 1]), (32, 64, [1, 2]), (64, 80, [2, 3])]
    assert built == [32, 32, 16]
    got = pa.concat_tables([t for ts in tables for t in ts])
    ref = pq.read_table(one)
    assert got.column("idx").to_pylist() == list(range(80))
    for c in ("idx", "chip_id", "geometry", "split", "aoi", "modalities_used", "present_s2", "emb_fused", "emb_s2"):
        assert got.column(c).equals(ref.column(c)), c
    assert worker.run(Shard(32, 64))["rows"] == 32


def test_a_worker_refuses_a_store_changed_since_the_job_started(setup, tmp_path):
    store, export = setup
    meta = json.loads((export / "model.json").read_text())
    job = ShardJob(str(export), str(store.path), str(tmp_path / "emb"), {"s2": store.band_names("s2")},
                   meta["normalization"], 16, "cpu", "m", "m", {"model_id": "m", "n_chips": 96})
    with pytest.raises(ValueError, match=r"has 80 chips, but this embedding job was planned for 96") as e:
        ShardWorker(job)
    assert str(store.path) in str(e.value) and "\n" not in str(e.value)


def test_a_truncated_index_is_named_by_the_worker_read(setup, tmp_path):
    store, _ = setup
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(store.path, bad)
    t = pq.read_table(bad / "index.parquet").slice(0, 70)
    pq.write_table(t, bad / "index.parquet")
    view = ChipStore(bad, check=False).rows(0, 16)
    with pytest.raises(StoreError, match=r"index.parquet: has 70 rows but earthembed.json says 80 chips"):
        _ = view.index
