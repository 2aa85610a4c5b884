"""Calibrate the latent prior's sampling temperature on the VALID split.

A diffusion prior trained for hours on a CPU samples latents a little wider
than the data (12-25 % in every standardised channel for v2b), and the stem
autoencoder's decoder (log magnitude -> exp) turns that into stems 6-14 dB
louder than real ones, with peaks far past full scale. This picks
LatentPriorConfig.sample_scale, the factor the sampled latents are multiplied
by before decoding, so that the median level of generated stems matches the
median level of real stems of the split (least squares on log RMS over the
stems), and writes the model file with it.

    python -m training.calibrate_latent_prior --model engine/models/default.safetensors \\
        --data data/synth --split valid --windows 8 -o runs/eval/calibrated.safetensors
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from engine.audio.latent_generation import generate_latent_stems, window_samples
from engine.core.tasks import LATENT_GENERATE
from engine.errors import UserError
from engine.storage.model import MSDMModel
from training.data import scan

SCALES = tuple(np.round(np.arange(0.50, 1.0001, 0.05), 2))
# A window this quiet is silence (a stem that rests), not a level to match.
SILENT_RMS = 1e-4


def real_levels(root: Path, split: str, stems: tuple[str, ...], window: int, windows_per_track: int = 4,
                seed: int = 0) -> np.ndarray:
    """Median RMS per stem over random windows of the split's tracks (silent windows left out)."""
    rng = np.random.default_rng(seed)
    levels: list[list[float]] = [[] for _ in stems]
    for track in scan(root / split, stems).tracks:
        for n, stem in enumerate(stems):
            for path in track.files.get(stem) or []:
                audio, _ = sf.read(str(path), dtype="float32", always_2d=True)
                audio = audio.mean(axis=1)
                if len(audio) <= window:
                    continue
                for start in rng.integers(0, len(audio) - window, windows_per_track):
                    rms = float(np.sqrt(np.mean(audio[start:start + window] ** 2)))
                    if rms > SILENT_RMS:
                        levels[n].append(rms)
    return np.array([np.median(values) if values else np.nan for values in levels])


def scale_field(model: MSDMModel) -> str:
    """The config field of the scale the model's default generation decodes
    with: autoguidance_scale when it autoguides by default, else sample_scale."""
    guided = model.latent_guide is not None and model.latent_prior.config.autoguidance != 1.0
    return "autoguidance_scale" if guided else "sample_scale"


def generated_levels(model: MSDMModel, window: int, windows: int, scale: float, seed: int = 0,
                     field: str | None = None) -> np.ndarray:
    """Median RMS per stem of `windows` generated windows at sampling scale
    `scale` in `field` (default: the one default generation uses), sampled
    autoguided by the file's weight for autoguidance_scale, unguided for sample_scale."""
    prior = model.latent_prior
    original = prior.config
    field = field or scale_field(model)
    settings = LATENT_GENERATE if field == "autoguidance_scale" else LATENT_GENERATE.override(autoguidance=1.0)
    # One scale for every stem while measuring (per-stem scales are chosen from these runs).
    prior.config = dataclasses.replace(original, **{field: float(scale)}, autoguidance_stem_scales=(),
                                       sample_stem_scales=(), sample_stem_gains=())
    try:
        return levels_as_configured(model, window, windows, settings, seed)
    finally:
        prior.config = original


def levels_as_configured(model: MSDMModel, window: int, windows: int, settings, seed: int = 0) -> np.ndarray:
    """Median RMS per stem of `windows` windows generated with the file's
    config as it stands and `settings` (silent windows left out)."""
    audio = np.stack([generate_latent_stems(model, window, seed=seed + k, settings=settings)
                      for k in range(windows)])                         # [W, N, T]
    rms = np.sqrt(np.mean(audio ** 2, axis=-1))                          # [W, N]
    return np.array([np.median(column[column > SILENT_RMS]) if (column > SILENT_RMS).any() else np.nan
                     for column in rms.T])


