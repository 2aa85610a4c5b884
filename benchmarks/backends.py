"""Denoiser backends and paired timing, shared by the benchmarks.

`backends()` builds every denoiser this machine can run (torch eager, bf16 on a
GPU, torch.compile, ONNX Runtime with each installed execution provider);
`paired_medians()` times one against a reference interleaved with it (the
machines are shared and noisy: medians of several runs, ratios rather than
absolute times); `flops_per_nfe()` counts one network evaluation.

The table itself: `python benchmarks/samplers.py --skip-quality` (see
docs/performance.md).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.storage.model import MSDMModel  # noqa: E402


def _timed(fn) -> float:
    # Let the previous run's worker threads go idle first: ONNX Runtime's
    # intra-op pool spin-waits after each run and would slow whatever follows.
    time.sleep(0.05)
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def paired_medians(fn, reference, repeats: int) -> tuple[float, float]:
    """Median time of `fn`, and the median of reference/fn ratios measured
    back to back, so load on a shared machine hits both sides alike."""
    fn(), reference()  # warm-up (allocations, kernel selection, compilation)
    times, ratios = [], []
    for _ in range(repeats):
        ref_time, this_time = _timed(reference), _timed(fn)
        times.append(this_time)
        ratios.append(ref_time / this_time)
    return statistics.median(times), statistics.median(ratios)


def backends(model: MSDMModel, device: str, only: str | None = None):
    """name -> denoiser, for what this machine can run (`only`: build just that one)."""
    found = {"torch eager": model.denoiser}
    wanted = lambda name: only is None or only == name  # noqa: E731
    if device == "cuda" and wanted("torch bf16"):
        def bf16(x, sigma, denoiser=model.denoiser):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return denoiser(x, sigma).float()
        found["torch bf16"] = bf16
    try:
        if not wanted("torch.compile"):
            raise LookupError
        compiled = torch.compile(model.denoiser)
        x = torch.randn(1, model.config.unet.in_channels, model.config.window, device=device) * 0.1
        with torch.no_grad():
            compiled(x, torch.tensor([0.5], device=device))
        found["torch.compile"] = compiled
    except LookupError:
        pass
    except Exception as error:  # noqa: BLE001 - report, do not fail the benchmark
        print(f"torch.compile unavailable: {type(error).__name__}: {str(error)[:120]}", file=sys.stderr)
    try:
        if only is not None and not only.startswith("onnxruntime"):
            return found
        from engine.storage.onnx_backend import OnnxDenoiser, available_providers, ensure_onnx

        path = ensure_onnx(model)
        for provider in available_providers():
            chain = [provider] if provider == "CPUExecutionProvider" else [provider, "CPUExecutionProvider"]
            found[f"onnxruntime {provider.replace('ExecutionProvider', '')}"] = OnnxDenoiser(path, chain)
    except ImportError:
        print("onnxruntime not installed: pip install -e '.[onnx]'", file=sys.stderr)
    return found


def flops_per_nfe(model: MSDMModel, x, sigma) -> float | None:
    try:
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model.denoiser(x, sigma)
        return float(counter.get_total_flops())
    except Exception:  # noqa: BLE001
        return None


