"""Per-band level maps: the spectral dynamics of decoded latent samples
matched to real stems', band by band.

The frame-level map (engine.core.frame_levels) gives each decoded frame the
level distribution of real stems' frames but keeps its spectral shape. The
latent prior blurs that shape: measured on VALID (docs/models.md, first
session of 2026-12-08), the generated drums' log-mel bands vary 10-25 % less
from frame to frame than real drums' (a kick's frame is less bass-heavy, a
hat's less bright, the floor between hits fuller), which is most of their
Fréchet distance. A band map moves each frame's level in each of B bands
(log-spaced over the STFT bins) through a monotone curve fitted so that the
band's levels over sounding frames have the real stem's distribution: the
quantile mapping of frame_levels, once per band (the per-band histogram
matching of Panofsky & Brier 1968 as used in spectral post-processing). The
band gains are interpolated between band centres in log frequency, so the
correction has no steps at band edges; silent frames are left alone.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import Tensor

from engine.core.frame_levels import (ACTIVE_LEVEL_DB, POWER_FLOOR, check_level_map, fit_level_map, frame_levels_db,
                                      map_levels, split_stem_maps)


@functools.lru_cache(maxsize=16)
def band_edges(bins: int, bands: int) -> tuple[tuple[int, int], ...]:
    """`bands` log-spaced bin ranges [start, stop) covering bins 0..bins-1
    (bin 0 joins the first); a low band that would be narrower than a bin
    gets one bin, and the bands above it start one bin later."""
    if not 1 <= bands <= bins:
        raise ValueError(f"need 1 to {bins} bands, got {bands}")
    edges = np.round(np.geomspace(1, bins, bands + 1)).astype(int)
    edges[0] = 0
    for k in range(1, bands + 1):
        edges[k] = max(edges[k], edges[k - 1] + 1)
    edges[-1] = bins
    if np.any(np.diff(edges) < 1):
        raise ValueError(f"{bands} bands do not fit in {bins} bins")
    return tuple((int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]))


def band_levels_db(magnitude: Tensor, edges: tuple[tuple[int, int], ...]) -> Tensor:
    """[..., F, K] magnitudes -> [..., B, K]: 10 log10 of each band's mean power."""
    power = magnitude.pow(2)
    return torch.stack([10.0 * torch.log10(power[..., a:b, :].mean(dim=-2) + POWER_FLOOR) for a, b in edges], dim=-2)


@functools.lru_cache(maxsize=16)
def band_gain_weights(bins: int, edges: tuple[tuple[int, int], ...]) -> Tensor:
    """[F, B]: each bin's gain as a linear interpolation, in log frequency,
    between the gains of the two band centres around it (the end bands'
    gains beyond the outer centres). Rows sum to one. Cached: decoding asks
    for the same bands for every mapped row of every window (do not modify
    the returned tensor in place)."""
    # Bin 0 (DC) sits at half a bin in log frequency, so the one-bin bands
    # at the bottom keep distinct centres.
    centres = np.log([max(0.5 * (a + b - 1), 0.5) for a, b in edges])
    where = np.log(np.maximum(np.arange(bins), 0.5))
    weights = np.zeros((bins, len(edges)))
    for f, x in enumerate(where):
        j = int(np.searchsorted(centres, x))
        if j == 0 or len(centres) == 1:
            weights[f, 0] = 1.0
        elif j >= len(centres):
            weights[f, -1] = 1.0
        else:
            t = (x - centres[j - 1]) / (centres[j] - centres[j - 1])
            weights[f, j - 1], weights[f, j] = 1.0 - t, t
    return torch.tensor(weights, dtype=torch.float32)


