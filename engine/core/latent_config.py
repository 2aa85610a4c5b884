"""The latent prior's configuration: its network's shape, its diffusion space
(sigma_data, the latents' per-channel statistics) and how the file samples it
(sampling scales, level maps, autoguidance, span projection). Kept apart from
the network (engine.core.latent_prior) so the sampling knobs can grow without
the model's module growing with them."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

from engine.core.band_levels import check_band_maps, split_band_maps
from engine.core.frame_levels import check_stem_maps, split_stem_maps


@dataclass(frozen=True)
class LatentPriorConfig:
    stems: int = 4
    latent_channels: int = 64
    channels: int = 128
    multipliers: tuple[int, ...] = (1, 2)
    blocks: int = 2                   # residual blocks per level
    patch: int = 2                    # latent frames merged into one by the input layer
    attention_heads: int = 4          # at the coarsest level (0: none)
    sigma_data: float = 0.5
    # Training noise law, sigma ~ LogNormal(mean, std) (EDM: -1.2, 1.2).
    sigma_mean: float = -1.2
    sigma_std: float = 1.2
    # Per stacked channel (stem x latent channel), the latents' mean and std
    # on the training set: the diffusion runs on (z - shift) / scale, so every
    # channel has unit variance (empty: identity). Without it the channels of
    # small variance (the autoencoder's trailing principal components) are
    # drowned in the sampler's noise and come out 2-4x too wide, which
    # decodes to spectra tens of dB too loud (docs/models.md, latent prior v2).
    latent_shift: tuple[float, ...] = ()
    latent_scale: tuple[float, ...] = ()
    # Sampling temperature: the sampled (standardised) latents are multiplied
    # by this before decoding. A prior trained on a CPU for hours leaves its
    # samples 12-25 % wider than the data in every channel, and the decoder's
    # exp() turns that into stems 6-14 dB too loud (docs/models.md);
    # training.calibrate_latent_prior sets it on the VALID split so the
    # generated stems' level matches real ones (1.0: no calibration; Glow,
    # Kingma & Dhariwal 2018, samples at temperature 0.7 for the same reason).
    sample_scale: float = 1.0
    # Per stem, the given stems' chroma per latent frame as a condition
    # (engine.core.harmony.stem_chroma; 0: none, as the priors before v7).
    harmony_channels: int = 0
    # The autoguidance weight w chosen on VALID for the guide packed beside
    # this prior in a model file (AutoGuided; 1: none): what sampling uses
    # unless a request names another.
    autoguidance: float = 1.0
    # The sampling scale (as sample_scale) when sampling autoguided: the guide
    # moves the samples' spread, so the level is calibrated again with it
    # (training.calibrate_latent_prior; 0: sample_scale).
    autoguidance_scale: float = 0.0
    # Per stem, the autoguided sampling scale (empty: autoguidance_scale for
    # every stem). Autoguidance widens some stems' samples more than others
    # (v4 with v2a, w 2.5, span projection: at one scale the piano came out
    # +6 dB and the drums -3.5 dB against real), and the scale acts after
    # sampling, on each stem's latents alone, so each stem's level is
    # calibrated on its own (training.calibrate_latent_prior --per-stem).
    autoguidance_stem_scales: tuple[float, ...] = ()
    # Per stem, the unguided sampling scale (empty: sample_scale for every
    # stem), chosen on VALID by the realism measures, not by loudness
    # (training.choose_sample_scales): a wider scale gives the decoded
    # spectra their contrast and, without sample_level_in/out, exaggerates
    # the dynamics (docs/models.md, 2026-12-06 and 2026-12-07).
    sample_stem_scales: tuple[float, ...] = ()
    # Per stem, a gain on the decoded audio that goes with sample_stem_scales
    # (empty: none): a wider scale also makes the loud parts louder (at the
    # scales chosen on VALID +6 to +14 dB RMS against real stems), so the level is
    # matched again after decoding, where a gain changes nothing but the
    # level (training.choose_sample_scales measures it as calibrate_latent_prior does).
    sample_stem_gains: tuple[float, ...] = ()
    # Per stem, a map of decoded frame levels, flattened stem after stem (Q
    # points in, Q out, dB; empty: none): real stems' level distribution for
    # the frames of the wider sample_stem_scales (engine.core.frame_levels,
    # training.calibrate_frame_levels). Unguided sampling only.
    sample_level_in: tuple[float, ...] = ()
    sample_level_out: tuple[float, ...] = ()
    # Per stem and band, a map of decoded band levels after the frame-level
    # map (engine.core.band_levels; sample_bands log-spaced bands of the
    # autoencoder's STFT, flattened stem after stem, band after band, the
    # same number of points each; identity maps leave a stem alone; empty:
    # none): real stems' spectral dynamics for the frames the prior blurs
    # (training.calibrate_band_levels --stems). Unguided sampling only.
    sample_bands: int = 0
    sample_band_in: tuple[float, ...] = ()
    sample_band_out: tuple[float, ...] = ()
    # Sample with the denoiser's estimate set to the data mean (0) outside the
    # span of its output layer (SpanProjected): the U-Net writes each patch of
    # `patch` frames x N x C numbers from `channels` features, so in the rest
    # of the patch space D = c_skip x and the probability-flow ODE leaves
    # unit-variance white noise there (docs/models.md, fourth session of
    # 2026-12-06). False: as the files before it.
    span_projection: bool = False
    # A full-rank output head (0: none, as the priors before it): per latent
    # frame, the U-Net's last features beside the noisy input -> 1x1 conv ->
    # depthwise conv over 5 frames -> 1x1 conv to every stacked channel, added
    # to the patch output. With head_channels >= stems x latent_channels the
    # network can write every direction of a patch, which stem_out alone
    # cannot (SpanProjected's docstring); it starts at zero, so a prior
    # trained without it loads unchanged.
    head_channels: int = 0

    def scale_for(self, autoguidance: float | None) -> float:
        """The sampling scale for an autoguidance weight (1 or None: unguided)."""
        guided = autoguidance not in (None, 1.0) and self.autoguidance_scale
        return self.autoguidance_scale if guided else self.sample_scale

    def stem_scales_for(self, autoguidance: float | None) -> tuple[float, ...]:
        """Each stem's sampling scale for an autoguidance weight: the per-stem
        ones of that mode (autoguided or unguided) where chosen, else
        scale_for's for every stem."""
        if autoguidance not in (None, 1.0):
            if self.autoguidance_stem_scales:
                return self.autoguidance_stem_scales
        elif self.sample_stem_scales:
            return self.sample_stem_scales
        return (self.scale_for(autoguidance),) * self.stems

    def stem_gains_for(self, autoguidance: float | None) -> tuple[float, ...]:
        """Each stem's gain on its decoded audio: sample_stem_gains when
        sampling unguided with them, else 1 for every stem."""
        if autoguidance in (None, 1.0) and self.sample_stem_gains:
            return self.sample_stem_gains
        return (1.0,) * self.stems

    def stem_levels_for(self, autoguidance: float | None) -> list[tuple[tuple[float, ...], tuple[float, ...]]] | None:
        """Each stem's frame-level map (points in, points out) when sampling
        unguided with one, else None."""
        if autoguidance not in (None, 1.0) or not self.sample_level_in:
            return None
        return split_stem_maps(self.sample_level_in, self.sample_level_out, self.stems)

    def stem_band_maps_for(self, autoguidance: float | None) -> list | None:
        """Per stem its band maps (None: left alone) when sampling unguided
        with band maps, else None."""
        if autoguidance not in (None, 1.0) or not self.sample_band_in:
            return None
        return split_band_maps(self.sample_band_in, self.sample_band_out, self.stems, self.sample_bands)

    def __post_init__(self) -> None:
        checks = {
            "stems": 1 <= self.stems <= 16,
            "latent_channels": 1 <= self.latent_channels <= 512,
            "channels": 8 <= self.channels <= 1024 and self.channels % 8 == 0,
            "multipliers": isinstance(self.multipliers, tuple) and 1 <= len(self.multipliers) <= 6
                           and all(type(m) is int and 1 <= m <= 8 for m in self.multipliers),
            "blocks": 1 <= self.blocks <= 8,
            "patch": 1 <= self.patch <= 8,
            "attention_heads": 0 <= self.attention_heads <= 16,
            "sigma_data": 1e-3 <= self.sigma_data <= 10,
            "sigma_mean": -10 <= self.sigma_mean <= 10,
            "sigma_std": 1e-3 <= self.sigma_std <= 10,
            "latent_shift": len(self.latent_shift) in (0, self.width)
                            and all(math.isfinite(v) and abs(v) <= 10 for v in self.latent_shift),
            "sample_scale": 0.1 <= self.sample_scale <= 2.0,
            "harmony_channels": self.harmony_channels in (0, 12),
            "autoguidance": 0.0 <= self.autoguidance <= 10.0,
            "autoguidance_scale": self.autoguidance_scale == 0.0 or 0.1 <= self.autoguidance_scale <= 2.0,
            "span_projection": isinstance(self.span_projection, bool),
            "head_channels": 0 <= self.head_channels <= 2048,
            "autoguidance_stem_scales": len(self.autoguidance_stem_scales) in (0, self.stems)
                                        and all(0.1 <= v <= 2.0 for v in self.autoguidance_stem_scales),
            "sample_stem_scales": len(self.sample_stem_scales) in (0, self.stems)
                                  and all(0.1 <= v <= 2.0 for v in self.sample_stem_scales),
            "sample_stem_gains": len(self.sample_stem_gains) in (0, len(self.sample_stem_scales))
                                 and all(0.01 <= v <= 10.0 for v in self.sample_stem_gains),
            "latent_scale": len(self.latent_scale) == len(self.latent_shift)
                            and all(math.isfinite(v) and 1e-4 <= v <= 10 for v in self.latent_scale),
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError("latent prior config out of range: "
                             + ", ".join(f"{n}={getattr(self, n)!r}" for n in bad))
        level_problem = check_stem_maps(self.sample_level_in, self.sample_level_out, self.stems)
        if level_problem:
            raise ValueError(f"latent prior config: sample_level_in/out: {level_problem}")
        band_problem = check_band_maps(self.sample_band_in, self.sample_band_out, self.stems, self.sample_bands)
        if not band_problem and not 0 <= self.sample_bands <= 64:
            band_problem = "bands from 0 to 64"
        if not band_problem and self.sample_bands and not self.sample_band_in:
            band_problem = "sample_bands given without band maps"
        if band_problem:
            raise ValueError(f"latent prior config: sample_bands/sample_band_in/out: {band_problem}")
        if self.attention_heads and (self.channels * self.multipliers[-1]) % self.attention_heads:
            raise ValueError("latent prior config: the coarsest width must be a multiple of attention_heads")

    @property
    def width(self) -> int:
        """Channels of the stacked latent: stems x latent channels."""
        return self.stems * self.latent_channels

    @property
    def downsampling_factor(self) -> int:
        """Latent lengths must be a multiple of this."""
        return self.patch * 2 ** (len(self.multipliers) - 1)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "LatentPriorConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown LatentPriorConfig fields: {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    def with_latent_statistics(self, shift, scale) -> "LatentPriorConfig":
        return dataclasses.replace(self, latent_shift=tuple(round(float(v), 5) for v in shift),
                                   latent_scale=tuple(round(float(v), 5) for v in scale))
