"""Per-date embedding datasets (``embed --dates ... --out DIR/``) partitioned by year, hive-style (issue 23): one
file per (year, shard) under ``year=YYYY/``; read whole they equal the single table; ``read_table(years=...)`` and
``pyarrow.dataset`` prune by year; ``change`` reads the dataset; a failed shard resumes to the same bytes without
rewriting committed files."""

from __future__ import annotations

import json

import pyarrow.compute as pc
import pyarrow.dataset as pds
import pyarrow.parquet as pq
import pytest

from earthembed.embed.io import read_table
from earthembed.embed.run import embed_store
from earthembed.embed.shards import PARTITIONING, Shard, dataset_files, finish
from earthembed.errors import OutputError
from test_dates import dated  # noqa: F401  (the 3-date store and its tiny export)
from test_hostile_inputs import cli

YEARS = ("2023", "2024", "2025")  # synth --dates 3: 2023-07-01, 2024-04-12, 2025-10-23
PARTS = ("part-0000000000-0000000016.parquet", "part-0000000016-0000000032.parquet",
         "part-0000000032-0000000040.parquet")


def _files(d):
    return {f.relative_to(d).as_posix(): f.read_bytes() for f in sorted(d.rglob("*")) if f.is_file()
            and f.name.endswith(".parquet")}


@pytest.fixture(scope="module")
def embedded(dated, tmp_path_factory):  # noqa: F811
    st, export = dated
    d = tmp_path_factory.mktemp("partitioned")
    one = embed_store(export, st, d / "one.parquet", dates="all", batch_size=16, progress=False)
    ds = embed_store(export, st, str(d / "ds") + "/", dates="all", shard_chips=16, batch_size=16, progress=False)
    return st, export, one, ds


def test_per_date_dataset_is_partitioned_by_year_and_reads_as_the_table(embedded):
    st, _, one, ds = embedded
    assert sorted(_files(ds)) == [f"year={y}/{p}" for y in YEARS for p in PARTS]
    m = json.loads((ds / "_manifest.json").read_text())
    assert m["partitioning"] == PARTITIONING and m["rows"] == 120
    assert m["files"] == [f"year={y}/{p}" for p in PARTS for y in YEARS]  # shard order, years within a shard
    marker = json.loads((ds / "_committed" / "part-0000000000-0000000016.json").read_text())
    assert sorted(marker["files"]) == [f"year={y}/{PARTS[0]}" for y in YEARS] and marker["rows"] == 48
    a, b = pq.read_table(one), read_table(ds)
    key = [("t", "ascending"), ("idx", "ascending")]
    assert b.sort_by(key).equals(a.select(b.column_names).sort_by(key))
    for t, year in enumerate(YEARS):
        part = read_table(ds, years=[int(year)])
        assert part.num_rows == 40 and set(part.column("t").to_pylist()) == {t}
        assert {f.parent.name for f in dataset_files(ds, [int(year)])} == {f"year={year}"}  # pruned: one year's files
        assert part.sort_by("idx").equals(a.filter(pc.equal(a.column("t"), t)).select(part.column_names))
    assert read_table(ds, years=[1999], columns=["chip_id"]).num_rows == 0
    # any hive-aware reader prunes by year on its own (files and directories starting with _ are skipped)
    hive = pds.dataset(ds, format="parquet", partitioning="hive")
    assert hive.count_rows() == 120 and hive.to_table(filter=pc.field("year") == 2024).num_rows == 40
    with pytest.raises(ValueError, match=r"one\.parquet: years= needs an embedding dataset partitioned by year"):
        read_table(one, years=[2024])


def test_change_reads_the_partitioned_dataset(embedded, tmp_path):
    st, _, one, ds = embedded
    outs = {}
    for name, emb in (("table", one), ("dataset", ds)):
        outs[name] = tmp_path / f"{name}.parquet"
        r = cli("change", "--embeddings", emb, "--method", "consecutive", "--threshold", "otsu", "--truth", st.path,
                "--out", outs[name])
        assert r.exit_code == 0 and "change (consecutive, emb_fused, 3 dates)" in r.output, r.output
    a, b = pq.read_table(outs["table"]), pq.read_table(outs["dataset"])
    cols = [c for c in a.column_names if c not in ("geometry",)]
    assert a.select(cols).equals(b.select(cols))


def test_a_failed_per_date_shard_resumes_to_the_same_files(embedded, tmp_path, monkeypatch):
    from earthembed.embed import engines

    st, export, _, ds = embedded
    real = engines.ShardWorker.run

    def flaky(self, shard):
        if shard.start == 16:
            raise RuntimeError("preempted")
        return real(self, shard)

    monkeypatch.setattr(engines.ShardWorker, "run", flaky)
    out = tmp_path / "ds"
    with pytest.raises(RuntimeError, match="preempted"):
        embed_store(export, st, str(out) + "/", dates="all", shard_chips=16, batch_size=16, progress=False)
    assert sorted(_files(out)) == [f"year={y}/{PARTS[0]}" for y in YEARS]
    before = {f: (out / f).stat().st_mtime_ns for f in _files(out)}
    monkeypatch.setattr(engines.ShardWorker, "run", real)
    embed_store(export, st, str(out) + "/", dates="all", shard_chips=16, batch_size=16, progress=False)
    assert _files(out) == _files(ds)  # byte for byte
    assert all((out / f).stat().st_mtime_ns == t for f, t in before.items())  # committed files not rewritten
    (out / f"year=2024/{PARTS[1]}").unlink()
    m = json.loads((out / "_manifest.json").read_text())
    with pytest.raises(OutputError, match=rf"year=2024/{PARTS[1]}: missing or changed since it was committed"):
        finish(out, m, [Shard(*s) for s in m["shards"]], m["table"])
