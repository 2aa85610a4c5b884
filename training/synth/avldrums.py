"""Drum parts played by the two recorded acoustic kits of Debian's
avldrums.lv2-soundfont (Glen MacArthur's AVL Drumkits, CC BY-SA 3.0), through
the same fluidsynth command as every other stem (training.synth.rendering).

Each kit is one preset at bank 0 program 0, not a General MIDI percussion bank
(bank 128), so fluidsynth plays it only on a melodic channel: the notes are moved
from the GM drum channel to channel 0. Measured key by key (keys 27-87 1 s apart,
then 35-61 3 s apart, velocity 100; docs/data-sources.md has the table): keys 36-61 sound,
35 is silent, 41/43/45/47 are the toms (strongest partial 70-130 Hz, decay ~1 s),
and 48 and 50, the GM high toms, are hi-hat and cymbal sounds (centroid 3-5 kHz,
no energy below 250 Hz). KEY_MAP sends those three keys to what a GM part means.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import numpy as np

from .corpus import MidiNote, SynthError
from .rendering import _find_fluidsynth, render_stem, write_midi

AVLDRUMS_DIR = Path("/usr/share/sounds/sf2")
AVLDRUMS_KITS = {"black-pearl": "Black_Pearl_4_LV2.sf2", "red-zeppelin": "Red_Zeppelin_4_LV2.sf2"}
INSTALL_HINT = "apt-get install avldrums.lv2-soundfont"
KIT_CHANNEL, KIT_PROGRAM = 0, 0
# GM key -> the kit's key for the same drum (measured, see above): acoustic bass
# drum -> the kick, hi-mid and high tom -> the highest tom.
KEY_MAP = {35: 36, 48: 47, 50: 47}
RELEASE_TAIL_SECONDS = 3.0  # cymbals ring ~2.5 s (-30 dB) after the last hit


def available_avldrums_kits(folder: Path = AVLDRUMS_DIR) -> list[str]:
    return sorted(name for name, file in AVLDRUMS_KITS.items() if (folder / file).is_file())


def kit_notes(notes: list[MidiNote]) -> list[MidiNote]:
    """The part as the kit must receive it: on channel 0, keys mapped by KEY_MAP."""
    return [dataclasses.replace(n, channel=KIT_CHANNEL, pitch=KEY_MAP.get(n.pitch, n.pitch)) for n in notes]


def render_avldrums(kit: str, notes: list[MidiNote], sample_rate: int, frames: int,
                    folder: Path = AVLDRUMS_DIR) -> np.ndarray:
    """A GM drum part played by kit ``kit`` ('black-pearl' or 'red-zeppelin'): mono float32, ``frames`` long."""
    if kit not in AVLDRUMS_KITS:
        raise SynthError(f"unknown avldrums kit '{kit}'; the kits are {sorted(AVLDRUMS_KITS)}")
    soundfont = folder / AVLDRUMS_KITS[kit]
    if not soundfont.is_file():
        raise SynthError(f"{soundfont} is missing: {INSTALL_HINT}")
    fluidsynth = _find_fluidsynth()
    out = np.zeros(frames, np.float32)
    if not notes:
        return out
    with tempfile.TemporaryDirectory(prefix="msdm-avldrums-") as tmp:
        midi_path, wav_path = Path(tmp) / "drums.mid", Path(tmp) / "drums.wav"
        end = min(frames / sample_rate, max(n.off for n in notes) + RELEASE_TAIL_SECONDS)
        write_midi(midi_path, kit_notes(notes), KIT_PROGRAM, end)
        audio = render_stem(fluidsynth, soundfont, midi_path, wav_path, sample_rate)
    out[: min(frames, len(audio))] = audio[:frames]
    return out
