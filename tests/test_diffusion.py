"""Schedule, per-item seeding, sampler bookkeeping."""

from __future__ import annotations


import pytest
import torch

from engine.core.diffusion import Cancelled, ItemNoise, karras_sigmas, sample, seed_for
from engine.core.tasks import GENERATE, SEPARATE_DIRAC, SamplerSettings, generate, separate

from conftest import colored_prior


def test_karras_schedule_closed_form():
    sigmas = karras_sigmas(5, 1e-4, 20.0, rho=7.0)
    assert sigmas.shape == (6,) and sigmas[-1] == 0
    assert sigmas[0].item() == pytest.approx(20.0, rel=1e-6)
    assert sigmas[4].item() == pytest.approx(1e-4, rel=1e-5)
    # EDM eq. 5 at i = 2 of 5: (smax^(1/rho) + 0.5 (smin^(1/rho) - smax^(1/rho)))^rho
    mid = (20.0 ** (1 / 7) + 0.5 * (1e-4 ** (1 / 7) - 20.0 ** (1 / 7))) ** 7
    assert sigmas[2].item() == pytest.approx(mid, rel=1e-5)
    assert torch.all(sigmas[:-1] > sigmas[1:])


@pytest.mark.parametrize("bad", [dict(steps=0, sigma_min=1e-4, sigma_max=1.0),
                                 dict(steps=5, sigma_min=0.0, sigma_max=1.0),
                                 dict(steps=5, sigma_min=2.0, sigma_max=1.0)])
def test_karras_schedule_rejects_bad_arguments(bad):
    with pytest.raises(ValueError):
        karras_sigmas(**bad)


def test_same_seed_same_audio_whatever_the_batch():
    prior = colored_prior()
    settings = GENERATE.override(steps=12, s_churn=20.0)
    alone = generate(prior.denoise, 4, 256, [7], settings)
    batched = generate(prior.denoise, 4, 256, [3, 7, 11], settings)
    torch.testing.assert_close(batched[1], alone[0], atol=1e-6, rtol=1e-5)
    assert not torch.allclose(batched[0], batched[1])


def test_seed_for_separates_positions():
    assert seed_for(0, 1, 0) != seed_for(0, 0, 1) != seed_for(1, 1, 0)
    assert seed_for(5, 2) == seed_for(5, 2)


def test_callback_counts_network_evaluations():
    prior = colored_prior()
    calls = []

    def counting(x, sigma):
        calls.append(1)
        return prior.denoise(x, sigma)

    progress = []
    settings = SEPARATE_DIRAC.override(steps=6, num_resamples=2, method="dpmpp2m")
    mix = prior.sample(1, 128).sum(1, keepdim=True)
    separate(counting, mix, 4, [0], settings=settings, callback=progress.append)
    assert len(calls) == settings.nfe == 12
    assert [p["i"] for p in progress] == list(range(6)) and progress[-1]["nfe"] == 12

    heun = SamplerSettings(steps=6, sigma_min=1e-3, sigma_max=1.0, method="heun")
    calls.clear()
    generate(counting, 4, 128, [0], heun)
    assert len(calls) == heun.nfe == 11  # the last step, to sigma = 0, is an Euler step


def test_cancel_from_callback_stops_sampling():
    prior = colored_prior()
    seen = []

    def cancel_at_third(info):
        seen.append(info["i"])
        if info["i"] == 2:
            raise Cancelled()

    with pytest.raises(Cancelled):
        generate(prior.denoise, 4, 64, [0], GENERATE.override(steps=50), callback=cancel_at_third)
    assert seen == [0, 1, 2]


def test_item_noise_checks_batch_size():
    with pytest.raises(ValueError, match="seeds"):
        ItemNoise([1, 2]).randn_like(torch.zeros(3, 1, 4))


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="heun"):
        sample(colored_prior().denoise, ItemNoise([0]), (1, 4, 8), karras_sigmas(3, 0.1, 1.0), method="rk4")
