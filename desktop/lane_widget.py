"""One lane: a header (name, mute, solo, level, 'given' tick, spectrogram toggle)
and a pyqtgraph plot of the waveform (or its spectrogram) with the playhead.
Accepts files dropped on it; its name can be dragged out as the lane's file."""

from __future__ import annotations

import pyqtgraph as pg
from PySide6.QtCore import QMimeData, QPoint, QRectF, Qt, QUrl, Signal
from PySide6.QtGui import QColor, QDrag, QFont
from PySide6.QtWidgets import (QComboBox, QFrame, QMenu, QHBoxLayout, QLabel, QSlider, QToolButton, QVBoxLayout,
                               QWidget)

from .session import MIX, LaneAudio
from .spectrogram import spectrogram_db
from .waveform import display_mono, waveform_points

LANE_COLORS = {"mix": "#d0d4dc", "bass": "#4fb0ff", "drums": "#ff7a59", "guitar": "#7bd88f",
               "piano": "#c49bff", "vocals": "#ffd166", "other": "#9aa5b1"}
FALLBACK_COLORS = ["#ffd166", "#06d6a0", "#ef476f", "#118ab2", "#f78c6b"]
HEADER_WIDTH = 190


def lane_color(name: str, index: int) -> QColor:
    return QColor(LANE_COLORS.get(name, FALLBACK_COLORS[index % len(FALLBACK_COLORS)]))


class _DragName(QLabel):
    """The lane's name; dragging it carries the lane's file out (file managers, DAWs)."""

    def __init__(self, lane: "LaneWidget") -> None:
        super().__init__(lane.name.capitalize())
        self.lane = lane
        self._press: QPoint | None = None
        self.setToolTip("Drag to copy this lane's audio file into a DAW or a folder")

    def mousePressEvent(self, event) -> None:
        self._press = event.position().toPoint()
        super().mousePressEvent(event)

    def mouseMoveEvent(self, event) -> None:
        if self._press is None or self.lane.audio is None:
            return
        if (event.position().toPoint() - self._press).manhattanLength() < 8:
            return
        self._press = None
        drag = QDrag(self)
        drag.setMimeData(self.lane.mime_data())
        drag.exec(Qt.DropAction.CopyAction)


