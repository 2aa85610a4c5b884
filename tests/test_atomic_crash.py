"""A group of files killed at any moment (issue 21, finding 4): SIGKILL right
before each call that changes the folder (every rename, link and unlink of a
commit), then the next run: the group's files are all old or all new, and no
hidden temp file, backup or commit record is left (engine/atomic.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.atomic import AtomicFiles, recover_commits
from engine.audio.files import read_audio
from engine.output_folder import OutputFolder
from support.kill_at_rename import NAMES, write_group_killed_at

pytestmark = pytest.mark.skipif(os.name != "posix", reason="commit records need dir_fd and flock (POSIX)")

ROOT = Path(__file__).resolve().parent.parent
WRITER = ROOT / "tests" / "support" / "kill_at_rename.py"


def generate_killed_at(folder: Path, kill_at: int, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(WRITER), str(folder), str(kill_at), *extra], capture_output=True,
                          text=True, timeout=300, env=env)


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def recover(folder: Path) -> int:
    with OutputFolder(folder) as out:
        return recover_commits(out)


def test_a_group_killed_at_every_rename_is_all_old_or_all_new_after_the_next_run(tmp_path):
    assert write_group_killed_at(tmp_path / "count", 0)[0] == 0
    # Over existing files: each is linked to a backup, then renamed over (and the record removed).
    status, calls = write_group_killed_at(tmp_path / "count", 0)
    assert status == 0 and calls >= 2 * len(NAMES), calls
    outcomes = []
    for kill_at in range(1, calls + 1):
        folder = tmp_path / f"kill{kill_at}"
        (folder / "sub").mkdir(parents=True)
        for name in NAMES:
            (folder / name).write_text(f"old {name}")
        (folder / "extra.txt").write_text("mine")
        status, _ = write_group_killed_at(folder, kill_at)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (kill_at, status)
        if kill_at % 2:
            recover(folder)  # the next run's first step, on its own
        else:
            # the next run itself: another group in the folder finishes the dead one first
            with OutputFolder(folder) as out, AtomicFiles(out, {"other.txt": "other.txt"}) as files:
                files["other.txt"].open("w").write("other")
            (folder / "other.txt").unlink()
        contents = {(folder / name).read_text() for name in NAMES}
        assert contents in ({f"old {n}" for n in NAMES}, {f"new {n}" for n in NAMES}), (kill_at, contents)
        outcomes.append(contents == {f"new {n}" for n in NAMES})
        # No hidden leftovers: every temp file, backup and the record are gone; the user's file stays.
        assert listing(folder) == sorted([*NAMES, "sub", "extra.txt"]), (kill_at, listing(folder))
        assert (folder / "extra.txt").read_text() == "mine"
    # Killed before the commit line: old; after it: new. Both happen, in that order.
    assert outcomes == sorted(outcomes) and outcomes[0] is False and outcomes[-1] is True, outcomes


def test_a_record_still_locked_by_a_live_writer_is_left_alone(tmp_path):
    with OutputFolder(tmp_path) as out:
        files = AtomicFiles(out, {"a.txt": "a.txt"})
        files["a.txt"].open("w").write("new")
        before = listing(tmp_path)
        assert recover(tmp_path) == 0 and listing(tmp_path) == before  # its temp file and record stay
        files.commit()
    assert listing(tmp_path) == ["a.txt"] and (tmp_path / "a.txt").read_text() == "new"


def test_msdm_generate_killed_at_the_third_rename_leaves_stems_that_sum_to_the_mix(tmp_path, tiny_model_path):
    """The finding: SIGKILL at the third rename of `msdm generate` over 5 stems left
    2 new and 3 old, a mix.wav that no longer summed to them, and 8 leftovers."""
    from engine.cli import main as msdm

    out = tmp_path / "out"
    assert msdm(["generate", "--model", str(tiny_model_path), "--seconds", "0.2", "--steps", "2", "--seed", "3",
                 "-q", "-o", str(out)]) == 0
    old = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(old) == ["bass.wav", "drums.wav", "guitar.wav", "mix.wav", "piano.wav"]
    result = generate_killed_at(out, 3, str(tiny_model_path), "0.2", "4")
    assert result.returncode == -signal.SIGKILL, result.stderr
    recover(out)
    now = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(now) == sorted(old), sorted(now)  # no leftovers
    assert all(now[name] != old[name] for name in old)  # the commit line was written: all new
    stems = [read_audio(out / f"{s}.wav").samples for s in ("bass", "drums", "guitar", "piano")]
    scale = sum(float(np.abs(s).max()) for s in stems)
    np.testing.assert_allclose(sum(stems), read_audio(out / "mix.wav").samples,
                               atol=4 * np.finfo(np.float32).eps * scale)


def test_a_record_being_created_is_not_taken_for_a_dead_one(tmp_path):
    """A writer makes its record (O_EXCL) and then locks it: in between it is
    unlocked and empty. Another group recovering the folder at that moment
    (bounce --jobs 2: one song's writer starting as another's is created) must
    leave it: removing it left the first group without a record, and holding
    its lock failed that song. Once old, such a record is a dead writer's."""
    from engine.atomic import RECORD_GRACE_S, RECORD_PREFIX

    record = tmp_path / f"{RECORD_PREFIX}0123456789ab"
    record.write_bytes(b"")
    assert recover(tmp_path) == 0 and record.exists()
    record.write_bytes(b'["a.t')              # cut short in its list: still being written
    assert recover(tmp_path) == 0 and record.exists()
    old = record.stat().st_mtime - RECORD_GRACE_S - 1
    os.utime(record, (old, old))
    assert recover(tmp_path) == 1 and not record.exists()
