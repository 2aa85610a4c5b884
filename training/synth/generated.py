"""Songs the project composes itself: a key, a chord chart in sections
(verse/chorus-like letters repeated with variation), a meter and tempo, and
per stem a part drawn from the textures of popular accompaniment
(textures.py), so the dataset has what chorales lack: bass lines, strums,
arpeggios, grooves, pads, 3-6 voices and crossing registers.

``arrange_generated(rng, max_seconds)`` returns what ``arrangement.arrange``
returns, ``(notes per stem, info)``, with the same info keys plus ``style``
(what was drawn) and ``chords`` (the chart in seconds). Everything comes from
the numpy Generator, so a track's seed gives the same song every time.
"""

from __future__ import annotations

import math

import numpy as np

from .arrangement import DRUM_KITS, MIN_SECONDS, PROGRAMS, STEMS, arrange
from .corpus import Bar, MidiNote, Piece, SPLIT_PATTERN, Timeline, TrackPlan, first_usable_piece
from .drums import _phrase_ends, drum_notes
from .grooves import genre_drum_notes, genres_for
from .harmony import MODE_WEIGHTS, MODES, draw_progression, parse_roman
from .textures import (METERS, Context, Event, Meter, Span, bass_events, draw_bass, draw_guitar, draw_piano,
                       guitar_events, piano_events)


NOTE_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
METER_WEIGHTS = {"4/4": 0.7, "3/4": 0.1, "6/8": 0.1, "12/8": 0.1}
# Beats per minute of the meter's beat (a dotted quarter in 6/8 and 12/8).
TEMPO_RANGES = {"4/4": (70.0, 150.0), "3/4": (80.0, 170.0), "6/8": (45.0, 95.0), "12/8": (45.0, 80.0)}
# Forms as section letters; "I" an intro with some stems tacet, the last bar
# an ending chord. Cut at the track's length, so long forms end early.
FORMS = (("A", "A", "B", "A"), ("A", "B", "A", "B"), ("I", "A", "B", "A", "B"), ("A", "A", "B", "B", "A"),
         ("A", "B", "C", "A"), ("I", "A", "A", "B", "A", "C"), ("A", "B", "A", "C", "B"))
TACET_P = 0.15  # a section where guitar or piano sits out (arrangements thin and thicken)
REDRAW_ON_REPEAT = 0.3  # chance a stem plays a new part when its section comes back
HUMANISE_SECONDS = 0.004  # onset jitter (standard deviation), clipped at 2.5 sigma
DRUMS_GENRE_P = 0.45  # a genre groove (rock, funk, shuffle, half-time, bossa), else the corpus drummer


