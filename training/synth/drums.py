"""A drum part for any meter: a groove per bar (kick on strong beats, snare on
backbeats, hi-hat or ride on subdivisions), fills at phrase ends, crashes
after them (General MIDI percussion, channel 10).
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass

import numpy as np

from .corpus import Bar, MidiNote, Piece, Timeline


DRUM_CHANNEL = 9

# GM percussion keys.
KICK, SIDE_STICK, SNARE, SNARE_2 = 36, 37, 38, 40
CLOSED_HAT, PEDAL_HAT, OPEN_HAT, CRASH, RIDE = 42, 44, 46, 49, 51
TOMS = (50, 48, 47, 45, 43, 41)  # high to low, the order a fill goes down


@dataclass
class DrumStyle:
    hat: int
    hat_sub: int  # hi-hat hits per beat
    snare: int
    half_time: bool
    waltz: bool  # 3 beats: snare on 2 and 3 (else on 3)
    kick_extra: float  # probability of an extra kick on an off-beat
    ghost: float  # probability of a ghost snare on a subdivision
    open_hat: float
    fill: float  # probability of a fill at a phrase end
    level: float

    @classmethod
    def sample(cls, rng, timeline: Timeline) -> DrumStyle:
        bar = timeline.bars[0]
        beat_seconds = timeline.seconds(bar.beat)
        if bar.division == 3:
            hat_sub = 3
        else:  # sixteenths only when they are not too fast to play
            hat_sub = 4 if beat_seconds / 4 >= 0.1 and rng.random() < 0.4 else 2
        return cls(
            hat=int(rng.choice([CLOSED_HAT, RIDE, PEDAL_HAT], p=[0.7, 0.2, 0.1])),
            hat_sub=hat_sub,
            snare=int(rng.choice([SNARE, SNARE_2, SIDE_STICK], p=[0.6, 0.3, 0.1])),
            half_time=bool(rng.random() < 0.2),
            waltz=bool(rng.random() < 0.5),
            kick_extra=float(rng.uniform(0, 0.3)),
            ghost=float(rng.uniform(0, 0.2)),
            open_hat=float(rng.uniform(0, 0.3)),
            fill=float(rng.uniform(0.5, 1.0)),
            level=float(rng.uniform(0.75, 1.0)),
        )


def _backbeat(beats: int, bar_index: int, style: DrumStyle) -> tuple[set[int], set[int]]:
    """(kick beats, snare beats) of a bar."""
    if beats == 1:  # 3/8: one beat a bar, alternate
        return ({0}, set()) if bar_index % 2 == 0 else (set(), {0})
    if beats == 3:
        return {0}, ({1, 2} if style.waltz else {2})
    if beats == 4 and style.half_time:
        return {0}, {2}
    return {b for b in range(beats) if b % 2 == 0}, {b for b in range(beats) if b % 2 == 1}


def _groove(bar: Bar, bar_index: int, style: DrumStyle, rng) -> list[tuple[float, int, float]]:
    """(quarter-note time, key, velocity) hits of one bar's basic beat."""
    kicks, snares = _backbeat(bar.beats, bar_index, style)
    hits = []
    for b in range(bar.beats):
        beat_start = bar.origin + b * bar.beat
        if b in kicks:
            hits.append((beat_start, KICK, rng.uniform(95, 115)))
        if b in snares:
            hits.append((beat_start, style.snare, rng.uniform(95, 120)))
        for s in range(style.hat_sub):
            t = beat_start + s * bar.beat / style.hat_sub
            if s == 0:
                velocity = rng.uniform(80, 95)
            else:
                velocity = rng.uniform(60, 72) if 2 * s == style.hat_sub else rng.uniform(45, 60)
            last_offbeat = b == bar.beats - 1 and s == style.hat_sub - 1
            key = OPEN_HAT if last_offbeat and style.hat == CLOSED_HAT and rng.random() < style.open_hat else style.hat
            hits.append((t, key, velocity))
            if s > 0 and rng.random() < style.ghost:
                hits.append((t, SNARE, rng.uniform(25, 40)))
        # An extra kick on the "and" (or the last third of a compound beat).
        if rng.random() < style.kick_extra:
            hits.append((beat_start + bar.beat * (2 / 3 if bar.division == 3 else 0.5), KICK, rng.uniform(80, 100)))
    return [h for h in hits if bar.offset - 1e-9 <= h[0] < bar.offset + bar.length - 1e-9]


