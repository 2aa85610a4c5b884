"""Harmony guidance: imputed stems pulled towards the given stems' pitch classes.

The latent prior learns how stems fit together from a few CPU-hours of
chorales; its imputations follow the given rhythm but only partly the given
harmony (docs/models.md). This steers each sampling step's estimate of the
clean latents x0 up the gradient of a differentiable harmonic agreement:

    A(x0) = mean over free pitched stems and blocks of ~0.75 s of
            corr(chroma of the decoded stem, chroma of the given pitched stems)

where a stem's chroma comes from the autoencoder's decoded log magnitude
(engine.core.harmony.chroma_from_magnitude; no Griffin-Lim, so the gradient
is cheap), and the given stems' from their audio. Guiding the denoiser's x0
with the gradient of a loss on it is loss-guided diffusion (Song et al. 2023;
the "universal guidance" forward step, Bansal et al. 2023), here without
back-propagating through the denoiser: only through the decoder. Steps are
taken at the noise levels where notes are chosen (GUIDED_SIGMAS), each the
gradient scaled to unit RMS times `strength`, in the diffusion's
unit-variance units.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from engine.core.harmony import chroma_from_magnitude

Denoiser = Callable[[Tensor, Tensor], Tensor]
# Noise levels (unit-variance latents) at which the estimate is steered: where
# the harmony is chosen, not the note onsets. Chosen on VALID (docs/models.md):
# guided down to sigma 0.3 the stems locked onto the given pitch classes (chroma
# agreement 1.3-3.7, the true stems' is 1) and lost onset agreement (bass from
# piano 0.56 -> 0.49 at strength 0.03); from 1.5 up the onsets stay as unguided.
GUIDED_SIGMAS = (1.5, 10.0)
# Stems without pitch classes: never a target of the guidance nor part of it.
UNPITCHED = frozenset({"drums"})
# Agreement is measured over blocks of this many latent frames (~0.75 s at hop
# 256): chords change within the 3 s window, so one block per window would
# let a stem hold one pitch-class profile over changing harmony.
BLOCK_FRAMES = 64


def block_spans(frames: int, block: int = BLOCK_FRAMES) -> list[tuple[int, int]]:
    """[lo, hi) of about `block` frames each, covering `frames` (at least one)."""
    blocks = max(1, frames // block)
    edges = [round(i * frames / blocks) for i in range(blocks + 1)]
    return list(zip(edges[:-1], edges[1:]))


def mean_correlation(pairs: list[tuple[Tensor, Tensor]]) -> Tensor:
    """Mean of the Pearson correlations (over the last axis) of each pair
    (a, target); a pair whose target is constant counts for nothing."""
    scores, weights = [], []
    for a, b in pairs:
        a, b = a - a.mean(-1, keepdim=True), b - b.mean(-1, keepdim=True)
        scores.append((a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1) + 1e-8))
        weights.append((b.norm(dim=-1) > 1e-6).to(a.dtype))
    score, weight = torch.stack(scores, -1), torch.stack(weights, -1)
    return (score * weight).sum() / weight.sum().clamp_min(1.0)


def block_correlation(chroma: Tensor, target: Tensor, block: int = BLOCK_FRAMES) -> Tensor:
    """Mean over blocks of the Pearson correlation of block-summed chroma
    [B, 12, K] with the target's [B, 12, K]; blocks where the target has no
    pitch class (silence, drums) count for nothing."""
    return mean_correlation([(chroma[..., lo:hi].sum(-1), target[..., lo:hi].sum(-1))
                             for lo, hi in block_spans(chroma.shape[-1], block)])


def decoded_log_magnitude(model, x0: Tensor, stems: list[int], scale: float | Tensor | None = None) -> Tensor:
    """The log magnitude [S B, F, K] (stem-major rows) of stems `stems` of an
    x0 estimate [B, N C, K], decoded as generate_latent_stems decodes: the
    calibrated sampling scale, the autoencoder's units, its tanh range; no
    Griffin-Lim, so a guidance's gradient through it is cheap. `scale`: the
    sampling scale generation decodes with, one number or one per stacked
    channel row [N C, 1] (default: the prior's sample_scale)."""
    prior = model.latent_prior
    channels = prior.config.latent_channels
    latents = prior.from_diffusion(x0 * (prior.config.sample_scale if scale is None else scale))
    rows = torch.cat([latents[:, n * channels:(n + 1) * channels] for n in stems])
    return model.autoencoder.decode_log_magnitude(rows.clamp(-1.0, 1.0))


def harmony_guided(denoiser: Denoiser, model, target: Tensor, free_pitched: list[int], strength: float,
                   scale: float | Tensor | None = None) -> Denoiser:
    """`denoiser` with its x0 steered towards the target chroma [B, 12, K] (the
    given pitched stems', per latent frame) for the free pitched stems (rows of
    the stacked latent); the identity when strength is 0 or nothing is free."""
    if strength == 0 or not free_pitched:
        return denoiser
    sample_rate, n_fft = model.sample_rate, model.autoencoder.config.n_fft

    def agreement(x0: Tensor) -> Tensor:
        chroma = chroma_from_magnitude(decoded_log_magnitude(model, x0, free_pitched, scale).exp(), sample_rate, n_fft)
        return block_correlation(chroma, target.repeat(len(free_pitched), 1, 1))   # rows are stem-major

    return steered(denoiser, agreement, GUIDED_SIGMAS, strength)


def steered(denoiser: Denoiser, agreement: Callable[[Tensor], Tensor], sigmas: tuple[float, float],
            strength: float) -> Denoiser:
    """`denoiser` whose x0, at noise levels within `sigmas`, moves up the
    gradient of `agreement(x0)` by `strength` (the gradient scaled to unit RMS;
    no back-propagation through the denoiser). Shared by the harmony and
    rhythm guidance (engine.audio.rhythm_guidance)."""
    def guided(x: Tensor, sigma: Tensor) -> Tensor:
        x0 = denoiser(x, sigma)
        level = float(torch.as_tensor(sigma).max())
        if not sigmas[0] <= level <= sigmas[1]:
            return x0
        with torch.enable_grad():
            z = x0.detach().requires_grad_(True)
            (gradient,) = torch.autograd.grad(agreement(z), z)
        rms = gradient.pow(2).mean().sqrt()
        if not torch.isfinite(rms) or rms == 0:
            return x0
        return x0 + strength * gradient / rms
    return guided
