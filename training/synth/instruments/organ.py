"""Additive organ: drawbar-like harmonics (the 8', 4', 2 2/3', 2', 1 3/5',
1 1/3' and 1' footages = harmonics 1, 2, 3, 4, 5, 6, 8), Hammond-style
percussion (a decaying 2nd or 3rd harmonic), key click, and a Leslie-ish
rotor on the whole stem: amplitude tremolo plus Doppler vibrato from a
modulated delay.

The 16' and 5 1/3' bars (sub-octave and fifth) are left out: they move the
heard period an octave below the played note.
"""

from __future__ import annotations

import numpy as np

from . import dsp
from .notes import NoteSpan, Voice, adsr, end_fade, level, overlap_add

HARMONICS = np.array([1, 2, 3, 4, 5, 6, 8], np.float32)


def draw(stem: str, rng: np.random.Generator) -> dict:
    u = rng.uniform
    # Drawbar settings 0-8, each step 3 dB; the 8' always sounds.
    bars = rng.integers(0, 9, len(HARMONICS))
    bars[0] = max(int(bars[0]), int(rng.integers(5, 9)))
    fast = rng.random() < 0.4
    return {
        "drawbars": [int(b) for b in bars],
        "percussion": int(rng.choice([0, 2, 3], p=[0.5, 0.25, 0.25])),
        "percussion_decay_s": float(u(0.15, 0.6)),
        "click": float(u(0.0, 0.3)),
        "attack_s": float(u(0.002, 0.03)),
        "release_s": float(u(0.02, 0.25)),
        "leslie_hz": float(u(5.5, 7.0) if fast else u(0.6, 1.2)),
        "leslie_tremolo": float(u(0.0, 0.4)),
        "leslie_ms": float(u(0.0, 0.6)),  # Doppler depth as delay swing
        "tilt": float(u(0.0, 1.0)),  # high harmonics down by up to 1 dB per harmonic (tone-wheel leakage aside)
    }


def render(spans: list[NoteSpan], voice: Voice, sample_rate: int, frames: int, rng: np.random.Generator) -> np.ndarray:
    p = voice.params
    bars = np.asarray(p["drawbars"], np.float32)
    amps = np.where(bars > 0, 10 ** ((bars - 8) * 3 / 20), 0.0) * 10 ** (-p["tilt"] * (HARMONICS - 1) / 20)
    amps = (amps / amps.sum()).astype(np.float32)

    def note(span: NoteSpan) -> np.ndarray:
        # No vibrato on an organ (the rotor makes it), so every partial is a fixed sinusoid: a modal bank
        # with no decay, plus the percussion harmonic that does decay.
        freqs = list(HARMONICS * span.f0) + ([p["percussion"] * span.f0] if p["percussion"] else [])
        decays = [1e9] * len(HARMONICS) + ([p["percussion_decay_s"]] if p["percussion"] else [])
        x = dsp.modal_bank(freqs, decays, list(amps) + [0.5] * bool(p["percussion"]), span.length, sample_rate)
        if p["click"]:
            n = min(span.length, int(0.004 * sample_rate))
            x[:n] += np.float32(p["click"]) * rng.uniform(-1, 1, n).astype(np.float32) * np.linspace(
                1, 0, n, dtype=np.float32)
        x *= adsr(span, sample_rate, p["attack_s"], 1.0, 1.0, voice.release_s)
        return end_fade(x * np.float32(0.25 * level(span, voice)), sample_rate)

    out = overlap_add(spans, frames, note)
    t = np.arange(frames, dtype=np.float32) / np.float32(sample_rate)
    rotor = np.sin(np.float32(2 * np.pi * p["leslie_hz"]) * t + np.float32(rng.uniform(0, 2 * np.pi)))
    out = dsp.modulated_delay(out, (1.0 + rotor) * np.float32(p["leslie_ms"] * 1e-3 * sample_rate))
    return out * (1.0 - np.float32(p["leslie_tremolo"] * 0.5) * (1.0 + rotor))
