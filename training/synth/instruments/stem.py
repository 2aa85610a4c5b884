"""The integration point for the dataset renderer: one stem of one track
rendered by a synthesised instrument with random parameters and effects."""

from __future__ import annotations

import numpy as np

from ..corpus import MidiNote
from .drum_kits import HOLDOUT_KITS, TRAIN_KITS, draw_kit, render_drums
from .effects import apply_effects, draw_effects
from .voices import choose_family, draw_voice, render_pitched


def render_stem_synth(stem: str, notes: list[MidiNote], sample_rate: int, frames: int, rng: np.random.Generator,
                      holdout: bool = False) -> tuple[np.ndarray, dict]:
    """Draw an instrument for ``stem`` (a training family, or with ``holdout``
    a held-out one), render ``notes`` with it, apply random effects.

    Returns (mono float32 of ``frames`` samples, peak <= 0.99; metadata to
    store with the track: source, family, the instrument's and effects'
    parameters). Independent random streams for the instrument, the
    performance and the effects, so that changing one's draws does not
    change the others'.
    """
    instrument_rng, performance_rng, effects_rng = rng.spawn(3)
    if stem == "drums":
        family = str(instrument_rng.choice(HOLDOUT_KITS if holdout else TRAIN_KITS))
        kit = draw_kit(instrument_rng, family)
        audio = render_drums(notes, kit, sample_rate, frames, performance_rng)
        instrument = kit.to_json()
    else:
        family = choose_family(stem, instrument_rng, holdout)
        voice = draw_voice(family, stem, instrument_rng)
        audio = render_pitched(notes, voice, sample_rate, frames, performance_rng)
        instrument = voice.to_json()
    effects = draw_effects(stem, effects_rng)
    audio = apply_effects(audio, effects, sample_rate)
    metadata = {"source": "synth", "family": family, "holdout": bool(holdout), "instrument": instrument,
                "effects": effects.to_json()}
    return audio, metadata
