"""``earthembed stats``: a store's per-band normalisation statistics computed again and saved under its lock (the
way non-finite statistics get fixed). The computation itself is :mod:`earthembed.data.pixel_stats`, which the
store's writer runs when an ingest finishes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from earthembed.data.store import ChipStore


def compute_stats(store_path: str | Path | ChipStore, max_chips: int | None = 2000, seed: int = 0) -> dict[str, Any]:
    """Statistics for every non-categorical modality of a store (a random subset of ``max_chips`` chips): a path,
    an ``s3://`` / ``gs://`` URL or an open :class:`~earthembed.data.store.ChipStore`."""
    store = store_path if isinstance(store_path, ChipStore) else ChipStore(store_path, check_stats=False)
    return store.sample_stats(max_chips, seed)


def update_store_stats(store_path: str | Path, max_chips: int | None = 2000, seed: int = 0) -> dict[str, Any]:
    """Recompute and save statistics of a complete store (``earthembed stats``), holding the store's lock (a lease
    lock on object storage: ``s3://`` / ``gs://`` stores are read and written back through :mod:`earthembed.storage`).

    Opens the store without the finite-statistics check, so this is how non-finite statistics get fixed."""
    first = ChipStore(store_path, check=False, check_stats=False)  # is a complete store: its metadata only
    with first.lock() as lock:
        store = ChipStore(store_path, check_stats=False)  # checked and read under the lock
        stats = compute_stats(store, max_chips=max_chips, seed=seed)
        store.set_stats(stats, lock)
    return stats
