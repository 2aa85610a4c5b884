"""The generation measures on signals whose answers are known: harmonic tones
of a given F0, closed-form Gaussians, chords in agreeing and clashing keys,
click trains in and out of time, and noise shaped like a stem."""

from __future__ import annotations

import numpy as np
import pytest
from support.tones import RATE, harmonic, midi_hz

from training import audio_features as af
from training import generation_metrics as gm


@pytest.mark.parametrize("stem,f0", [("bass", 41.2), ("bass", 98.0), ("guitar", 196.0), ("guitar", 1318.5),
                                     ("piano", 261.6), ("piano", 2000.0)])
def test_periodicity_finds_the_f0_of_a_harmonic_tone(stem, f0):
    p = af.periodicity(harmonic(f0, 1.0), RATE, af.F0_RANGE[stem])
    assert p.active.sum() > 30
    assert p.clarity[p.active][2:-2].min() > 0.95   # the first and last two frames are half empty
    cents = 1200 * np.abs(np.log2(p.f0[p.active] / f0))
    # Parabolic interpolation is off by a few cents at lags of ~17 samples (1.3 kHz);
    # no octave errors or subharmonics anywhere.
    assert np.median(cents) < 10 and cents.max() < 25


def test_noise_has_low_clarity_even_when_shaped_like_a_bass():
    rng = np.random.default_rng(0)
    white = 0.1 * rng.standard_normal(RATE)
    assert gm.pitch_clarity([white], RATE, "bass") < 0.3
    bass = harmonic(98.0, 2.0)
    noise = af.shaped_noise(bass, RATE, rng)
    assert gm.pitch_clarity([bass], RATE, "bass") > 0.95
    assert gm.pitch_clarity([noise], RATE, "bass") < 0.7


def test_shaped_noise_keeps_the_level_and_envelope_but_not_the_notes():
    rng = np.random.default_rng(1)
    t = np.arange(3 * RATE) / RATE
    tone = harmonic(220.0, 3.0) * (0.2 + np.abs(np.sin(2 * np.pi * 0.7 * t)))
    noise = af.shaped_noise(tone, RATE, rng)
    rms_tone, rms_noise = af.frame_rms(tone), af.frame_rms(noise)
    assert np.corrcoef(rms_tone, rms_noise)[0, 1] > 0.95
    assert abs(20 * np.log10(np.sqrt(np.mean(noise ** 2)) / np.sqrt(np.mean(tone ** 2)))) < 1.0
    # Spectral tilt kept: most energy stays below 2 kHz as in the tone.
    power = af.power_spectrogram(noise).mean(0)
    freqs = np.fft.rfftfreq(af.N_FFT, 1 / RATE)
    assert power[freqs < 2000].sum() / power.sum() > 0.9
    # Notes gone: spectral flatness in the tone's octaves rises by orders of magnitude.
    assert (af.band_flatness(noise, RATE).mean(0)[1:3] - af.band_flatness(tone, RATE).mean(0)[1:3]).min() > 1.0


def test_frechet_distance_matches_the_closed_form():
    mu_a, mu_b = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.0])
    sd_a, sd_b = np.array([1.0, 2.0, 0.5]), np.array([2.0, 2.0, 1.5])
    a, b = gm.Gaussian(mu_a, np.diag(sd_a ** 2)), gm.Gaussian(mu_b, np.diag(sd_b ** 2))
    # Diagonal covariances commute: FD = |mu_a - mu_b|^2 + sum (sd_a - sd_b)^2.
    assert gm.frechet_distance(a, b) == pytest.approx(5.0 + 1.0 + 0.0 + 1.0, rel=1e-9)
    rotation = np.linalg.qr(np.random.default_rng(0).standard_normal((3, 3)))[0]
    c = gm.Gaussian(rotation @ mu_a, rotation @ np.diag(sd_a ** 2) @ rotation.T)
    d = gm.Gaussian(rotation @ mu_b, rotation @ np.diag(sd_b ** 2) @ rotation.T)
    assert gm.frechet_distance(c, d) == pytest.approx(7.0, rel=1e-7)   # invariant to a rotation
    assert gm.frechet_distance(c, c) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="frames >= 2"):
        gm.Gaussian.fit(np.zeros((1, 3)))


def test_distance_scale_maps_real_to_zero_and_noise_to_one():
    scale = gm.DistanceScale(np.array([9.0, 11.0]), np.array([29.0, 31.0]))
    assert scale.normalise(10.0) == 0.0 and scale.normalise(30.0) == 1.0 and scale.normalise(50.0) == 2.0
    assert scale.resolution == pytest.approx(0.05) and scale.separation == pytest.approx(10.0)
    assert scale.readable


