"""The lanes a musician works on, and one-step undo of an engine result. Pure
python + numpy: the GUI thread owns one Session and redraws from it."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Mapping, Sequence

from engine.audio.files import Audio

MIX = "mix"

if TYPE_CHECKING:
    from .takes import LaneTakes, Take


@dataclass(frozen=True)
class LaneAudio(Audio):
    """Audio in one lane (the engine's ``Audio``: float32 ``[channels, frames]``) and the file it came from."""

    path: Path


class StemMismatchError(ValueError):
    """Files that cannot be placed on the model's stem lanes."""


UNDO_STEPS = 50


@dataclass
class Session:
    """The mix lane plus one lane per model stem, in the model's order; each
    lane's takes (desktop/takes.py) and an undo history of results and take edits."""

    stems: tuple[str, ...]
    audio: dict[str, LaneAudio | None] = field(default_factory=dict)
    takes: dict[str, "LaneTakes | None"] = field(default_factory=dict)
    _undo: list[tuple[str, dict, dict]] = field(default_factory=list)   # (label, audio, takes) before each step

    def __post_init__(self) -> None:
        for name in self.lane_names:
            self.audio.setdefault(name, None)
            self.takes.setdefault(name, None)

    @property
    def lane_names(self) -> tuple[str, ...]:
        return (MIX, *self.stems)

    @property
    def undo_label(self) -> str:
        return self._undo[-1][0] if self._undo else ""

    def set_stems(self, stems: Sequence[str]) -> None:
        """The engine told us its model's stems: keep audio of lanes that still exist."""
        self.stems = tuple(stems)
        self.audio = {name: self.audio.get(name) for name in self.lane_names}
        self.takes = {name: self.takes.get(name) for name in self.lane_names}

    def filled(self) -> list[str]:
        return [name for name in self.lane_names if self.audio.get(name) is not None]

    def set_lane(self, name: str, audio: LaneAudio | None) -> None:
        if name not in self.lane_names:
            raise KeyError(f"no lane named {name!r}; lanes are {', '.join(self.lane_names)}")
        self.audio[name] = audio

    # ---- results and undo -----------------------------------------------------
    def _step(self, label: str) -> None:
        self._undo.append((label, dict(self.audio), dict(self.takes)))
        del self._undo[:-UNDO_STEPS]

    def apply_result(self, result: Mapping[str, LaneAudio], label: str) -> None:
        """Put an engine result (or opened files) on its lanes, remembering what
        was there (undo); those lanes' takes start afresh."""
        self._check_lanes(result)
        self._step(label)
        self.audio.update(result)
        self.takes.update(dict.fromkeys(result))

    def refine_result(self, result: Mapping[str, LaneAudio]) -> None:
        """Replace a first guess already on the lanes by the refined result of the
        same job: one job, one undo step (undo goes back to before the guess)."""
        self._check_lanes(result)
        self.audio.update(result)

    def add_takes(self, takes: Mapping[str, "Take"], label: str, new_step: bool = True) -> None:
        """A result's take of each lane it wrote; the lanes play it. The first
        take of a job is a new undo step, the job's later ones join it."""
        from .takes import LaneTakes, Take

        self._check_lanes(takes)
        if new_step or not self._undo:
            self._step(label)
        for name, take in takes.items():
            current = self.takes.get(name)
            if current is None:
                # The lane's audio as it was (a separation, an opened file) is take 1 to come back to.
                before = self.audio.get(name)
                current = None if before is None else LaneTakes.first(Take(before, "before"))
            self.takes[name] = LaneTakes.first(take) if current is None else current.added(take)
            self.audio[name] = take.audio if self.takes[name].single_take() is take else self.audio[name]

    def change_takes(self, name: str, takes: "LaneTakes", audio: LaneAudio, label: str) -> None:
        """A take edit (switch, comp, keep, delete): the lane's takes and the audio it now plays."""
        self._check_lanes({name: audio})
        self._step(label)
        self.takes[name] = takes
        self.audio[name] = audio

    def _check_lanes(self, result: Mapping[str, object]) -> None:
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
        """The audio undo would put back (kept ready to play, like the lanes'), and every take's."""
        out = [audio for _, lanes, _ in self._undo for audio in lanes.values() if audio is not None]
        for _, _, takes in self._undo:
            out += [t.audio for lane in takes.values() if lane is not None for t in lane.takes]
        out += [t.audio for lane in self.takes.values() if lane is not None for t in lane.takes]
        return out

    def undo(self) -> str:
        """Put back the lanes (and their takes) as they were before the last step; returns its label."""
        if not self._undo:
            return ""
        label, self.audio, self.takes = self._undo.pop()
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
