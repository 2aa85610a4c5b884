"""The three tasks against a prior whose answers are known in closed form
(support.gaussian_prior): correlated Gaussian stems with different spectra."""

from __future__ import annotations

import pytest
import torch

from engine.core.diffusion import StackedDenoiser
from engine.core.tasks import (
    GENERATE,
    IMPUTE,
    SEPARATE_DIRAC,
    SEPARATE_GAUSSIAN,
    generate,
    impute,
    separate,
)
from support.gaussian_prior import GaussianStemPrior

from conftest import colored_prior

LENGTH = 512


def band_powers(x: torch.Tensor, bands: int = 8) -> torch.Tensor:
    """Mean periodogram per stem in `bands` equal frequency bands: [N, bands]."""
    spec = torch.fft.rfft(x.double(), dim=-1).abs() ** 2 / x.shape[-1]
    spec = spec[..., 1:]  # drop DC, so bands split evenly
    usable = spec.shape[-1] // bands * bands
    return spec[..., :usable].reshape(*spec.shape[:-1], bands, -1).mean(dim=(0, -1))


def test_generation_has_the_priors_spectrum():
    prior = colored_prior()
    samples = generate(prior.denoise, 4, LENGTH, list(range(48)), GENERATE.override(steps=40, method="heun"))
    reference = prior.sample(4000, LENGTH, torch.Generator().manual_seed(1))
    got, expected = band_powers(samples), band_powers(reference)
    strong = expected > 0.05 * expected.max(dim=1, keepdim=True).values  # bands with real power
    ratio = got[strong] / expected[strong]
    # 48 samples x ~30 bins per band: sampling error of a band power is ~3-5 %.
    assert ratio.min() > 0.8 and ratio.max() < 1.2, ratio
    # Cross-stem correlation (0.5 between bass and drums at every frequency) is learned too.
    corr = torch.corrcoef(torch.stack([samples[:, 0].flatten(), samples[:, 1].flatten()]))[0, 1]
    ref_corr = torch.corrcoef(torch.stack([reference[:, 0].flatten(), reference[:, 1].flatten()]))[0, 1]
    assert abs(corr - ref_corr) < 0.1


def test_generation_with_the_paper_sampler_converges_to_the_prior_variance():
    prior = colored_prior()
    samples = generate(prior.denoise, 4, LENGTH, list(range(32)), GENERATE)  # 150 Euler steps, churn 20
    ratio = samples.var(dim=(0, 2)).double() / prior.prior_variance(LENGTH)
    assert ratio.min() > 0.8 and ratio.max() < 1.15, ratio


@pytest.mark.parametrize("likelihood,settings", [("dirac", SEPARATE_DIRAC.override(steps=60)),
                                                 ("gaussian", SEPARATE_GAUSSIAN.override(steps=60))])
def test_separation_samples_the_wiener_posterior(likelihood, settings):
    prior = colored_prior()
    truth = prior.sample(1, LENGTH, torch.Generator().manual_seed(3))
    mix = truth.sum(1, keepdim=True)
    draws = 24
    samples = separate(prior.denoise, mix.expand(draws, 1, LENGTH), 4, list(range(draws)),
                       likelihood=likelihood, settings=settings)
    wiener = prior.separation_mean(mix)[0]
    posterior_var = prior.separation_variance(LENGTH).float()
    # Each draw deviates from the posterior mean by the posterior's variance ...
    deviation = ((samples - wiener) ** 2).mean(dim=(0, 2))
    assert torch.all((deviation / posterior_var - 1).abs() < 0.25), (deviation, posterior_var)
    # ... and their average approaches the Wiener estimate (error ~ variance / draws;
    # the Gaussian likelihood only becomes exact as sigma -> 0, so it gets more room).
    mean_error = ((samples.mean(0) - wiener) ** 2).mean(dim=-1)
    room = 3 if likelihood == "dirac" else 5
    assert torch.all(mean_error < room * posterior_var / draws), (mean_error, posterior_var / draws)
    # The separation beats the mixture as an estimate of each stem.
    assert ((samples - truth) ** 2).mean() < ((mix - truth) ** 2).mean() / 2
    residual = (samples.sum(1, keepdim=True) - mix).abs().max()
    if likelihood == "dirac":
        assert residual < 1e-6  # sums to the mixture to float precision
    else:
        assert residual < 0.1 * mix.abs().max()  # a soft constraint: close, not exact


