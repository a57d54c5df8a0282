"""Modality and band definitions.

Band order mismatches are the most common silent error in EO pipelines, so every array in earthembed is
described by a :class:`Modality` that lists its band names in order. Stores and models record these, and
:func:`band_indices` reorders or refuses, never silently accepts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml

from earthembed.errors import BandMismatchError  # noqa: F401  (here since the first release)

Kind = Literal["optical", "sar", "coherence", "elevation", "categorical", "scalar"]
KINDS: tuple[str, ...] = ("optical", "sar", "coherence", "elevation", "categorical", "scalar")


@dataclasses.dataclass(frozen=True)
class Band:
    """One channel. ``wavelength_nm`` for optical bands, ``polarisation`` for SAR."""

    name: str
    wavelength_nm: float | None = None
    polarisation: str | None = None
    resolution_m: float | None = None
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v not in (None, "")}


@dataclasses.dataclass(frozen=True)
class Modality:
    """A co-registered image layer: its bands in order, units, dtype and nodata.

    ``product`` names the registry entry it came from (e.g. ``s2_l1c``); ``name`` is the short key used in a
    store and by models (e.g. ``s2``), so two stores can hold ``s2`` from different products.
    """

    name: str
    kind: Kind
    bands: tuple[Band, ...]
    units: str = ""
    dtype: str = "float32"
    nodata: float | int | None = None
    resolution_m: float | None = None
    product: str = ""
    classes: dict[int, str] | None = None  # categorical maps: value -> class name
    description: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"modality {self.name!r}: kind {self.kind!r} is not one of {KINDS}")
        names = [b.name for b in self.bands]
        if len(set(names)) != len(names):
            raise ValueError(f"modality {self.name!r}: duplicate band names {names}")
        if not names:
            raise ValueError(f"modality {self.name!r}: no bands")

    @property
    def band_names(self) -> list[str]:
        return [b.name for b in self.bands]

    @property
    def num_bands(self) -> int:
        return len(self.bands)

    def renamed(self, name: str) -> Modality:
        return dataclasses.replace(self, name=name)

    def select(self, bands: Sequence[str]) -> Modality:
        """The same modality restricted to ``bands`` (in the given order)."""
        idx = band_indices(self.band_names, bands, what=f"modality {self.name!r}")
        return dataclasses.replace(self, bands=tuple(self.bands[i] for i in idx))

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "product": self.product,
            "bands": [b.to_dict() for b in self.bands],
            "units": self.units,
            "dtype": self.dtype,
            "nodata": _json_nodata(self.nodata),
            "resolution_m": self.resolution_m,
            "description": self.description,
        }
        if self.classes is not None:
            d["classes"] = {str(k): v for k, v in self.classes.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Modality:
        try:
            bands = tuple(
                Band(**b) if isinstance(b, dict) else Band(name=str(b)) for b in d["bands"]
            )
            nodata = d.get("nodata")
            if nodata == "nan":
                nodata = float("nan")
            classes = d.get("classes")
            return cls(
                name=d["name"],
                kind=d["kind"],
                bands=bands,
                units=d.get("units", ""),
                dtype=d.get("dtype", "float32"),
                nodata=nodata,
                resolution_m=d.get("resolution_m"),
                product=d.get("product", d["name"]),
                classes={int(k): v for k, v in classes.items()} if classes else None,
                description=d.get("description", ""),
            )
        except KeyError as e:
            raise ValueError(f"modality definition {d.get('name', '?')!r} lacks field {e}") from e


def _json_nodata(v: float | int | None) -> float | int | str | None:
    if isinstance(v, float) and v != v:
        return "nan"
    return v


def band_indices(available: Sequence[str], requested: Sequence[str] | None, what: str = "data") -> list[int]:
    """Indices into ``available`` that produce ``requested`` in order; raise if any is missing.

    This is the one place band order is reconciled: callers never index bands by position.
    """
    available = list(available)
    if requested is None:
        return list(range(len(available)))
    missing = [b for b in requested if b not in available]
    if missing:
        raise BandMismatchError(f"{what}: bands {missing} are not available (it has {available})")
    return [available.index(b) for b in requested]


# --- built-in registry -------------------------------------------------------------------------------

_S2_BANDS = [
    ("B01", 443, 60, "coastal aerosol"),
    ("B02", 492, 10, "blue"),
    ("B03", 560, 10, "green"),
    ("B04", 665, 10, "red"),
    ("B05", 704, 20, "red edge 1"),
    ("B06", 740, 20, "red edge 2"),
    ("B07", 783, 20, "red edge 3"),
    ("B08", 833, 10, "NIR"),
    ("B8A", 865, 20, "narrow NIR"),
    ("B09", 945, 60, "water vapour"),
    ("B10", 1374, 60, "cirrus"),
    ("B11", 1614, 20, "SWIR 1"),
    ("B12", 2202, 20, "SWIR 2"),
]

WORLDCOVER_CLASSES: dict[int, str] = {
    10: "tree_cover",
    20: "shrubland",
    30: "grassland",
    40: "cropland",
    50: "built_up",
    60: "bare_sparse",
    70: "snow_ice",
    80: "water",
    90: "herbaceous_wetland",
    95: "mangroves",
    100: "moss_lichen",
}


def _s2(product: str, drop: Iterable[str] = ()) -> Modality:
    drop = set(drop)
    bands = tuple(
        Band(n, wavelength_nm=w, resolution_m=r, description=d) for n, w, r, d in _S2_BANDS if n not in drop
    )
    level = "L1C top-of-atmosphere" if product.endswith("l1c") else "L2A bottom-of-atmosphere"
    return Modality(
        name="s2",
        kind="optical",
        bands=bands,
        units="reflectance x 10000 (DN)",
        dtype="uint16",
        nodata=0,
        resolution_m=10,
        product=product,
        description=f"Sentinel-2 MSI {level}",
    )


def _s1(product: str, units: str) -> Modality:
    return Modality(
        name="s1",
        kind="sar",
        bands=(
            Band("VV", polarisation="VV", resolution_m=10, description="co-polarised backscatter"),
            Band("VH", polarisation="VH", resolution_m=10, description="cross-polarised backscatter"),
        ),
        units=units,
        dtype="float32",
        nodata=float("nan"),
        resolution_m=10,
        product=product,
        description=f"Sentinel-1 IW GRD backscatter ({units})",
    )


def _builtin() -> dict[str, Modality]:
    mods = [
        _s2("s2_l1c"),
        _s2("s2_l2a", drop=["B10"]),
        _s1("s1_grd_db", "dB"),
        _s1("s1_grd_linear", "linear amplitude"),
        Modality(
            name="coh",
            kind="coherence",
            bands=(
                Band("coh_VV", polarisation="VV", resolution_m=20, description="12-day InSAR coherence"),
            ),
            units="coherence [0, 1]",
            dtype="float32",
            nodata=float("nan"),
            resolution_m=20,
            product="insar_coherence",
            description="Sentinel-1 interferometric coherence",
        ),
        Modality(
            name="dem",
            kind="elevation",
            bands=(Band("elevation", resolution_m=30, description="height above sea level"),),
            units="m",
            dtype="float32",
            nodata=float("nan"),
            resolution_m=30,
            product="elevation",
            description="digital elevation model",
        ),
        Modality(
            name="lc",
            kind="categorical",
            bands=(Band("class", resolution_m=10, description="ESA WorldCover class code"),),
            units="class code",
            dtype="uint8",
            nodata=0,
            resolution_m=10,
            product="worldcover",
            classes=dict(WORLDCOVER_CLASSES),
            description="ESA WorldCover land-cover map",
        ),
        Modality(
            name="rgb",
            kind="optical",
            bands=(
                Band("R", wavelength_nm=665, description="red"),
                Band("G", wavelength_nm=560, description="green"),
                Band("B", wavelength_nm=492, description="blue"),
            ),
            units="8-bit DN",
            dtype="uint8",
            nodata=None,
            product="rgb",
            description="generic 8-bit RGB image",
        ),
    ]
    return {m.product: m for m in mods}


_REGISTRY: dict[str, Modality] = _builtin()


def get_modality(product: str, name: str | None = None) -> Modality:
    """A registered modality by product id (``s2_l1c``, ``s2_l2a``, ``s1_grd_db``, ...), optionally renamed."""
    try:
        m = _REGISTRY[product]
    except KeyError:
        raise KeyError(f"unknown modality {product!r}; registered: {sorted(_REGISTRY)}") from None
    return m.renamed(name) if name else m


def list_modalities() -> list[str]:
    return sorted(_REGISTRY)


def register_modality(modality: Modality, overwrite: bool = False) -> None:
    key = modality.product or modality.name
    if key in _REGISTRY and not overwrite:
        raise ValueError(f"modality {key!r} is already registered")
    _REGISTRY[key] = modality


def load_modalities_file(path: str | Path, register: bool = True) -> list[Modality]:
    """Read user-defined modalities from YAML: ``modalities: [{name, kind, bands: [...], ...}]``."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: modality file not found") from None
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({e})") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("modalities"), list):
        raise ValueError(f"{path}: expected a mapping with a 'modalities' list")
    out = []
    for d in doc["modalities"]:
        try:
            m = Modality.from_dict(d)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{path}: {e}") from e
        if register:
            register_modality(m, overwrite=True)
        out.append(m)
    return out