def choose_stem_scales(real: np.ndarray, by_scale: dict[float, np.ndarray]) -> tuple[float, ...]:
    """Per stem, the scale whose generated level is closest to the real one:
    the scale multiplies each stem's sampled latents after sampling, so a
    stem's level at a scale does not depend on the other stems' scales."""
    scales = list(by_scale)
    errors = np.abs(np.log(np.stack([by_scale[s] for s in scales]) / real))     # [S, N]
    return tuple(float(scales[i]) for i in np.nanargmin(errors, axis=0))


def choose_scale(real: np.ndarray, by_scale: dict[float, np.ndarray]) -> float:
    """The scale whose generated levels are closest to the real ones in mean
    squared log ratio over the stems."""
    def error(levels: np.ndarray) -> float:
        return float(np.nanmean(np.log(levels / real) ** 2))
    return min(by_scale, key=lambda s: error(by_scale[s]))


def run(args) -> None:
    torch.set_num_threads(args.threads)
    model = MSDMModel.load(args.model)
    if model.latent_prior is None:
        raise SystemExit(f"{args.model} has no latent prior to calibrate")
    window = window_samples(model)  # one latent window of the prior (~3 s)
    field = args.field or scale_field(model)
    if field == "autoguidance_scale" and (model.latent_guide is None or model.latent_prior.config.autoguidance == 1.0):
        raise SystemExit(f"{args.model} does not autoguide by default: it has no autoguidance_scale to calibrate")
    if args.per_stem and field != "autoguidance_scale":
        raise SystemExit("--per-stem calibrates the autoguided scales (autoguidance_stem_scales): not with "
                         "--field sample_scale")
    real = real_levels(args.data, args.split, model.stems, window)
    by_scale = {s: generated_levels(model, window, args.windows, s, field=field) for s in SCALES}
    chosen = choose_scale(real, by_scale)
    print("| scale | " + " | ".join(f"{stem} dB vs real" for stem in model.stems) + " |")
    print("|---:|" + "---:|" * len(model.stems))
    for s, levels in by_scale.items():
        mark = " (chosen)" if s == chosen else ""
        print(f"| {s:.2f}{mark} | " + " | ".join(f"{20 * np.log10(g / r):+.1f}" for g, r in zip(levels, real)) + " |")
    print(f"real median RMS per stem on {args.data}/{args.split}: " + ", ".join(f"{v:.4f}" for v in real))
    prior = model.latent_prior
    per_stem = choose_stem_scales(real, by_scale) if args.per_stem else ()
    prior.config = prior.net.config = dataclasses.replace(prior.config, **{field: float(chosen)},
                                                          **({"autoguidance_stem_scales": per_stem}
                                                             if field == "autoguidance_scale" else {}))
    stems_note = (f" (per stem {', '.join(f'{n} {v:.2f}' for n, v in zip(model.stems, per_stem))})"
                  if per_stem else "")
    model.save(args.out, source=f"{model.source}; latent {field} {chosen:.2f}{stems_note} "
                                f"calibrated on {args.data}/{args.split}")
    print(f"wrote {args.out} with {field} {chosen:.2f}{stems_note}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a model file with a latent prior")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", default="valid")
    parser.add_argument("--windows", type=int, default=8, help="generated windows per scale")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--field", choices=("sample_scale", "autoguidance_scale"),
                        help="which scale to calibrate (default: the one default generation uses; sample_scale is "
                             "also imputation's, which does not autoguide by default)")
    parser.add_argument("--per-stem", action="store_true",
                        help="also choose each stem's autoguided scale (autoguidance_stem_scales): autoguidance "
                             "widens some stems more than others, and one scale leaves them unbalanced")
    parser.add_argument("-o", "--out", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        run(args)
    except UserError as error:
        parser.exit(2, f"error: {error}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
