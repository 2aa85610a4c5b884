"""Pieces from the music21 corpus: which ones (4-part, not too long), their
notes and bars (cached as JSON), how tracks draw them per split, and the
timeline that places bars in seconds at a track's tempo.
"""

from __future__ import annotations

import functools
import json
import math
import warnings
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.atomic import write_atomic
from engine.errors import UserError

from .reserved import RESERVED_COMPOSERS  # never in any plan


SPLITS = ("train", "valid", "test")
# Splits of tracks 1-10, 11-20, ...: 80/10/10, and all three from 3 tracks on.
SPLIT_PATTERN = ("train", "valid", "test") + ("train",) * 7

# Corpus folders whose 4-part pieces we use. Excluded: 'demos' and
# 'theoryExercises' (exercises, not music), 'trecento' (few, odd notation).
COMPOSERS = ("bach", "palestrina", "haydn", "mozart", "beethoven", "schumann_robert")
# The extended set (opt-in: plan_tracks(..., extended=True)), which leaves the
# plan of COMPOSERS' 4-part pieces as it was: these folders' 4-6-part pieces
# and COMPOSERS' 5- and 6-part ones (Palestrina's 693 five- and six-voice
# movements, Bach's 21). The other folders of the corpus have at most 3 parts
# (cpebach, handel, schubert, verdi, corelli, ciconia, luca, lusitano, weber)
# or are tunes (essenFolksong, oneills1850, ...), checked with music21 9.
EXTRA_COMPOSERS = ("johnson_j_r", "schumann_clara", "beach")
EXTENDED_PARTS = (4, 5, 6)
# Pieces with more notes are whole quartets in one file: slow to parse (10 s+)
# for the minute we use.
MAX_NOTE_COUNT = 4000


class SynthError(UserError, RuntimeError):
    """A tool or data the synthesiser needs is missing; the message says what to install."""


class UnusablePiece(ValueError):
    """A corpus piece we cannot arrange (its metadata said 4 parts, its notes disagree)."""


def _music21():
    try:
        import music21
    except ImportError as exc:
        raise SynthError("The music21 package is needed for the source music: pip install music21") from exc
    return music21


@functools.lru_cache(maxsize=2)
def candidate_pieces(extended: bool = False) -> tuple[str, ...]:
    """Corpus paths of the pieces we use, in a stable (sorted) order: the
    4-part pieces of COMPOSERS, or with ``extended`` those plus the 4-6-part
    pieces of COMPOSERS and EXTRA_COMPOSERS.

    Read from music21's metadata bundle, so nothing is parsed here. A movement
    shipped both as .krn and .mxl is kept once (.mxl), or the same music could
    land in two splits.
    """
    corpus = _music21().corpus
    composers = COMPOSERS + EXTRA_COMPOSERS if extended else COMPOSERS
    parts = EXTENDED_PARTS if extended else (4,)
    assert not set(composers) & set(RESERVED_COMPOSERS), "a folder reserved for evaluation"
    by_stem: dict[str, str] = {}
    for n in parts:
        # search() first: iterating the whole 15000-entry bundle is quadratic (14 s).
        for entry in corpus.search(n, "numberOfParts"):
            md, path = entry.metadata, str(entry.sourcePath)
            if entry.number is not None or path.split("/")[0] not in composers:
                continue
            if md.numberOfParts != n or not md.noteCount or md.noteCount > MAX_NOTE_COUNT:
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


def load_piece(piece_id: str, cache_dir: Path | None = None, parts: tuple[int, ...] = (4,)) -> Piece:
    """The piece's notes, from this process's memory, the JSON cache, or
    music21; UnusablePiece unless it has a number of voices in ``parts``."""
    if piece_id in _PIECES:
        return _check_parts(_PIECES[piece_id], parts)
    cache = cache_dir / (piece_id.replace("/", "__") + ".json") if cache_dir else None
    if cache is not None and cache.is_file():
        data = json.loads(cache.read_text())
    else:
        music21 = _music21()
        with warnings.catch_warnings():  # music21 warns about quirks of some scores (overfull bars)
            warnings.simplefilter("ignore")
            try:
                data = _extract(music21.corpus.parse(piece_id), parts)
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
    return _check_parts(piece, parts)


