"""Audio file input/output for the inference engine.

This module is the single place where audio enters and leaves the engine, so
it is where we turn "whatever the musician dropped in" into one predictable
representation and where we guarantee that output files are never left
half-written.

Conventions used throughout:

* Samples are ``float32`` arrays shaped ``[channels, frames]`` (channel-first,
  like the models expect), C-contiguous, nominally in ``[-1, 1]``.
* Problems with a *user's file* raise :class:`AudioInputError` with a message
  that names the file, says what is wrong and what to do about it.
  Programming errors (bad arguments from our own code) raise plain
  ``ValueError``/``TypeError``.
"""

from __future__ import annotations

import contextlib
import errno
import operator
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterable, Mapping

import numpy as np
import soundfile as sf
import soxr

from engine.atomic import AtomicFile, AtomicFiles, CommitOnExit, disk_full_or
from engine.errors import InputError
from engine.output_folder import OutputFolder

__all__ = [
    "Audio",
    "AudioInputError",
    "read_audio",
    "resample",
    "to_mono",
    "write_audio",
    "AudioWriter",
    "AudioWriters",
    "AudioReader",
    "check_input_file",
    "inspect_audio",
]

# soundfile >= 0.12 raises SoundFileError subclasses; older versions raise
# RuntimeError. LibsndfileError derives from both, so catching both covers all.
_SOUNDFILE_ERRORS = (getattr(sf, "SoundFileError", RuntimeError), RuntimeError)

