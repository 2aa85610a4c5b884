"""The lanes, top to bottom in a scroll area: one LaneWidget per LaneState.

The container owns the list of LaneStates: a lane's mute / solo / level /
'given' controls write into its state and are sent out (``settingChanged``)
for the mixer; ``show_audio`` puts the session's audio into the states and redraws
the lanes whose audio changed. ``lanes[name]`` is that lane's widget."""

from __future__ import annotations

from typing import Mapping, Sequence

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QFrame, QScrollArea, QVBoxLayout, QWidget

from .lane_state import LaneState, given_stems, lane_states, selected_stems
from .lane_widget import LaneWidget
from .session import LaneAudio
from .takes import LaneTakes, take_label


class Lanes(QScrollArea):
    settingChanged = Signal(str, dict)   # lane, {gain | mute | solo: value}
    filesDropped = Signal(str, list)     # lane, [paths]
    takeRequested = Signal(str, str, int)  # lane, action, take number (desktop/lane_widget.py)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.states: list[LaneState] = []
        self.widgets: dict[str, LaneWidget] = {}
        self._x_link = None
        box = QWidget()
        self._layout = QVBoxLayout(box)
        self._layout.setContentsMargins(0, 0, 0, 0)
        self._layout.setSpacing(3)
        self.setWidgetResizable(True)
        self.setWidget(box)
        self.setFrameShape(QFrame.Shape.NoFrame)

    def __getitem__(self, name: str) -> LaneWidget:
        return self.widgets[name]

    def state(self, name: str) -> LaneState:
        return next(s for s in self.states if s.name == name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.states)

    def set_names(self, names: Sequence[str], x_link=None) -> None:
        """One lane per name (the session's lanes); lanes that existed keep their
        state. ``x_link``: the plot whose time range the lanes follow (the ruler)."""
        self._x_link = x_link if x_link is not None else self._x_link
        while self._layout.count():
            item = self._layout.takeAt(0)
            if item.widget():
                item.widget().deleteLater()
        self.states = lane_states(names, self.states)
        self.widgets = {}
        for index, state in enumerate(self.states):
            lane = LaneWidget(state.name, index)
            if self._x_link is not None:
                lane.plot.setXLink(self._x_link)
            lane.level.setValue(round(state.gain * 100))
            lane.mute.setChecked(state.mute)
            lane.solo.setChecked(state.solo)
            lane.given.setChecked(state.given)
            lane.select.setChecked(state.selected)
            lane.set_audio(state.audio)
            lane.muteChanged.connect(lambda name, on: self._changed(name, mute=on))
            lane.soloChanged.connect(lambda name, on: self._changed(name, solo=on))
            lane.gainChanged.connect(lambda name, gain: self._changed(name, gain=gain))
            lane.given.toggled.connect(lambda on, s=state: setattr(s, "given", on))
            lane.filesDropped.connect(self.filesDropped)
            lane.selectedChanged.connect(lambda name, on: setattr(self.state(name), "selected", on))
            lane.takeRequested.connect(self.takeRequested)
            self._layout.addWidget(lane)
            self.widgets[state.name] = lane
        self._layout.addStretch(1)

    def show_audio(self, audio: Mapping[str, LaneAudio | None]) -> None:
        """The session's audio onto the lanes; only lanes whose audio changed redraw."""
        for state in self.states:
            state.audio = audio.get(state.name)
            lane = self.widgets[state.name]
            if lane.audio is not state.audio:
                lane.set_audio(state.audio)

    def show_takes(self, takes: Mapping[str, "LaneTakes | None"]) -> None:
        """Each lane's takes in its header (hidden where a lane has none)."""
        for name, lane in self.widgets.items():
            lane_takes = takes.get(name)
            if lane_takes is None:
                lane.set_takes([], "")
                continue
            labels = [take_label(number, take) for number, take in enumerate(lane_takes.takes, 1)]
            single = lane_takes.single_take()
            playing = labels[lane_takes.pieces[0].take - 1] if single is not None else \
                "comp of takes " + ", ".join(str(n) for n in lane_takes.chosen)
            lane.set_takes(labels, playing)

    def set_flags(self, name: str, *, mute: bool | None = None, solo: bool | None = None) -> None:
        """Press a lane's mute / solo as the musician would (the state and the mixer follow)."""
        lane = self.widgets.get(name)
        if lane is None:
            return
        if mute is not None:
            lane.mute.setChecked(mute)
        if solo is not None:
            lane.solo.setChecked(solo)

    def given_stems(self) -> list[str]:
        return given_stems(self.states)

    def selected_stems(self) -> list[str]:
        return selected_stems(self.states)

    def set_selected(self, name: str, on: bool) -> None:
        """Press a lane's 'sel' as the musician would."""
        if name in self.widgets:
            self.widgets[name].select.setChecked(on)

    def set_playhead(self, seconds: float) -> None:
        for lane in self.widgets.values():
            lane.set_playhead(seconds)

    def set_loop(self, region: tuple[float, float] | None) -> None:
        for lane in self.widgets.values():
            lane.set_loop(region)

    def _changed(self, name: str, **changes) -> None:
        state = self.state(name)
        for key, value in changes.items():
            setattr(state, key, value)
        self.settingChanged.emit(name, changes)
