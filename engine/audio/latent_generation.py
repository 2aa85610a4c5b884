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

import math
from typing import Callable, Sequence

import numpy as np
import torch

from engine.audio.harmony_guidance import UNPITCHED, harmony_guided
from engine.audio.rhythm_guidance import given_onsets, rhythm_guided
from engine.audio.windows import WindowPlan
from engine.core.autoencoder import griffin_lim, magnitude_to_waveform
from engine.core.diffusion import seed_for
from engine.core.band_levels import apply_band_maps
from engine.core.frame_levels import apply_level_map
from engine.core.harmony import HARMONY_N_FFT, PITCH_CLASSES, stem_chroma
from engine.core.latent_prior import sampling_denoiser
from engine.core.tasks import SamplerSettings, SettingsError, generate, impute
from engine.storage.model import MSDMModel

ProgressFn = Callable[[float, str], None]
# Latent frames per window: the 256 frames (3 s) the prior was trained on.
WINDOW_FRAMES = 256


def window_samples(model: MSDMModel) -> int:
    """Samples whose latents fill exactly one window (WINDOW_FRAMES frames, ~3 s):
    a piece this long is sampled in one window, as the first window of any longer one."""
    return (WINDOW_FRAMES - 1) * model.autoencoder.config.hop
# Share of the progress bar the decoding takes (measured: about a fifth of the time).
DECODE_SHARE = 0.2
# Generated stems pass a soft limiter from this level up (full scale 1.0):
# the prior's rare over-wide latent frames decode to peaks of 1.5-5x full
# scale (docs/models.md), clicks in any fixed-point file.
LIMIT_KNEE = 0.8


def soft_limit(audio: np.ndarray, knee: float = LIMIT_KNEE) -> np.ndarray:
    """The identity up to |x| = knee, then a tanh curve with slope 1 at the knee
    that never passes 1.0: peaks are rounded off, everything quieter is untouched."""
    magnitude = np.abs(audio)
    over = magnitude > knee
    if not over.any():
        return audio
    room = 1.0 - knee
    limited = np.where(over, knee + room * np.tanh((magnitude - knee) / room), magnitude)
    return (np.sign(audio) * limited).astype(audio.dtype)


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
def decode_stems(model: MSDMModel, latents: torch.Tensor, frames: int, seed: int,
                 level_maps: list | None = None, stems: Sequence[int] | None = None,
                 band_maps: list | None = None) -> np.ndarray:
    """[N x C, K] -> [N, frames] waveforms. Latents are clipped to (-1, 1),
    the encoder's tanh range: the decoder was never trained outside it, and a
    sampled latent past it can decode to magnitudes far above anything real.
    `level_maps` (one (points in, points out) per stem, engine.core.frame_levels)
    moves each decoded frame's level before the phase is found, then
    `band_maps` (per row its band maps or None, engine.core.band_levels) each
    band's level. `stems`: the
    model stem of each of the N rows (default 0..N-1); those the autoencoder's
    config names in locked_phase_stems take the phase-locked vocoder's phase,
    the others Griffin-Lim's, its start phase drawn from `seed`."""
    autoencoder = model.autoencoder
    config = autoencoder.config
    stacked = latents.clamp(-1.0, 1.0).reshape(-1, config.latent_channels, latents.shape[-1])
    stems = list(range(stacked.shape[0])) if stems is None else list(stems)
    if len(stems) != stacked.shape[0]:
        raise ValueError(f"{len(stems)} stem indices for {stacked.shape[0]} decoded stems")
    generator = torch.Generator().manual_seed(seed)
    magnitude = autoencoder.decode_magnitude(stacked)
    if level_maps is not None:
        magnitude = torch.stack([apply_level_map(m, *level_map) for m, level_map in zip(magnitude, level_maps)])
    if band_maps is not None:
        magnitude = torch.stack([m if maps is None else apply_band_maps(m, maps) for m, maps in zip(magnitude, band_maps)])
    # Griffin-Lim's random start is drawn for every row, so a row's audio does
    # not depend on which other rows are locked.
    start = torch.rand(magnitude.shape, generator=generator, dtype=magnitude.dtype) * (2 * math.pi)
    locked = [i for i, n in enumerate(stems) if model.stems[n] in config.locked_phase_stems]
    searched = [i for i in range(len(stems)) if i not in locked]
    out = torch.zeros(magnitude.shape[0], frames)
    if searched:
        out[searched] = griffin_lim(magnitude[searched], config, autoencoder.window, frames,
                                    phase=start[searched]).cpu()
    if locked:
        out[locked] = magnitude_to_waveform(magnitude[locked], config, autoencoder.window, frames, locked=True).cpu()
    return out.numpy()


