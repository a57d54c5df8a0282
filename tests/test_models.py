import json

import numpy as np
import pytest
import torch

from earthembed.data.modalities import BandMismatchError, get_modality
from earthembed.data.normalize import Normalizer
from earthembed.data.store import ChipStore
from earthembed.models import (
    MultiModalViT,
    build_model,
    default_band_groups,
    export_model,
    list_models,
    load_model,
    modality_products,
    random_init_like,
)

S2 = get_modality("s2_l1c").band_names
MODS = {"s2": S2, "s1": ["VV", "VH"]}


def _model(**kw):
    torch.manual_seed(0)
    return build_model("multimodal_vit_tiny", modalities=MODS, embed_dim=32, depth=1, **kw).eval()


def _batch(n=4, size=16):
    g = torch.Generator().manual_seed(1)
    return {"s2": torch.randn(n, 13, size, size, generator=g), "s1": torch.randn(n, 2, size, size, generator=g)}


def test_registry_names_and_unknown():
    assert {"multimodal_vit", "multimodal_vit_tiny", "multimodal_vit_small", "multimodal_vit_large"} <= set(list_models())
    m = build_model("multimodal_vit_tiny", modalities=MODS)
    assert (m.width, m.depth, m.num_heads, m.patch_size) == (64, 2, 2, 8)
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        build_model("nope", modalities=MODS)
    with pytest.raises(ValueError, match="bogus"):
        build_model("multimodal_vit_tiny", modalities=MODS, bogus=1)


def test_default_band_groups():
    assert default_band_groups(S2) == [
        ["B02", "B03", "B04", "B08"], ["B05", "B06", "B07", "B8A", "B11", "B12"], ["B01", "B09", "B10"]
    ]
    assert default_band_groups(["VV", "VH"]) == [["VV", "VH"]]
    l2a = [b for b in S2 if b != "B10"]
    assert default_band_groups(l2a)[-1] == ["B01", "B09"]
    assert default_band_groups(["R", "G", "B", "N", "S1", "S2"]) == [["R", "G", "B", "N", "S1", "S2"]]


def test_large_param_count_on_meta():
    with torch.device("meta"):
        m = build_model("multimodal_vit_large", modalities=MODS)
    n = sum(p.numel() for p in m.parameters())
    assert next(m.parameters()).is_meta
    assert 240e6 < n < 265e6, n


def test_forward_all_modalities_shapes_and_fused():
    m = _model()
    out = m(_batch())
    assert set(out.modality) == {"s2", "s1"}
    assert out.modality["s2"].shape == (4, 32) and out.fused.shape == (4, 32)
    assert all(v.all() for v in out.present.values())
    expect = torch.nn.functional.normalize(
        torch.nn.functional.normalize(out.modality["s2"], dim=-1) + torch.nn.functional.normalize(out.modality["s1"], dim=-1),
        dim=-1,
    )
    torch.testing.assert_close(out.fused, expect)
    assert m.config["band_groups"]["s2"][0] == ["B02", "B03", "B04", "B08"]
    maps = m.forward_tokens(_batch())
    assert maps["s2"].shape == (4, 32, 2, 2)


def test_missing_modality_row_zero_and_fused_from_rest():
    m = _model()
    b = _batch()
    b["s1_present"] = torch.tensor([True, False, True, True])
    b["idx"] = torch.arange(4)  # non-modality keys are ignored
    out = m(b)
    assert not out.present["s1"][1]
    assert torch.all(out.modality["s1"][1] == 0)
    torch.testing.assert_close(out.fused[1], torch.nn.functional.normalize(out.modality["s2"][1], dim=0))
    # present rows are unaffected by the absent row (per-row independence)
    full = m(_batch())
    torch.testing.assert_close(out.modality["s1"][[0, 2, 3]], full.modality["s1"][[0, 2, 3]])
    # a modality missing from the batch is absent everywhere; no modality present -> zero fused row
    only_s2 = m({"s2": b["s2"]})
    assert not only_s2.present["s1"].any()
    none = m(b, present={"s2": torch.zeros(4, dtype=torch.bool), "s1": torch.zeros(4, dtype=torch.bool)})
    assert torch.all(none.fused == 0)


def test_band_subset_shuffled_matches_full_order():
    m = _model()
    x = _batch()["s2"]
    keep = ["B08", "B02", "B11", "B04", "B03"]  # shuffled subset; 60 m group absent
    sub = x[:, [S2.index(b) for b in keep]]
    zeroed = torch.zeros_like(x)
    for b in keep:
        zeroed[:, S2.index(b)] = x[:, S2.index(b)]
    a = m({"s2": sub}, bands={"s2": keep}).modality["s2"]
    # full-order tensor holding only those bands differs only by the absent 60 m group's tokens
    zg = m({"s2": zeroed[:, [S2.index(b) for b in S2 if b not in ("B01", "B09", "B10")]]},
           bands={"s2": [b for b in S2 if b not in ("B01", "B09", "B10")]}).modality["s2"]
    torch.testing.assert_close(a, zg)
    perm = list(reversed(S2))
    torch.testing.assert_close(
        m({"s2": x[:, [S2.index(b) for b in perm]]}, bands={"s2": perm}).modality["s2"],
        m({"s2": x}).modality["s2"],
    )


