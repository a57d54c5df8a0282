"""2-D views of an embedding table, coloured by a label: the first sanity check of a pretrained model.

Colours come from a column of the table itself (``split``, ``aoi``, ``model_id`` ...) or from a label of
the store joined on ``chip_id``. Classes get a legend, fractions/values a colour bar. A multilabel chip
is coloured by its first listed label (``multilabel="first"``) or by its number of labels (``"count"``).
The PNG follows the output policy of :mod:`earthembed.outputs` (replaced only with ``overwrite``, only when
earthembed wrote it; checked before anything is computed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from earthembed.embed.io import read_metadata
from earthembed.explore.tables import read_embedding_matrix
from earthembed.outputs import check_output, save_png
from earthembed.storage import location

METHODS = ("pca", "umap")
MISSING = "(missing)"


def _project(X: np.ndarray, method: str = "pca", seed: int = 0) -> tuple[np.ndarray, dict[str, Any]]:
    if method == "pca":
        from sklearn.decomposition import PCA

        if len(X) < 2:
            raise ValueError(f"need at least 2 embeddings to project, got {len(X)}")
        pca = PCA(n_components=2, random_state=seed).fit(X)
        return pca.transform(X), {"explained_variance": pca.explained_variance_ratio_.tolist()}
    if method == "umap":
        try:
            import umap
        except ImportError:
            raise ImportError(
                "method 'umap' needs umap-learn, which is not installed: pip install 'earthembed[umap]' "
                "(or use method='pca')"
            ) from None
        reducer = umap.UMAP(n_components=2, random_state=seed, n_neighbors=min(15, max(2, len(X) - 1)))
        return reducer.fit_transform(X), {}
    raise ValueError(f"unknown projection method {method!r} (choose from {METHODS})")


def project(X: np.ndarray, method: str = "pca", seed: int = 0) -> np.ndarray:
    """[N, 2] projection of embeddings ``X`` by PCA or UMAP (optional dependency umap-learn)."""
    return _project(np.asarray(X, dtype=np.float64), method, seed)[0]


def _colour_values(
    df: pd.DataFrame, color_by: str, store: Any, multilabel: str, recorded: str | None = None
) -> tuple[pd.Series, str]:
    """(values aligned with ``df``, "categorical" | "continuous"); ``recorded``: the table's store, for errors."""
    kind = None
    if color_by in df.columns:
        values = df[color_by]
    else:
        if store is None:
            raise KeyError(
                f"{color_by!r} is not a column of the embedding table and the store it was embedded from "
                f"{'(' + repr(recorded) + ') does not exist' if recorded else 'is not recorded in it'}; "
                "pass the store to colour by a label"
            )
        from earthembed.data.store import ChipStore

        st = store if isinstance(store, ChipStore) else ChipStore(store)
        if color_by not in st.labels:
            raise KeyError(
                f"{color_by!r} is neither a column of the embedding table ({list(df.columns)}) "
                f"nor a label of {st.path} ({list(st.labels)})"
            )
        kind = st.labels[color_by]["kind"]
        if kind == "mask":
            raise ValueError(f"label {color_by!r} is a per-pixel mask; colour by a chip-level label")
        lab = st.index.set_index("chip_id")[color_by]
        values = df["chip_id"].map(lab)
    if kind == "multilabel":
        if multilabel == "count":
            return values.map(lambda v: len(v) if v is not None and not isinstance(v, float) else np.nan), "continuous"
        if multilabel != "first":
            raise ValueError(f"multilabel colouring {multilabel!r} is not 'first' or 'count'")
        values = values.map(lambda v: str(v[0]) if v is not None and not isinstance(v, float) and len(v) else None)
    if kind in ("fraction", "value") or (kind is None and pd.api.types.is_numeric_dtype(values)
                                         and not pd.api.types.is_bool_dtype(values) and values.nunique() > 12):
        return pd.to_numeric(values, errors="coerce"), "continuous"
    return values.map(lambda v: MISSING if v is None or (isinstance(v, float) and np.isnan(v)) or v == "" else str(v)), "categorical"


