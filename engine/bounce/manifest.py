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
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

from engine.errors import OutputError

SINGLE_NAME = "manifest.jsonl"
PART_GLOB = "manifest.rank*.jsonl"

DONE = "done"
FAILED = "failed"


def manifest_path(out_dir: Path, rank: int = 0, world_size: int = 1) -> Path:
    """Where this process writes: one file alone, one part per rank otherwise."""
    return out_dir / (SINGLE_NAME if world_size == 1 else f"manifest.rank{rank}.jsonl")


def manifest_parts(out_dir: Path) -> list[Path]:
    parts = sorted(out_dir.glob(PART_GLOB))
    single = out_dir / SINGLE_NAME
    return ([single] if single.is_file() else []) + parts


class ManifestWriter:
    """Appends records, one complete line per write, each one fsynced."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        except OSError as error:  # -o under /proc, a file or a read-only folder: before any song
            raise OutputError(f"cannot write the manifest '{self.path}': {error.strerror or error}; "
                              f"choose an output folder you can write to") from None
        # A run killed mid-line left no newline: start on a line of our own so
        # the cut line stays the only unreadable one.
        size = os.fstat(self._fd).st_size
        if size:
            with open(self.path, "rb") as handle:
                handle.seek(size - 1)
                if handle.read(1) != b"\n":
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


def read_records(paths: Iterable[Path]) -> list[dict]:
    """Every readable record of the given parts, in file order; lines cut short
    by a crash (or edited into nonsense) are skipped."""
    records = []
    for path in paths:
        try:
            text = Path(path).read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and "track" in record and "status" in record:
                records.append(record)
    return records


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
