"""The one atomic writer: every file MSDM Studio writes goes through here.

Stems, models, ONNX exports, results tables, dataset metadata: each is written
to a hidden temp file beside its destination, fsynced, given the permissions a
plain new file gets (0o666 less the umask; `tempfile.mkstemp` would make it
owner-only) and renamed over the destination; the folder is then fsynced so
the rename survives a crash. Readers see the old file or the whole new one,
never half of one. On any exception, Ctrl-C included, the temp file is removed
and the destination is left as it was.

`AtomicFile` is the writer and `write_atomic` its one-call form. A job's
outputs go through `AtomicFiles`: all files of the job in one output folder
held open (engine.output_folder), written to temp files first and renamed only
when all are complete and every destination has been checked again at that
moment (the folder is still the one opened, no folder or input is in a file's
place), so either all of them appear or none does and nothing of the user's is
touched before. This module is the one place where renames happen: a check of
the destination at write time belongs here.

A group survives a process killed at any moment (SIGKILL, power loss) through
a commit record, the classic write-ahead log of a redo-only transaction
(Gray & Reuter, "Transaction Processing", ch. 9; SQLite's rollback journal and
git's lock files work alike): before anything is written, the group makes
`.msdm-commit.<id>` in the output folder, naming its files, and holds an
advisory lock (flock) on it while it lives. Its temp and backup files carry
the same id. When every temp file is complete and synced, one line that
commits the group is appended to the record and synced: that line is the
moment the new set wins. Only then are the files renamed into place.

The next group that writes into the folder (or `recover_commits`) finishes
the work of any group whose record is no longer locked (its writer is gone):
a record with its commit line is rolled forward (the temp files still there
are renamed into place), one without is rolled back (its temp files removed:
no destination was touched yet); then the backups and the record go. So
after a crash and the next run, a group's files are all old or all new, and
no hidden leftovers remain. (A crash while a failed rename is being undone,
a second fault, is not covered.)
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import secrets
import stat
import time
from pathlib import Path, PurePath
from typing import IO, Callable, Iterable, Mapping

from engine.errors import DiskFullError, OutputError
from engine.output_folder import HAS_DIR_FD, OutputFolder

try:
    import fcntl
except ImportError:  # Windows: no commit records (no dir_fd either, engine.output_folder)
    fcntl = None

RECORD_PREFIX = ".msdm-commit."
_COMMIT = "commit "
# A record without its file list younger than this is being created, not dead.
RECORD_GRACE_S = 60.0


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

    def __init__(self, path: str | os.PathLike, *, overwrite: bool = True, dir_fd: int | None = None,
                 group: str | None = None) -> None:
        """`dir_fd`: the folder, held open (engine.output_folder), that `path`'s
        file name is taken relative to; the path is then used for messages
        only. Without it the path itself is used and its folders are made.
        `group`: the id of the AtomicFiles group (its commit record) that the
        temp and backup files are named after."""
        self.path = Path(path)
        self._group = group
        self._dir_fd = dir_fd
        self._name = self._local(self.path)
        try:
            if dir_fd is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            reason = ("a file is where its folder must be" if isinstance(error, (FileExistsError, NotADirectoryError))
                      else error.strerror or str(error))
            raise OutputError(f"cannot write '{self.path}': {reason}; choose a folder you can write to") from None
        if not overwrite and _lexists(self._name, dir_fd):
            raise FileExistsError(f"Refusing to overwrite existing file '{self.path}' (overwrite=False).")
        try:
            self.tmp, self._fd = _create_temp(self.path, dir_fd, group)
        except OSError as error:
            # Nothing was written yet: a folder that cannot be made or written
            # (read-only, /proc, a file in the path) is the user's to fix.
            raise OutputError(f"cannot write '{self.path}': {error.strerror or error}; "
                              f"choose a folder you can write to") from None
        self._tmp_name = self._local(self.tmp)
        self._file: IO | None = None
        # The permissions the temp file was made with (0o666 less the umask):
        # a library writing by name may replace the file with its own (safetensors
        # makes 0o600), so they are put back before the rename.
        self._mode = stat.S_IMODE(os.fstat(self._fd).st_mode)
        # For AtomicFiles' undo: a hard link to the file this one replaces.
        self._old: str | None = None
        self._existed = self._replaced = False

    def _local(self, path: Path) -> str:
        """How the system calls name `path`: relative to the folder held open, or the path itself."""
        return path.name if self._dir_fd is not None else str(path)

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
            self.prepare()
            self.replace()
        except BaseException:
            self.abort()
            raise
        _fsync_dir(self.path.parent, self._dir_fd)
        return self.path

    def prepare(self) -> None:
        """fsync the data and give it a plain new file's permissions: ready to be renamed."""
        try:
            self._close(sync=True)
        except OSError as error:
            raise disk_full_or(error, self.path) from None
        os.chmod(self._tmp_name, self._mode, dir_fd=self._dir_fd)

    def replace(self) -> None:
        os.replace(self._tmp_name, self._name, src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd)
        self._replaced = True

    def keep_old(self) -> None:
        """Before a group's renames: hard-link the file about to be replaced to
        a hidden name, so `undo` can put it back. On a file system without hard
        links (FAT) that file cannot be put back; the checks before the renames
        are then the only guard."""
        try:
            os.stat(self._name, dir_fd=self._dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        self._existed = True
        old = self._local(self.path.with_name(f".{self.path.name}.{self._group or secrets.token_hex(6)}.old"))
        with contextlib.suppress(OSError):
            os.link(self._name, old, src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd, follow_symlinks=False)
            self._old = old

    def undo(self) -> None:
        """After a group's rename failed: put back what this file replaced, or
        remove it where nothing was there. A backup that cannot be put back is
        left where it is (the user's file, under its hidden name)."""
        if self._replaced:
            try:
                if self._old is not None:
                    os.replace(self._old, self._name, src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd)
                    self._old = None
                elif not self._existed:
                    os.unlink(self._name, dir_fd=self._dir_fd)
            except OSError:
                return
            self._replaced = False
        self.forget_old()

    def forget_old(self) -> None:
        if self._old is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._old, dir_fd=self._dir_fd)
            self._old = None

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._close(sync=False)
        with contextlib.suppress(OSError):
            os.unlink(self._tmp_name, dir_fd=self._dir_fd)

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
            fd = os.open(self._tmp_name, os.O_RDWR | getattr(os, "O_BINARY", 0), dir_fd=self._dir_fd)
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


