"""The denoiser as one ONNX graph, run by ONNX Runtime.

The whole denoiser (network and EDM preconditioning) is exported, with dynamic
batch and length: lengths that are not a multiple of the network's
downsampling factor are zero-padded and cropped inside the graph (a frozen
shape or an odd length is the classic failure of exporting a U-Net).
ONNX Runtime then runs it with the best execution provider present:
TensorRT, then CUDA (package onnxruntime-gpu, which replaces onnxruntime), then
the CPU. Exports are cached next to the model, keyed by the model's hash, so
the app and the server pay the export once.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.atomic import AtomicFile
from engine.core.diffusion import KarrasDenoiser, as_sigma_batch
from engine.errors import UserError
from engine.storage.model import MSDMModel, file_sha256

log = logging.getLogger(__name__)

OPSET = 18
CACHE_DIR = Path(os.environ.get("MSDM_CACHE", Path.home() / ".cache" / "msdm-studio")) / "onnx"
PROVIDER_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


class OnnxError(UserError, RuntimeError):
    """Export or ONNX Runtime problems, with what to do about them."""


class PaddedDenoiser(nn.Module):
    """D(x, sigma) for any length: pad to the network's multiple, crop back."""

    def __init__(self, denoiser: KarrasDenoiser, factor: int) -> None:
        super().__init__()
        self.denoiser = denoiser
        self.factor = factor

    def forward(self, x: Tensor, sigma: Tensor) -> Tensor:
        length = x.shape[-1]
        pad = (self.factor - length % self.factor) % self.factor
        return self.denoiser(F.pad(x, (0, pad)), sigma)[..., :length]


@dataclass(frozen=True)
class ExportReport:
    path: Path
    max_abs_error: float     # ONNX Runtime (CPU) vs PyTorch on test inputs
    max_rel_error: float
    opset: int

    def describe(self) -> str:
        return (f"{self.path}: ONNX checker passed; parity with PyTorch on CPU: max abs error "
                f"{self.max_abs_error:.2e}, relative {self.max_rel_error:.2e} (opset {self.opset})")


def model_hash(model: MSDMModel) -> str:
    """The model file's hash, or the weights' hash for a model not saved yet."""
    if model.path is not None:
        return file_sha256(model.path)
    digest = hashlib.sha256()
    for name, tensor in sorted(model.network.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().numpy().tobytes())
    return digest.hexdigest()


def export_onnx(model: MSDMModel, out_path: str | os.PathLike, *, opset: int = OPSET) -> ExportReport:
    """Export, check with the ONNX checker, compare with PyTorch, then move into place."""
    import onnx

    out_path = Path(out_path)
    cfg = model.config
    module = PaddedDenoiser(KarrasDenoiser(model.network.cpu().eval(), cfg.diffusion.sigma_data),
                            cfg.unet.downsampling_factor).eval()
    # A batch of 1 can freeze the batch axis: export with 2.
    example = (torch.randn(2, cfg.unet.in_channels, cfg.unet.downsampling_factor * 2) * 0.1,
               torch.tensor([0.1, 1.0]))
    batch = torch.export.Dim("batch", min=1, max=4096)
    length = torch.export.Dim("length", min=1, max=2**26)
    with AtomicFile(out_path) as target:  # moved into place only once checked and compared
        tmp = str(target.by_name())
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, example, tmp, input_names=["x", "sigma"], output_names=["denoised"],
                              dynamic_shapes={"x": {0: batch, 2: length}, "sigma": {0: batch}},
                              opset_version=opset, dynamo=True, verbose=False, external_data=False)
        onnx.checker.check_model(tmp, full_check=True)
        abs_error, rel_error = _parity(module, tmp, cfg.unet.in_channels, cfg.unet.downsampling_factor)
    return ExportReport(out_path, abs_error, rel_error, opset)


def _parity(module: nn.Module, path: str, channels: int, factor: int) -> tuple[float, float]:
    """Largest difference between ONNX Runtime (CPU) and PyTorch, over a batch of 2
    at a multiple of the factor and a batch of 1 at an odd length."""
    session = _session(path, ("CPUExecutionProvider",))
    generator = torch.Generator().manual_seed(0)
    worst_abs = worst_rel = 0.0
    for batch, length in ((2, factor * 3), (1, factor * 2 + 7)):
        x = torch.randn(batch, channels, length, generator=generator) * 0.2
        sigma = torch.rand(batch, generator=generator) * 2 + 0.01
        with torch.no_grad():
            expected = module(x, sigma).numpy()
        got = session.run(None, {"x": x.numpy(), "sigma": sigma.numpy()})[0]
        error = float(np.abs(got - expected).max())
        worst_abs = max(worst_abs, error)
        worst_rel = max(worst_rel, error / max(float(np.abs(expected).max()), 1e-12))
    return worst_abs, worst_rel


def available_providers() -> list[str]:
    import onnxruntime as ort

    present = set(ort.get_available_providers())
    return [p for p in PROVIDER_ORDER if p in present]


def _session(path: str | os.PathLike, providers: Sequence[str]):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    chosen = []
    for provider in providers:
        if provider == "TensorrtExecutionProvider":
            cache = str(Path(path).with_suffix(".trt"))
            chosen.append((provider, {"trt_engine_cache_enable": True, "trt_engine_cache_path": cache,
                                      "trt_fp16_enable": True}))
        else:
            chosen.append(provider)
    return ort.InferenceSession(str(path), sess_options=options, providers=chosen)


class OnnxDenoiser:
    """A denoiser `D(x, sigma) -> x0` backed by an ONNX Runtime session."""

    def __init__(self, path: str | os.PathLike, providers: Sequence[str] | None = None) -> None:
        try:
            self.session = _session(path, providers or available_providers())
        except Exception as error:  # noqa: BLE001 - ORT raises its own exception types
            raise OnnxError(f"ONNX Runtime could not load {path}: {error}") from error
        self.path = Path(path)
        self.providers = self.session.get_providers()

    def __call__(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        sigma = as_sigma_batch(sigma, x)
        out = self.session.run(None, {"x": x.detach().cpu().float().numpy(),
                                      "sigma": sigma.detach().cpu().float().numpy()})[0]
        return torch.from_numpy(out).to(x.device)


def cached_onnx_path(model: MSDMModel) -> Path:
    """<model>.<hash>.onnx next to the model file when that folder is writable,
    else in the user's cache folder."""
    key = model_hash(model)[:16]
    if model.path is not None and os.access(model.path.parent, os.W_OK):
        return model.path.with_name(f"{model.path.stem}.{key}.onnx")
    return CACHE_DIR / f"{model.path.stem if model.path else 'model'}.{key}.onnx"


def ensure_onnx(model: MSDMModel) -> Path:
    path = cached_onnx_path(model)
    if not path.is_file():
        report = export_onnx(model, path)
        log.info("%s", report.describe())
    return path


def use_onnx(model: MSDMModel, providers: Sequence[str] | None = None) -> MSDMModel:
    """Make `model.denoiser` run on ONNX Runtime (exporting once, then from the cache)."""
    model.denoiser = OnnxDenoiser(ensure_onnx(model), providers)
    return model
