"""Pictures for the docs: learning curves and spectrograms (matplotlib, no display)."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from engine.atomic import write_atomic


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no screen needed
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, out_png: str | os.PathLike) -> Path:
    """Write the figure atomically, in the format its name says, and free it."""
    write_atomic(out_png, lambda tmp: fig.savefig(tmp, format=Path(out_png).suffix[1:] or "png"))
    plt.close(fig)
    return Path(out_png)


def _specgram(ax, audio: np.ndarray, sample_rate: int) -> None:
    """The docs' log-magnitude spectrogram (1024-point, 75 % overlap, floor -140 dB)."""
    with np.errstate(divide="ignore"):  # an exactly silent frame is -inf dB: drawn as the floor
        ax.specgram(np.asarray(audio, dtype=np.float64) + 1e-9, NFFT=1024, Fs=sample_rate, noverlap=768,
                    cmap="magma", vmin=-140)


def _reference_lines(ax, references: Mapping[str, float] | None, x: float) -> None:
    """Dashed horizontal lines (e.g. the oracle), labelled at `x`."""
    for label, value in (references or {}).items():
        ax.axhline(value, color="0.5", ls="--", lw=1)
        ax.text(x, value, f" {label} {value:.1f}", va="bottom", fontsize=8, color="0.3")


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
    return _save(plt, fig, out_png)


def plot_spectrograms(stems: Mapping[str, np.ndarray], sample_rate: int, out_png: str | os.PathLike,
                      title: str = "") -> Path:
    """One log-magnitude spectrogram per stem (1-D arrays), stacked vertically."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(stems), 1, figsize=(8, 1.6 * len(stems)), dpi=110, sharex=True)
    axes = np.atleast_1d(axes)
    for ax, (name, audio) in zip(axes, stems.items()):
        _specgram(ax, audio, sample_rate)
        ax.set_ylabel(name)
        ax.set_ylim(0, sample_rate / 2)
    axes[-1].set_xlabel("seconds")
    if title:
        axes[0].set_title(title)
    fig.tight_layout()
    return _save(plt, fig, out_png)


STEM_COLOURS = {"bass": "tab:blue", "drums": "0.55", "guitar": "tab:orange", "piano": "tab:green"}


def plot_piano_rolls(songs: Sequence[tuple[str, Mapping[str, Sequence]]], out_png: str | os.PathLike,
                     seconds: float | None = None) -> Path:
    """One piano roll per song (title, stem -> notes with .pitch, .on, .off in
    seconds), stems in their own colours, drums as ticks along the bottom;
    the first ``seconds`` of each (all when None)."""
    plt = _pyplot()
    from matplotlib.patches import Patch

    fig, axes = plt.subplots(len(songs), 1, figsize=(11, 3.4 * len(songs)), dpi=110)
    axes = np.atleast_1d(axes)
    for ax, (title, stems) in zip(axes, songs):
        end = seconds or max(n.off for notes in stems.values() for n in notes)
        for stem, notes in stems.items():
            shown = [n for n in notes if n.on < end]
            if stem == "drums":  # GM percussion keys are not pitches: a rug under the roll
                ax.vlines([n.on for n in shown], 14, 19, color=STEM_COLOURS[stem], lw=0.6)
                continue
            for n in shown:
                ax.add_patch(plt.Rectangle((n.on, n.pitch - 0.4), min(n.off, end) - n.on, 0.8,
                                           color=STEM_COLOURS[stem], alpha=0.6, lw=0))
        ax.set_xlim(0, end)
        ax.set_ylim(12, 100)
        ax.set_ylabel("MIDI pitch")
        ax.set_title(title, fontsize=9)
    axes[-1].set_xlabel("seconds")
    axes[0].legend(handles=[Patch(color=c, label=s) for s, c in STEM_COLOURS.items()], loc="upper right",
                   ncol=4, fontsize=8)
    fig.tight_layout()
    return _save(plt, fig, out_png)


def plot_separation(reference: Mapping[str, np.ndarray], estimate: Mapping[str, np.ndarray], sample_rate: int,
                    out_png: str | os.PathLike, scores: Mapping[str, float] | None = None, title: str = "",
                    labels: tuple[str, str] = ("reference", "separated")) -> Path:
    """Reference stems (left) beside separated ones (right), one row per stem,
    with each stem's SI-SNRi over the excerpt when `scores` are given
    (`labels` names the columns: an autoencoder's input and reconstruction too)."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(reference), 2, figsize=(10, 1.6 * len(reference)), dpi=110, sharex=True,
                             sharey=True, squeeze=False)
    for row, name in enumerate(reference):
        for col, (audio, label) in enumerate(((reference[name], labels[0]), (estimate[name], labels[1]))):
            ax = axes[row, col]
            _specgram(ax, audio, sample_rate)
            ax.set_ylim(0, sample_rate / 2)
            note = f" ({scores[name]:+.1f} dB SI-SNRi)" if col == 1 and scores and name in scores else ""
            ax.set_title(f"{name}: {label}{note}", fontsize=9)
        axes[row, 0].set_ylabel("Hz")
    for ax in axes[-1]:
        ax.set_xlabel("seconds")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(plt, fig, out_png)


