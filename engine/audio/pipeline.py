"""Files in, files out: the three tasks on real audio of any length, rate and layout.

- separate: the mix is read and separated window by window (engine.audio.windows),
  at the model's rate, and the stems are resampled back, blended and streamed
  to disk, so memory stays bounded whatever the length. Each channel is
  separated on its own (a stereo mix gives stereo stems). What the model cannot
  see (content above its Nyquist frequency, resampling error) is given back to
  the stems in proportion to their local energy, so with the Dirac likelihood
  the written stems sum to the input mix sample for sample.
- generate: all stems at the model's rate; audio longer than a window is
  continued window by window, each new window imputed from the overlap with
  the previous one (the imputation condition masks time as well as stems).
- impute: the given stems (same rate and length) are downmixed to mono for the
  model; the generated stems come back at their rate and length, with their
  channel count (the same part in every channel: two independent draws in
  left and right would be two different parts).
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np
import torch

from engine.audio.files import Audio, AudioInputError, AudioReader, AudioWriters, read_audio, resample, to_mono
from engine.audio.latent_generation import generate_latent_stems
from engine.audio.latent_refinement import refine_with_latent_prior
from engine.audio.windows import OverlapAdd, WindowPlan
from engine.core.diffusion import seed_for
from engine.core.tasks import (
    GENERATE,
    IMPUTE,
    SamplerSettings,
    check_likelihood,
    generate,
    impute,
    separate,
    separation_settings,
)
from engine.errors import CommandError, InputError
from engine.output_folder import OutputFolder
from engine.storage.model import ModelSet

ProgressFn = Callable[[float, str], None]
DEFAULT_OVERLAP = 0.25
ENERGY_FRAME = 1024  # samples over which stems' energy shares are smoothed


@dataclass(frozen=True)
class OutputFormat:
    extension: str = "wav"
    bits: str = "32f"
    overwrite: bool = True
    subfolder: str = ""  # e.g. a refinement's first guess: engine.jobs.run.FIRST_GUESS_FOLDER

    def path(self, out_dir: Path, name: str) -> Path:
        return out_dir / self.subfolder / f"{name}.{self.extension}"


def _window_progress(progress: ProgressFn | None, index: int, count: int, label: str):
    """Adapt the sampler's per-step callback to an overall 0..1 fraction."""
    if progress is None:
        return None

    def callback(info: dict) -> None:
        progress((index + (info["i"] + 1) / info["steps"]) / count, f"{label} window {index + 1}/{count}")

    return callback


@contextlib.contextmanager
def _output_folder(out_dir: str | os.PathLike | OutputFolder):
    """The job's output folder, held open while it runs (engine.output_folder):
    engine.jobs.run opens it when the job starts; a direct call opens it here."""
    if isinstance(out_dir, OutputFolder):
        yield out_dir
    else:
        with OutputFolder(out_dir) as folder:
            yield folder


def _open_writers(folder: OutputFolder, channels: Mapping[str, int], sample_rate: int, fmt: OutputFormat,
                  inputs: Iterable[str | os.PathLike] = ()) -> AudioWriters:
    """One writer per name, all committed together; opened before the work, so
    a destination that cannot be written is refused before any sampling."""
    # `fmt` names each file by a path under the folder (bounce's --pattern may add subfolders).
    targets = {name: fmt.path(folder.path, name).relative_to(folder.path) for name in channels}
    return AudioWriters(folder, targets, channels, sample_rate, bits=fmt.bits, overwrite=fmt.overwrite,
                        inputs=inputs)


def distribute_residual(stems: np.ndarray, residual: np.ndarray, frame: int = ENERGY_FRAME) -> np.ndarray:
    """Add `residual` [C, T] to stems [N, C, T] in proportion to each stem's
    energy over short frames (equal shares where all stems are silent).
    The shares sum to one, so sum_n(result) = sum_n(stems) + residual."""
    n, c, t = stems.shape
    frames = math.ceil(t / frame)
    padded = np.zeros((n, c, frames * frame), dtype=np.float64)
    padded[..., :t] = stems
    energy = (padded**2).reshape(n, c, frames, frame).sum(-1)
    total = energy.sum(0, keepdims=True)
    share = np.where(total > 0, energy / np.where(total > 0, total, 1), 1.0 / n)
    share = np.repeat(share, frame, axis=-1)[..., :t]
    return (stems + share * residual[None]).astype(np.float32)


