"""Which model a task runs on: the file(s) a user named, or the shipped model,
on PyTorch or ONNX Runtime. The one place that picks a backend, so model.py and
onnx_backend.py do not import each other."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch

from engine.errors import ModelFileError
from engine.storage.model import ModelSet, MSDMModel

DEFAULT_MODEL_PATH = Path(__file__).parent.parent / "models" / "default.safetensors"

BACKENDS = ("torch", "onnx")


def load_models(paths: Sequence[str | os.PathLike] | None, device: str | torch.device = "cpu",
                backend: str = "torch") -> ModelSet:
    """Load the model(s) a user named, or the embedded default model; with
    backend "onnx" their denoisers run on ONNX Runtime (engine.storage.onnx_backend)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; use one of {BACKENDS}")
    if not paths:
        if not DEFAULT_MODEL_PATH.is_file():
            raise ModelFileError(
                f"the default model is missing ({DEFAULT_MODEL_PATH}): reinstall MSDM Studio, or "
                "pass --model FILE.safetensors, e.g. one converted with `msdm import-checkpoint`"
            )
        paths = [DEFAULT_MODEL_PATH]
    models = [MSDMModel.load(p, device=device) for p in paths]
    if backend == "onnx":
        from engine.storage.onnx_backend import use_onnx  # onnx only when asked for

        models = [use_onnx(m) for m in models]
    return ModelSet(models)
