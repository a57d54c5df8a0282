"""The data contract: ChipBatch with a time axis, its string-key adapter (today's dict batches, exactly), the
input spec, and one-line errors for batches of the wrong shape."""

from __future__ import annotations

import dataclasses
import pickle
import re

import numpy as np
import pytest
import shapely
import torch

from earthembed.augment import AFFINE_KEY, AugmentConfig, augment_batch
from earthembed.contract import (
    NO_DATE,
    ChipBatch,
    ContractError,
    Field,
    InputSpec,
    ModalitySpec,
    Observation,
    as_chip_batch,
)
from earthembed.data.chip_values import acquisition_month
from earthembed.data.dataset import ChipDataset
from earthembed.data.modalities import get_modality
from earthembed.data.store import ChipRecord, ChipStore, StoreWriter

N = 8


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """s2 (dated, one chip without a date), s1 missing on every 3rd chip, a DEM with a nodata hole, WorldCover
    missing on chip 4, a pixel mask on odd chips."""
    path = tmp_path_factory.mktemp("stores") / "contract"
    rng = np.random.default_rng(0)
    mods = [get_modality("s2_l2a"), get_modality("s1_grd_db"), get_modality("elevation"), get_modality("worldcover")]
    with StoreWriter(path, mods, 16, {"seg": {"kind": "mask"}}, batch_size=4) as w:
        for i in range(N):
            arrays = {"s2": rng.integers(200, 3000, (12, 16, 16)).astype("uint16")}
            if i % 3:
                arrays["s1"] = rng.normal(-12, 3, (2, 16, 16)).astype("float32")
            dem = rng.normal(300, 40, (1, 16, 16)).astype("float32")
            if i == 1:
                dem[:, :4] = np.nan
            arrays["dem"] = dem
            if i != 4:
                arrays["lc"] = rng.choice([10, 30, 80], (1, 16, 16)).astype("uint8")
            masks = {"seg": rng.integers(0, 3, (16, 16)).astype("int16")} if i % 2 else {}
            w.add(ChipRecord(f"c{i}", arrays, geometry=shapely.box(i, 0, i + 1, 1), crs="EPSG:4326",
                             dates={} if i == 5 else {"s2": f"2021-{1 + i:02d}-15"}, masks=masks))
    return ChipStore(path)


def _dataset(store: ChipStore) -> ChipDataset:
    return ChipDataset(store, ["s2", "s1", "dem"], masks=["seg"], categorical=["lc"],
                       values={"month": acquisition_month(store, "s2")}, keep_nodata=["dem"])


def _todays_dict(ds: ChipDataset, pos: np.ndarray) -> dict[str, torch.Tensor]:
    """The dict batch the reader returned before the contract, built from the store's own reads."""
    st, js = ds.store, ds.indices[pos]
    out: dict[str, torch.Tensor] = {"idx": torch.from_numpy(js)}
    for k, bands in ds.bands.items():
        fill = float("nan") if k in ds.keep_nodata else 0.0
        t = ds.normalizer(st.read(k, js, bands), k, bands, nodata=st.modalities[k].nodata, fill=fill)
        present = st.present(k)[js]
        t[torch.from_numpy(~present)] = fill
        months = [int(str(d)[5:7]) - 1 if isinstance(d, str) else -1 for d in st.index.get(f"date_{k}", [None] * len(st))]
        out.update({k: t, f"{k}_present": torch.from_numpy(present), f"{k}_month": torch.tensor(months)[js]})
    out["lc"] = torch.from_numpy(st.read("lc", js).astype(np.int64))
    out["lc_present"] = torch.from_numpy(st.present("lc")[js])
    out["mask_seg"] = torch.from_numpy(st.read_mask("seg", js).astype(np.int64))
    out["mask_seg_present"] = torch.from_numpy(st.index["has_mask_seg"].to_numpy(dtype=bool)[js])
    v = ds.values["month"]
    out["value_month"], out["value_month_present"] = torch.from_numpy(v.values[js]), torch.from_numpy(v.present[js])
    return out


