"""Exact resume of pretraining: a run killed with SIGKILL after a checkpoint and re-run equals a run that was never
interrupted (weights bit for bit, every metrics.csv row) for every objective; the run lock comes before anything in
the run directory is read; a checkpoint is written whole or not at all, and a full disk names the path."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap

import pandas as pd
import pytest
import torch

from earthembed.models import load_model
from earthembed.pretrain.run import pretrain, run_lock

BASE = ["train.progress_bar=false", "train.log_every_n_steps=1", "train.warmup_steps=0", "data.crop_size=16",
        "train.max_steps=5", "train.checkpoint_every_n_steps=2"]
CASES = {
    "contrastive": ("contrastive_tiny", ["data.batch_size=8", "model.embed_dim=32", "model.depth=1",
                                         "data.splits=all", "objective_args.proj_dim=16"]),
    # BYOL: EMA teacher and momentum schedule, a CNN, and the online probe (rows logged between steps)
    "byol": ("cpu_multimodal", ["model.backbone=resnet10t", "data.batch_size=8", "objective_args.proj_dim=16",
                                "objective_args.proj_hidden_dim=16", "probe.every_n_steps=2"]),
    "mpmae": ("mpmae_atto", ["model.timm_kwargs={depths: [1, 1, 1, 1], dims: [8, 16, 32, 64]}",
                             "objective_args.decoder_dim=16", "data.batch_size=6", "data.splits=all"]),
    "dense_contrastive": ("dense_tiny", ["data.batch_size=4", "model.embed_dim=16", "model.depth=1",
                                         "objective_args.points_per_chip=8"]),
}

# A pretrain process that kills itself with SIGKILL at the start of step KILL_AT, once a checkpoint exists: nothing
# is flushed, closed or saved on the way out, as when a job is killed by a scheduler or the OOM killer.
KILLED_RUN = textwrap.dedent("""
    import json, os, signal, sys
    from earthembed.pretrain import resume
    from earthembed.pretrain.run import pretrain

    kill_at, orig = int(sys.argv[5]), resume.ExactResume.on_train_batch_start

    def hooked(self, trainer, pl_module, batch, batch_idx):
        orig(self, trainer, pl_module, batch, batch_idx)
        if trainer.global_step >= kill_at and self.path.exists():
            os.kill(os.getpid(), signal.SIGKILL)

    resume.ExactResume.on_train_batch_start = hooked
    pretrain(sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4]))
""")


def _kill_at(config, store, out, overrides, step):
    r = subprocess.run([sys.executable, "-c", KILLED_RUN, config, str(store), str(out), json.dumps(overrides),
                        str(step)], capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == -9, r.stderr[-3000:]
    assert (out / "checkpoints" / "last.ckpt").exists() and not (out / "export").exists()


@pytest.mark.parametrize("objective", list(CASES))
def test_a_killed_and_resumed_run_equals_an_uninterrupted_one(objective, tiny_store, tmp_path):
    config, extra = CASES[objective]
    overrides = [*BASE, *extra]
    whole = pretrain(config, tiny_store, tmp_path / "whole", overrides)
    _kill_at(config, tiny_store, tmp_path / "killed", overrides, step=3)  # checkpoint at step 2, killed in step 3
    resumed = pretrain(config, tiny_store, tmp_path / "killed", overrides)  # the same command again
    a, b = load_model(whole)[0].state_dict(), load_model(resumed)[0].state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), (objective, k)
    ma, mb = (pd.read_csv(p.parent / "metrics.csv") for p in (whole, resumed))
    ma, mb = (m.drop(columns=[c for c in m if c == "probe/seconds"]) for m in (ma, mb))  # wall time differs
    pd.testing.assert_frame_equal(ma, mb)
    assert sorted(set(ma["step"])) == [0, 1, 2, 3, 4] + ([5] if objective == "byol" else [])
    if objective == "byol":  # probed before training, every 2 steps and after the last: never twice, none lost
        assert sorted(ma.dropna(subset=["probe/label/knn_macro_f1"])["step"]) == [0, 2, 4, 5]


def test_the_run_lock_is_taken_before_the_run_directory_is_read(tiny_store, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text(": not yaml [")  # would fail to parse if it were read
    # another process's run of this directory
    with run_lock(out), pytest.raises(Exception, match="is being written by"):
        pretrain("contrastive_tiny", tiny_store, out, [*BASE, *CASES["contrastive"][1]])
    assert (out / "config.yaml").read_text() == ": not yaml ["


def test_a_truncated_checkpoint_is_named_and_nothing_is_overwritten(tiny_store, tmp_path):
    out = tmp_path / "run"
    overrides = [*BASE, *CASES["contrastive"][1], "train.max_steps=2"]
    pretrain("contrastive_tiny", tiny_store, out, overrides)
    last = out / "checkpoints" / "last.ckpt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])
    config = (out / "config.yaml").read_text()
    with pytest.raises(ValueError, match=r"last\.ckpt.*cannot be resumed from; move it away") as e:
        pretrain("contrastive_tiny", tiny_store, out, [*overrides[:-1], "train.max_steps=4"])
    assert "\n" not in str(e.value)
    assert last.stat().st_size == len(data) // 2 and (out / "config.yaml").read_text() == config


def test_a_full_disk_keeps_the_previous_checkpoint_and_names_the_path(tmp_path, monkeypatch):
    from earthembed.outputs import WriteError
    from earthembed.pretrain.resume import AtomicCheckpointIO

    io = AtomicCheckpointIO()
    target = tmp_path / "checkpoints" / "last.ckpt"
    target.parent.mkdir()
    io.save_checkpoint({"w": torch.ones(3)}, target)
    before = target.read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(WriteError) as e:
        io.save_checkpoint({"w": torch.zeros(3)}, target)
    msg = str(e.value)
    assert e.value.errno == errno.ENOSPC and str(target) in msg and "No space left" in msg
    assert "previous checkpoint is kept" in msg and "\n" not in msg
    assert target.read_bytes() == before and sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]
    monkeypatch.undo()  # space freed: the next write succeeds
    io.save_checkpoint({"w": torch.zeros(3)}, target)
    assert torch.equal(torch.load(target, weights_only=True)["w"], torch.zeros(3))
