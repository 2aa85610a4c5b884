"""Tests for engine.audio.files: real files on disk, audio generated here with numpy + soundfile."""

from __future__ import annotations

import contextlib
import os
import threading

import numpy as np
import pytest
import soundfile as sf

from engine.audio.files import (
    Audio,
    AudioInputError,
    read_audio,
    resample,
    to_mono,
    write_audio,
)
from support.special_files import write_streamed_flac

SR = 44100


def sine(freq: float = 440.0, seconds: float = 1.0, sr: int = SR, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def stereo(seconds: float = 0.5, sr: int = SR) -> np.ndarray:
    """[2, T] float32: different content per channel so a channel swap would be caught."""
    return np.stack([sine(440, seconds, sr, 0.5), sine(660, seconds, sr, 0.25)])


def listing(directory) -> list[str]:
    return sorted(os.listdir(directory))


# --------------------------------------------------------------------------- #
# Round trips
# --------------------------------------------------------------------------- #

# Tolerance: one LSB of the format (libsndfile scales by 2**(bits-1), so +1.0 is not
# representable and comes back as 1 - 1 LSB; everything else is within half an LSB).
# Float is bit-exact.
LSB16, LSB24 = 1.0 / 2**15, 1.0 / 2**23
ROUND_TRIP_CASES = [
    ("wav", "32f", 0.0),
    ("wav", "16", LSB16 * 1.001),
    ("wav", "24", LSB24 * 1.001),
    ("flac", "16", LSB16 * 1.001),
    ("flac", "24", LSB24 * 1.001),
]


@pytest.mark.parametrize("ext,bits,tol", ROUND_TRIP_CASES)
@pytest.mark.parametrize("channels", [1, 2])
def test_round_trip(tmp_path, ext, bits, tol, channels):
    samples = stereo()[:channels]
    # Include full-scale values at both ends of the range.
    samples[0, :3] = [-1.0, 0.999, 1.0]
    samples[-1, 3:6] = [1.0, 0.999, -1.0]
    out = write_audio(tmp_path / f"x.{ext}", samples, SR, bits=bits)
    assert out == tmp_path / f"x.{ext}"

    audio = read_audio(out)
    assert isinstance(audio, Audio)
    assert audio.sample_rate == SR
    assert audio.samples.dtype == np.float32
    assert audio.samples.shape == samples.shape
    assert audio.samples.flags["C_CONTIGUOUS"]
    assert audio.channels == channels
    assert audio.frames == samples.shape[1]
    assert audio.seconds == pytest.approx(samples.shape[1] / SR)
    np.testing.assert_allclose(audio.samples, samples, rtol=0, atol=tol)

    expected_subtype = {"32f": "FLOAT", "16": "PCM_16", "24": "PCM_24"}[bits]
    assert sf.info(str(out)).subtype == expected_subtype


def test_read_integer_pcm_is_scaled_to_unit_range(tmp_path):
    path = tmp_path / "int.wav"
    sf.write(str(path), np.array([[-32768], [0], [16384], [32767]], dtype=np.int16), 8000, subtype="PCM_16")
    audio = read_audio(path)
    np.testing.assert_allclose(audio.samples[0], [-1.0, 0.0, 0.5, 32767 / 32768], atol=1e-7)


def test_write_pcm_clips_out_of_range(tmp_path):
    samples = np.array([[1.5, -1.5, 0.25]], dtype=np.float32)
    audio = read_audio(write_audio(tmp_path / "c.wav", samples, 8000, bits="16"))
    assert audio.samples.max() <= 1.0 and audio.samples.min() >= -1.0
    assert audio.samples[0, 0] > 0.999 and audio.samples[0, 1] == -1.0  # clipped, not wrapped


def test_silent_audio_is_valid(tmp_path):
    path = tmp_path / "silence.wav"
    sf.write(str(path), np.zeros((1000, 2), np.float32), SR, subtype="FLOAT")
    audio = read_audio(path)
    assert audio.samples.shape == (2, 1000)
    assert not audio.samples.any()


def test_read_other_sample_rate_and_many_channels(tmp_path):
    path = tmp_path / "six.aiff"
    data = np.random.default_rng(0).uniform(-0.9, 0.9, (6, 4800)).astype(np.float32)
    sf.write(str(path), data.T, 48000, subtype="PCM_24")
    audio = read_audio(path)
    assert audio.sample_rate == 48000 and audio.samples.shape == (6, 4800)
    np.testing.assert_allclose(audio.samples, data, atol=1 / 2**23)


@pytest.mark.parametrize(
    "ext",
    [
        "ogg",
        pytest.param(
            "mp3",
            marks=pytest.mark.skipif("MP3" not in sf.available_formats(), reason="libsndfile built without MP3"),
        ),
    ],
)
def test_read_lossy_stereo(tmp_path, ext):
    path = tmp_path / f"lossy.{ext}"
    data = stereo(1.0)
    sf.write(str(path), data.T, SR)  # format inferred from extension (Vorbis / MPEG layer III)
    audio = read_audio(path)
    assert audio.sample_rate == SR
    assert audio.channels == 2
    assert audio.samples.dtype == np.float32
    # Lossy codecs may add encoder delay/padding; allow a little slack on length.
    assert abs(audio.frames - data.shape[1]) <= 2048
    # Channel levels survive (0.5 vs 0.25 peak) so channels were not swapped or mixed.
    peaks = np.abs(audio.samples).max(axis=1)
    np.testing.assert_allclose(peaks, [0.5, 0.25], rtol=0.1)


# --------------------------------------------------------------------------- #
# Resample / mono
# --------------------------------------------------------------------------- #

def _peak_freq(x: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / sr)[np.argmax(spec)])