class ArrayReader:
    """The AudioReader interface over an array in memory ([C, T] float32)."""

    def __init__(self, samples: np.ndarray, sample_rate: int) -> None:
        self.samples = np.asarray(samples, dtype=np.float32)
        if self.samples.ndim != 2 or self.samples.shape[1] == 0:
            raise ValueError(f"expected audio as [channels, frames], got shape {self.samples.shape}")
        if not np.isfinite(self.samples).all():
            raise AudioInputError("the audio contains NaN or infinite samples")
        self.sample_rate = int(sample_rate)
        self.channels, self.frames = self.samples.shape

    def read(self, start: int, frames: int) -> np.ndarray:
        out = np.zeros((self.channels, frames), dtype=np.float32)
        block = self.samples[:, start:start + frames]
        out[:, :block.shape[1]] = block
        return out


def separate_blocks(
    models: ModelSet,
    reader: AudioReader | ArrayReader,
    *,
    likelihood: str = "dirac",
    settings: SamplerSettings | None = None,
    seed: int = 0,
    mono: bool = False,
    overlap: float = DEFAULT_OVERLAP,
    progress: ProgressFn | None = None,
):
    """Separate what `reader` holds, window by window; yields the finished
    stems in order as [N, C, n] blocks at the reader's rate (C = 1 with `mono`)."""
    check_likelihood(likelihood)
    has_guess = getattr(models, "separator", None) is not None
    settings = settings or separation_settings(likelihood, num_stems=len(models.stems), isdm=models.is_isdm,
                                               has_first_guess=has_guess)
    if settings.warm_start and not has_guess:
        raise CommandError(f"{models.describe()} has no first-guess separator: a warm start (or 0 steps) "
                           "needs one; separate from noise instead (start noise, the paper's sampler)")
    if settings.prior == "latent" and settings.steps > 0 and models.latent is None:
        raise CommandError(f"{models.describe()} has no latent prior to refine the first guess with: "
                           "use prior waveform, or a model file with a latent prior")
    rate_in, rate_model = reader.sample_rate, models.sample_rate
    window_model = models.window
    window_in = max(1, round(window_model * rate_in / rate_model))
    plan = WindowPlan.make(reader.frames, window_in, overlap)
    channels = 1 if mono else reader.channels
    num = len(models.stems)

    def read_mix(start: int, frames: int) -> np.ndarray:
        block = reader.read(start, frames)
        return to_mono(block) if mono else block

    blend = OverlapAdd(plan, (num + 1, channels))
    written = 0
    for index in range(plan.count):
        mix_in = read_mix(plan.start(index), window_in)
        mix_model = resample(mix_in, rate_in, rate_model, length=window_model)
        if not mix_model.any():  # digital silence: nothing to separate
            separated = np.zeros((channels, num, window_model), dtype=np.float32)
        else:
            seeds = [seed_for(seed, index, c) for c in range(channels)]
            mix_tensor = torch.from_numpy(mix_model)
            guess = first_guess(models, mix_tensor) if settings.warm_start else None
            callback = _window_progress(progress, index, plan.count, "separating")
            if settings.prior == "latent" and settings.steps > 0:
                separated = refine_with_latent_prior(models.latent, mix_tensor, guess, seeds, settings,
                                                     callback=callback).cpu().numpy()
            else:
                separated = separate(
                    models.denoiser, mix_tensor[:, None], num, seeds,
                    likelihood=likelihood, settings=settings, device=models.device,
                    callback=callback, first_guess=guess,
                ).cpu().numpy()
        # [C, N, T] -> [N, C, T] at the input rate, plus the mix as the model saw it.
        stems_in = resample(separated.transpose(1, 0, 2).reshape(-1, window_model),
                            rate_model, rate_in, length=window_in).reshape(num, channels, window_in)
        seen_in = resample(mix_model, rate_model, rate_in, length=window_in)
        final = blend.add(index, np.concatenate([stems_in, seen_in[None]]))
        if final.shape[-1]:
            mix = read_mix(written, final.shape[-1])
            # Dirac: everything not in the stems goes back, so they sum to the mix.
            # Gaussian: only what the model could not see (its error is its own).
            reference = final[:-1].sum(0) if likelihood == "dirac" else final[-1]
            yield distribute_residual(final[:-1], mix - reference)
            written += final.shape[-1]
        if progress:
            progress((index + 1) / plan.count, f"separated window {index + 1}/{plan.count}")
    assert written == reader.frames, (written, reader.frames)