# Output containers we write: extension -> libsndfile major format.
_WRITE_FORMATS = {".wav": "WAV", ".flac": "FLAC"}
# ``bits`` argument -> libsndfile subtype.
_SUBTYPES = {"16": "PCM_16", "24": "PCM_24", "32f": "FLOAT"}
# libsndfile's frame count for a file whose header does not give its length
# (a FLAC written as a stream, to a pipe): SF_COUNT_MAX, not a real length.
_UNKNOWN_LENGTH = 2**63 - 1
# What a path can be besides a regular file, for the message that refuses it.
_NOT_REGULAR = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
                (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


class AudioInputError(InputError):
    """Raised for audio a user gave that cannot be used; message names the file, what is wrong, and what to do."""


@dataclass(frozen=True)
class Audio:
    """Decoded audio: ``samples`` is float32 ``[channels, frames]``, C-contiguous."""

    samples: np.ndarray
    sample_rate: int

    def __post_init__(self) -> None:
        # Normalise here so every consumer can rely on the layout without
        # re-checking; this is a no-op (no copy) for arrays read_audio makes.
        samples = np.ascontiguousarray(self.samples, dtype=np.float32)
        if samples.ndim != 2:
            raise ValueError(
                f"Audio.samples must be 2-D [channels, frames], got shape {samples.shape}"
            )
        object.__setattr__(self, "samples", samples)
        object.__setattr__(self, "sample_rate", _positive_int(self.sample_rate, "sample_rate"))

    @property
    def channels(self) -> int:
        return int(self.samples.shape[0])

    @property
    def frames(self) -> int:
        return int(self.samples.shape[1])

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate


# --------------------------------------------------------------------------- #
# Reading
# --------------------------------------------------------------------------- #

def read_audio(path: str | os.PathLike, *, max_seconds: float | None = None) -> Audio:
    """Read any format libsndfile understands into an :class:`Audio`.

    Integer PCM is scaled to float32 in [-1, 1]. Silent audio is valid.
    Raises :class:`AudioInputError` (message includes the path) if the file is
    missing, a directory, not decodable, empty, longer than ``max_seconds``, or
    contains NaN/Inf samples.

    ``max_seconds`` is checked from the header *before* decoding so that an
    oversized upload is refused without loading it into memory.
    """
    path = Path(path)
    inspect_audio(path, max_seconds=max_seconds)

    try:
        data, sample_rate = sf.read(str(path), dtype="float32", always_2d=True)
    except _SOUNDFILE_ERRORS as exc:
        # The header parsed but the payload did not (e.g. a truncated file).
        raise _unreadable(path, exc) from exc

    if data.shape[0] == 0:
        # Some formats report a frame count in the header that decoding disagrees with.
        raise AudioInputError(
            f"Audio file '{path}' contains no audio (0 frames). Export the file again and check it plays."
        )

    # soundfile gives [frames, channels]; the engine works channel-first.
    samples = np.ascontiguousarray(data.T)

    check_finite(path, samples, int(sample_rate))

    return Audio(samples=samples, sample_rate=int(sample_rate))


def inspect_audio(path: str | os.PathLike, *, max_seconds: float | None = None) -> "sf._SoundFileInfo":
    """Check a user's audio file from its header alone (exists, decodable, not
    empty, not too long) and return soundfile's info; nothing is decoded, so a
    huge file is refused without loading it."""
    path = Path(path)
    if max_seconds is not None and not max_seconds > 0:
        raise ValueError(f"max_seconds must be positive or None, got {max_seconds!r}")
    check_input_file(path)
    try:
        info = sf.info(str(path))
    except _SOUNDFILE_ERRORS as exc:
        raise _unreadable(path, exc) from exc

    if info.frames <= 0 or info.samplerate <= 0:
        raise AudioInputError(
            f"Audio file '{path}' contains no audio (0 frames). Export the file again and check it plays."
        )
    if info.frames >= _UNKNOWN_LENGTH:
        raise AudioInputError(
            f"Audio file '{path}' does not say how long it is (it was written as a stream, e.g. to a pipe), "
            f"so it cannot be read in windows. Convert it to WAV, or re-encode it to a file "
            f"(e.g. ffmpeg -i IN.flac OUT.flac), and try again."
        )

    duration = info.frames / info.samplerate
    if max_seconds is not None and duration > max_seconds:
        raise AudioInputError(
            f"Audio file '{path}' is too long: {duration:.1f} s, the limit is {max_seconds:g} s. "
            f"Trim it to at most {max_seconds:g} seconds, or split it into shorter parts."
        )

    return info


def check_input_file(path: str | os.PathLike) -> None:
    """Refuse what is not an existing, readable regular file before anything
    opens it: opening a FIFO waits until something writes to it, and a device
    may never end. The CLI, bounce and the OSC server (osc_bridge.paths) all
    check their inputs here."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise AudioInputError(
            f"Audio file not found: '{path}'. Check the path and that the file has not been moved or deleted."
        ) from None
    except OSError as error:
        raise AudioInputError(f"Cannot open '{path}': {error.strerror}. Check the path and its permissions.") from None
    if stat.S_ISDIR(info.st_mode):
        raise AudioInputError(
            f"Expected an audio file but '{path}' is a folder (directory). Pass the path of a single audio file."
        )
    if not stat.S_ISREG(info.st_mode):
        kind = next((name for test, name in _NOT_REGULAR if test(info.st_mode)), "a special file")
        raise AudioInputError(f"'{path}' is {kind}, not a regular file: reading it could wait forever. "
                              f"Save the audio to a file and pass that file.")
    if not os.access(path, os.R_OK):
        raise AudioInputError(f"Audio file '{path}' is not readable (permissions). Check who owns it.")


def check_finite(path: str | os.PathLike, samples: np.ndarray, sample_rate: int, offset: int = 0) -> None:
    """Refuse NaN/Inf samples, saying how many and where the first one is."""
    finite = np.isfinite(samples)
    if not finite.all():
        bad = ~finite
        n_bad = int(bad.sum())
        first_frame = int(np.argmax(bad.any(axis=0)))
        raise AudioInputError(
            f"Audio file '{path}' contains {n_bad} invalid sample value(s) (NaN or infinity); "
            f"the first is at {(offset + first_frame) / sample_rate:.3f} s. The file is corrupt or was exported "
            f"from a broken signal chain: re-export it (e.g. as 24-bit PCM) and try again."
        )



class AudioReader:
    """Random access to a checked audio file, a block at a time, so long files
    are processed in bounded memory. Blocks come back float32 [C, n]; reading
    past the end pads with zeros."""

    def __init__(self, path: str | os.PathLike, *, max_seconds: float | None = None) -> None:
        self.path = Path(path)
        info = inspect_audio(self.path, max_seconds=max_seconds)
        self.sample_rate = int(info.samplerate)
        self.channels = int(info.channels)
        self.frames = int(info.frames)

    def read(self, start: int, frames: int) -> np.ndarray:
        out = np.zeros((self.channels, frames), dtype=np.float32)
        if start >= self.frames or frames <= 0:
            return out
        try:
            with sf.SoundFile(str(self.path)) as handle:
                handle.seek(max(start, 0))
                data = handle.read(min(frames, self.frames - start), dtype="float32", always_2d=True)
        except _SOUNDFILE_ERRORS as exc:
            raise _unreadable(self.path, exc) from exc
        block = np.ascontiguousarray(data.T)
        check_finite(self.path, block, self.sample_rate, offset=start)
        out[:, : block.shape[1]] = block
        return out


def _unreadable(path: Path, exc: BaseException) -> AudioInputError:
    size = _file_size(path)
    # libsndfile messages end with "."; strip it so the sentence reads cleanly.
    detail = "the file is empty (0 bytes)" if size == 0 else str(exc).rstrip(". ")
    return AudioInputError(
        f"Cannot read '{path}' as audio: {detail}. The file may be corrupt or in an unsupported format; "
        f"convert it to WAV or FLAC and try again."
    )


def _file_size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


# --------------------------------------------------------------------------- #
# Signal helpers
# --------------------------------------------------------------------------- #

def resample(
    samples: np.ndarray, from_rate: int, to_rate: int, *, length: int | None = None
) -> np.ndarray:
    """Resample ``[C, T]`` audio from ``from_rate`` to ``to_rate`` with soxr (VHQ).

    The output has ``T' = floor(T * to_rate / from_rate + 0.5)`` frames (round
    half up, which is what soxr itself produces), or exactly ``length`` frames
    if given (zero-padded or cropped at the end) so callers can line stems up
    sample-exactly. Equal rates return a copy, never the input object.
    """
    from_rate = _positive_int(from_rate, "from_rate")
    to_rate = _positive_int(to_rate, "to_rate")
    if length is not None:
        length = operator.index(length)
        if length < 0:
            raise ValueError(f"length must be >= 0, got {length}")
    x = _as_channels_first(samples, "samples")

    n_in = x.shape[1]
    if from_rate == to_rate:
        out = x.copy()
    elif n_in == 0:
        out = np.zeros((x.shape[0], 0), dtype=np.float32)
    else:
        # Exact integer arithmetic, so long files never drift by a frame.
        n_out = (2 * n_in * to_rate + from_rate) // (2 * from_rate)
        # VHQ costs only ~15% more than HQ in soxr; soxr wants [frames, channels].
        y = soxr.resample(np.ascontiguousarray(x.T), from_rate, to_rate, quality="VHQ")
        out = _fit_length(np.ascontiguousarray(y.T), n_out)

    if length is not None:
        out = _fit_length(out, length)
    return np.ascontiguousarray(out, dtype=np.float32)


def to_mono(samples: np.ndarray) -> np.ndarray:
    """Downmix ``[C, T]`` to ``[1, T]`` by averaging channels (no gain change for identical channels)."""
    x = _as_channels_first(samples, "samples")
    if x.shape[0] == 0:
        raise ValueError("cannot downmix audio with 0 channels")
    # Accumulate in float64 so many channels do not lose precision.
    return np.ascontiguousarray(x.mean(axis=0, keepdims=True, dtype=np.float64), dtype=np.float32)


def _fit_length(x: np.ndarray, n: int) -> np.ndarray:
    """Crop or zero-pad ``[C, T]`` at the end to exactly ``n`` frames."""
    t = x.shape[1]
    if t >= n:
        return x[:, :n]
    return np.pad(x, ((0, 0), (0, n - t)))


def _as_channels_first(samples: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(samples)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D [channels, frames], got shape {x.shape}")
    return x.astype(np.float32, copy=False)


def _positive_int(value, name: str) -> int:
    # bool is an int subclass but never a meaningful rate; floats like 44100.5 are bugs.
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be a positive integer, got {value!r}") from None
    if value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


# --------------------------------------------------------------------------- #
# Writing
# --------------------------------------------------------------------------- #

def write_audio(
    path: str | os.PathLike,
    samples: np.ndarray,
    sample_rate: int,
    *,
    bits: str = "32f",
    overwrite: bool = True,
) -> Path:
    """Atomically write ``[C, T]`` float audio to a ``.wav`` or ``.flac`` file.

    ``bits``: ``"16"`` (PCM_16), ``"24"`` (PCM_24) or ``"32f"`` (32-bit float,
    WAV only). For PCM, samples outside [-1, 1] are clipped (rather than left
    to wrap around, which some libsndfile builds do).

    Written through engine.atomic (hidden temp file, fsync, rename), so readers
    see either the old file or the complete new one, never a partial file. On any exception, including
    KeyboardInterrupt, the temp file is removed and an existing target is left
    untouched. Parent directories are created. With ``overwrite=False`` an
    existing target raises FileExistsError (checked up front; a file created
    concurrently during the write would still be replaced).

    Returns the final path.
    """
    x = np.asarray(samples)
    if x.ndim != 2:
        raise ValueError(f"samples must be 2-D [channels, frames], got shape {x.shape}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"Cannot write '{path}': samples has shape {x.shape}, no audio to write")
    with AudioWriter(path, sample_rate, x.shape[0], bits=bits, overwrite=overwrite) as writer:
        writer.write(x)
    return writer.path


class _KeepsWriteErrors:
    """The temp file as soundfile sees it. soundfile writes through libsndfile's
    virtual I/O, a callback: an OSError raised there (a full disk) is printed
    as a traceback and lost, and libsndfile's short write then fails soundfile's
    `assert written == frames` (the user read "AssertionError"). Here the
    error is kept, 0 bytes reported written, and `raise_error` raises it as
    what it is (engine.atomic.disk_full_or)."""

    def __init__(self, file: IO) -> None:
        self._file = file
        self.error: OSError | None = None

    def write(self, data) -> int:
        if self.error is not None:
            return 0
        try:
            written = self._file.write(data)
        except OSError as error:
            self.error = error
            return 0
        return len(data) if written is None else written

    def raise_error(self, path: Path) -> None:
        if self.error is not None:
            raise disk_full_or(self.error, path)

    def __getattr__(self, name: str):
        return getattr(self._file, name)


class AudioWriter(CommitOnExit):
    """Write [C, n] float blocks to an audio file atomically, so long outputs can
    be streamed to disk in bounded memory.

    The data goes to an engine.atomic.AtomicFile; leaving the `with` block
    normally commits it (fsync, rename onto the target), so readers see either
    the old file or the complete new one, never a partial file. On any exception, including KeyboardInterrupt, the temp file is
    removed and an existing target is left untouched. Use `commit()` and
    `abort()` directly to make several files appear together.
    """

    def __init__(self, path: str | os.PathLike, sample_rate: int, channels: int, *,
                 bits: str = "32f", overwrite: bool = True, target: AtomicFile | None = None) -> None:
        """`target`: the AtomicFile to write into (one of AudioWriters' group);
        by default one is made for `path`."""
        path = Path(path)
        fmt = _WRITE_FORMATS.get(path.suffix.lower())
        if fmt is None:
            raise ValueError(
                f"Cannot write '{path}': unsupported extension '{path.suffix}'. "
                f"Supported: {', '.join(sorted(_WRITE_FORMATS))}."
            )
        subtype = _SUBTYPES.get(bits)
        if subtype is None:
            raise ValueError(f"bits must be one of {sorted(_SUBTYPES)}, got {bits!r}")
        if fmt == "FLAC" and subtype == "FLOAT":
            raise ValueError(
                f"Cannot write '{path}': FLAC does not support 32-bit float; use bits='16' or bits='24', "
                f"or write a .wav file for float output."
            )
        self.path = path
        self.sample_rate = _positive_int(sample_rate, "sample_rate")
        self.channels = _positive_int(channels, "channels")
        self.clip = subtype != "FLOAT"
        self._target = target or AtomicFile(path, overwrite=overwrite)
        self.tmp = self._target.tmp
        try:
            self._file = _KeepsWriteErrors(self._target.open("wb"))
            # Format is passed explicitly: the temp name ends in .tmp, and a
            # file object has no extension for soundfile to infer it from.
            self._sound = sf.SoundFile(self._file, mode="w", samplerate=self.sample_rate,
                                       channels=self.channels, format=fmt, subtype=subtype)
        except BaseException:
            self.abort()
            raise
        self.frames = 0

    def write(self, block: np.ndarray) -> None:
        x = np.asarray(block)
        if x.ndim != 2 or x.shape[0] != self.channels:
            raise ValueError(f"expected a [{self.channels}, frames] block, got shape {x.shape}")
        if not np.issubdtype(x.dtype, np.floating):
            # Integer arrays would be written as raw integers, not scaled; refuse the ambiguity.
            raise ValueError(f"samples must be a float array in [-1, 1], got dtype {x.dtype}")
        if not np.isfinite(x).all():
            n_bad = int(np.count_nonzero(~np.isfinite(x)))
            raise ValueError(f"Refusing to write '{self.path}': samples contain {n_bad} NaN/Inf value(s)")
        frames_first = np.ascontiguousarray(x.T, dtype=np.float32)
        if self.clip:
            frames_first = np.clip(frames_first, -1.0, 1.0)
        try:
            self._sound.write(frames_first)
        except AssertionError:  # soundfile's check of a short write: the error is the file's
            raise self._write_error() from None
        self._file.raise_error(self.path)
        self.frames += x.shape[1]

    def _write_error(self) -> OSError:
        self._file.raise_error(self.path)
        return OSError(errno.EIO, f"cannot write '{self.path}': the audio library wrote less than it was given")

    def finish(self) -> None:
        """Complete the file (libsndfile writes its header on close); `commit` renames it."""
        try:
            try:
                self._sound.close()
            except (AssertionError, RuntimeError):
                raise self._write_error() from None
            self._file.raise_error(self.path)
        except BaseException:
            self.abort()
            raise

    def commit(self) -> Path:
        self.finish()
        return self._target.commit()

    def abort(self) -> None:
        sound = getattr(self, "_sound", None)
        if sound is not None:
            with contextlib.suppress(Exception):
                sound.close()
        self._target.abort()


class AudioWriters(CommitOnExit):
    """The audio files of one job, written together into one output folder held
    open: all of them appear, or none does (engine.atomic.AtomicFiles, which
    also refuses a destination that is a folder or one of the job's `inputs`).
    `targets` maps a name to its path inside `folder`; `channels` gives each
    name's channel count."""

    def __init__(self, folder: OutputFolder, targets: Mapping[str, str | os.PathLike], channels: Mapping[str, int],
                 sample_rate: int, *, bits: str = "32f", overwrite: bool = True,
                 inputs: Iterable[str | os.PathLike] = ()) -> None:
        self._files = AtomicFiles(folder, targets, overwrite=overwrite, inputs=inputs)
        self.paths = self._files.paths
        self.writers: dict[str, AudioWriter] = {}
        try:
            for name, count in channels.items():
                self.writers[name] = AudioWriter(self.paths[name], sample_rate, count, bits=bits,
                                                 target=self._files[name])
        except BaseException:
            self.abort()
            raise

    def write(self, name: str, block: np.ndarray) -> None:
        self.writers[name].write(block)

    def commit(self) -> dict[str, Path]:
        try:
            for writer in self.writers.values():
                writer.finish()
        except BaseException:
            self.abort()
            raise
        return self._files.commit()

    def abort(self) -> None:
        for writer in self.writers.values():
            writer.abort()
        self._files.abort()
