"""Average the weights of first-guess separators fine-tuned from one start.

A "model soup" (Wortsman et al. 2022): networks fine-tuned from the same
weights on different data or settings stay in one basin of the loss, so the
average of their weights is itself a good network, often better than each,
and it costs nothing at run time (one network, the same size and speed). Here
each fine-tune of separator-diverse-v2 on recorded instruments gained on
recorded timbres and lost on synthesised ones; their average with the start
keeps both (docs/models.md).

    python -m training.soup_separators training/checkpoints/separator-diverse-v2.safetensors \\
        training/checkpoints/separator-recorded-ft.safetensors -o runs/soup/best.safetensors

The result is a separator file (train_separator's format) for pack_model.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from engine.core.separator import MaskSeparator
from training.train_separator import initial_separator, save_separator


def soup(separators: list[MaskSeparator], weights: list[float] | None = None) -> MaskSeparator:
    """The weighted average of separators of one shape (weights: equal by default, must sum to 1)."""
    if not separators:
        raise ValueError("a soup needs at least one separator")
    weights = [1.0 / len(separators)] * len(separators) if weights is None else weights
    if len(weights) != len(separators) or any(w < 0 for w in weights) or abs(sum(weights) - 1.0) > 1e-6:
        raise ValueError(f"one non-negative weight per separator, summing to 1; got {weights}")
    config = separators[0].config
    if any(s.config != config for s in separators[1:]):
        raise ValueError("separators of different shapes cannot be averaged: "
                         + "; ".join(str(s.config) for s in separators))
    states = [s.state_dict() for s in separators]
    averaged = {key: sum(w * state[key].float() for w, state in zip(weights, states)).to(states[0][key].dtype)
                for key in states[0]}
    out = MaskSeparator(config)
    out.load_state_dict(averaged)
    return out.eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("separators", type=Path, nargs="+",
                        help="separator files (a run's best.safetensors) or model files with a separator")
    parser.add_argument("--weights", type=float, nargs="+", help="one per separator, summing to 1 (default equal)")
    parser.add_argument("-o", "--out", type=Path, required=True)
    args = parser.parse_args(argv)
    weights = args.weights or [1.0 / len(args.separators)] * len(args.separators)
    try:
        result = soup([initial_separator(path) for path in args.separators], weights)
    except ValueError as error:
        parser.error(str(error))
    recipe = " + ".join(f"{w:.3g} x {p.name}" for w, p in zip(weights, args.separators))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        save_separator(result, args.out, {"soup": recipe})
    print(f"{recipe} -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
