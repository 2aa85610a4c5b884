"""What generation quality is measured on: windows of real stems from a
dataset split, and a model's generated and imputed windows, kept on disk.

Real windows: each track of the split is cut into non-overlapping windows of
the model's length; a window is usable when every stem sounds in most of it
(imputation needs given stems with notes and a true stem to compare with).
Tracks are split in two halves by their order: even ones form the
*reference* half (the real statistics every candidate is compared with),
odd ones the *pool* (real draws that calibrate the measure, and the
evaluation windows whose stems are given to imputation). The evaluation
windows come from distinct pool tracks, like independent generated windows.

Candidates are sampled with the engine's task API (engine.core.tasks.generate
and .impute, one seed per window as engine.core.diffusion.seed_for gives) and
written as WAV files with a manifest (CACHE/TASK/KEY/window-KK/STEM.wav, KEY a
hash of what made them); a later run with the same model,
windows and settings reads them back instead of sampling again (the shipped
prior takes minutes per window on a CPU).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.atomic import write_atomic
from engine.audio.files import read_audio, write_audio
from engine.errors import CommandError
from training.audio_features import frame_rms
from training.evaluate import read_track_stems

ProgressFn = Callable[[float, str], None]

ACTIVE_RMS = 10 ** (-50 / 20)     # a frame sounds above -50 dBFS RMS ...
ACTIVE_SHARE = 0.5                # ... and a usable window has it in half its frames, every stem
WINDOWS_PER_TRACK = 6             # at most, evenly spread: caps the cost of the real statistics
MANIFEST = "manifest.json"


@dataclass
class RealWindows:
    """Real stems cut in windows: [W, N, T] arrays with the track of each window."""

    stems: tuple[str, ...]
    sample_rate: int
    window: int
    reference: np.ndarray          # even tracks' windows
    reference_tracks: np.ndarray
    pool: np.ndarray               # odd tracks' windows
    pool_tracks: np.ndarray
    evaluation: np.ndarray         # indices into pool: one window per chosen track
    track_names: list[str]

    @property
    def evaluation_stems(self) -> np.ndarray:
        return self.pool[self.evaluation]

    def describe(self) -> dict:
        return {"stems": list(self.stems), "sample_rate": self.sample_rate, "window": self.window,
                "reference_windows": int(len(self.reference)), "pool_windows": int(len(self.pool)),
                "tracks": len(self.track_names),
                "evaluation": [f"{self.track_names[self.pool_tracks[i]]}@{int(i)}" for i in self.evaluation]}


def usable(stems: np.ndarray) -> bool:
    """Every stem [N, T] sounds (frame RMS above ACTIVE_RMS) in ACTIVE_SHARE of its frames."""
    return all((frame_rms(s) > ACTIVE_RMS).mean() >= ACTIVE_SHARE for s in stems)


def load_real_windows(data_dir: str | os.PathLike, stems: Sequence[str], sample_rate: int, window: int,
                      count: int, *, split: str = "test", seed: int = 0,
                      per_track: int = WINDOWS_PER_TRACK) -> RealWindows:
    """Usable windows of DATA/split, halves by track, and `count` evaluation windows."""
    root = Path(data_dir) / split
    if not root.is_dir():
        raise CommandError(f"no dataset split folder '{root}': render one with "
                           f"`msdm dataset synth --out {data_dir} --tracks 400 --seed 0`")
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    halves: dict[int, tuple[list, list]] = {0: ([], []), 1: ([], [])}
    names = []
    for folder in folders:
        audio = read_track_stems(folder, stems, sample_rate)
        if audio is None:
            continue
        starts = range(0, audio.shape[-1] - window + 1, window)
        kept = [audio[:, s:s + window] for s in starts if usable(audio[:, s:s + window])]
        if not kept:
            continue
        chosen = np.unique(np.linspace(0, len(kept) - 1, min(per_track, len(kept))).round().astype(int))
        half = halves[len(names) % 2]
        half[0].extend(kept[i] for i in chosen)
        half[1].extend([len(names)] * len(chosen))
        names.append(folder.name)
    if not halves[1][0] or not halves[0][0]:
        raise CommandError(f"'{root}' has fewer than two tracks with windows where every stem "
                           f"({', '.join(stems)}) sounds: render more tracks")
    pool_tracks = np.array(halves[1][1])
    tracks = np.unique(pool_tracks)
    rng = np.random.default_rng(seed)
    evaluation = []
    for k in range(count):
        track = tracks[np.linspace(0, len(tracks) - 1, count).round().astype(int)[k]] if count <= len(tracks) \
            else tracks[k % len(tracks)]
        options = [i for i in np.flatnonzero(pool_tracks == track) if i not in evaluation]
        if not options:
            raise CommandError(f"{count} evaluation windows asked, the pool half of '{root}' has "
                               f"{len(pool_tracks)}: ask fewer")
        evaluation.append(int(rng.choice(options)))
    return RealWindows(tuple(stems), sample_rate, window, np.stack(halves[0][0]), np.array(halves[0][1]),
                       np.stack(halves[1][0]), pool_tracks, np.array(evaluation), names)


# --------------------------------------------------------------------------- #
# Candidates: generated and imputed windows, sampled once and kept
# --------------------------------------------------------------------------- #

def _key(record: dict) -> str:
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]


def read_candidates(folder: Path, stems: Sequence[str], count: int, record: dict) -> np.ndarray | None:
    """[count, N, T] from folder/window-KK/<stem>.wav if its manifest matches `record`."""
    manifest = folder / MANIFEST
    if not manifest.is_file() or json.loads(manifest.read_text()).get("key") != _key(record):
        return None
    windows = []
    for k in range(count):
        windows.append(np.stack([read_audio(folder / f"window-{k:02d}" / f"{s}.wav").samples[0] for s in stems]))
    return np.stack(windows)


def write_candidates(folder: Path, stems: Sequence[str], audio: np.ndarray, sample_rate: int, record: dict) -> None:
    """WAV files (32-bit float, exact) per window and stem, then the manifest
    that marks them complete."""
    for k, window in enumerate(audio):
        for stem, samples in zip(stems, window):
            write_audio(folder / f"window-{k:02d}" / f"{stem}.wav", samples[None], sample_rate)
    write_atomic(folder / MANIFEST, json.dumps({"key": _key(record), **record}, indent=1, sort_keys=True))


def sample_candidates(models, task: str, real: RealWindows, settings, *, given: Sequence[str] = (),
                      seed: int = 0, batch: int = 4, cache: str | os.PathLike | None = None,
                      progress: ProgressFn | None = None) -> np.ndarray:
    """The model's windows [W, N, T] for `task` "generate" or "impute" (the
    stems named in `given` taken from the evaluation windows), read from
    `cache` when it already holds them for the same model, windows, seed and settings."""
    import torch

    from engine.core.diffusion import seed_for
    from engine.core.tasks import generate, impute

    if tuple(models.stems) != real.stems:
        raise CommandError(f"the model's stems {list(models.stems)} are not the dataset's {list(real.stems)}")
    unknown = [g for g in given if g not in real.stems]
    if task == "impute" and (not given or unknown or len(given) == len(real.stems)):
        raise CommandError(f"impute needs some but not all of the stems {list(real.stems)} given, got {list(given)}")
    count = len(real.evaluation)
    record = {"task": task, "given": sorted(given), "seed": seed, "settings": dataclasses.asdict(settings),
              "model": models.file_hash() if hasattr(models, "file_hash") else str(models),
              "windows": real.describe()}
    # One folder per record: runs of other sizes or settings keep their own windows.
    folder = (Path(cache) / (task if task == "generate" else "impute-" + "+".join(given)) / _key(record)
              if cache else None)
    if folder is not None and (kept := read_candidates(folder, real.stems, count, record)) is not None:
        return kept
    if settings.prior == "latent":
        audio = _sample_latent(models, task, real, settings, given, seed, progress)
        if folder is not None:
            write_candidates(folder, real.stems, audio, real.sample_rate, record)
        return audio
    mask = torch.tensor([stem in given for stem in real.stems])
    out = []
    for begin in range(0, count, batch):
        items = range(begin, min(count, begin + batch))
        seeds = [seed_for(seed, k) for k in items]

        def callback(info, begin=begin):
            if progress:
                progress((begin + len(items) * (info["i"] + 1) / info["steps"]) / count,
                         f"{task} windows {begin + 1}-{begin + len(items)}/{count}, step {info['i'] + 1}/{info['steps']}")

        with torch.no_grad():
            if task == "generate":
                result = generate(models.denoiser, len(real.stems), real.window, seeds, settings=settings,
                                  callback=callback, device=models.device)
            else:
                given_audio = torch.from_numpy(real.evaluation_stems[list(items)].copy())
                result = impute(models.denoiser, given_audio, mask, seeds, settings=settings,
                                callback=callback, device=models.device)
        out.append(result.cpu().numpy().astype(np.float32))
    audio = np.concatenate(out)
    if folder is not None:
        write_candidates(folder, real.stems, audio, real.sample_rate, record)
    return audio


def _sample_latent(models, task: str, real: RealWindows, settings, given: Sequence[str], seed: int,
                   progress: ProgressFn | None) -> np.ndarray:
    """The latent prior's windows, one at a time through the same path as
    `msdm generate/impute` (engine.audio.latent_generation): given stems come
    back unchanged, the others are decoded from sampled latents."""
    from engine.audio.latent_generation import generate_latent_stems
    from engine.core.diffusion import seed_for

    model = models.latent
    if model is None:
        raise CommandError("this model file has no latent prior: use --prior waveform, or a file with one")
    rows = tuple(real.stems.index(g) for g in given) if task == "impute" else ()
    count = len(real.evaluation)
    out = np.zeros((count, len(real.stems), real.window), dtype=np.float32)
    for k in range(count):
        def window_progress(fraction: float, message: str, k: int = k) -> None:
            if progress:
                progress((k + fraction) / count, f"{task} window {k + 1}/{count}: {message}")

        given_audio = real.evaluation_stems[k] if rows else None
        out[k] = generate_latent_stems(model, real.window, seed=seed_for(seed, k), settings=settings,
                                       given=given_audio, given_stems=rows, progress=window_progress)
    return out
