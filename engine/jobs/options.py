"""Every option a job takes, in one table: name, type, default, limits, help.

The front ends derive what they show from it: the CLI's flags
(`add_job_options`), the OSC option parser (osc_bridge.protocol builds its
parsers from `OPTIONS`) and the app's controls (desktop reads the limits and
choices). `JobOptions` holds the values of one job; `JobOptions.sampler_settings`
and `JobOptions.output_format` are the one translation into what the engine
runs (engine.jobs.run uses them).

Nothing heavy (torch) is imported until a function that needs it runs: the
parsers are built on every `msdm` call, including the light ones.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from engine.audio.windows import MAX_OVERLAP
from engine.core.latent_options import LATENT_ONLY, latent_options_for, waveform_problem
from engine.errors import CommandError

TASKS = ("separate", "generate", "impute")
# engine.core.diffusion.METHODS, engine.core.tasks.LIKELIHOODS and STARTS, spelled out so that
# building a parser needs no torch (tests/test_jobs.py keeps them equal).
METHODS = ("euler", "heun", "dpmpp2m")
LIKELIHOODS = ("dirac", "gaussian")
STARTS = ("guess", "noise")  # engine.core.tasks.STARTS
PRIORS = ("latent", "waveform")  # engine.core.tasks.PRIORS
FORMATS = ("wav", "flac")
BITS = ("16", "24", "32f")
INT32 = (-(2**31), 2**31 - 1)


@dataclass(frozen=True)
class Option:
    """One option of a job. `default` None means the task's own default (the
    paper's sampler settings, engine.core.tasks); `group` is where the CLI lists it."""

    name: str
    type: type                       # int, float, str (with choices) or bool (a flag)
    default: Any
    help: str
    low: float | None = None         # inclusive limits of a number
    high: float | None = None
    choices: tuple[str, ...] = ()
    tasks: tuple[str, ...] = TASKS
    group: str = "sampler"           # sampler | task | output
    check: Callable[[Any], str | None] | None = None   # a text option's format: why a value is wrong, or None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def problem(self, value: Any) -> str | None:
        """Why `value` (already of `type`) is not allowed, or None."""
        if self.choices and value not in self.choices:
            return f"{self.name} must be one of {', '.join(self.choices)}, got {value!r}"
        if self.low is not None and value < self.low or self.high is not None and value > self.high:
            return f"{self.name} must be between {self.low:g} and {self.high:g}, got {value!r}"
        if self.check is not None and (reason := self.check(value)) is not None:
            return f"{self.name} {reason}, got {value!r}"
        return None


MAX_TAKES = 16


def parse_time_range(text: str) -> tuple[float, float]:
    """"START:END" in seconds (e.g. "4:6.5") -> (start, end); ValueError says what is wrong."""
    start, sep, end = str(text).partition(":")
    try:
        if not sep:
            raise ValueError
        begin, finish = float(start), float(end)
    except ValueError:
        raise ValueError("must be START:END in seconds, e.g. 4:6.5") from None
    if not (math.isfinite(begin) and math.isfinite(finish) and 0 <= begin < finish):
        raise ValueError("must have 0 <= START < END")
    return begin, finish


def parse_stem_list(text: str) -> tuple[str, ...]:
    """"bass,drums" -> ("bass", "drums"); empty names or a name twice are a ValueError."""
    names = tuple(name.strip() for name in str(text).split(","))
    if not all(names):
        raise ValueError("must name stems separated by commas, e.g. bass,drums")
    if len(set(names)) != len(names):
        raise ValueError("names a stem twice")
    return names


def _reason(parse: Callable[[str], Any]) -> Callable[[Any], str | None]:
    def reason(value: Any) -> str | None:
        try:
            parse(value)
        except ValueError as error:
            return str(error)
        return None
    return reason


