"""A per-stem map of frame levels: the dynamics of decoded latent samples
matched to real stems'.

The latent prior's sampling scale (LatentPriorConfig.sample_scale) acts on
the decoder's log magnitude almost linearly, so one number sets two things
at once: the spectral contrast of each frame (harmonics against the gaps
between them, what pitch clarity and the note-structure distance reward) and
the spread of frame levels (how much louder the loud frames are than the
quiet ones). Measured on VALID (docs/models.md, fifth session of 2026-12-06),
the contrast wants a wider scale than the level spread does. A level map
separates them: sample at the scale the contrast wants, then move each
decoded frame's level (its mean power over the bins, in dB) through a
monotone curve fitted so that the frame levels of generated stems have the
distribution of real stems' (quantile mapping, the histogram matching of
image processing and of bias correction in climate models; Panofsky & Brier
1968). A frame's spectral shape is untouched: every bin of the frame gets the
same gain, before Griffin-Lim.

A map is a stem's (level in, level out) points in dB, levels in increasing
order; between them it is linear, and beyond the ends the end points' shift
is kept (a slope of 1), so a level never seen in calibration moves as its
nearest neighbours do instead of being clipped.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

# Added to the frames' mean power before the log: -120 dB, far under the
# autoencoder's magnitude floor, so silent frames have a finite level.
POWER_FLOOR = 1e-12
# Maps are fitted on sounding frames only: a frame of white noise at -50 dBFS
# RMS (generation_candidates.ACTIVE_RMS) under the autoencoder's STFT (Hann,
# n_fft 1024: mean |X|^2 = 384 x the variance) has a level of about -24 dB.
# Rests would otherwise be matched too, and a generated stem that rests more
# often than the real windows do would have its silence raised to a level.
ACTIVE_LEVEL_DB = 10 * np.log10(384.0) - 50.0


def frame_levels_db(magnitude: Tensor) -> Tensor:
    """[..., F, K] magnitudes -> [..., K] levels: 10 log10 of each frame's
    mean power over the bins."""
    return 10.0 * torch.log10(magnitude.pow(2).mean(dim=-2) + POWER_FLOOR)


def check_level_map(points_in, points_out) -> str | None:
    """Why (points_in, points_out) is not a usable map, or None if it is."""
    a, b = np.asarray(points_in, np.float64), np.asarray(points_out, np.float64)
    if a.ndim != 1 or a.shape != b.shape or len(a) < 2:
        return "a map needs at least two (in, out) points"
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return "a map's levels must be finite"
    if np.any(np.abs(a) > 200) or np.any(np.abs(b) > 200):
        return "a map's levels must lie within +-200 dB"
    if np.any(np.diff(a) <= 0):
        return "a map's input levels must increase"
    if np.any(np.diff(b) < 0):
        return "a map's output levels must not decrease (a level map keeps the frames' order)"
    return None


def split_stem_maps(flat_in, flat_out, stems: int) -> list[tuple[tuple[float, ...], tuple[float, ...]]]:
    """Flattened per-stem points (stem after stem, the same count each) ->
    one (points in, points out) per stem."""
    q = len(flat_in) // stems
    return [(tuple(flat_in[n * q:(n + 1) * q]), tuple(flat_out[n * q:(n + 1) * q])) for n in range(stems)]


def check_stem_maps(flat_in, flat_out, stems: int) -> str | None:
    """Why flattened per-stem maps are not usable, or None (also for none at all)."""
    if not len(flat_in) and not len(flat_out):
        return None
    if len(flat_in) != len(flat_out) or len(flat_in) % stems:
        return "sample_level_in and sample_level_out need the same number of points for every stem"
    for points_in, points_out in split_stem_maps(flat_in, flat_out, stems):
        problem = check_level_map(points_in, points_out)
        if problem:
            return problem
    return None


def map_levels(levels: Tensor, points_in, points_out) -> Tensor:
    """Levels [...] (dB) through the piecewise-linear map; beyond its ends the
    end points' shift (out - in) is kept."""
    a = torch.as_tensor(np.asarray(points_in, np.float64), dtype=levels.dtype, device=levels.device)
    b = torch.as_tensor(np.asarray(points_out, np.float64), dtype=levels.dtype, device=levels.device)
    shift_at = b - a
    # Linear interpolation of the shift: index of the segment each level falls in.
    index = torch.searchsorted(a, levels.contiguous()).clamp(1, len(a) - 1)
    lo, hi = a[index - 1], a[index]
    t = ((levels - lo) / (hi - lo)).clamp(0.0, 1.0)
    shift = shift_at[index - 1] + t * (shift_at[index] - shift_at[index - 1])
    return levels + shift


def apply_level_map(magnitude: Tensor, points_in, points_out) -> Tensor:
    """[..., F, K] magnitudes with each frame's level moved through the map:
    one gain per frame, the same in every bin."""
    levels = frame_levels_db(magnitude)
    gain_db = map_levels(levels, points_in, points_out) - levels
    return magnitude * torch.pow(10.0, gain_db / 20.0).unsqueeze(-2)


def fit_level_map(generated_levels: np.ndarray, real_levels: np.ndarray, points: int = 17,
                  active_db: float = ACTIVE_LEVEL_DB) -> tuple[np.ndarray, np.ndarray]:
    """The quantile map from the frame levels of generated stems to real ones',
    over the frames of each above `active_db`: `points` quantiles spread
    evenly from the 1st to the 99th percentile (the extremes are a few frames
    each and would make the ends jumpy). Input levels that tie are merged,
    keeping the mean of their outputs, so the map stays a function."""
    generated = np.asarray(generated_levels, np.float64).ravel()
    real = np.asarray(real_levels, np.float64).ravel()
    generated, real = generated[generated > active_db], real[real > active_db]
    if generated.size < points or real.size < points:
        raise ValueError(f"a level map of {points} points needs at least {points} sounding frames of each "
                         f"(above {active_db:.1f} dB): generated {generated.size}, real {real.size}")
    q = np.linspace(1.0, 99.0, points)
    a, b = np.percentile(generated, q), np.percentile(real, q)
    keep_in, keep_out = [a[0]], [[b[0]]]
    for x, y in zip(a[1:], b[1:]):
        if x - keep_in[-1] < 1e-3:
            keep_out[-1].append(y)
        else:
            keep_in.append(x)
            keep_out.append([y])
    points_in = np.array(keep_in)
    points_out = np.maximum.accumulate(np.array([np.mean(v) for v in keep_out]))
    if len(points_in) < 2:
        raise ValueError("the generated frames all have one level: no map can be fitted")
    return np.round(points_in, 3), np.round(points_out, 3)