def test_resample_keeps_frequency_amplitude_and_length():
    x = np.stack([sine(440, 1.0, SR, 0.5), sine(440, 1.0, SR, 0.25)])
    y = resample(x, SR, 22050)
    assert y.dtype == np.float32 and y.flags["C_CONTIGUOUS"]
    assert y.shape == (2, 22050)
    assert _peak_freq(y[0], 22050) == pytest.approx(440, abs=1.0)
    # Ignore the filter's edge transients when measuring amplitude.
    core = y[:, 1000:-1000]
    np.testing.assert_allclose(np.abs(core).max(axis=1), [0.5, 0.25], rtol=0.01)


@pytest.mark.parametrize(
    "frames,from_rate,to_rate,expected",
    [
        (44100, 44100, 48000, 48000),
        (44101, 44100, 22050, 22051),  # 22050.5 rounds half up, as soxr does
        (1000, 48000, 44100, 919),     # 918.75
        (7, 22050, 44100, 14),
    ],
)
def test_resample_length_rule(frames, from_rate, to_rate, expected):
    x = np.random.default_rng(1).uniform(-0.5, 0.5, (2, frames)).astype(np.float32)
    assert resample(x, from_rate, to_rate).shape == (2, expected)


def test_resample_length_pads_and_crops():
    x = np.stack([sine(440, 1.0), sine(880, 1.0)])
    padded = resample(x, SR, 22050, length=30000)
    assert padded.shape == (2, 30000)
    assert not padded[:, 22050:].any()  # zero padding at the end
    cropped = resample(x, SR, 22050, length=1000)
    assert cropped.shape == (2, 1000)
    np.testing.assert_array_equal(cropped, resample(x, SR, 22050)[:, :1000])
    # length also applies when no resampling is needed.
    assert resample(x, SR, SR, length=10).shape == (2, 10)
    assert resample(x, SR, SR, length=SR + 5)[:, SR:].tolist() == [[0.0] * 5] * 2


def test_resample_equal_rates_returns_copy():
    x = stereo()
    y = resample(x, SR, SR)
    assert y is not x
    assert not np.shares_memory(x, y)
    np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("bad", [0, -44100, 44100.0, 44100.5, "44100", None, True])
def test_resample_rejects_bad_rates(bad):
    x = stereo()
    with pytest.raises(ValueError):
        resample(x, bad, SR)
    with pytest.raises(ValueError):
        resample(x, SR, bad)


def test_resample_accepts_numpy_int_rates():
    assert resample(stereo(), np.int64(SR), np.int32(22050)).shape == (2, 11025)


def test_to_mono_is_channel_mean():
    x = stereo()
    m = to_mono(x)
    assert m.shape == (1, x.shape[1]) and m.dtype == np.float32
    np.testing.assert_allclose(m[0], (x[0] + x[1]) / 2, atol=1e-7)
    mono = x[:1]
    np.testing.assert_array_equal(to_mono(mono), mono)


# --------------------------------------------------------------------------- #
# Input errors
# --------------------------------------------------------------------------- #

def test_missing_file(tmp_path):
    with pytest.raises(AudioInputError, match="not found") as exc:
        read_audio(tmp_path / "nope.wav")
    assert "nope.wav" in str(exc.value)


def test_directory(tmp_path):
    d = tmp_path / "stems.wav"
    d.mkdir()
    with pytest.raises(AudioInputError, match="directory") as exc:
        read_audio(d)
    assert "stems.wav" in str(exc.value)


