"""`msdm dataset unseen`: test tracks made only of material the project never
trains on (reserved.py), to measure separation on music, instruments and
drum kits the separator has never heard.

* Music: the music21 corpus folders of Monteverdi (5- and 6-part madrigals)
  and Josquin (4- and 5-voice chansons). Each track takes the lowest voice
  for the bass and three upper voices, drawn per track, for guitar and piano;
  arrangement.py does the rest as for the training data (tempo, transposition,
  octave folding, the generated drum part).
* Pitched stems: TiMidity++ with the freepats patches (timidity.py); a GM
  program per stem drawn per track from the ones freepats has.
* Drums: the drum part played with the recorded samples of a Hydrogen kit
  (hydrogen.py), a kit drawn per track.

Same layout as the synthetic dataset (dataset.py), test split only, so
``msdm evaluate --data OUT --split test`` scores it unchanged::

    OUT/dataset.json                 summary: tools, packages and licences, kits, skipped tracks
    OUT/test/TrackNNNNN/             bass.wav drums.wav guitar.wav piano.wav mix.wav
                                     metadata.json midi/<stem>.mid

A track that cannot be made (an unreadable score or sample, a synthesiser
that fails or runs past its timeout) is skipped and listed in dataset.json;
the others are written. An interrupted render resumes: finished tracks are
kept and a rerun renders the rest (and tries the skipped ones again).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import zipfile
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from engine.atomic import write_atomic

from . import hydrogen, timidity
from .arrangement import PROGRAMS, STEMS, arrange
from .corpus import _music21, load_piece, Piece, SynthError, TrackPlan, UnusablePiece
from .dataset import _default_jobs, RELEASE_SECONDS
from .reserved import RESERVED_COMPOSERS, RESERVED_TOOLS
from .rendering import _fit, MIDI_TEMPO, mix_stems, TICKS_PER_BEAT, write_midi, write_wav_float32


# Bump when a change alters the audio, so a resumed run never mixes versions.
UNSEEN_VERSION = "1"
SPLIT = "test"
MAX_PARTS = 6  # Monteverdi's fifth book: five voices and a continuo
PITCHED = ("bass", "guitar", "piano")
# A per-track random stream of its own: tracks of this set never repeat the
# draws of the synthetic dataset's track of the same number and seed.
STREAM = 0x756E  # "un"
MIDI_TICKS_PER_SECOND = TICKS_PER_BEAT * 1_000_000 // MIDI_TEMPO  # write_midi's grid (0.5 ms)

# Licences, from each package's /usr/share/doc/<package>/copyright (Debian 12);
# each Hydrogen kit's own licence is read from its drumkit.xml.
PACKAGE_LICENCES = {
    "timidity": "GPL-2+ (the program; its output is not covered)",
    "freepats": "GPL-2+ with a composition exception (a composition using the patches is not covered)",
    "hydrogen-drumkits": "per kit: GPL-2, GPL-2+, CC-BY-3.0, CC-BY-SA-3.0, CC0 (drumkit.xml <license>)",
}
MUSIC_SOURCE = "music21 corpus (BSD-3-Clause encodings of public-domain music)"


def _decode(data: bytes) -> str:
    """XML text; some of the madrigals are stored in UTF-16 (with a byte-order mark)."""
    return data.decode("utf-16") if data[:2] in (b"\xff\xfe", b"\xfe\xff") else data.decode("utf-8", "replace")


def _part_count(path: Path) -> int:
    """Parts of a corpus file without parsing it with music21 (a second per
    madrigal): <score-part> entries of a MusicXML file, tunes (X: lines) of an
    ABC file, where each tune is one voice."""
    if path.suffix == ".mxl":
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith((".xml", ".musicxml")) and not n.startswith("META-INF")]
            return max((len(re.findall(r"<score-part[\s>]", _decode(archive.read(n)))) for n in names), default=0)
    if path.suffix == ".abc":
        return sum(1 for line in path.read_text(errors="replace").splitlines() if re.match(r"X:\s*\d", line))
    return 0


def reserved_pieces() -> tuple[str, ...]:
    """Corpus paths of the reserved pieces with 4 to MAX_PARTS voices, sorted.
    Roman-numeral analyses (.rntxt) and the older duplicate of madrigal 3.1
    ('_old') are not pieces to play."""
    corpus = _music21().corpus
    pieces = []
    for composer in RESERVED_COMPOSERS:
        for path in map(Path, corpus.getComposer(composer)):
            if path.suffix in (".mxl", ".abc") and not path.stem.endswith("_old") and 4 <= _part_count(path) <= MAX_PARTS:
                pieces.append(f"{composer}/{path.name}")
    if not pieces:
        raise SynthError(f"music21's corpus has none of the reserved pieces ({', '.join(RESERVED_COMPOSERS)}); "
                         "reinstall it: pip install music21")
    return tuple(sorted(pieces))


def plan_unseen(tracks: int, seed: int, pieces: tuple[str, ...]) -> list[TrackPlan]:
    """Track i plays the i-th piece of a seeded shuffle (pieces repeat only
    once all are used), with the next three as fallbacks."""
    order = list(pieces)
    np.random.default_rng([seed, STREAM]).shuffle(order)
    n = len(order)
    return [TrackPlan(i, f"Track{i + 1:05d}", SPLIT, order[i % n],
                      tuple(order[(i + j) % n] for j in range(1, min(4, n)))) for i in range(tracks)]


def four_voices(piece: Piece, rng: np.random.Generator) -> tuple[Piece, list[str]]:
    """The piece as arrange() wants it: three upper voices (drawn, in their
    order) and the lowest voice last. Returns it and the voices left out."""
    upper = list(range(len(piece.voices) - 1))
    keep = sorted(rng.choice(upper, size=3, replace=False).tolist()) if len(upper) > 3 else upper
    chosen = keep + [len(piece.voices) - 1]
    dropped = [piece.names[i] for i in upper if i not in keep]
    return replace(piece, voices=[piece.voices[i] for i in chosen], names=[piece.names[i] for i in chosen]), dropped


@dataclass(frozen=True)
class Job:
    plan: TrackPlan
    out_dir: str
    seed: int
    sample_rate: int
    max_seconds: float
    timidity: str
    freepats: str
    kits_folder: str


def _identity(job: Job) -> dict:
    """What must match for an existing track folder to count as done."""
    return {"planned_piece": job.plan.piece, "split": job.plan.split, "seed": job.seed,
            "sample_rate": job.sample_rate, "max_seconds": job.max_seconds, "generator": "unseen",
            "unseen_version": UNSEEN_VERSION}


def _first_usable_piece(plan: TrackPlan, cache_dir: Path) -> Piece:
    problems = []
    for piece_id in (plan.piece, *plan.fallbacks):
        try:
            return load_piece(piece_id, cache_dir, parts=tuple(range(4, MAX_PARTS + 1)))
        except UnusablePiece as exc:
            problems.append(f"{piece_id}: {exc}")
    raise SynthError(f"no usable piece among its candidates ({'; '.join(problems)})")


def _programs(rng, freepats: Path) -> dict[str, int]:
    """A GM program per pitched stem, from those freepats has in the stem's family."""
    have = timidity.available_programs(freepats)
    programs = {}
    for stem in PITCHED:
        choices = sorted(p for p in PROGRAMS[stem] if p in have)
        if not choices:
            raise SynthError(f"{freepats} has no {stem} program (GM {PROGRAMS[stem].start}-{PROGRAMS[stem].stop - 1})")
        programs[stem] = int(rng.choice(choices))
    return programs


