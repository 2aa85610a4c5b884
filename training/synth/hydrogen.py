"""Drums for evaluation only: a General MIDI drum part played with the recorded
samples of Hydrogen drum kits (Debian's hydrogen-drumkits; RESERVED: see
reserved.py), mixed in numpy at the hit times.

A kit is a folder with drumkit.xml (Hydrogen's format: instruments, each with
velocity layers ``<layer><filename><min><max><gain><pitch>``, or one
``<filename>`` in the oldest kits). Instruments are matched to the GM keys the
drum generator (drums.py) plays by their names: kick, snare, hi-hat closed /
pedal / open, toms, crash, ride. A kit without a kick, a snare, a hi-hat and a
cymbal (the hand-percussion and djembe kits, the electronic ones without
cymbals) is not a drum kit for this purpose and is left out.
"""

from __future__ import annotations

import functools
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from engine.audio.files import resample

from .corpus import MidiNote, SynthError
from .drums import CLOSED_HAT, CRASH, KICK, OPEN_HAT, PEDAL_HAT, RIDE, SIDE_STICK, SNARE, SNARE_2, TOMS


INSTALL_HINT = "apt-get install hydrogen-drumkits"
KITS_FOLDER = Path("/usr/share/hydrogen/data/drumkits")

# Kits whose drumkit.xml names no licence: Debian's copyright file
# (/usr/share/doc/hydrogen-drumkits/copyright) does.
DEBIAN_LICENCES = {
    "ColomboAcousticDrumkit": "GPL-2+ with composition exception",
    "Millo-Drums_v.1": "GPL-2", "Millo_MultiLayered2": "GPL-2", "Millo_MultiLayered3": "GPL-2",
}

MAX_SAMPLE_SECONDS = 6.0  # a crash rings ~4 s; longer files are cut (with a fade)
CHOKE_SECONDS = 0.01  # a choked hi-hat fades out this fast (a hand on the cymbal)


@dataclass(frozen=True)
class Layer:
    path: Path
    low: float  # velocity range, 0..1
    high: float
    gain: float
    pitch: float  # semitones


@dataclass(frozen=True)
class Instrument:
    name: str
    role: str  # kick, snare, stick, hat_closed, hat_pedal, hat_open, tom, crash, ride
    gain: float  # Hydrogen's instrument gain times volume
    layers: tuple[Layer, ...]
    mute_group: int  # Hydrogen's: a hit stops the other instruments of its group (-1: none)

    def layer_for(self, velocity: float) -> Layer:
        """Hydrogen's rule: the layer whose [min, max] holds the velocity; else the nearest."""
        for layer in self.layers:
            if layer.low <= velocity <= layer.high:
                return layer
        return min(self.layers, key=lambda la: min(abs(velocity - la.low), abs(velocity - la.high)))


@dataclass(frozen=True)
class DrumKit:
    name: str
    folder: Path
    author: str
    license: str
    keys: dict  # GM key -> Instrument

    def describe(self) -> dict:
        return {"name": self.name, "folder": self.folder.name, "author": self.author, "license": self.license,
                "keys": {str(k): i.name for k, i in sorted(self.keys.items())}}


# Name patterns, tried in order: the first that matches gives the role. Rolls,
# chokes, flams and effects are not single hits of the part we play.
_SKIP = re.compile(r"roll|choke|flam|swish|splash|china|crash ?flink|cowbell|clap|cajon|conga|bongo|djembe")
_ROLES = (
    ("kick", re.compile(r"kick|bass ?drum|\bbd\b")),
    ("hat_pedal", re.compile(r"(hat|\bhh).*(pedal|foot|\bpd\b)|pedal ?hh")),
    ("hat_open", re.compile(r"(hat|\bhh).*(open|\bop\b|semi)|\bohh\b|open ?hh")),
    ("hat_closed", re.compile(r"(hat|\bhh).*(clos|\bcl\b)|\bchh\b|closed ?hh|hi-?hat$|\bhh$")),
    ("stick", re.compile(r"stick|rim ?click|side")),
    ("snare", re.compile(r"snare")),
    ("tom", re.compile(r"\btom")),
    ("crash", re.compile(r"crash")),
    ("ride", re.compile(r"ride")),
)