def _assert_same(got, want) -> None:
    assert list(got.keys()) == list(want.keys())
    for k in want:
        a, b = got[k], want[k]
        assert a.dtype == b.dtype and a.shape == b.shape, k
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True, msg=k)


def test_one_date_batch_reads_as_todays_dict_exactly(store):
    ds = _dataset(store)
    pos = np.array([0, 1, 3, 4, 5, 7])
    batch = ds.read_batch(pos)
    assert isinstance(batch, ChipBatch) and batch.batch_size == 6
    want = _todays_dict(ds, pos)
    assert not want["s1_present"].all() and not want["lc_present"].all() and not want["mask_seg_present"].all()
    assert torch.isnan(want["dem"]).any()  # keep_nodata kept its NaNs
    _assert_same(batch, want)
    _assert_same(dict(batch), want)
    # typed access: [B, 1, C, H, W] with presence, month and date of each chip
    s2 = batch.obs["s2"]
    assert s2.x.shape == (6, 1, 12, 16, 16) and s2.present.shape == s2.month.shape == s2.dates.shape == (6, 1)
    assert torch.equal(batch.pixels("s2"), want["s2"]) and torch.equal(batch.present("s1"), want["s1_present"])
    day = int(np.datetime64("2021-02-15", "D").astype(np.int64))
    assert s2.dates[1, 0] == day and s2.dates[4, 0] == NO_DATE and s2.month[4, 0] == -1  # chip 5 has no date
    assert batch.obs["s1"].dates[:, 0].tolist() == [NO_DATE] * 6
    assert batch.categorical["lc"].x.shape == (6, 1, 1, 16, 16) and "lc_month" not in batch
    assert batch.masks["seg"].x.shape == (6, 16, 16) and batch.chip_values["month"].x.shape == (6, 2)
    # and back: the dict gives the same batch
    _assert_same(ChipBatch.from_mapping(want), want)
    assert set(ChipBatch.from_mapping(want).categorical) == {"lc"}


def test_items_collate_pickle_and_loaders_keep_the_batch(store):
    ds = _dataset(store)
    pos = [5, 3, 0, 7]
    items = ds.__getitems__(pos)
    assert items[1]["s1_present"] is False and items[0]["idx"] == 5 and items[0]["s2"].shape == (12, 16, 16)
    _assert_same(ds.collate(items), ds.read_batch(np.array(pos)))
    batch = ds.read_batch(np.arange(N))
    _assert_same(pickle.loads(pickle.dumps(batch)), batch)
    loader = torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=ds.collate)
    got = list(loader)
    assert all(isinstance(b, ChipBatch) for b in got) and [b.batch_size for b in got] == [3, 3, 2]
    # a loader of whole batches (batch_size=None, as pretraining and embed use) passes a batch through as it is
    whole = torch.utils.data.DataLoader([batch], batch_size=None)
    assert next(iter(whole)) is batch
    from lightning.fabric.utilities.apply_func import move_data_to_device

    moved = move_data_to_device(batch, torch.device("meta"))
    assert isinstance(moved, ChipBatch) and moved.obs["s2"].x.device.type == "meta"
    assert moved.masks["seg"].present.device.type == "meta" and moved.idx.device.type == "meta"


def test_a_batch_is_never_changed_in_place(store):
    batch = _dataset(store).read_batch(np.arange(4))
    with pytest.raises(TypeError):
        batch["s1_present"] = torch.ones(4, dtype=torch.bool)  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        batch.idx = None  # type: ignore[misc]
    flags = torch.tensor([[True], [False], [True], [False]])
    other = batch.with_obs("s1", present=flags)
    assert other["s1_present"].tolist() == [True, False, True, False]
    assert batch["s1_present"].tolist() != other["s1_present"].tolist()
    assert other.replace(affine=torch.zeros(4, 2, 3))[AFFINE_KEY].shape == (4, 2, 3) and AFFINE_KEY not in other
    picked = batch.index_select(torch.tensor([3, 0]))
    assert picked["idx"].tolist() == [3, 0] and torch.equal(picked["s2"], batch["s2"][[3, 0]])
    assert batch.index_select(batch.present("s1"))["idx"].tolist() == [1, 2]


