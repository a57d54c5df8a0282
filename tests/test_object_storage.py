"""Stores and embedding datasets on object storage, against a real S3-compatible server (moto, in its own
process) started by the test: store read (metadata, GeoParquet index, Zarr through obstore with the zarrs
pipeline) -> sharded embed to s3:// -> embed-status -> fewshot, predict and map reading both from S3; a failed shard and a
killed job resume to byte-identical shards without rewriting committed ones; a second writer is refused by
the lease lock (conditional put); a wrong endpoint, a missing bucket or store are one line naming the URL."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

pytest.importorskip("obstore")
pytest.importorskip("moto")

from earthembed.data.store import ChipStore  # noqa: E402
from earthembed.data.synth import generate_synthetic_aoi  # noqa: E402
from earthembed.embed.run import embed_store  # noqa: E402
from earthembed.embed.shards import COMMITTED, status  # noqa: E402
from earthembed.errors import LockedError  # noqa: E402
from earthembed.storage import ObjectLock, ObjectPath, location, upload_dir  # noqa: E402
from object_storage_flow import (  # noqa: E402
    free_port,
    local_bytes,
    object_bytes,
    serve_env,
    sharded_synth_on_a_bucket,
    stale_lock_is_taken_over,
    store_on_a_bucket,
    store_to_explore_on_a_bucket,
    wait_for,
)
from test_hostile_inputs import cli, one_line_error  # noqa: E402

pytestmark = pytest.mark.s3

BUCKET = "earthembed-test"
# moto runs in a child process: the zarrs pipeline holds the GIL while it fetches, so a server thread inside
# this process would stall until the request times out
SERVER = """
import sys, time
from moto.server import ThreadedMotoServer
ThreadedMotoServer(ip_address="127.0.0.1", port=int(sys.argv[1]), verbose=False).start()
time.sleep(1e9)
"""


def _part_bytes(d: ObjectPath) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in d.iterdir() if p.name.startswith("part-")}


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on a free local port, the standard AWS variables pointing at it, one bucket, and a
    40-chip synthetic store uploaded to s3://BUCKET/store (plus its local original and a tiny export)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    with pytest.MonkeyPatch.context() as mp:
        serve_env(mp, env, ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION"))
        try:
            wait_for(proc, lambda: socket.create_connection(("127.0.0.1", port), timeout=0.2).close(),
                     "the moto S3 server")
            import boto3

            boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1").create_bucket(
                Bucket=BUCKET)
            yield {**store_on_a_bucket(f"s3://{BUCKET}", tmp_path_factory.mktemp("s3")), "env": env}
        finally:
            proc.kill()
            proc.wait()


def test_store_embed_status_fewshot_on_s3(s3, tmp_path):
    store_to_explore_on_a_bucket(f"s3://{BUCKET}", s3["local"], s3["url"], s3["export"], tmp_path)


def test_failed_and_killed_shards_resume_byte_identical_on_s3(s3, tmp_path, monkeypatch):
    from earthembed.embed import engines
    from earthembed.embed.shards import record_failure

    url, export = s3["url"], s3["export"]
    ref = location(f"s3://{BUCKET}/ref/")
    embed_store(export, url, str(ref) + "/", shard_chips=16, progress=False)

    real = engines.ShardWorker.run

    def flaky(self, shard):
        if shard.start == 16:
            record_failure(location(self.job.out), shard, RuntimeError("network partition"))
            raise RuntimeError("network partition")
        return real(self, shard)

    monkeypatch.setattr(engines.ShardWorker, "run", flaky)
    out = location(f"s3://{BUCKET}/flaky/")
    with pytest.raises(RuntimeError, match="network partition"):
        embed_store(export, url, f"{out}/", shard_chips=16, progress=False)
    st = status(out)
    assert st["done"] == ["part-0000000000-0000000016"] and "network partition" in st["failed"][
        "part-0000000016-0000000032"] and not st["complete"]
    first = (out / "part-0000000000-0000000016.parquet").head()
    monkeypatch.setattr(engines.ShardWorker, "run", real)
    embed_store(export, url, f"{out}/", shard_chips=16, progress=False)
    assert (out / "part-0000000000-0000000016.parquet").head()["e_tag"] == first["e_tag"]  # not rewritten
    assert _part_bytes(out) == _part_bytes(ref) and not list((out / "_failed").iterdir())

    # a job killed (SIGKILL) after committing a shard: its lease lock is left behind; the re-run on this host
    # sees the holder is dead, takes the lock over and finishes with the same bytes
    killed = location(f"s3://{BUCKET}/killed/")
    code = ("import sys, time\nfrom earthembed.embed import engines\nfrom earthembed.embed.run import embed_store\n"
            "real = engines.ShardWorker.run\n"
            "def slow(self, shard):\n    out = real(self, shard)\n    time.sleep(30)\n    return out\n"
            "engines.ShardWorker.run = slow\n"
            "embed_store(sys.argv[1], sys.argv[2], sys.argv[3], shard_chips=16, progress=False)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(export), url, f"{killed}/"],
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.time() + 120
    while time.time() < deadline and not list((killed / COMMITTED).iterdir()):
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (killed / "_lock").is_file() and len(list((killed / COMMITTED).iterdir())) == 1
    embed_store(export, url, f"{killed}/", shard_chips=16, progress=False)
    assert _part_bytes(killed) == _part_bytes(ref) and status(killed)["complete"]
    assert not (killed / "_lock").is_file()


def test_second_writer_is_refused_by_the_lease_lock(s3, tmp_path):
    url, export = s3["url"], s3["export"]
    out = location(f"s3://{BUCKET}/busy/")
    with ObjectLock(out, out / "_lock") as held:
        with pytest.raises(LockedError, match=rf"busy: is being written by pid {os.getpid()} on .*Lock: "
                                              rf"s3://{BUCKET}/busy/_lock"):
            embed_store(export, url, f"{out}/", shard_chips=16, progress=False)
        assert not held.lost and not (out / "_manifest.json").is_file()
    assert not (out / "_lock").is_file()

    stale_lock_is_taken_over(out)


def test_bad_urls_are_one_line(s3, monkeypatch):
    one_line_error(cli("embed-status", "s3://no-such-bucket-x/emb/"), "s3://no-such-bucket-x/emb",
                   "bucket 'no-such-bucket-x' does not exist")
    one_line_error(cli("info", f"s3://{BUCKET}/nothing-here"), f"s3://{BUCKET}/nothing-here", "store not found")
    one_line_error(cli("embed", "--checkpoint", s3["export"], "--store", s3["url"], "--out",
                       f"s3://{BUCKET}/one.parquet"), f"s3://{BUCKET}/one.parquet", "ending with /")
    one_line_error(cli("embed", "--featurizer", "rcf", "--store", s3["url"], "--out", f"s3://{BUCKET}/rcf.parquet"),
                   f"s3://{BUCKET}/rcf.parquet", "one local table")
    one_line_error(cli("embed", "--encoder", "galileo:nano", "--store", s3["url"], "--out", f"s3://{BUCKET}/e/"),
                   f"s3://{BUCKET}/e", "needs --export-dir")  # the fitted model is never written to ./s3:/...
    with monkeypatch.context() as m:  # no credentials anywhere in the standard chain
        for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
            m.delenv(k, raising=False)
        m.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
        m.setenv("AWS_CONFIG_FILE", "/nonexistent/config")
        m.setenv("AWS_EC2_METADATA_DISABLED", "true")
        t = time.time()
        one_line_error(cli("info", s3["url"]), s3["url"], "check the credentials")  # not "unreadable index"
        assert time.time() - t < 30
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    t = time.time()
    one_line_error(cli("embed-status", f"s3://{BUCKET}/emb/"), f"s3://{BUCKET}/emb",
                   "cannot reach the object store at http://127.0.0.1:9")
    assert time.time() - t < 15


def test_shard_files_are_plain_geoparquet(s3):
    """Any Parquet reader given the endpoint reads a shard: pyarrow's own S3 filesystem, nothing of ours."""
    import pyarrow.fs as pafs

    out = location(f"s3://{BUCKET}/emb/")
    if not (out / "_manifest.json").is_file():
        pytest.skip("runs after the end-to-end test")
    fs = pafs.S3FileSystem(endpoint_override=s3["env"]["AWS_ENDPOINT_URL"].split("://")[1], scheme="http",
                           region="us-east-1")
    t = pq.read_table(f"{BUCKET}/emb/part-0000000000-0000000016.parquet", filesystem=fs)
    assert t.num_rows == 16 and b"geo" in t.schema.metadata


