"""The generation measure end to end: it can fail. Real stems score 0
distance and agreement 1, noise shaped like them scores distance ~1 and no
pitch, real stems of the wrong track sound real but do not fit. On
synthesised tracks, on a small FluidSynth render, and through
`msdm evaluate-generation` with a tiny model (sampled windows kept and read back)."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import soundfile as sf
from support.latent_models import tiny_latent_model
from support.tones import RATE, track

from engine.cli import main
from engine.errors import CommandError
from engine.storage.model import MSDMModel
from training import audio_features as af
from training.evaluate_generation import CEILING, Judge, score_task
from training.generation_candidates import load_real_windows

STEMS = ("bass", "drums", "guitar", "piano")
PITCHED = ("bass", "guitar", "piano")


def write_tracks(root, count: int, seconds: float, seed: int = 0, split: str = "test"):
    rng = np.random.default_rng(seed)
    for t in range(count):
        folder = root / split / f"Track{t + 1:05d}"
        folder.mkdir(parents=True)
        for stem, audio in track(rng, seconds).items():
            sf.write(folder / f"{stem}.wav", audio, RATE, subtype="FLOAT")
    return root


@pytest.fixture(scope="module")
def tones_data(tmp_path_factory):
    return write_tracks(tmp_path_factory.mktemp("tones"), count=8, seconds=12.0)


def _rows(rows):
    return {row.method.split(" ")[0]: row.values for row in rows}


def test_real_windows_split_by_track_and_pick_distinct_tracks(tones_data):
    real = load_real_windows(tones_data, STEMS, RATE, 65536, 4, per_track=2)
    assert set(real.reference_tracks) == {0, 2, 4, 6} and set(real.pool_tracks) == {1, 3, 5, 7}
    assert len(set(real.pool_tracks[real.evaluation])) == 4            # distinct tracks
    again = load_real_windows(tones_data, STEMS, RATE, 65536, 4, per_track=2)
    assert np.array_equal(real.evaluation_stems, again.evaluation_stems)  # deterministic
    with pytest.raises(CommandError, match="ask fewer"):
        load_real_windows(tones_data, STEMS, RATE, 65536, 13, per_track=2)
    with pytest.raises(CommandError, match="msdm dataset synth"):
        load_real_windows(tones_data, STEMS, RATE, 65536, 4, split="valid")


def test_the_measure_tells_real_from_noise_and_fit_from_misfit(tones_data):
    real = load_real_windows(tones_data, STEMS, RATE, 65536, 4, per_track=2)
    judge = Judge(real, draws=8)
    truth = real.evaluation_stems
    generated = score_task(judge, "generate", truth, label="candidate: the real windows")
    rows = _rows(generated)
    for stem in PITCHED:
        assert abs(rows["real"]["structure distance", stem]) < 0.3
        assert rows["shaped"]["structure distance", stem] > 0.7
        assert rows["real"]["clarity ratio", stem] > 0.9 and rows["shaped"]["clarity ratio", stem] < 0.7
    assert rows["candidate:"] == rows["real"]   # the same audio scores the same
    with_ceiling = _rows(score_task(judge, "generate", truth, ceiling=truth[::-1].copy()))
    assert with_ceiling["autoencoder"] != with_ceiling["real"]      # its own audio, scored as a reference
    assert with_ceiling["model"] == with_ceiling["real"]
    with pytest.raises(ValueError, match="ceiling"):
        score_task(judge, "generate", truth, ceiling=truth[:, :2])

    # Imputation: the true stems fit (1), other tracks' stems do not (0), though they are real.
    rotated = truth[np.roll(np.arange(len(truth)), 1)].copy()
    rotated[:, [0, 1]] = truth[:, [0, 1]]          # given bass and drums stay
    rows = _rows(score_task(judge, "impute", rotated, given=("bass", "drums"), label="misfit"))
    for stem in ("guitar", "piano"):
        assert rows["real"]["chroma agreement", stem] == pytest.approx(1.0)
        assert rows["real"]["onset agreement", stem] == pytest.approx(1.0)
        assert rows["shaped"]["chroma agreement", stem] < 0.5     # no notes, so no harmony
        assert rows["misfit"]["chroma agreement", stem] < 0.5
        assert abs(rows["misfit"]["structure distance", stem]) < 0.3   # yet real-sounding
    # Drums imputed from the piano: onset agreement of the true drums 1, of another track's below 0.5.
    rotated = truth[np.roll(np.arange(len(truth)), 1)].copy()
    rotated[:, 3] = truth[:, 3]
    rows = _rows(score_task(judge, "impute", rotated, given=("piano",), label="misfit"))
    assert rows["real"]["onset agreement", "drums"] == pytest.approx(1.0)
    assert rows["misfit"]["onset agreement", "drums"] < 0.5
    with pytest.raises(ValueError, match="shaped like"):
        score_task(judge, "generate", truth[:2])


needs_fluidsynth = pytest.mark.skipif(shutil.which("fluidsynth") is None,
                                      reason="fluidsynth is not installed (apt-get install fluidsynth timgm6mb-soundfont)")


@needs_fluidsynth
def test_real_renders_score_real_and_their_shaped_noise_scores_noise(tmp_path):
    """Ten tracks rendered by the project's dataset pipeline (8 in train)."""
    from training import synth

    synth.render_dataset(tmp_path / "ds", tracks=10, seed=0, max_seconds=8.0, jobs=2)
    real = load_real_windows(tmp_path / "ds", STEMS, RATE, 65536, 3, split="train", per_track=2)
    judge = Judge(real, draws=8)
    rows = _rows(score_task(judge, "impute", real.evaluation_stems, given=("bass", "drums"), label="truth"))
    for stem in ("guitar", "piano"):
        assert abs(rows["real"]["structure distance", stem]) < 0.35
        assert rows["shaped"]["structure distance", stem] > 0.65
        assert rows["real"]["clarity ratio", stem] > 0.85 and rows["shaped"]["clarity ratio", stem] < 0.75
        assert rows["truth"]["chroma agreement", stem] == pytest.approx(1.0)
        assert rows["shaped"]["chroma agreement", stem] < 0.5


