"""The multi-source latent diffusion prior (MSLDM, Xu et al. 2024; MSG-LD,
Karchkhadze et al. 2025): one denoiser over the latents of all stems stacked
as channels, [B, N x C, K], conditioned on any subset of stems given.

Conditioning. MSDM imputes by replacement: the given stems, noised to the
current level, are written over the sample before each step. On an exact
Gaussian prior that recovers only part of the conditional mean
(docs/engine.md), because the noise written into the given stems hides what
they are. Here the network also sees the given stems' clean latents and a
per-stem mask (trained with random subsets given, MSG-LD's "arrangement"),
so D(x, sigma | given) approximates E[x_0 | x, given] and imputation samples
the learned conditional; with nothing given it is the unconditional prior.
With `harmony_channels` = 12 it also sees each given stem's pitch classes per
latent frame (engine.core.harmony: what the latents of a 1024-point STFT
cannot resolve in the bass), masked like the given latents.

Network: a small 1-D U-Net over latent time (the family of the waveform
model's, Ho et al. 2020 / audio-diffusion-pytorch): residual blocks with
group norm and a scale-shift from the noise level, average-pool down,
nearest up, skip connections, self-attention at the coarsest level. EDM
preconditioning (Karras et al. 2022, table 1).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from engine.core.diffusion import as_sigma_batch
from engine.core.latent_config import LatentPriorConfig


class NoiseEmbedding(nn.Module):
    """c_noise -> a vector: random Fourier features (Tancik et al. 2020) and an MLP."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.register_buffer("frequencies", torch.randn(features // 2) * 4.0)
        self.mlp = nn.Sequential(nn.Linear(features, features), nn.SiLU(), nn.Linear(features, features))

    def forward(self, c_noise: Tensor) -> Tensor:
        angles = 2 * math.pi * c_noise[:, None] * self.frequencies[None]
        return self.mlp(torch.cat([angles.cos(), angles.sin()], dim=1))


class ResBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, embedding: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(8, in_channels)
        self.conv1 = nn.Conv1d(in_channels, out_channels, 3, padding=1)
        self.scale_shift = nn.Linear(embedding, 2 * out_channels)
        self.norm2 = nn.GroupNorm(8, out_channels)
        self.conv2 = nn.Conv1d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv1d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: Tensor, embedding: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.scale_shift(embedding)[:, :, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(F.silu(h))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(8, channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.out = nn.Conv1d(channels, channels, 1)
        self.heads = heads

    def forward(self, x: Tensor) -> Tensor:
        b, c, k = x.shape
        q, kk, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, k).unbind(1)
        h = F.scaled_dot_product_attention(q.transpose(-1, -2), kk.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.out(h.transpose(-1, -2).reshape(b, c, k))


class LatentUNet(nn.Module):
    """F(x [B, W, K], c_noise [B], given [B, W, K], mask [B, N, K], harmony [B, N x 12, K]) -> [B, W, K]."""

    def __init__(self, config: LatentPriorConfig) -> None:
        super().__init__()
        self.config = config
        c, emb = config.channels, config.channels * 2
        widths = [c * m for m in config.multipliers]
        self.embedding = NoiseEmbedding(emb)
        # Patching (as the waveform U-Net's patch_factor): `patch` latent frames
        # in one step, so the finest level already runs at half the frame rate.
        self.stem_in = nn.Conv1d(2 * config.width + config.stems, widths[0], config.patch, stride=config.patch)
        # The harmony condition enters through its own layer, added to the
        # input layer's output: zero at the start, so a prior trained without
        # it loads unchanged and computes what it did, and it can learn at its
        # own rate (train_latent_prior --harmony-lr-scale).
        self.harmony_in = None
        if config.harmony_channels:
            self.harmony_in = nn.Conv1d(config.stems * config.harmony_channels, widths[0], config.patch,
                                        stride=config.patch)
            nn.init.zeros_(self.harmony_in.weight)
            nn.init.zeros_(self.harmony_in.bias)
        self.down = nn.ModuleList()
        previous = widths[0]
        skips = [previous]
        for level, width in enumerate(widths):
            for _ in range(config.blocks):
                self.down.append(ResBlock(previous, width, emb))
                previous = width
                skips.append(width)
            if level < len(widths) - 1:
                self.down.append(nn.AvgPool1d(2))
                skips.append(width)
        self.middle = nn.ModuleList([ResBlock(previous, previous, emb), ResBlock(previous, previous, emb)])
        self.attention = SelfAttention(previous, config.attention_heads) if config.attention_heads else None
        self.up = nn.ModuleList()
        for level, width in reversed(list(enumerate(widths))):
            for _ in range(config.blocks + 1):
                self.up.append(ResBlock(previous + skips.pop(), width, emb))
                previous = width
            if level > 0:
                self.up.append(nn.Upsample(scale_factor=2, mode="nearest"))
        self.norm_out = nn.GroupNorm(8, previous)
        self.stem_out = nn.ConvTranspose1d(previous, config.width, config.patch, stride=config.patch)
        nn.init.zeros_(self.stem_out.weight)
        nn.init.zeros_(self.stem_out.bias)
        self.head = None
        if config.head_channels:
            h = config.head_channels
            self.head = nn.Sequential(nn.Conv1d(previous + config.width, h, 1), nn.SiLU(),
                                      nn.Conv1d(h, h, 5, padding=2, groups=h), nn.SiLU(),
                                      nn.Conv1d(h, config.width, 1))
            nn.init.zeros_(self.head[-1].weight)
            nn.init.zeros_(self.head[-1].bias)

    def forward(self, x: Tensor, c_noise: Tensor, given: Tensor, mask: Tensor,
                harmony: Tensor | None = None) -> Tensor:
        k = x.shape[-1]
        if k % self.config.downsampling_factor:
            raise ValueError(f"latent length {k} is not a multiple of {self.config.downsampling_factor}")
        embedding = self.embedding(c_noise)
        h = self.stem_in(torch.cat([x, given, mask.to(x.dtype)], dim=1))
        if self.harmony_in is not None:
            h = h + self.harmony_in(harmony)
        skips = [h]
        for layer in self.down:
            h = layer(h, embedding) if isinstance(layer, ResBlock) else layer(h)
            skips.append(h)
        for layer in self.middle:
            h = layer(h, embedding)
        if self.attention is not None:
            h = self.attention(h)
        for layer in self.up:
            if isinstance(layer, ResBlock):
                h = layer(torch.cat([h, skips.pop()], dim=1), embedding)
            else:
                h = layer(h)
        features = F.silu(self.norm_out(h))
        out = self.stem_out(features)
        if self.head is not None:
            per_frame = features.repeat_interleave(self.config.patch, dim=-1)
            out = out + self.head(torch.cat([per_frame, x], dim=1))
        return out


class LatentDenoiser(nn.Module):
    """D(x, sigma) with EDM preconditioning, unconditional (nothing given), and
    `with_given(given, mask)`: the denoiser conditioned on the given stems,
    which engine.core.tasks.impute uses when a denoiser offers it."""

    def __init__(self, net: LatentUNet) -> None:
        super().__init__()
        self.net = net
        self.config = net.config
        width = self.config.width
        shift = self.config.latent_shift or (0.0,) * width
        scale = self.config.latent_scale or (1.0,) * width
        # Buffers, not parameters: they follow .to(device) and are not trained
        # (non-persistent: the config carries them, the weights stay as they were).
        self.register_buffer("shift", torch.tensor(shift, dtype=torch.float32)[:, None], persistent=False)
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32)[:, None], persistent=False)

    def to_diffusion(self, latents: Tensor) -> Tensor:
        """Autoencoder latents [..., N x C, K] -> the space the diffusion runs in."""
        return (latents - self.shift) / self.scale

    def from_diffusion(self, sample: Tensor) -> Tensor:
        """The inverse of to_diffusion."""
        return sample * self.scale + self.shift

    def output_rows(self) -> Tensor:
        """[F, W x P]: the patch vectors the output layer can write, one per
        feature (ConvTranspose1d weight [F, W, P], patch entries in (channel,
        frame) order). D(x) - c_skip x lies in their span (plus the bias)."""
        weight = self.net.stem_out.weight.detach()
        rows = weight.reshape(weight.shape[0], -1)
        if self.net.head is not None:
            # The head writes each frame of the patch through its last 1x1 conv.
            last = self.net.head[-1].weight.detach()[:, :, 0].T                  # [H, W]
            patch = self.config.patch
            for p in range(patch):
                frame = torch.zeros(last.shape[0], last.shape[1], patch)
                frame[:, :, p] = last
                rows = torch.cat([rows, frame.reshape(last.shape[0], -1)])
        return rows

    def output_networks(self) -> tuple["LatentDenoiser", ...]:
        return (self,)

    def frame_mask(self, mask: Tensor, frames: int) -> Tensor:
        """A mask per stem [B, N] or per stem and latent frame [B, N, K] -> bool [B, N, K]."""
        mask = mask.to(torch.bool)
        return mask[:, :, None].expand(-1, -1, frames) if mask.ndim == 2 else mask

    def channel_mask(self, mask: Tensor) -> Tensor:
        """[B, N, K] -> [B, N x C, K]: each stem's mask on all its latent channels."""
        return mask.repeat_interleave(self.config.latent_channels, dim=1)

    def harmony_input(self, harmony: Tensor | None, mask: Tensor) -> Tensor | None:
        """The given stems' chroma [B, N x 12, K] where given (mask [B, N, K]), zero elsewhere."""
        per_stem = self.config.harmony_channels
        if not per_stem:
            return None
        b, n, k = mask.shape
        if harmony is None:
            return torch.zeros(b, n * per_stem, k, device=mask.device)
        if harmony.shape[-2:] != (n * per_stem, k):
            raise ValueError(f"harmony must be [B, {n * per_stem}, {k}], got {tuple(harmony.shape)}")
        return harmony * mask.repeat_interleave(per_stem, dim=1).to(harmony.dtype)

    def denoise(self, x: Tensor, sigma: Tensor | float, given: Tensor | None = None,
                mask: Tensor | None = None, harmony: Tensor | None = None) -> Tensor:
        """x [B, N x C, K]; mask (True: given) per stem [B, N] or per stem and frame [B, N, K];
        harmony: every stem's chroma [B, N x 12, K] (used where given; with harmony_channels)."""
        sigma = as_sigma_batch(sigma, x)
        b, _, k = x.shape
        if mask is None:
            mask = torch.zeros(b, self.config.stems, dtype=torch.bool, device=x.device)
        mask = self.frame_mask(mask, k)
        harmony = self.harmony_input(harmony, mask)
        given = torch.zeros_like(x) if given is None else given * self.channel_mask(mask).to(x.dtype)
        sd = self.config.sigma_data
        s = sigma[:, None, None]
        c_skip = sd ** 2 / (s ** 2 + sd ** 2)
        c_out = s * sd / (s ** 2 + sd ** 2).sqrt()
        c_in = 1 / (s ** 2 + sd ** 2).sqrt()
        return c_skip * x + c_out * self.net(c_in * x, sigma.log() / 4, given / sd, mask, harmony)

    def forward(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        return self.denoise(x, sigma)

    def with_given(self, given: Tensor, mask: Tensor, guidance: float = 1.0, harmony: Tensor | None = None):
        """The conditional denoiser for a mask [B, N] or [B, N, K] (True: given);
        `harmony` the stems' chroma [B, N x 12, K] for a prior with harmony_channels.

        guidance w != 1: classifier-free guidance (Ho & Salimans 2022), the
        same network with nothing given as the unconditional model (trained
        on 30 % of its examples), D_u + w (D_c - D_u), both evaluated in one
        batch. The given stems' noisy values still reach D_u through the
        sample itself (the replacement in engine.core.tasks.Imputation)."""
        if guidance == 1.0:
            def conditioned(x: Tensor, sigma: Tensor) -> Tensor:
                return self.denoise(x, sigma, given, mask, harmony)
            return conditioned

        def guided(x: Tensor, sigma: Tensor) -> Tensor:
            b, _, k = x.shape
            sigma = as_sigma_batch(sigma, x)
            stem_mask = self.frame_mask(mask.expand(b, *mask.shape[1:]), k)
            both = self.denoise(torch.cat([x, x]), torch.cat([sigma, sigma]),
                                torch.cat([given.expand_as(x), torch.zeros_like(x)]),
                                torch.cat([stem_mask, torch.zeros_like(stem_mask)]),
                                None if harmony is None else torch.cat([harmony.expand(b, -1, -1)] * 2))
            cond, free = both[:b], both[b:]
            return free + guidance * (cond - free)
        return guided

    def loss(self, x0: Tensor, mask: Tensor, generator: torch.Generator | None = None,
             harmony: Tensor | None = None) -> Tensor:
        """EDM's weighted denoising loss on the stems not given (the given ones
        are the condition, their output is not asked for)."""
        b = x0.shape[0]
        sigma = (torch.randn(b, generator=generator) * self.config.sigma_std + self.config.sigma_mean).exp()
        noisy = x0 + sigma[:, None, None] * torch.randn(x0.shape, generator=generator)
        denoised = self.denoise(noisy, sigma, x0, mask, harmony)
        sd = self.config.sigma_data
        weight = (sigma ** 2 + sd ** 2) / (sigma * sd) ** 2
        free = (~self.channel_mask(self.frame_mask(mask, x0.shape[-1]))).to(x0.dtype)
        per_item = ((denoised - x0) ** 2 * free).sum(dim=(1, 2)) / free.sum(dim=(1, 2)).clamp_min(1)
        return (weight * per_item).mean()


def same_space(prior: LatentPriorConfig, guide: LatentPriorConfig) -> str | None:
    """Why `guide` cannot guide `prior` (None when it can): the two must
    denoise the same stems' latents in the same diffusion space."""
    for name in ("stems", "latent_channels", "sigma_data", "latent_shift", "latent_scale", "harmony_channels"):
        if getattr(prior, name) != getattr(guide, name):
            return f"its {name} differs from the prior's"
    return None


class AutoGuided:
    """Autoguidance (Karras et al. 2024, "Guiding a diffusion model with a bad
    version of itself"): D_guide + w (D - D_guide), where the guide is a
    weaker model of the same data (fewer minutes, or fewer parameters) in
    the same diffusion space. Where the two agree the estimate stays; where
    the weak model errs (the blur, the noise floor an under-trained prior
    leaves) the step moves further away from its error. Unlike
    classifier-free guidance it needs no condition, so generation gains too.

    It is the prior behind LatentDenoiser's interface: its conditioning and
    classifier-free guidance (with_given) run over the guided denoiser, so
    cfg and autoguidance compose as D_u^ag + g (D_c^ag - D_u^ag). Costs one
    pass of the guide per pass of the prior."""

    def __init__(self, prior: LatentDenoiser, guide: LatentDenoiser, weight: float) -> None:
        if (reason := same_space(prior.config, guide.config)) is not None:
            raise ValueError(f"the guide cannot guide this prior: {reason}")
        self.prior, self.guide, self.weight = prior, guide, float(weight)

    def __getattr__(self, name: str):
        # config, shift, scale, to_diffusion, frame_mask...: the prior's.
        return getattr(self.prior, name)

    def denoise(self, x: Tensor, sigma: Tensor | float, given: Tensor | None = None,
                mask: Tensor | None = None, harmony: Tensor | None = None) -> Tensor:
        good = self.prior.denoise(x, sigma, given, mask, harmony)
        weak = self.guide.denoise(x, sigma, given, mask, harmony)
        return weak + self.weight * (good - weak)

    def __call__(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        return self.denoise(x, sigma)

    def output_networks(self) -> tuple[LatentDenoiser, ...]:
        return (self.prior, self.guide)

    with_given = LatentDenoiser.with_given


def to_patch_vectors(x: Tensor, patch: int) -> Tensor:
    """[B, W, K] -> [B, K // P, W P]: each patch of P frames as one vector in
    the output layer's (channel, frame) order (ConvTranspose1d's weight layout)."""
    b, w, k = x.shape
    return x.reshape(b, w, k // patch, patch).permute(0, 2, 1, 3).reshape(b, k // patch, w * patch)


def from_patch_vectors(vectors: Tensor, width: int, patch: int) -> Tensor:
    """The inverse of to_patch_vectors: [B, K // P, W P] -> [B, W, K]."""
    b, count, _ = vectors.shape
    return vectors.reshape(b, count, width, patch).permute(0, 2, 1, 3).reshape(b, width, count * patch)


def span_basis(networks, rtol: float = 1e-5) -> Tensor:
    """[W x P, r] orthonormal basis of the patch vectors the output layers of
    `networks` can write (their union: an autoguided denoiser mixes both)."""
    rows = torch.cat([net.output_rows().to(torch.float64) for net in networks])
    u, singular, _ = torch.linalg.svd(rows.T, full_matrices=False)
    rank = int((singular > rtol * singular.max()).sum())
    return u[:, :rank].to(torch.float32)


class SpanProjected:
    """A latent denoiser whose estimate is the data mean (0 in the standardised
    diffusion space) outside the span of its output layer.

    LatentUNet writes a patch of P frames x W channels (P x W numbers: 512 for
    v4) from F features (128): its correction c_out F(x) has rank F per patch,
    so in the other P W - F directions D(x, sigma) = c_skip x, and along them
    the probability-flow ODE, dx/dsigma = x sigma / (sigma^2 + sigma_data^2),
    carries the starting noise to the end: x(0) = sigma_data / sqrt(sigma_max^2
    + sigma_data^2) x(sigma_max), unit-variance white noise, where real
    latents hold under a tenth of their energy (v4 with its guide: 43 of 545
    per patch on VALID; generated: 263). Here D = D(x) - c_skip P x, with P the
    projection onto those directions, so along them x shrinks with sigma and
    ends at 0: the posterior mean of a near-empty subspace, not a draw from a
    unit-variance one. Inside the span nothing changes. Costs two matrix
    products per evaluation."""

    def __init__(self, denoiser) -> None:
        self.denoiser = denoiser
        basis = span_basis(denoiser.output_networks())
        patch = denoiser.config.patch
        if basis.shape[0] != denoiser.config.width * patch:
            raise ValueError(f"output rows of length {basis.shape[0]}, expected {denoiser.config.width * patch}")
        self.basis = basis.to(denoiser.shift.device)

    def __getattr__(self, name: str):
        # config, shift, scale, to_diffusion, frame_mask...: the wrapped denoiser's.
        return getattr(self.denoiser, name)

    def complement(self, x: Tensor) -> Tensor:
        """The part of x [B, W, K] outside the span, per patch of P frames."""
        patch = self.denoiser.config.patch
        vectors = to_patch_vectors(x, patch)
        return from_patch_vectors(vectors - (vectors @ self.basis) @ self.basis.T, x.shape[1], patch)

    def denoise(self, x: Tensor, sigma: Tensor | float, given: Tensor | None = None,
                mask: Tensor | None = None, harmony: Tensor | None = None) -> Tensor:
        estimate = self.denoiser.denoise(x, sigma, given, mask, harmony)
        sd = self.denoiser.config.sigma_data
        s = as_sigma_batch(sigma, x)[:, None, None]
        return estimate - sd ** 2 / (s ** 2 + sd ** 2) * self.complement(x)

    def __call__(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        return self.denoise(x, sigma)

    with_given = LatentDenoiser.with_given


def sampling_denoiser(prior: LatentDenoiser, guide: LatentDenoiser | None, autoguidance: float):
    """The denoiser generation and imputation sample with: the prior,
    autoguided by `guide` at weight `autoguidance` (1: not), projected onto
    its output span when its config asks (SpanProjected)."""
    denoiser = prior if autoguidance == 1.0 else AutoGuided(prior, guide, autoguidance)
    return SpanProjected(denoiser) if prior.config.span_projection else denoiser


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
