"""Speed per backend and separation quality per sampler, in one run.

1. Backends (benchmarks/backends.py builds them): NFE/s on one model window, real-time
   factor of separating `--seconds` of audio at the fast and the paper's NFE,
   achieved GFLOP/s (and the share of `--peak-tflops`),
   peak memory of a process that runs only that backend, and the speed ratio to
   PyTorch eager measured pair by pair (medians of `--repeats`).
2. Samplers: SI-SNRi (dB) versus NFE on `--windows` model windows of the
   synthetic VALID split (never test), the same seeds for every sampler.

    python benchmarks/samplers.py [--data /work/data/synth] [--device cuda] [--skip-quality]

Prints markdown tables (docs/performance.md holds a run).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from backends import backends, flops_per_nfe, paired_medians  # noqa: E402

from engine.core.config import preset  # noqa: E402
from engine.storage.loading import load_models
from engine.storage.model import MSDMModel  # noqa: E402
from engine.core.tasks import SEPARATE_DIRAC, separate  # noqa: E402
from engine.audio.windows import WindowPlan  # noqa: E402

# (label, settings): the paper's sampler, Euler at few steps, and the fast solver.
SAMPLERS = [
    ("euler, paper (150 x R2, churn 20)", SEPARATE_DIRAC),
    ("euler 16 x R2", SEPARATE_DIRAC.override(steps=16)),
    ("euler 32 x R1", SEPARATE_DIRAC.override(steps=32, num_resamples=1)),
    ("dpmpp2m 8 x R2", SEPARATE_DIRAC.override(steps=8, method="dpmpp2m")),
    ("dpmpp2m 16 x R1", SEPARATE_DIRAC.override(steps=16, num_resamples=1, method="dpmpp2m")),
    ("dpmpp2m 16 x R2", SEPARATE_DIRAC.override(steps=16, method="dpmpp2m")),
    ("dpmpp2m 32 x R1", SEPARATE_DIRAC.override(steps=32, num_resamples=1, method="dpmpp2m")),
    ("dpmpp2m 16 x R2, sigma_max 0.5", SEPARATE_DIRAC.override(steps=16, method="dpmpp2m", sigma_max=0.5)),
]


def _load(args) -> MSDMModel:
    if args.model:
        return MSDMModel.load(args.model)
    if args.config:  # random weights time the network as well as trained ones
        return MSDMModel.build(preset(args.config))
    try:
        return load_models(None).models[0]
    except Exception:  # noqa: BLE001 - no shipped model: random weights still time the network
        return MSDMModel.build(preset("small"))


def memory_worker(args) -> int:
    """Child process: build one backend, run it, print its peak memory (MB)."""
    model = _load(args).to(args.device)
    cfg = model.config
    found = backends(model, args.device, only=args.memory_of)
    denoiser = found[args.memory_of]
    x = torch.randn(1, cfg.unet.in_channels, cfg.window, device=args.device) * 0.1
    sigma = torch.tensor([0.5], device=args.device)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        for _ in range(3):
            denoiser(x, sigma)
    gpu = torch.cuda.max_memory_allocated() / 2**20 if args.device == "cuda" else None
    print(json.dumps({"rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "gpu_mb": gpu}))
    return 0


def peak_memory(args, name: str) -> dict:
    command = [sys.executable, __file__, "--memory-of", name, "--device", args.device]
    if args.config:
        command += ["--config", args.config]
    if args.model:
        command += ["--model", args.model]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {"rss_mb": float("nan"), "gpu_mb": None}


def backend_table(args, model: MSDMModel) -> None:
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

    print(f"\n{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch "
          f"{torch.__version__}, device {args.device}; model {model.source}, {model.num_parameters:,} parameters, "
          f"window {cfg.window} samples; {args.seconds:g} s = {plan.count} windows; median of {args.repeats}\n")
    # Achieved throughput = FLOPs of one evaluation x NFE/s; against the device's
    # peak (--peak-tflops, from its data sheet) it says how much of it the network uses.
    flops = flops_per_nfe(model, x, sigma) or float("nan")
    peak = f" | % of {args.peak_tflops:g} TFLOP/s peak" if args.peak_tflops else ""
    print(f"| backend | NFE/s | RTF at {args.fast_nfe} NFE | RTF at {args.paper_nfe} NFE | GFLOP/s{peak} | peak RSS MB"
          f"{' | peak GPU MB' if args.device == 'cuda' else ''} | speed vs torch eager (paired) |")
    print("|---|---:|---:|---:|---:|" + ("---:|" if peak else "") + "---:|"
          + ("---:|" if args.device == "cuda" else "") + "---:|")
    for name, denoiser in found.items():
        reference = runner(found["torch eager"])
        this, ratio = paired_medians(runner(denoiser), reference, args.repeats)
        if name == "torch eager":
            ratio = 1.0
        memory = peak_memory(args, name)
        rtf = [args.seconds / (this * nfe * plan.count) for nfe in (args.fast_nfe, args.paper_nfe)]
        gpu = f" | {memory['gpu_mb']:.0f}" if args.device == "cuda" else ""
        achieved = flops / this / 1e9
        share = f" | {100 * achieved / (args.peak_tflops * 1e3):.1f} %" if args.peak_tflops else ""
        print(f"| {name} | {1 / this:.2f} | {rtf[0]:.3f} | {rtf[1]:.4f} | {achieved:.1f}{share} | "
              f"{memory['rss_mb']:.0f}{gpu} | {ratio:.2f}x |", flush=True)
    # RTF = seconds of audio per wall-clock second (> 1: faster than real time).
    print(f"\nFLOPs per NFE, this model, one window: {flops / 1e9:.1f} GFLOP")
    try:
        paper = MSDMModel.build(preset("paper"))
        xp = torch.randn(1, paper.config.unet.in_channels, paper.config.window) * 0.1
        print(f"FLOPs per NFE, paper configuration, one window: {flops_per_nfe(paper, xp, torch.tensor([0.5])) / 1e9:.1f} GFLOP")
    except Exception as error:  # noqa: BLE001
        print(f"(paper configuration FLOPs unavailable: {error})")


def valid_windows(data: Path, stems, rate: int, window: int, count: int) -> torch.Tensor:
    """`count` loud windows [count, N, window] from the first VALID tracks, at the model rate."""
    from training.evaluate import read_track_stems

    found = []
    for folder in sorted(p for p in (data / "valid").iterdir() if p.is_dir()):
        refs = read_track_stems(folder, stems, rate)
        if refs is None:
            continue
        refs = refs[:, 0] if refs.ndim == 3 else refs
        for start in range(window, refs.shape[-1] - window, 2 * window):
            part = refs[:, start:start + window]
            if np.all(np.sqrt((part**2).mean(-1)) > 1e-3):  # every stem playing
                found.append(torch.from_numpy(np.ascontiguousarray(part)).float())
                break
        if len(found) == count:
            return torch.stack(found)
    raise SystemExit(f"found only {len(found)} windows with every stem playing under {data / 'valid'}")


def si_snri(estimate: torch.Tensor, truth: torch.Tensor) -> float:
    from training.evaluate import si_snr

    est, ref = estimate.double().numpy(), truth.double().numpy()
    mix = np.broadcast_to(ref.sum(1, keepdims=True), ref.shape)
    return float(np.mean(si_snr(est, ref) - si_snr(mix, ref)))


def quality_table(args) -> None:
    models = load_models([args.model] if args.model else None, backend=args.backend)
    truth = valid_windows(args.data, models.stems, models.sample_rate, models.window, args.windows)
    mix = truth.sum(1, keepdim=True)
    print(f"\nSI-SNRi (dB, mean over stems and {args.windows} VALID windows of {models.window} samples), "
          f"Dirac likelihood, backend {args.backend}, seeds 0..{args.windows - 1}\n")
    print("| sampler | NFE | SI-SNRi dB | seconds |")
    print("|---|---:|---:|---:|")
    for label, settings in SAMPLERS:
        began = time.perf_counter()
        out = separate(models.denoiser, mix, len(models.stems), list(range(args.windows)), settings=settings)
        score = si_snri(out, truth) if torch.isfinite(out).all() else float("nan")
        print(f"| {label} | {settings.nfe} | {score:.2f} | {time.perf_counter() - began:.0f} |", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model file (default: the shipped model)")
    parser.add_argument("--config", help="time a random-weight network of this preset instead (small, paper)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--backend", default="onnx", help="backend for the quality table (torch or onnx)")
    parser.add_argument("--seconds", type=float, default=30.0, help="audio length for the real-time factor")
    parser.add_argument("--fast-nfe", type=int, default=32, help="fast sampler's NFE per window")
    parser.add_argument("--paper-nfe", type=int, default=300, help="paper sampler's NFE per window")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per backend (median)")
    parser.add_argument("--peak-tflops", type=float, help="the device's peak TFLOP/s (data sheet) for a %% of peak column")
    parser.add_argument("--data", type=Path, default=Path("/work/data/synth"), help="dataset with a valid/ split")
    parser.add_argument("--windows", type=int, default=2, help="VALID windows for the quality table")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)  # internal: child process of the memory column
    args = parser.parse_args(argv)
    if args.memory_of:
        return memory_worker(args)
    if not args.skip_speed:
        backend_table(args, _load(args).to(args.device))
    if not args.skip_quality:
        quality_table(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