def test_evaluate_generation_command(tmp_path, tiny_model_path, capsys, monkeypatch):
    data = write_tracks(tmp_path / "data", count=6, seconds=3.0, seed=1)
    out = tmp_path / "report"
    args = ["evaluate-generation", "--data", str(data), "--model", str(tiny_model_path), "--windows", "2",
            "--steps", "2", "--method", "dpmpp2m", "--given", "bass+drums", "--draws", "4",
            "--cache", str(tmp_path / "cache"), "--csv", str(out / "g.csv"), "--markdown", str(out / "g.md"), "-q"]
    assert main(args) == 0
    first = list(csv.DictReader((out / "g.csv").open()))
    table = (out / "g.md").read_text()
    assert "**generate**" in table and "**impute bass+drums**" in table and "shaped noise" in table
    tasks = {(r["task"], r["method"].split(" ")[0]) for r in first}
    assert tasks == {(t, m) for t in ("generate", "impute bass+drums") for m in ("real", "shaped", "model")}
    assert {r["metric"] for r in first if r["task"] == "impute bass+drums"} >= {"chroma agreement", "onset agreement"}
    assert all(np.isfinite(float(r["value"])) for r in first)
    assert len(list((tmp_path / "cache" / "generate").glob("*/window-01/piano.wav"))) == 1

    # A rerun reads the kept windows back: sampling would fail, and the numbers are the same.
    def refuse(*_, **__):
        raise AssertionError("sampled again")
    monkeypatch.setattr("engine.core.tasks.generate", refuse)
    monkeypatch.setattr("engine.core.tasks.impute", refuse)
    assert main(args) == 0
    assert list(csv.DictReader((out / "g.csv").open())) == first
    capsys.readouterr()

    assert main([*args[:-5], "--given", "bass+nope", "-q"]) == 2
    assert "--given bass+nope" in capsys.readouterr().err
    assert main([*args[:-5], "--windows", "1", "-q"]) == 2
    assert "--windows" in capsys.readouterr().err
    assert main(["evaluate-generation", "--data", str(tmp_path / "none"), "--model", str(tiny_model_path), "-q"]) == 2
    assert "msdm dataset synth" in capsys.readouterr().err


def test_evaluate_generation_samples_the_latent_prior(tmp_path, capsys):
    """A model file with a latent prior is judged on it by default (the path
    `msdm generate` takes: given stems unchanged), and on its waveform prior
    with --prior waveform; a file without one refuses --prior latent."""
    model = tiny_latent_model()
    path = model.save(tmp_path / "latent.safetensors")
    data = write_tracks(tmp_path / "data", count=6, seconds=3.0, seed=2)
    common = ["evaluate-generation", "--data", str(data), "--model", str(path), "--windows", "2", "--steps", "2",
              "--given", "piano", "--draws", "4", "--cache", str(tmp_path / "cache"), "-q"]
    assert main([*common, "--csv", str(tmp_path / "l.csv"), "--markdown", str(tmp_path / "l.md")]) == 0
    rows = list(csv.DictReader((tmp_path / "l.csv").open()))
    settings = {json.loads(r["settings"])["sampler"]["prior"] for r in rows if r["method"].startswith("model")}
    assert settings == {"latent"}
    # The autoencoder's round trip of the evaluation windows is scored beside them: the prior's ceiling.
    ceiling = {(r["task"], r["metric"], r["stem"]): float(r["value"]) for r in rows if r["method"] == CEILING}
    assert {task for task, _, _ in ceiling} == {"generate", "impute piano"}
    assert all(np.isfinite(v) for v in ceiling.values())
    kept = sorted((tmp_path / "cache" / "impute-piano").glob("*/window-00/piano.wav"))
    assert len(kept) == 1
    assert main([*common, "--prior", "waveform", "--csv", str(tmp_path / "w.csv"),
                 "--markdown", str(tmp_path / "w.md")]) == 0
    rows = list(csv.DictReader((tmp_path / "w.csv").open()))
    assert {json.loads(r["settings"])["sampler"]["prior"] for r in rows if r["method"].startswith("model")} == {"waveform"}
    assert not any(r["method"] == CEILING for r in rows)     # not the waveform prior's ceiling
    capsys.readouterr()
    plain = MSDMModel(model.config, model.network).save(tmp_path / "plain.safetensors")
    assert main([*common[:4], str(plain), *common[5:], "--prior", "latent", "--csv", str(tmp_path / "x.csv"),
                 "--markdown", str(tmp_path / "x.md")]) == 2
    assert "latent prior" in capsys.readouterr().err


