"""Regenerating a time range of some stems, and several takes per job
(engine/audio/pipeline.regenerate_range, engine/jobs/run.run_job; issue 22),
on the tiny random-weight model and real files."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from engine.audio.pipeline import RANGE_FADE_S
from engine.cli import main
from engine.jobs.options import JobOptions, parse_time_range
from engine.jobs.run import Job, run_job, take_folder

STEMS = ("bass", "drums", "guitar", "piano")
RATE = 44100


def stems_on_disk(folder, seconds=2.0, rate=RATE, channels=2):
    """Four different, smooth stems (so an edge in the output would show as a step)."""
    folder.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    paths = {}
    for n, stem in enumerate(STEMS):
        mono = 0.2 * np.sin(2 * np.pi * (110 * (n + 1)) * t + n)
        data = np.stack([mono * (1 - 0.3 * c) for c in range(channels)], axis=1).astype(np.float32)
        paths[stem] = folder / f"{stem}.wav"
        sf.write(paths[stem], data, rate, subtype="FLOAT")
    return paths


def read(path):
    data, rate = sf.read(path, dtype="float32", always_2d=True)
    return data.T, rate


@pytest.mark.usefixtures("one_torch_thread")
def test_outside_the_range_is_the_input_and_the_edges_have_no_step(tiny_models, tmp_path):
    given = stems_on_disk(tmp_path / "in")
    options = JobOptions(steps=3, seed=4, range="0.5:1.25", regenerate="bass,piano")
    out = run_job(tiny_models, Job("impute", tmp_path / "out", options, given=given))
    assert sorted(out) == ["bass", "mix", "piano"]
    begin, end = round(0.5 * RATE), round(1.25 * RATE)
    for stem in ("bass", "piano"):
        original, _ = read(given[stem])
        new, rate = read(out[stem])
        assert rate == RATE and new.shape == original.shape
        # Outside the range (and on its edges, where the fade starts at 0): the input, sample for sample.
        np.testing.assert_array_equal(new[:, :begin + 1], original[:, :begin + 1])
        np.testing.assert_array_equal(new[:, end - 1:], original[:, end - 1:])
        assert np.abs(new[:, begin:end] - original[:, begin:end]).max() > 1e-3  # regenerated inside
        # No step at the edges: the new audio enters and leaves along a raised cosine over
        # RANGE_FADE_S, so k samples inside an edge it departs from the input by at most
        # (1 - cos(pi k / F)) / 2 of its largest departure (a hard cut would depart fully at k = 1).
        fade = round(RANGE_FADE_S * RATE)
        assert fade > 100
        departure = np.abs(new - original)
        largest = departure.max()
        ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(fade) / fade)
        assert np.all(departure[:, begin:begin + fade] <= ramp * largest + 1e-6)
        assert np.all(departure[:, end - fade:end] <= ramp[::-1] * largest + 1e-6)
        assert departure[:, begin + fade:end - fade].max() > 0.5 * largest  # full strength between the fades
    # The given stems are untouched and the mix is the sum of all four as written.
    mix, _ = read(out["mix"])
    total = sum(read(out[s])[0] if s in out else read(given[s])[0] for s in STEMS)
    np.testing.assert_allclose(mix, total, atol=1e-6)


@pytest.mark.usefixtures("one_torch_thread")
def test_takes_arrive_one_by_one_with_their_seeds_and_can_be_made_again(tiny_models, tmp_path):
    given = stems_on_disk(tmp_path / "in", seconds=1.0)
    seen = []
    options = JobOptions(steps=2, seed=7, takes=3, range="0.25:0.75", regenerate="bass")
    first = run_job(tiny_models, Job("impute", tmp_path / "out", options, given=given),
                    on_take=lambda number, seed, files: seen.append((number, seed, dict(files))))
    assert [(n, s) for n, s, _ in seen] == [(1, 7), (2, 8), (3, 9)]
    assert first == seen[0][2]
    for number, _, files in seen:
        assert files["bass"].parent == tmp_path / "out" / take_folder(number)
    takes = [read(files["bass"])[0] for _, _, files in seen]
    assert not np.array_equal(takes[0], takes[1])  # different seeds, different takes
    again = run_job(tiny_models, Job("impute", tmp_path / "again", JobOptions(steps=2, seed=8, range="0.25:0.75",
                                                                           regenerate="bass"), given=given))
    np.testing.assert_array_equal(read(again["bass"])[0], takes[1])  # take 2 is seed 8, alone


@pytest.mark.usefixtures("one_torch_thread")
def test_generate_takes(tiny_models, tmp_path):
    seen = []
    run_job(tiny_models, Job("generate", tmp_path / "gen", JobOptions(steps=2, takes=2), seconds=0.5),
            on_take=lambda number, seed, files: seen.append((number, sorted(files))))
    assert seen == [(1, sorted((*STEMS, "mix"))), (2, sorted((*STEMS, "mix")))]


@pytest.mark.parametrize("text,ok", [("4:6.5", True), ("0:0.1", True), ("6:4", False), ("4", False),
                                     ("a:b", False), ("-1:2", False), ("1:inf", False)])
def test_time_range_format(text, ok):
    if ok:
        assert parse_time_range(text) == tuple(float(v) for v in text.split(":"))
    else:
        with pytest.raises(ValueError):
            parse_time_range(text)


def test_cli_refuses_a_range_it_cannot_do_before_any_work(tmp_path, capsys, tiny_model_path):
    given = stems_on_disk(tmp_path / "in", seconds=1.0)
    base = ["impute", "--model", str(tiny_model_path), "-o", str(tmp_path / "out"), "--steps", "2"] + \
        [f"--given={s}={p}" for s, p in given.items() if s != "piano"]
    assert main(base + ["--range", "0.2:0.5"]) == 2
    assert "range and regenerate go together" in capsys.readouterr().err
    assert main(base + ["--range", "0.2:0.5", "--regenerate", "piano"]) == 2
    assert "give the stems to regenerate too" in capsys.readouterr().err
    assert main(base + ["--range", "3:4", "--regenerate", "bass"]) == 2
    assert "starts after the end" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(base + ["--range", "5:1", "--regenerate", "bass"])
    assert "START < END" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing written by a refused job


def test_latent_frame_mask_frees_every_frame_that_hears_a_free_sample():
    from engine.audio.latent_generation import latent_frame_mask

    hop, n_fft = 256, 1024
    mask = np.ones((2, 40 * hop), dtype=bool)
    mask[1, 10 * hop:20 * hop] = False
    frames = latent_frame_mask(mask, hop, n_fft, 40 * hop // hop + 1)
    assert frames[0].all()
    free = np.flatnonzero(~frames[1])
    # Frames whose window (centre +- n_fft / 2) reaches into [10, 20) hops are free; no other.
    assert (free.min(), free.max()) == (10 - n_fft // 2 // hop + 1, 20 + n_fft // 2 // hop - 1)


@pytest.mark.usefixtures("one_torch_thread")
def test_latent_range_regeneration_listens_to_the_other_stems(tmp_path):
    """The latent prior regenerates the range in context: the same seed with
    other given stems around it gives other audio (before, the latent path
    dropped the mask and generated the range from nothing)."""
    from engine.storage.model import ModelSet
    from support.latent_models import tiny_latent_model

    models = ModelSet([tiny_latent_model()])
    options = JobOptions(seed=2, range="0.5:1.5", regenerate="bass", prior="latent", steps=2)
    given = stems_on_disk(tmp_path / "a", seconds=2.0, rate=22050, channels=1)
    first = read(run_job(models, Job("impute", tmp_path / "out-a", options, given=given))["bass"])[0]
    other = dict(given)
    data, rate = sf.read(given["guitar"], dtype="float32")
    other["guitar"] = tmp_path / "other-guitar.wav"
    sf.write(other["guitar"], data[::-1].copy(), rate, subtype="FLOAT")
    second = read(run_job(models, Job("impute", tmp_path / "out-b", options, given=other))["bass"])[0]
    original = read(given["bass"])[0]
    begin, end = round(0.5 * 22050), round(1.5 * 22050)
    np.testing.assert_array_equal(first[:, :begin + 1], original[:, :begin + 1])
    assert np.abs(first[:, begin:end] - second[:, begin:end]).max() > 1e-4
