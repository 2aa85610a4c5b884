"""The latent prior in its own space (standardised latents, not audio): its
samples are not clamped to the audio range, and it can refine the first guess
of a separation (issue 20 item 6) with stems that still sum to the mix."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import engine.audio.latent_generation as latent_generation
from engine.audio.latent_refinement import refine_with_latent_prior
from engine.audio.pipeline import first_guess, separate_array
from engine.core.latent_prior import LatentDenoiser
from engine.core.separator import MaskSeparator, SeparatorConfig
from engine.core.tasks import (LATENT_GENERATE, LATENT_REFINE, SEPARATE_WARM, SettingsError, generate, impute,
                               separation_settings)
from engine.errors import CommandError
from engine.storage.model import ModelSet
from training.command import parse_setting, settings_for

from conftest import TINY_SEPARATOR
from support.latent_models import tiny_latent_model

SR = 22050
WIDE = 3.0  # the closed-form prior's std: well past the audio range [-1, 1]


def gaussian_denoiser(std: float):
    """E[x0 | x] for x0 ~ N(0, std^2) and x = x0 + sigma n: the exact denoiser."""
    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        return x * std ** 2 / (std ** 2 + s ** 2)
    return denoise


class WideGaussianPrior(LatentDenoiser):
    """The tiny latent prior's network, but denoising as a N(0, WIDE^2) prior:
    what a trained prior on standardised latents (values up to +-7) looks like."""

    def denoise(self, x, sigma, given=None, mask=None):
        return gaussian_denoiser(WIDE)(x, sigma if torch.is_tensor(sigma) else torch.tensor([sigma]))


def test_samples_of_a_wide_prior_keep_their_spread_without_the_audio_clamp():
    settings = LATENT_GENERATE
    wide = generate(gaussian_denoiser(WIDE), 8, 512, [0, 1], settings=settings, clip=None)
    assert 0.85 * WIDE < float(wide.std()) < 1.15 * WIDE
    clamped = generate(gaussian_denoiser(WIDE), 8, 512, [0, 1], settings=settings)
    assert float(clamped.abs().max()) <= 1.0
    given = torch.zeros(2, 8, 512)
    mask = torch.zeros(8, dtype=torch.bool)
    mask[:4] = True
    imputed = impute(gaussian_denoiser(WIDE), given, mask, [0, 1], settings=settings, clip=None)
    assert float(imputed[:, :4].abs().max()) == 0.0
    assert 0.85 * WIDE < float(imputed[:, 4:].std()) < 1.15 * WIDE


def latents_the_decoder_gets(monkeypatch, sample_scale: float = 1.0) -> torch.Tensor:
    """Generate 1 s with the tiny latent model denoising as WideGaussianPrior
    (no latent statistics, so from_diffusion is the identity) and return what
    generate_latent_stems hands decode_stems."""
    import dataclasses

    model = tiny_latent_model()
    model.latent_prior.net.config = dataclasses.replace(model.latent_prior.config, sample_scale=sample_scale)
    model.latent_prior = WideGaussianPrior(model.latent_prior.net)
    seen = {}

    def capture(model, latents, frames, seed, level_maps=None, stems=None, band_maps=None):
        seen["latents"] = latents.clone()
        return np.zeros((latents.shape[0] // model.autoencoder.config.latent_channels, frames), np.float32)

    monkeypatch.setattr(latent_generation, "decode_stems", capture)
    latent_generation.generate_latent_stems(model, SR, seed=0, settings=LATENT_GENERATE.override(steps=8))
    return seen["latents"]


def test_latent_generation_decodes_unclamped_latents(monkeypatch):
    """The standardised latents go back to the autoencoder's units before any
    clamp (a clamp to [-1, 1] in the standardised space cut v2's loud half)."""
    assert 0.8 * WIDE < float(latents_the_decoder_gets(monkeypatch).std()) < 1.2 * WIDE


def latent_model_with_separator():
    model = tiny_latent_model()
    torch.manual_seed(1)
    model.separator = MaskSeparator(SeparatorConfig(**TINY_SEPARATOR)).eval()
    return model


def test_refinement_at_zero_noise_is_the_first_guess_and_sums_to_the_mix():
    model = latent_model_with_separator()
    models = ModelSet([model])
    mix = torch.from_numpy(np.random.default_rng(0).standard_normal((2, SR)).astype(np.float32) * 0.2)
    guess = first_guess(models, mix)
    still = refine_with_latent_prior(model, mix, guess, [0, 1],
                                     LATENT_REFINE.override(steps=1, sigma_max=1e-3, sigma_min=1e-3, method="euler"))
    assert float((still - guess).abs().max()) < 2e-3 * float(guess.abs().max())
    moved = refine_with_latent_prior(model, mix, guess, [0, 1], LATENT_REFINE.override(steps=2, sigma_max=2.0))
    assert float((moved - guess).abs().max()) > 1e-2 * float(guess.abs().max())
    np.testing.assert_allclose(moved.sum(1).numpy(), mix.numpy(), rtol=0, atol=1e-5)


def test_separation_with_latent_refinement_through_the_pipeline():
    models = ModelSet([latent_model_with_separator()])
    mix = (np.random.default_rng(1).standard_normal((1, 2 * SR)) * 0.2).astype(np.float32)
    settings = separation_settings("dirac", num_stems=4, isdm=False, has_first_guess=True, prior="latent", steps=2)
    assert settings.prior == "latent" and settings.sigma_max == LATENT_REFINE.sigma_max
    stems = separate_array(models, mix, SR, settings=settings)
    guess = separate_array(models, mix, SR, settings=SEPARATE_WARM)
    np.testing.assert_allclose(stems.sum(0), mix, rtol=0, atol=1e-5)
    assert not np.allclose(stems, guess, atol=1e-4)


def test_latent_refinement_is_refused_clearly_where_it_cannot_run(tiny_packed_path):
    from engine.storage.model import MSDMModel

    with pytest.raises(SettingsError, match="refining the first guess"):
        separation_settings("dirac", num_stems=4, isdm=False, has_first_guess=True, start="noise", prior="latent")
    settings = separation_settings("dirac", num_stems=4, isdm=False, has_first_guess=True, prior="latent")
    no_latent = ModelSet([MSDMModel.load(tiny_packed_path)])
    with pytest.raises(CommandError, match="no latent prior"):
        separate_array(no_latent, np.zeros((1, SR), np.float32), SR, settings=settings)


def test_evaluate_settings_name_the_latent_refinement():
    setting = parse_setting("latent:8:1:0:dpmpp2m:0.5")
    likelihood, sampler = settings_for(setting, ModelSet([latent_model_with_separator()]))
    assert likelihood == "dirac" and sampler.prior == "latent" and sampler.warm_start
    assert (sampler.steps, sampler.sigma_max, sampler.method) == (8, 0.5, "dpmpp2m")
    with pytest.raises(CommandError, match="only refines the first guess"):
        parse_setting("latent:8:1:0:dpmpp2m:noise")


def test_sample_scale_shrinks_the_sampled_latents_before_decoding(monkeypatch):
    latents = latents_the_decoder_gets(monkeypatch, sample_scale=0.5)
    assert 0.8 * 0.5 * WIDE < float(latents.std()) < 1.2 * 0.5 * WIDE


def test_calibration_picks_the_scale_whose_levels_match_real_ones():
    from training.calibrate_latent_prior import choose_scale

    real = np.array([0.05, 0.06, 0.04, 0.045])
    # Level grows 10 dB per 0.1 of scale and is right at 0.8 for every stem.
    by_scale = {s: real * 10 ** ((s - 0.8) * 5) for s in (0.6, 0.7, 0.8, 0.9, 1.0)}
    assert choose_scale(real, by_scale) == 0.8
    # Stems disagree: the least-squares compromise on log level.
    by_scale = {s: real * 10 ** ((s - np.array([0.7, 0.7, 0.9, 0.9])) * 5) for s in (0.6, 0.7, 0.8, 0.9, 1.0)}
    assert choose_scale(real, by_scale) == 0.8


def test_soft_limit_keeps_quiet_samples_and_rounds_peaks_under_full_scale():
    from engine.audio.latent_generation import LIMIT_KNEE, soft_limit

    x = np.linspace(-6, 6, 20001).astype(np.float32)
    y = soft_limit(x)
    quiet = np.abs(x) <= LIMIT_KNEE
    np.testing.assert_array_equal(y[quiet], x[quiet])
    assert np.abs(y).max() <= 1.0 and np.all(np.diff(y) >= 0)  # bounded, order kept
    # Slope 1 at the knee: no kink where the limiter takes over.
    step = float(x[1] - x[0])
    at = np.searchsorted(x, LIMIT_KNEE)
    assert abs((y[at + 1] - y[at]) / step - 1.0) < 1e-2
