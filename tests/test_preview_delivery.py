"""Generation's first audible result sooner (issue 20 item 7): with the
`preview` option a generate or impute job writes its first window alone into
preview/ and delivers it (engine.jobs.run's `on_preview`, /msdm/preview from
a real server on a real socket) before the whole result, with the job's seed."""

from __future__ import annotations

import numpy as np
import pytest

from engine.audio.files import read_audio, write_audio
from engine.jobs.options import JobOptions
from engine.jobs.run import PREVIEW_FOLDER, Job, preview_seconds, run_job
from engine.core.tasks import LATENT_GENERATE
from engine.storage.model import ModelSet
from osc_bridge.client import OscClient, done_paths
from osc_bridge.server import OscServer

from support.latent_models import tiny_latent_model

SR = 22050
STEMS = ("bass", "drums", "guitar", "piano")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def models():
    return ModelSet([tiny_latent_model()])


def test_the_preview_comes_first_and_is_the_first_window(models, tmp_path):
    out = tmp_path / "gen"
    events = []

    def on_preview(paths):
        # Delivered before the whole result exists.
        events.append(("preview", dict(paths), (out / "bass.wav").exists()))

    options = JobOptions(preview=True, steps=2, seed=3)
    final = run_job(models, Job("generate", out, options, seconds=7.0), on_preview=on_preview,
                    progress=lambda fraction, message: events.append(("progress", fraction, message)))
    previews = [e for e in events if e[0] == "preview"]
    assert len(previews) == 1 and previews[0][2] is False
    preview = previews[0][1]
    assert set(preview) == {*STEMS, "mix"}
    assert all(path.parent == out / PREVIEW_FOLDER for path in preview.values())
    seconds = preview_seconds(models, LATENT_GENERATE)
    assert 2.5 < seconds < 3.5
    for stem in STEMS:
        short, whole = read_audio(preview[stem]).samples, read_audio(final[stem]).samples
        assert short.shape[-1] == round(seconds * SR) and whole.shape[-1] == 7 * SR
    # The preview's mix is the sum of its stems, like any result.
    mix = sum(read_audio(preview[s]).samples for s in STEMS)
    np.testing.assert_allclose(read_audio(preview["mix"]).samples, mix, atol=2e-7)
    fractions = [e[1] for e in events if e[0] == "progress"]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)


def test_accompaniment_previews_the_first_window_of_the_given_stems(models, tmp_path):
    drums = tmp_path / "drums.wav"
    write_audio(drums, (0.1 * np.random.default_rng(0).standard_normal((1, 8 * SR))).astype(np.float32), SR)
    got = []
    run_job(models, Job("impute", tmp_path / "acc", JobOptions(preview=True, steps=2), given={"drums": drums}),
            on_preview=got.append)
    assert len(got) == 1 and set(got[0]) == {"bass", "guitar", "piano", "mix"}
    assert read_audio(got[0]["bass"]).frames == round(preview_seconds(models, LATENT_GENERATE) * SR)


def test_no_preview_for_a_short_job_or_without_the_option(models, tmp_path):
    got = []
    run_job(models, Job("generate", tmp_path / "short", JobOptions(preview=True, steps=2), seconds=4.0),
            on_preview=got.append)
    run_job(models, Job("generate", tmp_path / "plain", JobOptions(steps=2), seconds=7.0), on_preview=got.append)
    assert got == []
    assert not (tmp_path / "short" / PREVIEW_FOLDER).exists() and not (tmp_path / "plain" / PREVIEW_FOLDER).exists()


def test_the_server_sends_the_preview_before_done(models, tmp_path):
    server = OscServer(models, port=0, output_root=tmp_path, max_seconds=60).start()
    try:
        out = tmp_path / "osc"
        replies = []
        with OscClient("127.0.0.1", server.port) as client:
            final = client.run_job("/msdm/generate", "p-1", str(out), 7.0, "preview", 1, "steps", 2, silence=60.0,
                                   on_reply=lambda address, args: replies.append((address, list(args))))
    finally:
        server.shutdown()
    assert final[0] == "/msdm/done", final
    addresses = [address for address, _ in replies]
    assert addresses.count("/msdm/preview") == 1
    assert addresses.index("/msdm/preview") < addresses.index("/msdm/done")
    preview = done_paths(next(args for address, args in replies if address == "/msdm/preview"))
    assert all(str(path).startswith(str(out / PREVIEW_FOLDER)) for path in preview.values())
