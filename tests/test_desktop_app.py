"""The real window (offscreen Qt, pytest-qt) against a real local engine process
(`msdm serve` started by the app) on the tiny model, and real playback through
PortAudio into an ALSA null device."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Before Qt and PortAudio load: no display, and ALSA's default device is a null
# sink (the system config, then our default), so playback runs with no sound card.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
_ALSA = Path(tempfile.mkdtemp(prefix="msdm-alsa-")) / "asound.conf"
_ALSA.write_text('</usr/share/alsa/alsa.conf>\npcm.!default { type plug slave.pcm "nullsink" }\n'
                 'pcm.nullsink { type null }\n')
os.environ.setdefault("ALSA_CONFIG_PATH", str(_ALSA))

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import soundfile as sf  # noqa: E402

pytest.importorskip("PySide6")
pytest.importorskip("pyqtgraph")
pytest.importorskip("pytestqt")

from desktop.jobs import task_options  # noqa: E402
from desktop.session import MIX, LaneAudio  # noqa: E402
from desktop.settings import AppSettings  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
STEMS = ("bass", "drums", "guitar", "piano")
ENGINE_START_S = 90


def write_mix(path: Path, seconds: float, rate: int = 44100, channels: int = 2) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    mono = 0.3 * np.sin(2 * np.pi * 110 * t) + 0.2 * np.sin(2 * np.pi * 440 * t) * (t % 0.5 < 0.25)
    data = np.stack([mono * (1 - 0.2 * c) for c in range(channels)], axis=1)
    sf.write(path, data.astype(np.float32), rate, subtype="PCM_16")
    return path


def wait(qtbot, condition, timeout_s: float, what: str) -> None:
    try:
        qtbot.waitUntil(condition, timeout=int(timeout_s * 1000))
    except Exception:  # pytest-qt's TimeoutError
        raise AssertionError(f"timed out after {timeout_s} s waiting for {what}") from None


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    path = tmp_path_factory.mktemp("desktop")
    os.environ["MSDM_APP_SETTINGS"] = str(path / "settings.ini")
    # The engine child inherits this: one math thread, because on a shared,
    # overloaded CI machine torch's spinning worker threads make a tiny model
    # 20x slower (measured: 2m41s vs 8.7s for the same 4-step separation).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    return path


@pytest.fixture(scope="module")
def window(qapp, workdir, tiny_model_path):
    """One window and one engine process for the module (the engine takes seconds to start)."""
    # The tiny test model has no first-guess separator: separate with the diffusion sampler.
    yield from _window_with_engine(AppSettings(model=str(tiny_model_path), output_root=str(workdir / "root"),
                                               steps=4, export_folder=str(workdir / "export"),
                                               separation="from noise"))


def _window_with_engine(settings: AppSettings):
    """A shown window whose engine answered; shut down when the generator closes."""
    from pytestqt.qtbot import QtBot

    from desktop.window import MainWindow

    win = MainWindow(settings)
    win.show()
    QtBot(None).waitUntil(lambda: win.engine.ready, timeout=ENGINE_START_S * 1000)
    yield win
    win.shutdown()
    win.close()


def run_job(qtbot, window, kind: str, timeout_s: float = 60, **extra) -> list[int]:
    """Start a task and wait for it to end (its files read onto the lanes); returns the progress bar values seen."""
    seen = []
    progress = window.task_bar.progress
    progress.valueChanged.connect(seen.append)
    assert window.run_task(kind, **extra) is not None, window.messages[-1]
    wait(qtbot, lambda: window.engine.job is None, timeout_s, f"{kind} to finish")
    progress.valueChanged.disconnect(seen.append)
    return seen


def opened(qtbot, window, open_files, *args) -> bool:
    """Open files (window.open_mix, open_stems, drop_files) and wait until they are
    read off the GUI thread and applied; True if they reached the lanes."""
    with qtbot.waitSignal(window.loader.finished, timeout=30_000) as blocker:
        open_files(*args)
    return blocker.args[0].ok


def test_open_separate_export_and_read_back(qtbot, window, workdir):
    mix = write_mix(workdir / "song.wav", 1.5)
    assert opened(qtbot, window, window.open_mix, mix)
    assert window.lanes[MIX].audio is window.session.audio[MIX]
    assert str(mix.resolve()) == window.settings.recent[0]
    # The few-step solver is the app's default sampler, and the choice travels with the job.
    method = window.task_bar.method
    assert method.currentText() == "dpmpp2m"
    assert task_options("separate", window.task_bar.controls())["method"] == "dpmpp2m"
    method.setCurrentText("euler")
    assert task_options("generate", window.task_bar.controls())["method"] == "euler"
    method.setCurrentText("dpmpp2m")
    seen = run_job(qtbot, window, "separate")
    assert window.messages[-1][0] == "info", window.messages[-1]
    assert seen[-1] == 1000 and len(seen) >= 2  # progress moved, then reached 100%
    for stem in STEMS:
        audio = window.session.audio[stem]
        assert audio is not None and window.lanes[stem].audio is audio
        assert audio.sample_rate == 44100 and audio.samples.shape == (2, int(1.5 * 44100))
        assert audio.path.parent == window.engine.last_job.out_dir
        assert window.engine.last_job.out_dir.parent == window.session_dir
    # Dirac likelihood: the stems sum to the mix (as read from the 16-bit file).
    total = sum(window.session.audio[s].samples for s in STEMS)
    np.testing.assert_allclose(total, window.session.audio[MIX].samples, atol=1e-4)
    assert window.lanes[MIX].mute.isChecked()  # the stems play, not the mix on top of them
    assert "mix lane is muted" in window.messages[-1][1]  # and the window says so (issue 22)
    # The lane drags out as its file.
    assert [u.toLocalFile() for u in window.lanes["drums"].mime_data().urls()] == \
        [str(window.session.audio["drums"].path)]

    written = window.export_to(workdir / "export", "flac", "24", "{song} - {stem}")
    assert [p.name for p in written] == [f"song - {s}.flac" for s in STEMS]
    for stem, path in zip(STEMS, written):
        data, rate = sf.read(path, dtype="float32", always_2d=True)
        assert rate == 44100 and sf.info(path).subtype == "PCM_24"
        np.testing.assert_allclose(data.T, np.clip(window.session.audio[stem].samples, -1, 1), atol=2 ** -22)

    before = dict(window.session.audio)
    window.undo()
    assert all(window.session.audio[s] is None for s in STEMS)
    assert window.session.audio[MIX] is before[MIX]


def test_impute_with_one_given_lane(qtbot, window, workdir):
    assert opened(qtbot, window, window.open_mix, write_mix(workdir / "impute-mix.wav", 1.0, rate=22050, channels=1))
    drums = write_mix(workdir / "drums.wav", 1.0, rate=22050, channels=1)
    assert opened(qtbot, window, window.open_stems, [drums])
    given = window.session.audio["drums"]
    assert given is not None and all(window.session.audio[s] is None for s in ("bass", "guitar", "piano"))
    window.lanes["drums"].given.setChecked(True)
    run_job(qtbot, window, "impute")
    window.lanes["drums"].given.setChecked(False)
    assert window.messages[-1][0] == "info", window.messages[-1]
    assert window.session.audio["drums"] is given  # the given stem is kept as it was
    for stem in ("bass", "guitar", "piano", MIX):
        audio = window.session.audio[stem]
        assert audio.path.parent == window.engine.last_job.out_dir and audio.frames == given.frames


@pytest.fixture(scope="module")
def guess_window(qapp, workdir, tiny_packed_path):
    """A window whose engine runs the tiny model with a first-guess separator, set to "refined guess"."""
    yield from _window_with_engine(AppSettings(model=str(tiny_packed_path), output_root=str(workdir / "root-guess"),
                                               steps=10, export_folder=str(workdir / "export"),
                                               separation="refined guess"))


def test_refined_guess_shows_the_guess_first_then_replaces_it(qtbot, guess_window, workdir):
    """The first guess reaches the lanes while the refinement runs; the refined
    stems replace it; one Undo goes back to before the separation."""
    window = guess_window
    assert opened(qtbot, window, window.open_mix, write_mix(workdir / "guess.wav", 6.0, rate=22050, channels=1))
    assert window.run_task("separate") is not None
    wait(qtbot, lambda: window.engine.job is None or window.engine.job.first_guess_shown, 60, "the first guess")
    job = window.engine.job
    assert job is not None and not job.answered, "the refinement ended before the guess was shown"
    mix = window.session.audio[MIX].samples
    for stem in STEMS:
        assert window.session.audio[stem].path.parent == job.out_dir / "first-guess"
        assert window.lanes[stem].audio is window.session.audio[stem]
    np.testing.assert_allclose(sum(window.session.audio[s].samples for s in STEMS), mix, atol=1e-4)
    assert "First guess" in window.messages[-1][1]
    wait(qtbot, lambda: window.engine.job is None, 240, "the refined stems")
    assert window.messages[-1][0] == "info" and "done" in window.messages[-1][1], window.messages[-1]
    for stem in STEMS:
        assert window.session.audio[stem].path.parent == job.out_dir
    np.testing.assert_allclose(sum(window.session.audio[s].samples for s in STEMS), mix, atol=1e-4)
    window.undo()
    assert all(window.session.audio[s] is None for s in STEMS)


def test_cancel_a_running_job_leaves_the_lanes(qtbot, window, workdir):
    assert opened(qtbot, window, window.open_mix, write_mix(workdir / "long.wav", 30.0, rate=22050, channels=1))
    before = dict(window.session.audio)
    assert window.run_task("separate", steps=400, resamples=2) is not None
    wait(qtbot, lambda: window.engine.job is not None and window.engine.job.fraction > 0, 60, "progress")
    assert window.task_bar.cancel_button.isEnabled()
    qtbot.mouseClick(window.task_bar.cancel_button, qtbot_button())
    wait(qtbot, lambda: window.engine.job is None, 30, "the engine to confirm the cancel")
    assert "cancelled" in window.messages[-1][1]
    assert window.session.audio == before
    out_dir = window.engine.last_job.out_dir
    assert not out_dir.exists() or not [p for p in out_dir.iterdir() if p.suffix == ".wav"]


def qtbot_button():
    from PySide6.QtCore import Qt

    return Qt.MouseButton.LeftButton


def test_bad_input_gives_a_message_and_changes_nothing(qtbot, window, workdir):
    with qtbot.waitSignal(window.loader.finished, timeout=30_000) as blocker:
        window.open_mix(write_mix(workdir / "keep.wav", 0.5))
        # Read on the loader's thread: until it is on the lanes, no task runs on the old ones.
        assert window.run_task("separate") is None and "still being read" in window.messages[-1][1]
    assert blocker.args[0].ok and window.session.audio[MIX].path.name == "keep.wav"
    before = dict(window.session.audio)
    bad = workdir / "notes.wav"
    bad.write_text("this is not audio")
    assert not opened(qtbot, window, window.open_mix, bad)
    level, text = window.messages[-1]
    assert level == "error" and "notes.wav" in text and "not changed" in text
    five = [write_mix(workdir / f"take{i}.wav", 0.2) for i in range(5)]
    assert not window.open_stems(five)
    assert "4 stems" in window.messages[-1][1] and "5 files" in window.messages[-1][1]
    assert not opened(qtbot, window, window.drop_files, "bass", [str(bad)])
    assert window.messages[-1][0] == "error"
    assert window.session.audio == before
    window.session.set_lane("drums", None)
    window.lanes["drums"].given.setChecked(False)
    assert window.run_task("impute") is None and "given" in window.messages[-1][1]


def test_engine_error_mid_job_keeps_the_lanes(qtbot, window, workdir):
    path = write_mix(workdir / "changing.wav", 2.0, rate=22050, channels=1)
    assert opened(qtbot, window, window.open_mix, path)
    before = dict(window.session.audio)
    # The file changes on disk after it was opened: NaNs near its end make the
    # engine fail once it reaches them, after it started and reported progress.
    data = sf.read(path, dtype="float32")[0]
    data[-2000:] = np.nan
    sf.write(path, data, 22050, subtype="FLOAT")
    seen = run_job(qtbot, window, "separate", steps=8)
    level, text = window.messages[-1]
    assert level == "error" and text.startswith("Separate failed") and "lanes are unchanged" in text, text
    assert max(seen) > 0  # it failed mid-job, not at the door
    assert window.session.audio == before and window.task_bar.separate_button.isEnabled()


def test_engine_killed_mid_job_restarts_and_keeps_the_lanes(qtbot, window, workdir):
    assert opened(qtbot, window, window.open_mix, write_mix(workdir / "kill.wav", 30.0, rate=22050, channels=1))
    window.lanes["bass"].solo.setChecked(True)
    before = dict(window.session.audio)
    old_pid = window.engine.supervisor.pid
    assert window.run_task("separate", steps=400, resamples=2) is not None
    wait(qtbot, lambda: window.engine.job is not None and window.engine.job.fraction > 0, 60, "progress")
    os.kill(old_pid, signal.SIGKILL)
    wait(qtbot, lambda: window.engine.job is None, 20, "the app to notice the engine died")
    level, text = window.messages[-1]
    assert level == "error" and "Separate did not finish" in text and "lanes are kept" in text, text
    assert window.session.audio == before and window.lanes["bass"].solo.isChecked()
    wait(qtbot, lambda: window.engine.ready, ENGINE_START_S, "the engine to come back")
    assert window.engine.supervisor.pid not in (0, old_pid)
    window.lanes["bass"].solo.setChecked(False)
    assert opened(qtbot, window, window.open_mix, write_mix(workdir / "after.wav", 0.5))
    run_job(qtbot, window, "separate")
    assert window.messages[-1][0] == "info" and all(window.session.audio[s] is not None for s in STEMS)


def test_remote_engine_that_does_not_answer_is_reported(qtbot, workdir):
    import socket

    from desktop.window import MainWindow

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:  # a port nobody answers on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        win = MainWindow(AppSettings(engine_mode="remote", remote_port=port, output_root=str(workdir / "root")))
        qtbot.addWidget(win)
        wait(qtbot, lambda: any("No MSDM engine answers" in text for _, text in win.messages), 10, "the message")
    assert f"127.0.0.1:{port}" in win.messages[-1][1] and not win.engine.ready
    assert win.engine.supervisor is None and not win.task_bar.separate_button.isEnabled()
    win.shutdown()


# ---- playback: real PortAudio stream into the ALSA null device ---------------
@pytest.fixture
def player(qtbot, workdir):
    from desktop.window import MainWindow

    win = MainWindow(AppSettings(output_root=str(workdir / "root")), start_engine=False)
    qtbot.addWidget(win)
    frames = 22050
    lanes = {name: LaneAudio(np.full((1, frames), value, np.float32), 22050, workdir / f"{name}.wav")
             for name, value in (("bass", 0.125), ("drums", 0.25), ("guitar", 0.0625), ("piano", 0.03125))}
    win.session.apply_result(lanes, "test")
    win.refresh_lanes(fit=True)
    yield win
    win.shutdown()


def play_through(qtbot, win) -> tuple[int, np.ndarray]:
    """Play from the current position to the end; returns (frames sent, per-channel sums)."""
    transport = win.transport
    assert transport.output.available, transport.output.problem
    transport.output.tap.reset(2)
    transport.play_pause()
    assert transport.mixer.playing or transport.mixer.position == transport.mixer.length
    wait(qtbot, lambda: not transport.mixer.playing and not transport.output.active, 20, "playback to end")
    frames, sums, _ = transport.output.tap.snapshot()
    return frames, sums


def test_play_mute_solo_and_seek_change_what_reaches_the_device(qtbot, player):
    n = 22050
    frames, sums = play_through(qtbot, player)
    assert frames >= n
    np.testing.assert_array_equal(sums, [n * 0.46875] * 2)  # all four lanes, mono -> both channels
    player.lanes["drums"].mute.setChecked(True)
    player.transport.stop()
    _, sums = play_through(qtbot, player)
    np.testing.assert_array_equal(sums, [n * 0.21875] * 2)
    player.lanes["guitar"].solo.setChecked(True)
    player.lanes["drums"].solo.setChecked(True)  # soloed but muted: silent
    player.transport.stop()
    _, sums = play_through(qtbot, player)
    np.testing.assert_array_equal(sums, [n * 0.0625] * 2)
    player.lanes["drums"].mute.setChecked(False)
    player.lanes["guitar"].level.setValue(50)
    player.transport.seek(0.5)  # half the file is left
    assert player.transport.mixer.position == n // 2
    _, sums = play_through(qtbot, player)
    np.testing.assert_array_equal(sums, [(n - n // 2) * (0.25 + 0.03125)] * 2)


def test_loop_plays_the_region_again(qtbot, player):
    player.ruler.loop_item.setRegion((0.25, 0.5))
    player.transport.loop_action.setChecked(True)
    assert player.transport.mixer.loop == (int(0.25 * 22050), int(0.5 * 22050))
    player.transport.seek(0.3)
    player.transport.output.tap.reset(2)
    player.transport.play_pause()
    wait(qtbot, lambda: player.transport.output.tap.snapshot()[0] > 3 * 22050, 20, "several loops")
    start, end = player.transport.mixer.loop  # whole samples: position may sit exactly on int(0.25 s)
    assert player.transport.mixer.playing and start <= player.transport.mixer.position <= end
    player.transport.stop()
    assert player.transport.mixer.position == int(0.25 * 22050)
    player.transport.loop_action.setChecked(False)
    assert player.transport.mixer.loop is None and not player.lanes["bass"].loop_region.isVisible()


# ---- the command line ---------------------------------------------------------
def test_screenshot_command_writes_a_picture_and_says_when_there_is_no_sound(workdir):
    mix = write_mix(workdir / "shot.wav", 2.0)
    out = workdir / "shot.png"
    no_card = workdir / "no-card.conf"  # ALSA's default device is a sound card that is not there
    no_card.write_text("pcm.!default { type hw card 42 }\n")
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "MSDM_APP_SETTINGS": str(workdir / "shot.ini"),
           "ALSA_CONFIG_PATH": str(no_card), "PYTHONPATH": str(ROOT)}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "engine.cli", "app", "--open", str(mix), "--screenshot", str(out),
                           "--size", "1500x700"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 60
    from PySide6.QtGui import QImage

    image = QImage(str(out))
    assert (image.width(), image.height()) == (1500, 700)
    colors = {image.pixel(x, y) for x in range(0, 1500, 7) for y in range(0, 700, 7)}
    assert len(colors) > 20  # a drawn window, not a blank picture
    assert done.stdout.count("Playback is off") == 1