def arrange_generated(rng: np.random.Generator, max_seconds: float) -> tuple[dict, dict]:
    """Per-stem MIDI notes and programs for one generated song, plus what was chosen."""
    if max_seconds <= 0:
        raise ValueError(f"max_seconds must be positive, got {max_seconds}")
    mode = str(rng.choice(list(MODE_WEIGHTS), p=list(MODE_WEIGHTS.values())))
    tonic = int(rng.integers(12))
    meter = METERS[str(rng.choice(list(METER_WEIGHTS), p=list(METER_WEIGHTS.values())))]
    beat_bpm = float(rng.uniform(*TEMPO_RANGES[meter.name]))
    quarter_bpm = beat_bpm * meter.beat
    spq = 60.0 / quarter_bpm
    ctx = Context(meter, spq, tuple((tonic + i) % 12 for i in MODES[mode]), tonic)

    # Length: the form's bars up to a drawn length of 12-60 s, whole bars,
    # never past max_seconds; the last bar is the ending chord.
    bar_seconds = meter.bar * spq
    shortest = min(MIN_SECONDS, max_seconds)
    target = float(rng.uniform(shortest, max(shortest, min(60.0, max_seconds))))
    total_bars = max(1, min(math.ceil(target / bar_seconds), math.floor(max_seconds / bar_seconds)))

    form = FORMS[int(rng.integers(len(FORMS)))]
    letters = {letter: _draw_section(letter, mode, tonic, meter, quarter_bpm, ctx, rng) for letter in sorted(set(form))}
    sections, spans_by_section, bar = [], [], 0
    for k in range(1000):
        if bar >= total_bars - 1:
            break
        letter = form[k % len(form)]
        if letter == "I" and k >= len(form):
            continue  # an intro only opens the song
        template = letters[letter]
        bars = min(template["bars"], total_bars - 1 - bar)
        parts = {}
        for stem in ("bass", "guitar", "piano"):
            previous = next((s["parts"][stem] for s in reversed(sections) if s["letter"] == letter), None)
            if previous is None or rng.random() < REDRAW_ON_REPEAT:
                parts[stem] = template["parts"][stem] if previous is None else _draw_part(stem, ctx, rng)
            else:
                parts[stem] = dict(previous, level=previous["level"] + float(rng.uniform(-6, 6)))
        tacet = template["tacet"]
        if letter != "I" and rng.random() < TACET_P:  # a verse without the guitar, say
            tacet = (str(rng.choice(["guitar", "piano"])),)
        sections.append({"letter": letter, "start_bar": bar, "bars": bars, "parts": parts, "tacet": tacet})
        spans_by_section.append(_spans(template["chords"], bar * meter.bar, bars * meter.bar))
        bar += bars
    # The ending: the tonic held for a bar by everyone.
    tonic_chord = parse_roman("I" if mode in ("major", "mixolydian") else "i", tonic)
    ending_parts = {"bass": {"texture": "roots", "low": 28, "pulse": "span", "legato": 0.97, "level": 95.0},
                    "guitar": {**_draw_part("guitar", ctx, rng), "texture": "strum", "strum": "D"},
                    "piano": {**_draw_part("piano", ctx, rng), "right": "pad", "left": "root_hold"}}
    sections.append({"letter": "E", "start_bar": bar, "bars": 1, "parts": ending_parts, "tacet": ()})
    spans_by_section.append([Span(bar * meter.bar, (bar + 1) * meter.bar, tonic_chord)])
    total_bars = bar + 1

    events: dict[str, list[Event]] = {stem: [] for stem in ("bass", "guitar", "piano")}
    builders = {"bass": bass_events, "guitar": guitar_events, "piano": piano_events}
    for section, spans in zip(sections, spans_by_section):
        for stem, build in builders.items():
            if stem not in section["tacet"]:
                events[stem] += build(section["parts"][stem], spans, ctx, rng)
    # The drummer's groove is drawn before the notes are timed: a shuffle in
    # 4/4 swings the band's eighths too.
    genres = genres_for(meter.name, spq)
    genre = str(rng.choice(genres)) if genres and rng.random() < DRUMS_GENRE_P else "corpus"
    swing = genre == "shuffle" and meter.division == 2
    notes = {stem: _to_midi(events[stem], spq, rng, max_seconds, swing) for stem in events}

    # Drums: a Timeline over the generated bars (a Piece with bars and no
    # voices), fills into each section's last bar, silent in an intro.
    bars_list = [Bar(i * meter.bar, meter.bar, meter.bar, meter.beat, meter.beats, meter.division, meter.name)
                 for i in range(total_bars)]
    section_ends = [(s["start_bar"] + s["bars"]) * meter.bar for s in sections[:-1]]
    piece = Piece(id="generated", voices=[], names=[], bars=bars_list, phrase_ends=section_ends,
                  end=total_bars * meter.bar)
    timeline = Timeline(piece, 0.0, 1, quarter_bpm)
    if genre == "corpus":
        drums = drum_notes(timeline, rng, max_seconds, _phrase_ends(piece, timeline))
    else:
        drums = genre_drum_notes(genre, timeline, rng, max_seconds, _phrase_ends(piece, timeline))
    intro_end = sum(s["bars"] for s in sections if s["letter"] == "I") * meter.bar * spq
    notes["drums"] = [n for n in drums if n.on >= intro_end - 0.05]
    for n in notes["drums"]:  # a cymbal held past the end of the track is cut there
        n.off = min(n.off, max_seconds)

    programs = {stem: int(rng.choice(PROGRAMS[stem])) for stem in PROGRAMS}
    programs["drums"] = int(rng.choice(DRUM_KITS))
    end = max(n.off for stem_notes in notes.values() for n in stem_notes)
    chords = [[round(sp.start * spq, 4), round(sp.end * spq, 4), sp.chord.symbol, list(sp.chord.pitch_classes)]
              for spans in spans_by_section for sp in spans if sp.start * spq < max_seconds]
    style = {
        "key": f"{NOTE_NAMES[tonic]} {mode}",
        "tonic": tonic,
        "mode": mode,
        "form": [s["letter"] for s in sections],
        "drums": genre,
        "sections": [{"letter": s["letter"], "start_bar": s["start_bar"], "bars": s["bars"],
                      "progression": list(letters[s["letter"]]["symbols"]) if s["letter"] in letters else ["I"],
                      "progression_source": letters[s["letter"]]["source"] if s["letter"] in letters else "ending",
                      "tacet": list(s["tacet"]),
                      "bass": s["parts"]["bass"]["texture"], "guitar": s["parts"]["guitar"]["texture"],
                      "piano": f"{s['parts']['piano']['right']}+{s['parts']['piano']['left']}"}
                     for s in sections],
    }
    info = {
        "tempo_bpm": round(beat_bpm, 3),
        "quarter_bpm": round(quarter_bpm, 3),
        "time_signature": meter.name,
        "transpose": 0,  # composed in its key; nothing to transpose
        "bass_octave_down": False,
        "programs": {stem: programs[stem] for stem in STEMS},
        # What each stem plays (the textures of its sections, the ending's chord aside).
        "voices": {stem: sorted({s[stem] for s in style["sections"][:-1] if stem not in s["tacet"]})
                   or ["ending chord"] for stem in ("bass", "guitar", "piano")},
        "start_beat": 0.0,
        "loops": 1,
        "music_seconds": round(end, 6),
        "style": style,
        "chords": chords,
    }
    return {stem: notes[stem] for stem in STEMS}, info


