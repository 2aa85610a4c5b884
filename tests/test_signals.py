"""SIGTERM and SIGINT stop `msdm separate` alike (issue 14, finding 6;
`msdm bounce`: tests/test_bounce.py): the running job stops, no temp file is
left, and the exit status is 128 + the signal (engine/jobs/signals.py).
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
