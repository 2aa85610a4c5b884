"""Runs the local engine (`msdm serve --port 0`) as a child process, reads the
port it listens on, and restarts it when it dies. The GUI never waits on it:
everything arrives as signals from QProcess through the event loop."""

from __future__ import annotations

import os
import re
import sys
import time
from collections import deque
from pathlib import Path

from PySide6.QtCore import QObject, QProcess, QProcessEnvironment, QTimer, Signal

LISTENING = re.compile(r"listening on (\S+):(\d+)")


class EngineSupervisor(QObject):
    ready = Signal(str, int)       # host, port
    failed = Signal(str)           # what happened, in words a musician can act on
    restarting = Signal(int)       # attempt number

    START_TIMEOUT_MS = 120_000     # loading a model (or exporting ONNX) may take a while
    MAX_RESTARTS = 3               # within RESTART_WINDOW_S, then give up and say so
    RESTART_WINDOW_S = 120.0
    STOP_TIMEOUT_MS = 10_000       # SIGTERM, then this long for the running job's step, then SIGKILL

    def __init__(self, output_root: Path, model: str = "", backend: str = "torch",
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.output_root = Path(output_root)
        self.model = model
        self.backend = backend
        self.process: QProcess | None = None
        self.address: tuple[str, int] | None = None
        self._stderr: deque[str] = deque(maxlen=20)
        self._stdout = b""
        self._stopping = False
        self._restarts: deque[float] = deque()
        self._start_timer = QTimer(self)
        self._start_timer.setSingleShot(True)
        self._start_timer.timeout.connect(self._start_timed_out)

    def command(self) -> list[str]:
        args = ["-m", "engine.cli", "serve", "--port", "0",
                "--output-root", str(self.output_root)]
        if self.model:
            args += ["--model", self.model]
        if self.backend and self.backend != "torch":
            args += ["--backend", self.backend]
        return [sys.executable, *args]

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.state() != QProcess.ProcessState.NotRunning

    @property
    def pid(self) -> int:
        return int(self.process.processId()) if self.running else 0

    def start(self) -> None:
        self.stop()
        self.output_root.mkdir(parents=True, exist_ok=True)
        self._stopping = False
        self.address = None
        self._stderr.clear()
        self._stdout = b""
        process = QProcess(self)
        env = QProcessEnvironment.systemEnvironment()
        env.insert("PYTHONUNBUFFERED", "1")  # the "listening on" line must not sit in a pipe buffer
        root = str(Path(__file__).resolve().parent.parent)
        env.insert("PYTHONPATH", root + os.pathsep + env.value("PYTHONPATH", ""))
        process.setProcessEnvironment(env)
        process.readyReadStandardOutput.connect(self._read_stdout)
        process.readyReadStandardError.connect(self._read_stderr)
        process.finished.connect(self._finished)
        process.errorOccurred.connect(self._error)
        self.process = process
        program, *args = self.command()
        process.start(program, args)
        self._start_timer.start(self.START_TIMEOUT_MS)

    def stop(self) -> None:
        """Stop the engine on purpose (app closing, settings changed): no restart."""
        self._stopping = True
        self._start_timer.stop()
        process, self.process = self.process, None
        if process is not None and process.state() != QProcess.ProcessState.NotRunning:
            # SIGTERM: a running job stops at its next sampler step and removes its partial
            # files (docs/osc.md); give it the time of a slow step before killing it.
            process.terminate()
            if not process.waitForFinished(self.STOP_TIMEOUT_MS):
                process.kill()
                process.waitForFinished(2000)
        if process is not None:
            process.deleteLater()

    # ---- process events -------------------------------------------------------
    def _read_stdout(self) -> None:
        if self.process is None:
            return
        self._stdout += bytes(self.process.readAllStandardOutput().data())
        *lines, self._stdout = self._stdout.split(b"\n")
        for line in lines:
            match = LISTENING.search(line.decode("utf-8", "replace"))
            if match and self.address is None:
                self._start_timer.stop()
                host = match.group(1)
                self.address = ("127.0.0.1" if host in ("0.0.0.0", "localhost") else host, int(match.group(2)))
                self.ready.emit(*self.address)

    def _read_stderr(self) -> None:
        if self.process is None:
            return
        text = bytes(self.process.readAllStandardError().data()).decode("utf-8", "replace")
        for line in text.splitlines():
            if line.strip() and "%|" not in line:  # keep messages, not progress bars
                self._stderr.append(line.strip())

    def last_error_line(self) -> str:
        return self._stderr[-1] if self._stderr else ""

    def _error(self, error: QProcess.ProcessError) -> None:
        if error == QProcess.ProcessError.FailedToStart and not self._stopping:
            self._start_timer.stop()
            self.failed.emit(f"The engine could not start ({sys.executable} -m engine.cli serve). "
                             "Check that MSDM Studio is installed (pip install -e .).")

    def _finished(self, code: int, status: QProcess.ExitStatus) -> None:
        if self._stopping or self.sender() is not self.process:
            return
        self._start_timer.stop()
        how = "crashed" if status == QProcess.ExitStatus.CrashExit else f"exited with code {code}"
        detail = self.last_error_line()
        message = f"The engine {how}" + (f": {detail}" if detail else ".")
        self.address = None
        now = time.monotonic()
        while self._restarts and now - self._restarts[0] > self.RESTART_WINDOW_S:
            self._restarts.popleft()
        if len(self._restarts) >= self.MAX_RESTARTS:
            self.failed.emit(message + f" It failed {self.MAX_RESTARTS} times in a row, so it was not restarted: "
                                       "check the model file and backend in Settings, then choose Engine > Restart.")
            return
        self._restarts.append(now)
        self.failed.emit(message + " Restarting it; your lanes are kept.")
        self.restarting.emit(len(self._restarts))
        QTimer.singleShot(500, self._restart)

    def _restart(self) -> None:
        if not self._stopping:
            self.start()

    def _start_timed_out(self) -> None:
        if self.address is None and not self._stopping:
            detail = self.last_error_line()
            self.stop()
            self.failed.emit("The engine did not say it was ready within "
                             f"{self.START_TIMEOUT_MS // 1000} s" + (f" ({detail})" if detail else "") +
                             ". Choose Engine > Restart, or connect to a running server in Settings.")
