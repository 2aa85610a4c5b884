"""The score network: a 1D U-Net on raw waveforms, one channel per stem.

Written to be weight-compatible with audio-diffusion-pytorch 0.0.43's `UNet1d`
(the network of the paper's released MSDM/ISDM checkpoints): module names and
parameter shapes are the same, so their state dict loads as it is, and the
arithmetic is the same, so outputs agree to float precision (tests check both).
Only what the paper's models use is implemented (no cross-attention, no context
channels or features).

Shape of the computation (Mariani et al. 2024, appendix; Schneider 2023):
patching -> [downsample, ResNet blocks, (transformer)] per level -> bottleneck
(ResNet, attention, ResNet) -> mirrored upsampling levels with skip connections
-> unpatching. The noise level enters as a learned Fourier embedding mapped
to a per-block scale and shift ("FiLM") inside every ResNet block.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.core.config import UNetConfig


class ConvBlock1d(nn.Module):
    """GroupNorm -> (optional scale/shift) -> SiLU -> Conv1d."""

    def __init__(self, in_channels: int, out_channels: int, num_groups: int) -> None:
        super().__init__()
        self.groupnorm = nn.GroupNorm(num_groups=num_groups, num_channels=in_channels)
        self.activation = nn.SiLU()
        self.project = nn.Conv1d(in_channels, out_channels, kernel_size=3, padding=1)

    def forward(self, x: Tensor, scale_shift: tuple[Tensor, Tensor] | None = None) -> Tensor:
        x = self.groupnorm(x)
        if scale_shift is not None:
            scale, shift = scale_shift
            x = x * (scale + 1) + shift
        return self.project(self.activation(x))


class MappingToScaleShift(nn.Module):
    def __init__(self, features: int, channels: int) -> None:
        super().__init__()
        self.to_scale_shift = nn.Sequential(nn.SiLU(), nn.Linear(features, channels * 2))

    def forward(self, mapping: Tensor) -> tuple[Tensor, Tensor]:
        scale, shift = self.to_scale_shift(mapping).unsqueeze(-1).chunk(2, dim=1)
        return scale, shift


class ResnetBlock1d(nn.Module):
    def __init__(
        self, in_channels: int, out_channels: int, num_groups: int, mapping_features: int
    ) -> None:
        super().__init__()
        self.block1 = ConvBlock1d(in_channels, out_channels, num_groups)
        self.to_scale_shift = MappingToScaleShift(mapping_features, out_channels)
        self.block2 = ConvBlock1d(out_channels, out_channels, num_groups)
        self.to_out = (
            nn.Conv1d(in_channels, out_channels, kernel_size=1)
            if in_channels != out_channels
            else nn.Identity()
        )

    def forward(self, x: Tensor, mapping: Tensor) -> Tensor:
        h = self.block1(x)
        h = self.block2(h, scale_shift=self.to_scale_shift(mapping))
        return h + self.to_out(x)


class PatchBlock(nn.Module):
    """ResNet block, then fold `patch_size` neighbouring samples into channels."""

    def __init__(self, in_channels: int, out_channels: int, patch_size: int, mapping_features: int):
        super().__init__()
        self.patch_size = patch_size
        self.block = ResnetBlock1d(
            in_channels, out_channels // patch_size, min(patch_size, in_channels), mapping_features
        )

    def forward(self, x: Tensor, mapping: Tensor) -> Tensor:
        x = self.block(x, mapping)
        b, c, t = x.shape
        p = self.patch_size
        # "b c (l p) -> b (c p) l"
        return x.reshape(b, c, t // p, p).transpose(2, 3).reshape(b, c * p, t // p)


class UnpatchBlock(nn.Module):
    """Unfold channels back into `patch_size` neighbouring samples, then a ResNet block."""

    def __init__(self, in_channels: int, out_channels: int, patch_size: int, mapping_features: int):
        super().__init__()
        self.patch_size = patch_size
        self.block = ResnetBlock1d(
            in_channels // patch_size, out_channels, min(patch_size, out_channels), mapping_features
        )

    def forward(self, x: Tensor, mapping: Tensor) -> Tensor:
        b, cp, t = x.shape
        p = self.patch_size
        # "b (c p) l -> b c (l p)"
        x = x.reshape(b, cp // p, p, t).transpose(2, 3).reshape(b, cp // p, t * p)
        return self.block(x, mapping)


class ConditionedSequential(nn.Module):
    def __init__(self, modules: list[nn.Module]) -> None:
        super().__init__()
        self.module_list = nn.ModuleList(modules)

    def forward(self, x: Tensor, mapping: Tensor) -> Tensor:
        for module in self.module_list:
            x = module(x, mapping)
        return x


def make_patcher(in_channels: int, out_channels: int, blocks: int, factor: int, mapping: int):
    pre = [in_channels * factor**i for i in range(blocks)]
    post = [in_channels * factor ** (i + 1) for i in range(blocks - 1)] + [out_channels]
    return ConditionedSequential(
        [PatchBlock(pre[i], post[i], factor, mapping) for i in range(blocks)]
    )


def make_unpatcher(in_channels: int, out_channels: int, blocks: int, factor: int, mapping: int):
    pre = [in_channels] + [out_channels * factor ** (i + 1) for i in reversed(range(blocks - 1))]
    post = [out_channels * factor**i for i in reversed(range(blocks))]
    return ConditionedSequential(
        [UnpatchBlock(pre[i], post[i], factor, mapping) for i in range(blocks)]
    )


class LayerNorm(nn.Module):
    """LayerNorm over the last axis without bias (parameter `g`, as in the checkpoints)."""

    def __init__(self, features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.g = nn.Parameter(torch.ones(features))

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, x.shape[-1:], weight=self.g, eps=self.eps)


class LayerNorm1d(nn.Module):
    """LayerNorm over the channel axis of [B, C, T], without bias."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.g = nn.Parameter(torch.ones(1, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        var, mean = torch.var_mean(x, dim=1, unbiased=False, keepdim=True)
        return (x - mean) * (var + self.eps).rsqrt() * self.g