def role_of(name: str) -> str | None:
    text = name.lower()
    if _SKIP.search(text) or "bell" in text or "cup" in text:
        return None
    for role, pattern in _ROLES:
        if pattern.search(text):
            return role
    return None


def _tom_height(name: str) -> tuple[int, int]:
    """Sort key, highest tom first: by the words high/mid/low/floor, then by
    the number in the name (Tom 1 above Tom 2), then by a drum size in inches
    (a smaller drum sounds higher)."""
    text = name.lower()
    word = next((rank for rank, pat in enumerate((r"hi(gh)?\b|high|hi\d", r"mid", r"\blo(w)?\b|low", r"floor"))
                 if re.search(pat, text)), 1)
    number = re.search(r"(\d+)", text)
    return word, int(number.group(1)) if number else 0


def _children(element, tag):
    return [c for c in element if c.tag.rsplit("}", 1)[-1] == tag]


def _text(element, tag, default=""):
    found = _children(element, tag)
    return (found[0].text or "").strip() if found else default


def _number(element, tag, default: float) -> float:
    try:
        return float(_text(element, tag, str(default)))
    except ValueError:
        return default


def _layers(instrument, folder: Path) -> tuple[Layer, ...]:
    found = [layer for c in _children(instrument, "instrumentComponent") for layer in _children(c, "layer")]
    found += _children(instrument, "layer")
    layers = [Layer(folder / _text(la, "filename"), _number(la, "min", 0.0), _number(la, "max", 1.0),
                    _number(la, "gain", 1.0), _number(la, "pitch", 0.0)) for la in found if _text(la, "filename")]
    if not layers and _text(instrument, "filename"):  # the oldest format: one sample per instrument
        layers = [Layer(folder / _text(instrument, "filename"), 0.0, 1.0, 1.0, 0.0)]
    return tuple(sorted(layers, key=lambda la: (la.low, la.high)))


def read_kit(folder: Path) -> DrumKit | None:
    """The kit in ``folder`` mapped to GM keys, or None if it is not a drum kit
    (see the module's docstring). A broken drumkit.xml is a SynthError."""
    xml = folder / "drumkit.xml"
    try:
        root = ET.parse(xml).getroot()
    except (OSError, ET.ParseError) as error:
        raise SynthError(f"cannot read the drum kit {xml}: {error}") from None
    by_role: dict[str, list[Instrument]] = {}
    instruments = [i for lst in _children(root, "instrumentList") for i in _children(lst, "instrument")]
    for element in instruments:
        name, layers = _text(element, "name"), _layers(element, folder)
        role = role_of(name)
        if role is None or not layers or _text(element, "isMuted") == "true":
            continue
        gain = _number(element, "gain", 1.0) * _number(element, "volume", 1.0)
        by_role.setdefault(role, []).append(
            Instrument(name, role, gain, layers, int(_number(element, "muteGroup", -1))))
    if not all(by_role.get(r) for r in ("kick", "snare", "hat_closed")) or not (by_role.get("crash") or by_role.get("ride")):
        return None

    def first(*roles):
        return next(by_role[r][0] for r in roles if by_role.get(r))

    keys = {KICK: first("kick"), SNARE: first("snare"), SIDE_STICK: first("stick", "snare"),
            SNARE_2: by_role["snare"][1] if len(by_role["snare"]) > 1 else first("snare"),
            CLOSED_HAT: first("hat_closed"), PEDAL_HAT: first("hat_pedal", "hat_closed"),
            OPEN_HAT: first("hat_open", "hat_closed"), CRASH: first("crash", "ride"), RIDE: first("ride", "crash")}
    # GM's six toms (high to low) spread over the kit's toms; a kit without toms plays its fills on the snare.
    toms = sorted(by_role.get("tom", []), key=lambda i: _tom_height(i.name)) or [first("snare")]
    for n, key in enumerate(TOMS):
        keys[key] = toms[round(n * (len(toms) - 1) / (len(TOMS) - 1))]
    licence = _text(root, "license") or DEBIAN_LICENCES.get(folder.name, "see /usr/share/doc/hydrogen-drumkits/copyright")
    return DrumKit(_text(root, "name") or folder.name, folder, _text(root, "author"), licence, keys)


