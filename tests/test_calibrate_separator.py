"""training.calibrate_separator: the mask temperature is softmax(logits / T),
the stems still sum to the mix, and the calibration keeps the temperature that
scores best on the VALID sets it is given."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from engine.storage.model import MSDMModel
from training import calibrate_separator
from training.calibrate_separator import with_temperature

from test_train_separator import make_dataset


def test_temperature_rescales_the_log_masks_and_keeps_the_sum(tiny_packed_path):
    separator = MSDMModel.load(tiny_packed_path).separator
    torch.nn.init.normal_(separator.decoder[-1].weight, std=0.5)   # confident masks, so T matters
    spec = separator.stft(0.3 * torch.randn(2, 6000))
    with torch.no_grad():
        sharp = with_temperature(separator, 1.0).masks(spec)
        soft = with_temperature(separator, 2.0).masks(spec)
        mix = 0.3 * torch.randn(2, 6000)
        stems = with_temperature(separator, 2.0)(mix)
    # softmax(z / 2) = softmax(log softmax(z) / 2): the same masks from the T = 1 ones.
    torch.testing.assert_close(soft, torch.softmax(sharp.log() / 2.0, dim=1), atol=1e-5, rtol=1e-4)
    assert float((soft - 0.25).abs().mean()) < float((sharp - 0.25).abs().mean())
    torch.testing.assert_close(stems.sum(1), mix, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="mask_temperature"):
        with_temperature(separator, 0.0)


def test_calibration_writes_the_best_temperature(tmp_path, tiny_packed_path):
    make_dataset(tmp_path / "data", np.random.default_rng(0))
    out, table = tmp_path / "calibrated.safetensors", tmp_path / "t.csv"
    assert calibrate_separator.main(["--model", str(tiny_packed_path), "--data", str(tmp_path / "data"),
                                     "--tracks", "1", "--temperatures", "0.5", "1", "3", "-o", str(out),
                                     "--csv", str(table), "--threads", "1"]) == 0
    with open(table, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [float(r["temperature"]) for r in rows] == [0.5, 1.0, 3.0]
    best = max(rows, key=lambda r: float(r["mean"]))
    calibrated = MSDMModel.load(out)
    assert calibrated.separator.config.mask_temperature == float(best["temperature"])
    assert "mask temperature" in calibrated.source
    # Same weights: only the temperature changed.
    original = MSDMModel.load(tiny_packed_path).separator.state_dict()
    for key, value in calibrated.separator.state_dict().items():
        torch.testing.assert_close(value, original[key], rtol=0, atol=0)
    with pytest.raises(SystemExit):
        calibrate_separator.main(["--model", str(tiny_packed_path), "--data", str(tmp_path / "nothing"),
                                  "-o", str(out)])
    with pytest.raises(SystemExit, match="no VALID tracks"):   # a monitor set that is not there
        calibrate_separator.main(["--model", str(tiny_packed_path), "--data", str(tmp_path / "data"),
                                  "--monitor-data", str(tmp_path / "nothing"), "-o", str(out)])
    with pytest.raises(SystemExit, match="not found"):
        calibrate_separator.main(["--model", str(tmp_path / "missing.safetensors"), "--data",
                                  str(tmp_path / "data"), "-o", str(out)])


def test_the_monitor_bounds_what_the_held_out_sets_may_choose():
    rows = [{"temperature": 1.0, "mean": 7.0, "monitor All": 13.0},
            {"temperature": 1.4, "mean": 7.2, "monitor All": 12.9},
            {"temperature": 1.8, "mean": 7.3, "monitor All": 12.7}]
    assert calibrate_separator.choose(rows, max_drop=0.15)["temperature"] == 1.4
    assert calibrate_separator.choose(rows, max_drop=0.5)["temperature"] == 1.8
    assert calibrate_separator.choose(rows, max_drop=0.0)["temperature"] == 1.0
    assert calibrate_separator.choose([{k: v for k, v in r.items() if k != "monitor All"} for r in rows],
                                      max_drop=0.0)["temperature"] == 1.8
    with pytest.raises(SystemExit, match="must include 1"):
        calibrate_separator.choose(rows[1:], max_drop=0.15)
