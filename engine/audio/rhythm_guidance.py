"""Rhythm guidance: imputed stems pulled towards the given stems' onsets.

The latent prior's accompaniment to a given piano places its bass and guitar
notes only loosely on the piano's rhythm (onset agreement 0.44 / 0.40 on the
TEST split, where the true stems score 1 and another song's 0: docs/models.md).
As harmony guidance does for pitch classes (engine.audio.harmony_guidance), this
steers each sampling step's estimate of the clean latents x0 up the gradient of

    R(x0) = mean over free stems and blocks of ~0.75 s of
            corr(onset envelope of the decoded stem, onset envelope of the given stems)

An onset envelope is the spectral flux (the rectified rise of the log
magnitude from one frame to the next, summed over frequency: Masri 1996;
Bello et al. 2005's review of onset detection), spread by a maximum over
+-2 frames (+-23 ms) so that a note a frame early or late still counts, as
the evaluation's onset agreement does (training.generation_metrics). The free
stems' come from the autoencoder's decoded log magnitude (no Griffin-Lim, so
the gradient is cheap), the target from the given stems' mix through the same
front end. Loss-guided diffusion through the decoder only (Song et al. 2023;
Bansal et al. 2023): each guided step adds the gradient scaled to unit RMS
times `strength`, in the diffusion's unit-variance units.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from engine.audio.harmony_guidance import (BLOCK_FRAMES, Denoiser, block_spans, decoded_log_magnitude,
                                          mean_correlation, steered)

# Noise levels (unit-variance latents) at which the estimate is steered. Not
# swept: set below harmony guidance's 1.5 because onsets are settled at lower
# noise than pitch classes; the strength was chosen on VALID (docs/models.md).
GUIDED_SIGMAS = (0.5, 10.0)
# A note one or two frames (11.6 ms each at hop 256) off still counts.
TOLERANCE_FRAMES = 2


def onset_envelope(log_magnitude: Tensor, tolerance: int = TOLERANCE_FRAMES) -> Tensor:
    """Spectral flux of log magnitudes [B, F, K] -> [B, K] (the first frame's
    rise is 0), spread by a running maximum over +-`tolerance` frames."""
    rise = F.relu(log_magnitude[..., 1:] - log_magnitude[..., :-1]).mean(dim=-2)
    flux = F.pad(rise, (1, 0))
    if tolerance:
        flux = F.max_pool1d(flux[:, None], 2 * tolerance + 1, stride=1, padding=tolerance)[:, 0]
    return flux


def block_time_correlation(envelope: Tensor, target: Tensor, block: int = BLOCK_FRAMES) -> Tensor:
    """Mean over blocks of the Pearson correlation over time of envelopes
    [B, K] with the target's [B, K]; blocks where the target is flat
    (silence, a held chord) count for nothing."""
    return mean_correlation([(envelope[..., lo:hi], target[..., lo:hi])
                             for lo, hi in block_spans(envelope.shape[-1], block)])


def given_onsets(autoencoder, given_mix: Tensor) -> Tensor:
    """The onset envelope [1, K] of the given stems' mix [T] through the autoencoder's front end."""
    return onset_envelope(autoencoder.log_magnitude(given_mix[None]))


def rhythm_guided(denoiser: Denoiser, model, target: Tensor, free: list[int], strength: float,
                  scale: float | Tensor | None = None) -> Denoiser:
    """`denoiser` with its x0 steered towards the onset envelope `target`
    [B, K] (the given stems', per latent frame) for the free stems (rows of
    the stacked latent); the identity when strength is 0 or nothing is free."""
    if strength == 0 or not free:
        return denoiser

    def agreement(x0: Tensor) -> Tensor:
        envelope = onset_envelope(decoded_log_magnitude(model, x0, free, scale))
        return block_time_correlation(envelope, target.repeat(len(free), 1))   # rows are stem-major

    return steered(denoiser, agreement, GUIDED_SIGMAS, strength)
