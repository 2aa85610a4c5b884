"""A Slakh2100-like multi-stem dataset that the project renders itself.

Slakh2100 cannot be downloaded here, so we make a small stand-in the same way
Slakh was made: MIDI rendered with sampled instruments, one file per stem.

* Music: 4-part pieces from the music21 corpus (Bach chorales, Palestrina
  mass movements, Haydn/Mozart/Beethoven/Schumann string quartet movements).
  The lowest voice becomes the bass stem; the three upper voices are split at
  random between guitar and piano.
* Drums: generated per bar from each piece's own meter and the track's tempo
  (kick on strong beats, snare on backbeats, hi-hat/ride on subdivisions,
  fills at phrase ends, crashes after them).
* Rendering: the ``fluidsynth`` command line with a General MIDI SoundFont,
  reverb and chorus off so the stems stay dry and sum to the mix.

Output (the paper's converted layout, read by ``training.data``)::

    OUT/dataset.json                      summary (also returned)
    OUT/{train,valid,test}/TrackNNNNN/    bass.wav drums.wav guitar.wav piano.wav
                                          mix.wav metadata.json midi/<stem>.mid
    OUT/.cache/pieces/*.json              note lists parsed from the corpus

All WAVs are mono float32 at ``sample_rate``; ``mix`` is exactly
``((bass + drums) + guitar) + piano`` computed in float32 from the stems as
written. Splits are by piece, so no piece is heard in two splits. The same
seed and track count give byte-identical files, whatever ``jobs`` is.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import struct
import subprocess
import tempfile
import warnings
from bisect import bisect_right
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import soundfile as sf

from engine.atomic import write_atomic

__all__ = ["GENERATOR_VERSION", "STEMS", "SynthError", "find_soundfont", "render_dataset"]

# Bump when a change alters the audio, so a resumed run never mixes versions.
GENERATOR_VERSION = "1"
STEMS = ("bass", "drums", "guitar", "piano")
SPLITS = ("train", "valid", "test")
# Splits of tracks 1-10, 11-20, ...: 80/10/10, and all three from 3 tracks on.
SPLIT_PATTERN = ("train", "valid", "test") + ("train",) * 7

# Searched in order when no soundfont is given. TimGM6mb first: it is what CI
# installs, so datasets made here and there sound the same.
SOUNDFONT_CANDIDATES = (
    "/usr/share/sounds/sf2/TimGM6mb.sf2",
    "/usr/share/sounds/sf2/FluidR3_GM.sf2",
    "/usr/share/sounds/sf2/default-GM.sf2",
)
INSTALL_HINT = "apt-get install fluidsynth timgm6mb-soundfont"

# Corpus folders whose 4-part pieces we use. Excluded: 'demos' and
# 'theoryExercises' (exercises, not music), 'trecento' (few, odd notation).
COMPOSERS = ("bach", "palestrina", "haydn", "mozart", "beethoven", "schumann_robert")
# Pieces with more notes are whole quartets in one file: slow to parse (10 s+)
# for the minute we use.
MAX_NOTE_COUNT = 4000

# The paper drops tracks under 12 s (a training crop is 262144 samples = 11.9 s
# at 22050 Hz), so shorter pieces are looped up to this length.
MIN_SECONDS = 12.5
RELEASE_SECONDS = 1.5  # kept after the last note-off for the decay
FADE_SECONDS = 0.02  # at the very end, so a cut-off note does not click
MIX_PEAK = 0.9
STEM_RMS_DB = -20.0  # each stem is brought here before its random gain
FLUIDSYNTH_GAIN = "0.3"  # low enough that dense parts do not clip inside fluidsynth
TEMPO_RANGE = (70.0, 140.0)  # beats per minute of the meter's beat (pulse)
TICKS_PER_BEAT, MIDI_TEMPO = 1000, 500_000  # 2000 ticks per second: 0.5 ms grid

# GM program ranges (0-based) per stem, and the pitch ranges we keep each in.
PROGRAMS = {"bass": range(32, 40), "guitar": range(24, 32), "piano": range(8)}
PITCH_RANGE = {"bass": (28, 67), "guitar": (40, 88), "piano": (21, 108)}
DRUM_KITS = (0, 8, 16, 24, 25, 32, 40)  # Standard, Room, Power, Electronic, 808, Jazz, Brush
DRUM_CHANNEL = 9

# GM percussion keys.
KICK, SIDE_STICK, SNARE, SNARE_2 = 36, 37, 38, 40
CLOSED_HAT, PEDAL_HAT, OPEN_HAT, CRASH, RIDE = 42, 44, 46, 49, 51
TOMS = (50, 48, 47, 45, 43, 41)  # high to low, the order a fill goes down


class SynthError(RuntimeError):
    """A tool or data the synthesiser needs is missing; the message says what to install."""


class UnusablePiece(ValueError):
    """A corpus piece we cannot arrange (its metadata said 4 parts, its notes disagree)."""


# --------------------------------------------------------------------------- tools


def find_soundfont(explicit: str | None = None) -> Path:
    """The SoundFont to render with: ``explicit`` if given, else the first of
    SOUNDFONT_CANDIDATES that exists."""
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise SynthError(
                f"SoundFont '{path}' does not exist. Give an existing .sf2 file, or omit it to use "
                f"a General MIDI SoundFont from Debian ({INSTALL_HINT}; or fluid-soundfont-gm)."
            )
        return path.resolve()
    for candidate in SOUNDFONT_CANDIDATES:
        if Path(candidate).is_file():
            return Path(candidate).resolve()
    raise SynthError(
        "No General MIDI SoundFont found (looked for " + ", ".join(SOUNDFONT_CANDIDATES) + "). "
        f"Install one: {INSTALL_HINT} (or fluid-soundfont-gm), or pass soundfont=PATH."
    )


def _find_fluidsynth() -> str:
    path = shutil.which("fluidsynth")
    if path is None:
        raise SynthError(f"The 'fluidsynth' program is not on PATH. Install it: {INSTALL_HINT}")
    return path


def _music21():
    try:
        import music21
    except ImportError as exc:
        raise SynthError("The music21 package is needed for the source music: pip install music21") from exc
    return music21


# --------------------------------------------------------------------------- pieces


@functools.lru_cache(maxsize=1)
def candidate_pieces() -> tuple[str, ...]:
    """Corpus paths of the 4-part pieces we use, in a stable (sorted) order.

    Read from music21's metadata bundle, so nothing is parsed here. A movement
    shipped both as .krn and .mxl is kept once (.mxl), or the same music could
    land in two splits.
    """
    corpus = _music21().corpus
    by_stem: dict[str, str] = {}
    # search() first: iterating the whole 15000-entry bundle is quadratic (14 s).
    for entry in corpus.search(4, "numberOfParts"):
        md, path = entry.metadata, str(entry.sourcePath)
        if entry.number is not None or path.split("/")[0] not in COMPOSERS:
            continue
        if md.numberOfParts != 4 or not md.noteCount or md.noteCount > MAX_NOTE_COUNT:
            continue
        stem = path.rsplit(".", 1)[0]
        if stem not in by_stem or path.endswith(".mxl"):
            by_stem[stem] = path
    if not by_stem:
        raise SynthError("music21's corpus has no 4-part pieces here; reinstall it: pip install music21")
    return tuple(sorted(by_stem.values()))


@dataclass
class Bar:
    offset: float  # quarter notes from the start of the piece
    length: float  # as written (a pickup bar is shorter than ``full``)
    full: float  # the time signature's bar length
    beat: float  # beat length in quarter notes (1.5 in 6/8)
    beats: int
    division: int  # 2 (simple) or 3 (compound) subdivisions per beat
    meter: str

    @property
    def origin(self) -> float:
        """Where beat 1 is (or would be): before ``offset`` for a pickup bar."""
        return self.offset + self.length - self.full if self.length < self.full else self.offset


@dataclass
class Piece:
    id: str
    voices: list[list[list[float]]]  # per part, lowest voice last: [midi pitch, start, duration]
    names: list[str]
    bars: list[Bar]
    phrase_ends: list[float]  # quarter-note times where a fermata note ends
    end: float


_PIECES: dict[str, Piece] = {}  # per process: several tracks may share a piece


def load_piece(piece_id: str, cache_dir: Path | None = None) -> Piece:
    """The piece's notes, from this process's memory, the JSON cache, or music21."""
    if piece_id in _PIECES:
        return _PIECES[piece_id]
    cache = cache_dir / (piece_id.replace("/", "__") + ".json") if cache_dir else None
    if cache is not None and cache.is_file():
        data = json.loads(cache.read_text())
    else:
        music21 = _music21()
        with warnings.catch_warnings():  # music21 warns about quirks of some scores (overfull bars)
            warnings.simplefilter("ignore")
            try:
                data = _extract(music21.corpus.parse(piece_id))
            except UnusablePiece:
                raise
            except Exception as exc:  # a score music21 cannot read is one piece fewer, not a failed run
                raise UnusablePiece(f"music21 could not read it: {exc!r}") from exc
        if cache is not None:
            write_atomic(cache, json.dumps(data, separators=(",", ":")))
    piece = Piece(
        id=piece_id, voices=data["voices"], names=data["names"],
        bars=[Bar(*b) for b in data["bars"]], phrase_ends=data["phrase_ends"], end=data["end"],
    )
    _PIECES[piece_id] = piece
    return piece


def _extract(score) -> dict:
    """Plain note lists, bars and phrase ends of a parsed score (JSON-able).

    Walks measures by hand and joins tied notes ourselves: ``flatten().stripTies()``
    is several times slower on the long quartet movements.
    """
    from music21 import expressions

    voices, names, phrase_ends = [], [], set()
    for part in score.parts:
        notes: list[list[float]] = []
        tied: dict[int, int] = {}  # pitch -> index of the note a tie continues
        for measure in list(part.getElementsByClass("Measure")) or [part]:
            base = float(measure.offset) if measure is not part else 0.0
            for element in measure.flatten().notes:
                length = float(element.duration.quarterLength)
                if length <= 0:  # grace notes
                    continue
                start = base + float(element.offset)
                if any(isinstance(e, expressions.Fermata) for e in element.expressions):
                    phrase_ends.add(start + length)
                for note in getattr(element, "notes", None) or [element]:
                    pitch, tie = int(note.pitch.midi), note.tie.type if note.tie else None
                    if tie in ("continue", "stop") and pitch in tied:
                        first = notes[tied[pitch]]
                        first[2] = start + length - first[1]
                        if tie == "stop":
                            del tied[pitch]
                        continue
                    notes.append([pitch, start, length])
                    if tie == "start":
                        tied[pitch] = len(notes) - 1
        if notes:
            notes.sort(key=lambda n: (n[1], n[0]))
            voices.append(notes)
            names.append(str(part.partName or f"Part {len(names) + 1}"))
    if len(voices) != 4:
        raise UnusablePiece(f"{len(voices)} of its parts have notes, not 4")
    # Lowest voice last, so index 3 is always the bass.
    order = sorted(range(4), key=lambda i: -float(np.mean([n[0] for n in voices[i]])))
    end = max(n[1] + n[2] for v in voices for n in v)
    return {
        "voices": [voices[i] for i in order],
        "names": [names[i] for i in order],
        "bars": _bars(score.parts[0], end),
        "phrase_ends": sorted(phrase_ends),
        "end": end,
    }


def _bars(part, end: float) -> list[list]:
    """[offset, length, full length, beat, beats, division, meter] per measure
    (4/4 bars over the whole piece when it has no measures)."""
    from music21 import meter

    bars, ts = [], None
    for m in part.getElementsByClass("Measure"):
        ts = m.timeSignature or ts or meter.TimeSignature("4/4")
        beat = float(ts.beatDuration.quarterLength)
        division = 3 if ts.beatDivisionCount == 3 or beat == 1.5 else 2
        bars.append([float(m.offset), float(m.duration.quarterLength), float(ts.barDuration.quarterLength),
                     beat, int(ts.beatCount), division, ts.ratioString])
    bars = [b for b in bars if b[1] > 0]
    return bars or [[4.0 * i, 4.0, 4.0, 1.0, 4, 2, "4/4"] for i in range(math.ceil(end / 4))]


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class TrackPlan:
    index: int  # 0-based over the whole dataset
    name: str  # TrackNNNNN (1-based, like Slakh)
    split: str
    piece: str
    fallbacks: tuple[str, ...] = ()  # same split, used in turn if ``piece`` cannot be used


def split_pieces(pieces: list[str], seed: int) -> dict[str, list[str]]:
    """Shuffle with the seed and cut 80/10/10, at least one piece per split
    when there are three or more."""
    order = list(pieces)
    np.random.default_rng(seed).shuffle(order)
    n = len(order)
    n_small = max(1, round(0.1 * n)) if n >= 3 else 0
    n_train = n - 2 * n_small
    return {"train": order[:n_train], "valid": order[n_train:n_train + n_small],
            "test": order[n_train + n_small:]}


def plan_tracks(tracks: int, seed: int, pieces: tuple[str, ...] | None = None) -> list[TrackPlan]:
    """Which piece and split each track gets.

    Tracks take their splits from SPLIT_PATTERN and each split its pieces in
    shuffled order, repeating one (with other instruments and tempo) only once
    it has used them all; so a piece never changes split, and a track's plan
    depends only on the seed and its number: a dataset can be extended by
    asking for more tracks in the same folder.
    """
    splits = split_pieces(list(candidate_pieces() if pieces is None else pieces), seed)
    used = {split: 0 for split in SPLITS}
    plans = []
    for index in range(tracks):
        split = SPLIT_PATTERN[index % len(SPLIT_PATTERN)]
        pool, k = splits[split], used[split]
        used[split] += 1
        nearby = tuple(pool[(k + j) % len(pool)] for j in range(1, min(4, len(pool))))
        plans.append(TrackPlan(index, f"Track{index + 1:05d}", split, pool[k % len(pool)], nearby))
    return plans


# --------------------------------------------------------------------------- arrangement


@dataclass
class MidiNote:
    channel: int
    pitch: int
    on: float  # seconds
    off: float
    velocity: int


class Timeline:
    """Maps score time (quarter notes, from the piece's start bar, looped) to
    seconds, and knows where the bars are for accents."""

    def __init__(self, piece: Piece, start: float, loops: int, quarter_bpm: float):
        self.start, self.period, self.loops = start, piece.end - start, loops
        self.seconds_per_quarter = 60.0 / quarter_bpm
        bars = [b for b in piece.bars if b.offset + b.length > start + 1e-9]
        self.bars = [Bar(b.offset - start + k * self.period, b.length, b.full, b.beat, b.beats, b.division, b.meter)
                     for k in range(loops) for b in bars]
        self.offsets = [b.offset for b in self.bars]

    def seconds(self, ql: float) -> float:
        return ql * self.seconds_per_quarter

    def bar_at(self, ql: float) -> Bar | None:
        i = bisect_right(self.offsets, ql + 1e-9) - 1
        return self.bars[i] if i >= 0 else None

    def accent(self, ql: float) -> float:
        """Velocity bonus: downbeats most, other beats some."""
        bar = self.bar_at(ql)
        if bar is None:
            return 0.0
        pos = ql - bar.origin
        if abs(pos) < 1e-6:
            return 8.0
        return 4.0 if abs(pos / bar.beat - round(pos / bar.beat)) < 1e-6 else 0.0


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
    upper = _assign_upper_voices(rng)
    bass_down = _bass_octave_down(piece.voices[3], transpose, rng)

    stems = {
        "bass": _voice_notes([piece.voices[3]], "bass", timeline, transpose - 12 * bass_down, rng, max_seconds),
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
        "voices": {"bass": [piece.names[3]],
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


def _assign_upper_voices(rng) -> dict[str, list[int]]:
    """Split voices 0-2 (soprano, alto, tenor) so guitar and piano each get at least one."""
    while True:
        to_guitar = rng.random(3) < 0.5
        if 0 < to_guitar.sum() < 3:
            return {"guitar": [i for i in range(3) if to_guitar[i]],
                    "piano": [i for i in range(3) if not to_guitar[i]]}


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


# --------------------------------------------------------------------------- drums


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


# --------------------------------------------------------------------------- rendering


def write_midi(path: Path, notes: list[MidiNote], program: int, end_seconds: float) -> None:
    """A type-0 MIDI file at a fixed 120 BPM, times in 0.5 ms ticks.

    The end-of-track sits at ``end_seconds`` so fluidsynth renders at least
    that long, release tails included.
    """
    import mido

    def tick(seconds: float) -> int:
        return round(seconds * 1e6 / MIDI_TEMPO * TICKS_PER_BEAT)

    events = []  # (tick, order, message): note-offs sort before note-ons at the same tick
    for channel in sorted({n.channel for n in notes}):
        events.append((0, 0, mido.Message("program_change", channel=channel, program=program)))
        for control, value in ((7, 100), (10, 64), (11, 127), (91, 0), (93, 0)):  # volume, centre, dry
            events.append((0, 0, mido.Message("control_change", channel=channel, control=control, value=value)))
    for n in notes:
        events.append((tick(n.on), 2, mido.Message("note_on", channel=n.channel, note=n.pitch, velocity=n.velocity)))
        events.append((tick(n.off), 1, mido.Message("note_off", channel=n.channel, note=n.pitch, velocity=0)))
    events.sort(key=lambda e: (e[0], e[1], e[2].channel, getattr(e[2], "note", -1)))
    track = mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=MIDI_TEMPO, time=0)])
    now = 0
    for t, _, message in events:
        track.append(message.copy(time=t - now))
        now = t
    track.append(mido.MetaMessage("end_of_track", time=max(0, tick(end_seconds) - now)))
    midi = mido.MidiFile(type=0, ticks_per_beat=TICKS_PER_BEAT)
    midi.tracks.append(track)
    midi.save(str(path))


def render_stem(fluidsynth: str, soundfont: Path, midi_path: Path, wav_path: Path, sample_rate: int) -> np.ndarray:
    """Render one MIDI file; mono float32 (fluidsynth always writes stereo, so average)."""
    # Reverb and chorus off: the stems must stay dry to sum to the mix. Dynamic
    # sample loading reads only the samples the file uses (FluidR3 is 148 MB).
    command = [fluidsynth, "-ni", "-q", "-R", "0", "-C", "0", "-r", str(sample_rate), "-g", FLUIDSYNTH_GAIN,
               "-o", "synth.dynamic-sample-loading=1",
               "-O", "float", "-T", "wav", "-F", str(wav_path), str(soundfont), str(midi_path)]
    # SDL's audio probing costs ~0.1 s per start, more than rendering a short
    # stem; a file render never plays audio, so point SDL at its dummy driver.
    env = {**os.environ, "SDL_AUDIODRIVER": "dummy"}
    result = subprocess.run(command, check=False, capture_output=True, text=True, env=env)
    if result.returncode != 0 or not wav_path.is_file():
        raise SynthError(f"fluidsynth failed on {midi_path.name} (exit {result.returncode}): "
                         f"{(result.stderr or result.stdout).strip()[-500:]}")
    audio, rate = sf.read(str(wav_path), dtype="float32", always_2d=True)
    if rate != sample_rate:
        raise SynthError(f"fluidsynth wrote {rate} Hz instead of {sample_rate} Hz")
    return audio.mean(axis=1, dtype=np.float32)


def _fit(x: np.ndarray, frames: int, sample_rate: int) -> np.ndarray:
    """Crop or zero-pad to ``frames``, then fade the end out."""
    out = np.zeros(frames, np.float32)
    out[: min(frames, len(x))] = x[:frames]
    fade = min(frames, max(1, int(FADE_SECONDS * sample_rate)))
    out[-fade:] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
    return out


def mix_stems(stems: dict[str, np.ndarray], gains_db: dict[str, float]) -> tuple[dict, np.ndarray, float]:
    """Level the stems, sum them in a fixed order, and scale all by one factor
    so the mix peaks at MIX_PEAK. Returns (stems, mix, that factor)."""
    leveled = {}
    for stem in STEMS:
        x = stems[stem]
        rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
        gain = 10 ** ((STEM_RMS_DB + gains_db[stem]) / 20) / rms if rms > 1e-7 else 1.0
        leveled[stem] = (x * np.float32(gain)).astype(np.float32)
    scale = MIX_PEAK / max(float(np.abs(_sum(leveled)).max()), 1e-9)
    while True:  # float rounding can land the scaled mix a hair above the target
        scaled = {stem: (x * np.float32(scale)).astype(np.float32) for stem, x in leveled.items()}
        mix = _sum(scaled)
        if float(np.abs(mix).max()) <= MIX_PEAK:
            return scaled, mix, scale
        scale *= 1 - 1e-6


def _sum(stems: dict[str, np.ndarray]) -> np.ndarray:
    """((bass + drums) + guitar) + piano in float32: the order a reader must use to get mix.wav exactly."""
    mix = stems[STEMS[0]].astype(np.float32)
    for stem in STEMS[1:]:
        mix = mix + stems[stem]
    return mix


def write_wav_float32(path: Path, samples: np.ndarray, sample_rate: int) -> None:
    """Mono float32 WAV written by hand: libsndfile adds a PEAK chunk holding
    the current time, which would make two identical renders differ."""
    data = np.ascontiguousarray(samples, dtype="<f4").tobytes()
    fmt = struct.pack("<HHIIHHH", 3, 1, sample_rate, sample_rate * 4, 4, 32, 0)  # IEEE float, cbSize 0
    fact = struct.pack("<I", len(samples))
    body = (b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"fact" + struct.pack("<I", 4) + fact
            + b"data" + struct.pack("<I", len(data)) + data)
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)


# --------------------------------------------------------------------------- tracks


@dataclass(frozen=True)
class Job:
    plan: TrackPlan
    out_dir: str
    seed: int
    sample_rate: int
    max_seconds: float
    soundfonts: tuple[str, ...]
    fluidsynth: str

    def soundfont_for(self, stem: str) -> str:
        """Each stem of a track draws its SoundFont from the dataset's list, from
        its own random stream (not the arrangement's), so one SoundFont renders
        exactly as before and several give every instrument several timbres."""
        if len(self.soundfonts) == 1:
            return self.soundfonts[0]
        rng = np.random.default_rng([self.seed, self.plan.index, 1 + STEMS.index(stem)])
        return self.soundfonts[int(rng.integers(len(self.soundfonts)))]


def _identity(job: Job) -> dict:
    """What must match for an existing track folder to count as done."""
    return {"planned_piece": job.plan.piece, "split": job.plan.split, "seed": job.seed, "sample_rate": job.sample_rate,
            "max_seconds": job.max_seconds, "soundfont": _soundfont_identity(job.soundfonts),
            "generator_version": GENERATOR_VERSION}


def _soundfont_identity(soundfonts: tuple[str, ...]) -> str | list[str]:
    names = [Path(s).name for s in soundfonts]
    return names[0] if len(names) == 1 else names


def _first_usable_piece(plan: TrackPlan, cache_dir: Path) -> Piece:
    """The planned piece, or the first usable fallback (e.g. palestrina/Credo_81_c.krn
    claims 4 parts but two are empty); same split either way, so splits stay disjoint."""
    problems = []
    for piece_id in (plan.piece, *plan.fallbacks):
        try:
            return load_piece(piece_id, cache_dir)
        except UnusablePiece as exc:
            problems.append(f"{piece_id}: {exc}")
    raise SynthError(f"{plan.name}: no usable piece among its candidates ({'; '.join(problems)})")


def render_track(job: Job) -> dict:
    """Render one track into a temporary folder and rename it into place."""
    plan, sr = job.plan, job.sample_rate
    split_dir = Path(job.out_dir) / plan.split
    rng = np.random.default_rng([job.seed, plan.index])  # per track: independent of jobs and order
    piece = _first_usable_piece(plan, Path(job.out_dir) / ".cache" / "pieces")
    notes, info = arrange(piece, rng, job.max_seconds)
    gains_db = {"bass": rng.uniform(-4, 2), "drums": rng.uniform(-3, 3),
                "guitar": rng.uniform(-5, 1), "piano": rng.uniform(-5, 1)}
    seconds = min(job.max_seconds, info["music_seconds"] + RELEASE_SECONDS)
    frames = round(seconds * sr)

    tmp = Path(tempfile.mkdtemp(prefix=f"{plan.name}.tmp-", dir=split_dir))
    try:
        (tmp / "midi").mkdir()
        raw = {}
        for stem in STEMS:
            midi = tmp / "midi" / f"{stem}.mid"
            write_midi(midi, notes[stem], info["programs"][stem], seconds)
            rendered = tmp / f"{stem}.render.wav"
            raw[stem] = _fit(render_stem(job.fluidsynth, Path(job.soundfont_for(stem)), midi, rendered, sr), frames, sr)
            rendered.unlink()
        stems, mix, scale = mix_stems(raw, gains_db)
        for stem in STEMS:
            write_wav_float32(tmp / f"{stem}.wav", stems[stem], sr)
        write_wav_float32(tmp / "mix.wav", mix, sr)
        metadata = {
            "track": plan.name, **_identity(job), "piece": piece.id, "track_index": plan.index,
            "composer": piece.id.split("/")[0], **info,
            "gains_db": {s: round(float(g), 4) for s, g in gains_db.items()},
            "normalise_gain": scale, "duration_seconds": frames / sr, "frames": frames,
            "stems": list(STEMS), "mix": "((bass + drums) + guitar) + piano, float32",
            **({"stem_soundfonts": {s: Path(job.soundfont_for(s)).name for s in STEMS}}
               if len(job.soundfonts) > 1 else {}),
        }
        (tmp / "metadata.json").write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
        os.rename(tmp, split_dir / plan.name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return metadata


def _finished(job: Job) -> dict | None:
    """The metadata of an already rendered track, or None. A folder rendered
    with other settings is an error, not something to silently keep."""
    folder = Path(job.out_dir) / job.plan.split / job.plan.name
    meta_path = folder / "metadata.json"
    if not folder.is_dir():
        return None
    metadata = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    expected = _identity(job)
    if {k: metadata.get(k) for k in expected} != expected:
        raise SynthError(f"{folder} was rendered with other settings than this run "
                         f"(expected {expected}); render into a new folder or delete it.")
    return metadata


def _remove_stale_tmp(out_dir: Path) -> None:
    """Temporary track folders left by an interrupted run."""
    for split in SPLITS:
        for tmp in (out_dir / split).glob("Track*.tmp-*"):
            shutil.rmtree(tmp, ignore_errors=True)


def _default_jobs() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def render_dataset(out_dir, tracks: int, seed: int = 0, *, sample_rate: int = 22050, max_seconds: float = 60.0,
                   soundfont: str | Sequence[str] | None = None, jobs: int | None = None, progress=None) -> dict:
    """Render ``tracks`` tracks into ``out_dir`` (resumable) and write dataset.json.

    ``soundfont``: one General MIDI SoundFont, or several: then each stem of
    each track is rendered with one of them, drawn per track and stem, so the
    model meets every instrument in several timbres.

    ``progress(done, total)`` is called once with the tracks already there,
    then after each track. Returns the summary written to dataset.json.
    """
    if tracks < 1:
        raise ValueError(f"tracks must be at least 1, got {tracks}")
    if max_seconds <= 0:
        raise ValueError(f"max_seconds must be positive, got {max_seconds}")
    fluidsynth = _find_fluidsynth()
    names = [soundfont] if soundfont is None or isinstance(soundfont, (str, os.PathLike)) else list(soundfont)
    if not names:
        raise ValueError("give at least one SoundFont, or none for the default")
    sf2s = tuple(find_soundfont(None if n is None else str(n)) for n in names)
    out = Path(out_dir)
    for split in SPLITS:
        (out / split).mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(out)

    jobs_list = [Job(plan, str(out), seed, int(sample_rate), float(max_seconds), tuple(map(str, sf2s)), fluidsynth)
                 for plan in plan_tracks(tracks, seed)]
    results = {job.plan.index: m for job in jobs_list if (m := _finished(job)) is not None}
    todo = [job for job in jobs_list if job.plan.index not in results]
    if progress:
        progress(len(results), tracks)
    workers = max(1, min(jobs or _default_jobs(), len(todo) or 1))
    if workers == 1:
        for job in todo:
            results[job.plan.index] = render_track(job)
            if progress:
                progress(len(results), tracks)
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(render_track, job): job for job in todo}
            try:
                for future in as_completed(futures):
                    results[futures[future].plan.index] = future.result()
                    if progress:
                        progress(len(results), tracks)
            except BaseException:  # fail now, not after rendering every queued track
                pool.shutdown(wait=True, cancel_futures=True)
                raise

    summary = _summary(jobs_list, results, seed, sample_rate, max_seconds, sf2s)
    write_atomic(out / "dataset.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary


def _summary(jobs_list, results, seed, sample_rate, max_seconds, sf2s: tuple[Path, ...]) -> dict:
    splits = {}
    for split in SPLITS:
        metas = [results[j.plan.index] for j in jobs_list if j.plan.split == split]
        splits[split] = {"tracks": len(metas), "seconds": round(sum(m["duration_seconds"] for m in metas), 6),
                         "pieces": sorted({m["piece"] for m in metas})}
    return {
        "generator": "msdm-studio training.synth",
        "generator_version": GENERATOR_VERSION,
        "music21_version": _music21().__version__,
        "seed": seed,
        "tracks": len(jobs_list),
        "sample_rate": sample_rate,
        "max_seconds": max_seconds,
        "stems": list(STEMS),
        **_soundfont_summary(sf2s),
        "splits": splits,
        "seconds": round(sum(s["seconds"] for s in splits.values()), 6),
    }


def _soundfont_summary(sf2s: tuple[Path, ...]) -> dict:
    described = [{"path": str(p), "name": p.name, "bytes": p.stat().st_size} for p in sf2s]
    return {"soundfont": described[0]} if len(described) == 1 else {"soundfonts": described}