class AttentionBase(nn.Module):
    def __init__(self, features: int, head_features: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = head_features**-0.5
        mid = head_features * num_heads
        self.to_out = nn.Sequential(nn.Linear(mid, features, bias=False), LayerNorm(features))

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        b, n, _ = q.shape
        q, k, v = (t.reshape(b, n, self.num_heads, -1).transpose(1, 2) for t in (q, k, v))
        # Fused attention where the backend has it; same maths as softmax(qk^T * scale) v.
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class Attention(nn.Module):
    """Self-attention over time on [B, T, C]."""

    def __init__(self, features: int, head_features: int, num_heads: int) -> None:
        super().__init__()
        mid = head_features * num_heads
        self.norm = LayerNorm(features)
        self.to_q = nn.Linear(features, mid, bias=False)
        self.to_kv = nn.Linear(features, mid * 2, bias=False)
        self.attention = AttentionBase(features, head_features, num_heads)

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(x)
        k, v = self.to_kv(x).chunk(2, dim=-1)
        return self.attention(self.to_q(x), k, v)


class ChannelsLast(nn.Module):
    """Run `fn` on [B, T, C] for an input in [B, C, T] (named `fn` as in einops-exts)."""

    def __init__(self, fn: nn.Module) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x.transpose(1, 2)).transpose(1, 2)


