"""ingest pairs (image / mask segmentation datasets) and the Sen1Floods11 scene tiled for segmentation."""

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from earthembed.data.ingest.pairs import ingest_pairs, load_class_map, tile_starts
from earthembed.data.store import ChipStore
from earthembed.errors import IngestError

PALETTE = {"water": (0, 0, 255), "land": (0, 255, 0), "road": (255, 0, 0)}
IGNORE = (155, 155, 155)
CLASSES = {"classes": {k: list(v) for k, v in PALETTE.items()}, "ignore": {"unlabelled": list(IGNORE)}}


def _write_pair(root, folder, name, h, w, seed, palette_png=True):
    """An RGB JPEG and a palette PNG mask: left third water, middle land, right road, top rows unlabelled."""
    rng = np.random.default_rng(seed)
    (root / folder / "images").mkdir(parents=True, exist_ok=True)
    (root / folder / "masks").mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / folder / "images" / f"{name}.jpg")
    cls = np.minimum(np.arange(w) * 3 // w, 2)[None].repeat(h, 0)
    cls[:2] = 3  # unlabelled rows
    colours = np.array([*PALETTE.values(), IGNORE], dtype=np.uint8)
    rgb = Image.fromarray(colours[cls])
    (rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=4) if palette_png else rgb).save(
        root / folder / "masks" / f"{name}.png")
    return cls


@pytest.fixture()
def pairs_dir(tmp_path):
    root = tmp_path / "seg data"  # spaces in paths, as in the real sample
    for t in range(2):
        for k in range(3):
            _write_pair(root, f"Tile {t}", f"part_{k}", 20 + 3 * k, 24, seed=10 * t + k)
    return root


def test_ingest_pairs_colours_tiles_fractions_and_splits(pairs_dir, tmp_path):
    store = ingest_pairs(pairs_dir / "*" / "images", str(pairs_dir / "*" / "masks"), tmp_path / "s", chip_size=16,
                         stride=8, classes=CLASSES)
    idx = store.index
    assert store.labels["mask"]["classes"] == ["water", "land", "road"]
    # 24 px wide, chip 16 stride 8 -> x starts 0, 8; heights 20/23/26 -> y starts 0,4 / 0,7 / 0,8,10 (edge tile)
    assert tile_starts(26, 16, 8) == [0, 8, 10] and tile_starts(16, 16, 8) == [0]
    assert len(idx) == 2 * 2 * (2 + 2 + 3)
    one = idx[idx["chip_id"] == "Tile 0/part_0_0_0"].iloc[0]
    m = store.read_mask("mask", int(one["idx"]))
    assert (m[:2] == -1).all() and set(np.unique(m[2:])) == {0, 1}  # columns 0-15 of 24: water, land
    valid = m[m >= 0]
    assert one["frac_water"] == pytest.approx((valid == 0).mean())
    assert list(one["classes_present"]) == ["water", "land"]
    assert store.read("rgb", int(one["idx"])).shape == (3, 16, 16)
    # splits by source image: every tile of an image shares its split
    per_image = idx.assign(image=idx["chip_id"].str.rsplit("_", n=2).str[0]).groupby("image")["split"].nunique()
    assert (per_image == 1).all() and set(idx["split"]) <= {"train", "val", "test"}
    # folder-level splits keep a whole folder together
    by_folder = ingest_pairs(pairs_dir / "*" / "images", pairs_dir / "*" / "masks", tmp_path / "f", chip_size=16,
                             classes=CLASSES, split_by="folder").index
    assert (by_folder.groupby("aoi")["split"].nunique() == 1).all()


