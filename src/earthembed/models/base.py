"""The encoder contract: what embed, fewshot, export, pretraining objectives and segmentation rely on.

:class:`Encoder` is a template (as timm splits ``forward_features`` from ``forward_head``): the loop over the
model's modalities, the absent rows and the fusion are written once here (:meth:`Encoder.forward`,
:meth:`Encoder.forward_features`); a backbone implements only what it computes for one modality on the chips
that have it (:meth:`Encoder.embed_modality`, :meth:`Encoder.modality_features`). Encoders whose modalities
attend to each other (Galileo) override :meth:`Encoder.forward` / :meth:`Encoder.forward_features` as a whole.
Batches are :class:`~earthembed.contract.ChipBatch` (one-date observations) or dicts with the same string keys.

Every registered encoder is an :class:`Encoder`. It knows its input **bands by name** per modality (a
store or a request may give any subset in any order; missing bands are zero slots, never a silent
positional mismatch), returns a typed :class:`EncoderOutput` (one embedding per modality plus a fused
one, with presence masks), exposes multi-scale feature maps for dense heads (:meth:`Encoder.forward_features`
with ``feature_channels`` / ``feature_strides``), says which parameters are exempt from weight decay
(:meth:`Encoder.no_weight_decay`) and can be rebuilt from ``architecture`` + ``config`` (the export format).

The fused embedding is the same for every architecture whose modalities are encoded apart
(:func:`fuse_embeddings`): the L2-normalised mean of the L2-normalised embeddings of the modalities present,
so it is defined for any subset of modalities and keeps a unit scale whatever their number (a chip with none
gets a zero row). Encoders whose modalities attend to each other (Galileo) set ``joint_fused`` and return
their own joint embedding instead, as their publisher defines it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from earthembed.contract import ChipBatch, ContractError
from earthembed.data.modalities import BandMismatchError

S2_BAND_GROUPS: tuple[tuple[str, ...], ...] = (
    ("B02", "B03", "B04", "B08"),
    ("B05", "B06", "B07", "B8A", "B11", "B12"),
    ("B01", "B09", "B10"),
)


def default_band_groups(bands: Sequence[str]) -> list[list[str]]:
    """One group, or Sentinel-2 resolution groups (10 / 20 / 60 m, then the rest) when >= 6 bands and most
    carry S2 names: grouping by resolution keeps blurry 60 m bands from diluting sharp 10 m ones and lets
    whole groups be absent (e.g. RGB-only input)."""
    bands = list(bands)
    known = {b for g in S2_BAND_GROUPS for b in g}
    if len(bands) < 6 or sum(b in known for b in bands) < len(bands) / 2:
        return [bands]
    groups = [[b for b in g if b in bands] for g in S2_BAND_GROUPS]
    rest = [b for b in bands if b not in known]
    return [g for g in [*groups, rest] if g]


def check_band_groups(modalities: Mapping[str, Sequence[str]], band_groups: Mapping[str, Sequence[Sequence[str]]] | None
                      ) -> tuple[dict[str, list[str]], dict[str, list[list[str]]]]:
    """Validated ``(modalities, band_groups)``: groups partition each modality's bands (default groups
    from :func:`default_band_groups`)."""
    if not modalities:
        raise ValueError("an encoder needs at least one modality")
    band_groups = dict(band_groups or {})
    unknown = set(band_groups) - set(modalities)
    if unknown:
        raise ValueError(f"band_groups given for unknown modalities {sorted(unknown)}")
    mods: dict[str, list[str]] = {}
    groups: dict[str, list[list[str]]] = {}
    for k, bands in modalities.items():
        if not k or "." in k:
            raise ValueError(f"modality key {k!r} must be non-empty and contain no '.'")
        bands = [str(b) for b in bands]
        if not bands or len(set(bands)) != len(bands):
            raise ValueError(f"modality {k!r}: band names must be non-empty and unique, got {bands}")
        gs = [list(map(str, g)) for g in band_groups[k]] if k in band_groups else default_band_groups(bands)
        flat = [b for g in gs for b in g]
        if sorted(flat) != sorted(bands) or any(not g for g in gs):
            raise ValueError(f"modality {k!r}: band_groups {gs} must partition its bands {bands}")
        mods[k], groups[k] = bands, gs
    return mods, groups


@dataclasses.dataclass
class EncoderOutput:
    """What :meth:`Encoder.forward` returns (float32, also under autocast).

    Attributes:
        modality: ``{k: [B, D]}`` per model modality; zero rows where the modality is absent.
        present: ``{k: [B] bool}`` whether modality ``k`` contributed for that row.
        fused: ``[B, D]`` see :func:`fuse_embeddings`.
    """

    modality: dict[str, Tensor]
    present: dict[str, Tensor]
    fused: Tensor


def fuse_embeddings(embs: Mapping[str, Tensor], present: Mapping[str, Tensor]) -> Tensor:
    """L2-normalised mean of the L2-normalised embeddings present per row (zero row if none present)."""
    keys = list(embs)
    stacked = torch.stack([F.normalize(embs[k], dim=-1) * present[k][:, None] for k in keys])
    count = torch.stack([present[k] for k in keys]).sum(0).clamp(min=1)
    return F.normalize(stacked.sum(0) / count[:, None], dim=-1)


@dataclasses.dataclass
class ModalityInput:
    """One modality of a batch after :meth:`Encoder.resolve_inputs`: pixels, their band names, the rows
    present ``[B]``, per-row band-group presence ``[B, G]`` (None: every given group on every row) and the
    month of each row ``[B]`` (0 = January, -1 unknown; None: not given).

    For a modality the encoder reads ``T > 1`` dates of (:attr:`Encoder.input_dates`: a time axis, Galileo) every
    field has the date axis after the rows: ``x`` ``[B, T, C, H, W]``, ``present`` / ``month`` ``[B, T]``,
    ``group_present`` ``[B, T, G]``."""

    x: Tensor
    bands: list[str]
    present: Tensor
    group_present: Tensor | None
    month: Tensor | None = None

    def select(self, rows: Tensor) -> ModalityInput:
        """The rows ``rows`` (int positions) alone."""
        return ModalityInput(self.x[rows], self.bands, self.present[rows],
                             None if self.group_present is None else self.group_present[rows],
                             None if self.month is None else self.month[rows])


def _batch_entry(batch: Mapping[str, Any], k: str, dates: int = 1) -> tuple[Tensor, Any, Any, Any] | None:
    """(pixels, presence, band-group presence, month) of modality ``k`` of a
    :class:`~earthembed.contract.ChipBatch` (typed) or a dict with today's string keys; None if absent.
    ``dates``: how many dates of ``k`` the encoder reads; 1 gives ``[B, C, H, W]`` / ``[B]`` fields, more the
    observation's own ``[B, T, ...]`` ones (a dict batch only holds one date)."""
    if isinstance(batch, ChipBatch):
        o = batch.obs.get(k)
        if o is None:
            return None
        if o.num_dates != dates:
            if dates == 1:
                raise ContractError(f"modality {k!r} has {o.num_dates} dates; this encoder reads one date per "
                                    "modality (give it one date: Observation.date(t))")
            raise ContractError(f"modality {k!r} has {o.num_dates} date(s); this model reads {dates} dates of it "
                                "(the series it was fitted to)")
        if dates > 1:
            return o.x, o.present, o.group_present, o.month
        return (o.x[:, 0], o.present[:, 0], None if o.group_present is None else o.group_present[:, 0],
                None if o.month is None else o.month[:, 0])
    if k not in batch:
        return None
    if dates > 1:
        raise ContractError(f"modality {k!r}: this model reads {dates} dates of it; give a ChipBatch whose "
                            f"observation has them ([B, {dates}, C, H, W]), a dict batch holds one date")
    return batch[k], batch.get(f"{k}_present"), batch.get(f"{k}_group_present"), batch.get(f"{k}_month")