def _unblock_later(fifo) -> threading.Timer:
    """Code that opens the FIFO would wait for a writer forever: after a while
    this opens it for writing and closes it, so such code fails instead of hanging."""
    def unblock() -> None:
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))

    timer = threading.Timer(10, unblock)
    timer.start()
    return timer


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_a_fifo_or_a_device_is_refused_without_being_opened(tmp_path):
    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)
    timer = _unblock_later(fifo)
    try:
        with pytest.raises(AudioInputError, match=r"pipe.wav' is a named pipe \(FIFO\), not a regular file"):
            read_audio(fifo)
    finally:
        timer.cancel()
    with pytest.raises(AudioInputError, match="character device"):
        read_audio("/dev/null")


def test_a_streamed_flac_without_a_length_is_refused_from_its_header(tmp_path):
    """soundfile reports 2**63 - 1 frames for it; decoding that fails late or never."""
    path = write_streamed_flac(tmp_path / "streamed.flac")
    with pytest.raises(AudioInputError, match="streamed.flac' does not say how long it is"):
        read_audio(path)


def test_text_file_with_wav_extension(tmp_path):
    path = tmp_path / "x.wav"
    path.write_text("this is not audio, just some text\n" * 10)
    with pytest.raises(AudioInputError, match="Cannot read .* as audio") as exc:
        read_audio(path)
    assert "x.wav" in str(exc.value)
    assert isinstance(exc.value.__cause__, sf.SoundFileError)  # original error kept
    assert isinstance(exc.value, ValueError)


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.flac"
    path.touch()
    with pytest.raises(AudioInputError, match="empty") as exc:
        read_audio(path)
    assert "empty.flac" in str(exc.value)
    assert exc.value.__cause__ is not None


def test_truncated_file(tmp_path):
    path = tmp_path / "cut.flac"
    write_audio(path, stereo(2.0), SR, bits="16")
    path.write_bytes(path.read_bytes()[:200])  # header survives, audio does not
    with pytest.raises(AudioInputError) as exc:
        read_audio(path)
    assert "cut.flac" in str(exc.value)