class AtomicFiles(CommitOnExit):
    """Several files in one output folder that appear together or not at all:
    one job's stems. `targets` maps a key to a path relative to `folder`;
    `files[key]` is its AtomicFile, `paths[key]` where it goes.

    Before anything is written, and again right before the renames, every
    destination is checked: a folder or a non-regular file where a file must
    go, or one of the job's `inputs` (the same file by any path: a hard link or
    a symbolic link too), is refused with one OutputError naming them all;
    with `overwrite` off, existing files with FileExistsError. Then every
    rename runs; should one fail anyway, those done are undone (the files they
    replaced come back from hard links made just before)."""

    def __init__(self, folder: OutputFolder, targets: Mapping[str, str | os.PathLike], *, overwrite: bool = True,
                 inputs: Iterable[str | os.PathLike] = ()) -> None:
        self.folder = folder
        self.overwrite = overwrite
        self.relative = {key: _inside(target) for key, target in targets.items()}
        self.paths = {key: folder.path / relative for key, relative in self.relative.items()}
        self.files: dict[str, AtomicFile] = {}
        self._inputs = _identities(inputs)
        self._record: CommitRecord | None = None
        try:
            recover_commits(folder)
            self._check_targets()
            self._record = CommitRecord.start(folder, list(self.relative.values()))
            group = self._record.id if self._record is not None else None
            for key, relative in self.relative.items():
                self.files[key] = AtomicFile(self.paths[key], dir_fd=folder.subfolder(relative.parent), group=group)
        except BaseException as error:
            self.abort()
            if isinstance(error, OSError) and not isinstance(error, FileExistsError):
                raise OutputError(f"cannot write in the output folder '{folder.path}': {error.strerror or error}; "
                                  f"choose a folder you can write to") from None
            raise

    def __getitem__(self, key: str) -> AtomicFile:
        return self.files[key]

    def commit(self) -> dict[str, Path]:
        files = list(self.files.values())
        try:
            for file in files:
                file.prepare()
            # The moment of writing: the folder is the one opened when the job
            # started, and every destination may still be replaced.
            self.folder.check_unchanged()
            self._check_targets()
            for file in files:
                file.keep_old()
            if self._record is not None:
                for fd in {file._dir_fd for file in files}:
                    _fsync_dir(self.folder.path, fd)
                self._record.decide()  # from here on, a crash is rolled forward
            for file in files:
                file.replace()
        except BaseException:
            for file in files:
                file.undo()
            self.abort()
            raise
        for file in files:
            file.forget_old()
        for fd in {file._dir_fd for file in files}:
            _fsync_dir(self.folder.path, fd)
        if self._record is not None:
            self._record.finish()
        return dict(self.paths)

    def abort(self) -> None:
        for file in self.files.values():
            file.abort()
        if self._record is not None:
            self._record.finish()

    def _check_targets(self) -> None:
        problems, taken = [], []
        for key, relative in self.relative.items():
            dir_fd = self.folder.subfolder(relative.parent)
            name = relative.name if dir_fd is not None else str(self.paths[key])
            try:
                info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            path = self.paths[key]
            if stat.S_ISDIR(info.st_mode):
                problems.append(f"'{path}' is a folder")
            elif not (stat.S_ISREG(info.st_mode) or stat.S_ISLNK(info.st_mode)):
                problems.append(f"'{path}' is not a regular file")
            elif _identity(name, dir_fd) in self._inputs:
                problems.append(f"'{path}' is the input '{self._inputs[_identity(name, dir_fd)]}', "
                                f"which the output would replace")
            elif not self.overwrite:
                taken.append(f"'{path}'")
        if problems:
            raise OutputError(f"cannot write the outputs: {'; '.join(problems)}. Nothing was written: "
                              f"choose another output folder (or move what is in the way)")
        if taken:
            raise FileExistsError(f"Refusing to overwrite existing file(s) {', '.join(taken)} (overwrite=False).")


