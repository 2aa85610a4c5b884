"""Keys, chords and chord progressions for the generated arrangements.

A chord is written as a Roman numeral relative to the key's tonic ("V7",
"bVII", "ii7/5": second inversion), so stock progressions read as musicians
write them. Progressions come from three sources, as in the textbook account
of tonal harmony (Kostka & Payne, *Tonal Harmony*, ch. 7: tonic -> predominant
-> dominant -> tonic): stock pop/jazz/common-practice progressions, a random
walk on that functional graph, and the 12-bar blues.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np


# Modes as semitones above the tonic.
MODES = {
    "major": (0, 2, 4, 5, 7, 9, 11),
    "minor": (0, 2, 3, 5, 7, 8, 10),  # natural minor; V is raised where a progression says "V"
    "dorian": (0, 2, 3, 5, 7, 9, 10),
    "mixolydian": (0, 2, 4, 5, 7, 9, 10),
}
MODE_WEIGHTS = {"major": 0.5, "minor": 0.3, "dorian": 0.1, "mixolydian": 0.1}

# Chord qualities as semitones above the root.
QUALITIES = {
    "maj": (0, 4, 7), "min": (0, 3, 7), "dim": (0, 3, 6), "aug": (0, 4, 8),
    "sus2": (0, 2, 7), "sus4": (0, 5, 7), "5": (0, 7),
    "7": (0, 4, 7, 10), "maj7": (0, 4, 7, 11), "m7": (0, 3, 7, 10), "m7b5": (0, 3, 6, 10),
    "dim7": (0, 3, 6, 9), "6": (0, 4, 7, 9), "m6": (0, 3, 7, 9), "add9": (0, 4, 7, 14),
    "madd9": (0, 3, 7, 14), "7sus4": (0, 5, 7, 10),
}

_NUMERALS = {"i": 0, "ii": 1, "iii": 2, "iv": 3, "v": 4, "vi": 5, "vii": 6}
_MAJOR_SCALE = MODES["major"]
# accidental, numeral, quality suffix, inversion ("/3" third in the bass, "/5" fifth, "/7" seventh)
_ROMAN = re.compile(r"^(b|#)?(vii|iii|vi|iv|v|ii|i|VII|III|VI|IV|V|II|I)(o7|o|ø7|\+|maj7|m7b5|7sus4|sus4|sus2|add9|"
                    r"6|7|5)?(?:/(3|5|7))?$")


@dataclass(frozen=True)
class Chord:
    symbol: str  # as written, e.g. "V7/3"
    root: int  # pitch class 0-11 (absolute, after the key)
    intervals: tuple[int, ...]  # above the root
    bass: int  # pitch class in the bass (the root unless inverted)

    @property
    def pitch_classes(self) -> tuple[int, ...]:
        return tuple(sorted({(self.root + i) % 12 for i in self.intervals}))

    @property
    def fifth(self) -> int | None:
        """The chord's fifth (perfect, diminished or augmented) as a pitch class."""
        for i in (7, 6, 8):
            if i in self.intervals:
                return (self.root + i) % 12
        return None


def parse_roman(symbol: str, tonic: int) -> Chord:
    """A Roman numeral in a key -> Chord. Upper case is major, lower case minor;
    the root is counted on the major scale, so minor keys write "bIII", "bVI",
    "bVII" (the convention of pop analysis, which keeps one spelling per root)."""
    m = _ROMAN.match(symbol)
    if m is None:
        raise ValueError(f"not a Roman numeral chord: {symbol!r}")
    accidental, numeral, suffix, inversion = m.groups()
    upper = numeral.isupper()
    root = (tonic + _MAJOR_SCALE[_NUMERALS[numeral.lower()]] + {"b": -1, "#": 1, None: 0}[accidental]) % 12
    suffix = suffix or ""
    if suffix == "o":
        quality = "dim"
    elif suffix == "o7":
        quality = "dim7"
    elif suffix in ("ø7", "m7b5"):
        quality = "m7b5"
    elif suffix == "+":
        quality = "aug"
    elif suffix == "7":
        quality = "7" if upper else "m7"
    elif suffix == "6":
        quality = "6" if upper else "m6"
    elif suffix == "add9":
        quality = "add9" if upper else "madd9"
    elif suffix:
        quality = suffix  # maj7, sus2, sus4, 7sus4, 5
    else:
        quality = "maj" if upper else "min"
    intervals = QUALITIES[quality]
    bass = root
    if inversion:
        # /3: the chord's third (or its sus note), /5: its fifth, /7: its seventh.
        index = {"3": 1, "5": 2, "7": 3}[inversion]
        if index >= len(intervals):
            raise ValueError(f"{symbol!r}: the chord has no {inversion} to put in the bass")
        bass = (root + intervals[index]) % 12
    return Chord(symbol, root, intervals, bass)


