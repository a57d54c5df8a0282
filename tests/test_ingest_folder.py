import json

import numpy as np
import pytest
import rasterio
import typer
from PIL import Image
from rasterio.transform import from_origin
from typer.testing import CliRunner

from earthembed.data.ingest.cli import folder as command
from earthembed.data.ingest.common import IngestError
from earthembed.data.ingest.folder import ingest_folder
from earthembed.data.ingest.splits import stratified_splits
from earthembed.data.modalities import get_modality
from earthembed.data.store import ChipStore, StoreError

S2_FILE_ORDER = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11", "B12", "B8A"]


def _png(path, value, size=20):
    a = np.zeros((size, size, 3), np.uint8)
    a[..., 0], a[..., 1], a[..., 2] = value, np.arange(size)[None, :], np.arange(size)[:, None]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path)
    return a


def _tif(path, bands, size=16, value=0, georef=True):
    a = (np.arange(bands, dtype=np.uint16)[:, None, None] * 100 + value + np.zeros((1, size, size), np.uint16))
    path.parent.mkdir(parents=True, exist_ok=True)
    kw = {"crs": "EPSG:32631", "transform": from_origin(500000, 4600000, 10, 10)} if georef else {}
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=bands, dtype="uint16", **kw) as d:
        d.write(a)
    return a


