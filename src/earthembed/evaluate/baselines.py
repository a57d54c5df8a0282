"""Baselines that ``fewshot`` computes itself, on the same splits as the embeddings it is judging.

* ``band_stats``: per-band statistics of the chip (:func:`earthembed.evaluate.features.band_statistics_feature_set`).
* ``rcf``: random convolutional features (MOSAIKS / TorchGeo, :mod:`earthembed.models.rcf`) of every
  non-categorical modality of the store, one feature set: the per-modality RCF embeddings side by side (as
  ``band_stats`` puts the modalities side by side). Empirical filters come from the store's train split.
  The featurizer is exported next to its table (``rcf_featurizer/``), so the baseline can be re-run or used
  for mapping with ``earthembed embed --checkpoint``.
* ``random_init``: a randomly initialised encoder of the first embedding table's model.

Tables are written into the output directory and reused when the same store, featurizer and bands made them.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from earthembed.data.store import ChipStore
from earthembed.embed.io import read_metadata, read_table, to_matrix
from earthembed.evaluate.features import FeatureSet

RANDOM_INIT = "random_init"
RANDOM_INIT_SEED = 0
RCF = "rcf"
RCF_DEFAULTS: dict[str, Any] = {"mode": "empirical", "features": 512, "kernel_size": 3, "bias": -1.0, "seed": 0}


def _model_path(meta: Mapping[str, Any], table: Path) -> Path | None:
    """The exported model a table was embedded with, if it still exists (as recorded, or beside the table)."""
    mp = meta.get("model_path")
    if not mp:
        return None
    for cand in (Path(mp), table.parent / mp):
        if cand.exists():
            return cand
    return None


def _reusable(out: Path, model_id: str, store: ChipStore, bands: Mapping[str, list[str]] | None) -> bool:
    """Whether the table at ``out`` was embedded by ``model_id`` from all of ``store`` with ``bands``."""
    if not out.exists():
        return False
    try:
        old = read_metadata(out)
    except ValueError:
        return False
    return (old.get("model_id") == model_id and old.get("store") == str(store.path.resolve())
            and old.get("n_chips") == len(store) and (bands is None or old.get("bands") == bands))


def random_init_table(
    embeddings: Mapping[str, str | Path], store: ChipStore, out_dir: str | Path, seed: int = RANDOM_INIT_SEED
) -> Path:
    """``out_dir/random_init.parquet``: a randomly initialised encoder of the FIRST table's model, same
    modalities and bands, embedding ``store``. An existing file from the same model, store and bands is reused.
    """
    if not embeddings:
        raise ValueError(
            "the random_init baseline needs an embedding table to copy the architecture from; "
            "give --embeddings, pass --random-init PATH, or drop random_init from --baselines"
        )
    name, first = next(iter(embeddings.items()))
    first = Path(first)
    if not first.exists():
        raise FileNotFoundError(f"{first}: embedding table not found")
    meta = read_metadata(first)
    model_path = _model_path(meta, first)
    if model_path is None:
        raise ValueError(
            f"random_init baseline: the model of embedding table {name!r} ({first}) is not available "
            f"(model_path={meta.get('model_path')!r}); pass --random-init PATH (a table embedded with a "
            "randomly initialised encoder) or drop random_init from --baselines"
        )
    modalities = list(meta["modalities"]) if meta.get("modalities") else None
    bands = {k: list(v) for k, v in meta["bands"].items()} if meta.get("bands") else None
    out = Path(out_dir) / f"{RANDOM_INIT}.parquet"
    if _reusable(out, f"random-init-seed{seed}-{meta.get('model_id', '')}", store, bands):
        return out
    from earthembed.embed.run import embed_random_init

    out.parent.mkdir(parents=True, exist_ok=True)
    # a stale table of ours is replaced; any other file there is refused by embed_store
    return embed_random_init(model_path, store, out, seed=seed, modalities=modalities, bands=bands, progress=False,
                             overwrite=True)


def rcf_table(store: ChipStore, out_dir: str | Path, **options: Any) -> Path:
    """``out_dir/rcf.parquet`` (featurizer in ``out_dir/rcf_featurizer/``): RCF embeddings of every
    non-categorical modality and band of ``store``; ``options`` override :data:`RCF_DEFAULTS`. Reused when the
    same featurizer (same filters, hence the same model id) already embedded the same store."""
    from earthembed.embed.run import embed_store
    from earthembed.models.export import read_export
    from earthembed.models.rcf import export_rcf

    unknown = set(options) - set(RCF_DEFAULTS) - {"relu_pair"}
    if unknown:
        raise ValueError(f"rcf baseline: unknown option(s) {sorted(unknown)} (known: {sorted(RCF_DEFAULTS)}, relu_pair)")
    out_dir = Path(out_dir)
    out = out_dir / f"{RCF}.parquet"
    export = export_rcf(store, out_dir / f"{RCF}_featurizer", **{**RCF_DEFAULTS, **options})
    meta, _ = read_export(export)
    bands = {k: list(v) for k, v in meta.modalities.items()}
    if _reusable(out, str(meta.model_id), store, bands):
        return out
    return embed_store(export, store, out, progress=False, overwrite=True)


def rcf_feature_set(store: ChipStore, out_dir: str | Path, name: str = RCF, **options: Any) -> FeatureSet:
    """The ``rcf`` baseline as one :class:`FeatureSet`: the per-modality columns of :func:`rcf_table` side by
    side (a chip lacking a modality is excluded, as for ``band_stats``)."""
    path = rcf_table(store, out_dir, **options)
    meta = read_metadata(path)
    table = read_table(path)
    X = np.hstack([to_matrix(table.column(f"emb_{k}")) for k in meta["modalities"]])
    ids = np.asarray(table.column("chip_id").to_pylist(), dtype=str)
    ok = np.isfinite(X).all(axis=1)
    return FeatureSet(name, ids[ok], X[ok], int((~ok).sum()), str(path), str(meta.get("model_id", "")))
