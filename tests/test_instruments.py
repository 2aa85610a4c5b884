"""The synthesised instruments and effects (training.synth.instruments):
determinism, tuning of every pitched family, silence outside notes and
releases, drums hitting where and as loud as asked, an effect chain that
keeps length, bounds and a decaying reverb tail."""

from __future__ import annotations

import json

import numpy as np
import pytest

from training.synth.corpus import MidiNote
from training.synth.instruments import (FAMILIES, HOLDOUT_FAMILIES, HOLDOUT_KITS, TRAIN_KITS, apply_effects,
                                        choose_family, draw_effects, draw_kit, draw_voice, pitched_families,
                                        render_drums, render_pitched, render_stem_synth)
from training.synth.instruments.effects import CHANCES, apply_reverb, reverb_impulse_response

SR = 22050
FAMILY_STEMS = [(family, stem) for family, spec in FAMILIES.items() for stem in spec.stems]
TEST_PITCH = {"bass": (40, 52), "guitar": (57, 69), "piano": (60, 76)}


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _part(stem: str) -> list[MidiNote]:
    base = TEST_PITCH[stem][0] if stem != "drums" else 0
    if stem == "drums":
        return [MidiNote(9, key, 0.1 + 0.15 * i, 0.3 + 0.15 * i, 100) for i, key in enumerate([36, 42, 38, 46, 49, 45])]
    return [MidiNote(0, base, 0.1, 0.6, 90), MidiNote(1, base + 4, 0.3, 0.9, 70), MidiNote(0, base + 7, 0.7, 1.2, 110)]


def yin_f0(x: np.ndarray, sample_rate: int, fmin: float = 30.0, fmax: float = 2000.0, threshold: float = 0.1) -> float:
    """YIN (de Cheveigne & Kawahara 2002): the first lag whose cumulative-mean-
    normalised difference dips under ``threshold`` (else the global minimum),
    refined by a parabola."""
    x = np.asarray(x, np.float64)
    max_lag = int(sample_rate / fmin) + 1
    width = len(x) - max_lag
    assert width > max_lag, "the analysis window is too short for fmin"
    frame = x[:width]
    # d(tau) = sum (x_j - x_{j+tau})^2 over the frame, via cumulative energies and an FFT correlation.
    energy = np.concatenate([[0.0], np.cumsum(x ** 2)])
    size = 1 << int(np.ceil(np.log2(len(x) + width)))
    corr = np.fft.irfft(np.fft.rfft(x, size) * np.conj(np.fft.rfft(frame, size)), size)[:max_lag + 1]
    lags = np.arange(max_lag + 1)
    diff = energy[width] + (energy[lags + width] - energy[lags]) - 2 * corr
    cmnd = np.ones_like(diff)
    cmnd[1:] = diff[1:] * lags[1:] / np.maximum(np.cumsum(diff[1:]), 1e-300)
    low = int(sample_rate / fmax)
    below = np.flatnonzero(cmnd[low:max_lag] < threshold)
    if below.size:
        tau = low + below[0]
        while tau + 1 < max_lag and cmnd[tau + 1] < cmnd[tau]:
            tau += 1
    else:
        tau = low + int(np.argmin(cmnd[low:max_lag]))
    a, b, c = cmnd[tau - 1], cmnd[tau], cmnd[tau + 1]
    shift = 0.5 * (a - c) / (a - 2 * b + c) if a - 2 * b + c > 0 else 0.0
    return sample_rate / (tau + shift)


def harmonic_f0(x: np.ndarray, sample_rate: int, near: float, harmonics: int = 8) -> float:
    """Refine an F0 estimate to the frequency, within a semitone of ``near``,
    that maximises the summed spectral magnitude at its first harmonics (a
    long window: a detuned unison reads as the centre of its cluster)."""
    n = 1 << 18
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x)), n))
    candidates = near * 2 ** (np.linspace(-100, 100, 801) / 1200)
    bins = np.outer(candidates, np.arange(1, harmonics + 1)) * n / sample_rate
    bins = bins[:, bins[0] < len(spectrum) - 1] if bins.shape[1] else bins
    score = np.interp(bins, np.arange(len(spectrum)), spectrum).sum(axis=1)
    return float(candidates[int(np.argmax(score))])


