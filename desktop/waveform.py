"""Waveform points for drawing: a min/max envelope for long files, so pyqtgraph's
own peak downsampling and clip-to-view work on at most ``max_points`` points
(a 10-minute stereo file at 48 kHz is 29 M samples; its envelope is 2 M)."""

from __future__ import annotations

import numpy as np


def display_mono(samples: np.ndarray) -> np.ndarray:
    """[channels, frames] -> [frames] float32, the mean of the channels."""
    x = np.asarray(samples, dtype=np.float32)
    return x[0] if x.shape[0] == 1 else x.mean(axis=0, dtype=np.float32)


def waveform_points(mono: np.ndarray, sample_rate: int, max_points: int = 2_000_000) -> tuple[np.ndarray, np.ndarray]:
    """(x seconds, y) to draw. Up to ``max_points`` samples are returned as they
    are; beyond, each block of ``b`` samples becomes its (min, max) pair in time
    order, so no peak is lost at any zoom level coarser than ``b`` samples."""
    y = np.asarray(mono, dtype=np.float32).reshape(-1)
    n = y.size
    if n <= max_points:
        return np.arange(n, dtype=np.float64) / sample_rate, y
    block = int(np.ceil(2 * n / max_points))
    count = n // block
    body = y[: count * block].reshape(count, block)
    lo, hi = body.min(axis=1), body.max(axis=1)
    # Order each pair as it occurs in time so the line follows the waveform.
    lo_first = body.argmin(axis=1) <= body.argmax(axis=1)
    pairs = np.empty((count, 2), dtype=np.float32)
    pairs[:, 0] = np.where(lo_first, lo, hi)
    pairs[:, 1] = np.where(lo_first, hi, lo)
    starts = np.arange(count, dtype=np.float64) * block
    x = np.stack([starts, starts + block / 2], axis=1).reshape(-1)
    ys = pairs.reshape(-1)
    tail = y[count * block:]
    if tail.size:
        x = np.concatenate([x, count * block + np.arange(tail.size, dtype=np.float64)])
        ys = np.concatenate([ys, tail])
    return x / sample_rate, ys
