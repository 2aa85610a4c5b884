"""`msdm serve` as a real child process, driven by an independent OSC
implementation: liblo's oscsend (which exits right after sending) and oscdump
listening on an explicit reply port, each message signed with a token from
`msdm osc-send --auth-token` (docs/osc.md, Security). Also how the desktop
app starts it: --port 0, the "listening on" line, a clean exit on SIGTERM."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest

from engine.audio.files import read_audio, write_audio
from support.processes import MSDM, Lines, free_udp_port, start_serve

pytestmark = pytest.mark.skipif(not (shutil.which("oscsend") and shutil.which("oscdump")),
                                reason="liblo-tools (oscsend, oscdump) not installed: apt-get install liblo-tools")


@pytest.fixture
def served(tiny_model_path, tmp_path):
    root = tmp_path / "root"
    serve, port, lines = start_serve(["--model", str(tiny_model_path), "--output-root", str(root), "--quiet",
                                      "--threads", "1"])
    try:
        yield serve, port, root, lines
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()


def oscsend(port: int, address: str, types: str, *args: str) -> None:
    """liblo's oscsend, the message signed: `auth <token>` appended, the token from msdm osc-send."""
    token = subprocess.run([*MSDM, "osc-send", "--auth-token", "--types", types, address, *args],
                           capture_output=True, text=True, timeout=60, check=True).stdout.strip()
    subprocess.run(["oscsend", "127.0.0.1", str(port), address, types + "ss", *args, "auth", token], check=True)


def test_oscsend_ping_and_separate_answered_on_a_reply_port(served, tmp_path):
    serve, port, root, _ = served
    dump_port = free_udp_port()
    dump = subprocess.Popen(["oscdump", "-L", str(dump_port)], stdout=subprocess.PIPE, text=True)
    dumped = Lines(dump, strip_time=True)
    try:
        time.sleep(0.3)  # oscdump binds its port
        # Unsigned: refused at the sender's own port (oscsend's, gone by now), never at the one it names.
        subprocess.run(["oscsend", "127.0.0.1", str(port), "/msdm/ping", "i", str(dump_port)], check=True)
        oscsend(port, "/msdm/ping", "i", str(dump_port))
        pong = dumped.wait_for(lambda line: line.startswith("/msdm/pong"), 10)
        assert not any(line.startswith("/msdm/error") for line in dumped.seen), dumped.seen
        # Signed replies end with the pair auth <token> (docs/osc.md, Checking a reply).
        assert pong.split()[1:4] == ["ssss", '"0.1.0"', '"tiny.safetensors"'] and pong.split()[4] == '"auth"', pong

        mix = tmp_path / "mix.wav"
        write_audio(mix, (0.1 * np.random.default_rng(0).standard_normal((1, 5000))).astype(np.float32), 22050)
        out = root / "from liblo"
        oscsend(port, "/msdm/separate", "ssssisssi", "job-1", str(mix), str(out), "steps", "4", "method", "dpmpp2m",
                "reply_port", str(dump_port))
        done = dumped.wait_for(lambda line: line.startswith(("/msdm/done", "/msdm/error")), 60)
        assert done.startswith("/msdm/done " + "s" * 11 + " "), done  # job id + 4 x (stem, path) + auth pair
        accepted = [line for line in dumped.seen if line.startswith("/msdm/accepted")]
        assert len(accepted) == 1 and accepted[0].startswith('/msdm/accepted siss "job-1" 0 "auth" "')
        assert any(line.startswith('/msdm/progress sfsss "job-1"') for line in dumped.seen)
        for stem in ("bass", "drums", "guitar", "piano"):
            assert f'"{stem}" "{out / stem}.wav"' in done
        stems = [read_audio(out / f"{stem}.wav").samples for stem in ("bass", "drums", "guitar", "piano")]
        scale = sum(np.abs(s).max() for s in stems)  # the tiny model's stems are huge: float32 rounding
        np.testing.assert_allclose(sum(stems), read_audio(mix).samples, atol=4 * np.finfo(np.float32).eps * scale)

        oscsend(port, "/msdm/cancel", "si", "nojob", str(dump_port))
        error = dumped.wait_for(lambda line: line.startswith("/msdm/error"), 10)
        assert error.startswith('/msdm/error sssss "nojob" "unknown_job"')
    finally:
        dump.kill()
        dump.wait()


def test_sigterm_stops_the_server_cleanly_and_osc_send_reports(served):
    serve, port, root, lines = served
    status = subprocess.run([*MSDM, "osc-send", "--port", str(port), "/msdm/status"],
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 0 and status.stdout == "/msdm/status\tidle\t\t0\t0\n"
    serve.send_signal(signal.SIGTERM)
    assert serve.wait(timeout=15) == 143  # 128 + SIGTERM (engine/jobs/signals.py)
    assert lines.wait_for(lambda line: True, 5) == "msdm serve: stopped"
    gone = subprocess.run([*MSDM, "osc-send", "--port", str(port), "--timeout", "0.5",
                           "/msdm/ping"], capture_output=True, text=True, timeout=60)
    assert gone.returncode == 3 and "is it running? Start it with `msdm serve`" in gone.stderr


def test_serve_refuses_a_public_address_without_allow_remote(tiny_model_path, tmp_path):
    result = subprocess.run([*MSDM, "serve", "--host", "0.0.0.0", "--port", "0",
                             "--model", str(tiny_model_path), "--output-root", str(tmp_path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--allow-remote" in result.stderr and os.listdir(tmp_path) == []
