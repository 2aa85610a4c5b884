"""msdm serve end to end: a real server on a real UDP socket, a real client,
the tiny model, and the files the jobs write."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import soundfile as sf

from engine.audio.files import read_audio, write_audio
from osc_bridge.client import OscClient, done_paths
from osc_bridge.server import OscServer
from support.osc_replies import ReplyCollector
from support.special_files import swap_in_a_link_when_sampling_starts

STEPS = ["steps", 4, "method", "dpmpp2m"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")



@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("osc_root")


@pytest.fixture(scope="module")
def outside(tmp_path_factory):
    """A folder outside the output root with inputs in it; nothing may change here."""
    folder = tmp_path_factory.mktemp("osc_outside")
    rng = np.random.default_rng(0)
    write_audio(folder / "mix.wav", (0.1 * rng.standard_normal((2, 6615))).astype(np.float32), 22050)
    write_audio(folder / "drums.wav", (0.1 * rng.standard_normal((1, 6615))).astype(np.float32), 22050)
    write_audio(folder / "bass_short.wav", (0.1 * rng.standard_normal((1, 3000))).astype(np.float32), 22050)
    write_audio(folder / "long.wav", np.zeros((1, 22050 * 31), dtype=np.float32), 22050)
    (folder / "notes.txt").write_text("not audio\n")
    (folder / "empty.wav").write_bytes(b"")
    os.mkfifo(folder / "fifo.wav")
    return folder


@pytest.fixture(scope="module")
def server(tiny_models, root):
    srv = OscServer(tiny_models, port=0, output_root=root, max_seconds=30, max_queued=32).start()
    yield srv
    srv.shutdown()


@pytest.fixture
def client(server):
    with OscClient("127.0.0.1", server.port) as c:
        yield c


def run(client, address, *args, silence=60.0):
    replies = []
    final = client.run_job(address, *args, silence=silence, on_reply=lambda a, r: replies.append((a, r)))
    return final, replies


def test_ping_models_status_root(server, client, tiny_model_path, root):
    assert client.request("/msdm/ping") == ("/msdm/pong", ["0.1.0", tiny_model_path.name])
    address, args = client.request("/msdm/models")
    assert (address, args[1:]) == ("/msdm/models", ["bass,drums,guitar,piano", 22050, "torch"])
    assert args[0] == str(tiny_model_path)
    assert client.request("/msdm/status") == ("/msdm/status", ["idle", "", 0.0, 0])
    address, args = client.request("/msdm/root")
    assert (address, args) == ("/msdm/root", [str(root.resolve()), 30.0])


def test_reply_port_sends_replies_elsewhere(server, client):
    with OscClient("127.0.0.1", server.port) as listener:
        listener.expect(client.send("/msdm/ping", listener.port))  # the reply is signed for the client's request
        assert listener.receive(5)[0] == "/msdm/pong"
        assert client.receive(0.3) is None


def test_separate_writes_stems_that_sum_to_the_mix(server, client, outside, root):
    final, replies = run(client, "/msdm/separate", "sep1", str(outside / "mix.wav"), str(root / "sep1"), *STEPS,
                         "seed", 7)
    assert final[0] == "/msdm/done", final
    assert replies[0] == ("/msdm/accepted", ["sep1", 0])
    fractions = [r[1] for a, r in replies if a == "/msdm/progress"]
    assert fractions and fractions == sorted(fractions) and fractions[-1] == 1.0
    paths = done_paths(final[1])
    assert list(paths) == ["bass", "drums", "guitar", "piano"]
    stems = [read_audio(p) for p in paths.values()]
    mix = read_audio(outside / "mix.wav")
    assert all(s.samples.shape == (2, 6615) and s.sample_rate == 22050 for s in stems)
    # The tiny model's random weights give huge stems: float32 rounding of their sum is the tolerance.
    scale = sum(float(np.abs(s.samples).max()) for s in stems)
    np.testing.assert_allclose(sum(s.samples for s in stems), mix.samples, atol=4 * np.finfo(np.float32).eps * scale)
    assert sorted(os.listdir(root / "sep1")) == ["bass.wav", "drums.wav", "guitar.wav", "piano.wav"]


def test_the_method_option_reaches_the_sampler(server, client, outside, root):
    """Same seed and steps, fast solver vs the paper's Euler: both sum to the
    mix (Dirac), and they differ, so the option was not dropped on the way."""
    stems = {}
    for method in ("euler", "dpmpp2m"):
        final, _ = run(client, "/msdm/separate", f"m-{method}", str(outside / "mix.wav"), str(root / f"m-{method}"),
                       "steps", 40, "seed", 7, "method", method, "resamples", 1)
        assert final[0] == "/msdm/done", final
        stems[method] = np.stack([read_audio(p).samples for p in done_paths(final[1]).values()])
    # A setting that would diverge (Euler, 4 steps) is refused before any work, in one line.
    final, _ = run(client, "/msdm/separate", "m-bad", str(outside / "mix.wav"), str(root / "m-bad"),
                   "steps", 4, "method", "euler", "resamples", 1)
    assert final[0] == "/msdm/error" and final[1][1] == "bad_input" and "use at least" in final[1][2], final
    assert not (root / "m-bad").exists() or not any((root / "m-bad").iterdir())
    mix = read_audio(outside / "mix.wav").samples
    for found in stems.values():
        scale = float(np.abs(found).max()) * len(found)
        np.testing.assert_allclose(found.sum(0), mix, atol=4 * np.finfo(np.float32).eps * scale)
    assert np.abs(stems["euler"] - stems["dpmpp2m"]).max() > 1e-3 * np.abs(stems["euler"]).max()


def test_generate_and_impute(server, client, outside, root):
    final, _ = run(client, "/msdm/generate", "gen1", str(root / "gen1"), 0.25, *STEPS, "format", "flac",
                   "bits", 16)
    assert final[0] == "/msdm/done", final
    paths = done_paths(final[1])
    assert list(paths) == ["bass", "drums", "guitar", "piano", "mix"]
    assert sf.info(paths["mix"]).frames == round(0.25 * 22050) and sf.info(paths["mix"]).subtype == "PCM_16"

    final, _ = run(client, "/msdm/impute", "imp1", str(root / "imp1"), "drums", str(outside / "drums.wav"),
                   *STEPS, "seed", 3)
    assert final[0] == "/msdm/done", final
    paths = done_paths(final[1])
    assert list(paths) == ["bass", "guitar", "piano", "mix"]
    parts = [read_audio(paths[s]).samples for s in ("bass", "guitar", "piano")]
    drums = read_audio(outside / "drums.wav").samples
    scale = sum(float(np.abs(p).max()) for p in parts) + 1
    np.testing.assert_allclose(read_audio(paths["mix"]).samples, drums + sum(parts),
                               atol=4 * np.finfo(np.float32).eps * scale)


def test_existing_outputs_are_kept_unless_overwrite(server, client, outside, root):
    final, _ = run(client, "/msdm/generate", "ow1", str(root / "ow"), 0.1, "steps", 2)
    assert final[0] == "/msdm/done"
    before = {p: os.stat(root / "ow" / p).st_mtime_ns for p in os.listdir(root / "ow")}
    final, _ = run(client, "/msdm/generate", "ow2", str(root / "ow"), 0.1, "steps", 2)
    assert final[0] == "/msdm/error" and final[1][1] == "exists" and "overwrite 1" in final[1][2]
    assert {p: os.stat(root / "ow" / p).st_mtime_ns for p in os.listdir(root / "ow")} == before
    final, _ = run(client, "/msdm/generate", "ow3", str(root / "ow"), 0.1, "steps", 2, "overwrite", 1, "seed", 1)
    assert final[0] == "/msdm/done"
    assert all(os.stat(root / "ow" / p).st_mtime_ns != t for p, t in before.items())


@pytest.mark.parametrize("args, code, words", [
    (("bad", "{outside}/mix.wav", "/tmp/../{outside}/x"), "bad_path", "outside the server's output root"),
    (("bad", "{outside}/mix.wav", "relative/dir"), "bad_path", "absolute"),
    (("bad", "{outside}/mix.wav", "{root}/link/x"), "bad_path", "outside"),
    (("bad", "{outside}/missing.wav", "{root}/bad"), "bad_input", "not found"),
    (("bad", "{outside}/notes.txt", "{root}/bad"), "bad_input", "Cannot read"),
    (("bad", "{outside}/empty.wav", "{root}/bad"), "bad_input", "empty"),
    (("bad", "{outside}/fifo.wav", "{root}/bad"), "bad_input", "not a regular file"),
    (("bad", "{outside}", "{root}/bad"), "bad_input", "folder"),
    (("bad", "{outside}/long.wav", "{root}/bad"), "bad_input", "too long"),
    (("bad", "{outside}/mix.wav", "{root}/bad", "steps", "many"), "bad_request", "whole number"),
    (("bad", "{outside}/mix.wav", "{root}/bad", "steps"), "bad_request", "pairs"),
    (("bad", "{outside}/mix.wav", "{root}/bad", "temperature", 2.0), "bad_request", "unknown option"),
    (("bad", "{outside}/mix.wav"), "bad_request", "needs"),
    (("bad", 3, "{root}/bad"), "bad_request", "mix_path must be a string"),
])
def test_separate_refusals(server, client, outside, root, args, code, words):
    (root / "link").unlink(missing_ok=True)
    (root / "link").symlink_to(outside)
    args = [a.format(outside=outside, root=root) if isinstance(a, str) else a for a in args]
    final, replies = run(client, "/msdm/separate", *args, silence=5)
    assert final[0] == "/msdm/error" and final[1][:2] == ["bad", code], final
    assert words in final[1][2]
    assert len(replies) == 1  # refused before queueing: no accepted, no progress
    assert not (root / "bad").exists()


def test_impute_and_generate_refusals(server, client, outside, root):
    checks = [
        (("/msdm/impute", "i", str(root / "i"), "drums", str(outside / "drums.wav"), "bass",
          str(outside / "bass_short.wav")), "bad_input", "differ"),
        (("/msdm/impute", "i", str(root / "i"), "steps", 4), "bad_request", "at least one stem"),
        (("/msdm/impute", "i", str(root / "i"), "drums", str(outside / "drums.wav"), "likelihood", "dirac"),
         "bad_request", "unknown option"),
        (("/msdm/generate", "g", str(root / "g"), 100), "bad_input", "limit of 30 s"),
        (("/msdm/generate", "g", str(root / "g"), -1.0), "bad_request", "between"),
        (("/msdm/generate", "g", str(root / "g"), 1, "format", "flac", "bits", "32f"), "bad_request", "FLAC"),
    ]
    for message, code, words in checks:
        final, _ = run(client, *message, silence=5)
        assert final[0] == "/msdm/error" and final[1][1] == code and words in final[1][2], (message, final)


def test_cancel_running_job_progress_every_second(server, client, root):
    collector = ReplyCollector(client)
    try:
        client.send("/msdm/generate", "long1", str(root / "long1"), 20.0, "steps", 40)
        assert collector.wait_for(lambda rs: any(a == "/msdm/progress" and r[1] > 0 for _, a, r in rs), 30)
        time.sleep(2.5)
        status = OscClient("127.0.0.1", server.port)
        address, args = status.request("/msdm/status")
        status.close()
        assert address == "/msdm/status" and args[:2] == ["busy", "long1"] and 0 < args[2] < 1 and args[3] == 0
        client.send("/msdm/cancel", "long1")
        assert collector.wait_for(lambda rs: any(a == "/msdm/cancelled" for _, a, r in rs), 30)
        time.sleep(0.3)
    finally:
        collector.stop()
    replies = collector.of_job("long1")
    times = [t for t, _, _ in replies]
    assert max(np.diff(times)) < 1.5, np.diff(times)  # heard from at least once a second
    assert [a for _, a, _ in replies].count("/msdm/cancelled") == 1 and replies[-1][1] == "/msdm/cancelled"
    assert not (root / "long1").exists()  # no partial or temp files, nor the folder the job made
    assert client.request("/msdm/cancel", "long1")[1][1] == "unknown_job"


def test_twenty_queued_jobs_finish_or_cancel_cleanly(server, client, root):
    collector = ReplyCollector(client)
    ids = [f"q{n:02d}" for n in range(20)]
    try:
        for job_id in ids:
            client.send("/msdm/generate", job_id, str(root / "queue" / job_id), 0.1, "steps", 2, "seed", 1)
        client.send("/msdm/generate", "q05", str(root / "queue" / "dup"), 0.1)  # q05 is queued already
        cancelled = ids[10:16]
        for job_id in cancelled:
            client.send("/msdm/cancel", job_id)
        finals = ("/msdm/done", "/msdm/cancelled")
        assert collector.wait_for(lambda rs: len({r[0] for _, a, r in rs if a in finals}) == 20, 120)
        time.sleep(0.3)
    finally:
        collector.stop()
    accepted = {r[0]: r[1] for _, a, r in collector.replies if a == "/msdm/accepted"}
    assert sorted(accepted) == ids and accepted["q19"] > 0
    dup = [r for _, a, r in collector.replies if a == "/msdm/error"]
    assert [r[:2] for r in dup] == [["q05", "duplicate_job"]]
    for job_id in ids:
        ends = [a for _, a, r in collector.of_job(job_id) if a in finals]
        assert len(ends) == 1, (job_id, ends)
        folder = root / "queue" / job_id
        files = sorted(os.listdir(folder)) if folder.exists() else []
        if ends[0] == "/msdm/done":
            assert files == ["bass.wav", "drums.wav", "guitar.wav", "mix.wav", "piano.wav"]
        else:
            assert files == []
    # Cancel requests that overtook a job still queued removed it; at most one was already running.
    assert sum(1 for j in cancelled if [a for _, a, _ in collector.of_job(j)][-1] == "/msdm/cancelled") >= 5
    assert client.request("/msdm/status")[1] == ["idle", "", 0.0, 0]


def test_a_link_swapped_in_for_out_dir_during_a_job_sends_nothing_outside(server, client, root, tmp_path,
                                                                           monkeypatch):
    """Issue 14, finding 3: out_dir was checked when the job started; a symlink put
    in its place while the job ran sent every file outside the output root."""
    target = tmp_path / "outside_target"
    target.mkdir()
    folder = root / "swapped"
    swap_in_a_link_when_sampling_starts(monkeypatch, folder, target, root / "swapped.moved")
    final, _ = run(client, "/msdm/generate", "swap", str(folder), 0.1, *STEPS)
    assert final[0] == "/msdm/error" and final[1][1] == "bad_path" and "moved or replaced" in final[1][2], final
    assert os.listdir(target) == [] and os.listdir(root / "swapped.moved") == []


def test_a_folder_where_a_stem_goes_is_refused_before_anything_is_replaced(server, client, outside, root):
    folder = root / "in_the_way"
    folder.mkdir()
    (folder / "bass.wav").write_bytes(b"keep")
    (folder / "drums.wav").mkdir()
    final, _ = run(client, "/msdm/separate", "way", str(outside / "mix.wav"), str(folder), *STEPS, "overwrite", 1)
    assert final[0] == "/msdm/error" and final[1][1] == "bad_path" and "drums.wav' is a folder" in final[1][2], final
    assert (folder / "bass.wav").read_bytes() == b"keep" and sorted(os.listdir(folder)) == ["bass.wav", "drums.wav"]


def test_queue_full(tiny_models, tmp_path):
    srv = OscServer(tiny_models, port=0, output_root=tmp_path, max_queued=2).start()
    try:
        with OscClient("127.0.0.1", srv.port) as c:
            collector = ReplyCollector(c)
            # f0 running (its first progress) leaves two places in the queue: f1, f2; f3 is refused.
            c.send("/msdm/generate", "f0", str(tmp_path / "f0"), 5.0, "steps", 50)
            assert collector.wait_for(lambda rs: any(a == "/msdm/progress" for _, a, _ in rs), 30)
            for n in range(1, 4):
                c.send("/msdm/generate", f"f{n}", str(tmp_path / f"f{n}"), 5.0, "steps", 50)
            assert collector.wait_for(lambda rs: any(a == "/msdm/error" for _, a, _ in rs), 10)
            errors = [r for _, a, r in collector.replies if a == "/msdm/error"]
            assert [e[:2] for e in errors] == [["f3", "queue_full"]]
            for n in range(3):
                c.send("/msdm/cancel", f"f{n}")
            assert collector.wait_for(lambda rs: sum(a == "/msdm/cancelled" for _, a, _ in rs) == 3, 30)
            collector.stop()
    finally:
        srv.shutdown()
