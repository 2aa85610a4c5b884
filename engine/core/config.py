"""Model configurations as data: frozen dataclasses, merged with defaults in one place.

`UNetConfig` mirrors the keyword arguments of audio-diffusion-pytorch 0.0.43's
`UNet1d` (the network of the paper's released checkpoints), so a checkpoint's
hyper-parameters map onto it field for field.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

SLAKH_STEMS = ("bass", "drums", "guitar", "piano")


@dataclass(frozen=True)
class UNetConfig:
    in_channels: int = 4
    channels: int = 256
    patch_factor: int = 16
    patch_blocks: int = 1
    multipliers: tuple[int, ...] = (1, 2, 4, 4, 4, 4, 4)
    factors: tuple[int, ...] = (4, 4, 4, 2, 2, 2)
    num_blocks: tuple[int, ...] = (2, 2, 2, 2, 2, 2)
    attentions: tuple[bool, ...] = (False, False, False, True, True, True)
    attention_heads: int = 8
    attention_features: int = 128
    attention_multiplier: int = 2
    resnet_groups: int = 8
    kernel_multiplier_downsample: int = 2
    use_nearest_upsample: bool = False
    use_skip_scale: bool = True
    use_attention_bottleneck: bool = True
    use_context_time: bool = True

    def __post_init__(self) -> None:
        layers = len(self.multipliers) - 1
        for name in ("factors", "num_blocks", "attentions"):
            if len(getattr(self, name)) != layers:
                raise ValueError(
                    f"UNetConfig.{name} needs {layers} entries (one per level, "
                    f"len(multipliers) - 1), got {len(getattr(self, name))}"
                )
        if not self.use_context_time:
            raise ValueError("a diffusion denoiser needs use_context_time=True")

    @property
    def downsampling_factor(self) -> int:
        """Input lengths must be a multiple of this (patching times all strides)."""
        return self.patch_factor**self.patch_blocks * math.prod(self.factors)


@dataclass(frozen=True)
class DiffusionConfig:
    """EDM preconditioning (Karras et al. 2022, table 1) as the paper uses it."""

    sigma_data: float = 0.2
    # Training noise distribution: sigma ~ LogNormal(mean, std) (paper: -3, 1).
    sigma_mean: float = -3.0
    sigma_std: float = 1.0


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a model from a weights file."""

    unet: UNetConfig = field(default_factory=UNetConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    stems: tuple[str, ...] = SLAKH_STEMS
    sample_rate: int = 22050
    # Length (samples) of one window the model sees at a time; long audio is
    # processed in overlapping windows of this size (paper: 262144, ~11.9 s).
    window: int = 262144

    def __post_init__(self) -> None:
        if len(self.stems) != self.unet.in_channels:
            raise ValueError(
                f"{len(self.stems)} stems {self.stems} but the network has "
                f"{self.unet.in_channels} input channels"
            )
        if len(set(self.stems)) != len(self.stems):
            raise ValueError(f"stem names must be unique, got {self.stems}")
        if self.window % self.unet.downsampling_factor:
            raise ValueError(
                f"window {self.window} is not a multiple of the network's "
                f"downsampling factor {self.unet.downsampling_factor}"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModelConfig":
        unet = _build(UNetConfig, data.get("unet", {}))
        diffusion = _build(DiffusionConfig, data.get("diffusion", {}))
        rest = {k: v for k, v in data.items() if k not in ("unet", "diffusion")}
        return _build(cls, {**rest, "unet": unet, "diffusion": diffusion})

    def with_stems(self, stems: tuple[str, ...]) -> "ModelConfig":
        unet = dataclasses.replace(self.unet, in_channels=len(stems))
        return dataclasses.replace(self, stems=tuple(stems), unet=unet)


def _build(cls, values: Mapping[str, Any]):
    """Build a frozen dataclass from a mapping, turning lists into tuples and
    refusing unknown keys (a typo in a config must not be silently ignored)."""
    if isinstance(values, cls):
        return values
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


# The paper's network (405.5M parameters), exactly as exp/train_msdm.yaml.
PAPER = ModelConfig()

# A CPU-friendly network: same architecture family, ~1/100 of the compute.
SMALL = ModelConfig(
    unet=UNetConfig(
        channels=32,
        patch_factor=4,
        patch_blocks=1,
        multipliers=(1, 2, 4, 4, 4),
        factors=(4, 4, 2, 2),
        num_blocks=(2, 2, 2, 2),
        attentions=(False, False, True, True),
        attention_heads=4,
        attention_features=32,
    ),
    window=65536,
)

# For tests: builds in milliseconds, still has every block type (patching,
# down/up-sampling, attention in a level and in the bottleneck).
TINY = ModelConfig(
    unet=UNetConfig(
        channels=16,
        patch_factor=2,
        patch_blocks=1,
        multipliers=(1, 2, 2),
        factors=(2, 2),
        num_blocks=(1, 1),
        attentions=(False, True),
        attention_heads=2,
        attention_features=8,
        resnet_groups=4,
    ),
    window=4096,
)

PRESETS: dict[str, ModelConfig] = {"paper": PAPER, "small": SMALL, "tiny": TINY}


def preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown configuration {name!r}; choose one of {sorted(PRESETS)}") from None