def test_unknown_band_and_modality_errors():
    m = _model()
    with pytest.raises(BandMismatchError, match="B99"):
        m({"s2": torch.zeros(1, 2, 16, 16)}, bands={"s2": ["B02", "B99"]})
    with pytest.raises(ValueError, match="coh"):
        m({"s2": torch.zeros(1, 13, 16, 16)}, bands={"coh": ["coh_VV"]})
    with pytest.raises(ValueError, match="none of the model's modalities"):
        m({"idx": torch.arange(2)})
    with pytest.raises(ValueError, match=r"expected \[B, 13"):
        m({"s2": torch.zeros(1, 12, 16, 16)})


def test_non_divisible_size_is_resized():
    m = _model()
    out = m({"s2": torch.randn(2, 13, 20, 13)})
    assert out.fused.shape == (2, 32)
    assert m.forward_tokens({"s2": torch.randn(2, 13, 20, 13)})["s2"].shape == (2, 32, 2, 2)


def test_export_load_roundtrip(tiny_store, tmp_path):
    m = _model(proj_dim=16)
    norm = Normalizer.from_store(ChipStore(tiny_store))
    out = export_model(m, tmp_path / "exp", norm, extra={"note": "x"})
    meta = json.loads((out / "model.json").read_text())
    assert meta["format"] == "earthembed-model" and meta["format_version"] == 2
    assert meta["input_spec"]["modalities"]["s1"] == {"bands": ["VV", "VH"], "product": None, "units": None,
                                                      "kind": None, "dates": 1}
    assert meta["modalities"]["s2"] == S2 and meta["modalities"]["s1"] == ["VV", "VH"]
    assert meta["normalization"]["stats"]["s2"]["bands"] == S2
    assert meta["embed_dim"] == 16 and meta["note"] == "x"
    assert meta["model_id"].startswith("multimodal_vit-") and len(meta["model_id"]) == len("multimodal_vit-") + 12
    loaded, meta2 = load_model(out / "model.json")
    b = _batch()
    for k in ("s2", "s1"):
        torch.testing.assert_close(loaded(b).modality[k], m(b).modality[k], rtol=0, atol=0)
    assert Normalizer.from_dict(meta2["normalization"]).stats == norm.stats
    rnd = random_init_like(meta2, seed=1)
    assert isinstance(rnd, MultiModalViT) and rnd.config == loaded.config
    assert not torch.allclose(rnd(b).fused, loaded(b).fused)
    torch.testing.assert_close(random_init_like(meta2, seed=1)(b).fused, rnd(b).fused)
    with pytest.raises(ValueError, match="export"):
        load_model(tmp_path / "x.ckpt")
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing")
    # the same weights give the same id
    assert json.loads((export_model(loaded, tmp_path / "e2", norm) / "model.json").read_text())["model_id"] == meta["model_id"]
    # an earlier export is replaced; a user's directory or file is never written into
    assert export_model(m, out, norm) == out
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="mine.*not an earthembed model export"):
        export_model(m, mine, norm)
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    (tmp_path / "afile").write_text("keep")
    with pytest.raises(FileExistsError, match="not a directory"):
        export_model(m, tmp_path / "afile", norm)


def test_band_groups_must_partition():
    with pytest.raises(ValueError, match="partition"):
        MultiModalViT({"s1": ["VV", "VH"]}, band_groups={"s1": [["VV"]]})
    m = MultiModalViT({"s1": ["VV", "VH"]}, band_groups={"s1": [["VH"], ["VV"]]}, embed_dim=16, depth=1, num_heads=2)
    assert m.group_channel_indices("s1") == [[1], [0]]
    rebuilt = MultiModalViT(**m.config)
    assert rebuilt.config == m.config
    assert np.isclose(sum(p.numel() for p in rebuilt.parameters()), sum(p.numel() for p in m.parameters()))


def test_mixed_precision_outputs_float32():
    m = _model()
    b = _batch()
    b["s1_present"] = torch.tensor([True, False, True, True])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(b)
        maps = m.forward_tokens(b)
    assert out.fused.dtype == torch.float32 and out.modality["s1"].dtype == torch.float32
    assert maps["s1"].dtype == torch.float32 and torch.all(maps["s1"][1] == 0)
    torch.testing.assert_close(out.fused, m(b).fused, atol=0.05, rtol=0.05)


