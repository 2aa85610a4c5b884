"""What a catalogue bounce works on: the songs, their names, seeds and owners.

- Inputs are audio files, folders (searched recursively) or list files (one
  path per line, relative to the list; `#` starts a comment).
- Each song gets a track name: its path relative to the folder it was found
  in, without the extension (`album/song`), or the file's name for a file
  given directly. Outputs go to `--pattern` filled with it.
- Each song's seed comes from the user's seed and its track name, so it does
  not depend on the order, the batch or the process that bounces it.
- With several processes, rank R takes every WORLD_SIZE-th song of the list
  sorted by track name: a rule every rank computes alike without talking.
"""

from __future__ import annotations

import hashlib
import os
import string
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from engine.errors import UserError

AUDIO_EXTENSIONS = frozenset({".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff",
                              ".aifc", ".w64", ".rf64", ".caf", ".au", ".snd"})
LIST_EXTENSIONS = frozenset({".txt", ".lst", ".list", ".m3u", ".m3u8"})
PATTERN_FIELDS = frozenset({"track", "stem", "ext", "name"})
DEFAULT_PATTERN = "{track}/{stem}.{ext}"


class InputError(UserError, ValueError):
    """An input list or pattern the user has to fix."""


@dataclass(frozen=True)
class Song:
    path: Path    # the audio file
    track: str    # unique name, '/'-separated, no extension

    @property
    def name(self) -> str:
        return PurePosixPath(self.track).name


def song_seed(seed: int, track: str) -> int:
    """The seed of one song: the user's seed and a hash of its track name."""
    from engine.core.diffusion import seed_for  # torch: only when songs are bounced

    digest = int.from_bytes(hashlib.sha256(track.encode("utf-8")).digest()[:8], "big")
    return seed_for(seed, digest)


def rank_share(songs: list[Song], rank: int, world_size: int) -> list[Song]:
    ordered = sorted(songs, key=lambda s: s.track)
    return ordered[rank::world_size]


def _is_hidden(path: Path) -> bool:
    return path.name.startswith(".")


def _inside(path: Path, folder: Path | None) -> bool:
    if folder is None:
        return False
    try:
        path.resolve().relative_to(folder)
        return True
    except ValueError:
        return False


def _scan_folder(folder: Path, exclude: Path | None) -> list[tuple[Path, str]]:
    found = []
    for root, dirs, files in os.walk(folder):
        root_path = Path(root)
        # Never descend into the output folder (outputs are not inputs) or hidden folders.
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not _inside(root_path / d, exclude))
        for name in sorted(files):
            path = root_path / name
            if path.suffix.lower() in AUDIO_EXTENSIONS and not _is_hidden(path):
                found.append((path, path.relative_to(folder).with_suffix("").as_posix()))
    return found


def _read_list(list_file: Path) -> list[Path]:
    try:
        lines = list_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"cannot read the list file '{list_file}': {error}") from None
    paths = []
    for line in lines:
        line = line.strip()
        if line and not line.startswith("#"):
            path = Path(line).expanduser()
            paths.append(path if path.is_absolute() else list_file.parent / path)
    return paths


def find_songs(inputs: list[str | os.PathLike], exclude: Path | None = None) -> list[Song]:
    """Every song the inputs name, once each, with unique track names.

    A path that does not exist is kept (as a song that will fail with a clear
    message), so a typo in a list of thousands is reported, not fatal."""
    exclude = exclude.resolve() if exclude is not None else None
    found: list[tuple[Path, str]] = []

    def add(path: Path, depth: int = 0) -> None:
        if path.is_dir():
            found.extend(_scan_folder(path, exclude))
        elif path.suffix.lower() in LIST_EXTENSIONS and path.is_file():
            if depth > 8:
                raise InputError(f"list files nest too deep at '{path}' (does a list include itself?)")
            for item in _read_list(path):
                add(item, depth + 1)
        else:
            found.append((path, path.with_suffix("").name if path.suffix else path.name))

    for item in inputs:
        add(Path(item).expanduser())

    seen: set[Path] = set()
    unique: list[tuple[Path, str]] = []
    for path, track in found:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append((path, track))
    # Same name from different files (song.wav and song.flac, or two folders'
    # song.wav): keep them apart with the extension, then a number.
    counts: dict[str, int] = {}
    for _, track in unique:
        counts[track] = counts.get(track, 0) + 1
    songs, taken = [], set()
    for path, track in unique:
        name = track if counts[track] == 1 else f"{track}_{path.suffix.lstrip('.').lower() or 'audio'}"
        base, n = name, 2
        while name in taken:
            name, n = f"{base}_{n}", n + 1
        taken.add(name)
        songs.append(Song(path, name))
    return songs


def check_pattern(pattern: str, extension: str) -> str:
    """A --pattern must name each song's files apart, stay inside the output
    folder and end with the format's extension."""
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(pattern) if name is not None}
    except ValueError as error:
        raise InputError(f"--pattern {pattern!r}: {error}") from None
    unknown = fields - PATTERN_FIELDS
    if unknown:
        raise InputError(f"--pattern {pattern!r}: unknown field(s) {sorted(unknown)}; "
                         f"use {{track}}, {{name}}, {{stem}} and {{ext}}")
    if "stem" not in fields or not fields & {"track", "name"}:
        raise InputError(f"--pattern {pattern!r} must contain {{stem}} and {{track}} (or {{name}}), "
                         f"so every song and stem gets its own file")
    sample = fill_pattern(pattern, "album/song", "bass", extension)
    if PurePosixPath(sample).is_absolute() or ".." in PurePosixPath(sample).parts:
        raise InputError(f"--pattern {pattern!r} must stay inside the output folder (no leading / or ..)")
    if not sample.endswith(f".{extension}"):
        raise InputError(f"--pattern {pattern!r} must end with .{{ext}} (the file's format)")
    return pattern


def fill_pattern(pattern: str, track: str, stem: str, extension: str) -> str:
    return pattern.format(track=track, name=PurePosixPath(track).name, stem=stem, ext=extension)