class LaneWidget(QFrame):
    muteChanged = Signal(str, bool)
    soloChanged = Signal(str, bool)
    gainChanged = Signal(str, float)
    filesDropped = Signal(str, list)     # lane name, [paths]
    selectedChanged = Signal(str, bool)
    takeRequested = Signal(str, str, int)  # lane, action (choose | audition | comp | delete | keep), take number

    def __init__(self, name: str, index: int, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.name = name
        self.audio: LaneAudio | None = None
        self.color = lane_color(name, index)
        self.setObjectName("lane")
        self.setAcceptDrops(True)
        self.setMinimumHeight(96)  # 120 with a takes row

        header = QWidget()
        header.setFixedWidth(HEADER_WIDTH)
        header.setObjectName("laneHeader")
        self.title = _DragName(self)
        font = QFont(self.title.font())
        font.setBold(True)
        self.title.setFont(font)
        self.title.setStyleSheet(f"color: {self.color.name()};")
        self.info = QLabel("empty: drop a file here")
        self.info.setObjectName("laneInfo")
        self.mute = self._toggle("M", "Mute this lane")
        self.solo = self._toggle("S", "Solo: play only soloed lanes")
        self.spectrum = self._toggle("~", "Show the spectrogram instead of the waveform")
        # A framed toggle like M and S (a check box drew no visible box on the dark theme: issue 22).
        self.given = QToolButton()
        self.given.setText("given")
        self.given.setCheckable(True)
        self.given.setObjectName("toggleGiven")
        self.given.setToolTip("Given: Impute keeps this stem and generates the lanes not given to fit it")
        self.given.setVisible(name != MIX)
        self.select = self._toggle("sel", "Select this lane: Regenerate writes it anew inside the ruler's Range")
        self.select.setFixedSize(30, 22)
        self.select.setVisible(name != MIX)
        self.select.toggled.connect(lambda on: self.selectedChanged.emit(self.name, on))
        # Takes: the one the lane plays (switch), and what to do with the one shown in the box.
        self.take_box = QComboBox()
        self.take_box.setToolTip("The lane's takes: pick one to play it whole")
        self.take_box.activated.connect(lambda index: self.takeRequested.emit(self.name, "choose", index + 1))
        self.take_menu = QToolButton()
        self.take_menu.setText("Takes")
        self.take_menu.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        menu = QMenu(self.take_menu)
        for action, text in (("audition", "Audition the shown take (the lane plays it until you stop)"),
                             ("comp", "Use the shown take in the ruler's Range (comp)"),
                             ("keep", "Keep only the takes the lane plays"),
                             ("delete", "Delete the shown take")):
            menu.addAction(text, lambda a=action: self.takeRequested.emit(
                self.name, a, self.take_box.currentIndex() + 1))
        self.take_menu.setMenu(menu)
        self.takes_row = QWidget()
        takes_line = QHBoxLayout(self.takes_row)
        takes_line.setContentsMargins(0, 0, 0, 0)
        takes_line.addWidget(self.take_box, 1)
        takes_line.addWidget(self.take_menu)
        self.takes_row.setVisible(False)
        self.level = QSlider(Qt.Orientation.Horizontal)
        self.level.setRange(0, 150)
        self.level.setValue(100)
        self.level.setToolTip("Level (100% = as is)")
        self.mute.toggled.connect(lambda on: self.muteChanged.emit(self.name, on))
        self.solo.toggled.connect(lambda on: self.soloChanged.emit(self.name, on))
        self.level.valueChanged.connect(lambda v: self.gainChanged.emit(self.name, v / 100.0))
        self.spectrum.toggled.connect(self._show_view)

        top = QHBoxLayout()
        top.setContentsMargins(0, 0, 0, 0)
        top.addWidget(self.title, 1)
        for button in (self.select, self.mute, self.solo, self.spectrum):
            top.addWidget(button)
        bottom = QHBoxLayout()
        bottom.setContentsMargins(0, 0, 0, 0)
        bottom.addWidget(self.level, 1)
        bottom.addWidget(self.given)
        column = QVBoxLayout(header)
        column.setContentsMargins(8, 4, 6, 4)
        column.setSpacing(2)
        column.addLayout(top)
        column.addWidget(self.info)
        column.addWidget(self.takes_row)
        column.addLayout(bottom)

        self.plot = pg.PlotWidget(background="#15171c")
        self.plot.setAcceptDrops(False)  # drops go to the lane (the parent widget)
        self.plot.hideAxis("bottom")
        self.plot.hideAxis("left")
        self.plot.setMenuEnabled(False)
        self.plot.setMouseEnabled(x=True, y=False)
        self.plot.hideButtons()
        self.plot.getPlotItem().layout.setContentsMargins(0, 0, 0, 0)  # x = 0 lines up with the ruler
        self.plot.setYRange(-1.0, 1.0, padding=0.02)
        self.curve = pg.PlotDataItem(pen=pg.mkPen(self.color, width=1))
        self.curve.setDownsampling(auto=True, method="peak")
        self.curve.setClipToView(True)
        self.plot.addItem(self.curve)
        self.image = pg.ImageItem()
        try:
            self.image.setColorMap(pg.colormap.get("inferno"))
        except Exception:  # colour maps are data files; grey is fine without them
            pass
        self.image.setVisible(False)
        self.plot.addItem(self.image)
        self.loop_region = pg.LinearRegionItem(movable=False, brush=pg.mkBrush(255, 255, 255, 22),
                                               pen=pg.mkPen(None))
        self.loop_region.setVisible(False)
        self.loop_region.setZValue(-5)
        self.plot.addItem(self.loop_region)
        self.playhead = pg.InfiniteLine(pos=0, angle=90, movable=False, pen=pg.mkPen("#ffcc33", width=1.5))
        self.playhead.setZValue(10)
        self.plot.addItem(self.playhead)
        self._spectrogram_ready = False

        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.setSpacing(0)
        row.addWidget(header)
        row.addWidget(self.plot, 1)

    def _toggle(self, text: str, tip: str) -> QToolButton:
        button = QToolButton()
        button.setText(text)
        button.setCheckable(True)
        button.setToolTip(tip)
        button.setFixedSize(24, 22)
        button.setObjectName(f"toggle{text}")
        return button

    def set_takes(self, labels: list[str], playing: str) -> None:
        """The lane's takes (none: the row hides) and which the lane plays (a take's label or "comp ...")."""
        self.take_box.blockSignals(True)
        self.take_box.clear()
        self.take_box.addItems(labels)
        if labels:
            current = next((i for i, label in enumerate(labels) if label == playing), len(labels) - 1)
            self.take_box.setCurrentIndex(current)
        self.take_box.blockSignals(False)
        self.take_box.setToolTip(f"The lane plays: {playing}" if playing else "The lane's takes")
        self.takes_row.setVisible(bool(labels))

    # ---- audio ----------------------------------------------------------------
    def set_audio(self, audio: LaneAudio | None) -> None:
        self.audio = audio
        self._spectrogram_ready = False
        if audio is None:
            self.curve.setData([], [])
            self.image.clear()
            self.info.setText("empty: drop a file here")
            self.setToolTip("")
            return
        x, y = waveform_points(display_mono(audio.samples), audio.sample_rate)
        self.curve.setData(x, y)
        layout = {1: "mono", 2: "stereo"}.get(audio.channels, f"{audio.channels} ch")
        self.info.setText(f"{_clock(audio.seconds)}  {audio.sample_rate / 1000:g} kHz {layout}")
        self.setToolTip(str(audio.path))
        if self.spectrum.isChecked():
            self._draw_spectrogram()

    def mime_data(self) -> QMimeData:
        data = QMimeData()
        if self.audio is not None:
            data.setUrls([QUrl.fromLocalFile(str(self.audio.path))])
        return data

    # ---- views ----------------------------------------------------------------
    def _show_view(self, spectrogram: bool) -> None:
        self.curve.setVisible(not spectrogram)
        self.image.setVisible(spectrogram)
        if spectrogram:
            self._draw_spectrogram()
        else:
            self.plot.setYRange(-1.0, 1.0, padding=0.02)

    def _draw_spectrogram(self) -> None:
        if self.audio is None:
            return
        nyquist = self.audio.sample_rate / 2
        if not self._spectrogram_ready:
            image, _, _ = spectrogram_db(display_mono(self.audio.samples), self.audio.sample_rate)
            self.image.setImage(image, levels=(-90.0, 0.0))
            self.image.setRect(QRectF(0.0, 0.0, self.audio.seconds, nyquist))
            self._spectrogram_ready = True
        self.plot.setYRange(0.0, nyquist, padding=0.0)

    def set_playhead(self, seconds: float) -> None:
        self.playhead.setPos(seconds)

    def set_loop(self, region: tuple[float, float] | None) -> None:
        self.loop_region.setVisible(region is not None)
        if region is not None:
            self.loop_region.setRegion(region)

    # ---- drag and drop in -----------------------------------------------------
    def dragEnterEvent(self, event) -> None:
        if event.mimeData().hasUrls():
            event.acceptProposedAction()
            self.setProperty("dropTarget", True)
            self.style().polish(self)

    def dragLeaveEvent(self, event) -> None:
        self.setProperty("dropTarget", False)
        self.style().polish(self)

    def dropEvent(self, event) -> None:
        self.setProperty("dropTarget", False)
        self.style().polish(self)
        paths = [url.toLocalFile() for url in event.mimeData().urls() if url.isLocalFile()]
        if paths:
            event.acceptProposedAction()
            self.filesDropped.emit(self.name, paths)


def _clock(seconds: float) -> str:
    minutes, rest = divmod(max(seconds, 0.0), 60)
    return f"{int(minutes)}:{rest:04.1f}"
