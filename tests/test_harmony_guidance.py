"""engine.audio.harmony_guidance: each guided step raises the harmonic
agreement it follows, only at the noise levels it is for, and imputation
with it keeps the given stems and the exact mix."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.audio.harmony_guidance import GUIDED_SIGMAS, block_correlation, decoded_log_magnitude, harmony_guided
from engine.audio.latent_generation import generate_latent_stems
from engine.core.harmony import chroma_from_magnitude
from engine.core.tasks import LATENT_IMPUTE, SettingsError, generation_settings
from engine.jobs.options import JobOptions

from support.latent_models import tiny_latent_model

SR = 22050


def test_block_correlation_is_one_for_the_target_and_ignores_silent_blocks():
    torch.manual_seed(0)
    target = torch.rand(1, 12, 128)
    assert float(block_correlation(target, target)) == pytest.approx(1.0, abs=1e-5)
    assert float(block_correlation(target.roll(5, dims=1), target)) < 0.9
    # A silent second block (no pitch class given) does not count, whatever the candidate does there.
    silent = target.clone()
    silent[..., 64:] = 0
    candidate = target.clone()
    candidate[..., 64:] = torch.rand(1, 12, 64)
    assert float(block_correlation(candidate, silent)) == pytest.approx(1.0, abs=1e-5)


def test_a_guided_step_raises_the_agreement_and_only_where_it_is_meant_to():
    model = tiny_latent_model()
    prior = model.latent_prior
    torch.manual_seed(1)
    x = torch.randn(1, 32, 64)
    target = torch.rand(1, 12, 64)
    free = [0, 2, 3]
    plain = prior.with_given(torch.zeros_like(x), torch.tensor([[False, True, False, False]]))

    @torch.no_grad()
    def agreement_of(x0: torch.Tensor) -> float:
        chroma = chroma_from_magnitude(decoded_log_magnitude(model, x0, free).exp(), SR, 1024)
        return float(block_correlation(chroma, target.repeat(len(free), 1, 1)))

    sigma = torch.tensor([3.0])                      # inside GUIDED_SIGMAS
    base = plain(x, sigma)
    guided = harmony_guided(plain, model, target, free, strength=0.05)(x, sigma)
    assert not torch.allclose(guided, base)
    assert agreement_of(guided) > agreement_of(base)
    # Only the free pitched stems' channels move.
    moved = (guided - base).detach().abs().reshape(4, 8, 64).amax(dim=(1, 2))
    assert float(moved[1]) == 0.0 and all(float(moved[n]) > 0 for n in free)
    # Outside the guided noise levels, and at strength 0: the denoiser itself.
    low = torch.tensor([GUIDED_SIGMAS[0] / 2])
    torch.testing.assert_close(harmony_guided(plain, model, target, free, 0.05)(x, low), plain(x, low))
    assert harmony_guided(plain, model, target, free, 0.0) is plain


def test_imputation_with_harmony_guidance_keeps_the_given_stems():
    model = tiny_latent_model()
    t = np.arange(2 * SR) / SR
    piano = (0.2 * np.sin(2 * np.pi * 261.63 * t)).astype(np.float32)
    given = np.zeros((4, len(piano)), np.float32)
    given[3] = piano
    settings = LATENT_IMPUTE.override(steps=8)   # several steps inside GUIDED_SIGMAS
    plain = generate_latent_stems(model, len(piano), seed=2, settings=settings, given=given, given_stems=(3,))
    guided = generate_latent_stems(model, len(piano), seed=2, settings=settings.override(harmony=1.0),
                                   given=given, given_stems=(3,))
    np.testing.assert_array_equal(guided[3], piano)
    assert not np.allclose(guided[0], plain[0])
    # Drums alone give no pitch classes to follow: nothing to guide, the same audio.
    drums_only = np.zeros_like(given)
    drums_only[1] = np.random.default_rng(0).standard_normal(len(piano)).astype(np.float32) * 0.1
    np.testing.assert_array_equal(
        generate_latent_stems(model, len(piano), seed=2, settings=settings, given=drums_only, given_stems=(1,)),
        generate_latent_stems(model, len(piano), seed=2, settings=settings.override(harmony=1.0),
                              given=drums_only, given_stems=(1,)))


def test_harmony_settings_are_checked():
    with pytest.raises(SettingsError, match="harmony must be"):
        LATENT_IMPUTE.override(harmony=6.0)
    with pytest.raises(SettingsError, match="latent prior"):
        generation_settings("impute", True, "waveform", harmony=1.0)
    assert JobOptions(harmony=1.0, prior="waveform").problem() is not None
    assert JobOptions(harmony=1.0).sampler_settings("impute", latent_prior=True).harmony == 1.0
