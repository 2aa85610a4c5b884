"""A model conditioned on the mix, run by the engine's sampler, against the
closed form (issue 13, item 6).

For Gaussian stems the conditioned denoiser E[s | s + sigma e, y] is exact
(tests/support/gaussian_prior.py), and so is where the probability-flow ODE
takes any start: per bin, in the eigenbasis of the posterior covariance P,
x(0) - m = sqrt(lambda / (lambda + s^2)) (x(s) - m). So the sampler must give
posterior draws from noise, and a warm start from level s keeps
sqrt(lambda / (lambda + s^2)) of its guess's error and s^2 / (lambda + s^2) of
the posterior's spread: close to exact once s is a few times the largest
posterior standard deviation (3x: >= 90 % of the spread, <= 10 % of the squared
error left)."""

from __future__ import annotations

import pytest
import torch

from engine.core.diffusion import ItemNoise, karras_sigmas, sample

from conftest import colored_prior

LENGTH, STEMS = 512, 4


@pytest.fixture(scope="module")
def case():
    prior = colored_prior()
    truth = prior.sample(1, LENGTH, torch.Generator().manual_seed(3))
    mix = truth.sum(1, keepdim=True)
    return prior, truth, mix, prior.separation_mean(mix), prior.separation_variance(LENGTH).float()


def _conditioned(prior, mix):
    return lambda x, sigma: prior.conditional_denoise(x, sigma, mix.expand(x.shape[0], 1, LENGTH))


def _run(prior, mix, draws, sigma_start, steps, method, guess=None):
    """The engine's sampler (unconditional task) on the conditioned denoiser, and
    the noise it started from."""
    shape = (draws, STEMS, LENGTH)
    seeds = list(range(100, 100 + draws))
    start_noise = ItemNoise(seeds).randn_like(torch.empty(shape))
    sigmas = karras_sigmas(steps, 1e-4, sigma_start)
    out = sample(_conditioned(prior, mix), ItemNoise(seeds), shape, sigmas, method=method,
                 start=None if guess is None else guess.expand(shape))
    begin = (0 if guess is None else guess.expand(shape)) + float(sigmas[0]) * start_noise
    return out, begin


def test_the_conditioned_denoiser_is_the_joint_gaussian_answer(case):
    """Two derivations agree: m + P (P + s^2 I)^-1 (x - m) equals
    E[s | z] = C_sz C_zz^-1 z over z = (x, y) jointly."""
    prior, truth, mix, _, _ = case
    sigma = 0.05
    x = truth + sigma * torch.randn(truth.shape, generator=torch.Generator().manual_seed(1))
    cov = prior.covariance(LENGTH)
    col = cov.sum(-1, keepdim=True)  # Sigma 1
    eye = torch.eye(STEMS, dtype=torch.float64).expand_as(cov)
    czz = torch.cat([torch.cat([cov + sigma**2 * eye, col], -1),
                     torch.cat([col.transpose(-1, -2), col.sum(-2, keepdim=True)], -1)], -2)
    csz = torch.cat([cov, col], -1)
    gain = torch.linalg.solve(czz, csz.transpose(-1, -2)).transpose(-1, -2)  # czz is symmetric
    expected = prior._apply(torch.cat([x, mix], 1), gain)
    got = prior.conditional_denoise(x, torch.tensor(sigma), mix)
    assert ((got - expected) ** 2).mean() < 1e-6 * (expected**2).mean()
    # And it is a real conditioning: without the mix the answer differs.
    assert ((prior.denoise(x, torch.tensor(sigma)) - expected) ** 2).mean() > 1e-3 * (expected**2).mean()


def test_from_noise_each_draw_lands_where_the_exact_flow_does(case):
    """Sample by sample, not only in distribution: Heun 32 steps from sigma 1
    ends within 0.1 % of a posterior variance of the ODE's exact endpoint."""
    prior, _, mix, _, posterior_var = case
    out, begin = _run(prior, mix, 4, 1.0, 32, "heun")
    exact = prior.conditional_flow(begin, 1.0, mix)
    assert (((out - exact) ** 2).mean(dim=(0, 2)) / posterior_var).max() < 1e-3


def test_from_noise_the_draws_are_the_posterior(case):
    """64 draws: their sum is the mix (no constraint was imposed: the
    conditioned prior knows it), their mean the Wiener filter, their spread
    the posterior variance."""
    prior, _, mix, wiener, posterior_var = case
    out, _ = _run(prior, mix, 64, 1.0, 16, "dpmpp2m")
    assert (out.sum(1, keepdim=True) - mix).abs().max() < 1e-3 * mix.abs().max()
    spread = ((out - wiener) ** 2).mean(dim=(0, 2)) / posterior_var
    assert torch.all((spread - 1).abs() < 0.15), spread
    mean_error = ((out.mean(0) - wiener[0]) ** 2).mean(-1) / posterior_var
    assert mean_error.max() < 0.1, mean_error  # 1/64 expected


@pytest.mark.parametrize("sigma_start", [0.003, 0.03, 0.3])
@pytest.mark.parametrize("method, steps, tolerance", [("heun", 16, 1e-3), ("dpmpp2m", 8, 2e-2)])
def test_a_warm_start_follows_the_closed_form(case, sigma_start, method, steps, tolerance):
    """From a bad guess (mix / 4) at any start level, the sampler ends where the
    exact flow does; Heun 16 steps to 0.1 % of a posterior variance, the
    product's few-step dpmpp2m 8 steps to 2 %."""
    prior, _, mix, _, posterior_var = case
    guess = mix.expand(1, STEMS, LENGTH) / STEMS
    out, begin = _run(prior, mix, 4, sigma_start, steps, method, guess)
    exact = prior.conditional_flow(begin, sigma_start, mix)
    assert (((out - exact) ** 2).mean(dim=(0, 2)) / posterior_var).max() < tolerance


def test_a_warm_start_is_close_to_exact_from_three_posterior_deviations(case):
    """The largest posterior standard deviation over bins (sqrt of P's largest
    eigenvalue) sets the level: from 3x it, a start at the exact mean gives
    >= 90 % of the posterior's spread in every stem and a bad guess keeps
    <= 10 % of its squared error; from a tenth of it, the draws have under 10 %
    of the spread and some stem keeps over half of the guess's error (bins where
    the prior has almost no power are cleaned at any level, hence "some")."""
    prior, _, mix, wiener, posterior_var = case
    largest = float(torch.linalg.eigvalsh(prior.posterior_covariance(LENGTH)).max().sqrt())
    bad = mix.expand(1, STEMS, LENGTH) / STEMS
    bad_error = ((bad[0] - wiener[0]) ** 2).mean(-1) / posterior_var
    for level, close in ((3 * largest, True), (0.1 * largest, False)):
        exact_start, _ = _run(prior, mix, 32, level, 16, "heun", wiener)
        spread = ((exact_start - wiener) ** 2).mean(dim=(0, 2)) / posterior_var
        bad_start, _ = _run(prior, mix, 32, level, 16, "heun", bad)
        kept = ((bad_start.mean(0) - wiener[0]) ** 2).mean(-1) / posterior_var / bad_error
        if close:
            assert spread.min() > 0.85 and kept.max() < 0.12, (spread, kept)
        else:
            assert spread.max() < 0.1 and kept.max() > 0.5, (spread, kept)
