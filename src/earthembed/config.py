"""YAML run configs shared by every stage that trains (``pretrain``, ``segment``): packaged configs by name,
deep merge onto defaults where unknown keys are errors naming the file and the key, and dotted
``key=value`` overrides. A neutral module (like :mod:`earthembed.optim`), so evaluation code never imports
``pretrain`` to read its config.
"""

from __future__ import annotations

import copy
import importlib.resources
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml


def packaged_configs() -> list[str]:
    """Names of the configs shipped with earthembed (``src/earthembed/configs/*.yaml``)."""
    root = importlib.resources.files("earthembed") / "configs"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def packaged_config(name: str) -> Path:
    """Path of a config shipped with earthembed (``contrastive_tiny``, ``dense_tiny``, ``segment``, ...)."""
    stem = name[:-5] if name.endswith(".yaml") else name
    return Path(str(importlib.resources.files("earthembed") / "configs" / f"{stem}.yaml"))


def merge_config(base: dict[str, Any], new: Mapping[str, Any], where: str, free_sections: Sequence[str] = (),
                 prefix: str = "") -> dict[str, Any]:
    """``base`` updated with ``new`` (deep). Keys ``base`` lacks are errors naming ``where`` and the dotted
    key, except inside ``free_sections`` (sections whose keys the configured object checks itself, e.g. a
    model's constructor arguments)."""
    out = copy.deepcopy(base)
    for k, v in new.items():
        key = f"{prefix}{k}"
        if prefix.rstrip(".") in free_sections:
            out[k] = v
            continue
        if k not in base:
            raise ValueError(f"{where}: unknown config key {key!r} (known: {sorted(base)})")
        if isinstance(base[k], dict):
            if not isinstance(v, Mapping):
                raise ValueError(f"{where}: config key {key!r} must be a mapping, got {v!r}")
            out[k] = merge_config(base[k], v, where, free_sections, f"{key}.")
        else:
            out[k] = v
    return out


def parse_overrides(overrides: Sequence[str] | None, where: str = "overrides") -> dict[str, Any]:
    """``["train.max_steps=20", "model.modalities=[s2]"]`` -> nested dict; values are parsed as YAML."""
    nested: dict[str, Any] = {}
    for o in overrides or []:
        key, sep, raw = o.partition("=")
        if not sep or not key.strip() or any(not p for p in key.strip().split(".")):
            raise ValueError(f"{where}: bad override {o!r}; expected dotted.key=value, e.g. train.max_steps=20")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as e:
            raise ValueError(f"{where}: override {o!r}: value is not valid YAML ({e})") from e
        d = nested
        parts = key.strip().split(".")
        for p in parts[:-1]:
            d = d.setdefault(p, {})
            if not isinstance(d, dict):
                raise ValueError(f"{where}: override {o!r} conflicts with another override")
        d[parts[-1]] = value
    return nested


def read_config(config: str | Path | Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """(top-level mapping, its name for messages) of a YAML file, a packaged config name or a dict."""
    if isinstance(config, Mapping):
        return dict(config), "<config dict>"
    path = Path(config)
    if not path.exists() and packaged_config(str(config)).exists():
        path = packaged_config(str(config))
    if not path.exists():
        raise FileNotFoundError(f"{path}: config not found (packaged configs: {', '.join(packaged_configs())})")
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({e})") from e
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return doc, str(path)


def resolve_config(defaults: dict[str, Any], config: str | Path | Mapping[str, Any] | None,
                   overrides: Sequence[str] | None = None, free_sections: Sequence[str] = (),
                   name: str | None = None) -> tuple[dict[str, Any], str]:
    """(defaults + config file + dotted overrides, the config's name for messages, ``name`` if given); nothing
    validated beyond key names (the caller checks values)."""
    doc, where = read_config(config) if config is not None else ({}, "<defaults>")
    where = name or where
    cfg = merge_config(defaults, doc, where, free_sections)
    return merge_config(cfg, parse_overrides(overrides, where), f"{where} (overrides)", free_sections), where
