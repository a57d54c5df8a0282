"""The write policy with object-storage locations (issue 23): an ``s3://`` / ``gs://`` output is never a local path
(``s3://b/x`` is not ``./s3:/b/x``), overlaps with inputs are checked within one bucket by whole key names, and
outputs that are only written locally refuse a URL in one line instead of creating a local ``s3:`` directory.
(Against a real S3 server: tests/test_object_storage.py, the ingest commands and a store above --out.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from earthembed.errors import OutputError
from earthembed.outputs import atomic_path, check_output, check_output_location, claim_dir, is_within
from earthembed.storage import ObjectPath


def test_a_url_output_is_never_inside_a_local_input(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for out in ("s3://bucket/x", Path("s3://bucket/x"), "gs://bucket/a/b", ObjectPath("s3", "bucket", "x")):
        check_output_location(out, [Path("."), ".", tmp_path])  # typer's Path collapses // into s3:/bucket/x
    check_output_location(tmp_path / "out", ["s3://bucket/x", "https://example.com/catalog.json"])
    assert not (tmp_path / "s3:").exists()


@pytest.mark.parametrize("out, src, why", [
    ("s3://b/in/store", "s3://b/in", "is inside the input"),
    ("s3://b/in/", "s3://b/in/s2.tif", "contains the input"),
    (Path("s3://b/in"), "s3://b/in/", "is the input"),
    ("gs://b/x/y", "gs://b/x", "is inside the input"),
])
def test_urls_in_one_bucket_overlap_by_key(out, src, why):
    with pytest.raises(OutputError, match=why) as e:
        check_output_location(out, [src])
    assert "\n" not in str(e.value) and str(e.value).startswith(str(out))


@pytest.mark.parametrize("out, src", [
    ("s3://b/in2", "s3://b/in"),  # a key prefix is not a parent: whole names only
    ("s3://other/in/store", "s3://b/in"),  # another bucket
    ("gs://b/in/store", "s3://b/in"),  # another service
    ("s3://b/in/store", "/b/in"),  # a local path is not a bucket
])
def test_urls_elsewhere_do_not_overlap(out, src):
    check_output_location(out, [src])


def test_is_within_on_object_storage():
    assert is_within("s3://b/a/b", "s3://b/a") and is_within(Path("s3://b/a"), "s3://b/a/")
    assert not is_within("s3://b/ab", "s3://b/a") and not is_within("s3://c/a/b", "s3://b/a")
    assert not is_within("s3://b/a/b", "/")


@pytest.mark.parametrize("kind, what", [("fewshot", "few-shot output directory"), ("predictions", "predictions table"),
                                        ("map", "map GeoTIFF"), ("export", "model export")])
def test_outputs_written_locally_refuse_a_url_in_one_line(tmp_path, monkeypatch, kind, what):
    monkeypatch.chdir(tmp_path)
    for out in ("s3://bucket/out", Path("s3://bucket/out")):
        with pytest.raises(OutputError, match=f"on object storage is not supported for a {what}") as e:
            check_output(out, kind, [tmp_path])
        assert str(e.value).startswith("s3://bucket/out: --out") and "\n" not in str(e.value)
    with pytest.raises(OutputError, match="on object storage is not supported"):
        claim_dir("s3://bucket/out", "fewshot")
    with pytest.raises(OutputError, match="on object storage is not supported"), atomic_path("s3://bucket/m.tif", "map"):
        pass
    assert list(tmp_path.iterdir()) == []  # no local ./s3:/bucket/... was made


def test_local_outputs_keep_the_local_rules(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    with pytest.raises(OutputError, match="is inside the input"):
        check_output(src / "store", "store", [src])
    assert check_output(tmp_path / "store", "store", [src]) == tmp_path / "store"
