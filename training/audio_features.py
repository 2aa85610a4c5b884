"""Frame features of one stem, for judging generated audio (pure numpy/scipy).

- `log_mel`: log power in mel bands (HTK mel scale, triangular filters),
  the frame statistics the Fréchet distance is taken over.
- `periodicity`: per frame, the peak of the normalised autocorrelation in the
  stem's F0 range and the F0 it gives (the autocorrelation pitch detector of
  Rabiner 1977, normalised per lag as in Boersma 1993 so that a perfectly
  periodic frame scores 1 whatever its level; the search starts after the
  first dip of the autocorrelation, as YIN does, so the lobe around lag 0 of a
  low-passed noise is not taken for a period, and takes the first peak near
  the highest, as McLeod & Wyvill's MPM does, so F0 does not drop octaves).
- `band_flatness`: spectral flatness (geometric over arithmetic mean of the
  power, Gray & Markel 1974; Johnston 1988) in octave-wide bands: near 1 for
  noise, near 0 for a few harmonics. It sees pitch where log-mel bands are
  too wide to (a bass note's partials inside one low mel band).
- `chroma`: magnitude folded onto the 12 pitch classes (Fujishima 1999), from a
  long FFT so that semitones are resolved down to the bass register, counting
  only what stands above the local spectral envelope (noise has no chroma).
- `onset_strength`: half-wave rectified log-mel flux (spectral flux, Bello
  et al. 2005), summed over bands.
- `shaped_noise`: Gaussian noise with a signal's spectral envelope (its mean
  power spectrum smoothed over a third of an octave, which keeps the tilt and
  drops the notes) and its amplitude envelope: the "sounds like the stem, has
  no notes" reference the measures are normalised by.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage, signal

N_FFT, HOP = 2048, 512            # 93 ms frames, 23 ms hop at 22050 Hz
N_MELS = 64
LOG_FLOOR = 1e-10                 # power floor of log features (-100 dB)
ACTIVE_DB = 30.0                  # active frame: within this of the loudest frame ...
ACTIVE_FLOOR = 1e-4               # ... and above this RMS (-80 dBFS)
CHROMA_N_FFT, CHROMA_HOP = 8192, 2048   # 2.7 Hz bins: a semitone apart at 45 Hz
CHROMA_NOTES = (24, 108)          # MIDI C1 .. B7: seven whole octaves
CHROMA_ENVELOPE = 7               # semitones of the local spectral envelope ...
TONAL_EXCESS = 2.0                # ... that a semitone must exceed by this factor to count
SMOOTHING_OCTAVES = 1.0 / 3.0
KEY_MAXIMUM = 0.9                 # periodicity: first peak within 90 % of the highest
FLATNESS_BANDS = ((40.0, 160.0), (160.0, 640.0), (640.0, 2560.0), (2560.0, 10240.0))

# F0 search range per pitched stem (Hz): the synthetic set keeps bass in MIDI
# 28-67 (41-392 Hz), guitar in 40-88 (82-1319 Hz); piano parts are the upper
# voices of chorales (mostly MIDI 40-96); a little room either side.
F0_RANGE = {"bass": (38.0, 420.0), "guitar": (75.0, 1400.0), "piano": (60.0, 2100.0)}
PITCHED = tuple(F0_RANGE)


@dataclass(frozen=True)
class Periodicity:
    clarity: np.ndarray   # [K] peak normalised autocorrelation in the F0 range (0 where none)
    f0: np.ndarray        # [K] Hz at that peak (parabolic interpolation); nan where none
    active: np.ndarray    # [K] bool: frames loud enough to judge


def _mono(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"expected a mono signal [T], got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("the signal holds NaN or infinite samples")
    return x


def frames(x: np.ndarray, n_fft: int = N_FFT, hop: int = HOP) -> np.ndarray:
    """[K, n_fft] frames, centred (zero padding of n_fft/2 at both ends), K = 1 + T // hop."""
    x = np.pad(_mono(x), n_fft // 2)
    count = 1 + (len(x) - n_fft) // hop
    return np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop][:count]


