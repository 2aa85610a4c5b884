"""Start the app: `msdm app [--open FILE ...] [--screenshot OUT.png [--run TASK]]`."""

from __future__ import annotations

import sys
from pathlib import Path

from PySide6.QtCore import QBuffer, QByteArray, QIODevice, QTimer
from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QApplication, QWidget

from engine.atomic import write_atomic

from .qt_refcount import guard_bool_refcounts

STYLE = """
QMainWindow, QWidget { background: #1b1d22; color: #d8dbe2; }
QFrame#lane { background: #202329; border: 1px solid #2c3038; border-radius: 4px; }
QFrame#lane[dropTarget="true"] { border: 1px solid #ffcc33; }
QWidget#laneHeader { background: #25282f; }
QLabel#laneInfo { color: #8a909c; font-size: 11px; }
QLabel#clock { font-family: monospace; font-size: 15px; color: #ffcc33; padding: 0 10px; }
QLabel#rulerHint { color: #6b717c; font-size: 11px; }
QFrame#taskBar { background: #23262d; border-radius: 4px; }
QPushButton#task { background: #3a6df0; color: white; border: none; border-radius: 3px; padding: 5px 14px;
                   font-weight: bold; }
QPushButton#task:disabled { background: #343843; color: #7d828c; }
QPushButton#task:hover { background: #4d7dff; }
QToolButton { padding: 3px 8px; border-radius: 3px; }
QToolButton:hover { background: #30343c; }
QToolButton:checked { background: #3a6df0; color: white; }
QToolButton#toggleM:checked { background: #e0a030; color: black; }
QToolButton#toggleS:checked { background: #3ac070; color: black; }
QToolButton#toggleGiven { border: 1px solid #4a505c; padding: 1px 6px; }
QToolButton#toggleGiven:checked { background: #b07cff; color: black; border-color: #b07cff; }
QToolButton#transport { font-size: 15px; min-width: 28px; }
QFrame#messageBar { background: #23324a; border-radius: 4px; }
QFrame#messageBar[level="warning"] { background: #4a3d1f; }
QFrame#messageBar[level="error"] { background: #4d2327; }
QProgressBar { background: #15171c; border: 1px solid #2c3038; border-radius: 3px; text-align: center; }
QProgressBar::chunk { background: #3a6df0; }
QProgressBar#meter::chunk { background: #3ac070; }
QCheckBox, QLabel { background: transparent; }
QSpinBox, QDoubleSpinBox, QComboBox, QLineEdit { background: #15171c; border: 1px solid #2c3038; padding: 2px; }
QMenuBar, QMenu, QStatusBar { background: #1b1d22; }
QMenu::item:selected, QMenuBar::item:selected { background: #3a6df0; }
"""


def make_application(argv: list[str] | None = None) -> QApplication:
    guard_bool_refcounts()  # PySide6 6.12.0's emit() would otherwise crash the exit (desktop/qt_refcount.py)
    app = QApplication.instance() or QApplication(argv or [sys.argv[0]])
    app.setOrganizationName("MSDM Studio")
    app.setApplicationName("MSDM Studio")
    app.setDesktopFileName("msdm-studio")
    app.setStyle("Fusion")
    palette = QPalette()
    for role, color in ((QPalette.ColorRole.Window, "#1b1d22"), (QPalette.ColorRole.WindowText, "#d8dbe2"),
                        (QPalette.ColorRole.Base, "#15171c"), (QPalette.ColorRole.Text, "#d8dbe2"),
                        (QPalette.ColorRole.Button, "#2a2d34"), (QPalette.ColorRole.ButtonText, "#d8dbe2"),
                        (QPalette.ColorRole.Highlight, "#3a6df0"), (QPalette.ColorRole.ToolTipBase, "#2a2d34"),
                        (QPalette.ColorRole.ToolTipText, "#d8dbe2")):
        palette.setColor(role, QColor(color))
    app.setPalette(palette)
    app.setStyleSheet(STYLE)
    return app


def save_picture(widget: QWidget, path: str | Path) -> None:
    """The widget as a PNG, written by the one atomic writer (a reader never sees half a picture)."""
    data = QByteArray()
    buffer = QBuffer(data)
    buffer.open(QIODevice.OpenModeFlag.WriteOnly)
    if not widget.grab().save(buffer, "PNG"):
        raise OSError("Qt could not encode the window as PNG")
    buffer.close()
    write_atomic(path, bytes(data))


def run(open_files: list[str], screenshot: str | None = None, task: str | None = None,
        steps: int | None = None, resamples: int | None = None, size: tuple[int, int] = (1280, 760),
        timeout: float = 600.0) -> int:
    """The app's main loop. With ``screenshot``: open, optionally run ``task`` to
    completion, save a picture of the window, exit (0 on success, 1 if the task failed)."""
    import pyqtgraph as pg

    pg.setConfigOptions(antialias=True)
    app = make_application()
    from .window import MainWindow

    window = MainWindow()
    window.resize(*size)
    if steps:
        window.task_bar.steps.setValue(steps)
    if resamples:
        window.task_bar.resamples.setValue(resamples)
    window.show()
    if open_files:
        mixes = [f for f in open_files if Path(f).stem.lower() not in window.session.stems]
        if len(open_files) == 1 or mixes == open_files[:1] and len(mixes) == 1:
            window.open_mix(open_files[0])
            if len(open_files) > 1:
                window.open_stems(open_files[1:])
        else:
            window.open_stems(open_files)
    if screenshot is None:
        code = app.exec()
        return int(code)

    status = {"code": 0, "sent": False}

    def grab_and_quit() -> None:
        app.processEvents()
        try:
            save_picture(window, screenshot)
        except OSError as error:
            print(f"msdm app: could not write {screenshot}: {error}", file=sys.stderr)
            status["code"] = 1
        window.shutdown()
        app.quit()

    def poll() -> None:
        if window.loader.busy:  # the files given on the command line are still being read
            return QTimer.singleShot(100, poll)
        if task is None:
            return QTimer.singleShot(300, grab_and_quit)
        if not status["sent"]:
            if window.engine.ready:
                status["sent"] = window.run_task(task) is not None
                if not status["sent"]:
                    status["code"] = 1
                    return QTimer.singleShot(100, grab_and_quit)
            elif window.messages and window.messages[-1][0] == "error":
                status["code"] = 1
                return QTimer.singleShot(100, grab_and_quit)
        elif window.engine.job is None:
            ok = window.engine.last_job is not None and window.session.filled() and \
                not (window.messages and window.messages[-1][0] == "error")
            status["code"] = 0 if ok else 1
            return QTimer.singleShot(300, grab_and_quit)
        QTimer.singleShot(200, poll)

    QTimer.singleShot(200, poll)
    QTimer.singleShot(int(timeout * 1000), lambda: (status.update(code=1), grab_and_quit()))
    app.exec()
    for level, text in window.messages:  # what the window said, for scripts and tests
        print(f"msdm app: {level}: {text}")
    return status["code"]
