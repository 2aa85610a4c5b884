"""A listening-free sanity figure: one note (or one bar of drums) per family.

    PYTHONPATH=. python -m training.synth.instruments.showcase docs/images/instruments.png
"""

from __future__ import annotations

import argparse

import numpy as np

from ..corpus import MidiNote
from .drum_kits import HOLDOUT_KITS, TRAIN_KITS, draw_kit, render_drums
from .voices import FAMILIES, HOLDOUT_FAMILIES, draw_voice, render_pitched

PITCH = {"bass": 40, "guitar": 57, "piano": 60}
GROOVE = [(0.0, 36), (0.0, 42), (0.25, 42), (0.5, 38), (0.5, 42), (0.75, 42), (1.0, 36), (1.0, 46), (1.5, 38),
          (1.5, 49), (1.75, 45)]


def family_examples(sample_rate: int = 22050, seed: int = 0, seconds: float = 2.0) -> dict[str, np.ndarray]:
    """{label: mono audio}: for each pitched family and stem it plays, one note
    (1 s held) of a voice drawn with ``seed``; for each kit, a short groove."""
    frames = int(seconds * sample_rate)
    out = {}
    for family, spec in FAMILIES.items():
        for stem in spec.stems:
            rng = np.random.default_rng(seed)
            voice = draw_voice(family, stem, rng)
            kind = voice.params.get("kind")
            label = f"{family}{f' ({kind})' if kind else ''}: {stem}" + (" [held out]" if family in HOLDOUT_FAMILIES
                                                                        else "")
            out[label] = render_pitched([MidiNote(0, PITCH[stem], 0.05, 1.05, 100)], voice, sample_rate, frames, rng)
    for family in TRAIN_KITS + HOLDOUT_KITS:
        rng = np.random.default_rng(seed)
        notes = [MidiNote(9, key, 0.05 + t, 0.15 + t, 100) for t, key in GROOVE]
        label = f"drums: {family} kit" + (" [held out]" if family in HOLDOUT_KITS else "")
        out[label] = render_drums(notes, draw_kit(rng, family), sample_rate, frames, rng)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_png", help="where to write the figure (written atomically)")
    parser.add_argument("--seed", type=int, default=0, help="the voices' random draw")
    args = parser.parse_args(argv)
    from training.figures import plot_spectrogram_grid

    sample_rate = 22050
    plot_spectrogram_grid(family_examples(sample_rate, args.seed), sample_rate, args.out_png,
                          title=f"Synthesised instruments, one note per family and stem (seed {args.seed})")


if __name__ == "__main__":
    main()
