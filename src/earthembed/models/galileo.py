"""Galileo (Tseng et al. 2025): a multimodal space-time ViT, written for earthembed from the paper and the
published model's behaviour, behind the :class:`~earthembed.models.base.Encoder` contract.

**What Galileo consumes.** Channels come in *groups*, each one token per patch (or per date, or per chip):

* space-time groups (one token per patch and date): Sentinel-1 (VV, VH), Sentinel-2 RGB (B02-B04), red edge
  (B05-B07), NIR 10 m (B08), NIR 20 m (B8A), SWIR (B11, B12), NDVI;
* space groups (one token per patch): SRTM (elevation, slope), Dynamic World and WorldCereal maps;
* time groups (one token per date): ERA5, TerraClimate, VIIRS;
* static groups (one token per chip): LandScan, location (x, y, z on the unit sphere), static maps.

Every token gets its group's linear projection (a ``P x P`` patch convolution for pixel groups) plus a 4-part
encoding, a quarter of the width each: a learned channel-group embedding, a sin-cos encoding of the date's
position in the series, a sin-cos encoding of its month, and a 2-D sin-cos encoding of the patch position
scaled by the ground size of a patch (``patch_size x input_resolution_m / 10 m``). Families without a part get
zeros there. Hidden tokens (groups a chip lacks, or masked ones) are **dropped before attention**, not zeroed,
so a chip's embedding depends only on what it has. The embedding is the mean of the visible tokens after the
final LayerNorm.

**Flexible patch size.** The published projections are 8 x 8; a patch size ``P`` in 1..8 resizes them with the
pseudo-inverse of the bicubic resize (FlexiViT, Beyer et al. 2023: timm's ``resample_patch_embed``), as the
publisher trains with random patch sizes. Smaller patches: more tokens (4x per halving), finer maps, slower.

**Time.** Inputs are ``[B, T, C, H, W]``: a modality read as a series (an observation of ``T`` dates, its
``timesteps`` a list) feeds the same groups at ``T`` dates, and several single-date store modalities can feed
them at different dates (``timesteps``, one index each); either way a multi-date chip is one sequence of dates.
Months come with the batch (the observation's ``month``, 0 = January) or are ``default_month``.

The network's own equality with the publisher's reference implementation is a test
(``tests/test_galileo.py``, fixture recorded by ``scripts/make_galileo_fixture.py``).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import resample_patch_embed
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from earthembed.data.modalities import BandMismatchError
from earthembed.models.base import Encoder, EncoderOutput, ModalityInput
from earthembed.models.registry import register_model, variant

SPACE_TIME_GROUPS: dict[str, tuple[str, ...]] = {
    "S1": ("VV", "VH"),
    "S2_RGB": ("B02", "B03", "B04"),
    "S2_Red_Edge": ("B05", "B06", "B07"),
    "S2_NIR_10m": ("B08",),
    "S2_NIR_20m": ("B8A",),
    "S2_SWIR": ("B11", "B12"),
    "NDVI": ("NDVI",),
}
DW_CLASSES = ("water", "trees", "grass", "flooded_vegetation", "crops", "shrub_and_scrub", "built", "bare",
              "snow_and_ice")
WC_CLASSES = ("temporarycrops", "maize", "wintercereals", "springcereals", "irrigation")
SPACE_GROUPS: dict[str, tuple[str, ...]] = {
    "SRTM": ("elevation", "slope"),
    "DW": tuple(f"DW_{c}" for c in DW_CLASSES),
    "WC": tuple(f"WC_{c}" for c in WC_CLASSES),
}
TIME_GROUPS: dict[str, tuple[str, ...]] = {
    "ERA5": ("temperature_2m", "total_precipitation_sum"),
    "TC": ("def", "soil", "aet"),
    "VIIRS": ("avg_rad",),
}
STATIC_GROUPS: dict[str, tuple[str, ...]] = {
    "LS": ("landscan",),
    "location": ("x", "y", "z"),
    "DW_static": tuple(f"DW_{c}_static" for c in DW_CLASSES),
    "WC_static": tuple(f"WC_{c}_static" for c in WC_CLASSES),
}
PIXEL_BANDS: tuple[str, ...] = tuple(b for g in (*SPACE_TIME_GROUPS.values(), *SPACE_GROUPS.values()) for b in g)
DERIVED = {"NDVI": ("B04", "B08"), "slope": ("elevation",)}
"""Bands computed inside the model from others (in the published units), when those are given."""
BASE_GSD_M = 10.0
DEFAULT_MONTH = 5
"""June (0 = January): the publisher's default when no date is known."""
NAME_ALIASES: dict[str, str] = {"R": "B04", "G": "B03", "B": "B02", "N": "B08", "NIR": "B08", "RED": "B04",
                                "GREEN": "B03", "BLUE": "B02", "DEM": "elevation", "ELEVATION": "elevation",
                                "SLOPE": "slope"}
"""Store band names fed to a Galileo band without an S2 name (generic RGB / RGBN rasters, DEMs)."""


