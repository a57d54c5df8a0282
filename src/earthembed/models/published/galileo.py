"""``galileo:<size>``: the published Galileo encoders (Tseng et al. 2025, nasaharvest/galileo, MIT) fitted to a store.

**Rows, not code.** :data:`GALILEO` holds one row per published size: the architecture (``config.json`` of
that size), where the file is published, its pinned sha256 and the normalisation it was pretrained with.
A size whose file a user has is one row; nothing else changes.

**Finding the weights.** ``--weights`` (the ``encoder.pt`` file or the folder holding it), then the user cache
(``$EARTHEMBED_CACHE``, else ``$XDG_CACHE_HOME/earthembed``, else ``~/.cache/earthembed``: ``galileo/<size>/
encoder.pt``). ``--download`` fetches the published file into the cache (a temporary file in the cache folder,
checked against the pinned sha256 and renamed into place; a mismatch is deleted and reported). A row without a
pinned sha256 is never downloaded. ``$EARTHEMBED_WEIGHTS_MIRROR`` replaces the publisher's host (an internal
mirror; the tests serve ``../shared/data/weights`` this way). The file is read with
``torch.load(weights_only=True)``; non-finite tensors and tensors of another size are refused naming the file.

**Fitting to a store, by band name.** Every non-categorical store modality whose bands Galileo reads feeds
it: Sentinel-2 bands by name (whatever their order in the file: EuroSAT's B8A-last included; B01, B09 and B10
have no Galileo input and are ignored), Sentinel-1 VV/VH in dB, elevation (slope is computed), generic RGB(N)
rasters as Sentinel-2 B04/B03/B02(/B08). A group is fed only when all its bands are there (a store with B11 but
not B12 leaves SWIR hidden, with a warning); everything else is hidden, never zero-filled. NDVI is computed
from B04 and B08. Values are normalised as the publisher did (``(x - (mean - 2 std)) / 4 std`` with the
pretraining statistics; NDVI as is), expressed in the store's units: Sentinel-2 DN, dB and metres as they
are; 8-bit RGB is mapped onto Sentinel-2 DN by ``DN = value x 3000 / 255`` (0.3 reflectance, the usual
true-colour stretch, at 255), an approximation that the export records. Months come from the store's
``date_<modality>`` columns at embed time; chips without a date get June (the publisher's default). Several
modalities feeding the same bands (one place at several dates) become one time series, ordered by date.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import urllib.request
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from earthembed.data.dates import typical_date
from earthembed.data.modalities import BandMismatchError
from earthembed.models.published.bands import BYTE, S2_DN, PublishedWeightsWarning, unit_scale
from earthembed.models.published.checkpoint import (
    WeightsNotFoundError,
    check_finite,
    downloads_allowed,
    read_checkpoint,
    unwrap_state_dict,
)
from earthembed.models.published.spec import Spec
from earthembed.outputs import sha256_file

REPO_COMMIT = "0f0b5b95ac81acef4b74cf4686dc877202f4541b"
WEIGHTS_FILE = "encoder.pt"
MIRROR_ENV = "EARTHEMBED_WEIGHTS_MIRROR"
CACHE_ENV = "EARTHEMBED_CACHE"


@dataclasses.dataclass(frozen=True)
class GalileoRow:
    """One published Galileo size.

    Attributes:
        size: ``nano`` / ``tiny`` / ``base``; ``architecture`` the registry name (``galileo_<size>``) and
        ``arch`` its constructor arguments; ``url`` the published encoder file, ``mirror_path`` its path under
        ``$EARTHEMBED_WEIGHTS_MIRROR``; ``sha256`` pinned (None: not known here, so never downloaded).
    """

    size: str
    arch: dict[str, Any]
    url: str
    mirror_path: str
    sha256: str | None

    @property
    def architecture(self) -> str:
        return f"galileo_{self.size}"


GALILEO: dict[str, GalileoRow] = {
    "nano": GalileoRow("nano", {"embedding_size": 128, "depth": 4, "num_heads": 8},
                       f"https://raw.githubusercontent.com/nasaharvest/galileo/{REPO_COMMIT}/data/models/nano/encoder.pt",
                       "galileo-nano/encoder.pt",
                       "eab6acacf527886a508a555bc24efe4b4a2cf91b162e84cd1c4a1807e942180c"),
    "tiny": GalileoRow("tiny", {"embedding_size": 192, "depth": 12, "num_heads": 3},
                       "https://huggingface.co/nasaharvest/galileo/resolve/main/models/tiny/encoder.pt",
                       "galileo-tiny/encoder.pt", None),
    "base": GalileoRow("base", {"embedding_size": 768, "depth": 12, "num_heads": 12},
                       "https://huggingface.co/nasaharvest/galileo/resolve/main/models/base/encoder.pt",
                       "galileo-base/encoder.pt", None),
}
"""Published sizes. Shared by all: mlp_ratio 4, 24 dates, 8 x 8 patch projections (``config/models/*.json``)."""

PRETRAINING_STATS: dict[str, tuple[float, float]] = {
    "VV": (-11.728724389184965, 4.887145774840316),
    "VH": (-18.85558188024017, 5.730270320384293),
    "B02": (1395.3408730676722, 917.7041440370853),
    "B03": (1338.4026921784578, 913.2988423581528),
    "B04": (1343.09883810357, 1092.678723527555),
    "B05": (1543.8607982512297, 1047.2206083460424),
    "B06": (2186.2022069512263, 1048.0101611156767),
    "B07": (2525.0932853316694, 1143.6903026819996),
    "B08": (2410.3377187373408, 1098.979177731649),
    "B8A": (2750.2854646886753, 1204.472755085893),
    "B11": (2234.911100061487, 1145.9774063078878),
    "B12": (1474.5311266077113, 980.2429840007796),
    "elevation": (673.0152819503361, 983.0697298296237),
    "slope": (5.930092668915115, 8.167406789813247),
}
"""(mean, std) of the pretraining data per band in its units (S2: DN, S1: dB, elevation: m, slope: degrees):
``config/normalization.json`` keys "13" (space-time) and "16" (space) of the publisher, checked by a test."""
STD_MULTIPLIER = 2.0
PUBLISHED_UNITS: dict[str, str] = {"optical": S2_DN, "sar": "dB", "elevation": "m"}


def pixel_stats() -> dict[str, list[float]]:
    """Galileo band -> [shift, div] of the publisher's normalisation: ``(x - (mean - 2 std)) / (4 std)``;
    NDVI is fed as it is (shift 0, div 1)."""
    out = {b: [m - STD_MULTIPLIER * s, 2 * STD_MULTIPLIER * s] for b, (m, s) in PRETRAINING_STATS.items()}
    out["NDVI"] = [0.0, 1.0]
    return out


def cache_dir() -> Path:
    """earthembed's own weights cache (see the module docstring)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "earthembed"


def row_of(spec: Spec) -> GalileoRow:
    row = GALILEO.get(spec.name.lower())
    if row is None:
        raise ValueError(f"{spec.text}: unknown Galileo size {spec.name!r} (published: {', '.join(GALILEO)})")
    return row


def cached_file(row: GalileoRow) -> Path:
    return cache_dir() / "galileo" / row.size / WEIGHTS_FILE


def find_weights(spec: Spec, weights: str | Path | None = None, download: bool = False) -> Path:
    """The encoder file of ``spec``: ``weights`` (file or folder), the cache, or (``download``) fetched."""
    row = row_of(spec)
    if weights is not None:
        p = Path(weights).expanduser()
        if p.is_dir():
            f = p / WEIGHTS_FILE
            if not f.is_file():
                have = sorted(x.name for x in p.iterdir())[:10]
                raise WeightsNotFoundError(f"{p}: --weights folder holds no {WEIGHTS_FILE} (it has {have})")
            return f
        if not p.is_file():
            raise WeightsNotFoundError(f"{p}: --weights file not found")
        return p
    cached = cached_file(row)
    if cached.is_file():
        return cached
    if download:
        return fetch(row, cached)
    fetch_hint = (f"fetch it with --download (from {row.url}, sha256 checked)" if row.sha256 else
                  f"download {row.url} yourself (no sha256 is pinned for this size, so earthembed does not fetch it)")
    raise WeightsNotFoundError(
        f"{spec.text}: no weights file found (looked in: --weights not given; {cached}); {fetch_hint}, or pass "
        f"--weights with the {WEIGHTS_FILE} file or its folder")


def fetch(row: GalileoRow, dst: Path) -> Path:
    """Download ``row``'s file to ``dst`` through a temporary file beside it, checking the pinned sha256."""
    if row.sha256 is None:
        raise WeightsNotFoundError(f"galileo:{row.size}: no sha256 is pinned for this size, so it is not downloaded; "
                                   f"download {row.url} yourself and pass --weights FILE")
    if not downloads_allowed():
        raise WeightsNotFoundError(f"{dst}: not cached, and the environment forbids downloads (HF_HUB_OFFLINE is set)")
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    url = f"{mirror.rstrip('/')}/{row.mirror_path}" if mirror else row.url
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.part")
    h = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:  # noqa: S310 (http(s) URL from the row)
            for block in iter(lambda: r.read(1 << 20), b""):
                h.update(block)
                f.write(block)
        if h.hexdigest() != row.sha256:
            raise ValueError(f"{url}: downloaded file has sha256 {h.hexdigest()}, not the published {row.sha256}; "
                             "it was discarded (a changed or corrupted download)")
        os.replace(tmp, dst)
    except OSError as e:
        raise WeightsNotFoundError(f"{url}: download failed ({e}); nothing was cached") from None
    finally:
        tmp.unlink(missing_ok=True)
    return dst


def _state_for(state: dict[str, Tensor], source: Path, arch: dict[str, Any]) -> dict[str, Tensor]:
    """The publisher's state dict in :class:`~earthembed.models.galileo.GalileoNet` keys (``net.`` prefix).

    q/k/v projections become timm's fused ``qkv``; the fixed time-position and month tables are checked against
    ours (they are computed, not stored) and dropped; shapes and finiteness are checked, naming the file."""
    from earthembed.models.galileo import GalileoNet, month_table, sincos_1d
    from earthembed.models.published.checkpoint import shapes_only

    state = {k.replace(".backbone", ""): v for k, v in state.items()}
    check_finite(state, source)
    if "s_t_channel_embed" not in state or "blocks.0.attn.q.weight" not in state:
        raise ValueError(f"{source}: not a Galileo encoder state dict (keys: {sorted(state)[:6]} ...)")
    dim = int(state["s_t_channel_embed"].shape[1]) * 4
    if dim != arch["embedding_size"]:
        other = [s for s, r in GALILEO.items() if r.arch["embedding_size"] == dim]
        raise ValueError(f"{source}: holds a Galileo of embedding size {dim} (s_t_channel_embed "
                         f"{tuple(state['s_t_channel_embed'].shape)}), not {arch['embedding_size']}"
                         + (f": use galileo:{other[0]}" if other else ""))
    q = arch["embedding_size"] // 4
    for key, table in (("pos_embed", sincos_1d(q, torch.arange(state.get("pos_embed", torch.zeros(24, q)).shape[0]))),
                       ("month_embed.weight", month_table(q))):
        if key in state and not torch.allclose(state[key].float(), table, atol=1e-5):
            raise ValueError(f"{source}: {key} differs from Galileo's fixed encoding; not a Galileo encoder")
    out: dict[str, Tensor] = {}
    for k, v in state.items():
        if k in ("pos_embed", "month_embed.weight") or ".attn.k." in k or ".attn.v." in k:
            continue
        if ".attn.q." in k:
            out["net." + k.replace(".attn.q.", ".attn.qkv.")] = torch.cat(
                [v, state[k.replace(".attn.q.", ".attn.k.")], state[k.replace(".attn.q.", ".attn.v.")]], 0)
        else:
            out["net." + (k.replace(".proj.", ".") if "_embed." in k else k)] = v
    with shapes_only():
        ref = {f"net.{k}": v for k, v in GalileoNet(**arch).state_dict().items()}
    unexpected = sorted(set(out) - set(ref))
    missing = sorted(set(ref) - set(out))
    shapes = [f"{k} {tuple(out[k].shape)} vs {tuple(ref[k].shape)}" for k in sorted(set(out) & set(ref))
              if tuple(out[k].shape) != tuple(ref[k].shape)]
    if unexpected or missing or shapes:
        problems = "; ".join(x for x in (
            f"unexpected keys {unexpected[:4]}" if unexpected else "",
            f"missing keys {missing[:4]}" if missing else "",
            f"shape mismatches (file vs model) {'; '.join(shapes[:4])}" if shapes else "") if x)
        raise ValueError(f"{source}: does not fit galileo ({arch}): {problems}")
    return out


@dataclasses.dataclass
class GalileoWeights:
    """An opened Galileo file: its row, the state dict in earthembed's keys and where it came from."""

    spec: Spec
    row: GalileoRow
    state: dict[str, Tensor]
    provenance: dict[str, Any]


def open_galileo(spec: Spec, weights: str | Path | None = None, download: bool = False) -> GalileoWeights:
    """Find, read safely and convert a published Galileo encoder (see the module docstring)."""
    row = row_of(spec)
    path = find_weights(spec, weights, download)
    sha = sha256_file(path)
    raw, _ = unwrap_state_dict(read_checkpoint(path), path)
    state = _state_for(raw, path, row.arch)
    if row.sha256 is not None and sha != row.sha256:
        warnings.warn(f"{path}: sha256 {sha[:12]}... is not the published galileo:{row.size} file's "
                      f"({row.sha256[:12]}...); using it as given (recorded in the export)",
                      PublishedWeightsWarning, stacklevel=2)
    prov = {"publisher": "nasaharvest/galileo (Tseng et al. 2025, MIT)", "weights_file": str(path), "sha256": sha,
            "published_sha256": row.sha256, "url": row.url, "size": row.size}
    return GalileoWeights(spec, row, state, prov)


# -- fitting to a store --------------------------------------------------------------------------------------
KIND_GROUPS: dict[str, tuple[str, ...]] = {
    "optical": ("S2_RGB", "S2_Red_Edge", "S2_NIR_10m", "S2_NIR_20m", "S2_SWIR"),
    "sar": ("S1",),
    "elevation": ("SRTM",),
}
"""Which Galileo groups a store modality of each kind may feed."""


def _modality_plan(m: Any) -> tuple[dict[str, str], list[str]]:
    """(store band -> Galileo band for whole groups only, store bands of partly given groups) of one modality."""
    from earthembed.models.galileo import SPACE_GROUPS, SPACE_TIME_GROUPS, galileo_band

    groups = {g: b for g, b in {**SPACE_TIME_GROUPS, **SPACE_GROUPS}.items() if g in KIND_GROUPS.get(m.kind, ())}
    allowed = {b for bs in groups.values() for b in bs}
    mapping = {b: g for b in m.band_names if (g := galileo_band(b)) in allowed}
    partial: list[str] = []
    for gbands in groups.values():
        have = [b for b, g in mapping.items() if g in gbands]
        need = {g for g in gbands if g != "slope"}  # slope is computed from elevation when absent
        if have and not need <= {mapping[b] for b in have}:
            partial += have
    return {b: g for b, g in mapping.items() if b not in partial}, partial


def plan_inputs(store: Any, modalities: list[str] | None = None
                ) -> tuple[dict[str, dict[str, str]], dict[str, int], dict[str, Any]]:
    """(``{store modality: {store band: Galileo band}}``, ``{modality: timestep}``, report) of what ``store``
    feeds Galileo, by name. Modalities feeding the same bands (one place at several dates, e.g. ``naip_2010``,
    ``naip_2012``) become a time series ordered by their ``date_<modality>``; others share date 0."""
    cands = {k: m for k, m in store.modalities.items() if m.kind != "categorical"}
    if modalities is not None:
        unknown = [k for k in modalities if k not in store.modalities]
        if unknown:
            raise BandMismatchError(f"{store.path}: store has no modality {unknown} (it has {list(store.modalities)})")
        cands = {k: store.modalities[k] for k in modalities}
    plan: dict[str, dict[str, str]] = {}
    ignored: dict[str, list[str]] = {}
    partial: dict[str, list[str]] = {}
    for k, m in cands.items():
        mapping, part = _modality_plan(m)
        if part:
            partial[k] = part
        rest = [b for b in m.band_names if b not in mapping and b not in part]
        if rest:
            ignored[k] = rest
        if mapping:
            plan[k] = mapping
    if not plan:
        have = {k: (m.kind, m.band_names) for k, m in cands.items()}
        raise BandMismatchError(
            f"{store.path}: no modality holds bands Galileo reads (Sentinel-2 B02-B08/B8A/B11/B12, Sentinel-1 VV/VH "
            f"in dB, elevation, or RGB); the store has {have}")
    timesteps = {k: 0 for k in plan}
    feeders: dict[str, list[str]] = {}
    for k, mapping in plan.items():
        for g in mapping.values():
            feeders.setdefault(g, []).append(k)
    clashing = sorted({k for ks in feeders.values() if len(ks) > 1 for k in ks})
    if clashing:
        dates = {k: typical_date(store.index, k) for k in clashing}
        undated = [k for k, d in dates.items() if d is None]
        if undated:
            clash = {g: ks for g, ks in feeders.items() if len(ks) > 1}
            raise BandMismatchError(
                f"{store.path}: modalities {clashing} feed the same Galileo bands ({clash}) and {undated} have no "
                "date_<modality> to order them in time; choose the ones to embed (--modalities)")
        # Galileo's timestep is a month: sensors acquired in the same month (S2 and S1 two days apart) share one,
        # unless two dates of the same bands fall in one month; then every date is its own timestep
        when = {k: str(d)[:7] for k, d in dates.items()}
        if _same_bands_at_once(plan, clashing, when):
            when = {k: str(d) for k, d in dates.items()}
            clash = _same_bands_at_once(plan, clashing, when)
            if clash:
                raise BandMismatchError(f"{store.path}: modalities {clash[1]} feed the same Galileo bands on the same "
                                        f"date {clash[0]}; choose the ones to embed (--modalities)")
        order = sorted(set(when.values()))
        timesteps.update({k: order.index(d) for k, d in when.items()})
    report = {"ignored_store_bands": ignored, "incomplete_groups": partial,
              "timesteps": {k: t for k, t in timesteps.items() if clashing}}
    return plan, timesteps, report


def _same_bands_at_once(plan: dict[str, dict[str, str]], keys: list[str], when: dict[str, str]
                        ) -> tuple[str, list[str]] | None:
    """(time, modalities) of the first timestep where two of ``keys`` would feed the same Galileo band, else None."""
    for d in sorted(set(when.values())):
        ks = [k for k in keys if when[k] == d]
        bands = [g for k in ks for g in plan[k].values()]
        if len(bands) != len(set(bands)):
            return d, ks
    return None


def group_series(store: Any, plan: dict[str, dict[str, str]], timesteps: dict[str, int]
                 ) -> tuple[dict[str, dict[str, str]], dict[str, int | list[int]], dict[str, list[str]]]:
    """(plan, timesteps, ``{base: keys}``) with every time series of ``store`` (:func:`earthembed.data.dates.date_series`:
    ``s2``, ``s2_t2``, ... of one product and bands) whose keys all feed Galileo the same bands as one modality named
    by its base, read as one observation of ``T`` dates (:class:`~earthembed.data.date_views.SeriesView`) whose date
    ``t`` feeds the timestep its key had; other keys stay as they are (one date each)."""
    from earthembed.data.dates import date_series

    of_key: dict[str, tuple[str, list[str]]] = {}
    for base, s in date_series(store).items():
        keys = list(s.keys)
        if len(keys) > 1 and all(k in plan and plan[k] == plan[keys[0]] for k in keys):
            of_key.update({k: (base, keys) for k in keys})
    out_plan: dict[str, dict[str, str]] = {}
    steps: dict[str, int | list[int]] = {}
    series: dict[str, list[str]] = {}
    for k, mapping in plan.items():
        if k not in of_key:
            out_plan[k], steps[k] = mapping, timesteps[k]
        elif of_key[k][0] not in out_plan:
            base, keys = of_key[k]
            out_plan[base], steps[base], series[base] = mapping, [timesteps[x] for x in keys], keys
    return out_plan, steps, series


def store_scale(store: Any, key: str) -> float:
    """Factor turning the store's values of ``key`` into Galileo's units (1 for S2 DN, dB, m; 3000/255 for 8-bit)."""
    m = store.modality(key)
    want = PUBLISHED_UNITS[m.kind]
    where = f"{store.path} modality {key!r}"
    if m.kind == "sar" and m.units != want:
        raise BandMismatchError(f"{where}: Galileo reads Sentinel-1 backscatter in dB, the store holds {m.units!r}; "
                                "ingest it in dB (10 log10 of the linear value)")
    if m.kind == "elevation":
        if m.units not in ("m", "metres", "meters", ""):
            raise BandMismatchError(f"{where}: Galileo reads elevation in metres, the store holds {m.units!r}")
        return 1.0
    if m.kind == "optical" and m.units == "":
        return 1.0
    return unit_scale(m.units, want, where)


def fit_galileo(weights: GalileoWeights, store: Any, modalities: list[str] | None = None, patch_size: int = 8,
                default_month: int | None = None, series: bool = False) -> tuple[Any, dict[str, Any]]:
    """(Galileo encoder in eval mode fitted to ``store``, model.json-style meta); see the module docstring.
    ``series``: each time series of the store is one modality of ``T`` dates (:func:`group_series`; what
    ``embed --dates series`` reads), instead of one modality per store key at its timestep."""
    from earthembed.contract import InputSpec
    from earthembed.data.store import ChipStore
    from earthembed.models.export import FORMAT, FORMAT_VERSION, modality_products
    from earthembed.models.galileo import DEFAULT_MONTH, GalileoEncoder
    from earthembed.models.published.load import _state_id

    st = store if isinstance(store, ChipStore) else ChipStore(store)
    plan, timesteps, report = plan_inputs(st, modalities)
    grouped: dict[str, list[str]] = {}
    if series:
        plan, timesteps, grouped = group_series(st, plan, timesteps)  # type: ignore[assignment]
    what = weights.spec.text
    if report["incomplete_groups"]:
        warnings.warn(f"{what}: store bands {report['incomplete_groups']} are left out: Galileo reads their group "
                      "only whole (e.g. B11 with B12)", PublishedWeightsWarning, stacklevel=2)
    if report["ignored_store_bands"]:
        warnings.warn(f"{what}: store bands {report['ignored_store_bands']} have no Galileo input and are not read",
                      PublishedWeightsWarning, stacklevel=2)
    stats = pixel_stats()
    norm_stats: dict[str, dict[str, list]] = {}
    scales: dict[str, float] = {}
    for k, mapping in plan.items():
        scale = store_scale(st, k)
        other = {x: f for x in grouped.get(k, []) if (f := store_scale(st, x)) != scale}
        if other:
            raise BandMismatchError(f"{st.path}: the dates of series {k!r} are in other units ({k}: x{scale}, "
                                    f"{other}); a series is one product in one unit")
        scales[k] = scale
        bands = list(mapping)
        norm_stats[k] = {"bands": bands, "mean": [stats[mapping[b]][0] / scale for b in bands],
                         "std": [stats[mapping[b]][1] / scale for b in bands]}
    model = GalileoEncoder({k: list(m) for k, m in plan.items()}, band_map=plan, timesteps=timesteps,
                           **weights.row.arch,
                           patch_size=patch_size, pixel_stats=stats,
                           default_month=DEFAULT_MONTH if default_month is None else default_month)
    model._check_size(st.chip_size, st.chip_size)
    own = model.state_dict()
    model.load_state_dict({**own, **weights.state}, strict=True)
    model.eval()
    nodata = {k: st.modality(k).nodata for k in plan}
    normalization = {"stats": norm_stats,
                     "nodata": {k: "nan" if isinstance(v, float) and math.isnan(v) else v for k, v in nodata.items()}}
    derived = {k: model.derived_bands(k) for k in plan}
    published = {
        **weights.provenance,
        "spec": weights.spec.text,
        "band_map": plan,
        "derived_bands": {k: v for k, v in derived.items() if v},
        "ignored_store_bands": report["ignored_store_bands"],
        "incomplete_groups": report["incomplete_groups"],
        "normalization": {"formula": "(x * unit_scale - (mean - 2 std)) / (4 std), publisher's pretraining mean/std; "
                                     "NDVI fed as computed", "unit_scale": scales,
                          "pretraining_stats": {b: list(v) for b, v in PRETRAINING_STATS.items()},
                          **({"rgb_to_s2_dn": "DN = value x 3000 / 255 (0.3 reflectance at 255)"}
                             if any(st.modality(k).units == BYTE for k in plan) else {})},
        "months": f"from date_<modality> at embed time; {model.default_month} (0 = January) where missing",
        "timesteps": model.config["timesteps"],
        **({"series": grouped} if grouped else {}),
        "patch_size": model.patch_size,
    }
    products = modality_products(st.modalities, list(plan))
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": model.architecture,
        "config": model.config,
        "modalities": {k: list(v) for k, v in model.modalities.items()},
        "normalization": normalization,
        "products": products,
        "input_spec": InputSpec.from_bands(model.modalities, products, dates=model.input_dates).to_dict(),
        # another default month embeds undated chips differently: another model id (the publisher's June adds nothing)
        "model_id": f"{what}-p{model.patch_size}"
                    + (f"-m{model.default_month + 1}" if model.default_month != DEFAULT_MONTH else "")
                    + f"@{_state_id(model.state_dict())[:12]}",
        "embed_dim": model.embed_dim,
        "published": published,
    }
    return model, meta


class GalileoFamily:
    """``galileo:`` for :func:`earthembed.models.published.load.open_source`: open, then fit to a store."""

    architecture = "galileo"

    @staticmethod
    def open(spec: Spec, weights: str | Path | None = None, download: bool = False) -> GalileoWeights:
        return open_galileo(spec, weights, download)

    @staticmethod
    def fit(opened: GalileoWeights, store: Any, modalities: list[str] | None = None, patch_size: int | None = None,
            default_month: int | None = None, series: bool = False) -> tuple[Any, dict[str, Any]]:
        return fit_galileo(opened, store, modalities, patch_size or 8, default_month, series)


FAMILY = GalileoFamily()
