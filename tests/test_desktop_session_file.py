"""The session file (desktop/session_file.py) through real offscreen windows and
real files: saved atomically, opened back whole (lanes, takes, comp, settings,
selection), a damaged, foreign or newer file refused with a clear message."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import soundfile as sf

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
pytest.importorskip("PySide6")
pytest.importorskip("pyqtgraph")
pytest.importorskip("pytestqt")

from desktop import session_file  # noqa: E402
from desktop.loader import read_lane  # noqa: E402
from desktop.settings import AppSettings  # noqa: E402
from desktop.takes import Take  # noqa: E402

STEMS = ("bass", "drums", "guitar", "piano")
RATE = 8000


def make_window(qtbot, folder):
    from desktop.window import MainWindow

    os.environ["MSDM_APP_SETTINGS"] = str(folder / "settings.ini")
    win = MainWindow(AppSettings(output_root=str(folder / "root")), start_engine=False)
    qtbot.addWidget(win)
    win.session_dir.mkdir(parents=True, exist_ok=True)
    return win


def write(path, value):
    sf.write(path, np.full((2 * RATE, 1), value, np.float32), RATE, subtype="FLOAT")
    return path


@pytest.fixture
def saved(qtbot, tmp_path):
    win = make_window(qtbot, tmp_path)
    stems = [write(tmp_path / f"{s}.wav", 0.1 * (n + 1)) for n, s in enumerate(STEMS)]
    with qtbot.waitSignal(win.loader.finished, timeout=30_000):
        win.open_stems(stems)
    takes = [read_lane(write(tmp_path / f"bass-take{k}.wav", 0.5 + k)) for k in (1, 2)]
    win.session.add_takes({"bass": Take(takes[0], "Regenerate 1/2", 3, {"steps": 2, "range": (0.5, 1.5)})}, "x")
    win.session.add_takes({"bass": Take(takes[1], "Regenerate 2/2", 4, {"steps": 2})}, "x", new_step=False)
    win.ruler.set_selection((0.5, 1.0))
    assert win.take_action("bass", "comp", 2)
    win.lanes.set_flags("drums", mute=True)
    win.lanes.set_selected("bass", True)
    win.task_bar.takes.setValue(3)
    win.task_bar.steps.setValue(7)
    path = win.save_session(tmp_path / "song")
    assert path == tmp_path / "song.msdm.json" and path.is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp file left
    return win, path


def test_a_saved_session_opens_back_whole(qtbot, saved, tmp_path):
    first, path = saved
    second = make_window(qtbot, tmp_path / "other")
    with qtbot.waitSignal(second.loader.finished, timeout=30_000):
        assert second.open_session(path)
    assert second.messages[-1][0] == "info", second.messages[-1]
    for name in ("mix", *STEMS):
        a, b = first.session.audio[name], second.session.audio[name]
        assert (a is None) == (b is None)
        if a is not None:
            np.testing.assert_array_equal(a.samples, b.samples)
    bass_a, bass_b = first.session.takes["bass"], second.session.takes["bass"]
    assert bass_b.pieces == bass_a.pieces and len(bass_b.takes) == 3
    assert [(t.label, t.seed) for t in bass_b.takes] == [(t.label, t.seed) for t in bass_a.takes]
    assert bass_b.takes[1].settings == {"steps": 2, "range": [0.5, 1.5]}
    np.testing.assert_array_equal(bass_b.render(), bass_a.render())
    assert second.lanes.state("drums").mute and second.lanes.state("bass").selected
    assert second.ruler.selection() == pytest.approx((0.5, 1.0))
    assert second.task_bar.takes.value() == 3 and second.task_bar.steps.value() == 7
    assert not second.session.can_undo  # a session opens as it was saved


@pytest.mark.parametrize("damage,words", [
    (lambda text: text[: len(text) // 2], "damaged (not complete JSON"),
    (lambda text: text.replace('"version": 1', '"version": 2'), "newer MSDM Studio"),
    (lambda text: text.replace('"msdm-studio-session"', '"something-else"'), "not an MSDM Studio session"),
    (lambda text: text.replace('"pieces": [\n    [\n     0,', '"pieces": [\n    [\n     5,'), "does not cover"),
])
def test_a_damaged_or_newer_file_is_refused_and_nothing_changes(qtbot, saved, tmp_path, damage, words):
    _, path = saved
    bad = tmp_path / "bad.msdm.json"
    bad.write_text(damage(path.read_text()))
    other = make_window(qtbot, tmp_path / "other")
    before = dict(other.session.audio)
    assert not other.open_session(bad)
    level, text = other.messages[-1]
    assert level == "error" and words in text and str(bad) in text and "Nothing was opened" in text.replace(
        "nothing was opened", "Nothing was opened")
    assert other.session.audio == before


def test_the_document_round_trips_through_json(saved):
    win, path = saved
    document = session_file.load(path)
    assert document == session_file.load(path) and json.loads(path.read_text())["version"] == session_file.VERSION
    assert document.files()["bass#2"].endswith("bass-take1.wav")