def galileo_band(name: str) -> str | None:
    """The Galileo pixel band a store band feeds (``B1`` -> ``B01``, ``R`` -> ``B04``), or None."""
    import re

    s = name.strip()
    m = re.fullmatch(r"[Bb](\d{1,2})([Aa]?)", s)
    if m:
        s = f"B{int(m.group(1))}A" if m.group(2) else f"B{int(m.group(1)):02d}"
    s = NAME_ALIASES.get(s.upper(), s) if s not in PIXEL_BANDS else s
    return s if s in PIXEL_BANDS and s not in ("NDVI",) else None


# -- encodings ----------------------------------------------------------------------------------------------
def sincos_1d(dim: int, pos: Tensor) -> Tensor:
    """``[..., dim]`` sin-cos encoding of positions ``pos``, frequencies ``10000 ** -(i / 2 dim)`` as published."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, device=pos.device) / dim / 2.0)
    angles = pos.to(torch.float32)[..., None] * omega
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


def sincos_2d(dim: int, h: int, w: int, scale: float, device: torch.device | None = None) -> Tensor:
    """``[h, w, dim]``: half the width encodes the column, half the row, positions scaled by ``scale``."""
    rows = torch.arange(h, device=device)[:, None].expand(h, w) * scale
    cols = torch.arange(w, device=device)[None, :].expand(h, w) * scale
    return torch.cat([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], dim=-1)


def month_table(dim: int) -> Tensor:
    """``[12, dim]``: sin of the month angle in the first half, cos in the second (0 = January)."""
    angle = torch.arange(12) * (2 * math.pi / 12)
    return torch.cat([torch.sin(angle)[:, None].expand(12, dim // 2), torch.cos(angle)[:, None].expand(12, dim // 2)], -1)


# -- the network --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class GalileoInput:
    """One batch in Galileo's families; ``*_hidden`` are True where a group's token is hidden (absent or masked).

    Attributes:
        space_time: ``[B, T, 13, H, W]`` (S1, S2 and NDVI channels, group order) and ``[B, T, 7]`` hidden.
        space: ``[B, 16, H, W]`` and ``[B, 3]``; time: ``[B, T, 6]`` and ``[B, T, 3]``; static: ``[B, 18]``
            and ``[B, 4]``. Families a caller does not have may be None (all hidden).
        months: ``[B, T]`` month of each date, 0 = January.
    """

    space_time: Tensor
    space_time_hidden: Tensor
    months: Tensor
    space: Tensor | None = None
    space_hidden: Tensor | None = None
    time: Tensor | None = None
    time_hidden: Tensor | None = None
    static: Tensor | None = None
    static_hidden: Tensor | None = None


@dataclasses.dataclass
class GalileoTokens:
    """Encoder output: tokens after the final norm and their hidden flags, per family.

    ``space_time`` ``[B, h, w, T, G, D]``, ``space`` ``[B, h, w, G, D]``, ``time`` ``[B, T, G, D]``, ``static``
    ``[B, G, D]`` (zeros where hidden); ``*_hidden`` the same without ``D``.
    """

    space_time: Tensor
    space: Tensor
    time: Tensor
    static: Tensor
    space_time_hidden: Tensor
    space_hidden: Tensor
    time_hidden: Tensor
    static_hidden: Tensor

    def flat(self) -> tuple[Tensor, Tensor]:
        """(tokens ``[B, N, D]``, hidden ``[B, N]``) in the order space-time (h, w, t, g), space, time, static."""
        b, d = self.space_time.shape[0], self.space_time.shape[-1]
        x = torch.cat([t.reshape(b, -1, d) for t in (self.space_time, self.space, self.time, self.static)], 1)
        m = torch.cat([t.reshape(b, -1) for t in (self.space_time_hidden, self.space_hidden, self.time_hidden,
                                                   self.static_hidden)], 1)
        return x, m

    def pooled(self) -> Tensor:
        """``[B, D]`` mean of the visible tokens (zeros for a row with none)."""
        x, m = self.flat()
        keep = (~m).to(x.dtype)
        return (x * keep[..., None]).sum(1) / keep.sum(1, keepdim=True).clamp(min=1)


class GalileoNet(nn.Module):
    """The Galileo encoder network (parameters only; inputs by family, see :class:`GalileoInput`)."""

    def __init__(self, embedding_size: int = 128, depth: int = 4, num_heads: int = 8, mlp_ratio: float = 4.0,
                 max_sequence_length: int = 24, max_patch_size: int = 8, drop_path: float = 0.0) -> None:
        super().__init__()
        if embedding_size % 8:
            raise ValueError(f"galileo: embedding_size must be a multiple of 8 (four sin-cos quarters), got {embedding_size}")
        self.embedding_size, self.max_patch_size = int(embedding_size), int(max_patch_size)
        self.max_sequence_length = int(max_sequence_length)
        d, q = self.embedding_size, self.embedding_size // 4

        def patch(c: int) -> nn.Conv2d:
            return nn.Conv2d(c, d, kernel_size=max_patch_size, stride=max_patch_size)

        self.space_time_embed = nn.ModuleDict({g: patch(len(b)) for g, b in SPACE_TIME_GROUPS.items()})
        self.space_embed = nn.ModuleDict({g: patch(len(b)) for g, b in SPACE_GROUPS.items()})
        self.time_embed = nn.ModuleDict({g: nn.Linear(len(b), d) for g, b in TIME_GROUPS.items()})
        self.static_embed = nn.ModuleDict({g: nn.Linear(len(b), d) for g, b in STATIC_GROUPS.items()})
        self.s_t_channel_embed = nn.Parameter(torch.zeros(len(SPACE_TIME_GROUPS), q))
        self.sp_channel_embed = nn.Parameter(torch.zeros(len(SPACE_GROUPS), q))
        self.t_channel_embed = nn.Parameter(torch.zeros(len(TIME_GROUPS), q))
        self.st_channel_embed = nn.Parameter(torch.zeros(len(STATIC_GROUPS), q))
        self.register_buffer("time_pos_embed", sincos_1d(q, torch.arange(self.max_sequence_length)), persistent=False)
        self.register_buffer("month_embed", month_table(q), persistent=False)
        dpr = [float(x) for x in torch.linspace(0, drop_path, depth)] if drop_path else [0.0] * depth
        self.blocks = nn.ModuleList(
            Block(d, num_heads, mlp_ratio=mlp_ratio, qkv_bias=True, norm_layer=nn.LayerNorm, drop_path=dpr[i])
            for i in range(depth))
        self.norm = nn.LayerNorm(d)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform linear layers with zero biases (the publisher's ViT initialisation)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def _patch_weight(self, conv: nn.Conv2d, patch_size: int) -> Tensor:
        if patch_size == self.max_patch_size:
            return conv.weight
        return resample_patch_embed(conv.weight, [patch_size, patch_size], interpolation="bicubic", antialias=True)

    def _project_pixels(self, embeds: nn.ModuleDict, groups: Mapping[str, Sequence[str]], x: Tensor, hidden: Tensor,
                        p: int) -> Tensor:
        """``[N, C, H, W]`` -> ``[N, h, w, G, D]``; groups hidden in every row are not computed (zeros)."""
        n, _, hh, ww = x.shape
        out = x.new_zeros(n, hh // p, ww // p, len(groups), self.embedding_size)
        start = 0
        for g, (name, bands) in enumerate(groups.items()):
            stop = start + len(bands)
            if not bool(hidden[:, g].all()):
                conv = embeds[name]
                y = F.conv2d(x[:, start:stop], self._patch_weight(conv, p), conv.bias, stride=p)
                out[:, :, :, g] = y.permute(0, 2, 3, 1)
            start = stop
        return out

    def _project_vectors(self, embeds: nn.ModuleDict, groups: Mapping[str, Sequence[str]], x: Tensor, hidden: Tensor
                         ) -> Tensor:
        """``[..., C]`` -> ``[..., G, D]`` (groups hidden everywhere: zeros)."""
        out = x.new_zeros(*x.shape[:-1], len(groups), self.embedding_size)
        start = 0
        for g, (name, bands) in enumerate(groups.items()):
            stop = start + len(bands)
            if not bool(hidden[..., g].all()):
                out[..., g, :] = embeds[name](x[..., start:stop])
            start = stop
        return out

    def forward(self, inp: GalileoInput, patch_size: int | None = None, input_resolution_m: float = BASE_GSD_M
                ) -> GalileoTokens:
        p = int(patch_size or self.max_patch_size)
        st = inp.space_time
        b, t, _, hh, ww = st.shape
        if not 1 <= p <= self.max_patch_size:
            raise ValueError(f"galileo: patch size {p} is outside 1..{self.max_patch_size}")
        if hh % p or ww % p:
            raise ValueError(f"galileo: patch size {p} does not divide the {hh}x{ww} px input")
        if t > self.max_sequence_length:
            raise ValueError(f"galileo: {t} dates exceed the model's {self.max_sequence_length}")
        h, w, q, dev = hh // p, ww // p, self.embedding_size // 4, st.device
        n_sp, n_t, n_st = len(SPACE_GROUPS), len(TIME_GROUPS), len(STATIC_GROUPS)
        sp_hid = inp.space_hidden if inp.space_hidden is not None else torch.ones(b, n_sp, dtype=torch.bool, device=dev)
        t_hid = inp.time_hidden if inp.time_hidden is not None else torch.ones(b, t, n_t, dtype=torch.bool, device=dev)
        st_hid = inp.static_hidden if inp.static_hidden is not None else torch.ones(b, n_st, dtype=torch.bool, device=dev)
        sp_x = inp.space if inp.space is not None else st.new_zeros(b, sum(map(len, SPACE_GROUPS.values())), hh, ww)
        t_x = inp.time if inp.time is not None else st.new_zeros(b, t, sum(map(len, TIME_GROUPS.values())))
        s_x = inp.static if inp.static is not None else st.new_zeros(b, sum(map(len, STATIC_GROUPS.values())))
        s_t_hid = inp.space_time_hidden.bool()

        # linear projections: [B, h, w, T, G, D], [B, h, w, G, D], [B, T, G, D], [B, G, D]
        tok_st = self._project_pixels(self.space_time_embed, SPACE_TIME_GROUPS, st.reshape(b * t, *st.shape[2:]),
                                      s_t_hid.reshape(b * t, -1), p)
        tok_st = tok_st.reshape(b, t, h, w, -1, self.embedding_size).permute(0, 2, 3, 1, 4, 5)
        tok_sp = self._project_pixels(self.space_embed, SPACE_GROUPS, sp_x, sp_hid.bool(), p)
        tok_t = self._project_vectors(self.time_embed, TIME_GROUPS, t_x, t_hid.bool())
        tok_s = self._project_vectors(self.static_embed, STATIC_GROUPS, s_x, st_hid.bool())

        # encodings: channel group | position in time | month | position in space (a quarter of D each)
        months = inp.months.long().clamp(0, 11)
        space = sincos_2d(q, h, w, input_resolution_m * p / BASE_GSD_M, dev).to(st.dtype)  # [h, w, q]
        when = self.time_pos_embed[:t].to(st.dtype)  # [T, q]
        month = self.month_embed.to(st.dtype)[months]  # [B, T, q]
        g_st, g_sp = tok_st.shape[4], tok_sp.shape[3]
        enc_st = torch.cat([
            self.s_t_channel_embed[None, None, None, None].expand(b, h, w, t, g_st, q),
            when[None, None, None, :, None].expand(b, h, w, t, g_st, q),
            month[:, None, None, :, None].expand(b, h, w, t, g_st, q),
            space[None, :, :, None, None].expand(b, h, w, t, g_st, q)], -1)
        enc_sp = torch.cat([
            self.sp_channel_embed[None, None, None].expand(b, h, w, g_sp, q),
            space.new_zeros(b, h, w, g_sp, 2 * q),
            space[None, :, :, None].expand(b, h, w, g_sp, q)], -1)
        enc_t = torch.cat([
            self.t_channel_embed[None, None].expand(b, t, n_t, q),
            when[None, :, None].expand(b, t, n_t, q),
            month[:, :, None].expand(b, t, n_t, q),
            space.new_zeros(b, t, n_t, q)], -1)
        enc_s = torch.cat([self.st_channel_embed[None].expand(b, n_st, q), space.new_zeros(b, n_st, 3 * q)], -1)

        tokens = GalileoTokens(
            tok_st + enc_st, tok_sp + enc_sp, tok_t + enc_t, tok_s + enc_s,
            s_t_hid[:, None, None].expand(b, h, w, t, g_st),
            sp_hid.bool()[:, None, None].expand(b, h, w, g_sp),
            t_hid.bool(), st_hid.bool())
        x, hidden = tokens.flat()
        x = self._attend(x, hidden)
        x = self.norm(x) * (~hidden)[..., None].to(x.dtype)
        return self._unflatten(x, tokens)

    def _attend(self, x: Tensor, hidden: Tensor) -> Tensor:
        """The transformer over the visible tokens of each row only (hidden ones are dropped, then put back as 0)."""
        if not bool(hidden.any()):
            for blk in self.blocks:
                x = blk(x)
            return x
        keep_all = ~hidden
        n_vis = keep_all.sum(1)
        longest = int(n_vis.max())
        out = torch.zeros_like(x)
        if longest == 0:
            return out
        # visible tokens first (in their order), then cut to the longest row: rows are padded, the padding masked
        order = torch.sort(hidden.to(torch.int8), dim=1, stable=True).indices[:, :longest]
        seq = torch.gather(x, 1, order[..., None].expand(-1, -1, x.shape[-1]))
        valid = torch.arange(longest, device=x.device)[None] < n_vis[:, None]
        valid[n_vis == 0, 0] = True  # a row with nothing visible attends to a dummy token (its output is dropped)
        # rows with the same visible count (every chip of a store with the same groups) need no mask, and SDPA's
        # unmasked kernel is the faster one
        mask = None if bool(valid.all()) else valid[:, None, None, :]
        for blk in self.blocks:
            seq = blk(seq, attn_mask=mask)
        seq = seq * valid[..., None].to(seq.dtype)
        seq = seq * (n_vis > 0)[:, None, None].to(seq.dtype)
        return out.scatter(1, order[..., None].expand(-1, -1, x.shape[-1]), seq)

    @staticmethod
    def _unflatten(x: Tensor, like: GalileoTokens) -> GalileoTokens:
        b = x.shape[0]
        parts, start = [], 0
        for t in (like.space_time, like.space, like.time, like.static):
            n = t[..., 0].numel() // b
            parts.append(x[:, start:start + n].reshape(t.shape))
            start += n
        return GalileoTokens(*parts, like.space_time_hidden, like.space_hidden, like.time_hidden, like.static_hidden)


# -- the earthembed encoder ------------------------------------------------------------------------------------
ST_CHANNELS: list[str] = [b for g in SPACE_TIME_GROUPS.values() for b in g]
SP_CHANNELS: list[str] = [b for g in SPACE_GROUPS.values() for b in g]
_GROUP_OF: dict[str, tuple[str, str]] = {
    **{b: ("space_time", g) for g, bs in SPACE_TIME_GROUPS.items() for b in bs},
    **{b: ("space", g) for g, bs in SPACE_GROUPS.items() for b in bs},
}


def _timesteps(k: str, t: Any) -> int | list[int]:
    """A modality's ``timesteps`` entry checked: one date index, or a non-empty list of distinct ones."""
    if not isinstance(t, list | tuple):
        return int(t)
    if not t or not all(isinstance(x, int) and not isinstance(x, bool) for x in t) or len(set(t)) != len(t):
        raise ValueError(f"galileo: timesteps of {k!r} must be a date index or a list of distinct ones, got {t!r}")
    return [int(x) for x in t]


