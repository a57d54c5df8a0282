"""Self-describing model export: ``model.safetensors`` + ``model.json``, never pickle.

``model.json`` carries everything needed to use the weights on a new store: the architecture and its
constructor config, the band names of every modality, the normalisation statistics (by band name) of
the pretraining store and, under ``"products"``, what each modality key meant in that store:
``{"<key>": {"product": "s1_grd_db", "units": "dB", "kind": "sar"}}`` (see :func:`modality_products`), so
a model trained on ``s1_grd_db`` is not silently applied to ``s1_grd_linear`` data under the same key.
Loading never unpickles: weights come from safetensors, metadata from JSON.

``format_version`` 2 adds ``"input_spec"``: what the model consumes as one typed section
(:class:`~earthembed.contract.InputSpec` as JSON: per modality its bands by name, product, units, kind and the
dates it reads), which :func:`model_input_spec` returns. ``modalities`` and ``products`` are still written, so
readers of version 1 keep working; version 1 files (no ``input_spec``) are still read, their spec derived from
``modalities`` and ``products``.

Code reads ``model.json`` through one typed reader, :class:`ModelMeta` (:func:`read_export`, :func:`load_export`,
:meth:`ModelMeta.of` for the same dict built in memory by the published-weight fitters), not by string keys: the
keys are checked once, where the dict is read, and a renamed key is one place to change. :func:`read_model_meta`
and :func:`load_model` still return the plain dict for scripts written against it.

Lightning ``.ckpt`` files are pickles and are refused by :func:`load_model`; convert one with
:func:`export_checkpoint` (which reads it with ``torch.load(weights_only=True)``, i.e. no arbitrary code).
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as _dt
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from earthembed.contract import ContractError, InputSpec
from earthembed.data.modalities import Modality
from earthembed.data.normalize import Normalizer
from earthembed.models.base import Encoder
from earthembed.models.registry import MODELS, build_model
from earthembed.outputs import sha256_file, write_json

FORMAT = "earthembed-model"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
WEIGHTS_FILE = "model.safetensors"
META_FILE = "model.json"


PRODUCT_FIELDS = ("product", "units", "kind")


def _model_hash(weights: Path, config: Mapping[str, Any]) -> str:
    """sha256 of the weights file's bytes followed by the canonical JSON of the model config."""
    return sha256_file(weights, json.dumps(config, sort_keys=True, default=str).encode())


def modality_products(modalities: Mapping[str, Modality], keys: Iterable[str] | None = None) -> dict[str, dict[str, str]]:
    """``{key: {"product", "units", "kind"}}`` of a store's modalities (``ChipStore.modalities``), for ``keys``."""
    keys = list(modalities) if keys is None else list(keys)
    missing = [k for k in keys if k not in modalities]
    if missing:
        raise ValueError(f"no modality definitions for {missing} (have {list(modalities)})")
    return {k: {f: str(getattr(modalities[k], f)) for f in PRODUCT_FIELDS} for k in keys}


