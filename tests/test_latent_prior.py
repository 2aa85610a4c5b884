"""The latent prior's parts: autoencoder front end, the conditioned denoiser,
the model file that carries them, and generation / imputation at any length."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from engine.audio.latent_generation import generate_latent_stems
from engine.audio.pipeline import generate_file, impute_file
from engine.core.autoencoder import AutoencoderConfig, StemAutoencoder, griffin_lim
from engine.core.latent_prior import LatentDenoiser, LatentPriorConfig, LatentUNet
from engine.core.tasks import LATENT_GENERATE, generation_settings, SettingsError
from engine.errors import ModelFileError
from engine.storage.model import MSDMModel, ModelSet

from engine.core.config import TINY

SR = 22050


def tiny_latent_model(seed: int = 0) -> MSDMModel:
    """Random weights, small enough for tests (the waveform part is the tiny preset's)."""
    torch.manual_seed(seed)
    model = MSDMModel.build(TINY)
    model.autoencoder = StemAutoencoder(AutoencoderConfig(latent_channels=8, hidden=32, blocks=1,
                                                          griffin_lim_iterations=4))
    # The output layer starts at zero (EDM's convention); random weights there
    # make the test exercise the network's path too.
    net = LatentUNet(LatentPriorConfig(latent_channels=8, channels=16, attention_heads=2))
    torch.nn.init.normal_(net.stem_out.weight, std=0.02)
    model.latent_prior = LatentDenoiser(net)
    model.__post_init__()
    return model


def harmonic_tone(f0: float, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return sum(0.2 / k * np.sin(2 * np.pi * k * f0 * t) for k in range(1, 6)).astype(np.float32)


def test_griffin_lim_restores_a_tone_from_its_magnitude():
    """The decoder's last step, proven on its own: the magnitude of a harmonic
    tone gives back a signal with (nearly) the same magnitude spectrogram."""
    config = AutoencoderConfig(griffin_lim_iterations=48)
    ae = StemAutoencoder(config)
    tone = torch.from_numpy(harmonic_tone(220.0))[None]
    magnitude = ae.stft(tone).abs()
    restored = griffin_lim(magnitude, config, ae.window, tone.shape[-1], torch.Generator().manual_seed(0))
    convergence = float((ae.stft(restored).abs() - magnitude).norm() / magnitude.norm())
    assert convergence < 0.1
    # Random phase at the start, and still the same pitch: the peak bin agrees.
    assert int(ae.stft(restored).abs().mean(-1).argmax()) == int(magnitude.mean(-1).argmax())


def test_autoencoder_shapes_and_bounded_latents():
    ae = StemAutoencoder(AutoencoderConfig(latent_channels=8, hidden=32, blocks=1, griffin_lim_iterations=2))
    x = torch.randn(3, 5000) * 0.1
    z = ae.encode(x)
    assert z.shape == (3, 8, 5000 // 256 + 1)
    assert float(z.detach().abs().max()) < 1.0
    assert ae.decode(z, 5000).shape == (3, 5000)


def test_conditioned_denoiser_sees_the_given_stems():
    """Changing a given stem changes the denoised free stems (the condition is
    used), and with nothing given the condition is ignored."""
    model = tiny_latent_model()
    prior = model.latent_prior
    x = torch.randn(1, 32, 64) * 0.5
    given = torch.randn(1, 32, 64) * 0.5
    mask = torch.tensor([[False, True, False, False]])
    a = prior.with_given(given, mask)(x, torch.tensor([1.0]))
    other = given.clone()
    other[:, 8:16] += 0.5  # the given drums
    b = prior.with_given(other, mask)(x, torch.tensor([1.0]))
    assert not torch.allclose(a[:, :8], b[:, :8])
    nothing = torch.zeros(1, 4, dtype=torch.bool)
    torch.testing.assert_close(prior.with_given(given, nothing)(x, torch.tensor([1.0])),
                               prior.with_given(other, nothing)(x, torch.tensor([1.0])))


def test_loss_counts_only_the_free_stems():
    model = tiny_latent_model()
    prior = model.latent_prior
    x0 = torch.randn(2, 32, 64) * 0.5
    mask = torch.tensor([[True, True, True, False], [False, False, False, False]])
    loss = prior.loss(x0, mask, torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in prior.parameters())


def test_model_file_round_trip_and_mismatches(tmp_path):
    model = tiny_latent_model()
    path = tmp_path / "latent.safetensors"
    model.save(path)
    loaded = MSDMModel.load(path)
    assert loaded.latent_prior is not None and loaded.autoencoder is not None
    for a, b in zip(model.latent_prior.parameters(), loaded.latent_prior.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert ModelSet([loaded]).latent is loaded

    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata())
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    # An autoencoder without its latent model.
    bad = {k: v for k, v in tensors.items() if not k.startswith("latent_prior.")}
    meta = {k: v for k, v in metadata.items() if k != "latent_prior_config"}
    save_file(bad, str(tmp_path / "half.safetensors"), metadata=meta)
    with pytest.raises(ModelFileError, match="needs both"):
        MSDMModel.load(tmp_path / "half.safetensors")
    # Latent channels that do not match.
    config = json.loads(metadata["latent_prior_config"])
    config["latent_channels"] = 16
    save_file(tensors, str(tmp_path / "shape.safetensors"), metadata={**metadata, "latent_prior_config": json.dumps(config)})
    with pytest.raises(ModelFileError, match="latent channels"):
        MSDMModel.load(tmp_path / "shape.safetensors")


def test_latent_settings_need_a_latent_model():
    assert generation_settings("generate", True).prior == "latent"
    assert generation_settings("generate", False).prior == "waveform"
    assert generation_settings("impute", True, "waveform").prior == "waveform"
    with pytest.raises(SettingsError, match="no latent prior"):
        generation_settings("generate", False, "latent")


def test_generation_any_length_mix_is_the_exact_sum(tmp_path):
    """7 s: several latent windows; the mix written is the sum of the stems,
    and the same seed gives the same audio."""
    models = ModelSet([tiny_latent_model()])
    settings = LATENT_GENERATE.override(steps=2)
    paths = generate_file(models, tmp_path / "a", 7.0, seed=4, settings=settings)
    import soundfile as sf
    stems = {name: sf.read(str(p), dtype="float32")[0] for name, p in paths.items()}
    assert len(stems["mix"]) == 7 * SR
    total = stems["bass"] + stems["drums"] + stems["guitar"] + stems["piano"]
    np.testing.assert_allclose(stems["mix"], total, rtol=0, atol=2e-7)
    again = generate_latent_stems(models.latent, 7 * SR, seed=4, settings=settings)
    np.testing.assert_array_equal(again[0], stems["bass"])


def test_imputation_keeps_the_given_stems_and_changes_with_them(tmp_path):
    import soundfile as sf
    models = ModelSet([tiny_latent_model()])
    settings = LATENT_GENERATE.override(steps=2)
    drums = np.random.default_rng(0).standard_normal(2 * SR).astype(np.float32) * 0.1
    sf.write(tmp_path / "drums.wav", drums, SR, subtype="FLOAT")
    paths = impute_file(models, {"drums": tmp_path / "drums.wav"}, tmp_path / "out", seed=1, settings=settings)
    assert "drums" not in paths and set(paths) == {"bass", "guitar", "piano", "mix"}
    out = {name: sf.read(str(p), dtype="float32")[0] for name, p in paths.items()}
    np.testing.assert_allclose(out["mix"], drums + out["bass"] + out["guitar"] + out["piano"], rtol=0, atol=2e-7)
    # Another given part, same seed: other audio (the condition is used).
    sf.write(tmp_path / "drums2.wav", drums[::-1].copy(), SR, subtype="FLOAT")
    other = impute_file(models, {"drums": tmp_path / "drums2.wav"}, tmp_path / "out2", seed=1, settings=settings)
    assert not np.allclose(sf.read(str(other["bass"]), dtype="float32")[0], out["bass"])
