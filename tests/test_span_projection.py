"""SpanProjected: the latent prior's estimate at the data mean outside the span
of its output layer. The layer writes a patch of P frames x W channels from F
features, so outside that span D(x, sigma) = c_skip x and the probability-flow
ODE carries the starting noise to the end as unit-variance white noise; the
projection makes those directions end at 0. Checked: the exact correction,
the ODE's closed form with and without it, the autoguided union, the model
file flag and the calibration of both sampling scales."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from engine.audio.latent_generation import generate_latent_stems
from engine.core.latent_prior import AutoGuided, LatentPriorConfig, SpanProjected, sampling_denoiser, span_basis
from engine.core.tasks import LATENT_GENERATE, LATENT_IMPUTE, SamplerSettings, generate
from engine.storage.model import MSDMModel

from support.latent_models import tiny_latent_model
from test_autoguidance import with_guide

SR = 22050


def patches(x: torch.Tensor, patch: int) -> torch.Tensor:
    """[B, W, K] -> [B, K / P, W P] in the output layer's (channel, frame) order."""
    b, w, k = x.shape
    return x.reshape(b, w, k // patch, patch).permute(0, 2, 1, 3).reshape(b, k // patch, w * patch)


def test_the_correction_is_exactly_the_skip_path_outside_the_output_span():
    prior = tiny_latent_model().latent_prior
    projected = SpanProjected(prior)
    config = prior.config
    rows = prior.output_rows()                                    # [F, W P]
    assert rows.shape == (config.channels, config.width * config.patch)
    assert projected.basis.shape == (config.width * config.patch, config.channels)   # rank F of W P
    x = torch.randn(2, config.width, 64)
    sigma = torch.tensor([0.3, 4.0])
    outside = projected.complement(x)
    # What is left is orthogonal to every vector the output layer can write...
    assert float((patches(outside, config.patch) @ rows.T).abs().max()) < 1e-4
    # ...and a sample made of those vectors has nothing outside.
    inside = (torch.randn(2, 32, config.channels) @ rows).reshape(2, 32, config.width, config.patch)
    inside = inside.permute(0, 2, 1, 3).reshape(2, config.width, 64)
    assert float(projected.complement(inside).abs().max()) < 1e-4
    c_skip = config.sigma_data ** 2 / (sigma ** 2 + config.sigma_data ** 2)
    torch.testing.assert_close(projected(x, sigma), prior(x, sigma) - c_skip[:, None, None] * outside,
                               atol=1e-5, rtol=0)
    # Along those directions the network adds nothing: D - c_skip x there is the bias's share only.
    residual = patches(prior(x, sigma) - c_skip[:, None, None] * x, config.patch)
    bias = prior.net.stem_out.bias.detach()[:, None].expand(-1, config.patch).reshape(-1)
    correction = residual - (residual @ projected.basis) @ projected.basis.T
    bias_outside = bias - (bias @ projected.basis) @ projected.basis.T
    c_out = sigma * config.sigma_data / (sigma ** 2 + config.sigma_data ** 2).sqrt()
    torch.testing.assert_close(correction, c_out[:, None, None] * bias_outside.expand_as(correction),
                               atol=1e-5, rtol=0)


def test_the_ode_leaves_unit_noise_outside_the_span_and_nothing_with_the_projection():
    """Outside the span dx/dsigma = x sigma / (sigma^2 + sd^2), so the ODE maps
    x(sigma_max) = sigma_max n to sd sigma_max / sqrt(sigma_max^2 + sd^2) n;
    with the projection dx/dsigma = x / sigma and the sample ends at 0."""
    prior = tiny_latent_model().latent_prior
    torch.nn.init.zeros_(prior.net.stem_out.bias)
    config = prior.config
    settings = SamplerSettings(steps=64, sigma_min=0.002, sigma_max=20.0, method="heun", prior="latent")
    seeds = list(range(6))
    plain = generate(prior, config.width, 128, seeds, settings=settings, clip=None)
    projected = SpanProjected(prior)
    sampled = generate(projected, config.width, 128, seeds, settings=settings, clip=None)
    sd, smax = config.sigma_data, settings.sigma_max
    expected = sd * smax / np.sqrt(smax ** 2 + sd ** 2)
    outside_plain = projected.complement(plain)
    # The complement has W P - F of W P dimensions: its per-entry variance is that share of expected^2.
    share = 1 - projected.basis.shape[1] / (config.width * config.patch)
    assert float(outside_plain.pow(2).mean().sqrt()) == pytest.approx(expected * np.sqrt(share), rel=0.05)
    assert float(projected.complement(sampled).abs().max()) < 1e-3
    # Inside the span the two samplers are not the same (the network sees other inputs), but both sample.
    assert torch.isfinite(sampled).all() and float(sampled.std()) > 0.05


def test_autoguided_sampling_projects_onto_the_union_of_both_output_spans():
    model = with_guide(tiny_latent_model(), weight=2.0)
    prior, guide = model.latent_prior, model.latent_guide
    guided = AutoGuided(prior, guide, 2.0)
    basis = span_basis(guided.output_networks())
    assert basis.shape[1] == 2 * prior.config.channels            # two random layers: independent spans
    projected = SpanProjected(guided)
    x = torch.randn(2, prior.config.width, 64)
    sigma = torch.tensor([0.5, 2.0])
    outside = projected.complement(x)
    for net in (prior, guide):
        assert float((patches(outside, prior.config.patch) @ net.output_rows().T).abs().max()) < 1e-4
    sd = prior.config.sigma_data
    torch.testing.assert_close(projected(x, sigma), guided(x, sigma) - (sd ** 2 / (sigma ** 2 + sd ** 2))[:, None, None]
                               * outside, atol=1e-5, rtol=0)
    # The conditioning and classifier-free guidance run over the projected denoiser.
    given = torch.randn(2, prior.config.width, 64)
    mask = torch.tensor([[False, True, False, False]]).expand(2, 4)
    cond = projected.with_given(given, mask, 2.0)(x, sigma)
    free = projected(x, sigma)
    assert not torch.allclose(cond, free)
    # sampling_denoiser composes them as the model file asks.
    assert isinstance(sampling_denoiser(prior, guide, 2.0), AutoGuided)
    prior.config = prior.net.config = dataclasses.replace(prior.config, span_projection=True)
    chosen = sampling_denoiser(prior, guide, 2.0)
    assert isinstance(chosen, SpanProjected) and isinstance(chosen.denoiser, AutoGuided)
    assert isinstance(sampling_denoiser(prior, None, 1.0).denoiser, type(prior))


def test_the_flag_travels_in_the_model_file_and_changes_generation(tmp_path):
    from training.pack_model import main as pack_main

    model = tiny_latent_model()
    assert model.latent_prior.config.span_projection is False   # files before it sample as they did
    model.save(tmp_path / "base.safetensors")
    out = tmp_path / "projected.safetensors"
    assert pack_main(["--prior", str(tmp_path / "base.safetensors"), "--span-projection", "-o", str(out)]) == 0
    loaded = MSDMModel.load(out)
    assert loaded.latent_prior.config.span_projection is True
    assert LatentPriorConfig.from_dict({k: v for k, v in loaded.latent_prior.config.to_dict().items()
                                        if k != "span_projection"}).span_projection is False
    with pytest.raises(ValueError, match="span_projection"):
        LatentPriorConfig(span_projection="yes")
    frames = 2 * SR
    settings = LATENT_GENERATE.override(steps=4)
    before = generate_latent_stems(MSDMModel.load(tmp_path / "base.safetensors"), frames, seed=3, settings=settings)
    after = generate_latent_stems(loaded, frames, seed=3, settings=settings)
    assert after.shape == before.shape and np.isfinite(after).all() and not np.allclose(after, before)
    # Imputation keeps its given stem exactly.
    drums = np.random.default_rng(1).standard_normal(frames).astype(np.float32) * 0.1
    given = np.zeros((4, frames), np.float32)
    given[1] = drums
    imputed = generate_latent_stems(loaded, frames, seed=3, settings=LATENT_IMPUTE.override(steps=3, harmony=0.0,
                                    rhythm=0.0), given=given, given_stems=(1,))
    np.testing.assert_array_equal(imputed[1], drums)
    assert pack_main(["--prior", str(out), "--no-span-projection", "-o", str(tmp_path / "off.safetensors")]) == 0
    assert MSDMModel.load(tmp_path / "off.safetensors").latent_prior.config.span_projection is False


def test_the_diagnosis_splits_patch_energy_as_the_projection_does():
    from training.diagnose_latent_prior import span_energy

    prior = tiny_latent_model().latent_prior
    projected = SpanProjected(prior)
    x = torch.randn(3, prior.config.width, 64)
    inside, outside = span_energy(x, projected.basis, prior.config.patch)
    patches_per_item = 64 // prior.config.patch
    assert outside == pytest.approx(float(projected.complement(x).pow(2).sum()) / (3 * patches_per_item), rel=1e-4)
    assert inside + outside == pytest.approx(float(x.pow(2).sum()) / (3 * patches_per_item), rel=1e-4)


def test_a_full_rank_head_starts_at_zero_and_can_write_every_direction():
    from engine.core.latent_prior import LatentDenoiser, LatentUNet
    from training.train_latent_prior import load_init

    prior = tiny_latent_model().latent_prior
    config = dataclasses.replace(prior.config, head_channels=prior.config.width)
    headed = LatentDenoiser(LatentUNet(config))
    load_init(headed, prior.net.state_dict())                 # a prior without the head loads into one with it
    x = torch.randn(2, config.width, 64)
    sigma = torch.tensor([0.2, 3.0])
    torch.testing.assert_close(headed(x, sigma), prior(x, sigma), atol=1e-6, rtol=0)
    # Trained (here: random), the head's rows join the patch layer's: the span is all of the patch space.
    torch.nn.init.normal_(headed.net.head[-1].weight, std=0.02)
    assert not torch.allclose(headed(x, sigma), prior(x, sigma))
    basis = span_basis(headed.output_networks())
    assert basis.shape == (config.width * config.patch, config.width * config.patch)
    assert float(SpanProjected(headed).complement(x).abs().max()) < 1e-4
    with pytest.raises(ValueError, match="head_channels"):
        dataclasses.replace(config, head_channels=-1)