@torch.no_grad()
def first_guess(models: ModelSet, mix: torch.Tensor) -> torch.Tensor:
    """The first-guess separator's stems of mixes [B, T] at the model's rate -> [B, N, T]."""
    separator = models.separator
    return separator(mix.to(device=models.device, dtype=torch.float32))


def separate_array(models: ModelSet, mix: np.ndarray, sample_rate: int, **options) -> np.ndarray:
    """Separate a mix held in memory ([C, T]) -> stems [N, C, T] (options as separate_blocks)."""
    return np.concatenate(list(separate_blocks(models, ArrayReader(mix, sample_rate), **options)), axis=-1)


def separate_file(
    models: ModelSet,
    mix_path: str | os.PathLike,
    out_dir: str | os.PathLike | OutputFolder,
    *,
    output: OutputFormat = OutputFormat(),
    max_seconds: float | None = None,
    mono: bool = False,
    **options,
) -> dict[str, Path]:
    """Separate the mix at `mix_path` into `out_dir/<stem>.<ext>`, one per stem,
    streaming to disk (options as separate_blocks)."""
    reader = AudioReader(mix_path, max_seconds=max_seconds)
    channels = 1 if mono else reader.channels
    with _output_folder(out_dir) as folder, \
            _open_writers(folder, {stem: channels for stem in models.stems}, reader.sample_rate, output,
                          inputs=[mix_path]) as writers:
        for block in separate_blocks(models, reader, mono=mono, **options):
            for n, stem in enumerate(models.stems):
                writers.write(stem, block[n])
    return writers.paths


def _require_joint(models: ModelSet, task: str) -> None:
    if models.is_isdm:
        raise InputError(f"{task} needs one joint (MSDM) model; single-stem ISDM models can only separate")


def generate_stems(
    models: ModelSet,
    frames: int,
    *,
    seed: int = 0,
    settings: SamplerSettings = GENERATE,
    given: np.ndarray | None = None,
    given_stems: tuple[int, ...] = (),
    overlap: float = DEFAULT_OVERLAP,
    progress: ProgressFn | None = None,
    given_mask: np.ndarray | None = None,
) -> np.ndarray:
    """All stems at the model's rate, [N, frames]. With `given` ([N, frames],
    only rows `given_stems` are read) the other stems are imputed; with
    `given_mask` ([N, frames] bool, instead of `given_stems`) exactly the
    samples it marks are given (a time range of some stems regenerated).
    Windows after the first continue the previous one through its overlap."""
    _require_joint(models, "generation")
    if settings.prior == "latent":
        if models.latent is None:
            raise InputError("this model has no latent prior: use prior waveform, or a model file with one")
        return generate_latent_stems(models.latent, frames, seed=seed, settings=settings, given=given,
                                     given_stems=given_stems, given_mask=given_mask, overlap=overlap,
                                     progress=progress)
    num = len(models.stems)
    window = models.window
    plan = WindowPlan.make(frames, window, overlap)
    total = plan.start(plan.count - 1) + window
    known = np.zeros((num, total), dtype=bool)
    if given_mask is not None:
        known[:, :frames] = given_mask
    else:
        known[list(given_stems), :frames] = True
    out = np.zeros((num, total), dtype=np.float32)
    if given is not None:
        out[:, :frames] = np.where(known[:, :frames], given, 0.0)
    label = "imputing" if known.any() else "generating"
    for index in range(plan.count):
        start = plan.start(index)
        mask = known[:, start:start + window].copy()
        if index > 0:
            continued = plan.start(index - 1) + window - start  # overlap with the previous window
            mask[:, :continued] = True
        callback = _window_progress(progress, index, plan.count, label)
        seeds = [seed_for(seed, index)]
        if mask.any():
            result = impute(models.denoiser, torch.from_numpy(out[None, :, start:start + window].copy()),
                            torch.from_numpy(mask)[None], seeds, settings=settings,
                            callback=callback, device=models.device)
        else:
            result = generate(models.denoiser, num, window, seeds, settings=settings,
                              callback=callback, device=models.device)
        out[:, start:start + window] = result[0].cpu().numpy()
    return out[:, :frames]


