"""Autoguidance (Karras et al. 2024) for the latent prior: the exact mix of
the prior and its guide, what it does to a Gaussian (closed form), the guide
in the model file, and the settings that choose its weight."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from engine.audio.latent_generation import generate_latent_stems, resolve_autoguidance
from engine.core.latent_prior import AutoGuided, LatentDenoiser, LatentPriorConfig, LatentUNet
from engine.core.tasks import LATENT_GENERATE, LATENT_IMPUTE, SamplerSettings, SettingsError, generate
from engine.errors import CommandError, ModelFileError
from engine.jobs.options import JobOptions
from engine.storage.model import MSDMModel, ModelSet
from osc_bridge import protocol

from support.latent_models import tiny_latent_model

SR = 22050


def with_guide(model: MSDMModel, seed: int = 1, weight: float = 1.0) -> MSDMModel:
    """`model` with a random guide in its prior's diffusion space (another
    seed: a different network, so the guide changes the result)."""
    torch.manual_seed(seed)
    net = LatentUNet(model.latent_prior.config)
    torch.nn.init.normal_(net.stem_out.weight, std=0.02)
    model.latent_guide = LatentDenoiser(net)
    prior = model.latent_prior
    prior.config = prior.net.config = dataclasses.replace(prior.config, autoguidance=weight)
    model.__post_init__()
    return model


def test_autoguidance_is_the_exact_mix_of_prior_and_guide():
    """D_guide + w (D - D_guide), unconditional and under the conditioning and
    classifier-free guidance of with_given (which run over the guided denoiser)."""
    model = with_guide(tiny_latent_model())
    prior, guide = model.latent_prior, model.latent_guide
    x = torch.randn(2, 32, 64) * 0.5
    sigma = torch.tensor([0.5, 3.0])
    good, weak = prior.denoise(x, sigma), guide.denoise(x, sigma)
    assert not torch.allclose(good, weak)
    guided = AutoGuided(prior, guide, 2.5)
    torch.testing.assert_close(guided(x, sigma), weak + 2.5 * (good - weak), atol=1e-5, rtol=0)
    torch.testing.assert_close(AutoGuided(prior, guide, 1.0)(x, sigma), good, atol=1e-6, rtol=0)
    torch.testing.assert_close(AutoGuided(prior, guide, 0.0)(x, sigma), weak, atol=1e-6, rtol=0)
    given = torch.randn(2, 32, 64) * 0.5
    mask = torch.tensor([[False, True, False, False]]).expand(2, 4)

    def mixed(g: float, w: float) -> torch.Tensor:
        cond = [d.denoise(x, sigma, given, mask) for d in (prior, guide)]
        free = [d.denoise(x, sigma) for d in (prior, guide)]
        cond_ag, free_ag = (p[1] + w * (p[0] - p[1]) for p in (cond, free))
        return free_ag + g * (cond_ag - free_ag)

    torch.testing.assert_close(AutoGuided(prior, guide, 2.0).with_given(given, mask, 1.0)(x, sigma),
                               mixed(1.0, 2.0), atol=1e-5, rtol=0)
    torch.testing.assert_close(AutoGuided(prior, guide, 2.0).with_given(given, mask, 3.0)(x, sigma),
                               mixed(3.0, 2.0), atol=1e-5, rtol=0)
    # Its config, statistics and mappings are the prior's.
    assert guided.config is prior.config and guided.from_diffusion is not None


class GaussianPrior:
    """The exact denoiser of N(0, std^2) data, behind LatentDenoiser's interface."""

    def __init__(self, std: float, config: LatentPriorConfig) -> None:
        self.std, self.config = std, config

    def denoise(self, x, sigma, given=None, mask=None, harmony=None):
        s = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        return x * self.std ** 2 / (self.std ** 2 + s ** 2)


@pytest.mark.parametrize("weight", [1.0, 2.0, 3.0])
def test_autoguidance_of_two_gaussians_samples_the_geometric_extrapolation(weight):
    """Closed form: the probability-flow ODE with D = D_b + w (D_a - D_b) for
    N(0, a^2) and N(0, b^2) scales each sample by a factor whose log is the
    integral of (1 - k(sigma)) / sigma, k = (1 - w) b^2/(b^2+s^2) + w a^2/(a^2+s^2),
    so from sigma_max to sigma_min the sample's std becomes
    sigma_max * sqrt(((a^2+smin^2)^w (b^2+smin^2)^(1-w)) / ((a^2+smax^2)^w (b^2+smax^2)^(1-w))):
    about a^w b^(1-w), the guide's error extrapolated away (w = 1: the prior itself)."""
    a, b = 0.8, 1.6
    config = LatentPriorConfig(latent_channels=8, channels=16, attention_heads=2)
    guided = AutoGuided(GaussianPrior(a, config), GaussianPrior(b, config), weight)
    settings = SamplerSettings(steps=96, sigma_min=0.002, sigma_max=80.0, method="heun", prior="latent")
    out = generate(guided, 4, 512, seeds=list(range(8)), settings=settings, clip=None)
    smin, smax = settings.sigma_min, settings.sigma_max
    expected = smax * np.sqrt(((a ** 2 + smin ** 2) ** weight * (b ** 2 + smin ** 2) ** (1 - weight))
                              / ((a ** 2 + smax ** 2) ** weight * (b ** 2 + smax ** 2) ** (1 - weight)))
    assert float(out.std()) == pytest.approx(expected, rel=0.02)
    assert expected == pytest.approx(a ** weight * b ** (1 - weight), rel=0.01)


