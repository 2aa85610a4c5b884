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

TASKS = ("separate", "generate", "impute", "regenerate")
# Tasks whose results are takes of the lanes they write (desktop/takes.py).
TAKE_TASKS = ("generate", "impute", "regenerate")
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
    takes: int = 1                      # takes per Generate / Impute / Regenerate (seeds seed, seed+1, ...)


class JobRefused(ValueError):
    """A task that cannot start as the lanes are; the message says what to do."""


def task_options(kind: str, controls: TaskControls) -> dict:
    """The OSC options of a task (the app writes float WAVs; Resamples and
    Likelihood are Separate's)."""
    options = {"steps": controls.steps, "seed": controls.seed, "method": controls.method,
               "format": "wav", "bits": "32f"}
    if kind in TAKE_TASKS and controls.takes > 1:
        options["takes"] = controls.takes
    elif kind in ("generate", "impute"):
        # The first window alone comes first (/msdm/preview): heard within a second or two.
        options["preview"] = 1
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
                  extra: Mapping | None = None, time_range: tuple[float, float] | None = None,
                  regenerate: tuple[str, ...] = ()) -> tuple[tuple[str, ...], bytes]:
    """(the lanes the result must fill, the OSC request) for a task, or JobRefused.
    Regenerate: the stems `regenerate` anew inside `time_range` (seconds), every
    filled stem lane `given` (an impute with range and regenerate options)."""
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
    if kind == "regenerate":
        chosen = [s for s in stems if s in (regenerate or ())]
        if time_range is None:
            raise JobRefused("Regenerate needs a time range: press Range on the ruler and drag its edges over "
                             "the part to write anew.")
        if not chosen:
            raise JobRefused("Regenerate needs the stem lanes to write anew: press 'sel' on each (bass, say).")
        empty = [s for s in chosen if s not in given]
        if empty:
            raise JobRefused(f"{', '.join(empty)} {'is' if len(empty) == 1 else 'are'} empty: Regenerate rewrites "
                             "part of a lane that has audio (separate or open a file first).")
        start, end = time_range
        opts.update(range=f"{start:.6f}:{end:.6f}", regenerate=",".join(chosen))
        return (*chosen, MIX), osc.impute(job_id, str(out_dir), given, **opts)
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
    options: Mapping = field(default_factory=dict)     # what was asked (kept with each take)
    takes: int = 1                     # takes this job makes; more than one arrive one by one (/msdm/take)
    takes_shown: int = 0               # takes already on the lanes

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
