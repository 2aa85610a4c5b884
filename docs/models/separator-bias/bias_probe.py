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
torch.set_num_threads(1)
sep = MSDMModel.load("engine/models/default.safetensors").separator
sets = {n: valid_set(Path(f"data/{n}"), 12) for n in ("holdout-own", "holdout-rec")}
orig = sep.masks
def with_bias(bias):
    b = torch.tensor(bias, dtype=torch.float32)[None, :, None, None]
    def masks(spec):
        m = orig(spec)
        # softmax(l / T + b) = m exp(b) / sum over stems of m exp(b): the trained masks reweighted
        w = m * torch.exp(b)
        return w / w.sum(1, keepdim=True)
    sep.masks = masks
with torch.no_grad():
    for d in [0.0, 0.3, -0.3, 0.6, -0.6]:
        with_bias([0.0, 0.0, d, 0.0])
        r = {n: score(sep, w) for n, w in sets.items()}
        print(f"guitar bias {d:+.1f}: " + "  ".join(f"{n} All {v['All']:.2f} g {v['guitar']:.2f} p {v['piano']:.2f} b {v['bass']:.2f}" for n, v in r.items()), flush=True)
