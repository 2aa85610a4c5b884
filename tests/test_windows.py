"""Windowing and blending: coverage, exactness, bounded buffers."""

from __future__ import annotations

import numpy as np
import pytest

from engine.audio.windows import OverlapAdd, WindowPlan, triangle_weights


@pytest.mark.parametrize("length,window,overlap", [(1, 64, 0.25), (64, 64, 0.25), (65, 64, 0.25),
                                                   (1000, 64, 0.5), (1000, 100, 0.0), (997, 128, 0.75)])
def test_blending_a_local_function_reproduces_it_exactly(length, window, overlap):
    """If each window's output is a per-sample function of its input, the blend
    equals that function on the whole signal: no seams, every sample covered."""
    rng = np.random.default_rng(0)
    signal = rng.standard_normal((2, length)).astype(np.float32)
    plan = WindowPlan.make(length, window, overlap)
    blend = OverlapAdd(plan, (3, 2))
    pieces = []
    for index in range(plan.count):
        start = plan.start(index)
        block = np.zeros((2, window), dtype=np.float32)
        chunk = signal[:, start:start + window]
        block[:, :chunk.shape[1]] = chunk
        # Three "stems" that sum to the block: a split with fixed shares.
        stems = np.stack([0.5 * block, 0.3 * block, 0.2 * block])
        pieces.append(blend.add(index, stems))
    out = np.concatenate(pieces, axis=-1)
    assert out.shape == (3, 2, length)
    np.testing.assert_allclose(out.sum(0), signal, atol=1e-6)
    np.testing.assert_allclose(out[0], 0.5 * signal, atol=1e-6)


def test_buffers_do_not_grow_with_length():
    plan = WindowPlan.make(10_000_000, 4096, 0.25)
    blend = OverlapAdd(plan, (4, 2))
    assert blend.values.shape[-1] <= 2 * plan.window
    # Counted by what the windows cover, not by the implementation's formula: the
    # last window reaches the end, the one before it does not, starts are a hop apart.
    assert plan.hop == 3072
    assert plan.start(plan.count - 1) + plan.window >= 10_000_000 > plan.start(plan.count - 2) + plan.window
    assert plan.count == 3255  # 3254 hops of 3072 after the first window of 4096


def test_triangle_weights_are_positive_and_peak_in_the_middle():
    w = triangle_weights(9)
    assert w.min() > 0 and w.argmax() in (4, 5) and w.max() == 1


def test_bad_overlap_is_refused():
    with pytest.raises(ValueError, match="overlap"):
        WindowPlan.make(100, 10, 1.0)
