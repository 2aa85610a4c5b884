"""Takes and a regenerated time range through a real `msdm serve` on a real
socket (issue 22): /msdm/impute with `range`, `regenerate` and `takes`."""

from __future__ import annotations

import numpy as np
import pytest

from engine.audio.files import read_audio, write_audio
from engine.storage.model import MSDMModel, ModelSet
from osc_bridge.client import OscClient, done_paths
from osc_bridge.server import OscServer

STEMS = ("bass", "drums", "guitar", "piano")
RATE = 22050

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def server(tiny_model_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("takes_root")
    srv = OscServer(ModelSet([MSDMModel.load(tiny_model_path)]), port=0, output_root=root, max_seconds=60).start()
    yield srv
    srv.shutdown()


@pytest.fixture(scope="module")
def stems(tmp_path_factory):
    folder = tmp_path_factory.mktemp("takes_in")
    t = np.arange(int(1.5 * RATE)) / RATE
    paths = {}
    for n, stem in enumerate(STEMS):
        paths[stem] = folder / f"{stem}.wav"
        write_audio(paths[stem], (0.2 * np.sin(2 * np.pi * 110 * (n + 1) * t))[None].astype(np.float32), RATE)
    return paths


def given_args(paths):
    return [v for stem in STEMS for v in (stem, str(paths[stem]))]


def test_three_takes_of_a_range_arrive_in_order_before_done(server, stems):
    out = server.output_root / "bars"
    replies = []
    with OscClient("127.0.0.1", server.port) as client:
        final = client.run_job("/msdm/impute", "bars", str(out), *given_args(stems), "range", "0.25:1.0",
                               "regenerate", "bass", "takes", 3, "steps", 2, "seed", 10, silence=60.0,
                               on_reply=lambda address, args: replies.append((address, list(args))))
    assert final[0] == "/msdm/done", final
    takes = [args for address, args in replies if address == "/msdm/take"]
    assert [(a[0], a[1], a[2]) for a in takes] == [("bars", 1, 10), ("bars", 2, 11), ("bars", 3, 12)]
    assert [address for address, _ in replies].index("/msdm/take") < [a for a, _ in replies].index("/msdm/done")
    files = [dict(zip(a[3::2], a[4::2])) for a in takes]
    assert done_paths(final[1]) == files[0]
    original = read_audio(stems["bass"]).samples
    begin, end = round(0.25 * RATE), round(1.0 * RATE)
    basses = []
    for number, take in enumerate(files, 1):
        assert set(take) == {"bass", "mix"} and f"take-{number}" in take["bass"]
        bass = read_audio(take["bass"]).samples
        np.testing.assert_array_equal(bass[:, :begin], original[:, :begin])
        np.testing.assert_array_equal(bass[:, end:], original[:, end:])
        basses.append(bass)
    assert not np.array_equal(basses[1], basses[2])


@pytest.mark.parametrize("options,words", [(["range", "2:1", "regenerate", "bass"], "START < END"),
                                           (["range", "0:1"], "go together"),
                                           (["range", "0:1", "regenerate", "bass,bass"], "twice"),
                                           (["takes", 17], "takes must be between 1 and 16")])
def test_a_bad_range_or_takes_is_a_bad_request(server, stems, options, words):
    with OscClient("127.0.0.1", server.port) as client:
        final = client.run_job("/msdm/impute", "bad", str(server.output_root / "bad"), *given_args(stems),
                               *options, silence=10.0)
    assert final[0] == "/msdm/error" and final[1][1] == "bad_request" and words in final[1][2], final