OPTIONS: tuple[Option, ...] = (
    Option("steps", int, None, "number of noise levels (paper: 150, imputation 256); separating from the "
                               "first guess: 0 (default) gives the guess itself, N refines it in N steps", 0, 10000),
    Option("resamples", int, None, "correction resamples per step (NFE = steps x resamples)", 1, 100),
    Option("churn", float, None, "S_churn: stochasticity added at each step", 0.0, 1000.0),
    Option("sigma_min", float, None, "lowest noise level of the schedule", 1e-6, 1000.0),
    Option("sigma_max", float, None, "highest noise level of the schedule", 1e-6, 1000.0),
    Option("method", str, None, "ODE step: euler (paper), heun (2nd order, 2 NFE/step) or dpmpp2m "
                                "(DPM-Solver++(2M): 2nd order at 1 NFE/step, for few steps)", choices=METHODS),
    Option("guidance", float, None, "imputation with the latent prior: classifier-free guidance weight, how hard "
                                    "the generated stems lean on the given ones (1: the learned conditional alone, "
                                    "one network evaluation per step; other values two; default: the task's)",
           0.0, 10.0, tasks=("impute",)),
    Option("harmony", float, None, "imputation with the latent prior: harmony guidance, how hard the new pitched "
                                   "stems are pulled towards the given stems' pitch classes (0: off; default: the "
                                   "task's)", 0.0, 5.0, tasks=("impute",)),
    Option("rhythm", float, None, "imputation with the latent prior: rhythm guidance, how hard the new stems' "
                                  "onsets are pulled towards the given stems' onsets (0: off; default: the task's)",
           0.0, 5.0, tasks=("impute",)),
    Option("autoguidance", float, None, "the latent prior's autoguidance weight with the weaker guide model in "
                                        "the model file, how far each step moves away from the guide's errors "
                                        "(1: off, half the work; default: for generate the weight the model "
                                        "file was calibrated with, for impute 1)", 0.0, 10.0, tasks=("generate", "impute")),
    Option("seed", int, 0, "random seed: same seed, same audio (default 0)", *INT32),
    Option("overlap", float, 0.25, f"overlap between windows of long audio, 0..{MAX_OVERLAP:g} (default 0.25)",
           0.0, MAX_OVERLAP),
    Option("likelihood", str, "dirac", "dirac: stems sum to the mix exactly (default); gaussian: a soft constraint",
           choices=LIKELIHOODS, tasks=("separate",), group="task"),
    Option("start", str, None, "guess (default when the model has a first-guess separator): its stems, in about "
                               "a second; with steps N the diffusion prior refines them from a low noise level. "
                               "noise: the paper's sampler from pure noise (150 steps x 2)",
           choices=STARTS, tasks=("separate",), group="task"),
    Option("prior", str, None, "latent (default for generate and impute when the model has one): the diffusion "
                               "model over the stem autoencoder's latents; waveform: the paper's waveform U-Net. "
                               "Separating with steps N from the first guess: which prior refines it (default "
                               "waveform; latent is measured in docs/models.md)",
           choices=PRIORS, tasks=("generate", "impute", "separate"), group="task"),
    Option("mono", bool, False, "downmix to mono first (half the work for stereo)", tasks=("separate",),
           group="task"),
    Option("range", str, None, "with --regenerate: regenerate only START:END (seconds) of those stems; "
                               "everything outside it and the other stems are kept (a stem not given is silent)",
           tasks=("impute",), group="task", check=_reason(parse_time_range)),
    Option("regenerate", str, None, "with --range: the given stems to write anew inside the range, e.g. bass or "
                                    "bass,drums", tasks=("impute",), group="task", check=_reason(parse_stem_list)),
    Option("takes", int, 1, f"how many takes (seeds seed, seed+1, ...) to make, each written when done into "
                            f"take-K/ under the output folder when more than one (default 1)", 1, MAX_TAKES,
           tasks=("generate", "impute"), group="task"),
    Option("preview", bool, False, "first write a preview, the first window alone (about 3 s with the latent "
                                   "prior), into preview/ under the output folder, so it can be heard within a "
                                   "second or two; the whole result follows (not with range)",
           tasks=("generate", "impute"), group="task"),
    Option("format", str, "wav", "file format (default wav)", choices=FORMATS, group="output"),
    Option("bits", str, None, "sample format: 16, 24 or 32f (float, WAV only); default 32f for WAV, 24 for FLAC",
           choices=BITS, group="output"),
)
OPTIONS_BY_NAME = {option.name: option for option in OPTIONS}