def _fed_what(a: str, b: str) -> str:
    return f"two dates of modality {a!r}" if a == b else f"modalities {a!r} and {b!r}"


def default_band_map(modalities: Mapping[str, Sequence[str]]) -> dict[str, dict[str, str]]:
    """``{modality: {store band: Galileo band}}`` by name (:func:`galileo_band`) for the bands Galileo reads."""
    return {str(k): {str(b): g for b in bands if (g := galileo_band(str(b))) is not None}
            for k, bands in modalities.items()}


class GalileoEncoder(Encoder):
    """Galileo behind the :class:`~earthembed.models.base.Encoder` contract (see the module docstring).

    Args:
        modalities: store modality key -> the store bands it feeds (each must map to a Galileo band).
        band_map: modality -> {store band: Galileo band} (default: by name, :func:`default_band_map`).
        timesteps: modality -> the date index it feeds (default 0): several modalities at different indices
            make a time series of ``T = max + 1`` dates. A list of indices, one per date, makes the modality a
            series read as one observation of that many dates (``[B, T, C, H, W]``: :attr:`input_dates`); its
            date ``t`` feeds index ``timesteps[k][t]``.
        embedding_size, depth, num_heads, mlp_ratio, max_sequence_length, max_patch_size, drop_path: network
            size (``galileo_nano``: 128 / 4 / 8 heads).
        patch_size: pixels per token side (1..max_patch_size; must divide the chip).
        input_resolution_m: ground size of a pixel, which scales the position encoding (Galileo's inputs: 10 m).
        pixel_stats: Galileo band -> [shift, div] such that ``normalised = (x - shift) / div`` in the published
            units (DN, dB, m): lets the model compute NDVI and slope from normalised inputs. Without it (a
            randomly initialised model on store statistics) no band is derived.
        ndvi, slope: derive NDVI from B04/B08 and slope (degrees) from elevation when those are fed.
        default_month: month (0 = January) of dates the batch does not give.
        pool: ``mean`` (of the visible tokens; the only pooling the publisher uses).

    ``EncoderOutput.fused`` is the publisher's embedding: the mean of every visible token (all modalities
    attend to each other, so it is not a mean of per-modality embeddings, and it is not L2-normalised:
    ``joint_fused``); ``modality[k]`` is the mean of the tokens of the groups modality ``k`` fed (after joint
    attention).
    """

    architecture = "galileo"
    joint_fused = True

    def __init__(
        self,
        modalities: Mapping[str, Sequence[str]],
        band_map: Mapping[str, Mapping[str, str]] | None = None,
        timesteps: Mapping[str, int] | None = None,
        embedding_size: int = 128,
        depth: int = 4,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        max_sequence_length: int = 24,
        max_patch_size: int = 8,
        patch_size: int = 8,
        input_resolution_m: float = BASE_GSD_M,
        pixel_stats: Mapping[str, Sequence[float]] | None = None,
        ndvi: bool = True,
        slope: bool = True,
        default_month: int = DEFAULT_MONTH,
        pool: str = "mean",
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        if not modalities:
            raise ValueError("galileo: needs at least one modality")
        mods = {str(k): [str(b) for b in v] for k, v in modalities.items()}
        given = default_band_map(mods) if band_map is None else band_map
        self.modalities = mods
        self.band_map: dict[str, dict[str, str]] = {}
        for k, bands in mods.items():
            m = {str(b): str(g) for b, g in dict(given.get(k) or {}).items()}
            bad = {b: g for b, g in m.items() if b not in bands or g not in _GROUP_OF}
            if bad:
                raise BandMismatchError(f"galileo: band_map of {k!r} {bad}: not bands of the modality or not Galileo "
                                        f"inputs ({[x for x in PIXEL_BANDS if x != 'NDVI']})")
            if len(set(m.values())) != len(m):
                raise BandMismatchError(f"galileo: modality {k!r} feeds a Galileo band twice ({m})")
            if not m:
                raise BandMismatchError(f"galileo: modality {k!r} has no band Galileo reads ({bands}; it reads "
                                        f"{[x for x in PIXEL_BANDS if x != 'NDVI']}, R/G/B/N, elevation)")
            self.band_map[k] = {b: m[b] for b in bands if b in m}
        unread = {k: [b for b in v if b not in self.band_map[k]] for k, v in mods.items()}
        unread = {k: v for k, v in unread.items() if v}
        if unread:  # accepted (a store's full band list) but never looked at
            warnings.warn(f"galileo: bands {unread} have no Galileo input and are not read", UserWarning, stacklevel=2)
        self.timesteps: dict[str, int | list[int]] = {k: _timesteps(k, (timesteps or {}).get(k, 0))
                                                     for k in self.modalities}
        self.steps = {k: [t] if isinstance(t, int) else list(t) for k, t in self.timesteps.items()}
        """Per modality, the date index each of its dates feeds (one for a single-date modality)."""
        if any(t < 0 or t >= max_sequence_length for ts in self.steps.values() for t in ts):
            raise ValueError(f"galileo: timesteps {self.timesteps} must lie in 0..{max_sequence_length - 1}")
        fed: dict[tuple[int, str], str] = {}
        for k, m in self.band_map.items():
            for gb in m.values():
                if _GROUP_OF[gb][0] != "space_time" and len(self.steps[k]) > 1:
                    raise ValueError(f"galileo: modality {k!r} feeds {gb}, which has no dates (one token per "
                                     f"patch), at {len(self.steps[k])} dates; give it one timestep")
                for t in self.steps[k] if _GROUP_OF[gb][0] == "space_time" else [0]:
                    if (t, gb) in fed:
                        raise BandMismatchError(f"galileo: {_fed_what(fed[(t, gb)], k)} feed {gb} at date {t}; "
                                                "give them different timesteps or leave one out")
                    fed[(t, gb)] = k
        if pool != "mean":
            raise ValueError(f"galileo: pool must be 'mean', got {pool!r}")
        if not 1 <= int(patch_size) <= int(max_patch_size):
            raise ValueError(f"galileo: patch_size {patch_size} is outside 1..{max_patch_size} (the published "
                             "projections are resized to any size up to their own)")
        if not 0 <= int(default_month) <= 11:
            raise ValueError(f"galileo: default_month must be 0..11 (0 = January), got {default_month}")
        self.pixel_stats = {str(b): [float(v[0]), float(v[1])] for b, v in dict(pixel_stats or {}).items()}
        bad_stats = [b for b, (_, d) in self.pixel_stats.items() if not d > 0 or b not in PIXEL_BANDS]
        if bad_stats:
            raise ValueError(f"galileo: pixel_stats of {bad_stats}: unknown band or non-positive div")
        self.ndvi, self.slope, self.pool = bool(ndvi), bool(slope), pool
        self.patch_size, self.input_resolution_m = int(patch_size), float(input_resolution_m)
        self.default_month, self.drop_path = int(default_month), float(drop_path)
        self.size = {"embedding_size": int(embedding_size), "depth": int(depth), "num_heads": int(num_heads),
                     "mlp_ratio": float(mlp_ratio), "max_sequence_length": int(max_sequence_length),
                     "max_patch_size": int(max_patch_size)}
        self.net = GalileoNet(**self.size, drop_path=drop_path)
        self.band_groups = {k: self._groups_of(k) for k in self.modalities}
        self.embed_dim = int(embedding_size)
        self.feature_channels = [self.embed_dim]
        self.feature_strides = [self.patch_size]

    @property
    def input_dates(self) -> dict[str, int]:
        return {k: len(ts) for k, ts in self.steps.items()}

    def _groups_of(self, k: str) -> list[list[str]]:
        """The modality's store bands grouped as Galileo groups them (band-group presence acts per group)."""
        by_group: dict[str, list[str]] = {}
        for b in self.modalities[k]:
            gb = self.band_map[k].get(b)
            by_group.setdefault(_GROUP_OF[gb][1] if gb else "(not read)", []).append(b)
        return list(by_group.values())

    @property
    def config(self) -> dict[str, Any]:
        return {
            "modalities": {k: list(v) for k, v in self.modalities.items()},
            "band_map": {k: dict(v) for k, v in self.band_map.items()},
            "timesteps": {k: t if isinstance(t, int) else list(t) for k, t in self.timesteps.items()},
            **self.size,
            "patch_size": self.patch_size,
            "input_resolution_m": self.input_resolution_m,
            "pixel_stats": {b: list(v) for b, v in self.pixel_stats.items()},
            "ndvi": self.ndvi,
            "slope": self.slope,
            "default_month": self.default_month,
            "pool": self.pool,
            "drop_path": self.drop_path,
        }

    def derived_bands(self, modality: str) -> list[str]:
        """Bands this model computes from ``modality``'s (NDVI, slope), given its full band set."""
        fed = set(self.band_map[modality].values())
        return [d for d, src in DERIVED.items() if self._derives(d) and set(src) <= fed]

    def _derives(self, band: str) -> bool:
        on = self.ndvi if band == "NDVI" else self.slope
        return on and all(s in self.pixel_stats for s in DERIVED[band]) and band in self.pixel_stats

    # -- inputs --------------------------------------------------------------------------------------------
    def _raw(self, x: Tensor, band: str) -> Tensor:
        shift, div = self.pixel_stats[band]
        return x * div + shift

    def _norm(self, x: Tensor, band: str) -> Tensor:
        shift, div = self.pixel_stats[band]
        return (x - shift) / div

    def _slope(self, elevation: Tensor) -> Tensor:
        """Terrain slope in degrees of ``[N, H, W]`` elevation (m), central differences, edges replicated."""
        z = F.pad(elevation[:, None], (1, 1, 1, 1), mode="replicate")[:, 0]
        dx = (z[:, 1:-1, 2:] - z[:, 1:-1, :-2]) / (2 * self.input_resolution_m)
        dy = (z[:, 2:, 1:-1] - z[:, :-2, 1:-1]) / (2 * self.input_resolution_m)
        return torch.rad2deg(torch.atan(torch.sqrt(dx * dx + dy * dy)))

    def build_input(self, batch: Mapping[str, Any], inputs: Mapping[str, ModalityInput]
                    ) -> tuple[GalileoInput, dict[tuple[str, int, int], str]]:
        """(:class:`GalileoInput`, owner of each fed group ``(family, t, g) -> modality``) of resolved inputs
        (months come with them, :attr:`ModalityInput.month`; ``batch`` is not read again)."""
        ref = next(iter(inputs.values())).x
        b, (hh, ww) = ref.shape[0], ref.shape[-2:]
        dev, dtype = ref.device, ref.dtype
        t_max = max(t for k in inputs for t in self.steps[k]) + 1
        st = torch.zeros(b, t_max, len(ST_CHANNELS), hh, ww, device=dev, dtype=dtype)
        st_fed = torch.zeros(b, t_max, len(ST_CHANNELS), dtype=torch.bool, device=dev)
        sp = torch.zeros(b, len(SP_CHANNELS), hh, ww, device=dev, dtype=dtype)
        sp_fed = torch.zeros(b, len(SP_CHANNELS), dtype=torch.bool, device=dev)
        months = torch.full((b, t_max), -1, dtype=torch.long, device=dev)
        channel_owner: dict[tuple[str, int, str], str] = {}
        for k, inp in inputs.items():
            if tuple(inp.x.shape[-2:]) != (hh, ww):
                raise ValueError(f"galileo: modality {k!r} is {tuple(inp.x.shape[-2:])} px, others {(hh, ww)}: "
                                 "Galileo's inputs share one pixel grid")
            groups = self.band_groups[k]
            series = len(self.steps[k]) > 1  # fields carry the date axis after the rows (ModalityInput)
            for i, t in enumerate(self.steps[k]):
                x, rows = (inp.x[:, i], inp.present[:, i]) if series else (inp.x, inp.present)
                gp = inp.group_present if inp.group_present is None or not series else inp.group_present[:, i]
                month = inp.month if inp.month is None or not series else inp.month[:, i]
                for j, band in enumerate(inp.bands):
                    gb = self.band_map[k].get(band)
                    if gb is None:
                        continue
                    on = rows.clone()
                    if gp is not None:
                        gi = next(n for n, g in enumerate(groups) if band in g)
                        on &= gp[:, gi]
                    family = _GROUP_OF[gb][0]
                    if family == "space_time":
                        c = ST_CHANNELS.index(gb)
                        st[:, t, c] = x[:, j]
                        st_fed[:, t, c] = on
                        channel_owner[("space_time", t, gb)] = k
                    else:
                        c = SP_CHANNELS.index(gb)
                        sp[:, c] = x[:, j]
                        sp_fed[:, c] = on
                        channel_owner[("space", 0, gb)] = k
                if month is not None:
                    months[:, t] = torch.where((months[:, t] < 0) & rows, month, months[:, t])
        # derived bands, from the published units
        if self._derives("NDVI"):
            red, nir, c = ST_CHANNELS.index("B04"), ST_CHANNELS.index("B08"), ST_CHANNELS.index("NDVI")
            for t in range(t_max):
                on = st_fed[:, t, red] & st_fed[:, t, nir]
                if bool(on.any()):
                    r, n = self._raw(st[:, t, red], "B04"), self._raw(st[:, t, nir], "B08")
                    s = n + r
                    ndvi = torch.where(s != 0, (n - r) / torch.where(s != 0, s, 1), 0).clamp(-1, 1)
                    st[:, t, c] = self._norm(ndvi, "NDVI")
                    st_fed[:, t, c] = on
                    channel_owner[("space_time", t, "NDVI")] = channel_owner[("space_time", t, "B04")]
        if self._derives("slope") and ("space", 0, "elevation") in channel_owner \
                and ("space", 0, "slope") not in channel_owner:
            e, s = SP_CHANNELS.index("elevation"), SP_CHANNELS.index("slope")
            sp[:, s] = self._norm(self._slope(self._raw(sp[:, e], "elevation")), "slope")
            sp_fed[:, s] = sp_fed[:, e]
            channel_owner[("space", 0, "slope")] = channel_owner[("space", 0, "elevation")]
        st_hidden = torch.stack([~st_fed[:, :, [ST_CHANNELS.index(x) for x in bands]].all(-1)
                                 for bands in SPACE_TIME_GROUPS.values()], -1)
        sp_hidden = torch.stack([~sp_fed[:, [SP_CHANNELS.index(x) for x in bands]].all(-1)
                                 for bands in SPACE_GROUPS.values()], -1)
        months = torch.where(months < 0, torch.full_like(months, self.default_month), months)
        owner: dict[tuple[str, int, int], str] = {}
        for (family, t, gb), k in channel_owner.items():
            g = _GROUP_OF[gb][1]
            names = list(SPACE_TIME_GROUPS if family == "space_time" else SPACE_GROUPS)
            owner.setdefault((family, t, names.index(g)), k)
        return GalileoInput(st, st_hidden, months, sp, sp_hidden), owner

    def _check_size(self, h: int, w: int) -> None:
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"galileo: patch size {p} does not divide the {h}x{w} px chip; choose a patch size "
                             f"that divides {h} (--patch-size) or re-tile the store")

    def encode(self, batch: Mapping[str, Any], bands: Mapping[str, Sequence[str]] | None = None,
               present: Mapping[str, Any] | None = None, group_present: Mapping[str, Any] | None = None
               ) -> tuple[GalileoTokens, dict[str, Tensor], dict[str, ModalityInput]]:
        """(tokens, per-modality ownership masks over the flat token sequence ``[B, N]``, resolved inputs)."""
        _, inputs = self.resolve_inputs(batch, bands, present, group_present)
        x0 = next(iter(inputs.values())).x
        self._check_size(*x0.shape[-2:])
        gin, owner = self.build_input(batch, inputs)
        tokens = self.net(gin, self.patch_size, self.input_resolution_m)
        b, h, w, t, g_st = tokens.space_time_hidden.shape
        own: dict[str, Tensor] = {}
        for k in inputs:
            st_own = torch.zeros(t, g_st, dtype=torch.bool, device=x0.device)
            sp_own = torch.zeros(len(SPACE_GROUPS), dtype=torch.bool, device=x0.device)
            for (family, ti, gi), mk in owner.items():
                if mk == k and family == "space_time":
                    st_own[ti, gi] = True
                elif mk == k:
                    sp_own[gi] = True
            own[k] = torch.cat([st_own[None, None].expand(h, w, t, g_st).reshape(-1),
                                sp_own[None, None].expand(h, w, -1).reshape(-1),
                                torch.zeros(tokens.time_hidden[0].numel() + tokens.static_hidden[0].numel(),
                                            dtype=torch.bool, device=x0.device)])
        return tokens, own, inputs

    def forward(self, batch: Mapping[str, Any], bands: Mapping[str, Sequence[str]] | None = None,
                present: Mapping[str, Any] | None = None, group_present: Mapping[str, Any] | None = None
                ) -> EncoderOutput:
        tokens, own, inputs = self.encode(batch, bands, present, group_present)
        x, hidden = tokens.flat()
        n = x.shape[0]
        embs: dict[str, Tensor] = {}
        pres: dict[str, Tensor] = {}
        for k in self.modalities:
            if k not in own:
                embs[k], pres[k] = self.absent_output(n, x.device)
                continue
            keep = (~hidden & own[k][None]).to(x.dtype)
            count = keep.sum(1)
            embs[k] = (x * keep[..., None]).sum(1) / count.clamp(min=1)[:, None]
            pres[k] = inputs[k].present.reshape(n, -1).any(1) & (count > 0)  # any of its dates
        fused = tokens.pooled().float()
        return EncoderOutput({k: v.float() for k, v in embs.items()}, pres, fused)

    def forward_features(self, batch: Mapping[str, Any], bands: Mapping[str, Sequence[str]] | None = None,
                         present: Mapping[str, Any] | None = None, group_present: Mapping[str, Any] | None = None
                         ) -> dict[str, list[Tensor]]:
        """``{k: [[B, D, h, w]]}``: per patch, the mean of the visible tokens of the groups ``k`` fed (all its
        dates), at stride ``patch_size``; a segmentation neck (``tokens_to_pyramid``) builds finer levels."""
        tokens, own, _ = self.encode(batch, bands, present, group_present)
        b, h, w, t, g_st, d = tokens.space_time.shape
        g_sp = tokens.space.shape[3]
        per_pos = torch.cat([tokens.space_time.reshape(b, h, w, t * g_st, d), tokens.space], 3)  # [B, h, w, G', D]
        hid = torch.cat([tokens.space_time_hidden.reshape(b, h, w, t * g_st), tokens.space_hidden], 3)
        out: dict[str, list[Tensor]] = {}
        n_pix = h * w * (t * g_st + g_sp)
        for k, o in own.items():
            mine = torch.cat([o[: h * w * t * g_st].reshape(h, w, t * g_st), o[h * w * t * g_st: n_pix].reshape(h, w, g_sp)], 2)
            keep = (~hid & mine[None]).to(per_pos.dtype)
            fmap = (per_pos * keep[..., None]).sum(3) / keep.sum(3).clamp(min=1)[..., None]
            out[k] = [fmap.permute(0, 3, 1, 2).contiguous()]
        return out

    def no_weight_decay(self) -> set[str]:
        return super().no_weight_decay() | {n for n, _ in self.named_parameters() if n.endswith("channel_embed")}


register_model("galileo")(GalileoEncoder)
SIZES: dict[str, dict[str, Any]] = {
    "nano": {"embedding_size": 128, "depth": 4, "num_heads": 8},
    "tiny": {"embedding_size": 192, "depth": 12, "num_heads": 3},
    "base": {"embedding_size": 768, "depth": 12, "num_heads": 12},
}
"""The published sizes (``config.json`` of each; all: mlp_ratio 4, 24 dates, patch projections 8 x 8)."""
for _size, _args in SIZES.items():
    register_model(f"galileo_{_size}")(variant(GalileoEncoder, **_args))
