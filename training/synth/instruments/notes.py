"""What every pitched family shares: where a note sounds (frames), its pitch
curve (static detune, an initial scoop, delayed vibrato), velocity curves and
ADSR envelopes with an exponential release after the note-off.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from ..corpus import MidiNote

# A release envelope falls by 60 dB over release_s; at that point the note
# ends (its last sample is exactly where "notes + release" ends).
RELEASE_DB = 60.0


@dataclass(frozen=True)
class Voice:
    """The random parameters of one pitched instrument (JSON-able: `to_json`)."""

    family: str
    stem: str
    params: dict = field(default_factory=dict)  # the family's own (floats, strings, lists of them)
    detune_cents: float = 0.0
    vibrato_cents: float = 0.0
    vibrato_hz: float = 5.0
    vibrato_delay_s: float = 0.3
    scoop_cents: float = 0.0  # the note starts this far off its pitch...
    scoop_s: float = 0.05  # ...and settles with this time constant
    velocity_curve: float = 1.5  # level = (velocity / 127) ** velocity_curve
    release_s: float = 0.2

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class NoteSpan:
    start: int  # first frame in the stem
    held: int  # frames from note-on to note-off
    length: int  # held + release, cut at the stem's end
    pitch: int
    f0: float  # Hz, with the voice's static detune
    velocity: float  # 0..1


def midi_to_hz(pitch: float) -> float:
    return float(440.0 * 2.0 ** ((pitch - 69.0) / 12.0))


def check_notes(notes: list[MidiNote]) -> None:
    for n in notes:
        if not (0 <= n.pitch <= 127 and 1 <= n.velocity <= 127):
            raise ValueError(f"MIDI note {n}: pitch must be 0-127 and velocity 1-127")
        if not (np.isfinite(n.on) and np.isfinite(n.off) and 0 <= n.on <= n.off):
            raise ValueError(f"MIDI note {n}: needs 0 <= on <= off (seconds)")


def note_spans(notes: list[MidiNote], voice: Voice, sample_rate: int, frames: int) -> list[NoteSpan]:
    """The notes that start inside the stem, in time order (so random draws per
    note do not depend on the order the caller listed them in)."""
    check_notes(notes)
    release = int(round(voice.release_s * sample_rate))
    spans = []
    for n in sorted(notes, key=lambda n: (n.on, n.pitch, n.off, n.velocity)):
        start = int(round(n.on * sample_rate))
        if start >= frames:
            continue
        held = max(1, int(round((n.off - n.on) * sample_rate)))
        spans.append(NoteSpan(start, held, min(held + release, frames - start), n.pitch,
                              midi_to_hz(n.pitch + voice.detune_cents / 100.0), n.velocity / 127.0))
    return spans


def level(span: NoteSpan, voice: Voice) -> float:
    return float(span.velocity ** voice.velocity_curve)


BLOCK = 64  # pitch curves are computed per block of samples and interpolated linearly inside


def time_axis(length: int, sample_rate: int) -> np.ndarray:
    return np.arange(length, dtype=np.float32) / np.float32(sample_rate)


def _upsample(coarse: np.ndarray, length: int) -> np.ndarray:
    """Linear interpolation of values given at every BLOCK-th sample (needs
    ceil(length / BLOCK) + 1 of them), as one broadcast, not np.interp."""
    blocks = -(-length // BLOCK)
    frac = np.arange(BLOCK, dtype=np.float32) / np.float32(BLOCK)
    c = coarse.astype(np.float32)
    return (c[:blocks, None] + (c[1:blocks + 1] - c[:blocks])[:, None] * frac[None, :]).reshape(-1)[:length]


def pitch_drift(span: NoteSpan, voice: Voice, sample_rate: int, rng: np.random.Generator) -> np.ndarray | None:
    """Integral over time of (frequency ratio - 1), in seconds, per sample:
    the phase of an oscillator at f Hz is f * (t + drift(t)). The ratio is a
    scoop into the pitch (scoop_cents decaying with scoop_s) and vibrato that
    fades in after vibrato_delay_s with a random phase per note. None for a
    voice without either (the phase is then exactly f * t)."""
    if not (voice.scoop_cents or voice.vibrato_cents):
        return None
    blocks = -(-span.length // BLOCK)
    t = np.arange(blocks + 1, dtype=np.float64) * BLOCK / sample_rate
    cents = voice.scoop_cents * np.exp(-t / voice.scoop_s)
    if voice.vibrato_cents:
        fade = np.clip((t - voice.vibrato_delay_s) / 0.3, 0.0, 1.0)
        cents = cents + voice.vibrato_cents * fade * np.sin(2 * np.pi * voice.vibrato_hz * t + rng.uniform(0, 2 * np.pi))
    excess = np.exp2(cents / 1200.0) - 1.0
    integral = np.concatenate([[0.0], np.cumsum((excess[1:] + excess[:-1]) * (0.5 * BLOCK / sample_rate))])
    return _upsample(integral, span.length)


def oscillator_phase(freq_hz: float, length: int, sample_rate: int, drift: np.ndarray | None = None,
                     start: float = 0.0) -> np.ndarray:
    """Phase in cycles, in [0, 1), of an oscillator at ``freq_hz`` (times the
    pitch curve whose ``drift`` pitch_drift gives), starting at ``start``.

    f n / sr is split as n = BLOCK m + u: the block part is wrapped in float64
    (one value per block), the in-block part added in float32, so the phase
    stays exact to float32 rounding however long the note, at float32 speed.
    """
    blocks = -(-length // BLOCK)
    step = freq_hz / sample_rate
    coarse = np.mod(start + step * BLOCK * np.arange(blocks), 1.0).astype(np.float32)
    fine = (step * np.arange(BLOCK)).astype(np.float32)
    cycles = (coarse[:, None] + fine[None, :]).reshape(-1)[:length]
    if drift is not None:
        cycles += np.float32(freq_hz) * drift
    return cycles - np.floor(cycles)


def adsr(span: NoteSpan, sample_rate: int, attack_s: float, decay_s: float, sustain: float,
         release_s: float) -> np.ndarray:
    """Linear attack, exponential decay (time constant decay_s) to sustain, and
    from the note-off an exponential release reaching -60 dB after release_s.
    (Before the attack ends the decay factor is exactly 1, so the product of
    the two is the whole curve, without a branch.)"""
    t = time_axis(span.length, sample_rate)
    attack_s, decay_s = max(attack_s, 1e-4), max(decay_s, 1e-4)
    rise = np.minimum(t * np.float32(1 / attack_s), np.float32(1.0))
    fall = np.exp(np.maximum(t - np.float32(attack_s), np.float32(0)) * np.float32(-1 / decay_s))
    env = rise * (np.float32(sustain) + np.float32(1 - sustain) * fall)
    if span.length > span.held:
        at_off = env[span.held - 1]
        after = t[:span.length - span.held]
        env[span.held:] = at_off * np.exp(after * np.float32(-RELEASE_DB / 8.686 / max(release_s, 1e-3)))
    return env


def end_fade(x: np.ndarray, sample_rate: int, seconds: float = 0.003) -> np.ndarray:
    """A short linear fade on a note's last samples, so a release cut at -60 dB does not click."""
    n = min(len(x), max(1, int(seconds * sample_rate)))
    x[-n:] *= np.linspace(1.0, 0.0, n, dtype=np.float32)
    return x


def overlap_add(spans: list[NoteSpan], frames: int, render_note) -> np.ndarray:
    """The stem: each note's samples (render_note(span) -> span.length floats) added at its start."""
    out = np.zeros(frames, np.float32)
    for span in spans:
        audio = render_note(span)
        out[span.start:span.start + span.length] += audio[:span.length]
    return out
