"""Fit the latent prior's per-band level maps (LatentPriorConfig.sample_bands,
sample_band_in, sample_band_out; engine.core.band_levels) on the VALID split.

Run after calibrate_frame_levels: the band maps act after the frame-level
maps, on what they give. For each chosen stem, the level of every sounding
STFT frame in each of `--bands` log-spaced bands, of `--windows` windows
generated unguided with the file as it stands (no limiter), against the same
of the real windows evaluate-generation compares with: a quantile map per
band. As for the frame maps, Griffin-Lim stands between the map and the
audio, so the maps are refined `--rounds` times on newly generated windows
(each output point moved by what the mapped frames still miss at that level).
The band levels' mean and spread before and after are printed.

    python -m training.calibrate_band_levels --model runs/eval/levels.safetensors \\
        --data data/synth --stems drums -o runs/eval/bands.safetensors
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import torch

from engine.audio.latent_generation import window_samples
from engine.core.band_levels import fit_band_maps, flatten_band_maps, sounding_band_levels, split_band_maps
from engine.errors import UserError
from training.calibrate_frame_levels import generate_windows, load_latent_model, refined_outputs
from training.generation_candidates import load_real_windows


def stem_band_levels(model, windows: np.ndarray, stem: int, bands: int) -> np.ndarray:
    """[W, N, T] windows -> [B, sounding frames] band levels of one stem."""
    autoencoder = model.autoencoder
    with torch.no_grad():
        return np.concatenate([
            sounding_band_levels(autoencoder.stft(torch.from_numpy(np.ascontiguousarray(x, np.float32))[None]).abs()[0],
                                 bands) for x in windows[:, stem]], axis=1)


def refine_band_maps(maps, mapped: np.ndarray, real: np.ndarray):
    """One round: per band, out += (real quantile - mapped quantile) at each
    output level, kept non-decreasing (calibrate_frame_levels.refine_maps, per band)."""
    return [(points_in, tuple(np.round(refined_outputs(points_out, m, r), 3)))
            for (points_in, points_out), m, r in zip(maps, mapped, real)]


def spread_only(real: np.ndarray, generated: np.ndarray) -> np.ndarray:
    """Real band levels [B, frames] moved, band by band, so their median is
    the generated one's: a map fitted to them restores the real spread over
    frames but keeps the generated spectral balance (which differs from kit
    to kit, where the spread is what the prior blurs)."""
    return real - np.median(real, axis=1, keepdims=True) + np.median(generated, axis=1, keepdims=True)


def summary(label: str, levels: np.ndarray) -> str:
    return (f"| {label} | " + " / ".join(f"{v:.1f}" for v in levels.mean(1)) + " | "
            + " / ".join(f"{v:.1f}" for v in levels.std(1)) + " |")


def run(args) -> None:
    torch.set_num_threads(args.threads)
    if args.windows < 2 or not 0 <= args.rounds <= 8 or not 2 <= args.points <= 64 or not 1 <= args.bands <= 64:
        raise UserError("need --windows >= 2, --rounds 0-8, --points 2-64, --bands 1-64")
    if not args.data.is_dir():
        raise UserError(f"no dataset folder '{args.data}'")
    model = load_latent_model(args.model)
    prior = model.latent_prior
    unknown = [stem for stem in args.stems if stem not in model.stems]
    if unknown:
        raise UserError(f"--stems: {', '.join(unknown)} not among the model's stems ({', '.join(model.stems)})")
    chosen = [model.stems.index(stem) for stem in args.stems]
    window = window_samples(model)
    reference = load_real_windows(args.data, model.stems, model.sample_rate, window, 1, split=args.split).reference
    real = {n: stem_band_levels(model, reference, n, args.bands) for n in chosen}
    original = dataclasses.replace(prior.config, sample_bands=0, sample_band_in=(), sample_band_out=())
    prior.config = prior.net.config = original
    audio = generate_windows(model, window, args.windows, args.seed, limit=False)
    maps: list = [None] * len(model.stems)
    report = {n: [summary("real", real[n])] for n in chosen}
    drawn = {n: {"real (VALID)": real[n]} for n in chosen}
    for round_ in range(args.rounds + 1):
        for n in chosen:
            generated = stem_band_levels(model, audio, n, args.bands)
            report[n].append(summary("generated" if round_ == 0 else f"mapped, round {round_}", generated))
            if round_ == 0:
                drawn[n]["generated"] = generated
            # --spread-only keeps the unmapped generation's medians in every round.
            target = spread_only(real[n], drawn[n]["generated"]) if args.spread_only else real[n]
            maps[n] = fit_band_maps(generated, target, args.points) if round_ == 0 or maps[n] is None else \
                refine_band_maps(maps[n], generated, target)
        flat_in, flat_out = flatten_band_maps(maps, args.bands, args.points)
        prior.config = prior.net.config = dataclasses.replace(original, sample_bands=args.bands,
                                                              sample_band_in=flat_in, sample_band_out=flat_out)
        maps = split_band_maps(flat_in, flat_out, len(model.stems), args.bands)
        audio = generate_windows(model, window, args.windows, args.seed + (round_ + 1) * args.windows, limit=False)
    for n in chosen:
        drawn[n]["generated, band maps"] = stem_band_levels(model, audio, n, args.bands)
        report[n].append(summary("mapped (the file's maps)", drawn[n]["generated, band maps"]))
        if args.figure:
            from training.figures import plot_band_levels

            plot_band_levels(drawn[n], model.stems[n], args.figure.with_name(f"{args.figure.stem}-{model.stems[n]}.png"))
    text = "\n\n".join(f"{model.stems[n]}: band level mean dB (low to high) | spread (std) dB\n\n| frames | mean | std |\n"
                       "|---|---|---|\n" + "\n".join(rows) for n, rows in report.items())
    print(text)
    if args.markdown:
        args.markdown.write_text(f"Band levels, {args.data}/{args.split}: {len(reference)} real windows, "
                                 f"{args.windows} generated per row\n\n{text}\n")
    model.save(args.out, source=f"{model.source}; band-level maps of {', '.join(args.stems)} ({args.bands} bands, "
                                f"{args.points} points) fitted on {args.data}/{args.split}")
    print(f"wrote {args.out}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a model file with a latent prior")
    parser.add_argument("--data", type=Path, required=True, help="a dataset folder (VALID is read)")
    parser.add_argument("--split", default="valid")
    parser.add_argument("--stems", nargs="+", metavar="STEM", default=["drums"],
                        help="stems whose band levels are mapped (the others are left alone; default drums)")
    parser.add_argument("--bands", type=int, default=16, help="log-spaced bands of the autoencoder's STFT")
    parser.add_argument("--windows", type=int, default=32, help="generated windows to fit on (and again each round)")
    parser.add_argument("--points", type=int, default=17, help="points of each band's map")
    parser.add_argument("--rounds", type=int, default=1, help="refinements, each on newly generated windows")
    parser.add_argument("--spread-only", action="store_true",
                        help="match each band's spread over frames, keep the generated band medians")
    parser.add_argument("--seed", type=int, default=3000,
                        help="first seed of the generated windows (apart from evaluate-generation's and the frame maps')")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--markdown", type=Path, help="also write the band-level table here")
    parser.add_argument("--figure", type=Path, help="also draw each stem's band levels (PATH-STEM.png)")
    parser.add_argument("-o", "--out", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        run(args)
    except UserError as error:
        parser.exit(2, f"error: {error}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
