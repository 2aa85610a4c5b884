"""Reading audio files for the lanes off the GUI thread.

``load_files`` (plain python) reads the files with the engine's reader and
prepares every lane the mixer will need at its new rate (the engine's soxr
resampler): a long song takes seconds, which would freeze the window.
``FileLoader`` runs it on one worker thread of a QThreadPool, one request at a
time in the order asked, and hands the result back on the GUI thread: first to
the caller's ``on_done``, then as the ``finished`` signal. The worker only
reads its request and numpy arrays that nobody writes; the GUI thread applies
the result to the session and the widgets."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
from PySide6.QtCore import QObject, Qt, QThreadPool, Signal

from engine.audio.files import AudioInputError, read_audio

from .lane_state import playback_rate, prepare_playback
from .session import LaneAudio


@dataclass(frozen=True)
class LoadRequest:
    """Files to read onto lanes, and the other lanes as they will be after."""

    paths: Mapping[str, Path]                      # lane -> file
    keep: Mapping[str, LaneAudio | None]           # every lane, in order; those in ``paths`` are replaced
    cached: frozenset = frozenset()                # (id(audio), rate) the GUI already has prepared


@dataclass(frozen=True)
class Loaded:
    """What ``load_files`` made: the lanes' audio and their playback samples, or
    ``error``, a message for the musician (nothing was read then)."""

    audio: Mapping[str, LaneAudio] = field(default_factory=dict)
    rate: int | None = None
    prepared: tuple[tuple[LaneAudio, int, np.ndarray], ...] = ()
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error


class LoadError(Exception):
    """A file that cannot be read; the message says which and what to do."""


def read_lane(path: str | Path) -> LaneAudio:
    """One file as lane audio, or LoadError with the message the window shows."""
    try:
        audio = read_audio(path)
    except AudioInputError as error:
        raise LoadError(f"{error} Your lanes were not changed.") from error
    except (OSError, ValueError, RuntimeError) as error:
        raise LoadError(f"Cannot open '{path}': {error}. Your lanes were not changed.") from error
    return LaneAudio(audio.samples, audio.sample_rate, Path(path).resolve())


def load_files(request: LoadRequest) -> Loaded:
    """Read every file (the first that fails stops it all: lanes change whole or
    not at all), then prepare for playback the new lanes and any kept lane the
    new rate leaves unprepared."""
    try:
        audio = {name: read_lane(path) for name, path in request.paths.items()}
    except LoadError as error:
        return Loaded(error=str(error))
    after = {name: audio.get(name, kept) for name, kept in request.keep.items()}
    after.update({name: a for name, a in audio.items() if name not in after})
    rate = playback_rate(after)
    prepared = []
    for name, lane in after.items():
        if lane is None or (name not in audio and (id(lane), rate) in request.cached):
            continue
        prepared.append((lane, rate, prepare_playback(lane, rate)))
    return Loaded(audio=audio, rate=rate, prepared=tuple(prepared))


def _load_safely(request: LoadRequest) -> Loaded:
    try:
        return load_files(request)
    except Exception as error:  # the GUI must always hear back, or the request queue stalls
        names = ", ".join(str(p) for p in request.paths.values())
        return Loaded(error=f"Cannot open {names}: {error}. Your lanes were not changed.")


class FileLoader(QObject):
    """Runs ``load_files`` on a worker thread, one request at a time.

    ``submit(make_request, on_done)``: ``make_request()`` is called on the GUI
    thread when the request's turn comes (so it sees the lanes as the requests
    before it left them), ``on_done(loaded)`` on the GUI thread when it is read."""

    finished = Signal(object)     # Loaded, after its on_done ran
    _delivered = Signal(object)   # emitted by the worker; queued to the GUI thread

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._pool = QThreadPool(self)
        self._pool.setMaxThreadCount(1)
        self._queue: deque[tuple[Callable[[], LoadRequest], Callable[[Loaded], None]]] = deque()
        self._on_done: Callable[[Loaded], None] | None = None
        self._delivered.connect(self._deliver, Qt.ConnectionType.QueuedConnection)

    @property
    def busy(self) -> bool:
        """Files are being read or wait their turn."""
        return self._on_done is not None or bool(self._queue)

    def submit(self, make_request: Callable[[], LoadRequest], on_done: Callable[[Loaded], None]) -> None:
        self._queue.append((make_request, on_done))
        self._next()

    def stop(self, timeout_ms: int = 10_000) -> bool:
        """Drop the requests not started and wait for the one being read (closing the app)."""
        self._queue.clear()
        return self._pool.waitForDone(timeout_ms)

    def _next(self) -> None:
        if self._on_done is not None or not self._queue:
            return
        make_request, self._on_done = self._queue.popleft()
        request = make_request()
        self._pool.start(lambda: self._delivered.emit(_load_safely(request)))

    def _deliver(self, loaded: Loaded) -> None:
        on_done, self._on_done = self._on_done, None
        try:
            if on_done is not None:
                on_done(loaded)
        finally:
            self.finished.emit(loaded)
            self._next()
