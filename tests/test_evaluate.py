"""Separation evaluation (the MSDM paper's protocol): SI-SNR against independent
implementations, the windowing and silence rules on hand-built signals, the
two reference methods, a whole tiny dataset, and the reports."""

from __future__ import annotations

import csv
import itertools
import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch
from torchmetrics.functional.audio import (
    scale_invariant_signal_distortion_ratio,
    scale_invariant_signal_noise_ratio,
)

from engine.core.tasks import SEPARATE_DIRAC
from training import evaluate as ev

from conftest import STEMS, AnalyticModels, colored_prior

# Few steps, as in the paper otherwise (churn 20, R = 2). At 20 steps or fewer the
# Dirac sampler with churn diverges on the closed-form prior, so 30.
FAST_DIRAC = SEPARATE_DIRAC.override(steps=30, method="dpmpp2m")
RATE = 1000        # a small rate keeps 4 s windows small (4000 samples)
CHUNK = 4096


def torchmetrics_si_sdr(est, ref):
    """SI-SDR without mean removal (torchmetrics' eps is float64's machine eps)."""
    return scale_invariant_signal_distortion_ratio(
        torch.from_numpy(est), torch.from_numpy(ref), zero_mean=False).numpy()


# --------------------------------------------------------------------------- #
# SI-SNR
# --------------------------------------------------------------------------- #

def random_pair(seed=0, shape=(6, 3000)):
    rng = np.random.default_rng(seed)
    ref = rng.standard_normal(shape)
    est = 0.8 * ref + rng.uniform(0.1, 2.0, shape[:-1] + (1,)) * rng.standard_normal(shape)
    return est, ref


def test_si_snr_matches_torchmetrics_and_its_eps_explains_the_difference():
    est, ref = random_pair()
    ours = ev.si_snr(est, ref)
    theirs = torchmetrics_si_sdr(est, ref)
    # Same formula; only eps differs (1e-8 here, 2.2e-16 there). The energies are
    # ~1e3, so each eps moves a log term by ~1e-11 relative: far below 1e-6 dB.
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)
    np.testing.assert_allclose(ev.si_snr(est, ref, eps=np.finfo(np.float64).eps), theirs, rtol=0, atol=1e-12)
    assert ours.shape == (6,)


def test_si_snr_matches_fast_bss_eval():
    fast_bss_eval = pytest.importorskip("fast_bss_eval")
    est, ref = random_pair(seed=1)
    theirs = fast_bss_eval.si_sdr(ref[:, None], est[:, None], zero_mean=False)[:, 0]
    np.testing.assert_allclose(ev.si_snr(est, ref), theirs, rtol=0, atol=1e-6)


def test_si_snr_known_value_and_scale_invariance():
    t = np.arange(2000) / 2000
    ref = np.sin(2 * np.pi * 5 * t)
    noise = 0.1 * np.cos(2 * np.pi * 5 * t)  # orthogonal to ref over whole periods
    expected = 10 * np.log10((ref**2).sum() / (noise**2).sum())  # 20 dB
    assert ev.si_snr(ref + noise, ref, eps=0.0) == pytest.approx(expected, abs=1e-9)
    assert ev.si_snr(ref + noise, ref) == pytest.approx(expected, abs=1e-7)  # eps / ||noise||^2 = 1e-9
    assert expected == pytest.approx(20.0)
    est, ref = random_pair(seed=2)
    base = ev.si_snr(est, ref)
    for scale in (0.01, 3.7, -2.0):
        np.testing.assert_allclose(ev.si_snr(scale * est, ref), base, atol=1e-9)
        np.testing.assert_allclose(ev.si_snr(est, scale * ref), base, atol=1e-6)


def test_si_snr_does_not_remove_the_mean():
    est, ref = random_pair(seed=3)
    shifted = est + 0.5
    # torchmetrics' SI-SNR removes the mean, so a DC offset does not change it...
    np.testing.assert_allclose(
        scale_invariant_signal_noise_ratio(torch.from_numpy(shifted), torch.from_numpy(ref)).numpy(),
        scale_invariant_signal_noise_ratio(torch.from_numpy(est), torch.from_numpy(ref)).numpy(), atol=1e-9)
    # ...the paper's does not: the offset is error.
    assert (ev.si_snr(shifted, ref) < ev.si_snr(est, ref) - 0.1).all()
    np.testing.assert_allclose(ev.si_snr(shifted, ref), torchmetrics_si_sdr(shifted, ref), atol=1e-6)


def test_si_snr_of_a_silent_reference_follows_the_reference_code():
    # alpha = eps / eps = 1 but the target is 0: 10 log10(eps / (||est||^2 + eps)).
    est = np.full(100, 0.1)
    assert ev.si_snr(est, np.zeros(100)) == pytest.approx(10 * np.log10(1e-8 / (1.0 + 1e-8)))


