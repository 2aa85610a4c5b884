"""Pictures for the docs: learning curves and spectrograms (matplotlib, no display)."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Mapping

import numpy as np

from engine.atomic import write_atomic


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no screen needed
    import matplotlib.pyplot as plt

    return plt


def read_metrics(*metrics_csv: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
    """Lightning CSVLogger output (one file per run or resume) -> metric -> [(step, value)], by step."""
    series: dict[str, list[tuple[int, float]]] = {}
    for path in metrics_csv:
        with open(path, newline="") as handle:
            for row in csv.DictReader(handle):
                for key, value in row.items():
                    if key in ("epoch", "step") or not value:
                        continue
                    series.setdefault(key, []).append((int(row["step"]), float(value)))
    return {key: sorted(values) for key, values in series.items()}


def plot_learning_curve(metrics_csv: str | os.PathLike | list, out_png: str | os.PathLike, title: str = "") -> Path:
    plt = _pyplot()
    files = metrics_csv if isinstance(metrics_csv, (list, tuple)) else [metrics_csv]
    series = read_metrics(*files)
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=120)
    if "train_loss" in series:
        steps, values = map(np.array, zip(*series["train_loss"]))
        ax.plot(steps, values, color="0.75", lw=0.8, label="train loss")
        width = len(values) // 50
        if width > 1:  # a running mean, where there are enough points for one
            smooth = np.convolve(values, np.ones(width) / width, mode="valid")
            ax.plot(steps[width - 1:], smooth, color="C0", lw=1.5, label=f"train loss (mean of {width})")
    if "valid_loss" in series:
        steps, values = zip(*series["valid_loss"])
        ax.plot(steps, values, "o-", color="C3", ms=3, label="valid loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("EDM-weighted MSE")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    write_atomic(out_png, lambda tmp: fig.savefig(tmp, format=Path(out_png).suffix[1:] or "png"))
    plt.close(fig)
    return Path(out_png)


def plot_spectrograms(stems: Mapping[str, np.ndarray], sample_rate: int, out_png: str | os.PathLike,
                      title: str = "") -> Path:
    """One log-magnitude spectrogram per stem (1-D arrays), stacked vertically."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(stems), 1, figsize=(8, 1.6 * len(stems)), dpi=110, sharex=True)
    axes = np.atleast_1d(axes)
    for ax, (name, audio) in zip(axes, stems.items()):
        ax.specgram(np.asarray(audio, dtype=np.float64) + 1e-9, NFFT=1024, Fs=sample_rate, noverlap=768,
                    cmap="magma", vmin=-140)
        ax.set_ylabel(name)
        ax.set_ylim(0, sample_rate / 2)
    axes[-1].set_xlabel("seconds")
    if title:
        axes[0].set_title(title)
    fig.tight_layout()
    write_atomic(out_png, lambda tmp: fig.savefig(tmp, format=Path(out_png).suffix[1:] or "png"))
    plt.close(fig)
    return Path(out_png)
