"""One model file for every task: the diffusion prior plus the first-guess separator.

    python -m training.pack_model --prior engine/models/default.safetensors \\
        --separator runs/sep/best.safetensors -o engine/models/default.safetensors

The prior's weights and config are kept as they are; the separator's tensors
go in under `separator.` with its config (engine.storage.model).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from engine.storage.model import MSDMModel, load_separator


def pack(prior: Path, separator: Path, out: Path, source: str | None = None) -> MSDMModel:
    model = MSDMModel.load(prior)
    model.separator, meta = load_separator(separator)
    model.__post_init__()  # checks the stems agree and puts the separator in eval mode
    note = f"{model.source}; first-guess separator from {separator.name} (step {meta.get('step', '?')})"
    model.save(out, source=source or note)
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prior", type=Path, required=True, help="an MSDM Studio model file (the diffusion prior)")
    parser.add_argument("--separator", type=Path, required=True, help="a separator file from training.train_separator")
    parser.add_argument("-o", "--out", type=Path, required=True)
    parser.add_argument("--source", help="the provenance line stored in the file")
    args = parser.parse_args(argv)
    model = pack(args.prior, args.separator, args.out, args.source)
    print(f"wrote {args.out}: prior {model.num_parameters:,} parameters + separator "
          f"{model.separator_parameters:,} parameters")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
