"""Generation quality of a model on a dataset split: `msdm evaluate-generation`.

For each task (generate; impute with some stems given) the model's windows
(training.generation_candidates) are scored per stem with the measures of
training.generation_metrics, beside two references scored the same way:
the real evaluation windows ("real": 0 distance, agreement 1 by definition)
and noise shaped to them ("shaped noise": 1 distance by definition). The
distance scale is calibrated on `draws` random sets of real windows of the
candidate's size from the pool half (never the evaluation windows), so the
real row's distance shows the measure's own noise.

Rows go to a CSV (task, method, metric, stem, value, windows, settings,
readable) and a markdown table per task, both written atomically. A distance
whose scale cannot be read on the split (gm.DistanceScale.readable: shaped
noise no farther than real draws, or the two within one spread) is flagged
0 in the CSV's last column and bracketed in the markdown.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from engine.atomic import write_atomic
from training import audio_features as af
from training import generation_metrics as gm
from training.generation_candidates import RealWindows

ProgressFn = Callable[[float, str], None]

DRAWS = 16
METRICS = ("log-mel distance", "structure distance", "pitch clarity", "clarity ratio",
           "chroma agreement", "onset agreement")
DISTANCES = {"log-mel distance": "log-mel", "structure distance": "structure"}
# Column headings of the markdown tables (the CSV keeps the full names).
SHORT = {"log-mel distance": "mel", "structure distance": "struct", "pitch clarity": "clarity",
         "clarity ratio": "clar/real", "chroma agreement": "chroma", "onset agreement": "onset"}
LEGEND = ("mel / struct: normalised Fréchet distance of log-mel / of note-structure frame features (spectral "
          "flatness per octave band, periodicity), 0 = real windows of other tracks, 1 = noise shaped to them; "
          "clarity: mean periodicity of active frames, clar/real: its ratio to real stems; chroma / onset: "
          "agreement with the given stems, 0 = the same stem of another track, 1 = the true stem.")


@dataclass
class Row:
    task: str                     # "generate" or "impute bass+drums"
    method: str                   # "model (...)", "real", "shaped noise"
    values: dict[tuple[str, str], float]   # (metric, stem) -> value
    windows: int
    settings: dict = field(default_factory=dict)


def _pooled(features: Sequence[dict], name: str) -> np.ndarray:
    return np.concatenate([f[name] for f in features])


class Judge:
    """The real statistics of one dataset split, computed once: per stem the
    reference half's Gaussians and clarity, and the pool's features (real and
    shaped noise) that calibrate the distance for any number of windows."""

    def __init__(self, real: RealWindows, *, draws: int = DRAWS, seed: int = 0,
                 progress: ProgressFn | None = None) -> None:
        self.real, self.draws, self.seed = real, draws, seed
        rate = real.sample_rate
        rng = np.random.default_rng(seed)
        self.reference: dict[tuple[str, str], gm.Gaussian] = {}
        self.pool: dict[str, list[dict]] = {}
        self.pool_noise: dict[str, list[dict]] = {}
        self.real_clarity: dict[str, float] = {}
        for n, stem in enumerate(real.stems):
            if progress:
                progress(n / len(real.stems), f"real statistics of {stem}")
            reference = [gm.frame_features(x, rate, stem) for x in real.reference[:, n]]
            for name in gm.FEATURE_SETS:
                self.reference[stem, name] = gm.Gaussian.fit(_pooled(reference, name))
            self.pool[stem] = [gm.frame_features(x, rate, stem) for x in real.pool[:, n]]
            self.pool_noise[stem] = [gm.frame_features(af.shaped_noise(x, rate, rng), rate, stem)
                                     for x in real.pool[:, n]]
            if stem in af.PITCHED:
                self.real_clarity[stem] = gm.pitch_clarity(real.reference[:, n], rate, stem)
        self._scales: dict[tuple[str, str, int], gm.DistanceScale] = {}

    def scale(self, stem: str, name: str, windows: int) -> gm.DistanceScale:
        """Distances of `draws` real sets of `windows` pool windows (distinct
        tracks while there are enough, never an evaluation window) and of the
        shaped noise of the same sets."""
        key = (stem, name, windows)
        if key not in self._scales:
            rng = np.random.default_rng([self.seed, windows])
            tracks = self.real.pool_tracks
            allowed = np.setdiff1d(np.arange(len(tracks)), self.real.evaluation)
            if len(allowed) < windows:   # a tiny pool: calibrate on all of it, evaluation windows too
                allowed = np.arange(len(tracks))
            reference = self.reference[stem, name]
            real, noise = [], []
            for _ in range(self.draws):
                chosen = []
                for t in range(windows):
                    order = rng.permutation(np.unique(tracks[allowed]))
                    track = order[t % len(order)] if t < len(order) else rng.choice(order)
                    options = np.setdiff1d(allowed[tracks[allowed] == track], chosen)
                    chosen.append(int(rng.choice(options if len(options) else allowed)))
                real.append(gm.frechet_distance(gm.Gaussian.fit(_pooled([self.pool[stem][i] for i in chosen], name)),
                                                reference))
                noise.append(gm.frechet_distance(
                    gm.Gaussian.fit(_pooled([self.pool_noise[stem][i] for i in chosen], name)), reference))
            self._scales[key] = gm.DistanceScale(np.array(real), np.array(noise))
        return self._scales[key]

    def realism(self, windows: np.ndarray, stems: Sequence[str]) -> dict[tuple[str, str], float]:
        """Normalised distances, pitch clarity and its ratio to real stems, for
        the rows of `windows` [W, N, T] that are `stems`."""
        rate, out = self.real.sample_rate, {}
        for stem in stems:
            n = self.real.stems.index(stem)
            features = [gm.frame_features(x, rate, stem) for x in windows[:, n]]
            for metric, name in DISTANCES.items():
                distance = gm.frechet_distance(gm.Gaussian.fit(_pooled(features, name)), self.reference[stem, name])
                out[metric, stem] = self.scale(stem, name, len(windows)).normalise(distance)
            if stem in af.PITCHED:
                clarity = gm.pitch_clarity(windows[:, n], rate, stem)
                out["pitch clarity", stem] = clarity
                out["clarity ratio", stem] = clarity / self.real_clarity[stem]
        return out


def _given_audio(stems: np.ndarray, names: Sequence[str], given: Sequence[str], pitched_only: bool) -> np.ndarray | None:
    rows = [names.index(g) for g in given if not pitched_only or g in af.PITCHED]
    return stems[:, rows].sum(1) if rows else None


def agreement(candidates: np.ndarray, real: RealWindows, given: Sequence[str]) -> dict[tuple[str, str], float]:
    """Normalised chroma agreement of each imputed pitched stem with the given
    pitched stems (when any is given) and onset agreement of each imputed stem
    with all given stems, against the true stems (1) and other tracks' (0)."""
    truth, names, rate = real.evaluation_stems, list(real.stems), real.sample_rate
    tracks = real.pool_tracks[real.evaluation]
    out = {}
    for kind, pitched_only in (("chroma", True), ("onset", False)):
        context = _given_audio(truth, names, given, pitched_only)
        if context is None:
            continue
        for stem in names:
            if stem in given or (kind == "chroma" and stem not in af.PITCHED):
                continue
            n = names.index(stem)
            scale = gm.agreement_scale(kind, truth[:, n], context, tracks, rate)
            out[f"{kind} agreement", stem] = scale.normalise(gm.mean_agreement(kind, candidates[:, n], context, rate))
    return out


