"""Subtractive synthesis (Moog/Oberheim style): 1-3 band-limited saw, square
or pulse oscillators (PolyBLEP), detuned in unison or an octave up, a little
noise, an optional drive, into a resonant low-pass (12 or 24 dB/octave)
whose cutoff follows its own ADSR and the key, then an amplitude ADSR.

Kinds: bass (fast filter envelope, short release), lead (bright, vibrato),
pad (slow attack, wide detune, long release).
"""

from __future__ import annotations

import numpy as np

from . import dsp
from .notes import NoteSpan, Voice, adsr, end_fade, level, oscillator_phase, overlap_add, pitch_drift

KINDS = {"guitar": ("lead", "lead", "pad"), "bass": ("bass",), "piano": ("pad", "pad", "lead")}


def draw(stem: str, rng: np.random.Generator) -> dict:
    kind = str(rng.choice(KINDS[stem]))
    u = rng.uniform
    oscillators = []
    for i in range(int(rng.integers(1, 4))):
        oscillators.append({
            "shape": str(rng.choice(["saw", "square", "pulse"], p=[0.5, 0.25, 0.25])),
            "width": float(u(0.1, 0.45)),
            # Unison copies detuned symmetrically, or an octave up: never a fifth
            # or an octave down, which would move the heard pitch off the note.
            "cents": 0.0 if i == 0 else float(u(3, 30 if kind == "pad" else 15)) * (1 if i % 2 else -1),
            "octave": int(rng.choice([0, 1], p=[0.75, 0.25])) if i else 0,
            "level": float(1.0 if i == 0 else u(0.3, 1.0)),
        })
        if oscillators[-1]["octave"]:  # softer than the note's own oscillator, or it would be heard as the pitch
            oscillators[-1]["level"] *= 0.5
    pad, bass = kind == "pad", kind == "bass"
    return {
        "kind": kind,
        "oscillators": oscillators,
        "noise": float(u(0.0, 0.08)),
        "drive": float(u(0.0, 2.0)) if rng.random() < 0.3 else 0.0,
        "poles": int(rng.choice([2, 4])),
        # Cutoff = f0 * key_track ** ... : in multiples of the note's f0 so the timbre follows the key.
        "cutoff_harmonic": float(np.exp(u(np.log(1.0), np.log(6.0 if bass else 10.0)))),
        "resonance_q": float(np.exp(u(np.log(0.6), np.log(6.0)))),
        "env_octaves": float(u(0.0, 5.0 if bass else 3.5)),
        "velocity_octaves": float(u(0.0, 2.0)),
        "filter_attack_s": float(u(0.001, 0.01) if not pad else u(0.2, 1.5)),
        "filter_decay_s": float(u(0.05, 0.5) if bass else u(0.1, 2.0)),
        "filter_sustain": float(u(0.0, 0.6)),
        "attack_s": float(u(0.001, 0.01) if not pad else u(0.1, 1.0)),
        "decay_s": float(u(0.2, 2.0)),
        "sustain": float(u(0.4, 1.0)),
        "release_s": float(u(0.03, 0.3) if bass else u(0.1, 0.6) if kind == "lead" else u(0.5, 2.5)),
    }


def render(spans: list[NoteSpan], voice: Voice, sample_rate: int, frames: int, rng: np.random.Generator) -> np.ndarray:
    p = voice.params
    total = sum(o["level"] for o in p["oscillators"])

    def note(span: NoteSpan) -> np.ndarray:
        drift = pitch_drift(span, voice, sample_rate, rng)
        x = np.zeros(span.length, np.float32)
        for osc in p["oscillators"]:
            f = span.f0 * 2.0 ** (osc["octave"] + osc["cents"] / 1200.0)
            phase = oscillator_phase(f, span.length, sample_rate, drift, start=rng.random())  # free-running
            step = f / sample_rate
            wave = dsp.saw(phase, step) if osc["shape"] == "saw" else dsp.pulse(
                phase, step, 0.5 if osc["shape"] == "square" else osc["width"])
            x += wave * np.float32(osc["level"] / total)
        if p["noise"]:
            x += rng.uniform(-p["noise"], p["noise"], span.length).astype(np.float32)
        if p["drive"]:
            x = np.tanh(x * np.float32(1 + p["drive"])) / np.float32(np.tanh(1 + p["drive"]))
        fenv = adsr(span, sample_rate, p["filter_attack_s"], p["filter_decay_s"], p["filter_sustain"],
                    voice.release_s)
        octaves = p["env_octaves"] * fenv + p["velocity_octaves"] * (span.velocity - 0.7)
        cutoff = span.f0 * p["cutoff_harmonic"] * np.exp2(octaves)
        x = dsp.swept_lowpass(x, cutoff, p["resonance_q"], sample_rate, sections=p["poles"] // 2)
        x *= adsr(span, sample_rate, p["attack_s"], p["decay_s"], p["sustain"], voice.release_s)
        x *= np.float32(0.3 * level(span, voice) / max(1.0, np.sqrt(p["resonance_q"])))
        return end_fade(x, sample_rate)

    return overlap_add(spans, frames, note)