def test_dirac_separation_sums_exactly_for_every_constrained_stem():
    prior = colored_prior()
    mix = prior.sample(2, 256, torch.Generator().manual_seed(4)).sum(1, keepdim=True)
    for constrained in range(4):
        # (Far fewer steps make the Dirac sampler unstable: the constrained
        # derivative is N times stiffer than the free one.)
        out = separate(prior.denoise, mix, 4, [0, 1], settings=SEPARATE_DIRAC.override(steps=40),
                       constrained_stem=constrained)
        assert (out.sum(1, keepdim=True) - mix).abs().max() < 1e-6


def test_imputation_follows_the_conditional_mean():
    """Replacement imputation (the paper's) is only approximately the conditional:
    on this prior it recovers a fraction of E[bass | drums]; RePaint-style
    resampling (`num_resamples`) recovers more. Both are measured here."""
    prior = colored_prior()
    truth = prior.sample(1, LENGTH, torch.Generator().manual_seed(5))
    mask = torch.tensor([False, True, False, False])  # drums given; bass correlates with them (0.5)
    draws = 24
    given = truth.expand(draws, 4, LENGTH).clone()
    expected = prior.imputation_mean(truth, [1])[0]
    prior_var = prior.prior_variance(LENGTH).float()

    def run(**overrides):
        samples = impute(prior.denoise, given, mask, list(range(draws)), IMPUTE.override(steps=80, **overrides))
        torch.testing.assert_close(samples[:, 1], given[:, 1], rtol=0, atol=0)  # given stems come back exactly
        mean = samples.mean(0)
        # How much of the conditional mean of the bass the average draw carries.
        captured = float((mean[0] * expected[0]).sum() / (expected[0] ** 2).sum())
        return mean, captured

    mean, captured_plain = run()
    mean_resampled, captured_resampled = run(num_resamples=8)
    assert captured_plain > 0.1
    assert captured_resampled > captured_plain + 0.2
    # Piano is independent of the drums: its conditional mean is 0, and stays so.
    assert ((mean[3] - expected[3]) ** 2).mean() < 3 * prior_var[3] / draws
    # Resampling brings the bass closer to its conditional mean.
    assert ((mean_resampled[0] - expected[0]) ** 2).mean() < ((mean[0] - expected[0]) ** 2).mean()


def test_isdm_separation_from_single_stem_models():
    """ISDM: one single-stem prior per stem, stacked, separates like the joint
    model of independent stems (the Wiener filter)."""
    joint = colored_prior()
    independent = GaussianStemPrior(joint.spectra)  # same spectra, no correlation
    singles = [GaussianStemPrior([spectrum]) for spectrum in joint.spectra]
    stacked = StackedDenoiser([p.denoise for p in singles])
    x = independent.sample(2, 128) + 0.1 * torch.randn(2, 4, 128)
    torch.testing.assert_close(stacked(x, torch.tensor([0.1, 0.1])), independent.denoise(x, torch.tensor([0.1, 0.1])))
    truth = independent.sample(1, LENGTH, torch.Generator().manual_seed(6))
    mix = truth.sum(1, keepdim=True)
    draws = 16
    for likelihood, settings in (("dirac", SEPARATE_DIRAC.override(steps=60, s_churn=40.0)),
                                 ("gaussian", SEPARATE_GAUSSIAN.override(steps=60))):
        samples = separate(stacked, mix.expand(draws, 1, LENGTH), 4, list(range(draws)),
                           likelihood=likelihood, settings=settings)
        deviation = ((samples - independent.separation_mean(mix)[0]) ** 2).mean(dim=(0, 2))
        posterior_var = independent.separation_variance(LENGTH).float()
        assert torch.all((deviation / posterior_var - 1).abs() < 0.3), (likelihood, deviation, posterior_var)