# --------------------------------------------------------------------------- #
# Windows and silence
# --------------------------------------------------------------------------- #

def active(seconds, rate=RATE, seed=0, level=0.1):
    return level * np.random.default_rng(seed).standard_normal(int(seconds * rate))


def test_windows_of_a_10_s_signal_start_at_0_2_4_6_s():
    assert ev.window_starts(10 * RATE, 4 * RATE, 2 * RATE) == [0, 2000, 4000, 6000]
    refs = np.stack([active(10, seed=n) for n in range(4)])
    est = refs + 0.1 * np.stack([active(10, seed=10 + n) for n in range(4)])
    scores = ev.score_windows(est, refs, RATE)
    assert scores.shape == (4, 4)
    for w, start in enumerate([0, 2000, 4000, 6000]):
        part = slice(start, start + 4000)
        expected = ev.si_snr(est[:, part], refs[:, part]) - ev.si_snr(refs[:, part].sum(0), refs[:, part])
        np.testing.assert_allclose(scores[w], expected, atol=1e-12)


def test_the_last_window_may_be_short_as_in_the_reference_code():
    # ceil((T - overlap) / hop) windows: 11 s gives a 3 s window at 8 s; 2 s gives none.
    assert ev.window_starts(11 * RATE, 4 * RATE, 2 * RATE) == [0, 2000, 4000, 6000, 8000]
    assert ev.window_starts(3 * RATE, 4 * RATE, 2 * RATE) == [0]
    assert ev.window_starts(2 * RATE, 4 * RATE, 2 * RATE) == []
    # The paper's re-assembled chunk: 262144 samples at 22050 Hz -> 5 windows, the last 3.9 s.
    assert len(ev.window_starts(262144, 88200, 44100)) == 5


def test_windows_with_at_most_one_active_stem_are_dropped():
    refs = np.zeros((4, 10 * RATE))
    refs[0] = active(10, seed=0)                  # always active
    refs[1, :2000] = active(2, seed=1)            # only in 0-2 s
    refs[2, 8000:] = active(2, seed=2)            # only in 8-10 s
    est = refs + 0.05 * np.stack([active(10, seed=10 + n) for n in range(4)])
    scores = ev.score_windows(est, refs, RATE)
    # 0-4 s (stems 0, 1) and 6-10 s (stems 0, 2) kept; 2-6 and 4-8 s have stem 0 alone.
    assert scores.shape == (2, 4)
    for row, start in zip(scores, (0, 6000)):
        part = slice(start, start + 4000)
        expected = ev.si_snr(est[:, part], refs[:, part]) - ev.si_snr(refs[:, part].sum(0), refs[:, part])
        np.testing.assert_allclose(row, expected, atol=1e-12)
    # No active stem at all: dropped too.
    assert ev.score_windows(np.zeros((4, 4000)), np.zeros((4, 4000)), RATE).shape == (0, 4)


def test_silence_threshold_is_the_l2_norm_over_the_sample_count():
    n = 4000  # one window at 1000 Hz
    unit = np.ones(n) / math.sqrt(n)     # ||unit||_2 = 1, so ||c unit|| / n = c / n
    at = ev.SILENCE * n                  # the level whose norm / n is the threshold
    assert ev.is_silent(unit * at * (1 - 1e-9))
    assert not ev.is_silent(unit * at * (1 + 1e-9))
    # It is not an RMS threshold: an RMS of 1e-4 (-80 dBFS) over 4000 samples is
    # 1.6e-6 by this measure (silent), over 40 samples 1.6e-5 (not silent).
    assert ev.is_silent(np.full(4000, 1e-4)) and not ev.is_silent(np.full(40, 1e-4))

    def kept(level):
        refs = np.stack([active(4, seed=0), unit * at * level, np.zeros(n), np.zeros(n)])
        return ev.score_windows(refs, refs, RATE).shape[0]

    assert kept(1 + 1e-6) == 1 and kept(1 - 1e-6) == 0
    assert (ev.score_windows(np.zeros((2, n)), np.stack([active(4), active(4, seed=1)]), RATE,
                             silence=1.0).shape == (0, 2))


def test_the_mixture_as_estimate_scores_exactly_zero():
    rng = np.random.default_rng(4)
    refs = (0.1 * rng.standard_normal((4, 9 * RATE))).astype(np.float32)
    refs[3, 3000:] = 0  # a stem that stops: still scored in windows with others active
    scores = ev.score_windows(np.broadcast_to(refs.sum(0), refs.shape), refs, RATE)
    assert scores.shape == (4, 4) and np.array_equal(scores, np.zeros_like(scores))


