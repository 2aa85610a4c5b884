"""Magnitude spectrogram in dB for a lane's on-demand view (numpy only)."""

from __future__ import annotations

import numpy as np


def spectrogram_db(mono: np.ndarray, sample_rate: int, n_fft: int = 1024, max_columns: int = 3000,
                   floor_db: float = -90.0) -> tuple[np.ndarray, float, float]:
    """Hann-windowed STFT of ``mono`` [frames] as dB ``[columns, bins]`` (time-major, the
    orientation pyqtgraph's ImageItem draws with time along x).

    The hop grows with the length so a 10-minute file still gives at most
    ``max_columns`` columns. Returns (image, seconds per column, Hz per bin);
    0 dB is a full-scale sine.
    """
    x = np.asarray(mono, dtype=np.float32).reshape(-1)
    if x.size < n_fft:
        x = np.pad(x, (0, n_fft - x.size))
    hop = max(n_fft // 4, int(np.ceil((x.size - n_fft) / max(max_columns - 1, 1))))
    count = 1 + (x.size - n_fft) // hop
    window = np.hanning(n_fft).astype(np.float32)
    starts = np.arange(count) * hop
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[starts] * window
    magnitude = np.abs(np.fft.rfft(frames, axis=1))
    # A full-scale sine peaks at sum(window)/2 in the magnitude spectrum.
    reference = window.sum() / 2
    db = 20 * np.log10(np.maximum(magnitude / reference, 10 ** (floor_db / 20)))
    return db.astype(np.float32), hop / sample_rate, sample_rate / n_fft