def strongest_peak_hz(x: np.ndarray, sample_rate: int) -> float:
    """The frequency of the largest spectral peak (Hann window, parabolic on log magnitude)."""
    n = 1 << 16
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x)), n)) + 1e-30
    k = int(np.argmax(spectrum[1:-1])) + 1
    a, b, c = np.log(spectrum[k - 1:k + 2])
    return (k + 0.5 * (a - c) / (a - 2 * b + c)) * sample_rate / n


def _cents(measured: float, pitch: int) -> float:
    return 1200 * np.log2(measured / (440 * 2 ** ((pitch - 69) / 12)))


# --- pitched families ------------------------------------------------------------------------------------------


def test_holdout_families_are_never_offered_for_training():
    for stem in ("bass", "guitar", "piano"):
        assert not set(pitched_families(stem)) & set(HOLDOUT_FAMILIES)
        assert set(pitched_families(stem, holdout=True)) <= set(HOLDOUT_FAMILIES)
        drawn = {choose_family(stem, _rng(seed)) for seed in range(200)}
        assert drawn == set(pitched_families(stem)), stem  # every training family is reachable, no holdout one
        assert {choose_family(stem, _rng(seed), holdout=True) for seed in range(20)} <= set(HOLDOUT_FAMILIES)
    assert not set(TRAIN_KITS) & set(HOLDOUT_KITS)
    assert {draw_kit(_rng(seed)).family for seed in range(50)} == set(TRAIN_KITS)
    assert {draw_kit(_rng(seed), holdout=True).family for seed in range(10)} == set(HOLDOUT_KITS)


@pytest.mark.parametrize("family,stem", FAMILY_STEMS)
def test_a_single_note_is_in_tune(family, stem):
    """Every family, several random voices, two pitches: F0 within 20 cents of
    the MIDI pitch (YIN, which catches octave errors, refined by a harmonic
    sum; for a bell its strongest partial, as its inharmonic sidebands have no
    common period near the note)."""
    for seed in range(3):
        voice = draw_voice(family, stem, _rng(seed))
        for pitch in TEST_PITCH[stem]:
            note = MidiNote(0, pitch, 0.0, 1.0, 100)
            audio = render_pitched([note], voice, SR, int(1.2 * SR), _rng(seed + 100))
            if voice.params.get("kind") == "bell":
                measured = strongest_peak_hz(audio[:int(1.0 * SR)], SR)
            else:
                measured = harmonic_f0(audio[:int(1.0 * SR)], SR, yin_f0(audio[int(0.1 * SR):int(0.5 * SR)], SR))
            assert abs(_cents(measured, pitch)) < 20, (family, stem, seed, pitch, measured, voice.params)


@pytest.mark.parametrize("family,stem", FAMILY_STEMS)
def test_silent_before_the_first_note_and_after_the_last_release(family, stem):
    voice = draw_voice(family, stem, _rng(3))
    notes = [MidiNote(0, TEST_PITCH[stem][0], 0.5, 0.8, 100), MidiNote(1, TEST_PITCH[stem][1], 0.6, 1.0, 60)]
    frames = int((1.0 + voice.release_s + 1.0) * SR)
    audio = render_pitched(notes, voice, SR, frames, _rng(4))
    # 2 ms of slack: the organ's rotor delays its output by up to 1.2 ms.
    end = int((1.0 + voice.release_s + 0.002) * SR) + 1
    assert not np.any(audio[:int(0.5 * SR)]), "sound before the first note-on"
    assert not np.any(audio[end:]), f"sound {np.flatnonzero(audio)[-1] / SR - 1.0:.3f} s after the note-off"
    assert np.abs(audio[int(0.5 * SR):int(1.0 * SR)]).max() > 0.05


@pytest.mark.parametrize("stem", ["bass", "drums", "guitar", "piano"])
@pytest.mark.parametrize("holdout", [False, True])
def test_a_stem_is_a_function_of_the_seed(stem, holdout):
    frames = int(2.0 * SR)
    first, meta = render_stem_synth(stem, _part(stem), SR, frames, _rng(7), holdout)
    again, meta_again = render_stem_synth(stem, _part(stem), SR, frames, _rng(7), holdout)
    other, _ = render_stem_synth(stem, _part(stem), SR, frames, _rng(8), holdout)
    assert first.dtype == np.float32 and first.shape == (frames,)
    assert np.array_equal(first, again) and meta == meta_again
    assert not np.array_equal(first, other)
    assert json.loads(json.dumps(meta)) == meta  # metadata is plain JSON
    assert (meta["family"] in (HOLDOUT_FAMILIES + HOLDOUT_KITS)) == holdout
    assert np.all(np.isfinite(first)) and np.abs(first).max() <= 1.0


def test_the_note_order_given_does_not_matter():
    voice = draw_voice("plucked_string", "guitar", _rng(1))
    notes = _part("guitar")
    forward = render_pitched(notes, voice, SR, 2 * SR, _rng(2))
    backward = render_pitched(notes[::-1], voice, SR, 2 * SR, _rng(2))
    assert np.array_equal(forward, backward)


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown instrument family"):
        draw_voice("theremin", "guitar", _rng(0))
    with pytest.raises(ValueError, match="does not play the bass"):
        draw_voice("organ", "bass", _rng(0))
    with pytest.raises(ValueError, match="not a pitched stem"):
        pitched_families("drums")
    voice = draw_voice("fm", "piano", _rng(0))
    with pytest.raises(ValueError, match="on <= off"):
        render_pitched([MidiNote(0, 60, 1.0, 0.5, 100)], voice, SR, SR, _rng(0))
    with pytest.raises(ValueError, match="pitch must be 0-127"):
        render_pitched([MidiNote(0, 130, 0.0, 0.5, 100)], voice, SR, SR, _rng(0))
    with pytest.raises(ValueError, match="unknown drum kit"):
        draw_kit(_rng(0), "tabla")
    with pytest.raises(ValueError, match="mono"):
        apply_effects(np.zeros((2, 100), np.float32), draw_effects("bass", _rng(0)), SR)


# --- drums ----------------------------------------------------------------------------------------------------

DRUM_KEYS = (35, 36, 37, 38, 39, 40, 41, 42, 44, 45, 46, 48, 49, 50, 51, 53, 54, 56, 57, 59, 75)


def _onset_delay(audio: np.ndarray, at: int) -> float:
    """Seconds from frame ``at`` to the first sample above a tenth of the peak; nothing may sound before ``at``."""
    assert not np.any(audio[:at])
    return (np.flatnonzero(np.abs(audio) > 0.1 * np.abs(audio).max())[0] - at) / SR


@pytest.mark.parametrize("family", TRAIN_KITS + HOLDOUT_KITS)
def test_drum_hits_start_at_their_times(family):
    """Each key's first hit starts within 3 ms of its time; a second hit's own
    sound (both hits minus the first alone: the same draws up to it) too."""
    kit = draw_kit(_rng(5), family)
    first, second = 0.25, 1.5
    for key in DRUM_KEYS:
        one = render_drums([MidiNote(9, key, first, first + 0.1, 60)], kit, SR, 3 * SR, _rng(6))
        two = render_drums([MidiNote(9, key, t, t + 0.1, 60) for t in (first, second)], kit, SR, 3 * SR, _rng(6))
        assert np.abs(one).max() < 0.49  # so neither render was rescaled to fit
        assert 0 <= _onset_delay(one, int(round(first * SR))) < 0.003, key
        assert 0 <= _onset_delay(two - one, int(round(second * SR))) < 0.003, key


@pytest.mark.parametrize("family", TRAIN_KITS + HOLDOUT_KITS)
def test_harder_hits_are_louder(family):
    kit = draw_kit(_rng(9), family)
    for key in (36, 38, 42, 45, 49, 51):
        velocities = (20, 45, 70, 95, 127)
        notes = [MidiNote(9, key, 0.1 + 4.0 * i, 0.2 + 4.0 * i, v) for i, v in enumerate(velocities)]
        audio = render_drums(notes, kit, SR, int(20.5 * SR), _rng(10))
        peaks = [np.abs(audio[int((0.1 + 4.0 * i) * SR):int((0.1 + 4.0 * i + 0.3) * SR)]).max()
                 for i in range(len(velocities))]
        assert all(np.diff(peaks) > 0), (key, peaks)


def test_a_closed_hat_chokes_an_open_one():
    kit = draw_kit(_rng(2), "analog")
    open_only = render_drums([MidiNote(9, 46, 0.1, 1.0, 100)], kit, SR, SR, _rng(3))
    choked = render_drums([MidiNote(9, 46, 0.1, 1.0, 100), MidiNote(9, 42, 0.2, 0.3, 1)], kit, SR, SR, _rng(3))
    late = slice(int(0.35 * SR), SR)  # the closed hat (velocity 1, decays in < 0.1 s) is gone by then
    assert np.sqrt(np.mean(choked[late] ** 2)) < 0.05 * np.sqrt(np.mean(open_only[late] ** 2))


# --- effects --------------------------------------------------------------------------------------------------

ALL_ON = {name: 1.0 for name in CHANCES}


def _test_signals() -> dict[str, np.ndarray]:
    rng = _rng(11)
    t = np.arange(3 * SR) / SR
    return {
        "noise": rng.uniform(-1, 1, t.size).astype(np.float32),
        "square": np.sign(np.sin(2 * np.pi * 55 * t)).astype(np.float32),
        "clicks": (np.arange(t.size) % 5000 == 0).astype(np.float32),
        "quiet sine": (1e-5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32),
        "one sample": np.eye(1, t.size, 100, dtype=np.float32)[0],
    }


@pytest.mark.parametrize("stem", ["bass", "drums", "guitar", "piano"])
def test_the_effect_chain_keeps_length_and_bounds(stem):
    for seed in range(6):
        effects = draw_effects(stem, _rng(seed), chances=ALL_ON)
        assert all(getattr(effects, name) is not None for name in ALL_ON)
        for name, x in _test_signals().items():
            y = apply_effects(x, effects, SR)
            assert y.dtype == np.float32 and y.shape == x.shape, name
            assert np.all(np.isfinite(y)) and np.abs(y).max() <= 0.99 + 1e-7, (name, seed)
            assert np.abs(y).max() > 0.01, (name, seed)  # not silenced


def test_silence_stays_silent_and_no_effects_is_identity_up_to_level():
    effects = draw_effects("guitar", _rng(0), chances={name: 0.0 for name in CHANCES})
    assert all(getattr(effects, name) is None for name in CHANCES)
    x = np.zeros(SR, np.float32)
    assert not np.any(apply_effects(x, draw_effects("guitar", _rng(0), chances=ALL_ON), SR))
    tone = (0.3 * np.sin(2 * np.pi * 220 * np.arange(SR) / SR)).astype(np.float32)
    y = apply_effects(tone, effects, SR)
    np.testing.assert_allclose(y / np.abs(y).max(), tone / np.abs(tone).max(), atol=1e-5)


def test_reverb_tail_decays_at_its_t60():
    """Schroeder backward integration of the impulse response: the -5 to -25 dB
    slope gives T60 within 25 % of the drawn mid-band T60 (lows decay slower,
    highs faster)."""
    for seed in range(5):
        reverb = draw_effects("piano", _rng(seed), chances=ALL_ON).reverb
        ir = reverb_impulse_response(reverb, SR).astype(np.float64)
        assert np.all(np.isfinite(ir)) and abs(np.sum(ir ** 2) - 1) < 1e-4
        edc = 10 * np.log10(np.maximum(np.cumsum(ir[::-1] ** 2)[::-1], 1e-30))
        t5, t25 = np.argmax(edc < -5) / SR, np.argmax(edc < -25) / SR
        t60 = 3 * (t25 - t5)
        assert 0.75 * reverb.t60_s * reverb.high_ratio < t60 < 1.25 * reverb.t60_s * reverb.low_ratio, (t60, reverb)
        # Applied to a click: the wet signal dies down.
        click = np.zeros(5 * SR, np.float32)
        click[100] = 1.0
        wet = apply_reverb(click, reverb, SR)
        early = np.sum(wet[100:100 + int(0.1 * SR)] ** 2)
        late_start = 100 + int(reverb.predelay_ms * 1e-3 * SR + reverb.t60_s * SR)
        late = np.sum(wet[late_start:late_start + int(0.1 * SR)] ** 2)
        assert late < 1e-3 * early, seed