@pytest.fixture
def png_dataset(tmp_path):
    src = tmp_path / "pets"
    imgs = {}
    for i in range(5):
        imgs[f"forest/f{i}.png"] = _png(src / "forest" / f"f{i}.png", 10 + i)
    for i in range(5):
        imgs[f"water/w{i}.png"] = _png(src / "water" / f"w{i}.png", 100 + i)
    big = np.full((24, 28, 3), 200, np.uint8)
    big[2:22, 4:24] = 50  # the centre 20x20 crop is exactly this block
    Image.fromarray(big).save(src / "water" / "w9.jpg", quality=95)
    (src / "forest" / "notes.txt").write_text("not an image")
    (src / "forest" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    _png(src / "water" / "tiny.png", 1, size=10)
    (src / "README.md").write_text("stray")
    (src / "water" / ".DS_Store").write_bytes(b"x")
    return src, imgs


def test_png_jpeg_rgb_dataset(png_dataset, tmp_path):
    src, imgs = png_dataset
    st = ingest_folder(src, tmp_path / "st")
    assert st.chip_size == 20
    assert st.modalities["rgb"].band_names == ["R", "G", "B"]
    idx = st.index
    assert len(st) == 11
    assert st.labels["label"]["classes"] == ["forest", "water"]
    assert idx["label"].value_counts().to_dict() == {"water": 6, "forest": 5}
    assert idx.geometry.isna().all()
    for chip_id, a in imgs.items():
        i = idx.index[idx["chip_id"] == chip_id][0]
        np.testing.assert_array_equal(st.read("rgb", int(i)), a.transpose(2, 0, 1))
    j = idx.index[idx["chip_id"] == "water/w9.jpg"][0]
    assert abs(float(st.read("rgb", int(j)).mean()) - 50) < 3  # centre crop of the JPEG
    # deterministic stratified 60/20/20 split over each class's image files (forest 6, water 7)
    for cls in ("forest", "water"):
        files = sorted(p.relative_to(src).as_posix() for p in (src / cls).iterdir() if p.suffix in (".png", ".jpg"))
        expect = stratified_splits({'_': files})
        assert sorted(expect.values()).count("train") == {"forest": 4, "water": 4}[cls]
        sub = idx[idx["label"] == cls]
        assert dict(zip(sub["chip_id"], sub["split"], strict=True)) == {k: v for k, v in expect.items() if k in set(sub["chip_id"])}
    skipped = {s["item"]: s["reason"] for s in st.report()["skipped"]}
    assert "not an image" in skipped[str(src / "forest" / "notes.txt")]
    broken = str(src / "forest" / "broken.png")
    assert broken in skipped[broken] and "cannot read image" in skipped[broken]
    assert "smaller than the chip size" in skipped[str(src / "water" / "tiny.png")]
    assert "not inside a class folder" in skipped[str(src / "README.md")]
    assert len(skipped) == 4  # .DS_Store is ignored


def test_split_is_order_independent():
    files = [f"c/{i}.png" for i in range(10)]
    a, b = stratified_splits({'_': files}), stratified_splits({'_': list(reversed(files))})
    assert a == b
    assert sorted(a.values()).count("train") == 6


def test_multiband_tiff_with_modality(tmp_path):
    src = tmp_path / "eurosat"
    arrays = {}
    for cls in ("Forest", "River"):
        for i in range(3):
            arrays[f"{cls}/{i}.tif"] = _tif(src / cls / f"{i}.tif", 13, value=i + (0 if cls == "Forest" else 50))
    _tif(src / "River" / "odd.tif", 12)
    st = ingest_folder(src, tmp_path / "st", modality="s2_l1c", bands=S2_FILE_ORDER)
    assert list(st.modalities) == ["s2"]
    assert st.band_names("s2") == S2_FILE_ORDER
    assert len(st) == 6
    idx = st.index
    for chip_id, a in arrays.items():
        i = int(idx.index[idx["chip_id"] == chip_id][0])
        np.testing.assert_array_equal(st.read("s2", i), a)
        # band reordering by name: B8A is the 13th band of the file
        np.testing.assert_array_equal(st.read("s2", i, bands=["B8A"])[0], a[12])
    assert idx.geometry.notna().all() and (idx["crs"] == "EPSG:32631").all()
    minx, miny, maxx, maxy = idx.geometry.iloc[0].bounds
    assert 2.9 < minx < 3.1 and 41.5 < miny < 41.6  # EPSG:32631 (500000, 4600000) is lon 3, lat ~41.55
    odd = str(src / "River" / "odd.tif")
    (reason,) = [s["reason"] for s in st.report()["skipped"] if s["item"] == odd]
    assert odd in reason and "has 12 bands, expected 13" in reason


def test_multiband_tiff_needs_modality_and_three_band_tiff_is_rgb(tmp_path):
    src = tmp_path / "ms"
    _tif(src / "a" / "0.tif", 13)
    _tif(src / "b" / "0.tif", 13)
    with pytest.raises(IngestError, match=r"0\.tif: has 13 bands.*--modality"):
        ingest_folder(src, tmp_path / "st")
    assert not (tmp_path / "st").exists()
    src3 = tmp_path / "rgbtif"
    _tif(src3 / "a" / "0.tif", 3, georef=False)
    _tif(src3 / "b" / "0.tif", 3, georef=False)
    st = ingest_folder(src3, tmp_path / "st3")
    assert st.modalities["rgb"].product == "rgb" and st.index.geometry.isna().all()
    st2 = ingest_folder(src3, tmp_path / "st4", modality="s2_l2a", bands=["B04", "B03", "B02"], chip_size=8)
    assert st2.band_names("s2") == ["B04", "B03", "B02"] and st2.chip_size == 8
    np.testing.assert_array_equal(st2.read("s2", 0)[:, 0, 0], [0, 100, 200])


def test_split_folders_and_resume(tmp_path):
    src = tmp_path / "ds"
    for split, n in (("train", 3), ("val", 1), ("test", 2)):
        for cls in ("a", "b"):
            for i in range(n):
                _png(src / split / cls / f"{i}.png", i)
    st = ingest_folder(src, tmp_path / "st")
    assert st.index["split"].value_counts().to_dict() == {"train": 6, "test": 4, "val": 2}
    assert (st.index["split"] == st.index["chip_id"].str.split("/").str[0]).all()
    with pytest.raises(StoreError, match="complete store already exists"):
        ingest_folder(src, tmp_path / "st")
    assert len(ChipStore(tmp_path / "st")) == 12
    (src / "other").mkdir()
    with pytest.raises(IngestError, match="split folders"):
        ingest_folder(src, tmp_path / "st2")


def test_interrupted_folder_ingest_resumes(png_dataset, tmp_path, monkeypatch):
    from earthembed.data.ingest import folder

    src, _ = png_dataset
    real, calls = folder.read_image, []

    def flaky(path):
        calls.append(path)
        if len(calls) == 6:
            raise RuntimeError("killed")
        return real(path)

    monkeypatch.setattr(folder, "read_image", flaky)
    with pytest.raises(RuntimeError, match="killed"):
        ingest_folder(src, tmp_path / "st", batch_size=2)
    monkeypatch.setattr(folder, "read_image", real)
    st = ingest_folder(src, tmp_path / "st", batch_size=2)
    assert len(st) == 11 and st.index["chip_id"].is_unique


def test_empty_and_malformed_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(IngestError, match="empty"):
        ingest_folder(tmp_path / "empty", tmp_path / "o1")
    (tmp_path / "flat").mkdir()
    _png(tmp_path / "flat" / "x.png", 1)
    with pytest.raises(IngestError, match="no class subfolders"):
        ingest_folder(tmp_path / "flat", tmp_path / "o2")
    with pytest.raises(IngestError, match="not found"):
        ingest_folder(tmp_path / "missing", tmp_path / "o3")
    bad = tmp_path / "bad"
    (bad / "a").mkdir(parents=True)
    (bad / "a" / "x.png").write_bytes(b"nope")
    (bad / "b").mkdir()
    (bad / "b" / "y.png").write_bytes(b"nope")
    with pytest.raises(IngestError, match="no readable image"):
        ingest_folder(bad, tmp_path / "o4")
    with pytest.raises(KeyError, match="unknown modality"):
        ingest_folder(_two_classes(tmp_path), tmp_path / "o5", modality="nope")
    for o in ("o1", "o2", "o3", "o4", "o5"):
        assert not (tmp_path / o).exists()


def _two_classes(tmp_path):
    _png(tmp_path / "two" / "a" / "x.png", 1)
    _png(tmp_path / "two" / "b" / "x.png", 2)
    return tmp_path / "two"


def test_src_one_level_too_high_or_one_class_is_refused(tmp_path):
    src = tmp_path / "SRC"
    for cls in ("cats", "dogs"):
        for i in range(3):
            _png(src / "data" / cls / f"{i}.png", i)
    # before: every chip was silently labelled "data"
    with pytest.raises(IngestError, match=r"data: class folder 'data' holds images in subfolders \(cats, dogs\).*"
                       r"point SRC one level down: .*SRC/data"):
        ingest_folder(src, tmp_path / "o1")
    assert not (tmp_path / "o1").exists()
    st = ingest_folder(src / "data", tmp_path / "o2")  # the suggested fix works
    assert st.labels["label"]["classes"] == ["cats", "dogs"] and len(st) == 6
    # one level too high in the split layout too
    for split in ("train", "test"):
        _png(tmp_path / "S2" / split / "data" / "cats" / "0.png", 1)
        _png(tmp_path / "S2" / split / "data" / "dogs" / "0.png", 1)
    with pytest.raises(IngestError, match=r"test/data: class folder 'data' holds images in subfolders.*"
                       r"SRC/<split>/<class>/<image>.*move them up into .*S2/test"):
        ingest_folder(tmp_path / "S2", tmp_path / "o3")
    # a single class folder is not a classification dataset
    _png(tmp_path / "one" / "cats" / "0.png", 1)
    _png(tmp_path / "one" / "cats" / "1.png", 1)
    with pytest.raises(IngestError, match=r"one: only one class folder \(cats\) found; .*at least 2 classes"):
        ingest_folder(tmp_path / "one", tmp_path / "o4")
    assert not (tmp_path / "o4").exists()
    # subfolders without images (e.g. notes) are still fine: their files are skipped with a reason
    (src / "data" / "cats" / "meta").mkdir()
    (src / "data" / "cats" / "meta" / "info.txt").write_text("x")
    st = ingest_folder(src / "data", tmp_path / "o5")
    assert len(st) == 6 and "not an image" in st.report()["skipped"][0]["reason"]


def test_cli(png_dataset, tmp_path):
    src, _ = png_dataset
    app = typer.Typer()
    app.command("folder")(command)
    app.command("other")(lambda: None)  # keep "folder" a sub-command
    runner = CliRunner()
    r = runner.invoke(app, ["folder", str(src), "--out", str(tmp_path / "st"), "--chip-size", "16"])
    assert r.exit_code == 0, r.output
    assert "11 chips of 16 px" in r.output and "skipped 4" in r.output
    assert json.loads((tmp_path / "st" / "earthembed.json").read_text())["chip_size"] == 16
    r = runner.invoke(app, ["folder", str(src), "--out", str(tmp_path / "st2"), "--bands", "R,G"])
    assert r.exit_code == 1 and "error: --bands needs --modality" in r.output
    r = runner.invoke(app, ["folder", str(src), "--out", str(tmp_path / "st3"), "--modality", "rgb", "--bands", "R,X"])
    assert r.exit_code == 1 and "error:" in r.output and "'X'" in r.output
    yml = tmp_path / "mods.yaml"
    yml.write_text(
        "modalities:\n  - {name: cam, kind: optical, dtype: uint8, product: my_cam, bands: [red, green, blue]}\n"
    )
    r = runner.invoke(
        app, ["folder", str(src), "--out", str(tmp_path / "st4"), "--modality", "my_cam", "--modalities-file", str(yml)]
    )
    assert r.exit_code == 0, r.output
    assert ChipStore(tmp_path / "st4").band_names("cam") == ["red", "green", "blue"]
    assert get_modality("my_cam").name == "cam"


@pytest.mark.realdata
def test_eurosat_real(shared_data, tmp_path):
    src = shared_data / "eurosat-ms" / "EuroSAT_MS"
    st = ingest_folder(src, tmp_path / "st", modality="s2_l1c", bands=S2_FILE_ORDER)
    assert len(st) == 200 and st.chip_size == 64
    assert st.info()["labels"]["label"]["num_classes"] == 10
    idx = st.index
    i = int(idx.index[idx["chip_id"] == "Forest/Forest_1.tif"][0])
    with rasterio.open(src / "Forest" / "Forest_1.tif") as d:
        np.testing.assert_array_equal(st.read("s2", i, bands=["B8A", "B02"]), d.read([13, 2]))
    assert idx.geometry.notna().all()


def test_a_scene_sized_first_image_does_not_set_the_chip_size(tmp_path):
    """Without --chip-size the first image sets it: a 3000 px scene first would have made 3000 px chips (every
    smaller image skipped; at 12000 px the codec failed mid-ingest). Refused before anything is written, naming
    the file and the options that cut or resample it; a chip too large for a chunk is refused by the writer."""
    from earthembed.data.store import StoreWriter

    src = tmp_path / "ds"
    (src / "a").mkdir(parents=True)
    Image.fromarray(np.zeros((3000, 2500, 3), "uint8")).save(src / "a" / "big.png")
    _png(src / "b" / "x.png", 9)
    with pytest.raises(IngestError, match=r"big\.png: 3000x2500 px, the first image, would set the chip size to "
                                          r"2500 px .*--chip-size .*--tile"):
        ingest_folder(src, tmp_path / "st")
    assert not (tmp_path / "st").exists()
    store = ingest_folder(src, tmp_path / "st", chip_size=500, tile=True)
    assert len(store) == 30  # 6x5 tiles of the scene; the 20 px image is smaller than a chip
    with pytest.raises(ValueError, match=r"chip size 30000 px: one 'rgb' chip .* 2\.5 GiB, more than a compressed "
                                         r"chunk can hold"):
        StoreWriter(tmp_path / "huge", [get_modality("rgb")], 30000)
    assert not (tmp_path / "huge").exists()
    from earthembed.data.store import _fitting_chunk_chips

    assert _fitting_chunk_chips({"rgb": get_modality("rgb")}, 12000, 16) == 4  # 432 MB chips: 4 to a 2 GiB chunk
    assert _fitting_chunk_chips({"rgb": get_modality("rgb")}, 64, 16) == 16