def test_zero_frames(tmp_path):
    path = tmp_path / "noframes.wav"
    sf.write(str(path), np.zeros((0, 2), np.float32), SR, subtype="FLOAT")
    with pytest.raises(AudioInputError, match="0 frames") as exc:
        read_audio(path)
    assert "noframes.wav" in str(exc.value)


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_non_finite_samples(tmp_path, bad_value):
    path = tmp_path / "broken.wav"
    data = np.zeros((SR * 2, 2), np.float32)
    data[SR // 2, 1] = bad_value  # first bad sample at 0.5 s
    data[SR, 0] = bad_value
    data[SR, 1] = bad_value
    sf.write(str(path), data, SR, subtype="FLOAT")
    with pytest.raises(AudioInputError) as exc:
        read_audio(path)
    msg = str(exc.value)
    assert "broken.wav" in msg
    assert "NaN or infinity" in msg
    assert "3 invalid" in msg
    assert "0.500 s" in msg


def test_max_seconds_refused_without_reading_samples(tmp_path, monkeypatch):
    path = tmp_path / "long.wav"
    sf.write(str(path), np.zeros((SR * 3, 1), np.float32), SR, subtype="FLOAT")

    def fail(*args, **kwargs):  # pragma: no cover - only runs on regression
        pytest.fail("read_audio decoded samples of a file it should have refused from the header")

    monkeypatch.setattr(sf, "read", fail)
    monkeypatch.setattr(sf.SoundFile, "read", fail)
    with pytest.raises(AudioInputError, match="too long") as exc:
        read_audio(path, max_seconds=2.5)
    msg = str(exc.value)
    assert "long.wav" in msg and "3.0 s" in msg and "2.5" in msg


def test_max_seconds_allows_shorter(tmp_path):
    path = write_audio(tmp_path / "ok.wav", stereo(1.0), SR)
    assert read_audio(path, max_seconds=1.0).frames == SR


def test_max_seconds_must_be_positive(tmp_path):
    path = write_audio(tmp_path / "ok.wav", stereo(0.1), SR)
    with pytest.raises(ValueError):
        read_audio(path, max_seconds=0)


# --------------------------------------------------------------------------- #
# write_audio validation
# --------------------------------------------------------------------------- #

def test_write_rejects_unsupported_extension(tmp_path):
    with pytest.raises(ValueError, match=r"\.flac.*\.wav|\.wav.*\.flac"):
        write_audio(tmp_path / "x.mp3", stereo(), SR)
    assert listing(tmp_path) == []


def test_write_flac_float_says_use_16_or_24(tmp_path):
    with pytest.raises(ValueError, match="16.*24"):
        write_audio(tmp_path / "x.flac", stereo(), SR, bits="32f")
    assert listing(tmp_path) == []


def test_write_rejects_bad_bits(tmp_path):
    with pytest.raises(ValueError):
        write_audio(tmp_path / "x.wav", stereo(), SR, bits="8")


@pytest.mark.parametrize("bad_value", [np.nan, np.inf])
def test_write_rejects_non_finite(tmp_path, bad_value):
    x = stereo()
    x[1, 10] = bad_value
    with pytest.raises(ValueError, match="NaN/Inf"):
        write_audio(tmp_path / "x.wav", x, SR)
    assert listing(tmp_path) == []


def test_write_rejects_wrong_shape(tmp_path):
    with pytest.raises(ValueError, match="channels, frames"):
        write_audio(tmp_path / "x.wav", sine(), SR)


def test_write_extension_is_case_insensitive(tmp_path):
    out = write_audio(tmp_path / "LOUD.WAV", stereo(), SR, bits="16")
    assert sf.info(str(out)).format == "WAV"


# --------------------------------------------------------------------------- #
# Atomic writes
# --------------------------------------------------------------------------- #

def _failing_write(monkeypatch, exc_type):
    """Make SoundFile.write put half the data on disk, then raise ``exc_type``."""
    original = sf.SoundFile.write

    def half_then_fail(self, data):
        original(self, data[: len(data) // 2])
        self.flush()
        raise exc_type("simulated failure mid-write")

    monkeypatch.setattr(sf.SoundFile, "write", half_then_fail)


@pytest.mark.parametrize("exc_type", [OSError, KeyboardInterrupt])
@pytest.mark.parametrize("ext,bits", [("wav", "32f"), ("flac", "24")])
def test_failure_mid_write_leaves_no_trace(tmp_path, monkeypatch, exc_type, ext, bits):
    target = tmp_path / f"mix.{ext}"
    write_audio(target, stereo(0.2), SR, bits=bits)
    before = target.read_bytes()

    _failing_write(monkeypatch, exc_type)
    with pytest.raises(exc_type, match="simulated"):
        write_audio(target, stereo(1.0) * 0.5, SR, bits=bits)

    assert listing(tmp_path) == [target.name]  # no temp file left behind
    assert target.read_bytes() == before


def test_failure_mid_write_without_existing_target(tmp_path, monkeypatch):
    _failing_write(monkeypatch, OSError)
    with pytest.raises(OSError):
        write_audio(tmp_path / "new.wav", stereo(), SR)
    assert listing(tmp_path) == []


def test_failure_during_replace_cleans_up(tmp_path, monkeypatch):
    target = tmp_path / "mix.wav"
    write_audio(target, stereo(0.2), SR)
    before = target.read_bytes()

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        write_audio(target, stereo(1.0), SR)
    assert listing(tmp_path) == ["mix.wav"]
    assert target.read_bytes() == before


def test_temp_file_is_hidden_in_same_dir_with_explicit_format(tmp_path, monkeypatch):
    seen = {}
    original_init = sf.SoundFile.__init__

    def spy(self, file, *args, **kwargs):
        # While the encoder is being opened, the temp file already exists next to the target.
        seen["during"] = listing(tmp_path)
        seen["format"] = kwargs.get("format")
        original_init(self, file, *args, **kwargs)

    monkeypatch.setattr(sf.SoundFile, "__init__", spy)
    write_audio(tmp_path / "song.flac", stereo(), SR, bits="16")
    assert seen["format"] == "FLAC"
    assert len(seen["during"]) == 1
    tmp_name = seen["during"][0]
    assert tmp_name.startswith(".song.flac.") and tmp_name.endswith(".tmp")
    assert listing(tmp_path) == ["song.flac"]


def test_overwrite_false_raises_and_keeps_file(tmp_path):
    target = tmp_path / "keep.wav"
    write_audio(target, stereo(0.2), SR)
    before = target.read_bytes()
    with pytest.raises(FileExistsError, match="keep.wav"):
        write_audio(target, stereo(1.0), SR, overwrite=False)
    assert target.read_bytes() == before
    assert listing(tmp_path) == ["keep.wav"]


def test_overwrite_true_replaces(tmp_path):
    target = tmp_path / "take.wav"
    write_audio(target, stereo(0.2), SR)
    write_audio(target, stereo(0.3), SR)
    assert read_audio(target).frames == int(0.3 * SR)


def test_creates_parent_directories(tmp_path):
    target = tmp_path / "a" / "b" / "c" / "stem.flac"
    out = write_audio(target, stereo(), SR, bits="24", overwrite=False)
    assert out == target and target.is_file()
    assert read_audio(target).channels == 2


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_output_permissions_follow_umask(tmp_path):
    old = os.umask(0o022)
    try:
        out = write_audio(tmp_path / "perm.wav", stereo(), SR)
    finally:
        os.umask(old)
    assert (out.stat().st_mode & 0o777) == 0o644
