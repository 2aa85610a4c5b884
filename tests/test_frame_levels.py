"""Frame-level maps of the latent prior (engine.core.frame_levels,
LatentPriorConfig.sample_level_in/out, training.calibrate_frame_levels): the
map's closed form, that it moves levels and nothing else, that a fitted map
gives generated levels the real distribution, and that generation uses it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from engine.audio import latent_generation
from engine.core.frame_levels import (ACTIVE_LEVEL_DB, apply_level_map, check_level_map, fit_level_map,
                                      frame_levels_db, map_levels)
from engine.core.latent_prior import LatentPriorConfig
from engine.core.tasks import LATENT_GENERATE
from engine.storage.model import MSDMModel
from training import calibrate_frame_levels
from training.generation_candidates import RealWindows

from support.latent_models import tiny_latent_model

SR = 22050


def test_map_is_linear_between_points_and_keeps_the_end_shifts_beyond():
    points_in, points_out = (-40.0, -20.0, 0.0), (-30.0, -20.0, -5.0)
    levels = torch.tensor([-60.0, -40.0, -30.0, -20.0, -10.0, 0.0, 10.0], dtype=torch.float64)
    expected = [-50.0, -30.0, -25.0, -20.0, -12.5, -5.0, 5.0]
    torch.testing.assert_close(map_levels(levels, points_in, points_out),
                               torch.tensor(expected, dtype=torch.float64))


def test_applied_map_sets_each_frame_level_and_keeps_its_spectral_shape():
    generator = torch.Generator().manual_seed(0)
    magnitude = torch.rand(2, 65, 30, generator=generator, dtype=torch.float64) * torch.logspace(-3, 1, 30,
                                                                                              dtype=torch.float64)
    points_in, points_out = (-60.0, -10.0, 20.0), (-40.0, -5.0, 0.0)
    mapped = apply_level_map(magnitude, points_in, points_out)
    # (to the power floor's share of the quietest frames: 1e-4 dB)
    torch.testing.assert_close(frame_levels_db(mapped), map_levels(frame_levels_db(magnitude), points_in, points_out),
                               atol=1e-4, rtol=0)
    # One gain per frame: every bin's share of its frame is unchanged.
    torch.testing.assert_close(mapped / mapped.sum(-2, keepdim=True), magnitude / magnitude.sum(-2, keepdim=True))


def test_fitted_map_gives_generated_levels_the_real_distribution_and_leaves_rests_out():
    rng = np.random.default_rng(0)
    real = rng.normal(10.0, 3.0, 20000)
    # Generated: twice the real spread about a lower centre, and a third of the frames resting.
    sounding = 5.0 + 2.0 * rng.normal(0.0, 3.0, 20000)
    generated = np.concatenate([sounding, np.full(10000, -110.0)])
    points_in, points_out = fit_level_map(generated, real, points=17)
    assert check_level_map(points_in, points_out) is None
    mapped = map_levels(torch.from_numpy(sounding), points_in, points_out).numpy()
    for q in (10, 25, 50, 75, 90):
        assert abs(np.percentile(mapped, q) - np.percentile(real, q)) < 0.5
    # The rests are moved by the map's lowest shift, not lifted to a level.
    assert map_levels(torch.tensor([-110.0], dtype=torch.float64), points_in, points_out).item() < ACTIVE_LEVEL_DB
    with pytest.raises(ValueError, match="sounding frames"):
        fit_level_map(np.full(100, -110.0), real)


def test_config_checks_stores_and_scopes_the_maps():
    flat_in = tuple(float(v) for v in np.tile([-40.0, -10.0, 10.0], 4))
    flat_out = tuple(float(v) for v in np.tile([-30.0, -8.0, 2.0], 4))
    config = LatentPriorConfig(sample_level_in=flat_in, sample_level_out=flat_out)
    assert LatentPriorConfig.from_dict(config.to_dict()) == config
    assert config.stem_levels_for(1.0)[2] == ((-40.0, -10.0, 10.0), (-30.0, -8.0, 2.0))
    assert config.stem_levels_for(2.5) is None          # fitted for unguided sampling only
    assert LatentPriorConfig().stem_levels_for(None) is None
    with pytest.raises(ValueError, match="same number of points"):
        LatentPriorConfig(sample_level_in=flat_in, sample_level_out=flat_out[:-1])
    with pytest.raises(ValueError, match="must not decrease"):
        LatentPriorConfig(sample_level_in=flat_in, sample_level_out=tuple(-v for v in flat_out))
    with pytest.raises(ValueError, match="must increase"):
        LatentPriorConfig(sample_level_in=tuple(reversed(flat_in)), sample_level_out=flat_out)


def test_generation_decodes_through_the_map():
    """A map that lowers every level by 20 dB: Griffin-Lim's phase does not
    depend on the magnitude's scale, so the stems come out exactly 10x
    quieter (the tiny model's stems stay under the limiter's knee)."""
    settings = LATENT_GENERATE.override(steps=3, autoguidance=1.0)
    outputs = []
    for shift in (0.0, -20.0):
        model = tiny_latent_model()
        prior = model.latent_prior
        levels = {} if shift == 0 else {"sample_level_in": (-150.0, 100.0) * 4,
                                        "sample_level_out": (-150.0 + shift, 100.0 + shift) * 4}
        prior.config = prior.net.config = dataclasses.replace(prior.config, **levels)
        outputs.append(latent_generation.generate_latent_stems(model, SR, seed=3, settings=settings))
    assert np.abs(outputs[0]).max() < latent_generation.LIMIT_KNEE
    assert np.abs(outputs[0]).max() > 0
    np.testing.assert_allclose(outputs[1], outputs[0] * 0.1, atol=1e-6 * np.abs(outputs[0]).max())


def test_generation_without_the_limiter_gives_the_mapped_levels():
    """A map that raises every level by 40 dB takes the tiny model's stems far
    past the limiter's knee: with limit=False they come out exactly 100x
    louder than unmapped, with the limiter they are that audio limited."""
    settings = LATENT_GENERATE.override(steps=3, autoguidance=1.0)
    plain = latent_generation.generate_latent_stems(tiny_latent_model(), SR, seed=3, settings=settings)
    model = tiny_latent_model()
    prior = model.latent_prior
    prior.config = prior.net.config = dataclasses.replace(
        prior.config, sample_level_in=(-150.0, 100.0) * 4, sample_level_out=(-110.0, 140.0) * 4)
    loud = latent_generation.generate_latent_stems(model, SR, seed=3, settings=settings, limit=False)
    limited = latent_generation.generate_latent_stems(model, SR, seed=3, settings=settings)
    np.testing.assert_allclose(loud, plain * 100.0, rtol=1e-4, atol=1e-4 * np.abs(loud).max())
    assert np.abs(loud).max() > 1.0 >= np.abs(limited).max()   # tanh rounds to 1.0 in float32 far past the knee
    np.testing.assert_allclose(limited, latent_generation.soft_limit(loud), atol=1e-6)


def saved_tiny_model(tmp_path):
    """The tiny latent model, its file in `tmp_path`, and its window (samples)."""
    model = tiny_latent_model()
    model_path = tmp_path / "m.safetensors"
    model.save(model_path, source="tiny")
    return model, model_path, latent_generation.window_samples(model)


def use_real_windows(monkeypatch, reference: np.ndarray, module=calibrate_frame_levels) -> None:
    """`module` (a training command) reads `reference` [W, N, T] as the real windows."""
    tracks = np.arange(len(reference))

    def fake_real(data, stems, rate, window, count, *, split="test", seed=0):
        return RealWindows(tuple(stems), rate, window, reference, tracks, reference, tracks, np.arange(1),
                           [f"t{k}" for k in tracks])

    monkeypatch.setattr(module, "load_real_windows", fake_real)


def test_calibration_fits_maps_that_move_generated_levels_to_the_real_ones(tmp_path, monkeypatch, capsys):
    model, model_path, window = saved_tiny_model(tmp_path)
    rng = np.random.default_rng(1)
    # Real windows: white noise at a different level per stem. (The tiny
    # random prior's frames all have about one level, so a real spread would
    # ask for a map steeper than overlapping STFT frames can follow.)
    reference = np.stack([[level * rng.standard_normal(window) for level in (0.005, 0.01, 0.02, 0.3)]
                          for _ in range(6)]).astype(np.float32)
    use_real_windows(monkeypatch, reference)
    out = tmp_path / "levels.safetensors"
    assert calibrate_frame_levels.main(["--model", str(model_path), "--data", str(tmp_path), "--windows", "3",
                                        "--points", "9", "-o", str(out)]) == 0
    calibrated = MSDMModel.load(out)
    config = calibrated.latent_prior.config
    assert len(config.sample_level_in) == len(config.sample_level_out) == 4 * 9
    real = calibrate_frame_levels.stem_frame_levels(calibrated, reference)
    before = calibrate_frame_levels.stem_frame_levels(model, calibrate_frame_levels.generate_windows(model, window, 3, 50))
    after = calibrate_frame_levels.stem_frame_levels(calibrated,
                                                     calibrate_frame_levels.generate_windows(calibrated, window, 3, 50))
    for n in range(4):
        gap_before = abs(np.median(before[n]) - np.median(real[n]))
        gap_after = abs(np.median(after[n]) - np.median(real[n]))
        assert gap_before > 3.0 and gap_after < 0.5 * gap_before
    printed = capsys.readouterr().out
    assert "generated, mapped" in printed and "samples past the limiter's knee" in printed


def test_calibration_fits_the_levels_the_map_sees_not_the_limiters(tmp_path, monkeypatch):
    """Real stems louder than the soft limiter lets through (frames far past
    its knee): measured after the limiter, the mapped stems would never reach
    them and the refinement would keep raising the map; fitted on the
    unlimited levels, the map brings the stems' frames to the real ones'."""
    model, model_path, window = saved_tiny_model(tmp_path)
    rng = np.random.default_rng(2)
    reference = (2.0 * rng.standard_normal((6, 4, window))).astype(np.float32)
    use_real_windows(monkeypatch, reference)
    out = tmp_path / "loud.safetensors"
    assert calibrate_frame_levels.main(["--model", str(model_path), "--data", str(tmp_path), "--windows", "3",
                                        "--points", "9", "--rounds", "2", "-o", str(out)]) == 0
    calibrated = MSDMModel.load(out)
    real = calibrate_frame_levels.stem_frame_levels(calibrated, reference)
    after = calibrate_frame_levels.stem_frame_levels(
        calibrated, calibrate_frame_levels.generate_windows(calibrated, window, 3, 50, limit=False))
    for n in range(4):
        assert abs(np.median(after[n]) - np.median(real[n])) < 1.5


def test_calibration_refuses_bad_input_with_one_line(tmp_path, capsys):
    tiny_latent_model().save(tmp_path / "m.safetensors", source="tiny")
    with pytest.raises(SystemExit) as exit_info:
        calibrate_frame_levels.main(["--model", str(tmp_path / "m.safetensors"), "--data", str(tmp_path / "none"),
                                     "-o", str(tmp_path / "o.safetensors")])
    assert exit_info.value.code == 2
    assert "no dataset folder" in capsys.readouterr().err
    assert not (tmp_path / "o.safetensors").exists()


def test_info_says_the_file_maps_frame_levels(tmp_path, capsys):
    from engine.cli import main

    model = tiny_latent_model()
    prior = model.latent_prior
    prior.config = prior.net.config = dataclasses.replace(prior.config, sample_level_in=(-40.0, 0.0, 20.0) * 4,
                                                          sample_level_out=(-35.0, -2.0, 5.0) * 4)
    model.save(tmp_path / "m.safetensors", source="tiny")
    assert main(["info", "--model", str(tmp_path / "m.safetensors")]) == 0
    assert "frame levels mapped to real stems' (3 points a stem" in capsys.readouterr().out


def test_calibration_maps_only_the_named_stems(tmp_path, monkeypatch, capsys):
    model, model_path, window = saved_tiny_model(tmp_path)
    rng = np.random.default_rng(2)
    reference = np.stack([[0.01 * rng.standard_normal(window) for _ in range(4)] for _ in range(4)]).astype(np.float32)
    use_real_windows(monkeypatch, reference)
    out = tmp_path / "bass-only.safetensors"
    assert calibrate_frame_levels.main(["--model", str(model_path), "--data", str(tmp_path), "--windows", "2",
                                        "--points", "5", "--rounds", "0", "--stems", "bass", "--figure",
                                        str(tmp_path / "levels.png"), "-o", str(out)]) == 0
    assert (tmp_path / "levels.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    maps = MSDMModel.load(out).latent_prior.config.stem_levels_for(None)
    assert maps[0][0] != maps[0][1]                                 # the bass is mapped
    assert all(points_in == points_out for points_in, points_out in maps[1:])   # the rest: identity
    with pytest.raises(SystemExit):
        calibrate_frame_levels.main(["--model", str(model_path), "--data", str(tmp_path), "--stems", "vocals",
                                     "-o", str(tmp_path / "x.safetensors")])
    assert "vocals" in capsys.readouterr().err


def test_loudness_report_compares_generated_windows_with_real_ones(tmp_path, monkeypatch, capsys):
    """The tiny model's stems against real windows 10x louder than them:
    every stem's median reads about -20 dB, and a missing split is one line."""
    from training import loudness_report

    model, model_path, window = saved_tiny_model(tmp_path)
    generated = calibrate_frame_levels.generate_windows(model, window, 2, 0)
    reference = (10.0 * generated).astype(np.float32)
    use_real_windows(monkeypatch, reference, module=loudness_report)
    assert loudness_report.main(["--model", str(model_path), "--data", str(tmp_path), "--windows", "2"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and " dB |" in line]
    assert len(rows) == 4
    for row in rows:
        median = float(row.split("|")[2].strip().split(" ")[0])
        assert median == pytest.approx(-20.0, abs=0.5)
    monkeypatch.undo()
    with pytest.raises(SystemExit) as stop:
        loudness_report.main(["--model", str(model_path), "--data", str(tmp_path / "none")])
    assert stop.value.code == 2 and "no dataset split folder" in capsys.readouterr().err