def generate_file(
    models: ModelSet,
    out_dir: str | os.PathLike | OutputFolder,
    seconds: float,
    *,
    seed: int = 0,
    settings: SamplerSettings = GENERATE,
    overlap: float = DEFAULT_OVERLAP,
    output: OutputFormat = OutputFormat(),
    progress: ProgressFn | None = None,
) -> dict[str, Path]:
    if not (seconds > 0 and math.isfinite(seconds)):
        raise InputError(f"--seconds must be a positive number, got {seconds}")
    _require_joint(models, "generation")
    frames = max(1, round(seconds * models.sample_rate))
    with _output_folder(out_dir) as folder, \
            _open_writers(folder, dict.fromkeys((*models.stems, "mix"), 1), models.sample_rate, output) as writers:
        stems = generate_stems(models, frames, seed=seed, settings=settings, overlap=overlap, progress=progress)
        for n, stem in enumerate(models.stems):
            writers.write(stem, stems[n:n + 1])
        writers.write("mix", stems.sum(0, keepdims=True))
    return writers.paths


def read_given_stems(models: ModelSet, given: Mapping[str, str | os.PathLike], max_seconds: float | None = None):
    """Read and check the stems a user gave: known names, not all of them, one
    sample rate and one length."""
    if not given:
        raise InputError("give at least one stem, e.g. --given drums=drums.wav")
    unknown = [name for name in given if name not in models.stems]
    if unknown:
        raise InputError(f"unknown stem(s) {unknown}: this model's stems are {list(models.stems)}")
    if len(given) == len(models.stems):
        raise InputError(f"all stems {list(models.stems)} are given: there is nothing to generate")
    audio = {name: read_audio(path, max_seconds=max_seconds) for name, path in given.items()}
    rates = {name: a.sample_rate for name, a in audio.items()}
    if len(set(rates.values())) > 1:
        raise AudioInputError(f"given stems have different sample rates {rates}: export them at one rate")
    lengths = {name: a.frames for name, a in audio.items()}
    if len(set(lengths.values())) > 1:
        raise AudioInputError(
            f"given stems have different lengths (frames) {lengths}: export them from the same start to the same end")
    return audio


