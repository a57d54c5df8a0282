"""Sharded embedding: deterministic shards aligned to Zarr chunks, commit markers, resume after a failed shard
or a killed worker (byte for byte), embed-status, the Ray engine, embed-time --tta."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from earthembed.data.normalize import Normalizer
from earthembed.data.synth import generate_synthetic_aoi
from earthembed.embed import engines
from earthembed.embed.engines import WORKER_TIMES, ray_local_options, worker_threads
from earthembed.embed.io import to_matrix
from earthembed.embed.run import embed_store
from earthembed.embed.shards import COMMITTED, FAILED, plan_shards, status
from earthembed.errors import OutputError
from earthembed.models.export import export_model
from earthembed.models.registry import build_model
from test_hostile_inputs import cli


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    store = generate_synthetic_aoi(root / "store", chips=80, chip_size=16, seed=1)
    torch.manual_seed(0)
    model = build_model("resnet18_small", modalities={"s2": store.band_names("s2")}).eval()
    export = export_model(model, root / "export", Normalizer.from_store(store))
    cnn = build_model("resnet18_small", modalities={"s2": store.band_names("s2")}, tta="d4").eval()
    cnn.load_state_dict(model.state_dict())
    export_tta = export_model(cnn, root / "export_tta", Normalizer.from_store(store))
    return store, export, export_tta


def _files(d: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(d.glob("part-*.parquet"))}


def test_plan_is_chunk_aligned_and_names_are_deterministic():
    shards = plan_shards(100, 16, 40)  # 40 -> 48 (3 chunks)
    assert [(s.start, s.end) for s in shards] == [(0, 48), (48, 96), (96, 100)]
    assert shards[1].file == "part-0000000048-0000000096.parquet" and len(shards[2]) == 4
    with pytest.raises(ValueError, match="positive"):
        plan_shards(10, 16, 0)


def test_local_shards_equal_one_table_and_resume_after_a_failed_shard(setup, tmp_path, monkeypatch):
    store, export, _ = setup
    one = embed_store(export, store, tmp_path / "one.parquet", progress=False)
    full = embed_store(export, store, tmp_path / "full/", shard_chips=32, progress=False)
    files = _files(full)
    assert list(files) == [s.file for s in plan_shards(80, 16, 32)]
    table = pa.concat_tables([pq.read_table(full / f) for f in files])
    np.testing.assert_array_equal(to_matrix(table.column("emb_fused")),
                                  to_matrix(pq.read_table(one).column("emb_fused")))
    assert status(full)["complete"] and len(status(full)["done"]) == 3

    # the second shard fails: the first is committed, the run stops naming it, status says so
    from earthembed.embed import engines

    real = engines.ShardWorker.run

    def flaky(self, shard):
        if shard.start == 32:
            from earthembed.embed.shards import record_failure

            record_failure(Path(self.job.out), shard, RuntimeError("disk on fire"))
            raise RuntimeError("disk on fire")
        return real(self, shard)

    monkeypatch.setattr(engines.ShardWorker, "run", flaky)
    part = tmp_path / "part"
    with pytest.raises(RuntimeError, match="disk on fire"):
        embed_store(export, store, f"{part}/", shard_chips=32, progress=False)
    st = status(part)
    assert st["done"] == ["part-0000000000-0000000032"] and "disk on fire" in st["failed"]["part-0000000032-0000000064"]
    assert st["pending"] == ["part-0000000064-0000000080"] and not st["complete"]
    r = cli("embed-status", part)
    assert r.exit_code == 1 and "1 done, 1 pending, 1 failed of 3 shards" in r.output and "disk on fire" in r.output
    first = (part / "part-0000000000-0000000032.parquet").stat().st_mtime_ns
    monkeypatch.setattr(engines.ShardWorker, "run", real)
    embed_store(export, store, f"{part}/", shard_chips=32, progress=False)  # resume: only the missing shards
    assert (part / "part-0000000000-0000000032.parquet").stat().st_mtime_ns == first
    assert _files(part) == files and not list((part / FAILED).iterdir())
    r = cli("embed-status", part, "--json")
    assert r.exit_code == 0 and json.loads(r.output)["complete"] is True


def test_another_plan_is_refused_and_readers_refuse_incomplete(setup, tmp_path):
    from earthembed.embed.shards import dataset_files

    store, export, _ = setup
    d = embed_store(export, store, tmp_path / "d/", shard_chips=32, progress=False)
    with pytest.raises(OutputError, match="another plan .*shards"):
        embed_store(export, store, f"{d}/", shard_chips=16, progress=False)
    (d / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="did not write"):
        embed_store(export, store, f"{d}/", shard_chips=16, progress=False, overwrite=True)
    (d / "notes.txt").unlink()
    embed_store(export, store, f"{d}/", shard_chips=16, progress=False, overwrite=True)
    assert len(dataset_files(d)) == 5
    (d / COMMITTED / "part-0000000016-0000000032.json").unlink()
    m = json.loads((d / "_manifest.json").read_text())
    (d / "_manifest.json").write_text(json.dumps({**m, "complete": False}))
    with pytest.raises(OutputError, match="incomplete .*4 of 5 shards"):
        dataset_files(d)
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "a.txt").write_text("x")
    with pytest.raises(OutputError, match="not an earthembed embedding dataset"):
        embed_store(export, store, tmp_path / "foreign", shard_chips=16, progress=False)
    with pytest.raises(OutputError, match="inside the chip store"):
        embed_store(export, store, store.path / "emb/", progress=False)


KILLED = """
import sys, time
from earthembed.embed import engines
from earthembed.embed.run import embed_store
real = engines.ShardWorker.run
def slow(self, shard):
    out = real(self, shard)
    time.sleep(0.5)  # a window for the kill after each commit
    return out
