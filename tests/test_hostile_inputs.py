"""What earthembed promises when given careless or hostile input: one test per promise.

Read top to bottom, this is the list: (1) no flag can destroy data it did not create; (2) damaged or odd
inputs fail loudly instead of giving wrong results with exit code 0; (3) every error is one line naming the
file and the problem (``--debug`` shows the traceback). Stores are tiny (16-32 chips of 16 px).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from earthembed.cli import app
from earthembed.data.modalities import get_modality
from earthembed.data.normalize import Normalizer
from earthembed.data.store import ChipRecord, ChipStore, StoreWriter
from earthembed.data.synth import generate_synthetic_aoi
from earthembed.embed.io import fixed_size_list, write_embedding_table
from earthembed.embed.run import embed_store
from earthembed.errors import LockedError, OutputError, StoreError
from earthembed.models.export import export_model, load_model, read_checkpoint
from earthembed.models.registry import build_model
from earthembed.outputs import OutputLock, write_json


def cli(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_line_error(r, *fragments: str) -> None:
    """Exit 1 with a single ``error: ...`` line that contains every fragment, and no traceback."""
    lines = [ln for ln in r.output.strip().splitlines() if ln.strip()]
    assert r.exit_code == 1, r.output
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.output, r.output
    for f in fragments:
        assert f in lines[0], (f, lines[0])


def strict_json(path: Path):
    """Parse as standard JSON: NaN / Infinity are refused."""
    def refuse(c: str):
        raise ValueError(f"non-standard JSON constant {c} in {path}")

    return json.loads(Path(path).read_text(), parse_constant=refuse)


@pytest.fixture(scope="module")
def clean_store(tmp_path_factory) -> Path:
    return generate_synthetic_aoi(tmp_path_factory.mktemp("hostile") / "store", chips=32, chip_size=16,
                                  batch_size=16).path


@pytest.fixture(scope="module")
def emb_table(clean_store, tmp_path_factory) -> Path:
    """An 8-dim embedding table of the clean store's chips (random, with splits)."""
    st = ChipStore(clean_store)
    return write_embedding_table(tmp_path_factory.mktemp("emb") / "emb.parquet", st.index["chip_id"].tolist(),
                                 {"emb_fused": np.random.default_rng(1).normal(size=(len(st), 8))},
                                 split=st.index["split"].tolist())


@pytest.fixture
def store(clean_store, tmp_path) -> Path:
    """A private copy of a 32-chip synthetic store (s2, s1, coh, dem, lc + labels), free to damage."""
    return Path(shutil.copytree(clean_store, tmp_path / "store"))


@pytest.fixture(scope="module")
def model_dir(clean_store, tmp_path_factory) -> Path:
    st = ChipStore(clean_store)
    torch.manual_seed(0)
    model = build_model("multimodal_vit", modalities={k: st.band_names(k) for k in ("s2", "s1")},
                        patch_size=8, embed_dim=16, depth=1, num_heads=2)
    return export_model(model, tmp_path_factory.mktemp("model") / "export", Normalizer.from_store(st))


@pytest.fixture
def images(tmp_path) -> Path:
    """SRC/<class>/<image>.png, two classes of 4 RGB images."""
    src = tmp_path / "images"
    rng = np.random.default_rng(0)
    for cls in ("forest", "water"):
        (src / cls).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(src / cls / f"{i}.png")
    return src


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# == 1. no flag destroys data earthembed did not create =================================================
def test_overwrite_never_replaces_the_input_folder(images):
    before = _files(images)
    one_line_error(cli("ingest", "folder", images, "--out", images, "--overwrite"), "is the input")
    assert _files(images) == before


def test_overwrite_never_replaces_a_folder_containing_the_input(images):
    before = _files(images.parent)
    one_line_error(cli("ingest", "folder", images, "--out", images.parent, "--overwrite"), "contains the input")
    assert _files(images.parent) == before


def test_output_inside_the_input_tree_is_refused(images):
    one_line_error(cli("ingest", "folder", images, "--out", images / "store"), "inside the input")
    assert not (images / "store").exists()


