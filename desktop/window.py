"""The main window: lanes, ruler and transport, the task bar, and the wiring
between the session (lanes), the mixer (playback) and the engine (OSC).

The GUI thread owns the Session and every widget; the engine client and the
process supervisor only deliver Qt signals; the audio thread only reads the
Mixer."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pyqtgraph as pg
from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (QComboBox, QDoubleSpinBox, QFileDialog, QFrame, QHBoxLayout, QLabel, QMainWindow,
                               QMenu, QProgressBar, QPushButton, QScrollArea, QSpinBox, QToolButton, QVBoxLayout,
                               QWidget)

from engine.jobs.options import LIKELIHOODS, METHODS, OPTIONS_BY_NAME

from . import osc_messages as osc
from .audio_output import AudioOutput
from .engine_client import EngineClient
from .export import ExportError, export_lanes
from .jobs import (SEPARATION_MODES, Job, JobRefused, TaskControls, build_request, check_result, format_left,
                   new_job_id, task_options)
from .lane_widget import HEADER_WIDTH, LaneWidget
from .mixer import Mixer, Track, prepare_samples
from .session import MIX, LaneAudio, Session, StemMismatchError, assign_stem_files
from .settings import AppSettings, load_settings, save_settings
from .supervisor import EngineSupervisor

# The engine's samplers (its option table), the app's default first.
SAMPLERS = ("dpmpp2m", *(m for m in METHODS if m != "dpmpp2m"))


def _limits(name: str, cap: int | None = None) -> tuple[int, int]:
    """A control's range: the engine's option table's limits (engine.jobs.options),
    at most `cap` where the app offers less (a narrow task row)."""
    option = OPTIONS_BY_NAME[name]
    return int(option.low), int(option.high if cap is None else min(option.high, cap))


DEFAULT_STEMS = ("bass", "drums", "guitar", "piano")
AUDIO_FILTER = "Audio (*.wav *.flac *.ogg *.mp3 *.aif *.aiff *.w64 *.opus);;All files (*)"
CODE_HINTS = {
    "bad_input": "Check that the file plays in another program, or export it again as WAV.",
    "bad_path": "The work folder must be inside the server's --output-root: set it in Engine > Settings.",
    "exists": "Choose another work folder in Engine > Settings.",
    "queue_full": "The engine is busy with other jobs; try again when they finish.",
    "engine": "Try fewer steps, another model, or Engine > Restart.",
}


class TimeAxis(pg.AxisItem):
    """Ruler labels as m:ss (m:ss.s when zoomed in)."""

    def tickStrings(self, values, scale, spacing):
        fine = spacing < 1.0
        out = []
        for v in values:
            minutes, seconds = divmod(max(v, 0.0), 60)
            out.append(f"{int(minutes)}:{seconds:04.1f}" if fine else f"{int(minutes)}:{int(seconds):02d}")
        return out


class MainWindow(QMainWindow):
    def __init__(self, settings: AppSettings | None = None, *, start_engine: bool = True) -> None:
        super().__init__()
        self.settings = settings or load_settings()
        self.setWindowTitle("MSDM Studio")
        self.resize(1280, 760)
        self.session = Session(stems=DEFAULT_STEMS)
        self.mixer = Mixer(22050, 2)
        self.output = AudioOutput(self.mixer)
        self.client = EngineClient(self)
        self.supervisor: EngineSupervisor | None = None
        self.engine_ready = False
        self.engine_model = ""
        self.engine_rate = 0
        self.job: Job | None = None
        self.last_job: Job | None = None
        self.messages: list[tuple[str, str]] = []   # (level, text), newest last
        self.song = "untitled"
        self._jobs_run = 0
        self._lane_state: dict[str, dict] = {}
        self._prepared: dict[str, tuple[int, int, object]] = {}
        self._fitted_length = -1.0
        self.session_dir = (Path(self.settings.output_root).expanduser().resolve() /
                            f"session-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")

        self._build_actions()
        self._build_ui()
        self._build_lanes()
        self._connect_client()
        self.timer = QTimer(self)
        self.timer.timeout.connect(self._tick)
        self.timer.start(33)
        if not self.output.available:
            self.message(self.output.problem, "warning")
        self._update_controls()
        if start_engine:
            self.start_engine()

    # =========================================================================
    # UI
    # =========================================================================
    def _build_actions(self) -> None:
        def action(text, slot, shortcut=None, tip=""):
            a = QAction(text, self)
            a.triggered.connect(slot)
            if shortcut:
                a.setShortcut(QKeySequence(shortcut))
            a.setToolTip(tip or text)
            return a

        self.open_action = action("Open mix…", self._open_mix_dialog, "Ctrl+O", "Open a song (the mix)")
        self.stems_action = action("Open stems…", self._open_stems_dialog, "Ctrl+Shift+O",
                                   "Open stem files onto the stem lanes")
        self.export_action = action("Export…", self._export_dialog, "Ctrl+E", "Export the stems as files")
        self.undo_action = action("Undo", self.undo, "Ctrl+Z", "Put back the lanes as they were before the last result")
        self.settings_action = action("Settings…", self._settings_dialog, None, "Engine and work folder")
        self.restart_action = action("Restart engine", self.restart_engine)
        self.quit_action = action("Quit", self.close, "Ctrl+Q")
        self.play_action = action("Play", self.play_pause, "Space", "Play / pause (Space)")
        self.stop_action = action("Stop", self.stop, "Home", "Stop and go back to the start (Home)")
        self.loop_action = action("Loop", self._loop_toggled, "L", "Loop the region marked on the ruler (L)")
        self.loop_action.setCheckable(True)
        self.loop_action.triggered.disconnect()
        self.loop_action.toggled.connect(self._loop_toggled)

        menu = self.menuBar()
        file_menu = menu.addMenu("&File")
        file_menu.addAction(self.open_action)
        file_menu.addAction(self.stems_action)
        self.recent_menu = QMenu("Open recent", self)
        file_menu.addMenu(self.recent_menu)
        file_menu.addAction(self.export_action)
        file_menu.addSeparator()
        file_menu.addAction(self.quit_action)
        edit_menu = menu.addMenu("&Edit")
        edit_menu.addAction(self.undo_action)
        play_menu = menu.addMenu("&Transport")
        for a in (self.play_action, self.stop_action, self.loop_action):
            play_menu.addAction(a)
        engine_menu = menu.addMenu("E&ngine")
        engine_menu.addAction(self.settings_action)
        engine_menu.addAction(self.restart_action)
        self._fill_recent()

    def _tool(self, action: QAction, text: str | None = None) -> QToolButton:
        button = QToolButton()
        button.setDefaultAction(action)
        if text:
            button.setText(text)
        button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
        return button

    def _build_ui(self) -> None:
        central = QWidget()
        root = QVBoxLayout(central)
        root.setContentsMargins(8, 6, 8, 4)
        root.setSpacing(6)

        # Transport and file row.
        top = QHBoxLayout()
        for a in (self.open_action, self.stems_action):
            top.addWidget(self._tool(a))
        recent = QToolButton()
        recent.setText("Recent")
        recent.setMenu(self.recent_menu)
        recent.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        top.addWidget(recent)
        top.addSpacing(18)
        self.stop_button = self._tool(self.stop_action, "■")
        self.play_button = self._tool(self.play_action, "▶")
        self.loop_button = self._tool(self.loop_action, "⟲ Loop")
        for b in (self.stop_button, self.play_button, self.loop_button):
            b.setObjectName("transport")
            top.addWidget(b)
        self.clock = QLabel("0:00.0 / 0:00.0")
        self.clock.setObjectName("clock")
        top.addWidget(self.clock)
        self.meter = QProgressBar()
        self.meter.setObjectName("meter")
        self.meter.setRange(0, 1000)
        self.meter.setTextVisible(False)
        self.meter.setFixedSize(90, 8)
        self.meter.setToolTip("Output level")
        top.addWidget(self.meter)
        top.addStretch(1)
        for a in (self.undo_action, self.export_action, self.settings_action):
            top.addWidget(self._tool(a))
        root.addLayout(top)

        # Task row: the three tasks, their settings, progress and cancel.
        tasks = QFrame()
        tasks.setObjectName("taskBar")
        row = QHBoxLayout(tasks)
        row.setContentsMargins(8, 4, 8, 4)
        row.setSpacing(5)  # every task setting on one row within the 1500 px window
        self.separate_button = QPushButton("Separate")
        self.generate_button = QPushButton("Generate")
        self.impute_button = QPushButton("Impute")
        self.separate_button.setToolTip("Split the mix lane into the stem lanes")
        self.generate_button.setToolTip("Make a new piece: every stem and the mix")
        self.impute_button.setToolTip("Keep the stems ticked 'given' and generate the others to fit them")
        for button, kind in ((self.separate_button, "separate"), (self.generate_button, "generate"),
                             (self.impute_button, "impute")):
            button.setObjectName("task")
            button.clicked.connect(lambda _=False, k=kind: self.run_task(k))
            row.addWidget(button)
        row.addSpacing(12)
        steps_low = max(1, _limits("steps")[0])  # 0 (the first guess itself) is a Separate-by choice
        self.steps = self._spin(QSpinBox(), steps_low, _limits("steps", 1000)[1], self.settings.steps,
                                "Steps", "Noise levels of the sampler: more is slower and cleaner (paper: 150)", row)
        self.resamples = self._spin(QSpinBox(), *_limits("resamples", 20), self.settings.resamples, "Resamples",
                                    "Correction passes per step for Separate (paper: 2)", row)
        self.seed = self._spin(QSpinBox(), 0, _limits("seed")[1], self.settings.seed, "Seed",
                               "Same seed, same audio", row)
        row.addWidget(QLabel("Sampler"))
        self.method = QComboBox()
        self.method.addItems(SAMPLERS)
        self.method.setCurrentText(self.settings.method if self.settings.method in SAMPLERS else SAMPLERS[0])
        self.method.setToolTip("dpmpp2m: near the paper's quality in few steps (32 steps, 1 resample);\n"
                               "euler: the paper's sampler, needs many steps (150, 2 resamples);\n"
                               "heun: two evaluations per step, for generation")
        row.addWidget(self.method)
        self.separation = QComboBox()
        self.separation.addItems(list(SEPARATION_MODES))
        self.separation.setCurrentText(self.settings.separation if self.settings.separation in SEPARATION_MODES
                                       else "first guess")
        self.separation.setToolTip("How Separate works. first guess: the model's fast separator, in about a "
                                   "second;\nrefined guess: that guess refined by the diffusion model (Steps);\n"
                                   "from noise: the paper's diffusion sampler (Steps, Resamples, Sampler)")
        row.addWidget(self.separation)
        self.likelihood = QComboBox()
        self.likelihood.addItems(LIKELIHOODS)
        self.likelihood.setCurrentText(self.settings.likelihood)
        self.likelihood.setToolTip("Likelihood, for Separate refined or from noise. dirac: the stems sum to the "
                                   "mix exactly; gaussian: a soft constraint")
        row.addWidget(self.likelihood)
        self.seconds = self._spin(QDoubleSpinBox(), 0.5, 600.0, self.settings.seconds, "Length",
                                  "Seconds to generate", row)
        self.seconds.setSuffix(" s")
        row.addStretch(1)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setFixedWidth(120)
        self.progress.setFormat("%p%")
        row.addWidget(self.progress)
        self.progress_label = QLabel("")
        self.progress_label.setMinimumWidth(110)
        row.addWidget(self.progress_label)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel_job)
        row.addWidget(self.cancel_button)
        root.addWidget(tasks)

        # Messages a musician can act on, inline (never a modal box that blocks playback).
        self.message_bar = QFrame()
        self.message_bar.setObjectName("messageBar")
        bar = QHBoxLayout(self.message_bar)
        bar.setContentsMargins(10, 4, 4, 4)
        self.message_label = QLabel("")
        self.message_label.setWordWrap(True)
        self.message_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        bar.addWidget(self.message_label, 1)
        close = QToolButton()
        close.setText("✕")
        close.clicked.connect(self.message_bar.hide)
        bar.addWidget(close)
        self.message_bar.hide()
        root.addWidget(self.message_bar)

        # Ruler (click to seek, loop region) aligned with the lanes' plots.
        ruler_row = QHBoxLayout()
        ruler_row.setSpacing(0)
        spacer = QLabel("  click the ruler to seek")
        spacer.setObjectName("rulerHint")
        spacer.setFixedWidth(HEADER_WIDTH + 1)  # the lane frame's border
        ruler_row.addWidget(spacer)
        self.ruler = pg.PlotWidget(background="#1d2026", axisItems={"top": TimeAxis("top")})
        self.ruler.setFixedHeight(42)
        self.ruler.showAxis("top")
        self.ruler.hideAxis("bottom")
        self.ruler.hideAxis("left")
        self.ruler.setMenuEnabled(False)
        self.ruler.hideButtons()
        self.ruler.getPlotItem().layout.setContentsMargins(0, 0, 0, 0)
        self.ruler.setMouseEnabled(x=True, y=False)
        self.ruler.setYRange(0, 1, padding=0)
        self.ruler.setXRange(0, 10, padding=0)
        self.ruler.getViewBox().setLimits(xMin=0)
        self.ruler_playhead = pg.InfiniteLine(pos=0, angle=90, movable=False, pen=pg.mkPen("#ffcc33", width=2))
        self.ruler.addItem(self.ruler_playhead)
        self.loop_item = pg.LinearRegionItem(values=(0, 2), brush=pg.mkBrush(255, 204, 51, 60))
        self.loop_item.setVisible(False)
        self.loop_item.sigRegionChanged.connect(self._loop_region_changed)
        self.ruler.addItem(self.loop_item)
        self.ruler.scene().sigMouseClicked.connect(self._ruler_clicked)
        ruler_row.addWidget(self.ruler, 1)
        root.addLayout(ruler_row)

        self.lanes_box = QWidget()
        self.lanes_layout = QVBoxLayout(self.lanes_box)
        self.lanes_layout.setContentsMargins(0, 0, 0, 0)
        self.lanes_layout.setSpacing(3)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(self.lanes_box)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        root.addWidget(scroll, 1)
        self.setCentralWidget(central)
        self.engine_label = QLabel("Engine: starting…")
        self.statusBar().addPermanentWidget(self.engine_label)

    def _spin(self, spin, low, high, value, label, tip, row):
        spin.setRange(low, high)
        spin.setValue(value)
        spin.setToolTip(tip)
        text = QLabel(label)
        text.setToolTip(tip)
        row.addWidget(text)
        row.addWidget(spin)
        return spin

    def _build_lanes(self) -> None:
        while self.lanes_layout.count():
            item = self.lanes_layout.takeAt(0)
            if item.widget():
                item.widget().deleteLater()
        self.lanes: dict[str, LaneWidget] = {}
        for index, name in enumerate(self.session.lane_names):
            lane = LaneWidget(name, index)
            lane.plot.setXLink(self.ruler)
            state = self._lane_state.setdefault(name, {"gain": 1.0, "mute": False, "solo": False})
            lane.level.setValue(round(state["gain"] * 100))
            lane.mute.setChecked(state["mute"])
            lane.solo.setChecked(state["solo"])
            lane.muteChanged.connect(lambda n, on: self._lane_changed(n, mute=on))
            lane.soloChanged.connect(lambda n, on: self._lane_changed(n, solo=on))
            lane.gainChanged.connect(lambda n, g: self._lane_changed(n, gain=g))
            lane.filesDropped.connect(self.drop_files)
            self.lanes_layout.addWidget(lane)
            self.lanes[name] = lane
        self.lanes_layout.addStretch(1)
        self._refresh_lanes()

    # =========================================================================
    # Messages
    # =========================================================================
    def message(self, text: str, level: str = "info") -> None:
        """Show a message inline; levels: info, warning, error."""
        self.messages.append((level, text))
        self.message_label.setText(text)
        self.message_bar.setProperty("level", level)
        self.message_bar.style().unpolish(self.message_bar)
        self.message_bar.style().polish(self.message_bar)
        self.message_bar.show()
        self.statusBar().showMessage(text.split(". ")[0], 8000)

    # =========================================================================
    # Opening files
    # =========================================================================
    def _open_mix_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open a mix", self._last_folder(), AUDIO_FILTER)
        if path:
            self.open_mix(path)

    def _open_stems_dialog(self) -> None:
        paths, _ = QFileDialog.getOpenFileNames(self, "Open stems", self._last_folder(), AUDIO_FILTER)
        if paths:
            self.open_stems(paths)

    def _last_folder(self) -> str:
        return str(Path(self.settings.recent[0]).parent) if self.settings.recent else str(Path.home())

    def _read(self, path: str | Path) -> LaneAudio | None:
        from engine.audio.files import AudioInputError, read_audio

        try:
            audio = read_audio(path)
        except AudioInputError as error:
            self.message(f"{error} Your lanes were not changed.", "error")
            return None
        except (OSError, ValueError, RuntimeError) as error:
            self.message(f"Cannot open '{path}': {error}. Your lanes were not changed.", "error")
            return None
        return LaneAudio(audio.samples, audio.sample_rate, Path(path).resolve())

    def open_mix(self, path: str | Path) -> bool:
        """A new song: the file goes on the mix lane and the stem lanes are cleared (undoable)."""
        audio = self._read(path)
        if audio is None:
            return False
        result = {name: None for name in self.session.stems}
        result[MIX] = audio
        self.session.apply_result(result, f"open {Path(path).name}")
        self.song = Path(path).stem
        self._remember(path)
        self._set_lane_flag(MIX, mute=False)
        self._refresh_lanes(fit=True)
        self.statusBar().showMessage(f"Opened {path}", 5000)
        return True

    def open_stems(self, paths: list) -> bool:
        """Stem files onto stem lanes: matched by name (drums.wav -> drums), others fill empty lanes."""
        try:
            free = [s for s in self.session.stems if self.session.audio.get(s) is None]
            placed = assign_stem_files(paths, self.session.stems, free)
        except StemMismatchError as error:
            self.message(f"{error} Nothing was opened.", "error")
            return False
        return self._load_onto(placed, "open stems")

    def drop_files(self, lane: str, paths: list) -> None:
        """Files dropped on a lane: one file replaces that lane; several are placed as stems."""
        if lane == MIX and len(paths) == 1:
            self.open_mix(paths[0])
        elif len(paths) == 1:
            self._load_onto({lane: Path(paths[0])}, f"drop on {lane}")
        else:
            self.open_stems(paths)

    def _load_onto(self, placed: dict, label: str) -> bool:
        loaded = {}
        for name, path in placed.items():
            audio = self._read(path)
            if audio is None:
                return False
            loaded[name] = audio
        self.session.apply_result(loaded, label)
        for path in placed.values():
            self._remember(path)
        if self.session.audio.get(MIX) is None and self.song == "untitled":
            self.song = Path(next(iter(placed.values()))).parent.name or "untitled"
        self._refresh_lanes(fit=True)
        return True

    def _remember(self, path) -> None:
        self.settings.add_recent(str(path))
        self._fill_recent()
        save_settings(self.settings)

    def _fill_recent(self) -> None:
        self.recent_menu.clear()
        for path in self.settings.recent:
            self.recent_menu.addAction(Path(path).name, lambda p=path: self.open_mix(p)).setToolTip(path)
        self.recent_menu.setEnabled(bool(self.settings.recent))

    # =========================================================================
    # Lanes and playback
    # =========================================================================
    def _set_lane_flag(self, name: str, **flags) -> None:
        lane = self.lanes.get(name)
        if lane is None:
            return
        if "mute" in flags:
            lane.mute.setChecked(flags["mute"])
        if "solo" in flags:
            lane.solo.setChecked(flags["solo"])

    def _lane_changed(self, name: str, **changes) -> None:
        self._lane_state.setdefault(name, {"gain": 1.0, "mute": False, "solo": False}).update(changes)
        self.mixer.update(name, **changes)

    def _refresh_lanes(self, fit: bool = False) -> None:
        for name, lane in self.lanes.items():
            audio = self.session.audio.get(name)
            if lane.audio is not audio:
                lane.set_audio(audio)
        self._rebuild_mixer()
        length = self.mixer.length / self.mixer.sample_rate if self.mixer.length else 0.0
        if length > 0:
            self.ruler.getViewBox().setLimits(xMin=0, xMax=length * 1.02)
            if fit or self._fitted_length < 0:
                self.ruler.setXRange(0, length, padding=0)
                self._fitted_length = length
        self._update_controls()

    def _rebuild_mixer(self) -> None:
        from engine.audio.files import resample

        filled = self.session.filled()
        if not filled:
            self.mixer.set_tracks({})
            return
        first = self.session.audio[MIX] if self.session.audio.get(MIX) is not None else self.session.audio[filled[0]]
        rate = first.sample_rate
        tracks = {}
        for name in filled:
            audio = self.session.audio[name]
            cached = self._prepared.get(name)
            if cached is not None and cached[0] == id(audio) and cached[1] == rate:
                samples = cached[2]
            else:
                raw = audio.samples if audio.sample_rate == rate else resample(audio.samples, audio.sample_rate, rate)
                samples = prepare_samples(raw)
                self._prepared[name] = (id(audio), rate, samples)
            state = self._lane_state.setdefault(name, {"gain": 1.0, "mute": False, "solo": False})
            tracks[name] = Track(samples, gain=state["gain"], mute=state["mute"], solo=state["solo"])
        rate_changed = rate != self.mixer.sample_rate
        self.mixer.set_tracks(tracks, rate)
        if rate_changed and self.output.active:
            self.output.close()
            if self.mixer.playing:
                self.output.start()

    def play_pause(self) -> None:
        if self.mixer.playing:
            self.mixer.pause()
            return
        if not self.session.filled():
            self.message("Nothing to play yet: open a mix (Ctrl+O) or drop a file on a lane.")
            return
        self.mixer.play()
        if not self.output.start():
            self.mixer.pause()
            if not any(text == self.output.problem for _, text in self.messages):
                self.message(self.output.problem, "warning")  # said once, not at every press

    def stop(self) -> None:
        self.mixer.stop()

    def seek(self, seconds: float) -> None:
        self.mixer.seek(int(round(seconds * self.mixer.sample_rate)))

    def _ruler_clicked(self, event) -> None:
        if event.button() != Qt.MouseButton.LeftButton:
            return
        point = self.ruler.getViewBox().mapSceneToView(event.scenePos())
        self.seek(max(point.x(), 0.0))

    def _loop_toggled(self, on: bool) -> None:
        if on:
            low, high = self.ruler.getViewBox().viewRange()[0]
            start, end = self.loop_item.getRegion()
            if not (low <= start < end <= high):  # put it where the musician is looking
                span = high - low
                self.loop_item.setRegion((low + span * 0.25, low + span * 0.5))
        self.loop_item.setVisible(on)
        self._loop_region_changed()

    def _loop_region_changed(self) -> None:
        on = self.loop_action.isChecked()
        start, end = self.loop_item.getRegion()
        rate = self.mixer.sample_rate
        self.mixer.set_loop(int(start * rate), int(end * rate)) if on else self.mixer.set_loop(None)
        for lane in self.lanes.values():
            lane.set_loop((start, end) if on else None)

    def _tick(self) -> None:
        rate = self.mixer.sample_rate
        now = self.mixer.position / rate
        total = self.mixer.length / rate
        self.clock.setText(f"{_clock(now)} / {_clock(total)}")
        self.ruler_playhead.setPos(now)
        for lane in self.lanes.values():
            lane.set_playhead(now)
        self.play_button.setText("❚❚" if self.mixer.playing else "▶")
        _, _, peak = self.output.tap.snapshot()
        level = float(peak.max()) if self.mixer.playing and peak.size else 0.0
        self.meter.setValue(int(min(level, 1.0) * 1000))
        if self.job is not None:
            self._show_progress()

    # =========================================================================
    # Engine connection
    # =========================================================================
    def _connect_client(self) -> None:
        c = self.client
        c.pong.connect(self._on_pong)
        c.models.connect(self._on_models)
        c.accepted.connect(self._on_accepted)
        c.progress.connect(self._on_progress)
        c.done.connect(self._on_done)
        c.error.connect(self._on_error)
        c.cancelled.connect(self._on_cancelled)
        c.unanswered.connect(self._on_unanswered)

    def start_engine(self) -> None:
        self.engine_ready = False
        self.client.disconnect_engine()
        if self.supervisor is not None:
            self.supervisor.stop()
            self.supervisor.deleteLater()
            self.supervisor = None
        if self.settings.engine_mode == "remote":
            self.engine_label.setText(f"Engine: connecting to {self.settings.remote_host}:{self.settings.remote_port}…")
            self.client.connect_to(self.settings.remote_host, self.settings.remote_port)
            self.client.ping()
        else:
            self.engine_label.setText("Engine: starting…")
            self.supervisor = EngineSupervisor(self.session_dir.parent, self.settings.model, self.settings.backend,
                                               self)
            self.supervisor.ready.connect(self._on_engine_address)
            self.supervisor.failed.connect(self._on_engine_failed)
            self.supervisor.start()
        self._update_controls()

    def restart_engine(self) -> None:
        if self.job is not None:
            self._end_job()
        self.start_engine()

    def _on_engine_address(self, host: str, port: int) -> None:
        self.client.connect_to(host, port)
        self.client.ping(timeout_ms=10000)

    def _on_pong(self, version: str, model: str) -> None:
        self.engine_model = model

    def _on_models(self, model: str, stems: list, rate: int, backend: str) -> None:
        if not stems:
            return
        self.engine_model, self.engine_rate = model, rate
        if tuple(stems) != self.session.stems:
            self.session.set_stems(stems)
            self._build_lanes()
        where = "local" if self.supervisor is not None else f"{self.client.host}:{self.client.port}"
        self.engine_label.setText(f"Engine ({where}): {model} · {', '.join(stems)} · {rate} Hz · {backend}")
        self.engine_ready = True
        self._update_controls()

    def _on_unanswered(self, where: str) -> None:
        if self.engine_ready:
            return
        self.engine_label.setText(f"Engine: no answer from {where}")
        if self.settings.engine_mode == "remote":
            self.message(f"No MSDM engine answers at {where}. Start one there with `msdm serve`, check the host "
                         "and port in Engine > Settings, or switch to the local engine.", "error")
        else:
            self.message("The local engine started but does not answer. Choose Engine > Restart.", "error")

    def _on_engine_failed(self, text: str) -> None:
        self.engine_ready = False
        self.client.disconnect_engine()
        self.engine_label.setText("Engine: stopped")
        if self.job is not None:
            kind = self.job.kind.capitalize()
            self._end_job()
            text = f"{kind} did not finish: {text[0].lower()}{text[1:]} Run {kind} again once it is back."
        self.message(text, "error")
        self._update_controls()

    # =========================================================================
    # Jobs
    # =========================================================================
    def _controls(self) -> TaskControls:
        return TaskControls(steps=self.steps.value(), resamples=self.resamples.value(), seed=self.seed.value(),
                            method=self.method.currentText(), likelihood=self.likelihood.currentText(),
                            seconds=float(self.seconds.value()), separation=self.separation.currentText())

    def _options(self, kind: str) -> dict:
        return task_options(kind, self._controls())

    def given_stems(self) -> list[str]:
        return [s for s in self.session.stems if self.lanes[s].given.isChecked() and self.session.audio.get(s)]

    def run_task(self, kind: str, **extra) -> str | None:
        """Send Separate / Generate / Impute to the engine; returns the job id (None if it could not start)."""
        if self.job is not None:
            self.message(f"{self.job.kind.capitalize()} is still running: wait for it or press Cancel.")
            return None
        if not self.engine_ready:
            self.message("The engine is not ready yet (see the status bar). Try again in a moment, or check "
                         "Engine > Settings.", "warning")
            return None
        stems = self.session.stems
        self._jobs_run += 1
        job_id = new_job_id(kind)
        out_dir = self.session_dir / f"{self._jobs_run:02d}-{kind}"
        mix = self.session.audio.get(MIX)
        given = {s: str(self.session.audio[s].path) for s in self.given_stems()} if kind == "impute" else {}
        try:
            expected, datagram = build_request(kind, job_id, out_dir, self._controls(), stems,
                                               mix=str(mix.path) if mix is not None else None, given=given,
                                               extra=extra)
        except JobRefused as refusal:
            self.message(str(refusal))
            return None
        self.job = Job(kind=kind, id=job_id, out_dir=out_dir, expected=tuple(expected))
        self.client.send(datagram)
        self.progress.setValue(0)
        self._show_progress()
        self._update_controls()
        return job_id

    def cancel_job(self) -> None:
        if self.job is None:
            return
        self.job.cancelling = True
        self.client.send(osc.cancel(self.job.id))
        self._show_progress()

    def _show_progress(self) -> None:
        job = self.job
        if job is None:
            return
        self.progress.setValue(int(job.fraction * 1000))
        if job.cancelling:
            text = "cancelling…"
        elif job.fraction <= 0:
            text = job.message
        else:
            text = format_left(job.seconds_left())
        self.progress_label.setText(f"{job.kind.capitalize()}: {text}")
        self.progress_label.setToolTip(job.message)

    def _end_job(self) -> None:
        self.last_job, self.job = self.job, None
        self._update_controls()

    def _on_accepted(self, job_id: str, position: int) -> None:
        if self.job and job_id == self.job.id:
            self.job.update(0.0, "starting" if position == 0 else f"queued ({position} ahead)")

    def _on_progress(self, job_id: str, fraction: float, message: str) -> None:
        if self.job and job_id == self.job.id:
            self.job.update(fraction, message)
            self._show_progress()

    def _on_cancelled(self, job_id: str) -> None:
        if self.job and job_id == self.job.id:
            kind = self.job.kind.capitalize()
            self._end_job()
            self.progress.setValue(0)
            self.progress_label.setText(f"{kind}: cancelled")
            self.message(f"{kind} cancelled; your lanes are unchanged.")

    def _on_error(self, job_id: str, code: str, text: str) -> None:
        if self.job is not None and job_id in (self.job.id, ""):
            kind = self.job.kind.capitalize()
            self._end_job()
            self.progress_label.setText(f"{kind}: failed")
            hint = CODE_HINTS.get(code, "")
            self.message(f"{kind} failed: {text}. {hint} Your lanes are unchanged.".replace("..", "."), "error")
        elif job_id == "":
            self.message(f"The engine says: {text}", "error")

    def _on_done(self, job_id: str, files: dict) -> None:
        if self.job is None or job_id != self.job.id:
            return
        job = self.job
        kind = job.kind.capitalize()
        self._end_job()
        problems = check_result(job, files)
        if problems:
            self.progress_label.setText(f"{kind}: bad result")
            self.message(f"{kind} finished but its result cannot be used: {'; '.join(problems)}. "
                         "Your lanes are unchanged.", "error")
            return
        result = {}
        for stem, path in files.items():
            if stem not in self.session.lane_names:
                continue
            audio = self._read(path)
            if audio is None:
                return
            result[stem] = audio
        try:
            self.session.apply_result(result, kind)
        except StemMismatchError as error:
            self.message(str(error), "error")
            return
        self.progress.setValue(1000)
        elapsed = time.monotonic() - job.started
        self.progress_label.setText(f"{kind}: done in {elapsed:.0f} s")
        # The stems sum to the mix: play them, not both.
        self._set_lane_flag(MIX, mute=True)
        self._refresh_lanes(fit=self.session.audio.get(MIX) is None or kind == "Generate")
        self.message(f"{kind} done in {elapsed:.1f} s: {len(result)} lanes filled (files in {job.out_dir}). "
                     "Undo (Ctrl+Z) puts the previous lanes back.")

    def undo(self) -> None:
        if self.job is not None:
            self.message("Wait for the running job to finish (or cancel it) before undoing.")
            return
        label = self.session.undo()
        if label:
            self._refresh_lanes(fit=True)
            self.statusBar().showMessage(f"Undid {label}", 5000)

    # =========================================================================
    # Export, settings, state
    # =========================================================================
    def export_to(self, folder, fmt: str, bits: str, pattern: str, include_mix: bool = False) -> list[Path]:
        names = [n for n in self.session.lane_names if (include_mix or n != MIX) and self.session.audio.get(n)]
        lanes = {n: self.session.audio[n] for n in names}
        try:
            written = export_lanes(lanes, folder, song=self.song, fmt=fmt, bits=bits, pattern=pattern)
        except ExportError as error:
            self.message(str(error), "error")
            return []
        self.message(f"Exported {len(written)} files to {folder}.")
        return written

    def _export_dialog(self) -> None:
        from .dialogs import ExportDialog

        dialog = ExportDialog(self.settings, self)
        if dialog.exec():
            dialog.apply(self.settings)
            save_settings(self.settings)
            self.export_to(self.settings.export_folder, self.settings.export_format, self.settings.export_bits,
                           self.settings.export_pattern, dialog.include_mix.isChecked())

    def _settings_dialog(self) -> None:
        from .dialogs import SettingsDialog

        dialog = SettingsDialog(self.settings, self)
        if dialog.exec():
            dialog.apply(self.settings)
            save_settings(self.settings)
            self.session_dir = (Path(self.settings.output_root).expanduser().resolve() / self.session_dir.name)
            self.restart_engine()

    def _update_controls(self) -> None:
        running = self.job is not None
        for button in (self.separate_button, self.generate_button, self.impute_button):
            button.setEnabled(self.engine_ready and not running)
        self.cancel_button.setEnabled(running)
        self.undo_action.setEnabled(self.session.can_undo and not running)
        self.export_action.setEnabled(bool([n for n in self.session.filled() if n != MIX]))

    def closeEvent(self, event) -> None:
        self.settings.steps = self.steps.value()
        self.settings.resamples = self.resamples.value()
        self.settings.seed = self.seed.value()
        self.settings.likelihood = self.likelihood.currentText()
        self.settings.method = self.method.currentText()
        self.settings.separation = self.separation.currentText()
        self.settings.seconds = self.seconds.value()
        save_settings(self.settings)
        self.shutdown()
        super().closeEvent(event)

    def shutdown(self) -> None:
        """Stop sound and the local engine (also used by tests and --screenshot)."""
        self.timer.stop()
        self.output.close()
        if self.job is not None and self.client.connected:
            self.client.send(osc.cancel(self.job.id))
        if self.supervisor is not None:
            self.supervisor.stop()


def _clock(seconds: float) -> str:
    minutes, rest = divmod(max(seconds, 0.0), 60)
    return f"{int(minutes)}:{rest:04.1f}"
