"""The bounce manifest: one JSON object per line, one line per finished song.

A batch job writes a line when a song is done (or failed), never before, so a
run that is killed at any moment leaves a manifest that says exactly which
songs are finished: a second run skips those and retries the rest. Each line
goes out in one `write` on a file opened for appending and is fsynced, so a
crash can at worst cut the very last line short; readers ignore such a line,
and the next writer starts on a fresh line.

Several processes (torchrun ranks) each append to their own part,
`manifest.rank{R}.jsonl`; a single process writes `manifest.jsonl`. Readers
merge every part, so a run can resume with a different number of processes.

A manifest is read as data someone may have edited: every line is checked
field by field (`record_problem`) and one of the wrong shape is skipped with a
warning, never a traceback. A part is opened with O_NOFOLLOW and O_NONBLOCK
and must be a regular file: a symbolic link (which would make the run append
to a file elsewhere) or a FIFO (which would block the run for good) is
refused before any song, saying so.
"""

from __future__ import annotations

import errno
import json
import math
import os
import stat
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable

from engine.errors import OutputError

SINGLE_NAME = "manifest.jsonl"
PART_GLOB = "manifest.rank*.jsonl"

DONE = "done"
FAILED = "failed"


def manifest_path(out_dir: Path, rank: int = 0, world_size: int = 1) -> Path:
    """Where this process writes: one file alone, one part per rank otherwise."""
    return out_dir / (SINGLE_NAME if world_size == 1 else f"manifest.rank{rank}.jsonl")


def manifest_parts(out_dir: Path) -> list[Path]:
    """Every part in `out_dir`, whatever it is (links and FIFOs too: reading them is refused, not skipped)."""
    parts = sorted(out_dir.glob(PART_GLOB))
    single = out_dir / SINGLE_NAME
    return ([single] if os.path.lexists(single) else []) + parts


def open_part(path: Path, flags: int) -> int:
    """A manifest part opened without following a link and without blocking
    on a FIFO; OutputError for anything but a regular file."""
    nofollow, nonblock = getattr(os, "O_NOFOLLOW", 0), getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags | nofollow | nonblock | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise OutputError(f"the manifest '{path}' is a symbolic link, which is refused (the run would "
                              f"write where it points); delete the link or choose another output folder") from None
        if error.errno == errno.ENXIO:  # a FIFO with no reader, opened to write
            raise OutputError(_not_regular(path)) from None
        raise OutputError(f"cannot open the manifest '{path}': {error.strerror or error}; "
                          f"choose an output folder you can write to") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OutputError(_not_regular(path))
    return fd


def _not_regular(path: Path) -> str:
    return (f"the manifest '{path}' is not a regular file (a FIFO, a device or a folder); move it away "
            f"or choose another output folder")


class ManifestWriter:
    """Appends records, one complete line per write, each one fsynced."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:  # -o under /proc, a file or a read-only folder: before any song
            raise OutputError(f"cannot write the manifest '{self.path}': {error.strerror or error}; "
                              f"choose an output folder you can write to") from None
        self._fd = open_part(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT)
        # A run killed mid-line left no newline: start on a line of our own so
        # the cut line stays the only unreadable one.
        size = os.fstat(self._fd).st_size
        if size and os.pread(self._fd, 1, size - 1) != b"\n":
            self._write(b"\n")

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        os.fsync(self._fd)

    def append(self, record: dict) -> None:
        self._write((json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8"))

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "ManifestWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_records(paths: Iterable[Path], warn: Callable[[str], None] | None = None) -> list[dict]:
    """Every good record of the given parts, in file order. A line cut short
    by a crash is skipped quietly; a line of the wrong shape (edited into
    nonsense) is skipped and `warn`ed about, naming the file, the line and
    the field. A part that is a link or not a regular file: OutputError."""
    # A line that is not JSON at all is what a crash leaves (module docstring): skipped quietly.
    records = []
    for path in paths:
        fd = open_part(Path(path), os.O_RDONLY)
        try:
            with os.fdopen(fd, "rb") as handle:
                text = handle.read().decode("utf-8", errors="replace")
        except OSError as error:
            raise OutputError(f"cannot read the manifest '{path}': {error.strerror or error}") from None
        for number, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except ValueError:  # cut short by a crash (JSONDecodeError), or a number too long to convert
                continue
            problem = record_problem(record)
            if problem is not None:
                if warn is not None:
                    warn(f"{path} line {number} skipped: {problem}")
                continue
            records.append(record)
    return records


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _relative(value) -> bool:
    if not isinstance(value, str) or not value or "\0" in value:
        return False
    path = PurePosixPath(value)
    return not path.is_absolute() and ".." not in path.parts and not value.startswith("\\")


# The fields a reader relies on, and what each must be (others are kept as they are).
_FIELDS: dict[str, tuple[Callable[[object], bool], str]] = {
    "track": (lambda v: isinstance(v, str) and bool(v), "a non-empty string"),
    "status": (lambda v: v in (DONE, FAILED), f"'{DONE}' or '{FAILED}'"),
    "finished": (_number, "a number (seconds since 1970)"),
    "seed": (lambda v: isinstance(v, int) and not isinstance(v, bool), "a whole number"),
    "model": (lambda v: isinstance(v, str), "a string"),
    "settings": (lambda v: isinstance(v, dict), "an object"),
    "outputs": (lambda v: isinstance(v, dict) and all(isinstance(k, str) and _relative(p) for k, p in v.items()),
                "an object of names to paths inside the output folder"),
    "input": (lambda v: isinstance(v, str), "a string"),
    "error": (lambda v: isinstance(v, str), "a string"),
    "duration": (_number, "a number"),
    "elapsed": (_number, "a number"),
    "rank": (lambda v: isinstance(v, int) and not isinstance(v, bool), "a whole number"),
}
_REQUIRED = ("track", "status")


def record_problem(record) -> str | None:
    """None for a record a reader can use; else what is wrong with it (naming the field)."""
    if not isinstance(record, dict):
        return "not a JSON object"
    for key in _REQUIRED:
        if key not in record:
            return f"'{key}' is missing"
    for key, (ok, what) in _FIELDS.items():
        if key in record and not ok(record[key]):
            return f"'{key}' must be {what}"
    return None


def latest_by_track(records: Iterable[dict]) -> dict[str, dict]:
    """The newest record of each track (by its `finished` time; file order breaks ties)."""
    latest: dict[str, dict] = {}
    for record in records:
        track = record["track"]
        if track not in latest or record.get("finished", 0) >= latest[track].get("finished", 0):
            latest[track] = record
    return latest


def is_finished(record: dict | None, out_dir: Path, settings: dict, seed: int, model: str) -> bool:
    """A song can be skipped when it was done with the same settings, seed and
    model, and every file it wrote is still there."""
    if not record or record.get("status") != DONE:
        return False
    if record.get("settings") != settings or record.get("seed") != seed or record.get("model") != model:
        return False
    outputs = record.get("outputs") or {}
    return bool(outputs) and all((out_dir / rel).is_file() for rel in outputs.values())
