"""Per-band statistics behind the Encoder contract: the classic "no deep learning" baseline as an embedding.

Why an encoder: ``fewshot`` has always compared models with per-band statistics (``--baselines band_stats``,
:mod:`earthembed.evaluate.features`), but ``change``, ``search``, ``map`` and ``predict`` read embedding tables.
``embed --featurizer band_stats`` writes the same statistics as one, so the baseline goes everywhere a model goes,
per date too (``--dates all``), and change maps can be compared with it from the command line.

* **Features.** For each band of a modality, in the model's band order: mean, standard deviation (population),
  10th, 50th and 90th percentile (linear interpolation) of the chip's pixels, as the few-shot baseline computes
  them, but of the store-normalised bands (z-scores with the store's statistics, what every encoder reads): per
  band an affine map of the raw statistics, so bands of different units weigh alike in a cosine, and the
  few-shot estimators (which standardise features) see the same information as the baseline.
* **One vector for several modalities.** Each modality's statistics sit in their own slice of one
  ``embed_dim`` = 5 x (bands of every modality) vector, zeros elsewhere: per-modality embeddings keep the
  contract's single size, and the contract's fused embedding (the normalised mean of the normalised
  per-modality vectors) is then their concatenation with each modality weighted alike.
* **Dense maps** (:meth:`BandStatsEncoder.modality_features`): the statistics of each pixel alone (mean = p10
  = p50 = p90 = the value, std = 0), at stride 1, in the same slices.
* **What differs from the few-shot baseline**: nodata pixels reach an encoder filled with the band mean (the
  dataset's fill) where the baseline ignores them; absent bands and band groups are zero (the mean) as for every
  encoder. Nothing is fitted: the config rebuilds the featurizer exactly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from earthembed.models.base import Encoder, ModalityInput, check_band_groups
from earthembed.models.registry import register_model

STATS: tuple[str, ...] = ("mean", "std", "p10", "p50", "p90")
QUANTILES: tuple[float, ...] = (0.1, 0.5, 0.9)
#: torch.quantile refuses inputs of more values than this; rows are summarised in chunks below it
QUANTILE_LIMIT = 2**24 - 1


def band_statistics(x: Tensor) -> Tensor:
    """``[m, C, H, W]`` -> ``[m, C * 5]``: per band mean, std, p10, p50, p90 (``STATS`` order, band-major)."""
    m, c = x.shape[:2]
    flat = x.float().reshape(m * c, -1)
    q = torch.tensor(QUANTILES, dtype=flat.dtype, device=flat.device)
    per_chunk = QUANTILE_LIMIT // flat.shape[1]
    if per_chunk:
        pct = torch.cat([torch.quantile(part, q, dim=1).T for part in flat.split(per_chunk)])
    else:  # one band of one chip is larger than torch.quantile takes
        rows = flat.cpu().numpy()
        pct = torch.from_numpy(np.percentile(rows, [100 * v for v in QUANTILES], axis=1).T.astype(np.float32))
        pct = pct.to(flat.device)
    stats = torch.stack([flat.mean(1), flat.std(1, correction=0), *pct.T], dim=1)  # [m * C, 5]
    return stats.reshape(m, c * len(STATS))


class BandStatsEncoder(Encoder):
    """Per-band statistics of each modality (see the module docstring).

    Args:
        modalities: modality key -> band names (in this order in the features).
        band_groups: as for every encoder (default :func:`~earthembed.models.base.default_band_groups`).
    """

    architecture = "band_stats"

    def __init__(self, modalities: Mapping[str, Sequence[str]],
                 band_groups: Mapping[str, Sequence[Sequence[str]]] | None = None) -> None:
        super().__init__()
        self.modalities, self.band_groups = check_band_groups(modalities, band_groups)
        self.slices: dict[str, slice] = {}
        start = 0
        for k, bands in self.modalities.items():
            self.slices[k] = slice(start, start + len(STATS) * len(bands))
            start = self.slices[k].stop
        self.embed_dim = start
        self.feature_channels = [start]
        self.feature_strides = [1]

    @property
    def config(self) -> dict[str, Any]:
        return {"modalities": {k: list(v) for k, v in self.modalities.items()},
                "band_groups": {k: [list(g) for g in gs] for k, gs in self.band_groups.items()}}

    def feature_names(self) -> list[str]:
        """``<modality>:<band>:<stat>`` of each embedding dimension (as the few-shot baseline names them)."""
        return [f"{k}:{b}:{s}" for k, bands in self.modalities.items() for b in bands for s in STATS]

    def embed_modality(self, k: str, inp: ModalityInput) -> Tensor:
        x = self.model_input(k, inp)
        out = x.new_zeros(x.shape[0], self.embed_dim, dtype=torch.float32)
        out[:, self.slices[k]] = band_statistics(x)
        return out

    def modality_features(self, k: str, inp: ModalityInput) -> list[Tensor]:
        x = self.model_input(k, inp).float()
        m, c, h, w = x.shape
        pixel = torch.stack([x, torch.zeros_like(x), x, x, x], dim=2).reshape(m, c * len(STATS), h, w)
        out = x.new_zeros(m, self.embed_dim, h, w)
        out[:, self.slices[k]] = pixel
        return [out]


register_model("band_stats")(BandStatsEncoder)


def featurizer_inputs(store: Any, modalities: Sequence[str] | None, bands: Mapping[str, Sequence[str]] | None,
                      what: str) -> dict[str, list[str]]:
    """``{modality: bands}`` a featurizer built from ``store`` reads: ``modalities`` / ``bands`` when given, else
    every modality with all its bands; categorical modalities (label maps) and stray ``bands`` keys refused."""
    from earthembed.data.dataset import resolve_bands

    request: Any = None
    if modalities is not None or bands:
        mods = list(modalities) if modalities is not None else list(bands or {})
        request = {k: (list(bands[k]) if bands and bands.get(k) else None) for k in mods}
        extra = set(bands or {}) - set(mods)
        if extra:
            raise ValueError(f"{what}: bands given for modalities {sorted(extra)} that are not requested ({mods})")
    chosen = resolve_bands(store, request)
    categorical = [k for k in chosen if store.modalities[k].kind == "categorical"]
    if categorical:
        raise ValueError(f"{store.path}: modalities {categorical} are categorical (label maps), not {what} inputs")
    return {k: list(v) for k, v in chosen.items()}


def export_band_stats(store: Any, out_dir: Any, modalities: Sequence[str] | None = None,
                      bands: Mapping[str, Sequence[str]] | None = None) -> Any:
    """A :class:`BandStatsEncoder` for ``store``'s modalities (:func:`featurizer_inputs`) exported to ``out_dir``
    like any model (store normalisation, products), so ``embed --checkpoint`` reuses it on another store."""
    from earthembed.data.normalize import Normalizer
    from earthembed.models.export import export_model, modality_products

    chosen = featurizer_inputs(store, modalities, bands, "band_stats")
    model = BandStatsEncoder(chosen).eval()
    info = {"features": list(STATS), "of": "store-normalised bands", "embed_dim": model.embed_dim,
            "slices": {k: [s.start, s.stop] for k, s in model.slices.items()}}
    return export_model(model, out_dir, Normalizer.from_store(store), extra={"band_stats": info},
                        products=modality_products(store.modalities, list(chosen)))