def render_track(job: Job) -> dict:
    """Render one track into a temporary folder and rename it into place."""
    plan, sr = job.plan, job.sample_rate
    split_dir = Path(job.out_dir) / plan.split
    rng = np.random.default_rng([job.seed, plan.index, STREAM])
    piece = _first_usable_piece(plan, Path(job.out_dir) / ".cache" / "pieces")
    four, dropped = four_voices(piece, rng)
    notes, info = arrange(four, rng, job.max_seconds)
    programs = _programs(rng, Path(job.freepats))
    kits = hydrogen.drum_kits(Path(job.kits_folder))
    kit = kits[int(rng.integers(len(kits)))]
    gains_db = {"bass": rng.uniform(-4, 2), "drums": rng.uniform(-3, 3),
                "guitar": rng.uniform(-5, 1), "piano": rng.uniform(-5, 1)}
    seconds = min(job.max_seconds, info["music_seconds"] + RELEASE_SECONDS)
    frames = round(seconds * sr)
    # Generous: timidity renders tens of times faster than real time.
    timeout = 60.0 + 4.0 * seconds

    tmp = Path(tempfile.mkdtemp(prefix=f"{plan.name}.tmp-", dir=split_dir))
    try:
        (tmp / "midi").mkdir()
        raw, volumes = {}, {}
        for stem in PITCHED:
            midi = tmp / "midi" / f"{stem}.mid"
            write_midi(midi, notes[stem], programs[stem], seconds)
            rendered = tmp / f"{stem}.render.wav"
            audio, volumes[stem] = timidity.render_midi(job.timidity, Path(job.freepats), midi, rendered, sr, timeout)
            raw[stem] = _fit(audio, frames, sr)
            rendered.unlink()
            if float(np.abs(raw[stem]).max()) < 1e-4:
                raise SynthError(f"timidity rendered silence for the {stem} (program {programs[stem]})")
        # Hits on write_midi's 0.5 ms grid, so midi/drums.mid plays back to exactly this stem.
        for note in notes["drums"]:
            note.on = round(note.on * MIDI_TICKS_PER_SECOND) / MIDI_TICKS_PER_SECOND
        write_midi(tmp / "midi" / "drums.mid", notes["drums"], 0, seconds)
        drums, samples = hydrogen.play(kit, notes["drums"], frames, sr)
        raw["drums"] = _fit(drums, frames, sr)
        stems, mix, scale = mix_stems(raw, gains_db)
        for stem in STEMS:
            write_wav_float32(tmp / f"{stem}.wav", stems[stem], sr)
        write_wav_float32(tmp / "mix.wav", mix, sr)
        info.pop("programs")
        metadata = {
            "track": plan.name, **_identity(job), "piece": piece.id, "track_index": plan.index,
            "composer": piece.id.split("/")[0], "parts_in_piece": len(piece.voices), "voices_left_out": dropped,
            **info, "programs": programs, "renderer": {s: "timidity+freepats" for s in PITCHED} | {
                "drums": "hydrogen-drumkits samples"},
            "timidity_volume": volumes, "freepats_config": job.freepats,
            "drum_kit": kit.describe(), "drum_samples": sorted(Path(s).name for s in samples),
            "gains_db": {s: round(float(g), 4) for s, g in gains_db.items()},
            "normalise_gain": scale, "duration_seconds": frames / sr, "frames": frames,
            "stems": list(STEMS), "mix": "((bass + drums) + guitar) + piano, float32",
            "reserved": "evaluation only: never train, tune or select models on this track",
        }
        (tmp / "metadata.json").write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
        os.rename(tmp, split_dir / plan.name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return metadata


def _finished(job: Job) -> dict | None:
    """The metadata of an already rendered track, or None; a folder rendered
    with other settings is an error, not something to keep silently."""
    folder = Path(job.out_dir) / job.plan.split / job.plan.name
    if not folder.is_dir():
        return None
    meta_path = folder / "metadata.json"
    metadata = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    expected = _identity(job)
    if {k: metadata.get(k) for k in expected} != expected:
        raise SynthError(f"{folder} was rendered with other settings than this run "
                         f"(expected {expected}); render into a new folder or delete it.")
    return metadata


def _render_or_skip(job: Job) -> tuple[dict | None, str | None]:
    """(metadata, None), or (None, why) for a track that could not be made."""
    try:
        return render_track(job), None
    except SynthError as error:
        return None, str(error)


def package_versions(packages=RESERVED_TOOLS) -> dict[str, str]:
    """Installed Debian package versions ('unknown' without dpkg)."""
    versions = {}
    for package in packages:
        try:
            result = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", package], capture_output=True,
                                    text=True, timeout=30, check=False)
            versions[package] = result.stdout.strip() if result.returncode == 0 and result.stdout.strip() else "unknown"
        except (OSError, subprocess.TimeoutExpired):
            versions[package] = "unknown"
    return versions