def _draw_part(stem: str, ctx: Context, rng) -> dict:
    return {"bass": draw_bass, "guitar": draw_guitar, "piano": draw_piano}[stem](rng, ctx)


def _draw_section(letter: str, mode: str, tonic: int, meter: Meter, quarter_bpm: float, ctx: Context, rng) -> dict:
    """One section's chord chart (Roman numerals, bars per chord) and parts."""
    symbols, source = draw_progression(mode, rng)
    if source == "blues":
        per_chord = meter.bar  # the 12-bar blues: a chord a bar
    else:
        # Harmonic rhythm: two chords a bar when bars are long and slow, a chord
        # every two bars when they fly by; else one a bar.
        bar_seconds = meter.bar * 60.0 / quarter_bpm
        options = [meter.bar] + ([meter.bar / 2] if bar_seconds > 2.2 and meter.beats % 2 == 0 else []) \
            + ([2 * meter.bar] if bar_seconds < 2.0 else [])
        per_chord = float(options[int(rng.integers(len(options)))])
    chords = [(parse_roman(s, tonic), per_chord) for s in symbols]
    length = sum(d for _, d in chords)
    repeats = max(1, math.ceil(4 * meter.bar / length))  # sections of 4 bars or more
    if rng.random() < 0.4 and length * repeats < 8 * meter.bar:
        repeats *= 2
    # An intro is a shorter statement with only one or two stems playing.
    tacet: tuple[str, ...] = ()
    if letter == "I":
        repeats = 1
        playing = {"bass", "guitar", "piano"} - {str(rng.choice(["bass", "guitar", "piano"]))}
        if rng.random() < 0.5:
            playing -= {sorted(playing)[int(rng.integers(2))]}
        tacet = tuple(sorted({"bass", "guitar", "piano"} - playing))
    bars = max(1, round(length * repeats / meter.bar))
    parts = {stem: _draw_part(stem, ctx, rng) for stem in ("bass", "guitar", "piano")}
    return {"symbols": symbols, "source": source, "chords": chords, "bars": bars, "parts": parts, "tacet": tacet}


def _spans(chords: list, start: float, length: float) -> list[Span]:
    """The section's chords laid out from ``start``, cycled to fill ``length`` quarter notes."""
    spans, t, k = [], start, 0
    while t < start + length - 1e-9:
        chord, duration = chords[k % len(chords)]
        spans.append(Span(t, min(t + duration, start + length), chord))
        t += duration
        k += 1
    return spans


def swung(t: float) -> float:
    """Swing eighths: the off-beat eighth of each quarter moves to the last
    triplet (0.5 -> 2/3), times between stretched or squeezed linearly."""
    beat = math.floor(t + 1e-9)
    pos = t - beat
    return beat + (pos * 4 / 3 if pos <= 0.5 else 2 / 3 + (pos - 0.5) * 2 / 3)


