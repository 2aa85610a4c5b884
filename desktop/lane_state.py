"""Each lane as plain data (no Qt): its audio and the musician's settings
(level, mute, solo, 'given'), and what the mixer plays from them.

The GUI thread owns the list of LaneStates (desktop/lanes.py); the lane
widgets draw them and the mixer gets Tracks made from them. Samples prepared
for playback (resampled to one rate, frames first) are made off the GUI thread
by the file loader and kept in a PlaybackCache, so undo and mute/solo never
resample again."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np

from engine.audio.files import resample

from .mixer import Track, prepare_samples
from .session import MIX, LaneAudio


@dataclass
class LaneState:
    """One lane: its audio (None: empty) and how it plays."""

    name: str
    audio: LaneAudio | None = None
    gain: float = 1.0                  # the level slider, 1.0 = as is
    mute: bool = False
    solo: bool = False
    given: bool = False                # Impute keeps this stem and writes the others
    selected: bool = False             # Regenerate writes this stem anew inside the ruler's range

    @property
    def is_mix(self) -> bool:
        return self.name == MIX

    @property
    def filled(self) -> bool:
        return self.audio is not None

    def track(self, samples: np.ndarray) -> Track:
        return Track(samples, gain=self.gain, mute=self.mute, solo=self.solo)


def lane_states(names: Sequence[str], previous: Iterable[LaneState] = ()) -> list[LaneState]:
    """One state per lane, in order; a lane that existed before keeps its state
    (the engine's model changed its stems: the lanes that remain keep their
    level, mute, solo and tick)."""
    old = {state.name: state for state in previous}
    return [old.get(name) or LaneState(name) for name in names]


def given_stems(states: Iterable[LaneState]) -> list[str]:
    """The stems Impute keeps: ticked 'given' and holding audio (never the mix)."""
    return [s.name for s in states if s.given and s.filled and not s.is_mix]


def selected_stems(states: Iterable[LaneState]) -> list[str]:
    """The stems Regenerate writes anew: selected (never the mix)."""
    return [s.name for s in states if s.selected and not s.is_mix]


def playback_rate(audio: Mapping[str, LaneAudio | None]) -> int | None:
    """The rate every lane plays at: the mix's, else the first filled lane's
    (lanes in order); None when every lane is empty."""
    mix = audio.get(MIX)
    if mix is not None:
        return mix.sample_rate
    return next((a.sample_rate for a in audio.values() if a is not None), None)


def prepare_playback(audio: LaneAudio, rate: int) -> np.ndarray:
    """A lane's samples as the mixer plays them: at ``rate`` (soxr, the engine's
    resampler), frames first. Seconds for a long song: not on the GUI thread."""
    samples = audio.samples if audio.sample_rate == rate else resample(audio.samples, audio.sample_rate, rate)
    return prepare_samples(samples)


class PlaybackCache:
    """Samples prepared for the mixer, one entry per (audio object, rate)."""

    def __init__(self) -> None:
        self._items: dict[tuple[int, int], tuple[LaneAudio, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self._items)

    def get(self, audio: LaneAudio, rate: int) -> np.ndarray | None:
        item = self._items.get((id(audio), rate))
        # The audio object is kept with its samples, so an id is never reused while cached.
        return item[1] if item is not None and item[0] is audio else None

    def put(self, audio: LaneAudio, rate: int, samples: np.ndarray) -> None:
        self._items[(id(audio), rate)] = (audio, samples)

    def keys(self) -> frozenset[tuple[int, int]]:
        return frozenset(self._items)

    def keep_only(self, audio: Iterable[LaneAudio | None]) -> None:
        """Forget every entry but those of these lanes (the lanes and the undo step's)."""
        alive = {id(a) for a in audio if a is not None}
        self._items = {key: item for key, item in self._items.items() if key[0] in alive}


def mixer_tracks(states: Iterable[LaneState], rate: int, cache: PlaybackCache) -> dict[str, Track]:
    """The filled lanes as mixer Tracks at ``rate``. Samples come from the cache;
    a lane missing there is prepared here and cached (no resampling when its
    rate is already ``rate``; the loader prepares the others off the GUI thread)."""
    tracks = {}
    for state in states:
        if state.audio is None:
            continue
        samples = cache.get(state.audio, rate)
        if samples is None:
            samples = prepare_playback(state.audio, rate)
            cache.put(state.audio, rate, samples)
        tracks[state.name] = state.track(samples)
    return tracks
