"""``ModelMeta``: the one typed reader of ``model.json`` (issue 22). It must read what the dict says, give the dict
back exactly (exports are compared by their bytes) and fail on an edited file as the dict reader always did."""

import json

import pytest
import torch

from earthembed.data.modalities import get_modality
from earthembed.data.normalize import Normalizer
from earthembed.data.store import ChipStore
from earthembed.models import build_model, export_model, load_model, modality_products, random_init_like
from earthembed.models.export import ModelMeta, load_export, model_input_spec, read_export, read_model_meta
from earthembed.outputs import write_json

MODS = {"s2": get_modality("s2_l1c").band_names, "s1": ["VV", "VH"]}


@pytest.fixture(scope="module")
def export(tiny_store, tmp_path_factory):
    torch.manual_seed(0)
    model = build_model("multimodal_vit_tiny", modalities=MODS, embed_dim=32, depth=1).eval()
    st = ChipStore(tiny_store)
    out = tmp_path_factory.mktemp("meta") / "export"
    return export_model(model, out, Normalizer.from_store(st), products=modality_products(st.modalities))


def _typed_equal_dict(m: ModelMeta, d: dict) -> None:
    assert m.architecture == d["architecture"] and m.config == d["config"] and m.modalities == d["modalities"]
    assert m.normalization == d["normalization"] and m.products == d.get("products")
    assert m.model_id == d.get("model_id") and m.embed_dim == d.get("embed_dim")
    assert m.published == d.get("published") and m.path == d.get("path")
    assert m.input_spec == model_input_spec(d) and m.input_spec.bands == d["modalities"]
    assert m.normalizer.stats == Normalizer.from_dict(d["normalization"]).stats


def test_a_v2_export_reads_typed_and_writes_back_byte_for_byte(export, tmp_path):
    raw = (export / "model.json").read_bytes()
    d = json.loads(raw)
    m, root = read_export(export)
    assert root == export and d["format_version"] == 2 and "input_spec" in d
    _typed_equal_dict(m, d)
    assert m.to_dict() == d and list(m.to_dict()) == list(d)
    write_json(tmp_path / "model.json", m.to_dict())
    assert (tmp_path / "model.json").read_bytes() == raw
    # the dict readers give the same dict; load_export the same weights as load_model
    assert read_model_meta(export)[0] == d and load_model(export)[1] == d
    model, typed = load_export(export)
    assert typed == m and ModelMeta.of(m) is m and ModelMeta.of(d) == m
    for (k, a), b in zip(model.state_dict().items(), load_model(export)[0].state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    m.to_dict()["config"]["embed_dim"] = 0  # a copy: the meta is not changed through it
    assert m.config["embed_dim"] == 32


def test_a_v1_dict_without_input_spec_reads_its_spec_from_modalities_and_products(export, tmp_path):
    d = json.loads((export / "model.json").read_text())
    v1 = {k: v for k, v in d.items() if k != "input_spec"} | {"format_version": 1}
    m = ModelMeta.from_dict(v1, "v1")
    _typed_equal_dict(m, v1)
    assert m.to_dict() == v1 and "input_spec" not in m.to_dict()
    assert m.input_spec == read_export(export)[0].input_spec
    (tmp_path / "model.json").write_text(json.dumps(v1))
    assert read_export(tmp_path)[0] == m


def test_an_in_memory_dict_of_a_fitter_and_a_changed_key(export):
    d = json.loads((export / "model.json").read_text())
    fitted = {k: v for k, v in d.items() if k not in ("input_spec", "products")} | {
        "published": {"spec": "timm:x", "weights_sha256": "ab"}, "path": "somewhere"}
    m = ModelMeta.of(fitted, "timm:x")
    _typed_equal_dict(m, fitted)
    assert m.products is None and m.published["spec"] == "timm:x" and m.path == "somewhere"
    fitted["model_id"] = "edited later"  # the caller's dict is not the meta's
    assert m.model_id == d["model_id"]
    other = m.with_keys(model_id="random-init-seed0-x")
    assert other.model_id == "random-init-seed0-x" and other.to_dict() == {**m.to_dict(), "model_id": other.model_id}
    a, b = random_init_like(m, seed=3), random_init_like(m.to_dict(), seed=3)
    for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


@pytest.mark.parametrize("edit, match", [
    (lambda d: d.pop("normalization"), r"key 'normalization' missing"),
    (lambda d: d.update(config=[1]), r"key 'config' must be a JSON object, got \[1\]"),
    (lambda d: d.update(modalities={"s2": []}), r"modalities\.s2 must be a non-empty list of band names"),
    (lambda d: d.update(architecture="nope"), r"unknown architecture 'nope'"),
    (lambda d: d.update(input_spec={"modalities": {"s2": {"bands": []}}}), r"'input_spec' is malformed"),
])
def test_an_edited_file_is_the_same_one_line_error_from_every_reader(export, tmp_path, edit, match):
    d = json.loads((export / "model.json").read_text())
    edit(d)
    bad = tmp_path / "model.json"
    bad.write_text(json.dumps(d))
    (tmp_path / "model.safetensors").write_bytes((export / "model.safetensors").read_bytes())
    messages = []
    for read in (read_export, read_model_meta, load_export, load_model):
        with pytest.raises(ValueError, match=match) as e:
            read(tmp_path)
        messages.append(str(e.value))
    assert len(set(messages)) == 1 and "\n" not in messages[0] and messages[0].startswith(f"{bad}: ")
    with pytest.raises(ValueError, match=match) as e:
        ModelMeta.from_dict(d, bad)
    assert str(e.value) == messages[0]
