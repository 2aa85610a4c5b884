"""Calibrate the first-guess separator's mask temperature on held-out VALID sets.

The separator's masks are a softmax over the stems; trained on a set of
instruments, it is over-confident on instruments it never heard, and a bin
given wholly to the wrong stem costs more SI-SNR than a bin shared. Temperature
scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks") softens
every mask by one number, softmax(logits / T), chosen after training on data
the network was not trained on: here the VALID split of the held-out timbre
sets (`msdm dataset synth --timbres holdout` and `--timbres holdout-recorded`),
never the reserved material. Softer masks cost a little on instruments the
separator knows, so `--monitor-data` (the training engine's own VALID split)
bounds that cost: only temperatures within `--max-drop` dB of the T = 1 score
there are candidates. The stems still sum to the mix exactly (the masks still
sum to one).

    python -m training.calibrate_separator --model engine/models/default.safetensors \\
        --data data/holdout-own data/holdout-rec --tracks 12 --monitor-data data/synth --max-drop 0.15 \\
        -o runs/eval/calibrated.safetensors --csv docs/models/separator-temperature.csv
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
from pathlib import Path

import numpy as np
import torch

from engine.atomic import write_atomic
from engine.core.separator import MaskSeparator
from engine.errors import ModelFileError
from engine.storage.model import MSDMModel
from training.train_separator import STEMS, score, valid_windows

TEMPERATURES = (1.0, 1.2, 1.4, 1.6, 1.8, 2.0)


def with_temperature(separator: MaskSeparator, temperature: float) -> MaskSeparator:
    """The same weights with another mask temperature."""
    tempered = MaskSeparator(dataclasses.replace(separator.config, mask_temperature=temperature))
    tempered.load_state_dict(separator.state_dict())
    return tempered.eval()


def valid_set(root: Path, tracks: int) -> list[np.ndarray]:
    """The first `tracks` VALID tracks of a dataset, or a clear error when it has none."""
    windows = valid_windows(root, tracks) if (root / "valid").is_dir() else []
    if not windows:
        raise SystemExit(f"{root}: no VALID tracks (a dataset folder with valid/, from msdm dataset synth)")
    return windows


def temperature_scores(separator: MaskSeparator, sets: dict[str, list[np.ndarray]],
                       temperatures: tuple[float, ...], monitor: list[np.ndarray] | None = None) -> list[dict]:
    """Per temperature and set: SI-SNRi per stem and All; `mean` is the mean
    of the sets' All; `monitor All` the monitor set's, where one is given."""
    rows = []
    for temperature in temperatures:
        tempered = with_temperature(separator, temperature)
        row: dict = {"temperature": temperature}
        for name, windows in sets.items():
            scores = score(tempered, windows)
            row.update({f"{name} {key}": value for key, value in scores.items()})
        row["mean"] = float(np.mean([row[f"{name} All"] for name in sets]))
        if monitor:
            row["monitor All"] = score(tempered, monitor)["All"]
        rows.append(row)
        print(f"T {temperature:.2f}: " + "  ".join(f"{name} {row[f'{name} All']:.2f}" for name in sets)
              + f"  mean {row['mean']:.2f}" + (f"  monitor {row['monitor All']:.2f}" if monitor else ""), flush=True)
    return rows


def choose(rows: list[dict], max_drop: float) -> dict:
    """The best held-out mean among the temperatures that keep the monitor
    score within `max_drop` dB of T = 1's (all of them without a monitor)."""
    if "monitor All" not in rows[0]:
        return max(rows, key=lambda row: row["mean"])
    reference = next((row["monitor All"] for row in rows if row["temperature"] == 1.0), None)
    if reference is None:
        raise SystemExit("with --monitor-data, the temperatures must include 1 (the reference)")
    allowed = [row for row in rows if row["monitor All"] >= reference - max_drop]
    return max(allowed, key=lambda row: row["mean"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a model file with a first-guess separator")
    parser.add_argument("--data", type=Path, nargs="+", required=True,
                        help="held-out dataset folders; their VALID split chooses the temperature")
    parser.add_argument("--tracks", type=int, default=12, help="VALID tracks of each set")
    parser.add_argument("--temperatures", type=float, nargs="+", default=list(TEMPERATURES))
    parser.add_argument("--monitor-data", type=Path,
                        help="a dataset the separator was trained like (its VALID split): bounds what softer masks "
                             "may cost on known instruments")
    parser.add_argument("--max-drop", type=float, default=0.15, metavar="DB",
                        help="with --monitor-data: the most its score may fall below T = 1's")
    parser.add_argument("-o", "--out", type=Path, required=True, help="the model file with the chosen temperature")
    parser.add_argument("--csv", type=Path, help="also write every temperature's scores here")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if any(not 0.1 <= t <= 10 for t in args.temperatures):
        parser.error("temperatures must lie in [0.1, 10]")

    torch.set_num_threads(args.threads)
    try:
        model = MSDMModel.load(args.model)
    except ModelFileError as error:
        raise SystemExit(str(error)) from error
    if model.separator is None:
        raise SystemExit(f"{args.model} has no first-guess separator to calibrate")
    sets = {root.name: valid_set(root, args.tracks) for root in args.data}
    # Searched from the raw logits (T = 1), whatever temperature the file held.
    base = with_temperature(model.separator, 1.0)
    monitor = valid_set(args.monitor_data, args.tracks) if args.monitor_data else None
    rows = temperature_scores(base, sets, tuple(args.temperatures), monitor)
    best = choose(rows, args.max_drop)
    if args.csv is not None:
        columns = list(rows[0])
        def write(tmp: Path) -> None:
            with open(tmp, "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(columns)
                writer.writerows([[f"{row[c]:.3f}" for c in columns] for row in rows])
        write_atomic(args.csv, write)
    model.separator = with_temperature(model.separator, best["temperature"])
    model.save(args.out, source=f"{model.source}; separator mask temperature {best['temperature']:g} "
                                f"(calibrated on VALID of {', '.join(sets)})")
    print(f"mask temperature {best['temperature']:g} (mean held-out All {best['mean']:.2f} dB, "
          f"{rows[0]['mean']:.2f} at T {rows[0]['temperature']:g}) -> {args.out}; stems: {', '.join(STEMS)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
