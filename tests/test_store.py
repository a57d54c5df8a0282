import json

import numpy as np
import pytest

from earthembed.data.modalities import BandMismatchError, get_modality
from earthembed.data.store import ChipRecord, ChipStore, StoreError, StoreWriter


def test_roundtrip_and_band_reorder(tiny_store):
    st = ChipStore(tiny_store)
    assert len(st) == 20
    full = st.read("s2", 5)
    sub = st.read("s2", 5, bands=["B04", "B03", "B02"])
    names = st.band_names("s2")
    np.testing.assert_array_equal(sub, full[[names.index("B04"), names.index("B03"), names.index("B02")]])
    with pytest.raises(BandMismatchError):
        st.read("s2", 0, bands=["B99"])
    idx = st.index
    assert idx["has_s1"].sum() == 15
    assert idx.loc[3, "valid_s1"].tolist() == [0.0, 0.0]
    info = st.info()
    assert info["modalities"]["s1"]["present"] == 15
    assert info["labels"]["label"]["class_counts"] == {"forest": 10, "water": 10}
    assert set(st.stats) == {"s2", "s1"}


def _rec(i, size=8):
    return ChipRecord(f"c{i}", {"s2": np.full((13, size, size), i + 1, "uint16")})


def test_interrupted_ingest_resumes_without_duplicates(tmp_path):
    s2 = get_modality("s2_l1c")
    p = tmp_path / "st"

    class Boom(Exception):
        pass

    with pytest.raises(Boom), StoreWriter(p, [s2], 8, batch_size=4) as w:
        for i in range(10):
            if i == 9:
                raise Boom
            w.add(_rec(i))
    with pytest.raises(StoreError, match="incomplete"):
        ChipStore(p)
    meta = json.loads((p / "earthembed.json").read_text())
    assert meta["complete"] is False
    with StoreWriter(p, [s2], 8, batch_size=4) as w:
        assert w.resumed_count == 9
        for i in range(12):
            if not w.is_done(f"c{i}"):
                w.add(_rec(i))
    st = ChipStore(p)
    assert len(st) == 12
    assert st.index["chip_id"].tolist() == [f"c{i}" for i in range(12)]
    assert [int(st.read("s2", i)[0, 0, 0]) for i in range(12)] == list(range(1, 13))


def test_refuses_to_overwrite_complete_store(tiny_store):
    with pytest.raises(StoreError, match="complete store already exists"):
        StoreWriter(tiny_store, [get_modality("s2_l1c")], 16)
    assert len(ChipStore(tiny_store)) == 20


def test_bad_shape_and_nan_rejected(tmp_path):
    with StoreWriter(tmp_path / "s", [get_modality("s2_l1c")], 8) as w:
        with pytest.raises(StoreError, match="shape"):
            w.add(ChipRecord("x", {"s2": np.zeros((12, 8, 8), "uint16")}, source="bad.tif"))
        a = np.full((13, 8, 8), 5.0)
        a[0, 0, 0] = np.nan
        w.add(ChipRecord("y", {"s2": a}))
    st = ChipStore(tmp_path / "s")
    assert st.read("s2", 0)[0, 0, 0] == 0  # NaN became the nodata value
    assert st.index.loc[0, "valid_s2"][0] == pytest.approx(63 / 64)


def test_dataset_batched_fetch_matches_items(tiny_store):
    import torch

    from earthembed.data.dataset import ChipDataset

    ds = ChipDataset(tiny_store, {"s2": ["B04", "B03"], "s1": None})
    positions = [7, 2, 3, 11]
    items = ds.__getitems__(positions)
    st, norm = ds.store, ds.normalizer
    for p, it in zip(positions, items, strict=True):
        assert it["idx"] == ds[p]["idx"] == p
        assert it["s1_present"] == bool(st.index.loc[p, "has_s1"])
        ref_s2 = norm(st.read("s2", p, ["B04", "B03"]), "s2", ["B04", "B03"])
        torch.testing.assert_close(it["s2"], ref_s2)
        if it["s1_present"]:
            torch.testing.assert_close(it["s1"], norm(st.read("s1", p), "s1", ["VV", "VH"]))
    assert items[2]["s1_present"] is False and float(items[2]["s1"].abs().sum()) == 0.0
    loader = torch.utils.data.DataLoader(ds, batch_size=5, shuffle=True)
    b = next(iter(loader))
    assert b["s2"].shape == (5, 2, 16, 16) and b["s1_present"].dtype == torch.bool


