"""training.augment.RegisterShift and resample_pitch: octave moves of the
guitar and piano stems in the separator's training crops, band-limited."""

from __future__ import annotations

import numpy as np
import soundfile as sf

from training.augment import RegisterShift, resample_pitch
from training.data import scan
from training.train_separator import STEMS, RemixCrops

SR = 22050


def peak_hz(x):
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.fft.rfftfreq(len(x), 1 / SR)[np.argmax(spectrum)]


def tone(hz, frames):
    return (0.3 * np.sin(2 * np.pi * hz * np.arange(frames) / SR)).astype(np.float32)


def test_only_guitar_and_piano_move_and_only_by_octaves():
    shift = RegisterShift(probability=0.5)
    rng = np.random.default_rng(0)
    draws = {stem: [shift.ratio(stem, rng) for _ in range(2000)] for stem in STEMS}
    assert set(draws["bass"]) == {1.0} and set(draws["drums"]) == {1.0}
    for stem in ("guitar", "piano"):
        values = np.array(draws[stem])
        assert set(values) == {0.5, 1.0, 2.0}
        assert abs(np.mean(values != 1.0) - 0.5) < 0.05          # moved with its probability
        assert abs(np.mean(values == 2.0) - 0.25) < 0.04         # up and down alike
    assert {RegisterShift().ratio("guitar", rng) for _ in range(100)} == {1.0}
    assert RegisterShift().longest_ratio == 1.0 and shift.longest_ratio == 2.0


def test_resample_pitch_moves_a_tone_by_an_octave_and_does_not_alias():
    x = tone(330.0, 40000)
    up, down = resample_pitch(x, 2.0, 16384), resample_pitch(x, 0.5, 16384)
    assert up.shape == down.shape == (16384,) and up.dtype == np.float32
    assert abs(peak_hz(up) - 660.0) < 3 and abs(peak_hz(down) - 165.0) < 3
    # 8 kHz an octave up is 16 kHz, above Nyquist: filtered out, not folded back to 6 kHz.
    high = resample_pitch(tone(8000.0, 40000), 2.0, 16384)
    assert np.sum(high[1000:-1000] ** 2) < 1e-4 * np.sum(x[:14384] ** 2)
    # Too short a source is zero-padded, never longer than asked.
    assert np.all(resample_pitch(x[:4000], 2.0, 16384)[2100:] == 0)
    assert np.array_equal(resample_pitch(x, 1.0, 100), x[:100])


def test_crops_move_guitar_and_piano_registers_and_keep_bass(tmp_path):
    frequencies = {"bass": 110.0, "drums": 1000.0, "guitar": 440.0, "piano": 880.0}
    for t in range(2):
        folder = tmp_path / "train" / f"Track{t:05d}"
        folder.mkdir(parents=True)
        for stem, hz in frequencies.items():
            sf.write(folder / f"{stem}.wav", tone(hz, 60000), SR, subtype="FLOAT")
    tracks = scan(tmp_path / "train", STEMS).tracks
    crops = RemixCrops(tracks, 16384, seed=0, remix=0.0, register=RegisterShift(probability=1.0))
    seen = {"guitar": set(), "piano": set()}
    for i in range(12):
        item = crops[i].numpy()
        assert item.shape == (4, 16384)
        assert abs(peak_hz(item[0]) - 110.0) < 3 and abs(peak_hz(item[1]) - 1000.0) < 3
        for n, stem in ((2, "guitar"), (3, "piano")):
            ratio = peak_hz(item[n]) / frequencies[stem]
            assert min(abs(ratio - 2.0), abs(ratio - 0.5)) < 0.02
            seen[stem].add(round(ratio, 1))
            assert np.sqrt(np.mean(item[n] ** 2)) > 0.01       # a full crop, not a padded stub
    assert seen == {"guitar": {0.5, 2.0}, "piano": {0.5, 2.0}}
    # Off by default: the crops are what they were.
    plain = RemixCrops(tracks, 16384, seed=0, remix=0.0)
    assert abs(peak_hz(plain[0].numpy()[2]) - 440.0) < 3


def test_a_register_probability_outside_0_1_is_a_usage_error(tmp_path, capsys):
    import pytest

    from training.train_separator import main

    with pytest.raises(SystemExit) as stop:
        main(["--data", str(tmp_path), "-o", str(tmp_path / "run"), "--register", "1.5"])
    assert stop.value.code == 2 and "--register" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
