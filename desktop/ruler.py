"""The time ruler above the lanes: m:ss labels, the playhead, click to seek,
and the loop region. The lanes' plots follow its x range (setXLink)."""

from __future__ import annotations

import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QHBoxLayout, QLabel, QToolButton, QWidget

from .lane_widget import HEADER_WIDTH


class TimeAxis(pg.AxisItem):
    """Ruler labels as m:ss (m:ss.s when zoomed in)."""

    def tickStrings(self, values, scale, spacing):
        fine = spacing < 1.0
        out = []
        for v in values:
            minutes, seconds = divmod(max(v, 0.0), 60)
            out.append(f"{int(minutes)}:{seconds:04.1f}" if fine else f"{int(minutes)}:{int(seconds):02d}")
        return out


class Ruler(QWidget):
    seekRequested = Signal(float)     # seconds
    loopChanged = Signal(object)      # (start, end) seconds, or None when looping is off
    selectionChanged = Signal(object) # (start, end) seconds: the range Regenerate and comps work on, or None

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._fitted_length = -1.0
        self._looping = False
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.setSpacing(0)
        left = QWidget()
        left.setFixedWidth(HEADER_WIDTH + 1)  # the lane frame's border
        hints = QHBoxLayout(left)
        hints.setContentsMargins(6, 0, 4, 0)
        hint = QLabel("click to seek")
        hint.setObjectName("rulerHint")
        hints.addWidget(hint, 1)
        self.range_button = QToolButton()
        self.range_button.setText("Range")
        self.range_button.setCheckable(True)
        self.range_button.setObjectName("toggleRange")
        self.range_button.setToolTip("Select a time range (drag its edges): Regenerate rewrites the selected "
                                     "lanes there, and a lane's Takes menu comps a take into it")
        self.range_button.toggled.connect(self._show_selection)
        hints.addWidget(self.range_button)
        row.addWidget(left)
        self.plot = pg.PlotWidget(background="#1d2026", axisItems={"top": TimeAxis("top")})
        self.plot.setFixedHeight(42)
        self.plot.showAxis("top")
        self.plot.hideAxis("bottom")
        self.plot.hideAxis("left")
        self.plot.setMenuEnabled(False)
        self.plot.hideButtons()
        self.plot.getPlotItem().layout.setContentsMargins(0, 0, 0, 0)
        self.plot.setMouseEnabled(x=True, y=False)
        self.plot.setYRange(0, 1, padding=0)
        self.plot.setXRange(0, 10, padding=0)
        self.plot.getViewBox().setLimits(xMin=0)
        self.playhead = pg.InfiniteLine(pos=0, angle=90, movable=False, pen=pg.mkPen("#ffcc33", width=2))
        self.plot.addItem(self.playhead)
        self.loop_item = pg.LinearRegionItem(values=(0, 2), brush=pg.mkBrush(255, 204, 51, 60))
        self.loop_item.setVisible(False)
        self.loop_item.sigRegionChanged.connect(self._emit_loop)
        self.plot.addItem(self.loop_item)
        self.selection_item = pg.LinearRegionItem(values=(0, 2), brush=pg.mkBrush(58, 109, 240, 70),
                                                  pen=pg.mkPen("#3a6df0", width=2))
        self.selection_item.setVisible(False)
        self.selection_item.sigRegionChanged.connect(lambda: self.selectionChanged.emit(self.selection()))
        self.plot.addItem(self.selection_item)
        self.plot.scene().sigMouseClicked.connect(self._clicked)
        row.addWidget(self.plot, 1)

    @property
    def looping(self) -> bool:
        return self._looping

    def loop_region(self) -> tuple[float, float] | None:
        return tuple(self.loop_item.getRegion()) if self.looping else None

    def selection(self) -> tuple[float, float] | None:
        """The selected time range in seconds (None when Range is off)."""
        if not self.range_button.isChecked():
            return None
        start, end = self.selection_item.getRegion()
        return (max(0.0, float(start)), float(end))

    def set_selection(self, region: tuple[float, float] | None) -> None:
        """Select a range (seconds), or none."""
        if region is not None:
            self.selection_item.setRegion(region)
        self.range_button.setChecked(region is not None)
        self.selectionChanged.emit(self.selection())

    def _show_selection(self, on: bool) -> None:
        if on:  # where the musician is looking, if the last range is out of view
            low, high = self.plot.getViewBox().viewRange()[0]
            start, end = self.selection_item.getRegion()
            if not (low <= start < end <= high):
                span = high - low
                self.selection_item.setRegion((low + span * 0.4, low + span * 0.6))
        self.selection_item.setVisible(on)
        self.selectionChanged.emit(self.selection())

    def set_playhead(self, seconds: float) -> None:
        self.playhead.setPos(seconds)

    def set_length(self, seconds: float, fit: bool = False) -> None:
        """The song is this long: the view stops just past its end, and shows all
        of it when asked to (a new song) or the first time."""
        if seconds <= 0:
            return
        self.plot.getViewBox().setLimits(xMin=0, xMax=seconds * 1.02)
        if fit or self._fitted_length < 0:
            self.plot.setXRange(0, seconds, padding=0)
            self._fitted_length = seconds

    def set_looping(self, on: bool) -> None:
        """Show the loop region (where the musician is looking, if it is out of view) or hide it."""
        self._looping = on
        if on:
            low, high = self.plot.getViewBox().viewRange()[0]
            start, end = self.loop_item.getRegion()
            if not (low <= start < end <= high):
                span = high - low
                self.loop_item.setRegion((low + span * 0.25, low + span * 0.5))
        self.loop_item.setVisible(on)
        self._emit_loop()

    def _emit_loop(self) -> None:
        self.loopChanged.emit(self.loop_region())

    def _clicked(self, event) -> None:
        if event.button() != Qt.MouseButton.LeftButton:
            return
        point = self.plot.getViewBox().mapSceneToView(event.scenePos())
        self.seekRequested.emit(max(point.x(), 0.0))