def test_resume_refuses_a_different_source(tmp_path):
    s2 = get_modality("s2_l1c")
    p = tmp_path / "st"

    class Boom(Exception):
        pass

    with pytest.raises(Boom), StoreWriter(p, [s2], 8, source={"path": "/data/a", "k": 1}, batch_size=2) as w:
        for i in range(3):
            w.add(_rec(i))
        raise Boom
    with pytest.raises(StoreError, match=r"different source \(path: '/data/a' there, '/data/b' now\).*--overwrite"):
        StoreWriter(p, [s2], 8, source={"path": "/data/b", "k": 1})
    with pytest.raises(StoreError, match=r"different chip_size.*--overwrite"):
        StoreWriter(p, [s2], 16, source={"path": "/data/a", "k": 1})
    # the same source resumes (key order does not matter)
    with StoreWriter(p, [s2], 8, source={"k": 1, "path": "/data/a"}) as w:
        assert w.resumed_count == 3
        w.add(_rec(3))
    assert ChipStore(p).index["chip_id"].tolist() == ["c0", "c1", "c2", "c3"]
    # overwrite starts again from the other source
    with StoreWriter(p, [s2], 8, source={"path": "/data/b"}, overwrite=True) as w:
        assert w.resumed_count == 0
        w.add(_rec(9))
    assert len(ChipStore(p)) == 1


def test_fast_read_pipeline_matches_default(tiny_store, monkeypatch):
    """zarrs (the default read pipeline when installed) returns exactly what zarr-python's own pipeline does,
    for contiguous, scattered and single-chip reads, including the partial last chunk."""
    from earthembed.data import store as store_mod

    fast = ChipStore(tiny_store)
    assert store_mod.codec_pipeline() == store_mod.FAST_PIPELINE
    assert type(fast.array("s2")._async_array.codec_pipeline).__name__ == "ZarrsCodecPipeline"
    monkeypatch.setenv("EARTHEMBED_ZARRS", "0")
    plain = ChipStore(tiny_store)
    assert type(plain.array("s2")._async_array.codec_pipeline).__name__ != "ZarrsCodecPipeline"
    for idx in (np.arange(3, 19), np.array([0, 5, 17, 19]), 18):
        for mod in ("s2", "s1"):
            np.testing.assert_array_equal(fast.read(mod, idx), plain.read(mod, idx))


def test_forked_dataloader_workers_after_fast_reads(tiny_store):
    """zarrs' thread pool does not survive fork: arrays read in the parent are reopened with zarr's own
    pipeline in forked DataLoader workers, which then read the same pixels instead of hanging."""
    import multiprocessing

    import torch

    from earthembed.data.dataset import ChipDataset

    ds = ChipDataset(ChipStore(tiny_store), ["s2", "s1"])
    expected = torch.stack([ds[i]["s2"] for i in range(len(ds))])  # parent reads first: zarrs pool started
    loader = torch.utils.data.DataLoader(ds, batch_size=5, num_workers=2, timeout=60,
                                         multiprocessing_context=multiprocessing.get_context("fork"))
    got = torch.cat([b["s2"] for b in loader])
    torch.testing.assert_close(got, expected)
    import zarr

    from earthembed.data.store import FAST_PIPELINE

    with zarr.config.set({"codec_pipeline.path": FAST_PIPELINE}):  # zarrs set globally by the user: still safe
        got = torch.cat([b["s2"] for b in loader])
    torch.testing.assert_close(got, expected)


