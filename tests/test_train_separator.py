"""training.train_separator and training.pack_model on a small dataset of
random stems: it learns, scores the valid split with the paper's protocol,
resumes where it stopped, and its weights go into a model file."""

from __future__ import annotations

import csv

import numpy as np
import soundfile as sf
import torch

from engine.storage.model import MSDMModel
from training import pack_model, train_separator

STEMS = ("bass", "drums", "guitar", "piano")
TINY = ["--n-fft", "256", "--hop", "64", "--hidden", "16", "--layers", "1", "--crop", "8192", "--batch", "2",
        "--threads", "1", "--valid-tracks", "1"]


def make_dataset(root, rng):
    """Stems with different spectra (so there is something to learn)."""
    lengths = {"train": [30000, 40000], "valid": [262144 + 500]}
    for split, sizes in lengths.items():
        for t, frames in enumerate(sizes):
            folder = root / split / f"Track{t:05d}"
            folder.mkdir(parents=True)
            white = rng.standard_normal((4, frames))
            colours = [np.cumsum(white[0]) * 0.01, white[1] * (rng.random(frames) < 0.01),
                       np.diff(white[2], prepend=0), white[3]]
            for stem, audio in zip(STEMS, colours):
                audio = 0.05 * audio / (np.abs(audio).max() + 1e-9)
                sf.write(folder / f"{stem}.wav", audio.astype(np.float32), 22050, subtype="FLOAT")


def test_training_scores_resumes_and_packs(tmp_path, tiny_model_path):
    make_dataset(tmp_path / "data", np.random.default_rng(0))
    run = tmp_path / "run"
    args = ["--data", str(tmp_path / "data"), "-o", str(run), *TINY, "--valid-every", "5"]
    assert train_separator.main([*args, "--minutes", "0.05"]) == 0
    with open(run / "log.csv", newline="") as handle:
        first = list(csv.DictReader(handle))
    assert first and all(np.isfinite(float(r["All"])) for r in first)
    steps = int(first[-1]["step"])
    # A second call resumes from RUN/last.pt: the step count goes on, the log grows.
    assert train_separator.main([*args, "--minutes", "0.1"]) == 0
    with open(run / "log.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) > len(first) and int(rows[-1]["step"]) > steps
    # The last weights are kept beside the best: the same network as last.pt's.
    last = train_separator.initial_separator(run / "last.safetensors")
    state = torch.load(run / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(last.state_dict()[k], v) for k, v in state.items())
    # The best weights go into a model file with the prior; it separates.
    out = tmp_path / "packed.safetensors"
    pack_model.main(["--prior", str(tiny_model_path), "--separator", str(run / "best.safetensors"), "-o", str(out)])
    model = MSDMModel.load(out)
    assert model.separator is not None and model.separator.config.n_fft == 256
    assert "first-guess separator" in model.source
    # A new run can start from the separator inside a model file (--init): its first
    # score is the packed separator's, not a random network's.
    best = max(float(r["All"]) for r in rows)
    again = tmp_path / "again"
    assert train_separator.main(["--data", str(tmp_path / "data"), "-o", str(again), *TINY, "--valid-every", "1",
                                 "--minutes", "0.01", "--lr", "1e-9", "--init", str(out)]) == 0
    with open(again / "log.csv", newline="") as handle:
        first = next(csv.DictReader(handle))
    assert abs(float(first["All"]) - best) < 0.05, (first, best)


def test_monitor_set_is_logged_and_its_floor_holds_back_best(tmp_path):
    make_dataset(tmp_path / "data", np.random.default_rng(1))
    data = str(tmp_path / "data")
    common = ["--data", data, "--monitor-data", data, *TINY, "--valid-every", "2", "--minutes", "0.03"]
    assert train_separator.main([*common, "-o", str(tmp_path / "free")]) == 0
    with open(tmp_path / "free" / "log.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    # The monitor set is the valid set here: the same scores, in their own columns.
    assert rows and all(float(r["monitor_All"]) == float(r["All"]) for r in rows)
    assert (tmp_path / "free" / "best.safetensors").is_file()
    # A floor no score reaches: nothing is kept as best, though training ran and logged.
    assert train_separator.main([*common, "-o", str(tmp_path / "floor"), "--monitor-min", "1000"]) == 0
    assert (tmp_path / "floor" / "log.csv").is_file()
    assert not (tmp_path / "floor" / "best.safetensors").exists()


def test_resume_takes_the_shape_saved_in_last_pt_not_the_flags(tmp_path):
    make_dataset(tmp_path / "data", np.random.default_rng(2))
    run = tmp_path / "run"
    args = ["--data", str(tmp_path / "data"), "-o", str(run), *TINY, "--valid-every", "2"]
    assert train_separator.main([*args, "--minutes", "0.02"]) == 0
    with open(run / "log.csv", newline="") as handle:
        steps = int(list(csv.DictReader(handle))[-1]["step"])
    # Other shape flags on the second call (a widened run resumed without --init --widen
    # was the case that broke): the run goes on with the network it saved.
    assert train_separator.main([*args, "--hidden", "32", "--minutes", "0.04"]) == 0
    with open(run / "log.csv", newline="") as handle:
        assert int(list(csv.DictReader(handle))[-1]["step"]) > steps
    assert train_separator.initial_separator(run / "best.safetensors").config.hidden == 16


def test_several_valid_sets_are_scored_together(tmp_path):
    make_dataset(tmp_path / "a", np.random.default_rng(3))
    make_dataset(tmp_path / "b", np.random.default_rng(4))
    # lr ~0: every run scores the same (initial) network, whatever step its clock stops at.
    common = ["--data", str(tmp_path / "a"), *TINY, "--valid-every", "2", "--minutes", "0.005", "--lr", "1e-9"]

    def first_row(name, *valid):
        assert train_separator.main([*common, "-o", str(tmp_path / name), "--valid-data", *map(str, valid)]) == 0
        with open(tmp_path / name / "log.csv", newline="") as handle:
            return next(csv.DictReader(handle))

    a, b = first_row("a", tmp_path / "a"), first_row("b", tmp_path / "b")
    both = first_row("ab", tmp_path / "a", tmp_path / "b")
    # The same network (same seed), scored on the chunks of both sets: one valid track
    # of equal length each, so the joint score is the mean of the two.
    for stem in ("bass", "drums", "guitar", "piano", "All"):
        assert abs(float(both[stem]) - (float(a[stem]) + float(b[stem])) / 2) < 1e-3, stem


def test_a_bad_shape_flag_is_a_usage_error_before_any_work(tmp_path):
    import pytest

    make_dataset(tmp_path / "data", np.random.default_rng(5))
    with pytest.raises(SystemExit) as exit_info:
        train_separator.main(["--data", str(tmp_path / "data"), "-o", str(tmp_path / "run"), *TINY, "--refine", "-3"])
    assert exit_info.value.code == 2 and not (tmp_path / "run").exists()