def apply_band_maps(magnitude: Tensor, maps, active_db: float = ACTIVE_LEVEL_DB) -> Tensor:
    """[F, K] magnitudes with each sounding frame's band levels moved through
    `maps` (one (points in, points out) per band of band_edges(F, len(maps)))."""
    edges = band_edges(magnitude.shape[-2], len(maps))
    levels = band_levels_db(magnitude, edges)
    gains = torch.stack([map_levels(levels[..., b, :], *band_map) for b, band_map in enumerate(maps)], dim=-2) - levels
    sounding = (frame_levels_db(magnitude) > active_db).unsqueeze(-2)
    gains = torch.where(sounding, gains, torch.zeros_like(gains))
    per_bin = band_gain_weights(magnitude.shape[-2], edges).to(magnitude) @ gains
    return magnitude * torch.pow(10.0, per_bin / 20.0)


def sounding_band_levels(magnitude: Tensor, bands: int, active_db: float = ACTIVE_LEVEL_DB) -> np.ndarray:
    """[F, K] -> [B, sounding frames]: the band levels a map is fitted on."""
    levels = band_levels_db(magnitude, band_edges(magnitude.shape[-2], bands))
    return levels[:, frame_levels_db(magnitude) > active_db].numpy()


def fit_band_maps(generated: np.ndarray, real: np.ndarray, points: int = 17):
    """Per band, the quantile map from generated band levels [B, frames] to
    real ones' [B, frames']: frame_levels.fit_level_map, once per band (the
    frames are sounding frames already, so every level counts)."""
    if generated.shape[0] != real.shape[0]:
        raise ValueError(f"band levels of {generated.shape[0]} and {real.shape[0]} bands")
    if generated.shape[1] < points or real.shape[1] < points:
        raise ValueError(f"a band map of {points} points needs at least {points} sounding frames of each")
    return [tuple(tuple(float(v) for v in side) for side in fit_level_map(g, r, points, active_db=-np.inf))
            for g, r in zip(generated, real)]


def split_band_maps(flat_in, flat_out, stems: int, bands: int) -> list[list[tuple[tuple[float, ...], tuple[float, ...]]] | None]:
    """Flattened maps (stem after stem, band after band, the same number of
    points each) -> per stem its B maps, or None for a stem whose maps are
    all the identity (it is left alone)."""
    if not bands or not len(flat_in):
        return [None] * stems
    every = split_stem_maps(flat_in, flat_out, stems * bands)   # one map per (stem, band)
    per_stem = [every[n * bands:(n + 1) * bands] for n in range(stems)]
    return [None if all(a == b for a, b in maps) else maps for maps in per_stem]


def check_band_maps(flat_in, flat_out, stems: int, bands: int) -> str | None:
    """Why flattened band maps are not usable, or None (also for none at all)."""
    if not len(flat_in) and not len(flat_out):
        return None
    if not 1 <= bands <= 64:
        return "sample_bands must be from 1 to 64 when band maps are given"
    if len(flat_in) != len(flat_out) or len(flat_in) % (stems * bands) or len(flat_in) < 2 * stems * bands:
        return "sample_band_in and sample_band_out need the same number of points (>= 2) for every stem and band"
    for points_in, points_out in split_stem_maps(flat_in, flat_out, stems * bands):
        problem = check_level_map(points_in, points_out)
        if problem:
            return problem
    return None


def flatten_band_maps(per_stem, bands: int, points: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per stem B maps or None (identity) -> the config's flattened points,
    every map resampled to `points` points (linear in its own quantile order)."""
    flat_in: list[float] = []
    flat_out: list[float] = []
    for maps in per_stem:
        for b in range(bands):
            if maps is None:
                a, o = np.linspace(-150.0, 150.0, points), np.linspace(-150.0, 150.0, points)
            else:
                a0, o0 = np.asarray(maps[b][0], np.float64), np.asarray(maps[b][1], np.float64)
                t = np.linspace(0.0, 1.0, points)
                a = np.interp(t, np.linspace(0.0, 1.0, len(a0)), a0)
                o = np.interp(t, np.linspace(0.0, 1.0, len(o0)), o0)
            a = np.round(a, 3)
            for k in range(1, points):  # rounding must not merge two inputs
                a[k] = max(a[k], a[k - 1] + 1e-3)
            flat_in += [float(v) for v in a]
            flat_out += [round(float(v), 3) for v in o]
    return tuple(flat_in), tuple(flat_out)
