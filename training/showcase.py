"""Listening material for the docs: the README's example mix, a generated piece,
an imputation (drums given, the rest generated) and the example mix separated
by the model's default, each with a spectrogram, and one picture of the real
stems beside the generated and the imputed ones
(docs/images/real-generated-imputed.png).

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
from engine.audio.pipeline import generate_stems, separate_array
from engine.core.tasks import GENERATE, IMPUTE, SamplerSettings, generation_settings, separation_settings
from engine.storage.loading import load_models
from engine.storage.model import ModelSet

from .evaluate import si_snr
from .figures import plot_separation, plot_spectrogram_grid, plot_spectrograms

PARTS = ("example", "generation", "imputation", "separation")


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


def comparison_figure(models: ModelSet, track: Path, generated: dict[str, np.ndarray],
                      imputed: dict[str, np.ndarray], out_png: Path, seconds: float, given: str = "drums") -> Path:
    """Per stem, a row: the real stem of the track, a generated one, the one
    imputed from the track's given stem (up to 5 kHz, where the notes are)."""
    frames = int(seconds * models.sample_rate)
    panels = {}
    for stem in models.stems:
        panels[f"{stem}: real ({track.name})"] = read_audio(track / f"{stem}.wav").samples[0, :frames]
        panels[f"{stem}: generated"] = generated[stem]
        label = f"{stem} (given)" if stem == given else stem
        panels[f"{stem}: {'given' if stem == given else f'imputed from {given}'}"] = imputed[label]
    return plot_spectrogram_grid(panels, models.sample_rate, out_png, columns=3, max_hz=5000,
                                 title="real stems, generated stems, stems imputed from the real drums")


def separation_example(models: ModelSet, track: Path, out: Path, seconds: float, seed: int,
                       steps: int | None = None) -> dict[str, float]:
    """The track's first `seconds` separated as `msdm separate` does by default
    (the first guess, for a model that has a separator); returns SI-SNRi per stem."""
    frames = int(seconds * models.sample_rate)
    truth = {stem: read_audio(track / f"{stem}.wav").samples[0, :frames] for stem in models.stems}
    mix = sum(truth.values())
    settings = separation_settings("dirac", num_stems=len(models.stems), isdm=models.is_isdm,
                                   has_first_guess=getattr(models, "separator", None) is not None, steps=steps,
                                   method=None if steps is None else "dpmpp2m")  # few steps: the stable solver
    stems = separate_array(models, mix[None], models.sample_rate, settings=settings, seed=seed)[:, 0]
    named = {stem: stems[n] for n, stem in enumerate(models.stems)}
    scores = {stem: float(si_snr(named[stem], truth[stem]) - si_snr(mix, truth[stem])) for stem in models.stems}
    _write_set(out, named, models.sample_rate)
    how = ("the first guess" if settings.warm_start and settings.steps == 0
           else f"{settings.nfe} network evaluations")
    plot_separation(truth, named, models.sample_rate, out / "spectrogram.png", scores,
                    title=f"{track.name}, first {seconds:g} s: separated by {how}")
    return scores


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", help="model file (default: the shipped model)")
    parser.add_argument("--data", type=Path, required=True, help="synthetic dataset (its test split is used)")
    parser.add_argument("--docs", type=Path, default=Path("docs"), help="where audio and pictures go")
    parser.add_argument("--examples", type=Path, default=Path("examples"), help="where the example mix goes")
    parser.add_argument("--seconds", type=float, default=12.0, help="length of every example")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--steps", type=int, help="sampler steps (default: the default prior's for "
                                                   "generation and imputation, the model's default for separation)")
    parser.add_argument("--only", nargs="+", choices=PARTS, default=PARTS, help="make only these (default: all)")
    args = parser.parse_args(argv)
    models = load_models(args.model)
    try:
        track = pick_track(args.data, min_seconds=args.seconds)
    except FileNotFoundError as error:
        parser.error(f"{error}: render one with `msdm dataset synth --out {args.data} --tracks 400 --seed 0`")
    if "example" in args.only:
        example_mix(track, args.examples / "example_mix.flac", args.seconds)
        write_atomic(args.examples / "example_mix.json", json.dumps(
            {"track": track.name, "split": "test", "seconds": args.seconds,
             "source": "msdm dataset synth --tracks 400 --seed 0 (test split)"}, indent=2) + "\n")
    # generate and impute as `msdm generate/impute` do: the latent prior when the model has one.
    has_latent = models.latent is not None
    generated = imputed = None
    if "generation" in args.only:
        generated = generation_example(models, args.docs / "audio" / "generation", args.seconds, args.seed,
                                       generation_settings("generate", has_latent, steps=args.steps))
    if "imputation" in args.only:
        imputed = imputation_example(models, track, args.docs / "audio" / "imputation", args.seconds, args.seed,
                                     settings=generation_settings("impute", has_latent, steps=args.steps))
    if generated is not None and imputed is not None:
        comparison_figure(models, track, generated, imputed, args.docs / "images" / "real-generated-imputed.png",
                          args.seconds)
    if "separation" in args.only:
        scores = separation_example(models, track, args.docs / "audio" / "separation", args.seconds, args.seed,
                                    steps=args.steps)
        print("separation SI-SNRi (dB): " + ", ".join(f"{stem} {value:+.2f}" for stem, value in scores.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