def test_the_guide_travels_in_the_model_file_and_must_share_the_prior_space(tmp_path):
    model = with_guide(tiny_latent_model(), weight=2.0)
    path = tmp_path / "guided.safetensors"
    model.save(path)
    loaded = MSDMModel.load(path)
    assert loaded.latent_guide is not None and loaded.latent_prior.config.autoguidance == 2.0
    for a, b in zip(model.latent_guide.parameters(), loaded.latent_guide.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata())
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    # A guide in another diffusion space (other latent statistics) would guide towards nothing.
    config = json.loads(metadata["latent_guide_config"])
    config["sigma_data"] = 0.7
    save_file(tensors, str(tmp_path / "space.safetensors"), metadata={**metadata, "latent_guide_config": json.dumps(config)})
    with pytest.raises(ModelFileError, match="sigma_data differs"):
        MSDMModel.load(tmp_path / "space.safetensors")
    # A weight calibrated for a guide that is not there.
    no_guide = {k: v for k, v in tensors.items() if not k.startswith("latent_guide.")}
    meta = {k: v for k, v in metadata.items() if k != "latent_guide_config"}
    save_file(no_guide, str(tmp_path / "alone.safetensors"), metadata=meta)
    with pytest.raises(ModelFileError, match="no guide"):
        MSDMModel.load(tmp_path / "alone.safetensors")
    # Guide weights without their config.
    save_file(tensors, str(tmp_path / "orphan.safetensors"), metadata=meta)
    with pytest.raises(ModelFileError, match="without their config"):
        MSDMModel.load(tmp_path / "orphan.safetensors")


def test_sampling_takes_the_files_weight_unless_asked_and_needs_a_guide_for_one():
    plain = tiny_latent_model()
    assert resolve_autoguidance(LATENT_GENERATE, plain).autoguidance == 1.0
    with pytest.raises(SettingsError, match="no guide|has none"):
        resolve_autoguidance(LATENT_GENERATE.override(autoguidance=2.0), plain)
    guided = with_guide(tiny_latent_model(), weight=2.0)
    assert resolve_autoguidance(LATENT_GENERATE, guided).autoguidance == 2.0
    # Imputation does not autoguide unless asked (it fit the given harmony less on VALID).
    assert LATENT_IMPUTE.autoguidance == 1.0 and resolve_autoguidance(LATENT_IMPUTE, plain).autoguidance == 1.0
    assert resolve_autoguidance(LATENT_IMPUTE.override(autoguidance=3.0), guided).autoguidance == 3.0
    frames = 2 * SR
    settings = LATENT_GENERATE.override(steps=3)
    off = generate_latent_stems(guided, frames, seed=5, settings=settings.override(autoguidance=1.0))
    np.testing.assert_array_equal(off, generate_latent_stems(tiny_latent_model(), frames, seed=5, settings=settings))
    on = generate_latent_stems(guided, frames, seed=5, settings=settings)
    assert on.shape == off.shape and np.isfinite(on).all() and not np.allclose(on, off)
    # Imputation: the given stem comes back as it was, the others change with the guide.
    drums = np.random.default_rng(0).standard_normal(frames).astype(np.float32) * 0.1
    given = np.zeros((4, frames), np.float32)
    given[1] = drums
    imputed = generate_latent_stems(guided, frames, seed=5, settings=LATENT_IMPUTE.override(
        steps=3, harmony=0.0, rhythm=0.0, autoguidance=2.0), given=given, given_stems=(1,))
    np.testing.assert_array_equal(imputed[1], drums)
    plain_imputed = generate_latent_stems(guided, frames, seed=5, settings=LATENT_IMPUTE.override(
        steps=3, harmony=0.0, rhythm=0.0), given=given, given_stems=(1,))
    assert not np.allclose(imputed[0], plain_imputed[0])


