"""Zarr sharding of chip stores (``synth``/``ingest --shard-chips K``, issue 23): one file per K chips of each array;
reads (zarrs and zarr pipelines), ``info``, ``verify`` and embeddings equal the unsharded store's; a killed or
failed ingest resumes to the same bytes as an uninterrupted one; a missing shard is named; a resume with another
``--shard-chips`` is refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from earthembed.data.store import ChipStore, StoreError, StoreWriter
from earthembed.data.synth import generate_synthetic_aoi
from test_hostile_inputs import cli, one_line_error

CHIPS, SIZE, K = 70, 16, 32  # 3 shards of 32 chips (the last partial), each of 2 chunks of 16


def _array_files(store: Path) -> dict[str, bytes]:
    root = store / "arrays.zarr"
    return {str(f.relative_to(root)): f.read_bytes() for f in sorted(root.rglob("*")) if f.is_file()}


def _same_store(a: ChipStore, b: ChipStore) -> None:
    for name in [*a.modalities, *(f"labels/{n}" for n, s in a.labels.items() if s["kind"] == "mask")]:
        np.testing.assert_array_equal(a.array(name)[:], b.array(name)[:])
    assert a.index.drop(columns="geometry").equals(b.index.drop(columns="geometry"))
    assert a.index.geometry.equals(b.index.geometry)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("sharding")
    plain = generate_synthetic_aoi(root / "plain", chips=CHIPS, chip_size=SIZE, batch_size=8)
    sharded = generate_synthetic_aoi(root / "sharded", chips=CHIPS, chip_size=SIZE, batch_size=8, shard_chips=K)
    return plain, sharded


def test_a_sharded_store_reads_like_the_unsharded_one(stores, monkeypatch):
    plain, sharded = stores
    _same_store(plain, sharded)
    meta = json.loads((sharded.path / "earthembed.json").read_text())
    assert meta["shard_chips"] == K and "shard_chips" not in json.loads((plain.path / "earthembed.json").read_text())
    assert sharded.stats == plain.stats
    # one file per shard: 3 per array (chips 0-31, 32-63, 64-69), against 5 chunks of 16 unsharded
    files = [f for f in _array_files(sharded.path) if f.startswith("s2/c/")]
    assert files == ["s2/c/0/0/0/0", "s2/c/1/0/0/0", "s2/c/2/0/0/0"]
    assert len([f for f in _array_files(plain.path) if f.startswith("s2/c/")]) == 5
    ch = sharded.chunking()
    assert ch["s2"] == {"chunk_chips": 16, "shard_chips": K, "files": 3} and sharded.layout("s2").chunk_chips == K
    assert plain.chunking()["s2"] == {"chunk_chips": 16, "shard_chips": None, "files": 5}
    for pipeline in ("1", "0"):  # zarrs and zarr's own pipeline read shards alike (random and strided access)
        monkeypatch.setenv("EARTHEMBED_ZARRS", pipeline)
        st = ChipStore(sharded.path)
        idx = np.array([69, 3, 40, 31, 32])
        for mod in st.modalities:
            np.testing.assert_array_equal(st.read(mod, idx), plain.read(mod, idx))
            np.testing.assert_array_equal(st.read(mod, slice(5, 50)), plain.read(mod, slice(5, 50)))
        np.testing.assert_array_equal(st.read_mask("landcover_mask", idx), plain.read_mask("landcover_mask", idx))


def test_info_and_verify_report_the_sharding(stores):
    plain, sharded = stores
    r = cli("info", sharded.path)
    assert r.exit_code == 0 and f"files      shards of {K} chips (chunks of 16 inside);" in r.output, r.output
    r = cli("info", plain.path, "--json")
    assert json.loads(r.output)["chunking"]["s2"]["shard_chips"] is None
    r = cli("verify", sharded.path, "--quiet")
    n_arrays = len(sharded.chunking())
    assert r.exit_code == 0 and f"{CHIPS} chips; {3 * n_arrays} shards of {K} chips of {n_arrays} arrays" in r.output
    r = cli("verify", sharded.path, "--json")
    assert json.loads(r.output)["shard_chips"] == K


def test_a_missing_or_corrupt_shard_is_named(stores, tmp_path):
    import shutil

    _, sharded = stores
    st = tmp_path / "st"
    shutil.copytree(sharded.path, st)
    (st / "arrays.zarr/s2/c/1/0/0/0").unlink()
    with pytest.raises(StoreError, match=r"array arrays.zarr/s2, chips 32-63: chunk file .*s2/c/1/0/0/0 is missing"):
        ChipStore(st)
    shutil.rmtree(st)
    shutil.copytree(sharded.path, st)
    f = st / "arrays.zarr/s1/c/1/0/0/0"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    s = ChipStore(st)
    with pytest.raises(StoreError, match=r"arrays.zarr/s1, chips 32-63: chunk file .*cannot be decoded"):
        s.read("s1", slice(30, 40))
    r = cli("verify", st, "--quiet")
    assert r.exit_code == 1 and "arrays.zarr/s1, chips 32-63" in r.output


def test_embeddings_of_a_sharded_store_are_byte_identical(stores, tmp_path):
    plain, sharded = stores
    outs = {}
    for name, st in (("plain", plain), ("sharded", sharded)):
        out = tmp_path / f"{name}.parquet"
        r = cli("embed", "--featurizer", "rcf", "--store", st.path, "--out", out, "--quiet")
        assert r.exit_code == 0, r.output
        outs[name] = pq.read_table(out)
    cols = [c for c in outs["plain"].column_names if c.startswith("emb")]
    assert cols and all(outs["plain"].column(c).equals(outs["sharded"].column(c)) for c in cols)
    # a sharded embedding dataset is planned in whole store shards (a store shard is read by one worker)
    from earthembed.embed.shards import plan_shards

    assert [len(s) for s in plan_shards(CHIPS, sharded.layout("s2").chunk_chips, 40)] == [64, 6]


# A synth process that kills itself (SIGKILL: nothing flushed or closed) when the writer starts on chip KILL_AT,
# after writing the first array of that shard and before its index part: as a scheduler or the OOM killer would.
KILLER = """
import os, signal, sys
from earthembed.data.store import StoreWriter
from earthembed.data.synth import generate_synthetic_aoi

