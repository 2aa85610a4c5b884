"""engine.audio.rhythm_guidance: the onset envelope finds onsets, each guided
step raises the rhythmic agreement it follows, only at the noise levels it
is for, and imputation with it keeps the given stems."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.audio.harmony_guidance import decoded_log_magnitude
from engine.audio.latent_generation import generate_latent_stems
from engine.audio.rhythm_guidance import (GUIDED_SIGMAS, block_time_correlation, given_onsets, onset_envelope,
                                          rhythm_guided)
from engine.core.tasks import LATENT_IMPUTE, SettingsError, generation_settings
from engine.jobs.options import JobOptions

from support.latent_models import tiny_latent_model

SR = 22050


def clicks(times_s: list[float], seconds: float = 2.0) -> np.ndarray:
    """Decaying 440 Hz notes starting at `times_s`."""
    t = np.arange(int(seconds * SR)) / SR
    out = np.zeros_like(t)
    for start in times_s:
        after = t >= start
        out[after] += np.sin(2 * np.pi * 440 * (t[after] - start)) * np.exp(-(t[after] - start) * 12)
    return (0.3 * out).astype(np.float32)


def test_onset_envelope_peaks_at_the_notes_and_tolerates_two_frames():
    model = tiny_latent_model()
    hop = model.autoencoder.config.hop
    notes = [0.25, 0.8, 1.4]
    envelope = given_onsets(model.autoencoder, torch.from_numpy(clicks(notes)))[0]
    peaks = torch.topk(envelope, 3 * 5).indices     # each peak is 5 frames wide (+-2)
    for start in notes:
        frame = round(start * SR / hop)
        assert any(abs(int(p) - frame) <= 3 for p in peaks), (start, frame, peaks)
    # A rise one frame after the target's still correlates fully once spread, a far one does not.
    base = torch.zeros(1, 1, 64)
    base[..., 20] = 5.0
    later = base.roll(1, dims=-1)
    assert float(block_time_correlation(onset_envelope(later), onset_envelope(base))) > 0.5
    far = base.roll(20, dims=-1)
    assert float(block_time_correlation(onset_envelope(far), onset_envelope(base))) < 0.0


def test_block_time_correlation_is_one_for_the_target_and_ignores_flat_blocks():
    torch.manual_seed(0)
    target = torch.rand(2, 128)
    assert float(block_time_correlation(target, target)) == pytest.approx(1.0, abs=1e-5)
    flat = target.clone()
    flat[:, 64:] = 0.3
    candidate = target.clone()
    candidate[:, 64:] = torch.rand(2, 64)
    assert float(block_time_correlation(candidate, flat)) == pytest.approx(1.0, abs=1e-5)


def test_a_guided_step_raises_the_agreement_and_only_where_it_is_meant_to():
    model = tiny_latent_model()
    prior = model.latent_prior
    torch.manual_seed(1)
    x = torch.randn(1, 32, 64)
    target = torch.zeros(1, 64)
    target[:, ::8] = 1.0
    free = [0, 1, 2]
    plain = prior.with_given(torch.zeros_like(x), torch.tensor([[False, False, False, True]]))

    @torch.no_grad()
    def agreement_of(x0: torch.Tensor) -> float:
        envelope = onset_envelope(decoded_log_magnitude(model, x0, free))
        return float(block_time_correlation(envelope, target.repeat(len(free), 1)))

    sigma = torch.tensor([3.0])                      # inside GUIDED_SIGMAS
    base = plain(x, sigma)
    guided = rhythm_guided(plain, model, target, free, strength=0.05)(x, sigma)
    assert agreement_of(guided) > agreement_of(base)
    # Only the free stems' channels move; drums are a free stem like any other.
    moved = (guided - base).detach().abs().reshape(4, 8, 64).amax(dim=(1, 2))
    assert float(moved[3]) == 0.0 and all(float(moved[n]) > 0 for n in free)
    low = torch.tensor([GUIDED_SIGMAS[0] / 2])
    torch.testing.assert_close(rhythm_guided(plain, model, target, free, 0.05)(x, low), plain(x, low))
    assert rhythm_guided(plain, model, target, free, 0.0) is plain


def test_imputation_with_rhythm_guidance_keeps_the_given_stems():
    model = tiny_latent_model()
    piano = clicks([0.1, 0.6, 1.1, 1.6])
    given = np.zeros((4, len(piano)), np.float32)
    given[3] = piano
    settings = LATENT_IMPUTE.override(steps=8, harmony=0.0)
    plain = generate_latent_stems(model, len(piano), seed=2, settings=settings, given=given, given_stems=(3,))
    guided = generate_latent_stems(model, len(piano), seed=2, settings=settings.override(rhythm=1.0),
                                   given=given, given_stems=(3,))
    np.testing.assert_array_equal(guided[3], piano)
    assert not np.allclose(guided[1], plain[1])
    assert np.isfinite(guided).all()


def test_rhythm_settings_are_checked():
    with pytest.raises(SettingsError, match="rhythm must be"):
        LATENT_IMPUTE.override(rhythm=6.0)
    with pytest.raises(SettingsError, match="latent prior"):
        generation_settings("impute", True, "waveform", rhythm=1.0)
    assert JobOptions(rhythm=1.0, prior="waveform").problem() is not None
    assert JobOptions(rhythm=1.0).sampler_settings("impute", latent_prior=True).rhythm == 1.0
