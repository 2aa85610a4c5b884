"""Plucked strings by extended Karplus-Strong (Karplus & Strong 1983; Jaffe &
Smith 1983): a delay line of N samples closed by a two-point loop filter
y[n] = rho * ((1 - S) y[n-N] + S y[n-N-1]), excited by one period of shaped
noise (pick position comb, velocity-dependent low-pass, pickup position comb),
then a body of resonant peaks.

Tuning: the loop's period is N + S samples. Instead of a fractional-delay
allpass, each note runs at its own internal rate f0 * (N + S) with integer N
(>= sr/f0, so the internal rate is at or just above the stem's) and is
resampled to the stem rate by linear interpolation; the resampling clock
also carries the scoop and vibrato. Tuning is exact for any S.

Speed: the recursion only reaches back N or N+1 samples, so a whole period
(N samples) follows from the previous one in one vector step, and all the
notes of one pitch (same N) advance together as rows of a matrix: the Python
loop runs once per period of the longest note of each pitch, not per sample.
"""

from __future__ import annotations

import numpy as np

from . import dsp
from .notes import NoteSpan, Voice, adsr, end_fade, level, pitch_drift

# Families of drawn parameters per stem: (name, probability).
KINDS = {"guitar": (("nylon", 0.3), ("steel", 0.35), ("electric", 0.35)),
         "bass": (("fingered", 0.45), ("picked", 0.3), ("muted", 0.25))}


def draw(stem: str, rng: np.random.Generator) -> dict:
    kinds = KINDS["bass" if stem == "bass" else "guitar"]
    kind = str(rng.choice([k for k, _ in kinds], p=[p for _, p in kinds]))
    muted = kind == "muted"
    bass = stem == "bass"
    params = {
        "kind": kind,
        # T60 of the fundamental at the reference pitch (A2 for guitar, A1 for bass), scaled as f0^-tilt.
        "t60_s": float(rng.uniform(0.08, 0.35) if muted else rng.uniform(1.5, 6.0) if bass else rng.uniform(1.5, 7.0)),
        "t60_tilt": float(rng.uniform(0.2, 0.8)),
        "loop_s": float(rng.uniform(0.05, 0.5)),  # loop filter weight: 0.5 darkest, -> 0 brightest
        "brightness_hz": float(np.exp(rng.uniform(np.log(600), np.log(2500 if muted else 9000)))),
        "velocity_brightness": float(rng.uniform(0.3, 1.5)),
        "pick_position": float(rng.uniform(0.04, 0.3)),
        "pickup_position": float(rng.uniform(0.05, 0.25)) if kind in ("electric", "fingered", "picked") else 0.0,
        "pick_noise": float(rng.uniform(0.0, 0.3)),  # a click of unshaped noise at the attack
        "body": [[float(np.exp(rng.uniform(np.log(80 if bass else 90), np.log(250 if bass else 600)))),
                  float(rng.uniform(2.0, 9.0 if kind in ("nylon", "steel") else 4.0)), float(rng.uniform(1.0, 8.0))]
                 for _ in range(int(rng.integers(1, 4)))],  # [Hz, dB, Q] peaks
        "release_s": float(rng.uniform(0.03, 0.25)),  # fingers damping the string after the note-off
    }
    return params


def _excitation(span: NoteSpan, n: int, p: dict, rng: np.random.Generator) -> np.ndarray:
    """One period of the string's initial shape, spectrally shaped (FFT over the
    period: the delay line is circular, so is the shaping)."""
    noise = rng.uniform(-1.0, 1.0, n)
    spectrum = np.fft.rfft(noise)
    harmonic = np.arange(spectrum.size, dtype=np.float64)  # bin k is the k-th harmonic of f0
    freq = harmonic * span.f0
    cutoff = p["brightness_hz"] * (0.25 + 0.75 * span.velocity ** p["velocity_brightness"])
    spectrum *= 1.0 / np.sqrt(1.0 + (freq / cutoff) ** 4)
    # Plucking at fraction beta of the string removes harmonics k with k * beta integer.
    spectrum *= np.abs(np.sin(np.pi * harmonic * p["pick_position"]))
    if p["pickup_position"]:
        spectrum *= np.abs(np.sin(np.pi * harmonic * p["pickup_position"]))
    spectrum[0] = 0.0
    shape = np.fft.irfft(spectrum, n)
    return shape / max(float(np.sqrt(np.mean(shape ** 2))), 1e-9)


