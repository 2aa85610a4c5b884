"""Building blocks shared by the instruments and the effects, all vectorised
(numpy, scipy.signal.lfilter/sosfilt for recursions; loops run over blocks or
filter segments, never over samples).

* RBJ "Audio EQ Cookbook" biquads (Bristow-Johnson): low-pass, band-pass,
  peaking and shelving filters as (b, a).
* `swept_lowpass`: a resonant low-pass whose cutoff follows an envelope, run
  as piecewise-constant lfilter segments with the filter state carried across.
* `polyblep`: band-limited step correction (Valimaki & Huovilainen 2007), so
  saw and pulse oscillators do not alias at 22 kHz.
* `modal_bank`: a sum of exponentially decaying sinusoids computed as one
  complex matrix product per note (block-start phasors x in-block phasors),
  which costs no transcendental per sample and per mode.
* `modulated_delay`: a delay line read at a moving fractional position
  (chorus, Leslie Doppler).
"""

from __future__ import annotations

import numpy as np
from scipy import signal

TWO_PI = 2.0 * np.pi


def _clamp_hz(freq: float, sample_rate: int) -> float:
    return float(min(max(freq, 10.0), 0.45 * sample_rate))


def lowpass(freq: float, q: float, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    w = TWO_PI * _clamp_hz(freq, sample_rate) / sample_rate
    alpha = np.sin(w) / (2 * q)
    cos = np.cos(w)
    b = np.array([(1 - cos) / 2, 1 - cos, (1 - cos) / 2])
    a = np.array([1 + alpha, -2 * cos, 1 - alpha])
    return b / a[0], a / a[0]


def highpass(freq: float, q: float, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    w = TWO_PI * _clamp_hz(freq, sample_rate) / sample_rate
    alpha = np.sin(w) / (2 * q)
    cos = np.cos(w)
    b = np.array([(1 + cos) / 2, -(1 + cos), (1 + cos) / 2])
    a = np.array([1 + alpha, -2 * cos, 1 - alpha])
    return b / a[0], a / a[0]


def bandpass(freq: float, q: float, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """Constant 0 dB peak gain."""
    w = TWO_PI * _clamp_hz(freq, sample_rate) / sample_rate
    alpha = np.sin(w) / (2 * q)
    b = np.array([alpha, 0.0, -alpha])
    a = np.array([1 + alpha, -2 * np.cos(w), 1 - alpha])
    return b / a[0], a / a[0]


def peaking(freq: float, gain_db: float, q: float, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    w = TWO_PI * _clamp_hz(freq, sample_rate) / sample_rate
    amp = 10 ** (gain_db / 40)
    alpha = np.sin(w) / (2 * q)
    cos = np.cos(w)
    b = np.array([1 + alpha * amp, -2 * cos, 1 - alpha * amp])
    a = np.array([1 + alpha / amp, -2 * cos, 1 - alpha / amp])
    return b / a[0], a / a[0]


def shelf(freq: float, gain_db: float, sample_rate: int, high: bool) -> tuple[np.ndarray, np.ndarray]:
    """Low or high shelf with slope S = 1 (the cookbook's)."""
    w = TWO_PI * _clamp_hz(freq, sample_rate) / sample_rate
    amp = 10 ** (gain_db / 40)
    cos, alpha = np.cos(w), np.sin(w) / 2 * np.sqrt(2.0)
    root = 2 * np.sqrt(amp) * alpha
    sign = -1.0 if high else 1.0
    b = np.array([amp * ((amp + 1) - sign * (amp - 1) * cos + root),
                  sign * 2 * amp * ((amp - 1) - sign * (amp + 1) * cos),
                  amp * ((amp + 1) - sign * (amp - 1) * cos - root)])
    a = np.array([(amp + 1) + sign * (amp - 1) * cos + root,
                  -sign * 2 * ((amp - 1) + sign * (amp + 1) * cos),
                  (amp + 1) + sign * (amp - 1) * cos - root])
    return b / a[0], a / a[0]


def apply(ba: tuple[np.ndarray, np.ndarray], x: np.ndarray) -> np.ndarray:
    return signal.lfilter(ba[0], ba[1], x).astype(np.float32)


def one_pole_lowpass(x: np.ndarray, freq: float, sample_rate: int, axis: int = -1) -> np.ndarray:
    """y[n] = (1-p) x[n] + p y[n-1], p = exp(-2 pi f / sr)."""
    p = float(np.exp(-TWO_PI * _clamp_hz(freq, sample_rate) / sample_rate))
    return signal.lfilter([1 - p], [1, -p], x, axis=axis).astype(np.float32)


def dc_block(x: np.ndarray, sample_rate: int, freq: float = 20.0) -> np.ndarray:
    """First-order DC blocker y[n] = x[n] - x[n-1] + r y[n-1]."""
    r = float(np.exp(-TWO_PI * freq / sample_rate))
    return signal.lfilter([1, -1], [1, -r], x).astype(np.float32)


def swept_lowpass(x: np.ndarray, cutoff_hz: np.ndarray, q: float, sample_rate: int, sections: int = 1,
                  block: int = 128, tolerance_octaves: float = 1 / 12) -> np.ndarray:
    """A resonant RBJ low-pass (``sections`` identical biquads in cascade: 12 dB
    per octave each) whose cutoff follows ``cutoff_hz`` (one value per
    sample). The cutoff is sampled per block and held; consecutive blocks
    within ``tolerance_octaves`` of a segment's first are merged, so a note
    whose filter envelope has settled costs one lfilter call per section
    (lfilter, not sosfilt: a tenth of the per-call overhead, which is what
    short segments cost). Each section's state is carried across segments."""
    n = len(x)
    if n == 0:
        return x.astype(np.float32)
    starts = np.arange(0, n, block)
    octaves = np.log2(np.clip(cutoff_hz[starts], 10.0, 0.45 * sample_rate))
    out = np.empty(n, np.float32)
    zi = [np.zeros(2) for _ in range(sections)]
    i = 0
    while i < len(starts):
        j = i + 1
        while j < len(starts) and abs(octaves[j] - octaves[i]) < tolerance_octaves:
            j += 1
        begin, end = starts[i], (starts[j] if j < len(starts) else n)
        b, a = lowpass(2 ** octaves[i], q, sample_rate)
        segment = x[begin:end]
        for k in range(sections):
            segment, zi[k] = signal.lfilter(b, a, segment, zi=zi[k])
        out[begin:end] = segment
        i = j
    return out


def biquads(x: np.ndarray, filters: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """A cascade of (b, a) biquads in one sosfilt call (about the cost of one)."""
    if not filters:
        return np.asarray(x, np.float32)
    sos = np.stack([np.concatenate([b, a]) for b, a in filters])
    return signal.sosfilt(sos, x).astype(np.float32)


def polyblep(phase: np.ndarray, step: float) -> np.ndarray:
    """The polynomial band-limited step residual at each wrap of ``phase``
    (cycles in [0, 1), float32), ``step`` the phase increment per sample."""
    out = np.zeros_like(phase)
    step = np.float32(min(step, 0.5))
    rising = np.flatnonzero(phase < step)
    t = phase[rising] / step
    out[rising] = t + t - t * t - 1.0
    falling = np.flatnonzero(phase > 1.0 - step)
    t = (phase[falling] - 1.0) / step
    out[falling] = t * t + t + t + 1.0
    return out


def saw(phase: np.ndarray, step: float) -> np.ndarray:
    return 2.0 * phase - 1.0 - polyblep(phase, step)


def pulse(phase: np.ndarray, step: float, width: float) -> np.ndarray:
    """A pulse high for ``width`` of the period, centred so its mean is zero whatever the width."""
    naive = 1.0 - 2.0 * (phase >= width).astype(np.float32)
    shifted = phase - np.float32(width)
    shifted -= np.floor(shifted)
    return naive + polyblep(phase, step) - polyblep(shifted, step) - np.float32(2 * width - 1)


MODAL_BLOCK = 64


def modal_bank(freqs, decays_s, amps, length: int, sample_rate: int, phases=None) -> np.ndarray:
    """sum_k amps[k] * exp(-t / decays_s[k]) * sin(2 pi freqs[k] t + phases[k]) for t = n / sr.

    Each mode is z_k^n with z_k = exp((-1/tau + 2 pi i f) / sr). Writing
    n = B m + u (B = MODAL_BLOCK), z_k^n = z_k^(B m) z_k^u, so the sum over modes
    is Im(C^T F) with C[k, m] = a_k z_k^(B m) and F[k, u] = z_k^u: one complex
    matrix product, exact to float rounding (each block's phasor is computed
    directly, so no error accumulates along the note).
    """
    freqs = np.asarray(freqs, np.float64)
    if length <= 0 or freqs.size == 0:
        return np.zeros(max(length, 0), np.float32)
    decays = np.maximum(np.asarray(decays_s, np.float64), 1e-4)
    amps = np.asarray(amps, np.float64)
    phases = np.zeros_like(freqs) if phases is None else np.asarray(phases, np.float64)
    keep = (freqs > 0) & (freqs < 0.5 * sample_rate) & (amps != 0)
    freqs, decays, amps, phases = freqs[keep], decays[keep], amps[keep], phases[keep]
    if freqs.size == 0:
        return np.zeros(length, np.float32)
    s = (-1.0 / decays + 1j * TWO_PI * freqs) / sample_rate  # log z_k
    blocks = -(-length // MODAL_BLOCK)
    coarse = (amps * np.exp(1j * phases))[:, None] * np.exp(s[:, None] * (MODAL_BLOCK * np.arange(blocks))[None, :])
    fine = np.exp(s[:, None] * np.arange(MODAL_BLOCK)[None, :])
    out = (coarse.T.astype(np.complex64) @ fine.astype(np.complex64)).imag.reshape(-1)
    return out[:length].astype(np.float32)


def modulated_delay(x: np.ndarray, delay_samples: np.ndarray) -> np.ndarray:
    """y[n] = x[n - d[n]] (d >= 0), linearly interpolated, zero before the start.

    The delay is short, so its integer and fractional parts come from d alone
    (in float32, exact enough for d of a few thousand samples) and the read is
    two integer gathers: no float64 positions over the whole signal."""
    x = np.asarray(x, np.float32)
    d = np.maximum(np.asarray(delay_samples, np.float32), np.float32(0))
    whole = np.ceil(d)
    frac = whole - d  # y = x[n - whole] * (1 - frac) + x[n - whole + 1] * frac
    pad = int(whole.max()) + 1 if len(x) else 1
    padded = np.concatenate([np.zeros(pad, np.float32), x])
    index = np.arange(pad, pad + len(x)) - whole.astype(np.int64)
    return padded[index] * (1 - frac) + padded[index + 1] * frac


def limit_peak(x: np.ndarray, peak: float = 0.99) -> np.ndarray:
    """Scale (never clip) so that |x| <= peak; non-finite input is an error, not silence."""
    x = np.asarray(x, np.float32)
    if not np.all(np.isfinite(x)):
        raise FloatingPointError("a synthesised signal is not finite (NaN or inf): a filter became unstable")
    top = float(np.abs(x).max()) if x.size else 0.0
    return x * np.float32(peak / top) if top > peak else x
