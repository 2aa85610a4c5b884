"""CPU time to render a 60 s stem of a dense 4-voice part with each
synthesised instrument family (and a drum part with each kit), effects off
and on: the dataset renderer's cost per stem.

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/instruments.py [--seeds 3]

Times are process CPU seconds of one thread (time.process_time), the median
over voices drawn with --seeds seeds: the machines are shared, and CPU time
is less disturbed by other jobs than wall time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.synth.corpus import MidiNote  # noqa: E402
from training.synth.instruments import (FAMILIES, HOLDOUT_KITS, TRAIN_KITS, apply_effects, draw_effects,  # noqa: E402
                                        draw_kit, draw_voice, render_drums, render_pitched)
from training.synth.instruments.effects import CHANCES  # noqa: E402

SR = 22050
SECONDS = 60.0
BASE_PITCH = {"bass": 36, "guitar": 52, "piano": 55}


def four_voice_part(stem: str, seed: int = 0) -> list[MidiNote]:
    """Four voices, each playing back-to-back notes of 0.25-1 s for SECONDS."""
    rng = np.random.default_rng(seed)
    notes = []
    for channel in range(4):
        t = 0.0
        while t < SECONDS:
            length = float(rng.uniform(0.25, 1.0))
            pitch = int(BASE_PITCH[stem] + 5 * channel + rng.integers(-4, 5))
            notes.append(MidiNote(channel, pitch, t, t + 0.9 * length, int(rng.integers(40, 120))))
            t += length
    return notes


def drum_part() -> list[MidiNote]:
    """Eighth notes at 120 bpm: hats (open on the last), kick and snare, a tom and a crash every bar."""
    notes = []
    for bar in range(int(SECONDS / 2)):
        for eighth in range(8):
            t = bar * 2.0 + eighth * 0.25
            notes.append(MidiNote(9, 46 if eighth == 7 else 42, t, t + 0.2, 80))
            if eighth in (0, 3, 4):
                notes.append(MidiNote(9, 36, t, t + 0.2, 105))
            if eighth in (2, 6):
                notes.append(MidiNote(9, 38, t, t + 0.2, 110))
        notes += [MidiNote(9, 49, bar * 2.0, bar * 2.0 + 1.5, 100), MidiNote(9, 45, bar * 2.0 + 1.75, bar * 2.0 + 2, 90)]
    return notes


def _cpu(fn) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="voices drawn per family (median reported)")
    args = parser.parse_args(argv)
    frames = int((SECONDS + 1) * SR)
    print(f"{'family':18s} {'stem':7s} {'notes':>5s} {'render s':>9s} {'+effects s':>10s}")
    rows = [(family, stem) for family, spec in FAMILIES.items() for stem in spec.stems]
    rows += [(f"kit:{kit}", "drums") for kit in TRAIN_KITS + HOLDOUT_KITS]
    for family, stem in rows:
        notes = drum_part() if stem == "drums" else four_voice_part(stem)
        render, chain = [], []
        for seed in range(args.seeds):
            rng = np.random.default_rng(seed)
            if stem == "drums":
                kit = draw_kit(rng, family.split(":")[1])
                audio = []
                render.append(_cpu(lambda: audio.append(render_drums(notes, kit, SR, frames, rng))))
            else:
                voice = draw_voice(family, stem, rng)
                audio = []
                render.append(_cpu(lambda: audio.append(render_pitched(notes, voice, SR, frames, rng))))
            effects = draw_effects(stem, rng, chances={name: 1.0 for name in CHANCES})
            chain.append(_cpu(lambda: apply_effects(audio[0], effects, SR)))
        print(f"{family:18s} {stem:7s} {len(notes):5d} {statistics.median(render):9.3f} {statistics.median(chain):10.3f}")


if __name__ == "__main__":
    main()
