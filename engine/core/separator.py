"""A fast first-guess separator: one softmax mask per stem over the mix's STFT.

Log-magnitude frames of the mix -> a per-frame encoder -> a bidirectional LSTM
over time -> one mask per stem and frequency bin, a softmax across the stems
(the architecture family of Open-Unmix, Stöter et al. 2019, with the masks of
all stems predicted jointly as in mask-inference separators). The masks are
applied to the mix's complex STFT and inverted. Because the masks sum to one in
every bin and the STFT is linear, the stems sum to the mix; the inverse STFT's
rounding is then shared out equally, so they sum to it to float precision.

It is the warm start of the diffusion sampler (Mariani et al. 2024's
"Demucs + Gibbs" row; StoRM, Lemercier et al. 2023; DiCoSe, arXiv 2412.06965):
the sampler starts from this guess at a low noise level instead of from noise.

Optionally (`refine_channels` > 0) a small 2-D convolutional stack over
frequency and time refines the mask logits from the logits and the log
magnitude around each bin (dilated in time: ~0.7 s of context per bin, the
local time-frequency context of the spectrogram U-Nets, Jansson et al. 2017,
and of Demucs' and MMDenseNet's convolutions). The BiLSTM sees each frame only
through a 256-number summary of all bins, so how one partial starts, decays or
continues, which tells a plucked string from a struck one whatever the
instrument, is lost before the masks are made; the refinement sees it. Its
last layer starts at zero, so it can be added to trained weights without
changing what they compute.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class SeparatorConfig:
    stems: int = 4
    n_fft: int = 2048
    hop: int = 512
    hidden: int = 256          # encoder width; the LSTM has hidden / 2 per direction
    layers: int = 3            # LSTM layers
    # log(|X| + floor): the floor sits ~100 dB under a full-scale sine's bins
    magnitude_floor: float = 1e-5
    # Softmax temperature of the masks, softmax(logits / T): above 1, softer
    # masks. A separator is over-confident on instruments it never heard (a
    # confident wrong bin costs more than a shared one), so T is calibrated
    # on held-out VALID sets after training (training.calibrate_separator;
    # temperature scaling, Guo et al. 2017). 1: the masks as trained.
    mask_temperature: float = 1.0
    refine_channels: int = 0   # 0: no time-frequency refinement of the masks
    refine_layers: int = 4     # its 3x3 convolutions, time dilation 1, 2, 4, ...

    def __post_init__(self) -> None:
        checks = {
            "stems": 1 <= self.stems <= 64,
            "n_fft": 16 <= self.n_fft <= 16384 and self.n_fft % 2 == 0,
            "hop": 1 <= self.hop <= self.n_fft,
            "hidden": 2 <= self.hidden <= 4096 and self.hidden % 2 == 0,
            "layers": 1 <= self.layers <= 16,
            "magnitude_floor": 0 < self.magnitude_floor < 1,
            "mask_temperature": 0.1 <= self.mask_temperature <= 10.0,
            "refine_channels": 0 <= self.refine_channels <= 256,
            "refine_layers": 1 <= self.refine_layers <= 8,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError("separator config out of range: " + ", ".join(f"{n}={getattr(self, n)!r}" for n in bad))

    @property
    def bins(self) -> int:
        return self.n_fft // 2 + 1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SeparatorConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown SeparatorConfig fields: {sorted(unknown)}")
        return cls(**data)


class MaskRefinement(nn.Module):
    """[B, N + 1, F, K] (mask logits and the log magnitude) -> a correction
    of the logits [B, N, F, K]: 3x3 convolutions, dilated 2^i in time."""

    def __init__(self, stems: int, channels: int, layers: int) -> None:
        super().__init__()
        convs, previous = [], stems + 1
        for layer in range(layers):
            dilation = 2 ** layer
            convs += [nn.Conv2d(previous, channels, 3, padding=(1, dilation), dilation=(1, dilation)), nn.GELU()]
            previous = channels
        self.body = nn.Sequential(*convs)
        self.out = nn.Conv2d(previous, stems, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.body(x))


class MaskSeparator(nn.Module):
    """mix [B, T] or [B, 1, T] -> stems [B, N, T] that sum to the mix."""

    def __init__(self, config: SeparatorConfig) -> None:
        super().__init__()
        self.config = config
        f, h = config.bins, config.hidden
        # Per-bin affine on the log magnitude (set from data by `fit_input_scaling`).
        self.input_mean = nn.Parameter(torch.zeros(f))
        self.input_scale = nn.Parameter(torch.ones(f))
        self.encoder = nn.Sequential(nn.Linear(f, h), nn.LayerNorm(h), nn.GELU())
        self.lstm = nn.LSTM(h, h // 2, num_layers=config.layers, bidirectional=True, batch_first=True)
        self.decoder = nn.Sequential(nn.Linear(2 * h, h), nn.LayerNorm(h), nn.GELU(), nn.Linear(h, config.stems * f))
        self.refine = (MaskRefinement(config.stems, config.refine_channels, config.refine_layers)
                       if config.refine_channels else None)
        self.register_buffer("window", torch.hann_window(config.n_fft), persistent=False)

    def stft(self, x: Tensor) -> Tensor:
        # Zero padding at the edges: works for any length (reflect needs T > n_fft / 2).
        return torch.stft(x, self.config.n_fft, self.config.hop, window=self.window, center=True,
                          pad_mode="constant", return_complex=True)

    def features(self, spec: Tensor) -> Tensor:
        """[B, F, K] complex -> [B, K, F]: log magnitude less its mean over the
        whole example (so the mix's level does not matter), then per-bin affine."""
        log_mag = torch.log(spec.abs() + self.config.magnitude_floor)
        log_mag = log_mag - log_mag.mean(dim=(1, 2), keepdim=True)
        return ((log_mag.transpose(1, 2) - self.input_mean) * self.input_scale)

    def masks(self, spec: Tensor) -> Tensor:
        """[B, F, K] complex -> masks [B, N, F, K] >= 0 that sum to 1 over N."""
        b, f, k = spec.shape
        features = self.features(spec)                          # [B, K, F]
        encoded = self.encoder(features)                        # [B, K, H]
        context, _ = self.lstm(encoded)                         # [B, K, H]
        logits = self.decoder(torch.cat([encoded, context], dim=-1))   # [B, K, N F]
        logits = logits.reshape(b, k, self.config.stems, f).permute(0, 2, 3, 1)
        if self.refine is not None:
            local = torch.cat([logits, features.transpose(1, 2)[:, None]], dim=1)   # [B, N + 1, F, K]
            logits = logits + self.refine(local)
        return torch.softmax(logits / self.config.mask_temperature, dim=1)

    def forward(self, mix: Tensor) -> Tensor:
        if mix.ndim == 3:
            if mix.shape[1] != 1:
                raise ValueError(f"the separator takes a mono mix [B, 1, T], got {tuple(mix.shape)}")
            mix = mix[:, 0]
        if mix.ndim != 2:
            raise ValueError(f"the separator takes a mix [B, T] or [B, 1, T], got {tuple(mix.shape)}")
        length = mix.shape[-1]
        spec = self.stft(mix)
        masked = self.masks(spec) * spec[:, None]               # [B, N, F, K]
        b, n, f, k = masked.shape
        stems = torch.istft(masked.reshape(b * n, f, k), self.config.n_fft, self.config.hop,
                            window=self.window, center=True, length=length).reshape(b, n, length)
        # The masks sum to one, so the stems already sum to the mix up to the
        # inverse STFT's rounding (and its edges); share that residue equally.
        return stems + (mix[:, None] - stems.sum(dim=1, keepdim=True)) / n

    @torch.no_grad()
    def fit_input_scaling(self, mixes: Tensor) -> None:
        """Set the per-bin affine from example mixes [B, T] (zero mean, unit
        variance per bin), so training starts with well-scaled inputs."""
        self.input_mean.zero_()
        self.input_scale.fill_(1.0)
        feats = self.features(self.stft(mixes)).reshape(-1, self.config.bins)
        self.input_mean.copy_(feats.mean(0))
        self.input_scale.copy_(1.0 / feats.std(0).clamp_min(1e-3))


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
