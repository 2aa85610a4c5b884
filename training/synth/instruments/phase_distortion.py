"""Phase distortion (Casio CZ series, 1984): a cosine read through a bent phase.
The held-out family: never used for training, part of the project's own
held-out timbre set.

The phase p in [0, 1) is bent at a knee d: p' = p / (2d) for p < d, else
1/2 + (p - d) / (2 (1 - d)). d = 1/2 reads a plain cosine; as the "DCW"
envelope moves d towards 0 the wave steepens into a saw. The square shape
bends both half periods; the resonant shapes read a cosine at a higher
(enveloped) rate under a falling window, the CZ's filter-sweep imitation.
Two lines (DCO 1 and 2) may sound together, the second detuned or an octave up.
"""

from __future__ import annotations

import numpy as np

from . import dsp
from .notes import NoteSpan, Voice, adsr, end_fade, level, oscillator_phase, overlap_add, pitch_drift

SHAPES = ("saw", "square", "pulse", "resonant_saw", "resonant_triangle")


def draw(stem: str, rng: np.random.Generator) -> dict:
    u = rng.uniform
    bass = stem == "bass"

    def line() -> dict:
        return {"shape": str(rng.choice(SHAPES)), "dcw_depth": float(u(0.2, 1.0)),
                "dcw_attack_s": float(u(0.001, 0.05)), "dcw_decay_s": float(u(0.05, 1.5)),
                "dcw_sustain": float(u(0.0, 0.7)), "resonance": float(u(2.0, 8.0))}

    lines = [line()] + ([line()] if rng.random() < 0.5 else [])
    return {
        "lines": lines,
        "second_cents": float(u(3, 20)) * float(rng.choice([-1, 1])),
        "second_octave": int(rng.choice([0, 1])),
        "attack_s": float(u(0.001, 0.01) if bass else u(0.001, 0.2)),
        "decay_s": float(u(0.2, 2.5)),
        "sustain": float(u(0.2, 0.9)),
        "release_s": float(u(0.05, 0.25) if bass else u(0.1, 1.0)),
    }


def _bend(p: np.ndarray, d: np.ndarray) -> np.ndarray:
    """p / (2d) below the knee, 1/2 + (p - d) / (2 (1 - d)) above it, without a branch."""
    return np.minimum(p / (2 * d), np.float32(0.5)) + np.maximum(p - d, np.float32(0)) / (2 * (1 - d))


def _frac(x: np.ndarray) -> np.ndarray:
    return x - np.floor(x)


def _wave(shape: str, p: np.ndarray, amount: np.ndarray, resonance: float) -> np.ndarray:
    """One line's wave; ``amount`` in [0, 1] is the DCW (0: a pure cosine)."""
    if shape.startswith("resonant"):
        rate = 1.0 + amount * np.float32(resonance - 1.0)
        window = 1.0 - p if shape == "resonant_saw" else 1.0 - np.abs(2 * p - 1)
        return window * np.cos(2 * np.pi * _frac(rate * p))
    d = 0.5 - 0.49 * amount
    if shape == "saw":
        return -np.cos(2 * np.pi * _bend(p, d))
    second_half = (p >= 0.5).astype(np.float32)
    if shape == "square":  # each half period bent on its own
        return -np.cos(2 * np.pi * (_bend(_frac(2 * p), d) * 0.5 + 0.5 * second_half))
    # pulse: the saw's knee on a doubled phase, the second half held at -1
    return -np.cos(2 * np.pi * _bend(np.minimum(2 * p, np.float32(1.0)), d)) * (1 - second_half) - second_half


def render(spans: list[NoteSpan], voice: Voice, sample_rate: int, frames: int, rng: np.random.Generator) -> np.ndarray:
    prm = voice.params

    def note(span: NoteSpan) -> np.ndarray:
        drift = pitch_drift(span, voice, sample_rate, rng)
        # The sharpest knee a pitch may have before its harmonics pass Nyquist.
        limit = float(np.clip(1.0 - 8.0 * span.f0 / sample_rate, 0.0, 1.0))
        x = np.zeros(span.length, np.float32)
        for i, line in enumerate(prm["lines"]):
            f = span.f0 * (2.0 ** (prm["second_octave"] + prm["second_cents"] / 1200.0) if i else 1.0)
            p = oscillator_phase(f, span.length, sample_rate, drift)
            dcw = adsr(span, sample_rate, line["dcw_attack_s"], line["dcw_decay_s"], line["dcw_sustain"],
                       voice.release_s)
            amount = np.clip(dcw * np.float32(line["dcw_depth"] * (0.4 + 0.6 * span.velocity)), 0.0, limit)
            x += _wave(line["shape"], p, amount, line["resonance"]).astype(np.float32)
        x = dsp.dc_block(x, sample_rate)  # the windowed shapes' offset moves with the DCW
        x *= adsr(span, sample_rate, prm["attack_s"], prm["decay_s"], prm["sustain"], voice.release_s)
        return end_fade(x * np.float32(0.25 * level(span, voice) / len(prm["lines"])), sample_rate)

    return overlap_add(spans, frames, note)
