
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from earthembed.data.modalities import get_modality
from earthembed.data.store import ChipRecord, ChipStore, StoreWriter
from earthembed.embed.io import write_embedding_table
from earthembed.explore.projection import plot_embeddings, project


def write_table(path, chip_ids, X, split, model_id="toy-model", store=None):
    """A minimal embedding table (embed/io.py format): emb_fused with nulls where X has NaN rows."""
    meta = {"store": str(store)} if store is not None else {}
    return write_embedding_table(path, list(chip_ids), {"emb_fused": X}, split=split, model_id=model_id, metadata=meta)


@pytest.fixture()
def table(tiny_store, tmp_path):
    idx = ChipStore(tiny_store).index
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20, 6)) + (idx["label"] == "water").to_numpy()[:, None] * 3
    X[5] = np.nan  # a chip without embedding is left out, not plotted at the origin
    return write_table(tmp_path / "emb.parquet", idx["chip_id"], X, idx["split"])


def test_project_pca_deterministic_and_umap_optional():
    X = np.random.default_rng(0).normal(size=(30, 5))
    X[:, 0] *= 10
    Y = project(X, "pca", seed=0)
    assert Y.shape == (30, 2) and np.allclose(Y, project(X, "pca", seed=0))
    assert np.abs(np.corrcoef(Y[:, 0], X[:, 0])[0, 1]) > 0.95  # PC1 follows the high-variance axis
    with pytest.raises(ValueError, match="unknown projection"):
        project(X, "tsne")
    try:
        import umap  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="umap-learn"):
            project(X, "umap")


@pytest.mark.parametrize("color_by", ["label", "frac_water", "split"])
def test_plot_embeddings_colour_sources(tiny_store, table, tmp_path, color_by):
    out = plot_embeddings(table, color_by, tmp_path / f"{color_by}.png", store=tiny_store)
    assert out.exists() and out.stat().st_size > 1000


def test_plot_embeddings_errors_and_multilabel(tiny_store, table, tmp_path):
    with pytest.raises(KeyError, match="pass the store"):
        plot_embeddings(table, "label", tmp_path / "x.png")
    with pytest.raises(KeyError, match="neither a column"):
        plot_embeddings(table, "nope", tmp_path / "x.png", store=tiny_store)
    path = tmp_path / "ml"
    with StoreWriter(path, [get_modality("s2_l1c")], 8, {"tags": {"kind": "multilabel"}}) as w:
        for i in range(30):
            tags = [t for j, t in enumerate(["crop", "water", "urban"]) if (i >> j) & 1]
            w.add(ChipRecord(f"m{i}", {"s2": np.full((13, 8, 8), i + 1, "uint16")}, labels={"tags": tags}))
    X = np.random.default_rng(1).normal(size=(30, 4))
    emb = write_table(tmp_path / "ml.parquet", [f"m{i}" for i in range(30)], X, [""] * 30)
    for mode in ("first", "count"):
        assert plot_embeddings(emb, "tags", tmp_path / f"{mode}.png", store=path, multilabel=mode).stat().st_size > 0


def test_cli_plot_embeddings(tiny_store, table, tmp_path):
    from earthembed.explore.cli import register

    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)
    runner = CliRunner()
    res = runner.invoke(app, ["plot-embeddings", str(table), "--color-by", "label", "--out", str(tmp_path / "p.png"),
                              "--store", str(tiny_store), "--column", "emb_fused", "--method", "pca"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "p.png").stat().st_size > 0
    bad = runner.invoke(app, ["plot-embeddings", str(table), "--color-by", "label", "--out", str(tmp_path / "q.png"),
                              "--column", "emb_s9"])
    assert bad.exit_code == 1 and "emb_s9" in bad.output


def test_plot_embeddings_store_from_table_metadata(tiny_store, tmp_path):
    from earthembed.explore.cli import register

    idx = ChipStore(tiny_store).index
    X = np.random.default_rng(0).normal(size=(20, 4))
    emb = write_table(tmp_path / "emb.parquet", idx["chip_id"], X, idx["split"], store=tiny_store)
    assert plot_embeddings(emb, "frac_water", tmp_path / "a.png").stat().st_size > 1000
    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)
    res = CliRunner().invoke(app, ["plot-embeddings", str(emb), "--color-by", "label", "--out", str(tmp_path / "b.png")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "b.png").stat().st_size > 1000
    gone = write_table(tmp_path / "gone.parquet", idx["chip_id"], X, idx["split"], store=tmp_path / "moved")
    with pytest.raises(KeyError, match="moved.*does not exist.*pass the store"):
        plot_embeddings(gone, "label", tmp_path / "c.png")