def test_group_present_drops_tokens_like_missing_bands():
    m = _model()
    b = _batch()
    groups = m.band_groups["s2"]  # 10 m, 20 m, 60 m
    gp = torch.tensor([[True, True, True], [True, False, False], [False, True, False], [True, False, True]])
    out = m(b, group_present={"s2": gp})
    maps = m.forward_tokens(b, group_present={"s2": gp})
    for i in range(4):
        sub = [band for g, keep in zip(groups, gp[i].tolist(), strict=True) if keep for band in g]
        xi = {"s2": b["s2"][i : i + 1, [S2.index(band) for band in sub]], "s1": b["s1"][i : i + 1]}
        ref = m(xi, bands={"s2": sub})
        torch.testing.assert_close(out.modality["s2"][i], ref.modality["s2"][0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.fused[i], ref.fused[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(maps["s2"][i], m.forward_tokens(xi, bands={"s2": sub})["s2"][0], atol=1e-5, rtol=1e-5)
    # zero-valued channels are not the same as absent groups: they still make tokens
    zeroed = b["s2"].clone()
    zeroed[1, [S2.index(band) for g in groups[1:] for band in g]] = 0
    assert not torch.allclose(m({"s2": zeroed}).modality["s2"][1], out.modality["s2"][1], atol=1e-3)
    # training input with the 20/60 m groups dropped and B08 zeroed == RGB-only inference
    rgb = ["B04", "B03", "B02"]
    x = torch.zeros_like(b["s2"])
    x[:, [S2.index(band) for band in rgb]] = b["s2"][:, [S2.index(band) for band in rgb]]
    only10 = torch.tensor([[True, False, False]] * 4)
    torch.testing.assert_close(
        m({"s2": x}, group_present={"s2": only10}).modality["s2"],
        m({"s2": b["s2"][:, [S2.index(band) for band in rgb]]}, bands={"s2": rgb}).modality["s2"], atol=1e-5, rtol=1e-5,
    )
    # a row with no group is an absent modality; the batch key is the default; shapes are checked
    none = gp.clone()
    none[2] = False
    res = m({**b, "s2_group_present": none})
    assert res.present["s2"].tolist() == [True, True, False, True] and torch.all(res.modality["s2"][2] == 0)
    torch.testing.assert_close(res.modality["s2"][[0, 1, 3]], out.modality["s2"][[0, 1, 3]])
    with pytest.raises(ValueError, match=r"group_present must be \[4, 3\]"):
        m(b, group_present={"s2": gp[:, :2]})


def test_export_records_products_and_rejects_truncated_weights(tiny_store, tmp_path):
    from earthembed.models import modality_products

    m = _model()
    st = ChipStore(tiny_store)
    norm = Normalizer.from_store(st)
    prods = modality_products(st.modalities)
    out = export_model(m, tmp_path / "exp", norm, products=prods)
    meta = json.loads((out / "model.json").read_text())
    assert meta["products"] == {
        "s2": {"product": st.modalities["s2"].product, "units": st.modalities["s2"].units, "kind": "optical"},
        "s1": {"product": st.modalities["s1"].product, "units": st.modalities["s1"].units, "kind": "sar"},
    }
    assert meta["products"]["s1"]["product"].startswith("s1_grd") and meta["products"]["s1"]["units"]
    assert "products" not in json.loads((export_model(m, tmp_path / "e0", norm) / "model.json").read_text())
    with pytest.raises(ValueError, match=r"products has no entry for model modalities \['s1'\]"):
        export_model(m, tmp_path / "e1", norm, products={"s2": prods["s2"]})
    w = out / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"model\.safetensors: weights file is corrupt or truncated"):
        load_model(out)


def test_model_json_v2_has_an_input_spec_and_v1_is_still_read(tiny_store, tmp_path):
    """A version 1 model.json is what export_model wrote before format 2: the same keys without input_spec."""
    from earthembed.contract import InputSpec
    from earthembed.models.export import model_input_spec

    m = _model()
    st = ChipStore(tiny_store)
    out = export_model(m, tmp_path / "v2", Normalizer.from_store(st), products=modality_products(st.modalities))
    meta = json.loads((out / "model.json").read_text())
    spec = model_input_spec(meta)
    assert isinstance(spec, InputSpec) and spec.bands == MODS and spec["s1"].kind == "sar"
    assert spec["s2"].product == st.modalities["s2"].product and spec["s2"].units == st.modalities["s2"].units
    v1 = {k: v for k, v in meta.items() if k != "input_spec"} | {"format_version": 1}
    (out / "model.json").write_text(json.dumps(v1))
    loaded, meta1 = load_model(out)
    assert meta1["format_version"] == 1 and model_input_spec(meta1) == spec
    b = _batch()
    torch.testing.assert_close(loaded(b).fused, m(b).fused, rtol=0, atol=0)
    # a v2 spec that disagrees with the model's modalities, a malformed one, a newer format: one-line errors
    for bad, match in ((meta | {"input_spec": InputSpec.from_bands({"s2": S2}).to_dict()}, "names other modalities"),
                       (meta | {"input_spec": {"modalities": {"s2": {"bands": []}}}}, "'input_spec' is malformed"),
                       (meta | {"format_version": 3}, r"format_version 3 is newer .*reads \[1, 2\]")):
        (out / "model.json").write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=match) as e:
            load_model(out)
        assert "\n" not in str(e.value)
