"""Per-stem effects drawn at random: EQ, overdrive, compression, chorus and
reverb, in the order a mixing engineer would patch them. Each is None when
the stem goes without; all keep the length, and the chain's output is
finite with peak <= 0.99 (scaled, never clipped).

* EQ: RBJ low and high shelves and 1-3 peaking bands, in one sosfilt cascade.
* Drive: a pre-emphasis, gain into a waveshaper (tanh, asymmetric tanh, hard
  knee, arctan fuzz), 2x oversampled (polyphase) against aliasing, then a
  cabinet-like low-pass; wet/dry.
* Compressor: feed-forward, RMS detector (one-pole on x^2, attack time),
  soft knee, gain smoothed with a peak hold over the attack and a one-pole
  release (Giannoulis, Massberg & Reiss 2012, vectorised: no per-sample loop).
* Chorus: 1-3 modulated delay taps (7-25 ms, sine LFOs with spread phases).
* Reverb: a synthetic impulse response: a predelay, early reflections (sparse
  taps of decaying random sign), and a late tail of Gaussian noise in three
  bands, each with its own exponential decay (T60 longer in the lows, shorter
  in the highs), convolved by overlap-add FFT; wet/dry.

The chain first brings the stem to -20 dBFS RMS, so thresholds and drive
gains mean the same whatever the synthesiser's level.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage, signal

from . import dsp

STEMS = ("bass", "drums", "guitar", "piano")
CHAIN_RMS_DB = -20.0
# Probability of each effect per stem.
CHANCES = {
    "eq": {"bass": 0.8, "drums": 0.8, "guitar": 0.85, "piano": 0.8},
    "drive": {"bass": 0.15, "drums": 0.05, "guitar": 0.45, "piano": 0.05},
    "compressor": {"bass": 0.6, "drums": 0.6, "guitar": 0.4, "piano": 0.35},
    "chorus": {"bass": 0.1, "drums": 0.0, "guitar": 0.3, "piano": 0.25},
    "reverb": {"bass": 0.3, "drums": 0.6, "guitar": 0.7, "piano": 0.75},
}


@dataclass(frozen=True)
class EQ:
    low_hz: float
    low_db: float
    high_hz: float
    high_db: float
    peaks: list  # [Hz, dB, Q]


@dataclass(frozen=True)
class Drive:
    shape: str  # tanh, asymmetric, hard, fuzz
    gain_db: float
    tone_hz: float  # the cabinet low-pass
    mix: float


@dataclass(frozen=True)
class Compressor:
    threshold_db: float  # relative to the chain's -20 dBFS RMS
    ratio: float
    knee_db: float
    attack_ms: float
    release_ms: float


@dataclass(frozen=True)
class Chorus:
    delays_ms: list
    depth_ms: float
    rate_hz: float
    mix: float


@dataclass(frozen=True)
class Reverb:
    t60_s: float
    low_ratio: float  # T60 of the lows over t60_s
    high_ratio: float  # T60 of the highs over t60_s
    predelay_ms: float
    reflections: int
    early_ms: float
    mix: float
    seed: int  # the impulse response's noise


@dataclass(frozen=True)
class Effects:
    stem: str
    eq: EQ | None = None
    drive: Drive | None = None
    compressor: Compressor | None = None
    chorus: Chorus | None = None
    reverb: Reverb | None = None

    def to_json(self) -> dict:
        return asdict(self)


def _log_uniform(rng, low, high) -> float:
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def draw_effects(stem: str, rng: np.random.Generator, chances: dict | None = None) -> Effects:
    """Random effects for ``stem``; ``chances`` overrides CHANCES' probability
    of each effect for this stem ({"reverb": 1.0}, say)."""
    if stem not in STEMS:
        raise ValueError(f"unknown stem '{stem}'; one of {', '.join(STEMS)}")
    u = rng.uniform
    # One draw per effect whether or not it is used, so each effect's parameters do not shift with the others'.
    rolls = {name: rng.random() < (chances or {}).get(name, CHANCES[name][stem]) for name in CHANCES}
    eq = EQ(_log_uniform(rng, 60, 300), float(u(-9, 9)), _log_uniform(rng, 2000, 8000), float(u(-12, 6)),
            [[_log_uniform(rng, 100, 6000), float(u(-9, 9)), _log_uniform(rng, 0.5, 5)]
             for _ in range(int(rng.integers(1, 4)))])
    drive = Drive(str(rng.choice(["tanh", "asymmetric", "hard", "fuzz"])),
                  float(u(6, 36) if stem == "guitar" else u(3, 18)), _log_uniform(rng, 2000, 7000),
                  float(u(0.6, 1.0) if stem == "guitar" else u(0.2, 0.7)))
    compressor = Compressor(float(u(-18, -3)), float(u(1.5, 8)), float(u(0, 8)), _log_uniform(rng, 1, 30),
                            _log_uniform(rng, 30, 400))
    voices = int(rng.integers(1, 4))
    chorus = Chorus([float(u(7, 25)) for _ in range(voices)], float(u(0.5, 4)), _log_uniform(rng, 0.1, 2),
                    float(u(0.2, 0.5)))
    reverb = Reverb(_log_uniform(rng, 0.2, 3.0), float(u(1.0, 1.5)), float(u(0.3, 0.9)), float(u(0, 40)),
                    int(rng.integers(3, 13)), float(u(10, 80)),
                    float(u(0.05, 0.25) if stem in ("bass", "drums") else u(0.1, 0.5)), int(rng.integers(2 ** 31)))
    return Effects(stem, eq if rolls["eq"] else None, drive if rolls["drive"] else None,
                   compressor if rolls["compressor"] else None, chorus if rolls["chorus"] else None,
                   reverb if rolls["reverb"] else None)


def apply_eq(x: np.ndarray, eq: EQ, sample_rate: int) -> np.ndarray:
    filters = [dsp.shelf(eq.low_hz, eq.low_db, sample_rate, high=False),
               dsp.shelf(eq.high_hz, eq.high_db, sample_rate, high=True)]
    filters += [dsp.peaking(f, g, q, sample_rate) for f, g, q in eq.peaks]
    return dsp.biquads(x, filters)


def _shape(x: np.ndarray, shape: str) -> np.ndarray:
    if shape == "tanh":
        return np.tanh(x)
    if shape == "asymmetric":  # even harmonics, as a single-ended tube stage
        return np.tanh(x + 0.3) - np.tanh(0.3)
    if shape == "hard":  # a hard knee: linear to 2/3, a cubic curve to 1
        c = np.clip(x, -1.5, 1.5)
        return c - c ** 3 * (4.0 / 27.0)
    return (2 / np.pi) * np.arctan(3 * x)  # fuzz


# The 2x oversampling filter: 23 taps (scipy's default is 41) is enough here, and the cost is per tap.
HALF_BAND = signal.firwin(23, 0.5)


def apply_drive(x: np.ndarray, drive: Drive, sample_rate: int) -> np.ndarray:
    peak = max(float(np.abs(x).max()), 1e-9)
    pre = dsp.biquads(x, [dsp.highpass(80, 0.707, sample_rate), dsp.peaking(800, 6, 0.7, sample_rate)])
    up = signal.resample_poly(pre / peak * 10 ** (drive.gain_db / 20), 2, 1, window=HALF_BAND)
    shaped = signal.resample_poly(_shape(up, drive.shape), 1, 2, window=HALF_BAND)[:len(x)]
    shaped = dsp.dc_block(shaped.astype(np.float32), sample_rate)
    cab = dsp.biquads(shaped, [dsp.lowpass(drive.tone_hz, 0.8, sample_rate), dsp.lowpass(drive.tone_hz * 1.5, 0.6,
                                                                                         sample_rate)]) * peak
    return (1 - drive.mix) * x + drive.mix * cab


DETECTOR_DECIMATION = 16  # the gain is computed at sr / 16 (1.4 kHz at 22 kHz): it moves no faster than 1 ms


def apply_compressor(x: np.ndarray, comp: Compressor, sample_rate: int) -> np.ndarray:
    attack = np.exp(-1.0 / (comp.attack_ms * 1e-3 * sample_rate))
    power = signal.lfilter([1 - attack], [1, -attack], np.square(x, dtype=np.float32))[::DETECTOR_DECIMATION]
    level_db = 10 * np.log10(np.maximum(power, 1e-12))
    over = level_db - (CHAIN_RMS_DB + comp.threshold_db)
    # Soft knee (Giannoulis et al. 2012, eq. 4): quadratic inside +-knee/2.
    knee = max(comp.knee_db, 1e-6)
    over = np.where(over <= -knee / 2, 0.0, np.where(over >= knee / 2, over, (over + knee / 2) ** 2 / (2 * knee)))
    reduction = over * (1 - 1 / comp.ratio)
    rate = sample_rate / DETECTOR_DECIMATION
    hold = max(1, int(comp.attack_ms * 1e-3 * rate))
    reduction = ndimage.maximum_filter1d(reduction, hold)  # hold the reduction over an attack time
    release = np.exp(-1.0 / (comp.release_ms * 1e-3 * rate))
    reduction = signal.lfilter([1 - release], [1, -release], reduction)
    makeup = 0.5 * float(np.median(reduction[power > 1e-8])) if np.any(power > 1e-8) else 0.0
    gain = (10 ** ((makeup - reduction) / 20)).astype(np.float32)
    # Back to the audio rate by linear interpolation between the detector's samples.
    steps = np.arange(len(x)) / DETECTOR_DECIMATION
    return (x * np.interp(steps, np.arange(len(gain)), gain).astype(np.float32)).astype(np.float32)


def apply_chorus(x: np.ndarray, chorus: Chorus, sample_rate: int) -> np.ndarray:
    t = np.arange(len(x), dtype=np.float32) / np.float32(sample_rate)  # float32: an LFO needs no more
    wet = np.zeros(len(x), np.float32)
    for i, delay_ms in enumerate(chorus.delays_ms):
        lfo = np.sin(np.float32(2 * np.pi * chorus.rate_hz) * t + np.float32(2 * np.pi * i / len(chorus.delays_ms)))
        wet += dsp.modulated_delay(x, (delay_ms + chorus.depth_ms * lfo) * 1e-3 * sample_rate)
    wet /= np.float32(len(chorus.delays_ms))
    return (1 - chorus.mix) * x + chorus.mix * wet


def reverb_impulse_response(reverb: Reverb, sample_rate: int) -> np.ndarray:
    """Predelay, early reflections and a three-band exponentially decaying noise tail; unit energy."""
    rng = np.random.default_rng(reverb.seed)
    longest = reverb.t60_s * max(reverb.low_ratio, 1.0)
    length = int((reverb.predelay_ms * 1e-3 + min(longest, 4.0)) * sample_rate) + 1
    t = np.arange(length) / sample_rate
    noise = rng.standard_normal(length)
    bands = [(dsp.lowpass(400, 0.707, sample_rate), reverb.t60_s * reverb.low_ratio),
             (None, reverb.t60_s),
             (dsp.highpass(3500, 0.707, sample_rate), reverb.t60_s * reverb.high_ratio)]
    low, high = dsp.apply(bands[0][0], noise), dsp.apply(bands[2][0], noise)
    mid = noise - low - high
    tail = np.zeros(length)
    for band, (_, t60) in zip((low, mid, high), bands):
        tail += band * np.exp(-6.91 * t / t60)
    fade_in = np.clip(t / max(reverb.early_ms * 1e-3, 1e-3), 0, 1)  # the tail builds up behind the reflections
    ir = tail * fade_in * 0.5
    predelay = int(reverb.predelay_ms * 1e-3 * sample_rate)
    times = np.sort(rng.uniform(1e-3, reverb.early_ms * 1e-3, reverb.reflections))
    for when in times:
        i = predelay + int(when * sample_rate)
        if i < length:
            ir[i] += rng.choice([-1.0, 1.0]) * np.exp(-6.91 * when / reverb.t60_s) * rng.uniform(0.3, 1.0)
    ir = np.concatenate([np.zeros(predelay), ir[:length - predelay]])
    return (ir / np.sqrt(np.sum(ir ** 2))).astype(np.float32)


def apply_reverb(x: np.ndarray, reverb: Reverb, sample_rate: int) -> np.ndarray:
    wet = signal.oaconvolve(x, reverb_impulse_response(reverb, sample_rate))[:len(x)].astype(np.float32)
    return (1 - reverb.mix) * x + reverb.mix * wet


def apply_effects(x: np.ndarray, effects: Effects, sample_rate: int) -> np.ndarray:
    """The chain on a mono stem: same length, float32, finite, peak <= 0.99."""
    x = np.asarray(x, np.float32)
    if x.ndim != 1:
        raise ValueError(f"apply_effects takes a mono stem (1-D), got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("apply_effects: the input has NaN or inf samples")
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0
    if rms < 1e-7:
        return x.copy()
    y = x * np.float32(10 ** (CHAIN_RMS_DB / 20) / rms)
    if effects.eq:
        y = apply_eq(y, effects.eq, sample_rate)
    if effects.drive:
        y = apply_drive(y, effects.drive, sample_rate)
    if effects.compressor:
        y = apply_compressor(y, effects.compressor, sample_rate)
    if effects.chorus:
        y = apply_chorus(y, effects.chorus, sample_rate)
    if effects.reverb:
        y = apply_reverb(y, effects.reverb, sample_rate)
    return dsp.limit_peak(np.asarray(y, np.float32))
