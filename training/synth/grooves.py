"""Genre drum grooves for generated songs: rock, funk sixteenths, shuffle,
half-time and bossa nova, written as step patterns (one row per drum, as on a
drum machine), played through drums.drum_notes so fills, crashes and the
ending follow the song's sections as for the corpus drummer.
"""

from __future__ import annotations

import numpy as np

from .corpus import Bar, MidiNote, Timeline
from .drums import CLOSED_HAT, KICK, OPEN_HAT, RIDE, SIDE_STICK, SNARE, drum_notes, ticks


# One bar per pattern; every row has the same number of steps, spread evenly
# over the bar (16 = sixteenths of 4/4, 12 = triplet eighths of 4/4 or the
# eighths of 12/8). X accent, x normal, g ghost note, . rest.
PATTERNS = {
    "rock": {KICK: "X.....x.X.x.....", SNARE: "....X.......X...", CLOSED_HAT: "x.x.x.x.x.x.x.x."},
    "funk": {KICK: "X..x..x...x..x..", SNARE: "....X..g.g..X..g", CLOSED_HAT: "XxxxXxxxXxxxXxxx"},
    "half_time": {KICK: "X.........x.....", SNARE: "........X.......", CLOSED_HAT: "x.x.x.x.x.x.x.x."},
    "bossa": {KICK: "X..xX..xX..xX..x", SIDE_STICK: "x..x..x...x..x..", CLOSED_HAT: "xxxxxxxxxxxxxxxx"},
    "shuffle": {KICK: "X.....x.....", SNARE: "...X.....X..", RIDE: "x.xx.xx.xx.x"},
}
VELOCITY = {"X": (105.0, 120.0), "x": (75.0, 95.0), "g": (25.0, 40.0)}
GENRES_BY_METER = {"4/4": ("rock", "funk", "half_time", "bossa", "shuffle"), "12/8": ("shuffle",)}
MIN_STEP_SECONDS = 0.1  # sixteenths faster than this are not played (funk falls back to rock)


def genres_for(meter: str, seconds_per_quarter: float) -> tuple[str, ...]:
    """The genres whose patterns fit a meter and are playable at this tempo."""
    genres = GENRES_BY_METER.get(meter, ())
    if seconds_per_quarter / 4 < MIN_STEP_SECONDS:
        genres = tuple(g for g in genres if g != "funk")
    return genres


def genre_groove(genre: str, rng: np.random.Generator):
    """``groove(bar, bar_index, rng)`` for drums.drum_notes: the pattern on the
    bar's steps; an open hi-hat now and then on the last off-beat."""
    if genre not in PATTERNS:
        raise ValueError(f"unknown groove {genre!r}; known: {sorted(PATTERNS)}")
    rows = PATTERNS[genre]
    open_hat = float(rng.uniform(0, 0.4))

    def groove(bar: Bar, bar_index: int, rng) -> list[tuple[int, int, float]]:
        hits = []
        for key, row in rows.items():
            step = ticks(bar.full) // len(row)
            for i, c in enumerate(row):
                if c == ".":
                    continue
                hit_key = key
                if key == CLOSED_HAT and i == len(row) - 2 and rng.random() < open_hat:
                    hit_key = OPEN_HAT
                hits.append((ticks(bar.origin) + i * step, hit_key, float(rng.uniform(*VELOCITY[c]))))
        begin, end = ticks(bar.offset), ticks(bar.offset + bar.length)
        return [h for h in hits if begin <= h[0] < end]

    return groove


def genre_drum_notes(genre: str, timeline: Timeline, rng, max_seconds: float, phrase_ends: list[int]) -> list[MidiNote]:
    """A drum part in a genre's groove over the timeline's bars."""
    return drum_notes(timeline, rng, max_seconds, phrase_ends, groove=genre_groove(genre, rng))
