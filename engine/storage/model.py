"""A model on disk and in memory: one safetensors file with its config embedded.

The file holds the U-Net's state dict (names as in audio-diffusion-pytorch's
`UNet1d`) and, in the safetensors metadata, the `ModelConfig` as JSON plus
where the weights came from. Loading never executes code (safetensors only).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from engine.atomic import write_atomic
from engine.core.config import ModelConfig
from engine.core.diffusion import KarrasDenoiser, StackedDenoiser
from engine.core.network import UNet1d, count_parameters
from engine.errors import ModelFileError

FORMAT = "msdm-studio/1"


@dataclass
class MSDMModel:
    config: ModelConfig
    network: UNet1d
    source: str = "random initialisation"
    path: Path | None = None
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.network.eval()
        self.denoiser = KarrasDenoiser(self.network, self.config.diffusion.sigma_data)

    @classmethod
    def build(cls, config: ModelConfig, seed: int = 0) -> "MSDMModel":
        """A model with random weights (tests, benchmarks, the start of training)."""
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            network = UNet1d(config.unet)
        return cls(config, network, source=f"random initialisation (seed {seed})")

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> "MSDMModel":
        path = Path(path)
        if not path.is_file():
            raise ModelFileError(f"model file not found: {path}")
        try:
            tensors = load_file(str(path), device=str(device))
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                metadata = dict(handle.metadata() or {})
        except (SafetensorError, OSError, ValueError) as error:
            raise ModelFileError(
                f"{path} is not a safetensors model file ({error}); a paper .ckpt must "
                f"first be converted with `msdm import-checkpoint {path.name} -o model.safetensors`"
            ) from error
        if metadata.get("format") != FORMAT or "config" not in metadata:
            raise ModelFileError(f"{path} has no MSDM Studio config in its metadata (format {metadata.get('format')!r})")
        config = ModelConfig.from_dict(json.loads(metadata["config"]))
        network = UNet1d(config.unet)
        try:
            network.load_state_dict(tensors, strict=True)
        except RuntimeError as error:
            raise ModelFileError(f"{path}: weights do not match its config: {error}") from error
        network.to(device)
        return cls(config, network, source=metadata.get("source", str(path)), path=path, metadata=metadata)

    def save(self, path: str | os.PathLike, source: str | None = None) -> Path:
        """Write atomically (engine.atomic): a crash never leaves half a model."""
        metadata = {
            "format": FORMAT,
            "config": json.dumps(self.config.to_dict()),
            "source": source or self.source,
        }
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.network.state_dict().items()}
        return write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))

    @property
    def stems(self) -> tuple[str, ...]:
        return self.config.stems

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def num_parameters(self) -> int:
        return count_parameters(self.network)

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    def to(self, device: str | torch.device) -> "MSDMModel":
        self.network.to(device)
        return self

    def file_hash(self) -> str:
        return file_sha256(self.path) if self.path else "unsaved"


@dataclass
class ModelSet:
    """What a task runs on: one joint MSDM model, or one single-stem model per
    stem (ISDM, separation only). Presents one denoiser over all stems."""

    models: list[MSDMModel]

    def __post_init__(self) -> None:
        if not self.models:
            raise ModelFileError("no model given")
        if len(self.models) > 1:
            stems = [m.stems for m in self.models]
            if any(len(s) != 1 for s in stems):
                raise ModelFileError("several models form an ISDM set only if each has one stem; got stems " + str(stems))
            names = [s[0] for s in stems]
            if len(set(names)) != len(names):
                raise ModelFileError(f"ISDM models must be for different stems, got {names}")
            rates = {m.sample_rate for m in self.models}
            if len(rates) != 1:
                raise ModelFileError(f"ISDM models must share a sample rate, got {sorted(rates)}")

    @property
    def is_isdm(self) -> bool:
        return len(self.models) > 1

    @property
    def stems(self) -> tuple[str, ...]:
        return tuple(s for m in self.models for s in m.stems)

    @property
    def sample_rate(self) -> int:
        return self.models[0].sample_rate

    @property
    def window(self) -> int:
        return min(m.config.window for m in self.models)

    @property
    def denoiser(self):
        if not self.is_isdm:
            return self.models[0].denoiser
        return StackedDenoiser([m.denoiser for m in self.models])

    @property
    def device(self) -> torch.device:
        return self.models[0].device

    @property
    def num_parameters(self) -> int:
        return sum(m.num_parameters for m in self.models)

    def describe(self) -> str:
        return " + ".join(str(m.path or m.source) for m in self.models)

    def file_hash(self) -> str:
        return "+".join(m.file_hash()[:16] for m in self.models)


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
