"""The MSDM OSC protocol v1 as data and pure functions (no sockets, no torch; the
job options, their types and limits come from the engine's table, engine.jobs.options).

Requests arrive as (address, [args]) and leave this module as typed, validated
request objects; replies are built here as (address, [args]) tuples. The
public description with an example per message is docs/osc.md; the agreed
core is fixed (the desktop app is built against it), so messages and options
may be added but never changed.

Checks that need the file system (paths, audio headers) live in
osc_bridge.paths and osc_bridge.server; everything here is decidable from the
message alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from engine.core.evaluations import network_evaluations as sampler_evaluations
from engine.jobs import options as job_options

PROTOCOL_VERSION = 1
DEFAULT_PORT = 9010  # UDP port of `msdm serve` (the app, osc-send and the REAPER installer default to it)

# Error codes (osc-protocol.md). "cancelled" is not an error: it has its own reply.
BAD_REQUEST = "bad_request"
UNKNOWN_ADDRESS = "unknown_address"
BAD_INPUT = "bad_input"
BAD_PATH = "bad_path"
EXISTS = "exists"
QUEUE_FULL = "queue_full"
DUPLICATE_JOB = "duplicate_job"
UNKNOWN_JOB = "unknown_job"
ENGINE = "engine"
UNAUTHORIZED = "unauthorized"  # not signed with the secret of the user who runs the server (osc_bridge.auth)
ERROR_CODES = (BAD_REQUEST, UNKNOWN_ADDRESS, BAD_INPUT, BAD_PATH, EXISTS, QUEUE_FULL,
               DUPLICATE_JOB, UNKNOWN_JOB, ENGINE, UNAUTHORIZED)

MAX_JOB_ID = 128      # characters; job ids come back in every reply
MAX_PATH = 4096       # characters (PATH_MAX on Linux)
MAX_STRING = 4096     # any other string argument

# Work per request: network evaluations per window (steps x resamples; Heun
# evaluates twice per step). The paper's separation (150 x 2 = 300) and
# imputation (256) fit well; `steps 10000 resamples 100` (10^6) does not.
DEFAULT_MAX_EVALUATIONS = 2000
# The sampler defaults each task runs with when a request leaves steps/resamples out:
# engine.core.tasks' SEPARATE_DIRAC/SEPARATE_GAUSSIAN, GENERATE and IMPUTE
# (spelled out so the protocol needs no torch; a test keeps them equal).
DEFAULT_STEPS_RESAMPLES = {"separate": (150, 2), "generate": (150, 1), "impute": (256, 1)}


class ProtocolError(Exception):
    """A request that cannot be served: becomes /msdm/error <job_id> <code> <message>."""

    def __init__(self, code: str, message: str, job_id: str = "") -> None:
        assert code in ERROR_CODES, code
        super().__init__(message)
        self.code = code
        self.message = message
        self.job_id = job_id


# --------------------------------------------------------------------------- #
# Values: OSC types are loose in practice (Max and Pure Data send floats for
# everything, liblo users type by hand), so numbers are accepted in any numeric
# type, or as a numeric string, as long as the value itself makes sense.
# --------------------------------------------------------------------------- #

def as_int(value: Any, what: str, low: int | None = None, high: int | None = None) -> int:
    number = value
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise ProtocolError(BAD_REQUEST, f"{what} must be a whole number, got the text {_shown(value, 40)}") from None
    if isinstance(number, bool) or not isinstance(number, (int, float)):
        raise ProtocolError(BAD_REQUEST, f"{what} must be a whole number, got {_kind(value)}")
    if isinstance(number, float):
        if not math.isfinite(number) or number != int(number):
            raise ProtocolError(BAD_REQUEST, f"{what} must be a whole number, got {_shown(value)}")
        number = int(number)
    if (low is not None and number < low) or (high is not None and number > high):
        raise ProtocolError(BAD_REQUEST, f"{what} must be between {low} and {high}, got {number}")
    return number


def as_float(value: Any, what: str, low: float | None = None, high: float | None = None) -> float:
    number = value
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise ProtocolError(BAD_REQUEST, f"{what} must be a number, got the text {_shown(value, 40)}") from None
    if isinstance(number, bool) or not isinstance(number, (int, float)):
        raise ProtocolError(BAD_REQUEST, f"{what} must be a number, got {_kind(value)}")
    number = float(number)
    if not math.isfinite(number):
        raise ProtocolError(BAD_REQUEST, f"{what} must be a finite number, got {_shown(value)}")
    if (low is not None and number < low) or (high is not None and number > high):
        raise ProtocolError(BAD_REQUEST, f"{what} must be between {low:g} and {high:g}, got {number:g}")
    return number


def as_flag(value: Any, what: str) -> bool:
    if isinstance(value, bool):  # OSC T / F
        return value
    return bool(as_int(value, what, 0, 1))


def as_text(value: Any, what: str, limit: int = MAX_STRING) -> str:
    if not isinstance(value, str):
        raise ProtocolError(BAD_REQUEST, f"{what} must be a string, got {_kind(value)}")
    if not value:
        raise ProtocolError(BAD_REQUEST, f"{what} is empty")
    if len(value) > limit:
        raise ProtocolError(BAD_REQUEST, f"{what} is too long ({len(value)} characters, at most {limit})")
    if "\x00" in value:
        raise ProtocolError(BAD_REQUEST, f"{what} contains a NUL character")
    return value


def as_choice(value: Any, what: str, choices: Sequence[str]) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and float(value).is_integer():
        value = str(int(value))  # bits 16 / 24 may arrive as numbers
    text = as_text(value, what, 64)
    if text not in choices:
        raise ProtocolError(BAD_REQUEST, f"{what} must be one of {', '.join(choices)}, got {_shown(text)}")
    return text


def job_id_of(value: Any) -> str:
    """Job ids are strings; a number (Max, Pure Data) is taken as its text."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = str(int(value))
    text = as_text(value, "job_id", MAX_JOB_ID)
    if any(ord(c) < 32 for c in text):
        raise ProtocolError(BAD_REQUEST, "job_id contains control characters")
    return text