def test_augment_gives_a_new_batch_with_its_geometry(store):
    batch = _dataset(store).read_batch(np.arange(4))
    groups = {"s2": [[0, 1, 2, 3], list(range(4, 12))], "s1": [[0, 1]]}
    cfg = AugmentConfig(group_dropout=0.5)
    a = augment_batch(batch, groups, cfg, generator=torch.Generator().manual_seed(1))
    d = augment_batch(dict(batch), groups, cfg, generator=torch.Generator().manual_seed(1))
    assert isinstance(a, ChipBatch) and isinstance(d, dict)
    for k in d:  # the same augmented pixels, masks and geometry as the dict path
        assert torch.equal(a[k], d[k]), k
    assert a.obs["s2"].group_present.shape == (4, 1, 2) and torch.equal(a.present("s1"), batch.present("s1"))
    assert torch.equal(a.affine, d[AFFINE_KEY]) and torch.equal(a.idx, batch.idx)
    for k in ("s2", "s1"):  # a view moves pixels, not the calendar: the chips' own dates and months
        assert torch.equal(a.month(k), batch.month(k)) and torch.equal(a.obs[k].dates, batch.obs[k].dates)
    assert (batch.month("s2") >= 0).any()


def test_several_dates(store):
    b, t, c = 3, 4, 2
    x = torch.randn(b, t, c, 8, 8)
    present = torch.tensor([[True, True, False, True]] * b)
    days = torch.arange(b * t).reshape(b, t) * 30
    obs = Observation(x, present, days, days // 30 % 12)
    batch = ChipBatch({"s1": obs}, idx=torch.arange(b))
    assert batch.batch_size == b and obs.num_dates == t
    assert torch.equal(batch.pixels("s1", 2), x[:, 2]) and batch.present("s1", 2).tolist() == [False] * b
    one = obs.date(3)
    assert one.x.shape == (b, 1, c, 8, 8) and torch.equal(one.dates[:, 0], days[:, 3])
    with pytest.raises(ContractError, match="'s1' has 4 dates.*batch.obs\\['s1'\\]"):
        batch["s1"]
    assert list(batch) == ["idx", "s1", "s1_present", "s1_month"]
    sub = batch.index_select([2, 0])
    assert torch.equal(sub.obs["s1"].x, x[[2, 0]]) and torch.equal(sub.obs["s1"].month, (days // 30 % 12)[[2, 0]])
    crop = batch.map_rasters(lambda r: r[..., :4, :4])
    assert crop.obs["s1"].x.shape == (b, t, c, 4, 4) and crop.obs["s1"].present is present


def _one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize(("build", "match"), [
    (lambda: Observation(torch.zeros(2, 3, 8, 8), torch.ones(2, 1, dtype=torch.bool)), r"\[B, T, C, H, W\], got \(2, 3, 8, 8\)"),
    (lambda: Observation(torch.zeros(2, 3, 1, 8, 8), torch.ones(2, 1, dtype=torch.bool)), r"present must be \[B, T\] = \[2, 3\]"),
    (lambda: Observation(torch.zeros(2, 1, 1, 8, 8), torch.ones(2, 1)), "present must be bool"),
    (lambda: Observation(torch.zeros(2, 1, 1, 8, 8), torch.ones(2, 1, dtype=torch.bool), month=torch.zeros(2, 1)),
     "month must be integer"),
    (lambda: Observation(torch.zeros(2, 1, 1, 8, 8), torch.ones(2, 1, dtype=torch.bool), dates=torch.zeros(2, dtype=torch.long)),
     r"dates must be integer \[B, T\]"),
    (lambda: Observation.single(torch.zeros(2, 3, 8, 8), group_present=torch.ones(2, 3)), "group_present must be bool"),
    (lambda: Observation.single(torch.zeros(2, 1, 3, 8, 8)), r"one-date observation's x must be \[B, C, H, W\]"),
    (lambda: ChipBatch({"a": Observation.single(torch.zeros(2, 1, 4, 4))}, idx=torch.arange(3)), "disagree on the number of chips"),
    (lambda: ChipBatch({"a": Observation.single(torch.zeros(2, 1, 4, 4))}, affine=torch.zeros(2, 3, 3)), r"affine must be \[B, 2, 3\]"),
    (lambda: ChipBatch({"a": torch.zeros(2, 1, 4, 4)}), r"obs\['a'\] must be a Observation"),
    (lambda: ChipBatch(masks={"m": Field(torch.zeros(2, 4, 4), torch.ones(3, dtype=torch.bool))}), r"present must be \[B\] = \[2\]"),
    (lambda: ChipBatch.from_mapping({"s2": torch.zeros(2, 3, 4, 4), "s3_present": torch.ones(2, dtype=torch.bool)}),
     r"batch keys \['s3_present'\] belong to no modality"),
    (lambda: ChipBatch.from_mapping({"s2": torch.zeros(2, 4, 4)}), r"'s2': a modality must be \[B, C, H, W\]"),
    (lambda: ChipBatch.from_mapping({"s2": "pixels"}), "expected a tensor, got str"),
    (lambda: ModalitySpec("s2", ("B02", "B02")), "bands must be unique"),
    (lambda: ModalitySpec("s2", "B02"), "bands must be a list"),
    (lambda: ModalitySpec("s2.x", ("B02",)), "without '.'"),
    (lambda: ModalitySpec("s2", ("B02",), dates=0), "dates must be a whole number >= 1"),
    (lambda: InputSpec((ModalitySpec("s2", ("B02",)), ModalitySpec("s2", ("B03",)))), "names a modality twice"),
    (lambda: InputSpec.from_dict({"modalities": {"s2": {"bands": ["B02"], "colour": "red"}}}), r"unknown fields \['colour'\]"),
    (lambda: InputSpec.from_dict({"s2": ["B02"]}), "an input spec must be"),
])
def test_bad_shapes_are_one_line_errors(build, match):
    with pytest.raises(ContractError) as e:
        build()
    assert __import__("re").search(match, _one_line(e)), str(e.value)


def test_input_spec_json_round_trip():
    spec = InputSpec.from_bands({"s2": ["B04", "B03"], "s1": ["VV"]},
                                products={"s2": {"product": "s2_l2a", "units": "DN", "kind": "optical"}},
                                dates={"s1": 3})
    assert spec.keys() == ["s2", "s1"] and spec["s1"].dates == 3 and spec["s1"].product is None
    assert spec.bands == {"s2": ["B04", "B03"], "s1": ["VV"]} and "s2" in spec and "s3" not in spec
    d = spec.to_dict()
    assert d["modalities"]["s2"] == {"bands": ["B04", "B03"], "product": "s2_l2a", "units": "DN", "kind": "optical",
                                     "dates": 1}
    assert InputSpec.from_dict(d) == spec
    with pytest.raises(KeyError, match="no modality 's3'"):
        spec["s3"]


def test_as_chip_batch_keeps_a_batch_and_converts_a_dict():
    x = torch.randn(2, 3, 4, 4)
    b = as_chip_batch({"s2": x, "s2_present": torch.tensor([True, False])})
    assert isinstance(b, ChipBatch) and as_chip_batch(b) is b and b["s2"].data_ptr() == x.data_ptr()
    assert b.present("s2").tolist() == [True, False] and b.month("s2") is None and "idx" not in b


def test_segmentation_reads_a_chip_batch_by_its_fields_as_it_read_the_dict():
    from earthembed.evaluate.finetune import SegmentationModule, labelled_mask
    from earthembed.models import build_model
    from earthembed.models.dense import Segmenter

    bands = get_modality("s2_l1c").band_names
    g = torch.Generator().manual_seed(0)
    mask = torch.randint(0, 3, (4, 16, 16), generator=g)
    d = {"s2": torch.randn(4, 13, 16, 16, generator=g), "s2_present": torch.tensor([True, False, True, True]),
         "mask_m": mask, "mask_m_present": torch.tensor([True, True, False, True])}
    batch = ChipBatch.from_mapping(d)
    assert torch.equal(labelled_mask(batch, "m", -1), labelled_mask(d, "m", -1))
    assert (labelled_mask(batch, "m", -1)[2] == -1).all() and torch.equal(labelled_mask(batch, "m", -1)[3], mask[3])
    losses = []
    for b in (d, batch):
        torch.manual_seed(0)
        seg = Segmenter(build_model("resnet18_small", modalities={"s2": bands}), 3, "unet", {}, "identity", {})
        module = SegmentationModule(seg, {"s2": bands}, "m", 3, -1, augment={"group_dropout": 0.5}).train()
        torch.manual_seed(5)
        losses.append(module.step(b)[0].detach())
    assert torch.equal(losses[0], losses[1])


def test_has_and_image_read_one_date_by_name(store):
    batch = _dataset(store).read_batch(np.arange(4))
    assert batch.has("s2") and batch.has("lc") and not batch.has("seg") and not batch.has("s2_present")
    assert torch.equal(batch.image("lc"), batch["lc"]) and batch.image("s2").data_ptr() == batch["s2"].data_ptr()
    series = ChipBatch({"s1": Observation(torch.zeros(2, 3, 1, 4, 4), torch.ones(2, 3, dtype=torch.bool))})
    with pytest.raises(ContractError, match=r"'s1' has 3 dates; this reads one date per modality") as e:
        series.image("s1")
    _one_line(e)


def _objectives(bands):
    """One small module of every pretraining objective (dense contrastive reading a second date as its view)."""
    from earthembed.pretrain.byol import BYOLPretrainModule
    from earthembed.pretrain.contrastive import ContrastivePretrainModule
    from earthembed.pretrain.dense_contrastive import DenseContrastivePretrainModule
    from earthembed.pretrain.mpmae import MPMAEPretrainModule
    from earthembed.pretrain.pretext import PretextTask

    vit = {"modalities": bands, "embed_dim": 16, "depth": 1, "num_heads": 2}
    aug = {"group_dropout": 0.5, "band_dropout": 0.2, "brightness": 0.1}
    tasks = [PretextTask("s2", "pixel_regression", "s2", "input", 12, norm_pix=True),
             PretextTask("s1", "pixel_regression", "s1", "sar", 2),
             PretextTask("lc", "pixel_classification", "lc", "classes", 3, codes=(10, 30, 80)),
             PretextTask("month", "image_regression", "value_month", "month", 2)]
    cnn = {"modalities": {"s2": bands["s2"]}, "backbone": "convnextv2_atto", "stem_stride": 1,
           "timm_kwargs": {"depths": [1, 1, 1, 1], "dims": [8, 16, 32, 64]}}
    return {
        "contrastive": lambda: ContrastivePretrainModule("multimodal_vit_tiny", vit, proj_dim=8, augment=aug),
        "byol": lambda: BYOLPretrainModule("multimodal_vit_tiny", vit, proj_dim=8, augment=aug),
        "dense_contrastive": lambda: DenseContrastivePretrainModule(
            "resnet18_small", {"modalities": bands}, points_per_chip=8, proj_dim=8, global_weight=0.5,
            date_views={"s2": "s2b"}, augment=aug),
        "mpmae": lambda: MPMAEPretrainModule("timm_cnn", cnn, pretext_tasks=[t.to_dict() for t in tasks],
                                             decoder_dim=8, augment=aug),
    }


def _step(make, batch):
    torch.manual_seed(0)
    module = make().train()
    torch.manual_seed(5)
    loss, stats = module.step(batch)
    return loss.detach(), {k: torch.as_tensor(v) for k, v in stats.items()}


def test_pretraining_objectives_read_a_chip_batch_by_its_fields_as_they_read_the_dict(store):
    ds = ChipDataset(store, ["s2", "s1"], categorical=["lc"], values={"month": acquisition_month(store, "s2")})
    batch = ds.read_batch(np.arange(6))
    s2 = batch.obs["s2"]  # a second date of s2 on chips 0, 2, 3 (dense contrastive's second view)
    second = Observation(s2.x.flip(-1), torch.tensor([[True], [False], [True], [True], [False], [False]]))
    batch = batch.replace(obs={**batch.obs, "s2b": second})
    for name, make in _objectives(ds.bands).items():
        loss, stats = _step(make, batch)
        same, same_stats = _step(make, dict(batch))  # a dict caller (today's string keys) gets the same step
        assert torch.isfinite(loss) and torch.equal(loss, same), name
        assert stats.keys() == same_stats.keys() and all(torch.equal(stats[k], same_stats[k]) for k in stats), name
    dense = _objectives(ds.bands)["dense_contrastive"]()
    two = dense._second_source(batch)  # the second date where a chip has it, the first elsewhere
    assert torch.equal(two.obs["s2"].x[[0, 2, 3]], second.x[[0, 2, 3]])
    assert torch.equal(two.obs["s2"].x[[1, 4, 5]], s2.x[[1, 4, 5]]) and two.obs["s2"].present is s2.present
    # MP-MAE trains on the chips holding its input: chips without it change nothing
    make = _objectives(ds.bands)["mpmae"]
    lacking = batch.with_obs("s2", present=torch.tensor([[True], [False], [True], [True], [True], [False]]))
    loss, _ = _step(make, lacking)
    alone, _ = _step(make, batch.index_select([0, 2, 3, 4]))
    assert torch.equal(loss, alone)


def test_a_date_view_reads_each_series_by_its_base_as_a_chip_batch(tmp_path):
    from earthembed.data.date_views import DateView
    from earthembed.data.dates import date_key
    from earthembed.data.normalize import Normalizer
    from earthembed.data.synth import generate_synthetic_aoi

    st = generate_synthetic_aoi(tmp_path / "dated", chips=6, chip_size=16, seed=1, dates=2)
    request = {"s2": st.band_names("s2"), "s1": st.band_names("s1")}
    norm = Normalizer.from_store(st)
    one = ChipDataset(st, {date_key("s2", 1): request["s2"]}, normalizer=norm).read_batch(np.arange(6))
    view = DateView(st, request, norm, {"s2": date_key("s2", 1)}).read_batch(np.arange(6))
    assert isinstance(view, ChipBatch) and list(view.obs) == ["s2", "s1"] and torch.equal(view.idx, one.idx)
    s2 = one.obs[date_key("s2", 1)]  # date t of each chip, as read, under its base
    assert torch.equal(view.obs["s2"].dates, s2.dates) and (s2.dates != NO_DATE).all()
    assert torch.equal(view.obs["s2"].present, s2.present) and torch.equal(view.obs["s2"].month, s2.month)
    s1 = view.obs["s1"]  # a series without this date: absent on every chip, no date, no month
    assert not s1.present.any() and (s1.dates == NO_DATE).all() and (s1.month == -1).all()
    assert s1.x.shape == (6, 1, len(request["s1"]), 16, 16) and not s1.x.any()
    assert list(view) == ["idx", "s2", "s2_present", "s2_month", "s1", "s1_present", "s1_month"]


def _doc_example(name: str) -> dict:
    """Run the python block of docs/contract.md (the backbone example) and return its names."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "contract.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if f"class {name}(" in b]
    assert len(blocks) == 1, f"docs/contract.md should hold one python block defining {name}"
    scope: dict = {}
    exec(compile(blocks[0], "docs/contract.md", "exec"), scope)
    return scope


def test_the_documented_backbone_gets_present_rows_band_subsets_and_fusion_from_the_template():
    from earthembed.models.base import ModalityInput, fuse_embeddings

    PixelMLP = _doc_example("PixelMLP")["PixelMLP"]
    bands = {"s2": ["B02", "B03", "B04", "B08"], "s1": ["VV", "VH"]}
    torch.manual_seed(0)
    m = PixelMLP(bands, embed_dim=8).eval()
    g = torch.Generator().manual_seed(0)
    s2, s1 = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 2, 8, 8, generator=g)
    batch = ChipBatch({"s2": Observation.single(s2), "s1": Observation.single(s1, torch.tensor([True, False, True]))})
    with torch.no_grad():
        out = m(batch)
        alone = m.embed_modality("s1", ModalityInput(s1[[0, 2]], bands["s1"], torch.ones(2, dtype=torch.bool), None))
        feats = m.forward_features(batch)
        rgb = m(ChipBatch({"s2": Observation.single(s2[:, [2, 1, 0]])}), bands={"s2": ["B04", "B03", "B02"]})
        zeroed = m(ChipBatch({"s2": Observation.single(s2 * torch.tensor([1.0, 1, 1, 0])[:, None, None])}))
    assert out.modality["s1"].shape == (3, 8) and not out.modality["s1"][1].any()  # an absent row: zeros
    assert torch.equal(out.modality["s1"][[0, 2]], alone) and out.present["s1"].tolist() == [True, False, True]
    torch.testing.assert_close(out.fused, fuse_embeddings(out.modality, out.present))
    assert [f.shape for f in feats["s2"]] == [(3, 8, 8, 8)] and not feats["s1"][0][1].any()
    torch.testing.assert_close(rgb.modality["s2"], zeroed.modality["s2"])  # bands by name; B08 missing = zero slot
    assert PixelMLP(**m.config).config == m.config


def test_input_spec_requests_bands_by_name_and_checks_units(tmp_path):
    """InputSpec.request / check: what a model is fed from a store, by name, with the one-line errors embed,
    pretrain and segment give."""
    from earthembed.contract import InputSpec
    from earthembed.data.modalities import get_modality
    from earthembed.data.store import ChipRecord, ChipStore, StoreWriter
    from earthembed.errors import BandMismatchError

    s2, s1 = get_modality("s2_l2a"), get_modality("s1_grd_db")
    with StoreWriter(tmp_path / "st", [s2, s1], chip_size=8) as w:
        w.add(ChipRecord("c0", {"s2": np.zeros((12, 8, 8), np.uint16), "s1": np.zeros((2, 8, 8), np.float32)}))
    st = ChipStore(tmp_path / "st")
    spec = InputSpec.from_bands({"s2": ["B04", "B03", "B02"], "s1": ["VV", "VH"]},
                                {"s1": {"product": "s1_grd_linear", "units": "linear amplitude"}})
    assert spec.request(st) == {"s2": ["B04", "B03", "B02"], "s1": ["VV", "VH"]}
    assert spec.request(st, ["s2"], {"s2": ["B02"]}) == {"s2": ["B02"]}
    for args, msg in [((["x"],), "never trained on modality 'x'"),
                      ((["s2"], {"s2": ["B08"]}), "never saw s2 bands ['B08']"),
                      ((["s2"], {"s1": ["VV"]}), "bands given for modality 's1', which is not requested")]:
        with pytest.raises(BandMismatchError, match=re.escape(msg)):
            spec.request(st, *args)
    with pytest.raises(BandMismatchError, match="share none with the model"):
        InputSpec.from_bands({"rgb": ["R"]}).request(st)
    spec.check(st, ["s2"])  # no units recorded for s2: nothing to refuse
    with pytest.raises(BandMismatchError, match=r"modality 's1' is s1_grd_db in 'dB', but the model was trained on "
                                                r"s1_grd_linear in 'linear amplitude'"):
        spec.check(st)
    assert issubclass(BandMismatchError, ValueError)
    from earthembed.data import modalities

    assert modalities.BandMismatchError is BandMismatchError  # still importable from where it always was
