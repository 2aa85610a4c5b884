"""Export lanes to audio files: format, bit depth, folder and a file-name pattern."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping

from .session import LaneAudio

FORMATS = ("wav", "flac")
BITS = ("16", "24", "32f")
DEFAULT_PATTERN = "{song} - {stem}"
_UNSAFE = re.compile(r'[\\/:*?"<>|\x00-\x1f]+')


class ExportError(ValueError):
    """An export setting that cannot work; the message says which and what to choose."""


def check_options(fmt: str, bits: str, pattern: str) -> None:
    if fmt not in FORMATS:
        raise ExportError(f"Unknown format {fmt!r}: choose WAV or FLAC.")
    if bits not in BITS:
        raise ExportError(f"Unknown sample format {bits!r}: choose 16-bit, 24-bit or 32-bit float.")
    if fmt == "flac" and bits == "32f":
        raise ExportError("FLAC cannot store 32-bit float: choose 16 or 24 bit, or WAV for float.")
    if "{stem}" not in pattern:
        raise ExportError(f"The file name pattern {pattern!r} has no {{stem}}: every stem would get the same "
                          "name. Add {stem}, e.g. '{song} - {stem}'.")
    try:
        pattern.format(song="s", stem="x", index=1)
    except (KeyError, IndexError, ValueError) as error:
        raise ExportError(f"The file name pattern {pattern!r} is not valid ({error}); use {{song}}, "
                          "{stem} and {index}, e.g. '{song} - {stem}'.") from None


def file_name(pattern: str, song: str, stem: str, index: int, fmt: str) -> str:
    name = pattern.format(song=song, stem=stem, index=index)
    name = _UNSAFE.sub("_", name).strip(" .") or stem
    return f"{name}.{fmt}"


def export_lanes(lanes: Mapping[str, LaneAudio], folder: str | Path, *, song: str, fmt: str = "wav",
                 bits: str = "24", pattern: str = DEFAULT_PATTERN, overwrite: bool = True) -> list[Path]:
    """Write every lane to ``folder`` (created if needed); returns the paths in lane order.
    Each file is written atomically (engine.audio.files.write_audio)."""
    from engine.audio.files import write_audio

    check_options(fmt, bits, pattern)
    if not lanes:
        raise ExportError("Nothing to export: the lanes are empty. Open a mix or run a task first.")
    folder = Path(folder).expanduser()
    names = [file_name(pattern, song, stem, i + 1, fmt) for i, stem in enumerate(lanes)]
    if len(set(names)) != len(names):
        raise ExportError(f"The pattern {pattern!r} gives two lanes the same file name; include {{stem}}.")
    written = []
    for (stem, audio), name in zip(lanes.items(), names):
        try:
            written.append(write_audio(folder / name, audio.samples, audio.sample_rate, bits=bits,
                                       overwrite=overwrite))
        except FileExistsError:
            raise ExportError(f"'{folder / name}' already exists; choose another folder or allow replacing "
                              "files.") from None
        except OSError as error:
            raise ExportError(f"Cannot write '{folder / name}': {error.strerror or error}. Choose a folder "
                              "you can write to.") from None
    return written
