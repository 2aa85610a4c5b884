"""Catalogue bouncing: one song at a time vs songs batched into shared network calls.

Bounces the same synthetic songs with `--jobs 1` and `--jobs N` (engine.bounce.bouncer,
in process, files written as `msdm bounce` writes them), alternating the two
so machine load drifts hit both alike, and prints medians, the speed-up and
how far the batched stems are from the one-at-a-time ones.

    python benchmarks/bounce.py                       # small (shipped) and tiny models
    python benchmarks/bounce.py --models tiny --jobs 2 4 8 --threads 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from engine.bounce.bouncer import BounceJob, Bouncer
from engine.bounce.inputs import find_songs
from engine.core.config import TINY
from engine.storage.loading import load_models
from engine.storage.model import MSDMModel, ModelSet
from engine.core.tasks import SEPARATE_DIRAC


def make_songs(folder: Path, count: int, seconds: float, rate: int, channels: int) -> None:
    rng = np.random.default_rng(0)
    t = np.arange(round(seconds * rate)) / rate
    for n in range(count):
        tone = 0.2 * np.sin(2 * np.pi * (110 * (n + 1)) * t)[:, None]
        noise = 0.05 * rng.standard_normal((t.size, channels))
        sf.write(folder / f"song{n:02d}.wav", (tone + noise).astype(np.float32), rate, subtype="FLOAT")


def load(name: str) -> ModelSet:
    if name == "tiny":
        return ModelSet([MSDMModel.build(TINY, seed=0)])
    return load_models(None if name in ("small", "default") else [name])


def read_all(folder: Path) -> dict[str, np.ndarray]:
    return {p.relative_to(folder).as_posix(): sf.read(p, dtype="float32")[0] for p in sorted(folder.rglob("*.wav"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["small", "tiny"],
                        help="small (the shipped model), tiny (random weights, test size) or a .safetensors file")
    parser.add_argument("--jobs", nargs="+", type=int, default=[4], help="batched settings to compare with 1")
    parser.add_argument("--songs", type=int, default=4, help="songs in the catalogue (default 4)")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each song (default 3)")
    parser.add_argument("--rate", type=int, default=22050, help="songs' sample rate (default 22050)")
    parser.add_argument("--channels", type=int, default=1, help="songs' channels (default 1)")
    parser.add_argument("--steps", type=int, default=4, help="sampler steps, 1 resample (default 4)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per setting; medians are reported (default 3)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    settings = SEPARATE_DIRAC.override(steps=args.steps, num_resamples=1)
    job = BounceJob(settings=settings, seed=0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        songs_dir = Path(tmp) / "songs"
        songs_dir.mkdir()
        make_songs(songs_dir, args.songs, args.seconds, args.rate, args.channels)
        songs = find_songs([songs_dir])
        audio = args.songs * args.seconds
        for name in args.models:
            models = load(name)
            models.models[0].to(args.device)
            Bouncer(models, job, Path(tmp) / "warmup").run(songs[:1], quiet=True)
            settings_jobs = [1, *args.jobs]
            times = {j: [] for j in settings_jobs}
            stats = {}
            outputs = {}
            for repeat in range(args.repeats):
                for jobs in settings_jobs:
                    out = Path(tmp) / f"{name}-{jobs}-{repeat}"
                    bouncer = Bouncer(models, job, out)
                    start = time.perf_counter()
                    summary = bouncer.run(songs, jobs=jobs, quiet=True)
                    times[jobs].append(time.perf_counter() - start)
                    assert summary.done == len(songs), summary.failures
                    stats[jobs] = getattr(bouncer, "batch_stats", None)
                    outputs.setdefault(jobs, read_all(out))
            base = statistics.median(times[1])
            for jobs in settings_jobs:
                median = statistics.median(times[jobs])
                diff = max(float(np.abs(outputs[jobs][k] - outputs[1][k]).max() / max(np.abs(outputs[1][k]).max(), 1e-12))
                           for k in outputs[1])
                s = stats[jobs]
                rows.append((name, jobs, median, audio / median, base / median,
                             s.mean_items if s else args.channels, diff))

    print(f"\n{args.songs} songs x {args.seconds:g} s, {args.channels} channel(s) at {args.rate} Hz, "
          f"{args.steps} steps x 1 resample, device {args.device}, torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.1f}, medians of {args.repeats}\n")
    print("| model | jobs | wall s | audio s per wall s | speed-up vs jobs 1 | items per network call | "
          "max rel. diff vs jobs 1 |")
    print("|---|---|---|---|---|---|---|")
    for name, jobs, median, rtf, ratio, items, diff in rows:
        print(f"| {name} | {jobs} | {median:.2f} | {rtf:.3f} | {ratio:.2f}x | {items:.1f} | {diff:.1e} |")


if __name__ == "__main__":
    main()