def _check_parts(piece: Piece, parts: tuple[int, ...]) -> Piece:
    if len(piece.voices) not in parts:
        raise UnusablePiece(f"{len(piece.voices)} of its parts have notes, not {' or '.join(map(str, parts))}")
    return piece


def _extract(score, parts: tuple[int, ...] = (4,)) -> dict:
    """Plain note lists, bars and phrase ends of a parsed score (JSON-able).

    Walks measures by hand and joins tied notes ourselves: ``flatten().stripTies()``
    is several times slower on the long quartet movements.
    """
    from music21 import expressions, stream

    if isinstance(score, stream.Opus):  # an ABC file holds one tune per voice (the Josquin chansons)
        score = score.mergeScores()

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
    if len(voices) not in parts:
        raise UnusablePiece(f"{len(voices)} of its parts have notes, not {' or '.join(map(str, parts))}")
    # Lowest voice last, so index -1 (3 in a 4-part piece) is always the bass.
    order = sorted(range(len(voices)), key=lambda i: -float(np.mean([n[0] for n in voices[i]])))
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


@dataclass(frozen=True)
class TrackPlan:
    index: int  # 0-based over the whole dataset
    name: str  # TrackNNNNN (1-based, like Slakh)
    split: str
    piece: str
    fallbacks: tuple[str, ...] = ()  # same split, used in turn if ``piece`` cannot be used
    parts: tuple[int, ...] = (4,)  # voice counts the plan accepts (EXTENDED_PARTS in an extended plan)


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


def split_pieces_extended(seed: int) -> dict[str, list[str]]:
    """The extended set's splits: every piece of the standard set keeps its
    split, the added pieces are split (80/10/10) on their own, and each
    split's pool is shuffled again so tracks draw old and new pieces mixed;
    no piece is in two splits across the two kinds of dataset."""
    base = candidate_pieces()
    splits = split_pieces(list(base), seed)
    added = split_pieces([p for p in candidate_pieces(extended=True) if p not in set(base)], seed)
    rng = np.random.default_rng([seed, 1])
    pools = {}
    for split in SPLITS:
        pools[split] = splits[split] + added[split]
        rng.shuffle(pools[split])
    return pools


def plan_tracks(tracks: int, seed: int, pieces: tuple[str, ...] | None = None,
                extended: bool = False) -> list[TrackPlan]:
    """Which piece and split each track gets.

    Tracks take their splits from SPLIT_PATTERN and each split its pieces in
    shuffled order, repeating one (with other instruments and tempo) only once
    it has used them all; so a piece never changes split, and a track's plan
    depends only on the seed and its number: a dataset can be extended by
    asking for more tracks in the same folder.
    """
    if extended and pieces is not None:
        raise ValueError("give either pieces or extended=True, not both")
    if extended:
        splits = split_pieces_extended(seed)
    else:
        splits = split_pieces(list(candidate_pieces() if pieces is None else pieces), seed)
    parts = EXTENDED_PARTS if extended else (4,)
    used = {split: 0 for split in SPLITS}
    plans = []
    for index in range(tracks):
        split = SPLIT_PATTERN[index % len(SPLIT_PATTERN)]
        pool, k = splits[split], used[split]
        used[split] += 1
        nearby = tuple(pool[(k + j) % len(pool)] for j in range(1, min(4, len(pool))))
        plans.append(TrackPlan(index, f"Track{index + 1:05d}", split, pool[k % len(pool)], nearby, parts))
    return plans


def first_usable_piece(plan: TrackPlan, cache_dir: Path | None = None) -> Piece:
    """The planned piece, or the first usable fallback (e.g. palestrina/Credo_81_c.krn
    claims 4 parts but two are empty); same split either way, so splits stay disjoint."""
    problems = []
    for piece_id in (plan.piece, *plan.fallbacks):
        try:
            return load_piece(piece_id, cache_dir, plan.parts)
        except UnusablePiece as exc:
            problems.append(f"{piece_id}: {exc}")
    raise SynthError(f"{plan.name}: no usable piece among its candidates ({'; '.join(problems)})")


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