def plot_embeddings(
    embeddings_path: str | Path,
    color_by: str,
    out_png: str | Path,
    store: Any = None,
    column: str = "emb_fused",
    method: str = "pca",
    max_points: int = 20000,
    seed: int = 0,
    multilabel: str = "first",
    overwrite: bool = False,
) -> Path:
    """Scatter of a 2-D projection of ``column`` coloured by ``color_by``; returns the PNG path.

    Chips with a null embedding are left out (and counted in the title); at most ``max_points`` chips
    (a seeded random subset) are drawn. Without ``store``, labels come from the store recorded in the
    table's metadata, if it still exists. ``overwrite``: replace an earlier earthembed PNG at ``out_png``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if method not in METHODS:
        raise ValueError(f"unknown projection method {method!r} (choose from {METHODS})")
    from earthembed.data.store import ChipStore

    if Path(out_png).suffix.lower() != ".png":
        raise ValueError(f"{out_png}: the plot is a PNG image; give a .png path")
    out_png = check_output(out_png, "png", [embeddings_path, store.path if isinstance(store, ChipStore) else store],
                           overwrite)
    df, X = read_embedding_matrix(embeddings_path, column, option="the embedding table")
    meta = read_metadata(embeddings_path)
    ok = np.isfinite(X).all(axis=1)
    n_null = int((~ok).sum())
    df, X = df[ok].reset_index(drop=True), X[ok]
    if len(df) > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(len(df), max_points, replace=False))
        df, X = df.iloc[keep].reset_index(drop=True), X[keep]
    recorded = meta.get("store") or None
    if store is None and color_by not in df.columns and recorded and location(recorded).exists():
        store = recorded  # the store the table was embedded from (embed metadata)
    values, vkind = _colour_values(df, color_by, store, multilabel, recorded)
    Y, info = _project(X.astype(np.float64), method, seed)

    fig, ax = plt.subplots(figsize=(7, 6))
    size = float(np.clip(3000 / max(len(Y), 1), 2, 30))
    if vkind == "continuous":
        v = values.to_numpy(dtype=np.float64)
        miss = ~np.isfinite(v)
        if miss.any():
            ax.scatter(Y[miss, 0], Y[miss, 1], s=size, c="lightgrey", label=MISSING, linewidths=0)
            ax.legend(fontsize=8, loc="best")
        sc = ax.scatter(Y[~miss, 0], Y[~miss, 1], s=size, c=v[~miss], cmap="viridis", linewidths=0)
        fig.colorbar(sc, ax=ax, label=color_by)
    else:
        cats = sorted(values.unique(), key=lambda c: (c == MISSING, c))
        cmap = plt.get_cmap("tab10" if len(cats) <= 10 else "tab20")
        for i, c in enumerate(cats):
            m = (values == c).to_numpy()
            colour = "lightgrey" if c == MISSING else cmap(i % cmap.N)
            ax.scatter(Y[m, 0], Y[m, 1], s=size, color=colour, label=f"{c} ({m.sum()})", linewidths=0)
        if len(cats) <= 30:
            ax.legend(title=color_by, fontsize=7, markerscale=max(1.0, 20 / size) ** 0.5, loc="best")
    model_id = meta.get("model_id") or (str(df["model_id"].iloc[0]) if "model_id" in df.columns and len(df) else "?")
    if method == "pca":
        ev = info["explained_variance"]
        axes_txt = f"PCA (PC1 {ev[0]:.1%}, PC2 {ev[1]:.1%} of variance)"
        ax.set_xlabel("PC1")
        ax.set_ylabel("PC2")
    else:
        axes_txt = "UMAP"
    extra = f", {n_null} null left out" if n_null else ""
    ax.set_title(f"{model_id} · {column} · {axes_txt}\n{len(Y)} chips{extra}, coloured by {color_by}", fontsize=9)
    return save_png(fig, out_png, overwrite, dpi=120)
