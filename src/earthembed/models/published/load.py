"""From a SPEC and a store to an earthembed encoder: :func:`load_encoder` (in memory) and :func:`export_encoder`.

Published weights become ordinary earthembed encoders (``timm_cnn`` / ``timm_vit``, state-dict keys
``backbones.<modality>.<timm key>``) whose ``meta`` is what ``model.json`` holds - architecture and config,
bands, the normalisation in store units, the store's products - plus ``published`` (publisher, weights file
and its sha256, how bands were matched, the load report). So ``embed``, ``fewshot``, ``segment`` and
``pretrain --init`` all take them through the one export format, and an export written by
:func:`export_encoder` loads with :func:`earthembed.models.export.load_model` like any other.
"""

from __future__ import annotations

import dataclasses
import hashlib
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from earthembed.models.base import Encoder
from earthembed.models.published.bands import (
    EXTRA_BANDS,
    PublishedWeightsWarning,
    adapt_first_layer,
    choose_modality,
    store_normalization,
)
from earthembed.models.published.checkpoint import shapes_only
from earthembed.models.published.spec import EXPORT, PublishedModel, Spec, parse_spec
from earthembed.registry import Registry

PUBLISHERS: Registry[PublishedModel] = Registry("publisher")
"""Publisher family -> ``open(spec, weights=None, download=False) -> PublishedModel`` (lazy targets)."""
PUBLISHERS.register("timm", "earthembed.models.published.timm_weights:open_timm")
PUBLISHERS.register("torchgeo", "earthembed.models.published.torchgeo_weights:open_torchgeo")
PUBLISHERS.register("mmearth", "earthembed.models.published.mmearth:open_mmearth")
MULTI_INPUT: Registry[Any] = Registry("multi-input publisher")
"""Families whose models read several store modalities and fit themselves to a store: an object with
``architecture``, ``open(spec, weights, download)`` and ``fit(opened, store, modalities, **options) -> (encoder,
meta)`` (lazy targets)."""
MULTI_INPUT.register("galileo", "earthembed.models.published.galileo:FAMILY")
FAMILY_OPTIONS: dict[str, tuple[str, ...]] = {"galileo": ("patch_size", "default_month", "series")}
"""Options a family takes beyond the common ones (``--patch-size``, ...)."""


def open_published(spec: str | Spec, weights: str | Path | None = None, download: bool = False) -> PublishedModel:
    """Read a published SPEC's weights (``--weights`` file or the usual caches) and map them to timm's layout."""
    spec = parse_spec(spec) if isinstance(spec, str) else spec
    if spec.family == EXPORT:
        raise ValueError(f"{spec.text}: an earthembed export is loaded with load_encoder / load_model, not opened as published weights")
    if spec.family in MULTI_INPUT:
        raise ValueError(f"{spec.text}: {spec.family} models are fitted to a store as a whole; use load_encoder(spec, store)")
    return PUBLISHERS.get(spec.family)(spec, weights=weights, download=download)


def _state_id(state: dict[str, torch.Tensor]) -> str:
    """sha256 of a state dict's names and bytes (the id of the adapted weights, before any file exists)."""
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str(t.dtype).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _build_loaded(architecture: str, config: dict[str, Any], state: dict[str, torch.Tensor], source: str) -> Encoder:
    """``architecture(**config)`` holding ``state``; parameters ``state`` lacks (those a publisher never trains,
    accepted by the strict key check) get their module's own initialisation.

    The model is built on the meta device and only then given memory: random initialisation of a model
    whose every weight is replaced anyway costs seconds (minutes for a ViT-H on a few cores). Models with
    non-persistent buffers, which no state dict restores, are built the ordinary way."""
    from earthembed.models.registry import build_model

    with shapes_only():
        model = build_model(architecture, **config)
    if not isinstance(model, Encoder):
        raise ValueError(f"{source}: {architecture} is not an earthembed Encoder")
    keys = model.state_dict()
    for k, v in state.items():
        if k not in keys or tuple(keys[k].shape) != tuple(v.shape):
            have = tuple(keys[k].shape) if k in keys else None
            raise ValueError(f"{source}: {k} {tuple(v.shape)} does not fit the {architecture} model ({have})")
    if any(n not in keys for n, _ in model.named_buffers()):
        model = build_model(architecture, **config)
    else:
        model.to_empty(device="cpu")
        for k in keys:
            if k in state:
                continue
            owner, _, leaf = k.rpartition(".")
            mod = model.get_submodule(owner)
            if leaf == "num_batches_tracked":
                getattr(mod, leaf).zero_()
            elif hasattr(mod, "reset_parameters"):
                mod.reset_parameters()
            else:
                raise ValueError(f"{source}: {k} is not in the file and {type(mod).__name__} cannot initialise it")
    own = model.state_dict()
    model.load_state_dict({**own, **{k: v.to(own[k].dtype) for k, v in state.items()}}, strict=True)
    return model


