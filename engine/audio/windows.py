"""Cutting long audio into overlapping windows and blending them back.

As in demucs: windows overlap, each is weighted by a triangle (highest in the
middle, where the model saw the most context) and the blend is normalised by
the summed weights. Because the blend is a convex combination per sample, if
every window's stems sum to that window's mix, the blended stems sum to the
whole mix (the property separation keeps at any length).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Above this, windows overlap so much that each sample is sampled 10+ times (a
# typo, not a setting); the one limit every front end reads (engine.jobs.options).
MAX_OVERLAP = 0.9


@dataclass(frozen=True)
class WindowPlan:
    length: int   # total samples to cover
    window: int   # samples per window
    hop: int      # distance between window starts

    @classmethod
    def make(cls, length: int, window: int, overlap: float) -> "WindowPlan":
        if not 0 <= overlap <= MAX_OVERLAP:
            raise ValueError(f"overlap must be between 0 and {MAX_OVERLAP}, got {overlap}")
        if window < 1 or length < 1:
            raise ValueError(f"need positive length and window, got {length}, {window}")
        hop = max(1, int(round(window * (1 - overlap))))
        return cls(length, window, hop)

    @property
    def count(self) -> int:
        if self.length <= self.window:
            return 1
        return 1 + math.ceil((self.length - self.window) / self.hop)

    def start(self, index: int) -> int:
        return index * self.hop

    def final_until(self, index: int) -> int:
        """Samples before this position get no contribution from windows after
        `index`: they are final once window `index` has been added."""
        return self.length if index + 1 >= self.count else min(self.start(index + 1), self.length)


def triangle_weights(window: int) -> np.ndarray:
    """Positive triangular weights (never 0, so every sample is covered)."""
    half = window // 2
    ramp_up = np.arange(1, half + 1, dtype=np.float64)
    ramp_down = np.arange(window - half, 0, -1, dtype=np.float64)
    weights = np.concatenate([ramp_up, ramp_down])
    return (weights / weights.max()).astype(np.float32)


class OverlapAdd:
    """Accumulates weighted windows of shape [..., window] and releases the
    finished prefix, keeping only about one window in memory."""

    def __init__(self, plan: WindowPlan, lead_shape: tuple[int, ...]) -> None:
        self.plan = plan
        self.weights = triangle_weights(plan.window)
        span = plan.window + plan.hop
        self.values = np.zeros((*lead_shape, span), dtype=np.float64)
        self.total = np.zeros(span, dtype=np.float64)
        self.offset = 0  # absolute position of values[..., 0]

    def add(self, index: int, block: np.ndarray) -> np.ndarray:
        """Add window `index` (its [..., window] output) and return the newly
        final samples (possibly empty), in order, without the padding past the end."""
        start = self.plan.start(index) - self.offset
        w = self.plan.window
        self.values[..., start:start + w] += block * self.weights
        self.total[start:start + w] += self.weights
        until = self.plan.final_until(index) - self.offset
        assert until >= 0 and (until == 0 or self.total[:until].min() > 0), "every sample must be covered"
        out = (self.values[..., :until] / self.total[:until]).astype(np.float32)
        # Shift what is not final yet to the front of the buffers.
        keep = self.values.shape[-1] - until
        self.values[..., :keep] = self.values[..., until:]
        self.values[..., keep:] = 0
        self.total[:keep] = self.total[until:]
        self.total[keep:] = 0
        self.offset += until
        return out