CEILING = "autoencoder round trip (the latent prior's ceiling)"


def score_task(judge: Judge, task: str, candidates: np.ndarray, *, given: Sequence[str] = (),
               label: str = "model", settings: dict | None = None, references: bool = True,
               seed: int = 0, ceiling: np.ndarray | None = None) -> list[Row]:
    """Rows for one task's candidates [W, N, T] (windows in the order of the
    evaluation windows), with the real and shaped-noise references first and,
    when given, `ceiling`: the evaluation windows through the latent prior's
    autoencoder (encoded, decoded), the best a prior over its latents can do,
    which tells the decoder's share of a distance from the prior's."""
    real = judge.real
    if candidates.shape != real.evaluation_stems.shape:
        raise ValueError(f"candidates {candidates.shape} are not shaped like the evaluation windows "
                         f"{real.evaluation_stems.shape}")
    free = [s for s in real.stems if s not in given]
    name = "generate" if task == "generate" else "impute " + "+".join(given)
    rows = []
    if references:
        truth = real.evaluation_stems
        rng = np.random.default_rng([seed, 7])
        noise = np.stack([[af.shaped_noise(x, real.sample_rate, rng) for x in window] for window in truth])
        references_audio = [("real (the evaluation windows)", truth), ("shaped noise (of those windows)", noise)]
        if ceiling is not None:
            if ceiling.shape != truth.shape:
                raise ValueError(f"ceiling {ceiling.shape} is not shaped like the evaluation windows {truth.shape}")
            references_audio.append((CEILING, ceiling))
        for method, audio in references_audio:
            values = judge.realism(audio, free)
            if given:
                values.update(agreement(audio, real, given))
            rows.append(Row(name, method, values, len(audio)))
    values = judge.realism(candidates, free)
    if given:
        values.update(agreement(candidates, real, given))
    rows.append(Row(name, label, values, len(candidates), settings or {}))
    return rows


