"""One registry type for everything built by name (models, decoders, objectives), TerraTorch-style.

A config or an export refers to a string; the registry turns it into a factory. Entries are either the
factory itself or a lazy ``"package.module:attr"`` target, so listing names never imports Lightning or
timm. A second registration of a name is an error (TerraTorch silently overwrites), and a miss lists the
known names.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> factory (or lazy ``"module:attr"`` target). ``what`` names the kind in error messages."""

    def __init__(self, what: str, builtins: Iterable[str] = ()) -> None:
        self.what = what
        self._entries: dict[str, Callable[..., T] | str] = {}
        self._builtins = tuple(builtins)  # modules imported before the first lookup (they self-register)
        self._loaded = False

    def _ensure(self) -> None:
        if not self._loaded:
            self._loaded = True
            for mod in self._builtins:
                importlib.import_module(mod)

    def register(self, name: str, target: Callable[..., T] | str | None = None) -> Any:
        """``register(name, factory_or_"module:attr")``, or ``@register(name)`` as a decorator."""

        def add(fn: Callable[..., T] | str) -> Callable[..., T] | str:
            if name in self._entries:
                raise ValueError(f"{self.what} {name!r} is already registered")
            self._entries[name] = fn
            return fn

        return add if target is None else add(target)

    def names(self) -> list[str]:
        self._ensure()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._ensure()
        return name in self._entries

    def get(self, name: str) -> Callable[..., T]:
        """The factory registered as ``name`` (a lazy target is imported now)."""
        self._ensure()
        try:
            entry = self._entries[name]
        except KeyError:
            raise ValueError(f"unknown {self.what} {name!r}; registered: {self.names()}") from None
        if isinstance(entry, str):
            mod, _, attr = entry.partition(":")
            entry = self._entries[name] = getattr(importlib.import_module(mod), attr)
        return entry

    def build(self, name: str, **kwargs: Any) -> T:
        """Call the factory of ``name``; a bad keyword becomes a ValueError naming the entry."""
        factory = self.get(name)
        try:
            return factory(**kwargs)
        except TypeError as e:
            raise ValueError(f"{self.what} {name!r}: {e}") from e

    def params(self, name: str) -> tuple[set[str], bool]:
        """(keyword names the factory of ``name`` accepts, whether it accepts any). Factories that forward
        ``**kwargs`` to a class declare it as ``factory.__signature_of__`` so configs can be checked."""
        factory = self.get(name)
        target = getattr(factory, "__signature_of__", factory)
        sig = inspect.signature(target.__init__ if inspect.isclass(target) else target)
        named = {p.name for p in sig.parameters.values()
                 if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"}
        anything = any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())
        return named, anything
