"""Lightning data module over a chip store for (unlabelled) pretraining.

Batches are read whole (one vectorised, normalised read per batch through
:meth:`earthembed.data.dataset.ChipDataset.read_batch`) rather than chip by chip, and randomly cropped to
``crop_size`` in the loader, so workers ship small tensors. The crop window is drawn per chip and shared
by its modalities and every other raster of the batch (targets, categorical maps, masks: they stay
co-registered). An objective that needs more than its inputs passes a
:class:`~earthembed.data.dataset.ReadRequest` (``reads``).

Two samplers (``sampler``):

* ``shuffle`` (:class:`ShuffledBatches`): a uniform permutation per epoch. Every batch touches ~one Zarr
  chunk per chip, and a scattered read costs ~1 ms per chunk and array (zarr's orthogonal-selection path),
  so reading runs at a few hundred chips/s, slower than a small model trains.
* ``chunks`` (:class:`ChunkShuffledBatches`, default): the order of the store's chunks is shuffled, then
  chips are shuffled within windows of ``shuffle_window`` consecutive (in that order) chunks and cut into
  batches. Each batch carries its window (:class:`WindowBatch`); the reader reads a window once (one read
  touching ``shuffle_window`` chunks) and serves the window's batches from memory, so every chunk is
  decoded once per epoch. A batch then mixes chips of ``shuffle_window`` random chunks instead of the
  whole store: with the default 16 chunks of 16 chips a batch of 64 draws from 256 chips at random places
  of the store. The price is less mixing *within* an epoch; over epochs every chip still meets every other.

Exact resume: both samplers are functions of (seed, epoch, rank), every batch knows its place in the run
(:class:`SampledBatch`: epoch, rank, number in the epoch) and the random crop is drawn from that place, never
from a DataLoader worker's random state (which no checkpoint can hold, and which differs with the number of
workers). The loader (:class:`ResumableLoader`) follows Lightning's stateful-loader protocol: its
``state_dict`` is the epoch and the batches the training loop has processed in it, and ``load_state_dict``
makes the next iteration start after them, so a run resumed mid-epoch sees exactly the batches an
uninterrupted run would.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from earthembed.contract import ChipBatch
from earthembed.data.dataset import ChipDataset, ReadRequest, resolve_bands
from earthembed.data.normalize import Normalizer
from earthembed.data.store import SPLITS, ChipStore

SAMPLERS = ("chunks", "shuffle")


def store_chunk_chips(store: ChipStore, modalities: Sequence[str]) -> int:
    """Chips per Zarr chunk along the chip axis (the largest over ``modalities``, so a run never splits a
    chunk of any of them)."""
    return max(int(store.array(k).chunks[0]) for k in modalities)


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


def random_crop(batch: ChipBatch, size: int, rng: np.random.Generator) -> ChipBatch:
    """Crop every raster of ``batch`` (observations, categorical maps, masks) to ``size`` with one random
    window per chip, shared by all of them."""
    ref = next(iter(batch.obs.values())).x
    h, w = ref.shape[-2:]
    if size > min(h, w):
        raise ValueError(f"data.crop_size {size} exceeds the chip size {h}x{w}")
    if size == h == w:
        return batch
    ys = rng.integers(0, h - size + 1, ref.shape[0])
    xs = rng.integers(0, w - size + 1, ref.shape[0])

    def crop(x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x[i, ..., y : y + size, xx : xx + size] for i, (y, xx) in enumerate(zip(ys, xs, strict=True))])

    return batch.map_rasters(crop)


class SampledBatch(list):
    """A batch of dataset positions (a list, usable wherever a batch is) and its place in the run: ``epoch``,
    ``rank`` and ``number`` (its index among the rank's batches of the epoch). Whatever is random about reading
    it (the crop) is drawn from that place, so it does not depend on which worker reads it, or on whether the
    run was resumed."""

    def __init__(self, positions: Sequence[int], epoch: int = 0, rank: int = 0, number: int = 0) -> None:
        super().__init__(positions)
        self.epoch, self.rank, self.number = int(epoch), int(rank), int(number)

    @property
    def place(self) -> tuple[int, int, int]:
        return self.epoch, self.rank, self.number

    def __reduce__(self):  # pickled to DataLoader workers with its place
        return (SampledBatch, (list(self), *self.place))


class ResumableBatches(Sampler[list[int]]):
    """Base of the batch samplers: batches of an epoch are a function of (seed, epoch, rank); :meth:`resume`
    makes the next iteration skip the batches a checkpointed run had already processed in its epoch."""

    epoch: int = 0
    _skip: int = 0

    def set_epoch(self, epoch: int) -> None:
        if int(epoch) != self.epoch:
            self._skip = 0  # a resume position holds for its own epoch only
        self.epoch = int(epoch)

    def resume(self, epoch: int, batches_done: int) -> None:
        """Start the next iteration at batch ``batches_done`` of ``epoch``."""
        self.epoch, self._skip = int(epoch), int(batches_done)

    def epoch_batches(self, epoch: int) -> Iterator[SampledBatch]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[SampledBatch]:
        skip, self._skip = self._skip, 0  # read now: DataLoader.__iter__ calls iter(sampler) eagerly
        return itertools.islice(self.epoch_batches(self.epoch), skip, None)


class ShuffledBatches(ResumableBatches):
    """Shuffled batches of positions, sharded across ``world_size`` ranks; reshuffled by :meth:`set_epoch`.

    Lightning's automatic ``DistributedSampler`` would yield single indices, not batches, so the module
    shards itself (``use_distributed_sampler=False`` in the Trainer).
    """

    def __init__(self, n: int, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0) -> None:
        self.n, self.batch_size, self.rank, self.world_size, self.seed = n, batch_size, rank, world_size, seed
        self.epoch = 0
        per_rank = n // world_size
        self.drop_last = per_rank >= batch_size  # tiny stores still give one (short) batch per epoch

    def epoch_batches(self, epoch: int) -> Iterator[SampledBatch]:
        g = torch.Generator().manual_seed(self.seed + epoch)
        perm = torch.randperm(self.n, generator=g)
        per_rank = self.n // self.world_size
        mine = perm[self.rank * per_rank : (self.rank + 1) * per_rank].tolist()
        for j, i in enumerate(range(0, len(mine), self.batch_size)):
            b = mine[i : i + self.batch_size]
            if len(b) == self.batch_size or not self.drop_last:
                yield SampledBatch(b, epoch, self.rank, j)

    def __len__(self) -> int:
        per_rank = self.n // self.world_size
        return per_rank // self.batch_size if self.drop_last else -(-per_rank // self.batch_size)


class ChunkShuffledBatches(ResumableBatches):
    """Shuffled batches that read few Zarr chunks each: chunk order shuffled per epoch, chips shuffled within
    windows of ``window`` chunks, then cut into batches (see the module docstring).

    Args:
        chunk_of: the Zarr chunk of every dataset position ([n] ints; positions sharing a chunk are read together).
        batch_size, rank, world_size, seed: as :class:`ShuffledBatches`; ranks get disjoint contiguous
            slices of the epoch's order (equal length), so each rank's batches keep the chunk locality.
        window: chunks whose chips are shuffled together.
    """

    def __init__(self, chunk_of: np.ndarray, batch_size: int, window: int = 16, rank: int = 0, world_size: int = 1,
                 seed: int = 0) -> None:
        if int(window) < 1:
            raise ValueError(f"data.shuffle_window must be >= 1 chunk, got {window}")
        self.chunk_of = np.asarray(chunk_of, dtype=np.int64)
        self.n, self.batch_size, self.window = len(self.chunk_of), int(batch_size), int(window)
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.epoch = 0
        self.drop_last = self.n // world_size >= batch_size  # tiny stores still give one (short) batch per epoch
        chunks, inverse = np.unique(self.chunk_of, return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        bounds = np.searchsorted(inverse[order], np.arange(len(chunks) + 1))
        self._members = [order[bounds[i] : bounds[i + 1]] for i in range(len(chunks))]  # positions per chunk

    def order(self, with_windows: bool = False, epoch: int | None = None):
        """The order of all positions in ``epoch`` (default: the current one) before sharding across ranks; with
        ``with_windows`` also the window index of each."""
        rng = np.random.default_rng([self.seed, self.epoch if epoch is None else epoch])
        perm = rng.permutation(len(self._members))
        out, wins = [], []
        for j, w in enumerate(range(0, len(perm), self.window)):
            block = rng.permutation(np.concatenate([self._members[c] for c in perm[w : w + self.window]]))
            out.append(block)
            wins.append(np.full(len(block), j))
        order = np.concatenate(out) if out else np.empty(0, dtype=np.int64)
        return (order, np.concatenate(wins) if wins else order.copy()) if with_windows else order

    def epoch_batches(self, epoch: int) -> Iterator[WindowBatch]:
        per_rank = self.n // self.world_size
        order, window_of = self.order(with_windows=True, epoch=epoch)
        lo, hi = self.rank * per_rank, (self.rank + 1) * per_rank
        mine, win = order[lo:hi], window_of[lo:hi]
        for j, i in enumerate(range(0, len(mine), self.batch_size)):
            b = mine[i : i + self.batch_size]
            if len(b) == self.batch_size or not self.drop_last:
                w = np.unique(win[i : i + self.batch_size])  # usually one window; two where a batch straddles
                yield WindowBatch(b.tolist(), np.sort(mine[np.isin(win, w)]), (epoch, *w.tolist()),
                                  (epoch, self.rank, j))

    def __len__(self) -> int:
        per_rank = self.n // self.world_size
        return per_rank // self.batch_size if self.drop_last else -(-per_rank // self.batch_size)


class WindowBatch(SampledBatch):
    """A :class:`SampledBatch` plus the sorted positions of the shuffle window(s) it was drawn from and a key
    naming them, so a reader can read each window once."""

    def __init__(self, positions: Sequence[int], window: np.ndarray, key: tuple[int, ...],
                 place: tuple[int, int, int] = (0, 0, 0)) -> None:
        super().__init__(positions, *place)
        self.window, self.key = window, key

    def __reduce__(self):  # pickled to DataLoader workers with its window and place
        return (WindowBatch, (list(self), self.window, self.key, self.place))


class _BatchReader(Dataset):
    """Dataset whose items are whole batches: ``reader[positions]`` -> a collated, cropped batch."""

    def __init__(self, dataset: ChipDataset, crop_size: int | None, seed: int) -> None:
        self.dataset = dataset
        self.crop_size = crop_size
        self.seed = seed
        self._window: tuple[tuple[int, ...], np.ndarray, ChipBatch] | None = None

    def __len__(self) -> int:
        return len(self.dataset)

    def read(self, pos: np.ndarray, window: WindowBatch | None = None) -> ChipBatch:
        """Normalised batch of sorted positions ``pos``: one read, or rows of its shuffle window (read once
        and kept until the next window's first batch)."""
        if window is None:
            return self.dataset.read_batch(pos)
        if self._window is None or self._window[0] != window.key:
            self._window = (window.key, window.window, self.dataset.read_batch(window.window))
        _, members, data = self._window
        rows = torch.from_numpy(np.searchsorted(members, pos))
        return data.index_select(rows)

    def __getitem__(self, positions: Sequence[int]) -> ChipBatch:
        pos = np.sort(np.asarray(positions, dtype=np.int64))
        batch = self.read(pos, positions if isinstance(positions, WindowBatch) else None)
        if self.crop_size:
            # drawn from the batch's place in the run (or, for a bare list, its chips): the same crops whichever
            # worker reads it, with any number of workers, uninterrupted or resumed
            place = positions.place if isinstance(positions, SampledBatch) else (int(pos[0]), len(pos), 0)
            rng = np.random.default_rng([self.seed, *place])
            batch = random_crop(batch, self.crop_size, rng)
        return batch


class ResumableLoader(DataLoader):
    """A DataLoader over a :class:`ResumableBatches` sampler that Lightning saves in checkpoints and restores
    (its stateful-loader protocol: ``state_dict`` / ``load_state_dict``, called by the fit loop).

    ``position()`` returns ``(epoch, batches the training loop has processed in it)``: counted by the loop,
    not by the loader, whose workers and Lightning's fetcher read ahead of training."""

    def __init__(self, *args: Any, position: Callable[[], tuple[int, int]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._position = position

    def state_dict(self) -> dict[str, int]:
        epoch, done = self._position()
        return {"epoch": int(epoch), "batches_done": int(done)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        assert isinstance(self.sampler, ResumableBatches)
        self.sampler.resume(int(state["epoch"]), int(state["batches_done"]))


class ChipDataModule(L.LightningDataModule):
    """Training batches of a chip store as :class:`~earthembed.contract.ChipBatch` (normalised one-date
    observations ``[B, 1, C, h, w]`` with presence), plus what ``reads`` asks for (see
    :class:`~earthembed.data.dataset.ChipDataset`).

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
        sampler: str = "chunks",
        shuffle_window: int = 16,
    ) -> None:
        super().__init__()
        if sampler not in SAMPLERS:
            raise ValueError(f"data.sampler must be one of {SAMPLERS}, got {sampler!r}")
        self.sampler, self.shuffle_window = sampler, int(shuffle_window)
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
        if self.sampler == "chunks":
            chunk_of = self.dataset.indices // store_chunk_chips(self.store, list(self.dataset.bands))
            sampler: ResumableBatches = ChunkShuffledBatches(chunk_of, self.batch_size, self.shuffle_window, rank, world,
                                                         self.seed)
        else:
            sampler = ShuffledBatches(len(self.dataset), self.batch_size, rank, world, self.seed)
        return ResumableLoader(
            _BatchReader(self.dataset, self.crop_size, self.seed),
            sampler=sampler,
            batch_size=None,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            position=lambda: self._position(sampler),
        )

    def _position(self, sampler: ResumableBatches) -> tuple[int, int]:
        """(epoch, batches processed in it) of the training loop, for the loader's checkpoint state."""
        trainer = getattr(self, "trainer", None)
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed if trainer is not None else 0
        return sampler.epoch, int(done)