def _to_midi(events: list[Event], seconds_per_quarter: float, rng, max_seconds: float,
             swing: bool = False) -> list[MidiNote]:
    """Score events to timed notes: a few ms of jitter per onset (one per strum,
    so its stagger stays as drawn), swung eighths if ``swing``, nothing past
    ``max_seconds``, and each note ended before the next onset of its pitch on
    its channel (a note-off would silence the new note too)."""
    timing = swung if swing else (lambda t: t)
    jitter: dict[int, float] = {}
    notes = []
    for e in sorted(events, key=lambda e: (e.start, e.shift, e.channel, e.pitch)):
        if e.gesture >= 0:
            if e.gesture not in jitter:
                jitter[e.gesture] = float(np.clip(rng.normal(0, HUMANISE_SECONDS), -0.01, 0.01))
            shift = jitter[e.gesture]
        else:
            shift = float(np.clip(rng.normal(0, HUMANISE_SECONDS), -0.01, 0.01))
        start = timing(e.start)
        base = max(0.0, start * seconds_per_quarter + shift)
        on = base + e.shift
        off = min(max(base + (timing(e.start + e.dur) - start) * seconds_per_quarter, on + 0.03), max_seconds)
        if on >= max_seconds - 0.03:
            continue
        notes.append(MidiNote(e.channel, int(e.pitch), on, off, int(np.clip(round(e.velocity), 1, 127))))
    next_on: dict[tuple[int, int], float] = {}
    for note in sorted(notes, key=lambda n: -n.on):
        key = (note.channel, note.pitch)
        if key in next_on:
            note.off = max(note.on + 0.001, min(note.off, next_on[key] - 0.002))
        next_on[key] = note.on
    return sorted(notes, key=lambda n: (n.on, n.channel, n.pitch))


# ---------------------------------------------------------------- tracks from either source

SOURCES = ("corpus", "generated")


def generated_plan(index: int) -> TrackPlan:
    """The plan of a generated track: its split from the track index (as for
    corpus tracks), its 'piece' a name that says it was composed."""
    split = SPLIT_PATTERN[index % len(SPLIT_PATTERN)]
    return TrackPlan(index, f"Track{index + 1:05d}", split, f"generated/{index + 1:05d}")


def arrange_track(plan: TrackPlan | int, rng: np.random.Generator, max_seconds: float, source: str,
                  cache_dir=None) -> tuple[dict, dict]:
    """One track's arrangement from either source: 'corpus' (the planned
    piece, or a fallback of its split, arranged by arrangement.arrange) or
    'generated' (a composed song). ``rng`` should be the track's own stream,
    e.g. ``default_rng([seed, index])``, so no two tracks, and so no two
    splits, share a song. ``info['source']`` says which."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    if source == "generated":
        notes, info = arrange_generated(rng, max_seconds)
        return notes, {**info, "source": source}
    if isinstance(plan, int):
        raise ValueError("a corpus track needs its TrackPlan (from corpus.plan_tracks), not only an index")
    piece = first_usable_piece(plan, cache_dir)
    notes, info = arrange(piece, rng, max_seconds)
    return notes, {**info, "source": source, "piece": piece.id}


def main(argv=None) -> int:
    """Draw the piano rolls of a few generated songs (docs/images/generated-arrangements.png)."""
    import argparse

    from training.figures import plot_piano_rolls

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--out", required=True, help="PNG to write (atomically)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed; song i draws from default_rng([seed, i])")
    parser.add_argument("--songs", type=int, nargs="+", default=[19, 6], help="track indices to draw")
    parser.add_argument("--seconds", type=float, default=20.0, help="how much of each song to show")
    args = parser.parse_args(argv)
    rolls = []
    for index in args.songs:
        notes, info = arrange_generated(np.random.default_rng([args.seed, index]), 60.0)
        style = info["style"]
        textures = "; ".join(f"{stem}: {', '.join(info['voices'][stem])}" for stem in ("bass", "guitar", "piano"))
        rolls.append((f"song {index}: {style['key']}, {info['time_signature']} at {info['tempo_bpm']:.0f} BPM, "
                      f"form {'-'.join(style['form'])}, drums {style['drums']}\n{textures}", notes))
    print(plot_piano_rolls(rolls, args.out, args.seconds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
