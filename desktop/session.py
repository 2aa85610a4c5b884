"""The lanes a musician works on, and one-step undo of an engine result. Pure
python + numpy: the GUI thread owns one Session and redraws from it."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from engine.audio.files import Audio

MIX = "mix"


@dataclass(frozen=True)
class LaneAudio(Audio):
    """Audio in one lane (the engine's ``Audio``: float32 ``[channels, frames]``) and the file it came from."""

    path: Path


class StemMismatchError(ValueError):
    """Files that cannot be placed on the model's stem lanes."""


@dataclass
class Session:
    """The mix lane plus one lane per model stem, in the model's order."""

    stems: tuple[str, ...]
    audio: dict[str, LaneAudio | None] = field(default_factory=dict)
    _undo: list[dict[str, LaneAudio | None]] = field(default_factory=list)
    undo_label: str = ""

    def __post_init__(self) -> None:
        for name in self.lane_names:
            self.audio.setdefault(name, None)

    @property
    def lane_names(self) -> tuple[str, ...]:
        return (MIX, *self.stems)

    def set_stems(self, stems: Sequence[str]) -> None:
        """The engine told us its model's stems: keep audio of lanes that still exist."""
        self.stems = tuple(stems)
        self.audio = {name: self.audio.get(name) for name in self.lane_names}

    def filled(self) -> list[str]:
        return [name for name in self.lane_names if self.audio.get(name) is not None]

    def set_lane(self, name: str, audio: LaneAudio | None) -> None:
        if name not in self.lane_names:
            raise KeyError(f"no lane named {name!r}; lanes are {', '.join(self.lane_names)}")
        self.audio[name] = audio

    # ---- results and undo -----------------------------------------------------
    def apply_result(self, result: Mapping[str, LaneAudio], label: str) -> None:
        """Put an engine result on its lanes, remembering what was there (undo)."""
        self._check_lanes(result)
        self._undo = [dict(self.audio)]
        self.undo_label = label
        self.audio.update(result)

    def refine_result(self, result: Mapping[str, LaneAudio]) -> None:
        """Replace a first guess already on the lanes by the refined result of the
        same job: one job, one undo step (undo goes back to before the guess)."""
        self._check_lanes(result)
        self.audio.update(result)

    def _check_lanes(self, result: Mapping[str, LaneAudio]) -> None:
        unknown = [name for name in result if name not in self.lane_names]
        if unknown:
            raise StemMismatchError(
                f"The engine returned lanes {', '.join(unknown)} that this session does not have "
                f"({', '.join(self.lane_names)}): the server runs a different model than the app expects. "
                "Reconnect to the engine so the lanes follow its model.")

    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    def undo_audio(self) -> list[LaneAudio]:
        """The audio undo would put back (kept ready to play, like the lanes')."""
        return [audio for lanes in self._undo for audio in lanes.values() if audio is not None]

    def undo(self) -> str:
        """Put back the lanes as they were before the last result; returns its label."""
        if not self._undo:
            return ""
        self.audio = self._undo.pop()
        label, self.undo_label = self.undo_label, ""
        return label


def assign_stem_files(paths: Iterable[Path], stems: Sequence[str], free: Sequence[str] | None = None) -> dict[str, Path]:
    """Place stem files on lanes: a file whose name contains a stem's name goes to
    that lane, the others fill the remaining lanes in order. Too many files, or
    two files for one stem, raise StemMismatchError (nothing is placed)."""
    paths = [Path(p) for p in paths]
    free = list(stems if free is None else free)
    if len(paths) > len(stems):
        raise StemMismatchError(
            f"The model has {len(stems)} stems ({', '.join(stems)}) but {len(paths)} files were opened. "
            f"Open at most {len(stems)} stem files, or open a mix and run Separate.")
    placed: dict[str, Path] = {}
    rest = []
    for path in paths:
        words = set(re.split(r"[^a-z0-9]+", path.stem.lower()))
        match = [s for s in stems if s.lower() in words]
        if len(match) == 1:
            if match[0] in placed:
                raise StemMismatchError(
                    f"Two files are named for the {match[0]} stem: '{placed[match[0]].name}' and '{path.name}'. "
                    "Open one file per stem.")
            placed[match[0]] = path
        else:
            rest.append(path)
    empty = [s for s in free if s not in placed]
    if len(rest) > len(empty):
        raise StemMismatchError(
            f"No free lane for {', '.join(p.name for p in rest[len(empty):])}: every stem lane "
            f"({', '.join(stems)}) already has a file. Name stem files after their stem, e.g. 'drums.wav'.")
    for path, name in zip(rest, empty):
        placed[name] = path
    return placed
