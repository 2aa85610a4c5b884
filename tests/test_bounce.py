"""`msdm bounce` on the tiny model: outputs, manifest, resume, bad files, batching."""

from __future__ import annotations

import contextlib
import json
import os
import threading

import numpy as np
import pytest
import soundfile as sf
import torch

from engine.bounce.batching import BatchingDenoiser
from engine.bounce.bouncer import BounceJob, Bouncer
from engine.bounce.inputs import find_songs, song_seed
from engine.cli import main
from engine.bounce.manifest import ManifestWriter, read_records
from engine.audio.pipeline import separate_file
from engine.core.tasks import SEPARATE_DIRAC

STEMS = ["bass", "drums", "guitar", "piano"]
FAST = ["--steps", "2", "--resamples", "1", "--method", "dpmpp2m", "-q"]
# (frames, channels, rate): stereo, mono, a rate the model does not use, several windows.
SONGS = {"album/one.wav": (9000, 2, 44100), "album/two.flac": (5000, 1, 22050), "three.wav": (12000, 2, 32000)}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One intra-op thread: on a shared, loaded CPU, OpenMP threads that spin
    waiting for each other make the tiny model ~50x slower (measured 40 s vs 0.6 s
    for one bounce); results are the same either way up to float rounding."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def single_process(monkeypatch):
    """In-process runs are one process, whatever launched pytest."""
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)


def write_songs(folder, songs=SONGS, seed=0):
    rng = np.random.default_rng(seed)
    for name, (frames, channels, rate) in songs.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, (0.1 * rng.standard_normal((frames, channels))).astype(np.float32), rate,
                 subtype="FLOAT" if path.suffix == ".wav" else "PCM_24")
    return folder


def read_outputs(out):
    """Every audio file under `out` -> its samples (WAV float headers carry a
    timestamp, so files are compared by their samples, not their bytes)."""
    return {p.relative_to(out).as_posix(): sf.read(p, dtype="float32")[0]
            for p in sorted(out.rglob("*.wav"))}


def leftovers(folder):
    return [p for p in folder.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]


@pytest.fixture()
def songs(tmp_path):
    return write_songs(tmp_path / "in")


def test_bounce_writes_a_folder_per_song_and_a_manifest(tmp_path, songs, tiny_model_path, tiny_models):
    (songs / "broken.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEnot really audio")
    out = tmp_path / "out"
    rc = main(["bounce", str(songs), "-o", str(out), "--model", str(tiny_model_path), "--seed", "7", *FAST])
    assert rc == 1  # a song failed; the others are bounced
    for track, (frames, channels, rate) in {"album/one": SONGS["album/one.wav"], "album/two": SONGS["album/two.flac"],
                                            "three": SONGS["three.wav"]}.items():
        assert sorted(p.name for p in (out / track).iterdir()) == [f"{s}.wav" for s in STEMS]
        info = sf.info(str(out / track / "drums.wav"))
        assert (info.frames, info.channels, info.samplerate) == (frames, channels, rate)

    records = {r["track"]: r for r in read_records([out / "manifest.jsonl"])}
    assert set(records) == {"album/one", "album/two", "three", "broken"}
    one = records["album/one"]
    assert one["status"] == "done" and one["input"] == str(songs / "album/one.wav")
    assert one["outputs"] == {s: f"album/one/{s}.wav" for s in STEMS}
    assert one["seed"] == song_seed(7, "album/one")
    assert one["model"] == tiny_models.file_hash()
    assert one["duration"] == pytest.approx(9000 / 44100, abs=1e-6)
    assert one["settings"]["sampler"]["steps"] == 2 and one["settings"]["task"] == "separate"
    assert one["settings"]["seed"] == 7 and one["elapsed"] > 0
    bad = records["broken"]
    assert bad["status"] == "failed" and "broken.wav" in bad["error"] and bad["outputs"] == {}
    assert not leftovers(out)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_a_fifo_among_the_songs_is_reported_not_waited_for(tmp_path, tiny_model_path):
    """Issue 14: opening a FIFO waits for a writer; the batch must report it and go on."""
    songs = write_songs(tmp_path / "in", {"one.wav": SONGS["three.wav"]})
    os.mkfifo(songs / "pipe.wav")

    def unblock() -> None:  # on code that opens the FIFO, the test fails instead of hanging
        with contextlib.suppress(OSError):
            os.close(os.open(songs / "pipe.wav", os.O_WRONLY | os.O_NONBLOCK))

    timer = threading.Timer(10, unblock)
    timer.start()
    try:
        rc = main(["bounce", str(songs), "-o", str(tmp_path / "out"), "--model", str(tiny_model_path), *FAST])
    finally:
        timer.cancel()
    records = {r["track"]: r for r in read_records([tmp_path / "out" / "manifest.jsonl"])}
    assert rc == 1 and records["one"]["status"] == "done"
    assert records["pipe"]["status"] == "failed" and "named pipe" in records["pipe"]["error"]


