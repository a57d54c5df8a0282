"""The end-to-end flow every object-storage backend is held to (``tests/test_object_storage.py`` on an S3 server,
``tests/test_gcs_storage.py`` on a GCS emulator): a store read back from the bucket; a sharded embed into the
bucket equal to the local one; ``embed-status``; ``fewshot``, ``predict``, ``map``, ``search``, ``report`` and
``plot-embeddings`` reading the table and store there, recording their URLs as URLs; ``index`` refused there; a
sharded store written straight to the bucket, byte for byte the local one (:func:`sharded_synth_on_a_bucket`)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from earthembed.data.normalize import Normalizer
from earthembed.data.store import ChipStore
from earthembed.data.synth import generate_synthetic_aoi
from earthembed.embed.io import read_table, to_matrix
from earthembed.embed.run import embed_store
from earthembed.models.export import export_model
from earthembed.models.registry import build_model
from earthembed.storage import ObjectPath, location, upload_dir
from test_hostile_inputs import cli, one_line_error


def free_port() -> int:
    """A free local TCP port for a test server."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]



def serve_env(mp: pytest.MonkeyPatch, env: dict[str, str], drop: Iterable[str]) -> None:
    """Point the standard variables at a test server: ``drop`` unset, ``env`` set, and the local server exempt
    from any proxy the environment names."""
    for k in drop:
        mp.delenv(k, raising=False)
    for k, v in {**env, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}.items():
        mp.setenv(k, v)


def wait_for(proc: subprocess.Popen, ready: Callable[[], object], what: str, seconds: float = 30) -> None:
    """Call ``ready`` until it stops raising OSError: RuntimeError when ``proc`` exits or ``seconds`` pass."""
    deadline = time.time() + seconds
    while True:
        try:
            ready()
            return
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                raise RuntimeError(f"{what} did not start") from None
            time.sleep(0.1)

def store_on_a_bucket(bucket: str, root: Path) -> dict:
    """A 40-chip synthetic store written under ``root`` and uploaded to ``BUCKET/store``, and a tiny export
    (``resnet18_small`` on S2): what every backend's tests start from. ``{"local", "url", "export", "root"}``."""
    local = generate_synthetic_aoi(root / "store", chips=40, chip_size=16, seed=3)
    url = f"{bucket}/store"
    upload_dir(local.path, location(url))
    torch.manual_seed(0)
    model = build_model("resnet18_small", modalities={"s2": local.band_names("s2")}).eval()
    export = export_model(model, root / "export", Normalizer.from_store(local))
    return {"local": local, "url": url, "export": export, "root": root}

def store_to_explore_on_a_bucket(bucket: str, local: ChipStore, url: str, export: Path, tmp_path: Path) -> str:
    """Run the flow with the store at ``url`` (a copy of ``local``) and the table under ``bucket`` (``s3://b``,
    ``gs://b``); returns the table's URL."""
    st = ChipStore(url)
    assert st.remote and len(st) == 40 and list(st.modalities) == list(local.modalities)
    np.testing.assert_array_equal(st.read("s2", slice(0, 40)), local.read("s2", slice(0, 40)))
    assert st.index["chip_id"].tolist() == local.index["chip_id"].tolist() and st.index.crs == local.index.crs
    assert ChipStore(Path(url)).path == st.path  # what a Path-typed CLI option makes of the URL

    emb = f"{bucket}/emb/"
    r = cli("embed", "--checkpoint", export, "--store", url, "--out", emb, "--shard-chips", 16, "--quiet")
    assert r.exit_code == 0, r.output
    out = location(emb)
    assert sorted(p.name for p in out.iterdir()) == [
        "_committed", "_common_metadata", "_manifest.json", "part-0000000000-0000000016.parquet",
        "part-0000000016-0000000032.parquet", "part-0000000032-0000000040.parquet"]  # lock released, no _failed
    ref = embed_store(export, local, tmp_path / "ref/", shard_chips=16, progress=False)
    np.testing.assert_array_equal(to_matrix(read_table(emb).column("emb_fused")),
                                  to_matrix(read_table(ref).column("emb_fused")))
    text = (out / "_manifest.json").read_text()
    manifest = json.loads(text)
    assert manifest["complete"] and manifest["store"] == url and "testing" not in text  # no credentials written

    r = cli("embed-status", emb)
    assert r.exit_code == 0 and "complete: 3 done, 0 pending, 0 failed of 3 shards" in r.output, r.output
    r = cli("embed", "--checkpoint", export, "--store", url, "--out", emb, "--shard-chips", 16, "--quiet")
    assert r.exit_code == 0, r.output  # a finished dataset: nothing to do, nothing rewritten

    few = tmp_path / "few"
    r = cli("fewshot", "--embeddings", f"own={emb}", "--store", url, "--task", "landcover", "--out", few,
            "--baselines", "band_stats", "--estimators", "logreg", "--budgets", "1,2", "--seeds", 1, "--n-boot",
            10, "--quiet")
    assert r.exit_code == 0 and "own:emb_fused" in (few / "summary.md").read_text(), r.output
    pred = tmp_path / "pred.parquet"
    r = cli("predict", "--embeddings", emb, "--store", url, "--task", "landcover", "--estimator", "logreg", "--out",
            pred)
    assert r.exit_code == 0 and pq.read_table(pred).num_rows == 40, r.output
    recorded = json.loads(pq.read_schema(pred).metadata[b"earthembed"])
    assert recorded["embeddings"].rstrip("/") == emb.rstrip("/") and recorded["store"] == url  # URLs, not local paths
    r = cli("map", "--table", emb, "--column", "split", "--out", tmp_path / "split.tif")  # footprints from the bucket
    assert r.exit_code == 0 and (tmp_path / "split.tif").is_file(), r.output

    # the explore commands read the table (and its store for thumbnails and labels) like a local one
    first = st.index["chip_id"].iloc[0]
    hits = tmp_path / "hits.parquet"
    r = cli("search", "--embeddings", emb, "--positive", first, "--k", 5, "--out", hits)
    assert r.exit_code == 0 and pq.read_table(hits).num_rows == 5 and hits.with_suffix(".png").is_file(), r.output
    recorded = json.loads(pq.read_schema(hits).metadata[b"earthembed"])
    assert recorded["embeddings"].rstrip("/") == emb.rstrip("/") and recorded["store"] == url
    local_hits = tmp_path / "local_hits.parquet"
    r = cli("search", "--embeddings", ref, "--store", local.path, "--positive", first, "--k", 5, "--out", local_hits)
    assert r.exit_code == 0, r.output
    assert pq.read_table(hits).column("chip_id").to_pylist() == pq.read_table(local_hits).column("chip_id").to_pylist()
    r = cli("report", "--store", url, "--embeddings", emb, "--hits", hits, "--out", tmp_path / "report.html")
    page = (tmp_path / "report.html").read_text()
    assert r.exit_code == 0 and all(f"<h2>{h}</h2>" in page for h in ("Chip store", "Embedding space",
                                                                       "Similarity search")), r.output
    r = cli("plot-embeddings", emb, "--color-by", "landcover", "--out", tmp_path / "pca.png")  # labels: the bucket's store
    assert r.exit_code == 0 and (tmp_path / "pca.png").is_file(), r.output
    # an index is written beside its table: on object storage that is refused in one line (search works without)
    one_line_error(cli("index", "--embeddings", emb, "--quiet"), bucket.split("://")[0] + "://")
    return emb