def _shown(value: Any, limit: int = 60) -> str:
    """A value quoted in an error message: its repr, cut to `limit` characters
    (a 20,000-character argument must not make a reply too long to send)."""
    text = repr(value[: limit + 1] if isinstance(value, (str, bytes)) else value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _kind(value: Any) -> str:
    names = {bool: "a true/false value", int: "an integer", float: "a number", str: "a string",
             bytes: "a blob", type(None): "nil", list: "an array", tuple: "a value of OSC type r/m/t"}
    return names.get(type(value), type(value).__name__)


# --------------------------------------------------------------------------- #
# Options: key/value pairs after the fixed arguments.
# --------------------------------------------------------------------------- #

@dataclass(frozen=True)
class Option:
    name: str
    parse: Callable[[Any], Any]
    tasks: tuple[str, ...]
    help: str


def _parser(option: job_options.Option) -> Callable[[Any], Any]:
    """An OSC value -> the option's type, within the table's limits."""
    if option.type is bool:
        return lambda v: as_flag(v, option.name)
    if option.choices:
        return lambda v: as_choice(v, option.name, option.choices)
    if option.type is int:
        return lambda v: as_int(v, option.name, option.low, option.high)
    if option.type is str:  # a text option with a format of its own (range "START:END", regenerate "bass,drums")
        return lambda v: _checked_text(option, v)
    return lambda v: as_float(v, option.name, option.low, option.high)


def _checked_text(option: job_options.Option, value: Any) -> str:
    text = as_text(value, option.name)
    if (reason := option.problem(text)) is not None:
        raise ProtocolError(BAD_REQUEST, reason)
    return text


METHODS = job_options.METHODS

# The job options of the engine's one table (engine.jobs.options), plus two that
# only a message has: whether it may replace files, and where its replies go.
OPTIONS: tuple[Option, ...] = tuple(Option(o.name, _parser(o), o.tasks, o.help) for o in job_options.OPTIONS) + (
    Option("overwrite", lambda v: as_flag(v, "overwrite"), job_options.TASKS,
           "1: replace existing output files (default 0)"),
    Option("reply_port", lambda v: as_int(v, "reply_port", 1, 65535), job_options.TASKS,
           "send this job's replies to this port"),
)
OPTIONS_BY_NAME = {option.name: option for option in OPTIONS}


@dataclass(frozen=True)
class JobOptions(job_options.JobOptions):
    """The engine's JobOptions (overwrite off unless asked) and the reply port."""

    reply_port: int | None = None


def parse_options(pairs: Sequence[Any], task: str, job_id: str, hint: str = "") -> JobOptions:
    """[key, value, key, value, ...] -> JobOptions; unknown keys, a key twice,
    a key without a value and values that make no sense are bad_request."""
    if len(pairs) % 2:
        raise ProtocolError(BAD_REQUEST, f"options come in key/value pairs; {_shown(pairs[-1])} has no value",
                            job_id)
    values: dict[str, Any] = {}
    for key, value in zip(pairs[::2], pairs[1::2]):
        if not isinstance(key, str):
            raise ProtocolError(BAD_REQUEST, f"option names are strings, got {_kind(key)} {_shown(key)}", job_id)
        option = OPTIONS_BY_NAME.get(key)
        if option is None or task not in option.tasks:
            known = ", ".join(o.name for o in OPTIONS if task in o.tasks)
            raise ProtocolError(BAD_REQUEST, f"unknown option {_shown(key, 40)} for {task}; known: {known}{hint}", job_id)
        if key in values:
            raise ProtocolError(BAD_REQUEST, f"option {key!r} given twice", job_id)
        try:
            values[key] = option.parse(value)
        except ProtocolError as error:
            raise ProtocolError(error.code, error.message, job_id) from None
    options = JobOptions(**values)
    if (reason := options.problem()) is not None:
        raise ProtocolError(BAD_REQUEST, reason, job_id)
    return options


# --------------------------------------------------------------------------- #
# Requests
# --------------------------------------------------------------------------- #

@dataclass(frozen=True)
class Query:
    """ping, models, status, root: answered at once, no job."""

    kind: str
    reply_port: int | None = None


@dataclass(frozen=True)
class CancelRequest:
    job_id: str
    reply_port: int | None = None


@dataclass(frozen=True)
class JobRequest:
    kind: str                      # separate | generate | impute
    job_id: str
    out_dir: str
    options: JobOptions
    mix_path: str | None = None    # separate
    seconds: float | None = None   # generate
    given: dict[str, str] = field(default_factory=dict)  # impute: stem -> path


def _query_parser(kind: str):
    def parse(args: Sequence[Any], stems: Sequence[str]) -> Query:
        if len(args) > 1:
            raise ProtocolError(BAD_REQUEST, f"/msdm/{kind} takes at most one argument (reply_port), got {len(args)}")
        return Query(kind, as_int(args[0], "reply_port", 1, 65535) if args else None)
    return parse


def _job_prefix(args: Sequence[Any], address: str, count: int, names: str) -> str:
    """The job id (first argument), checked before anything else so that every
    later error can name the job."""
    if not args:
        raise ProtocolError(BAD_REQUEST, f"{address} needs {names}")
    job_id = job_id_of(args[0])
    if len(args) < count:
        raise ProtocolError(BAD_REQUEST, f"{address} needs {names}; got {len(args)} argument(s)", job_id)
    return job_id


def _with_job(job_id: str, parse: Callable[[], Any]):
    try:
        return parse()
    except ProtocolError as error:
        raise ProtocolError(error.code, error.message, job_id) from None


def parse_separate(args: Sequence[Any], stems: Sequence[str]) -> JobRequest:
    job_id = _job_prefix(args, "/msdm/separate", 3, "<job_id> <mix_path> <out_dir> [key value ...]")
    return _with_job(job_id, lambda: JobRequest(
        "separate", job_id, as_text(args[2], "out_dir", MAX_PATH), parse_options(args[3:], "separate", job_id),
        mix_path=as_text(args[1], "mix_path", MAX_PATH)))


def parse_generate(args: Sequence[Any], stems: Sequence[str]) -> JobRequest:
    job_id = _job_prefix(args, "/msdm/generate", 3, "<job_id> <out_dir> <seconds> [key value ...]")
    return _with_job(job_id, lambda: JobRequest(
        "generate", job_id, as_text(args[1], "out_dir", MAX_PATH), parse_options(args[3:], "generate", job_id),
        seconds=as_float(args[2], "seconds", 0.01, 24 * 3600.0)))


def parse_impute(args: Sequence[Any], stems: Sequence[str]) -> JobRequest:
    names = "<job_id> <out_dir> <stem> <path> [<stem> <path> ...] [key value ...]"
    job_id = _job_prefix(args, "/msdm/impute", 4, names)

    def parse() -> JobRequest:
        out_dir = as_text(args[1], "out_dir", MAX_PATH)
        rest = args[2:]
        if len(rest) % 2:
            raise ProtocolError(BAD_REQUEST, f"after <out_dir>, arguments come in pairs; {_shown(rest[-1])} has no value")
        given: dict[str, str] = {}
        options: list[Any] = []
        for key, value in zip(rest[::2], rest[1::2]):
            if isinstance(key, str) and key in stems:
                if key in given:
                    raise ProtocolError(BAD_REQUEST, f"stem {key!r} is given twice")
                given[key] = as_text(value, f"the path of {key}", MAX_PATH)
            else:
                options += [key, value]
        parsed = parse_options(options, "impute", job_id, f"; given stems are one of {', '.join(stems)}")
        if not given:
            raise ProtocolError(BAD_REQUEST, f"give at least one stem you have as <stem> <path>; "
                                             f"this model's stems are {', '.join(stems)}")
        if len(given) == len(stems) and parsed.range is None:  # with a range, the regenerated stems are given too
            raise ProtocolError(BAD_REQUEST, f"all stems ({', '.join(stems)}) are given: nothing is left to generate")
        return JobRequest("impute", job_id, out_dir, parsed, given=given)

    return _with_job(job_id, parse)


def parse_cancel(args: Sequence[Any], stems: Sequence[str]) -> CancelRequest:
    job_id = _job_prefix(args, "/msdm/cancel", 1, "<job_id> [reply_port]")
    if len(args) > 2:
        raise ProtocolError(BAD_REQUEST, "/msdm/cancel takes <job_id> [reply_port]", job_id)
    port = _with_job(job_id, lambda: as_int(args[1], "reply_port", 1, 65535)) if len(args) == 2 else None
    return CancelRequest(job_id, port)


@dataclass(frozen=True)
class Address:
    address: str
    parse: Callable[[Sequence[Any], Sequence[str]], Any]
    usage: str
    reply: str


# The address table, built from one list (docs/osc.md documents each entry).
ADDRESSES: tuple[Address, ...] = (
    Address("/msdm/ping", _query_parser("ping"), "[reply_port]", "/msdm/pong <version> <model>"),
    Address("/msdm/models", _query_parser("models"), "[reply_port]",
            "/msdm/models <model> <stems> <sample_rate> <backend>"),
    Address("/msdm/status", _query_parser("status"), "[reply_port]",
            "/msdm/status <idle|busy> <running_job> <progress> <queued>"),
    Address("/msdm/root", _query_parser("root"), "[reply_port]", "/msdm/root <output_root> <max_seconds>"),
    Address("/msdm/separate", parse_separate, "<job_id> <mix_path> <out_dir> [key value ...]",
            "/msdm/accepted, /msdm/progress..., [/msdm/first_guess <job_id> <stem> <path> ...], "
            "/msdm/done <job_id> <stem> <path> ..."),
    Address("/msdm/generate", parse_generate, "<job_id> <out_dir> <seconds> [key value ...]",
            "/msdm/accepted, /msdm/progress..., [/msdm/preview <job_id> <stem> <path> ... (preview 1)], "
            "[/msdm/take <job_id> <take> <seed> <stem> <path> ... (takes > 1)], "
            "/msdm/done <job_id> <stem> <path> ... mix <path>"),
    Address("/msdm/impute", parse_impute, "<job_id> <out_dir> <stem> <path> [...] [key value ...]",
            "/msdm/accepted, /msdm/progress..., [/msdm/preview <job_id> <stem> <path> ... (preview 1)], "
            "[/msdm/take <job_id> <take> <seed> <stem> <path> ... (takes > 1)], "
            "/msdm/done <job_id> <stem> <path> ... mix <path>"),
    Address("/msdm/cancel", parse_cancel, "<job_id> [reply_port]", "/msdm/cancelled <job_id>"),
)
ADDRESS_TABLE = {entry.address: entry for entry in ADDRESSES}
# Addresses that only ever travel from the server to a client; the server ignores them.
REPLY_ONLY_ADDRESSES = frozenset({"/msdm/pong", "/msdm/accepted", "/msdm/progress", "/msdm/first_guess",
                                  "/msdm/done", "/msdm/error", "/msdm/cancelled", "/msdm/take", "/msdm/preview"})


def parse_request(address: str, args: Sequence[Any], stems: Sequence[str], *,
                  max_evaluations: int | None = None):
    """A decoded OSC message -> Query | CancelRequest | JobRequest, or ProtocolError.
    A job asking for more than `max_evaluations` network evaluations per window
    is bad_request."""
    entry = ADDRESS_TABLE.get(address)
    if entry is None:
        known = ", ".join(a.address for a in ADDRESSES)
        raise ProtocolError(UNKNOWN_ADDRESS, f"unknown address {_shown(address, 80)}; this server answers {known}")
    request = entry.parse(list(args), tuple(stems))
    if isinstance(request, JobRequest) and max_evaluations is not None:
        steps, resamples, evaluations = network_evaluations(request.kind, request.options)
        if evaluations > max_evaluations:
            method = request.options.method or "euler"
            raise ProtocolError(BAD_REQUEST, f"steps {steps} x resamples {resamples} ({method}) is {evaluations} "
                                             f"network evaluations per window; this server allows at most "
                                             f"{max_evaluations} (max_evaluations): ask for fewer steps or "
                                             f"resamples", request.job_id)
    return request


def network_evaluations(kind: str, options: JobOptions) -> tuple[int, int, int]:
    """(steps, resamples, network evaluations per window) of a job, with the
    task's defaults for what the request leaves out (engine SamplerSettings.nfe)."""
    default_steps, default_resamples = DEFAULT_STEPS_RESAMPLES[kind]
    steps = options.steps or default_steps
    resamples = options.resamples or default_resamples
    # Guidance other than 1 runs the latent prior twice per evaluation (the
    # default counts as one: the paper's 256 imputation steps bound it anyway).
    guidance = options.guidance if kind == "impute" and options.guidance is not None else 1.0
    # Autoguidance likewise adds the guide's pass when asked for (the model's default counts as one).
    autoguidance = options.autoguidance if kind != "separate" and options.autoguidance is not None else 1.0
    return steps, resamples, sampler_evaluations(steps, resamples, options.method or "euler", guidance, autoguidance)


def reply_port_of(request) -> int | None:
    if isinstance(request, JobRequest):
        return request.options.reply_port
    return getattr(request, "reply_port", None)


def best_effort_job_id(address: str, args: Sequence[Any]) -> str:
    """The job id to put in an error reply for a request that failed to parse."""
    if address in ("/msdm/separate", "/msdm/generate", "/msdm/impute", "/msdm/cancel") and args:
        try:
            return job_id_of(args[0])
        except ProtocolError:
            return ""
    return ""


def best_effort_reply_port(address: str, args: Sequence[Any]) -> int | None:
    """Where to send the error for a request that failed to parse: a valid
    reply port in it still counts (oscsend's own port is gone by then)."""
    candidates: list[Any] = []
    if address in ("/msdm/ping", "/msdm/models", "/msdm/status", "/msdm/root") and len(args) == 1:
        candidates = [args[0]]
    elif address == "/msdm/cancel" and len(args) == 2:
        candidates = [args[1]]
    else:
        candidates = [v for k, v in zip(args[:-1], args[1:]) if k == "reply_port"]
    for value in candidates:
        try:
            return as_int(value, "reply_port", 1, 65535)
        except ProtocolError:
            continue
    return None


# --------------------------------------------------------------------------- #
# Replies: (address, [args]) with OSC-typed Python values (str, int, float).
# --------------------------------------------------------------------------- #

Reply = tuple[str, list]


def pong(version: str, model: str) -> Reply:
    return "/msdm/pong", [version, model]


def models_reply(model: str, stems: Sequence[str], sample_rate: int, backend: str) -> Reply:
    return "/msdm/models", [model, ",".join(stems), int(sample_rate), backend]


def status_reply(busy: bool, running_job: str, progress: float, queued: int) -> Reply:
    return "/msdm/status", ["busy" if busy else "idle", running_job, float(progress), int(queued)]


def root_reply(output_root: str, max_seconds: float) -> Reply:
    return "/msdm/root", [output_root, float(max_seconds)]


def accepted(job_id: str, position: int) -> Reply:
    return "/msdm/accepted", [job_id, int(position)]


def progress(job_id: str, fraction: float, message: str) -> Reply:
    return "/msdm/progress", [job_id, float(min(max(fraction, 0.0), 1.0)), message]


def done(job_id: str, paths: dict[str, Any]) -> Reply:
    args: list = [job_id]
    for stem, path in paths.items():
        args += [stem, str(path)]
    return "/msdm/done", args


def take(job_id: str, number: int, seed: int, paths: dict[str, Any]) -> Reply:
    """One take of a job with several (option takes N), as soon as it is written
    (the job goes on; /msdm/done follows, listing take 1's files)."""
    return "/msdm/take", [job_id, int(number), int(seed), *done(job_id, paths)[1][1:]]


def preview(job_id: str, paths: dict[str, Any]) -> Reply:
    """A generate or impute job's preview (option preview 1): its first window
    alone, written before the whole job (the job goes on; /msdm/done follows)."""
    return "/msdm/preview", done(job_id, paths)[1]


def first_guess(job_id: str, paths: dict[str, Any]) -> Reply:
    """A refined separation's first guess, finished before the refinement
    starts (the job goes on; /msdm/done follows with the refined stems)."""
    return "/msdm/first_guess", done(job_id, paths)[1]


def error(job_id: str, code: str, message: str) -> Reply:
    assert code in ERROR_CODES, code
    return "/msdm/error", [job_id, code, message]


def cancelled(job_id: str) -> Reply:
    return "/msdm/cancelled", [job_id]