def test_an_output_folder_that_cannot_be_written_is_one_line(tmp_path, songs, tiny_model_path, capsys):
    rc = main(["bounce", str(songs), "-o", "/proc/msdm-no-such-folder/out", "--model", str(tiny_model_path), *FAST])
    assert rc == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "msdm bounce: error: cannot write the manifest '/proc/msdm-no-such-folder/out/manifest.jsonl': "
        "No such file or directory; choose an output folder you can write to"]


def test_progress_bar_and_summary(tmp_path, songs, tiny_model_path, capsys):
    assert main(["bounce", str(songs), "-o", str(tmp_path / "out"), "--model", str(tiny_model_path),
                 "--steps", "2", "--resamples", "1", "--method", "dpmpp2m"]) == 0
    captured = capsys.readouterr()
    total = sum(frames / rate for frames, _, rate in SONGS.values())
    assert "bounced 3/3 songs 100%" in captured.err and f"/{total:.1f} s of audio" in captured.err
    lines = captured.out.splitlines()
    assert lines[0] == "bounced 3, skipped 0 (already done), failed 0"
    assert lines[1].startswith(f"{total:.1f} s of audio in ") and lines[1].endswith("audio hours per wall hour")
    assert lines[2] == f"manifest: {tmp_path / 'out' / 'manifest.jsonl'}"


def test_bounced_stems_are_what_separate_writes(tmp_path, songs, tiny_models):
    """The batch path is the one-song path: same seed, same samples, bit for bit."""
    out = tmp_path / "out"
    settings = SEPARATE_DIRAC.override(steps=2, num_resamples=1, method="dpmpp2m")
    job = BounceJob(settings=settings, seed=3)
    summary = Bouncer(tiny_models, job, out).run(find_songs([songs]), quiet=True)
    assert (summary.done, summary.failed) == (3, 0)
    single = tmp_path / "single"
    separate_file(tiny_models, songs / "three.wav", single, settings=settings, seed=song_seed(3, "three"))
    for stem in STEMS:
        np.testing.assert_array_equal(sf.read(out / "three" / f"{stem}.wav")[0], sf.read(single / f"{stem}.wav")[0])


def test_batched_equals_one_song_at_a_time(tmp_path, songs, tiny_models):
    # A song that fails mid-way (a NaN in its third window) while it shares calls with the others.
    bad = np.zeros((10000, 1), dtype=np.float32)
    bad[9000] = np.nan
    sf.write(songs / "nan.wav", bad + 0.01, 22050, subtype="FLOAT")
    settings = SEPARATE_DIRAC.override(steps=3, num_resamples=1, method="dpmpp2m")
    job = BounceJob(settings=settings, seed=1)
    found = find_songs([songs])
    Bouncer(tiny_models, job, tmp_path / "one").run(found, jobs=1, quiet=True)
    batched = Bouncer(tiny_models, job, tmp_path / "batched")
    summary = batched.run(found, jobs=4, quiet=True)
    assert (summary.done, summary.failed) == (3, 1)
    assert "nan.wav" in summary.failures[0][0] and "invalid sample value" in summary.failures[0][1]
    assert not leftovers(tmp_path / "batched") and not (tmp_path / "batched" / "nan").exists()
    stats = batched.batch_stats
    # Windows of the four songs really shared calls (2 + 1 + 2 + 1 channels at first).
    assert stats.largest == 6 and stats.calls < stats.requests
    one, many = read_outputs(tmp_path / "one"), read_outputs(tmp_path / "batched")
    assert one.keys() == many.keys() and len(one) == 12
    for name in one:
        # Float rounding of batched kernels only (measured: ~4e-7 relative).
        scale = np.abs(one[name]).max()
        np.testing.assert_allclose(many[name], one[name], rtol=0, atol=1e-5 * scale, err_msg=name)


