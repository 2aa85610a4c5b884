"""Instruments the project synthesises itself, with random parameters, and
per-stem effects: numpy/scipy only, vectorised, deterministic from a
numpy Generator. They widen the timbres the separator hears beyond the
General MIDI SoundFonts (issue 19).

Pitched families (voices.FAMILIES; which suit which stem in pitched_families):
plucked_string (extended Karplus-Strong), fm (2-4 operators), subtractive
(PolyBLEP oscillators into an enveloped resonant low-pass), organ (drawbar
additive with a rotor), electric_piano (modal tine with a pickup
nonlinearity), modal_piano (stiff-string partials with a hammer), and the
held-out phase_distortion (Casio CZ). Drum kits: analog, modal and the
held-out fm. Held-out families are never drawn for training: they are the
project's own unseen timbres for model selection (HOLDOUT_FAMILIES,
HOLDOUT_KITS).

    voice = draw_voice("plucked_string", "guitar", rng)
    audio = render_pitched(notes, voice, 22050, frames, rng)
    audio = apply_effects(audio, draw_effects("guitar", rng), 22050)
    # or all in one, with metadata for the track:
    audio, metadata = render_stem_synth("guitar", notes, 22050, frames, rng)
"""

from __future__ import annotations

from .drum_kits import HOLDOUT_KITS, TRAIN_KITS, Kit, draw_kit, piece_of, render_drums
from .effects import Effects, apply_effects, draw_effects
from .notes import Voice
from .stem import render_stem_synth
from .voices import FAMILIES, HOLDOUT_FAMILIES, PITCHED_STEMS, choose_family, draw_voice, pitched_families, render_pitched

__all__ = ["FAMILIES", "HOLDOUT_FAMILIES", "HOLDOUT_KITS", "PITCHED_STEMS", "TRAIN_KITS", "Effects", "Kit", "Voice",
           "apply_effects", "choose_family", "draw_effects", "draw_kit", "draw_voice", "piece_of", "pitched_families",
           "render_drums", "render_pitched", "render_stem_synth"]
