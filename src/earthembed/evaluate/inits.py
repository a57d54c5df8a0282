"""Where a fine-tuned encoder starts: ``segment --init`` / ``--compare`` specs resolved in one place.

``resolve_init`` is the single entry point; it accepts

* an earthembed export directory (or its ``model.json``): any registered architecture, rebuilt through the model
  registry from its safetensors (:func:`earthembed.models.export.load_model`), normalised with the statistics
  it was trained with;
* ``random``: a freshly initialised encoder; its architecture is ``model.name`` (+ ``model.*`` arguments) of the
  segment config when given, else copied from the first export among the inits (``reference``);
  ``random:<model name>`` or ``random:<export dir>`` names it explicitly. Random encoders are normalised with
  the target store's own statistics (they know no others);
* a published model SPEC (``galileo:nano``, ``timm:<name>``, ``torchgeo:<weights>``, ``mmearth:<file>``), opened
  and fitted to the store by the same parser as ``embed --encoder`` and ``pretrain --init``
  (:func:`earthembed.models.published.open_source`; ``weights`` / ``download`` / family ``options`` such as
  ``patch_size`` apply to it); a ``random`` compared with it copies its architecture and, where the model
  derives bands from its inputs (Galileo's NDVI), its normalisation, so only the weights differ;
* ``<scheme>:<name>`` for a scheme registered in :data:`INIT_SCHEMES`: the scheme's factory gets
  ``(name, store)`` and returns an :class:`InitSource`.

Every source says which bands it needs; the segment harness checks them against the store by name before any
training (:meth:`earthembed.contract.InputSpec.request`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from earthembed.data.store import ChipStore
from earthembed.models.base import Encoder
from earthembed.registry import Registry

RANDOM = "random"

INIT_SCHEMES: Registry[Any] = Registry("init scheme")
"""``scheme -> factory(name: str, store: ChipStore) -> InitSource`` for ``--init scheme:name`` specs."""


@dataclasses.dataclass
class InitSource:
    """A resolved ``--init``: what to build, with which bands and normalisation.

    Attributes:
        name: label of the init in result tables (``features`` column).
        spec: the spec as given.
        kind: ``export``, ``random`` or a registered scheme.
        architecture, config: registry name and constructor config (``config["modalities"]``: bands by modality).
        normalization: a :class:`~earthembed.data.normalize.Normalizer` dict, or None for the store's statistics.
        products: ``{modality: {"product", "units", "kind"}}`` the weights were trained on (units are checked).
        model_id: identifies the weights (``random-<arch>-...`` for random ones).
        loader: ``seed -> Encoder``; exports ignore the seed, random encoders are drawn with it.
    """

    name: str
    spec: str
    kind: str
    architecture: str
    config: dict[str, Any]
    normalization: dict[str, Any] | None
    products: dict[str, Any]
    model_id: str
    loader: Callable[[int], Encoder]

    @property
    def modalities(self) -> dict[str, list[str]]:
        return {k: list(v) for k, v in self.config["modalities"].items()}

    def build(self, seed: int = 0) -> Encoder:
        return self.loader(seed)

    def describe(self) -> dict[str, Any]:
        """JSON-able identity (for run.json and resume fingerprints)."""
        return {"name": self.name, "spec": self.spec, "kind": self.kind, "architecture": self.architecture,
                "model_id": self.model_id, "modalities": self.modalities}


def _random_loader(architecture: str, config: Mapping[str, Any]) -> Callable[[int], Encoder]:
    from earthembed.models.registry import build_model

    def load(seed: int) -> Encoder:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build_model(architecture, **dict(config))
        if not isinstance(model, Encoder):
            raise ValueError(f"model {architecture!r} is not an earthembed Encoder")
        return model

    return load


def _from_export(path: Path, name: str, spec: str) -> InitSource:
    from earthembed.models.export import load_export, read_export

    meta, root = read_export(path)  # fails early, naming the file, on a bad or missing export
    return InitSource(name, spec, "export", meta.architecture, dict(meta.config), meta.normalization,
                      dict(meta.products or {}), str(meta.model_id if meta.model_id is not None else root.name),
                      lambda seed: load_export(root)[0])


def _random(name: str, spec: str, architecture: str, config: Mapping[str, Any],
            normalization: dict[str, Any] | None = None) -> InitSource:
    model_id = f"random-{architecture}"
    return InitSource(name, spec, RANDOM, architecture, dict(config), normalization, {}, model_id,
                      _random_loader(architecture, config))


def _random_like(name: str, spec: str, ref: InitSource) -> InitSource:
    """A random init of ``ref``'s architecture; it keeps ``ref``'s normalisation only when the model computes
    bands from its normalised inputs (``pixel_stats``: the statistics it assumes must be the ones applied)."""
    return _random(name, spec, ref.architecture, ref.config, ref.normalization if ref.config.get("pixel_stats") else None)


PUBLISHED = "published"


def _from_published(spec: str, name: str, store: ChipStore, weights: str | Path | None, download: bool,
                    options: Mapping[str, Any] | None) -> InitSource:
    """A published SPEC opened and fitted to ``store`` once; every seed gets a fresh copy of its weights."""
    import copy

    from earthembed.models.export import ModelMeta
    from earthembed.models.published import open_source

    model, fitted = open_source(spec, weights, download).fit(store, options=dict(options or {}))
    meta = ModelMeta.of(fitted, spec)
    return InitSource(name, spec, PUBLISHED, meta.architecture, dict(meta.config), meta.normalization,
                      dict(meta.products or {}), str(meta.model_id), lambda seed: copy.deepcopy(model))


def _export_label(p: Path) -> str:
    """``runs/dense/export`` -> ``dense``: the run directory names an export better than ``export``."""
    p = p.parent if p.suffix == ".json" else p
    return p.resolve().parent.name if p.name == "export" else p.name


def is_export(spec: str | Path) -> bool:
    p = Path(spec)
    return (p / "model.json").exists() or (p.suffix == ".json" and p.exists())


def _is_published(spec: str) -> bool:
    from earthembed.models.published.spec import FAMILIES

    family, sep, rest = spec.partition(":")
    return bool(sep and rest.strip()) and family in FAMILIES


def resolve_init(spec: str, store: ChipStore, name: str | None = None, model: Mapping[str, Any] | None = None,
                 reference: InitSource | None = None, weights: str | Path | None = None, download: bool = False,
                 options: Mapping[str, Any] | None = None) -> InitSource:
    """The :class:`InitSource` of one ``--init`` spec (module docstring lists the forms).

    ``model``: the config's ``model`` section (``name``, ``modalities`` + arguments) used by ``random``;
    ``reference``: the first export or published model among the inits, whose architecture a bare ``random``
    copies; ``weights``, ``download``, ``options``: for a published SPEC.
    """
    from earthembed.data.dataset import resolve_bands
    from earthembed.models.registry import MODELS

    spec = str(spec).strip()
    label = name or (_export_label(Path(spec)) if is_export(spec) else spec)
    if spec == RANDOM or spec.startswith(f"{RANDOM}:"):
        target = spec.partition(":")[2]
        if target and is_export(target):
            return _random_like(label, spec, _from_export(Path(target), label, spec))
        model = dict(model or {})
        arch = target or model.get("name")
        if arch:
            if arch not in MODELS:
                raise ValueError(f"--init {spec}: unknown model {arch!r} (registered: {MODELS.names()}; or give an export dir)")
            own = not target or target == model.get("name")  # the config's model.* arguments belong to model.name
            args = {k: v for k, v in model.items() if k not in ("name", "modalities")} if own else {}
            mods = model.get("modalities")
            non_input = [k for k in (mods or []) if k in store.modalities and store.modalities[k].kind == "categorical"]
            if non_input:
                raise ValueError(f"model.modalities: {non_input} are categorical (label maps), not inputs")
            return _random(label, spec, arch, {**args, "modalities": resolve_bands(store, mods)})
        if reference is not None:
            return _random_like(label, spec, reference)
        raise ValueError(
            f"--init {spec}: a random init needs an architecture: name it with --model NAME (e.g. resnet18_small; "
            f"registered: {MODELS.names()}), as random:NAME / random:EXPORT_DIR, or compare it with an export"
        )
    if is_export(spec):
        return _from_export(Path(spec), label, spec)
    if _is_published(spec):
        return _from_published(spec, label, store, weights, download, options)
    scheme, sep, rest = spec.partition(":")
    if sep and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", scheme) and scheme in INIT_SCHEMES:
        src = INIT_SCHEMES.get(scheme)(rest, store)
        return dataclasses.replace(src, name=name or src.name, spec=spec)
    if Path(spec).exists():
        raise ValueError(f"--init {spec}: not an earthembed export (no model.json); export a checkpoint with "
                         "`earthembed export-checkpoint`")
    raise ValueError(
        f"--init {spec!r}: expected an export directory (with model.json), 'random', 'random:MODEL', a published "
        f"model (galileo:nano, timm:NAME, torchgeo:WEIGHTS, mmearth:FILE) or 'SCHEME:NAME' for a registered scheme "
        f"({INIT_SCHEMES.names() or 'none registered'})"
    )


def parse_init_args(specs: Sequence[str]) -> list[tuple[str | None, str]]:
    """``["NAME=SPEC" | "SPEC", ...]`` -> ``[(name or None, spec)]``; names must be unique."""
    out: list[tuple[str | None, str]] = []
    for it in specs:
        name, sep, spec = it.partition("=")
        if not sep:
            name, spec = "", it
        if not spec.strip():
            raise ValueError(f"--init/--compare {it!r}: expected SPEC or NAME=SPEC")
        out.append((name.strip() or None, spec.strip()))
    return out


def resolve_inits(specs: Sequence[str], store: ChipStore, model: Mapping[str, Any] | None = None,
                  weights: str | Path | None = None, download: bool = False,
                  options: Mapping[str, Any] | None = None) -> list[InitSource]:
    """All inits of one ``segment`` call, exports and published models first resolved so ``random`` can copy
    the first of them; labels are unique (a clash is an error asking for ``NAME=SPEC``). ``weights`` belongs
    to the one published SPEC among them."""
    parsed = parse_init_args(specs)
    if not parsed:
        raise ValueError("no --init given (an export directory or 'random')")
    published = [spec for _, spec in parsed if _is_published(spec)]
    if weights is not None and len(published) != 1:
        raise ValueError(f"--weights names the file of one published init; {len(published)} are given "
                         f"({', '.join(published) or 'none'})")
    resolved: dict[int, InitSource] = {}
    for i, (name, spec) in enumerate(parsed):
        if not (spec == RANDOM or spec.startswith(f"{RANDOM}:")):
            resolved[i] = resolve_init(spec, store, name, model, weights=weights, download=download, options=options)
    reference = next((s for s in resolved.values() if s.kind in ("export", PUBLISHED)), None)
    for i, (name, spec) in enumerate(parsed):
        if i not in resolved:
            resolved[i] = resolve_init(spec, store, name, model, reference)
    out = [resolved[i] for i in range(len(parsed))]
    names = [s.name for s in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"init names {dup} are used twice; name them with NAME=SPEC (e.g. --compare vit=runs/a/export)")
    return out
