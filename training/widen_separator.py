"""Widen a trained first-guess separator without changing what it computes
(Net2WiderNet, Chen, Goodfellow & Shlens 2016, "Net2Net").

The separator's curve is flat at hidden 256 on training and held-out data
alike (docs/models.md): it underfits, and a wider network started from
scratch would need hours on a CPU to catch up with the shipped one. Widening
copies every hidden unit `factor` times (encoder, both LSTM directions of every
layer, decoder), so each copy computes exactly what its original did:

- a layer that *produces* copied units repeats its rows (weights, biases, and
  LayerNorm's gain and bias: the mean and variance over copied units are those
  over the originals, so the normalised copies are the originals);
- a layer that *reads* copied units splits each original input weight among
  the copies with random positive shares that sum to one, so its sum is
  unchanged. Unequal shares give the copies different outgoing weights, hence
  different gradients: the symmetry that would keep copies equal forever is
  broken without noise on the function (Net2Net adds noise instead).

The LSTM's recurrent weights read the copied hidden state, its cell states are
copied along, so every copy's gates see the same pre-activation as the
original's at every step. tests/test_widen_separator.py checks the output.
Used through `python -m training.train_separator --init M --widen FACTOR`.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from engine.core.separator import MaskSeparator, SeparatorConfig

GATES = 4  # an LSTM's input, forget, cell and output gates, stacked as rows


def copied(units: int, factor: int) -> Tensor:
    """New unit j -> the original unit it copies: [0..units-1] repeated `factor` times."""
    return torch.arange(units * factor) % units


def read_split(weight: Tensor, sources: Tensor, generator: torch.Generator) -> Tensor:
    """A weight [rows, inputs] made to read widened inputs, new input p being a
    copy of old input sources[p]: each old weight is split among its copies
    with random shares in [0.25, 0.75] / (their sum) that sum to one per row."""
    shares = torch.rand(weight.shape[0], len(sources), generator=generator, dtype=weight.dtype) * 0.5 + 0.25
    totals = torch.zeros(weight.shape[0], weight.shape[1], dtype=weight.dtype).index_add_(1, sources, shares)
    return weight[:, sources] * shares / totals[:, sources]


def gate_rows(hidden: int, factor: int) -> Tensor:
    """Row map of an LSTM weight [4 * hidden * factor, ...]: each gate's block of copied units."""
    per_gate = copied(hidden, factor)
    return torch.cat([gate * hidden + per_gate for gate in range(GATES)])


def widened_config(config: SeparatorConfig, factor: int) -> SeparatorConfig:
    """The shape of `config` widened `factor` times (what widen_separator builds)."""
    if type(factor) is not int or factor < 1:
        raise ValueError(f"factor must be a positive integer, got {factor!r}")
    return dataclasses.replace(config, hidden=config.hidden * factor)


def widen_separator(model: MaskSeparator, factor: int = 2, seed: int = 0) -> MaskSeparator:
    """A separator with `hidden * factor` that computes what `model` computes (to float rounding)."""
    config = model.config
    h, hh = config.hidden, config.hidden // 2
    wide = MaskSeparator(widened_config(config, factor))
    old = {k: v.detach() for k, v in model.state_dict().items()}
    generator = torch.Generator().manual_seed(seed)
    enc = copied(h, factor)                                   # encoder / decoder hidden units
    # The LSTM output (and the input of layers >= 1) is [forward | backward],
    # each direction's units copied: the source of every new position.
    directions = torch.cat([copied(hh, factor), hh + copied(hh, factor)])
    new: dict[str, Tensor] = {
        "input_mean": old["input_mean"], "input_scale": old["input_scale"],
        "encoder.0.weight": old["encoder.0.weight"][enc], "encoder.0.bias": old["encoder.0.bias"][enc],
        "encoder.1.weight": old["encoder.1.weight"][enc], "encoder.1.bias": old["encoder.1.bias"][enc],
    }
    rows = gate_rows(hh, factor)
    for layer in range(config.layers):
        inputs = enc if layer == 0 else directions
        for suffix in ("", "_reverse"):
            name = f"l{layer}{suffix}"
            new[f"lstm.weight_ih_{name}"] = read_split(old[f"lstm.weight_ih_{name}"][rows], inputs, generator)
            new[f"lstm.weight_hh_{name}"] = read_split(old[f"lstm.weight_hh_{name}"][rows], copied(hh, factor),
                                                       generator)
            new[f"lstm.bias_ih_{name}"] = old[f"lstm.bias_ih_{name}"][rows]
            new[f"lstm.bias_hh_{name}"] = old[f"lstm.bias_hh_{name}"][rows]
    # The decoder reads [encoded | LSTM output].
    decoder_inputs = torch.cat([enc, h + directions])
    new["decoder.0.weight"] = read_split(old["decoder.0.weight"][enc], decoder_inputs, generator)
    new["decoder.0.bias"] = old["decoder.0.bias"][enc]
    new["decoder.1.weight"], new["decoder.1.bias"] = old["decoder.1.weight"][enc], old["decoder.1.bias"][enc]
    new["decoder.3.weight"] = read_split(old["decoder.3.weight"], enc, generator)
    new["decoder.3.bias"] = old["decoder.3.bias"]
    wide.load_state_dict(new, strict=True)
    return wide
