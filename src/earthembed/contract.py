"""The data contract every stage speaks: what a model consumes (:class:`InputSpec`) and what a batch is
(:class:`ChipBatch`). A ground-floor module: it imports only the standard library, numpy and torch, so data,
models, pretraining, embedding and evaluation all build on it without importing each other.

**Input spec.** A model consumes modalities (:class:`ModalitySpec`): a key (``s2``), its bands by name in the
model's order, the product they were made from (``s2_l1c``), its units and kind, and how many dates of it the
model reads at once (``dates``: 1 = a single date, today's encoders; a time-series model reads T).

**Batch.** A :class:`ChipBatch` holds, for ``B`` chips:

* ``obs``: the normalised modalities, each an :class:`Observation` with pixels ``x`` ``[B, T, C, H, W]``,
  ``present`` ``[B, T]`` (bool: the chip has that date of the modality; absent rows hold zeros or NaN, never
  data), ``dates`` ``[B, T]`` (int64 days since 1970-01-01 UTC, :data:`NO_DATE` where unknown), ``month``
  ``[B, T]`` (int64, 0 = January, -1 where unknown) and, after band-group dropout, ``group_present``
  ``[B, T, G]``;
* ``categorical``: categorical maps read raw (int64 class codes ``[B, T, 1, H, W]``), as observations;
* ``masks``: pixel-mask labels (:class:`Field` with ``x`` int64 ``[B, H, W]`` and ``present`` ``[B]``);
* ``chip_values``: per-chip values (:class:`Field` with ``x`` ``[B, d]`` and ``present`` ``[B]``);
* ``affine``: the ``[B, 2, 3]`` geometry of an augmented view (output -> input coordinates), or None;
* ``idx``: ``[B]`` int64 store positions (None for batches not read from a store).

Today's stores hold one date per modality key, so a batch read from them has ``T = 1``.

**Today's string keys.** A :class:`ChipBatch` is also a read-only mapping with the keys of the former dict
batches, so code written against them keeps working: ``batch["s2"]`` is the
``[B, C, H, W]`` of date 0, ``batch["s2_present"]`` / ``batch["s2_month"]`` its ``[B]`` presence and month,
``batch["s2_group_present"]`` ``[B, G]``, ``batch["mask_<m>"]`` / ``batch["mask_<m>_present"]``,
``batch["value_<v>"]`` / ``batch["value_<v>_present"]``, ``batch["_affine"]`` and ``batch["idx"]``. The
adapter gives views (no copy) and only exists for ``T = 1`` observations. A batch is never changed in place:
:meth:`ChipBatch.replace` and :meth:`ChipBatch.with_obs` return a new one.

Batches pickle (DataLoader workers), move with :meth:`ChipBatch.to` (Lightning's batch transfer calls it) and
pin with :meth:`ChipBatch.pin_memory` (the DataLoader's ``pin_memory=True``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, KeysView, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from earthembed.errors import BandMismatchError

NO_DATE: int = int(np.iinfo(np.int64).min)
"""``Observation.dates`` where a chip's acquisition date is unknown (dates are int64 days since 1970-01-01 UTC)."""
NO_MONTH: int = -1
"""``Observation.month`` where the month is unknown (months are 0 = January .. 11)."""
AFFINE_KEY = "_affine"
"""String key of :attr:`ChipBatch.affine` in the Mapping adapter (and in augment's dict output)."""
KINDS = ("continuous", "categorical")


class ContractError(ValueError):
    """A batch or spec that does not have the contract's shape (one line, naming what and where)."""


def _shape(t: Tensor) -> tuple[int, ...]:
    return tuple(int(s) for s in t.shape)


