"""Files in, files out: layouts, rates, lengths, long audio, determinism, cancel."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import soundfile as sf

from engine.audio import pipeline
from engine.core.tasks import GENERATE, IMPUTE, SEPARATE_DIRAC, SEPARATE_GAUSSIAN

from conftest import STEMS, AnalyticModels, colored_prior, white_prior

FAST_DIRAC = SEPARATE_DIRAC.override(steps=40, num_resamples=1)


def write_mix(path, seconds, rate, channels, seed=0, level=0.1):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    tone = np.sin(2 * np.pi * 330 * t)[:, None] * np.linspace(0.5, 1, channels)[None]
    data = level * (tone + 0.3 * rng.standard_normal((len(t), channels)))
    sf.write(path, data.astype(np.float32), rate, subtype="FLOAT")
    return data.astype(np.float32)


def read_stems(paths):
    return {name: sf.read(path, dtype="float32", always_2d=True) for name, path in paths.items()}


def test_stereo_44k_mix_gives_stereo_stems_that_sum_to_it(tmp_path):
    models = AnalyticModels(colored_prior(), window=2048)
    mix = write_mix(tmp_path / "mix.wav", 0.3, 44100, 2)
    paths = pipeline.separate_file(models, tmp_path / "mix.wav", tmp_path / "out", settings=FAST_DIRAC)
    stems = read_stems(paths)
    assert list(stems) == list(STEMS)
    for data, rate in stems.values():
        assert rate == 44100 and data.shape == mix.shape
    total = sum(data for data, _ in stems.values())
    np.testing.assert_allclose(total, mix, atol=2e-6)  # exact to float32 precision


def test_real_network_path_on_the_tiny_model(tmp_path, tiny_models):
    mix = write_mix(tmp_path / "source.wav", 0.25, 48000, 1)
    sf.write(tmp_path / "mix.flac", mix, 48000, subtype="PCM_24")
    mix = sf.read(tmp_path / "mix.flac", dtype="float32", always_2d=True)[0]
    paths = pipeline.separate_file(tiny_models, tmp_path / "mix.flac", tmp_path / "out",
                                   settings=FAST_DIRAC.override(steps=8, method="dpmpp2m"))
    stems = read_stems(paths)
    total = sum(data for data, _ in stems.values())
    scale = max(np.abs(data).max() for data, _ in stems.values())
    assert all(rate == 48000 and data.shape == mix.shape for data, rate in stems.values())
    # Random weights give loud, meaningless stems, but they still sum to the mix.
    assert np.abs(total - mix).max() <= 1e-6 * max(scale, 1.0)


def test_gaussian_likelihood_stems_nearly_sum_to_the_mix(tmp_path):
    models = AnalyticModels(colored_prior(), window=2048)
    mix = write_mix(tmp_path / "mix.wav", 0.2, 22050, 1)
    paths = pipeline.separate_file(models, tmp_path / "mix.wav", tmp_path / "out", likelihood="gaussian",
                                   settings=SEPARATE_GAUSSIAN.override(steps=60))
    total = sum(data for data, _ in read_stems(paths).values())
    assert np.abs(total - mix).max() < 0.1 * np.abs(mix).max()


def test_long_audio_has_no_seams(tmp_path):
    """White stems: the exact posterior is per sample, so any seam at a window
    boundary would show as extra error there. Blending two independent draws
    can only lower the spread inside overlaps."""
    prior = white_prior()
    models = AnalyticModels(prior, window=1024)
    truth = prior.sample(1, 6000).numpy()[0]
    mix = truth.sum(0, keepdims=True)
    sf.write(tmp_path / "mix.wav", mix.T, 22050, subtype="FLOAT")
    paths = pipeline.separate_file(models, tmp_path / "mix.wav", tmp_path / "out", settings=FAST_DIRAC)
    stems = np.stack([data[:, 0] for data, _ in read_stems(paths).values()])
    levels = np.array([0.004, 0.002, 0.001, 0.0005])
    wiener = levels[:, None] / levels.sum() * mix
    posterior_var = levels - levels**2 / levels.sum()
    deviation = ((stems - wiener) ** 2 / posterior_var[:, None]).mean(0)  # ~1 where one draw, less in overlaps
    plan = pipeline.WindowPlan.make(6000, 1024, pipeline.DEFAULT_OVERLAP)
    boundaries = [plan.start(i) for i in range(1, plan.count)] + [plan.start(i) + 1024 for i in range(plan.count - 1)]
    near = np.concatenate([deviation[max(0, b - 16):b + 16] for b in boundaries])
    assert near.mean() < 1.25 * deviation.mean()
    assert 0.5 < deviation.mean() < 1.2
    np.testing.assert_allclose(stems.sum(0), mix[0], atol=1e-6)


def test_memory_is_bounded_by_the_window_not_the_length(tmp_path):
    models = AnalyticModels(white_prior(), window=16384)
    settings = SEPARATE_DIRAC.override(steps=2, num_resamples=1, s_churn=0.0, method="dpmpp2m")
    peaks = {}
    for seconds in (30, 300):
        path = tmp_path / f"mix{seconds}.wav"
        sf.write(path, 0.1 * np.random.default_rng(0).standard_normal(seconds * 22050).astype(np.float32), 22050)
        tracemalloc.start()
        pipeline.separate_file(models, path, tmp_path / f"out{seconds}", settings=settings)
        peaks[seconds] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert sf.info(str(tmp_path / f"out{seconds}" / "bass.wav")).frames == seconds * 22050
    # 10x the audio, about the same peak (numpy buffers; the 300 s output alone would be 106 MB).
    assert peaks[300] < 1.5 * peaks[30], peaks


def test_same_seed_same_stems_and_another_seed_differs(tmp_path):
    models = AnalyticModels(colored_prior(), window=2048)
    write_mix(tmp_path / "mix.wav", 0.2, 22050, 2)
    runs = [read_stems(pipeline.separate_file(models, tmp_path / "mix.wav", tmp_path / f"out{i}",
                                              settings=FAST_DIRAC, seed=seed))
            for i, seed in enumerate((5, 5, 6))]
    np.testing.assert_array_equal(runs[0]["bass"][0], runs[1]["bass"][0])
    assert not np.allclose(runs[0]["bass"][0], runs[2]["bass"][0])


def test_mono_option_separates_the_downmix(tmp_path):
    models = AnalyticModels(colored_prior(), window=2048)
    mix = write_mix(tmp_path / "mix.wav", 0.2, 22050, 2)
    paths = pipeline.separate_file(models, tmp_path / "mix.wav", tmp_path / "out", settings=FAST_DIRAC, mono=True)
    total = sum(data for data, _ in read_stems(paths).values())
    assert total.shape == (mix.shape[0], 1)
    np.testing.assert_allclose(total[:, 0], mix.mean(1), atol=1e-6)


def test_silence_separates_into_silence(tmp_path):
    sf.write(tmp_path / "silence.wav", np.zeros((5000, 2), dtype=np.float32), 22050)
    paths = pipeline.separate_file(AnalyticModels(colored_prior()), tmp_path / "silence.wav", tmp_path / "out",
                                   settings=FAST_DIRAC)
    assert all(not data.any() and data.shape == (5000, 2) for data, _ in read_stems(paths).values())


def test_cancel_leaves_no_files_and_keeps_old_ones(tmp_path):
    models = AnalyticModels(colored_prior(), window=1024)
    write_mix(tmp_path / "mix.wav", 0.5, 22050, 1)
    out = tmp_path / "out"
    out.mkdir()
    (out / "bass.wav").write_bytes(b"an earlier result")

    def cancel_halfway(fraction, message):
        if fraction > 0.5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pipeline.separate_file(models, tmp_path / "mix.wav", out, settings=FAST_DIRAC, progress=cancel_halfway)
    assert sorted(p.name for p in out.iterdir()) == ["bass.wav"]
    assert (out / "bass.wav").read_bytes() == b"an earlier result"


def test_long_generation_continues_across_windows(tmp_path):
    models = AnalyticModels(colored_prior(), window=512)
    paths = pipeline.generate_file(models, tmp_path / "gen", 2500 / 22050,
                                   settings=GENERATE.override(steps=30, method="heun"))
    stems = read_stems(paths)
    assert sorted(stems) == sorted([*STEMS, "mix"])
    assert all(data.shape == (2500, 1) and rate == 22050 for data, rate in stems.values())
    np.testing.assert_allclose(stems["mix"][0], sum(stems[s][0] for s in STEMS), atol=1e-6)
    # Each window continues the previous one, so the level is steady across boundaries.
    bass = stems["bass"][0][:, 0]
    first, last = bass[:512].std(), bass[-512:].std()
    assert 0.5 < last / first < 2


def test_imputation_keeps_the_given_layout(tmp_path):
    models = AnalyticModels(colored_prior(), window=1024)
    drums = write_mix(tmp_path / "drums.wav", 0.1, 44100, 2)
    paths = pipeline.impute_file(models, {"drums": tmp_path / "drums.wav"}, tmp_path / "out",
                                 settings=IMPUTE.override(steps=30))
    stems = read_stems(paths)
    assert sorted(stems) == ["bass", "guitar", "mix", "piano"]
    for data, rate in stems.values():
        assert rate == 44100 and data.shape == drums.shape
    np.testing.assert_allclose(stems["bass"][0][:, 0], stems["bass"][0][:, 1])  # one part, both channels
    generated = sum(stems[s][0] for s in ("bass", "guitar", "piano"))
    np.testing.assert_allclose(stems["mix"][0], drums + generated, atol=1e-6)