def test_distance_scale_is_unreadable_when_noise_is_not_farther_than_real():
    # Two halves with different drum kits: real draws farther from the reference than
    # shaped noise (the reserved 12-track set's drums): the scale turns over.
    inverted = gm.DistanceScale(np.array([80.0, 86.0]), np.array([35.0, 37.0]))
    assert inverted.separation > 1 and not inverted.readable
    overlapping = gm.DistanceScale(np.array([10.0, 20.0]), np.array([15.0, 25.0]))   # spreads 0.5 + 0.5
    assert overlapping.noise.mean() > overlapping.real.mean() and not overlapping.readable


def test_pitch_agreement_of_a_reconstruction():
    notes = np.concatenate([harmonic(midi_hz(n), 0.5, partials=5) for n in (40, 43, 47, 45)])   # a bass line
    same = gm.pitch_agreement(notes, notes, RATE, "bass")
    assert same.f0_within_50_cents == 1.0 and same.chroma_correlation == pytest.approx(1.0)
    assert same.frames > 50
    detuned = np.concatenate([harmonic(midi_hz(n + 0.2), 0.5, partials=5) for n in (40, 43, 47, 45)])
    assert gm.pitch_agreement(detuned, notes, RATE, "bass").f0_within_50_cents > 0.95   # 20 cents: kept
    wrong = np.concatenate([harmonic(midi_hz(n + 1), 0.5, partials=5) for n in (40, 43, 47, 45)])
    off = gm.pitch_agreement(wrong, notes, RATE, "bass")
    assert off.f0_within_50_cents < 0.05 and off.chroma_correlation < 0.5   # a semitone off: lost
    noise = af.shaped_noise(notes, RATE, np.random.default_rng(0))
    assert gm.pitch_agreement(noise, notes, RATE, "bass").f0_within_50_cents < 0.2
    with pytest.raises(ValueError, match="length"):
        gm.pitch_agreement(notes[:-1], notes, RATE, "bass")


def _chord(root: int, seconds: float = 3.0) -> np.ndarray:
    return sum(harmonic(midi_hz(root + i), seconds, partials=4, amplitude=0.1) for i in (0, 4, 7))


def test_chroma_agreement_hears_the_key():
    c_major_piano = _chord(60)
    c_bass, f_sharp_bass = harmonic(midi_hz(36), 3.0), harmonic(midi_hz(42), 3.0)
    assert gm.chroma_agreement(c_bass, c_major_piano, RATE) > 0.5
    assert gm.chroma_agreement(f_sharp_bass, c_major_piano, RATE) < 0.0


def _clicks(times: list[float], seconds: float = 3.0) -> np.ndarray:
    out = np.zeros(int(seconds * RATE))
    burst = np.random.default_rng(0).standard_normal(400) * np.exp(-np.arange(400) / 80)
    for t in times:
        out[int(t * RATE):int(t * RATE) + 400] += burst
    return out


def test_onset_agreement_hears_the_beat():
    beat = [0.25 + 0.5 * k for k in range(6)]
    given = _clicks(beat)
    assert gm.onset_agreement(_clicks([t + 0.01 for t in beat]), given, RATE) > 0.8   # 10 ms late: tolerated
    assert gm.onset_agreement(_clicks([t + 0.25 for t in beat[:-1]]), given, RATE) < 0.1  # off the beat


def test_agreement_scale_is_one_for_the_truth_and_zero_for_other_tracks():
    roots = [36, 41, 43, 38]
    truth = [harmonic(midi_hz(r), 3.0) for r in roots]
    given = [_chord(r + 24) for r in roots]
    tracks = [0, 1, 2, 3]
    scale = gm.agreement_scale("chroma", truth, given, tracks, RATE)
    assert scale.normalise(gm.mean_agreement("chroma", truth, given, RATE)) == pytest.approx(1.0)
    # Every window scored against every other track's stem: exactly the chance level.
    others = [gm.AGREEMENTS["chroma"](truth[v], given[w], RATE) for w in range(4) for v in range(4) if v != w]
    assert scale.normalise(float(np.mean(others))) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="two tracks"):
        gm.agreement_scale("chroma", truth, given, [0, 0, 0, 0], RATE)


def test_bad_signals_are_refused():
    with pytest.raises(ValueError, match="NaN"):
        af.log_mel(np.array([0.0, np.nan] * 2000), RATE)
    with pytest.raises(ValueError, match="mono"):
        af.log_mel(np.zeros((2, 4000)), RATE)
