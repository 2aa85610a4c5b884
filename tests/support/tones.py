"""Synthesised stems with known answers: harmonic notes of known F0 and
four-stem "tracks" whose pitched stems play the same chords (so their chroma
agree) and whose drums hit on the beat (so onsets agree), each track in its
own key and tempo."""

from __future__ import annotations

import numpy as np

RATE = 22050


def midi_hz(note: float) -> float:
    return 440.0 * 2 ** ((note - 69) / 12)


def harmonic(f0: float, seconds: float, rate: int = RATE, partials: int = 8, decay: float = 0.0,
             amplitude: float = 0.2) -> np.ndarray:
    """Partials 1..P of f0 (amplitude 1/h, below Nyquist), exponentially decaying at `decay` per second."""
    t = np.arange(int(seconds * rate)) / rate
    tone = sum(np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, partials + 1) if f0 * h < rate / 2)
    return (amplitude * tone * np.exp(-decay * t)).astype(np.float64)


def _place(out: np.ndarray, sound: np.ndarray, start: int) -> None:
    end = min(len(out), start + len(sound))
    if start < end:
        out[start:end] += sound[:end - start]


def track(rng: np.random.Generator, seconds: float = 12.0, rate: int = RATE) -> dict[str, np.ndarray]:
    """bass (chord roots), guitar (arpeggios), piano (block chords) and drums
    (kick, snare, hats) of one track: a random key, tempo and progression."""
    key = int(rng.integers(12))
    beat = float(rng.uniform(0.35, 0.6))
    frames = int(seconds * rate)
    stems = {name: np.zeros(frames) for name in ("bass", "drums", "guitar", "piano")}
    degrees = [(0, 4, 7), (5, 9, 12), (7, 11, 14), (9, 12, 16), (2, 5, 9)]   # I IV V vi ii
    t, bar = 0.0, 0
    while t < seconds:
        chord = degrees[0] if bar % 4 == 0 else degrees[int(rng.integers(len(degrees)))]
        start = int(t * rate)
        for b in range(4):
            at = int((t + b * beat) * rate)
            _place(stems["bass"], harmonic(midi_hz(36 + key + chord[0]), beat, rate, 6, 3.0, 0.3), at)
            for half in range(2):
                note = chord[(2 * b + half) % 3]
                _place(stems["guitar"], harmonic(midi_hz(52 + key + note), beat / 2, rate, 5, 4.0, 0.15),
                       at + int(half * beat / 2 * rate))
            noise = rng.standard_normal(int(0.12 * rate)) * np.exp(-np.arange(int(0.12 * rate)) / (0.02 * rate))
            if b % 2 == 0:
                kick = np.sin(2 * np.pi * 55 * np.arange(int(0.2 * rate)) / rate) * np.exp(-np.arange(int(0.2 * rate)) / (0.05 * rate))
                _place(stems["drums"], 0.5 * kick, at)
            else:
                _place(stems["drums"], 0.25 * noise, at)
            _place(stems["drums"], 0.05 * np.diff(noise, prepend=0.0), at + int(beat / 2 * rate))
        for note in chord:
            _place(stems["piano"], harmonic(midi_hz(64 + key + note), 4 * beat, rate, 8, 1.0, 0.08), start)
        t += 4 * beat
        bar += 1
    return {name: x.astype(np.float32) for name, x in stems.items()}