out, kill_at, k = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
real = StoreWriter._write_rows

def dying(self, root, name, start, data):
    real(self, root, name, start, data)
    if start >= kill_at:
        os.kill(os.getpid(), signal.SIGKILL)

StoreWriter._write_rows = dying
generate_synthetic_aoi(out, chips=int(sys.argv[4]), chip_size=int(sys.argv[5]), batch_size=8, shard_chips=k)
"""


@pytest.mark.parametrize("kill_at", [32, 64])  # in a full shard; in the last, partial one
def test_a_killed_sharded_ingest_resumes_to_the_same_bytes(stores, tmp_path, kill_at):
    _, sharded = stores
    out = tmp_path / "st"
    p = subprocess.run([sys.executable, "-c", KILLER, *map(str, (out, kill_at, K, CHIPS, SIZE))], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)})
    assert p.returncode == -9, p.stderr
    assert sorted(f.name for f in (out / "_parts").iterdir()) == [
        f"part-{s:09d}.parquet" for s in range(0, kill_at, K)]  # committed a shard at a time
    resumed = generate_synthetic_aoi(out, chips=CHIPS, chip_size=SIZE, batch_size=8, shard_chips=K)
    _same_store(sharded, resumed)
    assert _array_files(out) == _array_files(sharded.path)


def test_a_failed_sharded_ingest_rewrites_its_partial_shard_on_resume(stores, tmp_path, monkeypatch):
    """An ingest that fails mid-shard commits what it buffered (part of a shard); the resume rewrites that shard
    with the rest (zarr's atomic pipeline) and the store equals an uninterrupted one, file for file."""
    _, sharded = stores
    out = tmp_path / "st"

    class Boom(Exception):
        pass

    with pytest.raises(Boom), StoreWriter(out, sharded.modalities.values(), SIZE, sharded.labels,
                                          source=sharded.meta["source"], shard_chips=K) as w:
        for i, rec in enumerate(_records(sharded)):
            if i == 45:
                raise Boom
            w.add(rec)
    assert sorted(f.name for f in (out / "_parts").iterdir()) == ["part-000000000.parquet", "part-000000032.parquet"]
    with StoreWriter(out, sharded.modalities.values(), SIZE, sharded.labels, source=sharded.meta["source"],
                     shard_chips=K) as w:
        assert w.resumed_count == 45
        for rec in _records(sharded):
            w.add(rec)
    resumed = ChipStore(out)
    _same_store(sharded, resumed)
    assert _array_files(out) == _array_files(sharded.path)


def _records(store: ChipStore):
    from earthembed.data.synth import SyntheticAOI

    src = store.meta["source"]
    yield from SyntheticAOI(src["chips"], src["chip_size"], src["seed"]).records(0, src["chips"])


def test_a_resume_with_another_shard_size_is_refused(stores, tmp_path):
    _, sharded = stores
    out = tmp_path / "st"
    mods, labels = sharded.modalities.values(), sharded.labels
    with pytest.raises(KeyboardInterrupt), StoreWriter(out, mods, SIZE, labels, shard_chips=K) as w:
        for i, rec in enumerate(_records(sharded)):
            if i == 40:
                raise KeyboardInterrupt
            w.add(rec)
    for other, shown in ((None, "32 there, none now"), (64, "32 there, 64 now")):
        with pytest.raises(StoreError, match=rf"different --shard-chips \({shown}\)"):
            StoreWriter(out, mods, SIZE, labels, shard_chips=other)
    with StoreWriter(out, mods, SIZE, labels, shard_chips=K) as w:  # the same setting resumes
        assert w.resumed_count == 40
    r = cli("synth", "--out", tmp_path / "bad", "--chips", 8, "--shard-chips", 0, "-q")
    one_line_error(r, "--shard-chips must be a positive number of chips, got 0")
    assert not (tmp_path / "bad").exists()


def test_ingest_shard_chips_on_real_eurosat(shared_data, tmp_path):
    src = shared_data / "eurosat-ms"
    r = cli("ingest", "eurosat", src, "--out", tmp_path / "a", "--shard-chips", 100, "-q")
    assert r.exit_code == 0, r.output
    plain = cli("ingest", "eurosat", src, "--out", tmp_path / "b", "-q")
    assert plain.exit_code == 0, plain.output
    a, b = ChipStore(tmp_path / "a"), ChipStore(tmp_path / "b")
    _same_store(a, b)
    assert a.chunking()["s2"] == {"chunk_chips": 16, "shard_chips": 112, "files": 2}  # 100 -> 7 whole chunks


def test_a_shards_inner_chunks_are_laid_out_in_chunk_order(stores):
    """zarrs lays a shard's inner chunks out in the order its threads finish them, so the same chips gave files of
    different bytes from run to run (and a resumed store differed from an uninterrupted one); shards are written
    by zarr's pipeline, in chunk order: the index at the end of every shard file has increasing offsets."""
    _, sharded = stores
    for name, data in _array_files(sharded.path).items():
        if "/c/" not in name:
            continue
        per_shard = K // 16
        index = np.frombuffer(data[-(per_shard * 16 + 4):-4], dtype="<u8").reshape(per_shard, 2)
        written = index[index[:, 0] != np.iinfo(np.uint64).max]  # chunks past the last chip are not written
        assert (np.diff(written[:, 0].astype(np.int64)) > 0).all() and written[0, 0] == 0, (name, index.tolist())
