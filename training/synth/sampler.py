"""A sample player: recorded instruments (multi-sampled, velocity layers) and
drum kits (one-shots per General MIDI key) rendered from MidiNotes.

An instrument is a folder with an ``instrument.json`` (written by
training.synth.fetch_samples, or by hand)::

    {"name": "...", "stem": "piano", "kind": "pitched" | "drums",
     "release_s": 0.25, "velocity_exponent": 1.0,
     "zones": [{"file": "v10/C4v10.ogg", "root": 60, "velocity": [1, 127]},   # pitched
               {"file": "/abs/kick.flac", "keys": [35, 36], "velocity": [1, 127]}]}  # drums

Pitched notes play the zone whose velocity range holds the note's velocity and
whose root is nearest the pitch (ties: the lower root), pitch-shifted by
resampling: read at rate 2^((pitch - root) / 12) with linear interpolation, the
classic sampler's "varispeed" (the zones of a multi-sample are a few semitones
apart, so the shift stays small and linear interpolation's aliasing low). Gain is
(velocity / zone's top velocity) ** velocity_exponent, so within a layer a harder
note is louder and the recorded layers carry the rest. A note-off starts a
raised-cosine release of ``release_s``; polyphony is the sum. Drums ignore
note-offs (one-shots), draw one of the key's alternatives, a gain jitter and a
few cents of detune per hit (a drummer never hits twice alike), and an open
hi-hat is choked by the next closed or pedal hat. Everything random comes from
the ``rng`` passed in: same notes and seed, same samples.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from engine.atomic import write_atomic

from .corpus import MidiNote, SynthError

SAMPLES_ENV = "MSDM_SAMPLES"
MAX_SAMPLE_SECONDS = 6.0  # longer decays are cut (and faded): a piano note held longer fades to silence
END_FADE_SECONDS = 0.05
DRUM_GAIN_JITTER_DB = 1.5  # standard deviation per hit
DRUM_DETUNE_CENTS = 15.0  # standard deviation per hit
HAT_CHOKE_SECONDS = 0.03
OPEN_HAT, CHOKING_HATS = 46, (42, 44)

# A key the kit lacks plays the first of these it has (GM percussion families).
GM_FALLBACK = {
    35: (36,), 36: (35,), 37: (38, 40), 38: (40,), 39: (38, 40), 40: (38,),
    41: (43, 45), 43: (41, 45), 45: (47, 43), 47: (45, 48), 48: (50, 47), 50: (48, 47),
    42: (44, 46), 44: (42, 46), 46: (42, 44),
    49: (57, 55, 52, 51), 57: (49, 55, 52, 51), 52: (49, 57, 55), 55: (49, 57, 52),
    51: (59, 53, 49), 59: (51, 53, 49), 53: (51, 59),
    54: (42,), 56: (51, 42), 69: (42,), 70: (42,),
}


@dataclass(frozen=True)
class Zone:
    path: Path
    velocity: tuple[int, int]
    root: int | None = None  # pitched: the MIDI pitch the recording sounds
    keys: tuple[int, ...] = ()  # drums: the GM keys it answers


@dataclass(frozen=True)
class SampledInstrument:
    folder: Path
    name: str
    stem: str
    kind: str  # "pitched" or "drums"
    zones: tuple[Zone, ...]
    release_s: float = 0.2
    velocity_exponent: float = 1.5

    @classmethod
    def load(cls, folder: Path) -> SampledInstrument:
        manifest_path = Path(folder) / "instrument.json"
        try:
            manifest = json.loads(manifest_path.read_text())
            zones = tuple(
                Zone(path=(Path(folder) / z["file"]), velocity=(int(z["velocity"][0]), int(z["velocity"][1])),
                     root=z.get("root"), keys=tuple(z.get("keys", ())))
                for z in manifest["zones"])
            instrument = cls(folder=Path(folder), name=manifest["name"], stem=manifest["stem"], kind=manifest["kind"], zones=zones,
                             release_s=float(manifest.get("release_s", 0.2)),
                             velocity_exponent=float(manifest.get("velocity_exponent", 1.5)))
        except (OSError, ValueError, KeyError, TypeError, IndexError) as error:
            raise SynthError(f"{manifest_path}: not a readable instrument manifest ({error})") from error
        if instrument.kind not in ("pitched", "drums") or not zones:
            raise SynthError(f"{manifest_path}: kind must be 'pitched' or 'drums' and zones non-empty")
        if instrument.kind == "pitched" and any(z.root is None for z in zones):
            raise SynthError(f"{manifest_path}: every pitched zone needs a 'root'")
        return instrument


def samples_root(root: str | os.PathLike | None = None) -> Path:
    """Where the installed instruments are: ``root``, else $MSDM_SAMPLES, else ~/.cache/msdm-studio/samples."""
    if root is not None:
        return Path(root)
    return Path(os.environ.get(SAMPLES_ENV, Path.home() / ".cache" / "msdm-studio" / "samples"))


def _instruments(root: Path) -> dict[str, SampledInstrument]:
    manifests = sorted(root.glob("*/instrument.json"))
    stamps = []
    for manifest in manifests:
        try:
            stamps.append((str(manifest), manifest.stat().st_mtime_ns))
        except OSError:  # removed while we looked
            pass
    # Checked on every call, not cached: a half-removed install is not offered.
    return {name: inst for name, inst in _load_instruments(tuple(stamps)).items()
            if all(z.path.is_file() for z in inst.zones)}


@functools.lru_cache(maxsize=16)
def _load_instruments(stamps: tuple[tuple[str, int], ...]) -> dict[str, SampledInstrument]:
    """The instruments of these manifests (cached by path and time: a rewritten one is read again)."""
    found = {}
    for manifest, _ in stamps:
        manifest = Path(manifest)
        instrument = SampledInstrument.load(manifest.parent)
        found[instrument.name] = instrument
    return found


def available_sample_instruments(stem: str, root: str | os.PathLike | None = None) -> list[str]:
    """Names of the installed sampled instruments for ``stem`` (sorted; [] when none is installed)."""
    return sorted(name for name, inst in _instruments(samples_root(root)).items() if inst.stem == stem)


def render_sampled(stem: str, instrument_name: str, notes: list[MidiNote], sample_rate: int, frames: int,
                   rng: np.random.Generator, root: str | os.PathLike | None = None) -> np.ndarray:
    """Render ``notes`` with the installed instrument ``instrument_name``: mono float32, ``frames`` long."""
    instruments = _instruments(samples_root(root))
    instrument = instruments.get(instrument_name)
    if instrument is None or instrument.stem != stem:
        raise SynthError(f"no sampled {stem} instrument '{instrument_name}' under {samples_root(root)}; "
                         f"installed: {available_sample_instruments(stem, root)} "
                         "(python -m training.synth.fetch_samples installs them)")
    return render_notes(instrument, notes, sample_rate, frames, rng)


def render_notes(instrument: SampledInstrument, notes: list[MidiNote], sample_rate: int, frames: int,
                 rng: np.random.Generator) -> np.ndarray:
    out = np.zeros(frames, np.float32)
    if instrument.kind == "drums":
        _render_drums(instrument, notes, sample_rate, out, rng)
    else:
        _render_pitched(instrument, notes, sample_rate, out, rng)
    return out


@functools.lru_cache(maxsize=1024)
def load_sample(path: Path, sample_rate: int, cache_dir: Path | None = None) -> np.ndarray:
    """A sample file as mono float32 at ``sample_rate``, at most MAX_SAMPLE_SECONDS (faded if cut).

    Decoding (Vorbis above all) and resampling cost ~100x more than playing, so
    the result is kept as .npy in ``cache_dir`` (the instrument's folder, named by
    the file's path, size and time: an edited sample is decoded again); a
    folder that cannot be written only loses the cache.
    """
    try:
        stat = path.stat()
    except OSError as error:
        raise SynthError(f"cannot read sample {path}: {error}") from error
    key = hashlib.sha1(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{MAX_SAMPLE_SECONDS}".encode()).hexdigest()
    cached = None if cache_dir is None else cache_dir / f".decoded-{sample_rate}" / f"{path.stem}-{key[:16]}.npy"
    if cached is not None and cached.is_file():
        mono = np.load(cached)
    else:
        mono = _decode(path, sample_rate)
        if cached is not None:
            try:
                cached.parent.mkdir(exist_ok=True)
                buffer = io.BytesIO()
                np.save(buffer, mono, allow_pickle=False)
                write_atomic(cached, buffer.getvalue())
            except OSError:
                pass
    mono.setflags(write=False)  # shared by every note that plays it
    return mono


def _decode(path: Path, sample_rate: int) -> np.ndarray:
    try:
        info = sf.info(str(path))
        with sf.SoundFile(str(path)) as handle:
            audio = handle.read(frames=int(MAX_SAMPLE_SECONDS * info.samplerate) + 1, dtype="float32", always_2d=True)
    except (OSError, RuntimeError, sf.LibsndfileError) as error:
        raise SynthError(f"cannot read sample {path}: {error}") from error
    mono = audio.mean(axis=1)
    if info.samplerate != sample_rate:
        mono = soxr.resample(mono, info.samplerate, sample_rate, quality="HQ").astype(np.float32)
    if info.duration > MAX_SAMPLE_SECONDS:
        fade = min(len(mono), int(END_FADE_SECONDS * sample_rate))
        mono[-fade:] *= np.linspace(1, 0, fade, dtype=np.float32)
    return np.ascontiguousarray(mono, dtype=np.float32)


def _in_range(zone: Zone, velocity: int) -> bool:
    return zone.velocity[0] <= velocity <= zone.velocity[1]


def _pitched_zone(instrument: SampledInstrument, pitch: int, velocity: int) -> Zone:
    zones = [z for z in instrument.zones if _in_range(z, velocity)] or list(instrument.zones)
    return min(zones, key=lambda z: (abs(z.root - pitch), z.root))


def _gain(instrument: SampledInstrument, zone: Zone, velocity: int) -> float:
    return (max(1, velocity) / max(1, zone.velocity[1])) ** instrument.velocity_exponent


def _varispeed(data: np.ndarray, ratio: float, count: int) -> np.ndarray:
    """``count`` output samples reading ``data`` at ``ratio`` input samples per output
    sample, linearly interpolated (count is chosen so the last read stays inside)."""
    position = np.arange(count, dtype=np.float64) * ratio
    index = position.astype(np.int64)
    frac = (position - index).astype(np.float32)
    nxt = np.minimum(index + 1, len(data) - 1)
    return data[index] * (1 - frac) + data[nxt] * frac


def _add(out: np.ndarray, start: int, segment: np.ndarray) -> None:
    end = min(len(out), start + len(segment))
    if end > start >= 0:
        out[start:end] += segment[: end - start]


def _render_pitched(instrument, notes, sample_rate, out, rng) -> None:
    release = max(1, int(round(instrument.release_s * sample_rate)))
    # A raised-cosine release: no click at the note-off, none at the end.
    release_curve = (0.5 * (1 + np.cos(np.linspace(0, np.pi, release)))).astype(np.float32)
    for note in notes:
        start = int(round(note.on * sample_rate))
        if start >= len(out) or note.off <= note.on:
            continue
        zone = _pitched_zone(instrument, note.pitch, note.velocity)
        data = load_sample(zone.path, sample_rate, instrument.folder)
        ratio = 2.0 ** ((note.pitch - zone.root) / 12.0)
        held = max(1, int(round((note.off - note.on) * sample_rate)))
        count = min(held + release, len(out) - start, int((len(data) - 1) / ratio))
        if count <= 0:
            continue
        segment = _varispeed(data, ratio, count)
        if count > held:
            segment[held:] *= release_curve[: count - held]
        gain = _gain(instrument, zone, note.velocity) * 10 ** (rng.normal(0, 0.3) / 20)  # a player's unevenness
        _add(out, start, segment * np.float32(gain))


def _drum_zones(instrument: SampledInstrument, key: int, velocity: int) -> list[Zone]:
    for candidate in (key, *GM_FALLBACK.get(key, ())):
        zones = [z for z in instrument.zones if candidate in z.keys]
        if zones:
            return [z for z in zones if _in_range(z, velocity)] or zones
    return []


def _render_drums(instrument, notes, sample_rate, out, rng) -> None:
    hits = sorted(notes, key=lambda n: (n.on, n.pitch))
    choke_times = [n.on for n in hits if n.pitch in CHOKING_HATS]
    choke = max(1, int(HAT_CHOKE_SECONDS * sample_rate))
    for note in hits:
        zones = _drum_zones(instrument, note.pitch, note.velocity)
        # The draws happen for every hit, sounding or not, so one missing key
        # does not shift the random choices of all the hits after it.
        pick, jitter_db, cents = rng.integers(1 << 30), rng.normal(0, DRUM_GAIN_JITTER_DB), rng.normal(0, DRUM_DETUNE_CENTS)
        start = int(round(note.on * sample_rate))
        if not zones or start >= len(out):
            continue
        zone = zones[int(pick) % len(zones)]
        data = load_sample(zone.path, sample_rate, instrument.folder)
        ratio = 2.0 ** (cents / 1200.0)
        count = min(len(out) - start, int((len(data) - 1) / ratio))
        if note.pitch == OPEN_HAT:  # choked by the next closed or pedal hat
            after = bisect_right(choke_times, note.on)
            if after < len(choke_times):
                count = min(count, int(round((choke_times[after] - note.on) * sample_rate)) + choke)
        if count <= 0:
            continue
        segment = _varispeed(data, ratio, count)
        if note.pitch == OPEN_HAT and count < int((len(data) - 1) / ratio):
            tail = min(choke, count)
            segment[-tail:] *= np.linspace(1, 0, tail, dtype=np.float32)
        gain = _gain(instrument, zone, note.velocity) * 10 ** (jitter_db / 20)
        _add(out, start, segment * np.float32(gain))

