"""A model on disk and in memory: one safetensors file with its config embedded.

The file holds the U-Net's state dict (names as in audio-diffusion-pytorch's
`UNet1d`) and, in the safetensors metadata, the `ModelConfig` as JSON plus
where the weights came from. Optionally it also holds a first-guess separator
(engine.separator, tensors under `separator.`, its config as
`separator_config`) and a latent prior: a stem autoencoder
(`autoencoder.`, `autoencoder_config`) with a multi-source latent diffusion
model over its latents (`latent_prior.`, `latent_prior_config`), which
generation and imputation use when present, and optionally a weaker latent
model in the same diffusion space that guides it (autoguidance;
`latent_guide.`, `latent_guide_config`). One file carries everything the
three tasks need. Loading never executes code (safetensors only).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from engine.atomic import write_atomic
from engine.core.autoencoder import AutoencoderConfig, StemAutoencoder
from engine.core.config import ModelConfig
from engine.core.diffusion import KarrasDenoiser, StackedDenoiser
from engine.core.latent_prior import LatentDenoiser, LatentPriorConfig, LatentUNet, same_space
from engine.core.network import UNet1d, count_parameters
from engine.core.separator import MaskSeparator, SeparatorConfig
from engine.errors import ModelFileError

FORMAT = "msdm-studio/1"
SEPARATOR_PREFIX = "separator."
AUTOENCODER_PREFIX = "autoencoder."
LATENT_PRIOR_PREFIX = "latent_prior."
LATENT_GUIDE_PREFIX = "latent_guide."


LATENT_STORAGE = {"float32": torch.float32, "float16": torch.float16}


@dataclass
class MSDMModel:
    config: ModelConfig
    network: UNet1d
    source: str = "random initialisation"
    path: Path | None = None
    metadata: dict = field(default_factory=dict)
    separator: MaskSeparator | None = None
    autoencoder: StemAutoencoder | None = None
    latent_prior: LatentDenoiser | None = None
    # The autoguidance guide (engine.core.latent_prior.AutoGuided): a weaker
    # latent model in the latent prior's diffusion space; None: none.
    latent_guide: LatentDenoiser | None = None
    # How save() stores the autoencoder's and latent model's tensors: "float16"
    # halves the shipped file (both compute in float32 once loaded); load()
    # keeps what the file had, so a model loaded and saved again stays as small.
    latent_storage: str = "float32"

    def __post_init__(self) -> None:
        if self.latent_storage not in LATENT_STORAGE:
            raise ModelFileError(f"latent_storage must be one of {sorted(LATENT_STORAGE)}, got {self.latent_storage!r}")
        self.network.eval()
        check_latent_parts(self.autoencoder, self.latent_prior, len(self.config.stems), self.latent_guide)
        if self.autoencoder is not None:
            unknown = set(self.autoencoder.config.locked_phase_stems) - set(self.config.stems)
            if unknown:
                raise ModelFileError(f"the autoencoder locks the phase of stems {sorted(unknown)}, "
                                     f"which the model does not have (its stems: {', '.join(self.config.stems)})")
        for part in (self.autoencoder, self.latent_prior, self.latent_guide):
            if part is not None:
                part.eval()
        if self.separator is not None:
            if self.separator.config.stems != len(self.config.stems):
                raise ModelFileError(f"the first-guess separator has {self.separator.config.stems} stems, "
                                     f"the model {len(self.config.stems)}")
            self.separator.eval()
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
            # The header first (metadata only): the config is checked before any
            # tensor is read or any network is built.
            with safe_open(str(path), framework="pt") as handle:
                metadata = dict(handle.metadata() or {})
        except (SafetensorError, OSError, ValueError) as error:
            raise ModelFileError(
                f"{path} is not a safetensors model file ({error}); a paper .ckpt must "
                f"first be converted with `msdm import-checkpoint {path.name} -o model.safetensors`"
            ) from error
        if metadata.get("format") != FORMAT or "config" not in metadata:
            raise ModelFileError(f"{path} has no MSDM Studio config in its metadata (format {metadata.get('format')!r})")
        try:
            config = ModelConfig.from_dict(json.loads(metadata["config"]))
            separator_config = (SeparatorConfig.from_dict(json.loads(metadata["separator_config"]))
                                if "separator_config" in metadata else None)
        except (ValueError, TypeError) as error:  # ConfigError, bad JSON, a field of the wrong kind
            raise ModelFileError(f"{path}: its config cannot be used: {error}") from error
        try:
            autoencoder_config = (AutoencoderConfig.from_dict(json.loads(metadata["autoencoder_config"]))
                                  if "autoencoder_config" in metadata else None)
            latent_config = (LatentPriorConfig.from_dict(json.loads(metadata["latent_prior_config"]))
                             if "latent_prior_config" in metadata else None)
            guide_config = (LatentPriorConfig.from_dict(json.loads(metadata["latent_guide_config"]))
                            if "latent_guide_config" in metadata else None)
        except (ValueError, TypeError) as error:
            raise ModelFileError(f"{path}: its latent prior's config cannot be used: {error}") from error
        if (autoencoder_config is None) != (latent_config is None):
            raise ModelFileError(f"{path}: a latent prior needs both an autoencoder and a latent diffusion model; "
                                 f"this file has only the {'autoencoder' if latent_config is None else 'latent model'}")
        if latent_config is not None and (latent_config.latent_channels != autoencoder_config.latent_channels
                                          or latent_config.stems != len(config.stems)):
            raise ModelFileError(f"{path}: the latent model expects {latent_config.stems} stems x "
                                 f"{latent_config.latent_channels} latent channels, the autoencoder gives "
                                 f"{autoencoder_config.latent_channels} channels for {len(config.stems)} stems")
        if latent_config is not None and latent_config.sample_bands > autoencoder_config.bins:
            raise ModelFileError(f"{path}: the latent prior's band maps have {latent_config.sample_bands} bands, "
                                 f"more than the autoencoder's {autoencoder_config.bins} STFT bins")
        if separator_config is not None and separator_config.stems != len(config.stems):
            raise ModelFileError(f"{path}: the first-guess separator has {separator_config.stems} stems, "
                                 f"the model {len(config.stems)}")
        try:
            tensors = load_file(str(path), device=str(device))
        except (SafetensorError, OSError, ValueError) as error:
            raise ModelFileError(f"{path}: its tensors cannot be read ({error})") from error
        network = UNet1d(config.unet)
        parts = {}
        for prefix in (SEPARATOR_PREFIX, AUTOENCODER_PREFIX, LATENT_PRIOR_PREFIX, LATENT_GUIDE_PREFIX):
            parts[prefix] = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            tensors = {k: v for k, v in tensors.items() if not k.startswith(prefix)}
        separator_tensors = parts[SEPARATOR_PREFIX]
        try:
            network.load_state_dict(tensors, strict=True)
        except RuntimeError as error:
            raise ModelFileError(f"{path}: weights do not match its config: {error}") from error
        separator = None
        if separator_config is not None:
            try:
                separator = MaskSeparator(separator_config)
                separator.load_state_dict(separator_tensors, strict=True)
            except (ValueError, TypeError, RuntimeError) as error:
                raise ModelFileError(f"{path}: its first-guess separator does not match its config: {error}") from error
            separator.to(device)
        elif separator_tensors:
            raise ModelFileError(f"{path}: separator weights without a separator_config")
        autoencoder = latent_prior = latent_guide = None
        if guide_config is not None and latent_config is None:
            raise ModelFileError(f"{path}: a latent guide without the latent prior it guides")
        if parts[LATENT_GUIDE_PREFIX] and guide_config is None:
            raise ModelFileError(f"{path}: latent guide weights without their config")
        if latent_config is not None:
            try:
                autoencoder = StemAutoencoder(autoencoder_config)
                autoencoder.load_state_dict(parts[AUTOENCODER_PREFIX], strict=True)
                latent_prior = LatentDenoiser(LatentUNet(latent_config))
                latent_prior.net.load_state_dict(parts[LATENT_PRIOR_PREFIX], strict=True)
                if guide_config is not None:
                    latent_guide = LatentDenoiser(LatentUNet(guide_config))
                    latent_guide.net.load_state_dict(parts[LATENT_GUIDE_PREFIX], strict=True)
            except (ValueError, TypeError, RuntimeError) as error:
                raise ModelFileError(f"{path}: its latent prior does not match its config: {error}") from error
            autoencoder.to(device)
            latent_prior.to(device)
            if latent_guide is not None:
                latent_guide.to(device)
        elif parts[AUTOENCODER_PREFIX] or parts[LATENT_PRIOR_PREFIX]:
            raise ModelFileError(f"{path}: latent prior weights without their configs")
        network.to(device)
        stored = {str(v.dtype).removeprefix("torch.") for v in parts[LATENT_PRIOR_PREFIX].values()}
        return cls(config, network, source=metadata.get("source", str(path)), path=path, metadata=metadata,
                   separator=separator, autoencoder=autoencoder, latent_prior=latent_prior, latent_guide=latent_guide,
                   latent_storage="float16" if stored == {"float16"} else "float32")

    def save(self, path: str | os.PathLike, source: str | None = None) -> Path:
        """Write atomically (engine.atomic): a crash never leaves half a model."""
        metadata = {
            "format": FORMAT,
            "config": json.dumps(self.config.to_dict()),
            "source": source or self.source,
        }
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.network.state_dict().items()}
        if self.separator is not None:
            metadata["separator_config"] = json.dumps(self.separator.config.to_dict())
            tensors.update({SEPARATOR_PREFIX + k: v.detach().cpu().contiguous()
                            for k, v in self.separator.state_dict().items()})
        if self.latent_prior is not None:
            metadata["autoencoder_config"] = json.dumps(self.autoencoder.config.to_dict())
            metadata["latent_prior_config"] = json.dumps(self.latent_prior.config.to_dict())
            dtype = LATENT_STORAGE[self.latent_storage]

            def stored(v: torch.Tensor) -> torch.Tensor:
                v = v.detach().cpu()
                return (v.to(dtype) if v.is_floating_point() else v).contiguous()

            tensors.update({AUTOENCODER_PREFIX + k: stored(v) for k, v in self.autoencoder.state_dict().items()})
            tensors.update({LATENT_PRIOR_PREFIX + k: stored(v) for k, v in self.latent_prior.net.state_dict().items()})
            if self.latent_guide is not None:
                metadata["latent_guide_config"] = json.dumps(self.latent_guide.config.to_dict())
                tensors.update({LATENT_GUIDE_PREFIX + k: stored(v)
                                for k, v in self.latent_guide.net.state_dict().items()})
        return write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))

    @property
    def stems(self) -> tuple[str, ...]:
        return self.config.stems

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def num_parameters(self) -> int:
        """The diffusion network's parameters (the separator's: separator_parameters)."""
        return count_parameters(self.network)

    @property
    def separator_parameters(self) -> int:
        return 0 if self.separator is None else count_parameters(self.separator)

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    @property
    def latent_parameters(self) -> int:
        """The autoencoder's and the latent diffusion model's parameters (0: none)."""
        return sum(count_parameters(p) for p in (self.autoencoder, self.latent_prior, self.latent_guide)
                   if p is not None)

    def to(self, device: str | torch.device) -> "MSDMModel":
        self.network.to(device)
        for part in (self.separator, self.autoencoder, self.latent_prior, self.latent_guide):
            if part is not None:
                part.to(device)
        return self

    def file_hash(self) -> str:
        return file_sha256(self.path) if self.path else "unsaved"


def check_latent_parts(autoencoder: StemAutoencoder | None, latent_prior: LatentDenoiser | None, stems: int,
                       latent_guide: LatentDenoiser | None = None) -> None:
    """Both or neither, with matching shapes; a guide only beside a latent
    prior, in its diffusion space; a calibrated autoguidance weight only with a guide."""
    if (autoencoder is None) != (latent_prior is None):
        raise ModelFileError("a latent prior needs both an autoencoder and a latent diffusion model")
    if latent_prior is not None and (latent_prior.config.latent_channels != autoencoder.config.latent_channels
                                     or latent_prior.config.stems != stems):
        raise ModelFileError(f"the latent model expects {latent_prior.config.stems} stems x "
                             f"{latent_prior.config.latent_channels} latent channels; the autoencoder gives "
                             f"{autoencoder.config.latent_channels} for {stems} stems")
    if latent_guide is not None:
        if latent_prior is None:
            raise ModelFileError("a latent guide without the latent prior it guides")
        if (reason := same_space(latent_prior.config, latent_guide.config)) is not None:
            raise ModelFileError(f"the latent guide cannot guide the latent prior: {reason}")
    elif latent_prior is not None and latent_prior.config.autoguidance != 1.0:
        raise ModelFileError(f"the latent prior is calibrated for autoguidance {latent_prior.config.autoguidance:g} "
                             "but there is no guide beside it")


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
    def separator(self) -> MaskSeparator | None:
        """The first-guess separator (joint models only: an ISDM set has none)."""
        return None if self.is_isdm else self.models[0].separator

    @property
    def latent(self) -> MSDMModel | None:
        """The model whose latent prior generation and imputation use (None: the waveform prior)."""
        return None if self.is_isdm or self.models[0].latent_prior is None else self.models[0]

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


SEPARATOR_FORMAT = "msdm-studio/separator-1"


def load_separator(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[MaskSeparator, dict]:
    """A first-guess separator saved on its own (training.train_separator's
    `best.safetensors`) -> (separator, metadata)."""
    path = Path(path)
    try:
        tensors = load_file(str(path), device=str(device))
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
    except (SafetensorError, OSError, ValueError) as error:
        raise ModelFileError(f"{path} is not a safetensors separator file ({error})") from error
    if metadata.get("format") != SEPARATOR_FORMAT or "config" not in metadata:
        raise ModelFileError(f"{path} is not a first-guess separator file (format {metadata.get('format')!r})")
    try:
        separator = MaskSeparator(SeparatorConfig.from_dict(json.loads(metadata["config"])))
        separator.load_state_dict(tensors, strict=True)
    except (ValueError, TypeError, RuntimeError) as error:
        raise ModelFileError(f"{path}: weights do not match its config: {error}") from error
    return separator.to(device).eval(), metadata
