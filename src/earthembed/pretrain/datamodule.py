"""Lightning data module over a chip store for (unlabelled) pretraining.

Batches are read whole (one vectorised, normalised read per batch through
:meth:`earthembed.data.dataset.ChipDataset.read_batch`) rather than chip by chip, and randomly cropped to
``crop_size`` in the loader, so workers ship small tensors. The crop window is drawn per chip and shared
by its modalities and every other raster of the batch (targets, categorical maps, masks: they stay
co-registered). An objective that needs more than its inputs passes a
:class:`~earthembed.data.dataset.ReadRequest` (``reads``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from earthembed.data.dataset import ChipDataset, ReadRequest, resolve_bands
from earthembed.data.normalize import Normalizer
from earthembed.data.store import SPLITS, ChipStore


def select_indices(store: ChipStore, splits: str | Sequence[str] = "train") -> np.ndarray:
    """Store positions for ``splits``: ``"all"``, ``"train"`` (train + unassigned chips) or a list of splits."""
    split = store.index["split"].fillna("").astype(str).to_numpy()
    if splits == "all":
        return np.arange(len(store))
    wanted = {"train", ""} if splits == "train" else set([splits] if isinstance(splits, str) else splits)
    bad = sorted(wanted - {*SPLITS, "", "unassigned"})
    if bad:
        raise ValueError(f"data.splits: unknown splits {bad} (use 'all', 'train' or a list of {list(SPLITS)})")
    if "unassigned" in wanted:
        wanted.add("")
    idx = np.flatnonzero(np.isin(split, sorted(wanted)))
    if idx.size == 0:
        raise ValueError(f"{store.path}: no chips in splits {sorted(wanted)} (use data.splits=all)")
    return idx


def random_crop(batch: dict[str, Any], keys: Sequence[str], size: int, rng: np.random.Generator) -> dict[str, Any]:
    """Crop every ``[B, ..., H, W]`` tensor in ``keys`` to ``size`` with one random window per chip."""
    ref = batch[keys[0]]
    h, w = ref.shape[-2:]
    if size > min(h, w):
        raise ValueError(f"data.crop_size {size} exceeds the chip size {h}x{w}")
    if size == h == w:
        return batch
    ys = rng.integers(0, h - size + 1, ref.shape[0])
    xs = rng.integers(0, w - size + 1, ref.shape[0])
    out = dict(batch)
    for k in keys:
        x = batch[k]
        out[k] = torch.stack([x[i, ..., y : y + size, xx : xx + size] for i, (y, xx) in enumerate(zip(ys, xs, strict=True))])
    return out


class ShuffledBatches(Sampler[list[int]]):
    """Shuffled batches of positions, sharded across ``world_size`` ranks; reshuffled by :meth:`set_epoch`.

    Lightning's automatic ``DistributedSampler`` would yield single indices, not batches, so the module
    shards itself (``use_distributed_sampler=False`` in the Trainer).
    """

    def __init__(self, n: int, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0) -> None:
        self.n, self.batch_size, self.rank, self.world_size, self.seed = n, batch_size, rank, world_size, seed
        self.epoch = 0
        per_rank = n // world_size
        self.drop_last = per_rank >= batch_size  # tiny stores still give one (short) batch per epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        perm = torch.randperm(self.n, generator=g)
        per_rank = self.n // self.world_size
        mine = perm[self.rank * per_rank : (self.rank + 1) * per_rank].tolist()
        for i in range(0, len(mine), self.batch_size):
            b = mine[i : i + self.batch_size]
            if len(b) == self.batch_size or not self.drop_last:
                yield b

    def __len__(self) -> int:
        per_rank = self.n // self.world_size
        return per_rank // self.batch_size if self.drop_last else -(-per_rank // self.batch_size)


class _BatchReader(Dataset):
    """Dataset whose items are whole batches: ``reader[positions]`` -> a collated, cropped batch."""

    def __init__(self, dataset: ChipDataset, crop_size: int | None, seed: int) -> None:
        self.dataset = dataset
        self.crop_size = crop_size
        self.seed = seed
        self._calls = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, positions: Sequence[int]) -> dict[str, Any]:
        pos = np.sort(np.asarray(positions, dtype=np.int64))
        batch = self.dataset.read_batch(pos)
        if self.crop_size:
            info = torch.utils.data.get_worker_info()
            wid = info.id if info is not None else 0
            self._calls += 1
            rng = np.random.default_rng([self.seed, wid, self._calls, int(pos[0])])
            batch = random_crop(batch, self.dataset.pixel_keys, self.crop_size, rng)
        return batch


class ChipDataModule(L.LightningDataModule):
    """Training batches of a chip store: ``{"idx", "<mod>": [B, C, h, w], "<mod>_present": [B]}``, normalised,
    plus what ``reads`` asks for (see :class:`~earthembed.data.dataset.ChipDataset`).

    Pretraining is unlabelled, so ``splits="all"`` is allowed; the default uses train + unassigned chips and
    leaves val/test chips unseen for the few-shot evaluation. ``normalizer`` defaults to the store's statistics;
    a model started from published weights brings the normalisation it was trained with.
    """

    def __init__(
        self,
        store: str | Path | ChipStore,
        modalities: Sequence[str] | dict[str, Sequence[str] | None] | None = None,
        batch_size: int = 64,
        crop_size: int | None = None,
        num_workers: int = 0,
        splits: str | Sequence[str] = "train",
        seed: int = 0,
        normalizer: Normalizer | None = None,
        reads: ReadRequest | None = None,
    ) -> None:
        super().__init__()
        self.store = store if isinstance(store, ChipStore) else ChipStore(store)
        self.normalizer = normalizer
        self.modalities = modalities
        self.reads = reads
        self.batch_size = int(batch_size)
        self.crop_size = int(crop_size) if crop_size else None
        self.num_workers = int(num_workers)
        self.splits = splits
        self.seed = int(seed)
        self.dataset: ChipDataset | None = None
        if self.crop_size and self.crop_size > self.store.chip_size:
            raise ValueError(f"data.crop_size {self.crop_size} exceeds the store's chip size {self.store.chip_size}")

    @property
    def bands(self) -> dict[str, list[str]]:
        """Band names per normalised modality (inputs and requested targets), in the order of the batch
        tensors' channels."""
        self.setup()
        assert self.dataset is not None
        return self.dataset.bands

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is None:
            idx = select_indices(self.store, self.splits)
            inputs = resolve_bands(self.store, self.modalities)
            self.dataset = ChipDataset.from_request(self.store, inputs, self.reads, indices=idx,
                                                    normalizer=self.normalizer)

    def train_dataloader(self) -> DataLoader:
        self.setup()
        assert self.dataset is not None
        trainer = getattr(self, "trainer", None)
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        sampler = ShuffledBatches(len(self.dataset), self.batch_size, rank, world, self.seed)
        return DataLoader(
            _BatchReader(self.dataset, self.crop_size, self.seed),
            sampler=sampler,
            batch_size=None,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )
