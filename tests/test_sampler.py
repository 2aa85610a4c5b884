"""The sample player (training.synth.sampler) on a tiny sample set made here:
two decaying sines with known roots (one at 44.1 kHz, so resampling is on the
path) and a two-piece drum kit. Pitch within 10 cents, note-offs, velocity,
polyphony as an exact sum, determinism, GM fallbacks and the hi-hat choke; then
smoke renders with the real installed samples (Salamander piano, Sonic Pi kits,
avldrums), skipped with the reason when they are absent (CI installs none)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from training.synth.corpus import MidiNote, SynthError
from training.synth import avldrums, fetch_samples
from training.synth.sampler import available_sample_instruments, render_sampled

SR = 22050


def _sine(path: Path, freq: float, seconds: float, rate: int, decay_s: float = 3.0) -> None:
    t = np.arange(int(seconds * rate)) / rate
    sf.write(str(path), (0.5 * np.sin(2 * np.pi * freq * t) * np.exp(-t / decay_s)).astype(np.float32), rate,
             subtype="FLOAT")


def _midi_hz(pitch: float) -> float:
    return 440.0 * 2 ** ((pitch - 69) / 12)


def _write(folder: Path, manifest: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "instrument.json").write_text(json.dumps(manifest))


@pytest.fixture
def library(tmp_path) -> Path:
    """root/test-keys: roots C4 (22.05 kHz file) and C5 (44.1 kHz file); root/test-kit: kick 36, snare 38,
    a long open hat 46 and a 10 ms closed hat 42."""
    keys = tmp_path / "test-keys"
    keys.mkdir()
    _sine(keys / "c4.wav", _midi_hz(60), 3.0, SR)
    _sine(keys / "c5.wav", _midi_hz(72), 3.0, 44100)
    _write(keys, {"name": "test-keys", "stem": "piano", "kind": "pitched", "release_s": 0.1,
                  "velocity_exponent": 2.0,
                  "zones": [{"file": "c4.wav", "root": 60, "velocity": [1, 127]},
                            {"file": "c5.wav", "root": 72, "velocity": [1, 127]}]})
    kit = tmp_path / "test-kit"
    kit.mkdir()
    _sine(kit / "kick.wav", 60.0, 0.4, SR, decay_s=0.1)
    _sine(kit / "snare.wav", 1000.0, 0.2, SR, decay_s=0.05)
    _sine(kit / "open.wav", 5000.0, 1.5, SR, decay_s=1.0)
    _sine(kit / "closed.wav", 6000.0, 0.01, SR)
    _write(kit, {"name": "test-kit", "stem": "drums", "kind": "drums",
                 "zones": [{"file": "kick.wav", "keys": [36], "velocity": [1, 127]},
                           {"file": "snare.wav", "keys": [38], "velocity": [1, 127]},
                           {"file": "open.wav", "keys": [46], "velocity": [1, 127]},
                           {"file": "closed.wav", "keys": [42], "velocity": [1, 127]}]})
    return tmp_path


def _render(library, stem, name, notes, seconds=2.0, seed=0):
    return render_sampled(stem, name, notes, SR, int(seconds * SR), np.random.default_rng(seed), root=library)


def _peak_hz(x: np.ndarray) -> float:
    """The strongest partial, from a Hann-windowed, 16x zero-padded FFT with a parabolic peak fit."""
    n = 16 * len(x)
    spectrum = np.log(np.abs(np.fft.rfft(x * np.hanning(len(x)), n)) + 1e-12)
    k = int(np.argmax(spectrum))
    a, b, c = spectrum[k - 1], spectrum[k], spectrum[k + 1]
    return (k + 0.5 * (a - c) / (a - 2 * b + c)) * SR / n


def test_lists_installed_instruments_by_stem(library):
    assert available_sample_instruments("piano", root=library) == ["test-keys"]
    assert available_sample_instruments("drums", root=library) == ["test-kit"]
    assert available_sample_instruments("bass", root=library) == []
    (library / "test-keys" / "c5.wav").unlink()  # a half-removed instrument is not offered
    assert available_sample_instruments("piano", root=library) == []


@pytest.mark.parametrize("pitch", [55, 60, 63, 66, 67, 72, 78])
def test_rendered_pitch_matches_the_midi_pitch_within_10_cents(library, pitch):
    x = _render(library, "piano", "test-keys", [MidiNote(0, pitch, 0.0, 1.0, 100)])
    cents = 1200 * np.log2(_peak_hz(x[: SR]) / _midi_hz(pitch))
    assert abs(cents) < 10, (pitch, cents)


def test_note_off_starts_a_release_of_release_s(library):
    short = _render(library, "piano", "test-keys", [MidiNote(0, 60, 0.0, 0.2, 100)])
    long = _render(library, "piano", "test-keys", [MidiNote(0, 60, 0.0, 1.0, 100)])
    end = int(round((0.2 + 0.1) * SR))  # off + release_s
    assert np.abs(short[: int(0.15 * SR)]).max() > 0.2
    assert np.all(short[end:] == 0)
    at_off = np.abs(short[int(0.18 * SR): int(0.2 * SR)]).max()
    assert np.abs(short[int(0.29 * SR): end]).max() < 0.05 * at_off  # faded, not cut
    assert np.sqrt(np.mean(long[end: int(0.9 * SR)] ** 2)) > 0.1
    np.testing.assert_array_equal(short[: int(0.2 * SR)], long[: int(0.2 * SR)])  # same note until the off


def test_louder_velocity_is_louder(library):
    rms = [float(np.sqrt(np.mean(_render(library, "piano", "test-keys", [MidiNote(0, 64, 0.0, 0.5, v)]) ** 2)))
           for v in (10, 30, 50, 70, 90, 110, 127)]
    assert all(a < b for a, b in zip(rms, rms[1:])), rms


def test_same_seed_same_audio_and_polyphony_is_the_sum(library):
    notes = [MidiNote(0, 60, 0.0, 1.0, 90), MidiNote(0, 67, 0.25, 1.2, 70)]
    a = _render(library, "piano", "test-keys", notes, seed=5)
    np.testing.assert_array_equal(a, _render(library, "piano", "test-keys", notes, seed=5))
    assert not np.array_equal(a, _render(library, "piano", "test-keys", notes, seed=6))  # per-note unevenness
    first = _render(library, "piano", "test-keys", notes[:1], seed=5)
    rng = np.random.default_rng(5)
    rng.normal()  # the draw the first note took
    second = render_sampled("piano", "test-keys", notes[1:], SR, 2 * SR, rng, root=library)
    np.testing.assert_array_equal(a, first + second)


def test_output_is_float32_of_the_asked_length_and_notes_past_it_are_cut(library):
    x = _render(library, "piano", "test-keys", [MidiNote(0, 60, 0.9, 3.0, 100), MidiNote(0, 60, 5.0, 6.0, 100)],
                seconds=1.0)
    assert x.dtype == np.float32 and x.shape == (SR,)
    assert np.abs(x[int(0.95 * SR):]).max() > 0.1


def test_drum_hits_play_their_one_shot_whole_and_vary_per_hit(library):
    hits = [MidiNote(9, 36, 0.0, 0.01, 100), MidiNote(9, 36, 1.0, 1.01, 100)]
    x = _render(library, "drums", "test-kit", hits)
    first, second = x[: int(0.4 * SR)], x[SR: SR + int(0.4 * SR)]
    assert np.abs(first[int(0.3 * SR):]).max() > 0  # one-shot: the note-off at 10 ms does not stop it
    assert 60 * 2 ** (-60 / 1200) < _peak_hz(first) < 60 * 2 ** (60 / 1200)  # detune is a few cents
    assert not np.isclose(np.abs(first).max(), np.abs(second).max(), rtol=1e-3)  # gain jitter per hit
    np.testing.assert_array_equal(x, _render(library, "drums", "test-kit", hits))


def test_missing_drum_keys_fall_back_to_their_family_or_stay_silent(library):
    kick = _render(library, "drums", "test-kit", [MidiNote(9, 36, 0.0, 0.1, 100)])
    acoustic_bass_drum = _render(library, "drums", "test-kit", [MidiNote(9, 35, 0.0, 0.1, 100)])
    np.testing.assert_array_equal(kick, acoustic_bass_drum)  # 35 -> 36, same random draws
    assert np.abs(_render(library, "drums", "test-kit", [MidiNote(9, 40, 0, 0.1, 100)])).max() > 0  # 40 -> 38
    assert np.all(_render(library, "drums", "test-kit", [MidiNote(9, 81, 0, 0.1, 100)]) == 0)  # no triangle


def test_closed_hat_chokes_the_open_hat(library):
    open_only = _render(library, "drums", "test-kit", [MidiNote(9, 46, 0.0, 0.1, 100)])
    choked = _render(library, "drums", "test-kit", [MidiNote(9, 46, 0.0, 0.1, 100), MidiNote(9, 42, 0.5, 0.6, 100)])
    after = int((0.5 + 0.03) * SR) + 2  # the choke fade, then the 10 ms closed hat is over too
    assert np.abs(open_only[after: SR]).max() > 0.05
    assert np.all(choked[after: SR] == 0)


def test_bad_names_and_manifests_are_clear_errors(library):
    with pytest.raises(SynthError, match="no sampled bass instrument 'test-keys'.*installed: \\[\\]"):
        _render(library, "bass", "test-keys", [])
    (library / "test-kit" / "instrument.json").write_text("{not json")
    with pytest.raises(SynthError, match="test-kit/instrument.json: not a readable instrument manifest"):
        available_sample_instruments("drums", root=library)


def test_decoded_samples_are_cached_beside_the_instrument(library):
    _render(library, "piano", "test-keys", [MidiNote(0, 72, 0.0, 0.5, 100)])
    cached = list((library / "test-keys" / ".decoded-22050").glob("c5-*.npy"))
    assert len(cached) == 1 and np.load(cached[0]).dtype == np.float32
    assert len(np.load(cached[0])) == 3 * SR  # the 44.1 kHz file, resampled


def test_salamander_manifest_names_roots_and_splits_velocities_between_layers(tmp_path):
    for layer, names in ((1, ("A0v1.ogg", "C4v1.ogg")), (16, ("D#4v16.ogg", "C8v16.ogg"))):
        folder = tmp_path / fetch_samples.SALAMANDER / f"v{layer}"
        folder.mkdir(parents=True)
        (folder / ".integrity").write_text("sha512-x\n")
        for name in names:
            (folder / name).write_bytes(b"")
    manifest = fetch_samples.salamander_manifest(tmp_path)
    zones = {z["file"]: (z["root"], z["velocity"]) for z in manifest["zones"]}
    # layer k of 16 sits at velocity 127 k / 16: the split is halfway between 7.9 and 127
    assert zones == {"v1/A0v1.ogg": (21, [1, 67]), "v1/C4v1.ogg": (60, [1, 67]),
                     "v16/C8v16.ogg": (108, [68, 127]), "v16/D#4v16.ogg": (63, [68, 127])}
    assert manifest["stem"] == "piano" and manifest["kind"] == "pitched"


def test_tonejs_manifest_reads_sharps_and_plays_every_velocity_from_one_recording(tmp_path):
    folder = tmp_path / "tonejs-guitar-nylon"
    folder.mkdir()
    for name in ("E2.mp3", "As2.mp3", "Cs5.mp3", "F2 v2.mp3"):  # 'F2 v2': an alternate take, left out
        (folder / name).write_bytes(b"")
    manifest = fetch_samples.tonejs_manifest(tmp_path, "tonejs-guitar-nylon")
    assert {z["file"]: z["root"] for z in manifest["zones"]} == {"E2.mp3": 40, "As2.mp3": 46, "Cs5.mp3": 73}
    assert all(z["velocity"] == [1, 127] for z in manifest["zones"])
    assert manifest["stem"] == "guitar" and "CC BY 3.0" in manifest["licence"]
    assert {spec[3] for spec in fetch_samples.TONEJS_INSTRUMENTS.values()} == {"bass", "guitar", "piano"}


# -- the real samples, where installed (python -m training.synth.fetch_samples) --------------------

def _installed(stem: str, name: str) -> bool:
    return name in available_sample_instruments(stem)


@pytest.mark.skipif(not _installed("piano", "salamander-grand-piano"),
                    reason="Salamander samples not installed (python -m training.synth.fetch_samples; ~30 MB, "
                           "not fetched in CI)")
def test_salamander_piano_smoke_render_and_speed():
    rng = np.random.default_rng(0)
    notes = [MidiNote(0, int(p), 0.5 * t, 0.5 * t + 0.45, int(rng.integers(20, 127)))
             for t in range(120) for p in rng.integers(36, 90, 4)]
    render_sampled("piano", "salamander-grand-piano", notes, SR, 60 * SR, np.random.default_rng(1))  # decode/cache
    start = time.process_time()
    x = render_sampled("piano", "salamander-grand-piano", notes, SR, 60 * SR, np.random.default_rng(1))
    assert time.process_time() - start < 1.0  # a 60 s part, CPU time (the machine may be shared)
    assert np.isfinite(x).all() and 0.05 < np.abs(x).max() < 10
    a4 = render_sampled("piano", "salamander-grand-piano", [MidiNote(0, 69, 0, 1.0, 80)], SR, SR, rng)
    assert abs(1200 * np.log2(_peak_hz(a4) / 440.0)) < 25  # a real piano, a few cents of stretch tuning


@pytest.mark.parametrize("kit", ["sonic-pi-acoustic-kit", "sonic-pi-electronic-kit"])
def test_sonic_pi_kits_smoke_render(kit):
    if not _installed("drums", kit):
        pytest.skip(f"{kit} not installed (apt-get install sonic-pi-samples; python -m training.synth.fetch_samples)")
    hits = [MidiNote(9, k, 0.25 * i, 0.25 * i + 0.1, 100) for i, k in enumerate((36, 42, 38, 46, 49, 51, 45, 41))]
    x = render_sampled("drums", kit, hits, SR, 3 * SR, np.random.default_rng(0))
    for i in range(8):  # every hit sounds
        assert np.abs(x[int(0.25 * i * SR): int((0.25 * i + 0.05) * SR)]).max() > 0.01, i


needs_avldrums = pytest.mark.skipif(
    not avldrums.available_avldrums_kits() or shutil.which("fluidsynth") is None,
    reason="avldrums kits or fluidsynth not installed (apt-get install fluidsynth avldrums.lv2-soundfont)")


@needs_avldrums
def test_avldrums_plays_a_gm_drum_part_from_channel_10():
    kit = avldrums.available_avldrums_kits()[0]
    hits = [MidiNote(9, key, float(i), float(i) + 0.1, 100) for i, key in enumerate((36, 35, 38, 42, 50))]
    x = avldrums.render_avldrums(kit, hits, SR, 6 * SR)
    assert x.dtype == np.float32 and x.shape == (6 * SR,)
    for i in range(5):  # every hit sounds, 35 through the kick
        assert np.abs(x[i * SR: i * SR + SR // 20]).max() > 0.01, i
    spectrum = np.abs(np.fft.rfft(x[4 * SR: 5 * SR])) ** 2
    low = spectrum[np.fft.rfftfreq(SR, 1 / SR) < 250].sum() / spectrum.sum()
    assert low > 0.3  # key 50 (high tom) plays a tom, not the kit's cymbal on that key