# -- what a model consumes -----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ModalitySpec:
    """One modality a model consumes.

    Attributes:
        key: the modality key in stores and batches (``s2``); non-empty, no ``.``.
        bands: band names in the model's order (unique, non-empty).
        product: the product the model was trained on (``s2_l1c``; None when not recorded).
        units: the units of the raw values (``reflectance x 10000 (DN)``; None when not recorded).
        kind: the product's kind as the store names it (``optical``, ``sar``, ``categorical``; None when not
            recorded).
        dates: how many dates ``T`` of the modality the model reads at once (1: a single date).
    """

    key: str
    bands: tuple[str, ...]
    product: str | None = None
    units: str | None = None
    kind: str | None = None
    dates: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not self.key or "." in self.key:
            raise ContractError(f"modality key {self.key!r} must be a non-empty string without '.'")
        if isinstance(self.bands, str):
            raise ContractError(f"modality {self.key!r}: bands must be a list of band names, got the string {self.bands!r}")
        bands = tuple(self.bands)
        if not bands or not all(isinstance(b, str) and b for b in bands) or len(set(bands)) != len(bands):
            raise ContractError(f"modality {self.key!r}: bands must be unique non-empty names, got {list(bands)}")
        object.__setattr__(self, "bands", bands)
        if isinstance(self.dates, bool) or not isinstance(self.dates, int | np.integer) or int(self.dates) < 1:
            raise ContractError(f"modality {self.key!r}: dates must be a whole number >= 1, got {self.dates!r}")
        object.__setattr__(self, "dates", int(self.dates))
        for name in ("product", "units", "kind"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, str):
                raise ContractError(f"modality {self.key!r}: {name} must be a string or null, got {v!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields (the key is the entry's name in :meth:`InputSpec.to_dict`)."""
        return {"bands": list(self.bands), "product": self.product, "units": self.units, "kind": self.kind,
                "dates": self.dates}

    @classmethod
    def from_dict(cls, key: str, d: Mapping[str, Any]) -> ModalitySpec:
        if not isinstance(d, Mapping):
            raise ContractError(f"modality {key!r}: expected a JSON object, got {d!r:.80}")
        unknown = sorted(set(d) - {"bands", "product", "units", "kind", "dates"})
        if unknown:
            raise ContractError(f"modality {key!r}: unknown fields {unknown}")
        if "bands" not in d:
            raise ContractError(f"modality {key!r}: no 'bands'")
        return cls(key, d["bands"], d.get("product"), d.get("units"), d.get("kind"), d.get("dates", 1))


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """What a model consumes: its modalities, in the model's order (keys unique)."""

    modalities: tuple[ModalitySpec, ...]

    def __post_init__(self) -> None:
        mods = tuple(self.modalities)
        if not mods:
            raise ContractError("an input spec needs at least one modality")
        if not all(isinstance(m, ModalitySpec) for m in mods):
            raise ContractError("an input spec's modalities must be ModalitySpec")
        keys = [m.key for m in mods]
        if len(set(keys)) != len(keys):
            raise ContractError(f"an input spec names a modality twice: {keys}")
        object.__setattr__(self, "modalities", mods)

    @classmethod
    def from_bands(cls, bands: Mapping[str, Sequence[str]], products: Mapping[str, Mapping[str, Any]] | None = None,
                   dates: Mapping[str, int] | None = None) -> InputSpec:
        """From ``{key: [band, ...]}`` (an encoder's ``modalities``), with ``products`` entries
        (``{key: {"product", "units", "kind"}}``, as ``model.json`` records them) and dates per key."""
        products, dates = dict(products or {}), dict(dates or {})
        return cls(tuple(ModalitySpec(k, tuple(b), **{f: (products.get(k) or {}).get(f) for f in ("product", "units", "kind")},
                                      dates=dates.get(k, 1)) for k, b in bands.items()))

    def __getitem__(self, key: str) -> ModalitySpec:
        for m in self.modalities:
            if m.key == key:
                return m
        raise KeyError(f"no modality {key!r} in the input spec (it has {self.keys()})")

    def __contains__(self, key: object) -> bool:
        return any(m.key == key for m in self.modalities)

    def keys(self) -> list[str]:
        return [m.key for m in self.modalities]

    @property
    def bands(self) -> dict[str, list[str]]:
        """``{key: [band, ...]}``."""
        return {m.key: list(m.bands) for m in self.modalities}

    def request(self, store: Any, modalities: Sequence[str] | None = None,
                bands: Mapping[str, Sequence[str]] | None = None) -> dict[str, list[str]]:
        """``{modality: bands}`` of ``store`` to feed the model: ``modalities`` (default: every model modality
        the store has) with ``bands`` (default: all the model's), checked by name against the model and the store.
        ``store``: anything with ``path``, ``modalities`` and ``band_names(key)`` (a ChipStore).
        :class:`~earthembed.errors.BandMismatchError` (one line) on any mismatch."""
        model_bands = self.bands
        if modalities is None:
            modalities = [m for m in model_bands if m in store.modalities]
            if not modalities:
                raise BandMismatchError(f"{store.path}: store modalities {list(store.modalities)} share none with the "
                                        f"model ({list(model_bands)})")
        out: dict[str, list[str]] = {}
        for m in modalities:
            if m not in model_bands:
                raise BandMismatchError(f"the model was never trained on modality {m!r} (it knows {list(model_bands)})")
            if m not in store.modalities:
                raise BandMismatchError(f"{store.path}: store has no modality {m!r} (it has {list(store.modalities)})")
            want = list((bands or {}).get(m) or model_bands[m])
            unknown = [b for b in want if b not in model_bands[m]]
            if unknown:
                raise BandMismatchError(f"the model never saw {m} bands {unknown} (it knows {model_bands[m]})")
            missing = [b for b in want if b not in store.band_names(m)]
            if missing:
                raise BandMismatchError(f"{store.path}: {m} has no bands {missing} (it has {store.band_names(m)})")
            out[m] = want
        for m in bands or {}:
            if m not in out:
                raise BandMismatchError(f"bands given for modality {m!r}, which is not requested ({list(out)})")
        return out

    def check(self, store: Any, keys: Iterable[str] | None = None) -> None:
        """Refuse a store whose modality (of ``keys``, default all of the spec's) has other units than the model
        was trained on: dB vs linear SAR has the same key and band names, so names alone cannot catch it. A
        different product with the same units (S2 L1C vs L2A) is allowed, as a transfer the user chose."""
        for m in self.keys() if keys is None else keys:
            if m not in self or not self[m].units:
                continue
            want = self[m]
            have = store.modality(m)
            if have.units and want.units != have.units:
                raise BandMismatchError(f"{store.path}: modality {m!r} is {have.product} in {have.units!r}, but the "
                                        f"model was trained on {want.product} in {want.units!r}")

    def to_dict(self) -> dict[str, Any]:
        """``{"modalities": {key: ModalitySpec.to_dict()}}`` (JSON-able, model order kept)."""
        return {"modalities": {m.key: m.to_dict() for m in self.modalities}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> InputSpec:
        mods = d.get("modalities") if isinstance(d, Mapping) else None
        if not isinstance(mods, Mapping):
            raise ContractError(f"an input spec must be {{'modalities': {{key: {{...}}}}}}, got {d!r:.80}")
        return cls(tuple(ModalitySpec.from_dict(k, v) for k, v in mods.items()))


# -- what a batch is -----------------------------------------------------------------------------------------
def _bool(t: Tensor, what: str) -> Tensor:
    if not isinstance(t, Tensor):
        raise ContractError(f"{what} must be a tensor, got {type(t).__name__}")
    if t.dtype != torch.bool:
        raise ContractError(f"{what} must be bool, got {t.dtype}")
    return t


@dataclasses.dataclass(frozen=True, eq=False)
class Observation:
    """One modality of a batch: ``x`` ``[B, T, C, H, W]`` and per (chip, date) ``present`` ``[B, T]`` (bool),
    ``dates`` ``[B, T]`` (int64 days since 1970-01-01, :data:`NO_DATE` unknown; None: not recorded), ``month``
    ``[B, T]`` (int64 0..11, -1 unknown; None: not recorded) and ``group_present`` ``[B, T, G]`` (bool band-group
    presence after band-group dropout; None: every group)."""

    x: Tensor
    present: Tensor
    dates: Tensor | None = None
    month: Tensor | None = None
    group_present: Tensor | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.x, Tensor) or self.x.ndim != 5:
            got = _shape(self.x) if isinstance(self.x, Tensor) else type(self.x).__name__
            raise ContractError(f"observation x must be [B, T, C, H, W], got {got}")
        bt = _shape(self.x)[:2]
        if _shape(_bool(self.present, "observation present")) != bt:
            raise ContractError(f"observation present must be [B, T] = {list(bt)}, got {list(_shape(self.present))}")
        for name in ("dates", "month"):
            v = getattr(self, name)
            if v is None:
                continue
            if not isinstance(v, Tensor) or _shape(v) != bt or v.is_floating_point() or v.dtype == torch.bool:
                got = f"{list(_shape(v))} {v.dtype}" if isinstance(v, Tensor) else type(v).__name__
                raise ContractError(f"observation {name} must be integer [B, T] = {list(bt)}, got {got}")
        gp = self.group_present
        if gp is not None and (_shape(_bool(gp, "observation group_present"))[:2] != bt or gp.ndim != 3):
            raise ContractError(f"observation group_present must be [B, T, G] with [B, T] = {list(bt)}, got {list(_shape(gp))}")

    @classmethod
    def single(cls, x: Tensor, present: Tensor | None = None, dates: Tensor | None = None,
               month: Tensor | None = None, group_present: Tensor | None = None) -> Observation:
        """A one-date observation (T = 1) from ``[B, C, H, W]`` pixels and ``[B]`` presence / dates / month and
        ``[B, G]`` group presence (views, no copy). ``present`` None: every row present."""
        if not isinstance(x, Tensor) or x.ndim != 4:
            got = _shape(x) if isinstance(x, Tensor) else type(x).__name__
            raise ContractError(f"a one-date observation's x must be [B, C, H, W], got {got}")
        if present is None:
            present = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)

        def row(t: Tensor | None) -> Tensor | None:
            return None if t is None else t[:, None]

        return cls(x[:, None], row(present), row(dates), row(month), row(group_present))

    @property
    def batch_size(self) -> int:
        return int(self.x.shape[0])

    @property
    def num_dates(self) -> int:
        return int(self.x.shape[1])

    def date(self, t: int) -> Observation:
        """Date ``t`` alone, as a one-date observation (views)."""

        def pick(v: Tensor | None) -> Tensor | None:
            return None if v is None else v[:, t : t + 1]

        return Observation(self.x[:, t : t + 1], self.present[:, t : t + 1], pick(self.dates), pick(self.month),
                           pick(self.group_present))

    def replace(self, **changes: Any) -> Observation:
        return dataclasses.replace(self, **changes)

    def apply(self, fn: Callable[[Tensor], Tensor]) -> Observation:
        """Every tensor through ``fn`` (``.to``, ``.pin_memory``, a row selection)."""
        return Observation(*(None if v is None else fn(v) for v in
                             (self.x, self.present, self.dates, self.month, self.group_present)))


