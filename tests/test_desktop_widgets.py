"""The window's parts on their own (offscreen Qt, pytest-qt, no engine): the
file loader's worker thread, the task bar, the transport, the ruler and the
lanes container, each checked through its signals and the state it owns."""

from __future__ import annotations

import os
import threading
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import soundfile as sf  # noqa: E402

pytest.importorskip("PySide6")
pytest.importorskip("pyqtgraph")
pytest.importorskip("pytestqt")

from PySide6.QtCore import QPointF, Qt, QTimer  # noqa: E402

from desktop import lane_state, loader  # noqa: E402
from desktop.jobs import Job, TaskControls  # noqa: E402
from desktop.lane_state import LaneState  # noqa: E402
from desktop.loader import FileLoader, LoadRequest  # noqa: E402
from desktop.session import MIX, LaneAudio  # noqa: E402
from desktop.settings import AppSettings  # noqa: E402
from engine.audio.files import resample  # noqa: E402

STEMS = ("bass", "drums", "guitar", "piano")


def sine_file(path: Path, rate: int, seconds: float = 0.5, channels: int = 2) -> Path:
    t = np.arange(int(rate * seconds)) / rate
    data = np.stack([0.5 * np.sin(2 * np.pi * (220 + 110 * c) * t) for c in range(channels)], axis=1)
    sf.write(path, data.astype(np.float32), rate, subtype="FLOAT")
    return path


def flat(value: float, frames: int, rate: int, name: str = "x.wav") -> LaneAudio:
    return LaneAudio(np.full((1, frames), value, np.float32), rate, Path(name))


# ---- the file loader -----------------------------------------------------------
def test_files_are_read_and_resampled_off_the_gui_thread(qtbot, tmp_path, monkeypatch):
    """The read and the resampling run on the loader's thread while the GUI thread
    keeps running its event loop; the result comes back by a signal, after on_done."""
    gui = threading.get_ident()
    threads: dict[str, int] = {}
    gui_ran = threading.Event()

    def read_audio(path, **kwargs):
        threads["read"] = threading.get_ident()
        # Wait for a timer of the GUI thread: on the GUI thread this would never come.
        assert gui_ran.wait(10), "the GUI thread did not run while the file was read"
        return real_read(path, **kwargs)

    def resample_recorded(*args, **kwargs):
        threads["resample"] = threading.get_ident()
        return real_resample(*args, **kwargs)

    real_read, real_resample = loader.read_audio, lane_state.resample
    monkeypatch.setattr(loader, "read_audio", read_audio)
    monkeypatch.setattr(lane_state, "resample", resample_recorded)

    drums = sine_file(tmp_path / "drums.wav", 44100)
    mix = flat(0.25, 11025, 22050, "mix.wav")  # the mix plays at 22.05 kHz: the new lane is resampled to it
    keep = {MIX: mix, "bass": None, "drums": None}
    files = FileLoader()
    order = []
    QTimer.singleShot(50, gui_ran.set)
    with qtbot.waitSignal(files.finished, timeout=20_000) as blocker:
        files.submit(lambda: LoadRequest(paths={"drums": drums}, keep=keep), order.append)
        assert files.busy
    loaded = blocker.args[0]
    assert order == [loaded] and not files.busy  # on_done ran first, on the GUI thread
    assert loaded.ok and threads["read"] != gui and threads["resample"] != gui

    expected, rate = sf.read(drums, dtype="float32", always_2d=True)
    audio = loaded.audio["drums"]
    np.testing.assert_array_equal(audio.samples, expected.T)
    assert (audio.sample_rate, audio.path) == (44100, drums.resolve())
    assert loaded.rate == 22050
    prepared = {id(a): (r, samples) for a, r, samples in loaded.prepared}
    assert prepared[id(audio)][0] == 22050
    np.testing.assert_array_equal(prepared[id(audio)][1], resample(expected.T, 44100, 22050).T)
    np.testing.assert_array_equal(prepared[id(mix)][1], mix.samples.T)  # a kept lane not prepared yet

    with qtbot.waitSignal(files.finished, timeout=20_000) as blocker:  # already prepared: not again
        files.submit(lambda: LoadRequest(paths={"drums": drums}, keep=keep,
                                         cached=frozenset({(id(mix), 22050)})), lambda _: None)
    assert [a for a, _, _ in blocker.args[0].prepared] == [blocker.args[0].audio["drums"]]


