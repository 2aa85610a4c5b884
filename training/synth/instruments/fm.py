"""Frequency modulation (Chowning 1973), DX7-style: 2-4 sine operators, each
with a frequency ratio and an ADSR; a modulator adds index * envelope *
sin(its phase) to the phase of the operator it feeds.

Kinds, as the DX7's classic patches build them:
* epiano: carrier 1:1 with a gentle modulator (index falls as the note rings)
  plus a fast-decaying high-ratio "tine" pair (14:1 on the DX7's E.PIANO 1);
* bell: non-integer modulator ratios, a slowly decaying index;
* bass: a stacked modulator pair at integer ratios, percussive index;
* brass: index that follows the amplitude envelope (brighter as it swells).

Carriers are at ratio 1 or integer ratios, so the note's fundamental is the
MIDI pitch; bells' inharmonic sidebands fade faster than the fundamental.
"""

from __future__ import annotations

import numpy as np

from .notes import NoteSpan, Voice, adsr, end_fade, level, oscillator_phase, overlap_add, pitch_drift

KINDS = {"guitar": ("epiano", "bell", "brass"), "bass": ("bass",), "piano": ("epiano", "bell", "brass")}


def _operator(rng, ratio, index, attack, decay, sustain, release, target, velocity_sens=0.5) -> dict:
    return {"ratio": float(ratio), "index": float(index), "attack_s": float(attack), "decay_s": float(decay),
            "sustain": float(sustain), "release_s": float(release), "target": int(target),
            "velocity_sens": float(velocity_sens), "detune_hz": float(rng.uniform(-0.6, 0.6))}


def draw(stem: str, rng: np.random.Generator) -> dict:
    kind = str(rng.choice(KINDS[stem]))
    u = rng.uniform
    ops: list[dict] = []  # operator 0 and any with target -1 are carriers; a modulator's target has a lower index
    if kind == "epiano":
        ops.append(_operator(rng, 1, 1.0, u(0.001, 0.005), u(0.8, 3.0), u(0.0, 0.3), u(0.2, 0.6), -1))
        ops.append(_operator(rng, 1, u(0.3, 1.8), 0.001, u(0.3, 1.5), u(0.0, 0.3), u(0.2, 0.5), 0, u(0.5, 1.5)))
        ops.append(_operator(rng, 1, u(0.05, 0.3), 0.001, u(0.2, 1.0), 0.0, u(0.1, 0.4), -1))
        ops.append(_operator(rng, rng.choice([12, 14, 16]), u(0.5, 3.0), 0.0005, u(0.02, 0.12), 0.0, 0.05, 2,
                             u(0.8, 2.0)))
    elif kind == "bell":
        ops.append(_operator(rng, 1, 1.0, 0.001, u(1.0, 4.0), 0.0, u(0.5, 1.5), -1))
        ops.append(_operator(rng, rng.choice([1.4, 2.76, 3.5, 1.41, 4.2, 5.19]), u(1.0, 5.0), 0.001, u(0.2, 1.0), 0.0,
                             u(0.3, 1.0), 0, u(0.2, 1.0)))
        if rng.random() < 0.5:
            ops.append(_operator(rng, rng.choice([2, 3, 4]), u(0.05, 0.3), 0.001, u(0.5, 2.0), 0.0, u(0.3, 1.0), -1))
    elif kind == "bass":
        ops.append(_operator(rng, 1, 1.0, u(0.001, 0.01), u(0.3, 2.0), u(0.2, 0.8), u(0.03, 0.2), -1))
        ops.append(_operator(rng, rng.choice([1, 1, 2, 3]), u(0.5, 4.0), 0.001, u(0.05, 0.4), u(0.0, 0.4),
                             u(0.05, 0.2), 0, u(0.5, 1.5)))
        if rng.random() < 0.6:
            ops.append(_operator(rng, rng.choice([1, 2, 3, 5]), u(0.2, 2.5), 0.001, u(0.02, 0.3), u(0.0, 0.3),
                                 0.1, 1, u(0.3, 1.0)))
    else:  # brass
        attack = u(0.02, 0.12)
        ops.append(_operator(rng, 1, 1.0, attack, u(0.3, 1.5), u(0.6, 0.95), u(0.08, 0.3), -1))
        ops.append(_operator(rng, 1, u(1.5, 4.5), attack * u(1.0, 1.8), u(0.3, 1.5), u(0.4, 0.8), u(0.08, 0.3), 0,
                             u(0.8, 1.8)))
        if rng.random() < 0.5:
            ops.append(_operator(rng, rng.choice([1, 2, 3]), u(0.3, 1.5), attack, u(0.3, 1.0), u(0.3, 0.8), 0.2, 1))
    return {"kind": kind, "operators": ops, "release_s": max(op["release_s"] for op in ops)}


def render(spans: list[NoteSpan], voice: Voice, sample_rate: int, frames: int, rng: np.random.Generator) -> np.ndarray:
    ops = voice.params["operators"]
    carriers = [i for i, op in enumerate(ops) if op["target"] < 0]
    carrier_gain = np.float32(0.3 / np.sqrt(len(carriers)))

    def note(span: NoteSpan) -> np.ndarray:
        drift = pitch_drift(span, voice, sample_rate, rng)
        modulation = [np.zeros(span.length, np.float32) for _ in ops]
        out = np.zeros(span.length, np.float32)
        for i in range(len(ops) - 1, -1, -1):  # modulators (higher indices) before what they feed
            op = ops[i]
            env = adsr(span, sample_rate, op["attack_s"], op["decay_s"], op["sustain"], op["release_s"])
            cycles = oscillator_phase(op["ratio"] * span.f0 + op["detune_hz"], span.length, sample_rate, drift)
            wave = np.sin(np.float32(2 * np.pi) * cycles + modulation[i]) * env
            if op["target"] < 0:
                out += wave * carrier_gain * (op["index"] if i else 1.0)
            else:
                depth = op["index"] * span.velocity ** op["velocity_sens"]
                modulation[op["target"]] += wave * np.float32(depth)
        out *= np.float32(level(span, voice))
        return end_fade(out, sample_rate)

    return overlap_add(spans, frames, note)