@functools.lru_cache(maxsize=1)
def drum_kits(folder: Path = KITS_FOLDER) -> tuple[DrumKit, ...]:
    """Every usable kit under ``folder``, sorted by folder name."""
    if not folder.is_dir():
        raise SynthError(f"No Hydrogen drum kits in {folder}. Install them: {INSTALL_HINT}")
    kits = tuple(kit for sub in sorted(folder.iterdir()) if (sub / "drumkit.xml").is_file()
                 and (kit := read_kit(sub)) is not None)
    if not kits:
        raise SynthError(f"None of the kits in {folder} has a kick, snare, hi-hat and cymbal. "
                         f"Reinstall them: {INSTALL_HINT}")
    return kits


@functools.lru_cache(maxsize=256)
def load_sample(path: Path, pitch: float, sample_rate: int) -> np.ndarray:
    """A sample as mono float32 at ``sample_rate``; a layer's pitch (semitones)
    plays it faster or slower, as Hydrogen does."""
    try:
        audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, sf.LibsndfileError, OSError) as error:
        raise SynthError(f"cannot read the drum sample {path}: {error}") from None
    if audio.size == 0:
        raise SynthError(f"the drum sample {path} is empty")
    mono = audio.mean(axis=1, dtype=np.float32)[None, :]
    out = resample(mono, max(1, round(rate * 2 ** (pitch / 12))), sample_rate)[0]
    longest = int(MAX_SAMPLE_SECONDS * sample_rate)
    if len(out) > longest:
        out = out[:longest]
        fade = int(0.05 * sample_rate)
        out[-fade:] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
    return out


def _mute_group(instrument: Instrument) -> object:
    """Hydrogen's mute group; the hi-hats choke each other even when the kit sets none."""
    if instrument.mute_group >= 0:
        return instrument.mute_group
    return "hat" if instrument.role.startswith("hat") else None


def play(kit: DrumKit, notes: list[MidiNote], frames: int, sample_rate: int) -> tuple[np.ndarray, set[str]]:
    """The drum stem: each note's sample (its velocity layer, scaled by the
    velocity as Hydrogen does) added at its onset. Returns (audio, the sample
    files used)."""
    out = np.zeros(frames, np.float64)
    hits = sorted((round(n.on * sample_rate), n.pitch, n.velocity) for n in notes if n.pitch in kit.keys)
    # When a hit is cut: at the next hit of another instrument of its mute group.
    group_onsets: dict[object, list[tuple[int, str]]] = {}
    for start, key, _ in hits:
        group = _mute_group(kit.keys[key])
        if group is not None:
            group_onsets.setdefault(group, []).append((start, kit.keys[key].name))
    used = set()
    fade = max(1, int(CHOKE_SECONDS * sample_rate))
    for start, key, velocity in hits:
        if start >= frames:
            continue
        instrument = kit.keys[key]
        v = velocity / 127.0
        layer = instrument.layer_for(v)
        sample = load_sample(layer.path, layer.pitch, sample_rate).astype(np.float64) * (v * layer.gain * instrument.gain)
        used.add(str(layer.path))
        group = _mute_group(instrument)
        end = min(frames, start + len(sample))
        if group is not None:
            cut = next((t for t, name in group_onsets[group] if t > start and name != instrument.name), None)
            if cut is not None and cut < end:
                end = cut
                sample = sample[: end - start].copy()
                n = min(fade, len(sample))
                sample[len(sample) - n:] *= np.linspace(1.0, 0.0, n)
        out[start:end] += sample[: end - start]
    return out.astype(np.float32), used