def test_score_windows_checks_shapes():
    with pytest.raises(ValueError, match=r"\[N, T\]"):
        ev.score_windows(np.zeros((4, 100)), np.zeros((3, 100)), RATE)


# --------------------------------------------------------------------------- #
# Oracle
# --------------------------------------------------------------------------- #

def test_oracle_estimates_sum_to_the_mixture():
    rng = np.random.default_rng(5)
    refs = (0.1 * rng.standard_normal((4, 5000))).astype(np.float32)
    refs[2] = 0  # an absent stem gets exactly nothing
    mix = refs.sum(0)
    est = ev.oracle_ratio_mask(refs, mix)
    assert est.shape == refs.shape and est.dtype == np.float32
    np.testing.assert_allclose(est.sum(0), mix, atol=1e-6)
    assert not est[2].any()
    # Short signals (shorter than half the FFT) work too.
    short = refs[:, :300]
    np.testing.assert_allclose(ev.oracle_ratio_mask(short, short.sum(0)).sum(0), short.sum(0), atol=1e-6)


def test_oracle_scores_far_above_the_mixture_on_separable_stems():
    t = np.arange(8 * RATE) / RATE
    rng = np.random.default_rng(6)
    refs = np.stack([
        0.3 * np.sin(2 * np.pi * 20 * t),
        0.1 * np.sin(2 * np.pi * 130 * t) * (1 + np.sin(2 * np.pi * 0.5 * t)),
        0.2 * np.sign(np.sin(2 * np.pi * 3 * t)) * np.sin(2 * np.pi * 260 * t),
        0.05 * rng.standard_normal(t.size) * (t % 1 < 0.3),   # clicks
    ])
    est = ev.oracle_ratio_mask(refs, refs.sum(0))
    scores = ev.score_windows(est, refs, RATE)
    assert scores.shape == (3, 4)
    assert (scores.mean(0) > 10).all(), scores.mean(0)


# --------------------------------------------------------------------------- #
# A tiny dataset
# --------------------------------------------------------------------------- #

def write_track(folder, stems, rate, skip=()):
    folder.mkdir(parents=True)
    for name, x in zip(STEMS, stems):
        if name not in skip:
            sf.write(folder / f"{name}.wav", np.asarray(x, dtype=np.float32), rate, subtype="FLOAT")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    prior = colored_prior()
    g = torch.Generator().manual_seed(0)
    tracks = {}
    for name, length, skip in [("Track00001", 3 * CHUNK + 500, ()),          # 3 chunks, a partial one dropped
                               ("Track00002", 2 * CHUNK, ("piano",)),       # no piano file
                               ("Track00003", CHUNK - 1, ())]:              # shorter than a chunk
        x = prior.sample(1, length, generator=g)[0].numpy()
        for n, stem in enumerate(STEMS):
            if stem in skip:
                x[n] = 0
        write_track(root / "test" / name, x, RATE, skip)
        tracks[name] = x
    (root / "test" / "Track00004").mkdir()                                   # no stem at all
    write_track(root / "valid" / "Track00009", prior.sample(1, CHUNK, generator=g)[0].numpy(), RATE)
    return root, tracks


@pytest.fixture(scope="module")
def result(dataset):
    root, _ = dataset
    models = AnalyticModels(colored_prior(), window=2048, sample_rate=RATE)
    calls = []
    out = ev.evaluate_dataset(models, root, methods=("model", "mixture", "oracle"), settings=FAST_DIRAC,
                              chunk=CHUNK, progress=lambda f, msg: calls.append(f))
    return out, calls


def test_evaluate_dataset_orders_oracle_above_model_above_mixture(result):
    res, _ = result
    assert res.stems == STEMS
    assert set(res.per_method) == {"model", "mixture", "oracle"}
    for method in res.per_method.values():
        assert list(method) == [*STEMS, "All"]
        assert method["All"] == pytest.approx(np.mean([method[s] for s in STEMS]))
    model, mixture, oracle = (res.per_method[m] for m in ("model", "mixture", "oracle"))
    assert all(v == 0.0 for v in mixture.values())
    for stem in STEMS:  # the closed-form posterior sample beats the mix clearly
        assert oracle[stem] > model[stem] > 1.0, (stem, model, oracle)
    assert model["All"] > 3.0


