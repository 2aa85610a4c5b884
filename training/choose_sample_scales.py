"""Choose each stem's unguided sampling scale of the latent prior by how real
its generations sound, not by their loudness.

`calibrate_latent_prior` sets one scale so that generated stems are as loud
as real ones. With the span projection that leaves the samples narrower than
the data: a wider scale gives the decoded spectra their contrast back, and
every realism measure improves up to a point that differs per stem (docs/
models.md, fifth session of 2026-12-06). The scale multiplies each stem's
sampled latents on their own after sampling, and each stem is decoded and
judged on its own, so one `msdm evaluate-generation` run per scale (the whole
file at that scale) measures every stem at it, and choosing per stem from
those runs is exact.

Per stem, the chosen scale minimises the mean, over the runs given for it
(seeds, datasets), of the sum of the generation's normalised log-mel and
structure distances (0 = real windows of other tracks, 1 = noise shaped to
them); with `--clarity`, for the pitched stems also of a pitch-clarity
distance on the same scale, |1 - clarity ratio| / (1 - the shaped noise's
clarity ratio) (0 = as periodic as real stems, 1 = as shaped noise), so
every realism measure of issue 20 has its say. A wider scale also makes the loud parts louder, so with `--data` the
stems are then generated at the chosen scales and each is given the gain
that brings its median RMS to the real stems' (as calibrate_latent_prior
matches levels; LatentPriorConfig.sample_stem_gains). The file's other
settings stay as they are.

    python -m training.choose_sample_scales --model M -o OUT \\
        --run 0.95 gen-s0-0.95.csv gen-s1-0.95.csv --run 1.1 gen-s0-1.1.csv gen-s1-1.1.csv ...
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
from pathlib import Path

import numpy as np
import torch

from engine.audio.latent_generation import window_samples
from engine.core.tasks import LATENT_GENERATE
from engine.errors import ModelFileError
from engine.storage.model import MSDMModel
from training.calibrate_latent_prior import levels_as_configured, real_levels
from training.pack_model import set_latent_settings

MEASURES = ("log-mel distance", "structure distance")
CLARITY = "clarity distance"
SHOWN = (*MEASURES, "clarity ratio", CLARITY)


def model_rows(path: Path) -> dict[tuple[str, str], float]:
    """(measure, stem) -> value of a generation run's model row (evaluate-generation's CSV)."""
    if not path.is_file():
        raise SystemExit(f"error: no CSV '{path}' (write one with msdm evaluate-generation --csv)")
    with open(path, newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["task"] == "generate"]
    model = [r for r in rows if r["method"].startswith("model")]
    if not model:
        raise SystemExit(f"{path}: no generation row of a model (an evaluate-generation CSV with --tasks generate)")
    out = {(r["metric"], r["stem"]): float(r["value"]) for r in model}
    noise = {r["stem"]: float(r["value"]) for r in rows
             if r["method"].startswith("shaped noise") and r["metric"] == "clarity ratio"}
    for stem, ratio in noise.items():
        if ("clarity ratio", stem) in out and ratio < 1:
            out[(CLARITY, stem)] = abs(1.0 - out[("clarity ratio", stem)]) / (1.0 - ratio)
    return out


def measured(runs: dict[float, list[Path]], stems: tuple[str, ...]) -> dict[float, dict[tuple[str, str], float]]:
    """scale -> (measure, stem) -> mean over that scale's runs."""
    out = {}
    for scale, paths in runs.items():
        tables = [model_rows(p) for p in paths]
        out[scale] = {(m, s): float(np.mean([t[(m, s)] for t in tables])) for m in SHOWN for s in stems
                      if all((m, s) in t for t in tables)}
    return out


def choose(table: dict[float, dict[tuple[str, str], float]], stems: tuple[str, ...],
           clarity: bool = False) -> tuple[float, ...]:
    """Per stem, the scale with the least summed realism distance (ties: the
    smaller scale); `clarity`: the clarity distance counts too, for the stems
    that have one (the pitched ones) at every scale."""
    def cost(scale: float, stem: str) -> float:
        missing = [m for m in MEASURES if (m, stem) not in table[scale]]
        if missing:
            raise SystemExit(f"error: the runs at scale {scale:g} lack {', '.join(missing)} for {stem}")
        pitched = clarity and all((CLARITY, stem) in table[s] for s in table)
        return sum(table[scale][(m, stem)] for m in (*MEASURES, *((CLARITY,) if pitched else ())))
    return tuple(min(sorted(table), key=lambda scale: cost(scale, stem)) for stem in stems)


