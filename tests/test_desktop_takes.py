"""Takes in the real window (offscreen Qt, a real engine process on the shipped
model, real files): issue 22's "done when". On the example song: separate, select
2 s of the bass lane, regenerate 3 takes, switch between them, use take 2 for the
first second and take 3 for the next, export: the exported stems equal the
chosen takes sample for sample. Few sampler steps: the prior's quality is not
what is tested (it is being retrained)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
pytest.importorskip("PySide6")
pytest.importorskip("pyqtgraph")
pytest.importorskip("pytestqt")

from desktop.session import MIX  # noqa: E402
from desktop.settings import AppSettings  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "example_mix.flac"
STEMS = ("bass", "drums", "guitar", "piano")


@pytest.fixture(scope="module")
def window(qapp, tmp_path_factory):
    from pytestqt.qtbot import QtBot

    from desktop.window import MainWindow

    folder = tmp_path_factory.mktemp("takes-app")
    os.environ["MSDM_APP_SETTINGS"] = str(folder / "settings.ini")
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # the engine child: one math thread on a busy machine
    win = MainWindow(AppSettings(output_root=str(folder / "root"), export_folder=str(folder / "export"),
                                 steps=2, method="dpmpp2m", seed=5, separation="first guess"))
    win.resize(1280, 760)
    win.show()
    QtBot(None).waitUntil(lambda: win.engine.ready, timeout=120_000)
    win.folder = folder
    yield win
    win.shutdown()
    win.close()


def wait_job(qtbot, window, timeout_s=300):
    qtbot.waitUntil(lambda: window.engine.job is None and not window.loader.busy, timeout=timeout_s * 1000)


def read(path):
    data, rate = sf.read(path, dtype="float32", always_2d=True)
    return data.T, rate


@pytest.mark.slow
def test_regenerate_two_seconds_of_bass_three_takes_comp_and_export(qtbot, window):
    with qtbot.waitSignal(window.loader.finished, timeout=30_000):
        window.open_mix(EXAMPLE)
    assert window.run_task("separate") is not None
    wait_job(qtbot, window)
    separated = {s: window.session.audio[s] for s in STEMS}
    assert all(a is not None for a in separated.values())
    rate = separated["bass"].sample_rate

    # Select 2 s on the ruler and the bass lane; 3 takes.
    window.ruler.set_selection((4.0, 6.0))
    window.lanes.set_selected("bass", True)
    window.task_bar.takes.setValue(3)
    arrivals = []
    window.engine.takeArrived.connect(lambda job, number, seed, files: arrivals.append((number, seed, files)))
    assert window.run_task("regenerate") is not None, window.messages[-1]
    wait_job(qtbot, window)
    assert window.messages[-1][0] == "info", window.messages[-1]
    assert [(n, s) for n, s, _ in arrivals] == [(1, 5), (2, 6), (3, 7)]  # one by one, seeds 5, 6, 7
    takes = window.session.takes["bass"]
    # Take 1 is the separated bass as it was; 2..4 are the regenerated takes 1..3 of the job.
    assert len(takes.takes) == 4 and takes.takes[0].audio is separated["bass"]
    assert [t.seed for t in takes.takes[1:]] == [5, 6, 7]
    assert takes.takes[2].settings["steps"] == 2 and takes.takes[2].settings["range"] == (4.0, 6.0)
    assert window.session.audio["bass"] is takes.takes[3].audio  # the newest plays
    assert all(window.session.audio[s] is separated[s] for s in STEMS if s != "bass")  # other lanes untouched
    job_files = {n: read(files["bass"])[0] for n, _, files in arrivals}
    original = separated["bass"].samples
    begin, end = 4 * rate, 6 * rate
    for n, samples in job_files.items():  # each take: the lane outside the range, new inside it
        np.testing.assert_array_equal(samples[:, :begin], original[:, :begin])
        np.testing.assert_array_equal(samples[:, end:], original[:, end:])
        np.testing.assert_array_equal(window.session.takes["bass"].take(n + 1).audio.samples, samples)

    # Switch between them (and audition one without changing the comp).
    for number in (2, 3, 4, 1, 2):
        assert window.take_action("bass", "choose", number)
        assert window.session.audio["bass"] is takes.take(number).audio
        assert window.lanes.state("bass").audio is takes.take(number).audio
    assert window.take_action("bass", "audition", 4)
    assert window.lanes.state("bass").audio is takes.take(4).audio and window.session.audio["bass"] is takes.take(2).audio
    window.end_audition()
    assert window.lanes.state("bass").audio is takes.take(2).audio

    # Keep the job's take 2 for the first second of the range and its take 3 for the next.
    window.ruler.set_selection((4.0, 5.0))
    assert window.take_action("bass", "comp", 3)
    window.ruler.set_selection((5.0, 6.0))
    assert window.take_action("bass", "comp", 4)
    comp = window.session.audio["bass"]
    assert comp.path.is_file() and window.session.takes["bass"].chosen == (2, 3, 4, 2)
    np.testing.assert_array_equal(read(comp.path)[0], comp.samples)  # the lane's file is the comp (for jobs, drags)

    written = window.export_to(window.folder / "export", "wav", "32f", "{song} - {stem}")
    exported = {path.stem.split(" - ")[-1]: read(path)[0] for path in written}
    expected = job_files[1].copy()  # lane take 2 (the job's take 1) outside [4 s, 6 s): equal to the original there
    expected[:, :begin] = original[:, :begin]
    expected[:, end:] = original[:, end:]
    expected[:, 4 * rate:5 * rate] = job_files[2][:, 4 * rate:5 * rate]
    expected[:, 5 * rate:6 * rate] = job_files[3][:, 5 * rate:6 * rate]
    np.testing.assert_array_equal(exported["bass"], expected)
    for stem in ("drums", "guitar", "piano"):
        np.testing.assert_array_equal(exported[stem], separated[stem].samples)

    # Deleting a take the comp plays is refused; keep drops the others; undo walks back.
    assert not window.take_action("bass", "delete", 3) and "playing" in window.messages[-1][1]
    assert window.take_action("bass", "delete", 1)
    assert len(window.session.takes["bass"].takes) == 3
    assert window.take_action("bass", "keep", 1)
    assert len(window.session.takes["bass"].takes) == 3  # 1 (job take 1), 2, 3: all in the comp
    window.undo()
    window.undo()
    assert len(window.session.takes["bass"].takes) == 4
    window.undo()  # the second comp
    assert window.session.takes["bass"].chosen == (2, 3, 2)
    assert window.lanes[MIX].mute.isChecked()