def test_evaluate_dataset_counts_chunks_windows_and_skipped_tracks(result):
    res, calls = result
    # Track00001: 3 chunks = 12288 samples -> 6 windows; Track00002: 2 chunks -> 4
    # windows; every window has at least 3 active stems.
    assert res.tracks == 2
    assert res.windows == 6 + 4
    assert res.seconds == pytest.approx(5 * CHUNK / RATE)
    assert set(res.skipped) == {"Track00003", "Track00004"}
    assert "shorter than one chunk" in res.skipped["Track00003"]
    assert "no stem files" in res.skipped["Track00004"]
    assert res.settings["sampler"]["steps"] == 30 and res.settings["chunk"] == CHUNK
    json.dumps(res.settings, allow_nan=False)
    assert calls and all(0 <= a <= b <= 1 for a, b in itertools.pairwise(calls)) and calls[-1] == 1


def test_missing_stem_file_reads_as_silence(dataset):
    root, tracks = dataset
    stems = ev.read_track_stems(root / "test" / "Track00002", STEMS, RATE)
    assert stems.shape == (4, 2 * CHUNK) and not stems[3].any()
    np.testing.assert_array_equal(stems[:3], tracks["Track00002"][:3])
    assert ev.read_track_stems(root / "test" / "Track00004", STEMS, RATE) is None


def test_stems_are_resampled_to_the_model_rate_and_downmixed(tmp_path):
    t = np.arange(2 * RATE) / (2 * RATE)
    tone = 0.2 * np.sin(2 * np.pi * 50 * t)
    folder = tmp_path / "Track"
    folder.mkdir()
    sf.write(folder / "bass.wav", np.stack([tone, tone], -1).astype(np.float32), 2 * RATE, subtype="FLOAT")
    sf.write(folder / "drums.wav", tone[:-10].astype(np.float32), 2 * RATE, subtype="FLOAT")
    stems = ev.read_track_stems(folder, STEMS, RATE)
    assert stems.shape == (4, RATE - 5)  # resampled, cropped to the shortest stem
    middle = slice(100, 800)
    expected = 0.2 * np.sin(2 * np.pi * 50 * np.arange(RATE) / RATE)
    np.testing.assert_allclose(stems[0, middle], expected[middle], atol=1e-3)


def test_evaluate_dataset_respects_max_tracks_and_split(dataset):
    root, _ = dataset
    models = AnalyticModels(colored_prior(), window=2048, sample_rate=RATE)
    res = ev.evaluate_dataset(models, root, methods=("mixture",), chunk=CHUNK, max_tracks=1)
    assert res.tracks == 1 and res.windows == 6 and not res.skipped
    res = ev.evaluate_dataset(models, root, split="valid", methods=("oracle",), chunk=CHUNK)
    assert res.tracks == 1 and res.windows == 2   # one chunk of 4.1 s: windows at 0 and 2 s
    with pytest.raises(ValueError, match="methods"):
        ev.evaluate_dataset(models, root, methods=("demucs",))
    with pytest.raises(FileNotFoundError, match="nosuch"):
        ev.evaluate_dataset(models, root, split="nosuch", methods=("mixture",))


# --------------------------------------------------------------------------- #
# Reports
# --------------------------------------------------------------------------- #

def test_write_results_csv_and_markdown(result, tmp_path):
    res, _ = result
    other = ev.EvaluationResult(STEMS, {"model": {**{s: 1.0 for s in STEMS}, "All": 1.0}}, 3, 1, 10.0,
                                {"likelihood": "gaussian", "sampler": {"steps": 5, "num_resamples": 1,
                                                                       "s_churn": 40.0}})
    csv_path, md_path = tmp_path / "out" / "results.csv", tmp_path / "out" / "results.md"
    ev.write_results([res, other], csv_path, md_path)
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["method", *STEMS, "All", "windows", "settings"]
    assert [r["method"].split(" ")[0] for r in rows] == ["model", "mixture", "oracle", "model"]
    assert rows[0]["method"] != rows[3]["method"]  # two model rows are told apart
    for row, method in zip(rows, ("model", "mixture", "oracle")):
        for stem in [*STEMS, "All"]:
            assert float(row[stem]) == res.per_method[method][stem]
        assert int(row["windows"]) == res.windows
        assert json.loads(row["settings"]) == res.settings
    lines = md_path.read_text().splitlines()
    assert lines[0] == "| method | " + " | ".join([*STEMS, "All"]) + " |"
    oracle_row = next(line for line in lines if line.startswith("| oracle |"))
    cells = [c.strip() for c in oracle_row.strip("|").split("|")][1:]
    assert cells == [f"{res.per_method['oracle'][c]:.2f}" for c in [*STEMS, "All"]]
    assert "| mixture | 0.00 | 0.00 | 0.00 | 0.00 | 0.00 |" in lines
    assert "Track00003" in md_path.read_text()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["results.csv", "results.md"]
    # A single result works too, and rewriting replaces the files.
    ev.write_results(other, csv_path, md_path)
    with open(csv_path, newline="") as f:
        assert len(list(csv.DictReader(f))) == 1
