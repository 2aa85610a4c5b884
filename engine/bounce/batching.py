"""Windows of several songs in one network call.

A catalogue bounce runs several songs at once, each in its own thread through
the ordinary one-song pipeline (engine.audio.pipeline: same windows, same seeds, same
streamed and atomic writing). Their samplers all call one `BatchingDenoiser`,
which waits until every song in flight has asked for a denoiser evaluation,
stacks the requests along the batch axis (each with its own noise level) and
runs the network once for all of them.

Why the results do not depend on what a song is batched with: the noise of
every item comes from its own generator (engine.core.diffusion.ItemNoise, seeded
per song, window and channel), and the network treats batch items
independently, so only the float rounding of batched kernels differs
(measured ~4e-7 per call on CPU; see docs/bounce.md for whole songs).
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass

import torch
from torch import Tensor

from engine.core.diffusion import as_sigma_batch


@dataclass
class _Request:
    x: Tensor
    sigma: Tensor
    result: Tensor | None = None
    error: BaseException | None = None
    done: bool = False


@dataclass
class BatchStats:
    calls: int = 0          # network evaluations
    items: int = 0          # batch items they held
    requests: int = 0       # denoiser calls the samplers made
    largest: int = 0        # most items in one evaluation

    @property
    def mean_items(self) -> float:
        return self.items / self.calls if self.calls else 0.0


class BatchingDenoiser:
    """A denoiser `D(x, sigma)` shared by several threads, evaluated in batches.

    Threads that take part register with `with batcher.member():` for as long
    as they may call it (one song). An evaluation starts when every member is
    waiting (or `max_items` items are queued): whichever thread completes the
    set runs the network and hands each caller its slice. One evaluation at a
    time, so a GPU or the CPU's cores are never split between two calls.
    """

    def __init__(self, denoiser, max_items: int | None = None) -> None:
        self.denoiser = denoiser
        self.max_items = max_items
        self.stats = BatchStats()
        self._cond = threading.Condition()
        self._members = 0
        self._waiting: list[_Request] = []
        self._busy = False

    def join(self) -> None:
        """One more caller to wait for (can be done for a thread before it starts)."""
        with self._cond:
            self._members += 1

    def leave(self) -> None:
        with self._cond:
            self._members -= 1
            batch = self._take_ready()
        # Leaving may complete the set the others are waiting for.
        self._run(batch)

    @contextlib.contextmanager
    def member(self):
        self.join()
        try:
            yield self
        finally:
            self.leave()

    def __call__(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        request = _Request(x, as_sigma_batch(sigma, x))
        with self._cond:
            self._waiting.append(request)
            self.stats.requests += 1
            batch = self._take_ready()
        self._run(batch)
        with self._cond:
            while not request.done:
                self._cond.wait()
        if request.error is not None:
            raise request.error
        return request.result

    def _take_ready(self) -> list[_Request] | None:
        """Under the lock: the queued requests, if it is time to evaluate them."""
        if self._busy or not self._waiting:
            return None
        items = sum(r.x.shape[0] for r in self._waiting)
        full = self.max_items is not None and items >= self.max_items
        if len(self._waiting) < self._members and not full:
            return None  # someone is still busy between calls: wait for them
        batch, self._waiting = self._waiting, []
        self._busy = True
        return batch

    def _run(self, batch: list[_Request] | None) -> None:
        while batch:
            self._evaluate(batch)
            with self._cond:
                for request in batch:
                    request.done = True
                self._busy = False
                batch = self._take_ready()  # requests that queued meanwhile
                self._cond.notify_all()

    @torch.no_grad()  # grad mode is per thread: the caller's no_grad does not reach here
    def _evaluate(self, batch: list[_Request]) -> None:
        # Requests of different shapes (never within one bounce) go in separate calls.
        groups: dict[tuple, list[_Request]] = {}
        for request in batch:
            groups.setdefault((tuple(request.x.shape[1:]), request.x.dtype, request.x.device), []).append(request)
        for group in groups.values():
            try:
                x = torch.cat([r.x for r in group])
                sigma = torch.cat([r.sigma for r in group])
                out = self.denoiser(x, sigma)
                self.stats.calls += 1
                self.stats.items += x.shape[0]
                self.stats.largest = max(self.stats.largest, x.shape[0])
                start = 0
                for r in group:
                    r.result = out[start:start + r.x.shape[0]]
                    start += r.x.shape[0]
            except BaseException as error:  # every caller of the group sees the failure
                for r in group:
                    r.error = error


class SharedModels:
    """A ModelSet whose denoiser is a BatchingDenoiser; everything else (stems,
    rate, window, device...) is the wrapped set's, so engine.audio.pipeline runs on it
    unchanged."""

    def __init__(self, models, batcher: BatchingDenoiser) -> None:
        self._models = models
        self.batcher = batcher

    @property
    def denoiser(self) -> BatchingDenoiser:
        return self.batcher

    def __getattr__(self, name):
        return getattr(self._models, name)
