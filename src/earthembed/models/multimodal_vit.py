"""A multimodal ViT: per-(modality, band-group) patch tokens, one transformer shared by all modalities.

Design (the embed, evaluate and pretrain stages rely on it):

* **Band groups.** Each modality is split into groups of bands; each group has its own ``Conv2d`` patch
  embedding and a learned group embedding. By default a modality is one group, except optical modalities
  with >= 6 bands named like Sentinel-2, which are split by native resolution: ``[B02 B03 B04 B08]`` (10 m),
  ``[B05 B06 B07 B8A B11 B12]`` (20 m), ``[B01 B09 B10]`` (60 m); bands outside these lists form one extra
  group. Grouping by resolution keeps blurry 60 m bands from diluting sharp 10 m tokens (as in Galileo /
  SatMAE), and a group absent from the input simply contributes no tokens.
* **Band order by name.** Inputs may carry any subset of a modality's bands in any order (``bands=``); the
  model scatters them into their group's channel slots by name and zeroes the missing slots. Band dropout
  during pretraining zeroes channels the same way, so the encoder learns to cope with absent bands.
* **Absent groups per sample.** ``group_present`` (modality -> ``[B, G]`` bool, default
  ``batch["<k>_group_present"]``) marks band groups absent for single rows: such a group contributes no
  tokens for that row, exactly as when its bands are missing from ``bands=`` (rows are encoded per
  presence pattern, so nothing is padded or zero-filled). Pretraining uses it for band-group dropout, so
  inputs missing whole groups (e.g. RGB-only Sentinel-2) are seen in training as they are at inference.
  A row with no group present counts as an absent modality.
* **Shared encoder, per-modality attention.** Tokens of a modality attend only to themselves, through
  transformer blocks whose weights are shared by all modalities (CLIP towers with tied weights; the
  modality embedding tells the encoder which sensor it sees). Per-modality embeddings are therefore
  independent of each other, which contrastive learning *between* modalities requires.
* **Pooling.** A modality's embedding is the mean of its normalised output tokens. The fused embedding is
  the mean of the L2-normalised embeddings of the modalities present for that chip, L2-normalised again:
  it needs no extra encoder pass, is defined for any subset of modalities, and keeps a unit scale whatever
  the number of modalities present (a chip with none gets a zero row).
* **Any grid.** Positions use a fixed 2-D sin-cos embedding computed for the input's patch grid, so any
  ``H, W`` divisible by ``patch_size`` works; other sizes are bilinearly resized to the nearest multiple.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from timm.layers.pos_embed_sincos import build_sincos2d_pos_embed
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from earthembed.data.modalities import BandMismatchError
from earthembed.models.base import (
    S2_BAND_GROUPS,
    Encoder,
    ModalityInput,
    check_band_groups,
    default_band_groups,
)
from earthembed.models.registry import register_model, variant

__all__ = ["S2_BAND_GROUPS", "MultiModalViT", "default_band_groups"]


def _fit_size(n: int, patch: int) -> int:
    return max(patch, int(round(n / patch)) * patch)


class MultiModalViT(Encoder):
    """Multimodal ViT encoder; see the module docstring for the design.

    Args:
        modalities: modality key (``s2``, ``s1``, ...) -> band names in the order the model stores them.
        band_groups: modality key -> list of band-name groups (default: :func:`default_band_groups`).
        patch_size: patch side in pixels.
        embed_dim: transformer width (divisible by 4 and by ``num_heads``).
        depth, num_heads, mlp_ratio, drop_path_rate: of the shared timm ``Block`` stack.
        proj_dim: if set, a linear map of the output tokens to this size; ``model.embed_dim`` is then
            ``proj_dim`` (the size of what :meth:`forward` returns) and ``model.width`` the transformer width.
    """

    def __init__(
        self,
        modalities: Mapping[str, Sequence[str]],
        band_groups: Mapping[str, Sequence[Sequence[str]]] | None = None,
        patch_size: int = 8,
        embed_dim: int = 64,
        depth: int = 2,
        num_heads: int = 2,
        mlp_ratio: float = 4.0,
        proj_dim: int | None = None,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if embed_dim % 4 or embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} must be divisible by 4 and by num_heads {num_heads}")
        self.modalities, self.band_groups = check_band_groups(modalities, band_groups)
        self.patch_size = int(patch_size)
        self.width = int(embed_dim)
        self.depth = int(depth)
        self.num_heads = int(num_heads)
        self.mlp_ratio = float(mlp_ratio)
        self.proj_dim = None if proj_dim is None else int(proj_dim)
        self.drop_path_rate = float(drop_path_rate)
        self.embed_dim = self.proj_dim or self.width
        self.feature_channels = [self.embed_dim]
        self.feature_strides = [self.patch_size]

        d, p = self.width, self.patch_size
        self.patch_embed = nn.ModuleDict(
            {k: nn.ModuleList([nn.Conv2d(len(g), d, p, p) for g in gs]) for k, gs in self.band_groups.items()}
        )
        self.modality_embed = nn.ParameterDict({k: nn.Parameter(torch.zeros(1, 1, d)) for k in self.modalities})
        self.group_embed = nn.ParameterDict(
            {k: nn.Parameter(torch.zeros(len(gs), 1, d)) for k, gs in self.band_groups.items()}
        )
        dpr = [self.drop_path_rate * i / max(self.depth - 1, 1) for i in range(self.depth)]  # stochastic depth ramp
        self.blocks = nn.ModuleList(
            [Block(d, self.num_heads, self.mlp_ratio, qkv_bias=True, drop_path=r) for r in dpr]
        )
        self.norm = nn.LayerNorm(d)
        self.proj = nn.Linear(d, self.proj_dim) if self.proj_dim else nn.Identity()
        self._plans: dict[tuple[str, tuple[str, ...], str], list[tuple[Tensor, Tensor, bool] | None]] = {}
        self.reset_parameters()

    # -- construction helpers -----------------------------------------------------------------------
    def reset_parameters(self) -> None:
        """ViT/MAE initialisation: truncated normal linears and embeddings, xavier patch convs."""
        for p in self.modality_embed.values():
            trunc_normal_(p, std=0.02)
        for p in self.group_embed.values():
            trunc_normal_(p, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight.view(m.weight.shape[0], -1))
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def config(self) -> dict[str, Any]:
        """JSON-able constructor arguments: ``MultiModalViT(**model.config)`` rebuilds the architecture."""
        return {
            "modalities": {k: list(v) for k, v in self.modalities.items()},
            "band_groups": {k: [list(g) for g in gs] for k, gs in self.band_groups.items()},
            "patch_size": self.patch_size,
            "embed_dim": self.width,
            "depth": self.depth,
            "num_heads": self.num_heads,
            "mlp_ratio": self.mlp_ratio,
            "proj_dim": self.proj_dim,
            "drop_path_rate": self.drop_path_rate,
        }

    # -- band reconciliation --------------------------------------------------------------------------
    def _plan(self, k: str, bands: Sequence[str], device: torch.device) -> list[tuple[Tensor, Tensor, bool] | None]:
        """Per group: (slot indices in the group, source channel indices, is-identity), None if absent."""
        key = (k, tuple(bands), str(device))
        if key in self._plans:
            return self._plans[key]
        bands = self.check_bands(k, bands)
        plan: list[tuple[Tensor, Tensor, bool] | None] = []
        for g in self.band_groups[k]:
            pairs = [(i, list(bands).index(b)) for i, b in enumerate(g) if b in bands]
            if not pairs:
                plan.append(None)
                continue
            slot, src = [a for a, _ in pairs], [s for _, s in pairs]
            full = slot == list(range(len(g)))
            plan.append((torch.tensor(slot, device=device), torch.tensor(src, device=device), full))
        if all(p is None for p in plan):
            raise BandMismatchError(f"modality {k!r}: no bands given")
        self._plans[key] = plan
        return plan

    # -- encoding ------------------------------------------------------------------------------------
    def _encode(
        self, k: str, x: Tensor, bands: Sequence[str], keep: Sequence[bool] | None = None
    ) -> tuple[Tensor, int, int, int]:
        """Normalised output tokens [B, G*h*w, D] of modality ``k`` plus (G, h, w); ``keep`` skips groups."""
        plan = self._plan(k, bands, x.device)
        p = self.patch_size
        hh, ww = _fit_size(x.shape[-2], p), _fit_size(x.shape[-1], p)
        if (hh, ww) != tuple(x.shape[-2:]):
            x = F.interpolate(x, size=(hh, ww), mode="bilinear", align_corners=False)
        b, h, w = x.shape[0], hh // p, ww // p
        pos = build_sincos2d_pos_embed([h, w], dim=self.width, device=x.device, dtype=x.dtype)
        tokens = []
        for g, step in enumerate(plan):
            if step is None or (keep is not None and not keep[g]):
                continue
            slot, src, full = step
            n = len(self.band_groups[k][g])
            if full:
                xg = x.index_select(1, src)
            else:
                xg = x.new_zeros(b, n, hh, ww)
                xg[:, slot] = x.index_select(1, src)
            t = self.patch_embed[k][g](xg).flatten(2).transpose(1, 2)  # [B, h*w, D]
            tokens.append(t + pos + self.group_embed[k][g])
        if not tokens:
            raise BandMismatchError(f"modality {k!r}: every band group is absent")
        t = torch.cat(tokens, dim=1) + self.modality_embed[k]
        for blk in self.blocks:
            t = blk(t)
        t = self.proj(self.norm(t))
        return t, len(tokens), h, w

    def _encode_rows(self, k: str, inp: ModalityInput) -> list[tuple[Tensor | None, Tensor, int, int, int]]:
        """(rows or None for all rows, tokens, G, h, w) per group-presence pattern of the rows (all present)."""
        if inp.group_present is None:
            return [(None, *self._encode(k, inp.x, inp.bands))]
        pats, inv = torch.unique(inp.group_present.to(torch.uint8), dim=0, return_inverse=True)
        out = []
        for i, pat in enumerate(pats.bool().tolist()):
            rows = (inv == i).nonzero().flatten()
            out.append((rows, *self._encode(k, inp.x[rows], inp.bands, keep=pat)))
        return out

    def _grid(self, x: Tensor) -> tuple[int, int]:
        h, w = (_fit_size(s, self.patch_size) // self.patch_size for s in x.shape[-2:])
        return h, w

    def embed_modality(self, k: str, inp: ModalityInput) -> Tensor:
        """The mean of the modality's normalised output tokens; ``group_present`` ``[B, G]`` drops band groups
        per row (an absent group contributes no tokens, as if its bands were missing from ``bands``)."""
        parts = self._encode_rows(k, inp)
        if len(parts) == 1 and parts[0][0] is None:
            return parts[0][1].float().mean(1)
        e = torch.zeros(len(inp.x), self.embed_dim, device=inp.x.device)
        for rows, t, *_ in parts:
            e = e.index_copy(0, rows, t.float().mean(1))
        return e

    def modality_features(self, k: str, inp: ModalityInput) -> list[Tensor]:
        """One level: the token map ``[B, D, H/p, W/p]`` (band groups averaged)."""
        h, w = self._grid(inp.x)
        full = torch.zeros(len(inp.x), self.embed_dim, h, w, device=inp.x.device)
        for rows, t, g, _, _ in self._encode_rows(k, inp):
            m = len(t)
            maps = t.float().reshape(m, g, h * w, -1).mean(1).transpose(1, 2).reshape(m, -1, h, w)
            if rows is None:
                full = maps
            else:
                full[rows] = maps
        return [full]

    def absent_features(self, k: str, inp: ModalityInput, n: int) -> list[Tensor]:
        return [torch.zeros(n, self.embed_dim, *self._grid(inp.x), device=inp.x.device)]

    def forward_tokens(
        self,
        batch: Mapping[str, Any],
        bands: Mapping[str, Sequence[str]] | None = None,
        present: Mapping[str, Any] | None = None,
        group_present: Mapping[str, Any] | None = None,
    ) -> dict[str, Tensor]:
        """Per-modality token maps ``[B, D, h, w]``: the single level of :meth:`forward_features`."""
        return {k: v[0] for k, v in self.forward_features(batch, bands, present, group_present).items()}

    def no_weight_decay(self) -> set[str]:
        """1-D parameters plus the modality and band-group embeddings (as CLIP / timm exempt pos embeddings)."""
        extra = {n for n, _ in self.named_parameters() if n.startswith(("modality_embed.", "group_embed."))}
        return super().no_weight_decay() | extra


MultiModalViT.architecture = "multimodal_vit"
register_model("multimodal_vit")(MultiModalViT)
register_model("multimodal_vit_tiny")(variant(MultiModalViT, embed_dim=64, depth=2, num_heads=2, patch_size=8))
register_model("multimodal_vit_small")(variant(MultiModalViT, embed_dim=384, depth=12, num_heads=6, patch_size=8))
register_model("multimodal_vit_base")(variant(MultiModalViT, embed_dim=768, depth=12, num_heads=12, patch_size=8))
# ~250M parameters: 20 blocks of width 1024 (12 * 1024^2 each) plus patch embeddings
register_model("multimodal_vit_large")(variant(MultiModalViT, embed_dim=1024, depth=20, num_heads=16, patch_size=8))
