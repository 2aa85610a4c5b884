"""Multi-stem datasets: Slakh2100 (original and the paper's converted layout)
and any "folder of stems" (e.g. MUSDB18-HQ: vocals, drums, bass, other).

A track is a name plus one file (or several, summed) per stem; a stem with no
file is silence. Training items are random crops of all stems at the same
offset, stacked as channels [N, crop] (the paper: 262144 samples, random shift,
tracks shorter than a crop dropped, stereo averaged to mono).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import soundfile as sf
import torch
from torch.utils.data import Dataset

from engine.audio.files import AudioInputError, inspect_audio, resample
from engine.errors import UserError

log = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")
SLAKH_CLASSES = {"Bass": "bass", "Drums": "drums", "Guitar": "guitar", "Piano": "piano"}
NOT_STEMS = {"mix", "mixture"}


class DatasetError(UserError, ValueError):
    """A dataset folder that cannot be used; the message names the folder or file."""


@dataclass
class Track:
    name: str
    files: dict[str, list[Path]]  # stem -> files to sum (empty: silence)
    frames: int = 0
    sample_rate: int = 0


@dataclass
class ScanReport:
    tracks: list[Track] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # "<file or track>: what is wrong"
    dropped_short: list[str] = field(default_factory=list)


def detect_layout(root: Path) -> str:
    """'slakh' (TrackNNNNN/metadata.yaml + stems/), or 'folders' (track/<stem>.wav)."""
    if any((d / "metadata.yaml").is_file() and (d / "stems").is_dir() for d in _subdirs(root)):
        return "slakh"
    return "folders"


def _subdirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _slakh_track(folder: Path, stems: Sequence[str]) -> Track:
    """Group a Slakh track's rendered stems by instrument class (metadata.yaml)."""
    import yaml

    meta = yaml.safe_load((folder / "metadata.yaml").read_text())
    files: dict[str, list[Path]] = {stem: [] for stem in stems}
    for stem_id, info in (meta.get("stems") or {}).items():
        if not info.get("audio_rendered", True):
            continue
        target = "drums" if info.get("is_drum") else SLAKH_CLASSES.get(info.get("inst_class", ""))
        if target in files:
            path = folder / "stems" / f"{stem_id}.flac"
            if path.is_file():
                files[target].append(path)
    return Track(folder.name, files)


def _folder_track(folder: Path, stems: Sequence[str]) -> Track:
    by_name = {p.stem: p for p in folder.iterdir() if p.suffix.lower() in AUDIO_EXTENSIONS}
    return Track(folder.name, {stem: [by_name[stem]] if stem in by_name else [] for stem in stems})


def infer_stems(root: Path) -> tuple[str, ...]:
    """Stem names of a folder-of-stems dataset: every audio file name seen, less the mix."""
    names = set()
    for folder in _subdirs(root):
        names |= {p.stem for p in folder.iterdir() if p.suffix.lower() in AUDIO_EXTENSIONS}
    names -= NOT_STEMS
    if not names:
        raise DatasetError(f"{root}: no track folders with audio files found")
    return tuple(sorted(names))


def scan(root: str | os.PathLike, stems: Sequence[str], *, min_frames: int = 0,
         layout: str = "auto") -> ScanReport:
    """Find the tracks under `root` and check every file's header: readable,
    one sample rate per track, stem lengths equal (within 1 %, a render's tail),
    long enough. Bad tracks are reported by name and left out."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder not found: {root}")
    layout = detect_layout(root) if layout == "auto" else layout
    make = _slakh_track if layout == "slakh" else _folder_track
    report = ScanReport()
    for folder in _subdirs(root):
        try:
            track = make(folder, stems)
        except Exception as error:  # noqa: BLE001 - a broken metadata file is one bad track
            report.problems.append(f"{folder}: {error}")
            continue
        problem = _check_track(track)
        if problem:
            report.problems.append(problem)
        elif track.frames < min_frames:
            report.dropped_short.append(track.name)
        else:
            report.tracks.append(track)
    for problem in report.problems:
        log.warning("skipping %s", problem)
    return report


def _check_track(track: Track) -> str | None:
    lengths, rates = {}, set()
    for stem, paths in track.files.items():
        for path in paths:
            try:
                info = inspect_audio(path)
            except AudioInputError as error:
                return str(error)
            lengths[path.name] = info.frames
            rates.add(info.samplerate)
    if not lengths:
        return f"{track.name}: no stem files"
    if len(rates) > 1:
        return f"{track.name}: stems have different sample rates {sorted(rates)}"
    longest, shortest = max(lengths.values()), min(lengths.values())
    if shortest < 0.99 * longest:
        return f"{track.name}: stems have different lengths {lengths}"
    track.frames, track.sample_rate = shortest, rates.pop()
    return None


def read_stems(track: Track, stems: Sequence[str], start: int, frames: int, sample_rate: int) -> np.ndarray:
    """[N, frames] at `sample_rate` from `start` (in the target rate's samples);
    each stem summed over its files and averaged to mono."""
    ratio = track.sample_rate / sample_rate
    src_start, src_frames = int(start * ratio), int(np.ceil(frames * ratio))
    out = np.zeros((len(stems), frames), dtype=np.float32)
    for n, stem in enumerate(stems):
        for path in track.files.get(stem, []):
            try:
                data, _ = sf.read(str(path), start=src_start, frames=src_frames, dtype="float32", always_2d=True)
            except Exception as error:  # noqa: BLE001
                raise DatasetError(f"{path}: could not read ({error})") from error
            mono = data.mean(axis=1)[None]
            if track.sample_rate != sample_rate:
                mono = resample(mono, track.sample_rate, sample_rate, length=frames)
            out[n, :mono.shape[1]] += mono[0, :frames]
    return out


class StemCrops(Dataset):
    """Random crops of all stems of a track at one offset ([N, crop] tensors).

    `items_per_epoch` sets the epoch length; item i of epoch e uses its own
    generator (seed, e, i), so crops are reproducible and differ across workers."""

    def __init__(self, tracks: Sequence[Track], stems: Sequence[str], sample_rate: int, crop: int,
                 items_per_epoch: int | None = None, seed: int = 0, random_shift: bool = True) -> None:
        if not tracks:
            raise DatasetError("no usable tracks (see the warnings above for the files left out)")
        self.tracks, self.stems, self.sample_rate, self.crop = list(tracks), tuple(stems), sample_rate, crop
        self.items = items_per_epoch or len(self.tracks)
        self.seed, self.random_shift, self.epoch = seed, random_shift, 0

    def __len__(self) -> int:
        return self.items

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int) -> torch.Tensor:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        track = self.tracks[rng.integers(len(self.tracks))] if self.random_shift else self.tracks[index % len(self.tracks)]
        frames = int(track.frames * self.sample_rate / track.sample_rate)
        start = int(rng.integers(0, max(1, frames - self.crop + 1))) if self.random_shift else 0
        return torch.from_numpy(read_stems(track, self.stems, start, self.crop, self.sample_rate))
