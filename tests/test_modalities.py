import math

import pytest

from earthembed.data.modalities import (
    BandMismatchError,
    Modality,
    band_indices,
    get_modality,
    list_modalities,
    load_modalities_file,
)


def test_builtin_registry():
    l1c, l2a = get_modality("s2_l1c"), get_modality("s2_l2a")
    assert l1c.num_bands == 13 and l2a.num_bands == 12 and "B10" not in l2a.band_names
    assert l1c.band_names.index("B8A") == 8  # official order, not EuroSAT's file order
    assert dict(zip(l1c.band_names, (b.wavelength_nm for b in l1c.bands), strict=True))["B8A"] == 865
    s1 = get_modality("s1_grd_db")
    assert [b.polarisation for b in s1.bands] == ["VV", "VH"] and math.isnan(s1.nodata)
    assert get_modality("worldcover").classes[80] == "water"
    assert {"insar_coherence", "elevation", "s1_grd_linear", "rgb"} <= set(list_modalities())
    with pytest.raises(KeyError, match="unknown modality"):
        get_modality("landsat9")


def test_band_indices_reorders_or_refuses():
    assert band_indices(["B02", "B03", "B04"], ["B04", "B02"]) == [2, 0]
    with pytest.raises(BandMismatchError, match="B8A"):
        band_indices(["B02", "B03"], ["B8A"])
    sub = get_modality("s2_l1c").select(["B04", "B03", "B02"])
    assert sub.band_names == ["B04", "B03", "B02"]


def test_roundtrip_dict():
    m = get_modality("s1_grd_db")
    m2 = Modality.from_dict(m.to_dict())
    assert m2.band_names == m.band_names and math.isnan(m2.nodata) and m2.product == "s1_grd_db"


def test_user_modalities_file(tmp_path):
    f = tmp_path / "mods.yaml"
    f.write_text(
        "modalities:\n"
        "  - name: planet\n    product: planetscope_4b\n    kind: optical\n    dtype: uint16\n    nodata: 0\n"
        "    bands:\n      - {name: blue, wavelength_nm: 490}\n      - {name: green}\n      - {name: red}\n      - {name: nir}\n"
    )
    (m,) = load_modalities_file(f)
    assert get_modality("planetscope_4b").band_names == ["blue", "green", "red", "nir"] and m.name == "planet"
    bad = tmp_path / "bad.yaml"
    bad.write_text("modalities:\n  - name: x\n    kind: hyperspectral\n    bands: [a]\n")
    with pytest.raises(ValueError, match=r"bad\.yaml.*kind"):
        load_modalities_file(bad)
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_modalities_file(tmp_path / "missing.yaml")
