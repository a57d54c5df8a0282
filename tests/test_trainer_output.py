"""What a user sees while pretraining: steps / max_steps progress, no third-party banners."""

from __future__ import annotations

import logging

from earthembed.pretrain.run import pretrain
from earthembed.trainer_output import quiet_lightning

FAST = ["data.batch_size=8", "data.crop_size=16", "model.embed_dim=32", "model.depth=1", "train.log_every_n_steps=1",
        "train.warmup_steps=0", "data.splits=all", "objective_args.proj_dim=16"]


def test_pretrain_shows_steps_not_epochs_and_no_lightning_banners(tiny_store, tmp_path, capfd, caplog):
    caplog.set_level(logging.INFO)
    pretrain("contrastive_tiny", tiny_store, tmp_path / "run", FAST + ["train.max_steps=4"])
    out, err = capfd.readouterr()
    text = out + err + caplog.text
    # not a terminal here: plain lines, the last one at 100% of max_steps (not "Epoch 3/-2")
    assert "pretrain contrastive: 100% (4/4 step)" in err
    assert "Epoch" not in text and "/-2" not in text
    for noise in ("GPU available", "TPU available", "litlogger", "LeafSpec", "Trainer.fit", "logging interval"):
        assert noise not in text, noise
    assert "learning rate" in text  # earthembed's own notes still reach the user

    # resuming to a larger max_steps counts the remaining steps, and --quiet (progress_bar=false) is silent
    pretrain("contrastive_tiny", tiny_store, tmp_path / "run", FAST + ["train.max_steps=6"])
    assert "pretrain contrastive (resumed at step 4): 100% (2/2 step)" in capfd.readouterr().err
    pretrain("contrastive_tiny", tiny_store, tmp_path / "run", FAST + ["train.max_steps=7", "train.progress_bar=false"])
    assert "pretrain contrastive" not in capfd.readouterr().err


def test_quiet_lightning_keeps_other_messages(caplog):
    from lightning.pytorch.utilities import rank_zero_info

    quiet_lightning()
    quiet_lightning()  # idempotent
    caplog.set_level(logging.INFO)
    rank_zero_info("GPU available: False, used: False")
    rank_zero_info("a message that matters")
    assert "GPU available" not in caplog.text and "a message that matters" in caplog.text
    assert len(logging.getLogger("lightning.pytorch.utilities.rank_zero").filters) == 1


def test_cli_help_loads_no_heavy_library():
    """`earthembed --help` builds every command without importing numpy, torch, zarr, pandas or rasterio (the
    time it takes is a benchmark, not a test: benchmarks/README.md)."""
    import subprocess
    import sys

    code = ("import sys, earthembed.cli\nfrom typer.main import get_command\nget_command(earthembed.cli.app)\n"
            "print(','.join(m for m in ('numpy', 'torch', 'zarr', 'pandas', 'rasterio', 'lightning', 'sklearn', 'rich')"
            " if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""