def test_normalizer_zscores_and_invalid_pixels():
    """(x - mean) / std per band by name; NaN, inf and nodata become 0; any input dtype gives float32."""
    import torch

    from earthembed.data.normalize import Normalizer

    norm = Normalizer({"m": {"bands": ["a", "b"], "mean": [10.0, 100.0], "std": [2.0, 50.0]}}, {"m": 0})
    x = np.array([[[12, 0]], [[200, 50]]], dtype=np.uint16)  # [C=2, H=1, W=2]
    out = norm(x, "m", ["a", "b"])
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), [[[1.0, 0.0]], [[2.0, -1.0]]])  # the 0 is nodata, not -5
    np.testing.assert_allclose(norm(x[::-1], "m", ["b", "a"]).numpy(), [[[2.0, -1.0]], [[1.0, 0.0]]])
    f = np.array([[[np.nan, np.inf]], [[150.0, -np.inf]]])  # float64 input
    out = Normalizer({"m": {"bands": ["a", "b"], "mean": [10.0, 100.0], "std": [2.0, 50.0]}})(f, "m", ["a", "b"])
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), [[[0.0, 0.0]], [[1.0, 0.0]]])
    with pytest.raises(BandMismatchError):
        norm(x, "m", ["a", "c"])


def test_a_duplicate_chip_id_is_refused_at_open(tiny_store, tmp_path):
    """A repeated chip id (an edited or merged index) would join labels and embeddings to the wrong chips: every
    open refuses it (not only `verify`), naming the index and the ids."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq
    from typer.testing import CliRunner

    from earthembed.cli import app

    store = tmp_path / "store"
    shutil.copytree(tiny_store, store)
    t = pq.read_table(store / "index.parquet")
    ids = t.column("chip_id").to_pylist()
    ids[5] = ids[4]
    pq.write_table(t.set_column(t.schema.get_field_index("chip_id"), "chip_id", pa.array(ids)),
                   store / "index.parquet")
    with pytest.raises(StoreError, match=rf"index\.parquet: duplicate chip ids \['{ids[4]}'\]"):
        ChipStore(store)
    for cmd in (["info", str(store)], ["pretrain", "--store", str(store), "--out", str(tmp_path / "run")]):
        r = CliRunner().invoke(app, cmd)
        assert r.exit_code != 0 and "duplicate chip ids" in r.output, (cmd, r.output)
    assert not (tmp_path / "run" / "config.yaml").exists()


@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"),
                                     RuntimeError("No space left on device (os error 28)")])  # as zarrs reports it
def test_a_full_disk_is_one_line_and_the_rerun_resumes_to_the_same_store(tmp_path, monkeypatch, failure):
    """The disk fills in the third batch: one WriteError naming the store and the re-run; once space is freed the
    same command resumes and the store equals one written without interruption."""
    from earthembed.data.synth import generate_synthetic_aoi
    from earthembed.outputs import WriteError

    ref = generate_synthetic_aoi(tmp_path / "ref", chips=40, chip_size=16, batch_size=8)
    real = StoreWriter._write_rows

    def filling(self, root, name, start, data):
        if start >= 16:
            raise failure
        return real(self, root, name, start, data)

    monkeypatch.setattr(StoreWriter, "_write_rows", filling)
    with pytest.raises(WriteError) as e:
        generate_synthetic_aoi(tmp_path / "st", chips=40, chip_size=16, batch_size=8)
    msg = str(e.value)
    assert msg == (f"{tmp_path / 'st'}: No space left on device while writing it; 16 chips are committed; free space "
                   "and re-run the same command to resume") and e.value.errno == 28
    monkeypatch.undo()
    a, b = ref, generate_synthetic_aoi(tmp_path / "st", chips=40, chip_size=16, batch_size=8)
    for k in a.modalities:
        np.testing.assert_array_equal(a.array(k)[:], b.array(k)[:])  # NaN fill of absent chips compares equal
    assert a.index.drop(columns="geometry").equals(b.index.drop(columns="geometry"))


def test_a_bug_in_a_native_codec_keeps_its_traceback():
    from earthembed.data.store import os_error_of

    assert os_error_of(RuntimeError("index out of bounds")) is None
    assert os_error_of(ValueError("no space in the band list")) is None
    err = os_error_of(RuntimeError("failed to write chunk: Disk quota exceeded (os error 122)"))
    assert err.errno == 122 and err.strerror == "Disk quota exceeded"