def test_overwrite_only_replaces_a_provable_store(tmp_path):
    other = tmp_path / "thesis"
    other.mkdir()
    (other / "chapter1.tex").write_text("months of work")
    for args in (("synth", "--out", other, "--chips", 16, "--chip-size", 16, "--overwrite"),
                 ("synth", "--out", other, "--chips", 16, "--chip-size", 16)):
        one_line_error(cli(*args), "not an earthembed chip store")
    assert _files(other) == ["chapter1.tex"]


def test_overwrite_never_deletes_user_files_kept_in_a_store(store):
    (store / "notes.txt").write_text("mine")
    one_line_error(cli("synth", "--out", store, "--chips", 16, "--chip-size", 16, "--overwrite"), "notes.txt")
    assert (store / "notes.txt").read_text() == "mine" and len(ChipStore(store)) == 32
    (store / "notes.txt").unlink()
    assert cli("synth", "--out", store, "--chips", 16, "--chip-size", 16, "--overwrite").exit_code == 0
    assert len(ChipStore(store)) == 16


def test_embed_refuses_an_existing_output_unless_overwrite_and_only_replaces_a_table(model_dir, store, tmp_path):
    out = tmp_path / "emb.parquet"
    out.write_text("someone's results")
    one_line_error(cli("embed", "--checkpoint", model_dir, "--store", store, "--out", out, "--quiet"), "already exists")
    one_line_error(cli("embed", "--checkpoint", model_dir, "--store", store, "--out", out, "--quiet", "--overwrite"),
                   "not an earthembed embedding table")
    assert out.read_text() == "someone's results"
    out.unlink()
    embed_store(model_dir, store, out, progress=False)
    first = pq.read_table(out)
    embed_store(model_dir, store, out, progress=False, overwrite=True)
    assert pq.read_table(out).equals(first)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.parquet", "store"]  # no .tmp, .parts or .lock left


def test_embed_refuses_an_output_inside_a_store(model_dir, store):
    index = (store / "index.parquet").read_bytes()
    for out in (store / "index.parquet", store / "emb.parquet"):
        one_line_error(cli("embed", "--checkpoint", model_dir, "--store", store, "--out", out, "--quiet",
                           "--overwrite"), "inside the chip store")
    assert (store / "index.parquet").read_bytes() == index and not (store / "emb.parquet").exists()


def test_embed_refuses_a_directory_it_did_not_make_before_computing(model_dir, store, tmp_path):
    out = tmp_path / "results"  # a directory --out is a sharded embedding dataset: never among a user's files
    out.mkdir()
    (out / "thesis.tex").write_text("months of work")
    for extra in ([], ["--overwrite"]):
        one_line_error(cli("embed", "--checkpoint", model_dir, "--store", store, "--out", out, "--quiet", *extra),
                       str(out), "is not an earthembed embedding dataset")
    assert _files(out) == ["thesis.tex"] and sorted(p.name for p in tmp_path.iterdir()) == ["results", "store"]


def test_embed_never_removes_a_parts_folder_it_did_not_make(model_dir, store, tmp_path):
    parts = tmp_path / "emb.parquet.parts"
    parts.mkdir()
    (parts / "photo.jpg").write_bytes(b"precious")
    one_line_error(cli("embed", "--checkpoint", model_dir, "--store", store, "--out", tmp_path / "emb.parquet",
                       "--quiet", "--restart"), "did not write")
    assert (parts / "photo.jpg").read_bytes() == b"precious"


def test_a_second_writer_fails_at_once_naming_the_holder(model_dir, store, tmp_path):
    out = tmp_path / "emb.parquet"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom earthembed.outputs import OutputLock\n"
         "held = [OutputLock(sys.argv[1], sys.argv[2]).acquire(), OutputLock(sys.argv[3], sys.argv[4]).acquire()]\n"
         "print('held', flush=True); time.sleep(60)",
         str(out), str(out) + ".lock", str(store), str(store / ".earthembed.lock")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        pid = f"pid {holder.pid}"
        with pytest.raises(LockedError, match=pid):
            embed_store(model_dir, store, out, progress=False)
        assert not out.exists()
        one_line_error(cli("stats", store), pid, "being written by")
        one_line_error(cli("synth", "--out", store, "--chips", 16, "--chip-size", 16, "--overwrite"), pid)
    finally:
        holder.kill()
        holder.wait()
    assert len(ChipStore(store)) == 32  # untouched
    with StoreWriter(tmp_path / "new", [get_modality("s2_l1c")], 8) as w:  # and within one process
        with pytest.raises(LockedError, match=f"pid {os.getpid()}"):
            StoreWriter(tmp_path / "new", [get_modality("s2_l1c")], 8)
        w.add(ChipRecord("a", {"s2": np.ones((13, 8, 8), "uint16")}))