def plot_separator_curve(log_csv: str | os.PathLike, out_png: str | os.PathLike, title: str = "",
                         references: Mapping[str, float] | None = None) -> Path:
    """training.train_separator's log.csv -> valid SI-SNRi per stem and "All"
    against training minutes, with horizontal reference lines (e.g. the oracle)."""
    plt = _pyplot()
    with open(log_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    minutes = np.array([float(r["minutes"]) for r in rows])
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=120)
    for name, style in (("bass", "C0"), ("drums", "C1"), ("guitar", "C2"), ("piano", "C4")):
        ax.plot(minutes, [float(r[name]) for r in rows], color=style, lw=1, alpha=0.8, label=name)
    ax.plot(minutes, [float(r["All"]) for r in rows], "o-", color="k", lw=2, ms=3, label="All")
    _reference_lines(ax, references, minutes[0])
    ax.set_xlabel("training time (minutes, 1 CPU thread)")
    ax.set_ylabel("valid SI-SNRi (dB)")
    ax.grid(alpha=0.3)
    ax.legend(ncol=5, fontsize=8, loc="lower right")
    ax.set_title(title)
    fig.tight_layout()
    return _save(plt, fig, out_png)


def plot_separator_runs(runs: Mapping[str, tuple[str | os.PathLike, float]], out_png: str | os.PathLike,
                        title: str = "", references: Mapping[str, float] | None = None,
                        column: str = "All", ylabel: str = 'valid SI-SNRi "All" (dB)',
                        legend_loc: str = "lower right") -> Path:
    """Several training runs' valid score on one time axis: {label: (log.csv,
    minutes trained before this run started)}, so a run continued from
    another's weights is drawn where that one ended. `column` names the score
    in the logs (train_separator's "All"; train_autoencoder's
    "valid_spectral_convergence", train_latent_prior's "valid_loss_ema")."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=120)
    for index, (label, (log_csv, offset)) in enumerate(runs.items()):
        with open(log_csv, newline="") as handle:
            rows = list(csv.DictReader(handle))
        minutes = [offset + float(r["minutes"]) for r in rows]
        ax.plot(minutes, [float(r[column]) for r in rows], "o-", color=f"C{index}", lw=1.5, ms=3, label=label)
    _reference_lines(ax, references, 0)
    ax.set_xlabel("training time (minutes, 1 CPU thread)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc=legend_loc)
    ax.set_title(title)
    fig.tight_layout()
    return _save(plt, fig, out_png)


def plot_spectrogram_grid(panels: Mapping[str, np.ndarray], sample_rate: int, out_png: str | os.PathLike,
                          title: str = "", columns: int = 4, max_hz: float | None = None) -> Path:
    """Small spectrograms in a grid, one per labelled 1-D signal (e.g. one note per instrument)."""
    plt = _pyplot()
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 2.0 * rows), dpi=110, sharey=True,
                             squeeze=False)
    for ax, (name, audio) in zip(axes.flat, panels.items()):
        _specgram(ax, audio, sample_rate)
        ax.set_ylim(0, max_hz or sample_rate / 2)
        ax.set_title(name, fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel("Hz", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(plt, fig, out_png)


def plot_separator_before_after(records: Sequence[Mapping], labels: tuple[str, str], out_png: str | os.PathLike,
                                columns: Sequence[str]) -> Path:
    """training.separator_report's records -> one panel per data source, a pair
    of bars (before, after) per column, the ideal mask as a tick where known."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(records), figsize=(3.6 * len(records), 3.4), sharey=True, squeeze=False)
    width = 0.38
    for ax, record in zip(axes[0], records):
        xs = range(len(columns))
        ax.bar([x - width / 2 for x in xs], [record["before"][c] for c in columns], width, label=labels[0],
               color="#9e9e9e")
        ax.bar([x + width / 2 for x in xs], [record["after"][c] for c in columns], width, label=labels[1],
               color="#1f77b4")
        if record["oracle"]:
            ax.scatter(list(xs), [record["oracle"][c] for c in columns], marker="_", s=300, color="black",
                       label="ideal mask")
        ax.set_xticks(list(xs), columns, rotation=30)
        ax.set_title(record["source"], fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("SI-SNRi (dB)")
    axes[0][0].legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return _save(plt, fig, out_png)


def plot_generation_campaign(series: Sequence[tuple[str, float, Mapping[str, float]]],
                             panels: Sequence[tuple[str, float, bool]], out_png: str | os.PathLike,
                             x_label: str = "CPU-minutes of the latent prior") -> Path:
    """One panel per measure (title, the issue's bar, higher is better): each
    checkpoint's value (label, CPU-minutes, {title: value}) against its
    CPU-minutes, the bar dashed (training.generation_campaign)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.1 * len(panels), 3.2), dpi=120)
    xs = [minutes for _, minutes, _ in series]
    for ax, (title, bar, higher) in zip(np.atleast_1d(axes), panels):
        ys = [values[title] for _, _, values in series]
        ax.plot(xs, ys, "o-", color="C0")
        for (label, x, _), y in zip(series, ys):
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(3, 4), fontsize=7)
        ax.axhline(bar, color="0.4", ls="--", lw=1)
        ax.text(xs[0], bar, f" bar {bar:g} ({'higher' if higher else 'lower'} is better)", va="bottom",
                fontsize=7, color="0.3")
        ax.set_title(title, fontsize=8)
        ax.set_xlabel(x_label, fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    return _save(plt, fig, out_png)


def plot_level_distributions(rows: Mapping[str, Sequence[np.ndarray]], stems: Sequence[str],
                             out_png: str | os.PathLike, floor_db: float = -60.0) -> Path:
    """One panel per stem: the share of frames at or under each level (an
    empirical distribution function) for each row (e.g. real, generated,
    generated and mapped; training.calibrate_frame_levels), levels under
    `floor_db` drawn at it."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(stems), figsize=(3.0 * len(stems), 3.0), dpi=120, sharey=True)
    for n, (ax, stem) in enumerate(zip(np.atleast_1d(axes), stems)):
        for k, (label, levels) in enumerate(rows.items()):
            values = np.sort(np.maximum(np.asarray(levels[n], dtype=np.float64), floor_db))
            ax.plot(values, np.arange(1, len(values) + 1) / len(values), color=f"C{k}", lw=1.2,
                    ls="-" if k == 0 else "--" if k == 1 else "-.", label=label)
        ax.set_title(stem, fontsize=9)
        ax.set_xlabel("frame level (dB)", fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    np.atleast_1d(axes)[0].set_ylabel("share of frames at or under", fontsize=8)
    np.atleast_1d(axes)[-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return _save(plt, fig, out_png)


def plot_band_levels(rows: Mapping[str, np.ndarray], stem: str, out_png: str | os.PathLike) -> Path:
    """Two panels for one stem's band levels [B, frames] per row (real,
    generated, mapped; training.calibrate_band_levels): each band's mean
    level and its spread (std) over sounding frames, low band to high."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(7.0, 3.0), dpi=120)
    for k, (label, levels) in enumerate(rows.items()):
        bands = np.arange(levels.shape[0])
        style = dict(color=f"C{k}", lw=1.2, marker="o", ms=3, ls="-" if k == 0 else "--", label=label)
        axes[0].plot(bands, levels.mean(1), **style)
        axes[1].plot(bands, levels.std(1), **style)
    for ax, what in zip(axes, ("mean level (dB)", "spread over frames (std, dB)")):
        ax.set_title(f"{stem}: {what}", fontsize=9)
        ax.set_xlabel("band (log-spaced, low to high)", fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    return _save(plt, fig, out_png)
