"""Shared builders for the AOI tests (predict, map, search, report): a small synthetic store and embeddings."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def band_stat_embeddings(store_path: Path, out: Path) -> Path:
    """A stand-in embedding table: log of per-band mean/std of S2 and S1 (no model needed, separates classes)."""
    from earthembed.data.store import ChipStore
    from earthembed.embed.io import write_embedding_table

    st = ChipStore(store_path)
    s2 = st.read("s2", slice(0, len(st))).astype(np.float32)
    feat = np.concatenate([np.log1p(s2.mean(axis=(2, 3))), np.log1p(s2.std(axis=(2, 3)))], axis=1)
    feat[st.index["chip_id"].to_numpy() == st.index["chip_id"].iloc[-1]] = np.nan  # one chip without embedding
    return write_embedding_table(out, st.index["chip_id"], {"emb_fused": feat},
                                 split=st.index["split"].tolist(), metadata={"store": str(store_path)})
