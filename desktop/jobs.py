"""A job sent to the engine: the request built from the task bar (a pure
function, tested without Qt), what was asked, where its files go, progress and
time left. Pure python; the engine link (desktop/engine_link.py) holds at most
one running Job."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from . import osc_messages as osc
from .session import MIX

TASKS = ("separate", "generate", "impute")
# How Separate works (the task bar's "Separate by"): the model's first-guess
# separator alone (about a second per song minute), that guess refined by the
# diffusion prior in Steps steps, or the prior from noise (the paper's sampler).
# -> (OSC option start, steps; None: the Steps box).
SEPARATION_MODES = {"first guess": ("guess", 0), "refined guess": ("guess", None), "from noise": ("noise", None)}


@dataclass(frozen=True)
class TaskControls:
    """What the task bar shows when a task button is pressed."""

    steps: int
    resamples: int
    seed: int
    method: str
    likelihood: str
    seconds: float
    separation: str = "first guess"


class JobRefused(ValueError):
    """A task that cannot start as the lanes are; the message says what to do."""


def task_options(kind: str, controls: TaskControls) -> dict:
    """The OSC options of a task (the app writes float WAVs; Resamples and
    Likelihood are Separate's)."""
    options = {"steps": controls.steps, "seed": controls.seed, "method": controls.method,
               "format": "wav", "bits": "32f"}
    if kind == "separate":
        options["resamples"] = controls.resamples
        options["likelihood"] = controls.likelihood
        start, steps = SEPARATION_MODES[controls.separation]
        options["start"] = start
        if steps is not None:
            options["steps"] = steps
    return options


def build_request(kind: str, job_id: str, out_dir: Path, controls: TaskControls, stems: tuple[str, ...], *,
                  mix: str | None = None, given: Mapping[str, str] | None = None,
                  extra: Mapping | None = None) -> tuple[tuple[str, ...], bytes]:
    """(the lanes the result must fill, the OSC request) for a task, or JobRefused."""
    opts = {**task_options(kind, controls), **(extra or {})}
    given = dict(given or {})
    if kind == "separate":
        if mix is None:
            raise JobRefused("Separate needs a mix: open one (Ctrl+O) or drop a file on the mix lane.")
        return tuple(stems), osc.separate(job_id, mix, str(out_dir), **opts)
    if kind == "generate":
        return (*stems, MIX), osc.generate(job_id, str(out_dir), float(controls.seconds), **opts)
    if kind == "impute":
        if not given:
            raise JobRefused("Impute needs at least one given stem: tick 'given' on a stem lane that has audio "
                             "(drop a file on it first).")
        if len(given) == len(stems):
            raise JobRefused("Every stem is ticked 'given', so there is nothing to generate: untick the stems "
                             "you want the model to write.")
        return (*[s for s in stems if s not in given], MIX), osc.impute(job_id, str(out_dir), given, **opts)
    raise ValueError(f"unknown task {kind!r}")


def new_job_id(kind: str) -> str:
    return f"app-{kind}-{uuid.uuid4().hex[:10]}"


@dataclass
class Job:
    kind: str
    id: str
    out_dir: Path
    expected: tuple[str, ...]          # lanes the result must fill
    label: str = ""
    started: float = field(default_factory=time.monotonic)
    fraction: float = 0.0
    message: str = "waiting for the engine"
    last_heard: float = field(default_factory=time.monotonic)
    cancelling: bool = False
    answered: bool = False             # the engine is done; the app reads the result's files
    first_guess_shown: bool = False    # a refined separation's first guess is on the lanes already
    first_report: tuple[float, float] | None = None   # (time, fraction) of the first progress > 0

    def update(self, fraction: float, message: str, now: float | None = None) -> None:
        self.fraction = min(max(float(fraction), 0.0), 1.0)
        self.message = message
        self.last_heard = time.monotonic() if now is None else now
        if self.fraction > 0 and self.first_report is None:
            self.first_report = (self.last_heard, self.fraction)

    def seconds_left(self, now: float | None = None) -> float | None:
        """Linear extrapolation from the first progress report (the model load and
        queue wait before it would otherwise inflate the estimate); None until it can tell."""
        now = time.monotonic() if now is None else now
        first = self.first_report
        if first is None or self.fraction <= first[1] or self.fraction >= 1.0:
            return None if self.fraction < 1.0 else 0.0
        rate = (self.fraction - first[1]) / max(now - first[0], 1e-6)
        return (1.0 - self.fraction) / rate


def format_left(seconds: float | None) -> str:
    if seconds is None:
        return "estimating…"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s left"
    return f"{seconds // 60} min {seconds % 60:02d} s left"


def check_result(job: Job, files: dict[str, str]) -> list[str]:
    """Problems with a done reply: lanes missing or files that are not there."""
    problems = []
    missing = [s for s in job.expected if s not in files]
    if missing:
        problems.append(f"the engine returned {len(files)} files but this job needs {len(job.expected)} "
                        f"({', '.join(job.expected)}); missing: {', '.join(missing)}")
    for stem, path in files.items():
        if not Path(path).is_file():
            problems.append(f"{stem}: '{path}' does not exist on this computer (is the server on another "
                            "machine without a shared folder?)")
    return problems
