"""What each pitched stem plays over a chord chart: the textures of popular
and common-practice accompaniment, as note events in score time.

Bass: roots, root-fifth (oom-pah), walking, syncopated pop with octaves,
pedal, arpeggios. Guitar: strums (each string a few ms after the last, down
strokes low to high, up strokes high to low on the top strings), finger-
picking, power chords (sustained or palm-muted chugs), single-note riffs.
Piano: right hand block chords, pads, syncopated comping, broken chords
(Alberti), melody; left hand octave bass, held roots, broken chords.

Chord shapes for guitar are found on the fretboard (standard tuning, a
four-fret hand position), so they are ones a guitarist can play; piano
voicings move to the nearest inversion (smallest total motion), the rule of
voice leading in keyboard harmony.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .arrangement import PITCH_RANGE
from .harmony import Chord


GUITAR_STRINGS = (40, 45, 50, 55, 59, 64)  # standard tuning, low E to high E
STRUM_STAGGER_MS = (5.0, 30.0)  # per string, the range the brief of issue 19 gives


@dataclass
class Meter:
    name: str  # "4/4"
    bar: float  # quarter notes per bar
    beat: float  # quarter notes per beat (1.5 in 6/8 and 12/8)
    beats: int
    division: int  # 2 simple, 3 compound

    @property
    def step(self) -> float:
        """The eighth-note grid (a beat's subdivision)."""
        return self.beat / self.division


METERS = {
    "4/4": Meter("4/4", 4.0, 1.0, 4, 2), "3/4": Meter("3/4", 3.0, 1.0, 3, 2),
    "6/8": Meter("6/8", 3.0, 1.5, 2, 3), "12/8": Meter("12/8", 6.0, 1.5, 4, 3),
}


@dataclass
class Span:
    """One chord of the chart, in quarter notes from the song's start."""
    start: float
    end: float
    chord: Chord


@dataclass
class Event:
    """One note in score time; ``shift`` is seconds added after the tempo map
    (a strum's stagger); notes of one ``gesture`` (a strum) share one timing jitter."""
    pitch: int
    start: float
    dur: float
    velocity: float
    channel: int = 0
    shift: float = 0.0
    gesture: int = -1


@dataclass
class Context:
    meter: Meter
    seconds_per_quarter: float
    scale: tuple[int, ...]  # pitch classes of the key's mode
    tonic: int
    gestures: list[int] = field(default_factory=lambda: [0])  # a counter shared by a song's strums

    def next_gesture(self) -> int:
        self.gestures[0] += 1
        return self.gestures[0]


def _place(pc: int, low: int) -> int:
    """The pitch of class ``pc`` in [low, low + 12)."""
    return low + (pc - low) % 12


def _nearest(pcs, target: float, low: int, high: int) -> int:
    """The pitch of one of ``pcs`` nearest to ``target`` within [low, high]."""
    options = [p for p in range(low, high + 1) if p % 12 in pcs]
    return min(options, key=lambda p: (abs(p - target), p))


def _span_at(spans: list[Span], t: float) -> Span:
    for span in spans:
        if span.start - 1e-9 <= t < span.end - 1e-9:
            return span
    return spans[-1]


def _grid(spans: list[Span], step: float) -> list[float]:
    """Every ``step`` from the first span's start to the last span's end."""
    start, end = spans[0].start, spans[-1].end
    n = int(round((end - start) / step))
    return [start + i * step for i in range(n)]


def _bar_position(t: float, meter: Meter) -> float:
    return t % meter.bar


def _accent(t: float, meter: Meter) -> float:
    """Velocity bonus: the downbeat most, other beats some, off-beats none."""
    pos = _bar_position(t, meter)
    if abs(pos) < 1e-6 or abs(pos - meter.bar) < 1e-6:
        return 10.0
    return 5.0 if abs(pos / meter.beat - round(pos / meter.beat)) < 1e-6 else 0.0


# ---------------------------------------------------------------- bass

BASS_TEXTURES = ("roots", "root_fifth", "walking", "pop", "pedal", "arpeggio")


def draw_bass(rng, ctx: Context) -> dict:
    texture = str(rng.choice(BASS_TEXTURES, p=[0.2, 0.2, 0.12, 0.26, 0.08, 0.14]))
    if ctx.meter.division == 3 and texture == "walking":
        texture = "root_fifth"
    eighths = ctx.meter.beats * ctx.meter.division
    return {
        "texture": texture,
        "low": int(rng.integers(28, 36)),  # where roots sit: E1 to B1, so the fifth above stays in range
        "pulse": str(rng.choice(["span", "beat", "step"])),  # for "roots"
        # pop: which eighths of the bar play (always the downbeat), and octave jumps
        "rhythm": sorted({0} | {int(i) for i in rng.choice(eighths, size=int(rng.integers(2, 5)), replace=False)}),
        "octaves": float(rng.uniform(0, 0.4)),
        "legato": float(rng.uniform(0.6, 0.97)),
        "level": float(rng.uniform(70, 100)),
        "pedal_on_dominant": bool(rng.random() < 0.25),
    }


def bass_events(part: dict, spans: list[Span], ctx: Context, rng) -> list[Event]:
    meter, texture, low = ctx.meter, part["texture"], part["low"]
    lo, hi = PITCH_RANGE["bass"]
    out: list[Event] = []

    def add(pitch, start, dur, extra=0.0):
        pitch = int(np.clip(pitch, lo, hi))
        out.append(Event(pitch, start, dur, part["level"] + _accent(start, meter) + extra + rng.normal(0, 5)))

    if texture == "pedal":
        # One note held through whole bars (tonic, or the dominant of a
        # dominant pedal); re-struck each bar so the bass keeps speaking.
        pc = (ctx.tonic + (7 if part["pedal_on_dominant"] else 0)) % 12
        pitch = _place(pc, low)
        t = spans[0].start
        while t < spans[-1].end - 1e-9:
            length = min(2 * meter.bar, spans[-1].end - t)
            add(pitch, t, length * 0.98, 5)
            t += length
        return out
    for i, span in enumerate(spans):
        chord, length = span.chord, span.end - span.start
        root = _place(chord.bass, low)
        fifth_pc = chord.fifth if chord.fifth is not None else chord.root
        nxt = spans[i + 1].chord if i + 1 < len(spans) else chord
        if texture == "roots":
            step = {"span": length, "beat": meter.beat, "step": meter.step}[part["pulse"]]
            for k in range(max(1, int(round(length / step)))):
                add(root, span.start + k * step, step * part["legato"])
        elif texture == "root_fifth":
            beats = max(1, int(round(length / meter.beat)))
            fifth = _place(fifth_pc, root - 7 if root - 7 >= lo else root)
            for k in range(beats):
                if meter.beats == 3 and beats == 3:  # a waltz: root, then the fifth twice (oom-pah-pah)
                    pitch = root if k == 0 else fifth
                else:
                    pitch = root if k % 2 == 0 else fifth
                add(pitch, span.start + k * meter.beat, meter.beat * part["legato"])
        elif texture == "walking":
            # Quarter notes: the chord's root on its first beat, chord and scale
            # tones after, and a chromatic or scale approach to the next root.
            beats = max(1, int(round(length / meter.beat)))
            target = _place(nxt.bass, low)
            prev = root
            for k in range(beats):
                t = span.start + k * meter.beat
                if k == 0:
                    pitch = root
                elif k == beats - 1:
                    pitch = target + int(rng.choice([-1, 1, -2, 2]))
                else:
                    pcs = chord.pitch_classes if rng.random() < 0.6 else ctx.scale
                    pitch = _nearest([p for p in pcs if p != prev % 12] or pcs, prev + rng.choice([-4, -2, 2, 4]),
                                     lo, low + 19)
                add(pitch, t, meter.beat * 0.9)
                prev = pitch
        elif texture == "pop":
            # A syncopated eighth pattern anchored to the bar; the note playing
            # on a chord's first eighth is its root.
            for t in _grid([span], meter.step):
                index = int(round(_bar_position(t, meter) / meter.step))
                if index not in part["rhythm"] and abs(t - span.start) > 1e-9:
                    continue
                up = 12 if abs(t - span.start) > 1e-9 and rng.random() < part["octaves"] and root + 12 <= hi else 0
                following = [u for u in part["rhythm"] if u > index]
                gap = ((following[0] if following else meter.beats * meter.division) - index) * meter.step
                add(root + up, t, min(gap, span.end - t) * part["legato"], 4 if index == 0 else 0)
        else:  # arpeggio: root, third, fifth, octave, fifth, third... on the eighth grid
            chord_pitches = sorted({_place(pc, root) for pc in chord.pitch_classes} | {root + 12})
            chord_pitches = [p for p in chord_pitches if p <= hi]
            cycle = chord_pitches + chord_pitches[-2:0:-1]
            for k, t in enumerate(_grid([span], meter.step)):
                add(cycle[k % len(cycle)], t, meter.step * part["legato"])
    return out


# ---------------------------------------------------------------- guitar

GUITAR_TEXTURES = ("strum", "fingerpick", "power", "riff")
# Strum patterns per bar on the eighth grid (D down, U up, . rest), by meter;
# "funk" patterns on the sixteenth grid in 4/4 with muted strokes (x).
STRUMS = {
    "4/4": ("D.DU.UDU", "D.D.D.D.", "D.DUDUDU", "D...D.DU", "DUDUDUDU", "D..U.UD."),
    "3/4": ("D.DUDU", "D.D.D.", "D..UDU"),
    "6/8": ("D..D.U", "D.UD.U", "D..D.."),
    "12/8": ("D..D.UD..D.U", "D.UD.UD.UD.U"),
}
FUNK_STRUMS = ("DxUxDxUxDxUxDxUx", "D.xUxUD.xUxUDxUx", "x.Dx.UxDx.UxD.Ux")
# Finger-picking: which string of the shape (0 = the bass) plays each eighth.
PICKS = {
    "4/4": ((0, 3, 2, 4, 1, 3, 2, 4), (0, 4, 1, 3, 0, 4, 1, 3), (0, 2, 3, 4, 5, 4, 3, 2)),
    "3/4": ((0, 2, 3, 4, 3, 2), (0, 3, 4, 5, 4, 3)),
    "6/8": ((0, 2, 3, 4, 3, 2), (0, 3, 4, 5, 4, 3)),
    "12/8": ((0, 2, 3, 4, 3, 2, 1, 3, 4, 5, 4, 3),),
}


def guitar_fingering(chord: Chord, position: int) -> list[tuple[int, int]]:
    """(string, fret) of a chord shape a guitarist can play at a hand
    ``position`` (the fret of the index finger, reaching four frets up): the
    chord's bass on the lowest of the three low strings that has it in reach,
    then on each higher string the lowest fret in reach that gives a chord
    tone above the string below (open strings allowed in the first
    positions); a string with none is not played. Low string first."""
    pcs = set(chord.pitch_classes)
    fingering: list[tuple[int, int]] = []
    for s, open_pitch in enumerate(GUITAR_STRINGS):
        frets = ([0] if position <= 2 else []) + [f for f in range(max(1, position), position + 5)]
        if not fingering:
            bass = [f for f in frets if (open_pitch + f) % 12 == chord.bass]
            if bass and s <= 2:
                fingering.append((s, bass[0]))
            continue
        below = GUITAR_STRINGS[fingering[-1][0]] + fingering[-1][1]
        tones = [f for f in frets if (open_pitch + f) % 12 in pcs and open_pitch + f > below]
        if tones:
            fingering.append((s, tones[0]))
    if len(fingering) < 3 and position < 12:  # no bass in reach here: the next position up
        return guitar_fingering(chord, position + 1)
    return fingering


def guitar_shape(chord: Chord, position: int) -> list[int]:
    """The pitches of ``guitar_fingering``, low to high."""
    return [GUITAR_STRINGS[s] + f for s, f in guitar_fingering(chord, position)]


def draw_guitar(rng, ctx: Context) -> dict:
    meter = ctx.meter
    texture = str(rng.choice(GUITAR_TEXTURES, p=[0.42, 0.25, 0.18, 0.15]))
    fast_sixteenths = ctx.seconds_per_quarter / 4 >= 0.11
    funk = meter.name == "4/4" and fast_sixteenths and rng.random() < 0.25
    patterns = FUNK_STRUMS if funk else STRUMS[meter.name]
    picks = PICKS[meter.name]
    return {
        "texture": texture,
        "position": int(rng.choice([0, 0, 1, 2, 3, 5, 7])),
        # Strings of the shape played: all, or only the top three or four (a
        # lighter voicing that leaves the low register to bass and piano).
        "top_strings": int(rng.choice([0, 0, 3, 4])),
        "strum": str(patterns[int(rng.integers(len(patterns)))]),
        "pick": tuple(picks[int(rng.integers(len(picks)))]),
        "stagger_ms": float(rng.uniform(*STRUM_STAGGER_MS)),
        "ring": float(rng.uniform(0.5, 1.0)),  # how much of the gap to the next stroke a strum rings
        "chug": bool(rng.random() < 0.6),  # power chords: palm-muted eighths, else held
        "octave": bool(rng.random() < 0.5),  # power chords with the octave on top
        "riff_low": int(rng.integers(52, 67)),
        "level": float(rng.uniform(65, 100)),
    }


def _strum(shape: list[int], t: float, direction: str, stagger_s: float, dur: float, velocity: float,
           ctx: Context, rng) -> list[Event]:
    """One stroke across the strings: down from the lowest string, up from the
    highest (an upstroke catches only the top three or four), each string
    ``stagger_s`` after the one before, so the chord fans out as a pick or a
    thumb crosses the strings."""
    strings = list(enumerate(shape))
    if direction in "Uu":
        strings = strings[-int(rng.integers(3, 5)):][::-1]
    gesture = ctx.next_gesture()
    out = []
    for k, (string, pitch) in enumerate(strings):
        # Later strings of a down stroke ring a little softer; an up stroke is lighter.
        level = velocity - (10 if direction in "Uu" else 0) - 1.5 * k
        out.append(Event(pitch, t, dur, level, channel=string, shift=k * stagger_s, gesture=gesture))
    return out


def strum_stagger(part: dict, strings: int, step_seconds: float, rng) -> float:
    """Seconds between two strings of one stroke: the part's stagger with a
    little variation, within STRUM_STAGGER_MS, and short enough that the whole
    stroke takes at most 40 % of the time to the next stroke (a player sweeps
    faster at fast tempos)."""
    low, high = STRUM_STAGGER_MS
    ms = float(np.clip(part["stagger_ms"] * rng.uniform(0.85, 1.15), low, high))
    ms = max(low, min(ms, 400.0 * step_seconds / max(1, strings - 1)))
    return ms / 1000.0


def guitar_events(part: dict, spans: list[Span], ctx: Context, rng) -> list[Event]:
    meter, texture = ctx.meter, part["texture"]
    out: list[Event] = []
    level = part["level"]

    def shape_of(chord: Chord) -> list[int]:
        shape = guitar_shape(chord, part["position"])
        return shape[-part["top_strings"]:] if part.get("top_strings") else shape
    if texture == "strum":
        pattern = part["strum"]
        step = meter.bar / len(pattern)
        hits = [(t, pattern[int(round(_bar_position(t, meter) / step)) % len(pattern)]) for t in _grid(spans, step)]
        hits = [(t, c) for t, c in hits if c != "."]
        for i, (t, stroke) in enumerate(hits):
            span = _span_at(spans, t)
            shape = shape_of(span.chord)
            # A stroke rings until the next one (where the hand may change shape).
            gap = (hits[i + 1][0] if i + 1 < len(hits) else spans[-1].end) - t
            if stroke == "x":  # a muted stroke: a percussive click of the strings
                out += _strum(shape, t, "D", strum_stagger(part, len(shape), step * ctx.seconds_per_quarter, rng),
                              min(gap, 0.06 / ctx.seconds_per_quarter), level - 25, ctx, rng)
                continue
            stagger = strum_stagger(part, len(shape), step * ctx.seconds_per_quarter, rng)
            out += _strum(shape, t, stroke, stagger, gap * part["ring"], level + _accent(t, meter), ctx, rng)
    elif texture == "fingerpick":
        pick = part["pick"]
        step = meter.bar / len(pick)
        for t in _grid(spans, step):
            span = _span_at(spans, t)
            shape = shape_of(span.chord)
            string = min(pick[int(round(_bar_position(t, meter) / step)) % len(pick)], len(shape) - 1)
            # Picked notes ring on until the chord changes (a held shape).
            out.append(Event(shape[string], t, (span.end - t) * 0.98, level - 8 + _accent(t, meter) + rng.normal(0, 5),
                             channel=string))
    elif texture == "power":
        for span in spans:
            root = _place(span.chord.root, 40)
            notes = [root, root + 7] + ([root + 12] if part["octave"] else [])
            if part["chug"]:
                for t in _grid([span], meter.step):
                    dur = min(meter.step * 0.45, 0.12 / ctx.seconds_per_quarter)  # palm muted: short
                    for k, p in enumerate(notes):
                        out.append(Event(p, t, dur, level - 5 + 1.5 * _accent(t, meter) + rng.normal(0, 4),
                                         channel=k))
            else:
                for k, p in enumerate(notes):
                    out.append(Event(p, span.start, (span.end - span.start) * 0.97, level + 5, channel=k))
    else:  # riff: a single-note line
        low = part["riff_low"]
        out += melody_events(spans, ctx, low, min(low + 19, PITCH_RANGE["guitar"][1]), level, rng)
    return out


# ---------------------------------------------------------------- melody

# Rhythms of one bar on the eighth grid: (onset, length) in eighths.
MELODY_RHYTHMS = {
    "4/4": (((0, 2), (2, 1), (3, 1), (4, 3), (7, 1)), ((0, 1), (1, 1), (2, 2), (4, 1), (5, 1), (6, 2)),
            ((0, 3), (3, 3), (6, 2)), ((1, 1), (2, 1), (3, 2), (5, 3)), ((0, 4), (4, 2), (6, 2))),
    "3/4": (((0, 2), (2, 2), (4, 2)), ((0, 3), (3, 1), (4, 2)), ((0, 1), (1, 1), (2, 2), (4, 2))),
    "6/8": (((0, 2), (2, 1), (3, 3)), ((0, 1), (1, 1), (2, 1), (3, 2), (5, 1)), ((0, 3), (3, 3))),
    "12/8": (((0, 2), (2, 1), (3, 3), (6, 2), (8, 1), (9, 3)), ((0, 3), (3, 3), (6, 1), (7, 1), (8, 1), (9, 3))),
}


def melody_events(spans: list[Span], ctx: Context, low: int, high: int, level: float, rng,
                  channel: int = 0) -> list[Event]:
    """A line over the chart: a one-bar rhythm motif repeated (sometimes
    varied), chord tones on the beats, steps of the scale between them."""
    meter = ctx.meter
    rhythms = MELODY_RHYTHMS[meter.name]
    motif = rhythms[int(rng.integers(len(rhythms)))]
    out: list[Event] = []
    pitch = (low + high) / 2
    bar_start = spans[0].start - _bar_position(spans[0].start, meter)
    while bar_start < spans[-1].end - 1e-9:
        if rng.random() < 0.25:
            motif = rhythms[int(rng.integers(len(rhythms)))]
        for onset, length in motif:
            t = bar_start + onset * meter.step
            if t < spans[0].start - 1e-9 or t >= spans[-1].end - 1e-9:
                continue
            chord = _span_at(spans, t).chord
            on_beat = abs((onset * meter.step) / meter.beat - round(onset * meter.step / meter.beat)) < 1e-6
            if on_beat:
                pitch = _nearest(chord.pitch_classes, pitch + rng.choice([-3, 0, 3]), low, high)
            else:
                pitch = _nearest(ctx.scale, pitch + rng.choice([-2, -1, 1, 2]), low, high)
            dur = min(length * meter.step, spans[-1].end - t) * 0.92
            out.append(Event(int(pitch), t, dur, level + _accent(t, meter) + rng.normal(0, 5), channel=channel))
        bar_start += meter.bar
    return out


# ---------------------------------------------------------------- piano

RIGHT_HANDS = ("block", "pad", "comp", "broken", "melody")
LEFT_HANDS = ("octaves", "root_hold", "broken", "block", "rest")
# Comping rhythms (onsets in eighths of a 4/4 bar): the Charleston, anticipations, off-beats.
COMPS = ((0, 3), (3, 6), (1, 3, 6), (0, 3, 5), (2, 5, 7), (0, 4))


def close_voicing(chord: Chord, center: float, notes: int, previous: list[int] | None) -> list[int]:
    """``notes`` chord tones in close position near ``center``: of all
    inversions, the one that moves least from ``previous`` (voice leading),
    or sits nearest ``center`` when there is none."""
    pcs = list(chord.pitch_classes)
    if chord.root in pcs:  # start from the root, so a doubled tone is the root
        pcs = pcs[pcs.index(chord.root):] + pcs[:pcs.index(chord.root)]
    tones = (pcs * 3)[:max(notes, 1)]
    candidates = []
    for rotation in range(len(pcs)):
        order = tones[rotation:] + tones[:rotation]
        for base in range(int(center) - 14, int(center) + 2):
            voicing, p = [], base - 1
            for pc in order:
                p = p + 1 + (pc - p - 1) % 12
                voicing.append(p)
            candidates.append(voicing)

    def cost(v):
        if previous:
            return sum(abs(a - b) for a, b in zip(sorted(v), sorted(previous))) + 0.1 * abs(np.mean(v) - center)
        return abs(np.mean(v) - center)
    return min(candidates, key=lambda v: (cost(v), v))


def draw_piano(rng, ctx: Context) -> dict:
    right = str(rng.choice(RIGHT_HANDS, p=[0.22, 0.24, 0.18, 0.18, 0.18]))
    left = str(rng.choice(LEFT_HANDS, p=[0.22, 0.22, 0.18, 0.13, 0.25]))
    if right == "broken" and left == "broken":
        left = "root_hold"
    beats = ctx.meter.beats
    return {
        "right": right,
        "left": left,
        "center": float(rng.uniform(58, 76)),  # the right hand's register: crosses the guitar's
        "notes": int(rng.choice([3, 3, 3, 4, 4, 5])),
        "left_low": int(rng.integers(31, 43)),
        "block_every": float(rng.choice([1.0, 2.0, float(beats)]) if beats > 2 else 1.0),  # beats between chords
        "comp": tuple(COMPS[int(rng.integers(len(COMPS)))]),
        "alberti": bool(rng.random() < 0.5),  # low-high-mid-high, else rising arpeggio
        "level": float(rng.uniform(55, 95)),
        "legato": float(rng.uniform(0.6, 0.98)),
    }


def _broken(voicing: list[int], span: Span, ctx: Context, alberti: bool, level: float, rng,
            channel: int) -> list[Event]:
    """A broken chord on the eighth grid: Alberti (low, high, middle, high) or a rising arpeggio."""
    v = sorted(voicing)
    order = [v[0], v[-1], v[len(v) // 2], v[-1]] if alberti and len(v) >= 3 else v + v[-2:0:-1]
    step = ctx.meter.step
    out = []
    for k, t in enumerate(_grid([span], step)):
        out.append(Event(order[k % len(order)], t, step * 0.95, level + 0.5 * _accent(t, ctx.meter) + rng.normal(0, 4),
                         channel=channel))
    return out


def piano_events(part: dict, spans: list[Span], ctx: Context, rng) -> list[Event]:
    meter = ctx.meter
    level, legato = part["level"], part["legato"]
    out: list[Event] = []
    previous = None
    lo, hi = PITCH_RANGE["piano"]
    # The right hand (channel 0).
    if part["right"] == "melody":
        out += melody_events(spans, ctx, int(part["center"]), int(part["center"]) + 17, level + 8, rng)
    for span in spans:
        chord = span.chord
        length = span.end - span.start
        voicing = close_voicing(chord, part["center"], part["notes"], previous)
        previous = voicing
        right = part["right"]
        if right == "pad":  # held for the whole chord: long notes
            out += [Event(p, span.start, length * 0.99, level - 5 + rng.normal(0, 3)) for p in voicing]
        elif right == "block":
            every = part["block_every"] * meter.beat
            for t in _grid([span], every):
                out += [Event(p, t, every * legato, level + _accent(t, meter) + rng.normal(0, 4)) for p in voicing]
        elif right == "comp":
            step = meter.step
            hits = [t for t in _grid([span], step)
                    if int(round(_bar_position(t, meter) / step)) % 8 in part["comp"]] or [span.start]
            for i, t in enumerate(hits):
                gap = (hits[i + 1] if i + 1 < len(hits) else span.end) - t
                out += [Event(p, t, min(gap, 2 * step) * legato, level + 6 + rng.normal(0, 4)) for p in voicing]
        elif right == "broken":
            out += _broken(voicing, span, ctx, part["alberti"], level, rng, channel=0)
        # The left hand (channel 1).
        left, low = part["left"], part["left_low"]
        root = _place(chord.root, low)
        if left == "octaves":  # the bass in octaves on the strong beats
            every = meter.beat * (2 if meter.beats == 4 else 1)
            for t in _grid([span], every):
                for p in (root, root + 12):
                    out.append(Event(p, t, every * legato, level + _accent(t, meter) + rng.normal(0, 4), channel=1))
        elif left == "root_hold":
            for p in (root, _place(chord.fifth if chord.fifth is not None else chord.root, root + 1)):
                out.append(Event(p, span.start, length * 0.99, level - 3 + rng.normal(0, 3), channel=1))
        elif left == "broken":
            lh = close_voicing(chord, low + 10, 3, None)
            out += _broken([root] + lh[1:], span, ctx, part["alberti"], level - 6, rng, channel=1)
        elif left == "block":
            lh = close_voicing(chord, low + 12, 3, None)
            every = meter.bar if length >= meter.bar else length
            for t in _grid([span], every):
                out += [Event(p, t, every * legato, level - 4 + rng.normal(0, 3), channel=1) for p in lh]
    return [e for e in out if lo <= e.pitch <= hi]