def power_spectrogram(x: np.ndarray, n_fft: int = N_FFT, hop: int = HOP) -> np.ndarray:
    """|STFT|^2 with a Hann window, [K, n_fft // 2 + 1]."""
    window = signal.get_window("hann", n_fft)
    return np.abs(np.fft.rfft(frames(x, n_fft, hop) * window, axis=-1)) ** 2


def frame_rms(x: np.ndarray, n_fft: int = N_FFT, hop: int = HOP) -> np.ndarray:
    return np.sqrt((frames(x, n_fft, hop) ** 2).mean(-1))


def active_frames(x: np.ndarray, n_fft: int = N_FFT, hop: int = HOP) -> np.ndarray:
    """Frames within ACTIVE_DB of the signal's loudest and above ACTIVE_FLOOR."""
    rms = frame_rms(x, n_fft, hop)
    return (rms > ACTIVE_FLOOR) & (rms >= rms.max() * 10 ** (-ACTIVE_DB / 20))


def _hz_to_mel(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)


def _mel_to_hz(m):
    return 700.0 * (10.0 ** (np.asarray(m) / 2595.0) - 1.0)


def mel_filterbank(sample_rate: int, n_fft: int = N_FFT, n_mels: int = N_MELS,
                   fmin: float = 20.0, fmax: float | None = None) -> np.ndarray:
    """[n_mels, n_fft // 2 + 1] triangular filters equally spaced in HTK mel,
    each of unit area (Slaney normalisation) so bands of any width are comparable."""
    fmax = fmax or sample_rate / 2
    edges = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    low, centre, high = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs - low) / (centre - low)
    falling = (high - freqs) / (high - centre)
    bank = np.maximum(0.0, np.minimum(rising, falling))
    return bank * (2.0 / (high - low))


def log_mel(x: np.ndarray, sample_rate: int, n_mels: int = N_MELS) -> np.ndarray:
    """[K, n_mels] log10 mel power."""
    bank = mel_filterbank(sample_rate, N_FFT, n_mels)
    return np.log10(power_spectrogram(x) @ bank.T + LOG_FLOOR)


def band_flatness(x: np.ndarray, sample_rate: int, bands=FLATNESS_BANDS) -> np.ndarray:
    """[K, len(bands)] log10 spectral flatness per band (0 for white noise, very
    negative for a few partials). Bands above Nyquist are dropped."""
    power = power_spectrogram(x) + LOG_FLOOR
    freqs = np.fft.rfftfreq(N_FFT, 1.0 / sample_rate)
    columns = []
    for low, high in bands:
        inside = (freqs >= low) & (freqs < min(high, sample_rate / 2))
        if inside.sum() < 2:
            continue
        band = power[:, inside]
        columns.append(np.log(band).mean(-1) / math.log(10) - np.log10(band.mean(-1)))
    return np.stack(columns, axis=-1)


def normalised_autocorrelation(block: np.ndarray, max_lag: int) -> np.ndarray:
    """r(k) = sum_t x_t x_{t+k} / sqrt(sum_t x_t^2 sum_t x_{t+k}^2), t over the
    n - k overlapping samples, for k = 0..max_lag; rows of `block` [K, n] are frames."""
    n = block.shape[-1]
    size = 1 << int(math.ceil(math.log2(2 * n)))
    spectrum = np.fft.rfft(block, size, axis=-1)
    acf = np.fft.irfft(np.abs(spectrum) ** 2, size, axis=-1)[:, :max_lag + 1]
    energy = np.cumsum(block ** 2, axis=-1)
    total = energy[:, -1:]
    lags = np.arange(max_lag + 1)
    head = energy[:, n - 1 - lags]                                      # x_0 .. x_{n-1-k}
    tail = total - np.concatenate([np.zeros((len(block), 1)), energy[:, :max_lag]], axis=-1)  # x_k .. x_{n-1}
    denominator = np.sqrt(head * tail)
    return np.where(denominator > 0, acf / np.where(denominator > 0, denominator, 1.0), 0.0)