def test_commands_added_since_refuse_to_replace_a_file_or_the_store_index(clean_store, emb_table, tmp_path):
    """The losses of issue 20, each by its own command line (every command: tests/test_write_policy.py)."""
    index = (clean_store / "index.parquet").read_bytes()
    common = ["--embeddings", emb_table, "--store", clean_store]
    for args in (["predict", *common, "--task", "landcover", "--estimator", "knn"],
                 ["search", *common, "--positive", "synth_r0000_c0000", "--exact"]):
        one_line_error(cli(*args, "--out", clean_store / "index.parquet", "--overwrite"), "inside the input")
        one_line_error(cli(*args, "--out", emb_table, "--overwrite"), "is the input")
    mine = tmp_path / "mine.png"
    mine.write_bytes(b"my holiday photo")
    one_line_error(cli("map", "--table", clean_store, "--column", "landcover", "--out", tmp_path / "mine.tif",
                       "--overwrite"), "mine.png", "not an earthembed PNG")
    assert mine.read_bytes() == b"my holiday photo" and not (tmp_path / "mine.tif").exists()
    assert (clean_store / "index.parquet").read_bytes() == index and len(ChipStore(clean_store)) == 32


# == 2. damaged or odd inputs fail loudly ================================================================
def test_a_deleted_chunk_is_an_error_naming_store_array_and_chips(store, model_dir, tmp_path):
    (store / "arrays.zarr" / "s2" / "c" / "1" / "0" / "0" / "0").unlink()
    one_line_error(cli("info", store), str(store), "arrays.zarr/s2", "chips 16-31", "missing")
    one_line_error(cli("embed", "--checkpoint", model_dir, "--store", store, "--out", tmp_path / "e.parquet",
                       "--quiet"), "arrays.zarr/s2", "chips 16-31")


def test_a_chunk_deleted_while_a_store_is_open_is_caught_at_read_time(store):
    st = ChipStore(store)
    (store / "arrays.zarr" / "s1" / "c" / "0" / "0" / "0" / "0").unlink()
    with pytest.raises(StoreError, match=r"arrays.zarr/s1, chips 0-15: chunk file .* is missing"):
        st.read("s1", [3, 20])


def test_a_corrupt_chunk_is_named_at_read_time_and_by_verify(store):
    chunk = store / "arrays.zarr" / "s2" / "c" / "1" / "0" / "0" / "0"
    chunk.write_bytes(os.urandom(chunk.stat().st_size))
    with pytest.raises(StoreError, match=rf"arrays.zarr/s2, chips 16-31: chunk file {chunk} cannot be decoded"):
        ChipStore(store).read("s2", slice(0, 32))
    r = cli("verify", store, "--quiet")
    assert r.exit_code == 1 and "chips 16-31" in r.output and "cannot be decoded" in r.output


def test_verify_passes_a_sound_store_and_lists_every_problem(store):
    r = cli("verify", store, "--quiet")
    assert r.exit_code == 0 and "ok (32 chips" in r.output, r.output
    meta = json.loads((store / "earthembed.json").read_text())
    meta["stats"]["s2"]["std"][0] = float("nan")
    (store / "earthembed.json").write_text(json.dumps(meta))
    (store / "arrays.zarr" / "dem" / "c" / "0" / "0" / "0" / "0").unlink()
    r = cli("verify", store, "--json")
    rep = json.loads(r.output)
    assert r.exit_code == 1 and not rep["ok"] and len(rep["problems"]) == 2
    assert any("arrays.zarr/dem" in p for p in rep["problems"]) and any("not finite" in p for p in rep["problems"])
    meta["complete"] = False  # an interrupted ingest
    (store / "earthembed.json").write_text(json.dumps(meta))
    r = cli("verify", store, "--quiet")
    assert r.exit_code == 1 and "store is incomplete" in r.output


