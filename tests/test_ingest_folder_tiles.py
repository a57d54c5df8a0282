"""``ingest folder`` for large images: --resize, --tile and unlabelled pools (--unlabelled, --glob)."""

import numpy as np
import pytest
import rasterio
import typer
from PIL import Image
from rasterio.transform import from_origin
from typer.testing import CliRunner

from earthembed.data.ingest.cli import folder as command
from earthembed.data.ingest.common import IngestError
from earthembed.data.ingest.folder import ingest_folder, resize_image


def _png(path, h, w, value):
    a = np.zeros((h, w, 3), np.uint8)
    a[..., 0] = value
    a[..., 1] = (np.arange(w)[None, :] * 7) % 256
    a[..., 2] = (np.arange(h)[:, None] * 5) % 256
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path)
    return a.transpose(2, 0, 1)


@pytest.fixture
def scenes(tmp_path):
    """Two classes of large RGB scenes (3 per class) of different sizes."""
    src = tmp_path / "scenes"
    imgs = {}
    for i in range(3):
        imgs[f"city/c{i}.png"] = _png(src / "city" / f"c{i}.png", 40 + 4 * i, 50, 10 + i)
        imgs[f"sea/s{i}.png"] = _png(src / "sea" / f"s{i}.png", 33, 70 + i, 200 + i)
    return src, imgs


def test_tile_cuts_non_overlapping_chips_and_splits_by_image(scenes, tmp_path):
    src, imgs = scenes
    st = ingest_folder(src, tmp_path / "st", chip_size=16, tile=True)
    idx = st.index
    expected = sum((a.shape[1] // 16) * (a.shape[2] // 16) for a in imgs.values())
    assert len(st) == expected and st.chip_size == 16
    row = idx[idx["chip_id"] == "city/c1.png#001_002"].iloc[0]  # tile row 1, col 2
    np.testing.assert_array_equal(st.read("rgb", int(row.name)), imgs["city/c1.png"][:, 16:32, 32:48])
    assert row["source"] == str(src / "city" / "c1.png") and row["label"] == "city"
    per_image = idx.assign(image=idx["chip_id"].str.split("#").str[0]).groupby("image")
    assert per_image["split"].nunique().max() == 1  # tiles of one image share its split
    assert per_image["label"].nunique().max() == 1 and len(per_image) == 6
    assert set(idx["split"]) >= {"train", "test"}
    assert st.meta["source"]["chips"] == "tile"


def test_resize_resamples_whole_images(scenes, tmp_path):
    src, imgs = scenes
    st = ingest_folder(src, tmp_path / "st", chip_size=8, resize=True)
    assert len(st) == 6 and st.chip_size == 8
    i = int(st.index.index[st.index["chip_id"] == "sea/s0.png"][0])
    chip = st.read("rgb", i)
    assert chip.shape == (3, 8, 8) and chip.dtype == np.uint8
    assert abs(int(chip[0].mean()) - 200) <= 1  # a constant band stays constant
    # area-averaging: each output pixel is the mean of its input block (here 33x70 -> 8x8 is fractional)
    a = np.arange(32 * 32, dtype=np.uint16).reshape(1, 32, 32)
    np.testing.assert_allclose(resize_image(a, 8)[0, 0, 0], a[0, :4, :4].mean(), atol=0.5)
    up = resize_image(np.full((2, 4, 4), 9, np.uint16), 16)
    assert up.shape == (2, 16, 16) and (up == 9).all()


def test_unlabelled_pool_with_glob_and_georeferenced_tiles(tmp_path):
    src = tmp_path / "pool"
    for t in range(2):
        _png(src / f"Tile {t}" / "images" / f"img{t}.png", 32, 32, t)
        _png(src / f"Tile {t}" / "masks" / f"img{t}.png", 32, 32, 255)  # masks must not become chips
    with rasterio.open(src / "scene.tif", "w", driver="GTiff", width=40, height=20, count=3, dtype="uint8",
                       crs="EPSG:32631", transform=from_origin(500000, 4600000, 10, 10)) as d:
        d.write(np.ones((3, 20, 40), np.uint8))
    st = ingest_folder(src, tmp_path / "st", chip_size=16, tile=True, unlabelled=True, pattern="*/images/*")
    assert sorted(st.index["chip_id"]) == [f"Tile {t}/images/img{t}.png#{r:03d}_{c:03d}" for t in range(2)
                                          for r in range(2) for c in range(2)]
    assert st.labels == {} and st.index.geometry.isna().all()
    geo = ingest_folder(src / "scene.tif", tmp_path / "geo", chip_size=16, tile=True, unlabelled=True)
    assert list(geo.index["chip_id"]) == ["scene.tif#000_000", "scene.tif#000_001"]
    b0, b1 = (g.bounds for g in geo.index.geometry)
    assert b0[2] == pytest.approx(b1[0], abs=1e-6)  # neighbouring tiles share an edge
    with pytest.raises(IngestError, match="no image"):
        ingest_folder(src, tmp_path / "none", chip_size=16, tile=True, unlabelled=True, pattern="*.jp2")


def test_cli_options_and_errors(scenes, tmp_path):
    src, _ = scenes
    app = typer.Typer()
    app.command()(command)
    runner = CliRunner()
    res = runner.invoke(app, [str(src), "--out", str(tmp_path / "st"), "--tile", "--chip-size", "16"])
    assert res.exit_code == 0, res.output
    assert "chips of 16 px" in res.output
    bad = runner.invoke(app, [str(src), "--out", str(tmp_path / "x"), "--tile", "--resize", "--chip-size", "16"])
    assert bad.exit_code == 1 and "exclude each other" in bad.output
    bad = runner.invoke(app, [str(src), "--out", str(tmp_path / "x"), "--tile"])
    assert bad.exit_code == 1 and "--chip-size" in bad.output
    bad = runner.invoke(app, [str(src), "--out", str(tmp_path / "x"), "--glob", "*.png"])
    assert bad.exit_code == 1 and "--unlabelled" in bad.output


@pytest.mark.realdata
def test_dubai_tiles_as_an_unlabelled_pool(shared_data, tmp_path):
    """The real aerial tiles (spaces in paths, JPEG images next to PNG masks) cut into 64 px chips."""
    src = shared_data / "dubai-seg"
    st = ingest_folder(src, tmp_path / "st", chip_size=64, tile=True, unlabelled=True, pattern="Tile 1/images/*")
    images = sorted((src / "Tile 1" / "images").glob("*.jpg"))
    sizes = [Image.open(p).size for p in images]  # (width, height)
    assert len(st) == sum((h // 64) * (w // 64) for w, h in sizes) and set(st.index["source"]) == set(map(str, images))
    first = np.asarray(Image.open(images[0]).convert("RGB")).transpose(2, 0, 1)
    row = int(st.index.index[st.index["chip_id"] == "Tile 1/images/image_part_001.jpg#001_002"][0])
    np.testing.assert_array_equal(st.read("rgb", row), first[:, 64:128, 128:192])
