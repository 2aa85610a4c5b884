"""How long separating a whole song takes, per setting, as a fraction of its length.

A 3-minute stereo 44.1 kHz mix (the bundled example repeated, so it is real
music and not silence) is separated file to file, as `msdm separate` does it
(read, resample, windows, write), with each setting in turn; the settings
alternate over the repeats so machine load drifts hit them alike. Prints the
median wall time and the real-time ratio (time / song length; below 0.25 is
the target for the default).

    python benchmarks/song.py                                  # default, + 4 refinement steps, + 32-NFE prior
    python benchmarks/song.py --minutes 3 --repeats 3 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from engine.audio.pipeline import separate_file
from engine.core.tasks import separation_settings
from engine.storage.loading import load_models

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "example_mix.flac"

# name -> (start, overrides) of engine.core.tasks.separation_settings
SETTINGS = {
    "default (first guess)": ("guess", {}),
    "guess + 4 dpmpp2m steps": ("guess", {"steps": 4}),
    "prior from noise, dpmpp2m 32 x 1": ("noise", {"steps": 32, "num_resamples": 1, "s_churn": 2.0,
                                                   "method": "dpmpp2m"}),
}


def make_song(path: Path, minutes: float, rate: int = 44100) -> float:
    mix, source_rate = sf.read(EXAMPLE, dtype="float32", always_2d=True)
    if source_rate != rate:
        import soxr

        mix = soxr.resample(mix, source_rate, rate)
    if mix.shape[1] == 1:
        mix = np.repeat(mix, 2, axis=1)
    frames = round(minutes * 60 * rate)
    song = np.tile(mix, (frames // len(mix) + 1, 1))[:frames]
    sf.write(path, song, rate, subtype="PCM_16")
    return frames / rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--only", nargs="+", choices=list(SETTINGS), help="time only these settings")
    parser.add_argument("--model", help="model file (default: the shipped one)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    models = load_models([args.model] if args.model else None)
    chosen = args.only or list(SETTINGS)
    times: dict[str, list[float]] = {name: [] for name in chosen}
    with tempfile.TemporaryDirectory() as folder:
        song = Path(folder) / "song.wav"
        seconds = make_song(song, args.minutes)
        for _ in range(args.repeats):
            for name in chosen:
                start, overrides = SETTINGS[name]
                settings = separation_settings("dirac", num_stems=4, isdm=models.is_isdm,
                                               has_first_guess=models.separator is not None, start=start, **overrides)
                began = time.perf_counter()
                separate_file(models, song, Path(folder) / "stems", settings=settings)
                times[name].append(time.perf_counter() - began)
    print(f"{args.minutes:g}-minute stereo 44.1 kHz song, {args.threads} thread(s), median of {args.repeats}:\n")
    print("| setting | diffusion NFE per window | wall time (s) | time / song length |")
    print("|---|---:|---:|---:|")
    for name in chosen:
        start, overrides = SETTINGS[name]
        nfe = separation_settings("dirac", num_stems=4, isdm=models.is_isdm, has_first_guess=models.separator is not None,
                                  start=start, **overrides).nfe
        median = statistics.median(times[name])
        print(f"| {name} | {nfe} | {median:.1f} | {median / seconds:.3f} |")


if __name__ == "__main__":
    main()
