"""A refined separation delivers its first guess before the refinement
(issue 13: "the app and msdm serve deliver it at once ... and replace it with
the refined stems when they are ready"): engine.jobs.run's `on_first_guess`,
and /msdm/first_guess from a real server on a real socket, with the tiny
model that carries a (random) first-guess separator."""

from __future__ import annotations

import numpy as np
import pytest

from engine.audio.files import read_audio, write_audio
from engine.jobs.options import JobOptions
from engine.jobs.run import FIRST_GUESS_FOLDER, Job, run_job
from engine.storage.model import MSDMModel, ModelSet
from osc_bridge.client import OscClient, done_paths
from osc_bridge.server import OscServer

STEMS = ("bass", "drums", "guitar", "piano")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def packed(tiny_packed_path):
    return ModelSet([MSDMModel.load(tiny_packed_path)])


@pytest.fixture(scope="module")
def mix_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("guess_inputs") / "mix.wav"
    rng = np.random.default_rng(1)
    write_audio(path, (0.1 * rng.standard_normal((2, 9000))).astype(np.float32), 22050)
    return path


def _stems(paths):
    return {stem: read_audio(paths[stem]).samples for stem in STEMS}


def test_the_guess_comes_first_and_is_the_zero_step_result(packed, mix_path, tmp_path):
    events = []
    out = tmp_path / "refined"
    options = JobOptions(start="guess", steps=3, method="dpmpp2m", seed=5)
    final = run_job(packed, Job("separate", out, options, mix=mix_path),
                    progress=lambda fraction, message: events.append(("progress", fraction, message)),
                    on_first_guess=lambda paths: events.append(("guess", dict(paths))))
    guesses = [e for e in events if e[0] == "guess"]
    assert len(guesses) == 1
    guess = guesses[0][1]
    assert set(guess) == set(STEMS)
    assert all(path.parent == out / FIRST_GUESS_FOLDER and path.is_file() for path in guess.values())
    # Delivered before any refinement step, and progress never goes back.
    at = events.index(guesses[0])
    assert all("refining" not in e[2] for e in events[:at] if e[0] == "progress")
    assert any("refining" in e[2] for e in events[at:] if e[0] == "progress")
    fractions = [e[1] for e in events if e[0] == "progress"]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)

    # The guess is exactly what "start guess, steps 0" gives; the refined stems differ from it.
    alone = run_job(packed, Job("separate", tmp_path / "alone", JobOptions(start="guess", steps=0, seed=5),
                                mix=mix_path))
    mix = read_audio(mix_path).samples
    guessed, refined, zero = _stems(guess), _stems(final), _stems(alone)
    for stem in STEMS:
        np.testing.assert_array_equal(guessed[stem], zero[stem])
        assert final[stem].parent == out
    assert max(np.abs(refined[s] - guessed[s]).max() for s in STEMS) > 1e-4
    for stems in (guessed, refined):  # Dirac: both sum to the mix
        np.testing.assert_allclose(sum(stems.values()), mix, atol=1e-5)


def test_no_guess_is_sent_where_there_is_nothing_to_refine(packed, mix_path, tmp_path):
    calls = []
    for name, options in (("zero", JobOptions(start="guess", steps=0)),
                          ("noise", JobOptions(start="noise", steps=2, method="dpmpp2m"))):
        run_job(packed, Job("separate", tmp_path / name, options, mix=mix_path), on_first_guess=calls.append)
        assert not (tmp_path / name / FIRST_GUESS_FOLDER).exists()
    assert calls == []


@pytest.fixture(scope="module")
def server(packed, tmp_path_factory):
    root = tmp_path_factory.mktemp("guess_root")
    srv = OscServer(packed, port=0, output_root=root, max_seconds=60).start()
    yield srv
    srv.shutdown()


def test_the_server_sends_the_guess_then_the_refined_stems(server, mix_path):
    out = server.output_root / "take-1"
    replies = []
    with OscClient("127.0.0.1", server.port) as client:
        final = client.run_job("/msdm/separate", "take-1", str(mix_path), str(out), "start", "guess", "steps", 3,
                               "method", "dpmpp2m", silence=60.0,
                               on_reply=lambda address, args: replies.append((address, list(args))))
    assert final[0] == "/msdm/done", final
    addresses = [address for address, _ in replies]
    assert addresses.count("/msdm/first_guess") == 1
    assert addresses.index("/msdm/first_guess") < addresses.index("/msdm/done")
    guess = done_paths(next(args for address, args in replies if address == "/msdm/first_guess"))
    assert set(guess) == set(STEMS)
    assert all(str(path).startswith(str(out / FIRST_GUESS_FOLDER)) for path in guess.values())
    refined = done_paths(final[1])
    assert all(str(path).startswith(str(out)) and FIRST_GUESS_FOLDER not in str(path) for path in refined.values())
    # Both sets are whole files that sum to the mix.
    mix = read_audio(mix_path).samples
    for paths in (guess, refined):
        np.testing.assert_allclose(sum(_stems(paths).values()), mix, atol=1e-5)