def test_chunks_that_are_all_fill_value_are_still_written_so_missing_always_means_damage(tmp_path):
    rgb = get_modality("rgb")  # no nodata: a black image is data, and equals the fill value 0
    with StoreWriter(tmp_path / "st", [rgb], 8, batch_size=8) as w:
        for i in range(20):
            w.add(ChipRecord(f"c{i}", {"rgb": np.full((3, 8, 8), 0 if i < 16 else 9, "uint8")}))
    assert (tmp_path / "st" / "arrays.zarr" / "rgb" / "c" / "0" / "0" / "0" / "0").exists()
    assert ChipStore(tmp_path / "st").read("rgb", 3).max() == 0


def test_index_with_rows_removed_is_detected(store):
    t = pq.read_table(store / "index.parquet")
    pq.write_table(t.slice(0, 28), store / "index.parquet")
    one_line_error(cli("info", store), "index.parquet: has 28 rows", "32 chips")


def test_non_finite_embeddings_of_a_present_modality_are_an_error_naming_the_chips(model_dir, store, tmp_path):
    model, meta = load_model(model_dir)
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    out = tmp_path / "e.parquet"
    with pytest.raises(ValueError, match=r"non-finite \(NaN/Inf\) emb_\w+ for \d+ chips \(synth_r"):
        embed_store(model, store, out, meta=meta, progress=False)
    assert not out.exists()
    # the same weights exported are refused when loaded, naming the file
    export_model(model, tmp_path / "nan_export", Normalizer.from_dict(meta["normalization"]))
    with pytest.raises(ValueError, match=r"model.safetensors: tensors .* hold NaN/Inf"):
        load_model(tmp_path / "nan_export")


def test_a_missing_embedding_is_null_never_zeros():
    x = np.ones((3, 4), np.float32)
    x[1] = np.nan
    col = fixed_size_list(x)
    assert col.is_null().to_pylist() == [False, True, False]
    x[2, 0] = np.inf
    with pytest.raises(ValueError, match=r"rows \[2\]"):
        fixed_size_list(x)
    with pytest.raises(ValueError, match=r"rows \[1\]"):  # present per the mask but NaN: never nan_to_num
        fixed_size_list(np.where(np.isnan(x), np.nan, 1.0), valid=np.array([True, True, True]))


def test_non_finite_pixels_become_nodata_and_statistics_stay_finite(tmp_path):
    s2, s1 = get_modality("s2_l1c"), get_modality("s1_grd_db")
    with StoreWriter(tmp_path / "st", [s2, s1], 8) as w:
        for i in range(4):
            a2 = np.full((13, 8, 8), 100.0 + i)
            a2[0, 0, 0] = np.inf  # float input for a uint16 modality
            a1 = np.full((2, 8, 8), -10.0 - i, np.float32)
            a1[0, :2], a1[1, :2] = np.inf, -np.inf
            w.add(ChipRecord(f"c{i}", {"s2": a2, "s1": a1}))
    st = ChipStore(tmp_path / "st")
    assert st.read("s2", 0)[0, 0, 0] == 0 and np.isnan(st.read("s1", 0)[:, :2]).all()
    meta = strict_json(tmp_path / "st" / "earthembed.json")
    assert meta["stats"]["s1"]["mean"] == pytest.approx([-11.5, -11.5]) and meta["stats"]["s2"]["count"][0] == 4 * 63
    with pytest.raises(ValueError, match="non-finite"):
        write_json(tmp_path / "x.json", {"mean": float("inf")})