class TransformerBlock1d(nn.Module):
    def __init__(self, channels: int, num_heads: int, head_features: int, multiplier: int) -> None:
        super().__init__()
        self.attention = ChannelsLast(Attention(channels, head_features, num_heads))
        mid = channels * multiplier
        self.feed_forward = nn.Sequential(
            LayerNorm1d(channels),
            nn.Conv1d(channels, mid, kernel_size=1, bias=False),
            nn.GELU(),
            LayerNorm1d(mid),
            nn.Conv1d(mid, channels, kernel_size=1, bias=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.attention(x) + x
        return self.feed_forward(x) + x


class DownsampleBlock1d(nn.Module):
    """Strided conv, then ResNet blocks (and a transformer); every output is a skip."""

    def __init__(self, in_channels: int, out_channels: int, factor: int, num_layers: int,
                 use_attention: bool, cfg: UNetConfig, mapping: int) -> None:
        super().__init__()
        k = cfg.kernel_multiplier_downsample
        self.downsample = nn.Conv1d(
            in_channels, out_channels, kernel_size=factor * k + 1, stride=factor,
            padding=factor * (k // 2),
        )
        self.blocks = nn.ModuleList(
            [ResnetBlock1d(out_channels, out_channels, cfg.resnet_groups, mapping)
             for _ in range(num_layers)]
        )
        self.use_attention = use_attention
        if use_attention:
            self.transformer = TransformerBlock1d(
                out_channels, cfg.attention_heads, cfg.attention_features, cfg.attention_multiplier
            )

    def forward(self, x: Tensor, mapping: Tensor) -> tuple[Tensor, list[Tensor]]:
        x = self.downsample(x)
        skips = []
        for block in self.blocks:
            x = block(x, mapping)
            skips.append(x)
        if self.use_attention:
            x = self.transformer(x)
            skips.append(x)
        return x, skips


class UpsampleBlock1d(nn.Module):
    """ResNet blocks fed with the mirrored skips (last in, first out), then upsampling."""

    def __init__(self, in_channels: int, out_channels: int, factor: int, num_layers: int,
                 use_attention: bool, cfg: UNetConfig, mapping: int) -> None:
        super().__init__()
        # Scaling skips by 1/sqrt(2) keeps the variance of the concatenation in check.
        self.skip_scale = 2**-0.5 if cfg.use_skip_scale else 1.0
        self.blocks = nn.ModuleList(
            [ResnetBlock1d(in_channels * 2, in_channels, cfg.resnet_groups, mapping)
             for _ in range(num_layers)]
        )
        self.use_attention = use_attention
        if use_attention:
            self.transformer = TransformerBlock1d(
                in_channels, cfg.attention_heads, cfg.attention_features, cfg.attention_multiplier
            )
        self.upsample = make_upsample(in_channels, out_channels, factor, cfg.use_nearest_upsample)

    def forward(self, x: Tensor, skips: list[Tensor], mapping: Tensor) -> Tensor:
        for block in self.blocks:
            x = torch.cat([x, skips.pop() * self.skip_scale], dim=1)
            x = block(x, mapping)
        if self.use_attention:
            x = self.transformer(x)
        return self.upsample(x)


def make_upsample(in_channels: int, out_channels: int, factor: int, use_nearest: bool) -> nn.Module:
    if factor == 1:
        return nn.Conv1d(in_channels, out_channels, kernel_size=3, padding=1)
    if use_nearest:
        return nn.Sequential(
            nn.Upsample(scale_factor=factor, mode="nearest"),
            nn.Conv1d(in_channels, out_channels, kernel_size=3, padding=1),
        )
    return nn.ConvTranspose1d(
        in_channels, out_channels, kernel_size=factor * 2, stride=factor,
        padding=factor // 2 + factor % 2, output_padding=factor % 2,
    )


class BottleneckBlock1d(nn.Module):
    def __init__(self, channels: int, cfg: UNetConfig, mapping: int) -> None:
        super().__init__()
        self.pre_block = ResnetBlock1d(channels, channels, cfg.resnet_groups, mapping)
        self.use_attention = cfg.use_attention_bottleneck
        if self.use_attention:
            self.attention = ChannelsLast(
                Attention(channels, cfg.attention_features, cfg.attention_heads)
            )
        self.post_block = ResnetBlock1d(channels, channels, cfg.resnet_groups, mapping)

    def forward(self, x: Tensor, mapping: Tensor) -> Tensor:
        x = self.pre_block(x, mapping)
        if self.use_attention:
            # No residual here: as in the reference network.
            x = self.attention(x)
        return self.post_block(x, mapping)


class LearnedPositionalEmbedding(nn.Module):
    """Random-Fourier features of a scalar with learned frequencies, plus the scalar."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weights = nn.Parameter(torch.randn(dim // 2))

    def forward(self, t: Tensor) -> Tensor:
        t = t.unsqueeze(-1)
        freqs = t * self.weights.unsqueeze(0) * 2 * math.pi
        return torch.cat((t, freqs.sin(), freqs.cos()), dim=-1)


class UNet1d(nn.Module):
    """F_theta(x, c_noise): the raw network inside the EDM preconditioning."""

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        self.config = cfg
        channels, mult = cfg.channels, cfg.multipliers
        mapping = channels * 4
        self.to_time = nn.Sequential(
            nn.Sequential(LearnedPositionalEmbedding(channels), nn.Linear(channels + 1, mapping)),
            nn.GELU(),
        )
        self.to_mapping = nn.Sequential(
            nn.Linear(mapping, mapping), nn.GELU(), nn.Linear(mapping, mapping), nn.GELU()
        )
        self.to_in = make_patcher(cfg.in_channels, channels, cfg.patch_blocks, cfg.patch_factor, mapping)
        levels = range(len(mult) - 1)
        self.downsamples = nn.ModuleList(
            [DownsampleBlock1d(channels * mult[i], channels * mult[i + 1], cfg.factors[i],
                               cfg.num_blocks[i], cfg.attentions[i], cfg, mapping)
             for i in levels]
        )
        self.bottleneck = BottleneckBlock1d(channels * mult[-1], cfg, mapping)
        # One extra block per attention level consumes the transformer's skip.
        self.upsamples = nn.ModuleList(
            [UpsampleBlock1d(channels * mult[i + 1], channels * mult[i], cfg.factors[i],
                             cfg.num_blocks[i] + int(cfg.attentions[i]), cfg.attentions[i],
                             cfg, mapping)
             for i in reversed(levels)]
        )
        self.to_out = make_unpatcher(channels, cfg.in_channels, cfg.patch_blocks, cfg.patch_factor, mapping)

    def forward(self, x: Tensor, c_noise: Tensor) -> Tensor:
        """x: [B, C, T] with T a multiple of `config.downsampling_factor`; c_noise: [B]."""
        mapping = self.to_mapping(self.to_time(c_noise))
        x = self.to_in(x, mapping)
        patched = x
        skips_per_level = []
        for down in self.downsamples:
            x, skips = down(x, mapping)
            skips_per_level.append(skips)
        x = self.bottleneck(x, mapping)
        for up in self.upsamples:
            x = up(x, skips_per_level.pop(), mapping)
        return self.to_out(x + patched, mapping)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