class CommitRecord:
    """A group's commit record, `.msdm-commit.<id>` in the output folder
    (module docstring): line 1 the files (JSON list of paths relative to the
    folder), line 2, once decided, "commit <sha256 of line 1>". Locked
    (flock) while its writer lives."""

    def __init__(self, folder: OutputFolder, record_id: str, fd: int, files: list[PurePath]) -> None:
        self.folder, self.id, self._fd, self.files = folder, record_id, fd, files

    @property
    def name(self) -> str:
        return RECORD_PREFIX + self.id

    @classmethod
    def start(cls, folder: OutputFolder, files: list[PurePath]) -> "CommitRecord | None":
        """Make and lock the record of a new group (None where the platform has
        no dir_fd or flock: the group then commits without one, as before)."""
        if folder.fd is None or fcntl is None or not HAS_DIR_FD:
            return None
        record_id = secrets.token_hex(6)
        fd = os.open(RECORD_PREFIX + record_id, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=folder.fd)
        try:
            # Blocking: between the O_EXCL create above and this lock the record
            # is unlocked and empty, and a group recovering the folder may hold
            # it for the moment it takes to see that (it leaves young empty
            # records alone, _recover); a non-blocking lock failed this job then.
            fcntl.flock(fd, fcntl.LOCK_EX)
            _write_all(fd, _files_line(files))
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(RECORD_PREFIX + record_id, dir_fd=folder.fd)
            raise
        return cls(folder, record_id, fd, files)

    def decide(self) -> None:
        """The commit line: written and synced, the new files win."""
        _write_all(self._fd, (_COMMIT + hashlib.sha256(_files_line(self.files)).hexdigest() + "\n").encode())
        os.fsync(self._fd)

    def finish(self) -> None:
        """Remove the record (its group is complete or undone) and let go of it."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.name, dir_fd=self.folder.fd)
        _fsync_dir(self.folder.path, self.folder.fd)
        os.close(self._fd)  # the lock goes with it
        self._fd = None


def _files_line(files: list[PurePath]) -> bytes:
    return (json.dumps([f.as_posix() for f in files]) + "\n").encode("utf-8")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def recover_commits(folder: OutputFolder) -> int:
    """Finish the groups whose writer died in `folder` (module docstring):
    roll forward those with a commit line, roll back the others, remove their
    temp files, backups and records. Records still locked (a writer at work,
    in this process or another) are left alone. Returns the groups finished."""
    if folder.fd is None or fcntl is None or not HAS_DIR_FD:
        return 0
    try:
        listing = os.open(".", os.O_RDONLY | os.O_DIRECTORY, dir_fd=folder.fd)
        try:
            names = [n for n in os.listdir(listing) if n.startswith(RECORD_PREFIX)]
        finally:
            os.close(listing)
    except OSError:
        return 0  # a folder we cannot list: nothing to recover that we could see
    finished = 0
    for name in names:
        with contextlib.suppress(OSError, ValueError):
            finished += _recover(folder, name)
    return finished


def _recover(folder: OutputFolder, name: str) -> int:
    fd = os.open(name, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=folder.fd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return 0
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return 0  # its writer is alive
        text = os.read(fd, 1 << 20).decode("utf-8", "replace")
        if "\n" not in text and time.time() - os.fstat(fd).st_mtime < RECORD_GRACE_S:
            # Its list not written yet and new: a writer between creating the
            # record and locking it (CommitRecord.start), not a dead one.
            # Removing it would leave that writer's group without its record.
            return 0
        group = name[len(RECORD_PREFIX):]
        lines = text.split("\n")
        try:
            files = [_inside(f) for f in json.loads(lines[0])]
        except (ValueError, TypeError):
            files = []  # cut short before its list was written: it made no file yet
        committed = (len(lines) > 1 and files
                     and lines[1] == _COMMIT + hashlib.sha256(_files_line(files)).hexdigest())
        for relative in files:
            dir_fd = folder.existing_subfolder(relative.parent)
            if dir_fd is None:
                continue
            tmp, old = f".{relative.name}.{group}.tmp", f".{relative.name}.{group}.old"
            if committed and _lexists(tmp, dir_fd):
                os.replace(tmp, relative.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)  # roll forward
            for leftover in (tmp, old):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(leftover, dir_fd=dir_fd)
            _fsync_dir(folder.path / relative.parent, dir_fd)
        os.unlink(name, dir_fd=folder.fd)
        _fsync_dir(folder.path, folder.fd)
        return 1
    finally:
        os.close(fd)


def disk_full_or(error: OSError, path: Path) -> OSError | DiskFullError:
    """ENOSPC and EDQUOT as a DiskFullError that says so (with the space left);
    any other error as it is."""
    if error.errno not in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return error
    free = ""
    with contextlib.suppress(OSError, AttributeError):
        info = os.statvfs(path.parent)
        free = f" ({info.f_bavail * info.f_frsize / 1e6:.1f} MB free there now)"
    quota = " or the quota of this user" if error.errno != errno.ENOSPC else ""
    return DiskFullError(f"cannot write '{path}': the disk{quota} is full{free}. Nothing was changed and the "
                         f"partial files were removed: free some space, or choose an output folder on another disk")


def _inside(target: str | os.PathLike) -> PurePath:
    relative = PurePath(target)
    if relative.is_absolute() or ".." in relative.parts or not relative.name:
        raise ValueError(f"{target!r} is not a file name inside the output folder")
    return relative


def _identity(name: str, dir_fd: int | None) -> tuple[int, int] | None:
    """(device, inode) of the file `name` leads to: equal for every path and hard link of one file."""
    try:
        info = os.stat(name, dir_fd=dir_fd)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def _identities(paths: Iterable[str | os.PathLike]) -> dict[tuple[int, int], str]:
    found = {}
    for path in paths:
        identity = _identity(os.fspath(path), None)
        if identity is not None:
            found[identity] = os.fspath(path)
    return found


def _lexists(name: str, dir_fd: int | None) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _create_temp(path: Path, dir_fd: int | None = None, group: str | None = None) -> tuple[Path, int]:
    """A hidden, unique temp file next to `path`: (path, fd). Created with mode
    0o666 so the umask applies, as for any new file the user makes. In a
    group, named after the group's id (its commit record finds it so)."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(1 if group else 100):
        tmp = path.with_name(f".{path.name}.{group or secrets.token_hex(6)}.tmp")
        try:
            return tmp, os.open(tmp.name if dir_fd is not None else tmp, flags, 0o666, dir_fd=dir_fd)
        except FileExistsError:
            continue
    raise FileExistsError(f"Could not create a unique temporary file next to '{path}'")


def _fsync_dir(directory: Path, dir_fd: int | None = None) -> None:
    """Persist the rename itself (POSIX); best effort, a failure here loses no data."""
    if os.name != "posix":
        return
    with contextlib.suppress(OSError):
        dfd = os.open("." if dir_fd is not None else directory, os.O_RDONLY | os.O_DIRECTORY, dir_fd=dir_fd)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
