"""How loud generated stems come out against real ones, on any split: per
stem, the median window RMS and the loudest tenth of windows against the real
windows' median, and the share of samples the soft limiter shapes (the table
training.calibrate_frame_levels prints for the windows it fitted on).

    python -m training.loudness_report --data data/synth --split test --windows 16 \\
        --model engine/models/default.safetensors [OTHER.safetensors ...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from engine.audio.latent_generation import window_samples
from engine.errors import UserError
from training.calibrate_frame_levels import generate_windows, load_latent_model, loudness_table
from training.generation_candidates import load_real_windows


def report(model_path: Path, data: Path, split: str, windows: int, seed: int) -> str:
    """The loudness table of `windows` unguided windows (seeds from `seed`) against the split's reference half."""
    model = load_latent_model(model_path)
    window = window_samples(model)
    real = load_real_windows(data, model.stems, model.sample_rate, window, 1, split=split).reference
    audio = generate_windows(model, window, windows, seed)
    return (f"{model_path}: {windows} generated windows (seeds {seed}-{seed + windows - 1}) against "
            f"{len(real)} real windows of {data}/{split}\n\n" + loudness_table(model.stems, audio, real))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, nargs="+", required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--windows", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        if args.windows < 1:
            raise UserError("--windows must be at least 1")
        for path in args.model:
            print(report(path, args.data, args.split, args.windows, args.seed) + "\n", flush=True)
    except UserError as error:
        parser.exit(2, f"error: {error}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