def test_ingest_pairs_ids_and_bad_input(pairs_dir, tmp_path):
    # id masks (single band): classes named by id, --ignore values unlabelled
    ids = tmp_path / "ids"
    (ids / "img").mkdir(parents=True)
    (ids / "msk").mkdir()
    for k in range(3):
        Image.fromarray(np.full((16, 16, 3), 9 * k, np.uint8)).save(ids / "img" / f"a{k}.png")
        Image.fromarray(np.array([[1, 4], [4, 255]], np.uint8).repeat(8, 0).repeat(8, 1)).save(ids / "msk" / f"a{k}.png")
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(ids / "img" / "orphan.png")
    st = ingest_pairs(ids / "img", ids / "msk", tmp_path / "ids_store", chip_size=16, ignore=[255])
    assert st.labels["mask"]["classes"] == ["class_1", "class_4"]
    assert (st.read_mask("mask", 0) == np.array([[0, 1], [1, -1]]).repeat(8, 0).repeat(8, 1)).all()
    assert any("orphan" in s["item"] and "no mask" in s["reason"] for s in st.report()["skipped"])

    # a colour the mapping does not know: stop before writing, naming the file, the colour and its pixel count
    bad = {"classes": {"water": [0, 0, 255], "land": [0, 255, 0]}, "ignore": [list(IGNORE)]}
    with pytest.raises(IngestError, match=r"part_0\.png: \(255, 0, 0\) x \d+ px"):
        ingest_pairs(pairs_dir / "*" / "images", pairs_dir / "*" / "masks", tmp_path / "bad", chip_size=16, classes=bad)
    assert not (tmp_path / "bad").exists()
    with pytest.raises(ValueError, match="mixes class ids and RGB colours"):
        load_class_map({"classes": {"a": 1, "b": [1, 2, 3]}})
    with pytest.raises(ValueError, match="class name 'bad name'"):
        load_class_map({"classes": {"bad name": 1, "b": 2}})
    _write_pair(tmp_path / "rgb", "t", "a", 16, 16, seed=0, palette_png=False)  # RGB (not palette) mask
    with pytest.raises(IngestError, match="3 bands but the classes are ids"):
        ingest_pairs(tmp_path / "rgb" / "t" / "images", tmp_path / "rgb" / "t" / "masks", tmp_path / "rgbids", chip_size=16)
    with pytest.raises(IngestError, match="no image .* has a mask with the same name"):
        ingest_pairs(ids / "img", pairs_dir / "*" / "masks", tmp_path / "nopairs", chip_size=16, classes=CLASSES)
    # a mask whose size differs from its image, and lossy JPEG masks, are skipped with the reason
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(ids / "msk" / "a1.png")
    (ids / "msk" / "a2.png").rename(ids / "msk" / "a2.jpg")  # a JPEG mask (lossy): refused
    st = ingest_pairs(ids / "img", ids / "msk", tmp_path / "ids2", chip_size=16, ignore=[255])
    reasons = " ".join(s["reason"] for s in st.report()["skipped"])
    assert "its mask" in reasons and "10x10 px" in reasons and "JPEG mask refused" in reasons
    from earthembed.cli import app

    r = CliRunner().invoke(app, ["ingest", "pairs", "--images", str(ids / "nope"), "--masks", str(ids / "msk"),
                                 "--out", str(tmp_path / "x"), "--chip-size", "16"])
    assert r.exit_code == 1 and "image folder not found" in r.output


@pytest.mark.realdata
def test_ingest_pairs_real_dubai_sample(shared_data, tmp_path):
    """The real Dubai sample: palette PNG masks, true colours from its README, spaces in paths."""
    from pathlib import Path

    classes = Path(__file__).resolve().parents[1] / "scripts" / "dubai-seg-classes.yaml"
    src = shared_data / "dubai-seg"
    store = ingest_pairs(str(src / "Tile 1" / "images"), str(src / "Tile 1" / "masks"), tmp_path / "dubai",
                         chip_size=256, classes=classes)
    idx = store.index
    assert store.labels["mask"]["classes"] == ["building", "land", "road", "vegetation", "water"]
    assert len(idx) >= 9 * 4 and idx["split"].nunique() >= 2
    m = store.read_mask("mask", np.arange(len(idx)))
    assert set(np.unique(m)) <= {-1, 0, 1, 2, 3, 4} and (m >= 0).mean() > 0.9
    fr = idx[[f"frac_{c}" for c in store.labels["mask"]["classes"]]].to_numpy(dtype=float)
    assert np.allclose(fr.sum(1), 1.0)


@pytest.mark.realdata
def test_sen1floods11_scene_tiled_with_block_splits(shared_data, tmp_path):
    from earthembed.data.ingest.sen1floods11 import ingest_sen1floods11

    store = ingest_sen1floods11(shared_data / "sen1floods11", tmp_path / "s1f", chip_size=32, split_by="block")
    idx = store.index
    assert len(idx) == 256 and set(store.modalities) == {"s2", "s1"}
    assert store.labels["water_mask"]["kind"] == "mask" and store.labels["water_mask"]["classes"] == ["not_water", "water"]
    masks = store.read_mask("water_mask", np.arange(256))
    assert masks.shape == (256, 32, 32) and set(np.unique(masks)) <= {-1, 0, 1}
    # the whole scene's water pixels are in the tiles (512 = 16 x 32, nothing cut off)
    assert int((masks == 1).sum()) == 70035
    # one scene, 64 spatial blocks of 2x2 tiles: train and test both present, a block never split
    assert {"train", "test"} <= set(idx["split"]) and (idx["split"] == "test").sum() >= 16
    rc = idx["chip_id"].str.rsplit("_", n=2)
    block = rc.str[1].astype(int) // 2 * 100 + rc.str[2].astype(int) // 2
    assert (idx.assign(block=block).groupby("block")["split"].nunique() == 1).all()
    assert ChipStore(tmp_path / "s1f").meta["source"]["split"].startswith("spatial blocks")
