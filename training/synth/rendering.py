"""MIDI to audio: MIDI files, the fluidsynth command line with a General MIDI
SoundFont (reverb and chorus off, so stems stay dry), levels and the mix,
and float WAVs written without libsndfile's time-stamped PEAK chunk.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import soundfile as sf

from .arrangement import STEMS
from .corpus import MidiNote, SynthError


# Searched in order when no soundfont is given. TimGM6mb first: it is what CI
# installs, so datasets made here and there sound the same.
SOUNDFONT_CANDIDATES = (
    "/usr/share/sounds/sf2/TimGM6mb.sf2",
    "/usr/share/sounds/sf2/FluidR3_GM.sf2",
    "/usr/share/sounds/sf2/default-GM.sf2",
)
INSTALL_HINT = "apt-get install fluidsynth timgm6mb-soundfont"
# A minute of audio renders in about a second; a renderer still busy after
# this is stuck (a damaged file), and the track is skipped, not waited for.
RENDER_TIMEOUT_SECONDS = 120

FADE_SECONDS = 0.02  # at the very end, so a cut-off note does not click
MIX_PEAK = 0.9
STEM_RMS_DB = -20.0  # each stem is brought here before its random gain
FLUIDSYNTH_GAIN = "0.3"  # low enough that dense parts do not clip inside fluidsynth

TICKS_PER_BEAT, MIDI_TEMPO = 1000, 500_000  # 2000 ticks per second: 0.5 ms grid


def find_soundfont(explicit: str | None = None) -> Path:
    """The SoundFont to render with: ``explicit`` if given, else the first of
    SOUNDFONT_CANDIDATES that exists."""
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise SynthError(
                f"SoundFont '{path}' does not exist. Give an existing .sf2 file, or omit it to use "
                f"a General MIDI SoundFont from Debian ({INSTALL_HINT}; or fluid-soundfont-gm)."
            )
        return path.resolve()
    for candidate in SOUNDFONT_CANDIDATES:
        if Path(candidate).is_file():
            return Path(candidate).resolve()
    raise SynthError(
        "No General MIDI SoundFont found (looked for " + ", ".join(SOUNDFONT_CANDIDATES) + "). "
        f"Install one: {INSTALL_HINT} (or fluid-soundfont-gm), or pass soundfont=PATH."
    )


def _find_fluidsynth() -> str:
    path = shutil.which("fluidsynth")
    if path is None:
        raise SynthError(f"The 'fluidsynth' program is not on PATH. Install it: {INSTALL_HINT}")
    return path


def write_midi(path: Path, notes: list[MidiNote], program: int, end_seconds: float) -> None:
    """A type-0 MIDI file at a fixed 120 BPM, times in 0.5 ms ticks.

    The end-of-track sits at ``end_seconds`` so fluidsynth renders at least
    that long, release tails included.
    """
    import mido

    def tick(seconds: float) -> int:
        return round(seconds * 1e6 / MIDI_TEMPO * TICKS_PER_BEAT)

    events = []  # (tick, order, message): note-offs sort before note-ons at the same tick
    for channel in sorted({n.channel for n in notes}):
        events.append((0, 0, mido.Message("program_change", channel=channel, program=program)))
        for control, value in ((7, 100), (10, 64), (11, 127), (91, 0), (93, 0)):  # volume, centre, dry
            events.append((0, 0, mido.Message("control_change", channel=channel, control=control, value=value)))
    for n in notes:
        events.append((tick(n.on), 2, mido.Message("note_on", channel=n.channel, note=n.pitch, velocity=n.velocity)))
        events.append((tick(n.off), 1, mido.Message("note_off", channel=n.channel, note=n.pitch, velocity=0)))
    events.sort(key=lambda e: (e[0], e[1], e[2].channel, getattr(e[2], "note", -1)))
    track = mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=MIDI_TEMPO, time=0)])
    now = 0
    for t, _, message in events:
        track.append(message.copy(time=t - now))
        now = t
    track.append(mido.MetaMessage("end_of_track", time=max(0, tick(end_seconds) - now)))
    midi = mido.MidiFile(type=0, ticks_per_beat=TICKS_PER_BEAT)
    midi.tracks.append(track)
    midi.save(str(path))


def render_stem(fluidsynth: str, soundfont: Path, midi_path: Path, wav_path: Path, sample_rate: int) -> np.ndarray:
    """Render one MIDI file; mono float32 (fluidsynth always writes stereo, so average)."""
    # Reverb and chorus off: the stems must stay dry to sum to the mix. Dynamic
    # sample loading reads only the samples the file uses (FluidR3 is 148 MB).
    command = [fluidsynth, "-ni", "-q", "-R", "0", "-C", "0", "-r", str(sample_rate), "-g", FLUIDSYNTH_GAIN,
               "-o", "synth.dynamic-sample-loading=1",
               "-O", "float", "-T", "wav", "-F", str(wav_path), str(soundfont), str(midi_path)]
    # SDL's audio probing costs ~0.1 s per start, more than rendering a short
    # stem; a file render never plays audio, so point SDL at its dummy driver.
    env = {**os.environ, "SDL_AUDIODRIVER": "dummy"}
    try:
        result = subprocess.run(command, check=False, capture_output=True, text=True, env=env,
                                timeout=RENDER_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        raise SynthError(f"fluidsynth did not finish {midi_path.name} with {soundfont.name} within "
                         f"{RENDER_TIMEOUT_SECONDS} s (a damaged SoundFont or MIDI file?)") from None
    if result.returncode != 0 or not wav_path.is_file():
        raise SynthError(f"fluidsynth failed on {midi_path.name} (exit {result.returncode}): "
                         f"{(result.stderr or result.stdout).strip()[-500:]}")
    audio, rate = sf.read(str(wav_path), dtype="float32", always_2d=True)
    if rate != sample_rate:
        raise SynthError(f"fluidsynth wrote {rate} Hz instead of {sample_rate} Hz")
    return audio.mean(axis=1, dtype=np.float32)


def _fit(x: np.ndarray, frames: int, sample_rate: int) -> np.ndarray:
    """Crop or zero-pad to ``frames``, then fade the end out."""
    out = np.zeros(frames, np.float32)
    out[: min(frames, len(x))] = x[:frames]
    fade = min(frames, max(1, int(FADE_SECONDS * sample_rate)))
    out[-fade:] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
    return out


def mix_stems(stems: dict[str, np.ndarray], gains_db: dict[str, float]) -> tuple[dict, np.ndarray, float]:
    """Level the stems, sum them in a fixed order, and scale all by one factor
    so the mix peaks at MIX_PEAK. Returns (stems, mix, that factor)."""
    leveled = {}
    for stem in STEMS:
        x = stems[stem]
        rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
        gain = 10 ** ((STEM_RMS_DB + gains_db[stem]) / 20) / rms if rms > 1e-7 else 1.0
        leveled[stem] = (x * np.float32(gain)).astype(np.float32)
    scale = MIX_PEAK / max(float(np.abs(_sum(leveled)).max()), 1e-9)
    while True:  # float rounding can land the scaled mix a hair above the target
        scaled = {stem: (x * np.float32(scale)).astype(np.float32) for stem, x in leveled.items()}
        mix = _sum(scaled)
        if float(np.abs(mix).max()) <= MIX_PEAK:
            return scaled, mix, scale
        scale *= 1 - 1e-6


def _sum(stems: dict[str, np.ndarray]) -> np.ndarray:
    """((bass + drums) + guitar) + piano in float32: the order a reader must use to get mix.wav exactly."""
    mix = stems[STEMS[0]].astype(np.float32)
    for stem in STEMS[1:]:
        mix = mix + stems[stem]
    return mix


def write_wav_float32(path: Path, samples: np.ndarray, sample_rate: int) -> None:
    """Mono float32 WAV written by hand: libsndfile adds a PEAK chunk holding
    the current time, which would make two identical renders differ."""
    data = np.ascontiguousarray(samples, dtype="<f4").tobytes()
    fmt = struct.pack("<HHIIHHH", 3, 1, sample_rate, sample_rate * 4, 4, 32, 0)  # IEEE float, cbSize 0
    fact = struct.pack("<I", len(samples))
    body = (b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"fact" + struct.pack("<I", 4) + fact
            + b"data" + struct.pack("<I", len(data)) + data)
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