def test_resume_skips_done_songs_and_retries_failed_ones(tmp_path, songs, tiny_model_path):
    broken = songs / "broken.wav"
    broken.write_bytes(b"not audio at all")
    out = tmp_path / "out"
    args = ["bounce", str(songs), "-o", str(out), "--model", str(tiny_model_path), *FAST]
    assert main(args) == 1
    first = read_outputs(out)
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.wav")}

    write_songs(songs, {"broken.wav": (3000, 1, 22050)}, seed=5)  # the user fixes the file
    (out / "three" / "piano.wav").unlink()                         # and loses one output
    assert main(args) == 0
    records = read_records([out / "manifest.jsonl"])
    second = records[-2:]
    assert sorted(r["track"] for r in second) == ["broken", "three"]
    assert all(r["status"] == "done" for r in second)
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items() if "three" not in str(p))
    again = read_outputs(out)
    for name, samples in first.items():
        np.testing.assert_array_equal(again[name], samples)  # the redone song is the same audio

    before = len(read_records([out / "manifest.jsonl"]))
    assert main(args) == 0                                     # nothing left to do
    assert len(read_records([out / "manifest.jsonl"])) == before
    assert main(args[:-len(FAST)] + ["--steps", "3", "--resamples", "1", "--method", "dpmpp2m", "-q"]) == 0  # new settings: all redone
    assert len(read_records([out / "manifest.jsonl"])) == before + 4


def test_impute_task_treats_each_input_as_the_given_stem(tmp_path, songs, tiny_model_path, capsys):
    out = tmp_path / "out"
    rc = main(["bounce", str(songs / "album"), "-o", str(out), "--task", "impute", "--given", "drums",
               "--pattern", "{stem}/{track}.{ext}", "--format", "flac", "--bits", "16",
               "--model", str(tiny_model_path), *FAST])
    assert rc == 0
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.flac"))
    assert names == sorted(f"{s}/{t}.flac" for s in ("bass", "guitar", "piano", "mix") for t in ("one", "two"))
    assert sf.info(str(out / "mix" / "one.flac")).channels == 2
    record = read_records([out / "manifest.jsonl"])[0]
    assert record["settings"]["given"] == "drums" and record["settings"]["sampler"]["steps"] == 2
    assert "bounced 2, skipped 0 (already done), failed 0" in capsys.readouterr().out


def test_batched_imputation_equals_one_song_at_a_time(tmp_path, songs, tiny_models):
    from engine.core.tasks import IMPUTE

    job = BounceJob(task="impute", given="drums", settings=IMPUTE.override(steps=3), seed=2)
    found = find_songs([songs])
    Bouncer(tiny_models, job, tmp_path / "one").run(found, jobs=1, quiet=True)
    batched = Bouncer(tiny_models, job, tmp_path / "batched")
    assert batched.run(found, jobs=3, quiet=True).done == 3
    assert batched.batch_stats.largest == 3  # one item per song: imputation runs on the mono downmix
    one, many = read_outputs(tmp_path / "one"), read_outputs(tmp_path / "batched")
    assert one.keys() == many.keys() and len(one) == 12  # bass, guitar, piano, mix for 3 songs
    for name in one:
        np.testing.assert_allclose(many[name], one[name], rtol=0, atol=1e-5 * np.abs(one[name]).max(), err_msg=name)