def test_a_band_without_valid_pixels_has_no_statistics_and_is_never_guessed(tmp_path):
    with StoreWriter(tmp_path / "st", [get_modality("s2_l1c")], 8) as w:
        for i in range(3):
            a = np.ones((13, 8, 8), "uint16")
            a[3] = 0  # B04 is nodata everywhere
            w.add(ChipRecord(f"c{i}", {"s2": a}))
    st = ChipStore(tmp_path / "st")
    s2 = strict_json(tmp_path / "st" / "earthembed.json")["stats"]["s2"]
    assert s2["mean"][3] is None and s2["count"][3] == 0 and s2["mean"][2] == 1.0
    norm = Normalizer.from_store(st)
    with pytest.raises(ValueError, match=r"no normalisation statistics for s2 bands \['B04'\]"):
        norm(st.read("s2", [0]), "s2", st.band_names("s2"))
    assert norm(st.read("s2", [0], ["B03"]), "s2", ["B03"]).abs().max() == 0  # the other bands work
    inf = Normalizer({"s2": {"bands": ["B03"], "mean": [float("inf")], "std": [1.0]}})  # e.g. an older model.json
    with pytest.raises(ValueError, match=r"non-finite normalisation statistics for s2 bands \['B03 \(mean inf"):
        inf(st.read("s2", [0], ["B03"]), "s2", ["B03"])


def test_a_store_with_non_finite_statistics_is_refused_until_stats_recomputes_them(store):
    meta = json.loads((store / "earthembed.json").read_text())
    meta["stats"]["s2"]["mean"][3] = float("inf")
    (store / "earthembed.json").write_text(json.dumps(meta))
    one_line_error(cli("info", store), "statistics of s2 are not finite", "B04 mean=inf", "earthembed stats")
    assert cli("stats", store).exit_code == 0
    assert np.isfinite(strict_json(store / "earthembed.json")["stats"]["s2"]["mean"]).all()


def test_an_all_nodata_image_counts_as_absent(tmp_path):
    s2, s1 = get_modality("s2_l1c"), get_modality("s1_grd_db")
    with StoreWriter(tmp_path / "st", [s2, s1], 8) as w:
        w.add(ChipRecord("ok", {"s2": np.ones((13, 8, 8), "uint16"), "s1": np.zeros((2, 8, 8), np.float32)}))
        w.add(ChipRecord("no_s1", {"s2": np.ones((13, 8, 8), "uint16"), "s1": np.full((2, 8, 8), np.nan, np.float32)}))
        w.add(ChipRecord("blank", {"s2": np.zeros((13, 8, 8), "uint16")}, source="blank.tif"))  # 0 = s2 nodata
    st = ChipStore(tmp_path / "st")
    assert st.index["chip_id"].tolist() == ["ok", "no_s1"] and st.index["has_s1"].tolist() == [True, False]
    assert "entirely nodata" in st.report()["skipped"][0]["reason"]
    # a store written before this rule marked such images present: readers still treat them as absent
    idx = pq.read_table(tmp_path / "st" / "index.parquet").to_pandas()
    idx["has_s1"] = True
    idx.to_parquet(tmp_path / "st" / "index.parquet")
    assert ChipStore(tmp_path / "st").present("s1").tolist() == [True, False]


def test_fewshot_reports_classes_absent_from_test_or_smaller_than_the_budget(tmp_path):
    from earthembed.evaluate.fewshot import run_fewshot

    schema = {"label": {"kind": "class", "classes": ["a", "b", "rare"]}}
    with StoreWriter(tmp_path / "st", [get_modality("s2_l1c")], 8, schema) as w:
        for i in range(13):
            cls, split = ("rare", "train") if i == 12 else ("ab"[i % 2], ["train", "train", "test"][i % 3])
            w.add(ChipRecord(f"c{i}", {"s2": np.full((13, 8, 8), i + 1, "uint16")}, split=split, labels={"label": cls}))
    ids = ChipStore(tmp_path / "st").index["chip_id"].tolist()
    emb = write_embedding_table(tmp_path / "e.parquet", ids, {"emb_fused": np.random.default_rng(0).normal(size=(13, 4))})
    run_fewshot({"e": emb}, tmp_path / "st", "label", tmp_path / "few", budgets="1,5", seeds=(0,), estimators="knn",
                baselines="none", n_boot=5)
    md = (tmp_path / "few" / "summary.md").read_text()
    assert md.startswith("## Warnings")
    assert "absent from the test split (training chips): {'rare': 1}" in md
    assert "fewer training chips than the largest budget (5 per class): {'a': 4, 'b': 4, 'rare': 1}" in md