def test_autoguidance_option_cost_and_waveform_refusal():
    assert LATENT_GENERATE.override(autoguidance=2.0).nfe == 2 * LATENT_GENERATE.nfe
    assert LATENT_IMPUTE.override(autoguidance=2.0).nfe == 2 * LATENT_IMPUTE.override(autoguidance=1.0).nfe
    with pytest.raises(SettingsError, match="autoguidance"):
        LATENT_GENERATE.override(autoguidance=-1.0)
    assert JobOptions(autoguidance=3.0).sampler_settings("generate", latent_prior=True).autoguidance == 3.0
    assert JobOptions(autoguidance=3.0).sampler_settings("impute", latent_prior=True).autoguidance == 3.0
    assert JobOptions().sampler_settings("generate", latent_prior=True).autoguidance is None
    assert JobOptions().sampler_settings("impute", latent_prior=True).autoguidance == 1.0
    with pytest.raises(CommandError, match="autoguidance is for the latent prior"):
        JobOptions(prior="waveform", autoguidance=2.0).check()
    # The OSC server's per-request bound counts the guide's pass when one is asked for.
    assert protocol.network_evaluations("generate", JobOptions(steps=24, autoguidance=2.0))[2] == 48
    assert protocol.network_evaluations("impute", JobOptions(steps=24, guidance=2.0, autoguidance=2.0))[2] == 96
    assert protocol.network_evaluations("generate", JobOptions(steps=24))[2] == 24


def test_pack_model_adds_a_guide_and_its_weight(tmp_path):
    from training.pack_model import main as pack_main
    from training.train_latent_prior import save_prior

    model = tiny_latent_model()
    model.save(tmp_path / "base.safetensors")
    guide = with_guide(tiny_latent_model()).latent_guide
    save_prior(guide, tmp_path / "guide.safetensors", {"step": 1})
    out = tmp_path / "packed.safetensors"
    assert pack_main(["--prior", str(tmp_path / "base.safetensors"), "--latent-guide", str(tmp_path / "guide.safetensors"),
                      "--autoguidance", "2", "-o", str(out)]) == 0
    packed = MSDMModel.load(out)
    assert packed.latent_prior.config.autoguidance == 2.0
    for name, tensor in guide.net.state_dict().items():
        torch.testing.assert_close(packed.latent_guide.net.state_dict()[name], tensor)
    assert ModelSet([packed]).latent is packed
    # A guide in another space is refused, nothing written.
    other = LatentDenoiser(LatentUNet(dataclasses.replace(guide.config, sigma_data=0.9)))
    save_prior(other, tmp_path / "other.safetensors", {"step": 1})
    with pytest.raises(SystemExit) as refused:
        pack_main(["--prior", str(tmp_path / "base.safetensors"), "--latent-guide", str(tmp_path / "other.safetensors"),
                   "-o", str(tmp_path / "bad.safetensors")])
    assert refused.value.code == 2 and not (tmp_path / "bad.safetensors").exists()


def test_autoguided_sampling_decodes_at_its_own_calibrated_scale():
    """The guide moves the samples' spread, so the level is calibrated again
    with it (autoguidance_scale); unguided sampling keeps sample_scale."""
    config = LatentPriorConfig(latent_channels=8, channels=16, attention_heads=2, sample_scale=0.8,
                               autoguidance=2.0, autoguidance_scale=0.7)
    assert config.scale_for(2.0) == 0.7 and config.scale_for(3.0) == 0.7
    assert config.scale_for(1.0) == 0.8 and config.scale_for(None) == 0.8
    assert dataclasses.replace(config, autoguidance_scale=0.0).scale_for(2.0) == 0.8
    with pytest.raises(ValueError, match="autoguidance_scale"):
        dataclasses.replace(config, autoguidance_scale=5.0)
    frames, settings = 2 * SR, LATENT_GENERATE.override(steps=2)

    def sampled(sample_scale: float, autoguidance_scale: float, autoguidance: float | None) -> np.ndarray:
        model = with_guide(tiny_latent_model(), weight=2.0)
        prior = model.latent_prior
        prior.config = prior.net.config = dataclasses.replace(prior.config, sample_scale=sample_scale,
                                                              autoguidance_scale=autoguidance_scale)
        return generate_latent_stems(model, frames, seed=2, settings=settings.override(autoguidance=autoguidance))

    np.testing.assert_array_equal(sampled(0.8, 0.6, None), sampled(0.6, 0.0, None))
    np.testing.assert_array_equal(sampled(0.8, 0.6, 1.0), sampled(0.8, 0.0, 1.0))
    assert not np.allclose(sampled(0.8, 0.6, None), sampled(0.8, 0.0, None))


