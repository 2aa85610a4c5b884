"""Fit the latent prior's frame-level maps (LatentPriorConfig.sample_level_in
and sample_level_out) on the VALID split.

For each stem, the level of every STFT frame (mean power over the bins, dB;
engine.core.frame_levels) of `--windows` windows generated unguided with the
file's sampling scales, against the same of the real windows evaluate-generation
compares with (the reference half of the split's usable windows): a quantile
map from the first to the second (fit_level_map). Griffin-Lim stands between
the map and the audio: a frame's level in the resynthesised stem is also its
overlapping neighbours' (hop 256 of 1024), so a steep map does not stick at
once (at scale 1.6 the 95th percentile of the piano's frame levels sat 13 dB
over real after the first fit). So the map is refined `--rounds` times:
windows are generated with it (new seeds each round), and each output point
is moved by what the mapped frames still miss at that level (the real
quantile less the mapped one, as a function of the mapped level: a
correction composed after the map). The percentiles before
and after are printed, so what the map did is read, not assumed.

    python -m training.pack_model --prior engine/models/default.safetensors \\
        --sample-stem-scales 1.25 0.95 1.6 1.6 -o runs/eval/scaled.safetensors
    python -m training.calibrate_frame_levels --model runs/eval/scaled.safetensors \\
        --data data/synth --split valid --windows 32 --stems bass guitar piano -o runs/eval/levels.safetensors
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import torch

from engine.audio.latent_generation import LIMIT_KNEE, generate_latent_stems, soft_limit, window_samples
from engine.core.frame_levels import ACTIVE_LEVEL_DB, fit_level_map, frame_levels_db, split_stem_maps
from engine.core.tasks import LATENT_GENERATE
from engine.errors import UserError
from engine.storage.model import MSDMModel
from training.calibrate_latent_prior import SILENT_RMS
from training.generation_candidates import load_real_windows

PERCENTILES = (5, 25, 50, 75, 95)


def stem_frame_levels(model: MSDMModel, windows: np.ndarray) -> list[np.ndarray]:
    """[W, N, T] audio -> per stem, the levels (dB) of all its windows' frames."""
    autoencoder = model.autoencoder
    out = []
    with torch.no_grad():
        for n in range(windows.shape[1]):
            audio = torch.from_numpy(np.ascontiguousarray(windows[:, n], dtype=np.float32))
            out.append(frame_levels_db(autoencoder.stft(audio).abs()).numpy().ravel())
    return out


def generate_windows(model: MSDMModel, window: int, count: int, seed: int, limit: bool = True) -> np.ndarray:
    """[count, N, window] generated unguided with the file's config as it stands;
    `limit` False: without the soft limiter, so frame levels are the ones the
    map sees and gives (what fitting it needs)."""
    settings = LATENT_GENERATE.override(autoguidance=1.0)
    return np.stack([generate_latent_stems(model, window, seed=seed + k, settings=settings, limit=limit)
                     for k in range(count)])


REFINE_QUANTILES = 33   # the probabilities a refinement compares mapped and real levels at

# The map of a stem left as it is: the identity over every level a frame can have.
IDENTITY = (-150.0, 150.0)


