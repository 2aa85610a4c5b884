"""engine.atomic: the one writer every output goes through."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from engine.atomic import AtomicFile, write_atomic

ROOT = Path(__file__).resolve().parent.parent


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _plain_file_mode(tmp_path: Path) -> int:
    plain = tmp_path / "plain"
    plain.write_text("x")
    return _mode(plain)


def test_text_bytes_and_by_name_writers_fsync_and_get_a_plain_files_permissions(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    old = os.umask(0o027)
    try:
        expected = _plain_file_mode(tmp_path)
        text = write_atomic(tmp_path / "a" / "t.txt", "héllo\n")
        data = write_atomic(tmp_path / "b.bin", b"\x00\x01")
        named = write_atomic(tmp_path / "c.out", lambda tmp: Path(tmp).write_bytes(b"by name"))
        # A library that replaces the file it is given (safetensors writes 0o600)
        # still leaves a plain file's permissions.
        model = write_atomic(tmp_path / "m.safetensors",
                             lambda tmp: save_file({"w": torch.zeros(2)}, str(tmp)))
    finally:
        os.umask(old)
    assert text.read_text(encoding="utf-8") == "héllo\n" and data.read_bytes() == b"\x00\x01"
    assert named.read_bytes() == b"by name"
    assert {_mode(p) for p in (text, data, named, model)} == {expected} == {0o640}
    assert len(synced) >= 6  # each file and its folder
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b.bin", "c.out", "m.safetensors", "plain", "t.txt"]


def test_a_failure_or_ctrl_c_leaves_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    for error in (ValueError("bad"), KeyboardInterrupt()):
        with pytest.raises(type(error)):
            with AtomicFile(target) as file:
                file.open("w").write("half")
                raise error
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_no_overwrite_refuses_before_writing(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(FileExistsError):
        write_atomic(target, "new", overwrite=False)
    assert target.read_text() == "old" and len(list(tmp_path.iterdir())) == 1


def test_nothing_else_in_the_product_renames_files_into_place():
    """One writer: a second temp-and-rename would drift (fsync, permissions)."""
    offenders = []
    for package in ("engine", "osc_bridge", "desktop", "training"):
        for path in (ROOT / package).rglob("*.py"):
            if path == ROOT / "engine" / "atomic.py":
                continue
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if re.search(r"os\.replace\(|mkstemp\(|NamedTemporaryFile\(", line):
                    offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
