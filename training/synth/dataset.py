"""The dataset: one folder per track, rendered in parallel, resumable (finished
tracks are kept, a track folder appears whole or not at all), with a summary
in dataset.json.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from engine.atomic import write_atomic

from .arrangement import arrange, STEMS
from .corpus import _music21, first_usable_piece, plan_tracks, SPLITS, SynthError, TrackPlan
from .generated import arrange_track
from .timbres import (HOLDOUT_SAMPLED, SOUNDFONT_PACKAGES, TIMBRE_PLANS, draw_timbre, holdout_sample_instruments,
                      missing_plan_soundfonts, render_timbre, training_sample_instruments)
from .fetch_samples import FETCHED_INSTRUMENTS
from .rendering import _find_fluidsynth, _fit, find_soundfont, mix_stems, render_stem, write_midi, write_wav_float32


# Bump when a change alters the audio, so a resumed run never mixes versions.
GENERATOR_VERSION = "1"

# The diverse/holdout engine's own version (2: avldrums keys remapped;
# 3: the installed sampled instruments drawn).
TIMBRE_VERSION = 3

RELEASE_SECONDS = 1.5  # kept after the last note-off for the decay


@dataclass(frozen=True)
class Job:
    plan: TrackPlan
    out_dir: str
    seed: int
    sample_rate: int
    max_seconds: float
    soundfonts: tuple[str, ...]
    fluidsynth: str
    timbres: str = "soundfonts"   # training.synth.timbres.TIMBRE_PLANS
    music: str = "corpus"         # "corpus", or "mixed": half the tracks composed (training.synth.generated)

    def soundfont_for(self, stem: str) -> str:
        """Each stem of a track draws its SoundFont from the dataset's list, from
        its own random stream (not the arrangement's), so one SoundFont renders
        exactly as before and several give every instrument several timbres."""
        if len(self.soundfonts) == 1:
            return self.soundfonts[0]
        rng = np.random.default_rng([self.seed, self.plan.index, 1 + STEMS.index(stem)])
        return self.soundfonts[int(rng.integers(len(self.soundfonts)))]


def _identity(job: Job) -> dict:
    """What must match for an existing track folder to count as done."""
    return {"planned_piece": job.plan.piece, "split": job.plan.split, "seed": job.seed, "sample_rate": job.sample_rate,
            "max_seconds": job.max_seconds, "soundfont": _soundfont_identity(job.soundfonts),
            "generator_version": GENERATOR_VERSION,
            # The original engine's folders keep their identity (they resume as before).
            **({} if job.timbres == "soundfonts" and job.music == "corpus"
               else {"timbres": job.timbres, "music": job.music, "timbre_version": TIMBRE_VERSION,
                     # What the diverse plans may draw depends on what is installed.
                     **({"sampled_instruments": installed_sampled_instruments(job.timbres)}
                        if job.timbres in ("diverse", "recorded", "holdout-recorded")
                        else {})})}


def installed_sampled_instruments(plan: str = "diverse") -> list[str]:
    """The installed recorded instruments ``plan`` may draw."""
    drawable = holdout_sample_instruments if plan == "holdout-recorded" else training_sample_instruments
    return sorted(name for stem in STEMS for name in drawable(stem))


def _soundfont_identity(soundfonts: tuple[str, ...]) -> str | list[str]:
    names = [Path(s).name for s in soundfonts]
    return names[0] if len(names) == 1 else names


def render_track(job: Job) -> dict:
    """Render one track into a temporary folder and rename it into place.

    The original engine (timbres "soundfonts", music "corpus") renders each
    stem with the track's GM program through one of the dataset's SoundFonts;
    the timbre-diverse one (issue 19) takes its music from the corpus or a
    composed song and each stem's instrument from training.synth.timbres,
    each from its own random stream (seed, track, 100 + stem). Both level,
    mix and write the track the same way."""
    plan, sr = job.plan, job.sample_rate
    split_dir = Path(job.out_dir) / plan.split
    rng = np.random.default_rng([job.seed, plan.index])  # per track: independent of jobs and order
    cache = Path(job.out_dir) / ".cache" / "pieces"
    diverse = job.timbres != "soundfonts" or job.music != "corpus"
    if diverse:
        source = "corpus"
        if job.music == "mixed" and np.random.default_rng([job.seed, plan.index, 99]).random() < MIXED_GENERATED_SHARE:
            source = "generated"
        notes, info = arrange_track(plan, rng, job.max_seconds, source, cache)
        piece = info.pop("piece", f"generated/{plan.index + 1:05d}")
    else:
        corpus_piece = first_usable_piece(plan, cache)
        notes, info = arrange(corpus_piece, rng, job.max_seconds)
        piece = corpus_piece.id
    gains_db = {"bass": rng.uniform(-4, 2), "drums": rng.uniform(-3, 3),
                "guitar": rng.uniform(-5, 1), "piano": rng.uniform(-5, 1)}
    seconds = min(job.max_seconds, info["music_seconds"] + RELEASE_SECONDS)
    frames = round(seconds * sr)

    tmp = Path(tempfile.mkdtemp(prefix=f"{plan.name}.tmp-", dir=split_dir))
    try:
        (tmp / "midi").mkdir()
        render = _render_diverse_stems if diverse else _render_soundfont_stems
        raw, described = render(job, notes, info, seconds, frames, tmp)
        stems, mix, scale = mix_stems(raw, gains_db)
        for stem in STEMS:
            write_wav_float32(tmp / f"{stem}.wav", stems[stem], sr)
        write_wav_float32(tmp / "mix.wav", mix, sr)
        metadata = {
            "track": plan.name, **_identity(job), "piece": piece, "track_index": plan.index,
            "composer": piece.split("/")[0], **info, **described,
            "gains_db": {s: round(float(g), 4) for s, g in gains_db.items()},
            "normalise_gain": scale, "duration_seconds": frames / sr, "frames": frames,
            "stems": list(STEMS), "mix": "((bass + drums) + guitar) + piano, float32",
        }
        (tmp / "metadata.json").write_text(json.dumps(metadata, indent=2, sort_keys=True, default=_plain) + "\n")
        os.rename(tmp, split_dir / plan.name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return metadata


def _render_soundfont_stems(job: Job, notes: dict, info: dict, seconds: float, frames: int,
                            tmp: Path) -> tuple[dict, dict]:
    """Each stem with its GM program through one of the dataset's SoundFonts."""
    sr, raw = job.sample_rate, {}
    for stem in STEMS:
        midi = tmp / "midi" / f"{stem}.mid"
        write_midi(midi, notes[stem], info["programs"][stem], seconds)
        rendered = tmp / f"{stem}.render.wav"
        raw[stem] = _fit(render_stem(job.fluidsynth, Path(job.soundfont_for(stem)), midi, rendered, sr), frames, sr)
        rendered.unlink()
    described = ({"stem_soundfonts": {s: Path(job.soundfont_for(s)).name for s in STEMS}}
                 if len(job.soundfonts) > 1 else {})
    return raw, described


MIXED_GENERATED_SHARE = 0.5  # music "mixed": this share of the tracks are composed songs


def _render_diverse_stems(job: Job, notes: dict, info: dict, seconds: float, frames: int,
                          tmp: Path) -> tuple[dict, dict]:
    """Each stem's instrument drawn by training.synth.timbres from its own stream."""
    sr, raw, instruments = job.sample_rate, {}, {}
    for index, stem in enumerate(STEMS):
        stem_rng = np.random.default_rng([job.seed, job.plan.index, 100 + index])
        timbre = draw_timbre(stem, stem_rng, job.timbres)
        audio, instruments[stem] = render_timbre(timbre, stem, notes[stem], seconds, frames, sr, tmp / "midi",
                                                 job.fluidsynth, stem_rng)
        raw[stem] = _fit(audio, frames, sr)
    return raw, {"instruments": instruments}


def _plain(value):
    """numpy scalars and arrays in metadata, as JSON numbers and lists."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON-able")


def _finished(job: Job) -> dict | None:
    """The metadata of an already rendered track, or None. A folder rendered
    with other settings is an error, not something to silently keep."""
    folder = Path(job.out_dir) / job.plan.split / job.plan.name
    meta_path = folder / "metadata.json"
    if not folder.is_dir():
        return None
    metadata = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    expected = _identity(job)
    if {k: metadata.get(k) for k in expected} != expected:
        raise SynthError(f"{folder} was rendered with other settings than this run "
                         f"(expected {expected}); render into a new folder or delete it.")
    return metadata


def _remove_stale_tmp(out_dir: Path) -> None:
    """Temporary track folders left by an interrupted run."""
    for split in SPLITS:
        for tmp in (out_dir / split).glob("Track*.tmp-*"):
            shutil.rmtree(tmp, ignore_errors=True)


def _default_jobs() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def render_dataset(out_dir, tracks: int, seed: int = 0, *, sample_rate: int = 22050, max_seconds: float = 60.0,
                   soundfont: str | Sequence[str] | None = None, jobs: int | None = None, progress=None,
                   first_track: int = 1, splits: Sequence[str] = SPLITS, timbres: str = "soundfonts",
                   music: str = "corpus", partial_timbres: bool = False) -> dict:
    """Render ``tracks`` tracks into ``out_dir`` (resumable) and write dataset.json.

    ``soundfont``: one General MIDI SoundFont, or several: then each stem of
    each track is rendered with one of them, drawn per track and stem, so the
    model meets every instrument in several timbres.
    ``first_track`` and ``splits`` render only part of the plan (tracks
    first_track..tracks, of those splits): e.g. more tracks of the same split
    of pieces, or only a test split with a SoundFont held out from training.

    ``progress(done, total)`` is called once with the tracks already there,
    then after each track. Returns the summary written to dataset.json.

    ``timbres`` "diverse" draws each stem's instrument from every SoundFont,
    recorded kit and synthesised family training may use, with effects;
    "recorded" mostly the installed recorded instruments; "holdout" and
    "holdout-recorded" the project's held-out ones (training.synth.timbres).
    ``music`` "mixed": half the tracks are songs the project composes, and the
    corpus part takes the extended plan (4-6-part pieces, more composers).
    A track that fails to render (a bad SoundFont, a hung renderer) is
    skipped and listed in dataset.json's "skipped", not the end of the run.
    A plan whose SoundFonts are not all installed is refused (SynthError
    naming the Debian packages) unless ``partial_timbres``: it would draw
    among the others, a different dataset under the documented command.
    """
    if timbres not in TIMBRE_PLANS:
        raise ValueError(f"timbres must be one of {TIMBRE_PLANS}, got {timbres!r}")
    if music not in ("corpus", "mixed"):
        raise ValueError(f"music must be corpus or mixed, got {music!r}")
    if tracks < 1:
        raise ValueError(f"tracks must be at least 1, got {tracks}")
    if max_seconds <= 0:
        raise ValueError(f"max_seconds must be positive, got {max_seconds}")
    if timbres == "holdout-recorded":
        missing = sorted(set(HOLDOUT_SAMPLED) - set(installed_sampled_instruments("holdout-recorded")))
        if missing:
            # Without them the plan would quietly become "holdout" for those stems.
            raise SynthError(f"the held-out recorded instruments {missing} are not installed: "
                             "python -m training.synth.fetch_samples")
    absent = [p.name for p in missing_plan_soundfonts(timbres)]
    packages = sorted({SOUNDFONT_PACKAGES.get(name, name) for name in absent})
    if timbres in ("diverse", "recorded"):
        # Both plans draw every installed training instrument: without some, another dataset.
        absent += sorted(set(FETCHED_INSTRUMENTS) - set(HOLDOUT_SAMPLED) - set(installed_sampled_instruments(timbres)))
    if absent and not partial_timbres:
        hint = f"apt-get install {' '.join(packages)}, " if packages else ""
        raise SynthError(f"the {timbres!r} plan draws instruments that are not installed ({', '.join(absent)}): "
                         f"{hint}python -m training.synth.fetch_samples --apt; --partial-timbres renders "
                         "without them, a different dataset")
    fluidsynth = _find_fluidsynth()
    names = [soundfont] if soundfont is None or isinstance(soundfont, (str, os.PathLike)) else list(soundfont)
    if not names:
        raise ValueError("give at least one SoundFont, or none for the default")
    sf2s = tuple(find_soundfont(None if n is None else str(n)) for n in names)
    out = Path(out_dir)
    for split in SPLITS:
        (out / split).mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(out)

    unknown = set(splits) - set(SPLITS)
    if unknown or not splits:
        raise ValueError(f"splits must be some of {SPLITS}, got {tuple(splits)}")
    if not 1 <= first_track <= tracks:
        raise ValueError(f"first_track must be between 1 and tracks ({tracks}), got {first_track}")
    plans = plan_tracks(tracks, seed, extended=music == "mixed")
    jobs_list = [Job(plan, str(out), seed, int(sample_rate), float(max_seconds), tuple(map(str, sf2s)), fluidsynth,
                     timbres, music)
                 for plan in plans[first_track - 1:] if plan.split in splits]
    results = {job.plan.index: m for job in jobs_list if (m := _finished(job)) is not None}
    todo = [job for job in jobs_list if job.plan.index not in results]
    if progress:
        progress(len(results), len(jobs_list))
    workers = max(1, min(jobs or _default_jobs(), len(todo) or 1))
    skipped: dict[int, str] = {}

    def record(job: Job, outcome) -> None:
        # A track whose renderer failed (SynthError: a bad file, a renderer that
        # hung) is skipped and listed; anything else is a bug and stops the run.
        if isinstance(outcome, SynthError):
            skipped[job.plan.index] = f"{job.plan.name}: {outcome}"
            print(f"skipped {job.plan.name}: {outcome}", file=sys.stderr, flush=True)
        else:
            results[job.plan.index] = outcome
        if progress:
            progress(len(results) + len(skipped), len(jobs_list))

    if workers == 1:
        for job in todo:
            try:
                outcome = render_track(job)
            except SynthError as error:
                outcome = error
            record(job, outcome)
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(render_track, job): job for job in todo}
            try:
                for future in as_completed(futures):
                    try:
                        outcome = future.result()
                    except SynthError as error:
                        outcome = error
                    record(futures[future], outcome)
            except BaseException:  # fail now, not after rendering every queued track
                pool.shutdown(wait=True, cancel_futures=True)
                raise

    jobs_list = [job for job in jobs_list if job.plan.index not in skipped]
    summary = _summary(jobs_list, results, seed, sample_rate, max_seconds, sf2s)
    if timbres != "soundfonts" or music != "corpus":
        summary["timbres"], summary["music"] = timbres, music
    summary["skipped"] = [skipped[i] for i in sorted(skipped)]
    write_atomic(out / "dataset.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary


def _summary(jobs_list, results, seed, sample_rate, max_seconds, sf2s: tuple[Path, ...]) -> dict:
    splits = {}
    for split in SPLITS:
        metas = [results[j.plan.index] for j in jobs_list if j.plan.split == split]
        splits[split] = {"tracks": len(metas), "seconds": round(sum(m["duration_seconds"] for m in metas), 6),
                         "pieces": sorted({m["piece"] for m in metas})}
    return {
        "generator": "msdm-studio training.synth",
        "generator_version": GENERATOR_VERSION,
        "music21_version": _music21().__version__,
        "seed": seed,
        "tracks": len(jobs_list),
        "sample_rate": sample_rate,
        "max_seconds": max_seconds,
        "stems": list(STEMS),
        **_soundfont_summary(sf2s),
        "splits": splits,
        "seconds": round(sum(s["seconds"] for s in splits.values()), 6),
    }


def _soundfont_summary(sf2s: tuple[Path, ...]) -> dict:
    described = [{"path": str(p), "name": p.name, "bytes": p.stat().st_size} for p in sf2s]
    return {"soundfont": described[0]} if len(described) == 1 else {"soundfonts": described}
