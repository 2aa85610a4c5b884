"""Every reply an OSC client receives, kept with its arrival time (tests that
count progress replies or watch several jobs at once)."""

from __future__ import annotations

import threading
import time
from typing import Callable

from osc_bridge.client import OscClient


class ReplyCollector:
    """Drains a client's socket on a thread and keeps every reply with its
    arrival time, so bursts of replies never overflow the socket's buffer."""

    def __init__(self, client: OscClient, unsigned: bool = False) -> None:
        """`unsigned`: keep the server's unsigned replies too (its answers to
        datagrams it cannot trust), not only those signed for the client's requests."""
        self.client = client
        self.unsigned = unsigned
        self.replies: list[tuple[float, str, list]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="osc-replies", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                reply = self.client.receive(0.05, unsigned=self.unsigned)
            except OSError:  # the client's socket was closed under us: nothing more will come
                return
            if reply is not None:
                self.replies.append((time.monotonic(), *reply))

    def of_job(self, job_id: str) -> list[tuple[float, str, list]]:
        return [r for r in self.replies if r[2] and r[2][0] == job_id]

    def wait_for(self, predicate: Callable[[list], bool], timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self.replies):
                return True
            time.sleep(0.02)
        return predicate(self.replies)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
