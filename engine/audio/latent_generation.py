"""Generation and imputation with the latent prior, at any length.

The given stems are encoded by the model's stem autoencoder; the latent
diffusion model samples the missing stems' latents window by window (each
window after the first continues the previous one through their overlap, the
same time-and-stem mask as the waveform path); every generated stem is then
decoded once over its whole length, so there are no seams in the audio. The
given stems are returned as they were given, never re-synthesised, and the
mix a caller writes is the sum of the returned stems, exactly.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from engine.audio.windows import WindowPlan
from engine.core.diffusion import seed_for
from engine.core.tasks import SamplerSettings, generate, impute
from engine.storage.model import MSDMModel

ProgressFn = Callable[[float, str], None]
# Latent frames per window: the 256 frames (3 s) the prior was trained on.
WINDOW_FRAMES = 256
# Share of the progress bar the decoding takes (measured: about a fifth of the time).
DECODE_SHARE = 0.2


@torch.no_grad()
def encode_stems(model: MSDMModel, stems: np.ndarray, chunk_frames: int = 1024) -> torch.Tensor:
    """[N, T] waveforms -> [N x C, K] latents (K = T // hop + 1), in chunks so
    memory stays bounded; chunks are cut on frame boundaries."""
    autoencoder = model.autoencoder
    hop = autoencoder.config.hop
    chunk = chunk_frames * hop
    audio = torch.from_numpy(np.ascontiguousarray(stems, dtype=np.float32)).to(model.device)
    parts = []
    for start in range(0, audio.shape[-1], chunk):
        latent = autoencoder.encode(audio[:, start:start + chunk])
        parts.append(latent if start + chunk >= audio.shape[-1] else latent[:, :, :-1])
    latents = torch.cat(parts, dim=-1)[:, :, :audio.shape[-1] // hop + 1]
    return latents.reshape(-1, latents.shape[-1])


@torch.no_grad()
def decode_stems(model: MSDMModel, latents: torch.Tensor, frames: int, seed: int) -> np.ndarray:
    """[N x C, K] -> [N, frames] waveforms (Griffin-Lim's start phase from `seed`).
    Latents are clipped to (-1, 1), the encoder's tanh range: the decoder was
    never trained outside it, and a sampled latent past it can decode to
    magnitudes far above anything real."""
    channels = model.autoencoder.config.latent_channels
    stacked = latents.clamp(-1.0, 1.0).reshape(-1, channels, latents.shape[-1])
    generator = torch.Generator().manual_seed(seed)
    return model.autoencoder.decode(stacked, frames, generator=generator).cpu().numpy()


def generate_latent_stems(
    model: MSDMModel,
    frames: int,
    *,
    seed: int,
    settings: SamplerSettings,
    given: np.ndarray | None = None,
    given_stems: tuple[int, ...] = (),
    overlap: float = 0.25,
    progress: ProgressFn | None = None,
) -> np.ndarray:
    """All stems [N, frames] at the model's rate; rows `given_stems` of `given`
    are the condition and come back unchanged."""
    prior = model.latent_prior
    num, channels = prior.config.stems, prior.config.latent_channels
    hop = model.autoencoder.config.hop
    frames_latent = frames // hop + 1
    factor = prior.config.downsampling_factor
    window = min(WINDOW_FRAMES, -(-frames_latent // factor) * factor)
    plan = WindowPlan.make(frames_latent, window, overlap)
    total = plan.start(plan.count - 1) + window
    latents = torch.zeros(num * channels, total, device=model.device)
    stem_mask = torch.zeros(num, total, dtype=torch.bool, device=model.device)
    if given_stems:
        rows = list(given_stems)
        encoded = encode_stems(model, given[rows]).reshape(len(rows), channels, -1)
        for i, n in enumerate(rows):
            part = slice(n * channels, (n + 1) * channels)
            latents[part, :frames_latent] = (encoded[i] - prior.shift[part]) / prior.scale[part]
        stem_mask[rows] = True
    label = "imputing" if given_stems else "generating"
    for index in range(plan.count):
        start = plan.start(index)
        mask = stem_mask[:, start:start + window].clone()
        if index > 0:
            mask[:, :plan.start(index - 1) + window - start] = True  # the overlap with the previous window
        callback = None
        if progress is not None:
            def callback(info: dict, index: int = index) -> None:
                done = (index + (info["i"] + 1) / info["steps"]) / plan.count
                progress(done * (1 - DECODE_SHARE), f"{label} window {index + 1}/{plan.count}")
        seeds = [seed_for(seed, index)]
        window_latents = latents[None, :, start:start + window]
        if mask.any():
            channel_mask = mask.repeat_interleave(channels, dim=0)[None]
            result = impute(prior.with_given(window_latents, mask[None]), window_latents, channel_mask, seeds,
                            settings=settings, callback=callback, device=model.device)
        else:
            result = generate(prior, num * channels, window, seeds, settings=settings, callback=callback,
                              device=model.device)
        latents[:, start:start + window] = result[0]
    if progress is not None:
        progress(1 - DECODE_SHARE, "decoding")
    free = [n for n in range(num) if n not in given_stems]
    out = np.zeros((num, frames), dtype=np.float32)
    if free:
        latents = prior.from_diffusion(latents)
        rows = torch.cat([latents[n * channels:(n + 1) * channels, :frames_latent] for n in free])
        out[free] = decode_stems(model, rows, frames, seed)
    if given_stems:
        out[list(given_stems)] = given[list(given_stems)]
    return out
