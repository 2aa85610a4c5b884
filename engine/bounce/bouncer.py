"""`msdm bounce`: separate (or complete) the stems of a whole catalogue.

One folder of stems per input song, a manifest line per finished song (so a
second run skips what is done and retries what failed), a bad file reported
and skipped, Ctrl-C leaving no half-written file, an overall progress bar with
an ETA and a summary at the end.

- Songs run through the one job path (engine.jobs.run), so a bounced
  stem is the stem `msdm separate` writes for the same seed.
- `--jobs N` keeps N songs in flight whose windows share each network call
  (engine.bounce.batching): the same audio as one at a time, up to float rounding.
- Under torchrun (RANK / WORLD_SIZE set) each rank bounces its share
  (engine.bounce.inputs.rank_share) into its own manifest part; rank 0 prints
  the summary of all ranks.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from engine.bounce.inputs import DEFAULT_PATTERN, InputError, Song, fill_pattern, rank_share, song_seed
from engine.bounce.manifest import DONE, FAILED, ManifestWriter, is_finished, latest_by_track, manifest_parts, \
    manifest_path, read_records

TASKS = ("separate", "impute")


@dataclass(frozen=True)
class PatternOutput:
    """engine.audio.pipeline.OutputFormat that names files by --pattern instead of
    `<stem>.<ext>` (the pipeline asks it for every path it writes). Not a
    subclass, so `msdm --help` does not import torch."""

    extension: str = "wav"
    bits: str = "32f"
    overwrite: bool = True
    pattern: str = DEFAULT_PATTERN
    track: str = ""

    def path(self, out_dir: Path, name: str) -> Path:
        return Path(out_dir) / fill_pattern(self.pattern, self.track, name, self.extension)


@dataclass(frozen=True)
class BounceJob:
    """Everything that decides the audio of a bounce (recorded in the manifest)."""

    task: str = "separate"
    given: str | None = None       # impute: the stem each input is
    likelihood: str = "dirac"
    mono: bool = False
    overlap: float = 0.25
    settings: object = None        # engine.core.tasks.SamplerSettings
    seed: int = 0
    extension: str = "wav"
    bits: str = "32f"
    pattern: str = DEFAULT_PATTERN
    backend: str = "torch"

    def record(self) -> dict:
        """The settings as the manifest stores them (JSON round trip, so a
        record read back compares equal)."""
        data = {k: v for k, v in asdict(self).items() if k != "settings"}
        data["sampler"] = asdict(self.settings) if self.settings is not None else None
        if self.task == "separate":
            data.pop("given")
        else:
            data.pop("likelihood")
            data.pop("mono")
        return json.loads(json.dumps(data))

    def output(self, track: str, overwrite: bool = True) -> PatternOutput:
        return PatternOutput(extension=self.extension, bits=self.bits, overwrite=overwrite,
                             pattern=self.pattern, track=track)


@dataclass
class Summary:
    done: int = 0
    skipped: int = 0
    failed: int = 0
    cancelled: int = 0
    audio_seconds: float = 0.0     # audio bounced by this run
    wall_seconds: float = 0.0
    failures: list = field(default_factory=list)  # (input, message)

    def add(self, other: "Summary") -> None:
        self.done += other.done
        self.skipped += other.skipped
        self.failed += other.failed
        self.cancelled += other.cancelled
        self.audio_seconds += other.audio_seconds
        self.wall_seconds = max(self.wall_seconds, other.wall_seconds)
        self.failures.extend(other.failures)

    @property
    def speed(self) -> float:
        """Audio hours per wall hour."""
        return self.audio_seconds / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def lines(self) -> list[str]:
        out = [f"bounced {self.done}, skipped {self.skipped} (already done), failed {self.failed}"
               + (f", cancelled {self.cancelled}" if self.cancelled else "")]
        out += [f"  failed: {path}: {message}" for path, message in self.failures]
        out.append(f"{_duration(self.audio_seconds)} of audio in {_duration(self.wall_seconds)}: "
                   f"{self.speed:.3g} audio hours per wall hour")
        return out


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.2f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.1f} s"


class BatchProgress:
    """Overall progress in seconds of audio, from every song in flight (thread-safe)."""

    def __init__(self, total_seconds: float, songs: int, quiet: bool) -> None:
        self.total = max(total_seconds, 1e-9)
        self.songs = songs
        self.finished = 0
        self.done_seconds = 0.0
        self.partial: dict[str, float] = {}
        self._lock = threading.Lock()
        self.bar = None
        if not quiet and songs:
            from tqdm import tqdm

            self.bar = tqdm(total=round(total_seconds, 1), unit="s", file=sys.stderr, dynamic_ncols=True,
                            bar_format="{desc} {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} s of audio "
                                       "[{elapsed}<{remaining}]")
            self._describe()

    def _describe(self) -> None:
        self.bar.set_description_str(f"bounced {self.finished}/{self.songs} songs", refresh=False)

    def _show(self) -> None:
        if self.bar is not None:
            value = round(self.done_seconds + sum(self.partial.values()), 1)
            self.bar.update(max(0.0, value - self.bar.n))

    def song(self, track: str, seconds: float):
        def progress(fraction: float, message: str) -> None:
            with self._lock:
                self.partial[track] = max(0.0, min(1.0, fraction)) * seconds
                self._show()
        return progress

    def finish(self, track: str, seconds: float) -> None:
        with self._lock:
            self.partial.pop(track, None)
            self.done_seconds += seconds
            self.finished += 1
            if self.bar is not None:
                self._describe()
            self._show()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Bouncer:
    """Bounces a list of songs with one model, writing the manifest as it goes."""

    def __init__(self, models, job: BounceJob, out_dir: Path, *, rank: int = 0, world_size: int = 1,
                 overwrite: bool = True, max_seconds: float | None = None) -> None:
        self.models = models
        self.job = job
        self.out_dir = Path(out_dir)
        self.rank, self.world_size = rank, world_size
        self.overwrite = overwrite
        self.max_seconds = max_seconds
        self.model_hash = models.file_hash()
        self.settings = job.record()
        self.cancel = threading.Event()
        self.batch_stats = None  # engine.bounce.batching.BatchStats of the last batched run

    def _warn(self, message: str) -> None:
        """A manifest line that was skipped, on stderr (unless another line says the song is done, it is bounced again)."""
        print(f"msdm bounce: warning: {message}", file=sys.stderr, flush=True)

    # -- one song ---------------------------------------------------------
    def _bounce_one(self, models, song: Song, seed: int, progress) -> dict[str, Path]:
        from engine.jobs.options import JobOptions
        from engine.jobs.run import Job, run_job

        options = JobOptions(seed=seed, overlap=self.job.overlap, likelihood=self.job.likelihood, mono=self.job.mono)
        inputs = dict(mix=song.path) if self.job.task == "separate" else dict(given={self.job.given: song.path})
        return run_job(models, Job(self.job.task, self.out_dir, options, **inputs), progress=progress,
                       max_seconds=self.max_seconds, output=self.job.output(song.track, overwrite=self.overwrite),
                       settings=self.job.settings)

    def _record(self, song: Song, seed: int, status: str, seconds: float, started: float,
                outputs: dict | None = None, error: str | None = None) -> dict:
        record = {
            "input": str(song.path), "track": song.track, "status": status, "seed": seed,
            "model": self.model_hash, "settings": self.settings, "duration": round(seconds, 6),
            "elapsed": round(time.time() - started, 3), "finished": time.time(), "rank": self.rank,
            "outputs": {name: Path(path).relative_to(self.out_dir).as_posix() for name, path in (outputs or {}).items()},
        }
        if error:
            record["error"] = error
        return record

    # -- the batch --------------------------------------------------------
    def plan(self, songs: list[Song]) -> tuple[list[Song], list[Song]]:
        """(this rank's songs still to do, this rank's songs already done)."""
        mine = rank_share(songs, self.rank, self.world_size)
        latest = latest_by_track(read_records(manifest_parts(self.out_dir), warn=self._warn))
        todo, done = [], []
        for song in mine:
            seed = song_seed(self.job.seed, song.track)
            finished = is_finished(latest.get(song.track), self.out_dir, self.settings, seed, self.model_hash)
            (done if finished else todo).append(song)
        return todo, done

    def run(self, songs: list[Song], *, jobs: int = 1, quiet: bool = False) -> Summary:
        from engine.audio.files import AudioInputError, inspect_audio

        started = time.time()
        summary = Summary()
        self._check_unique_outputs(songs)
        todo, done = self.plan(songs)
        summary.skipped = len(done)
        manifest = ManifestWriter(manifest_path(self.out_dir, self.rank, self.world_size))
        lock = threading.Lock()

        def fail(song: Song, seed: int, seconds: float, t0: float, error: BaseException) -> None:
            message = str(error) or type(error).__name__
            with lock:
                manifest.append(self._record(song, seed, FAILED, seconds, t0, error=message))
                summary.failed += 1
                summary.failures.append((str(song.path), message))

        # Durations from the headers (nothing decoded): the ETA's total, and
        # files that cannot even be opened are reported before any work.
        ready: list[tuple[Song, int, float]] = []
        for song in todo:
            if self.cancel.is_set():
                break
            seed = song_seed(self.job.seed, song.track)
            try:
                info = inspect_audio(song.path, max_seconds=self.max_seconds)
                ready.append((song, seed, info.frames / info.samplerate))
            except (AudioInputError, OSError) as error:
                fail(song, seed, 0.0, time.time(), error)

        progress = BatchProgress(sum(s for _, _, s in ready), len(ready), quiet)

        def bounce(models, song: Song, seed: int, seconds: float) -> None:
            from engine.core.diffusion import Cancelled

            t0 = time.time()
            song_progress = progress.song(song.track, seconds)

            def report(fraction: float, message: str) -> None:
                if self.cancel.is_set():
                    raise Cancelled()
                song_progress(fraction, message)

            try:
                outputs = self._bounce_one(models, song, seed, report)
            except Cancelled:  # its writers removed their temp files and the folders they made
                with lock:
                    summary.cancelled += 1
                return
            except Exception as error:  # one bad song is reported; the batch goes on
                fail(song, seed, seconds, t0, error)
                progress.finish(song.track, seconds)
                return
            with lock:
                manifest.append(self._record(song, seed, DONE, seconds, t0, outputs=outputs))
                summary.done += 1
                summary.audio_seconds += seconds
            progress.finish(song.track, seconds)

        try:
            if jobs <= 1:
                for song, seed, seconds in ready:
                    if self.cancel.is_set():
                        break
                    bounce(self.models, song, seed, seconds)
            else:
                self._run_batched(ready, jobs, bounce)
        except KeyboardInterrupt:
            self.cancel.set()
            raise
        finally:
            progress.close()
            manifest.close()
            summary.wall_seconds = time.time() - started
        return summary

    def _run_batched(self, ready, jobs: int, bounce) -> None:
        """`jobs` worker threads, one song each at a time, sharing one batched denoiser."""
        from engine.bounce.batching import BatchingDenoiser, SharedModels

        batcher = BatchingDenoiser(self.models.denoiser)
        shared = SharedModels(self.models, batcher)
        queue = list(reversed(ready))
        queue_lock = threading.Lock()

        def worker(first) -> None:
            try:
                bounce(shared, *first)
            finally:
                batcher.leave()
            while not self.cancel.is_set():
                with queue_lock:
                    if not queue:
                        return
                    song, seed, seconds = queue.pop()
                with batcher.member():
                    bounce(shared, song, seed, seconds)

        # The first songs join before any thread starts, so the very first
        # network call already holds a window of each of them.
        threads = []
        for n in range(min(jobs, len(queue))):
            batcher.join()
            threads.append(threading.Thread(target=worker, args=(queue.pop(),), name=f"bounce-{n}", daemon=True))
        for thread in threads:
            thread.start()
        try:
            for thread in threads:
                while thread.is_alive():
                    thread.join(0.2)  # a short wait, so Ctrl-C reaches the main thread
        except KeyboardInterrupt:
            # Songs in flight stop at their next sampler step and remove their temp files.
            self.cancel.set()
            for thread in threads:
                thread.join()
            raise
        self.batch_stats = batcher.stats

    def _check_unique_outputs(self, songs: list[Song]) -> None:
        seen: dict[str, str] = {}
        for song in songs:
            path = fill_pattern(self.job.pattern, song.track, "STEM", self.job.extension)
            if path in seen:
                raise InputError(f"--pattern {self.job.pattern!r} gives '{seen[path]}' and '{song.path}' the same "
                                 f"files; use {{track}} instead of {{name}}")
            seen[path] = str(song.path)


# -- processes ------------------------------------------------------------

def rank_and_world() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment (0, 1, 0 alone)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise InputError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (as torchrun sets them)") from None
    if world < 1 or not 0 <= rank < world:
        raise InputError(f"RANK {rank} is not within WORLD_SIZE {world}")
    return rank, world, local


def gather_summaries(summary: Summary, world_size: int) -> Summary:
    """Rank 0 gets the sum of every rank's summary (gloo: small objects, any device)."""
    if world_size == 1 or "MASTER_ADDR" not in os.environ:
        return summary
    import torch.distributed as dist

    parts: list = [None] * world_size
    dist.all_gather_object(parts, asdict(summary))
    total = Summary()
    for part in parts:
        total.add(Summary(**part))
    return total