@dataclasses.dataclass(frozen=True, eq=False)
class Field:
    """A per-chip label or value: ``x`` ``[B, ...]`` and ``present`` ``[B]`` (bool)."""

    x: Tensor
    present: Tensor

    def __post_init__(self) -> None:
        if not isinstance(self.x, Tensor) or self.x.ndim < 1:
            raise ContractError(f"a field's x must be a [B, ...] tensor, got {type(self.x).__name__}")
        if _shape(_bool(self.present, "field present")) != _shape(self.x)[:1]:
            raise ContractError(f"a field's present must be [B] = [{self.x.shape[0]}], got {list(_shape(self.present))}")

    def apply(self, fn: Callable[[Tensor], Tensor]) -> Field:
        return Field(fn(self.x), fn(self.present))


_SUFFIXES = ("_present", "_month", "_group_present")


@dataclasses.dataclass(frozen=True, eq=False)
class ChipBatch:
    """A batch of chips (see the module docstring); also a read-only mapping with today's string keys.

    The mapping is duck-typed (``batch[key]``, ``key in batch``, ``keys``, ``items``, ``values``, ``get``,
    ``dict(batch)``, ``{**batch}``), not a :class:`collections.abc.Mapping`: torch's DataLoader rebuilds Mappings
    key by key (``default_convert``, ``default_collate``), which would turn a batch back into a dict, while it
    passes other objects through untouched and pins them with :meth:`pin_memory`.

    Attributes:
        obs: normalised modalities by key.
        categorical: categorical maps (raw int64 class codes) by key.
        masks: pixel-mask labels by name (``x`` int64 ``[B, H, W]``).
        chip_values: per-chip values by name (``x`` ``[B, d]``).
        affine: ``[B, 2, 3]`` geometry of an augmented view, or None.
        idx: ``[B]`` int64 store positions, or None.
    """

    obs: dict[str, Observation] = dataclasses.field(default_factory=dict)
    categorical: dict[str, Observation] = dataclasses.field(default_factory=dict)
    masks: dict[str, Field] = dataclasses.field(default_factory=dict)
    chip_values: dict[str, Field] = dataclasses.field(default_factory=dict)
    affine: Tensor | None = None
    idx: Tensor | None = None

    def __post_init__(self) -> None:
        for name in ("obs", "categorical", "masks", "chip_values"):
            object.__setattr__(self, name, dict(getattr(self, name)))
        sizes: dict[str, int] = {}
        for name, kind in (("obs", Observation), ("categorical", Observation), ("masks", Field), ("chip_values", Field)):
            for k, v in getattr(self, name).items():
                if not isinstance(v, kind):
                    raise ContractError(f"{name}[{k!r}] must be a {kind.__name__}, got {type(v).__name__}")
                sizes[f"{name}[{k!r}]"] = int(v.x.shape[0])
        both = sorted(set(self.obs) & set(self.categorical))
        if both:
            raise ContractError(f"modalities {both} are both normalised observations and categorical maps")
        if self.idx is not None:
            if not isinstance(self.idx, Tensor) or self.idx.ndim != 1:
                raise ContractError(f"idx must be a [B] tensor, got {getattr(self.idx, 'shape', type(self.idx).__name__)}")
            sizes["idx"] = int(self.idx.shape[0])
        if self.affine is not None:
            if not isinstance(self.affine, Tensor) or _shape(self.affine)[1:] != (2, 3) or self.affine.ndim != 3:
                raise ContractError(f"affine must be [B, 2, 3], got {getattr(self.affine, 'shape', type(self.affine).__name__)}")
            sizes["affine"] = int(self.affine.shape[0])
        if len(set(sizes.values())) > 1:
            raise ContractError(f"batch parts disagree on the number of chips: {sizes}")
        object.__setattr__(self, "_keymap", None)

    # -- typed access ---------------------------------------------------------------------------------
    def __len__(self) -> int:  # the Mapping's number of string keys (see batch_size for chips)
        return len(self._keys())

    @property
    def batch_size(self) -> int:
        """Number of chips ``B`` (0 for a batch with nothing in it)."""
        for group in (self.obs, self.categorical, self.masks, self.chip_values):
            for v in group.values():
                return int(v.x.shape[0])
        for t in (self.idx, self.affine):
            if t is not None:
                return int(t.shape[0])
        return 0

    def present(self, key: str, t: int = 0) -> Tensor:
        """``[B]`` bool: which chips have date ``t`` of observation or categorical map ``key``."""
        return self._observation(key).present[:, t]

    def month(self, key: str, t: int = 0) -> Tensor | None:
        """``[B]`` month of date ``t`` of ``key`` (0 = January, -1 unknown), None when not recorded."""
        m = self._observation(key).month
        return None if m is None else m[:, t]

    def dates(self, key: str, t: int = 0) -> Tensor | None:
        """``[B]`` acquisition date of date ``t`` of ``key`` (int64 days since 1970-01-01, :data:`NO_DATE` unknown),
        None when not recorded."""
        d = self._observation(key).dates
        return None if d is None else d[:, t]

    def group_present(self, key: str, t: int = 0) -> Tensor | None:
        """``[B, G]`` band-group presence of date ``t`` of ``key``, None when every group is there."""
        gp = self._observation(key).group_present
        return None if gp is None else gp[:, t]

    def pixels(self, key: str, t: int = 0) -> Tensor:
        """``[B, C, H, W]`` of date ``t`` of observation or categorical map ``key`` (a view)."""
        return self._observation(key).x[:, t]

    def has(self, key: str) -> bool:
        """Whether the batch holds observation or categorical map ``key``."""
        return key in self.obs or key in self.categorical

    def image(self, key: str) -> Tensor:
        """``[B, C, H, W]`` of one-date observation or categorical map ``key`` (a view), what single-date code
        reads; a modality with several dates is a :class:`ContractError` (pick one: ``Observation.date(t)``)."""
        o = self._observation(key)
        if o.num_dates != 1:
            raise ContractError(f"modality {key!r} has {o.num_dates} dates; this reads one date per modality "
                                "(give it one date: Observation.date(t))")
        return o.x[:, 0]

    def _observation(self, key: str) -> Observation:
        o = self.obs.get(key) or self.categorical.get(key)
        if o is None:
            raise KeyError(f"no modality {key!r} in the batch (it has {[*self.obs, *self.categorical]})")
        return o

    # -- new batches (a batch is never changed in place) ------------------------------------------------
    def replace(self, **changes: Any) -> ChipBatch:
        """A copy with fields replaced (``batch.replace(affine=theta)``)."""
        return dataclasses.replace(self, **changes)

    def with_obs(self, key: str, **changes: Any) -> ChipBatch:
        """A copy whose observation ``key`` has fields replaced (``batch.with_obs("s2", x=y)``); ``key`` may
        also be a categorical map."""
        if key in self.categorical:
            return self.replace(categorical={**self.categorical, key: self.categorical[key].replace(**changes)})
        if key not in self.obs:
            raise KeyError(f"no modality {key!r} in the batch (it has {[*self.obs, *self.categorical]})")
        return self.replace(obs={**self.obs, key: self.obs[key].replace(**changes)})

    def apply(self, fn: Callable[[Tensor], Tensor]) -> ChipBatch:
        """Every tensor through ``fn``: the batch on a device, pinned, or a selection of rows."""
        return ChipBatch(
            {k: v.apply(fn) for k, v in self.obs.items()},
            {k: v.apply(fn) for k, v in self.categorical.items()},
            {k: v.apply(fn) for k, v in self.masks.items()},
            {k: v.apply(fn) for k, v in self.chip_values.items()},
            None if self.affine is None else fn(self.affine),
            None if self.idx is None else fn(self.idx),
        )

    def to(self, *args: Any, **kwargs: Any) -> ChipBatch:
        """Every tensor ``.to(*args, **kwargs)`` (a device; a dtype would also cast masks and flags: give a
        device). Lightning moves batches to the accelerator through this."""
        return self.apply(lambda t: t.to(*args, **kwargs))

    def pin_memory(self) -> ChipBatch:
        """Every tensor in pinned memory (the DataLoader's ``pin_memory=True`` calls this)."""
        return self.apply(lambda t: t.pin_memory())

    def index_select(self, rows: Tensor | np.ndarray | Sequence[int]) -> ChipBatch:
        """The chips at ``rows`` (int positions or a ``[B]`` bool mask), in that order."""
        rows = torch.as_tensor(rows)
        if rows.dtype == torch.bool:
            if _shape(rows) != (self.batch_size,):
                raise ContractError(f"a row mask must be [B] = [{self.batch_size}], got {list(_shape(rows))}")
            rows = rows.nonzero().flatten()
        rows = rows.long()
        return self.apply(lambda t: t.index_select(0, rows.to(t.device)))

    def map_rasters(self, fn: Callable[[Tensor], Tensor]) -> ChipBatch:
        """Pixels of every observation, categorical map and mask through ``fn`` (``[B, ..., H, W]`` in, same
        leading dimensions out): one crop or flip for all co-registered rasters of the chips."""
        return self.replace(
            obs={k: v.replace(x=fn(v.x)) for k, v in self.obs.items()},
            categorical={k: v.replace(x=fn(v.x)) for k, v in self.categorical.items()},
            masks={k: Field(fn(v.x), v.present) for k, v in self.masks.items()},
        )

    # -- building ---------------------------------------------------------------------------------------
    @classmethod
    def from_mapping(cls, batch: Mapping[str, Any]) -> ChipBatch:
        """A one-date batch from a dict with today's string keys (the inverse of the adapter).

        ``mask_<m>``, ``value_<v>``, ``_affine``, ``idx`` and the ``_present`` / ``_month`` / ``_group_present``
        suffixes are read by name; every other ``[B, C, H, W]`` tensor is a modality: categorical when it holds
        integers and has no ``_month``, an observation otherwise. A key fitting none of these is an error."""
        if isinstance(batch, ChipBatch):
            return batch
        keys = set(batch)
        used: set[str] = set()

        def opt(k: str) -> Any:
            if k in keys:
                used.add(k)
                return _tensor(batch[k], k)
            return None

        masks, values, obs, cat = {}, {}, {}, {}
        for k in batch:
            if k in used or k in (AFFINE_KEY, "idx") or any(k.endswith(s) and k[: -len(s)] in keys for s in _SUFFIXES):
                continue
            prefix = next((p for p in ("mask_", "value_") if k.startswith(p)), None)
            if prefix is None and k.endswith(_SUFFIXES):
                continue  # the flag of a key the batch lacks: reported below
            x = _tensor(batch[k], k)
            used.add(k)
            if prefix is not None:
                pr = opt(f"{k}_present")
                (masks if prefix == "mask_" else values)[k[len(prefix):]] = Field(x, _as_bool(pr, x))
                continue
            if x.ndim != 4:
                raise ContractError(f"batch key {k!r}: a modality must be [B, C, H, W], got {list(_shape(x))}")
            month, pr, gp = opt(f"{k}_month"), opt(f"{k}_present"), opt(f"{k}_group_present")
            categorical = month is None and gp is None and not x.is_floating_point()
            (cat if categorical else obs)[k] = Observation.single(x, _as_bool(pr, x), None, month, gp)
        affine, idx = opt(AFFINE_KEY), opt("idx")
        stray = sorted(keys - used)
        if stray:
            raise ContractError(f"batch keys {stray} belong to no modality, mask or value")
        return cls(obs, cat, masks, values, affine, idx)

    # -- the Mapping adapter (today's string keys) -------------------------------------------------------
    def _keys(self) -> dict[str, tuple[str, str, str]]:
        """String key -> (group, name, part), in the order of the former dict batches."""
        km = self.__dict__.get("_keymap")
        if km is None:
            km = {}
            if self.idx is not None:
                km["idx"] = ("idx", "", "")
            for k, o in self.obs.items():
                km[k], km[f"{k}_present"] = ("obs", k, "x"), ("obs", k, "present")
                if o.month is not None:
                    km[f"{k}_month"] = ("obs", k, "month")
            for k, o in self.categorical.items():
                km[k], km[f"{k}_present"] = ("categorical", k, "x"), ("categorical", k, "present")
                if o.month is not None:
                    km[f"{k}_month"] = ("categorical", k, "month")
            for k in self.masks:
                km[f"mask_{k}"], km[f"mask_{k}_present"] = ("masks", k, "x"), ("masks", k, "present")
            for k in self.chip_values:
                km[f"value_{k}"], km[f"value_{k}_present"] = ("chip_values", k, "x"), ("chip_values", k, "present")
            for group in ("obs", "categorical"):
                for k, o in getattr(self, group).items():
                    if o.group_present is not None:
                        km[f"{k}_group_present"] = (group, k, "group_present")
            if self.affine is not None:
                km[AFFINE_KEY] = ("affine", "", "")
            self.__dict__["_keymap"] = km
        return km

    def __getitem__(self, key: str) -> Any:
        try:
            group, name, part = self._keys()[key]
        except (KeyError, TypeError):
            raise KeyError(key) from None
        if group == "idx":
            return self.idx
        if group == "affine":
            return self.affine
        item = getattr(self, group)[name]
        if isinstance(item, Field):
            return getattr(item, part)
        if item.num_dates != 1:
            raise ContractError(f"batch key {key!r}: modality {name!r} has {item.num_dates} dates; the string-key "
                                f"adapter reads one-date batches only (use batch.{group}[{name!r}])")
        return getattr(item, part)[:, 0]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys())

    def __contains__(self, key: object) -> bool:
        return key in self._keys()

    def keys(self) -> KeysView[str]:
        return self._keys().keys()

    def items(self) -> Iterator[tuple[str, Any]]:
        return ((k, self[k]) for k in self._keys())

    def values(self) -> Iterator[Any]:
        return (self[k] for k in self._keys())

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self._keys() else default

    def __getstate__(self) -> dict[str, Any]:  # pickled without the key cache
        return {k: v for k, v in self.__dict__.items() if k != "_keymap"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.__dict__["_keymap"] = None

    def __repr__(self) -> str:
        def obs(o: Observation) -> str:
            return f"{list(_shape(o.x))} {o.x.dtype}"

        parts = [f"obs={{{', '.join(f'{k}: {obs(v)}' for k, v in self.obs.items())}}}"]
        if self.categorical:
            parts.append(f"categorical={{{', '.join(f'{k}: {obs(v)}' for k, v in self.categorical.items())}}}")
        parts += [f"masks={list(self.masks)}"] if self.masks else []
        parts += [f"chip_values={list(self.chip_values)}"] if self.chip_values else []
        parts += ["affine"] if self.affine is not None else []
        return f"ChipBatch(B={self.batch_size}, {', '.join(parts)})"


def _tensor(v: Any, key: str) -> Tensor:
    if isinstance(v, Tensor):
        return v
    if isinstance(v, np.ndarray | bool | int | float | np.generic | list):
        return torch.as_tensor(v)
    raise ContractError(f"batch key {key!r}: expected a tensor, got {type(v).__name__}")


def _ones(x: Tensor) -> Tensor:
    return torch.ones(x.shape[0], dtype=torch.bool, device=x.device)


def _as_bool(pr: Tensor | None, x: Tensor) -> Tensor:
    return _ones(x) if pr is None else pr.to(torch.bool).reshape(-1)


def as_chip_batch(batch: Mapping[str, Any]) -> ChipBatch:
    """``batch`` itself when it is a :class:`ChipBatch`, else :meth:`ChipBatch.from_mapping` of it."""
    return batch if isinstance(batch, ChipBatch) else ChipBatch.from_mapping(batch)