def render_unseen(out_dir, tracks: int, seed: int = 0, *, sample_rate: int = 22050, max_seconds: float = 60.0,
                  jobs: int | None = None, progress=None, kits_folder: Path = hydrogen.KITS_FOLDER,
                  freepats: Path = timidity.FREEPATS_CONFIG) -> dict:
    """Render ``tracks`` test tracks into ``out_dir`` (resumable) and write
    dataset.json. ``progress(done, total)`` is called with the tracks already
    there, then after each track (made or skipped). Returns the summary."""
    if tracks < 1:
        raise ValueError(f"tracks must be at least 1, got {tracks}")
    if max_seconds <= 0:
        raise ValueError(f"max_seconds must be positive, got {max_seconds}")
    # The tools and sounds first: missing ones stop the run, before any track.
    program = timidity.find_timidity()
    config = timidity.find_freepats(Path(freepats))
    kits = hydrogen.drum_kits(Path(kits_folder))
    pieces = reserved_pieces()
    out = Path(out_dir)
    (out / SPLIT).mkdir(parents=True, exist_ok=True)
    for stale in (out / SPLIT).glob("Track*.tmp-*"):  # left by an interrupted run
        shutil.rmtree(stale, ignore_errors=True)

    jobs_list = [Job(plan, str(out), seed, int(sample_rate), float(max_seconds), program, str(config),
                     str(kits_folder)) for plan in plan_unseen(tracks, seed, pieces)]
    results = {job.plan.index: m for job in jobs_list if (m := _finished(job)) is not None}
    todo = [job for job in jobs_list if job.plan.index not in results]
    skipped: dict[int, str] = {}
    if progress:
        progress(len(results), len(jobs_list))

    def record(job, outcome):
        metadata, why = outcome
        if metadata is None:
            skipped[job.plan.index] = why
        else:
            results[job.plan.index] = metadata
        if progress:
            progress(len(results) + len(skipped), len(jobs_list))

    workers = max(1, min(jobs or _default_jobs(), len(todo) or 1))
    if workers == 1:
        for job in todo:
            record(job, _render_or_skip(job))
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(_render_or_skip, job): job for job in todo}
            try:
                for future in as_completed(futures):
                    record(futures[future], future.result())
            except BaseException:  # fail now, not after rendering every queued track
                pool.shutdown(wait=True, cancel_futures=True)
                raise

    summary = _summary(jobs_list, results, skipped, seed, sample_rate, max_seconds, program, kits)
    write_atomic(out / "dataset.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary


def _summary(jobs_list, results, skipped, seed, sample_rate, max_seconds, program, kits) -> dict:
    metas = [results[j.plan.index] for j in jobs_list if j.plan.index in results]
    used_kits = sorted({m["drum_kit"]["folder"] for m in metas})
    return {
        "generator": "msdm-studio training.synth.unseen",
        "unseen_version": UNSEEN_VERSION,
        "reserved": "evaluation only: never train, tune or select models on this material",
        "music": {"source": MUSIC_SOURCE, "composers": list(RESERVED_COMPOSERS),
                  "music21_version": _music21().__version__},
        "tools": {"timidity": timidity.timidity_version(program), "packages": package_versions(),
                  "licences": PACKAGE_LICENCES},
        "drum_kits": {k.folder.name: {"name": k.name, "author": k.author, "license": k.license}
                      for k in kits if k.folder.name in used_kits},
        "drum_kits_available": [k.folder.name for k in kits],
        "seed": seed,
        "tracks": len(jobs_list),
        "sample_rate": sample_rate,
        "max_seconds": max_seconds,
        "stems": list(STEMS),
        "splits": {SPLIT: {"tracks": len(metas), "seconds": round(sum(m["duration_seconds"] for m in metas), 6),
                           "pieces": sorted({m["piece"] for m in metas})}},
        "skipped": [{"track": j.plan.name, "piece": j.plan.piece, "error": skipped[j.plan.index]}
                    for j in jobs_list if j.plan.index in skipped],
        "seconds": round(sum(m["duration_seconds"] for m in metas), 6),
    }
