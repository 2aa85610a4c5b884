"""SIGINT (Ctrl-C) and SIGTERM, handled alike by every command that runs jobs.

The first signal asks the command to stop: what that means is the command's
(`on_stop`). By default a `Stopped` exception (a KeyboardInterrupt) is raised
on the main thread, which suits a job that runs there (`msdm separate`): it
unwinds out of the sampler, and the atomic writers remove their temp files.
A command whose jobs run on worker threads (`msdm serve`, `msdm bounce
--jobs N`) only sets its cancel flag: each job stops at its next sampler step
(its progress callback raises engine.core.diffusion.Cancelled), and the main
thread waits for the workers. Nothing may be raised into the main thread
while it waits in Thread.join: in Python 3.11 an exception there can mark the
thread finished while it still runs inside torch, and the interpreter then
exits under it (SIGABRT).

A second signal stops at once (`on_force`; for worker threads `exit_now`,
which may leave the running step's temp files).

Exit status after a signal: 128 + its number, as a shell reports a process
that a signal ended: 130 for SIGINT, 143 for SIGTERM.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Callable

SIGNALS = (signal.SIGINT, signal.SIGTERM)
EXIT_SIGINT = 128 + signal.SIGINT    # 130
EXIT_SIGTERM = 128 + signal.SIGTERM  # 143


class Stopped(KeyboardInterrupt):
    """Raised on the main thread by a stop signal; `signum` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def exit_status(error: BaseException) -> int:
    """The exit status for a KeyboardInterrupt: 128 + the signal that caused it."""
    return 128 + getattr(error, "signum", signal.SIGINT)


def raise_stopped(signum: int) -> None:
    raise Stopped(signum)


def exit_now(signum: int) -> None:
    """Leave at once, without waiting for worker threads (a second signal)."""
    print(f"msdm: {signal.Signals(signum).name} again: stopping at once", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(128 + signum)


class StopSignals:
    """While active (`with StopSignals(...):`), SIGINT and SIGTERM run
    `on_stop(signum)` the first time and `on_force(signum)` after that.
    `signum` is the first signal received (None if none); `exit_code` is
    128 + it (0 if none).

    Installed only on the main thread (Python runs handlers there), and a
    signal that was ignored when the command started (a background job of a
    shell without job control ignores SIGINT) stays ignored."""

    def __init__(self, on_stop: Callable[[int], None] = raise_stopped,
                 on_force: Callable[[int], None] = raise_stopped) -> None:
        self.on_stop = on_stop
        self.on_force = on_force
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def exit_code(self) -> int:
        return 0 if self.signum is None else 128 + self.signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None:
            self.on_force(signum)
            return
        self.signum = signum
        self.on_stop(signum)

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                if signal.getsignal(sig) is not signal.SIG_IGN:
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)  # None: set outside Python
        self._previous.clear()
