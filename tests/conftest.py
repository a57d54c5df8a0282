"""Shared fixtures: offline hub, the real samples in ../shared/data, a tiny multimodal store."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("EARTHEMBED_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data; in CI its absence is a failure, elsewhere the test is skipped with the reason."""
    if not (SHARED_DATA / "README.md").exists():
        if os.environ.get("CI"):
            pytest.fail(f"real data samples are required in CI but {SHARED_DATA} is missing")
        pytest.skip(f"real data samples not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory):
    """20 chips of 16x16 with s2 (13 bands) + s1 (2 bands, missing on every 4th chip), class + fraction labels.

    Water on even chips; splits train/val/test/train/train repeat every 5 chips, so the test split
    (chips 2, 7, 12, 17) has both classes and a constant classifier cannot score 1.
    """
    import shapely

    from earthembed.data.modalities import get_modality
    from earthembed.data.store import ChipRecord, StoreWriter

    path = tmp_path_factory.mktemp("stores") / "tiny"
    rng = np.random.default_rng(0)
    schema = {
        "label": {"kind": "class", "classes": ["water", "forest"]},
        "frac_water": {"kind": "fraction"},
    }
    with StoreWriter(path, [get_modality("s2_l1c"), get_modality("s1_grd_db")], 16, schema, batch_size=8) as w:
        for i in range(20):
            water = i % 2 == 0
            base = 300 if water else 2500
            s2 = rng.normal(base, 50, (13, 16, 16)).clip(1, 10000).astype("uint16")
            arrays = {"s2": s2}
            if i % 4 != 3:
                arrays["s1"] = rng.normal(-20 if water else -8, 1, (2, 16, 16)).astype("float32")
            w.add(
                ChipRecord(
                    f"chip{i:03d}",
                    arrays,
                    geometry=shapely.box(i, 0, i + 1, 1),
                    crs="EPSG:4326",
                    aoi="tiny",
                    # period 5 against the class period 2: train, val and test each hold both classes
                    split=["train", "val", "test", "train", "train"][i % 5],
                    labels={"label": "water" if water else "forest", "frac_water": 0.9 if water else 0.1},
                )
            )
    return path