def test_a_worker_without_the_export_gets_it_from_the_job(s3, tmp_path):
    """--engine ray --address <cluster>: the export's files travel with the job, so a node without a shared
    filesystem (and without the export's path) embeds the same bytes."""
    import dataclasses

    from earthembed.embed.engines import ShardJob, ShardWorker, _export_files
    from earthembed.embed.shards import Shard

    ref = location(f"s3://{BUCKET}/ref/")
    if not (ref / "_manifest.json").is_file():
        pytest.skip("runs after the resume test")
    m = json.loads((ref / "_manifest.json").read_text())
    out = location(f"s3://{BUCKET}/shipped/")
    job = ShardJob("/nowhere/export", s3["url"], str(out), m["bands"], json.loads(
        (Path(s3["export"]) / "model.json").read_text())["normalization"], m["batch_size"], "cpu", m["model_id"],
        "x", m["table"])
    job = dataclasses.replace(job, export_files=_export_files(str(s3["export"])))
    ShardWorker(job).run(Shard(0, 16))
    name = "part-0000000000-0000000016.parquet"
    assert (out / name).read_bytes() == (ref / name).read_bytes()


def test_synth_writes_a_sharded_store_to_s3_that_embeds_like_the_local_one(s3, tmp_path):
    """synth --out s3://... --shard-chips: the same array objects as the same store written locally (byte for byte),
    one object per shard, no _parts or lock left; embed and fewshot read it; embeddings equal the local unsharded
    store's."""
    url, emb = sharded_synth_on_a_bucket(f"s3://{BUCKET}", s3["local"], s3["export"], tmp_path)
    assert [k for k in object_bytes(location(url) / "arrays.zarr/s2")] == ["c/0/0/0/0", "c/1/0/0/0", "c/2/0/0/0",
                                                                            "zarr.json"]  # one object per shard
    few = tmp_path / "few"
    r = cli("fewshot", "--embeddings", f"own={emb}", "--store", url, "--task", "landcover", "--out", few,
            "--baselines", "band_stats", "--estimators", "logreg", "--budgets", "1,2", "--seeds", 1, "--n-boot",
            10, "--quiet")
    assert r.exit_code == 0 and "own:emb_fused" in (few / "summary.md").read_text(), r.output