def periodicity(x: np.ndarray, sample_rate: int, f0_range: tuple[float, float],
                n_fft: int = N_FFT, hop: int = HOP) -> Periodicity:
    """Per frame, the normalised autocorrelation's highest peak at lags of the
    F0 range, searched from the first lag where it stops falling (its first
    dip) so the lobe around lag 0 never counts, and the F0 of that peak."""
    fmin, fmax = f0_range
    min_lag, max_lag = max(1, int(sample_rate / fmax)), int(math.ceil(sample_rate / fmin))
    if max_lag + 2 >= n_fft:
        raise ValueError(f"F0 down to {fmin} Hz needs frames longer than {n_fft} samples")
    block = frames(x, n_fft, hop)
    block = block - block.mean(-1, keepdims=True)
    r = normalised_autocorrelation(block, max_lag + 1)
    rising = np.diff(r, axis=-1) > 0                                    # r(k+1) > r(k)
    dip = np.where(rising.any(-1), rising.argmax(-1), max_lag + 1)      # first k where r turns up
    lags = np.arange(r.shape[-1])
    allowed = (lags[None] >= np.maximum(dip, min_lag)[:, None]) & (lags[None] <= max_lag)
    masked = np.where(allowed, r, -np.inf)
    best = masked.max(-1)
    has_peak = np.isfinite(best)
    # A periodic frame peaks at every multiple of its period: take the first
    # local maximum within KEY_MAXIMUM of the highest (McLeod & Wyvill 2005's
    # key maximum), not the highest, or F0 would drop octaves.
    local = np.zeros_like(allowed)
    local[:, 1:-1] = (r[:, 1:-1] >= r[:, :-2]) & (r[:, 1:-1] >= r[:, 2:])
    key = allowed & local & (masked >= KEY_MAXIMUM * best[:, None])
    peak = np.where(key.any(-1), key.argmax(-1), masked.argmax(-1))
    clarity = np.where(has_peak, np.maximum(r[np.arange(len(r)), peak], 0.0), 0.0)
    # Parabolic interpolation of the peak for a sub-sample lag.
    index = np.clip(peak, 1, r.shape[-1] - 2)
    rows = np.arange(len(r))
    a, b, c = r[rows, index - 1], r[rows, index], r[rows, index + 1]
    curve = a - 2 * b + c
    shift = np.where(np.abs(curve) > 1e-12, 0.5 * (a - c) / np.where(np.abs(curve) > 1e-12, curve, 1.0), 0.0)
    lag = index + np.clip(shift, -0.5, 0.5)
    f0 = np.where(has_peak & (clarity > 0), sample_rate / lag, np.nan)
    return Periodicity(clarity, f0, active_frames(x, n_fft, hop))


@functools.lru_cache(maxsize=8)
def _semitone_weights(sample_rate: int, n_fft: int) -> np.ndarray:
    """[n_fft // 2 + 1, notes] weights giving each semitone of CHROMA_NOTES the
    mean magnitude of the FFT bins nearest to it, or, for a low semitone
    narrower than a bin, the magnitude interpolated at its centre. A mean,
    not a sum: a semitone spans more bins the higher it is, and a sum would
    give smooth noise a chroma pattern of its own."""
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    notes = np.arange(*CHROMA_NOTES)
    weights = np.zeros((len(freqs), len(notes)))
    nearest = np.full(len(freqs), -1)
    nearest[1:] = np.round(12 * np.log2(freqs[1:] / 440.0) + 69).astype(int)
    for column, note in enumerate(notes):
        inside = nearest == note
        if inside.any():
            weights[inside, column] = 1.0 / inside.sum()
        else:
            position = 440.0 * 2 ** ((note - 69) / 12) / freqs[1]       # fractional bin of the centre
            low = int(position)
            weights[low, column], weights[low + 1, column] = low + 1 - position, position - low
    return weights