def latent_frame_mask(sample_mask: np.ndarray, hop: int, n_fft: int, frames_latent: int) -> np.ndarray:
    """[N, T] bool per sample -> [N, K] bool per latent frame: frame k (its STFT
    window centred on sample k * hop) is given only where all the samples
    it spans are, so every frame that hears a free sample is sampled anew."""
    num, length = sample_mask.shape
    free = np.concatenate([np.zeros((num, 1), np.int64), np.cumsum(~sample_mask, axis=1)], axis=1)
    centres = np.arange(frames_latent) * hop
    lo = np.clip(centres - n_fft // 2, 0, length)
    hi = np.clip(centres + n_fft // 2, 0, length)
    return (free[:, hi] - free[:, lo]) == 0


def resolve_autoguidance(settings: SamplerSettings, model: MSDMModel) -> SamplerSettings:
    """`settings` with the autoguidance weight the model samples with: the
    request's, else the weight the model file was calibrated with beside its
    guide (1 without one). A weight other than 1 needs a guide."""
    weight = settings.autoguidance
    if weight is None:
        weight = model.latent_prior.config.autoguidance if model.latent_guide is not None else 1.0
    elif weight != 1.0 and model.latent_guide is None:
        raise SettingsError(f"autoguidance {weight:g} needs a guide model beside the latent prior; this model file "
                            "has none (autoguidance 1, or a model file with a guide)")
    return settings.override(autoguidance=weight)


def generate_latent_stems(
    model: MSDMModel,
    frames: int,
    *,
    seed: int,
    settings: SamplerSettings,
    given: np.ndarray | None = None,
    given_stems: tuple[int, ...] = (),
    given_mask: np.ndarray | None = None,
    overlap: float = 0.25,
    progress: ProgressFn | None = None,
    limit: bool = True,
) -> np.ndarray:
    """All stems [N, frames] at the model's rate; rows `given_stems` of `given`
    are the condition and come back unchanged. `given_mask` ([N, frames] bool,
    instead of `given_stems`) gives exactly the samples it marks (a time range
    of some stems regenerated): a latent frame is given where every sample its
    STFT window spans is, the prior was trained with such time masks, and a
    stem with any free frame comes back decoded whole (the caller keeps its
    own audio outside the range). `limit` False leaves out the soft limiter:
    the decoded stems' frame levels are then the ones the frame-level map
    gives (Griffin-Lim keeps them within a decibel), which is what
    training.calibrate_frame_levels must measure to fit the map."""
    settings = resolve_autoguidance(settings, model)
    prior = sampling_denoiser(model.latent_prior, model.latent_guide, settings.autoguidance)
    num, channels = prior.config.stems, prior.config.latent_channels
    # The calibrated sampling temperature of each stem's latents (per channel row).
    scale = torch.tensor(prior.config.stem_scales_for(settings.autoguidance),
                         device=model.device).repeat_interleave(channels)[:, None]
    hop = model.autoencoder.config.hop
    frames_latent = frames // hop + 1
    factor = prior.config.downsampling_factor
    window = min(WINDOW_FRAMES, -(-frames_latent // factor) * factor)
    plan = WindowPlan.make(frames_latent, window, overlap)
    total = plan.start(plan.count - 1) + window
    latents = torch.zeros(num * channels, total, device=model.device)
    stem_mask = torch.zeros(num, total, dtype=torch.bool, device=model.device)
    if given_mask is not None:
        frame_mask = latent_frame_mask(given_mask, hop, model.autoencoder.config.n_fft, frames_latent)
        given_stems = tuple(int(n) for n in np.flatnonzero(frame_mask.all(axis=1)))
        partial = [n for n in range(num) if frame_mask[n].any() and n not in given_stems]
    else:
        frame_mask, partial = None, []
    encoded_rows = [*given_stems, *partial]
    if encoded_rows:
        encoded = encode_stems(model, given[encoded_rows]).reshape(len(encoded_rows), channels, -1)
        for i, n in enumerate(encoded_rows):
            part = slice(n * channels, (n + 1) * channels)
            latents[part, :frames_latent] = (encoded[i] - prior.shift[part]) / prior.scale[part]
        if frame_mask is not None:
            stem_mask[:, :frames_latent] = torch.from_numpy(frame_mask).to(model.device)
        else:
            stem_mask[list(given_stems)] = True
    # Harmony guidance (settings.harmony): the given pitched stems' pitch
    # classes, summed, as the target of the free pitched stems.
    names = model.config.stems
    given_pitched = [n for n in given_stems if names[n] not in UNPITCHED]
    free_pitched = [n for n in range(num) if n not in given_stems and names[n] not in UNPITCHED]
    guide = bool(settings.harmony and given_pitched and free_pitched)
    condition = bool(prior.config.harmony_channels and encoded_rows)
    # The pitch classes per latent frame (engine.core.harmony) of the stems that
    # need them, computed once for the guidance's target and the prior's condition.
    chroma_rows = encoded_rows if condition else given_pitched if guide else []
    if chroma_rows:
        chroma = stem_chroma(torch.from_numpy(np.ascontiguousarray(given[chroma_rows], dtype=np.float32)),
                             hop, model.sample_rate).to(model.device)
    target = None
    if guide:
        target = torch.zeros(1, PITCH_CLASSES, total, device=model.device)
        target[0, :, :frames_latent] = chroma[[chroma_rows.index(n) for n in given_pitched]].sum(0)[:, :frames_latent]
    # Rhythm guidance (settings.rhythm): the onsets of the given stems' mix as
    # the target of every free stem.
    free = [n for n in range(num) if n not in given_stems]
    onsets = None
    if settings.rhythm and given_stems and free:
        mix = torch.from_numpy(np.ascontiguousarray(given[list(given_stems)].sum(0), dtype=np.float32))
        onsets = torch.zeros(1, total, device=model.device)
        onsets[0, :frames_latent] = given_onsets(model.autoencoder, mix.to(model.device))[0, :frames_latent]
    harmony = None
    if condition:
        # The prior masks them like the given latents.
        harmony = torch.zeros(num * PITCH_CLASSES, total, device=model.device)
        if given_mask is not None:
            # A chroma frame hears HARMONY_N_FFT samples: keep only those that hear given samples alone.
            heard = latent_frame_mask(given_mask, hop, HARMONY_N_FFT, frames_latent)[encoded_rows]
            chroma = chroma * torch.from_numpy(heard)[:, None].to(chroma)
        for i, n in enumerate(encoded_rows):
            harmony[n * PITCH_CLASSES:(n + 1) * PITCH_CLASSES, :frames_latent] = chroma[i, :, :frames_latent]
    label = "imputing" if encoded_rows else "generating"
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
            window_harmony = None if harmony is None else harmony[None, :, start:start + window]
            conditioned = prior.with_given(window_latents, mask[None], settings.guidance, window_harmony)
            if target is not None:
                conditioned = harmony_guided(conditioned, model, target[:, :, start:start + window], free_pitched,
                                             settings.harmony, scale)
            if onsets is not None:
                conditioned = rhythm_guided(conditioned, model, onsets[:, start:start + window], free,
                                            settings.rhythm, scale)
            result = impute(conditioned, window_latents, channel_mask, seeds,
                            settings=settings, callback=callback, device=model.device, clip=None)
        else:
            result = generate(prior, num * channels, window, seeds, settings=settings, callback=callback,
                              device=model.device, clip=None)
        latents[:, start:start + window] = result[0]
    if progress is not None:
        progress(1 - DECODE_SHARE, "decoding")
    out = np.zeros((num, frames), dtype=np.float32)
    if free:
        # The calibrated sampling temperature (LatentPriorConfig.sample_scale, or
        # autoguidance_scale / autoguidance_stem_scales when autoguided).
        latents = prior.from_diffusion(latents * scale)
        rows = torch.cat([latents[n * channels:(n + 1) * channels, :frames_latent] for n in free])
        gains = np.array(prior.config.stem_gains_for(settings.autoguidance), np.float32)[free, None]
        # The calibrated frame-level map of each stem, where the file has one.
        levels = prior.config.stem_levels_for(settings.autoguidance)
        level_maps = None if levels is None else [levels[n] for n in free]
        # ... and its band maps after it (engine.core.band_levels).
        bands = prior.config.stem_band_maps_for(settings.autoguidance)
        band_maps = None if bands is None else [bands[n] for n in free]
        decoded = decode_stems(model, rows, frames, seed, level_maps=level_maps, stems=free,
                               band_maps=band_maps) * gains
        out[free] = soft_limit(decoded) if limit else decoded
    if given_stems:
        out[list(given_stems)] = given[list(given_stems)]
    if progress is not None:
        progress(1.0, "decoded")
    return out
