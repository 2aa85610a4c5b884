"""training.half_checkpoint: float32 tensors stored as float16, metadata and
every other tensor unchanged, refused when a value does not fit."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from training.half_checkpoint import half_checkpoint, main


def test_halves_float32_keeps_metadata_and_other_dtypes(tmp_path):
    weights = {"w": torch.randn(64, 64), "steps": torch.arange(5)}
    save_file(weights, str(tmp_path / "best.safetensors"), metadata={"config": '{"channels": 128}'})
    assert half_checkpoint(tmp_path / "best.safetensors", tmp_path / "half.safetensors") == 1
    with safe_open(str(tmp_path / "half.safetensors"), "pt") as f:
        assert f.metadata() == {"config": '{"channels": 128}'}
        assert f.get_tensor("w").dtype == torch.float16
        torch.testing.assert_close(f.get_tensor("w").float(), weights["w"], rtol=1e-3, atol=1e-4)
        assert torch.equal(f.get_tensor("steps"), weights["steps"])
    assert (tmp_path / "half.safetensors").stat().st_size < 0.6 * (tmp_path / "best.safetensors").stat().st_size


def test_a_value_beyond_float16_is_refused_and_nothing_written(tmp_path, capsys):
    save_file({"w": torch.tensor([1e6])}, str(tmp_path / "big.safetensors"))
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "big.safetensors"), "-o", str(tmp_path / "half.safetensors")])
    assert exit_info.value.code == 2 and "does not fit float16" in capsys.readouterr().err
    assert not (tmp_path / "half.safetensors").exists()
