"""A stem autoencoder whose latents a diffusion prior can learn on 2 CPU cores.

MSLDM (Xu et al. 2024) and MSG-LD (Karchkhadze et al. 2025) move multi-source
diffusion from waveforms into per-stem latents. A waveform autoencoder learns
too slowly here (docs/models.md: a plain conv autoencoder learned almost
nothing in 25 CPU-minutes), so the front end is fixed and only the compression
is learned, as MSG-LD does with mel spectrograms:

    waveform --STFT (hop 256)--> log magnitude [F bins, K frames]
             --1x1 conv + residual dilated convs over time--> latent [C, K]

The latent has K = T / hop frames (256x fewer than samples: ~86 per second at
22050 Hz) and C channels (64: 64 x 86 = 5.5k numbers a second, MSLDM's rate of
80 x 69). The decoder mirrors the encoder back to a log magnitude, and the
waveform comes from that magnitude by the fast Griffin-Lim algorithm
(Perraudin, Balazs & Søndergaard 2013: Griffin-Lim with momentum), which needs
no training, or, for the stems the config names (the pitched ones), with the
phase a phase-locked vocoder builds from its peaks (engine.core.phase). Phase
is not modelled, so a reconstruction is not the input sample for sample
(SI-SNR is low by construction); what it keeps is pitch, onsets and spectral
envelope, which is what the prior must learn.

Latents pass through tanh, so they are bounded in (-1, 1): the diffusion
prior's sigma_data is measured on them (training.train_autoencoder).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from engine.core.phase import locked_phase


@dataclass(frozen=True)
class AutoencoderConfig:
    n_fft: int = 1024
    hop: int = 256
    latent_channels: int = 64
    hidden: int = 256
    blocks: int = 4                  # residual blocks in the encoder and in the decoder
    kernel: int = 3
    # log(|X| + floor): -60 dB under a stem at -20 dBFS; quieter detail is not kept.
    magnitude_floor: float = 1e-3
    griffin_lim_iterations: int = 48
    griffin_lim_momentum: float = 0.99
    # Stems (by name) whose waveform takes the phase-locked vocoder's phase
    # (engine.core.phase) with no Griffin-Lim iterations: the pitched ones,
    # whose decoded partials Griffin-Lim turns less periodic (measured:
    # docs/models.md). The others: Griffin-Lim from random phase.
    locked_phase_stems: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        checks = {
            "n_fft": 64 <= self.n_fft <= 8192 and self.n_fft % 2 == 0,
            "hop": 16 <= self.hop <= self.n_fft,
            "latent_channels": 1 <= self.latent_channels <= 512,
            "hidden": 8 <= self.hidden <= 2048,
            "blocks": 0 <= self.blocks <= 16,
            "kernel": 1 <= self.kernel <= 15 and self.kernel % 2 == 1,
            "magnitude_floor": 0 < self.magnitude_floor < 1,
            "griffin_lim_iterations": 1 <= self.griffin_lim_iterations <= 1000,
            "griffin_lim_momentum": 0 <= self.griffin_lim_momentum < 1.2,
            "locked_phase_stems": isinstance(self.locked_phase_stems, tuple)
            and all(isinstance(name, str) and name for name in self.locked_phase_stems)
            and len(set(self.locked_phase_stems)) == len(self.locked_phase_stems),
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError("autoencoder config out of range: "
                             + ", ".join(f"{n}={getattr(self, n)!r}" for n in bad))

    @property
    def bins(self) -> int:
        return self.n_fft // 2 + 1

    def frames(self, samples: int) -> int:
        """Latent frames of a waveform of `samples` (centred STFT)."""
        return samples // self.hop + 1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "AutoencoderConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown AutoencoderConfig fields: {sorted(unknown)}")
        data = dict(data)
        if isinstance(data.get("locked_phase_stems"), list):  # JSON has no tuples
            data["locked_phase_stems"] = tuple(data["locked_phase_stems"])
        return cls(**data)


class ResidualBlock(nn.Module):
    """x + conv(GELU(norm(x))), dilated so a few blocks see ~0.3 s of context."""

    def __init__(self, channels: int, kernel: int, dilation: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(1, channels)
        self.conv1 = nn.Conv1d(channels, channels, kernel, padding=dilation * (kernel // 2), dilation=dilation)
        self.conv2 = nn.Conv1d(channels, channels, 1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(torch.nn.functional.gelu(self.conv1(torch.nn.functional.gelu(self.norm(x)))))


def _stack(channels: int, blocks: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(*(ResidualBlock(channels, kernel, 2 ** (i % 3)) for i in range(blocks)))


class StemAutoencoder(nn.Module):
    """waveform [B, T] <-> latent [B, C, T // hop + 1]; one network for every stem."""

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        self.config = config
        f, h, c = config.bins, config.hidden, config.latent_channels
        # Per-bin affine of the log magnitude, set from data (fit_input_scaling).
        self.input_mean = nn.Parameter(torch.zeros(f, 1))
        self.input_scale = nn.Parameter(torch.ones(f, 1))
        # Linear in, residual blocks (identity at initialisation: their last
        # conv starts at zero), linear out: at initialisation the whole
        # autoencoder is linear, so it can start from principal components
        # (init_from_principal_components) and learn only what PCA misses.
        self.encoder = nn.Sequential(nn.Conv1d(f, h, 1), _stack(h, config.blocks, config.kernel), nn.Conv1d(h, c, 1))
        self.decoder = nn.Sequential(nn.Conv1d(c, h, 1), _stack(h, config.blocks, config.kernel), nn.Conv1d(h, f, 1))
        self.register_buffer("window", torch.hann_window(config.n_fft), persistent=False)

    # -- the fixed front end -------------------------------------------------
    def stft(self, x: Tensor) -> Tensor:
        return torch.stft(x, self.config.n_fft, self.config.hop, window=self.window, center=True,
                          pad_mode="constant", return_complex=True)

    def log_magnitude(self, x: Tensor) -> Tensor:
        """[B, T] -> [B, F, K]."""
        return torch.log(self.stft(x).abs() + self.config.magnitude_floor)

    # -- the learned compression ---------------------------------------------
    def encode_log_magnitude(self, log_mag: Tensor) -> Tensor:
        return torch.tanh(self.encoder((log_mag - self.input_mean) * self.input_scale))

    def decode_log_magnitude(self, latent: Tensor) -> Tensor:
        """[B, C, K] -> [B, F, K]: back in the front end's units (log(|X| + floor))."""
        return self.decoder(latent) / self.input_scale + self.input_mean

    def encode(self, waveform: Tensor) -> Tensor:
        return self.encode_log_magnitude(self.log_magnitude(waveform))

    def decode_magnitude(self, latent: Tensor) -> Tensor:
        """[B, C, K] -> the STFT magnitude [B, F, K] the decoder gives."""
        return (self.decode_log_magnitude(latent).exp() - self.config.magnitude_floor).clamp_min(0.0)

    def decode(self, latent: Tensor, length: int, generator: torch.Generator | None = None,
               locked: bool = False) -> Tensor:
        """[B, C, K] -> waveform [B, length]: fast Griffin-Lim on the decoded
        magnitude, or with `locked`, the phase-locked vocoder's phase alone."""
        return magnitude_to_waveform(self.decode_magnitude(latent), self.config, self.window, length, generator,
                                     locked)

    @torch.no_grad()
    def fit_input_scaling(self, waveforms: Tensor) -> None:
        """Zero mean, unit variance per bin over example stems [B, T]."""
        log_mag = self.log_magnitude(waveforms).transpose(0, 1).reshape(self.config.bins, -1)
        self.input_mean.copy_(log_mag.mean(1, keepdim=True))
        self.input_scale.copy_(1.0 / log_mag.std(1, keepdim=True).clamp_min(1e-3))

    @torch.no_grad()
    def init_from_principal_components(self, waveforms: Tensor, spread: float = 2.5) -> None:
        """Start as PCA of the normalised log magnitude (after fit_input_scaling):
        the first linear layers project on the leading `hidden` components, the
        latent keeps the first C of them, scaled so `spread` standard deviations
        fall in tanh's near-linear range, and the decoder maps them back. At
        this start the reconstruction is PCA's; training only has to learn
        what a linear projection misses (measured: docs/models.md)."""
        f, h, c = self.config.bins, self.config.hidden, self.config.latent_channels
        frames = ((self.log_magnitude(waveforms) - self.input_mean) * self.input_scale).transpose(1, 2).reshape(-1, f)
        _, singular, basis = torch.linalg.svd(frames.double(), full_matrices=False)
        components = basis[:min(h, f)].float()                       # [h', F]
        std = (singular[:c] / math.sqrt(frames.shape[0])).float().clamp_min(1e-3)
        first_in, last_in = self.encoder[0], self.encoder[-1]
        first_out, last_out = self.decoder[0], self.decoder[-1]
        for layer in (first_in, last_in, first_out, last_out):
            layer.weight.zero_()
            layer.bias.zero_()
        first_in.weight[:components.shape[0], :, 0] = components
        last_in.weight[:, :c, 0] = torch.diag(1.0 / (spread * std))
        first_out.weight[:c, :, 0] = torch.diag(spread * std)
        last_out.weight[:, :components.shape[0], 0] = components.T


def magnitude_to_waveform(magnitude: Tensor, config: AutoencoderConfig, window: Tensor, length: int,
                          generator: torch.Generator | None = None, locked: bool = False) -> Tensor:
    """[B, F, K] magnitude -> [B, length]: with `locked`, the inverse STFT
    with the phase-locked vocoder's phase (engine.core.phase; no iterations,
    no randomness), else fast Griffin-Lim from random phase."""
    if locked:
        phase = locked_phase(magnitude, config.n_fft, config.hop)
        return griffin_lim(magnitude, config, window, length, phase=phase, iterations=0)
    return griffin_lim(magnitude, config, window, length, generator)


def griffin_lim(magnitude: Tensor, config: AutoencoderConfig, window: Tensor, length: int,
                generator: torch.Generator | None = None, phase: Tensor | None = None,
                iterations: int | None = None) -> Tensor:
    """Fast Griffin-Lim (Perraudin et al. 2013): alternate projections between
    "has this magnitude" and "is the STFT of a signal", with momentum on the
    consistent estimate. Starts from `phase`, or from random phase drawn from
    `generator`, so a seed gives the same audio; `iterations` (default the
    config's) 0 is the inverse STFT of the start."""
    if phase is None:
        phase = torch.rand(magnitude.shape, generator=generator, dtype=magnitude.dtype) * (2 * math.pi)
    spec = torch.polar(magnitude, phase.to(magnitude.device))
    previous = torch.zeros_like(spec)
    alpha = config.griffin_lim_momentum
    for _ in range(config.griffin_lim_iterations if iterations is None else iterations):
        signal = torch.istft(spec, config.n_fft, config.hop, window=window, center=True, length=length)
        consistent = torch.stft(signal, config.n_fft, config.hop, window=window, center=True,
                                pad_mode="constant", return_complex=True)
        accelerated = consistent + alpha * (consistent - previous)
        previous = consistent
        # magnitude * exp(i angle): written as a division, 5x faster than angle/exp on CPU.
        spec = magnitude * accelerated / (accelerated.abs() + 1e-12)
    return torch.istft(spec, config.n_fft, config.hop, window=window, center=True, length=length)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
