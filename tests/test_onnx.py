"""The ONNX backend: export, checker, parity with PyTorch, cache, every task on both backends."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

pytest.importorskip("onnxruntime")

from engine.cli import main  # noqa: E402
from engine.storage.loading import load_models
from engine.storage.model import MSDMModel, ModelSet  # noqa: E402
from engine.storage.onnx_backend import OnnxDenoiser, cached_onnx_path, ensure_onnx, export_onnx  # noqa: E402
from engine.core.tasks import GENERATE, IMPUTE, SEPARATE_DIRAC, generate, impute, separate  # noqa: E402


@pytest.fixture(scope="module")
def exported(tiny_model_path):
    model = MSDMModel.load(tiny_model_path)
    return model, ensure_onnx(model)


def test_export_is_checked_and_matches_pytorch(tmp_path, tiny_model_path):
    report = export_onnx(MSDMModel.load(tiny_model_path), tmp_path / "tiny.onnx")
    assert report.path.is_file() and report.max_rel_error < 1e-4
    assert "checker passed" in report.describe()
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".tmp"]


@pytest.mark.parametrize("batch,length", [(1, 4096), (3, 4096), (2, 1000), (1, 4096 + 13)])
def test_onnx_denoiser_matches_torch_for_any_batch_and_length(exported, batch, length):
    model, path = exported
    onnx = OnnxDenoiser(path, ["CPUExecutionProvider"])
    x = torch.randn(batch, 4, length) * 0.3
    sigma = torch.rand(batch) + 0.01
    got = onnx(x, sigma)
    # PyTorch's answer for any length: zero-pad to the network's multiple, denoise, crop.
    pad = -length % model.config.unet.downsampling_factor
    with torch.no_grad():
        expected = model.denoiser(torch.nn.functional.pad(x, (0, pad)), sigma)[..., :length]
    assert got.shape == x.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_same_seed_same_audio_on_both_backends(exported):
    """Every task, same seed and sampler: the ONNX and PyTorch backends agree
    within 1e-3 (float32 round-off compounded over the sampling steps)."""
    model, path = exported
    onnx = OnnxDenoiser(path, ["CPUExecutionProvider"])
    mix = torch.randn(2, 1, 4096) * 0.1
    given = torch.randn(2, 4, 4096) * 0.1
    mask = torch.tensor([False, True, False, False])
    runs = {
        "separate": lambda d: separate(d, mix, 4, [1, 2], settings=SEPARATE_DIRAC.override(steps=8, num_resamples=1, method="dpmpp2m")),
        "generate": lambda d: generate(d, 4, 4096, [1, 2], GENERATE.override(steps=6)),
        "impute": lambda d: impute(d, given, mask, [1, 2], IMPUTE.override(steps=6)),
    }
    for name, run in runs.items():
        a, b = run(model.denoiser), run(onnx)
        scale = max(1.0, float(a.abs().max()))
        assert float((a - b).abs().max()) < 1e-3 * scale, name


def test_export_is_cached_by_model_hash(exported, tiny_model_path):
    model, path = exported
    assert path == cached_onnx_path(model) and model.file_hash()[:16] in path.name
    stamp = path.stat().st_mtime_ns
    assert ensure_onnx(MSDMModel.load(tiny_model_path)) == path
    assert path.stat().st_mtime_ns == stamp  # not exported again
    models = load_models([tiny_model_path], backend="onnx")
    assert isinstance(models.denoiser, OnnxDenoiser)
    assert isinstance(ModelSet([MSDMModel.load(tiny_model_path)]).denoiser, torch.nn.Module)


def test_cli_export_and_separate_with_onnx(tmp_path, tiny_model_path, exported, capsys):
    out = tmp_path / "tiny.onnx"
    assert main(["export-onnx", "--model", str(tiny_model_path), "-o", str(out)]) == 0
    assert "parity" in capsys.readouterr().out and out.is_file()
    # An -o that cannot be written: one line, exit 2 (issue 14, finding 10).
    assert main(["export-onnx", "--model", str(tiny_model_path), "-o", str(out / "inside-a-file.onnx")]) == 2
    assert "cannot write" in capsys.readouterr().err
    mix = tmp_path / "mix.wav"
    sf.write(mix, (0.1 * np.random.default_rng(0).standard_normal((5000, 2))).astype(np.float32), 44100)
    stems = {}
    for backend in ("torch", "onnx"):
        target = tmp_path / backend
        assert main(["separate", str(mix), "-o", str(target), "--model", str(tiny_model_path), "--backend", backend,
                     "--steps", "6", "--resamples", "1", "--method", "dpmpp2m", "-q"]) == 0
        stems[backend] = sf.read(target / "piano.wav", dtype="float32")[0]
    scale = max(1.0, float(np.abs(stems["torch"]).max()))
    assert np.abs(stems["torch"] - stems["onnx"]).max() < 1e-3 * scale
