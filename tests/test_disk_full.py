"""A full disk (or quota, read-only or I/O error) while a command writes: one line naming the output being written
and the re-run, whatever library raised it; a bug keeps its traceback."""

from __future__ import annotations

import errno

import pytest
from typer.testing import CliRunner

from earthembed.cli import app


@pytest.mark.parametrize("failure", [
    OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space left on device"),  # pyarrow
    RuntimeError("Error while serializing: I/O error: Disk quota exceeded (os error 122)"),  # Rust (safetensors)
])
def test_a_storage_error_without_a_file_name_names_the_output(tiny_store, tmp_path, monkeypatch, failure):
    import earthembed.embed.run as run

    def full(*args, **kwargs):
        raise failure

    monkeypatch.setattr(run, "_write_part", full)
    out = tmp_path / "e.parquet"
    r = CliRunner().invoke(app, ["embed", "--featurizer", "rcf", "--store", str(tiny_store), "--out", str(out)])
    cause = "No space left on device" if isinstance(failure, OSError) else "Disk quota exceeded"
    assert r.exit_code == 1 and r.output.strip() == (
        f"error: {out}: {cause} while writing it; free space and re-run the same command (what an earlier run "
        "wrote is kept)"), r.output
    assert not out.exists()


def test_a_bug_is_not_taken_for_a_full_disk(tiny_store, tmp_path, monkeypatch):
    import earthembed.embed.run as run

    def bug(*args, **kwargs):
        raise RuntimeError("index 3 is out of bounds")

    monkeypatch.setattr(run, "_write_part", bug)
    r = CliRunner().invoke(app, ["embed", "--featurizer", "rcf", "--store", str(tiny_store),
                                 "--out", str(tmp_path / "e.parquet")])
    assert r.exit_code == 1 and "RuntimeError: index 3 is out of bounds (unexpected;" in r.output
