"""One request, one path: a `Job` describes what to do (task, inputs, output
folder, options) and `run_job` does it. `msdm separate|generate|impute`,
`msdm serve` (osc_bridge.jobs), `msdm bounce` and the app (through the OSC
server) all end here, so the translation from options to a pipeline call is
written once.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from engine.errors import CommandError
from engine.jobs.options import TASKS, JobOptions
from engine.output_folder import OutputFolder

ProgressFn = Callable[[float, str], None]
FirstGuessFn = Callable[[dict[str, Path]], None]
TakeFn = Callable[[int, int, dict[str, Path]], None]   # take number (from 1), its seed, its files
PreviewFn = Callable[[dict[str, Path]], None]

# Where a refined separation delivers its first guess before the refinement,
# inside the job's folder, and the share of the progress bar the guess takes
# (one separator pass per window against N prior evaluations per window).
FIRST_GUESS_FOLDER = "first-guess"
FIRST_GUESS_SHARE = 0.05
# Where a generation or accompaniment with the preview option writes its first
# window alone (issue 20 item 7: the first audible result sooner), and the
# share of the progress bar it takes.
PREVIEW_FOLDER = "preview"
PREVIEW_SHARE = 0.1


def preview_seconds(models: Any, settings: Any) -> float:
    """How long a preview is: one window of the prior that samples (the latent
    prior's 256 frames, ~3 s; the waveform prior's window), so it costs one
    window's sampling and its first window is the whole job's, seed for seed."""
    if settings.prior == "latent":
        from engine.audio.latent_generation import window_samples

        return window_samples(models.latent) / models.sample_rate
    return models.window / models.sample_rate


def take_folder(number: int) -> str:
    """Where take `number` (from 1) of a job with several takes goes, under the job's folder."""
    return f"take-{number}"


def take_seed(seed: int, number: int) -> int:
    """Take `number`'s seed: seed, seed + 1, ..., so that one take can be made again alone with
    `--seed` (take 1's is the job's seed itself, whatever its range: bounce derives large ones)."""
    return seed + number - 1


@dataclass(frozen=True)
class Job:
    """A task with its inputs, where its files go, and its options."""

    task: str                                   # separate | generate | impute
    out_dir: str | os.PathLike
    options: JobOptions = JobOptions()
    mix: str | os.PathLike | None = None        # separate: the mix
    seconds: float | None = None                # generate: the length
    given: Mapping[str, str | os.PathLike] = field(default_factory=dict)  # impute: stem -> file

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise CommandError(f"unknown task {self.task!r}; use one of {', '.join(TASKS)}")


def parse_given(items: list[str]) -> dict[str, str]:
    """["drums=drums.wav", ...] (--given, repeated) -> {stem: file}."""
    given: dict[str, str] = {}
    for item in items:
        stem, sep, path = item.partition("=")
        if not sep or not stem or not path:
            raise CommandError(f"--given {item!r}: write it as STEM=FILE, e.g. drums=drums.wav")
        if stem in given:
            raise CommandError(f"--given {stem} appears twice")
        given[stem] = path
    return given


