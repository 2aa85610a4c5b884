"""Where the server may write and what it may read.

Every output folder a request names must lie inside the server's output root.
The check compares *resolved* real paths (symlinks followed, ".." removed), so
neither "root/../elsewhere" nor a symlink inside the root that points out of
it gets through. It runs when a job is accepted and again when it starts;
from then on the job writes into the folder it opened, walked down from the
root without following links (engine.output_folder), so a symlink swapped in
for the folder during the job redirects nothing.
"""

from __future__ import annotations

import logging
import errno
import os
import stat
from pathlib import Path
from typing import Iterable

from .protocol import BAD_INPUT, BAD_PATH, EXISTS, ProtocolError

log = logging.getLogger("msdm.serve")


def default_output_root() -> Path:
    return Path.home() / "MSDM Studio" / "outputs"


def prepare_output_root(root: str | os.PathLike) -> Path:
    """Create the root if needed and return its resolved real path. Only its
    owner may enter it (0700): what the server writes there is this user's
    audio. A root others can enter (made before, or by hand) is made private,
    with a warning in the log; one that cannot be (another user's, a file
    system without permissions) is used with a warning."""
    path = Path(root).expanduser()
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    resolved = path.resolve(strict=True)
    mode = stat.S_IMODE(os.stat(resolved).st_mode)
    if os.name == "posix" and mode & 0o077:
        try:
            os.chmod(resolved, mode & 0o700)
            log.warning("made the output root %s private (mode %04o -> %04o): only its owner can enter it",
                        resolved, mode, mode & 0o700)
        except OSError as error:
            log.warning("the output root %s can be entered by other users (mode %04o) and could not be made "
                        "private (%s): they may read what is written there", resolved, mode, error.strerror)
    return resolved


def _is_inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def contained_output_dir(out_dir: str, root: Path, job_id: str = "", create: bool = False) -> Path:
    """The resolved output folder for `out_dir`, which must be absolute and lie
    inside `root` (already resolved). With `create`, the folder is made and
    checked again after it exists (a component may be a symlink made meanwhile)."""
    raw = Path(out_dir)
    if not raw.is_absolute():
        raise ProtocolError(BAD_PATH, f"out_dir must be an absolute path, got {out_dir!r}; "
                                      f"write under the output root {root}", job_id)
    resolved = Path(os.path.realpath(raw))
    if not _is_inside(resolved, root):
        raise ProtocolError(BAD_PATH, f"out_dir {out_dir!r} is outside the server's output root {root}; "
                                      f"choose a folder inside it (or start msdm serve with --output-root)", job_id)
    try:
        info = os.stat(resolved)
    except FileNotFoundError:
        info = None
    except OSError as error:  # a name longer than the file system allows, a file where a folder must be...
        raise ProtocolError(BAD_PATH, path_problem("out_dir", out_dir, error), job_id) from None
    if info is not None and not stat.S_ISDIR(info.st_mode):
        raise ProtocolError(BAD_PATH, f"out_dir {out_dir!r} exists and is not a folder", job_id)
    if create:
        try:
            resolved.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ProtocolError(BAD_PATH, f"cannot create the folder {out_dir!r}: {error.strerror}", job_id) from None
        again = Path(os.path.realpath(resolved))
        if not _is_inside(again, root):
            raise ProtocolError(BAD_PATH, f"out_dir {out_dir!r} now leads outside the output root {root}", job_id)
        resolved = again
    return resolved


def check_outputs_free(out_dir: Path, names: Iterable[str], extension: str, overwrite: bool, job_id: str = "") -> None:
    """Refuse up front when an output exists and overwrite is off, naming the files."""
    if overwrite:
        return
    taken = [f"{name}.{extension}" for name in names if os.path.lexists(out_dir / f"{name}.{extension}")]
    if taken:
        raise ProtocolError(EXISTS, f"{', '.join(taken)} already exist(s) in {out_dir}; send overwrite 1 "
                                    f"to replace them, or choose another out_dir", job_id)


def check_input_file(path: str, what: str, job_id: str = "") -> Path:
    """An input must be an absolute path to an existing, readable regular file:
    opening a FIFO or a device could block the server. The file checks are the
    engine's (engine.audio.files.check_input_file), which the CLI and bounce run too."""
    from engine.audio.files import AudioInputError, check_input_file as check_audio_file

    raw = Path(path)
    if not raw.is_absolute():
        raise ProtocolError(BAD_PATH, f"{what} must be an absolute path, got {path!r}", job_id)
    try:
        check_audio_file(raw)
    except AudioInputError as error:
        raise ProtocolError(BAD_INPUT, f"{what}: {error}", job_id) from None
    except OSError as error:
        raise ProtocolError(BAD_PATH, path_problem(what, path, error), job_id) from None
    return raw


def path_problem(what: str, path: str, error: OSError) -> str:
    """An OSError about a path a request named, in words (never "[Errno 36]")."""
    shown = path if len(path) <= 120 else path[:57] + "..." + path[-60:]
    if error.errno == errno.ENAMETOOLONG:
        longest = max(len(part.encode("utf-8", "surrogateescape")) for part in Path(path).parts)
        return (f"{what} {shown!r} is too long for the file system: a name in it has {longest} bytes (most file "
                f"systems allow 255 per name, 4096 in all); choose a shorter name")
    if error.errno == errno.ENOTDIR:
        return f"{what} {shown!r}: a file is where a folder must be; choose another path"
    return f"{what} {shown!r}: {error.strerror or error}"
