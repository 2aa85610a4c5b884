"""How long generating and accompanying take, file to file, as `msdm generate`
and `msdm impute` run them with the model's default settings.

Each row is timed `--repeats` times, the rows alternating so machine load
drifts hit them alike; prints the median wall time and its ratio to the
audio's length (issue "prior": 10 s of all four stems in well under 10 s on
2 cores), and how soon the preview option delivers the first window of a
generation three times as long (issue 20 item 7: the first audible result
sooner). With a latent prior in the model, the default is the latent
prior's sampler; `--prior waveform` times the waveform prior instead.

    python benchmarks/generation.py                         # 10 s, 3 repeats, all threads
    python benchmarks/generation.py --seconds 10 --threads 2 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import soundfile
import torch

from engine.audio.pipeline import generate_file, impute_file, separate_file
from engine.core.tasks import generation_settings, separation_settings
from engine.jobs.options import JobOptions
from engine.jobs.run import Job, run_job
from engine.storage.loading import load_models

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "example_mix.flac"


# The weight the shipped guide was chosen at (docs/models.md, third session of
# 2026-12-06); the file samples without it by default since the fourth.
OPT_IN_AUTOGUIDANCE = 2.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--prior", choices=("waveform", "latent"), help="default: the model's default")
    parser.add_argument("--steps", type=int, help="sampler steps (default: the prior's)")
    parser.add_argument("--model", help="model file (default: the shipped one)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    models = load_models([args.model] if args.model else None)
    has_latent = models.latent is not None

    def settings(task: str):
        return generation_settings(task, has_latent, args.prior, steps=args.steps)

    folder = tempfile.TemporaryDirectory()
    # The given part: the example song's drums, as the first guess separates them.
    guess = separation_settings("dirac", num_stems=4, isdm=models.is_isdm,
                                has_first_guess=models.separator is not None, start="guess")
    separated = separate_file(models, EXAMPLE, Path(folder.name) / "example", settings=guess)["drums"]
    # impute_file refuses (not crops) a given stem longer than max_seconds: cut the
    # drums to the timed length first, as a musician would send a region.
    samples, rate = soundfile.read(separated, always_2d=True)
    drums = Path(folder.name) / "drums.wav"
    soundfile.write(drums, samples[: int(round(args.seconds * rate))], rate)
    # A pitched given part too: harmony guidance (engine.audio.harmony_guidance)
    # only works when one is given, and what it costs is timed against itself off.
    piano_samples, _ = soundfile.read(separate_file(models, EXAMPLE, Path(folder.name) / "example2",
                                                    settings=guess)["piano"], always_2d=True)
    piano = Path(folder.name) / "piano.wav"
    soundfile.write(piano, piano_samples[: int(round(args.seconds * rate))], rate)
    rows = {
        f"generate {args.seconds:g} s, all stems": lambda out: generate_file(
            models, out, args.seconds, seed=0, settings=settings("generate")),
        f"accompany {args.seconds:g} s of drums": lambda out: impute_file(
            models, {"drums": drums}, out, seed=0, settings=settings("impute")),
        f"accompany {args.seconds:g} s of piano": lambda out: impute_file(
            models, {"piano": piano}, out, seed=0, settings=settings("impute")),
    }
    if has_latent and models.latent.latent_guide is not None:
        # Autoguidance (engine.core.latent_prior.AutoGuided): a pass of the guide per
        # evaluation. Timed against the file's default: off if it autoguides, else
        # on at the weight its guide was chosen at (docs/models.md).
        guided_by_default = models.latent.latent_prior.config.autoguidance != 1.0
        weight = 1.0 if guided_by_default else OPT_IN_AUTOGUIDANCE
        rows[f"  generate {'without autoguidance' if guided_by_default else f'autoguided (w {weight:g})'}"] = (
            lambda out: generate_file(models, out, args.seconds, seed=0,
                                      settings=settings("generate").override(autoguidance=weight)))
    if has_latent and settings("impute").harmony:
        rows["  the same without harmony guidance"] = lambda out: impute_file(
            models, {"piano": piano}, out, seed=0, settings=settings("impute").override(harmony=0.0))
    if has_latent and settings("impute").rhythm:
        # Rhythm guidance (engine.audio.rhythm_guidance) works with any given stem.
        rows["  the same without rhythm guidance"] = lambda out: impute_file(
            models, {"piano": piano}, out, seed=0, settings=settings("impute").override(rhythm=0.0))
        rows["  the same without either guidance"] = lambda out: impute_file(
            models, {"piano": piano}, out, seed=0, settings=settings("impute").override(harmony=0.0, rhythm=0.0))
    long_seconds = 3 * args.seconds
    preview_row = f"first audible result (preview) of {long_seconds:g} s"
    options = JobOptions(preview=True, prior=args.prior, steps=args.steps)
    times: dict[str, list[float]] = {name: [] for name in (*rows, preview_row, f"  the whole {long_seconds:g} s")}
    with folder:
        for repeat in range(args.repeats):
            for index, (name, run) in enumerate(rows.items()):
                began = time.perf_counter()
                run(Path(folder.name) / f"{repeat}-{index}")
                times[name].append(time.perf_counter() - began)
            # The preview option (issue 20 item 7): the first window alone comes first.
            began = time.perf_counter()
            heard: list[float] = []
            run_job(models, Job("generate", Path(folder.name) / f"{repeat}-preview", options, seconds=long_seconds),
                    on_preview=lambda files: heard.append(time.perf_counter() - began))
            times[preview_row].append(heard[0])
            times[f"  the whole {long_seconds:g} s"].append(time.perf_counter() - began)
    chosen = settings("generate")
    print(f"{chosen.prior} prior, {chosen.method} {chosen.steps} steps, {args.threads} thread(s), "
          f"median of {args.repeats}:\n")
    print("| job | wall time (s) | time / audio length |")
    print("|---|---:|---:|")
    for name, values in times.items():
        median = statistics.median(values)
        length = args.seconds if name in rows else long_seconds
        print(f"| {name} | {median:.1f} | {median / length:.2f} |")


if __name__ == "__main__":
    main()