@pytest.mark.parametrize("extra, message", [
    (["--task", "impute"], "needs --given STEM"),
    (["--task", "impute", "--given", "vocals"], "this model's stems are"),
    (["--pattern", "{stem}.{ext}"], "must contain {stem} and {track}"),
    (["--pattern", "../{track}/{stem}.{ext}"], "inside the output folder"),
    (["--pattern", "{track}/{stem}.{wat}"], "unknown field"),
    (["--jobs", "0"], "--jobs must be at least 1"),
    (["--format", "flac", "--bits", "32f"], "FLAC cannot store 32-bit float"),
])
def test_bad_options_get_a_clear_message(tmp_path, songs, tiny_model_path, capsys, extra, message):
    assert main(["bounce", str(songs), "-o", str(tmp_path / "o"), "--model", str(tiny_model_path),
                 *FAST, *extra]) == 2
    assert message in capsys.readouterr().err


def test_inputs_from_folders_and_list_files(tmp_path, songs, tiny_model_path):
    (songs / "album" / ".hidden.wav").write_bytes(b"temp file of another program")
    (songs / "notes.md").write_text("not audio")
    listing = tmp_path / "list.txt"
    listing.write_text(f"# my catalogue\n{songs / 'three.wav'}\nin/album\n\nmissing.wav\n")
    found = find_songs([listing, songs / "three.wav", songs / "album"])
    assert [(s.path.name, s.track) for s in found] == [
        ("three.wav", "three"), ("one.wav", "one"), ("two.flac", "two"), ("missing.wav", "missing")]
    # Same name twice: told apart by the extension; the output folder is never an input.
    write_songs(songs, {"album/one.flac": (2000, 1, 22050)})
    (songs / "out" / "x").mkdir(parents=True)
    write_songs(songs, {"out/x/bass.wav": (2000, 1, 22050)})
    tracks = sorted(s.track for s in find_songs([songs], exclude=songs / "out"))
    assert tracks == ["album/one_flac", "album/one_wav", "album/two", "three"]


def test_manifest_survives_a_line_cut_short(tmp_path):
    path = tmp_path / "manifest.jsonl"
    with ManifestWriter(path) as writer:
        writer.append({"track": "a", "status": "done"})
    with open(path, "ab") as handle:
        handle.write(b'{"track": "b", "stat')  # the process died mid-write
    with ManifestWriter(path) as writer:
        writer.append({"track": "c", "status": "failed"})
    assert [r["track"] for r in read_records([path])] == ["a", "c"]
    assert path.read_text().splitlines()[-1] == json.dumps({"status": "failed", "track": "c"})


def test_batching_denoiser_gathers_every_thread_into_one_call():
    calls = []

    def denoiser(x, sigma):
        calls.append(x.shape[0])
        return x * sigma[:, None, None] + 1

    batcher = BatchingDenoiser(denoiser)
    results, errors = {}, []

    def song(n):
        try:
            for step in range(4):
                x = torch.full((n, 2, 8), float(n * 10 + step))
                out = batcher(x, torch.full((n,), 0.5))
                results[(n, step)] = out
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)
        finally:
            batcher.leave()

    threads = [threading.Thread(target=song, args=(n,)) for n in (1, 2, 3)]
    for t in threads:
        batcher.join()  # before any starts: nobody runs ahead alone
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not errors and len(results) == 12
    assert calls == [6, 6, 6, 6]  # every step of the three songs in one call
    for (n, step), out in results.items():
        assert out.shape == (n, 2, 8) and torch.all(out == (n * 10 + step) * 0.5 + 1)


def _cli_env():
    import os

    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.mark.parametrize("jobs, signum", [("1", "SIGINT"), ("2", "SIGINT"), ("2", "SIGTERM")])
