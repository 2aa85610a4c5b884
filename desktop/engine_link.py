"""The app's side of the engine: the OSC client, the local engine process
(when the app runs its own), whether the engine is ready, and the one running
job. Replies become signals with what to show: a status line, messages a
musician can act on, the job's progress and how it ended.

No widgets and no thread of its own: the client and the supervisor deliver
through the event loop, so everything here runs on the GUI thread."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QObject, Signal

from . import osc_messages as osc
from .engine_client import EngineClient
from .jobs import Job
from .settings import AppSettings
from .supervisor import EngineSupervisor

CODE_HINTS = {
    "bad_input": "Check that the file plays in another program, or export it again as WAV.",
    "bad_path": "The work folder must be inside the server's --output-root: set it in Engine > Settings.",
    "exists": "Choose another work folder in Engine > Settings.",
    "queue_full": "The engine is busy with other jobs; try again when they finish.",
    "engine": "Try fewer steps, another model, or Engine > Restart.",
}


class EngineLink(QObject):
    status = Signal(str)              # one line for the status bar
    message = Signal(str, str)        # text, level (info / warning / error)
    modelReady = Signal(list)         # the engine answered: its model's stems
    changed = Signal()                # ready or the running job changed: controls follow
    progressed = Signal(object)       # the running Job moved
    ended = Signal(str, object)       # the job ended without a result: label text, progress (0..1000 or None)
    answered = Signal(object, dict)   # the engine finished a Job: {lane: file}; the app reads them
    firstGuess = Signal(object, dict) # an interim result (a first guess, a preview) while the job goes on
    takeArrived = Signal(object, int, int, dict)  # one take of a job with several: Job, number, seed, {lane: file}

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.client = EngineClient(self)
        self.supervisor: EngineSupervisor | None = None
        self.remote = False
        self.ready = False
        self.model = ""
        self.rate = 0
        self.job: Job | None = None
        self.last_job: Job | None = None
        c = self.client
        c.pong.connect(self._on_pong)
        c.models.connect(self._on_models)
        c.accepted.connect(self._on_accepted)
        c.progress.connect(self._on_progress)
        c.firstGuess.connect(self._on_first_guess)
        c.take.connect(self._on_take)
        c.done.connect(self._on_done)
        c.error.connect(self._on_error)
        c.cancelled.connect(self._on_cancelled)
        c.unanswered.connect(self._on_unanswered)

    # ---- the engine -----------------------------------------------------------
    def start(self, settings: AppSettings, output_root: Path) -> None:
        """Start a local engine writing under ``output_root``, or reach the remote one (Engine > Settings)."""
        self.ready = False
        self.client.disconnect_engine()
        if self.supervisor is not None:
            self.supervisor.stop()
            self.supervisor.deleteLater()
            self.supervisor = None
        self.remote = settings.engine_mode == "remote"
        if self.remote:
            self.status.emit(f"Engine: connecting to {settings.remote_host}:{settings.remote_port}…")
            self.client.connect_to(settings.remote_host, settings.remote_port)
            self.client.ping()
        else:
            self.status.emit("Engine: starting…")
            self.supervisor = EngineSupervisor(output_root, settings.model, settings.backend, self)
            self.supervisor.ready.connect(self._on_engine_address)
            self.supervisor.failed.connect(self._on_engine_failed)
            self.supervisor.start()
        self.changed.emit()

    def restart(self, settings: AppSettings, output_root: Path) -> None:
        if self.job is not None:
            self.end_job()
        self.start(settings, output_root)

    def shutdown(self) -> None:
        """Cancel the running job and stop the local engine."""
        if self.job is not None and self.client.connected:
            self.client.send(osc.cancel(self.job.id))
        if self.supervisor is not None:
            self.supervisor.stop()

    def _on_engine_address(self, host: str, port: int) -> None:
        self.client.connect_to(host, port)
        self.client.ping(timeout_ms=10000)

    def _on_pong(self, version: str, model: str) -> None:
        self.model = model

    def _on_models(self, model: str, stems: list, rate: int, backend: str) -> None:
        if not stems:
            return
        self.model, self.rate = model, rate
        self.modelReady.emit(list(stems))
        where = "local" if self.supervisor is not None else f"{self.client.host}:{self.client.port}"
        self.status.emit(f"Engine ({where}): {model} · {', '.join(stems)} · {rate} Hz · {backend}")
        self.ready = True
        self.changed.emit()

    def _on_unanswered(self, where: str) -> None:
        if self.ready:
            return
        self.status.emit(f"Engine: no answer from {where}")
        if self.remote:
            self.message.emit(f"No MSDM engine answers at {where}. Start one there with `msdm serve`, check the "
                              "host and port in Engine > Settings, or switch to the local engine.", "error")
        else:
            self.message.emit("The local engine started but does not answer. Choose Engine > Restart.", "error")

    def _on_engine_failed(self, text: str) -> None:
        self.ready = False
        self.client.disconnect_engine()
        self.status.emit("Engine: stopped")
        if self.job is not None and not self.job.answered:  # an answered job's files are read all the same
            kind = self.job.kind.capitalize()
            self.end_job()
            text = f"{kind} did not finish: {text[0].lower()}{text[1:]} Run {kind} again once it is back."
        self.message.emit(text, "error")
        self.changed.emit()

    # ---- the job ----------------------------------------------------------------
    def submit(self, job: Job, datagram: bytes) -> None:
        """Send a job's request; it runs until the engine answers and ``end_job``."""
        self.job = job
        self.client.send(datagram)
        self.progressed.emit(job)
        self.changed.emit()

    def cancel(self) -> None:
        if self.job is None or self.job.answered:
            return
        self.job.cancelling = True
        self.client.send(osc.cancel(self.job.id))
        self.progressed.emit(self.job)

    def end_job(self) -> None:
        self.last_job, self.job = self.job, None
        self.changed.emit()

    def _running(self, job_id: str) -> Job | None:
        """The running job if the reply is about it and the engine still works on it."""
        job = self.job
        return job if job is not None and job.id == job_id and not job.answered else None

    def _on_accepted(self, job_id: str, position: int) -> None:
        job = self._running(job_id)
        if job is not None:
            job.update(0.0, "starting" if position == 0 else f"queued ({position} ahead)")
            self.progressed.emit(job)

    def _on_progress(self, job_id: str, fraction: float, message: str) -> None:
        job = self._running(job_id)
        if job is not None:
            job.update(fraction, message)
            self.progressed.emit(job)

    def _on_cancelled(self, job_id: str) -> None:
        job = self._running(job_id)
        if job is not None:
            kind = job.kind.capitalize()
            self.end_job()
            self.ended.emit(f"{kind}: cancelled", 0)
            self.message.emit(f"{kind} cancelled. {self._unchanged(job)}", "info")

    def _on_error(self, job_id: str, code: str, text: str) -> None:
        # Only a reply naming the job ends it: an error without a job id (a query's, or a
        # datagram's the engine could not read) is shown, never taken for the job's.
        job = self._running(job_id)
        if job is not None:
            kind = job.kind.capitalize()
            self.end_job()
            self.ended.emit(f"{kind}: failed", None)
            hint = CODE_HINTS.get(code, "")
            self.message.emit(f"{kind} failed: {text}. {hint} {self._unchanged(job)}".replace("..", "."), "error")
        elif job_id == "":
            self.message.emit(f"The engine says: {text}", "error")

    def _on_first_guess(self, job_id: str, files: dict) -> None:
        job = self._running(job_id)
        if job is not None:
            self.firstGuess.emit(job, files)

    def _on_take(self, job_id: str, number: int, seed: int, files: dict) -> None:
        job = self._running(job_id)
        if job is not None:
            self.takeArrived.emit(job, number, seed, files)

    def _unchanged(self, job: Job) -> str:
        """What a job that ends without a result left on the lanes."""
        if job.takes_shown:
            return (f"The {job.takes_shown} take(s) that arrived stay on the lanes (Undo puts back what was there "
                    "before).")
        if job.first_guess_shown:
            return "The first guess stays on the lanes (Undo puts back what was there before)."
        return "Your lanes are unchanged."

    def _on_done(self, job_id: str, files: dict) -> None:
        job = self._running(job_id)
        if job is None:
            return
        job.answered = True
        job.update(1.0, "reading the result")
        self.progressed.emit(job)
        self.changed.emit()
        self.answered.emit(job, files)
