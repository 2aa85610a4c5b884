"""Imputation with a denoiser conditioned on the given stems, against the
closed form (support.gaussian_prior.given_denoise).

Replacement imputation with an unconditional denoiser recovers only part of
E[missing | given] (tests/test_tasks_gaussian.py). The latent prior instead
learns D(x, sigma | given); with the exact conditioned denoiser the samplers
must then draw exact conditional samples: their mean is the conditional mean
(share >= 0.95) and their distance to the truth that of an exact conditional
draw (within 15 %), which is what issue 20 asks of the imputation path.
"""

from __future__ import annotations

import pytest
import torch

from engine.core.tasks import IMPUTE, LATENT_IMPUTE, impute
from support.gaussian_prior import GaussianStemPrior, band_spectrum

LENGTH = 1024
DRAWS = 16


def correlated_prior() -> GaussianStemPrior:
    """Four stems in overlapping bands, strongly correlated (so the given
    stems say much about the others)."""
    correlation = torch.tensor([[1.0, 0.8, 0.5, 0.0], [0.8, 1.0, 0.6, 0.2],
                                [0.5, 0.6, 1.0, 0.3], [0.0, 0.2, 0.3, 1.0]])
    spectra = [band_spectrum(0.05, 0.05, 0.02), band_spectrum(0.08, 0.06, 0.01),
               band_spectrum(0.1, 0.08, 0.008), band_spectrum(0.12, 0.08, 0.005)]
    return GaussianStemPrior(spectra, correlation)


def conditioned(prior: GaussianStemPrior, given: torch.Tensor, given_stems: list[int]):
    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return prior.given_denoise(x, sigma, given, given_stems)
    return denoise


@pytest.mark.parametrize("given_stems", [[1, 3], [2], [0, 1]])
@pytest.mark.parametrize("settings", [LATENT_IMPUTE, IMPUTE.override(steps=64)], ids=["latent-default", "euler-churn"])
def test_conditioned_imputation_draws_exact_conditional_samples(given_stems, settings):
    prior = correlated_prior()
    truth = prior.sample(1, LENGTH, torch.Generator().manual_seed(3)).expand(DRAWS, 4, LENGTH).clone()
    mask = torch.zeros(4, dtype=torch.bool)
    mask[given_stems] = True
    free = [n for n in range(4) if n not in given_stems]

    samples = impute(conditioned(prior, truth, given_stems), truth, mask, list(range(DRAWS)), settings)

    torch.testing.assert_close(samples[:, given_stems], truth[:, given_stems], rtol=0, atol=0)
    expected = prior.imputation_mean(truth[:1], given_stems)[0]
    variance = prior.imputation_variance(LENGTH, given_stems).float()
    for n in free:
        # The share of the conditional mean the draws carry (1: all of it).
        share = float((samples[:, n] * expected[n]).sum() / (DRAWS * (expected[n] ** 2).sum()))
        assert share == pytest.approx(1.0, abs=0.05), (n, share)
        # An exact conditional draw is as far from the truth as two
        # independent conditional draws are from each other: 2 x variance.
        distance = float(((samples[:, n] - truth[:, n]) ** 2).mean())
        exact = float(((expected[n] - truth[0, n]) ** 2).mean() + variance[n])
        assert distance == pytest.approx(exact, rel=0.15), (n, distance, exact)


def test_unconditioned_replacement_misses_part_of_the_mean():
    """The contrast the conditioning is for: the same sampler with the
    unconditional denoiser (replacement only) carries clearly less of the
    conditional mean of a strongly correlated stem."""
    prior = correlated_prior()
    truth = prior.sample(1, LENGTH, torch.Generator().manual_seed(3)).expand(DRAWS, 4, LENGTH).clone()
    mask = torch.tensor([False, True, False, True])
    samples = impute(prior.denoise, truth, mask, list(range(DRAWS)), LATENT_IMPUTE)
    expected = prior.imputation_mean(truth[:1], [1, 3])[0]
    share = float((samples[:, 0] * expected[0]).sum() / (DRAWS * (expected[0] ** 2).sum()))
    assert share < 0.9
