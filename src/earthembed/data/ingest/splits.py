"""Deterministic train/val/test assignment shared by the ingesters.

Splits come from SHA-256 hashes of stable keys (chip ids, file paths, spatial blocks), not from a random
generator, so an item keeps its split on every machine, on a resumed run, and whatever else is ingested.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

SPLIT_FRACTIONS: tuple[float, float, float] = (0.6, 0.2, 0.2)


def hash_unit(key: str) -> float:
    """A number in [0, 1) from the SHA-256 of ``key``: a seed-free, platform-independent shuffle key."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2**64


def hash_split(key: str, fractions: Sequence[float] = SPLIT_FRACTIONS) -> str:
    """``train``/``val``/``test`` for ``key`` by its hash (proportions hold on average)."""
    u = hash_unit(key)
    if u < fractions[0]:
        return "train"
    return "val" if u < fractions[0] + fractions[1] else "test"


def stratified_splits(
    ids_by_class: dict[str, Iterable[str]], fractions: Sequence[float] = SPLIT_FRACTIONS
) -> dict[str, str]:
    """Exact per-class proportions: rank each class's ids by hash, cut at the cumulative fractions."""
    out: dict[str, str] = {}
    for ids in ids_by_class.values():
        ranked = sorted(ids, key=lambda i: (hash_unit(i), i))
        n = len(ranked)
        n_train = round(n * fractions[0])
        n_val = round(n * (fractions[0] + fractions[1])) - n_train
        for k, chip_id in enumerate(ranked):
            out[chip_id] = "train" if k < n_train else "val" if k < n_train + n_val else "test"
    return out


def block_key(aoi: str, block_row: int, block_col: int, seed: int = 0) -> str:
    """Hash key of a spatial block (shared by :func:`block_split` and :func:`block_splits`)."""
    return f"{seed}:{aoi}_{block_row}_{block_col}"


def block_split(aoi: str, row: int, col: int, block: int = 4, seed: int = 0) -> str:
    """Split of the tile at (row, col): its ``block`` x ``block`` group is hashed, limiting spatial leakage."""
    return hash_split(block_key(aoi, row // block, col // block, seed))


def block_size_for(cells: Iterable[tuple[int, int]], largest: int = 4, min_blocks: int = 10) -> int:
    """Block side (in cells) for grouping ``cells``: the largest side <= ``largest`` that yields at least
    ``min_blocks`` distinct blocks, else 1 (every cell its own block), so small grids still get several blocks."""
    cells = set(cells)
    for b in range(max(int(largest), 1), 1, -1):
        if len({(r // b, c // b) for r, c in cells}) >= min_blocks:
            return b
    return 1


def block_splits(
    aoi: str, blocks: Iterable[tuple[int, int]], seed: int = 0, fractions: Sequence[float] = SPLIT_FRACTIONS
) -> dict[tuple[int, int], str]:
    """Split of every (block row, block col): :func:`hash_split` of its key, then, with >= 3 blocks, train and
    test are made non-empty: if the hash left train empty the block with the lowest hash becomes train, and if
    it left test empty the block with the highest hash becomes test (deterministic, val may stay empty)."""
    keys = {b: block_key(aoi, b[0], b[1], seed) for b in sorted(set(blocks))}
    out = {b: hash_split(k, fractions) for b, k in keys.items()}
    if len(out) >= 3:
        ranked = sorted(keys, key=lambda b: (hash_unit(keys[b]), keys[b]))
        if "train" not in out.values():
            out[ranked[0]] = "train"
        if "test" not in out.values():
            out[ranked[-1]] = "test"
    return out