engines.ShardWorker.run = slow
embed_store(sys.argv[1], sys.argv[2], sys.argv[3] + "/", shard_chips=16, progress=False)
"""


def test_a_killed_worker_resumes_to_the_same_bytes(setup, tmp_path):
    store, export, _ = setup
    ref = embed_store(export, store, tmp_path / "ref/", shard_chips=16, progress=False)
    out = tmp_path / "killed"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-c", KILLED, str(export), str(store.path), str(out)], env=env)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / COMMITTED).glob("*.json"))) < 2:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list((out / COMMITTED).glob("*.json")))
    assert 2 <= done < 5, done
    embed_store(export, store, f"{out}/", shard_chips=16, progress=False)
    assert _files(out) == _files(ref)


def test_tta_can_be_turned_off_at_embed_time(setup, tmp_path):
    from earthembed.embed.io import read_metadata

    _, export, export_tta = setup
    store = generate_synthetic_aoi(tmp_path / "small", chips=16, chip_size=16, seed=1)
    plain = embed_store(export, store, tmp_path / "plain.parquet", progress=False)
    off = embed_store(export_tta, store, tmp_path / "off.parquet", progress=False, tta="none")
    d4 = embed_store(export_tta, store, tmp_path / "d4.parquet", progress=False)
    x = {k: to_matrix(pq.read_table(p).column("emb_fused")) for k, p in (("plain", plain), ("off", off), ("d4", d4))}
    np.testing.assert_array_equal(x["off"], x["plain"])
    assert np.abs(x["d4"] - x["off"]).max() > 1e-4
    ids = {k: read_metadata(p)["model_id"] for k, p in (("off", off), ("d4", d4))}
    assert ids["off"] == ids["d4"] + "+tta=none"
    vit = build_model("multimodal_vit_tiny", modalities={"s2": store.band_names("s2")})
    exp = export_model(vit, tmp_path / "vit", Normalizer.from_store(store))
    with pytest.raises(ValueError, match="--tta d4: .* has no test-time augmentation"):
        embed_store(exp, store, tmp_path / "v.parquet", progress=False, tta="d4")


def test_worker_threads_size_torch_and_the_zarrs_pool_to_the_workers_cpus(monkeypatch):
    import zarr

    before = torch.get_num_threads()
    monkeypatch.setenv("RAYON_NUM_THREADS", "64")  # restored after the test
    try:
        with zarr.config.set({"threading.max_workers": None}):  # the global value is restored on leaving
            assert worker_threads(1.5) == 1
            # torch's intra-op threads; zarr's max_workers, which the zarrs codec pipeline sizes its pool by
            assert torch.get_num_threads() == 1 and zarr.config.get("threading.max_workers") == 1
            assert os.environ["RAYON_NUM_THREADS"] == "1"
            assert worker_threads(0) == 1 and worker_threads(2) == 2 and torch.get_num_threads() == 2
            assert zarr.config.get("threading.max_workers") == 2
    finally:
        torch.set_num_threads(before)


def test_local_engine_reports_its_stage_times(setup, tmp_path, monkeypatch):
    store, export, _ = setup
    report: dict = {}
    plain = engines.run_local
    monkeypatch.setattr(engines, "run_local", lambda *a, **kw: plain(*a, report=report, **kw))
    embed_store(export, store, tmp_path / "t/", shard_chips=32, progress=False)
    assert report["shards"] == 3 and report["init_s"] >= 0
    assert all(report[k] > 0 for k in ("open_s", "read_s", "forward_s", "write_s"))


def test_ray_local_options_start_a_quiet_cluster_of_the_given_cpus():
    kw = ray_local_options(2)
    assert kw["num_cpus"] == 2 and kw["include_dashboard"] is False and kw["log_to_driver"] is False


@pytest.mark.ray
def test_ray_engine_two_workers_same_layout_and_failed_shards_retry(setup, tmp_path):
    pytest.importorskip("ray")
    store, export, _ = setup
    local = embed_store(export, store, tmp_path / "local/", shard_chips=16, progress=False)
    # chips 32..47 are one Zarr chunk: damage it, and that shard (only) fails on its worker
    [chunk] = store.layout("s2").files(2)
    good = Path(chunk).read_bytes()
    Path(chunk).write_bytes(good[: len(good) // 3])
    out = tmp_path / "ray"
    import ray

    ray.init(**ray_local_options(2))  # one local cluster for both runs, as run_ray starts one
    try:
        try:
            with pytest.raises(OutputError, match=r"1 of 5 shards are not done \(1 failed"):
                embed_store(export, store.path, f"{out}/", engine="ray", workers=2, shard_chips=16, progress=False)
        finally:
            Path(chunk).write_bytes(good)
        st = status(out)
        assert list(st["failed"]) == ["part-0000000032-0000000048"] and len(st["done"]) == 4
        embed_store(export, store.path, f"{out}/", engine="ray", workers=2, shard_chips=16, progress=False)
    finally:
        ray.shutdown()
    # each worker reports where its time went (the resumed run: one shard on one of the two workers)
    workers = json.loads((out / "_manifest.json").read_text())["last_run"]["workers"]
    assert sum(w["shards"] for w in workers.values()) == 1
    for w in workers.values():
        assert set(w) == set(WORKER_TIMES) and w["threads"] == 1  # 2 CPUs, 2 workers: one thread each
        assert w["wall_s"] >= w["init_s"] > 0 and w["spawn_s"] > 0 and w["cpu_s"] > 0
    a, b = _files(local), _files(out)
    assert list(a) == list(b) and status(out)["complete"]
    for f in a:
        ta, tb = pq.read_table(local / f), pq.read_table(out / f)
        assert ta.column("chip_id").equals(tb.column("chip_id"))
        np.testing.assert_allclose(to_matrix(ta.column("emb_fused")), to_matrix(tb.column("emb_fused")), atol=1e-5)


def test_a_store_replaced_under_the_same_path_is_named_and_never_mixed(setup, tmp_path):
    """Issue 23's 'a store changed since the job started (fingerprint)': same URL and chip count, re-ingested."""
    from earthembed.data.store import ChipStore
    from earthembed.embed.engines import ShardJob, ShardWorker

    _, export, _ = setup
    st = generate_synthetic_aoi(tmp_path / "st", chips=32, chip_size=16, seed=1)
    out = embed_store(export, st, tmp_path / "emb/", shard_chips=16, progress=False)
    before = {f: (out / f).read_bytes() for f in _files(out)}
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["store_fingerprint"] == st.fingerprint and len(st.fingerprint) == 16
    meta_file = st.path / "earthembed.json"
    meta = json.loads(meta_file.read_text())
    stats_only = {**meta, "stats": {}}  # `earthembed stats` touches no chip: the same store
    meta_file.write_text(json.dumps(stats_only))
    assert ChipStore(st.path, check_stats=False).fingerprint == st.fingerprint
    meta_file.write_text(json.dumps({**meta, "completed": "2031-01-01T00:00:00+00:00"}))  # what a re-ingest leaves
    again = ChipStore(st.path)
    assert again.fingerprint != st.fingerprint
    with pytest.raises(OutputError, match="re-ingested or replaced since .*store fingerprint "
                                          f"{st.fingerprint} -> {again.fingerprint}.*--overwrite"):
        embed_store(export, again, f"{out}/", shard_chips=16, progress=False)
    assert {f: (out / f).read_bytes() for f in _files(out)} == before  # nothing rewritten
    # a worker of the old job meets the new store: refused before it writes a shard
    job = ShardJob(str(export), str(st.path), str(out), {"s2": st.band_names("s2")}, {}, 16, "cpu", "m", "m",
                   {"n_chips": 32}, store_fingerprint=st.fingerprint)
    with pytest.raises(ValueError, match="was re-ingested or replaced since this embedding job started"):
        ShardWorker(job)
    embed_store(export, again, f"{out}/", shard_chips=16, progress=False, overwrite=True)
    assert json.loads((out / "_manifest.json").read_text())["store_fingerprint"] == again.fingerprint
