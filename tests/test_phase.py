"""The phase-locked vocoder's phase (engine.core.phase) and where the model
uses it: the decoded stems its autoencoder config names."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from engine.audio import latent_generation
from engine.core.autoencoder import AutoencoderConfig, StemAutoencoder, griffin_lim, magnitude_to_waveform
from engine.core.phase import locked_phase, peak_frequencies
from engine.errors import ModelFileError
from engine.storage.model import MSDMModel

from support.latent_models import tiny_latent_model

SR = 22050
CONFIG = AutoencoderConfig()
WINDOW = torch.hann_window(CONFIG.n_fft)


def stft(x: torch.Tensor) -> torch.Tensor:
    return torch.stft(x, CONFIG.n_fft, CONFIG.hop, window=WINDOW, center=True, pad_mode="constant",
                      return_complex=True)


def wrapped(angle: torch.Tensor) -> torch.Tensor:
    return torch.remainder(angle + math.pi, 2 * math.pi) - math.pi


def tone(frequencies, seconds: float = 1.0) -> torch.Tensor:
    t = torch.arange(int(seconds * SR), dtype=torch.float64) / SR
    return sum(0.3 / (n + 1) * torch.sin(2 * math.pi * f * t + 0.7 * n)
               for n, f in enumerate(frequencies)).float()[None]


def test_peak_frequency_is_the_sinusoids_between_bins():
    """Parabolic interpolation puts a sinusoid between bins within a tenth of
    a bin (21.5 Hz bins at n_fft 1024), and every bin of its lobe follows it."""
    frequency = 137.3
    region, nu = peak_frequencies(torch.log(stft(tone([frequency])).abs() + 1e-12))
    centre = nu.shape[-1] // 2
    expected = frequency * CONFIG.n_fft / SR                     # 6.38 bins
    peak = int(round(expected))
    assert abs(float(nu[0, peak, centre]) - expected) < 0.1
    assert int(region[0, peak + 1, centre]) == peak and int(region[0, peak - 1, centre]) == peak
    assert float(nu[0, peak + 1, centre]) == float(nu[0, peak, centre])


def test_locked_phase_advances_and_locks_as_a_sinusoids_stft():
    """For a steady sinusoid, the built phase at the peak bin advances from
    frame to frame as the true STFT's does, and its neighbours keep the true
    offsets to the peak (pi per bin for the centred Hann window)."""
    x = tone([137.3])
    spectrum = stft(x)
    phase = locked_phase(spectrum.abs(), CONFIG.n_fft, CONFIG.hop)
    true = spectrum.angle()
    peak = int(spectrum.abs()[0].mean(-1).argmax())
    inner = slice(4, -4)                                           # away from the zero-padded ends
    step_error = wrapped(phase[0, peak, 1:] - phase[0, peak, :-1] - (true[0, peak, 1:] - true[0, peak, :-1]))
    assert float(step_error[inner].abs().max()) < 0.05
    for k in (peak - 1, peak + 1):
        offset_error = wrapped((phase[0, k] - phase[0, peak]) - (true[0, k] - true[0, peak]))
        assert float(offset_error[inner].abs().max()) < 0.05


def test_locked_phase_alone_rebuilds_a_harmonic_tone():
    """A bass-like harmonic tone (55 Hz and its harmonics): its magnitude with
    the built phase, no iterations, is a nearly consistent spectrogram (the
    STFT of the result has nearly the same magnitude) and as periodic as the
    tone; random phase with no iterations is neither."""
    x = tone([55.0 * n for n in range(1, 7)])
    magnitude = stft(x).abs()
    locked = magnitude_to_waveform(magnitude, CONFIG, WINDOW, x.shape[-1], locked=True)
    scrambled = griffin_lim(magnitude, CONFIG, WINDOW, x.shape[-1], torch.Generator().manual_seed(0), iterations=0)

    def convergence(y):
        return float((stft(y).abs() - magnitude).norm() / magnitude.norm())

    def periodicity(y):
        y = y[0, 4096:-4096].double()
        lag = round(SR / 55.0)
        return float((y[lag:] * y[:-lag]).sum() / torch.sqrt((y[lag:] ** 2).sum() * (y[:-lag] ** 2).sum()))

    # At 55 Hz the harmonics are 2.6 bins apart, closer than the Hann lobe's
    # 4 bins: their lobes overlap, and the lock is approximate (0.15 here).
    assert convergence(locked) < 0.2 < 0.5 < convergence(scrambled)
    assert periodicity(locked) > 0.98 > 0.5 > periodicity(scrambled)


def test_locked_phase_is_the_same_whatever_the_chunk_and_handles_silence():
    magnitude = torch.rand(2, CONFIG.bins, 40, generator=torch.Generator().manual_seed(1)) ** 4
    magnitude[1, :, 10:20] = 0.0                                   # silence inside
    whole = locked_phase(magnitude, CONFIG.n_fft, CONFIG.hop)
    torch.testing.assert_close(locked_phase(magnitude, CONFIG.n_fft, CONFIG.hop, chunk_frames=7), whole)
    assert bool(torch.isfinite(whole).all())
    assert float(whole.min()) >= 0 and float(whole.max()) < 2 * math.pi
    silent = magnitude_to_waveform(torch.zeros(1, CONFIG.bins, 12), CONFIG, WINDOW, 11 * CONFIG.hop, locked=True)
    assert float(silent.abs().max()) == 0.0
    with pytest.raises(ValueError, match="bins"):
        locked_phase(magnitude[:, :-1], CONFIG.n_fft, CONFIG.hop)


def _model_locking(stems: tuple[str, ...]) -> MSDMModel:
    model = tiny_latent_model()
    model.autoencoder.config = dataclasses.replace(model.autoencoder.config, locked_phase_stems=stems)
    return model


def test_decode_stems_locks_only_the_named_stems():
    """The locked stem is the same whatever Griffin-Lim's seed and equals the
    locked vocoder's waveform; the others still depend on the seed, and are
    the same audio (to float rounding) whether or not another stem is locked."""
    latents = torch.rand(4 * 8, 30, generator=torch.Generator().manual_seed(2)) * 2 - 1
    frames = 29 * 256
    plain, locked = _model_locking(()), _model_locking(("guitar",))
    a = latent_generation.decode_stems(locked, latents, frames, seed=1)
    b = latent_generation.decode_stems(locked, latents, frames, seed=2)
    c = latent_generation.decode_stems(plain, latents, frames, seed=1)
    np.testing.assert_array_equal(a[2], b[2])
    assert not np.allclose(a[0], b[0])
    np.testing.assert_allclose(np.delete(a, 2, axis=0), np.delete(c, 2, axis=0), atol=2e-5)
    with torch.no_grad():
        magnitude = locked.autoencoder.decode_magnitude(latents.reshape(4, 8, -1)[2:3])
    expected = magnitude_to_waveform(magnitude, locked.autoencoder.config, locked.autoencoder.window, frames,
                                     locked=True)
    # Decoded in a batch of 4 rows or of 1: float sums in another order (1e-6).
    np.testing.assert_allclose(a[2], expected[0].numpy(), atol=2e-5)
    # Rows named by their model stem: the guitar alone, decoded as row 0.
    alone = latent_generation.decode_stems(locked, latents[16:24], frames, seed=5, stems=[2])
    np.testing.assert_allclose(alone[0], a[2], atol=2e-5)
    with pytest.raises(ValueError, match="stem indices"):
        latent_generation.decode_stems(locked, latents, frames, seed=1, stems=[0, 1])


def test_locked_stems_travel_in_the_model_file_and_must_be_the_models(tmp_path):
    model = _model_locking(("bass", "piano"))
    model.save(tmp_path / "locked.safetensors", source="test")
    assert MSDMModel.load(tmp_path / "locked.safetensors").autoencoder.config.locked_phase_stems == ("bass", "piano")
    model.autoencoder.config = dataclasses.replace(model.autoencoder.config, locked_phase_stems=("vocals",))
    model.save(tmp_path / "wrong.safetensors", source="test")
    with pytest.raises(ModelFileError, match="vocals"):
        MSDMModel.load(tmp_path / "wrong.safetensors")
    for bad in (("bass", "bass"), ("",), ["bass"]):
        with pytest.raises(ValueError, match="locked_phase_stems"):
            AutoencoderConfig(locked_phase_stems=bad)


def test_pack_model_sets_the_locked_stems(tmp_path):
    from training.pack_model import main as pack_main

    source = tmp_path / "model.safetensors"
    tiny_latent_model().save(source, source="test")
    assert pack_main(["--prior", str(source), "--locked-phase-stems", "bass", "guitar",
                      "-o", str(tmp_path / "out.safetensors")]) == 0
    packed = MSDMModel.load(tmp_path / "out.safetensors")
    assert packed.autoencoder.config.locked_phase_stems == ("bass", "guitar")
    assert "phase-locked vocoder for bass, guitar" in packed.source
    assert StemAutoencoder(packed.autoencoder.config).config.griffin_lim_iterations == 4


def test_the_shipped_model_decodes_a_bass_line_clearer_with_the_locked_phase():
    """The shipped file locks the pitched stems; on a bass line (six notes of
    E2-A2 with eight harmonics) through its autoencoder, the locked phase
    gives back a clearer tone, as clear as the input's, with no fewer frames
    on the input's F0 than Griffin-Lim does on the same decoded magnitude
    (the drums row decodes with Griffin-Lim). Measured with autoencoder-v2
    (shipped since the sixth session of 2026-12-07): clarity 0.94 against
    0.88 (the input 0.96), F0 within 50 cents 1.00 against 0.98; with
    autoencoder-v1, whose magnitudes Griffin-Lim read worse: 0.84 / 0.84
    against 0.62 / 0.71."""
    from engine.audio.latent_generation import encode_stems
    from engine.storage.loading import DEFAULT_MODEL_PATH
    from training.generation_metrics import pitch_agreement, pitch_clarity

    model = MSDMModel.load(DEFAULT_MODEL_PATH)
    assert model.stems == ("bass", "drums", "guitar", "piano")
    assert model.autoencoder.config.locked_phase_stems == ("bass", "guitar", "piano")
    t = np.arange(3 * SR) / SR
    line = np.zeros_like(t)
    for i, f0 in enumerate((82.4, 110.0, 98.0, 73.4, 87.3, 65.4)):
        note = (t >= i * 0.5) & (t < (i + 1) * 0.5)
        line += note * np.exp(-0.5 * (t - i * 0.5)) * sum(0.3 / k * np.sin(2 * np.pi * k * f0 * t) for k in range(1, 9))
    line = line.astype(np.float32)
    latents = encode_stems(model, line[None])
    locked = latent_generation.decode_stems(model, latents, len(line), seed=0, stems=[0])[0]
    searched = latent_generation.decode_stems(model, latents, len(line), seed=0, stems=[1])[0]
    locked_clarity = pitch_clarity([locked], SR, "bass")
    assert locked_clarity > pitch_clarity([searched], SR, "bass") + 0.03
    assert locked_clarity > pitch_clarity([line], SR, "bass") - 0.05
    on_f0 = pitch_agreement(locked, line, SR, "bass").f0_within_50_cents
    assert on_f0 >= 0.95 and on_f0 >= pitch_agreement(searched, line, SR, "bass").f0_within_50_cents


def test_evaluate_autoencoder_reports_both_decodings_beside_the_ceiling():
    """training.evaluate_autoencoder: one row per decoding and stem; on a
    harmonic bass tone the ceiling (Griffin-Lim on the tone's own magnitude)
    keeps its F0 and its clarity, which the input row shows as ~1."""
    from training.evaluate_autoencoder import METHODS, evaluate

    torch.manual_seed(0)
    autoencoder = StemAutoencoder(AutoencoderConfig(latent_channels=8, hidden=32, blocks=1)).eval()
    bass = tone([98.0 * n for n in range(1, 7)], seconds=3.0)[0].numpy()
    rows = evaluate(autoencoder, [("bass", bass)])
    assert [(r["method"], r["stem"]) for r in rows if r["windows"]] == [(m, "bass") for m in METHODS]
    ceiling = next(r for r in rows if r["method"].startswith("ceiling") and r["stem"] == "bass")
    assert ceiling["f0_within_50_cents"] > 0.9 and ceiling["input_pitch_clarity"] > 0.9
    assert abs(ceiling["pitch_clarity"] - ceiling["input_pitch_clarity"]) < 0.05