def _strings(excitations: np.ndarray, rho: np.ndarray, s: float, periods: int) -> np.ndarray:
    """Run the KS loop for ``periods`` periods: rows are notes, output (rows, periods * N)."""
    rows, n = excitations.shape
    y = np.zeros((rows, periods, n), np.float32)
    y[:, 0] = excitations
    previous_last = np.zeros(rows, np.float32)  # y[n - N - 1] for the first sample of period k
    for k in range(1, periods):
        last = y[:, k - 1]
        shifted = np.concatenate([previous_last[:, None], last[:, :-1]], axis=1)
        y[:, k] = rho[:, None] * ((1.0 - s) * last + s * shifted)
        previous_last = last[:, -1]
    return y.reshape(rows, -1)


def render(spans: list[NoteSpan], voice: Voice, sample_rate: int, frames: int, rng: np.random.Generator) -> np.ndarray:
    p = voice.params
    s = p["loop_s"]
    out = np.zeros(frames, np.float32)
    reference = 55.0 if voice.stem == "bass" else 110.0
    body = [dsp.peaking(freq, gain_db, q, sample_rate) for freq, gain_db, q in p["body"]]
    by_delay: dict[int, list[NoteSpan]] = {}
    for span in spans:
        by_delay.setdefault(int(np.ceil(sample_rate / span.f0 - s)), []).append(span)
    for n, group in sorted(by_delay.items()):
        n = max(n, 2)
        excitations = np.stack([_excitation(span, n, p, rng) for span in group]).astype(np.float32)
        # Loop gain per period from the fundamental's T60, less the loop filter's own loss there.
        loss = []
        internal = []
        for span in group:
            t60 = p["t60_s"] * (reference / span.f0) ** p["t60_tilt"]
            w = 2 * np.pi / (n + s)
            filter_gain = abs((1 - s) + s * np.exp(-1j * w))
            loss.append(min(10 ** (-3.0 / (t60 * span.f0)) / filter_gain, 0.99999))
            internal.append(span.f0 * (n + s))
        # Where each output sample reads the string (in internal samples), the pitch curve included.
        positions = []
        for span, rate in zip(group, internal):
            drift = pitch_drift(span, voice, sample_rate, rng)
            t = np.arange(span.length, dtype=np.float64) / sample_rate
            positions.append(rate * (t if drift is None else t + drift))
        periods = max(int(pos[-1]) // n + 2 for pos in positions)
        strings = _strings(excitations, np.asarray(loss, np.float32), s, periods)
        grid = np.arange(strings.shape[1], dtype=np.float64)
        for row, (span, pos) in enumerate(zip(group, positions)):
            note = np.interp(pos, grid, strings[row]).astype(np.float32)
            if p["pick_noise"]:
                click = int(0.004 * sample_rate)
                note[:click] += np.float32(p["pick_noise"]) * rng.uniform(-1, 1, min(click, len(note))).astype(
                    np.float32) * np.linspace(1, 0, min(click, len(note)), dtype=np.float32)
            # The body per note, not on the stem, so nothing rings past the note's release.
            note = dsp.biquads(note, body)
            # Held: the string rings on its own; after the note-off a damping release.
            env = adsr(span, sample_rate, 0.0005, 1e3, 1.0, voice.release_s)
            note *= env * np.float32(0.25 * level(span, voice))
            out[span.start:span.start + span.length] += end_fade(note, sample_rate)
    return out
