"""A bounce manifest someone edited or replaced (issue 21, findings 5-7): lines
of the wrong types are skipped with a warning, a link or a FIFO in the
manifest's place is refused at once, and a FIFO as the secret file stops
neither `msdm serve` nor a client for good."""

from __future__ import annotations

import json
import os
import threading
import time

import numpy as np
import pytest
import soundfile as sf

from engine.bounce.manifest import read_records
from engine.cli import main
from support.special_files import run_msdm

FAST = ["--steps", "2", "--resamples", "1", "--method", "dpmpp2m", "-q"]

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs and O_NOFOLLOW are POSIX")


@pytest.fixture(autouse=True)
def single_process(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def song(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    sf.write(folder / "one.wav", (0.1 * np.random.default_rng(0).standard_normal(3000)).astype(np.float32), 22050,
             subtype="FLOAT")
    return folder


HOSTILE = [
    {"track": ["a"], "status": "done"},                                  # the review's three
    {"track": "one", "status": "done", "finished": "x"},
    [{"track": "one", "status": "done"}],
    {"track": "one", "status": "done", "finished": 1e308, "outputs": {"bass": "../../etc/passwd"}},
    {"track": "one", "status": "done", "finished": 1e308, "seed": True},
    {"track": "one", "status": "finished"},
    {"track": "one", "status": "done", "finished": 1e308, "settings": "all"},
    {"status": "done"},
    "just a string",
]


def test_manifest_lines_of_the_wrong_types_are_skipped_with_a_warning(tmp_path, song, tiny_model_path, capsys):
    out = tmp_path / "out"
    command = ["bounce", str(song), "-o", str(out), "--model", str(tiny_model_path), *FAST]
    assert main(command) == 0
    with open(out / "manifest.jsonl", "a", encoding="utf-8") as manifest:
        for line in HOSTILE:
            manifest.write(json.dumps(line) + "\n")
    capsys.readouterr()
    assert main(command) == 0  # no traceback: the good line still says the song is done
    captured = capsys.readouterr()
    assert "skipped 1 (already done)" in captured.out, captured.out
    warnings = [line for line in captured.err.splitlines() if "warning" in line]
    assert len(warnings) == len(HOSTILE), captured.err
    assert "line 2 skipped: 'track' must be a non-empty string" in warnings[0]
    assert "'finished' must be a number" in warnings[1] and "not a JSON object" in warnings[2]
    assert "'outputs' must be an object of names to paths inside the output folder" in warnings[3]
    assert "'seed' must be a whole number" in warnings[4]


def test_every_field_a_reader_uses_is_checked():
    from engine.bounce.manifest import record_problem

    assert [record_problem(line) for line in HOSTILE][-2:] == ["'track' is missing", "not a JSON object"]
    assert record_problem({"track": "t", "status": "failed", "error": "x", "extra": [1]}) is None


def test_a_manifest_that_is_a_symlink_is_refused_and_its_target_untouched(tmp_path, song, tiny_model_path, capsys):
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere.jsonl"
    out.mkdir()
    elsewhere.write_text("")
    (out / "manifest.jsonl").symlink_to(elsewhere)
    assert main(["bounce", str(song), "-o", str(out), "--model", str(tiny_model_path), *FAST]) == 2
    error = capsys.readouterr().err
    assert "manifest" in error and "symbolic link" in error, error
    assert elsewhere.read_text() == ""  # the finding: a file outside -o gained a line
    assert sorted(os.listdir(out)) == ["manifest.jsonl"]  # nothing was bounced either
    with pytest.raises(Exception, match="symbolic link"):
        read_records([out / "manifest.jsonl"])


def test_a_fifo_as_the_manifest_is_refused_at_once(tmp_path, song, tiny_model_path):
    out = tmp_path / "out"
    out.mkdir()
    os.mkfifo(out / "manifest.jsonl")
    started = time.monotonic()
    result = run_msdm("bounce", song, "-o", out, "--model", tiny_model_path, *FAST, timeout=300)
    assert result.returncode == 2, result.stderr
    assert "is not a regular file" in result.stderr and "manifest.jsonl" in result.stderr
    assert "Traceback" not in result.stderr
    print(f"refused in {time.monotonic() - started:.1f} s (the process's start included)")


def test_a_fifo_as_the_secret_file_stops_neither_the_server_nor_a_client(tmp_path):
    from osc_bridge.auth import secret_if_present

    fifo = tmp_path / "osc-secret"
    os.mkfifo(fifo, 0o600)
    # The app reads the secret on its GUI thread: a FIFO must not block it.
    found: list = []
    reader = threading.Thread(target=lambda: found.append(secret_if_present(fifo)), daemon=True)
    reader.start()
    reader.join(5)
    assert found == [None]
    serve = run_msdm("serve", "--port", "0", "--secret-file", fifo, "--output-root", tmp_path / "root", timeout=300)
    assert serve.returncode == 2 and "not a regular file" in serve.stderr, serve.stderr
    send = run_msdm("osc-send", "--secret-file", fifo, "--timeout", "1", "/msdm/ping", timeout=300)
    assert send.returncode == 2 and "not a regular file" in send.stderr, send.stderr
