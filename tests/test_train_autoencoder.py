"""training.train_autoencoder on small random stems: a run from scratch, then
one continued from its file on other data (--init FILE) whose log starts
with the file's own score on the new VALID crops and whose network keeps
the file's shape; VALID crops shared among several datasets."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from tests.test_train_separator import make_dataset
from training import train_autoencoder
from training.data import scan

TINY = ["--n-fft", "256", "--hop", "64", "--hidden", "16", "--blocks", "1", "--latent-channels", "8",
        "--crop", "8192", "--batch", "2", "--threads", "1", "--valid-items", "4", "--valid-every", "3"]


def read_log(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_valid_crops_are_shared_among_datasets_first_ones_take_the_remainder(tmp_path):
    make_dataset(tmp_path / "a", np.random.default_rng(0))
    make_dataset(tmp_path / "b", np.random.default_rng(1))
    crops = train_autoencoder.valid_items([tmp_path / "a", tmp_path / "b"], 8192, 5)
    assert crops.shape == (5, 8192)
    own_a = train_autoencoder.StemCrops(scan(tmp_path / "a" / "valid", train_autoencoder.STEMS).tracks, 8192, 12345)
    own_b = train_autoencoder.StemCrops(scan(tmp_path / "b" / "valid", train_autoencoder.STEMS).tracks, 8192, 12345)
    for i in range(3):
        torch.testing.assert_close(crops[i], own_a[i])
    for i in range(2):
        torch.testing.assert_close(crops[3 + i], own_b[i])
    assert not torch.equal(crops[0], crops[3])


def test_a_run_continued_from_a_file_starts_from_its_score_and_keeps_its_shape(tmp_path):
    make_dataset(tmp_path / "a", np.random.default_rng(0))
    make_dataset(tmp_path / "b", np.random.default_rng(1))
    first = tmp_path / "first"
    assert train_autoencoder.main(["--data", str(tmp_path / "a"), "-o", str(first), "--init", "random", *TINY,
                                   "--minutes", "0.03"]) == 0
    start_model, _ = train_autoencoder.load_autoencoder(first / "best.safetensors")

    second = tmp_path / "second"
    # Shape flags differ from the file's: the file's config wins (a prior over its latents must still fit).
    args = ["--data", str(tmp_path / "b"), "--valid-data", str(tmp_path / "a"), str(tmp_path / "b"),
            "-o", str(second), *TINY, "--hidden", "32", "--init", str(first / "best.safetensors")]
    assert train_autoencoder.main([*args, "--minutes", "0.03"]) == 0
    rows = read_log(second / "log.csv")
    assert rows[0]["step"] == "0" and int(rows[-1]["step"]) > 0
    valid = start_model.log_magnitude(train_autoencoder.valid_items([tmp_path / "a", tmp_path / "b"], 8192, 4))
    with torch.no_grad():
        expected, _ = train_autoencoder.reconstruction_loss(start_model, valid)
    assert float(rows[0]["valid_loss"]) == pytest.approx(float(expected), abs=1e-4)
    state = torch.load(second / "last.pt", weights_only=True)["model"]
    assert all(state[k].shape == v.shape for k, v in start_model.state_dict().items())
    assert not all(torch.equal(state[k], v) for k, v in start_model.state_dict().items())  # it trained
    # Only weights that beat the start are kept as best.
    best_rows = [float(r["valid_loss"]) for r in rows[1:]]
    assert (second / "best.safetensors").is_file() == (min(best_rows) < float(rows[0]["valid_loss"]))
    # Resuming does not write the start row again.
    assert train_autoencoder.main([*args, "--minutes", "0.05"]) == 0
    assert [r["step"] for r in read_log(second / "log.csv")].count("0") == 1


def test_an_init_that_is_neither_a_method_nor_a_file_is_a_usage_error(tmp_path, capsys):
    make_dataset(tmp_path / "a", np.random.default_rng(0))
    with pytest.raises(SystemExit) as stop:
        train_autoencoder.main(["--data", str(tmp_path / "a"), "-o", str(tmp_path / "run"), *TINY, "--init", "pcaa"])
    assert stop.value.code == 2 and "--init" in capsys.readouterr().err
    assert not (tmp_path / "run" / "log.csv").exists()
