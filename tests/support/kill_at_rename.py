"""Writers that kill themselves (SIGKILL: nothing runs after it) right before
their Nth call that changes a folder (tests/test_atomic_crash.py).

`write_group_killed_at(folder, n)`: in a forked child, writes FOLDER/{bass,
drums,guitar,piano,mix}.txt and sub/notes.txt as one engine.atomic.AtomicFiles
group, each holding "new <name>", killed before its nth os.replace, os.rename,
os.link or os.unlink (n = 0: never); returns (wait status, calls made).

    python kill_at_rename.py FOLDER N MODEL SECONDS SEED

runs `msdm generate` into FOLDER, killed before its Nth os.replace (a rename
into place, as in issue 21's finding: "SIGKILL at the third rename")."""

from __future__ import annotations

import os
import signal
import sys

NAMES = ("bass.txt", "drums.txt", "guitar.txt", "piano.txt", "mix.txt", "sub/notes.txt")

class _KillAt:
    """Wraps os functions so that the nth call of any of them kills the process first."""

    def __init__(self, kill_at: int, names: tuple[str, ...]) -> None:
        self.kill_at, self.calls = kill_at, 0
        for name in names:
            setattr(os, name, self._counted(getattr(os, name)))

    def _counted(self, real):
        def call(*args, **kwargs):
            self.calls += 1
            if self.calls == self.kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*args, **kwargs)
        return call

def write_group_killed_at(folder, kill_at: int) -> tuple[int, int]:
    from engine.atomic import AtomicFiles
    from engine.output_folder import OutputFolder

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: write, report the count, leave without running anything of pytest's
        try:
            os.close(read)
            counter = _KillAt(kill_at, ("replace", "rename", "link", "unlink"))
            with OutputFolder(folder) as out, AtomicFiles(out, {name: name for name in NAMES}) as files:
                for name in NAMES:
                    files[name].open("w").write(f"new {name}")
            os.write(write, str(counter.calls).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        calls = pipe.read()
    _, status = os.waitpid(pid, 0)
    return status, int(calls or 0)

def main() -> int:
    folder, kill_at, model, seconds, seed = sys.argv[1:6]
    from engine.cli import main as msdm

    _KillAt(int(kill_at), ("replace",))
    return msdm(["generate", "--model", model, "--seconds", seconds, "--steps", "2", "--seed", seed, "-q",
                 "-o", folder])

if __name__ == "__main__":
    sys.exit(main())
