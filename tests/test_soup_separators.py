"""training.soup_separators: the weighted mean of separators' weights, written
as a separator file that pack_model and train_separator --init take."""

from __future__ import annotations

import pytest
import torch

from engine.core.separator import MaskSeparator, SeparatorConfig
from training import soup_separators
from training.soup_separators import soup
from training.train_separator import initial_separator, save_separator

from conftest import TINY_SEPARATOR


def separator(seed: int, **changes) -> MaskSeparator:
    torch.manual_seed(seed)
    return MaskSeparator(SeparatorConfig(**{**TINY_SEPARATOR, **changes})).eval()


def test_the_soup_is_the_weighted_mean_of_the_weights():
    a, b = separator(0), separator(1)
    mixed = soup([a, b], [0.25, 0.75])
    for key, value in mixed.state_dict().items():
        torch.testing.assert_close(value, 0.25 * a.state_dict()[key] + 0.75 * b.state_dict()[key])
    # A soup of one network with itself is that network: same masks.
    mix = 0.3 * torch.randn(1, 5000)
    with torch.no_grad():
        torch.testing.assert_close(soup([a, a])(mix), a(mix))
        stems = mixed(mix)
    torch.testing.assert_close(stems.sum(1), mix, rtol=0, atol=1e-6)


def test_shapes_and_weights_that_cannot_be_averaged_are_refused():
    with pytest.raises(ValueError, match="different shapes"):
        soup([separator(0), separator(1, hidden=32)])
    with pytest.raises(ValueError, match="summing to 1"):
        soup([separator(0), separator(1)], [0.5, 0.6])
    with pytest.raises(ValueError, match="summing to 1"):
        soup([separator(0), separator(1)], [1.0])


def test_command_writes_a_separator_file(tmp_path):
    save_separator(separator(0), tmp_path / "a.safetensors", {"step": 1})
    save_separator(separator(1), tmp_path / "b.safetensors", {"step": 2})
    out = tmp_path / "soup" / "best.safetensors"
    assert soup_separators.main([str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"),
                                 "--weights", "0.5", "0.5", "-o", str(out)]) == 0
    loaded = initial_separator(out)
    expected = soup([separator(0), separator(1)])
    for key, value in loaded.state_dict().items():
        torch.testing.assert_close(value, expected.state_dict()[key])
    with pytest.raises(SystemExit):
        soup_separators.main([str(tmp_path / "a.safetensors"), "--weights", "0.3", "-o", str(out)])