def test_nan_inside_an_embedding_is_named_as_nan_in_the_table(clean_store, emb_table, tmp_path):
    t = pq.read_table(emb_table)
    x = np.stack(t.column("emb_fused").to_pylist()).astype(np.float32)
    x[5, 2] = np.nan  # damage: a present embedding with a NaN (a missing one is a null row)
    col = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])
    bad = tmp_path / "bad.parquet"
    pq.write_table(t.set_column(t.schema.get_field_index("emb_fused"), "emb_fused", col), bad)
    nan = ("bad.parquet", "'emb_fused' holds NaN/Inf values in 1 row(s)", "synth_r0000_c0005")
    for args in (["predict", "--embeddings", bad, "--store", clean_store, "--task", "landcover", "--out", tmp_path / "p.parquet"],
                 ["fewshot", "--embeddings", bad, "--store", clean_store, "--task", "landcover", "--baselines", "none",
                  "--out", tmp_path / "few"],
                 ["plot-embeddings", bad, "--color-by", "split", "--out", tmp_path / "p.png"],
                 ["index", "--embeddings", bad],
                 ["search", "--embeddings", bad, "--positive", "synth_r0000_c0000", "--out", tmp_path / "h.parquet"],
                 ["map", "--table", bad, "--column", "emb_fused", "--store", clean_store, "--out", tmp_path / "m.tif"]):
        one_line_error(cli(*args), *nan)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.parquet"]


def test_a_store_given_where_a_table_is_expected_is_named_as_such(clean_store, model_dir, tmp_path):
    for args in (["index", "--embeddings", clean_store],
                 ["search", "--embeddings", clean_store, "--positive", "synth_r0000_c0000", "--out", tmp_path / "h.parquet"],
                 ["predict", "--embeddings", clean_store, "--store", clean_store, "--task", "landcover",
                  "--out", tmp_path / "p.parquet"]):
        one_line_error(cli(*args), str(clean_store), "--embeddings is a chip store, not an embedding table",
                       "earthembed embed --store")
    assert list(tmp_path.iterdir()) == []
    other = tmp_path / "other"
    other.mkdir()
    one_line_error(cli("index", "--embeddings", other), "other: --embeddings is a directory, not an embedding table")
    # a sharded embedding dataset is a directory too, and a table
    assert cli("embed", "--checkpoint", model_dir, "--store", clean_store, "--out", f"{tmp_path / 'ds'}/",
               "--quiet").exit_code == 0
    assert cli("index", "--embeddings", tmp_path / "ds", "--quiet").exit_code == 0