def level_gains(model: MSDMModel, scales: tuple[float, ...], data: Path, split: str,
                windows: int, rounds: int = 3) -> tuple[float, ...]:
    """Per stem, real median RMS / generated median RMS at `scales` (unguided,
    no gains yet): the gain that matches each stem's level again."""
    prior = model.latent_prior
    original = prior.config
    window = window_samples(model)
    real = real_levels(data, split, model.stems, window)
    gains = np.ones(len(real))
    try:
        # Decoded stems pass the soft limiter after the gain, which holds their
        # peaks back, so one measurement under-corrects a loud stem: the gain
        # is measured again with itself applied until it settles.
        for _ in range(rounds):
            prior.config = dataclasses.replace(original, sample_stem_scales=scales,
                                               sample_stem_gains=tuple(float(g) for g in gains))
            generated = levels_as_configured(model, window, windows, LATENT_GENERATE.override(autoguidance=1.0))
            gains = np.clip(gains * real / generated, 0.01, 10.0)
    finally:
        prior.config = original
    return tuple(round(float(g), 4) for g in gains)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="the model file whose prior the runs sampled")
    parser.add_argument("--run", nargs="+", action="append", required=True, metavar=("SCALE", "CSV"),
                        help="a scale and the evaluate-generation CSVs of the model sampled at it (repeat per scale)")
    parser.add_argument("--data", type=Path, help="dataset whose real stems' levels the chosen scales are matched "
                                                  "to (default: no gains)")
    parser.add_argument("--split", default="valid")
    parser.add_argument("--windows", type=int, default=16, help="generated windows that measure the levels")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clarity", action="store_true",
                        help="count the pitch-clarity distance of the pitched stems in the choice as well")
    parser.add_argument("-o", "--out", type=Path, required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    runs: dict[float, list[Path]] = {}
    for scale, *paths in args.run:
        if not paths:
            parser.error(f"--run {scale}: give the CSVs of that scale")
        try:
            value = float(scale)
        except ValueError:
            parser.error(f"--run {scale}: the first value is the scale, a number")
        runs.setdefault(value, []).extend(Path(p) for p in paths)
    counts = {len(paths) for paths in runs.values()}
    if len(counts) != 1:
        parser.error("give every scale the same runs (the same seeds and datasets)")
    if args.data is not None and not (args.data / args.split).is_dir():
        parser.exit(2, f"error: no dataset split folder '{args.data / args.split}'\n")
    try:
        model = MSDMModel.load(args.model)
    except ModelFileError as error:
        parser.exit(2, f"error: {error}\n")
    if model.latent_prior is None:
        parser.exit(2, f"error: {args.model} has no latent prior\n")
    stems = model.stems
    table = measured(runs, stems)
    chosen = choose(table, stems, clarity=args.clarity)
    counted = (*MEASURES, CLARITY) if args.clarity else MEASURES
    print("| scale | " + " | ".join(f"{m} {s}" for m in SHOWN for s in stems) + " |")
    print("|---:|" + "---:|" * (len(SHOWN) * len(stems)))
    for scale in sorted(table):
        cells = [(f"{table[scale][(m, s)]:.2f}" if (m, s) in table[scale] else "-")
                 + ("*" if chosen[i] == scale and m in counted else "")
                 for m in SHOWN for i, s in enumerate(stems)]
        print(f"| {scale:g} | " + " | ".join(cells) + " |")
    gains = level_gains(model, chosen, args.data, args.split, args.windows) if args.data is not None else ()
    try:
        notes = set_latent_settings(model, sample_stem_scales=chosen, sample_stem_gains=gains)
    except ValueError as error:
        parser.exit(2, f"error: {error}\n")
    model.save(args.out, source="; ".join([model.source, *notes]))
    print(f"wrote {args.out} with sampling scales " + ", ".join(f"{s} {v:g}" for s, v in zip(stems, chosen))
          + ("; gains " + ", ".join(f"{s} {20 * np.log10(g):+.1f} dB" for s, g in zip(stems, gains)) if gains else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
