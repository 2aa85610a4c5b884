"""The transport: play / pause, stop, loop, the clock and the output meter.
It owns the playback: the Mixer, the sound device (AudioOutput) and the lanes'
samples prepared for the mixer (PlaybackCache).

The GUI thread changes the mixer through here; the audio callback only calls
``Mixer.render``. A timer reads the position and the output level and sends
the position out (``positionChanged``) for the ruler's and lanes' playheads."""

from __future__ import annotations

from typing import Iterable

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QToolButton, QWidget

from .audio_output import AudioOutput
from .lane_state import LaneState, PlaybackCache, mixer_tracks, playback_rate
from .mixer import Mixer
from .session import LaneAudio

TICK_MS = 33   # the clock, playheads and meter redraw at ~30 per second


def make_action(parent, text: str, slot, shortcut: str | None = None, tip: str = "") -> QAction:
    action = QAction(text, parent)
    action.triggered.connect(slot)
    if shortcut:
        action.setShortcut(QKeySequence(shortcut))
    action.setToolTip(tip or text)
    return action


def tool_button(action: QAction, text: str | None = None) -> QToolButton:
    """A flat text button for an action (the window's top row)."""
    button = QToolButton()
    button.setDefaultAction(action)
    if text:
        button.setText(text)
    button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
    return button


def clock(seconds: float) -> str:
    minutes, rest = divmod(max(seconds, 0.0), 60)
    return f"{int(minutes)}:{rest:04.1f}"


class Transport(QWidget):
    positionChanged = Signal(float)   # seconds, every tick
    message = Signal(str, str)        # text, level (info / warning)

    def __init__(self, parent: QWidget | None = None, *, sample_rate: int = 22050) -> None:
        super().__init__(parent)
        self.mixer = Mixer(sample_rate, 2)
        self.output = AudioOutput(self.mixer)
        self.cache = PlaybackCache()
        self._reported: set[str] = set()
        self._loop: tuple[float, float] | None = None

        self.play_action = make_action(self, "Play", self.play_pause, "Space", "Play / pause (Space)")
        self.stop_action = make_action(self, "Stop", self.stop, "Home", "Stop and go back to the start (Home)")
        self.loop_action = QAction("Loop", self)
        self.loop_action.setShortcut(QKeySequence("L"))
        self.loop_action.setToolTip("Loop the region marked on the ruler (L)")
        self.loop_action.setCheckable(True)

        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        self.stop_button = tool_button(self.stop_action, "■")
        self.play_button = tool_button(self.play_action, "▶")
        self.loop_button = tool_button(self.loop_action, "⟲ Loop")
        for button in (self.stop_button, self.play_button, self.loop_button):
            button.setObjectName("transport")
            row.addWidget(button)
        self.clock = QLabel("0:00.0 / 0:00.0")
        self.clock.setObjectName("clock")
        row.addWidget(self.clock)
        self.meter = QProgressBar()
        self.meter.setObjectName("meter")
        self.meter.setRange(0, 1000)
        self.meter.setTextVisible(False)
        self.meter.setFixedSize(90, 8)
        self.meter.setToolTip("Output level")
        row.addWidget(self.meter)

        self.timer = QTimer(self)
        self.timer.timeout.connect(self._tick)
        self.timer.start(TICK_MS)

    # ---- what plays ---------------------------------------------------------
    def show_lanes(self, states: Iterable[LaneState], keep: Iterable[LaneAudio | None] = ()) -> None:
        """Play these lanes (their audio, level, mute, solo) at the rate of the
        mix, else of the first filled lane; prepared samples of lanes not among
        them or ``keep`` (the undo step's) are forgotten."""
        states = list(states)
        self.cache.keep_only([*(s.audio for s in states), *keep])
        rate = playback_rate({s.name: s.audio for s in states})
        if rate is None:
            self.mixer.set_tracks({})
            return
        rate_changed = rate != self.mixer.sample_rate
        self.mixer.set_tracks(mixer_tracks(states, rate, self.cache), rate)
        if rate_changed:
            self.set_loop(self._loop)  # the same seconds, in frames of the new rate
        if rate_changed and self.output.active:
            self.output.close()
            if self.mixer.playing:
                self.output.start()

    def add_prepared(self, prepared: Iterable[tuple[LaneAudio, int, object]]) -> None:
        """Samples the file loader prepared off the GUI thread."""
        for audio, rate, samples in prepared:
            self.cache.put(audio, rate, samples)

    def update_lane(self, name: str, **changes) -> None:
        """A lane's level, mute or solo changed (gain=, mute=, solo=)."""
        self.mixer.update(name, **changes)

    @property
    def length(self) -> float:
        """Seconds of the longest lane."""
        return self.mixer.length / self.mixer.sample_rate if self.mixer.length else 0.0

    # ---- the buttons --------------------------------------------------------
    def play_pause(self) -> None:
        if self.mixer.playing:
            self.mixer.pause()
            return
        if not self.mixer.tracks():
            self.message.emit("Nothing to play yet: open a mix (Ctrl+O) or drop a file on a lane.", "info")
            return
        self.mixer.play()
        if not self.output.start():
            self.mixer.pause()
            self.report_problem()

    def stop(self) -> None:
        self.mixer.stop()

    def seek(self, seconds: float) -> None:
        self.mixer.seek(int(round(seconds * self.mixer.sample_rate)))

    def set_loop(self, region: tuple[float, float] | None) -> None:
        """Loop (start, end) seconds while playing; None: no loop."""
        self._loop = region
        if region is None:
            self.mixer.set_loop(None)
            return
        rate = self.mixer.sample_rate
        self.mixer.set_loop(int(region[0] * rate), int(region[1] * rate))

    def report_problem(self) -> None:
        """Say why there is no sound, once per reason (not at every press of Play)."""
        problem = self.output.problem
        if problem and problem not in self._reported:
            self._reported.add(problem)
            self.message.emit(problem, "warning")

    def shutdown(self) -> None:
        self.timer.stop()
        self.output.close()

    def _tick(self) -> None:
        rate = self.mixer.sample_rate
        now = self.mixer.position / rate
        self.clock.setText(f"{clock(now)} / {clock(self.mixer.length / rate)}")
        self.play_button.setText("❚❚" if self.mixer.playing else "▶")
        _, _, peak = self.output.tap.snapshot()
        level = float(peak.max()) if self.mixer.playing and peak.size else 0.0
        self.meter.setValue(int(min(level, 1.0) * 1000))
        self.positionChanged.emit(now)
