"""The pitched families: which suit which stem, drawing a voice, rendering a part."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..corpus import MidiNote
from . import dsp, fm, keys, organ, phase_distortion, plucked, subtractive
from .notes import Voice, note_spans

PITCHED_STEMS = ("bass", "guitar", "piano")


@dataclass(frozen=True)
class Family:
    draw: Callable[[str, np.random.Generator], dict]
    render: Callable[..., np.ndarray]
    max_vibrato_cents: float  # 0: the instrument has no vibrato (a piano)
    max_scoop_cents: float
    stems: dict  # stem -> weight when a track draws a family for that stem


FAMILIES = {
    "plucked_string": Family(plucked.draw, plucked.render, 8.0, 20.0, {"guitar": 0.55, "bass": 0.5}),
    "fm": Family(fm.draw, fm.render, 10.0, 20.0, {"guitar": 0.15, "bass": 0.2, "piano": 0.15}),
    "subtractive": Family(subtractive.draw, subtractive.render, 15.0, 40.0,
                          {"guitar": 0.2, "bass": 0.3, "piano": 0.15}),
    "organ": Family(organ.draw, organ.render, 0.0, 0.0, {"guitar": 0.1, "piano": 0.15}),
    "electric_piano": Family(keys.draw_electric_piano, keys.render_electric_piano, 0.0, 0.0, {"piano": 0.25}),
    "modal_piano": Family(keys.draw_piano, keys.render_piano, 0.0, 0.0, {"piano": 0.3}),
    "phase_distortion": Family(phase_distortion.draw, phase_distortion.render, 12.0, 30.0,
                               {"guitar": 1.0, "bass": 1.0, "piano": 1.0}),
}

# Never drawn for training: the project's own held-out timbres, for model selection.
HOLDOUT_FAMILIES = ("phase_distortion",)


def _check_stem(stem: str) -> None:
    if stem not in PITCHED_STEMS:
        raise ValueError(f"'{stem}' is not a pitched stem; one of {', '.join(PITCHED_STEMS)}")


def pitched_families(stem: str, holdout: bool = False) -> list[str]:
    """The families that may play ``stem``: the training ones, or with
    ``holdout`` the held-out ones only."""
    _check_stem(stem)
    return [name for name, family in FAMILIES.items()
            if stem in family.stems and (name in HOLDOUT_FAMILIES) == holdout]


def choose_family(stem: str, rng: np.random.Generator, holdout: bool = False) -> str:
    names = pitched_families(stem, holdout)
    weights = np.array([FAMILIES[name].stems[stem] for name in names])
    return str(names[int(rng.choice(len(names), p=weights / weights.sum()))])


def draw_voice(family: str, stem: str, rng: np.random.Generator) -> Voice:
    """Random parameters of one instrument of ``family`` playing ``stem``."""
    _check_stem(stem)
    if family not in FAMILIES:
        raise ValueError(f"unknown instrument family '{family}'; one of {', '.join(FAMILIES)}")
    spec = FAMILIES[family]
    if stem not in spec.stems:
        raise ValueError(f"family '{family}' does not play the {stem} stem (it plays {', '.join(spec.stems)})")
    params = spec.draw(stem, rng)
    release_s = float(params.pop("release_s"))
    vibrato = float(rng.uniform(0, spec.max_vibrato_cents)) if rng.random() < 0.5 else 0.0
    scoop = -float(rng.uniform(0, spec.max_scoop_cents)) if rng.random() < 0.3 else 0.0
    return Voice(
        family=family, stem=stem, params=params,
        detune_cents=float(rng.uniform(-5, 5)),
        vibrato_cents=vibrato, vibrato_hz=float(rng.uniform(4.0, 6.5)), vibrato_delay_s=float(rng.uniform(0.1, 0.6)),
        scoop_cents=scoop, scoop_s=float(rng.uniform(0.01, 0.06)),
        velocity_curve=float(rng.uniform(0.8, 2.2)),
        release_s=release_s,
    )


def render_pitched(notes: list[MidiNote], voice: Voice, sample_rate: int, frames: int,
                   rng: np.random.Generator) -> np.ndarray:
    """The part as mono float32 of ``frames`` samples, peak <= 0.99 (scaled, not clipped)."""
    if voice.family not in FAMILIES:
        raise ValueError(f"unknown instrument family '{voice.family}'; one of {', '.join(FAMILIES)}")
    if sample_rate < 8000 or frames < 0:
        raise ValueError(f"need sample_rate >= 8000 and frames >= 0, got {sample_rate} and {frames}")
    spans = note_spans(notes, voice, sample_rate, frames)
    audio = FAMILIES[voice.family].render(spans, voice, sample_rate, frames, rng)
    return dsp.limit_peak(audio)
