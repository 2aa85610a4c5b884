"""The sound device boundary: a sounddevice OutputStream whose callback copies
``Mixer.render`` into the device buffer. The callback never touches Qt; the
GUI reads the small OutputTap (levels, frames sent) on a timer."""

from __future__ import annotations

import threading

import numpy as np

from .mixer import Mixer


class OutputTap:
    """What went to the device: frames sent, per-channel sums and peak of the
    latest block. Written by the audio thread, read by the GUI (meter, tests)."""

    def __init__(self, channels: int) -> None:
        self._lock = threading.Lock()
        self.reset(channels)

    def reset(self, channels: int) -> None:
        with self._lock:
            self.frames = 0
            self.sums = np.zeros(channels, dtype=np.float64)
            self.peak = np.zeros(channels, dtype=np.float32)

    def add(self, block: np.ndarray, frames: int) -> None:
        with self._lock:
            self.frames += frames
            self.sums += block[:frames].sum(axis=0, dtype=np.float64)
            self.peak = np.abs(block[:frames]).max(axis=0) if frames else self.peak * 0

    def snapshot(self) -> tuple[int, np.ndarray, np.ndarray]:
        with self._lock:
            return self.frames, self.sums.copy(), self.peak.copy()


class AudioOutput:
    """Plays a Mixer on the default output device. With no device (or no
    PortAudio) ``available`` is False and ``problem`` says why; the app still runs."""

    def __init__(self, mixer: Mixer, blocksize: int = 1024) -> None:
        self.mixer = mixer
        self.blocksize = blocksize
        self.tap = OutputTap(mixer.out_channels)
        self.stream = None
        self.rate = 0
        self.problem = ""
        self._sd = None
        try:
            import sounddevice as sd  # needs the PortAudio library (libportaudio2)
            self._sd = sd
        except (ImportError, OSError) as error:
            self.problem = f"Playback is off: the PortAudio library is missing ({error}). Install libportaudio2."
            return
        try:
            device = sd.query_devices(kind="output")
        except Exception:
            device = None
        if not device:
            self.problem = ("Playback is off: no audio output device was found. Connect one (or start the sound "
                            "server) and restart the app; everything else works.")

    @property
    def available(self) -> bool:
        return not self.problem

    def _callback(self, outdata, frames, time_info, status) -> None:
        # Real-time thread: numpy only, no Qt, no allocation beyond the block.
        block = self.mixer.render(frames)
        outdata[:] = block
        self.tap.add(block, frames)
        if not self.mixer.playing:
            raise self._sd.CallbackStop  # the stream goes idle instead of spinning on silence

    def _open(self, rate: int) -> None:
        if self.stream is not None and self.rate == rate:
            return
        self.close()
        self.stream = self._sd.OutputStream(samplerate=rate, channels=self.mixer.out_channels, dtype="float32",
                                            blocksize=self.blocksize, callback=self._callback)
        self.rate = rate

    def start(self) -> bool:
        """Start (or restart) the stream after Mixer.play(); False if playback is off."""
        if not self.available:
            return False
        try:
            self._open(self.mixer.sample_rate)
            if self.stream.active:
                return True
            self.stream.stop()  # a stream that ended by CallbackStop must be stopped before restarting
            self.stream.start()
            return True
        except Exception as error:  # PortAudioError and friends: report, keep running
            self.problem = (f"Playback is off: the audio device refused {self.mixer.sample_rate} Hz "
                            f"{self.mixer.out_channels}-channel output ({error}).")
            self.close()
            return False

    @property
    def active(self) -> bool:
        return bool(self.stream is not None and self.stream.active)

    def close(self) -> None:
        if self.stream is not None:
            try:
                self.stream.abort()
                self.stream.close()
            except Exception:
                pass
            self.stream = None
            self.rate = 0
