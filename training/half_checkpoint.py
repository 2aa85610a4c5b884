"""Store a training run's weights file (a best.safetensors) with its float32
tensors as float16, its metadata (config, provenance) unchanged: how the
campaign's checkpoints are committed (training/checkpoints/), half the size.
Loading casts back to float32, so training resumes from it (--init) as from
the original, to float16 rounding (a relative 5e-4).

    python -m training.half_checkpoint runs/prior-v4/best.safetensors \\
        -o training/checkpoints/latent-prior-v4.safetensors
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from engine.atomic import write_atomic


def half_checkpoint(source: Path, out: Path) -> int:
    """Writes `out`; returns how many tensors were halved."""
    with safe_open(str(source), "pt") as f:
        metadata = f.metadata() or {}
        tensors = {key: f.get_tensor(key) for key in f.keys()}
    halved = 0
    for key, tensor in tensors.items():
        if tensor.dtype == torch.float32:
            if not torch.isfinite(tensor).all() or tensor.abs().max() > torch.finfo(torch.float16).max:
                raise ValueError(f"{source}: tensor {key} does not fit float16")
            tensors[key] = tensor.to(torch.float16)
            halved += 1
    write_atomic(out, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    return halved


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("-o", "--out", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        halved = half_checkpoint(args.source, args.out)
    except (OSError, ValueError) as error:
        parser.exit(2, f"error: {error}\n")
    print(f"wrote {args.out}: {halved} tensors stored as float16")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
