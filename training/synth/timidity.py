"""Pitched stems for evaluation only: MIDI rendered by TiMidity++ with the
freepats GUS patches (RESERVED: see reserved.py), a synthesiser and sample set
the training renderer (fluidsynth + SoundFonts, rendering.py) never uses.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import soundfile as sf

from .corpus import SynthError


INSTALL_HINT = "apt-get install timidity freepats"
FREEPATS_CONFIG = Path("/etc/timidity/freepats.cfg")

# TiMidity's master volume, in percent. 16-bit or 24-bit output clips, so a
# render that reaches full scale is rendered again at half the volume.
VOLUMES = (70, 35, 17)
CLIPPED = 0.999


def find_timidity() -> str:
    path = shutil.which("timidity")
    if path is None:
        raise SynthError(f"The 'timidity' program is not on PATH. Install it: {INSTALL_HINT}")
    return path


def timidity_version(timidity: str) -> str:
    """'TiMidity++ version 2.14.0', from the program itself."""
    result = subprocess.run([timidity, "--version"], capture_output=True, text=True, timeout=30, check=False)
    first = (result.stdout or result.stderr).strip().splitlines()
    return first[0] if first else "unknown"


def find_freepats(config: Path = FREEPATS_CONFIG) -> Path:
    if not config.is_file():
        raise SynthError(f"The freepats configuration {config} does not exist. Install it: {INSTALL_HINT}")
    return config


def available_programs(config: Path) -> frozenset[int]:
    """The General MIDI programs (0-based) of bank 0 whose patch file exists.

    freepats is incomplete (no program 3, 31 or 39, for instance); TiMidity
    plays a missing program with another instrument, so tracks draw only from
    these.
    """
    base, bank, programs = config.parent, None, set()
    for raw in config.read_text(errors="replace").splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        words = line.split()
        if words[0] == "dir" and len(words) > 1:
            base = Path(words[1])
        elif words[0] in ("bank", "drumset"):
            bank = (words[0], int(words[1])) if len(words) > 1 and words[1].isdigit() else None
        elif bank == ("bank", 0) and re.fullmatch(r"\d+", words[0]) and len(words) > 1:
            if (base / words[1]).is_file():
                programs.add(int(words[0]))
    return frozenset(programs)


def render_midi(timidity: str, config: Path, midi_path: Path, wav_path: Path, sample_rate: int,
                timeout: float) -> tuple[np.ndarray, int]:
    """Render one MIDI file to mono float32; returns (audio, the volume used).

    Reverb, chorus and delay off: stems must stay dry to sum to the mix. A
    render that runs past ``timeout`` seconds is killed and is a SynthError.
    """
    for volume in VOLUMES:
        command = [timidity, "-c", str(config), "-Ow", "--output-mono", "--output-24bit", "-s", str(sample_rate),
                   "-EFreverb=d", "-EFchorus=d", "-EFdelay=d", f"-A{volume}", "-o", str(wav_path), str(midi_path)]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False,
                                    stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise SynthError(f"timidity ran past {timeout:.0f} s on {midi_path.name} and was stopped") from None
        if result.returncode != 0 or not wav_path.is_file():
            raise SynthError(f"timidity failed on {midi_path.name} (exit {result.returncode}): "
                             f"{(result.stderr or result.stdout).strip()[-500:]}")
        try:
            audio, rate = sf.read(str(wav_path), dtype="float32", always_2d=True)
        except (RuntimeError, sf.LibsndfileError) as error:
            raise SynthError(f"timidity wrote an unreadable file for {midi_path.name}: {error}") from None
        if rate != sample_rate:
            raise SynthError(f"timidity wrote {rate} Hz instead of {sample_rate} Hz")
        mono = audio.mean(axis=1, dtype=np.float32)
        if mono.size == 0 or float(np.abs(mono).max()) < CLIPPED:
            return mono, volume
    raise SynthError(f"timidity's render of {midi_path.name} clips even at volume {VOLUMES[-1]}%")
