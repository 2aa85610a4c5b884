"""Two modal keyboard models, each a bank of exponentially decaying partials
(dsp.modal_bank) shaped by a hammer.

* modal_piano: stiff-string partials f_k = k f0 sqrt(1 + B k^2) / sqrt(1 + B)
  (Fletcher 1964; B grows up the keyboard), a hammer striking at fraction
  beta of the string (comb |sin(pi k beta)|) whose spectrum widens with
  velocity, and the two-stage decay of coupled unison strings (prompt sound,
  then a long aftersound; Weinreich 1977). A damper ends the note at note-off.
* electric_piano: a Rhodes-like tine: a strong fundamental, a slightly
  inharmonic high "tine" mode that dies in tens of milliseconds, and a
  pickup nonlinearity (asymmetric polynomial: the bark of a hard-struck tine,
  stronger with velocity as the tine swings wider).
"""

from __future__ import annotations

import numpy as np

from . import dsp
from .notes import NoteSpan, Voice, end_fade, level, overlap_add

RELEASE_DB = 60.0


def draw_piano(stem: str, rng: np.random.Generator) -> dict:
    u = rng.uniform
    return {
        "inharmonicity": float(np.exp(u(np.log(5e-5), np.log(8e-4)))),  # B at middle C
        "strike_position": float(u(0.08, 0.16)),
        "hammer_hz": float(np.exp(u(np.log(1500), np.log(6000)))),  # spectral width at full velocity
        "velocity_brightness": float(u(0.6, 1.8)),
        "t60_s": float(u(4.0, 14.0)),  # aftersound T60 of middle C's fundamental
        "prompt_ratio": float(u(0.08, 0.3)),  # prompt sound decays this much faster
        "prompt_weight": float(u(0.5, 0.85)),
        "partial_damping": float(u(0.02, 0.15)),  # decay rate grows by this per partial number
        "max_partials": int(rng.integers(16, 48)),
        "release_s": float(u(0.08, 0.35)),
    }


def draw_electric_piano(stem: str, rng: np.random.Generator) -> dict:
    u = rng.uniform
    return {
        "tine_ratio": float(u(5.5, 8.5)),
        "tine_level": float(u(0.05, 0.5)),
        "tine_decay_s": float(u(0.01, 0.08)),
        "second_level": float(u(0.0, 0.3)),  # the second harmonic of the tine-tonebar pair
        "t60_s": float(u(2.0, 8.0)),
        "bark": float(u(0.1, 1.5)),  # even-order pickup term
        "drive": float(u(0.0, 0.6)),  # odd-order pickup term
        "velocity_swing": float(u(0.8, 2.0)),
        "tremolo_hz": float(u(3.0, 6.0)),
        "tremolo": float(u(0.0, 0.4)) if rng.random() < 0.4 else 0.0,
        "release_s": float(u(0.06, 0.3)),
    }


def _damper(span: NoteSpan, release_s: float, sample_rate: int) -> np.ndarray:
    """1 while the key is down, then an exponential fall of 60 dB over release_s."""
    env = np.ones(span.length, np.float32)
    if span.length > span.held:
        after = np.arange(span.length - span.held, dtype=np.float32) / np.float32(sample_rate)
        env[span.held:] = np.exp(-after * np.float32(RELEASE_DB / 8.686 / release_s))
    return env


def render_piano(spans: list[NoteSpan], voice: Voice, sample_rate: int, frames: int,
                 rng: np.random.Generator) -> np.ndarray:
    p = voice.params

    def note(span: NoteSpan) -> np.ndarray:
        b = min(p["inharmonicity"] * 2.0 ** ((span.pitch - 60) * 0.09), 0.02)  # x2.1 per octave
        count = int(min(p["max_partials"], 0.45 * sample_rate / span.f0))
        k = np.arange(1, max(count, 1) + 1, dtype=np.float64)
        freqs = span.f0 * k * np.sqrt(1 + b * k * k) / np.sqrt(1 + b)
        cutoff = p["hammer_hz"] * (0.15 + 0.85 * span.velocity ** p["velocity_brightness"])
        amps = np.abs(np.sin(np.pi * k * p["strike_position"])) / k ** 0.5 / (1 + (freqs / cutoff) ** 2)
        t60 = p["t60_s"] * (261.6 / span.f0) ** 0.6
        decay = t60 / 6.91 / (1 + p["partial_damping"] * (k - 1) ** 1.5)
        phases = rng.uniform(0, 2 * np.pi, k.size)
        w = p["prompt_weight"]
        x = dsp.modal_bank(np.concatenate([freqs, freqs]), np.concatenate([decay * p["prompt_ratio"], decay]),
                           np.concatenate([amps * w, amps * (1 - w)]), span.length, sample_rate,
                           np.concatenate([phases, phases]))
        x *= _damper(span, voice.release_s, sample_rate)
        return end_fade(x * np.float32(0.5 * level(span, voice) / max(amps.sum(), 1e-9) ** 0.5), sample_rate)

    return overlap_add(spans, frames, note)


def render_electric_piano(spans: list[NoteSpan], voice: Voice, sample_rate: int, frames: int,
                          rng: np.random.Generator) -> np.ndarray:
    p = voice.params

    def note(span: NoteSpan) -> np.ndarray:
        t60 = p["t60_s"] * (261.6 / span.f0) ** 0.5
        freqs = [span.f0, 2 * span.f0, p["tine_ratio"] * span.f0]
        decays = [t60 / 6.91, t60 / 6.91 / 2.5, p["tine_decay_s"]]
        amps = [1.0, p["second_level"], p["tine_level"] * (0.3 + span.velocity)]
        x = dsp.modal_bank(freqs, decays, amps, span.length, sample_rate)
        swing = np.float32(0.3 + p["velocity_swing"] * span.velocity ** 1.5)
        d = x * swing
        # Pickup: asymmetric in the tine's swing (even harmonics), mildly saturating (odd ones).
        y = d + np.float32(p["bark"] * 0.5) * d * d - np.float32(p["drive"] / 3) * d * d * d
        y = dsp.dc_block(y / swing, sample_rate)  # the even term's offset, per note so silence stays silent
        y *= _damper(span, voice.release_s, sample_rate)
        return end_fade(y * np.float32(0.3 * level(span, voice)), sample_rate)

    out = overlap_add(spans, frames, note)
    if p["tremolo"]:
        t = np.arange(frames, dtype=np.float32) / np.float32(sample_rate)
        out *= 1 - np.float32(p["tremolo"] * 0.5) * (1 + np.sin(np.float32(2 * np.pi * p["tremolo_hz"]) * t))
    return out
