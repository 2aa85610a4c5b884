"""Our U-Net against audio-diffusion-pytorch 0.0.43, the paper's network:
one state dict loaded into both must give the same output."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from audio_diffusion_pytorch import AudioDiffusionModel, LogNormalDistribution

from engine.core.config import PAPER, SMALL, TINY
from engine.core.diffusion import KarrasDenoiser
from engine.core.network import UNet1d, count_parameters


def reference_model(config):
    kwargs = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config.unet).items()}
    return AudioDiffusionModel(
        **kwargs, kernel_sizes_init=[1, 3, 7],
        diffusion_sigma_distribution=LogNormalDistribution(mean=-3.0, std=1.0),
        diffusion_sigma_data=config.diffusion.sigma_data, diffusion_dynamic_threshold=0.0,
    ).eval()


def check_parity(config, length_multiple: int):
    torch.manual_seed(0)
    reference = reference_model(config)
    ours = UNet1d(config.unet).eval()
    # Names and shapes must match exactly, both ways (strict load).
    ours.load_state_dict(reference.unet.state_dict(), strict=True)
    assert set(ours.state_dict()) == set(reference.unet.state_dict())
    denoiser = KarrasDenoiser(ours, config.diffusion.sigma_data)
    x = torch.randn(2, config.unet.in_channels, config.unet.downsampling_factor * length_multiple) * 0.3
    sigma = torch.tensor([0.05, 2.0])
    with torch.no_grad():
        expected = reference.diffusion.denoise_fn(x, sigmas=sigma)
        got = denoiser(x, sigma)
        raw_expected = reference.unet(x, sigma.log() / 4)
        raw_got = ours(x, sigma.log() / 4)
    scale = raw_expected.abs().max()
    assert (raw_got - raw_expected).abs().max() / scale < 1e-4
    assert (got - expected).abs().max() / expected.abs().max() < 1e-4
    return ours


def test_tiny_configuration_matches_reference():
    check_parity(TINY, 8)


def test_small_configuration_matches_reference():
    check_parity(SMALL, 4)


@pytest.mark.slow
def test_paper_configuration_matches_reference_shape_for_shape():
    ours = check_parity(PAPER, 2)
    # The paper reports 405.5M parameters.
    assert count_parameters(ours) == 405_497_700


def test_denoiser_preconditioning_is_edm_table_1():
    """c_skip, c_out, c_in, c_noise as in Karras et al. 2022 with sigma_data 0.2."""
    seen = {}

    class Probe(torch.nn.Module):
        def forward(self, x, c_noise):
            seen["x"], seen["c_noise"] = x, c_noise
            return torch.full_like(x, 0.5)

    denoiser = KarrasDenoiser(Probe(), sigma_data=0.2)
    x = torch.full((1, 1, 4), 0.3)
    sigma = torch.tensor([0.7])
    out = denoiser(x, sigma)
    sd, s = 0.2, 0.7
    c_skip, c_out, c_in = sd**2 / (s**2 + sd**2), s * sd / (s**2 + sd**2) ** 0.5, 1 / (s**2 + sd**2) ** 0.5
    torch.testing.assert_close(seen["x"], x * c_in)
    torch.testing.assert_close(seen["c_noise"], torch.log(sigma) / 4)
    torch.testing.assert_close(out, torch.full_like(x, c_skip * 0.3 + c_out * 0.5))
    # The output is clamped to [-1, 1] as in the reference implementation.
    assert denoiser(torch.full((1, 1, 4), 50.0), torch.tensor([0.01])).max() == 1.0
