"""A time series through the data contract (issue 22): a store's series read as one observation ``[B, T, C, H, W]``
(:class:`~earthembed.data.date_views.SeriesView`) and Galileo taking its dates from the observation's time axis
embed exactly as the same dates fed as separate store keys at their timesteps."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from earthembed.contract import ChipBatch, ContractError
from earthembed.data.dataset import ChipDataset
from earthembed.data.date_views import SeriesView
from earthembed.data.modalities import get_modality
from earthembed.data.normalize import Normalizer
from earthembed.data.store import ChipRecord, ChipStore, StoreWriter
from test_galileo import NANO, WEIGHTS

pytestmark = [pytest.mark.skipif(not (WEIGHTS / "encoder.pt").exists(), reason="no Galileo-nano weights here"),
              pytest.mark.filterwarnings("ignore:galileo.nano. store bands")]

KEYS = ("s2", "s2_t2", "s2_t3")
DATES = {"s2": "2021-05-03", "s2_t2": "2022-08-10", "s2_t3": "2023-01-20"}


@pytest.fixture(scope="module")
def nano():
    from earthembed.models.published.galileo import open_galileo

    return open_galileo(NANO, WEIGHTS)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """6 chips of 16 px: S2 at 3 dates (chip 1 lacks the 2nd, chip 4 the 1st and chip 5 has only the 3rd, on a
    date of its own) and elevation on every chip."""
    s2, dem = get_modality("s2_l2a"), get_modality("elevation")
    rng = np.random.default_rng(0)
    held = {0: KEYS, 1: ("s2", "s2_t3"), 2: KEYS, 3: KEYS, 4: ("s2_t2", "s2_t3"), 5: ("s2_t3",)}
    path = tmp_path_factory.mktemp("series") / "st"
    with StoreWriter(path, [*(s2.renamed(k) for k in KEYS), dem.renamed("dem")], chip_size=16) as w:
        for i, keys in held.items():
            arrays = {k: rng.integers(200, 4000, (12, 16, 16)).astype(np.uint16) for k in keys}
            arrays["dem"] = rng.normal(300, 40, (1, 16, 16)).astype(np.float32)
            dates = {k: DATES[k] for k in keys} | ({"s2_t3": "2023-03-02"} if i == 5 else {})
            w.add(ChipRecord(chip_id=f"c{i}", arrays=arrays, dates=dates))
    return ChipStore(path)


def _read(view_or_ds, n):
    return view_or_ds.read_batch(np.arange(n))


def test_a_series_observation_embeds_as_its_dates_fed_as_store_keys(nano, store):
    from earthembed.models.published.galileo import fit_galileo

    keyed, kmeta = fit_galileo(nano, store, patch_size=4)
    series, smeta = fit_galileo(nano, store, patch_size=4, series=True)
    assert keyed.timesteps == {"s2": 0, "s2_t2": 1, "s2_t3": 2, "dem": 0}
    assert series.timesteps == {"s2": [0, 1, 2], "dem": 0} and series.input_dates == {"s2": 3, "dem": 1}
    assert smeta["published"]["series"] == {"s2": list(KEYS)}
    assert smeta["input_spec"]["modalities"]["s2"]["dates"] == 3
    assert smeta["model_id"] == kmeta["model_id"]  # the same weights and settings: the same vectors (below)

    ds = ChipDataset(store, {k: list(v) for k, v in keyed.modalities.items()},
                     normalizer=Normalizer.from_dict(kmeta["normalization"]))
    view = SeriesView(store, {k: list(v) for k, v in series.modalities.items()},
                      Normalizer.from_dict(smeta["normalization"]), smeta["published"]["series"])
    b_keys, b_series = _read(ds, len(store)), _read(view, len(store))
    obs = b_series.obs["s2"]
    assert tuple(obs.x.shape) == (6, 3, 10, 16, 16) and obs.num_dates == 3 and b_series.obs["dem"].num_dates == 1
    for t, k in enumerate(KEYS):  # date t of the observation is key t as read alone
        assert torch.equal(obs.x[:, t], b_keys.pixels(k)) and torch.equal(obs.present[:, t], b_keys.present(k))
        assert torch.equal(obs.month[:, t], b_keys.month(k)) and torch.equal(obs.dates[:, t], b_keys.obs[k].dates[:, 0])
    assert obs.present.tolist()[1] == [True, False, True] and obs.month[5, 2] == 2  # chip 5: its own date, March

    with torch.no_grad():
        a, b = keyed(b_keys), series(b_series)
        ta, tb = keyed.encode(b_keys)[0], series.encode(b_series)[0]
    assert torch.equal(a.fused, b.fused)
    assert torch.equal(ta.space_time, tb.space_time) and torch.equal(ta.space_time_hidden, tb.space_time_hidden)
    assert torch.equal(a.modality["dem"], b.modality["dem"])
    # the series' own embedding is the mean of its tokens at every date; present where any date is
    assert b.present["s2"].tolist() == [True] * 6 and not torch.equal(b.modality["s2"], a.modality["s2"])
    with torch.no_grad():
        fa = keyed.forward_features(b_keys)["dem"][0]
        fb = series.forward_features(b_series)["dem"][0]
    assert torch.equal(fa, fb)


def test_a_series_model_refuses_one_date_and_dict_batches_and_round_trips(nano, store, tmp_path):
    from earthembed.models.export import export_model, load_model
    from earthembed.models.galileo import GalileoEncoder
    from earthembed.models.published.galileo import fit_galileo

    series, smeta = fit_galileo(nano, store, patch_size=4, series=True)
    norm = Normalizer.from_dict(smeta["normalization"])
    one_date = ChipDataset(store, {k: list(v) for k, v in series.modalities.items()}, normalizer=norm)
    batch = _read(one_date, 3)
    with pytest.raises(ContractError, match="'s2' has 1 date\\(s\\); this model reads 3 dates of it"):
        series(batch)
    with pytest.raises(ContractError, match="a dict batch holds one date"):
        series({k: v for k, v in batch.items()})
    out = export_model(series, tmp_path / "g", norm, products=smeta["products"])
    meta = json.loads((out / "model.json").read_text())
    assert meta["config"]["timesteps"] == {"s2": [0, 1, 2], "dem": 0}
    assert meta["input_spec"]["modalities"]["s2"]["dates"] == 3 and meta["input_spec"]["modalities"]["dem"]["dates"] == 1
    again, _ = load_model(out)
    view = SeriesView(store, {k: list(v) for k, v in series.modalities.items()}, norm, {"s2": KEYS})
    b = _read(view, len(store))
    with torch.no_grad():
        assert torch.equal(again(b).fused, series(b).fused)
    bands = list(series.modalities["s2"])
    with pytest.raises(ValueError, match="timesteps of 's2' must be a date index or a list of distinct ones"):
        GalileoEncoder({"s2": bands}, timesteps={"s2": [0, 0]})
    with pytest.raises(ValueError, match="two dates of modality 's2'|must lie in"):
        GalileoEncoder({"s2": bands}, timesteps={"s2": [0, 24]})
    with pytest.raises(ValueError, match="feeds elevation, which has no dates"):
        GalileoEncoder({"dem": ["elevation"]}, timesteps={"dem": [0, 1]})
    with pytest.raises(ValueError, match="not among the modalities read"):
        SeriesView(store, {"dem": ["elevation"]}, norm, {"s2": KEYS})
    assert isinstance(b, ChipBatch)
