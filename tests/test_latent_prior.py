"""The latent prior's parts: autoencoder front end, the conditioned denoiser,
the model file that carries them, and generation / imputation at any length."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from engine.audio.latent_generation import generate_latent_stems
from engine.audio.pipeline import generate_file, generate_stems, impute_file
from engine.core.autoencoder import AutoencoderConfig, StemAutoencoder, griffin_lim
from engine.core.latent_prior import LatentDenoiser, LatentPriorConfig, LatentUNet
from engine.core.tasks import LATENT_GENERATE, generation_settings, SettingsError
from engine.errors import ModelFileError
from engine.storage.model import MSDMModel, ModelSet

from support.latent_models import tiny_latent_model

SR = 22050


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


@pytest.mark.parametrize("mask", [torch.tensor([[False, True, False, False]]).expand(2, 4),
                                  torch.tensor([[False, True, False, True]])[:, :, None].expand(2, 4, 64)])
def test_guidance_is_the_exact_mix_of_conditional_and_unconditional(mask):
    """Classifier-free guidance w: D_u + w (D_c - D_u), batched in one pass,
    equals the two denoisers evaluated apart; w = 1 is the conditional, w = 0
    the prior with nothing given."""
    prior = tiny_latent_model().latent_prior
    x = torch.randn(2, 32, 64) * 0.5
    given = torch.randn(2, 32, 64) * 0.5
    sigma = torch.tensor([0.7, 2.0])
    cond = prior.with_given(given, mask)(x, sigma)
    free = prior.denoise(x, sigma)
    assert not torch.allclose(cond, free)
    torch.testing.assert_close(prior.with_given(given, mask, 0.0)(x, sigma), free, atol=1e-5, rtol=0)
    torch.testing.assert_close(prior.with_given(given, mask, 2.5)(x, sigma), free + 2.5 * (cond - free),
                               atol=1e-5, rtol=0)


def test_guidance_out_of_range_is_refused():
    with pytest.raises(SettingsError, match="guidance"):
        LATENT_GENERATE.override(guidance=-1.0)


def test_the_harmony_condition_reaches_the_network_only_where_a_stem_is_given():
    prior = tiny_latent_model(harmony=True).latent_prior
    torch.nn.init.normal_(prior.net.harmony_in.weight, std=0.1)
    x, given = torch.randn(1, 32, 64) * 0.5, torch.randn(1, 32, 64) * 0.5
    harmony = torch.rand(1, 48, 64)
    other = harmony.clone()
    other[:, 36:48] = torch.rand(1, 12, 64)           # the piano's pitch classes
    sigma = torch.tensor([1.0])
    piano_given = torch.tensor([[False, False, False, True]])
    a = prior.with_given(given, piano_given, harmony=harmony)(x, sigma)
    assert not torch.allclose(a, prior.with_given(given, piano_given, harmony=other)(x, sigma))
    drums_given = torch.tensor([[False, True, False, False]])
    torch.testing.assert_close(prior.with_given(given, drums_given, harmony=harmony)(x, sigma),
                               prior.with_given(given, drums_given, harmony=other)(x, sigma))
    # Guided: the unconditional half never sees it either (mask all False there).
    guided = prior.with_given(given, piano_given, 2.0, harmony)(x, sigma)
    cond = prior.with_given(given, piano_given, harmony=harmony)(x, sigma)
    free = prior.denoise(x, sigma)
    torch.testing.assert_close(guided, free + 2.0 * (cond - free))
    with pytest.raises(ValueError, match="harmony must be"):
        prior.with_given(given, piano_given, harmony=harmony[:, :12])(x, sigma)


def test_harmony_inputs_added_to_a_trained_prior_start_at_zero():
    """train_latent_prior --harmony --init OLD: the new inputs get zero weights,
    so the network computes what OLD computed, whatever the chroma."""
    from training.train_latent_prior import load_init

    old = tiny_latent_model().latent_prior
    config = dataclasses.replace(old.config, harmony_channels=12)
    new = LatentDenoiser(LatentUNet(config))
    load_init(new, old.net.state_dict())
    x, given = torch.randn(2, 32, 64) * 0.5, torch.randn(2, 32, 64) * 0.5
    mask = torch.tensor([[True, False, False, False], [False, True, True, False]])
    torch.testing.assert_close(new.with_given(given, mask, harmony=torch.rand(2, 48, 64))(x, torch.tensor([0.7, 2.0])),
                               old.with_given(given, mask)(x, torch.tensor([0.7, 2.0])))


def test_imputation_hands_the_given_stems_chroma_to_a_harmony_prior(tmp_path):
    """The engine computes the given stems' chroma and the prior uses it: the
    same model with its harmony weights zeroed imputes other audio, the given
    stem comes back as it was, and a file round trip keeps the condition."""
    model = tiny_latent_model(harmony=True)
    torch.nn.init.normal_(model.latent_prior.net.harmony_in.weight, std=0.1)
    model.save(tmp_path / "harmony.safetensors")
    loaded = MSDMModel.load(tmp_path / "harmony.safetensors")
    assert loaded.latent_prior.config.harmony_channels == 12
    piano = harmonic_tone(261.63, 2.0)
    given = np.zeros((4, len(piano)), np.float32)
    given[3] = piano
    settings = LATENT_GENERATE.override(steps=2)
    with_chroma = generate_latent_stems(loaded, len(piano), seed=3, settings=settings, given=given, given_stems=(3,))
    np.testing.assert_array_equal(with_chroma[3], piano)
    with torch.no_grad():
        loaded.latent_prior.net.harmony_in.weight.zero_()
    without = generate_latent_stems(loaded, len(piano), seed=3, settings=settings, given=given, given_stems=(3,))
    assert not np.allclose(with_chroma[0], without[0])


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


def test_latent_statistics_standardise_and_travel_in_the_model_file(tmp_path):
    """Per-channel shift/scale: diffusion space has unit variance per channel,
    from_diffusion inverts it exactly, and the statistics survive save/load."""
    from training.train_latent_prior import latent_statistics

    rng = np.random.default_rng(0)
    width = 4 * 8
    true_std = np.linspace(0.05, 0.5, width)
    true_mean = np.linspace(-0.2, 0.2, width)
    latents = [(true_mean[:, None] + true_std[:, None] * rng.standard_normal((width, 3000))).reshape(4, 8, 3000)
               .astype(np.float32) for _ in range(3)]
    shift, scale = latent_statistics(latents)
    np.testing.assert_allclose(shift[:, 0].numpy(), true_mean, atol=0.01)
    np.testing.assert_allclose(scale[:, 0].numpy(), true_std, rtol=0.03)

    model = tiny_latent_model()
    config = model.latent_prior.config.with_latent_statistics(shift[:, 0], scale[:, 0])
    net = LatentUNet(config)
    net.load_state_dict(model.latent_prior.net.state_dict())
    model.latent_prior = LatentDenoiser(net)
    model.__post_init__()
    z = torch.from_numpy(latents[0].reshape(width, -1))
    u = model.latent_prior.to_diffusion(z)
    np.testing.assert_allclose(u.std(dim=-1).numpy(), 1.0, rtol=0.05)
    torch.testing.assert_close(model.latent_prior.from_diffusion(u), z, atol=1e-5, rtol=1e-5)

    path = model.save(tmp_path / "m.safetensors")
    loaded = MSDMModel.load(path)
    assert loaded.latent_prior.config == config
    torch.testing.assert_close(loaded.latent_prior.scale, model.latent_prior.scale)
    # Generation through the standardised space still returns the given stems untouched.
    given = np.stack([harmonic_tone(110.0, 0.5)] * 4)
    out = generate_latent_stems(loaded, given.shape[-1], seed=1, settings=LATENT_GENERATE.override(steps=2),
                                given=given, given_stems=(0,))
    np.testing.assert_array_equal(out[0], given[0])
    assert np.isfinite(out).all()


@pytest.mark.parametrize("field,value", [("latent_shift", (0.0,) * 3), ("latent_scale", (0.0,) * 32)])
def test_latent_statistics_of_the_wrong_size_or_zero_scale_are_refused(field, value):
    good = {"latent_shift": (0.0,) * 32, "latent_scale": (1.0,) * 32}
    with pytest.raises(ValueError, match="latent_s"):
        LatentPriorConfig(latent_channels=8, channels=16, attention_heads=2, **{**good, field: value})


def test_pack_model_adds_the_latent_prior_from_training_files(tmp_path):
    """training.pack_model puts a trained autoencoder and latent prior (the
    training scripts' own files, float16 as the checkpoints are kept) beside
    the prior; a file of the wrong kind is a clear error."""
    from training.pack_model import main as pack_main
    from training.train_autoencoder import save_autoencoder
    from training.train_latent_prior import save_prior

    model = tiny_latent_model()
    base = MSDMModel(model.config, model.network)
    base.save(tmp_path / "prior.safetensors")
    save_autoencoder(model.autoencoder, tmp_path / "ae.safetensors", {"step": 1})
    save_prior(model.latent_prior, tmp_path / "lp.safetensors", {"step": 1})
    half = {k: v.half() for k, v in model.latent_prior.net.state_dict().items()}
    with safe_open(str(tmp_path / "lp.safetensors"), framework="pt") as handle:
        save_file(half, str(tmp_path / "lp16.safetensors"), metadata=handle.metadata())
    out = tmp_path / "packed.safetensors"
    assert pack_main(["--prior", str(tmp_path / "prior.safetensors"), "--autoencoder", str(tmp_path / "ae.safetensors"),
                      "--latent-prior", str(tmp_path / "lp16.safetensors"), "-o", str(out)]) == 0
    packed = MSDMModel.load(out)
    assert packed.latent_prior is not None and packed.separator is None
    for name, tensor in model.latent_prior.net.state_dict().items():
        torch.testing.assert_close(packed.latent_prior.net.state_dict()[name], tensor.half().float())
    with pytest.raises(SystemExit) as wrong:
        pack_main(["--prior", str(tmp_path / "prior.safetensors"), "--autoencoder", str(tmp_path / "lp.safetensors"),
                   "--latent-prior", str(tmp_path / "lp.safetensors"), "-o", str(tmp_path / "bad.safetensors")])
    assert wrong.value.code == 2 and not (tmp_path / "bad.safetensors").exists()


def test_float16_storage_halves_the_latent_part_and_survives_a_reload(tmp_path):
    """A model file may store the latent parts in float16 (the shipped file
    does); they compute in float32 once loaded, generate what the float32
    file generates within the rounding, and a load-save round trip keeps the
    storage (no silent doubling)."""
    model = tiny_latent_model()
    full, half = tmp_path / "full.safetensors", tmp_path / "half.safetensors"
    model.save(full)
    model.latent_storage = "float16"
    model.save(half)
    latent_bytes = model.latent_parameters * 4
    assert 0.4 < (full.stat().st_size - half.stat().st_size) / latent_bytes < 0.6
    loaded = MSDMModel.load(half)
    assert loaded.latent_storage == "float16" and MSDMModel.load(full).latent_storage == "float32"
    assert all(p.dtype == torch.float32 for p in loaded.latent_prior.parameters())
    again = tmp_path / "again.safetensors"
    loaded.save(again)
    assert again.stat().st_size == half.stat().st_size
    frames = 4096
    outputs = []
    for path in (full, half):
        models = ModelSet([MSDMModel.load(path)])
        outputs.append(generate_stems(models, frames, seed=3, settings=LATENT_GENERATE.override(steps=4)))
    scale = np.abs(outputs[0]).max()
    assert scale > 0 and np.abs(outputs[0] - outputs[1]).max() < 0.05 * scale
    with pytest.raises(ModelFileError, match="latent_storage"):
        model.latent_storage = "bfloat16"
        model.__post_init__()