def adapt_to_store(
    pub: PublishedModel,
    store: Any,
    modality: str | None = None,
    extra_bands: str = "ignore",
    input_size: int | None = None,
) -> tuple[Encoder, dict[str, Any]]:
    """(encoder in eval mode, model.json-style meta) of ``pub`` fitted to ``store``'s bands and units.

    ``modality``: the store modality to feed (default: the one sharing most bands with the publisher).
    ``extra_bands``: what happens to store bands the publisher never saw: ``"ignore"`` or ``"add"`` (new
    zero-initialised input channels, see :mod:`earthembed.models.published.bands`). ``input_size``: resize
    chips to this size first (None: native size).
    """
    from earthembed.data.store import ChipStore
    from earthembed.models.export import FORMAT, FORMAT_VERSION, modality_products

    if extra_bands not in EXTRA_BANDS:
        raise ValueError(f"extra_bands must be one of {EXTRA_BANDS}, got {extra_bands!r}")
    st = store if isinstance(store, ChipStore) else ChipStore(store)
    key, band_map = choose_modality(st, pub.input, modality)
    pub_bands = pub.input.bands
    store_bands = st.band_names(key)
    missing = [p for p in pub_bands if p not in band_map]
    extra = [b for b in store_bands if b not in band_map.values()]
    added = extra if extra_bands == "add" else []
    normalization, norm_info = store_normalization(pub.input, band_map, added, st, key)
    model_bands = normalization["stats"][key]["bands"]
    sources = [pub_bands.index(p) for p in pub_bands if p in band_map] + [None] * len(added)
    fill = pub.input.normalised_fill()
    state, folded = adapt_first_layer(pub.state, pub.first_conv, sources, [pub_bands.index(p) for p in missing], fill)
    what = pub.spec.label
    if missing:
        fills = "their normalised mean" if pub.input.fill is None else {p: pub.input.fill[pub_bands.index(p)] for p in missing}
        warnings.warn(f"{what}: store modality {key!r} lacks published bands {missing}; their input weights are "
                      f"removed and the bands read as typical values {fills}", PublishedWeightsWarning, stacklevel=2)
    if extra and not added:
        warnings.warn(f"{what}: store bands {extra} of {key!r} are not read by the published weights and are ignored "
                      "(extra_bands='add' gives them new zero-initialised input channels)",
                      PublishedWeightsWarning, stacklevel=2)
    config = {**pub.config, "modalities": {key: list(model_bands)}, "input_size": input_size}
    model = _build_loaded(pub.architecture, config, {f"backbones.{key}.{k}": v for k, v in state.items()},
                          str(pub.provenance.get("weights_file")))
    model.eval()
    published = {
        **pub.provenance,
        "spec": pub.spec.text,
        "publisher_bands": list(pub_bands),
        "store_modality": key,
        "band_map": dict(band_map),
        "missing_bands": missing,
        "missing_bands_folded_into": folded,
        "added_bands": list(added),
        "ignored_store_bands": [b for b in extra if b not in added],
        "normalization": norm_info,
    }
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": model.architecture,
        "config": model.config,
        "modalities": {key: list(model_bands)},
        "normalization": normalization,
        "products": modality_products(st.modalities, [key]),
        "model_id": f"{what}@{_state_id(model.state_dict())[:12]}",
        "embed_dim": model.embed_dim,
        "published": published,
    }
    return model, meta


def check_options(spec: Spec, options: dict[str, Any] | None) -> dict[str, Any]:
    """``options`` without unset (None) values, refused when ``spec``'s family does not take them."""
    opts = {k: v for k, v in (options or {}).items() if v is not None}
    allowed = FAMILY_OPTIONS.get(spec.family, ())
    bad = [k for k in opts if k not in allowed]
    if bad:
        flags = ", ".join("--" + k.replace("_", "-") for k in bad)
        takers = [f for f, o in FAMILY_OPTIONS.items() if set(bad) <= set(o)]
        raise ValueError(f"{spec.text}: {flags} does not apply to {spec.family} models"
                         + (f" (only to {', '.join(t + ':' for t in takers)})" if takers else ""))
    return opts


