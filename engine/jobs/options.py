"""The options every job takes (model, sampler, output), as command-line flags,
and their translation into what the engine runs: `SamplerSettings`,
`OutputFormat` and a `ModelSet`. The CLI, `msdm serve` and `msdm bounce` all
use these, so a flag is written once.

Nothing heavy (torch) is imported until a function that needs it runs: the
parsers are built on every `msdm` call, including the light ones.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from engine.errors import CommandError


def add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model", action="append", metavar="FILE",
                       help="model file (.safetensors); repeat it with one single-stem model per "
                            "stem for ISDM separation (default: the model shipped with MSDM Studio)")
    group.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    group.add_argument("--backend", choices=("torch", "onnx"), default="torch",
                       help="torch (default) or onnx: ONNX Runtime with TensorRT/CUDA/CPU, exported once and cached")


def add_sampler_options(parser: argparse.ArgumentParser, what: str) -> None:
    group = parser.add_argument_group("sampler", f"defaults are the paper's settings for {what}")
    group.add_argument("--steps", type=int, help="number of noise levels (paper: 150, imputation 256)")
    group.add_argument("--resamples", type=int, help="correction resamples per step (NFE = steps x resamples)")
    group.add_argument("--churn", type=float, help="S_churn: stochasticity added at each step")
    group.add_argument("--sigma-min", type=float, help="lowest noise level of the schedule")
    group.add_argument("--sigma-max", type=float, help="highest noise level of the schedule")
    group.add_argument("--method", choices=("euler", "heun", "dpmpp2m"),
                       help="ODE step: euler (paper), heun (2nd order, 2 NFE/step) or dpmpp2m "
                            "(DPM-Solver++(2M): 2nd order at 1 NFE/step, for few steps)")
    group.add_argument("--seed", type=int, default=0, help="random seed: same seed, same audio (default 0)")
    group.add_argument("--overlap", type=float, default=0.25,
                       help="overlap between windows of long audio, 0..0.9 (default 0.25)")


def add_output_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("output")
    group.add_argument("-o", "--out", required=True, type=Path, metavar="DIR", help="output folder")
    group.add_argument("--format", choices=("wav", "flac"), default="wav", help="file format (default wav)")
    group.add_argument("--bits", choices=("16", "24", "32f"), default=None,
                       help="sample format: 16, 24 or 32f (float, WAV only); default 32f for WAV, 24 for FLAC")
    group.add_argument("--no-overwrite", action="store_true", help="fail instead of replacing existing files")
    group.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def sampler_settings(args, defaults):
    """The task's default SamplerSettings with the sampler flags the user gave."""
    return defaults.override(
        steps=args.steps, num_resamples=args.resamples, s_churn=args.churn,
        sigma_min=args.sigma_min, sigma_max=args.sigma_max, method=args.method,
    )


def output_format(args):
    """--format, --bits and --no-overwrite as an OutputFormat (checked)."""
    from engine.audio.pipeline import OutputFormat

    bits = args.bits or ("24" if args.format == "flac" else "32f")
    if args.format == "flac" and bits == "32f":
        raise CommandError("FLAC cannot store 32-bit float: use --bits 16 or 24, or --format wav")
    return OutputFormat(extension=args.format, bits=bits, overwrite=not args.no_overwrite)


def load_models_for(args):
    """--model, --device and --backend: the ModelSet a command runs on."""
    import torch

    from engine.storage.loading import load_models

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise CommandError(f"--device {args.device}: no CUDA GPU is available to PyTorch here; use --device cpu")
    return load_models(args.model, device=args.device, backend=getattr(args, "backend", "torch"))
