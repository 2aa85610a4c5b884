"""SIGTERM and SIGINT stop `msdm serve` and `msdm separate` alike (issue 14,
finding 6; `msdm bounce`: tests/test_bounce.py): the running job stops at its
next sampler step, `/msdm/cancelled` goes out, no temp file is left, and the
exit status is 128 + the signal (engine/jobs/signals.py), never an abort.
Real processes, with one sampler step made slow (tests/support/slow_msdm.py),
as a big model on a CPU makes it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from engine.audio.files import write_audio
from osc_bridge.client import OscClient
from support.osc_replies import ReplyCollector
from support.processes import start_serve

SLOW_MSDM = [sys.executable, str(Path(__file__).resolve().parent / "support" / "slow_msdm.py")]


def slow_env(tmp_path: Path, call: int, seconds: float) -> tuple[dict, Path]:
    """The environment for SLOW_MSDM: denoiser call `call` takes `seconds`; the marker appears when it starts."""
    marker = tmp_path / "slow-step-started"
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "MSDM_SLOW_CALL": str(call),
            "MSDM_SLOW_SECONDS": str(seconds), "MSDM_SLOW_MARKER": str(marker)}, marker


def wait_for_file(path: Path, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"the process ended first (status {process.returncode})"
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout} s"
        time.sleep(0.05)


def files_under(folder: Path) -> list[str]:
    """Every file below `folder`, hidden temp files included."""
    return sorted(str(Path(d, f).relative_to(folder)) for d, _, names in os.walk(folder) for f in names)


@pytest.fixture
def mix(tmp_path) -> Path:
    path = tmp_path / "mix.wav"
    write_audio(path, (0.1 * np.random.default_rng(0).standard_normal((1, 8000))).astype(np.float32), 22050)
    return path


def test_sigterm_during_a_slow_step_cancels_the_job_and_serve_exits_143(tiny_model_path, tmp_path, mix):
    """A step of 11 s: longer than the 10 s serve used to wait for its worker before
    exiting under it (no /msdm/cancelled, the stems' temp files left, or SIGABRT)."""
    root = tmp_path / "root"
    env, marker = slow_env(tmp_path, call=3, seconds=11)
    serve, port, lines = start_serve(["--model", str(tiny_model_path), "--output-root", str(root), "--quiet",
                                      "--threads", "1"], command=SLOW_MSDM, env=env)
    try:
        with OscClient("127.0.0.1", port) as client:
            collector = ReplyCollector(client)
            client.send("/msdm/separate", "slow", str(mix), str(root / "slow"), "steps", 20, "method", "dpmpp2m")
            wait_for_file(marker, serve, 60)
            assert files_under(root / "slow")  # the stems are being written (hidden temp files)
            serve.send_signal(signal.SIGTERM)
            status = serve.wait(timeout=90)
            collector.wait_for(lambda rs: any(a == "/msdm/cancelled" for _, a, _ in rs), 5)
            collector.stop()
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()
    ends = [a for _, a, _ in collector.of_job("slow") if a in ("/msdm/done", "/msdm/error", "/msdm/cancelled")]
    # Exit status 128 + SIGTERM (-6 would be SIGABRT), the job answered, its temp files gone.
    assert (status, ends, files_under(root / "slow")) == (143, ["/msdm/cancelled"], [])
    assert lines.wait_for(lambda line: True, 5) == "msdm serve: stopped"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_separate_stops_alike_on_sigterm_and_sigint(tiny_model_path, tmp_path, mix, signum):
    out = tmp_path / "out"
    env, marker = slow_env(tmp_path, call=3, seconds=60)
    # As a terminal's Ctrl-C finds it: a shell without job control starts background commands with SIGINT ignored.
    process = subprocess.Popen([*SLOW_MSDM, "separate", str(mix), "-o", str(out), "--model", str(tiny_model_path),
                                "--steps", "20", "--method", "dpmpp2m", "-q"], env=env, stderr=subprocess.PIPE,
                               text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        wait_for_file(marker, process, 60)
        assert files_under(out)
        process.send_signal(signum)
        _, err = process.communicate(timeout=30)  # at once, not after the 60 s step
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 128 + signum, (process.returncode, err)
    assert "cancelled; no partial files were left" in err
    assert files_under(out) == []