def impute_file(
    models: ModelSet,
    given: Mapping[str, str | os.PathLike],
    out_dir: str | os.PathLike | OutputFolder,
    *,
    seed: int = 0,
    settings: SamplerSettings = IMPUTE,
    overlap: float = DEFAULT_OVERLAP,
    output: OutputFormat = OutputFormat(),
    max_seconds: float | None = None,
    progress: ProgressFn | None = None,
    time_range: tuple[float, float] | None = None,
    regenerate: tuple[str, ...] = (),
    seconds: float | None = None,
) -> dict[str, Path]:
    """Write the stems not given (and the full mix) to `out_dir`; with
    `time_range` (seconds) and `regenerate` (given stems), write those stems
    anew inside the range only (regenerate_range). `seconds`: only the first
    seconds of the given stems (a preview)."""
    _require_joint(models, "imputation")
    if time_range is not None:
        return regenerate_range(models, given, out_dir, time_range, regenerate, seed=seed, settings=settings,
                                overlap=overlap, output=output, max_seconds=max_seconds, progress=progress)
    audio = read_given_stems(models, given, max_seconds)
    first = next(iter(audio.values()))
    rate_in, frames_in = first.sample_rate, first.frames
    if seconds is not None:
        frames_in = max(1, min(frames_in, round(seconds * rate_in)))
        audio = {name: Audio(a.samples[:, :frames_in], a.sample_rate) for name, a in audio.items()}
    channels = max(a.channels for a in audio.values())
    frames_model = max(1, round(frames_in * models.sample_rate / rate_in))
    given_model = np.zeros((len(models.stems), frames_model), dtype=np.float32)
    indices = tuple(models.stems.index(name) for name in audio)
    for name, a in audio.items():
        given_model[models.stems.index(name)] = resample(to_mono(a.samples), rate_in, models.sample_rate,
                                                         length=frames_model)[0]
    missing = [stem for stem in models.stems if stem not in audio]
    with _output_folder(out_dir) as folder, \
            _open_writers(folder, dict.fromkeys((*missing, "mix"), channels), rate_in, output,
                          inputs=given.values()) as writers:
        stems = generate_stems(models, frames_model, seed=seed, settings=settings, given=given_model,
                               given_stems=indices, overlap=overlap, progress=progress)
        mix = np.zeros((channels, frames_in), dtype=np.float32)
        for name, a in audio.items():
            mix += np.broadcast_to(a.samples, (channels, frames_in))
        for stem in missing:
            n = models.stems.index(stem)
            back = np.repeat(resample(stems[n:n + 1], models.sample_rate, rate_in, length=frames_in), channels, axis=0)
            writers.write(stem, back)
            mix += back
        writers.write("mix", mix)
    return writers.paths


# Regenerating a time range -------------------------------------------------
# The stems to regenerate are free inside the range and given outside it; every
# other stem is given everywhere (a stem with no file is given as silence).
# The sampler so sees the context on both sides of the range at every step
# (the imputation condition masks time as well as stems: RePaint, Lugmayr et
# al. 2022). In the file, everything outside the range is the input itself,
# sample for sample, and the regenerated audio is faded in and out over
# RANGE_FADE_S inside the range's edges (raised cosine), so an edge is the
# input's own sample and no step is written there.
RANGE_FADE_S = 0.02


