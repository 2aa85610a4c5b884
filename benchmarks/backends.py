"""Speed of the denoiser backends, measured pair by pair in one run.

For each backend: network evaluations (NFE) per second on one model window,
the real-time factor of separating `--seconds` of audio at a given NFE per
window, and peak memory; the ratio to PyTorch eager is measured against an
eager run interleaved with it (the machines are shared and noisy: medians of
`--repeats` runs, ratios rather than absolute times).

    python benchmarks/backends.py [--model M | --config small|paper] [--seconds 30] [--nfe 300]

Prints a markdown table. On a GPU, add --device cuda (torch eager, bf16 and the
ONNX Runtime CUDA/TensorRT providers when onnxruntime-gpu is installed).
"""

from __future__ import annotations

import argparse
import math
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.config import preset  # noqa: E402
from engine.model import MSDMModel  # noqa: E402
from engine.windows import WindowPlan  # noqa: E402


def _timed(fn) -> float:
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
        from engine.onnx_backend import OnnxDenoiser, available_providers, ensure_onnx

        path = ensure_onnx(model)
        for provider in available_providers():
            chain = [provider] if provider == "CPUExecutionProvider" else [provider, "CPUExecutionProvider"]
            found[f"onnxruntime {provider.replace('ExecutionProvider', '')}"] = OnnxDenoiser(path, chain)
    except ImportError:
        print("onnxruntime not installed: pip install -e '.[onnx]'", file=sys.stderr)
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model file (default: the shipped model, else --config)")
    parser.add_argument("--config", default="small", help="random-weight configuration when no model (small, paper)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--seconds", type=float, default=30.0, help="audio length for the real-time factor")
    parser.add_argument("--nfe", type=int, default=300, help="network evaluations per window (paper: 300)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per backend (median)")
    args = parser.parse_args(argv)

    model = MSDMModel.load(args.model) if args.model else MSDMModel.build(preset(args.config))
    model.to(args.device)
    cfg = model.config
    x = torch.randn(1, cfg.unet.in_channels, cfg.window, device=args.device) * 0.1
    sigma = torch.tensor([0.5], device=args.device)
    plan = WindowPlan.make(int(args.seconds * cfg.sample_rate), cfg.window, 0.25)
    found = backends(model, args.device)

    def runner(denoiser):
        def run():
            with torch.no_grad():
                denoiser(x, sigma)
            if args.device == "cuda":
                torch.cuda.synchronize()
        return run

    rows = []
    for name, denoiser in found.items():
        if name == "torch eager":
            this, ratio = paired_medians(runner(denoiser), runner(denoiser), args.repeats)
            ratio = 1.0
        else:
            this, ratio = paired_medians(runner(denoiser), runner(found["torch eager"]), args.repeats)
        separation = this * args.nfe * plan.count
        rows.append((name, 1 / this, args.seconds / separation, ratio))

    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\n{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}; model: {model.source}, {model.num_parameters:,} parameters; "
          f"window {cfg.window} samples; separating {args.seconds:g} s = {plan.count} windows x {args.nfe} NFE; "
          f"median of {args.repeats}; process peak RSS {peak_mb:.0f} MB\n")
    print("| backend | NFE/s | real-time factor (audio s / wall s) | speed vs torch eager |")
    print("|---|---|---|---|")
    for name, nfe_per_s, rtf, ratio in rows:
        print(f"| {name} | {nfe_per_s:.2f} | {rtf:.3f} | {ratio:.2f}x |")
    flops = flops_per_nfe(model, x, sigma)
    if flops:
        print(f"\nFLOPs per network evaluation (torch.utils.flop_counter): {flops / 1e9:.1f} GFLOP")
    return 0


def flops_per_nfe(model: MSDMModel, x, sigma) -> float | None:
    try:
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model.denoiser(x, sigma)
        return float(counter.get_total_flops())
    except Exception:  # noqa: BLE001
        return None


if __name__ == "__main__":
    raise SystemExit(main())