def check_export_dir(out_dir: str | Path) -> Path:
    """``out_dir`` as a Path if an export may be written there: absent, empty, or an earthembed export
    (which is then replaced). Anything else is a user's directory or file, and a FileExistsError naming it:
    an export never writes its files among someone else's."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out}: exists and is not a directory; a model export is a directory")
    if out.is_dir() and not (out / META_FILE).is_file() and any(out.iterdir()):
        raise FileExistsError(f"{out}: exists, is not empty and is not an earthembed model export "
                              f"(no {META_FILE}); choose another output directory")
    return out


def export_model(
    model: Encoder,
    out_dir: str | Path,
    normalizer: Normalizer,
    model_id: str | None = None,
    extra: dict[str, Any] | None = None,
    products: dict[str, dict] | None = None,
) -> Path:
    """Write ``out_dir/model.safetensors`` and ``out_dir/model.json``; returns ``out_dir``.

    ``model_id`` defaults to ``<architecture>-<first 12 hex of the sha256 of weights and config>``, so identical
    models get identical ids and embedding tables can name the model that made them (the same weights pooled
    or averaged differently, e.g. ``pool`` / ``tta``, embed differently and get another id). ``products`` (e.g.
    :func:`modality_products` of the training store) is recorded as ``model.json["products"]``, restricted
    to the model's modalities, which it must all cover; without it the key is absent. ``out_dir`` must be
    absent, empty or an earlier export (:func:`check_export_dir`).
    """
    arch = getattr(model, "architecture", "")
    if not isinstance(model, Encoder) or arch not in MODELS:
        raise ValueError(f"export_model needs a registered earthembed Encoder, got {type(model).__name__} "
                         f"(architecture {arch!r}; registered: {MODELS.names()})")
    out = check_export_dir(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    missing = [k for k in model.modalities if k not in normalizer.stats]
    if missing:
        raise ValueError(f"normaliser has no statistics for model modalities {missing}")
    if products is not None:
        missing = [k for k in model.modalities if k not in products]
        if missing:
            raise ValueError(f"products has no entry for model modalities {missing}")
        products = {k: {f: products[k].get(f) for f in PRODUCT_FIELDS} for k in model.modalities}
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    weights = out / WEIGHTS_FILE
    tmp = weights.with_name(weights.name + ".tmp")
    # no safetensors metadata: its header order is not stable, and the id hashes the file's bytes
    save_file(state, str(tmp))
    os.replace(tmp, weights)
    meta: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": arch,
        "config": model.config,
        "modalities": {k: list(v) for k, v in model.modalities.items()},
        "normalization": normalizer.to_dict(),
        **({"products": products} if products is not None else {}),
        "input_spec": InputSpec.from_bands(model.modalities, products, dates=model.input_dates).to_dict(),
        "model_id": model_id or f"{arch}-{_model_hash(weights, model.config)[:12]}",
        "embed_dim": model.embed_dim,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        **(extra or {}),
    }
    write_json(out / META_FILE, meta)  # standard JSON: NaN/Infinity (e.g. broken statistics) are refused
    return out


def _read_meta_file(path: str | Path) -> tuple[dict[str, Any], Path]:
    """(``model.json`` contents, its path) with the file-level checks: not a checkpoint, present, JSON, an
    earthembed model of a readable ``format_version``. The keys are checked by :meth:`ModelMeta.from_dict`."""
    p = Path(path)
    if p.suffix == ".ckpt":
        raise ValueError(
            f"{p}: a Lightning checkpoint is a pickle and is not loaded directly; convert it with "
            "`earthembed export-checkpoint --ckpt CKPT --store STORE --out DIR` "
            "(earthembed.models.export.export_checkpoint) and load DIR"
        )
    meta_path = p / META_FILE if p.is_dir() else p
    if not meta_path.exists():
        raise FileNotFoundError(f"{meta_path}: no exported model here (expected {META_FILE} + {WEIGHTS_FILE})")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{meta_path}: corrupt model metadata ({e})") from e
    if meta.get("format") != FORMAT:
        raise ValueError(f"{meta_path}: not an earthembed model (format {meta.get('format')!r})")
    try:
        version = int(meta.get("format_version", 1))
    except (TypeError, ValueError):
        raise ValueError(f"{meta_path}: format_version must be a whole number, got {meta['format_version']!r}") from None
    if version > FORMAT_VERSION:
        raise ValueError(f"{meta_path}: format_version {version} is newer than this earthembed supports "
                         f"(it reads {list(READABLE_VERSIONS)})")
    return meta, meta_path


def read_model_meta(path: str | Path) -> tuple[dict[str, Any], Path]:
    """(``model.json`` contents, export directory) for an export dir or its ``model.json``, checked as
    :func:`read_export` checks it; the plain dict, for scripts written against it (code reads :func:`read_export`)."""
    meta, meta_path = _read_meta_file(path)
    ModelMeta.from_dict(meta, meta_path)
    return meta, meta_path.parent


def read_export(path: str | Path) -> tuple[ModelMeta, Path]:
    """(typed ``model.json``, export directory) for an export dir or its ``model.json``: the one reader of the
    file (one-line errors naming the file and the key)."""
    meta, meta_path = _read_meta_file(path)
    return ModelMeta.from_dict(meta, meta_path), meta_path.parent


def _check_meta(meta: Mapping[str, Any], meta_path: str | Path) -> None:
    """The keys ``embed`` and ``load_model`` use, with their types: an edited file fails here, naming the key."""
    for key in ("config", "modalities", "normalization"):
        if not isinstance(meta.get(key), dict):
            what = "missing" if key not in meta else f"must be a JSON object, got {meta[key]!r:.80}"
            raise ValueError(f"{meta_path}: key {key!r} {what}")
    for k, bands in meta["modalities"].items():
        if not isinstance(bands, list) or not bands or not all(isinstance(b, str) for b in bands):
            raise ValueError(f"{meta_path}: modalities.{k} must be a non-empty list of band names, got {bands!r:.80}")
    try:
        norm = Normalizer.from_dict(meta["normalization"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{meta_path}: 'normalization' is malformed ({type(e).__name__}: {e})") from e
    missing = [k for k in meta["modalities"] if k not in norm.stats]
    if missing:
        raise ValueError(f"{meta_path}: 'normalization' has no statistics for modalities {missing}")
    if "input_spec" in meta:
        try:
            spec = InputSpec.from_dict(meta["input_spec"])
        except ContractError as e:
            raise ValueError(f"{meta_path}: 'input_spec' is malformed ({e})") from e
        if spec.bands != meta["modalities"]:
            raise ValueError(f"{meta_path}: 'input_spec' names other modalities or bands ({spec.bands}) than "
                             f"'modalities' ({meta['modalities']})")
        for k, rec in (meta.get("products") or {}).items():  # written for version-1 readers: must say the same
            m = spec[k] if k in spec and isinstance(rec, Mapping) else None
            differ = [f for f in ("product", "units") if m is not None and rec.get(f) != getattr(m, f)]
            if differ:
                raise ValueError(f"{meta_path}: 'input_spec' and 'products' disagree on {k}'s {' and '.join(differ)} "
                                 f"({[getattr(m, f) for f in differ]} vs {[rec.get(f) for f in differ]})")


def model_input_spec(meta: Mapping[str, Any]) -> InputSpec:
    """What the model of a ``model.json`` dict consumes: its ``input_spec`` (format 2), or for a version 1 file
    (and model dicts built in memory without one) the spec made of its ``modalities`` and ``products``."""
    if "input_spec" in meta:
        return InputSpec.from_dict(meta["input_spec"])
    return InputSpec.from_bands(meta["modalities"], meta.get("products"))


@dataclasses.dataclass(frozen=True)
class ModelMeta:
    """``model.json`` read once, with typed fields for what code uses, so no reader looks it up by string key (as
    :class:`~earthembed.contract.InputSpec` is for what a model consumes). Made by :meth:`from_dict` (which checks
    the keys), :func:`read_export` / :func:`load_export` or :meth:`of`; ``raw`` keeps the dict it was made from,
    every key verbatim, so :meth:`to_dict` gives it back exactly (a re-written file does not change by a byte).

    Attributes:
        architecture, config: the registry name and constructor config the model is rebuilt from.
        modalities: bands by modality, in the model's order.
        normalization: the :class:`~earthembed.data.normalize.Normalizer` dict (:attr:`normalizer` builds it).
        products: ``{modality: {"product", "units", "kind"}}`` of the training store, or None when not recorded.
        input_spec: what the model consumes (:func:`model_input_spec`: also for version 1 files).
        model_id, embed_dim: as written by :func:`export_model` (None when absent).
        published: provenance of published weights (``earthembed.models.published``), or None.
        path: the export an in-memory dict was loaded from (``ModelSource.fit``), or None; never in a file.
    """

    architecture: str
    config: dict[str, Any]
    modalities: dict[str, list[str]]
    normalization: dict[str, Any]
    products: dict[str, dict[str, Any]] | None
    input_spec: InputSpec
    model_id: str | None
    embed_dim: int | None
    published: dict[str, Any] | None
    path: str | None
    raw: Mapping[str, Any] = dataclasses.field(repr=False)

    @classmethod
    def from_dict(cls, meta: Mapping[str, Any], where: str | Path = "model metadata") -> ModelMeta:
        """The typed reading of a ``model.json`` dict; a key readers need that is missing or malformed is a
        one-line ValueError naming ``where`` (the file) and the key."""
        if meta.get("architecture") not in MODELS:
            raise ValueError(f"{where}: unknown architecture {meta.get('architecture')!r} (registered: {MODELS.names()})")
        _check_meta(meta, where)
        raw = copy.deepcopy(dict(meta))  # later edits of the caller's dict do not reach the fields
        return cls(architecture=raw["architecture"], config=raw["config"], modalities=raw["modalities"],
                   normalization=raw["normalization"], products=raw.get("products"),
                   input_spec=model_input_spec(raw), model_id=raw.get("model_id"), embed_dim=raw.get("embed_dim"),
                   published=raw.get("published"), path=raw.get("path"), raw=raw)

    @classmethod
    def of(cls, meta: ModelMeta | Mapping[str, Any], where: str | Path = "model metadata") -> ModelMeta:
        """``meta`` as a ModelMeta: one as it is, a ``model.json``-style dict (the published fitters', or
        :func:`load_model`'s) through :meth:`from_dict`. Where a dict crosses into code that reads it."""
        return meta if isinstance(meta, ModelMeta) else cls.from_dict(meta, where)

    def to_dict(self) -> dict[str, Any]:
        """The dict it was made from (a deep copy), key for key and in the same order."""
        return copy.deepcopy(dict(self.raw))

    def with_keys(self, **keys: Any) -> ModelMeta:
        """A copy with ``keys`` set (e.g. another ``model_id``), checked again."""
        return ModelMeta.from_dict({**self.to_dict(), **keys}, "model metadata")

    @property
    def normalizer(self) -> Normalizer:
        """The normaliser of the statistics the model was trained with."""
        return Normalizer.from_dict(self.normalization)


def _build(meta: ModelMeta, where: str | Path) -> Encoder:
    """The architecture of a ``model.json``, rebuilt through the model registry."""
    try:
        return build_model(meta.architecture, **meta.config)
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(f"{where}: 'config' does not build a {meta.architecture} ({e})") from e


def random_init_like(meta: ModelMeta | Mapping[str, Any], seed: int = 0) -> Encoder:
    """Same architecture as an export (its :class:`ModelMeta` or ``model.json`` dict), freshly initialised: the
    random baseline."""
    meta = ModelMeta.of(meta, "random_init_like")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _build(meta, "random_init_like")
    return model.eval()


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[Encoder, dict[str, Any]]:
    """(model in eval mode, ``model.json`` dict) from an export dir or its ``model.json``; safetensors only. The
    plain dict, for scripts written against it; code reads :func:`load_export`."""
    model, meta = load_export(path, device)
    return model, meta.to_dict()


def load_export(path: str | Path, device: str | torch.device = "cpu") -> tuple[Encoder, ModelMeta]:
    """(model in eval mode, typed ``model.json``) from an export dir or its ``model.json``; safetensors only."""
    meta, root = read_export(path)
    weights = root / WEIGHTS_FILE
    if not weights.exists():
        raise FileNotFoundError(f"{weights}: weights file missing")
    model = _build(meta, root / META_FILE)
    try:
        state = load_file(str(weights), device=str(device))
    except SafetensorError as e:
        raise ValueError(f"{weights}: weights file is corrupt or truncated ({e}); re-export the model") from e
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise ValueError(f"{weights}: weights do not match the config in {META_FILE}: {' '.join(first)[:400]}") from e
    nonfinite = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if nonfinite:
        raise ValueError(
            f"{weights}: tensors {nonfinite[:3]}{' ...' if len(nonfinite) > 3 else ''} hold NaN/Inf values; "
            "embeddings from it would be meaningless (a diverged training run?)"
        )
    return model.to(device).eval(), meta


def read_checkpoint(ckpt: str | Path, mmap: bool = False) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` of a checkpoint, with one-line errors naming the file: one that would
    need to run code (a malicious or foreign pickle) is refused, a corrupt or truncated one says so.

    ``mmap=True`` maps the tensors instead of reading them (a cheap validity check of a large checkpoint)."""
    import pickle
    import warnings

    ckpt = Path(ckpt)
    if not ckpt.is_file():
        raise FileNotFoundError(f"{ckpt}: checkpoint not found")
    try:
        with warnings.catch_warnings():  # e.g. "unexpected pickle protocol" on garbage: our error says it all
            warnings.simplefilter("ignore")
            data = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        code = [line.strip() for line in str(e).splitlines() if "GLOBAL" in line]
        if code:
            raise ValueError(
                f"{ckpt}: refused: loading it would run code ({code[0]}); earthembed loads checkpoints with "
                "torch.load(weights_only=True) and never executes code from a file"
            ) from e
        detail = [line.strip() for line in str(e).splitlines() if "Unpickler error" in line or "Unsupported" in line]
        raise ValueError(f"{ckpt}: not a readable checkpoint (corrupt or not a PyTorch file): {' '.join(detail)[:200]}") from e
    except Exception as e:  # garbage makes the unpickler fail in many ways (IndexError, KeyError, EOFError...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ValueError(
            f"{ckpt}: not a readable checkpoint (corrupt or truncated?): {type(e).__name__}: {first[:200]}"
        ) from e
    if not isinstance(data, dict):
        raise ValueError(f"{ckpt}: not a Lightning checkpoint (holds a {type(data).__name__}, not a dict)")
    return data


def export_checkpoint(
    ckpt: str | Path,
    out_dir: str | Path,
    normalizer: Normalizer,
    extra: dict[str, Any] | None = None,
    products: dict[str, dict] | None = None,
) -> Path:
    """Export the encoder of a pretraining checkpoint (``torch.load(weights_only=True)``, no code runs).

    ``products``: as for :func:`export_model` (e.g. ``modality_products(ChipStore(store).modalities)``).
    """
    ckpt = Path(ckpt)
    data = read_checkpoint(ckpt)
    hp = data.get("hyper_parameters", {})
    if not isinstance(hp, dict) or "model_name" not in hp or not isinstance(hp.get("model_args"), dict) \
            or not isinstance(data.get("state_dict"), dict):
        raise ValueError(f"{ckpt}: not an earthembed pretraining checkpoint (no model_name/model_args/state_dict)")
    try:
        model = build_model(hp["model_name"], **hp["model_args"])
        state = {k[len("model.") :]: v for k, v in data["state_dict"].items() if k.startswith("model.")}
        model.load_state_dict(state, strict=True)
    except (TypeError, KeyError, RuntimeError) as e:
        raise ValueError(f"{ckpt}: its model does not rebuild from its own hyper-parameters ({str(e)[:300]})") from e
    info = {"checkpoint": str(ckpt), "global_step": int(data.get("global_step", 0))}
    return export_model(model, out_dir, normalizer, extra={"pretrain": info, **(extra or {})}, products=products)