def _rows_present(inp: ModalityInput) -> Tensor | None:
    """Positions of the rows present, None when every row is."""
    return None if bool(inp.present.all()) else inp.present.nonzero().flatten()


def put_rows(n: int, rows: Tensor, t: Tensor) -> Tensor:
    """``[n, ...]`` holding ``t`` at ``rows`` and zeros elsewhere (the rows of absent chips)."""
    return t.new_zeros(n, *t.shape[1:]).index_copy(0, rows, t)


class Encoder(nn.Module):
    """Base of every registered encoder; subclasses set the attributes and implement the abstract methods.

    Attributes set by subclasses: ``modalities`` (key -> band names in the model's order), ``band_groups``
    (key -> groups partitioning those bands), ``embed_dim``, ``feature_channels`` and ``feature_strides``
    (of :meth:`forward_features`, coarsest last).
    """

    architecture: ClassVar[str] = ""  # registry name used to rebuild the model from an export
    joint_fused: ClassVar[bool] = False  # fused is the model's own joint embedding, not fuse_embeddings
    modalities: dict[str, list[str]]
    band_groups: dict[str, list[list[str]]]
    embed_dim: int
    feature_channels: list[int]
    feature_strides: list[int]

    @property
    def config(self) -> dict[str, Any]:
        """JSON-able keyword arguments: ``build_model(architecture, **config)`` rebuilds the architecture."""
        raise NotImplementedError

    @property
    def input_dates(self) -> dict[str, int]:
        """How many dates ``T`` of each modality the encoder reads at once (the input spec's ``dates``): 1 for
        single-date encoders; a model with a time axis (Galileo) reads a whole series as one observation."""
        return {k: 1 for k in self.modalities}

    # -- the template: the modality loop, absent rows and fusion, once for every encoder --------------
    def forward(self, batch: Mapping[str, Any], bands: Mapping[str, Sequence[str]] | None = None,
                present: Mapping[str, Any] | None = None, group_present: Mapping[str, Any] | None = None
                ) -> EncoderOutput:
        """Embed ``batch`` (a :class:`~earthembed.contract.ChipBatch` or ``{k: [B, C, H, W]}``; other keys
        ignored). ``bands`` names each tensor's channels (default: the model's bands), ``present`` /
        ``group_present`` default to the batch's (``<k>_present`` / ``<k>_group_present``). Model modalities
        missing from ``batch`` count as absent.

        For each model modality: the rows present go through :meth:`embed_modality`, their embeddings are put
        back at their rows with zeros elsewhere, and the modalities are fused (:func:`fuse_embeddings`)."""
        n, inputs = self.resolve_inputs(batch, bands, present, group_present)
        device = next(iter(inputs.values())).x.device
        embs: dict[str, Tensor] = {}
        pres: dict[str, Tensor] = {}
        for k in self.modalities:
            inp = inputs.get(k)
            rows = None if inp is None else _rows_present(inp)
            if inp is None or (rows is not None and not len(rows)):
                embs[k], pres[k] = self.absent_output(n, device)
            elif rows is None:
                embs[k], pres[k] = self.embed_modality(k, inp), inp.present
            else:
                embs[k], pres[k] = put_rows(n, rows, self.embed_modality(k, inp.select(rows))), inp.present
        return EncoderOutput(embs, pres, fuse_embeddings(embs, pres))

    def forward_features(self, batch: Mapping[str, Any], bands: Mapping[str, Sequence[str]] | None = None,
                         present: Mapping[str, Any] | None = None, group_present: Mapping[str, Any] | None = None
                         ) -> dict[str, list[Tensor]]:
        """Multi-scale maps per modality in ``batch``: ``{k: [[B, C_i, H/s_i, W/s_i] for each level]}`` with
        ``C_i = feature_channels[i]`` and ``s_i = feature_strides[i]``; rows of absent chips are zeros (the rows
        present go through :meth:`modality_features`)."""
        n, inputs = self.resolve_inputs(batch, bands, present, group_present)
        out: dict[str, list[Tensor]] = {}
        for k, inp in inputs.items():
            rows = _rows_present(inp)
            if rows is None:
                out[k] = list(self.modality_features(k, inp))
            elif not len(rows):
                out[k] = list(self.absent_features(k, inp, n))
            else:
                out[k] = [put_rows(n, rows, m) for m in self.modality_features(k, inp.select(rows))]
        return out

    # -- what a backbone implements -------------------------------------------------------------------
    def embed_modality(self, k: str, inp: ModalityInput) -> Tensor:
        """``[m, embed_dim]`` float32 embeddings of modality ``k`` for the ``m`` rows of ``inp``, all present
        (band-group presence per row in ``inp.group_present``)."""
        raise NotImplementedError

    def modality_features(self, k: str, inp: ModalityInput) -> list[Tensor]:
        """The maps of :meth:`forward_features` of modality ``k`` for the rows of ``inp``, all present."""
        raise NotImplementedError

    def absent_features(self, k: str, inp: ModalityInput, n: int) -> list[Tensor]:
        """Zero maps of :meth:`forward_features` for a modality no row of the ``n`` has: shaped by running
        :meth:`modality_features` on one zero row (backbones with a cheaper way to know the shapes override)."""
        zero = ModalityInput(inp.x.new_zeros(1, *inp.x.shape[1:]), inp.bands, inp.present.new_ones(1), None)
        return [m.new_zeros(n, *m.shape[1:]) for m in self.modality_features(k, zero)]

    def no_weight_decay(self) -> set[str]:
        """Parameter names exempt from weight decay: biases, norms and other 1-D parameters by default;
        subclasses add embeddings, GRN parameters and the like by name."""
        return {n for n, p in self.named_parameters() if p.ndim <= 1}

    def group_channel_indices(self, modality: str) -> list[list[int]]:
        """Per band group, the channel positions of its bands in ``self.modalities[modality]`` order."""
        bands = self.modalities[modality]
        return [[bands.index(b) for b in g] for g in self.band_groups[modality]]

    # -- shared input handling -------------------------------------------------------------------------
    def check_bands(self, k: str, bands: Sequence[str]) -> list[str]:
        """``bands`` of modality ``k`` validated against the model: known, unique, non-empty."""
        bands = [str(b) for b in bands]
        unknown = [b for b in bands if b not in self.modalities[k]]
        if unknown:
            raise BandMismatchError(f"modality {k!r}: bands {unknown} are unknown to this model (it has {self.modalities[k]})")
        if len(set(bands)) != len(bands):
            raise BandMismatchError(f"modality {k!r}: duplicate band names in {bands}")
        if not bands:
            raise BandMismatchError(f"modality {k!r}: no bands given")
        return bands

    def groups_given(self, k: str, bands: Sequence[str]) -> list[bool]:
        """Per band group of ``k``: whether any of its bands is among ``bands``."""
        have = set(bands)
        return [any(b in have for b in g) for g in self.band_groups[k]]

    def scatter_bands(self, k: str, x: Tensor, bands: Sequence[str]) -> Tensor:
        """``x`` ([B, len(bands), H, W]) placed into the model's full band order of ``k``; missing bands are 0
        (the normalised mean), as band dropout trains for."""
        full = self.modalities[k]
        if list(bands) == full:
            return x
        out = x.new_zeros(x.shape[0], len(full), *x.shape[2:])
        out[:, [full.index(b) for b in bands]] = x
        return out

    def resolve_inputs(self, batch: Mapping[str, Any], bands: Mapping[str, Sequence[str]] | None,
                       present: Mapping[str, Any] | None, group_present: Mapping[str, Any] | None = None
                       ) -> tuple[int, dict[str, ModalityInput]]:
        """(rows, {k: ModalityInput}) for the model modalities in ``batch``, validated by name and shape."""
        bands = dict(bands or {})
        named = list(bands) + list(present or {}) + list(group_present or {})
        unknown = [k for k in named if k not in self.modalities]
        if unknown:
            raise ValueError(f"modalities {sorted(set(unknown))} are unknown to this model (it has {list(self.modalities)})")
        steps = self.input_dates
        entries = {k: e for k in self.modalities if (e := _batch_entry(batch, k, steps[k])) is not None}
        if not entries:
            raise ValueError(f"batch holds none of the model's modalities {list(self.modalities)} (keys: {list(batch)})")
        n = int(next(iter(entries.values()))[0].shape[0])
        out: dict[str, ModalityInput] = {}
        for k, (x, batch_pr, batch_gp, month) in entries.items():
            bnames = self.check_bands(k, bands.get(k, self.modalities[k]))
            lead = (n,) if steps[k] == 1 else (n, steps[k])  # rows, or rows x dates
            if tuple(x.shape[: len(lead)]) != lead or x.ndim != len(lead) + 3 or x.shape[len(lead)] != len(bnames):
                want = ", ".join(["B", *(["T"] if len(lead) > 1 else []), str(len(bnames)), "H", "W"])
                raise ValueError(f"modality {k!r}: expected [{want}] for bands {bnames}, got {tuple(x.shape)}")
            pr = present[k] if present is not None and k in present else batch_pr
            pr = torch.ones(lead, dtype=torch.bool) if pr is None else torch.as_tensor(pr, dtype=torch.bool)
            pr = pr.to(x.device).reshape(lead)
            gp = group_present[k] if group_present is not None and k in group_present else batch_gp
            if gp is not None:
                gp = torch.as_tensor(gp, dtype=torch.bool).to(x.device)
                ng = len(self.band_groups[k])
                if tuple(gp.shape) != (*lead, ng):
                    what = "rows x band groups" if len(lead) == 1 else "rows x dates x band groups"
                    raise ValueError(f"modality {k!r}: group_present must be {[*lead, ng]} ({what}), got {tuple(gp.shape)}")
                given = torch.tensor(self.groups_given(k, bnames), device=x.device)
                gp = gp & given  # groups without any band in ``bands`` are absent anyway
                pr = pr & gp.any(-1)  # a row (date) without any group is an absent modality
                if bool((gp[pr] == given).all()):
                    gp = None  # every present row has every given group
            if month is not None:
                month = torch.as_tensor(month, device=x.device).long().reshape(lead)
            out[k] = ModalityInput(x, bnames, pr, gp, month)
        return n, out

    def model_input(self, k: str, inp: ModalityInput) -> Tensor:
        """``inp``'s pixels in the model's full band order of ``k`` (:meth:`scatter_bands`) with the channels of
        band groups absent per row (``inp.group_present``) zeroed: what a backbone without token dropping sees."""
        x = self.scatter_bands(k, inp.x, inp.bands)
        if inp.group_present is not None:
            chan = torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device)
            for g, idx in enumerate(self.group_channel_indices(k)):
                chan[:, idx] = inp.group_present[:, g : g + 1]
            x = x * chan.to(x.dtype)[:, :, None, None]
        return x

    def absent_output(self, n: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """(zero embeddings [n, D], all-False presence [n]) for a model modality missing from the batch."""
        return torch.zeros(n, self.embed_dim, device=device), torch.zeros(n, dtype=torch.bool, device=device)
