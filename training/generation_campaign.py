"""The latent prior's campaign as one picture: issue 20's measures of each
shipped or candidate checkpoint (`msdm evaluate-generation` CSVs, same split
and windows) against the CPU-minutes its lineage had trained, with the bars
the issue sets as dashed lines.

    python -m training.generation_campaign -o docs/models/generation-campaign.png \\
        --point "v3:302:docs/models/generation-test16-2026-12-05c-v3-cal.csv" \\
        --point "v4 + guidance 2:432:docs/models/generation-test16-2026-12-05d-v4-cal-g2.csv"

`--x-label` and `--tasks generate` draw other sweeps the same way (e.g. the
autoguidance weight on the x axis, generation panels only).

Each panel is the mean over the stems the measure has (generation: bass,
guitar, piano for clarity, drums, guitar, piano for mel; imputation: every
imputed stem of both given sets), so one number per checkpoint and measure.
"""

from __future__ import annotations

import argparse
import csv
import os
from pathlib import Path

import numpy as np

# (panel title, task prefix, metric, stems or None for all, issue 20's bar, higher is better)
MEASURES = (
    ("generation: log-mel distance\n(drums, guitar, piano)", "generate", "log-mel distance",
     ("drums", "guitar", "piano"), 0.35, False),
    ("generation: pitch clarity / real\n(bass, guitar, piano)", "generate", "clarity ratio", None, 0.8, True),
    ("imputation: clarity / real", "impute", "clarity ratio", None, 0.8, True),
    ("imputation: chroma agreement", "impute", "chroma agreement", None, 0.5, True),
    ("imputation: onset agreement", "impute", "onset agreement", None, 0.5, True),
)


def campaign_values(csv_path: str | os.PathLike, tasks: tuple[str, ...] = ("generate", "impute")) -> dict[str, float]:
    """One evaluate-generation CSV -> {panel title: mean of the model rows} (the panels of `tasks`)."""
    with open(csv_path, newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["method"].startswith("model")]
    values = {}
    for title, task, metric, stems, _, _ in MEASURES:
        if task not in tasks:
            continue
        picked = [float(r["value"]) for r in rows if r["task"].startswith(task) and r["metric"] == metric
                  and (stems is None or r["stem"] in stems)]
        if not picked:
            raise ValueError(f"{csv_path}: no model rows of {task} {metric}")
        values[title] = float(np.mean(picked))
    return values


def parse_point(text: str) -> tuple[str, float, Path]:
    label, minutes, path = text.split(":", 2)
    return label, float(minutes), Path(path)


def plot_campaign(points: list[tuple[str, float, Path]], out_png: str | os.PathLike,
                  x_label: str = "CPU-minutes of the latent prior",
                  tasks: tuple[str, ...] = ("generate", "impute")) -> Path:
    from training.figures import plot_generation_campaign

    series = [(label, minutes, campaign_values(path, tasks)) for label, minutes, path in points]
    panels = [(title, bar, higher) for title, task, _, _, bar, higher in MEASURES if task in tasks]
    return plot_generation_campaign(series, panels, out_png, x_label)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--point", action="append", required=True, type=parse_point,
                        metavar="LABEL:CPU_MINUTES:CSV", help="one checkpoint's evaluate-generation CSV")
    parser.add_argument("--x-label", default="CPU-minutes of the latent prior", help="what the points' numbers are")
    parser.add_argument("--tasks", nargs="+", choices=("generate", "impute"), default=["generate", "impute"],
                        help="which measures to draw (default both)")
    parser.add_argument("-o", "--out", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        print(f"wrote {plot_campaign(args.point, args.out, args.x_label, tuple(args.tasks))}")
    except (OSError, ValueError, KeyError) as error:
        parser.exit(2, f"error: {error}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
