"""One track's arrangement: the piece's lowest voice becomes the bass, the
upper voices (three; four or five in the extended set) are split between
guitar and piano, folded into each instrument's range, at a random tempo and
transposition, with drums.
"""

from __future__ import annotations

import math
from bisect import bisect_right

import numpy as np

from .corpus import MidiNote, Piece, Timeline
from .drums import _phrase_ends, drum_notes


STEMS = ("bass", "drums", "guitar", "piano")

# The paper drops tracks under 12 s (a training crop is 262144 samples = 11.9 s
# at 22050 Hz), so shorter pieces are looped up to this length.
MIN_SECONDS = 12.5

TEMPO_RANGE = (70.0, 140.0)  # beats per minute of the meter's beat (pulse)

# GM program ranges (0-based) per stem, and the pitch ranges we keep each in.
PROGRAMS = {"bass": range(32, 40), "guitar": range(24, 32), "piano": range(8)}
PITCH_RANGE = {"bass": (28, 67), "guitar": (40, 88), "piano": (21, 108)}
DRUM_KITS = (0, 8, 16, 24, 25, 32, 40)  # Standard, Room, Power, Electronic, 808, Jazz, Brush


def arrange(piece: Piece, rng: np.random.Generator, max_seconds: float) -> tuple[dict, dict]:
    """Per-stem MIDI notes and programs for one track, plus what was chosen."""
    # The tempo counts the meter's beat, kept between a quarter and a half note
    # so that 4/8 is not crawling and 3/8 (one beat a bar) is not racing.
    pulse = min(max(piece.bars[0].beat, 1.0), 2.0)
    beat_bpm = float(rng.uniform(*TEMPO_RANGE))
    quarter_bpm = beat_bpm * pulse
    start = _start_bar(piece, window=(min(max_seconds, 8.0) - 0.1) * quarter_bpm / 60.0)
    period_seconds = (piece.end - start) * 60.0 / quarter_bpm
    loops = max(1, math.ceil(min(MIN_SECONDS, max_seconds) / period_seconds))
    timeline = Timeline(piece, start, loops, quarter_bpm)

    transpose = int(rng.integers(-3, 4))
    programs = {stem: int(rng.choice(PROGRAMS[stem])) for stem in PROGRAMS}
    upper = _assign_upper_voices(rng, len(piece.voices) - 1)
    bass_down = _bass_octave_down(piece.voices[-1], transpose, rng)

    stems = {
        "bass": _voice_notes([piece.voices[-1]], "bass", timeline, transpose - 12 * bass_down, rng, max_seconds),
        "guitar": _voice_notes([piece.voices[i] for i in upper["guitar"]], "guitar", timeline, transpose, rng,
                               max_seconds),
        "piano": _voice_notes([piece.voices[i] for i in upper["piano"]], "piano", timeline, transpose, rng,
                              max_seconds),
    }
    kit = int(rng.choice(DRUM_KITS))
    stems["drums"] = drum_notes(timeline, rng, max_seconds, _phrase_ends(piece, timeline))
    programs["drums"] = kit
    end = max(n.off for notes in stems.values() for n in notes)
    info = {
        "tempo_bpm": round(beat_bpm, 3),
        "quarter_bpm": round(quarter_bpm, 3),
        "time_signature": piece.bars[0].meter,
        "transpose": transpose,
        "bass_octave_down": bool(bass_down),
        "programs": {stem: programs[stem] for stem in STEMS},
        "voices": {"bass": [piece.names[-1]],
                   **{stem: [piece.names[i] for i in upper[stem]] for stem in ("guitar", "piano")}},
        "start_beat": start,
        "loops": loops,
        "music_seconds": round(end, 6),
    }
    return {stem: stems[stem] for stem in STEMS}, info


def _start_bar(piece: Piece, window: float) -> float:
    """The first bar from which every voice plays within ``window`` quarter
    notes, so no stem opens with a long silence (Palestrina's voices enter one
    by one, and sometimes rest for bars); else the bar of the last entry."""
    onsets = [[n[1] for n in voice] for voice in piece.voices]
    for bar in piece.bars:
        if all(bisect_right(o, bar.offset + window - 1e-9) > bisect_right(o, bar.offset - 1e-9) for o in onsets):
            return bar.offset
    entry = max(o[0] for o in onsets)
    return max([b.offset for b in piece.bars if b.offset <= entry + 1e-9], default=0.0)


def _assign_upper_voices(rng, upper: int = 3) -> dict[str, list[int]]:
    """Split the voices above the bass (soprano, alto, tenor in a 4-part
    piece; 4 or 5 in a 5- or 6-part one) so guitar and piano each get at least one."""
    while True:
        to_guitar = rng.random(upper) < 0.5
        if 0 < to_guitar.sum() < upper:
            return {"guitar": [i for i in range(upper) if to_guitar[i]],
                    "piano": [i for i in range(upper) if not to_guitar[i]]}


def _bass_octave_down(voice, transpose: int, rng) -> bool:
    """A sung bass line is written where a bass guitar sounds an octave higher;
    drop it an octave, usually, when that stays above the low E."""
    lowest = min(n[0] for n in voice) + transpose
    return lowest - 12 >= PITCH_RANGE["bass"][0] and rng.random() < 0.75


def _fold(pitch: int, stem: str) -> int:
    """Move a pitch by octaves into the stem's instrument range."""
    low, high = PITCH_RANGE[stem]
    while pitch < low:
        pitch += 12
    while pitch > high:
        pitch -= 12
    return pitch


def _voice_notes(voices, stem, timeline: Timeline, transpose, rng, max_seconds) -> list[MidiNote]:
    """Each voice on its own channel, so two voices in unison don't cut each other off."""
    level = rng.uniform(55, 100)  # per-part loudness
    legato = rng.uniform(0.8, 0.97)
    out = []
    for channel, voice in enumerate(voices):
        notes = [(p, s - timeline.start + k * timeline.period, d)
                 for k in range(timeline.loops) for p, s, d in voice if s >= timeline.start - 1e-9]
        # A player is never exactly on the grid: a few ms of jitter on each onset.
        ons = [max(0.0, timeline.seconds(s) + rng.normal(0, 0.004)) for _, s, _ in notes]
        for i, (pitch, start, dur) in enumerate(notes):
            if ons[i] >= max_seconds:
                break
            off = max(ons[i] + timeline.seconds(dur) * legato, ons[i] + 0.03)
            # End before the voice's next onset: on one channel, a note-off
            # after a repeated note's note-on would silence the new note.
            later = [ons[j] for j in range(i + 1, min(i + 5, len(notes))) if notes[j][1] > start + 1e-9]
            if later:
                off = max(min(off, later[0] - 0.002), ons[i] + 0.001)
            velocity = level + timeline.accent(start) + rng.normal(0, 6)
            out.append(MidiNote(channel, _fold(int(pitch) + transpose, stem), ons[i], off,
                                int(np.clip(round(velocity), 20, 127))))
    return out