def same_seed_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over windows of the sample correlation of one stem imputed twice (from
    different given stems, the same seed): near 1 means the given stems were ignored."""
    return float(np.mean([gm._pearson(x, y) for x, y in zip(a, b)]))


# --------------------------------------------------------------------------- #
# Reports
# --------------------------------------------------------------------------- #

UNREADABLE = ("A distance in brackets is not readable at this many windows on this split: shaped noise sits no "
              "farther from the reference half than real draws do, or the two overlap within one spread "
              "(separation < 1). More tracks or more windows make it readable; do not compare it with a bar.")


def _readable(judge: Judge, metric: str, stem: str, windows: int) -> bool | None:
    """Whether a distance cell's scale can be read (DistanceScale.readable); None for other metrics."""
    if metric not in DISTANCES:
        return None
    return judge.scale(stem, DISTANCES[metric], windows).readable


def _format(value: float) -> str:
    return "" if value is None or not np.isfinite(value) else f"{value:.2f}"


def write_report(rows: Sequence[Row], judge: Judge, csv_path: str | os.PathLike, markdown_path: str | os.PathLike,
                 notes: Sequence[str] = ()) -> None:
    """CSV: one line per (row, metric, stem). Markdown: a table per task, a
    column per (metric, stem) that any of its rows has, and the distance's
    resolution at the rows' number of windows."""
    if not rows:
        raise ValueError("no rows to write")
    stems = judge.real.stems
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["task", "method", "metric", "stem", "value", "windows", "settings", "readable"])
    for row in rows:
        for metric in METRICS:
            for stem in stems:
                if (metric, stem) in row.values:
                    readable = _readable(judge, metric, stem, row.windows)
                    writer.writerow([row.task, row.method, metric, stem, repr(row.values[metric, stem]), row.windows,
                                     json.dumps(row.settings, sort_keys=True),
                                     "" if readable is None else int(readable)])
    write_atomic(csv_path, buffer.getvalue())

    lines = []
    for task in dict.fromkeys(row.task for row in rows):
        group = [row for row in rows if row.task == task]
        columns = [(m, s) for m in METRICS for s in stems if any((m, s) in r.values for r in group)]
        lines += [f"**{task}** ({group[0].windows} windows)", "",
                  "| method | " + " | ".join(f"{SHORT[m]} {s}" for m, s in columns) + " |",
                  "|---|" + "---:|" * len(columns)]
        for row in group:
            cells = []
            for metric, stem in columns:
                text = _format(row.values.get((metric, stem)))
                cells.append(f"({text})" if text and _readable(judge, metric, stem, row.windows) is False else text)
            lines.append(f"| {row.method} | " + " | ".join(cells) + " |")
        lines.append("")
    counts = sorted({row.windows for row in rows})
    for count in counts:
        parts = []
        for metric, name in DISTANCES.items():
            spread = ", ".join(f"{s} {judge.scale(s, name, count).resolution:.2f}/"
                               f"{judge.scale(s, name, count).separation:.0f}" for s in stems)
            parts.append(f"{metric}: {spread}")
        lines.append(f"At {count} windows, spread of a real draw's distance / separation of real from shaped "
                     f"noise (1 / (spread of real + spread of noise)): " + "; ".join(parts) + ".")
    lines.append(LEGEND)
    if any(_readable(judge, m, s, row.windows) is False for row in rows for m, s in row.values):
        lines.append(UNREADABLE)
    lines.append(f"Real statistics: {len(judge.real.reference)} windows of the reference half; scale from "
                 f"{judge.draws} draws of the pool half ({len(judge.real.pool)} windows).")
    lines += list(notes)
    write_atomic(markdown_path, "\n".join(lines) + "\n")


def elapsed(began: float) -> str:
    return f"{(time.perf_counter() - began) / 60:.1f} min"
