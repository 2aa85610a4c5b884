"""`msdm` as a child process, as a DAW script or the app runs it: the command,
its stdout line by line, a free port to listen on."""

from __future__ import annotations

import queue
import socket
import subprocess
import sys
import threading
import time

# `python -m engine.cli` would load engine.cli twice (as __main__ too), and a CommandError raised
# by a registered command would then not be the one main() catches: call main() like the script does.
MSDM = [sys.executable, "-c", "import sys; from engine.cli import main; sys.exit(main(sys.argv[1:]))"]


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lines:
    """A child process's stdout, line by line, read on a thread."""

    def __init__(self, process: subprocess.Popen, strip_time: bool = False) -> None:
        self.strip_time = strip_time  # oscdump starts each line with the message's time tag
        self.queue: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, args=(process.stdout,), daemon=True).start()

    def _read(self, stream) -> None:
        for line in stream:
            line = line.rstrip("\n")
            if self.strip_time and not line.startswith("/"):
                line = line.partition(" ")[2]
            self.queue.put(line)

    def wait_for(self, predicate, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.queue.get(timeout=left)
            except queue.Empty:
                break
            self.seen.append(line)
            if predicate(line):
                return line
        raise AssertionError(f"no matching line within {timeout} s; got {self.seen}")


def start_serve(args: list[str], *, command: list[str] = MSDM, env: dict | None = None,
                timeout: float = 90) -> tuple[subprocess.Popen, int, Lines]:
    """`msdm serve --port 0 ARGS...`: the process, its port and its stdout, once it listens."""
    serve = subprocess.Popen([*command, "serve", "--port", "0", *args], stdout=subprocess.PIPE, text=True, env=env)
    lines = Lines(serve)
    try:
        first = lines.wait_for(lambda line: True, timeout)
    except AssertionError:
        serve.kill()
        serve.wait()
        raise
    assert first.startswith("msdm serve: listening on 127.0.0.1:"), first
    return serve, int(first.rsplit(":", 1)[1]), lines
