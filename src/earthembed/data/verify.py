"""Store integrity: the cheap checks every open runs, and ``earthembed verify`` that decodes every chunk.

A damaged store must fail loudly, never be read as fill values or mislabelled rows. What can go wrong and who
catches it:

=======================================================  ===================================================
damage                                                   caught by
=======================================================  ===================================================
``earthembed.json`` edited: key missing or wrong type    every open (:func:`check_meta`), names file and key
``index.parquet`` rows removed / added                   every open: row count vs ``n_chips`` vs array shape
array missing, wrong shape                               every open
chunk file of a chip the index marks present deleted     every local open (one ``stat`` per chunk), every read
                                                         and ``verify`` (object storage: not at open)
chunk file corrupt or truncated                          every read (names the chunk) and ``verify``
statistics NaN/Infinity                                  every open (``stats`` itself skips it, to fix them)
duplicate chip ids, ``idx`` out of order, bad splits     ``verify``
a chip marked present that holds only nodata             ``verify``
=======================================================  ===================================================

Opening never reads chunk data, so its cost is one Parquet footer, a few columns of the index and one
``stat`` per chunk holding a present chip. On object storage opening checks no chunk object (listing them
would be one LIST per 1,000 objects, millions of keys for a continent): a read checks the chunks it reads
(:class:`earthembed.data.store.ObjectChunkLayout`), ``verify`` all of them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from earthembed.data.pixel_stats import valid_pixels
from earthembed.data.store import ChipStore
from earthembed.data.store_checks import (
    array_names,
    chunk_problem,
    content_problems,
    index_problems,
    structure_problems,
)
from earthembed.errors import StoreError
from earthembed.storage import location


@dataclasses.dataclass
class VerifyReport:
    """What ``earthembed verify`` found: ``problems`` (damage) is empty for a sound store."""

    path: Path
    chips: int = 0
    arrays: int = 0
    chunks_checked: int = 0
    problems: list[str] = dataclasses.field(default_factory=list)
    shard_chips: int | None = None
    """Chips per shard file when the store is sharded (``chunks_checked`` then counts shards)."""

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_store(path: str | Path, progress: bool = False) -> VerifyReport:
    """Full check of a store: the open checks, the index, and a decode of every chunk of every array.

    Also reports chips the index marks present whose pixels are all nodata (they would be embedded as data)."""
    rep = VerifyReport(location(path))
    try:
        store = ChipStore(path, check=False)
    except StoreError as e:
        rep.problems.append(str(e))
        return rep
    rep.chips = len(store)
    names = array_names(store)
    rep.arrays = len(names)
    rep.problems += structure_problems(store)
    if not rep.problems:
        try:
            store.presence()
        except StoreError as e:
            rep.problems.append(str(e))
    if rep.problems:
        return rep  # the rest assumes rows, arrays and the index's presence columns line up
    rep.problems += content_problems(store, check_stats=True) + index_problems(store)
    from earthembed.progress import progress as make_progress

    bar = make_progress(total=sum(-(-len(store) // store.layout(n).chunk_chips) for n in names), unit="chunk",
                        desc=f"verify {store.path.name}", quiet=not progress)
    rep.shard_chips = next((c["shard_chips"] for c in store.chunking().values() if c["shard_chips"]), None)
    for name in names:
        arr = store.array(name)
        pres = store.presence()[name]
        nodata = store.modalities[name].nodata if name in store.modalities else None
        cc = store.layout(name).chunk_chips  # per file: a shard's chips in a sharded store
        empty: list[int] = []
        for c in range(-(-len(store) // cc)):
            s, e = c * cc, min((c + 1) * cc, len(store))
            rep.chunks_checked += 1
            bar.update(1)
            if store.layout(name).missing(c):
                continue  # reported above when it holds present chips; fill values otherwise
            try:
                data = arr[s:e]
            except Exception as ex:  # any codec failure is damage
                rep.problems.append(chunk_problem(
                    store.path, name, c, cc, len(store),
                    f"chunk file {store.layout(name).files(c)[0]} cannot be decoded ({type(ex).__name__}: {ex})"))
                continue
            if name in store.modalities:
                empty += [s + i for i in np.flatnonzero(pres[s:e]) if not valid_pixels(data[i], nodata).any()]
        if empty:
            ids = store.index["chip_id"].iloc[empty[:5]].tolist()
            rep.problems.append(
                f"{store.path}: {len(empty)} chips marked present in {name} hold only nodata ({ids}"
                f"{' ...' if len(empty) > 5 else ''}); they would be embedded as data - re-ingest the store"
            )
    if bar is not None:
        bar.close()
    return rep