def run_job(models: Any, job: Job, *, progress: ProgressFn | None = None, max_seconds: float | None = None,
            output: Any = None, settings: Any = None, output_root: str | os.PathLike | None = None,
            on_first_guess: FirstGuessFn | None = None, on_take: TakeFn | None = None,
            on_preview: PreviewFn | None = None) -> dict[str, Path]:
    """Run `job` on `models` (a ModelSet, or anything that looks like one) and
    return {stem or "mix": file written}. `output` replaces the OutputFormat the
    options give (bounce names files by a pattern); `settings` replaces the
    SamplerSettings they give (bounce resolves them once for its manifest);
    `max_seconds` refuses longer inputs and `output_root` outputs outside it
    (the OSC server's limits).

    `on_first_guess`: for a separation that refines the model's first guess
    (start guess, steps > 0), write the guess alone first, into
    `FIRST_GUESS_FOLDER` under the job's folder, and call this with its files
    before the refinement starts: a musician hears stems within a second or
    two and the refined ones replace them when ready (issue 13). The guess
    files stay: they are finished results (a cancelled refinement keeps them).

    With the `preview` option (generate, impute without a range), the first
    window alone is generated first, with the job's seed, into
    `PREVIEW_FOLDER` under the job's folder, and `on_preview` is called with
    its files; then the whole job runs (the preview's window is sampled again
    there: it costs one window more). A job no longer than twice the preview
    gets none: the whole result is nearly as quick.

    Every job of every front end passes here: a check that must hold for all
    of them (which inputs may be read, where outputs may go) belongs here,
    and the files themselves are written by engine.atomic."""
    from engine.audio import pipeline

    options = job.options
    output = output or options.output_format()
    settings = settings or options.sampler_settings(job.task, models.is_isdm, num_stems=len(models.stems),
                                                    first_guess=getattr(models, "separator", None) is not None,
                                                    latent_prior=getattr(models, "latent", None) is not None)
    # The output folder is opened once, now, and every file of the job is
    # written relative to it (engine.output_folder): a link swapped in for it
    # later cannot redirect the files. A job that fails removes the folders it made.
    with OutputFolder(job.out_dir, inside=output_root) as folder:
        if job.task == "separate":
            if on_first_guess is not None and settings.warm_start and settings.steps > 0:
                guess = pipeline.separate_file(models, job.mix, folder, likelihood=options.likelihood,
                                               settings=settings.override(steps=0), seed=options.seed,
                                               mono=options.mono, overlap=options.overlap,
                                               output=dataclasses.replace(output, subfolder=FIRST_GUESS_FOLDER),
                                               max_seconds=max_seconds,
                                               progress=_part(progress, 0.0, FIRST_GUESS_SHARE, "first guess: "))
                on_first_guess(guess)
                # The refinement runs the separator again per window (a pass costs
                # about a tenth of one prior evaluation, docs/models.md): simpler
                # than keeping every window's guess in memory for a whole song.
                progress = _part(progress, FIRST_GUESS_SHARE, 1.0, "refining: ")
            return pipeline.separate_file(models, job.mix, folder, likelihood=options.likelihood,
                                          settings=settings, seed=options.seed, mono=options.mono,
                                          overlap=options.overlap, output=output, max_seconds=max_seconds,
                                          progress=progress)
        count = options.takes
        if options.preview and options.time_range is None:
            preview = _write_preview(models, job, folder, settings, output, max_seconds, progress)
            if preview is not None:
                if on_preview is not None:
                    on_preview(preview)
                progress = _part(progress, PREVIEW_SHARE, 1.0, "")
        first: dict[str, Path] = {}
        for number in range(1, count + 1):
            seed = take_seed(options.seed, number)
            take_output = dataclasses.replace(output, subfolder=take_folder(number)) if count > 1 else output
            take_progress = _part(progress, (number - 1) / count, number / count,
                                  f"take {number}/{count}: " if count > 1 else "")
            if job.task == "generate":
                files = pipeline.generate_file(models, folder, job.seconds, seed=seed, settings=settings,
                                               overlap=options.overlap, output=take_output, progress=take_progress)
            else:
                files = pipeline.impute_file(models, job.given, folder, seed=seed, settings=settings,
                                             overlap=options.overlap, output=take_output, max_seconds=max_seconds,
                                             progress=take_progress, time_range=options.time_range,
                                             regenerate=options.regenerated_stems)
            first = first or files
            if on_take is not None:
                on_take(number, seed, files)
        return first


def _write_preview(models: Any, job: Job, folder: OutputFolder, settings: Any, output: Any,
                   max_seconds: float | None, progress: ProgressFn | None) -> dict[str, Path] | None:
    """The preview's files (None when the job is too short to need one)."""
    from engine.audio import pipeline
    from engine.audio.files import inspect_audio

    seconds = preview_seconds(models, settings)
    if job.task == "generate":
        length = float(job.seconds)
    else:
        info = inspect_audio(next(iter(job.given.values())), max_seconds=max_seconds)
        length = info.frames / info.samplerate
    if length <= 2 * seconds:
        return None
    out = dataclasses.replace(output, subfolder=PREVIEW_FOLDER)
    part = _part(progress, 0.0, PREVIEW_SHARE, "preview: ")
    seed = take_seed(job.options.seed, 1)
    if job.task == "generate":
        return pipeline.generate_file(models, folder, seconds, seed=seed, settings=settings, output=out,
                                      progress=part)
    return pipeline.impute_file(models, job.given, folder, seed=seed, settings=settings, output=out,
                                max_seconds=max_seconds, progress=part, seconds=seconds)


def _part(progress: ProgressFn | None, begin: float, end: float, label: str) -> ProgressFn | None:
    """A progress callback for one part of a job: its 0..1 mapped to begin..end."""
    if progress is None:
        return None
    return lambda fraction, message: progress(begin + (end - begin) * fraction, label + message)
