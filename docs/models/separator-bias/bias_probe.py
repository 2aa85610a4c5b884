"""Probe (issue 19, a measured loser, kept so the row can be re-run): a
per-stem logit bias on the shipped separator's masks, softmax(l / T + b),
moving bins between guitar and piano, scored on the first 12 VALID tracks of
the held-out timbre sets (never the reserved material). Run from the
repository root after rendering data/holdout-own and data/holdout-rec
(docs/models.md):

    python docs/models/separator-bias/bias_probe.py
"""
from pathlib import Path

import torch

from engine.storage.model import MSDMModel
from training.calibrate_separator import valid_set
from training.train_separator import score


def with_bias(separator, bias: list[float]) -> None:
    """Reweight the separator's trained masks by exp(bias) per stem:
    softmax(l / T + b) = m exp(b) / sum over stems of m exp(b)."""
    trained = type(separator).masks.__get__(separator)
    b = torch.tensor(bias, dtype=torch.float32)[None, :, None, None]

    def masks(spec):
        weighted = trained(spec) * torch.exp(b)
        return weighted / weighted.sum(1, keepdim=True)
    separator.masks = masks


def main() -> None:
    torch.set_num_threads(1)
    separator = MSDMModel.load("engine/models/default.safetensors").separator
    sets = {name: valid_set(Path(f"data/{name}"), 12) for name in ("holdout-own", "holdout-rec")}
    with torch.no_grad():
        for guitar in (0.0, 0.3, -0.3, 0.6, -0.6):
            with_bias(separator, [0.0, 0.0, guitar, 0.0])
            scores = {name: score(separator, windows) for name, windows in sets.items()}
            print(f"guitar bias {guitar:+.1f}: " + "  ".join(
                f"{name} All {v['All']:.2f} g {v['guitar']:.2f} p {v['piano']:.2f} b {v['bass']:.2f}"
                for name, v in scores.items()), flush=True)


if __name__ == "__main__":
    main()