def test_evaluate_generation_says_which_autoguidance_it_sampled_with(tmp_path, capsys):
    """A file with a guide generates autoguided at its own weight, and the
    label and settings say so (imputation does not, unless asked)."""
    import dataclasses

    import torch

    from engine.core.latent_prior import LatentDenoiser, LatentUNet

    model = tiny_latent_model()
    torch.manual_seed(3)
    model.latent_guide = LatentDenoiser(LatentUNet(model.latent_prior.config))
    prior = model.latent_prior
    prior.config = prior.net.config = dataclasses.replace(prior.config, autoguidance=2.5)
    model.__post_init__()
    path = model.save(tmp_path / "guided.safetensors")
    data = write_tracks(tmp_path / "data", count=6, seconds=3.0, seed=2)
    common = ["evaluate-generation", "--data", str(data), "--model", str(path), "--windows", "2", "--steps", "2",
              "--given", "piano", "--draws", "4", "-q"]
    assert main([*common, "--csv", str(tmp_path / "a.csv"), "--markdown", str(tmp_path / "a.md")]) == 0
    rows = [r for r in csv.DictReader((tmp_path / "a.csv").open()) if r["method"].startswith("model")]
    weights = {r["task"]: json.loads(r["settings"])["sampler"]["autoguidance"] for r in rows}
    assert weights == {"generate": 2.5, "impute piano": 1.0}
    assert {r["method"] for r in rows if r["task"] == "generate"} == {
        "model (dpmpp2m 2 steps x 1, churn 0, autoguidance 2.5, NFE 4)"}
    assert main([*common, "--autoguidance", "1", "--csv", str(tmp_path / "b.csv"),
                 "--markdown", str(tmp_path / "b.md")]) == 0
    rows = [r for r in csv.DictReader((tmp_path / "b.csv").open()) if r["method"].startswith("model")]
    assert {json.loads(r["settings"])["sampler"]["autoguidance"] for r in rows} == {1.0}
    capsys.readouterr()


def test_report_brackets_distances_whose_scale_cannot_be_read(tmp_path):
    from types import SimpleNamespace

    from training import generation_metrics as gm
    from training.evaluate_generation import UNREADABLE, Row, write_report

    sound = gm.DistanceScale(np.array([9.0, 11.0]), np.array([29.0, 31.0]))
    turned_over = gm.DistanceScale(np.array([80.0, 86.0]), np.array([35.0, 37.0]))
    judge = SimpleNamespace(
        real=SimpleNamespace(stems=("bass", "drums"), reference=np.zeros((3, 2, 4)), pool=np.zeros((5, 2, 4))),
        draws=2, scale=lambda stem, name, windows: turned_over if (stem, name) == ("drums", "log-mel") else sound)
    values = {("log-mel distance", "bass"): 0.12, ("log-mel distance", "drums"): 0.85,
              ("structure distance", "drums"): 0.30, ("pitch clarity", "bass"): 0.7}
    write_report([Row("generate", "model", values, 16)], judge, tmp_path / "r.csv", tmp_path / "r.md")
    markdown = (tmp_path / "r.md").read_text()
    assert "| model | 0.12 | (0.85) | 0.30 | 0.70 |" in markdown and UNREADABLE in markdown
    readable = {(r["metric"], r["stem"]): r["readable"] for r in csv.DictReader(open(tmp_path / "r.csv"))}
    assert readable == {("log-mel distance", "bass"): "1", ("log-mel distance", "drums"): "0",
                        ("structure distance", "drums"): "1", ("pitch clarity", "bass"): ""}
    # Every cell readable: no brackets, no note.
    write_report([Row("generate", "model", {("log-mel distance", "bass"): 0.12}, 16)], judge,
                 tmp_path / "s.csv", tmp_path / "s.md")
    assert "(" not in (tmp_path / "s.md").read_text().split("**generate**")[1].split("\n\n")[1] \
        and UNREADABLE not in (tmp_path / "s.md").read_text()
