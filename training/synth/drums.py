"""A drum part for any meter: a groove per bar (kick on strong beats, snare on
backbeats, hi-hat or ride on subdivisions), fills at phrase ends, crashes
after them (General MIDI percussion, channel 10).
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .corpus import Bar, MidiNote, Piece, Timeline


DRUM_CHANNEL = 9

# Drum times are integer ticks of a quarter note, so that "on the beat", "in
# this bar" and "under the crash" are exact comparisons, not float ones with
# tolerances. 40320 = 8! = 2^7 * 3^2 * 5 * 7: every subdivision a groove or
# fill uses (halves, thirds, quarters of a beat of 1/2, 3/4, 1, 3/2, 2
# quarters...) and the corpus's odd bar lines (multiples of 1/384 quarter in a
# Schumann quartet) fall on a tick; anything finer is snapped to 25 us at most.
TICKS_PER_QUARTER = 40320


def ticks(quarters: float) -> int:
    """Quarter-note time (from music21, a float that is a simple fraction) -> ticks."""
    return round(quarters * TICKS_PER_QUARTER)

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


def _groove(bar: Bar, bar_index: int, style: DrumStyle, rng) -> list[tuple[int, int, float]]:
    """(tick, key, velocity) hits of one bar's basic beat."""
    kicks, snares = _backbeat(bar.beats, bar_index, style)
    beat = ticks(bar.beat)
    hits = []
    for b in range(bar.beats):
        beat_start = ticks(bar.origin) + b * beat
        if b in kicks:
            hits.append((beat_start, KICK, rng.uniform(95, 115)))
        if b in snares:
            hits.append((beat_start, style.snare, rng.uniform(95, 120)))
        for s in range(style.hat_sub):
            t = beat_start + s * beat // style.hat_sub
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
            hits.append((beat_start + (beat * 2 // 3 if bar.division == 3 else beat // 2), KICK, rng.uniform(80, 100)))
    begin, end = ticks(bar.offset), ticks(bar.offset + bar.length)
    return [h for h in hits if begin <= h[0] < end]


def _fill(end: int, bar: Bar, beat_seconds: float, rng) -> list[tuple[int, int, float]]:
    """Toms (and some snare) going down over the last beat or two before ``end``."""
    beats = 2 if bar.beats >= 3 and rng.random() < 0.3 else 1
    if bar.division == 3:
        sub = 3
    else:  # sixteenths of a quarter beat (eighths of a half beat) unless too fast to play
        sub = 4 if beat_seconds / 4 >= 0.09 else 2
    n, beat = beats * sub, ticks(bar.beat)
    top = int(rng.integers(0, 3))
    hits = []
    for i in range(n):
        key = SNARE if rng.random() < 0.3 else TOMS[min(len(TOMS) - 1, top + (i * 4) // n)]
        hits.append((end - (n - i) * beat // sub, key, 70 + 45 * i / max(1, n - 1) + rng.normal(0, 4)))
    return hits


def _is_full(bar: Bar) -> bool:
    return ticks(bar.length) >= ticks(bar.full)


def _phrase_ends(piece: Piece, timeline: Timeline) -> list[int]:
    """Fermata ends (chorales mark their phrases), else every fourth bar line; in ticks."""
    if piece.phrase_ends:
        ends = [ticks(e - timeline.start + k * timeline.period) for k in range(timeline.loops) for e in piece.phrase_ends]
        return sorted(e for e in ends if e > 0)
    full = [b for b in timeline.bars if _is_full(b)]
    return [ticks(b.offset + b.length) for i, b in enumerate(full) if i % 4 == 3]


def _next_downbeat(bar_lines: list[int], t: int) -> int | None:
    """The first bar line at or after tick ``t``, except the last bar's (it gets the ending)."""
    i = bisect_left(bar_lines, t)
    return bar_lines[i] if 0 < i < len(bar_lines) - 1 else None


def drum_notes(timeline: Timeline, rng, max_seconds: float, phrase_ends: list[int],
               groove: Callable[[Bar, int, np.random.Generator], list[tuple[int, int, float]]] | None = None,
               ) -> list[MidiNote]:
    """A drum part that follows the bars of the timeline. ``groove(bar,
    bar_index, rng)`` gives a bar's (tick, key, velocity) hits in place of the
    meter's basic beat (e.g. a genre's pattern, grooves.py); fills, crashes
    and the ending are the same either way."""
    style = DrumStyle.sample(rng, timeline)
    hits = []
    for i, bar in enumerate(timeline.bars):
        hits += _groove(bar, i, style, rng) if groove is None else groove(bar, i, rng)
    bar_lines = [ticks(b.offset) for b in timeline.bars]
    first_full = next((b for b in timeline.bars if _is_full(b)), timeline.bars[0])
    crashes = [ticks(first_full.offset)]
    # A phrase (a chorale's fermata) often ends mid-bar and the next one starts
    # with a pickup: fill into the next downbeat and crash there.
    for downbeat in sorted({_next_downbeat(bar_lines, e) for e in phrase_ends} - {None}):
        bar = timeline.bars[bisect_left(bar_lines, downbeat) - 1]  # the bar that ends there
        if rng.random() < style.fill:
            begin = ticks(bar.offset)
            fill = [h for h in _fill(downbeat, bar, timeline.seconds(bar.beat), rng) if h[0] >= begin]
            hits = [h for h in hits if not fill[0][0] <= h[0] < downbeat] + fill
        crashes.append(downbeat)
    # The last bar: one crash with the kick on its downbeat, then let it ring.
    last = bar_lines[-1]
    hits = [h for h in hits if h[0] < last]
    crashes.append(last)
    for t in crashes:  # a crash replaces the hi-hat under it
        hits = [h for h in hits if not (h[0] == t and h[1] in (CLOSED_HAT, PEDAL_HAT, OPEN_HAT, RIDE))]
        hits += [(t, CRASH, rng.uniform(100, 120)), (t, KICK, rng.uniform(100, 115))]
    loudest: dict[tuple[int, int], float] = {}  # one hit per key and tick
    for t, key, velocity in hits:
        loudest[(t, key)] = max(velocity, loudest.get((t, key), 0.0))
    out = []
    for (t, key), velocity in sorted(loudest.items()):
        on = max(0.0, timeline.seconds(t / TICKS_PER_QUARTER) + rng.normal(0, 0.003))
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
