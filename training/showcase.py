"""Listening material for the docs: the README's example mix, a generated piece
and an imputation (drums given, the rest generated), each with a spectrogram.

    python -m training.showcase --model engine/models/default.safetensors \
        --data data/synth --docs docs --examples examples

Everything comes from the project's own synthetic test split and model.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from engine.atomic import write_atomic
from engine.audio.files import read_audio, write_audio
from engine.audio.pipeline import generate_stems
from engine.core.tasks import GENERATE, IMPUTE, SamplerSettings
from engine.storage.loading import load_models
from engine.storage.model import ModelSet

from .figures import plot_spectrograms


def pick_track(data_dir: Path, split: str = "test", min_seconds: float = 12.0) -> Path:
    """The first track of the split (in name order) that is long enough."""
    for folder in sorted((data_dir / split).glob("Track*")):
        mix = folder / "mix.wav"
        if mix.is_file() and read_audio(mix).seconds >= min_seconds:
            return folder
    raise FileNotFoundError(f"no track of at least {min_seconds} s under {data_dir / split}")


def example_mix(track: Path, out: Path, seconds: float) -> Path:
    """A 16-bit FLAC excerpt of the track's mix (small enough to ship)."""
    audio = read_audio(track / "mix.wav")
    return write_audio(out, audio.samples[:, : int(seconds * audio.sample_rate)], audio.sample_rate, bits="16")


def _write_set(folder: Path, named: dict[str, np.ndarray], rate: int) -> None:
    for name, samples in named.items():
        write_audio(folder / f"{name}.flac", np.clip(samples[None], -1, 1), rate, bits="16")


def generation_example(models: ModelSet, out: Path, seconds: float, seed: int,
                       settings: SamplerSettings = GENERATE) -> dict[str, np.ndarray]:
    frames = int(seconds * models.sample_rate)
    stems = generate_stems(models, frames, seed=seed, settings=settings)
    named = {stem: stems[n] for n, stem in enumerate(models.stems)}
    named["mix"] = stems.sum(0)
    _write_set(out, named, models.sample_rate)
    plot_spectrograms(named, models.sample_rate, out / "spectrogram.png", title=f"generated (seed {seed})")
    return named


def imputation_example(models: ModelSet, track: Path, out: Path, seconds: float, seed: int,
                       given: Sequence[str] = ("drums",), settings: SamplerSettings = IMPUTE) -> dict[str, np.ndarray]:
    frames = int(seconds * models.sample_rate)
    truth = np.zeros((len(models.stems), frames), dtype=np.float32)
    for n, stem in enumerate(models.stems):
        path = track / f"{stem}.wav"
        if path.is_file():
            truth[n] = read_audio(path).samples[0, :frames]
    indices = tuple(models.stems.index(g) for g in given)
    stems = generate_stems(models, frames, seed=seed, settings=settings, given=truth, given_stems=indices)
    named = {f"{stem} (given)" if n in indices else stem: stems[n] for n, stem in enumerate(models.stems)}
    named["mix"] = stems.sum(0)
    _write_set(out, {k.replace(" (given)", "_given"): v for k, v in named.items()}, models.sample_rate)
    plot_spectrograms(named, models.sample_rate, out / "spectrogram.png",
                      title=f"{' + '.join(given)} given ({track.name}), the rest generated (seed {seed})")
    return named


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", help="model file (default: the shipped model)")
    parser.add_argument("--data", type=Path, required=True, help="synthetic dataset (its test split is used)")
    parser.add_argument("--docs", type=Path, default=Path("docs"), help="where audio and pictures go")
    parser.add_argument("--examples", type=Path, default=Path("examples"), help="where the example mix goes")
    parser.add_argument("--seconds", type=float, default=12.0, help="length of every example")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--steps", type=int, help="sampler steps for generation and imputation (default: paper's)")
    args = parser.parse_args(argv)
    models = load_models(args.model)
    track = pick_track(args.data, min_seconds=args.seconds)
    example_mix(track, args.examples / "example_mix.flac", args.seconds)
    generation_example(models, args.docs / "audio" / "generation", args.seconds, args.seed,
                       GENERATE.override(steps=args.steps))
    imputation_example(models, track, args.docs / "audio" / "imputation", args.seconds, args.seed,
                       settings=IMPUTE.override(steps=args.steps))
    write_atomic(args.examples / "example_mix.json", json.dumps(
        {"track": track.name, "split": "test", "seconds": args.seconds,
         "source": "msdm dataset synth --tracks 400 --seed 0 (test split)"}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