# A synth to s3:// that kills itself (SIGKILL) once it has written the first array of its second shard: a committed
# shard, a half-written one and the lease lock are left on the bucket
KILLED_SYNTH = """
import os, signal, sys
from earthembed.data.store import StoreWriter
from earthembed.data.synth import generate_synthetic_aoi

real = StoreWriter._write_rows

def dying(self, root, name, start, data):
    real(self, root, name, start, data)
    if start >= 16:
        os.kill(os.getpid(), signal.SIGKILL)

StoreWriter._write_rows = dying
generate_synthetic_aoi(sys.argv[1], chips=40, chip_size=16, seed=3, shard_chips=16)
"""


def test_a_killed_write_to_s3_resumes_to_the_same_objects(s3, tmp_path):
    url = location(f"s3://{BUCKET}/killed-store")
    proc = subprocess.Popen([sys.executable, "-c", KILLED_SYNTH, str(url)], env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.wait(timeout=300) == -9
    assert (url / ".earthembed.lock").is_file() and [f.name for f in (url / "_parts").iterdir()] == [
        "part-000000000.parquet"]
    one_line_error(cli("info", url), str(url), "store is incomplete")
    lock = url / ".earthembed.lock"
    assert json.loads(lock.read_text())["pid"] == proc.pid
    with ObjectLock(url, lock):  # its holder is dead on this host: taken over at once; a second writer is refused
        r = cli("synth", "--out", url, "--chips", 40, "--chip-size", 16, "--seed", 3, "--shard-chips", 16, "-q")
        one_line_error(r, f"{url}: is being written by pid {os.getpid()}")
    # the re-run of the same command finishes it: the same objects as an uninterrupted write
    r = cli("synth", "--out", url, "--chips", 40, "--chip-size", 16, "--seed", 3, "--shard-chips", 16, "-q")
    assert r.exit_code == 0, r.output
    ref = generate_synthetic_aoi(tmp_path / "ref", chips=40, chip_size=16, seed=3, shard_chips=16)
    assert object_bytes(url / "arrays.zarr") == local_bytes(ref.path / "arrays.zarr")
    assert not (url / "_parts").is_dir() and not lock.is_file()
    assert ChipStore(url).index.drop(columns="geometry").equals(ref.index.drop(columns="geometry"))
    one_line_error(cli("synth", "--out", "s3://no-such-bucket-x/st", "--chips", 8, "-q"), "s3://no-such-bucket-x/st",
                   "bucket 'no-such-bucket-x' does not exist")


def test_ingest_eurosat_straight_to_s3(s3, shared_data, tmp_path):
    src = shared_data / "eurosat-ms"
    url = f"s3://{BUCKET}/eurosat"
    r = cli("ingest", "eurosat", src, "--out", url, "--shard-chips", 64, "-q")
    assert r.exit_code == 0 and f"200 chips in {url}" in r.output, r.output
    r = cli("ingest", "eurosat", src, "--out", tmp_path / "local", "-q")
    assert r.exit_code == 0, r.output
    a, b = ChipStore(url), ChipStore(tmp_path / "local")
    np.testing.assert_array_equal(a.read("s2", slice(0, 200)), b.read("s2", slice(0, 200)))
    assert a.index.drop(columns="geometry").equals(b.index.drop(columns="geometry")) and a.stats == b.stats
    assert a.chunking()["s2"] == {"chunk_chips": 16, "shard_chips": 64, "files": 4}
    r = cli("info", url)
    assert r.exit_code == 0 and "files      shards of 64 chips" in r.output, r.output


def test_a_shard_workers_view_of_a_store_on_s3_names_a_missing_chunk(s3):
    """A worker's view of some chips (ChipStore.rows) checks the chunk objects it reads by HEAD, not by listing
    the whole store: a deleted chunk of a present chip is one StoreError naming the object; other chips read."""
    from earthembed.errors import StoreError

    url = f"s3://{BUCKET}/store_damaged"
    upload_dir(s3["local"].path, location(url))
    chunks = sorted(str(p) for p, _ in location(f"{url}/arrays.zarr/s2").walk_files() if "/c/" in str(p))
    first = next(c for c in chunks if "/c/0/" in c)
    location(first).unlink()
    store = ChipStore(url, check=False)
    assert len(store.rows(16, 32).read("s2", slice(0, 16))) == 16
    np.testing.assert_array_equal(store.rows(16, 32).read("s2", slice(0, 16)), s3["local"].read("s2", slice(16, 32)))
    with pytest.raises(StoreError, match=r"chips 0-15: chunk file .*c/0/.* is missing") as e:
        store.rows(0, 16).read("s2", slice(0, 16))
    assert "\n" not in str(e.value) and store._layouts == {}  # the whole store's chunk listing was never made


def test_ingest_commands_write_to_s3_from_inside_their_input(s3, tmp_path, monkeypatch):
    """`ingest folder . --out s3://...` (run inside its input folder), `ingest rasters` and `ingest pairs`: an
    s3:// --out is not a local path inside the input; the stores land on S3 and nothing local named s3: appears.
    An --out on S3 that holds an input (same bucket and key prefix), or lies inside a store there, is refused."""
    from test_ingest_folder import _png
    from test_ingest_pairs import _write_pair
    from test_ingest_rasters import _s2

    pets = tmp_path / "pets"
    for i in range(4):
        _png(pets / "forest" / f"f{i}.png", 10 + i)
        _png(pets / "water" / f"w{i}.png", 100 + i)
    monkeypatch.chdir(pets)
    r = cli("ingest", "folder", ".", "--out", f"s3://{BUCKET}/cli/folder")
    assert r.exit_code == 0, r.output
    assert len(ChipStore(f"s3://{BUCKET}/cli/folder")) == 8 and not (pets / "s3:").exists()

    aoi = tmp_path / "aoi"
    aoi.mkdir()
    _s2(aoi / "s2.tif")
    monkeypatch.chdir(aoi)
    r = cli("ingest", "rasters", "-m", "s2=s2.tif", "--chip-size", "32", "--out", f"s3://{BUCKET}/cli/rasters", "-q")
    assert r.exit_code == 0, r.output
    assert len(ChipStore(f"s3://{BUCKET}/cli/rasters")) == 8  # 3 x 3 tiles, one all nodata and not (aoi / "s3:").exists()

    seg = tmp_path / "seg"
    for k in range(2):
        _write_pair(seg, "Tile 0", f"part_{k}", 16, 16, seed=k)
    monkeypatch.chdir(seg)
    r = cli("ingest", "pairs", "--images", "Tile 0/images", "--masks", "Tile 0/masks", "--chip-size", "16",
            "--out", f"s3://{BUCKET}/cli/pairs", "-q")
    assert r.exit_code == 0, r.output
    assert len(ChipStore(f"s3://{BUCKET}/cli/pairs")) == 2 and not (seg / "s3:").exists()

    one_line_error(cli("ingest", "rasters", "-m", f"s2=s3://{BUCKET}/cli/in/s2.tif", "--chip-size", "32",
                       "--out", f"s3://{BUCKET}/cli/in"), f"s3://{BUCKET}/cli/in: --out contains the input")
    one_line_error(cli("synth", "--out", f"s3://{BUCKET}/cli/folder/inner", "--chips", "16"),
                   f"s3://{BUCKET}/cli/folder/inner: --out is inside the chip store s3://{BUCKET}/cli/folder")
    assert not (seg / "s3:").exists()


def test_stats_reads_and_writes_a_store_on_s3_under_its_lock(s3, tmp_path):
    """`earthembed stats s3://...`: the statistics are computed from the store on S3 and written back into its
    earthembed.json (one PUT) under the store's lease lock; they equal the same store's statistics computed
    locally; non-finite statistics that make the store refuse to open are fixed this way; a second writer
    holding the lock makes it one line, and the lock object is gone afterwards."""
    import shutil

    from earthembed.data.stats import update_store_stats
    from earthembed.errors import StoreError

    local = tmp_path / "local"
    shutil.copytree(s3["local"].path, local)
    want = update_store_stats(local)
    url = f"s3://{BUCKET}/stats_store"
    upload_dir(s3["local"].path, location(url))
    meta_f = location(url) / "earthembed.json"
    meta = json.loads(meta_f.read_text())
    meta["stats"]["s2"]["mean"][0] = float("inf")
    meta_f.write_text(json.dumps(meta))  # Infinity: the store refuses to open until `stats` fixes it
    with pytest.raises(StoreError, match="not finite"):
        ChipStore(url)

    lock = ObjectLock(url, location(url) / ".earthembed.lock").acquire()
    try:
        one_line_error(cli("stats", url), f"{url}: is being written by")
    finally:
        lock.release()
    r = cli("stats", url)
    assert r.exit_code == 0, r.output
    assert "s2: B01=" in r.output
    assert ChipStore(url).stats == want == json.loads((local / "earthembed.json").read_text())["stats"]
    assert not (location(url) / ".earthembed.lock").exists()
    one_line_error(cli("stats", f"s3://{BUCKET}/no_store"), f"s3://{BUCKET}/no_store")


def test_an_embedding_dataset_inside_a_store_on_s3_is_refused(s3):
    from earthembed.errors import OutputError

    with pytest.raises(OutputError, match=rf"{s3['url']}/emb: is inside the chip store {s3['url']};"):
        embed_store(s3["export"], s3["url"], f"{s3['url']}/emb/", progress=False)
    assert not location(f"{s3['url']}/emb").exists()
