"""Per-band level maps of the latent prior (engine.core.band_levels,
LatentPriorConfig.sample_bands/sample_band_in/out,
training.calibrate_band_levels): the bands, that a fitted map gives
generated band levels the real distribution, that the identity changes
nothing and silence stays silent, the config's checks, and that generation
decodes through the maps of the stems that have them only."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from engine.audio import latent_generation
from engine.core.band_levels import (apply_band_maps, band_edges, band_gain_weights, band_levels_db,
                                     check_band_maps, fit_band_maps, flatten_band_maps, sounding_band_levels,
                                     split_band_maps)
from engine.core.latent_prior import LatentPriorConfig
from engine.core.tasks import LATENT_GENERATE
from engine.storage.model import MSDMModel
from training import calibrate_band_levels

from support.latent_models import tiny_latent_model
from test_frame_levels import saved_tiny_model, use_real_windows

SR = 22050
IDENTITY = ((-150.0, 150.0), (-150.0, 150.0))


def test_bands_cover_every_bin_once_log_spaced_and_the_gains_interpolate():
    edges = band_edges(513, 16)
    assert edges[0][0] == 0 and edges[-1][1] == 513
    assert all(a < b for a, b in edges) and all(edges[k][1] == edges[k + 1][0] for k in range(len(edges) - 1))
    widths = [b - a for a, b in edges]
    assert widths[-1] > 10 * widths[1]                      # log-spaced: the top band is far wider
    weights = band_gain_weights(513, edges)
    torch.testing.assert_close(weights.sum(1), torch.ones(513))
    for b, (a, c) in enumerate(edges):     # a band's own (one-bin or odd-width) centre bin takes its gain alone
        if (c - a) % 2:
            assert weights[(a + c - 1) // 2, b] == 1.0, (b, a, c)
    assert (weights >= 0).all()
    with pytest.raises(ValueError, match="bands"):
        band_edges(513, 0)


def test_a_fitted_map_gives_each_band_the_real_level_distribution():
    """Generated frames: every band's level spread half the real one's about
    another centre (what the prior's blur does). Fitted per band and applied,
    the band levels take the real quantiles (to the interpolation of gains
    across band edges, which mixes neighbouring bands' gains in a bin)."""
    gen = torch.Generator().manual_seed(0)
    bins, frames, bands = 257, 4000, 8
    edges = band_edges(bins, bands)
    real_db = torch.randn(bands, frames, generator=gen, dtype=torch.float64) * 8.0
    gen_db = torch.randn(bands, frames, generator=gen, dtype=torch.float64) * 4.0 - 6.0

    def magnitude(levels_db):       # flat within each band, at the band's level
        m = torch.zeros(bins, frames, dtype=torch.float64)
        for b, (a, c) in enumerate(edges):
            m[a:c] = torch.pow(10.0, levels_db[b] / 20.0)
        return m

    real, generated = magnitude(real_db), magnitude(gen_db)
    torch.testing.assert_close(band_levels_db(generated, edges), gen_db, atol=1e-6, rtol=0)
    maps = fit_band_maps(sounding_band_levels(generated, bands, active_db=-200.0),
                         sounding_band_levels(real, bands, active_db=-200.0), points=17)
    mapped = band_levels_db(apply_band_maps(generated, maps, active_db=-200.0), edges).numpy()
    for b in range(bands):
        assert abs(mapped[b].std() - 8.0) < 1.2, (b, mapped[b].std())
        assert abs(np.median(mapped[b]) - np.median(real_db[b].numpy())) < 1.0


def test_identity_maps_change_nothing_and_silent_frames_stay():
    gen = torch.Generator().manual_seed(1)
    m = torch.rand(129, 40, generator=gen, dtype=torch.float64)
    m[:, :5] = 0.0                                          # silent frames
    bands = len(band_edges(129, 6))
    torch.testing.assert_close(apply_band_maps(m, [IDENTITY] * bands), m)
    lift = [((-150.0, 150.0), (-130.0, 170.0))] * bands     # +20 dB everywhere, but not where it is silent
    lifted = apply_band_maps(m, lift)
    assert (lifted[:, :5] == 0).all()
    torch.testing.assert_close(lifted[:, 5:], m[:, 5:] * 10.0)


def test_config_stores_checks_and_scopes_band_maps():
    per_stem = [None, [((-40.0, 0.0), (-50.0, 5.0))] * 3, None, None]
    flat_in, flat_out = flatten_band_maps(per_stem, 3, 5)
    config = LatentPriorConfig(sample_bands=3, sample_band_in=flat_in, sample_band_out=flat_out)
    assert LatentPriorConfig.from_dict(config.to_dict()) == config
    maps = config.stem_band_maps_for(1.0)
    assert maps[0] is None and maps[2] is None and len(maps[1]) == 3
    np.testing.assert_allclose(maps[1][0][0], np.linspace(-40, 0, 5))
    np.testing.assert_allclose(maps[1][0][1], np.linspace(-50, 5, 5))
    assert config.stem_band_maps_for(2.5) is None            # fitted for unguided sampling only
    assert LatentPriorConfig().stem_band_maps_for(None) is None
    assert split_band_maps((), (), 4, 0) == [None] * 4
    assert check_band_maps(flat_in, flat_out[:-1], 4, 3) is not None
    with pytest.raises(ValueError, match="must not decrease"):
        LatentPriorConfig(sample_bands=3, sample_band_in=flat_in, sample_band_out=tuple(-v for v in flat_out))
    with pytest.raises(ValueError, match="sample_band"):
        LatentPriorConfig(sample_bands=4, sample_band_in=flat_in, sample_band_out=flat_out)
    with pytest.raises(ValueError, match="without band maps"):
        LatentPriorConfig(sample_bands=16)


def test_generation_decodes_through_band_maps_of_the_mapped_stem_only():
    """+20 dB in every band of the drums (stem 1): Griffin-Lim's phase does
    not depend on the magnitude's scale, so the drums come out exactly 10x
    louder and the other stems identical."""
    settings = LATENT_GENERATE.override(steps=3, autoguidance=1.0)
    plain_model, outputs = tiny_latent_model(), []
    outputs.append(latent_generation.generate_latent_stems(plain_model, SR, seed=3, settings=settings, limit=False))
    model = tiny_latent_model()
    prior = model.latent_prior
    bins = model.autoencoder.config.bins
    bands = len(band_edges(bins, 4))
    per_stem = [None, [((-150.0, 150.0), (-130.0, 170.0))] * bands, None, None]
    flat_in, flat_out = flatten_band_maps(per_stem, bands, 2)
    prior.config = prior.net.config = dataclasses.replace(prior.config, sample_bands=bands,
                                                          sample_band_in=flat_in, sample_band_out=flat_out)
    outputs.append(latent_generation.generate_latent_stems(model, SR, seed=3, settings=settings, limit=False))
    plain, mapped = outputs
    assert np.abs(plain[1]).max() > 0
    np.testing.assert_allclose(mapped[1], plain[1] * 10.0, rtol=1e-4, atol=1e-4 * np.abs(mapped[1]).max())
    np.testing.assert_array_equal(mapped[[0, 2, 3]], plain[[0, 2, 3]])


def test_calibration_fits_band_maps_that_move_the_drums_towards_real_and_saves_them(tmp_path, monkeypatch, capsys):
    """Real drums: noise whose low half sits 30 dB over its high half (a
    tilt the tiny random prior's stems do not have): after calibration the
    generated drums' band levels are much nearer the real ones', the other
    stems' config untouched (identity maps)."""
    model, model_path, window = saved_tiny_model(tmp_path)
    rng = np.random.default_rng(3)
    spectrum = np.fft.rfft(rng.standard_normal((6, window)))
    spectrum[:, spectrum.shape[1] // 8:] *= 10 ** (-30 / 20)
    drums = np.fft.irfft(spectrum, n=window) * 0.1
    reference = np.stack([0.01 * rng.standard_normal((6, window)), drums,
                          0.01 * rng.standard_normal((6, window)), 0.01 * rng.standard_normal((6, window))],
                         axis=1).astype(np.float32)
    use_real_windows(monkeypatch, reference, module=calibrate_band_levels)
    out = tmp_path / "bands.safetensors"
    assert calibrate_band_levels.main(["--model", str(model_path), "--data", str(tmp_path), "--windows", "3",
                                       "--bands", "6", "--points", "9", "--figure", str(tmp_path / "bands.png"),
                                       "-o", str(out)]) == 0
    assert (tmp_path / "bands-drums.png").stat().st_size > 1000 and not (tmp_path / "bands-bass.png").exists()
    calibrated = MSDMModel.load(out)
    maps = calibrated.latent_prior.config.stem_band_maps_for(1.0)
    assert maps[1] is not None and maps[0] is None and maps[2] is None and maps[3] is None
    from training.calibrate_frame_levels import generate_windows
    real = calibrate_band_levels.stem_band_levels(calibrated, reference, 1, 6).mean(1)
    before = calibrate_band_levels.stem_band_levels(model, generate_windows(model, window, 3, 50, limit=False), 1, 6)
    after = calibrate_band_levels.stem_band_levels(calibrated, generate_windows(calibrated, window, 3, 50, limit=False),
                                                   1, 6)
    gap_before, gap_after = np.abs(before.mean(1) - real).mean(), np.abs(after.mean(1) - real).mean()
    assert gap_before > 5.0 and gap_after < 0.3 * gap_before, (gap_before, gap_after)
    assert "mapped (the file's maps)" in capsys.readouterr().out


def test_calibration_refuses_bad_input_with_one_line(tmp_path, capsys):
    tiny_latent_model().save(tmp_path / "m.safetensors", source="tiny")
    for extra, message in ((["--stems", "kazoo"], "not among the model's stems"), (["--bands", "0"], "--bands")):
        (tmp_path / "data").mkdir(exist_ok=True)
        with pytest.raises(SystemExit) as exit_info:
            calibrate_band_levels.main(["--model", str(tmp_path / "m.safetensors"), "--data", str(tmp_path / "data"),
                                        "-o", str(tmp_path / "o.safetensors"), *extra])
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "o.safetensors").exists()


def test_info_names_the_stems_with_band_maps(tmp_path, capsys):
    from engine.cli import main

    model = tiny_latent_model()
    prior = model.latent_prior
    flat_in, flat_out = flatten_band_maps([None, [((-40.0, 0.0), (-45.0, 2.0))] * 2, None, None], 2, 3)
    prior.config = prior.net.config = dataclasses.replace(prior.config, sample_bands=2, sample_band_in=flat_in,
                                                          sample_band_out=flat_out)
    model.save(tmp_path / "m.safetensors", source="tiny")
    assert main(["info", "--model", str(tmp_path / "m.safetensors")]) == 0
    assert "band levels of drums mapped to real stems' (2 bands, unguided)" in capsys.readouterr().out


def test_a_file_with_broken_band_maps_is_refused_with_the_field_named(tmp_path):
    """Bad input: band maps whose outputs fall (or whose point count does not
    divide) are refused when the file is opened, one clear error, no sampling."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from engine.errors import ModelFileError

    model = tiny_latent_model()
    good = tmp_path / "good.safetensors"
    model.save(good, source="tiny")
    with safe_open(str(good), framework="pt") as handle:
        metadata = dict(handle.metadata())
    for name, change in (("falling outputs", lambda c: c.update(sample_bands=1, sample_band_in=[-40.0, 0.0] * 4,
                                                                sample_band_out=[0.0, -40.0] * 4)),
                         ("a count that does not divide", lambda c: c.update(sample_bands=3,
                                                                             sample_band_in=[-40.0, 0.0] * 4,
                                                                             sample_band_out=[-40.0, 0.0] * 4)),
                         ("bands without maps", lambda c: c.update(sample_bands=16))):
        config = json.loads(metadata["latent_prior_config"])
        change(config)
        bad = tmp_path / "bad.safetensors"
        save_file(load_file(str(good)), str(bad), metadata={**metadata, "latent_prior_config": json.dumps(config)})
        with pytest.raises(ModelFileError, match="sample_band") as error:
            MSDMModel.load(bad)
        assert str(bad) in str(error.value), name
    # More bands than the autoencoder's STFT has bins: refused on opening, not at decode.
    config = json.loads(metadata["latent_prior_config"])
    config.update(sample_bands=64, sample_band_in=[-40.0, 0.0] * 4 * 64, sample_band_out=[-40.0, 5.0] * 4 * 64)
    autoencoder = json.loads(metadata["autoencoder_config"])
    autoencoder.update(n_fft=64, hop=16)
    save_file(load_file(str(good)), str(bad), metadata={**metadata, "latent_prior_config": json.dumps(config),
                                                        "autoencoder_config": json.dumps(autoencoder)})
    with pytest.raises(ModelFileError, match="64 bands, more than the autoencoder's 33 STFT bins"):
        MSDMModel.load(bad)


def test_spread_only_keeps_the_generated_medians_and_the_real_spread():
    rng = np.random.default_rng(4)
    real = rng.normal([[0.0], [10.0]], [[8.0], [3.0]], (2, 5000))
    generated = rng.normal([[-6.0], [20.0]], [[4.0], [1.0]], (2, 3000))
    target = calibrate_band_levels.spread_only(real, generated)
    np.testing.assert_allclose(np.median(target, axis=1), np.median(generated, axis=1))
    np.testing.assert_allclose(target.std(1), real.std(1))
    maps = fit_band_maps(generated, target, points=17)
    mapped = np.stack([map_band(generated[b], maps[b]) for b in range(2)])
    assert abs(np.median(mapped[0]) + 6.0) < 0.5 and abs(np.median(mapped[1]) - 20.0) < 0.5
    assert abs(mapped[0].std() - 8.0) < 0.8 and abs(mapped[1].std() - 3.0) < 0.3


def map_band(levels: np.ndarray, band_map) -> np.ndarray:
    from engine.core.frame_levels import map_levels

    return map_levels(torch.from_numpy(levels), *band_map).numpy()


def test_calibration_with_spread_only_keeps_the_generated_band_medians(tmp_path, monkeypatch):
    """The tilted real drums of the test above: fitted --spread-only (two
    refinement rounds), the generated drums' band medians stay where the
    unmapped generation had them, though the full maps move them by > 5 dB."""
    model, model_path, window = saved_tiny_model(tmp_path)
    rng = np.random.default_rng(3)
    spectrum = np.fft.rfft(rng.standard_normal((6, window)))
    spectrum[:, spectrum.shape[1] // 8:] *= 10 ** (-30 / 20)
    reference = np.zeros((6, 4, window), np.float32)
    reference[:, 1] = np.fft.irfft(spectrum, n=window) * 0.1
    reference[:, [0, 2, 3]] = 0.01 * rng.standard_normal((6, 3, window))
    use_real_windows(monkeypatch, reference, module=calibrate_band_levels)
    out = tmp_path / "spread.safetensors"
    assert calibrate_band_levels.main(["--model", str(model_path), "--data", str(tmp_path), "--windows", "3",
                                       "--bands", "6", "--points", "9", "--rounds", "2", "--spread-only",
                                       "-o", str(out)]) == 0
    from training.calibrate_frame_levels import generate_windows
    before = calibrate_band_levels.stem_band_levels(model, generate_windows(model, window, 3, 50, limit=False), 1, 6)
    calibrated = MSDMModel.load(out)
    after = calibrate_band_levels.stem_band_levels(calibrated, generate_windows(calibrated, window, 3, 50, limit=False),
                                                   1, 6)
    assert np.abs(np.median(after, 1) - np.median(before, 1)).max() < 2.0