def range_context(frames: int, begin: int, end: int, window: int) -> tuple[int, int]:
    """The part of a song the sampler works on for a range [begin, end) (model
    frames): one window centred on the range (more if the range is longer, with
    a quarter window of context on each side), within the song."""
    length = min(frames, max(window, end - begin + window // 2))
    start = min(max(0, (begin + end) // 2 - length // 2), frames - length)
    return start, start + length


def fade_in_range(original: np.ndarray, new: np.ndarray, begin: int, end: int, fade: int) -> np.ndarray:
    """`original` [C, T] with `new` [C, T] inside [begin, end): raised-cosine
    fades of `fade` samples at both edges, inside the range; outside, `original`."""
    out = original.copy()
    length = end - begin
    fade = max(1, min(fade, length // 2))
    weight = np.ones(length, dtype=np.float64)
    ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(fade) / fade)  # 0 at the edge itself
    weight[:fade] = ramp
    weight[length - fade:] = np.minimum(weight[length - fade:], ramp[::-1])
    inside = original[:, begin:end].astype(np.float64)
    out[:, begin:end] = (inside + weight * (new[:, begin:end] - inside)).astype(np.float32)
    return out


def regenerate_range(
    models: ModelSet,
    given: Mapping[str, str | os.PathLike],
    out_dir: str | os.PathLike | OutputFolder,
    time_range: tuple[float, float],
    regenerate: tuple[str, ...],
    *,
    seed: int = 0,
    settings: SamplerSettings = IMPUTE,
    overlap: float = DEFAULT_OVERLAP,
    output: OutputFormat = OutputFormat(),
    max_seconds: float | None = None,
    progress: ProgressFn | None = None,
) -> dict[str, Path]:
    """Write the `regenerate` stems (whole files, new inside `time_range`
    seconds) and the mix of every given stem to `out_dir`."""
    if not regenerate:
        raise InputError("name the stems to regenerate in the range, e.g. --regenerate bass")
    unknown = [stem for stem in regenerate if stem not in models.stems]
    if unknown:
        raise InputError(f"cannot regenerate {unknown}: this model's stems are {list(models.stems)}")
    missing = [stem for stem in regenerate if stem not in given]
    if missing:
        raise InputError(f"give the stems to regenerate too ({', '.join(f'--given {s}=FILE' for s in missing)}): "
                         "their audio outside the range is kept")
    unknown_given = [name for name in given if name not in models.stems]
    if unknown_given:
        raise InputError(f"unknown stem(s) {unknown_given}: this model's stems are {list(models.stems)}")
    audio = {name: read_audio(path, max_seconds=max_seconds) for name, path in given.items()}
    if len({a.sample_rate for a in audio.values()}) > 1 or len({a.frames for a in audio.values()}) > 1:
        raise AudioInputError("given stems have different sample rates or lengths: "
                              f"{ {n: (a.sample_rate, a.frames) for n, a in audio.items()} }; export them at one "
                              "rate from the same start to the same end")
    first = next(iter(audio.values()))
    rate_in, frames_in = first.sample_rate, first.frames
    start_s, end_s = time_range
    if start_s >= frames_in / rate_in:
        raise InputError(f"the range {start_s:g}:{end_s:g} s starts after the end of the stems "
                         f"({frames_in / rate_in:.2f} s)")
    begin_in, end_in = round(start_s * rate_in), min(frames_in, round(end_s * rate_in))
    rate_model = models.sample_rate
    frames_model = max(1, round(frames_in * rate_model / rate_in))
    begin_m = max(0, int(math.floor(begin_in * rate_model / rate_in)))
    end_m = min(frames_model, int(math.ceil(end_in * rate_model / rate_in)))
    lo, hi = range_context(frames_model, begin_m, end_m, models.window)
    lo_in = int(math.floor(lo * rate_in / rate_model))
    hi_in = min(frames_in, int(math.ceil(hi * rate_in / rate_model)))

    num = len(models.stems)
    given_model = np.zeros((num, hi - lo), dtype=np.float32)
    mask = np.ones((num, hi - lo), dtype=bool)  # a stem with no file is given as silence
    for name, a in audio.items():
        whole = resample(to_mono(a.samples), rate_in, rate_model, length=frames_model)[0]
        given_model[models.stems.index(name)] = whole[lo:hi]
    for stem in regenerate:
        mask[models.stems.index(stem), begin_m - lo:end_m - lo] = False
    channels = max(a.channels for a in audio.values())
    with _output_folder(out_dir) as folder, \
            _open_writers(folder, dict.fromkeys((*regenerate, "mix"), channels), rate_in, output,
                          inputs=given.values()) as writers:
        stems = generate_stems(models, hi - lo, seed=seed, settings=settings, given=given_model,
                               given_mask=mask, overlap=overlap, progress=progress)
        fade = max(1, round(RANGE_FADE_S * rate_in))
        finals = {name: np.broadcast_to(a.samples, (channels, frames_in)).astype(np.float32)
                  for name, a in audio.items()}
        for stem in regenerate:
            n = models.stems.index(stem)
            new = np.zeros((channels, frames_in), dtype=np.float32)
            new[:, lo_in:hi_in] = resample(stems[n:n + 1], rate_model, rate_in, length=hi_in - lo_in)
            finals[stem] = fade_in_range(finals[stem], new, begin_in, end_in, fade)
            writers.write(stem, finals[stem])
        writers.write("mix", np.sum(list(finals.values()), axis=0, dtype=np.float32))
    return writers.paths