def test_calibration_sets_the_scale_of_the_sampling_it_names(monkeypatch):
    """--field sample_scale on an autoguided file measures unguided samples
    (imputation's default) at that scale; the default field is the guided one."""
    import training.calibrate_latent_prior as calibrate

    model = with_guide(tiny_latent_model(), weight=2.0)
    seen = []

    def fake(model_, window, *, seed, settings):
        config = model_.latent_prior.config
        seen.append((settings.autoguidance, config.sample_scale, config.autoguidance_scale))
        return np.full((4, window), 0.1, np.float32)

    monkeypatch.setattr(calibrate, "generate_latent_stems", fake)
    calibrate.generated_levels(model, 256, 2, 0.65)
    assert seen[-1] == (None, model.latent_prior.config.sample_scale, 0.65)
    calibrate.generated_levels(model, 256, 2, 0.75, field="sample_scale")
    assert seen[-1] == (1.0, 0.75, model.latent_prior.config.autoguidance_scale)
    # The file's own config is left as it was.
    assert model.latent_prior.config.autoguidance_scale == 0.0 and model.latent_prior.config.sample_scale == 1.0


def test_autoguided_stems_decode_at_their_own_calibrated_scales(monkeypatch):
    """autoguidance_stem_scales multiply each stem's sampled latents (after
    sampling, so the stems' samples are otherwise the same); unguided
    sampling keeps sample_scale for every stem."""
    from engine.audio import latent_generation
    import training.calibrate_latent_prior as calibrate

    seen = []

    def capture(model, latents, frames, seed, level_maps=None, stems=None, band_maps=None):
        seen.append(latents.clone())
        return np.zeros((latents.shape[0] // model.autoencoder.config.latent_channels, frames), np.float32)

    monkeypatch.setattr(latent_generation, "decode_stems", capture)
    settings = LATENT_GENERATE.override(steps=3)
    scales = (0.5, 0.75, 1.0, 1.5)
    for stem_scales in ((1.0,) * 4, scales):
        model = with_guide(tiny_latent_model(), weight=2.0)
        prior = model.latent_prior
        prior.config = prior.net.config = dataclasses.replace(prior.config, autoguidance_scale=1.0,
                                                              autoguidance_stem_scales=stem_scales)
        latent_generation.generate_latent_stems(model, SR, seed=4, settings=settings)
        latent_generation.generate_latent_stems(model, SR, seed=4, settings=settings.override(autoguidance=1.0))
    channels = 8
    base, scaled = seen[0], seen[2]
    for n, s in enumerate(scales):
        rows = slice(n * channels, (n + 1) * channels)
        torch.testing.assert_close(scaled[rows], base[rows] * s, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(seen[3], seen[1], atol=0, rtol=0)   # unguided: sample_scale, unchanged
    with pytest.raises(ValueError, match="autoguidance_stem_scales"):
        LatentPriorConfig(autoguidance_stem_scales=(1.0, 1.0))
    # Calibration: each stem takes the scale that matches its own level.
    real = np.array([0.05, 0.06, 0.04, 0.045])
    best = np.array([0.6, 0.8, 0.7, 0.9])
    by_scale = {s: real * 10 ** ((s - best) * 5) for s in (0.6, 0.7, 0.8, 0.9)}
    assert calibrate.choose_stem_scales(real, by_scale) == (0.6, 0.8, 0.7, 0.9)


def test_a_new_autoencoder_drops_the_guide_of_the_old_one(tmp_path):
    """Packing a latent prior over another autoencoder into a file with a guide:
    the guide learned the old latents, so it is dropped (and said so); over the
    same autoencoder it stays."""
    from training.pack_model import main as pack_main
    from training.train_autoencoder import save_autoencoder
    from training.train_latent_prior import save_prior

    guided = with_guide(tiny_latent_model())
    guided.save(tmp_path / "guided.safetensors")
    save_prior(guided.latent_prior, tmp_path / "prior.safetensors", {"step": 1})
    save_autoencoder(guided.autoencoder, tmp_path / "same-ae.safetensors", {"step": 1})
    other_ae = tiny_latent_model().autoencoder
    with torch.no_grad():
        next(other_ae.parameters()).add_(0.5)   # a continued autoencoder: other weights, same shapes
    save_autoencoder(other_ae, tmp_path / "new-ae.safetensors", {"step": 2})

    def repack(ae: str, out: str) -> MSDMModel:
        assert pack_main(["--prior", str(tmp_path / "guided.safetensors"), "--autoencoder", str(tmp_path / ae),
                          "--latent-prior", str(tmp_path / "prior.safetensors"), "-o", str(tmp_path / out)]) == 0
        return MSDMModel.load(tmp_path / out)

    kept = repack("same-ae.safetensors", "kept.safetensors")
    assert kept.latent_guide is not None
    dropped = repack("new-ae.safetensors", "dropped.safetensors")
    assert dropped.latent_guide is None and "guide dropped" in dropped.source
    assert dropped.latent_prior.config.autoguidance == 1.0