@dataclass(frozen=True)
class JobOptions:
    """The values of one job's options (defaults: the table's; a test keeps them
    equal). `overwrite` is each front end's policy, not in the table: the CLI
    replaces files unless --no-overwrite, an OSC job only with `overwrite 1`."""

    steps: int | None = None
    resamples: int | None = None
    churn: float | None = None
    sigma_min: float | None = None
    sigma_max: float | None = None
    method: str | None = None
    guidance: float | None = None
    harmony: float | None = None
    rhythm: float | None = None
    autoguidance: float | None = None
    seed: int = 0
    overlap: float = 0.25
    likelihood: str = "dirac"
    start: str | None = None
    prior: str | None = None
    mono: bool = False
    range: str | None = None
    regenerate: str | None = None
    takes: int = 1
    preview: bool = False
    format: str = "wav"
    bits: str | None = None
    overwrite: bool = False

    @property
    def time_range(self) -> tuple[float, float] | None:
        return None if self.range is None else parse_time_range(self.range)

    @property
    def regenerated_stems(self) -> tuple[str, ...]:
        return () if self.regenerate is None else parse_stem_list(self.regenerate)

    @property
    def sample_format(self) -> str:
        return self.bits or ("24" if self.format == "flac" else "32f")

    def problem(self) -> str | None:
        """What makes these options unusable together (each value is checked by the table)."""
        for option in OPTIONS:
            value = getattr(self, option.name)
            if value is not None and (reason := option.problem(value)):
                return reason
        if self.prior == "waveform" and (reason := waveform_problem({n: getattr(self, n) for n in LATENT_ONLY})):
            return reason
        if (self.range is None) != (self.regenerate is None):
            return "range and regenerate go together: the time range, and the stems to write anew in it"
        if self.format == "flac" and self.sample_format == "32f":
            return "FLAC cannot store 32-bit float: use bits 16 or 24, or format wav"
        return None

    def check(self) -> "JobOptions":
        if (reason := self.problem()) is not None:
            raise CommandError(reason)
        return self

    def sampler_settings(self, task: str, isdm: bool = False, *, first_guess: bool = False, num_stems: int = 4,
                         latent_prior: bool = False):
        """The task's default SamplerSettings with the options given: for
        separation from the model's first guess when it has one (`first_guess`)
        unless start is noise (engine.core.tasks.separation_settings, which also
        refuses settings that would diverge), else the paper's; generation and
        imputation with the latent prior when the model has one (`latent_prior`)
        unless prior is waveform (engine.core.tasks.generation_settings)."""
        from engine.core import tasks

        overrides = dict(steps=self.steps, num_resamples=self.resamples, s_churn=self.churn,
                         sigma_min=self.sigma_min, sigma_max=self.sigma_max, method=self.method)
        overrides.update({name: getattr(self, name) for name in latent_options_for(task)})
        if task == "separate":
            settings = tasks.separation_settings(self.likelihood, num_stems=num_stems, isdm=isdm,
                                                 has_first_guess=first_guess, start=self.start, prior=self.prior,
                                                 **overrides)
        else:
            settings = tasks.generation_settings(task, latent_prior, self.prior, **overrides)
        return settings

    def output_format(self):
        from engine.audio.pipeline import OutputFormat

        self.check()
        return OutputFormat(extension=self.format, bits=self.sample_format, overwrite=self.overwrite)


# -- the command line ---------------------------------------------------------

def _cli_type(option: Option):
    def parse(text: str):
        try:
            value = option.type(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if option.type is int else 'a number'}")
        if (reason := option.problem(value)) is not None:
            raise argparse.ArgumentTypeError(reason.split(", got")[0].replace(f"{option.name} must", "must"))
        return value
    parse.__name__ = option.type.__name__
    return parse


def add_job_options(parser: argparse.ArgumentParser, task: str | None, what: str) -> None:
    """The table's options for `task` (None: every task, e.g. `msdm bounce`) as
    flags, with the output folder, --no-overwrite and -q."""
    groups = {"task": parser.add_argument_group(task or "task"),
              "sampler": parser.add_argument_group("sampler", f"defaults are the paper's settings for {what}"),
              "output": parser.add_argument_group("output")}
    groups["output"].add_argument("-o", "--out", required=True, type=Path, metavar="DIR", help="output folder")
    for option in OPTIONS:
        if task is not None and task not in option.tasks:
            continue
        group = groups[option.group]
        if option.type is bool:
            group.add_argument(option.flag, action="store_true", help=option.help)
        elif option.choices:
            group.add_argument(option.flag, choices=option.choices, default=option.default, help=option.help)
        else:
            group.add_argument(option.flag, type=_cli_type(option), default=option.default, help=option.help)
    groups["output"].add_argument("--no-overwrite", action="store_true",
                                  help="fail instead of replacing existing files")
    groups["output"].add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def job_options_from_args(args: argparse.Namespace) -> JobOptions:
    values = {o.name: getattr(args, o.name) for o in OPTIONS if hasattr(args, o.name)}
    return JobOptions(**values, overwrite=not getattr(args, "no_overwrite", False)).check()


def add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model", action="append", metavar="FILE",
                       help="model file (.safetensors); repeat it with one single-stem model per "
                            "stem for ISDM separation (default: the model shipped with MSDM Studio)")
    group.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    group.add_argument("--backend", choices=("torch", "onnx"), default="torch",
                       help="torch (default) or onnx: ONNX Runtime with TensorRT/CUDA/CPU, exported once and cached")


def load_models_for(args):
    """--model, --device and --backend: the ModelSet a command runs on."""
    import torch

    from engine.storage.loading import load_models

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise CommandError(f"--device {args.device}: no CUDA GPU is available to PyTorch here; use --device cpu")
    return load_models(args.model, device=args.device, backend=getattr(args, "backend", "torch"))
