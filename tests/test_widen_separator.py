"""training.widen_separator: the widened separator computes what the narrow
one did (Net2WiderNet), its copies are not tied, and train_separator starts
from it and resumes it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.core.separator import MaskSeparator, SeparatorConfig, count_parameters
from engine.storage.model import load_separator
from tests.test_train_separator import TINY, make_dataset
from training import train_separator
from training.widen_separator import read_split, widen_separator


def random_separator(layers: int = 2, hidden: int = 12) -> MaskSeparator:
    torch.manual_seed(3)
    model = MaskSeparator(SeparatorConfig(n_fft=128, hop=32, hidden=hidden, layers=layers))
    with torch.no_grad():
        for p in model.parameters():  # far from the init, so a wrong row or column shows
            p.add_(torch.randn_like(p) * 0.3)
    return model.eval()


@pytest.mark.parametrize("factor", [2, 3])
def test_widened_separator_computes_the_same_stems(factor):
    narrow = random_separator()
    wide = widen_separator(narrow, factor, seed=1).eval()
    assert wide.config.hidden == narrow.config.hidden * factor
    assert count_parameters(wide) > 2 * count_parameters(narrow)
    mix = torch.randn(3, 4000) * 0.1
    with torch.no_grad():
        masks_narrow, masks_wide = narrow.masks(narrow.stft(mix)), wide.masks(wide.stft(mix))
        stems_narrow, stems_wide = narrow(mix), wide(mix)
    assert torch.allclose(masks_wide, masks_narrow, atol=2e-5)
    assert torch.allclose(stems_wide, stems_narrow, atol=1e-5)


def test_copies_read_different_weights_so_they_can_part():
    wide = widen_separator(random_separator(), 2, seed=0)
    h = wide.config.hidden // 2
    w = wide.decoder[3].weight            # reads the decoder's copied units
    assert not torch.allclose(w[:, :h], w[:, h:])
    # ...while both copies' incoming rows are the original's (same activation).
    rows = wide.decoder[0].weight
    assert torch.allclose(rows[:h].sum(1), rows[h:].sum(1), atol=1e-5)


def test_read_split_keeps_every_sum_with_positive_shares():
    weight = torch.randn(5, 3)
    sources = torch.tensor([0, 1, 2, 0, 1, 2, 2])
    out = read_split(weight, sources, torch.Generator().manual_seed(0))
    back = torch.zeros_like(weight).index_add_(1, sources, out)
    assert torch.allclose(back, weight, atol=1e-6)
    assert (out * weight[:, sources] >= 0).all()


def test_widen_rejects_a_bad_factor():
    with pytest.raises(ValueError, match="factor"):
        widen_separator(random_separator(layers=1), 0)


def test_train_separator_starts_from_a_widened_file_and_resumes(tmp_path):
    make_dataset(tmp_path / "data", np.random.default_rng(0))
    first = tmp_path / "first"
    args = ["--data", str(tmp_path / "data"), *TINY, "--valid-every", "3"]
    assert train_separator.main([*args, "-o", str(first), "--minutes", "0.02"]) == 0
    wide_run = tmp_path / "wide"
    wide_args = [*args, "-o", str(wide_run), "--init", str(first / "best.safetensors"), "--widen", "2"]
    assert train_separator.main([*wide_args, "--minutes", "0.02"]) == 0
    separator, _ = load_separator(wide_run / "best.safetensors")
    assert separator.config.hidden == 32              # TINY's 16, twice
    assert train_separator.main([*wide_args, "--minutes", "0.04"]) == 0   # resumes its own wide state
    assert load_separator(wide_run / "best.safetensors")[0].config.hidden == 32


@pytest.mark.parametrize("flags,message", [(["--widen", "0", "--init", "x.safetensors"], "positive integer"),
                                           (["--widen", "2"], "needs --init")])
def test_bad_widen_flags_are_refused_before_any_work(tmp_path, capsys, flags, message):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        train_separator.main(["--data", str(tmp_path / "missing"), "-o", str(out), *flags])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not out.exists()