def chroma(x: np.ndarray, sample_rate: int) -> np.ndarray:
    """[K, 12] magnitude per pitch class (C = 0), summed over the octaves of
    CHROMA_NOTES (whole octaves, so every class counts as many); frames of
    CHROMA_N_FFT samples, hop CHROMA_HOP."""
    magnitude = np.sqrt(power_spectrogram(x, CHROMA_N_FFT, CHROMA_HOP))
    if sample_rate / 2 < 440.0 * 2 ** ((CHROMA_NOTES[1] - 69) / 12):
        raise ValueError(f"chroma up to MIDI {CHROMA_NOTES[1] - 1} needs a sample rate above {sample_rate} Hz")
    per_note = magnitude @ _semitone_weights(int(sample_rate), CHROMA_N_FFT)
    # Keep what stands above the local spectral envelope (the mean over
    # CHROMA_ENVELOPE semitones around each): partials do, noise does not, so
    # noise shaped like a stem gets no pitch classes from its spectral tilt
    # (spectral peaks only, as in HPCP, Gomez 2006).
    envelope = ndimage.uniform_filter1d(per_note, CHROMA_ENVELOPE, axis=-1, mode="nearest")
    tonal = np.maximum(per_note - TONAL_EXCESS * envelope, 0.0)
    return tonal.reshape(len(tonal), -1, 12).sum(1)


def onset_strength(x: np.ndarray, sample_rate: int) -> np.ndarray:
    """[K] spectral flux: sum over mel bands of the rise in log mel power
    since the previous frame (rises only); the first frame is 0."""
    mel = log_mel(x, sample_rate)
    rise = np.maximum(0.0, np.diff(mel, axis=0)).sum(-1)
    return np.concatenate([[0.0], rise])


def smoothed_power_spectrum(x: np.ndarray, sample_rate: int, octaves: float = SMOOTHING_OCTAVES) -> np.ndarray:
    """Mean power spectrum [n_fft // 2 + 1] smoothed in log frequency: each bin
    averaged with Gaussian weights of standard deviation `octaves` / 2 octaves
    (so a third-octave smoothing spreads a partial over about four semitones)."""
    power = power_spectrogram(x).mean(0)
    freqs = np.fft.rfftfreq(N_FFT, 1.0 / sample_rate)
    octave = np.log2(np.maximum(freqs, freqs[1]))
    weights = np.exp(-0.5 * ((octave[:, None] - octave[None, :]) / (octaves / 2)) ** 2)
    return (weights @ power) / weights.sum(-1)


def shaped_noise(x: np.ndarray, sample_rate: int, rng: np.random.Generator,
                 spectrum: np.ndarray | None = None, envelope_of: np.ndarray | None = None) -> np.ndarray:
    """Gaussian noise the length of `x` with x's smoothed power spectrum (or
    `spectrum`, [n_fft // 2 + 1]) and the frame RMS envelope of x (or of
    `envelope_of`), linearly interpolated between frame centres."""
    x = _mono(x)
    target = smoothed_power_spectrum(x, sample_rate) if spectrum is None else np.asarray(spectrum, dtype=np.float64)
    white = rng.standard_normal(len(x))
    # Shape the noise in the frequency domain of one FFT over the whole signal.
    spectrum_noise = np.fft.rfft(white)
    freqs_full = np.fft.rfftfreq(len(x), 1.0 / sample_rate)
    gain = np.sqrt(np.interp(freqs_full, np.fft.rfftfreq(N_FFT, 1.0 / sample_rate), target))
    coloured = np.fft.irfft(spectrum_noise * gain, len(x))
    envelope_source = x if envelope_of is None else _mono(envelope_of)[:len(x)]
    centres = np.arange(len(frame_rms(coloured))) * HOP
    want = np.interp(np.arange(len(x)), centres, frame_rms(envelope_source))
    have = np.interp(np.arange(len(x)), centres, frame_rms(coloured))
    return coloured * np.where(have > 0, want / np.where(have > 0, have, 1.0), 0.0)


def smooth_max(values: np.ndarray, width: int) -> np.ndarray:
    """Running maximum over `width` frames (the tolerance of onset matching)."""
    return ndimage.maximum_filter1d(np.asarray(values, dtype=np.float64), size=width, mode="nearest")
