"""The app's rough edges of issue 22, on a real offscreen window at its default size:
the task bar's outcome text whole, the Steps box named for what it drives, the
lane's 'given' toggle a visible control."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
pytest.importorskip("PySide6")
pytest.importorskip("pyqtgraph")
pytest.importorskip("pytestqt")

from desktop.settings import AppSettings  # noqa: E402


@pytest.fixture
def window(qtbot, tmp_path):
    from desktop.window import MainWindow

    os.environ["MSDM_APP_SETTINGS"] = str(tmp_path / "settings.ini")
    win = MainWindow(AppSettings(output_root=str(tmp_path / "root")), start_engine=False)
    win.resize(1280, 760)  # the app's default size
    win.show()
    qtbot.waitExposed(win)
    yield win
    win.shutdown()
    win.close()


def test_the_outcome_text_is_shown_whole(qtbot, window):
    assert window.width() == 1280 and window.minimumSizeHint().width() <= 1280  # the task row fits
    label = window.task_bar.progress_label
    for text in ("Separate: done in 12 s", "Generate: done in 1834 s", "Impute: bad result"):
        window.task_bar.show_outcome(text, 1000)
        qtbot.wait(20)  # layout
        assert label.text() == text
        assert label.width() >= label.fontMetrics().horizontalAdvance(text), (text, label.width())


def test_steps_box_says_separate_by_first_guess_takes_no_steps(window):
    bar = window.task_bar
    bar.separation.setCurrentText("first guess")
    assert bar.labels["Steps"].text() == "Steps (Generate, Impute)"
    assert not bar.resamples.isEnabled() and not bar.likelihood.isEnabled()
    for mode in ("refined guess", "from noise"):
        bar.separation.setCurrentText(mode)
        assert bar.labels["Steps"].text() == "Steps" and bar.resamples.isEnabled() and bar.likelihood.isEnabled()


def test_given_is_a_visible_toggle_that_looks_different_when_on(qtbot, window):
    given = window.lanes["bass"].given
    assert given.isVisible() and given.isCheckable() and given.text() == "given"
    assert not window.lanes["mix"].given.isVisible()
    off = given.grab().toImage()
    colors_off = {off.pixel(x, y) for x in range(off.width()) for y in range(off.height())}
    assert len(colors_off) > 3  # a frame and a word, not a bare word on the background
    given.setChecked(True)
    qtbot.wait(20)
    on = given.grab().toImage()
    changed = sum(on.pixel(x, y) != off.pixel(x, y) for x in range(on.width()) for y in range(on.height()))
    assert changed > on.width() * on.height() // 2  # filled when on: seen at a glance
    assert window.given_stems() == []  # an empty lane is never given (nothing to keep)