def test_a_file_that_cannot_be_read_is_a_message_and_the_next_is_read(qtbot, tmp_path, monkeypatch):
    bad = tmp_path / "notes.wav"
    bad.write_text("this is not audio")
    good = sine_file(tmp_path / "bass.wav", 22050, channels=1)
    files = FileLoader()
    results = []
    with qtbot.waitSignals([files.finished, files.finished], timeout=20_000):
        files.submit(lambda: LoadRequest(paths={"bass": good, "drums": bad}, keep={}), results.append)
        files.submit(lambda: LoadRequest(paths={"bass": good}, keep={}), results.append)
    first, second = results
    assert not first.ok and first.audio == {}  # one bad file: nothing is read
    assert "notes.wav" in first.error and first.error.endswith("Your lanes were not changed.")
    assert second.ok and second.audio["bass"].samples.shape == (1, 11025) and second.rate == 22050

    def broken(path, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(loader, "read_audio", broken)  # an unexpected error still comes back
    with qtbot.waitSignal(files.finished, timeout=20_000) as blocker:
        files.submit(lambda: LoadRequest(paths={"bass": good}, keep={}), lambda _: None)
    assert "bass.wav" in blocker.args[0].error and "a bug" in blocker.args[0].error and not files.busy


# ---- the task bar ----------------------------------------------------------------
def test_task_bar_sends_requests_and_shows_the_job(qtbot):
    from engine.jobs.options import OPTIONS_BY_NAME

    from desktop.task_bar import TaskBar

    settings = AppSettings(steps=7, resamples=3, seed=11, method="no such sampler", separation="from noise",
                           likelihood="gaussian", seconds=4.5)
    bar = TaskBar(settings)
    qtbot.addWidget(bar)
    assert bar.controls() == TaskControls(steps=7, resamples=3, seed=11, method="dpmpp2m", likelihood="gaussian",
                                          seconds=4.5, separation="from noise")
    assert bar.steps.maximum() == min(OPTIONS_BY_NAME["steps"].high, 1000) and bar.steps.minimum() == 1
    assert bar.seed.maximum() == OPTIONS_BY_NAME["seed"].high
    bar.steps.setValue(20)
    bar.method.setCurrentText("euler")
    bar.store(settings)
    assert (settings.steps, settings.method, settings.seconds) == (20, "euler", 4.5)

    bar.set_state(engine_ready=False, job=None)
    assert not bar.separate_button.isEnabled() and not bar.cancel_button.isEnabled()
    bar.set_state(engine_ready=True, job=None)
    with qtbot.waitSignal(bar.taskRequested) as blocker:
        qtbot.mouseClick(bar.impute_button, Qt.MouseButton.LeftButton)
    assert blocker.args == ["impute"]

    job = Job("separate", "j", Path("/out"), STEMS)
    bar.set_state(engine_ready=True, job=job)
    assert not any(b.isEnabled() for b in bar.task_buttons.values()) and bar.cancel_button.isEnabled()
    with qtbot.waitSignal(bar.cancelRequested):
        qtbot.mouseClick(bar.cancel_button, Qt.MouseButton.LeftButton)
    job.update(0.2, "step 2", now=job.started + 1.0)
    job.update(0.5, "step 5", now=job.started + 4.0)
    bar.show_job(job)
    assert bar.progress.value() == 500 and bar.progress_label.text().startswith("Separate: ")
    assert bar.progress_label.toolTip() == "step 5" and bar._timer.isActive()  # time left kept fresh
    job.answered = True
    bar.set_state(engine_ready=True, job=job)
    assert not bar.cancel_button.isEnabled()  # the engine is done: its files are being read
    bar.set_state(engine_ready=True, job=None)
    bar.show_outcome("Separate: done in 3 s", 1000)
    assert bar.progress.value() == 1000 and bar.progress_label.text() == "Separate: done in 3 s"
    assert bar.job is None and not bar._timer.isActive() and bar.separate_button.isEnabled()


# ---- the transport -----------------------------------------------------------------
@pytest.fixture
def transport(qtbot):
    from desktop.transport import Transport

    widget = Transport()
    qtbot.addWidget(widget)
    yield widget
    widget.shutdown()


def test_transport_plays_the_lanes_at_the_mix_rate(qtbot, transport):
    bass = flat(0.5, 400, 200)
    states = [LaneState(MIX, flat(0.25, 100, 100)), LaneState("bass", bass, gain=0.5), LaneState("drums")]
    transport.set_loop((0.25, 0.5))
    transport.show_lanes(states)
    mixer = transport.mixer
    assert mixer.sample_rate == 100 and set(mixer.tracks()) == {MIX, "bass"}
    np.testing.assert_array_equal(mixer.tracks()["bass"].samples, resample(bass.samples, 200, 100).T)
    assert mixer.tracks()["bass"].gain == 0.5 and transport.length == 2.0
    assert mixer.loop == (25, 50)
    transport.update_lane("bass", mute=True)
    assert mixer.tracks()["bass"].mute
    transport.seek(1.5)
    assert mixer.position == 150
    with qtbot.waitSignal(transport.positionChanged, timeout=2000) as blocker:
        pass
    assert blocker.args == [1.5] and transport.clock.text() == "0:01.5 / 0:02.0"

    states[0].audio = flat(0.25, 400, 400)  # a new mix at another rate: every lane follows it
    transport.show_lanes(states, keep=[bass])
    assert mixer.sample_rate == 400 and mixer.tracks()["bass"].samples.shape == (800, 1)
    assert mixer.loop == (100, 200)  # the same seconds
    assert transport.cache.get(bass, 100) is not None  # kept for undo
    transport.show_lanes(states[:1])  # bass gone, and not kept for undo: forgotten
    assert transport.cache.get(bass, 100) is None and transport.cache.get(bass, 400) is None
    assert len(transport.cache) == 1

    transport.show_lanes([LaneState(MIX)])
    assert mixer.tracks() == {}
    with qtbot.waitSignal(transport.message) as blocker:
        transport.play_pause()
    assert blocker.args[0].startswith("Nothing to play yet") and not mixer.playing


def test_transport_says_once_why_there_is_no_sound(qtbot, transport):
    transport.show_lanes([LaneState(MIX, flat(0.25, 100, 100))])
    transport.output.problem = "Playback is off: test device."
    said = []
    transport.message.connect(lambda text, level: said.append((level, text)))
    transport.play_pause()
    transport.play_pause()
    assert said == [("warning", "Playback is off: test device.")] and not transport.mixer.playing


# ---- the ruler -----------------------------------------------------------------------
def test_ruler_seeks_where_clicked_and_marks_a_loop_in_view(qtbot):
    from desktop.ruler import Ruler

    ruler = Ruler()
    qtbot.addWidget(ruler)
    ruler.resize(800, 42)
    ruler.show()
    qtbot.waitExposed(ruler)
    ruler.set_length(12.0, fit=True)
    low, high = ruler.plot.getViewBox().viewRange()[0]
    assert (low, high) == pytest.approx((0.0, 12.0))
    ruler.set_length(30.0)  # a longer lane: the view stays (no fit)
    assert ruler.plot.getViewBox().viewRange()[0] == pytest.approx([0.0, 12.0])

    with qtbot.waitSignal(ruler.loopChanged) as blocker:
        ruler.set_looping(True)
    assert blocker.args[0] == pytest.approx((0.0, 2.0))  # its place was in view: kept
    ruler.loop_item.setRegion((20.0, 25.0))
    ruler.set_looping(False)
    assert ruler.loop_region() is None
    with qtbot.waitSignal(ruler.loopChanged) as blocker:
        ruler.set_looping(True)
    assert blocker.args[0] == pytest.approx((3.0, 6.0))  # out of view: a quarter to half of the view

    at = ruler.plot.mapFromScene(ruler.plot.getViewBox().mapViewToScene(QPointF(6.0, 0.5)))
    with qtbot.waitSignal(ruler.seekRequested, timeout=2000) as blocker:
        qtbot.mouseClick(ruler.plot.viewport(), Qt.MouseButton.LeftButton, pos=at)
    assert blocker.args[0] == pytest.approx(6.0, abs=12.0 / 500)  # within a pixel or two


# ---- the lanes ---------------------------------------------------------------------------
def test_lanes_own_their_states_and_keep_them_when_the_stems_change(qtbot):
    from desktop.lanes import Lanes

    lanes = Lanes()
    qtbot.addWidget(lanes)
    lanes.set_names((MIX, "bass", "drums"))
    bass = lanes.state("bass")
    with qtbot.waitSignal(lanes.settingChanged) as blocker:
        lanes["bass"].mute.setChecked(True)
    assert blocker.args == ["bass", {"mute": True}] and bass.mute
    with qtbot.waitSignal(lanes.settingChanged) as blocker:
        lanes["bass"].level.setValue(50)
    assert blocker.args == ["bass", {"gain": 0.5}] and bass.gain == 0.5
    lanes["drums"].given.setChecked(True)
    drums = flat(0.1, 10, 100, "drums.wav")
    lanes.show_audio({MIX: None, "bass": None, "drums": drums})
    assert lanes.state("drums").audio is drums and lanes["drums"].audio is drums
    assert lanes.given_stems() == ["drums"]
    lanes.set_flags(MIX, solo=True)
    assert lanes.state(MIX).solo and lanes[MIX].solo.isChecked()

    lanes.set_names((MIX, "bass", "vocals"))  # the engine's model has other stems
    assert lanes.names == (MIX, "bass", "vocals") and lanes.state("bass") is bass
    assert lanes["bass"].mute.isChecked() and lanes["bass"].level.value() == 50
    assert lanes.state("vocals") == LaneState("vocals") and not lanes["vocals"].mute.isChecked()
    assert lanes.given_stems() == []


# ---- the screenshot --------------------------------------------------------------------
def test_screenshot_is_written_whole_by_the_atomic_writer(qtbot, tmp_path, monkeypatch):
    from PySide6.QtGui import QImage
    from PySide6.QtWidgets import QLabel

    from desktop import app

    label = QLabel("MSDM")
    qtbot.addWidget(label)
    label.resize(40, 20)
    written = []

    def write_atomic(path, content):
        written.append(path)
        return real(path, content)

    real = app.write_atomic
    monkeypatch.setattr(app, "write_atomic", write_atomic)
    out = tmp_path / "new folder" / "shot.png"
    app.save_picture(label, out)
    assert written == [out] and os.listdir(out.parent) == ["shot.png"]  # no temp file left beside it
    image = QImage(str(out))
    assert (image.width(), image.height()) == (40, 20)
    with pytest.raises(OSError):
        app.save_picture(label, tmp_path)  # a folder: refused, and said
