"""engine.atomic: the one writer every output goes through."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from engine.atomic import AtomicFile, AtomicFiles, write_atomic
from engine.errors import OutputError
from engine.output_folder import OutputFolder

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


@pytest.mark.parametrize("where", ["proc", "under_a_file"])
def test_a_single_file_that_cannot_be_written_is_a_user_error(tmp_path, where):
    """Issue 14, finding 10, for the writers outside jobs (export-onnx -o,
    import-checkpoint -o, training files): one OutputError, not a traceback."""
    plain = tmp_path / "plain.txt"
    plain.write_text("mine")
    target = Path("/proc/msdm-no-such/out.onnx") if where == "proc" else plain / "out.onnx"
    with pytest.raises(OutputError, match="cannot write .*choose a folder you can write to"):
        write_atomic(target, b"data")
    assert plain.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["plain.txt"]


def _write_group(folder: OutputFolder, names, text: str, **options) -> dict:
    with AtomicFiles(folder, {name: name for name in names}, **options) as files:
        for name in names:
            files[name].open("w").write(text)
    return files.paths


def test_a_group_appears_together_and_a_failed_rename_is_undone(tmp_path, monkeypatch):
    for name in ("a.txt", "b.txt"):
        (tmp_path / name).write_text("old")
    with OutputFolder(tmp_path) as folder:
        paths = _write_group(folder, ["a.txt", "new/b.txt"], "new")
    assert paths == {"a.txt": tmp_path / "a.txt", "new/b.txt": tmp_path / "new" / "b.txt"}
    assert (tmp_path / "new" / "b.txt").read_text() == "new"

    real_replace = os.replace

    def fail_on_c(src, dst, **kwargs):  # the third rename fails, after a and b were replaced
        if dst == "c.txt" and src.endswith(".tmp"):
            raise OSError(28, "No space left on device")
        return real_replace(src, dst, **kwargs)

    monkeypatch.setattr(os, "replace", fail_on_c)
    with OutputFolder(tmp_path) as folder, pytest.raises(OSError, match="No space"):
        _write_group(folder, ["a.txt", "b.txt", "c.txt"], "newer")
    assert [(tmp_path / n).read_text() for n in ("a.txt", "b.txt")] == ["new", "old"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt", "new"]  # no temp, no backup, no c


def test_a_group_refuses_every_bad_destination_before_writing(tmp_path):
    source = tmp_path / "source.wav"
    source.write_text("input")
    (tmp_path / "folder.txt").mkdir()
    os.link(source, tmp_path / "hard.txt")
    (tmp_path / "taken.txt").write_text("mine")
    with OutputFolder(tmp_path) as folder:
        with pytest.raises(OutputError) as error:
            AtomicFiles(folder, {n: n for n in ("folder.txt", "hard.txt", "fresh.txt")}, inputs=[source])
        assert "folder.txt' is a folder" in str(error.value) and "hard.txt' is the input" in str(error.value)
        with pytest.raises(FileExistsError, match="taken.txt"):
            AtomicFiles(folder, {"taken.txt": "taken.txt"}, overwrite=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder.txt", "hard.txt", "source.wav", "taken.txt"]


def test_an_output_folder_is_walked_without_links_and_only_what_it_made_is_removed(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "kept").mkdir(parents=True)
    outside.mkdir()
    (root / "link").symlink_to(outside, target_is_directory=True)
    for path in (root / "link" / "x", tmp_path / "elsewhere"):
        with pytest.raises(OutputError):
            OutputFolder(path, inside=root)
    assert os.listdir(outside) == []

    with pytest.raises(RuntimeError), OutputFolder(root / "kept" / "a" / "b", inside=root) as folder:
        folder.subfolder("c/d")
        assert (root / "kept" / "a" / "b" / "c" / "d").is_dir()
        raise RuntimeError("the job failed")
    assert os.listdir(root / "kept") == []  # what it made is gone, the folder that was there stays


def test_a_folder_moved_or_swapped_for_a_link_is_noticed_before_the_renames(tmp_path):
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    elsewhere.mkdir()
    with OutputFolder(out) as folder:
        files = AtomicFiles(folder, {"x": "sub/x.txt"})
        files["x"].open("w").write("data")
        (out / "sub").rename(tmp_path / "moved")
        (out / "sub").symlink_to(elsewhere, target_is_directory=True)
        with pytest.raises(OutputError, match="moved or replaced"):
            files.commit()
    assert os.listdir(elsewhere) == [] and os.listdir(tmp_path / "moved") == []


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
