"""PyTorch dataset over a chip store: selected modalities and bands by name, normalised."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from earthembed.data.modalities import band_indices
from earthembed.data.normalize import Normalizer
from earthembed.data.store import ChipStore


def resolve_bands(store: ChipStore, modalities: Sequence[str] | dict[str, Sequence[str] | None] | None) -> dict[str, list[str]]:
    """``{modality: [band, ...]}`` from a list of modality names or a mapping to band lists (None = all bands)."""
    if modalities is None:
        return {k: m.band_names for k, m in store.modalities.items() if m.kind != "categorical"}
    if not isinstance(modalities, dict):
        modalities = {k: None for k in modalities}
    out = {}
    for k, bands in modalities.items():
        m = store.modality(k)
        band_indices(m.band_names, bands, what=f"{store.path} modality {k!r}")  # raises on unknown bands
        out[k] = list(bands) if bands is not None else m.band_names
    return out


class ChipDataset(Dataset):
    """Items are ``{"idx": int, "<mod>": float32 [C, H, W], "<mod>_present": bool}`` plus, for each pixel label
    in ``masks``, ``"mask_<name>": int64 [H, W]`` (the store's nodata value where unlabelled) and
    ``"mask_<name>_present": bool``.

    A chip lacking a modality yields zeros with ``<mod>_present = False``; models drop it, never see zeros
    as data. Masks come from the same read as the pixels, so pretraining, embedding and segmentation share
    one batch reader.
    """

    def __init__(
        self,
        store: ChipStore | str,
        modalities: Sequence[str] | dict[str, Sequence[str] | None] | None = None,
        indices: Sequence[int] | np.ndarray | None = None,
        normalizer: Normalizer | None = None,
        masks: Sequence[str] = (),
    ) -> None:
        self.store = store if isinstance(store, ChipStore) else ChipStore(store)
        self.bands = resolve_bands(self.store, modalities)
        self.indices = np.arange(len(self.store)) if indices is None else np.asarray(indices, dtype=np.int64)
        self.normalizer = normalizer or Normalizer.from_store(self.store)
        idx = self.store.index
        # not just has_<mod>: an all-nodata image an older store marked present is absent too
        self._present = {k: self.store.present(k) for k in self.bands}
        self.masks = list(masks)
        for name in self.masks:
            spec = self.store.labels.get(name)
            if spec is None or spec.get("kind") != "mask":
                have = [n for n, sp in self.store.labels.items() if sp.get("kind") == "mask"]
                raise ValueError(f"{self.store.path}: no pixel-mask label {name!r} (mask labels: {have})")
        self._mask_present = {m: idx[f"has_mask_{m}"].to_numpy(dtype=bool) for m in self.masks}

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.__getitems__([i])[0]

    def __getitems__(self, positions: list[int]) -> list[dict[str, Any]]:
        """Batched fetch used by ``DataLoader``: one sorted vectorised read per modality instead of one read
        per chip (~3x faster per chip on a Zarr store), returned as items in the requested order."""
        pos = np.asarray(positions, dtype=np.int64)
        order = np.argsort(self.indices[pos], kind="stable")
        batch = self.read_batch(pos[order])
        items: list[dict[str, Any]] = [{} for _ in positions]
        for j, i in enumerate(order):
            item = items[i]
            item["idx"] = int(batch["idx"][j])
            for k in self.bands:
                item[k] = batch[k][j]
                item[f"{k}_present"] = bool(batch[f"{k}_present"][j])
            for m in self.masks:
                item[f"mask_{m}"] = batch[f"mask_{m}"][j]
                item[f"mask_{m}_present"] = bool(batch[f"mask_{m}_present"][j])
        return items

    def read_batch(self, positions: np.ndarray) -> dict[str, Any]:
        """Vectorised read of several items (contiguous positions read as one slice): used by embed."""
        js = self.indices[positions]
        out: dict[str, Any] = {"idx": torch.from_numpy(js)}
        for k, bands in self.bands.items():
            x = self.store.read(k, js, bands)
            t = self.normalizer(x, k, bands, nodata=self.store.modalities[k].nodata)
            present = self._present[k][js]
            if not present.all():
                t[torch.from_numpy(~present)] = 0.0
            out[k] = t
            out[f"{k}_present"] = torch.from_numpy(present)
        for m in self.masks:
            out[f"mask_{m}"] = torch.from_numpy(self.store.read_mask(m, js).astype(np.int64))
            out[f"mask_{m}_present"] = torch.from_numpy(self._mask_present[m][js])
        return out