# Stock progressions per mode family, one chord per entry (the harmonic rhythm
# is drawn separately). Sources: the "Axis" I-V-vi-IV and its rotations, the
# '50s I-vi-IV-V, Pachelbel's canon, the circle of fifths, ii-V-I, the
# Andalusian cadence, the Aeolian i-bVI-bVII, the Mixolydian I-bVII-IV.
STOCK = {
    "major": (
        ("I", "V", "vi", "IV"), ("vi", "IV", "I", "V"), ("I", "vi", "IV", "V"), ("I", "IV", "V", "IV"),
        ("I", "V/3", "vi", "iii", "IV", "I/3", "IV", "V"), ("vi", "ii", "V", "I"), ("ii7", "V7", "Imaj7", "Imaj7"),
        ("Imaj7", "vi7", "ii7", "V7"), ("I", "iii", "IV", "V"), ("IV", "I/3", "ii7", "Vsus4"),
        ("I", "IV", "vi", "V"), ("I", "bVII", "IV", "I"), ("I", "V/3", "IV/3", "iv6"),
        ("I", "ii", "iii", "IV"), ("Iadd9", "V", "vi7", "IVmaj7"),
    ),
    "minor": (
        ("i", "bVII", "bVI", "V"), ("i", "bVI", "bIII", "bVII"), ("i", "iv", "v", "i"), ("i", "iv", "V7", "i"),
        ("i", "bVI", "bVII", "i"), ("i", "bVII", "bVI", "bVII"), ("iiø7", "V7", "i", "i"),
        ("i7", "iv7", "bVII7", "bIIImaj7"), ("i", "i7/7", "bVI", "V"), ("iv", "bVII", "bIII", "bVI"),
        ("i", "bIII", "bVII", "iv"),
    ),
    "dorian": (("i7", "IV7"), ("i", "IV", "i", "bVII"), ("i7", "ii7", "bIIImaj7", "IV")),
    "mixolydian": (("I", "bVII", "IV", "I"), ("I", "bVII", "I", "IV"), ("I", "v", "bVII", "IV")),
}

BLUES = ("I7", "IV7", "I7", "I7", "IV7", "IV7", "I7", "I7", "V7", "IV7", "I7", "V7")

# The functional graph: tonic -> predominant -> dominant -> tonic, with the
# usual side steps (deceptive V -> vi, plagal IV -> I, the tonic prolonged).
FUNCTIONS = {
    "major": {"T": ("I", "vi", "iii", "I/3"), "S": ("IV", "ii", "ii7", "IV/3", "IVmaj7"),
              "D": ("V", "V7", "Vsus4", "viio", "V/3", "V7sus4")},
    "minor": {"T": ("i", "bVI", "bIII", "i/3"), "S": ("iv", "iiø7", "iv7", "bVI"),
              "D": ("V", "V7", "bVII", "v", "viio7")},
}
EDGES = {"T": (("T", 0.25), ("S", 0.55), ("D", 0.2)), "S": (("D", 0.6), ("T", 0.25), ("S", 0.15)),
         "D": (("T", 0.8), ("S", 0.1), ("D", 0.1))}

# Triads that may become sevenths or sus chords as a variation (diatonic 7ths).
SEVENTH_OF = {"I": "Imaj7", "IV": "IVmaj7", "V": "V7", "ii": "ii7", "vi": "vi7", "iii": "iii7", "i": "i7",
              "iv": "iv7", "bVI": "bVImaj7", "bIII": "bIIImaj7", "bVII": "bVII7"}


def functional_walk(mode: str, length: int, rng: np.random.Generator) -> tuple[str, ...]:
    """A random walk on the functional graph that starts on the tonic and
    ends on a dominant, so the progression loops back to its start."""
    family = "minor" if mode in ("minor", "dorian") else "major"
    chords, state = [FUNCTIONS[family]["T"][0]], "T"
    for i in range(1, length):
        if i == length - 1:
            state = "D"
        else:
            targets, weights = zip(*EDGES[state])
            state = str(rng.choice(targets, p=np.array(weights) / sum(weights)))
        options = FUNCTIONS[family][state]
        choice = str(options[int(rng.integers(len(options)))])
        if choice == chords[-1]:
            choice = str(options[0]) if options[0] != choice else str(options[-1])
        chords.append(choice)
    return tuple(chords)


def draw_progression(mode: str, rng: np.random.Generator) -> tuple[tuple[str, ...], str]:
    """(Roman numerals, where they came from) for one section."""
    source = str(rng.choice(["stock", "walk", "blues"], p=[0.55, 0.38, 0.07]))
    if source == "blues" and mode in ("major", "mixolydian"):
        return BLUES, "blues"
    if source == "walk":
        chords = functional_walk(mode, int(rng.choice([4, 4, 6, 8])), rng)
    else:
        stock = STOCK[mode]
        chords = stock[int(rng.integers(len(stock)))]
        source = "stock"
    return _vary(chords, rng), source


def _vary(chords: tuple[str, ...], rng) -> tuple[str, ...]:
    """Colour a plain progression: some triads become sevenths, some dominants
    sus4 (resolving or not), as pop and jazz players do."""
    seventh_p = float(rng.choice([0.0, 0.3, 0.7]))
    out = []
    for c in chords:
        if c in SEVENTH_OF and rng.random() < seventh_p:
            c = SEVENTH_OF[c]
        elif c in ("I", "IV") and rng.random() < 0.1:
            c = c + str(rng.choice(["sus2", "add9"]))
        out.append(c)
    return tuple(out)
