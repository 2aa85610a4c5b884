"""Takes of a lane and the comp made from them (issue 22). Pure python + numpy.

Every generate, impute or regenerate result is a take of each lane it wrote,
with the seed and the settings that made it. A lane plays its comp: a list of
pieces that cover the lane end to end, each played from one take (switching
takes is a comp of one piece). Takes of one lane share its sample rate, length
and channels (a regenerated range is a whole-length file); a result that does
not fit starts the lane's takes afresh (the old ones stay in the undo history).

Comps cut hard between pieces, so that every sample of a comp is the sample of
its take (exported stems equal the chosen takes sample for sample); a
regenerated range itself is faded in and out by the engine
(engine/audio/pipeline.regenerate_range), so cutting at its edges is seamless.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Mapping

import numpy as np

from engine.audio.files import Audio  # a lane's audio (session.LaneAudio) is one; session.py imports this module



class TakeError(ValueError):
    """A take operation that cannot be done; the message says why and what to do."""


@dataclass(frozen=True)
class Take:
    audio: Audio
    label: str                       # e.g. "Regenerate 2"
    seed: int | None = None
    settings: Mapping = field(default_factory=dict)   # the job's options, as sent

    def fits(self, other: Audio) -> bool:
        return (self.audio.sample_rate, self.audio.samples.shape) == (other.sample_rate, other.samples.shape)


@dataclass(frozen=True)
class Piece:
    """Frames [start, end) of the lane, played from take number ``take`` (from 1)."""

    start: int
    end: int
    take: int


@dataclass(frozen=True)
class LaneTakes:
    takes: tuple[Take, ...]
    pieces: tuple[Piece, ...]

    @classmethod
    def first(cls, take: Take) -> "LaneTakes":
        return cls((take,), (Piece(0, take.audio.frames, 1),))

    @property
    def frames(self) -> int:
        return self.takes[0].audio.frames

    @property
    def chosen(self) -> tuple[int, ...]:
        """The take numbers the comp plays, in time order (repeats merged)."""
        out: list[int] = []
        for piece in self.pieces:
            if not out or out[-1] != piece.take:
                out.append(piece.take)
        return tuple(out)

    def take(self, number: int) -> Take:
        if not 1 <= number <= len(self.takes):
            raise TakeError(f"There is no take {number}: this lane has takes 1 to {len(self.takes)}.")
        return self.takes[number - 1]

    def added(self, take: Take, choose: bool = True) -> "LaneTakes":
        """With one more take (the newest number); `choose`: the lane plays it whole."""
        if not self.takes[0].fits(take.audio):
            return LaneTakes.first(take)
        grown = LaneTakes((*self.takes, take), self.pieces)
        return grown.choose(len(grown.takes)) if choose else grown

    def choose(self, number: int) -> "LaneTakes":
        """Play take `number` from start to end."""
        self.take(number)
        return replace(self, pieces=(Piece(0, self.frames, number),))

    def comp(self, start: int, end: int, number: int) -> "LaneTakes":
        """Play take `number` in frames [start, end), the comp as it was elsewhere."""
        self.take(number)
        start, end = max(0, int(start)), min(self.frames, int(end))
        if start >= end:
            raise TakeError("Select a time range inside the song on the ruler first (it is empty).")
        pieces: list[Piece] = []
        for piece in self.pieces:
            if piece.start < start:
                pieces.append(Piece(piece.start, min(piece.end, start), piece.take))
            if piece.end > end:
                pieces.append(Piece(max(piece.start, end), piece.end, piece.take))
        pieces.append(Piece(start, end, number))
        return replace(self, pieces=_merged(sorted(pieces, key=lambda p: p.start)))

    def delete(self, number: int) -> "LaneTakes":
        """Without take `number` (later takes are renumbered); refused for a take the comp plays."""
        self.take(number)
        if number in self.chosen:
            raise TakeError(f"Take {number} is playing on this lane: switch to another take (or comp over "
                            "it) before deleting it.")
        renumber = {old: old - (old > number) for old in range(1, len(self.takes) + 1) if old != number}
        return LaneTakes(tuple(t for i, t in enumerate(self.takes, 1) if i != number),
                         tuple(replace(p, take=renumber[p.take]) for p in self.pieces))

    def keep_chosen(self) -> "LaneTakes":
        """Only the takes the comp plays (renumbered in order)."""
        keep = sorted(set(self.chosen))
        renumber = {old: new for new, old in enumerate(keep, 1)}
        return LaneTakes(tuple(self.takes[n - 1] for n in keep),
                         tuple(replace(p, take=renumber[p.take]) for p in self.pieces))

    def render(self) -> np.ndarray:
        """The comp's samples [channels, frames]: each piece copied from its take."""
        first = self.takes[0].audio.samples
        if len(self.pieces) == 1:
            return self.take(self.pieces[0].take).audio.samples
        out = np.empty_like(first)
        for piece in self.pieces:
            out[:, piece.start:piece.end] = self.take(piece.take).audio.samples[:, piece.start:piece.end]
        return out

    def single_take(self) -> Take | None:
        """The take the lane plays whole, if it plays one take whole."""
        return self.take(self.pieces[0].take) if len(self.pieces) == 1 else None


def take_label(number: int, take: Take) -> str:
    """How a take is listed: its number on the lane, what made it and its seed."""
    return f"{number}: {take.label}" + ("" if take.seed is None else f" (seed {take.seed})")


def _merged(pieces: list[Piece]) -> tuple[Piece, ...]:
    out: list[Piece] = []
    for piece in pieces:
        if out and out[-1].take == piece.take and out[-1].end == piece.start:
            out[-1] = Piece(out[-1].start, piece.end, piece.take)
        else:
            out.append(piece)
    return tuple(out)