@dataclasses.dataclass
class ModelSource:
    """An opened SPEC: what every command that names a model (``embed --encoder``, ``pretrain --init``,
    ``segment --init/--compare``) gets from :func:`open_source`, before it knows the store.

    Attributes:
        spec: the parsed SPEC; ``architecture``: the registry name the weights fill (known before fitting, so
        configs can be checked first); ``opened``: the export path, the :class:`PublishedModel` or the
        family's opened weights.
    """

    spec: Spec
    architecture: str
    opened: Any

    @property
    def is_export(self) -> bool:
        return self.spec.family == EXPORT

    def fit(self, store: Any = None, modality: str | Sequence[str] | None = None, extra_bands: str = "ignore",
            input_size: int | None = None, options: dict[str, Any] | None = None) -> tuple[Encoder, dict[str, Any]]:
        """(encoder in eval mode, model.json-style meta) fitted to ``store`` (an export is returned as it is)."""
        from earthembed.models.export import load_model

        spec = self.spec
        opts = check_options(spec, options)
        if self.is_export:
            model, meta = load_model(spec.name)
            return model, {**meta, "path": str(spec.name)}
        if store is None:
            raise ValueError(f"{spec.text}: published weights are fitted to a store's bands and units; give the store")
        mods = [modality] if isinstance(modality, str) else (list(modality) if modality is not None else None)
        if spec.family in MULTI_INPUT:
            if input_size is not None or extra_bands != "ignore":
                raise ValueError(f"{spec.text}: --input-size and --extra-bands do not apply to {spec.family} models")
            return MULTI_INPUT.get(spec.family).fit(self.opened, store, mods, **opts)
        if mods is not None and len(mods) != 1:
            raise ValueError(f"{spec.text}: published {spec.family} weights read one store modality; name one "
                             f"(got {mods})")
        return adapt_to_store(self.opened, store, mods[0] if mods else None, extra_bands, input_size)


def open_source(spec: str | Spec, weights: str | Path | None = None, download: bool = False) -> ModelSource:
    """The one parser and opener of model SPECs (see :mod:`earthembed.models.published.spec`): an export is
    checked (its ``model.json``), published weights are found (``weights``, the caches, ``download``) and read."""
    from earthembed.models.export import read_export

    spec = parse_spec(spec) if isinstance(spec, str) else spec
    if spec.family == EXPORT:
        if weights is not None:
            raise ValueError(f"{spec.text}: an earthembed export carries its weights; drop --weights")
        meta, _ = read_export(spec.name)
        return ModelSource(spec, str(meta.architecture), Path(spec.name))
    if spec.family in MULTI_INPUT:
        family = MULTI_INPUT.get(spec.family)
        return ModelSource(spec, family.architecture, family.open(spec, weights, download))
    pub = open_published(spec, weights, download)
    return ModelSource(spec, pub.architecture, pub)


def load_encoder(
    spec: str | Spec,
    store: Any = None,
    weights: str | Path | None = None,
    modality: str | Sequence[str] | None = None,
    extra_bands: str = "ignore",
    input_size: int | None = None,
    download: bool = False,
    options: dict[str, Any] | None = None,
) -> tuple[Encoder, dict[str, Any]]:
    """The one entry point: (encoder in eval mode, model.json-style meta) for any SPEC.

    An earthembed export is loaded as it is (``store`` and the adaptation options are not used; its bands
    are checked against a store where it is used). A published SPEC (``timm:``, ``torchgeo:``, ``mmearth:``) is
    opened (:func:`open_published`: ``weights`` file or the usual caches; ``download`` only if allowed) and
    fitted to ``store`` (:func:`adapt_to_store`), which is then required. Multi-input families (``galileo:``)
    fit themselves to every store modality they read (``modality``: a list restricts them) and take
    family ``options`` (:data:`FAMILY_OPTIONS`, e.g. ``patch_size``). Same as
    ``open_source(spec, weights, download).fit(store, ...)``.
    """
    spec = parse_spec(spec) if isinstance(spec, str) else spec
    check_options(spec, options)
    return open_source(spec, weights, download).fit(store, modality, extra_bands, input_size, options)


def export_encoder(
    spec: str | Spec,
    store: Any,
    out_dir: str | Path,
    weights: str | Path | None = None,
    modality: str | Sequence[str] | None = None,
    extra_bands: str = "ignore",
    input_size: int | None = None,
    download: bool = False,
    options: dict[str, Any] | None = None,
) -> Path:
    """Write the earthembed export (``model.safetensors`` + ``model.json``) of a published SPEC fitted to ``store``."""
    from earthembed.models.export import ModelMeta, export_model

    model, fitted = load_encoder(spec, store, weights, modality, extra_bands, input_size, download, options)
    meta = ModelMeta.of(fitted, spec)
    if meta.published is None:
        raise ValueError(f"{spec}: already an earthembed export ({meta.path})")
    return export_model(model, out_dir, meta.normalizer, model_id=meta.model_id,
                        extra={"published": meta.published}, products=meta.products)
