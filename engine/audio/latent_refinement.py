"""Refining the first guess of a separation with the latent prior.

The first-guess separator's stems are encoded by the stem autoencoder, noised
to a moderate level and denoised by the latent diffusion prior (SDEdit, Meng
et al. 2022: the prior pulls each stem's latents towards music it has learned,
keeping what the noise did not hide). The latents decode to a magnitude
spectrogram per stem; how much the prior changed each bin (refined over the
plain reconstruction) scales the guess's own STFT, and what the scaled stems
no longer explain of the mix goes back to them in proportion to their
magnitudes, so they still sum to the mix; no Griffin-Lim and no synthesised
phase.

It answers issue 20 item 6 ("does refining the first guess with the new prior
help?"): `msdm separate --steps N --prior latent` runs it; it stays off by
default while it loses (docs/models.md has the row).
"""

from __future__ import annotations

from typing import Sequence

import torch

from engine.audio.latent_generation import encode_stems
from engine.core.diffusion import ItemNoise, ProgressCallback, Unconditional, sample
from engine.core.tasks import SamplerSettings
from engine.storage.model import MSDMModel

# Keeps silent bins (all stems near zero) from dividing by zero: the mix's
# residue there is shared equally.
POWER_FLOOR = 1e-10
# Keeps the ratio of decoded magnitudes finite where both are near silence
# (the decoder's magnitudes are floored at zero; 1e-3 is its log floor).
MAGNITUDE_EPS = 1e-3


@torch.no_grad()
def refine_with_latent_prior(
    model: MSDMModel,
    mix: torch.Tensor,
    guess: torch.Tensor,
    seeds: Sequence[int],
    settings: SamplerSettings,
    callback: ProgressCallback | None = None,
) -> torch.Tensor:
    """mix [B, T] and its first guess [B, N, T] -> stems [B, N, T] that sum to the
    mix up to the inverse STFT's rounding (the caller shares that out)."""
    if settings.prior != "latent":
        raise ValueError(f"latent refinement needs settings with prior 'latent', got {settings.prior!r}")
    prior, autoencoder = model.latent_prior, model.autoencoder
    if prior is None or autoencoder is None:
        raise ValueError("this model has no latent prior to refine a separation with")
    batch, num, length = guess.shape
    if mix.shape != (batch, length):
        raise ValueError(f"mix of shape {tuple(mix.shape)} for a first guess of shape {tuple(guess.shape)}")
    channels = prior.config.latent_channels
    # Each item's stems -> diffusion-space latents [N x C, K], padded to what
    # the U-Net's downsampling divides (edge frames repeated, then cut off).
    latents = torch.stack([prior.to_diffusion(encode_stems(model, g.cpu().numpy())) for g in guess])
    frames = latents.shape[-1]
    factor = prior.config.downsampling_factor
    padded = -(-frames // factor) * factor
    latents = torch.nn.functional.pad(latents, (0, padded - frames), mode="replicate")
    refined = sample(prior, ItemNoise(list(seeds)), tuple(latents.shape), settings.sigmas(), start=latents,
                     condition=Unconditional(clip=None), callback=callback, device=model.device,
                     **settings.sampler_kwargs())[..., :frames]
    # What the prior changed, as a ratio of decoded magnitudes (refined over
    # the plain reconstruction of the guess), applied to the guess's own STFT:
    # the autoencoder's blur cancels in the ratio (masks from decoded
    # magnitudes alone lose ~2 dB on held-out songs, docs/models.md), and at
    # zero noise the result is the guess itself. What the scaled stems no
    # longer explain of the mix is shared out in proportion to their
    # magnitudes, so they sum to the mix in every bin.
    original = latents[..., :frames]
    decoded = decode_magnitudes(model, torch.cat([refined, original]), batch * num)
    change = (decoded[0] + MAGNITUDE_EPS) / (decoded[1] + MAGNITUDE_EPS)
    config = autoencoder.config
    spec = autoencoder.stft(mix.to(model.device, torch.float32))          # [B, F, K]
    stems_spec = autoencoder.stft(guess.reshape(batch * num, length).to(model.device, torch.float32)) * change
    stems_spec = stems_spec.reshape(batch, num, *spec.shape[1:])
    weights = stems_spec.abs() + POWER_FLOOR
    stems_spec = stems_spec + weights / weights.sum(dim=1, keepdim=True) * (spec - stems_spec.sum(dim=1))[:, None]
    stems = torch.istft(stems_spec.reshape(batch * num, *spec.shape[1:]), config.n_fft, config.hop,
                        window=autoencoder.window, center=True, length=length)
    return stems.reshape(batch, num, length)


def decode_magnitudes(model: MSDMModel, diffusion_latents: torch.Tensor, items: int) -> torch.Tensor:
    """Diffusion-space latents [G x B, N x C, K] -> magnitudes [G, B x N, F, K],
    clipped to the encoder's tanh range as generation does."""
    prior, autoencoder = model.latent_prior, model.autoencoder
    frames = diffusion_latents.shape[-1]
    stacked = prior.from_diffusion(diffusion_latents).clamp(-1.0, 1.0).reshape(-1, prior.config.latent_channels, frames)
    magnitude = (autoencoder.decode_log_magnitude(stacked).exp() - autoencoder.config.magnitude_floor).clamp_min(0.0)
    return magnitude.reshape(-1, items, *magnitude.shape[1:])
