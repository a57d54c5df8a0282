"""Similarity search: query arithmetic, exact vs stored index, point queries, hits output, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from aoi_helpers import band_stat_embeddings
from earthembed.data.chipgeo import read_chip_table
from earthembed.data.synth import generate_synthetic_aoi
from earthembed.embed.io import write_embedding_table
from earthembed.errors import OutputError
from earthembed.explore.search import build_index, index_path, load_vectors, query_vector, search, write_hits


@pytest.fixture(scope="module")
def aoi(tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    store = generate_synthetic_aoi(root / "store", chips=100, chip_size=8, seed=2)
    return store, band_stat_embeddings(root / "store", root / "emb.parquet")


def test_query_arithmetic_and_exact_ranking(aoi):
    _, emb = aoi
    v = load_vectors(emb)
    np.testing.assert_allclose(np.linalg.norm(v.X, axis=1), 1.0, atol=1e-5)
    ids = v.df["chip_id"].tolist()
    pos, neg = ["synth_r0000_c0000", "synth_r0003_c0004"], ["synth_r0007_c0007"]
    hits = search(emb, pos, neg, k=10, exact=True)
    rows = {c: i for i, c in enumerate(ids)}
    x = {c: v.X[list(v.rows).index(rows[c])] for c in pos + neg}
    q = (x[pos[0]] + x[pos[1]]) / 2 - x[neg[0]]
    q /= np.linalg.norm(q)
    np.testing.assert_allclose(query_vector(v, [rows[c] for c in pos], [rows[c] for c in neg])[0], q, atol=1e-6)
    # scores are cosine similarities to that query, best first, query chips left out
    brute = v.X @ q
    order = [ids[v.rows[i]] for i in np.argsort(-brute) if ids[v.rows[i]] not in pos + neg][:10]
    assert hits.table["chip_id"].tolist() == order
    np.testing.assert_allclose(hits.table["score"], [brute[list(v.rows).index(rows[c])] for c in order], atol=1e-5)
    assert hits.table["rank"].tolist() == list(range(1, 11))
    with_q = search(emb, pos[:1], k=3, exact=True, include_query=True)
    assert with_q.table["chip_id"].iloc[0] == pos[0] and with_q.table["score"].iloc[0] == pytest.approx(1.0, abs=1e-5)


def test_exact_and_index_agree(aoi, tmp_path, capsys):
    _, emb = aoi
    exact = search(emb, ["synth_r0002_c0002"], k=20, exact=True)
    # IVF visiting every list is exhaustive: the same hits as exact search; vectors are added in chunks
    # (monkeypatched to 30: four faiss calls) with progress lines
    import earthembed.explore.search as search_mod

    mp = pytest.MonkeyPatch()
    mp.setattr(search_mod, "ADD_CHUNK", 30)
    mp.setenv("EARTHEMBED_PROGRESS_PCT", "25")
    path = build_index(emb, kind="ivf", nlist=4, nprobe=4, quiet=False)
    mp.undo()
    err = capsys.readouterr().err
    n = len(load_vectors(emb).rows)  # chips with a non-null embedding
    assert f"training IVF k-means, 4 lists on {n} vectors" in err and f"index ivf: add: 100% ({n}/{n} vectors)" in err
    assert path == index_path(emb) and path.with_name(path.name + ".json").exists()
    ivf = search(emb, ["synth_r0002_c0002"], k=20)
    assert ivf.meta["method"] == "ivf"
    assert ivf.table["chip_id"].tolist() == exact.table["chip_id"].tolist()
    np.testing.assert_allclose(ivf.table["score"], exact.table["score"], atol=1e-5)
    with pytest.raises(OutputError, match="already exists; pass --overwrite"):  # another kind: an explicit choice
        build_index(emb, kind="hnsw")
    build_index(emb, kind="hnsw", overwrite=True)
    hnsw = search(emb, ["synth_r0002_c0002"], k=20)
    assert hnsw.meta["method"] == "hnsw"
    assert len(set(hnsw.table["chip_id"]) & set(exact.table["chip_id"])) >= 18
    # the table changes (re-embedded): the stale index is refused, not used
    df = load_vectors(emb).df
    X = np.random.default_rng(0).normal(size=(len(df), 5))
    write_embedding_table(emb, df["chip_id"], {"emb_fused": X})
    with pytest.raises(ValueError, match="built for another version"):
        search(emb, ["synth_r0002_c0002"], k=5)
    assert search(emb, ["synth_r0002_c0002"], k=5, exact=True).meta["method"] == "exact"
    index_path(emb).unlink()


def test_point_query_hits_file_and_bad_input(aoi, tmp_path):
    store, _ = aoi
    emb = band_stat_embeddings(store.path, tmp_path / "emb.parquet")
    c = store.index.geometry.iloc[23].centroid
    hits = search(emb, point=(c.x, c.y), k=12, store=store.path)
    assert hits.meta["positives"] == [store.index["chip_id"].iloc[23]]
    files = write_hits(hits, tmp_path / "hits.parquet")
    assert [f.name for f in files] == ["hits.parquet", "hits.png"] and files[1].stat().st_size > 5000
    df, meta = read_chip_table(tmp_path / "hits.parquet")
    assert df["rank"].tolist() == list(range(1, 13)) and df["score"].is_monotonic_decreasing
    assert df["geometry"].notna().all() and {"crs", "transform"} <= set(df.columns)
    assert meta["method"] == "exact" and meta["point"] == [c.x, c.y]
    with pytest.raises(KeyError, match="positive chip id 'nope' does not exist"):
        search(emb, ["nope"])
    last = store.index["chip_id"].iloc[-1]  # its embedding is null
    with pytest.raises(ValueError, match=f"negative chip '{last}' has no embedding"):
        search(emb, ["synth_r0000_c0000"], [last])
    with pytest.raises(ValueError, match=r"point \(100.0, 10.0\) is inside no chip"):
        search(emb, point=(100.0, 10.0), store=store.path)
    with pytest.raises(ValueError, match="cancel out"):
        search(emb, ["synth_r0000_c0000"], ["synth_r0000_c0000"])
    from typer.testing import CliRunner

    from earthembed.cli import app

    r = CliRunner().invoke(app, ["search", "--embeddings", str(emb), "--positive", "nope", "--out",
                                 str(tmp_path / "x.parquet")])
    assert r.exit_code == 1 and "positive chip id 'nope' does not exist" in r.output
    assert not (tmp_path / "x.parquet").exists()
