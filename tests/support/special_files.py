"""Inputs that are not plain finished audio files: a FLAC written as a stream
(to a pipe, so its header cannot give the length) and the `msdm` command run
as a real process."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent.parent


def write_streamed_flac(path: Path, frames: int = 4000, rate: int = 22050) -> Path:
    """A FLAC encoded into a pipe, as a streaming encoder writes it: libsndfile
    cannot seek back to fill in STREAMINFO's total samples, which stay 0
    ("unknown"), and soundfile then reports 2**63 - 1 frames."""
    samples = (0.1 * np.random.default_rng(0).standard_normal((frames, 1))).astype(np.float32)
    read_end, write_end = os.pipe()
    data = bytearray()

    def drain() -> None:
        while chunk := os.read(read_end, 65536):
            data.extend(chunk)
        os.close(read_end)

    reader = threading.Thread(target=drain)
    reader.start()
    with sf.SoundFile(write_end, "w", rate, 1, format="FLAC", subtype="PCM_16", closefd=True) as encoder:
        encoder.write(samples)
    reader.join()
    path.write_bytes(bytes(data))
    assert sf.info(str(path)).frames == 2**63 - 1  # what the engine has to refuse
    return path


def run_msdm(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m engine.cli ARGS` as a separate process on this checkout's code;
    a hang fails the test (subprocess kills it) instead of stalling the suite."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "engine.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)


def swap_in_a_link_when_sampling_starts(monkeypatch, folder: Path, target: Path, moved: Path) -> None:
    """Issue 14, finding 3: once a job is under way (its generation starts),
    move `folder` to `moved` and put a symbolic link to `target` in its place."""
    import engine.audio.pipeline as pipeline

    real_generate = pipeline.generate_stems

    def swap_then_generate(*args, **kwargs):
        folder.rename(moved)
        folder.symlink_to(target, target_is_directory=True)
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(pipeline, "generate_stems", swap_then_generate)
