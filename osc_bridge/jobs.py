"""Jobs: a bounded queue and one worker thread that owns the model.

The network never runs on the thread that reads the socket: handlers enqueue,
the worker runs one job at a time (the model's memory and the CPU cores are
used by one job), and replies go out through the `send` function the server
gives (one socket). Cancel works for a queued job (removed at once) and for the
running one (a flag the sampler's progress callback checks at every step; it
raises engine.core.diffusion.Cancelled and the pipeline removes its partial files).

Progress: the sampler calls back at every step, which can be many times a
second (tiny model) or once in several seconds (a big model on a CPU). Sends
are throttled to one every PROGRESS_MIN_INTERVAL, and a heartbeat thread
repeats the last known progress when nothing was sent for HEARTBEAT seconds,
so a client always hears from a running job at least once a second.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple

from engine.errors import DiskFullError, OutputError, UserError

from . import protocol
from .paths import contained_output_dir
from .protocol import JobRequest, ProtocolError

log = logging.getLogger("msdm.serve")

PROGRESS_MIN_INTERVAL = 0.2  # seconds between two progress replies at most this often
HEARTBEAT = 0.9              # seconds of silence after which the last progress is repeated



class ReplyTo(NamedTuple):
    """Where a request's replies go, and the nonce of the signed request they
    answer (osc_bridge.auth.sign_reply signs each reply with it, so the client
    knows the reply is the server's and that it answers this request)."""

    address: tuple        # (host, port, ...)
    nonce: str | None


Send = Callable[[ReplyTo, protocol.Reply], None]


@dataclass
class Job:
    request: JobRequest
    reply_to: ReplyTo          # the address chosen when the job was submitted, and its request's nonce
    out_dir: Path              # resolved, inside the output root
    cancel: threading.Event = field(default_factory=threading.Event)
    fraction: float = 0.0
    message: str = "queued"
    last_sent: float = 0.0
    finished: bool = False
    watchers: list = field(default_factory=list)  # others who asked to cancel it: they hear the end too
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def id(self) -> str:
        return self.request.job_id


class JobQueue:
    """A bounded FIFO of jobs and the worker that runs them, one at a time.

    `execute(job, progress, first_guess)` runs a job and returns {name: path};
    it may call `first_guess({name: path})` once, before it ends, when a
    refined separation's first guess is written, and `first_guess({name: path},
    take=(number, seed))` for each take of a job with several (/msdm/take), and
    `first_guess({name: path}, preview=True)` once when a generation's preview
    is written (/msdm/preview); it may raise ProtocolError,
    engine errors, or engine.core.diffusion.Cancelled."""

    def __init__(self, execute: Callable[[Job, Callable[[float, str], None], Callable[[dict], None]], dict],
                 send: Send, output_root: Path, max_queued: int = 16) -> None:
        self.execute = execute
        self.send = send
        self.output_root = output_root
        self.max_queued = max_queued
        self._queue: collections.deque[Job] = collections.deque()
        self._running: Job | None = None
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._stopping = False
        self._worker = threading.Thread(target=self._work, name="msdm-worker", daemon=True)
        self._heartbeat = threading.Thread(target=self._beat, name="msdm-heartbeat", daemon=True)
        self._worker.start()
        self._heartbeat.start()

    # ---- called from the socket thread ---------------------------------- #

    def submit(self, job: Job) -> int:
        """Queue a job; returns its position (0 = it starts now)."""
        with self._lock:
            if self._stopping:
                raise ProtocolError(protocol.ENGINE, "the server is shutting down", job.id)
            if job.id in self._ids():
                raise ProtocolError(protocol.DUPLICATE_JOB, f"a job with id {job.id!r} is already queued or "
                                                            f"running; use a new id for each request", job.id)
            if len(self._queue) >= self.max_queued:
                raise ProtocolError(protocol.QUEUE_FULL, f"the queue is full ({self.max_queued} jobs waiting); "
                                                         f"wait for a job to finish or cancel one", job.id)
            position = len(self._queue) + (1 if self._running is not None else 0)
            # Accepted goes out before the worker can send progress for this job.
            self.send(job.reply_to, protocol.accepted(job.id, position))
            self._queue.append(job)
            self._wake.notify()
            return position

    def cancel(self, job_id: str, requester: ReplyTo | None = None) -> bool:
        """Cancel a queued or running job; False when no such job is known.
        /msdm/cancelled goes to the job's reply address, and to `requester`
        when that is another one."""
        with self._lock:
            for job in self._queue:
                if job.id == job_id:
                    self._watch(job, requester)
                    self._queue.remove(job)
                    self._finish(job, protocol.cancelled(job.id))
                    return True
            if self._running is not None and self._running.id == job_id:
                self._watch(self._running, requester)
                self._running.cancel.set()  # the worker answers /msdm/cancelled when sampling stops
                return True
        return False

    def status(self) -> tuple[bool, str, float, int]:
        with self._lock:
            running = self._running
            return (running is not None, running.id if running else "",
                    running.fraction if running else 0.0, len(self._queue))

    def stop(self, timeout: float | None = None) -> None:
        """Cancel everything and wait for the worker to let go of the model.

        The running job stops at its next sampler step, which may take long
        (a big model on a CPU), so by default this waits as long as it takes:
        the job then answers /msdm/cancelled and removes its temp files. A
        process that exited while the worker still ran inside torch would
        leave both undone, or abort (SIGABRT)."""
        with self._lock:
            self._stopping = True
            while self._queue:
                self._finish(self._queue.popleft(), protocol.cancelled)
            if self._running is not None:
                self._running.cancel.set()
            self._wake.notify_all()
        self._worker.join(timeout)
        self._heartbeat.join(timeout)

    # ---- worker --------------------------------------------------------- #

    def _ids(self) -> set[str]:
        ids = {job.id for job in self._queue}
        if self._running is not None:
            ids.add(self._running.id)
        return ids

    @staticmethod
    def _watch(job: Job, requester: ReplyTo | None) -> None:
        """A canceller at another address hears the end too (signed with its own request's nonce)."""
        with job.lock:
            addresses = [job.reply_to.address] + [watcher.address for watcher in job.watchers]
            if requester is not None and requester.address not in addresses:
                job.watchers.append(requester)

    def _finish(self, job: Job, reply) -> None:
        """Send a job's last reply exactly once; no progress after it."""
        if callable(reply):
            reply = reply(job.id)
        with job.lock:
            if job.finished:
                return
            job.finished = True
            for target in [job.reply_to] + job.watchers:
                self.send(target, reply)

    def _interim(self, job: Job, reply) -> None:
        """A result delivered while the job goes on (/msdm/first_guess, /msdm/preview,
        /msdm/take), to the job's reply address and its watchers, unless it has ended."""
        with job.lock:
            if not job.finished:
                for target in [job.reply_to] + job.watchers:
                    self.send(target, reply)

    def _progress(self, job: Job, fraction: float, message: str, force: bool = False) -> None:
        with job.lock:
            job.fraction, job.message = max(job.fraction, fraction), message
            now = time.monotonic()
            if job.finished or (not force and now - job.last_sent < PROGRESS_MIN_INTERVAL):
                return
            job.last_sent = now
            self.send(job.reply_to, protocol.progress(job.id, job.fraction, message))

    def _work(self) -> None:
        from engine.core.diffusion import Cancelled

        while True:
            with self._lock:
                while not self._queue and not self._stopping:
                    self._wake.wait()
                if self._stopping:
                    return
                job = self._running = self._queue.popleft()

            def progress(fraction: float, message: str) -> None:
                if job.cancel.is_set():
                    raise Cancelled()
                self._progress(job, fraction, message)

            try:
                self._progress(job, 0.0, "starting", force=True)
                # The folder may have been swapped for a symlink since the job was accepted;
                # from here on the job writes into the folder it opens (engine.output_folder).
                contained_output_dir(str(job.out_dir), self.output_root, job.id)
                paths = self.execute(job, progress, lambda files, take=None, preview=False: self._interim(
                    job, protocol.preview(job.id, files) if preview else
                    protocol.first_guess(job.id, files) if take is None else protocol.take(job.id, *take, files)))
                if job.cancel.is_set():  # cancelled after the last sampler step: drop nothing already written
                    log.info("job %s: cancel arrived after the files were written", job.id)
                self._progress(job, 1.0, "done", force=True)
                self._finish(job, protocol.done(job.id, paths))
            except Cancelled:
                self._finish(job, protocol.cancelled(job.id))
            except ProtocolError as error:
                self._finish(job, protocol.error(job.id, error.code, error.message))
            except BaseException as error:  # a job must never take the worker down
                code, message = describe_failure(error)
                if code == protocol.ENGINE:
                    log.error("job %s failed:\n%s", job.id, traceback.format_exc())
                self._finish(job, protocol.error(job.id, code, message))
                if not isinstance(error, Exception):
                    raise
            finally:
                with self._lock:
                    self._running = None

    def _beat(self) -> None:
        while True:
            time.sleep(HEARTBEAT / 3)
            with self._lock:
                if self._stopping:
                    return
                job = self._running
            if job is not None and time.monotonic() - job.last_sent >= HEARTBEAT:
                self._progress(job, job.fraction, job.message, force=True)


def describe_failure(error: BaseException) -> tuple[str, str]:
    """An exception from the engine -> (error code, a message a musician can act on)."""
    from engine.audio.files import AudioInputError

    if isinstance(error, AudioInputError):
        return protocol.BAD_INPUT, str(error)
    if isinstance(error, DiskFullError):
        return protocol.ENGINE, str(error)  # not the path's fault: the same request works once there is room
    if isinstance(error, OutputError):
        return protocol.BAD_PATH, str(error)
    if isinstance(error, FileExistsError):
        return protocol.EXISTS, f"{error} Send overwrite 1 to replace it, or choose another out_dir."
    if isinstance(error, MemoryError):
        return protocol.ENGINE, "out of memory: try a shorter file, or mono 1"
    if isinstance(error, OSError):
        return protocol.ENGINE, f"cannot write the output: {error.strerror or error} ({error.filename or ''})"
    if isinstance(error, (UserError, ValueError)):
        return protocol.BAD_INPUT, str(error)
    return protocol.ENGINE, f"the engine failed: {type(error).__name__}: {error}; see the server's log"


def execute_job(models: Any, job: Job, progress: Callable[[float, str], None], max_seconds: float | None,
                output_root: Path | None = None, first_guess: Callable[[dict], None] | None = None) -> dict:
    """Run one accepted job on the engine (called on the worker thread only), on
    the one path every front end takes (engine.jobs.run), its folder opened
    from `output_root` down without following links."""
    from engine.jobs.run import Job as EngineJob, run_job

    request = job.request
    return run_job(models, EngineJob(request.kind, job.out_dir, request.options, mix=request.mix_path,
                                     seconds=request.seconds, given=request.given),
                   progress=progress, max_seconds=max_seconds, output_root=output_root,
                   on_first_guess=first_guess,
                   on_take=None if first_guess is None or request.options.takes < 2 else
                   lambda number, seed, files: first_guess(files, take=(number, seed)),
                   on_preview=None if first_guess is None else lambda files: first_guess(files, preview=True))