def object_bytes(d: ObjectPath) -> dict[str, bytes]:
    """Every object under prefix ``d`` by its key relative to ``d``."""
    return {str(p.key)[len(d.key) + 1:]: p.read_bytes() for p, _ in d.walk_files()}


def local_bytes(d: Path) -> dict[str, bytes]:
    """Every file under ``d`` by its POSIX path relative to ``d``."""
    return {f.relative_to(d).as_posix(): f.read_bytes() for f in sorted(d.rglob("*")) if f.is_file()}


def sharded_synth_on_a_bucket(bucket: str, local: ChipStore, export: Path, tmp_path: Path) -> tuple[str, str]:
    """``synth --out BUCKET/synth-sharded --shard-chips 16``: the same array objects as the same store written
    locally (byte for byte), no _parts or lock left, ``verify`` reads it, and a sharded embed of it equals the
    local unsharded store's (``local``, the same synthetic AOI). Returns (store URL, embedding dataset URL)."""
    url = f"{bucket}/synth-sharded"
    r = cli("synth", "--out", url, "--chips", 40, "--chip-size", 16, "--seed", 3, "--shard-chips", 16, "--quiet")
    assert r.exit_code == 0 and f"to {url} in" in r.output, r.output
    ref = generate_synthetic_aoi(tmp_path / "ref", chips=40, chip_size=16, seed=3, shard_chips=16)
    st = ChipStore(url)
    assert sorted(p.name for p in st.path.iterdir()) == [
        "arrays.zarr", "earthembed.json", "index.parquet", "ingest_report.json"]
    assert object_bytes(st.path / "arrays.zarr") == local_bytes(ref.path / "arrays.zarr")
    assert st.index.drop(columns="geometry").equals(ref.index.drop(columns="geometry")) and st.stats == ref.stats
    r = cli("verify", url, "--quiet")
    assert r.exit_code == 0 and f"{url}: ok (40 chips; 18 shards of 16 chips of 6 arrays" in r.output, r.output

    emb = f"{bucket}/emb-sharded/"
    r = cli("embed", "--checkpoint", export, "--store", url, "--out", emb, "--shard-chips", 16, "--quiet")
    assert r.exit_code == 0, r.output
    plain = embed_store(export, local, tmp_path / "plain/", shard_chips=16, progress=False)
    a, b = read_table(emb), read_table(plain)
    for col in ("emb_fused", "emb_s2"):
        assert a.column(col).equals(b.column(col))
    return url, emb


def stale_lock_is_taken_over(out: ObjectPath) -> None:
    """A lock ``out/_lock`` renewed recently by a job on another host is respected; one not renewed within its ttl
    is taken over, and released when done."""
    from earthembed.errors import LockedError
    from earthembed.storage import ObjectLock

    lock = out / "_lock"
    holder = {"pid": 1, "host": "elsewhere", "command": "earthembed embed ...", "renewed": time.time(), "ttl_s": 1.0}
    lock.write_text(json.dumps(holder))
    with pytest.raises(LockedError, match="pid 1 on elsewhere"):
        ObjectLock(out, lock).acquire()
    time.sleep(1.5)
    with ObjectLock(out, lock) as mine:
        assert json.loads(lock.read_text())["pid"] == os.getpid() and not mine.lost
    assert not lock.is_file()
