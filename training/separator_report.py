"""Before/after table and figure of two separators, per stem and per data source.

Reads the CSVs that `msdm evaluate --csv` writes (one per model and data source,
same protocol), takes each file's `model` row (and the `oracle` row, the ideal
ratio mask, where a file has one), and writes a markdown table and a grouped
bar chart: one panel per data source, one pair of bars (before, after) per stem.
Issue "timbres" asks for exactly this view: per stem, per data source, before
and after.

    python -m training.separator_report \
        --source "synth TEST" runs/eval/shipped-test.csv runs/eval/new-test.csv \
        --source "own held-out timbres" runs/eval/shipped-holdout-own.csv runs/eval/new-holdout-own.csv \
        --labels "shipped" "diverse-v1" --markdown docs/models/x.md --figure docs/models/x.png
"""

from __future__ import annotations

import argparse
import csv
import os
from pathlib import Path
from typing import Mapping, Sequence

from engine.atomic import write_atomic
from engine.core.config import SLAKH_STEMS
from training.figures import plot_separator_before_after

COLUMNS = (*SLAKH_STEMS, "All")


def read_rows(path: str | os.PathLike) -> dict[str, dict[str, float]]:
    """method -> {stem or All: SI-SNRi dB} of one `msdm evaluate --csv` file."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    missing = [c for c in ("method", *COLUMNS) if rows and c not in rows[0]]
    if not rows or missing:
        raise ValueError(f"{path}: not an `msdm evaluate --csv` file (missing columns {missing or 'and rows'})")
    return {row["method"]: {c: float(row[c]) for c in COLUMNS} for row in rows}


def collect(sources: Sequence[tuple[str, str, str]]) -> list[dict]:
    """[(name, before_csv, after_csv)] -> one record per source with the model
    rows before and after and the oracle row where either file has one."""
    records = []
    for name, before_csv, after_csv in sources:
        before, after = read_rows(before_csv), read_rows(after_csv)
        for path, rows in ((before_csv, before), (after_csv, after)):
            if "model" not in rows:
                raise ValueError(f"{path}: no `model` row")
        records.append({"source": name, "before": before["model"], "after": after["model"],
                        "oracle": after.get("oracle") or before.get("oracle")})
    return records


def markdown(records: Sequence[Mapping], labels: tuple[str, str]) -> str:
    lines = ["| data | model | " + " | ".join(COLUMNS) + " (dB) |",
             "|---|---|" + "---:|" * len(COLUMNS)]
    for record in records:
        rows = [(labels[0], record["before"]), (labels[1], record["after"])]
        if record["oracle"]:
            rows.append(("oracle (ideal ratio mask)", record["oracle"]))
        for n, (label, values) in enumerate(rows):
            source = record["source"] if n == 0 else ""
            cells = [f"{values[c]:.2f}" for c in COLUMNS]
            if label == labels[1]:
                cells = [f"**{cell}**" for cell in cells]
            lines.append(f"| {source} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", nargs=3, action="append", required=True, metavar=("NAME", "BEFORE_CSV", "AFTER_CSV"))
    parser.add_argument("--labels", nargs=2, default=("before", "after"))
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--figure", type=Path)
    args = parser.parse_args(argv)
    try:
        records = collect([tuple(s) for s in args.source])
    except (OSError, ValueError) as error:
        parser.error(str(error))
    table = markdown(records, tuple(args.labels))
    print(table, end="")
    if args.markdown:
        write_atomic(args.markdown, table)
    if args.figure:
        print(f"wrote {plot_separator_before_after(records, tuple(args.labels), args.figure, COLUMNS)}")


if __name__ == "__main__":
    main()
