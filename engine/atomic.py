"""The one atomic writer: every file MSDM Studio writes goes through here.

Stems, models, ONNX exports, results tables, dataset metadata: each is written
to a hidden temp file beside its destination, fsynced, given the permissions a
plain new file gets (0o666 less the umask; `tempfile.mkstemp` would make it
owner-only) and renamed over the destination; the folder is then fsynced so
the rename survives a crash. Readers see the old file or the whole new one,
never half of one. On any exception, Ctrl-C included, the temp file is removed
and the destination is left as it was.

`AtomicFile` is the writer (several files can be committed together by their
caller); `write_atomic` is the one-call form. `AtomicFile.commit` is the one
place where the rename happens: a check of the destination at write time
belongs there.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path
from typing import IO, Callable


class CommitOnExit:
    """As a context manager: `commit()` when the block succeeds, `abort()` when
    it raises (KeyboardInterrupt too, so Ctrl-C during a long write cleans up)."""

    def commit(self):
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


class AtomicFile(CommitOnExit):
    """A destination file being written: `open()` it (or hand `by_name()` to a
    library that writes by path), then `commit()` or `abort()`; as a context manager it
    commits when the block succeeds and aborts when it raises."""

    def __init__(self, path: str | os.PathLike, *, overwrite: bool = True) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not overwrite and self.path.exists():
            raise FileExistsError(f"Refusing to overwrite existing file '{self.path}' (overwrite=False).")
        self.tmp, self._fd = _create_temp(self.path)
        self._file: IO | None = None
        # The permissions the temp file was made with (0o666 less the umask):
        # a library writing by name may replace the file with its own (safetensors
        # makes 0o600), so they are put back before the rename.
        self._mode = stat.S_IMODE(os.fstat(self._fd).st_mode)

    def open(self, mode: str = "wb", **kwargs) -> IO:
        """The temp file as a Python file object (once; binary or text mode)."""
        if self._fd is None:
            raise ValueError(f"{self.tmp} is already open or finished")
        fd, self._fd = self._fd, None
        self._file = os.fdopen(fd, mode, **kwargs)
        return self._file

    def by_name(self) -> Path:
        """The temp file's path, for a library that writes by file name
        (safetensors, torch.onnx, matplotlib); our handle on it is closed."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
        return self.tmp

    def commit(self) -> Path:
        """fsync the data, rename over the destination, fsync the folder."""
        try:
            self._close(sync=True)
            os.chmod(self.tmp, self._mode)
            os.replace(self.tmp, self.path)
        except BaseException:
            self.abort()
            raise
        _fsync_dir(self.path.parent)
        return self.path

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._close(sync=False)
        with contextlib.suppress(OSError):
            os.unlink(self.tmp)

    def _close(self, sync: bool) -> None:
        if self._file is not None and not self._file.closed:
            self._file.flush()
            if sync:
                os.fsync(self._file.fileno())
            self._file.close()
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
        if sync and self._file is None:
            # Written by path (safetensors, torch.onnx, matplotlib): sync what they wrote.
            fd = os.open(self.tmp, os.O_RDWR | getattr(os, "O_BINARY", 0))
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def write_atomic(path: str | os.PathLike, content: str | bytes | Callable[[Path], object], *,
                 overwrite: bool = True, encoding: str = "utf-8") -> Path:
    """Write text, bytes, or whatever `content(tmp_path)` writes to that path
    (a library that writes by file name), atomically. Returns the destination."""
    with AtomicFile(path, overwrite=overwrite) as target:
        if isinstance(content, bytes):
            target.open("wb").write(content)
        elif isinstance(content, str):
            target.open("w", encoding=encoding, newline="").write(content)
        else:
            content(target.by_name())
    return target.path


def _create_temp(path: Path) -> tuple[Path, int]:
    """A hidden, unique temp file next to `path`: (path, fd). Created with mode
    0o666 so the umask applies, as for any new file the user makes."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            return tmp, os.open(tmp, flags, 0o666)
        except FileExistsError:
            continue
    raise FileExistsError(f"Could not create a unique temporary file next to '{path}'")


def _fsync_dir(directory: Path) -> None:
    """Persist the rename itself (POSIX); best effort, a failure here loses no data."""
    if os.name != "posix":
        return
    with contextlib.suppress(OSError):
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
