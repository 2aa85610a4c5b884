"""The folder a job writes into, opened once and held open while the job runs.

Checking an output folder's path when a job starts is not enough: a folder
swapped for a symbolic link while the job runs would send every file through
the link (issue 14). Of the two ways to close that gap, this module takes the
second:

- check `realpath(folder)` again right before each rename: the path can still
  change between that check and the rename, which looks the path up anew;
- open the folder once, as a directory file descriptor, and create, check and
  rename every file relative to it (the *at() system calls: Python's
  `dir_fd=`): the folder is never looked up by name again, so no link swapped
  in later can redirect a file.

The folder is opened one component at a time with O_NOFOLLOW from a trusted
base: the server's output root, or "/" for a path the user gave (resolved
once, so the user's own links, such as ~/Music -> /Volumes/..., still work).
A link that appears in the path after that is refused.

What a held descriptor cannot prevent: someone who can write beside the folder
moves the whole folder elsewhere during the job; files written into it move
with it, as they would if moved after the job. `check_unchanged` notices it
(the path no longer leads to the folder held open), and engine.atomic then
renames nothing into place.

Folders that did not exist are created and remembered: a job that fails
removes those it created, when empty, never one that was there before.

Where the platform has no dir_fd calls (Windows), paths are used and the
resolved folder is compared before the renames.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path, PurePath

from engine.errors import OutputError

HAS_DIR_FD = ({os.open, os.mkdir, os.rmdir, os.stat, os.rename, os.unlink, os.link, os.chmod} <= os.supports_dir_fd
              and hasattr(os, "O_DIRECTORY") and hasattr(os, "O_NOFOLLOW"))
# O_PATH (Linux) opens a folder as a handle for the *at() calls without read
# permission on it: looking a path up needs only search permission, and so
# should this. O_NOFOLLOW with O_DIRECTORY refuses a symbolic link (ENOTDIR).
_DIR_FLAGS = (getattr(os, "O_PATH", os.O_RDONLY) | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0)
              | getattr(os, "O_CLOEXEC", 0))
_BASE_FLAGS = _DIR_FLAGS & ~getattr(os, "O_NOFOLLOW", 0)  # the base is trusted: its links are followed


class OutputFolder:
    """An output folder held open: `fd` (None without dir_fd support) is what
    engine.atomic names its files relative to; `path` is the folder as given,
    for messages and the paths a job reports.

    `inside`: a folder (already resolved) that `path` must lie in, the server's
    output root; `path` is then walked from it as given, with no link allowed.
    As a context manager: closed on exit, and on an exception the folders it
    created are removed when empty."""

    def __init__(self, path: str | os.PathLike, *, inside: str | os.PathLike | None = None) -> None:
        self.path = Path(path)
        self._base, self._parts = _base_and_parts(self.path, inside)
        self._fds: list[int] = []                          # every descriptor opened, closed by close()
        self._created: list[tuple[int | None, str]] = []   # (parent's fd, name) of folders made here
        self._subfolders: dict[PurePath, int | None] = {}
        self.fd: int | None = None
        try:
            if HAS_DIR_FD:
                self.fd = self._walk(self._open(self._base, flags=_BASE_FLAGS), self._parts, create=True)
            else:
                self._make_by_path(self._base.joinpath(*self._parts))
                self._identity = _identity_of_path(self._base.joinpath(*self._parts))
        except OSError as error:
            self.close(failed=True)
            raise OutputError(f"cannot use '{self.path}' as the output folder: {_reason(error)}; "
                              f"choose a folder you can write to") from None
        except BaseException:
            self.close(failed=True)
            raise
        self._subfolders[PurePath()] = self.fd

    def __enter__(self) -> "OutputFolder":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(failed=exc_type is not None)

    def subfolder(self, relative: str | os.PathLike) -> int | None:
        """The descriptor of a folder below this one (made if missing, e.g. a
        bounce pattern's `{track}/`), for files named relative to it."""
        relative = PurePath(relative)
        if relative.is_absolute() or ".." in relative.parts:
            raise ValueError(f"{relative} is not a folder inside {self.path}")
        if relative not in self._subfolders:
            try:
                if self.fd is None:
                    self._make_by_path(self._base.joinpath(*self._parts, *relative.parts))
                    self._subfolders[relative] = None
                else:
                    self._subfolders[relative] = self._walk(self.fd, relative.parts, create=True)
            except OSError as error:
                raise OutputError(f"cannot make the folder '{self.path / relative}': {_reason(error)}") from None
        return self._subfolders[relative]

    def existing_subfolder(self, relative: str | os.PathLike) -> int | None:
        """The descriptor of a folder below this one that exists (None when it
        does not, or without dir_fd support); nothing is made."""
        relative = PurePath(relative)
        if self.fd is None or relative.is_absolute() or ".." in relative.parts:
            return None
        if relative in self._subfolders:
            return self._subfolders[relative]
        try:  # not remembered as a subfolder: check_unchanged looks only at those the job writes into
            return self._walk(self.fd, relative.parts, create=False)
        except OSError:
            return None

    def check_unchanged(self) -> None:
        """Refuse (OutputError) when the path no longer leads to the folders held
        open: one of them was moved, or replaced by another folder or a link."""
        try:
            if self.fd is None:
                unchanged = _identity_of_path(self._base.joinpath(*self._parts)) == self._identity
            else:
                unchanged = self._unchanged()
        except OSError:
            unchanged = False
        if not unchanged:
            raise OutputError(f"the output folder '{self.path}' was moved or replaced while the job ran; "
                              f"nothing was written there. Run the job again")

    def close(self, failed: bool = False) -> None:
        """Let go of the folder; after a failure, first remove the folders made
        here that are still empty (deepest first)."""
        if failed:
            for parent, name in reversed(self._created):
                with contextlib.suppress(OSError):
                    os.rmdir(name, dir_fd=parent)
        self._created.clear()
        while self._fds:
            with contextlib.suppress(OSError):
                os.close(self._fds.pop())

    # -- with descriptors -------------------------------------------------

    def _open(self, name: str | os.PathLike, dir_fd: int | None = None, flags: int = _DIR_FLAGS) -> int:
        fd = os.open(name, flags, dir_fd=dir_fd)
        self._fds.append(fd)
        return fd

    def _walk(self, fd: int, parts: tuple[str, ...], create: bool) -> int:
        """Open parts[0]/parts[1]/... below `fd`, one at a time, never through a link."""
        for part in parts:
            try:
                fd = self._open(part, fd)
            except FileNotFoundError:
                if not create:
                    raise
                with contextlib.suppress(FileExistsError):  # made meanwhile by someone else: use it
                    os.mkdir(part, 0o777, dir_fd=fd)
                    self._created.append((fd, part))
                fd = self._open(part, fd)
        return fd

    def _unchanged(self) -> bool:
        opened = len(self._fds)
        try:
            folder = self._walk(self._open(self._base, flags=_BASE_FLAGS), self._parts, create=False)
            for relative, held in self._subfolders.items():
                if _identity(self._walk(folder, relative.parts, create=False)) != _identity(held):
                    return False
            return True
        finally:
            while len(self._fds) > opened:
                os.close(self._fds.pop())

    # -- without (no dir_fd support) --------------------------------------

    def _make_by_path(self, folder: Path) -> None:
        missing = []
        while not folder.exists() and folder != folder.parent:
            missing.append(folder)
            folder = folder.parent
        for folder in reversed(missing):
            folder.mkdir()
            self._created.append((None, str(folder)))


def _base_and_parts(path: Path, inside: str | os.PathLike | None) -> tuple[Path, tuple[str, ...]]:
    """Where the walk starts (trusted, links followed) and the names below it."""
    if inside is None:
        real = Path(os.path.realpath(path))
        return Path(real.anchor), real.parts[1:]
    try:
        relative = path.relative_to(inside)
    except ValueError:
        relative = None
    if relative is None or ".." in relative.parts:
        raise OutputError(f"the output folder '{path}' is not inside '{inside}'")
    return Path(inside), relative.parts


def _identity(fd: int) -> tuple[int, int]:
    info = os.fstat(fd)
    return info.st_dev, info.st_ino


def _identity_of_path(folder: Path) -> tuple[int, int]:
    info = os.stat(os.path.realpath(folder))
    return info.st_dev, info.st_ino


def _reason(error: OSError) -> str:
    where = f" ('{error.filename}')" if error.filename else ""
    return f"{error.strerror or error}{where}"