def test_a_damaged_faiss_index_or_sidecar_names_the_file_and_the_way_out(emb_table, tmp_path):
    emb = Path(shutil.copy(emb_table, tmp_path / "emb.parquet"))
    assert cli("index", "--embeddings", emb, "--kind", "ivf", "--nlist", 2, "--quiet").exit_code == 0
    index, side = tmp_path / "emb.parquet.emb_fused.faiss", tmp_path / "emb.parquet.emb_fused.faiss.json"
    good_index, good_side = index.read_bytes(), side.read_text()
    search = ["search", "--embeddings", emb, "--positive", "synth_r0000_c0000", "--k", 3, "--out", tmp_path / "h.parquet"]
    way_out = ("rebuild with `earthembed index", "search with `--exact`")
    index.write_bytes(good_index[: len(good_index) // 2])  # truncated
    one_line_error(cli(*search), str(index), "not a readable faiss index", *way_out)
    index.write_bytes(b"garbage" * 50)
    one_line_error(cli(*search), str(index), "not a readable faiss index", *way_out)
    index.write_bytes(good_index)
    for bad in ("{not json", "[1, 2]", json.dumps({k: v for k, v in json.loads(good_side).items() if k != "nlist"})):
        side.write_text(bad)
        one_line_error(cli(*search), str(side), "not a readable index sidecar", *way_out)
    assert not (tmp_path / "h.parquet").exists()
    side.write_text(good_side)
    assert cli(*search).exit_code == 0 and cli(*search[:-2], "--exact", "--out", tmp_path / "x.parquet").exit_code == 0


def test_map_estimates_the_grid_first_and_refuses_a_huge_one(clean_store, tmp_path):
    r = cli("map", "--table", clean_store, "--column", "landcover", "--out", tmp_path / "m.tif", "--pixel-size", 0.001)
    one_line_error(r, "m.tif: the map would be", "px (", "GiB) at --pixel-size 0.001", "choose a larger --pixel-size, e.g.")
    suggestion = float(r.output.split("e.g. ")[1].split()[0])
    assert list(tmp_path.iterdir()) == []
    assert cli("map", "--table", clean_store, "--column", "landcover", "--out", tmp_path / "m.tif",
               "--pixel-size", suggestion).exit_code == 0  # the suggestion works


def test_report_refuses_an_image_that_is_not_one_and_a_directory_that_is_not_fewshot_output(tmp_path):
    out = tmp_path / "r.html"
    text = tmp_path / "notes.png"
    text.write_text("not an image at all")
    one_line_error(cli("report", "--image", text, "--out", out), "notes.png: --image is not a readable image")
    png = tmp_path / "ok.png"
    Image.new("RGB", (4, 4)).save(png)
    png.with_name("cut.png").write_bytes(png.read_bytes()[:40])
    one_line_error(cli("report", "--image", tmp_path / "cut.png", "--out", out), "cut.png: --image is not a readable image")
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line_error(cli("report", "--fewshot", empty, "--out", out), "empty: --fewshot has no results.csv")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "results.csv").write_text("a,b\n1,2\n")
    one_line_error(cli("report", "--fewshot", tmp_path / "other", "--out", out), "--fewshot is not `earthembed fewshot` output")
    seg = tmp_path / "seg"
    (seg / "cells").mkdir(parents=True)
    one_line_error(cli("report", "--fewshot", seg, "--out", out), "--fewshot is an earthembed segment output directory")
    assert not out.exists()
    assert cli("report", "--image", png, "--out", out).exit_code == 0


def test_fewshot_warns_about_a_constant_feature_set(clean_store, tmp_path):
    ids = ChipStore(clean_store).index["chip_id"].tolist()
    zero = write_embedding_table(tmp_path / "zero.parquet", ids, {"emb_fused": np.zeros((32, 8))})
    r = cli("fewshot", "--embeddings", f"zero={zero}", "--store", clean_store, "--task", "landcover", "--baselines",
            "band_stats", "--seeds", 1, "--estimators", "knn", "--budgets", "1,all", "--n-boot", 5, "-q",
            "--out", tmp_path / "few")
    assert r.exit_code == 0, r.output
    warned = [ln for ln in r.output.splitlines() if ln.startswith("warning:")]
    assert len(warned) == 1 and "feature set zero:emb_fused" in warned[0] and "constant" in warned[0], warned
    assert "band_stats" not in warned[0]
    md = (tmp_path / "few" / "summary.md").read_text()
    assert md.startswith("## Warnings") and "zero:emb_fused (" in md.split("## Full")[0]


# == 3. every error is one line naming the file and the problem ==========================================
def test_a_tiff_decompression_bomb_is_skipped_with_a_reason(images, tmp_path):
    import rasterio

    bomb = images / "water" / "bomb.tif"
    with rasterio.open(bomb, "w", driver="GTiff", width=40000, height=40000, count=3, dtype="uint8",
                       tiled=True, compress="deflate", sparse_ok=True):
        pass  # declares 40000 x 40000 x 3 px, stores (almost) nothing
    assert bomb.stat().st_size < 2_000_000
    r = cli("ingest", "folder", images, "--out", tmp_path / "st")
    assert r.exit_code == 0, r.output
    (skip,) = json.loads((tmp_path / "st" / "ingest_report.json").read_text())["skipped"]
    assert skip["item"] == str(bomb) and "40000x40000 px x 3 bands" in skip["reason"] and "decompression bomb" in skip["reason"]
    assert len(ChipStore(tmp_path / "st")) == 8


def test_a_malicious_or_corrupt_checkpoint_is_refused_in_one_line(store, tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"state_dict": {}, "x": Evil()}, tmp_path / "evil.ckpt")
    one_line_error(cli("export-checkpoint", "--ckpt", tmp_path / "evil.ckpt", "--store", store, "--out", tmp_path / "x"),
                   "evil.ckpt: refused: loading it would run code", "system")
    assert not marker.exists() and not (tmp_path / "x").exists()
    # garbage fails the unpickler in many ways: every one is the same refusal, never a traceback
    corrupt = tmp_path / "corrupt.ckpt"
    causes = set()
    for seed in range(200):
        corrupt.write_bytes(np.random.default_rng(seed).bytes(256))
        with pytest.raises(ValueError, match="corrupt.ckpt: not a readable checkpoint") as err:
            read_checkpoint(corrupt)
        causes.add(type(err.value.__cause__).__name__)
    assert {"UnpicklingError", "IndexError", "KeyError", "UnicodeDecodeError"} <= causes
    torch.save({"state_dict": {}}, tmp_path / "ok.ckpt")
    corrupt.write_bytes((tmp_path / "ok.ckpt").read_bytes()[:200])  # truncated
    one_line_error(cli("export-checkpoint", "--ckpt", corrupt, "--store", store, "--out", tmp_path / "x"),
                   "corrupt.ckpt: not a readable checkpoint (corrupt or truncated?)")


