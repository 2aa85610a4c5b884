"""The playback mixer: pure numpy, no Qt, no sound device.

The audio callback calls :meth:`Mixer.render` and nothing else; the GUI thread
changes gains, mute/solo, position and loop. A lock guards the few fields both
threads touch, and ``render`` only reads prepared float32 arrays, so it never
waits on the GUI for longer than a field update.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from typing import Mapping

import numpy as np


@dataclass(frozen=True)
class Track:
    """One lane as the mixer sees it: ``samples`` is float32 ``[frames, channels]``
    at the mixer's rate (frames-first, so a block slice is contiguous)."""

    samples: np.ndarray
    gain: float = 1.0
    mute: bool = False
    solo: bool = False

    @property
    def frames(self) -> int:
        return int(self.samples.shape[0])


def prepare_samples(samples: np.ndarray) -> np.ndarray:
    """Engine layout ``[channels, frames]`` -> mixer layout ``[frames, channels]`` float32."""
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"samples must be [channels, frames], got shape {x.shape}")
    return np.ascontiguousarray(x.T)


def audible(tracks: Mapping[str, Track]) -> list[str]:
    """Names that play: not muted, and soloed when any track is soloed (the DAW rule)."""
    any_solo = any(t.solo for t in tracks.values())
    return [name for name, t in tracks.items() if not t.mute and (t.solo or not any_solo)]


class Mixer:
    """Sums audible tracks, scaled by their gains, into ``out_channels``.

    Channel rule: a track with ``out_channels`` channels plays as is; a mono
    track goes to every output channel; any other count is downmixed to mono
    first (mean of its channels). The output is clipped to [-1, 1] so a loud
    sum never wraps in the device.
    """

    def __init__(self, sample_rate: int, out_channels: int = 2) -> None:
        self.sample_rate = int(sample_rate)
        self.out_channels = int(out_channels)
        self._lock = threading.Lock()
        self._tracks: dict[str, Track] = {}
        self._position = 0
        self._playing = False
        self._loop: tuple[int, int] | None = None

    # ---- state the GUI changes ------------------------------------------------
    def set_tracks(self, tracks: Mapping[str, Track], sample_rate: int | None = None) -> None:
        with self._lock:
            self._tracks = dict(tracks)
            if sample_rate is not None:
                self.sample_rate = int(sample_rate)
            self._position = min(self._position, self._length())

    def tracks(self) -> dict[str, Track]:
        with self._lock:
            return dict(self._tracks)

    def update(self, name: str, **changes) -> None:
        """Change gain / mute / solo of one track (unknown names are ignored:
        a lane without audio has no track)."""
        with self._lock:
            if name in self._tracks:
                self._tracks[name] = replace(self._tracks[name], **changes)

    def play(self) -> None:
        with self._lock:
            if self._position >= self._length() and self._loop is None:
                self._position = 0
            self._playing = self._length() > 0

    def pause(self) -> None:
        with self._lock:
            self._playing = False

    def stop(self) -> None:
        with self._lock:
            self._playing = False
            self._position = self._loop[0] if self._loop else 0

    def seek(self, frame: int) -> None:
        with self._lock:
            self._position = int(min(max(frame, 0), self._length()))

    def set_loop(self, start: int | None, end: int | None = None) -> None:
        """Loop [start, end) frames while playing; ``None`` turns looping off."""
        with self._lock:
            if start is None or end is None or end - start < 1:
                self._loop = None
            else:
                self._loop = (int(max(start, 0)), int(end))

    @property
    def position(self) -> int:
        return self._position

    @property
    def playing(self) -> bool:
        return self._playing

    @property
    def loop(self) -> tuple[int, int] | None:
        return self._loop

    @property
    def length(self) -> int:
        with self._lock:
            return self._length()

    def _length(self) -> int:
        return max((t.frames for t in self._tracks.values()), default=0)

    # ---- the audio thread -----------------------------------------------------
    def render(self, frames: int) -> np.ndarray:
        """The next ``frames`` frames of output, ``[frames, out_channels]`` float32;
        advances the position (wrapping inside the loop) and stops at the end."""
        out = np.zeros((frames, self.out_channels), dtype=np.float32)
        with self._lock:
            if not self._playing:
                return out
            tracks = [self._tracks[n] for n in audible(self._tracks)]
            length = self._length()
            done = 0
            while done < frames:
                loop = self._loop
                looping = loop is not None and self._position < loop[1] and loop[0] < length
                end = min(loop[1], length) if looping else length
                take = min(frames - done, end - self._position)
                if take > 0:
                    self._mix_into(out[done:done + take], tracks, self._position, take)
                    self._position += take
                    done += take
                if self._position >= end:
                    if looping:
                        self._position = loop[0]
                    else:
                        self._playing = False
                        break
        np.clip(out, -1.0, 1.0, out=out)
        return out

    def _mix_into(self, block: np.ndarray, tracks: list[Track], start: int, count: int) -> None:
        for track in tracks:
            if track.gain == 0.0 or start >= track.frames:
                continue
            part = track.samples[start:start + count]
            n = part.shape[0]
            channels = part.shape[1]
            if channels == self.out_channels:
                block[:n] += track.gain * part
            elif channels == 1:
                block[:n] += track.gain * part
            else:
                block[:n] += track.gain * part.mean(axis=1, keepdims=True)
