"""Timbre augmentations applied to each stem of a training crop.

A separator trained on four SoundFonts learns those four sounds (issue 19:
12.5 dB on them, 4.7 dB on instruments it never heard). Rendering more
instruments is one half of the answer; the other is to change the timbre of
every crop a little, at almost no cost, so no two crops of a stem sound
alike. Each transform is one a sound engineer applies to a stem:

- repitch: resampling by up to +-2 semitones moves pitch, tempo and formants
  together (Demucs' "repitch", Défossez 2021; the drums move too, as a
  sampler's pitch knob does);
- a random equaliser: a smooth gain curve over log frequency, +-`eq_db` at
  random control points (Open-Unmix-style random filtering, broader);
- saturation on bass and guitar: tanh waveshaping at a random drive, the
  overdrive a guitarist puts before the amp;
- reverb: a synthetic impulse response (exponentially decaying noise, darker
  as it decays, RT60 drawn per stem), mixed wet/dry.

The target of each stem is the augmented stem and the mix is the sum of the
augmented stems, so the "stems sum to the mix" contract still holds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import soxr
from scipy.signal import fftconvolve


@dataclass(frozen=True)
class TimbreAugment:
    """Probabilities and ranges; `none()` turns every transform off."""

    repitch: float = 0.3            # probability per crop (all stems alike unless remixed)
    semitones: float = 2.0
    eq: float = 0.7                 # probability per stem
    eq_db: float = 9.0
    saturate: float = 0.25          # probability per bass/guitar stem
    reverb: float = 0.3             # probability per stem
    sample_rate: int = 22050

    @classmethod
    def none(cls) -> "TimbreAugment":
        return cls(repitch=0.0, eq=0.0, saturate=0.0, reverb=0.0)

    def read_length(self, crop: int, rng: np.random.Generator) -> tuple[int, float]:
        """How many samples to read for a crop, and the resampling ratio that
        turns them into `crop` samples (1.0: no repitch)."""
        if not self.repitch or rng.random() >= self.repitch:
            return crop, 1.0
        ratio = float(2 ** (rng.uniform(-self.semitones, self.semitones) / 12))
        return int(np.ceil(crop * ratio)) + 1, ratio

    def stem(self, x: np.ndarray, stem: str, rng: np.random.Generator) -> np.ndarray:
        """One stem's crop, transformed; same length, float32."""
        if self.eq and rng.random() < self.eq:
            x = random_equaliser(x, rng, self.eq_db, self.sample_rate)
        if self.saturate and stem in ("bass", "guitar") and rng.random() < self.saturate:
            x = saturate(x, drive_db=float(rng.uniform(3, 24)))
        if self.reverb and rng.random() < self.reverb:
            x = reverberate(x, rng, self.sample_rate)
        return x.astype(np.float32, copy=False)


@dataclass(frozen=True)
class RegisterShift:
    """Octave moves of the guitar and piano stems, each on its own.

    The first-guess separator tells guitar from piano largely by register:
    moving the guitar of the own held-out songs an octave up takes its
    SI-SNRi from 4.8 to 8.8 dB, an octave down to -6.4 (docs/models.md,
    "Separator: it listens to register"). Music the project has not rendered puts them
    anywhere; moving each an octave up or down at random makes register
    uninformative, so only timbre is left to learn. Octaves, not semitones,
    so the stems of one track keep their harmony and overlapping partials.
    The bass stays: low is what makes a bass."""

    probability: float = 0.0        # per guitar/piano stem: half of it up, half down
    stems: tuple[str, ...] = ("guitar", "piano")

    @property
    def longest_ratio(self) -> float:
        return 2.0 if self.probability else 1.0

    def ratio(self, stem: str, rng: np.random.Generator) -> float:
        """2 (an octave up), 0.5 (down) or 1 for this stem's crop."""
        if not self.probability or stem not in self.stems or rng.random() >= self.probability:
            return 1.0
        return 2.0 if rng.random() < 0.5 else 0.5


def resample_pitch(x: np.ndarray, ratio: float, length: int, sample_rate: int = 22050) -> np.ndarray:
    """x played `ratio` times faster (pitch and tempo up by log2(ratio)
    octaves), band-limited by soxr so an octave up does not alias, cut or
    zero-padded to `length`."""
    if ratio == 1.0:
        return x[:length].astype(np.float32, copy=False)
    y = soxr.resample(x.astype(np.float32, copy=False), sample_rate * ratio, sample_rate)
    out = np.zeros(length, np.float32)
    out[:min(length, len(y))] = y[:length]
    return out


def repitch(x: np.ndarray, ratio: float, length: int) -> np.ndarray:
    """Read x at `ratio` samples per output sample (linear interpolation):
    ratio > 1 raises pitch and tempo. Linear interpolation's mild low-pass is
    harmless next to the equaliser that follows."""
    if ratio == 1.0:
        return x[:length]
    positions = np.arange(length) * ratio
    return np.interp(positions, np.arange(len(x)), x).astype(np.float32)


def random_equaliser(x: np.ndarray, rng: np.random.Generator, max_db: float, sample_rate: int) -> np.ndarray:
    """A smooth random gain curve: control points every ~2/3 octave from 40 Hz
    to Nyquist, gains uniform in +-max_db, interpolated over log frequency."""
    spectrum = np.fft.rfft(x)
    freqs = np.fft.rfftfreq(len(x), 1 / sample_rate)
    points = np.geomspace(40.0, sample_rate / 2, 14)
    gains_db = rng.uniform(-max_db, max_db, len(points))
    curve = np.interp(np.log(np.maximum(freqs, 20.0)), np.log(points), gains_db)
    return np.fft.irfft(spectrum * 10 ** (curve / 20), n=len(x))


def saturate(x: np.ndarray, drive_db: float) -> np.ndarray:
    """tanh waveshaping at `drive_db` into the curve, scaled back to the input's peak."""
    peak = float(np.max(np.abs(x)))
    if peak < 1e-8:
        return x
    drive = 10 ** (drive_db / 20) / peak
    return np.tanh(x * drive) * (peak / np.tanh(peak * drive))


def synthetic_impulse_response(rng: np.random.Generator, sample_rate: int, rt60: float) -> np.ndarray:
    """Exponentially decaying noise (60 dB in `rt60` s), low-passed more as it
    decays (air and walls absorb highs), with a unit direct path."""
    n = int(rt60 * sample_rate)
    t = np.arange(n) / sample_rate
    noise = rng.standard_normal(n) * 10 ** (-3 * t / rt60)
    # One-pole low-pass whose cutoff falls with time: blend the noise with its
    # smoothed copy, more of the smoothed one later in the tail.
    smooth = np.convolve(noise, np.ones(8) / 8, mode="same")
    darker = np.minimum(1.0, t / max(rt60, 1e-3) * 2)
    ir = (1 - darker) * noise + darker * smooth
    ir[0] = 0.0
    ir /= np.sqrt(np.sum(ir ** 2)) + 1e-12
    ir[0] = 1.0
    return ir


def reverberate(x: np.ndarray, rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    """x through a synthetic room, wet level drawn in [0.1, 0.6]."""
    ir = synthetic_impulse_response(rng, sample_rate, rt60=float(rng.uniform(0.2, 1.6)))
    wet = fftconvolve(x, ir[1:], mode="full")[:len(x)]
    return x + float(rng.uniform(0.1, 0.6)) * wet
