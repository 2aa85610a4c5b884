"""The session file the app saves and opens: lanes, takes and comps, the lanes'
settings, the ruler's selection and the task settings, as JSON (issue 22).
Pure python: the window gathers what goes in and puts back what comes out.

Audio is not copied in: each lane, take and comp is named by its file (the
session folder holds the results and comps the app wrote). The file is written
by the one atomic writer (engine/atomic.py), so a crash never leaves half a
session; a file that is not a session, is damaged, or was written by a newer
version of the app is refused with a SessionFileError that says which and why.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from engine.atomic import write_atomic

FORMAT = "msdm-studio-session"
VERSION = 1
SUFFIX = ".msdm.json"
LANE_FLAGS = ("gain", "mute", "solo", "given", "selected")
CONTROLS = ("steps", "resamples", "seed", "method", "likelihood", "separation", "seconds", "takes")


class SessionFileError(ValueError):
    """A session file that cannot be opened; the message names it and says why."""


@dataclass(frozen=True)
class TakeEntry:
    path: str
    label: str
    seed: int | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LaneEntry:
    audio: str | None                                  # the file the lane plays (a take's, a comp's or opened)
    flags: Mapping[str, Any] = field(default_factory=dict)   # gain, mute, solo, given, selected
    takes: tuple[TakeEntry, ...] = ()
    pieces: tuple[tuple[int, int, int], ...] = ()      # (start, end, take number) in frames


@dataclass(frozen=True)
class SessionDocument:
    song: str
    stems: tuple[str, ...]
    lanes: Mapping[str, LaneEntry]
    selection: tuple[float, float] | None = None
    controls: Mapping[str, Any] = field(default_factory=dict)

    def files(self) -> dict[str, str]:
        """Every audio file the session names: "lane" for what a lane plays, "lane#K" for its take K."""
        out: dict[str, str] = {}
        for name, lane in self.lanes.items():
            if lane.audio is not None:
                out[name] = lane.audio
            for number, take in enumerate(lane.takes, 1):
                out[f"{name}#{number}"] = take.path
        return out


def to_json(document: SessionDocument) -> str:
    lanes = {}
    for name, lane in document.lanes.items():
        lanes[name] = {"audio": lane.audio, **{k: lane.flags[k] for k in LANE_FLAGS if k in lane.flags},
                       "takes": [{"path": t.path, "label": t.label, "seed": t.seed, "settings": dict(t.settings)}
                                 for t in lane.takes],
                       "pieces": [list(p) for p in lane.pieces]}
    body = {"format": FORMAT, "version": VERSION, "song": document.song, "stems": list(document.stems),
            "lanes": lanes, "selection": list(document.selection) if document.selection else None,
            "controls": dict(document.controls)}
    return json.dumps(body, indent=1, default=_plain) + "\n"


def _plain(value: Any) -> Any:
    if isinstance(value, (tuple, set)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in a session file")


def save(path: str | Path, document: SessionDocument) -> Path:
    """Write the session file atomically (a reader sees the old file or the whole new one)."""
    path = Path(path)
    write_atomic(path, to_json(document))
    return path


def load(path: str | Path) -> SessionDocument:
    """Read and check a session file; SessionFileError if it is not one this app can open."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise SessionFileError(f"Cannot read the session '{path}': {error}.") from None
    try:
        body = json.loads(text)
    except json.JSONDecodeError as error:
        raise SessionFileError(f"'{path}' is damaged (not complete JSON: {error.msg} at line {error.lineno}); "
                               "nothing was opened. Open another copy of the session.") from None
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        raise SessionFileError(f"'{path}' is not an MSDM Studio session file; nothing was opened.")
    version = body.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise SessionFileError(f"'{path}' is damaged (its version is {version!r}); nothing was opened.")
    if version > VERSION:
        raise SessionFileError(f"'{path}' was saved by a newer MSDM Studio (session version {version}; this app "
                               f"reads up to {VERSION}): update the app to open it. Nothing was opened.")
    try:
        return _document(body)
    except (KeyError, TypeError, ValueError) as error:
        raise SessionFileError(f"'{path}' is damaged ({error}); nothing was opened.") from None


def _document(body: Mapping[str, Any]) -> SessionDocument:
    stems = tuple(_text(s, "a stem name") for s in body["stems"])
    lanes = {}
    for name, lane in dict(body["lanes"]).items():
        takes = tuple(TakeEntry(_text(t["path"], "a take's file"), _text(t["label"], "a take's label"),
                                None if t.get("seed") is None else int(t["seed"]), dict(t.get("settings") or {}))
                      for t in lane.get("takes", []))
        pieces = tuple((int(a), int(b), int(k)) for a, b, k in lane.get("pieces", []))
        if takes and not _covers(pieces, len(takes)):
            raise ValueError(f"the {name} lane's comp does not cover the lane with its takes")
        audio = lane.get("audio")
        lanes[_text(name, "a lane name")] = LaneEntry(None if audio is None else _text(audio, "a lane's file"),
                                                      {k: lane[k] for k in LANE_FLAGS if k in lane}, takes, pieces)
    selection = body.get("selection")
    if selection is not None:
        start, end = (float(v) for v in selection)
        if not (math.isfinite(start) and math.isfinite(end) and 0 <= start < end):
            raise ValueError(f"the selection {selection!r} is not a time range")
        selection = (start, end)
    controls = {k: v for k, v in dict(body.get("controls") or {}).items() if k in CONTROLS}
    return SessionDocument(str(body.get("song", "untitled")), stems, lanes, selection, controls)


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} is {value!r}, not a name")
    return value


def _covers(pieces: tuple[tuple[int, int, int], ...], takes: int) -> bool:
    """Pieces in order, end to end from 0, each naming a take that exists."""
    position = 0
    for start, end, number in pieces:
        if start != position or end <= start or not 1 <= number <= takes:
            return False
        position = end
    return bool(pieces)
