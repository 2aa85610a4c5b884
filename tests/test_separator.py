"""The first-guess separator (engine.core.separator): its stems sum to the mix,
it lives in the model file beside the prior, and separation starts from it by
default (CLI, pipeline) or from noise when asked."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from engine.audio.pipeline import separate_array
from engine.cli import main
from engine.core.separator import MaskSeparator, SeparatorConfig
from engine.core.tasks import SEPARATE_WARM, SettingsError, separation_settings
from engine.errors import CommandError, ModelFileError
from engine.storage.model import MSDMModel, ModelSet

from conftest import TINY_SEPARATOR

STEMS = ("bass", "drums", "guitar", "piano")


@pytest.mark.parametrize("length", [1, 100, 255, 4096, 10007])
def test_the_stems_sum_to_the_mix_at_any_length(length):
    torch.manual_seed(1)
    separator = MaskSeparator(SeparatorConfig(**TINY_SEPARATOR)).eval()
    mix = 0.3 * torch.randn(3, length)
    with torch.no_grad():
        stems = separator(mix)
    assert stems.shape == (3, 4, length)
    torch.testing.assert_close(stems.sum(1), mix, rtol=0, atol=1e-6)
    # The stems differ from each other and from mix / 4: the masks are not uniform.
    assert (stems - mix[:, None] / 4).abs().max() > 1e-3


@pytest.mark.parametrize("length", [1, 4096, 10007])
def test_a_refined_separator_still_sums_to_the_mix_and_starts_as_its_base(length):
    """The time-frequency refinement of the masks (refine_channels) changes the
    logits only: masks stay a partition of one; added to trained weights
    (train_separator --refine) it starts at zero, so it computes what they did."""
    from training.train_separator import with_refinement

    torch.manual_seed(4)
    base = MaskSeparator(SeparatorConfig(**TINY_SEPARATOR)).eval()
    refined = with_refinement(base, channels=4, layers=2).eval()
    assert refined.config.refine_channels == 4 and refined.refine is not None
    mix = 0.3 * torch.randn(2, length)
    with torch.no_grad():
        torch.testing.assert_close(refined(mix), base(mix), rtol=0, atol=0)
        torch.nn.init.normal_(refined.refine.out.weight, std=0.5)
        stems = refined(mix)
    torch.testing.assert_close(stems.sum(1), mix, rtol=0, atol=1e-6)
    if length > 1000:
        assert (stems - base(mix)).abs().max() > 1e-4   # the refinement is in the path
    with pytest.raises(SystemExit, match="already has a refinement"):
        with_refinement(refined, channels=4, layers=2)


def test_a_refined_separator_survives_the_model_file(tiny_packed_path, tmp_path):
    from training.train_separator import with_refinement

    model = MSDMModel.load(tiny_packed_path)
    model.separator = with_refinement(model.separator, channels=4, layers=2)
    torch.nn.init.normal_(model.separator.refine.out.weight, std=0.5)
    model.save(tmp_path / "refined.safetensors")
    loaded = MSDMModel.load(tmp_path / "refined.safetensors")
    assert loaded.separator.config.refine_channels == 4
    mix = 0.3 * torch.randn(1, 5000)
    with torch.no_grad():
        torch.testing.assert_close(loaded.separator(mix), model.separator(mix))


def test_masks_are_a_partition_of_one():
    torch.manual_seed(2)
    separator = MaskSeparator(SeparatorConfig(**TINY_SEPARATOR))
    spec = separator.stft(torch.randn(2, 3000))
    masks = separator.masks(spec)
    assert masks.shape == (2, 4, 129, spec.shape[-1]) and masks.min() >= 0
    torch.testing.assert_close(masks.sum(1), torch.ones(2, 129, spec.shape[-1]))


def test_a_mix_level_does_not_change_the_masks():
    """Features are log magnitudes less their mean: 20 dB louder, same masks."""
    torch.manual_seed(3)
    separator = MaskSeparator(SeparatorConfig(**TINY_SEPARATOR)).eval()
    mix = 0.05 * torch.randn(1, 5000)
    with torch.no_grad():
        quiet, loud = separator(mix), separator(10 * mix)
    torch.testing.assert_close(loud, 10 * quiet, rtol=1e-3, atol=1e-5)


def test_bad_configs_and_inputs_are_refused():
    with pytest.raises(ValueError, match="n_fft"):
        SeparatorConfig(n_fft=7)
    with pytest.raises(ValueError, match="unknown SeparatorConfig fields"):
        SeparatorConfig.from_dict({"n_fft": 256, "layers_typo": 2})
    separator = MaskSeparator(SeparatorConfig(**TINY_SEPARATOR))
    with pytest.raises(ValueError, match="mono mix"):
        separator(torch.zeros(1, 2, 100))


def test_the_model_file_carries_the_separator(tiny_packed_path, tmp_path):
    model = MSDMModel.load(tiny_packed_path)
    assert model.separator is not None and model.separator.config == SeparatorConfig(**TINY_SEPARATOR)
    with safe_open(str(tiny_packed_path), framework="pt") as handle:
        metadata = handle.metadata()
    assert json.loads(metadata["separator_config"])["n_fft"] == 256
    # Same weights after a save and a load, prior and separator alike.
    again = tmp_path / "again.safetensors"
    model.save(again)
    first, second = load_file(str(tiny_packed_path)), load_file(str(again))
    assert first.keys() == second.keys() and any(k.startswith("separator.") for k in first)
    for key in first:
        torch.testing.assert_close(first[key], second[key], rtol=0, atol=0)


def test_a_broken_separator_in_a_model_file_is_a_clear_error(tiny_packed_path, tmp_path):
    tensors = load_file(str(tiny_packed_path))
    with safe_open(str(tiny_packed_path), framework="pt") as handle:
        metadata = dict(handle.metadata())
    wrong = dict(metadata, separator_config=json.dumps({**json.loads(metadata["separator_config"]), "hidden": 32}))
    save_file(tensors, str(tmp_path / "wrong.safetensors"), metadata=wrong)
    with pytest.raises(ModelFileError, match="first-guess separator does not match"):
        MSDMModel.load(tmp_path / "wrong.safetensors")
    orphan = {k: v for k, v in metadata.items() if k != "separator_config"}
    save_file(tensors, str(tmp_path / "orphan.safetensors"), metadata=orphan)
    with pytest.raises(ModelFileError, match="without a separator_config"):
        MSDMModel.load(tmp_path / "orphan.safetensors")


def test_separation_starts_from_the_guess_by_default(tiny_packed_path):
    models = ModelSet([MSDMModel.load(tiny_packed_path)])
    mix = (0.1 * np.random.default_rng(0).standard_normal((2, 9000))).astype(np.float32)
    stems = separate_array(models, mix, 44100)
    assert stems.shape == (4, 2, 9000)
    np.testing.assert_allclose(stems.sum(0), mix, atol=1e-5)
    # The default is the guess itself: the separator run on the window, no noise.
    again = separate_array(models, mix, 44100, seed=99)
    np.testing.assert_array_equal(stems, again)
    # Refining it (2 steps) and starting from noise both give other stems that still sum to the mix.
    refined = separate_array(models, mix, 44100, settings=SEPARATE_WARM.override(steps=2))
    noise = separate_array(models, mix, 44100, settings=separation_settings(
        "dirac", num_stems=4, isdm=False, has_first_guess=True, start="noise", steps=2, method="dpmpp2m"))
    for other in (refined, noise):
        assert np.abs(other - stems).max() > 1e-4
        np.testing.assert_allclose(other.sum(0), mix, atol=1e-5)


def test_a_model_without_a_separator_separates_from_noise(tiny_models):
    assert tiny_models.separator is None
    with pytest.raises(SettingsError, match="no first-guess separator"):
        separation_settings("dirac", num_stems=4, isdm=False, has_first_guess=False, start="guess")
    assert separation_settings("dirac", num_stems=4, isdm=False, has_first_guess=False).steps == 150
    with pytest.raises(CommandError, match="no first-guess separator"):
        separate_array(tiny_models, np.zeros((1, 100), np.float32) + 0.1, 22050, settings=SEPARATE_WARM)


def test_cli_separates_with_the_guess_and_refines_on_request(tiny_packed_path, tmp_path, capsys):
    mix = (0.1 * np.random.default_rng(1).standard_normal(6000)).astype(np.float32)
    sf.write(tmp_path / "mix.wav", mix, 22050, subtype="FLOAT")
    assert main(["separate", str(tmp_path / "mix.wav"), "-o", str(tmp_path / "guess"), "--model",
                 str(tiny_packed_path), "-q"]) == 0
    assert main(["separate", str(tmp_path / "mix.wav"), "-o", str(tmp_path / "refined"), "--model",
                 str(tiny_packed_path), "--steps", "2", "-q"]) == 0
    guess = np.stack([sf.read(tmp_path / "guess" / f"{s}.wav")[0] for s in STEMS])
    refined = np.stack([sf.read(tmp_path / "refined" / f"{s}.wav")[0] for s in STEMS])
    np.testing.assert_allclose(guess.sum(0), mix, atol=1e-5)
    np.testing.assert_allclose(refined.sum(0), mix, atol=1e-5)
    assert np.abs(guess - refined).max() > 1e-4
    # The paper's Euler sampler with 4 steps would diverge: one line, exit 2, no files.
    capsys.readouterr()
    assert main(["separate", str(tmp_path / "mix.wav"), "-o", str(tmp_path / "bad"), "--model",
                 str(tiny_packed_path), "--start", "noise", "--steps", "4", "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "use at least" in err and "dpmpp2m" in err
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())
    assert main(["info", "--model", str(tiny_packed_path)]) == 0
    assert "first guess: mask separator, STFT 256/64" in capsys.readouterr().out