def _fill(end: float, bar: Bar, beat_seconds: float, rng) -> list[tuple[float, int, float]]:
    """Toms (and some snare) going down over the last beat or two before ``end``."""
    beats = 2 if bar.beats >= 3 and rng.random() < 0.3 else 1
    if bar.division == 3:
        sub = 3
    else:  # sixteenths of a quarter beat (eighths of a half beat) unless too fast to play
        sub = 4 if beat_seconds / 4 >= 0.09 else 2
    n, step = beats * sub, bar.beat / sub
    top = int(rng.integers(0, 3))
    hits = []
    for i in range(n):
        key = SNARE if rng.random() < 0.3 else TOMS[min(len(TOMS) - 1, top + (i * 4) // n)]
        hits.append((end - (n - i) * step, key, 70 + 45 * i / max(1, n - 1) + rng.normal(0, 4)))
    return hits


def _phrase_ends(piece: Piece, timeline: Timeline) -> list[float]:
    """Fermata ends (chorales mark their phrases), else every fourth bar line."""
    if piece.phrase_ends:
        ends = [e - timeline.start + k * timeline.period for k in range(timeline.loops) for e in piece.phrase_ends]
        return sorted(e for e in ends if e > 0)
    full = [b for b in timeline.bars if b.length >= b.full - 1e-9]
    return [b.offset + b.length for i, b in enumerate(full) if i % 4 == 3]


def _next_downbeat(timeline: Timeline, t: float) -> float | None:
    """The first bar line at or after ``t``, except the last bar's (it gets the ending)."""
    i = bisect_right(timeline.offsets, t - 1e-9)
    return timeline.offsets[i] if 0 < i < len(timeline.offsets) - 1 else None


def drum_notes(timeline: Timeline, rng, max_seconds: float, phrase_ends: list[float]) -> list[MidiNote]:
    """A drum part that follows the bars of the timeline."""
    style = DrumStyle.sample(rng, timeline)
    hits = []
    for i, bar in enumerate(timeline.bars):
        hits += _groove(bar, i, style, rng)
    first_full = next((b for b in timeline.bars if b.length >= b.full - 1e-9), timeline.bars[0])
    crashes = [first_full.offset]
    # A phrase (a chorale's fermata) often ends mid-bar and the next one starts
    # with a pickup: fill into the next downbeat and crash there.
    for downbeat in sorted({_next_downbeat(timeline, e) for e in phrase_ends} - {None}):
        bar = timeline.bar_at(downbeat - 1e-6)
        if rng.random() < style.fill:
            fill = [h for h in _fill(downbeat, bar, timeline.seconds(bar.beat), rng) if h[0] >= bar.offset - 1e-9]
            hits = [h for h in hits if not fill[0][0] - 1e-9 <= h[0] < downbeat - 1e-9] + fill
        crashes.append(downbeat)
    # The last bar: one crash with the kick on its downbeat, then let it ring.
    last = timeline.bars[-1].offset
    hits = [h for h in hits if h[0] < last - 1e-9]
    crashes.append(last)
    for t in crashes:  # a crash replaces the hi-hat under it
        hits = [h for h in hits if not (abs(h[0] - t) < 1e-9 and h[1] in (CLOSED_HAT, PEDAL_HAT, OPEN_HAT, RIDE))]
        hits += [(t, CRASH, rng.uniform(100, 120)), (t, KICK, rng.uniform(100, 115))]
    loudest: dict[tuple[float, int], float] = {}  # one hit per key and time
    for t, key, velocity in hits:
        loudest[(round(t, 9), key)] = max(velocity, loudest.get((round(t, 9), key), 0.0))
    out = []
    for (t, key), velocity in sorted(loudest.items()):
        on = max(0.0, timeline.seconds(t) + rng.normal(0, 0.003))
        if on >= max_seconds:
            continue
        velocity = velocity * style.level + rng.normal(0, 5)
        # A note-off starts the release, which would choke a cymbal: hold them.
        hold = 1.5 if key in (CRASH, RIDE, OPEN_HAT) else 0.3
        out.append(MidiNote(DRUM_CHANNEL, key, on, on + hold, int(np.clip(round(velocity), 1, 127))))
    return _end_before_repeats(out)


def _end_before_repeats(notes: list[MidiNote]) -> list[MidiNote]:
    """End each note before the next onset of the same key: fluidsynth's
    note-off releases every voice on that key, the new one included."""
    next_on: dict[int, float] = {}
    for note in sorted(notes, key=lambda n: -n.on):
        if note.pitch in next_on:
            note.off = max(note.on + 0.001, min(note.off, next_on[note.pitch] - 0.001))
        next_on[note.pitch] = note.on
    return notes
