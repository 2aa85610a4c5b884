"""Model configurations as data: frozen dataclasses, merged with defaults in one place.

`UNetConfig` mirrors the keyword arguments of audio-diffusion-pytorch 0.0.43's
`UNet1d` (the network of the paper's released checkpoints), so a checkpoint's
hyper-parameters map onto it field for field.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from engine.errors import UserError

SLAKH_STEMS = ("bass", "drums", "guitar", "piano")

# A stem name becomes a file name (<stem>.wav) in the user's folders: a plain
# word, no separators, no dots, and not a name the tools write themselves.
STEM_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,31}")
RESERVED_STEM_NAMES = {"mix", "mixture", "manifest"}
# The paper's network is channels 256 x multiplier 4; the bound keeps a
# hostile file from making `msdm info` build a network of many GB.
MAX_WIDTH = 2048


class ConfigError(UserError, ValueError):
    """A model configuration that is malformed or out of the supported range."""


def _check_int(owner: str, name: str, value: Any, low: int, high: int) -> None:
    if type(value) is not int or not low <= value <= high:
        raise ConfigError(f"{owner}.{name} must be a whole number from {low} to {high}, got {value!r}")


def _check_real(owner: str, name: str, value: Any, low: float, high: float) -> None:
    if type(value) not in (int, float) or not low <= value <= high:
        raise ConfigError(f"{owner}.{name} must be a number from {low} to {high}, got {value!r}")


def _check_flag(owner: str, name: str, value: Any) -> None:
    if type(value) is not bool:
        raise ConfigError(f"{owner}.{name} must be true or false, got {value!r}")


def _check_ints(owner: str, name: str, values: Any, low: int, high: int) -> None:
    if not isinstance(values, tuple) or not values:
        raise ConfigError(f"{owner}.{name} must be a non-empty list, got {values!r}")
    for value in values:
        _check_int(owner, name, value, low, high)


def check_stem_names(stems: Any) -> None:
    """Stem names that are safe as file names and distinct, also on a
    case-insensitive file system."""
    if not isinstance(stems, tuple) or not 1 <= len(stems) <= 16:
        raise ConfigError(f"stems must be a list of 1 to 16 names, got {stems!r}")
    for stem in stems:
        if not isinstance(stem, str) or not STEM_NAME.fullmatch(stem) or stem.lower() in RESERVED_STEM_NAMES:
            raise ConfigError(f"stem name {stem!r} is not allowed: use a plain word (letters, digits, _ or -, "
                              f"starting with a letter, at most 32), not {', '.join(sorted(RESERVED_STEM_NAMES))}")
    if len({stem.lower() for stem in stems}) != len(stems):
        raise ConfigError(f"stem names must be unique (ignoring case), got {stems}")


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
        own = "UNetConfig"
        for name, low, high in (("in_channels", 1, 16), ("channels", 1, 512), ("patch_factor", 1, 64),
                                ("patch_blocks", 1, 4), ("attention_heads", 1, 64), ("attention_features", 1, 1024),
                                ("attention_multiplier", 1, 8), ("resnet_groups", 1, 64),
                                ("kernel_multiplier_downsample", 1, 8)):
            _check_int(own, name, getattr(self, name), low, high)
        _check_ints(own, "multipliers", self.multipliers, 1, 16)
        if not 2 <= len(self.multipliers) <= 10:
            raise ConfigError(f"{own}.multipliers needs 2 to 10 entries, got {len(self.multipliers)}")
        _check_ints(own, "factors", self.factors, 1, 16)
        _check_ints(own, "num_blocks", self.num_blocks, 1, 8)
        if not isinstance(self.attentions, tuple):
            raise ConfigError(f"{own}.attentions must be a list, got {self.attentions!r}")
        for flag in self.attentions:
            _check_flag(own, "attentions", flag)
        for name in ("use_nearest_upsample", "use_skip_scale", "use_attention_bottleneck", "use_context_time"):
            _check_flag(own, name, getattr(self, name))
        if self.channels * max(self.multipliers) > MAX_WIDTH:
            raise ConfigError(f"{own}: channels x the largest multiplier is {self.channels * max(self.multipliers)}, "
                              f"more than the supported {MAX_WIDTH} (the paper's network: 1024)")
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

    def __post_init__(self) -> None:
        _check_real("DiffusionConfig", "sigma_data", self.sigma_data, 1e-6, 10.0)
        _check_real("DiffusionConfig", "sigma_mean", self.sigma_mean, -20.0, 20.0)
        _check_real("DiffusionConfig", "sigma_std", self.sigma_std, 1e-6, 10.0)


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
        if not isinstance(self.unet, UNetConfig) or not isinstance(self.diffusion, DiffusionConfig):
            raise ConfigError("ModelConfig needs a UNetConfig and a DiffusionConfig")
        check_stem_names(self.stems)
        _check_int("ModelConfig", "sample_rate", self.sample_rate, 1000, 384000)
        _check_int("ModelConfig", "window", self.window, 1, 1 << 24)
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
        """Validated: every field's type and range is checked before any network is built."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"a model config must be an object of fields, got {type(data).__name__}")
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
    if not isinstance(values, Mapping):
        raise ConfigError(f"{cls.__name__} must be an object of fields, got {type(values).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} fields: {sorted(map(str, unknown))}")
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