def test_a_malicious_last_ckpt_is_refused_on_resume(store, tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)

    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    torch.save({"x": Evil()}, run / "checkpoints" / "last.ckpt")
    one_line_error(cli("pretrain", "--config", "contrastive_tiny", "--store", store, "--out", run,
                       "train.max_steps=1", "model.modalities=[s2]", "data.crop_size=16"),
                   "last.ckpt: refused: loading it would run code")


def test_a_bad_config_value_names_its_key(store, tmp_path):
    one_line_error(cli("pretrain", "--config", "contrastive_tiny", "--store", store, "--out", tmp_path / "run",
                       "train.max_steps=abc"), "train.max_steps must be an integer", "'abc'")


def test_edited_store_metadata_names_the_file_and_key(store):
    meta = json.loads((store / "earthembed.json").read_text())
    del meta["modalities"]
    (store / "earthembed.json").write_text(json.dumps(meta))
    one_line_error(cli("info", store), "earthembed.json: missing key 'modalities'")


def test_edited_model_json_names_the_file_and_key(model_dir, store, tmp_path):
    bad = Path(shutil.copytree(model_dir, tmp_path / "export"))
    meta = json.loads((bad / "model.json").read_text())
    del meta["modalities"]
    (bad / "model.json").write_text(json.dumps(meta))
    one_line_error(cli("embed", "--checkpoint", bad, "--store", store, "--out", tmp_path / "e.parquet", "--quiet"),
                   "model.json: key 'modalities' missing")
    meta = json.loads((model_dir / "model.json").read_text())
    meta["config"]["embed_dim"] = "sixteen"
    (bad / "model.json").write_text(json.dumps(meta))
    one_line_error(cli("embed", "--checkpoint", bad, "--store", store, "--out", tmp_path / "e.parquet", "--quiet"),
                   "model.json: 'config' does not build")


def test_weights_of_the_wrong_shape_are_one_line_naming_the_file(model_dir, store, tmp_path):
    from safetensors.torch import load_file, save_file

    bad = Path(shutil.copytree(model_dir, tmp_path / "export"))
    state = load_file(bad / "model.safetensors")
    name = next(k for k, v in state.items() if v.ndim == 2)
    state[name] = torch.zeros(3, 5)
    save_file(state, bad / "model.safetensors")
    one_line_error(cli("embed", "--checkpoint", bad, "--store", store, "--out", tmp_path / "e.parquet", "--quiet"),
                   "model.safetensors: weights do not match the config in model.json", name)


def test_unexpected_errors_are_one_line_and_debug_shows_the_traceback(store, monkeypatch):
    def boom(self):
        raise TypeError("boom")

    monkeypatch.setattr(ChipStore, "info", boom)
    one_line_error(cli("info", store), "TypeError: boom", "--debug")
    r = cli("--debug", "info", store)
    assert r.exit_code == 1 and isinstance(r.exception, TypeError)


def test_lock_files_do_not_outlive_their_holder(tmp_path):
    target = tmp_path / "out.parquet"
    with OutputLock(target, tmp_path / "out.parquet.lock") as lock:
        assert lock.is_locked and json.loads((tmp_path / "out.parquet.lock").read_text())["pid"] == os.getpid()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(OutputError, match="is the input"):
        from earthembed.outputs import check_output_location

        check_output_location(tmp_path, [tmp_path])