def test_ctrl_c_leaves_no_partial_file_and_a_rerun_finishes(tmp_path, tiny_model_path, jobs, signum):
    """Ctrl-C and SIGTERM alike: songs in flight stop at their next step, worker threads
    are waited for (no SIGABRT), the summary is printed, exit status 128 + the signal."""
    import signal
    import subprocess
    import sys
    import time

    # song0 is short, so a record appears while the others still have a second
    # or more of windows to go.
    songs = write_songs(tmp_path / "in", {f"song{n}.wav": (36000 if n else 3000, 1, 22050) for n in range(4)})
    out = tmp_path / "out"
    command = [sys.executable, "-m", "engine.cli", "bounce", str(songs), "-o", str(out), "--jobs", jobs,
               "--model", str(tiny_model_path), "--steps", "10", "--resamples", "1", "--method", "dpmpp2m", "-q"]
    # A shell without job control starts background commands with SIGINT
    # ignored, and children inherit that (CI scripts run like this): give the
    # bounce the default disposition, as a terminal's Ctrl-C would find it.
    process = subprocess.Popen(command, env=_cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    manifest = out / "manifest.jsonl"
    deadline = time.time() + 90
    while time.time() < deadline and not (manifest.exists() and manifest.read_text().count("\n") >= 1):
        time.sleep(0.05)
    assert process.poll() is None, process.communicate()
    process.send_signal(getattr(signal, signum))
    out_text, err = process.communicate(timeout=60)
    assert process.returncode == 128 + getattr(signal, signum), (process.returncode, err)
    assert "cancelled; no partial files" in err and "bounced " in out_text

    assert not leftovers(out)
    records = read_records([manifest])
    # A cancel fails no song: every line is a finished one (an error here names what failed).
    assert all(r["status"] == "done" for r in records), [(r["track"], r.get("error")) for r in records]
    done = {r["track"] for r in records}
    assert 1 <= len(done) < 4
    for n in range(4):
        files = sorted(p.name for p in (out / f"song{n}").glob("*")) if (out / f"song{n}").exists() else []
        # A song's stems appear together when it is done, or not at all.
        assert files == ([f"{s}.wav" for s in STEMS] if f"song{n}" in done else [])
        assert (out / f"song{n}").exists() == (f"song{n}" in done)  # no empty folder either

    rerun = subprocess.run(command, env=_cli_env(), capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert f"bounced {4 - len(done)}, skipped {len(done)} (already done), failed 0" in rerun.stdout
    assert not leftovers(out) and len(read_outputs(out)) == 16


def test_two_processes_write_what_one_process_writes(tmp_path, songs, tiny_model_path):
    """torchrun with 2 CPU processes (gloo): each rank bounces its share into its
    own manifest part; the stems are the single-process stems sample for sample
    (both with one thread per process: the thread count changes float rounding)."""
    import subprocess
    import sys

    write_songs(songs, {"four.wav": (3000, 1, 16000)}, seed=9)
    (songs / "broken.wav").write_bytes(b"RIFF and then nothing")  # rank 0's second song
    options = ["--model", str(tiny_model_path), "--seed", "5", *FAST]
    assert main(["bounce", str(songs), "-o", str(tmp_path / "one"), *options]) == 1
    two = tmp_path / "two"
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "engine.cli", "bounce", str(songs), "-o", str(two), *options],
                          env=_cli_env(), capture_output=True, text=True, timeout=180)
    assert done.returncode != 0  # a song failed: the launcher says so
    # Rank 0 sums every rank; the others went on past the broken file.
    assert "bounced 4, skipped 0 (already done), failed 1" in done.stdout, done.stderr[-3000:]

    one_out, two_out = read_outputs(tmp_path / "one"), read_outputs(two)
    assert one_out.keys() == two_out.keys() and len(one_out) == 16
    for name in one_out:
        np.testing.assert_array_equal(two_out[name], one_out[name], err_msg=name)
    ranks = [[r["track"] for r in read_records([two / f"manifest.rank{rank}.jsonl"])] for rank in (0, 1)]
    tracks = sorted(["album/one", "album/two", "three", "four", "broken"])
    assert [sorted(r) for r in ranks] == [sorted(tracks[0::2]), tracks[1::2]]
    assert not (two / "manifest.jsonl").exists()
    # One process resumes from the parts the two wrote: only the failed song is tried again.
    write_songs(songs, {"broken.wav": (2000, 1, 22050)})  # fixed
    assert main(["bounce", str(songs), "-o", str(two), *options]) == 0
    assert [(r["track"], r["status"]) for r in read_records([two / "manifest.jsonl"])] == [("broken", "done")]