def fit_maps(generated: list[np.ndarray], real: list[np.ndarray], points: int,
             mapped: list[bool] | None = None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per stem quantile maps, resampled to `points` points each (the config
    stores the same number for every stem) and flattened stem after stem;
    stems with `mapped` False get the identity."""
    points_in, points_out = [], []
    for n, (g, r) in enumerate(zip(generated, real)):
        if mapped is not None and not mapped[n]:
            identity = [round(float(v), 3) for v in np.linspace(*IDENTITY, points)]
            points_in.extend(identity)
            points_out.extend(identity)
            continue
        a, b = fit_level_map(g, r, points)
        if len(a) < points:   # ties merged: put the points back on the same curve
            grid = np.linspace(a[0], a[-1], points)
            a, b = np.round(grid, 3), np.round(np.interp(grid, a, b), 3)
        points_in.extend(float(v) for v in a)
        points_out.extend(float(v) for v in b)
    return tuple(points_in), tuple(points_out)


def refined_outputs(points_out, mapped: np.ndarray, real: np.ndarray) -> np.ndarray:
    """One refinement of a map's outputs: out += c(out), c the real quantiles
    less the mapped levels' at the same probabilities, interpolated at each
    output level; kept non-decreasing."""
    q = np.linspace(1.0, 99.0, REFINE_QUANTILES)
    at, miss = np.percentile(mapped, q), np.percentile(real, q) - np.percentile(mapped, q)
    return np.maximum.accumulate(np.asarray(points_out, np.float64) + np.interp(points_out, at, miss))


def refine_maps(points_in: tuple[float, ...], points_out: tuple[float, ...], mapped: list[np.ndarray],
                real: list[np.ndarray], which: list[bool] | None = None) -> tuple[float, ...]:
    """One round: per stem, out += c(out), c the real quantiles less the
    mapped frames' at the same probabilities (sounding frames), interpolated
    at each output level; kept non-decreasing. Stems with `which` False stay."""
    refined = []
    stem_maps = split_stem_maps(points_in, points_out, len(real))
    for n, (m, r, (_, stem_out)) in enumerate(zip(mapped, real, stem_maps)):
        m, r = m[m > ACTIVE_LEVEL_DB], r[r > ACTIVE_LEVEL_DB]
        out = np.array(stem_out)
        if (which is None or which[n]) and len(m) >= REFINE_QUANTILES and len(r) >= REFINE_QUANTILES:
            out = refined_outputs(out, m, r)
        refined.extend(round(float(v), 3) for v in out)
    return tuple(refined)


def window_rms(audio: np.ndarray) -> list[np.ndarray]:
    """[W, N, T] -> per stem, the RMS of its sounding windows (above
    calibrate_latent_prior.SILENT_RMS)."""
    rms = np.sqrt(np.mean(audio.astype(np.float64) ** 2, axis=-1))     # [W, N]
    return [column[column > SILENT_RMS] for column in rms.T]


def loudness_table(stems, audio: np.ndarray, real: np.ndarray) -> str:
    """Per stem, of generated windows [W, N, T]: the median RMS and the
    loudest tenth's (90th percentile) against the median RMS of the real
    windows [W', N, T] (sounding windows only), and the share of samples
    past the soft limiter's knee."""
    real_rms = [np.median(column) if len(column) else np.nan for column in window_rms(real)]
    lines = ["| stem | median RMS vs real | loudest tenth of windows vs real median | samples past the limiter's knee |",
             "|---|---:|---:|---:|"]
    for n, (stem, sounding) in enumerate(zip(stems, window_rms(audio))):
        if not len(sounding):
            lines.append(f"| {stem} | silent | silent | 0 % |")
            continue
        median, loud = (20 * np.log10(v / real_rms[n]) for v in (np.median(sounding), np.percentile(sounding, 90)))
        knee = 100 * np.mean(np.abs(audio[:, n]) > LIMIT_KNEE)
        lines.append(f"| {stem} | {median:+.1f} dB | {loud:+.1f} dB | {knee:.2f} % |")
    return "\n".join(lines)


def percentile_table(stems, rows: dict[str, list[np.ndarray]]) -> str:
    head = "| stem | frames | " + " | ".join(f"p{p} dB" for p in PERCENTILES) + " |"
    lines = [head, "|---|---|" + "---:|" * len(PERCENTILES)]
    for n, stem in enumerate(stems):
        for label, levels in rows.items():
            values = np.percentile(levels[n], PERCENTILES)
            lines.append(f"| {stem} | {label} | " + " | ".join(f"{v:.1f}" for v in values) + " |")
    return "\n".join(lines)


def load_latent_model(path: Path) -> MSDMModel:
    """The model file at `path`, which must have a latent prior (UserError: one line)."""
    try:
        model = MSDMModel.load(path)
    except (OSError, ValueError) as error:
        raise UserError(f"cannot load {path}: {error}") from None
    if model.latent_prior is None:
        raise UserError(f"{path} has no latent prior")
    return model


def run(args) -> None:
    torch.set_num_threads(args.threads)
    if args.windows < 2:
        raise UserError("--windows must be at least 2")
    if not 0 <= args.rounds <= 8:
        raise UserError("--rounds must be from 0 to 8")
    if not 2 <= args.points <= 64:
        raise UserError("--points must be from 2 to 64")
    if not args.data.is_dir():
        raise UserError(f"no dataset folder '{args.data}'")
    model = load_latent_model(args.model)
    prior = model.latent_prior
    unknown = [stem for stem in args.stems or () if stem not in model.stems]
    if unknown:
        raise UserError(f"--stems: {', '.join(unknown)} not among the model's stems ({', '.join(model.stems)})")
    which = [stem in args.stems for stem in model.stems] if args.stems else None
    window = window_samples(model)
    reference = load_real_windows(args.data, model.stems, model.sample_rate, window, 1, split=args.split).reference
    real = stem_frame_levels(model, reference)
    original = prior.config
    prior.config = prior.net.config = dataclasses.replace(original, sample_level_in=(), sample_level_out=())
    # Levels without the limiter: the map acts on the decoder's frames before
    # it, and the limiter squeezes the loudest (measured on the first maps,
    # fitted on limited audio: a sixth of the guitar's and piano's frames lay
    # past the map's top point, where its end shift left them 10-35 dB loud).
    before = stem_frame_levels(model, generate_windows(model, window, args.windows, args.seed, limit=False))
    points_in, points_out = fit_maps(before, real, args.points, which)
    rows = {"real": real, "generated": before}
    for round_ in range(args.rounds + 1):
        prior.config = prior.net.config = dataclasses.replace(original, sample_level_in=points_in,
                                                              sample_level_out=points_out)
        seed = args.seed + (round_ + 1) * args.windows
        audio = generate_windows(model, window, args.windows, seed, limit=False)
        after = stem_frame_levels(model, audio)
        rows["generated, mapped" if round_ == 0 else f"mapped, refined x{round_}"] = after
        if round_ < args.rounds:
            points_out = refine_maps(points_in, points_out, after, real, which)
    # The last round's windows are generated with the maps the file gets.
    report = (percentile_table(model.stems, rows) + "\n\nLevels of the last row's windows against the real ones':\n\n"
              + loudness_table(model.stems, soft_limit(audio), reference))
    print(report)
    if args.figure:
        from training.figures import plot_level_distributions

        last = list(rows)[-1]
        plot_level_distributions({"real (VALID)": real, "generated": before, last: rows[last]},
                                 model.stems, args.figure)
    if args.markdown:
        args.markdown.write_text(f"Frame levels, {args.data}/{args.split}: {len(reference)} real windows, "
                                 f"{args.windows} generated per row (seeds from {args.seed}, new ones each row)\n\n"
                                 + report + "\n")
    scales = original.stem_scales_for(1.0)
    named = f" of {', '.join(args.stems)}" if args.stems else ""
    model.save(args.out, source=f"{model.source}; frame-level maps{named} ({args.points} points, on the decoded levels before the limiter) fitted at scales "
                                f"{'/'.join(f'{s:g}' for s in scales)} on {args.data}/{args.split}")
    print(f"wrote {args.out}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a model file with a latent prior")
    parser.add_argument("--data", type=Path, required=True, help="a dataset folder (VALID is read)")
    parser.add_argument("--split", default="valid")
    parser.add_argument("--windows", type=int, default=32, help="generated windows to fit on (and again to check)")
    parser.add_argument("--points", type=int, default=17, help="points of each stem's map")
    parser.add_argument("--stems", nargs="+", metavar="STEM",
                        help="map only these stems' frame levels (the others keep theirs: an identity map); "
                             "default: every stem")
    parser.add_argument("--rounds", type=int, default=2,
                        help="refinements of the maps, each on newly generated windows (0: the first fit)")
    parser.add_argument("--seed", type=int, default=1000,
                        help="first seed of the generated windows (apart from evaluate-generation's 0, 1, ...)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--markdown", type=Path, help="also write the percentile table here")
    parser.add_argument("--figure", type=Path, help="also draw the level distributions here (a .png)")
    parser.add_argument("-o", "--out", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        run(args)
    except UserError as error:
        parser.exit(2, f"error: {error}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
