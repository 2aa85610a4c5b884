"""Warm-started separation (a first guess refined from a low noise level)
against the closed-form Gaussian prior, whose posterior mean (the Wiener
filter) and variance are exact (engine.gaussian_prior)."""

from __future__ import annotations

import pytest
import torch

from engine.core.tasks import SEPARATE_DIRAC, separate

from conftest import colored_prior

LENGTH, DRAWS = 512, 16


def _separate(prior, mix, guess, sigma_start):
    settings = SEPARATE_DIRAC.override(steps=8, sigma_max=sigma_start, method="dpmpp2m", s_churn=0.0,
                                       num_resamples=1)
    return separate(prior.denoise, mix.expand(DRAWS, 1, LENGTH), 4, list(range(DRAWS)), settings=settings,
                    first_guess=None if guess is None else guess.expand(DRAWS, 4, LENGTH))


@pytest.fixture(scope="module")
def case():
    prior = colored_prior()
    truth = prior.sample(1, LENGTH, torch.Generator().manual_seed(3))
    mix = truth.sum(1, keepdim=True)
    return prior, mix, prior.separation_mean(mix), prior.separation_variance(LENGTH).float()


def test_a_low_start_keeps_an_exact_first_guess(case):
    """The Wiener estimate is the posterior mean: refined from sigma 0.003 (a
    tenth of the posterior's standard deviation, ~0.02) it stays put."""
    prior, mix, wiener, posterior_var = case
    out = _separate(prior, mix, wiener, 0.003)
    deviation = ((out - wiener) ** 2).mean(dim=(0, 2)) / posterior_var
    assert deviation.max() < 0.05, deviation
    assert (out.sum(1, keepdim=True) - mix).abs().max() < 1e-6  # Dirac: sums to the mix


def test_the_higher_the_start_the_more_of_a_bad_guess_goes(case):
    """A guess of mix / 4 is off by 2-5 posterior variances. The refinement
    removes part of that error even from sigma 0.003 (bins where the prior has
    almost no power are cleaned at any level), and more the higher it starts:
    the start level has to match the guess's error."""
    prior, mix, wiener, posterior_var = case
    guess = mix.expand(1, 4, LENGTH) / 4
    errors = [((guess[0] - wiener[0]) ** 2).mean(-1) / posterior_var]
    for sigma_start in (0.003, 0.03, 0.1):
        out = _separate(prior, mix, guess, sigma_start)
        errors.append(((out.mean(0) - wiener[0]) ** 2).mean(-1) / posterior_var)
    for higher, lower in zip(errors[1:], errors):
        assert torch.all(higher < lower), errors
    assert errors[-1].max() < 0.6, errors


def test_a_high_start_forgets_the_guess(case):
    """From sigma 0.3 (>10 posterior standard deviations) a bad guess and a
    start from pure noise give the same statistics: the warm start is then as
    exact as the sampler itself, and the guess no longer matters."""
    prior, mix, wiener, posterior_var = case
    warm = _separate(prior, mix, mix.expand(1, 4, LENGTH) / 4, 0.3)
    cold = _separate(prior, mix, None, 0.3)
    for out in (warm, cold):
        assert (out.sum(1, keepdim=True) - mix).abs().max() < 1e-6
    warm_dev = ((warm - wiener) ** 2).mean(dim=(0, 2)) / posterior_var
    cold_dev = ((cold - wiener) ** 2).mean(dim=(0, 2)) / posterior_var
    assert torch.all((warm_dev / cold_dev - 1).abs() < 0.3), (warm_dev, cold_dev)
    warm_mean = ((warm.mean(0) - wiener[0]) ** 2).mean(-1) / posterior_var
    assert warm_mean.max() < 0.8, warm_mean  # the bad guess's error (1.1-2.1) is gone


def test_the_warm_start_must_match_the_batch():
    prior = colored_prior()
    mix = torch.zeros(2, 1, 64)
    with pytest.raises(ValueError, match="warm start of shape"):
        separate(prior.denoise, mix, 4, [0, 1], settings=SEPARATE_DIRAC.override(steps=2),
                 first_guess=torch.zeros(1, 4, 64))
