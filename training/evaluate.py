"""Separation evaluation: the protocol of Mariani et al. 2024 (MSDM), as in its
reference code (evaluation/evaluate_separation.py, main/data.py).

1. Each test track is cut into non-overlapping `chunk`-sample pieces (262144 in
   the paper); the last partial piece is dropped, so a track shorter than one
   chunk contributes nothing (it is reported in `EvaluationResult.skipped`).
   The mixture of a chunk is the sum of its reference stems (mix.wav is not read).
2. Every chunk is separated at the model's rate and a track's chunks are put
   back end to end; the references are cropped to that length.
3. The re-assembled track is scored in windows of 4 s with a 2 s hop. As in the
   reference code there are ceil((T - overlap) / hop) windows, so the last one
   may be shorter than 4 s (it still holds more than `window - hop` samples).
   A window is dropped when at most one reference stem is non-silent; a stem is
   silent when ||s||_2 / len(s) < 1.5e-5 (main/data.py `is_silent`).
4. SI-SNRi = SISNR(estimate, ref) - SISNR(mixture, ref), SI-SNR without mean
   removal, eps 1e-8 (the reference `sisnr`, which also adds eps to the
   numerator of the scale alpha, like torchmetrics' SI-SDR).
5. Per stem, the mean over all kept windows of all tracks; "All" = the mean of
   the stems' means.

Besides the model, the same run can score two references on the same chunks
and windows: the mixture itself as every stem's estimate (0 dB by definition)
and an oracle upper bound, the ideal ratio mask of the true stems.

Usage: `msdm evaluate --data DATA [--model M] [--settings dirac gaussian:50:1] [--methods model mixture oracle]`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from engine.atomic import write_atomic
from engine.audio.files import read_audio, resample, to_mono
from engine.audio.pipeline import separate_array
from engine.core.diffusion import seed_for
from engine.core.tasks import SamplerSettings, check_likelihood, default_separation_settings
from engine.errors import CommandError

ProgressFn = Callable[[float, str], None]

METHODS = ("model", "mixture", "oracle")
PAPER_CHUNK = 262144          # samples per separated chunk (~11.9 s at 22050 Hz)
WINDOW_S, HOP_S = 4.0, 2.0    # scoring windows
SILENCE = 1.5e-5              # ||s||_2 / len(s) below this: silent
SI_SNR_EPS = 1e-8
ORACLE_N_FFT, ORACLE_HOP = 2048, 512


# --------------------------------------------------------------------------- #
# Metrics
# --------------------------------------------------------------------------- #

def si_snr(estimate: np.ndarray, reference: np.ndarray, eps: float = SI_SNR_EPS) -> np.ndarray:
    """Scale-invariant SNR in dB over the last axis, without mean removal
    (the reference code's `sisnr`; computed in float64):
    alpha = (<est, ref> + eps) / (||ref||^2 + eps), target = alpha ref,
    SI-SNR = 10 log10((||target||^2 + eps) / (||target - est||^2 + eps))."""
    est = np.asarray(estimate, dtype=np.float64)
    ref = np.asarray(reference, dtype=np.float64)
    est, ref = np.broadcast_arrays(est, ref)
    alpha = ((est * ref).sum(-1, keepdims=True) + eps) / ((ref * ref).sum(-1, keepdims=True) + eps)
    target = alpha * ref
    noise = target - est
    return 10.0 * np.log10(((target * target).sum(-1) + eps) / ((noise * noise).sum(-1) + eps))


def window_starts(length: int, window: int, hop: int) -> list[int]:
    """Window starts as in the reference code: ceil((length - overlap) / hop)
    windows, overlap = window - hop; the last one may be cut short by the end."""
    count = max(0, math.ceil((length - (window - hop)) / hop))
    return [i * hop for i in range(count)]


def is_silent(signal: np.ndarray, silence: float = SILENCE) -> np.ndarray:
    """||s||_2 / number of samples < silence, over the last axis."""
    s = np.asarray(signal, dtype=np.float64)
    return np.sqrt((s * s).sum(-1)) / s.shape[-1] < silence


def score_windows(estimates: np.ndarray, references: np.ndarray, sample_rate: int,
                  window_s: float = WINDOW_S, hop_s: float = HOP_S, silence: float = SILENCE) -> np.ndarray:
    """SI-SNRi of estimates [N, T] against references [N, T] in windows of
    `window_s` with hop `hop_s`; the mixture is references.sum(0). Windows where
    at most one reference stem is non-silent are dropped. -> [W, N] (kept windows)."""
    estimates = np.asarray(estimates)
    references = np.asarray(references)
    if estimates.shape != references.shape or references.ndim != 2:
        raise ValueError(f"estimates {estimates.shape} and references {references.shape} must both be [N, T]")
    window = int(window_s * sample_rate)
    hop = window - int((window_s - hop_s) * sample_rate)  # the reference's chunk - overlap
    if window < 1 or hop < 1:
        raise ValueError(f"window {window_s} s and hop {hop_s} s give no samples at {sample_rate} Hz")
    mixture = references.sum(0)
    rows = []
    for start in window_starts(references.shape[-1], window, hop):
        ref = references[:, start:start + window]
        if (~is_silent(ref, silence)).sum() <= 1:
            continue
        mix = mixture[None, start:start + window]
        rows.append(si_snr(estimates[:, start:start + window], ref) - si_snr(mix, ref))
    return np.array(rows, dtype=np.float64).reshape(len(rows), references.shape[0])


def oracle_ratio_mask(references: np.ndarray, mixture: np.ndarray,
                      n_fft: int = ORACLE_N_FFT, hop: int = ORACLE_HOP) -> np.ndarray:
    """Ideal ratio mask estimates [N, T]: mask_n = |S_n| / sum_m |S_m| on a Hann
    STFT, applied to the mixture's STFT and inverted to the same length. The
    masks sum to one (1/N where every stem is zero), so the estimates sum to
    the mixture up to float error."""
    refs = torch.as_tensor(np.asarray(references, dtype=np.float64))
    mix = torch.as_tensor(np.asarray(mixture, dtype=np.float64)).reshape(-1)
    length = mix.shape[-1]
    if refs.ndim != 2 or refs.shape[-1] != length:
        raise ValueError(f"references {tuple(refs.shape)} must be [N, T] with T = len(mixture) = {length}")
    window = torch.hann_window(n_fft, dtype=torch.float64)

    def stft(x: torch.Tensor) -> torch.Tensor:
        # Zero padding at the edges works for any length (reflect needs T > n_fft / 2).
        return torch.stft(x, n_fft, hop, window=window, center=True, pad_mode="constant", return_complex=True)

    magnitude = stft(refs).abs()                  # [N, F, K]
    total = magnitude.sum(0, keepdim=True)
    safe = torch.where(total > 0, total, torch.ones_like(total))
    masks = torch.where(total > 0, magnitude / safe, torch.full_like(magnitude, 1.0 / refs.shape[0]))
    masked = masks * stft(mix)[None]
    out = torch.istft(masked, n_fft, hop, window=window, center=True, length=length)
    return out.numpy().astype(np.float32)


# --------------------------------------------------------------------------- #
# Dataset
# --------------------------------------------------------------------------- #

@dataclass
class EvaluationResult:
    stems: tuple[str, ...]
    per_method: dict[str, dict[str, float]]   # method -> stem -> mean SI-SNRi dB, plus "All"
    windows: int                              # kept scoring windows, all tracks
    tracks: int                               # tracks that gave at least one chunk
    seconds: float                            # audio evaluated (re-assembled tracks), seconds
    settings: dict
    skipped: dict[str, str] = field(default_factory=dict)   # track -> why it gave nothing
    elapsed_s: float = 0.0                    # wall-clock time of the evaluation


def read_track_stems(folder: Path, stems: Sequence[str], sample_rate: int) -> np.ndarray | None:
    """A track's stems [N, T] float32, mono, at `sample_rate`. A missing stem
    file is silence; stems of different lengths are cropped to the shortest
    (as the reference's SupervisedDataset). None if no stem file exists."""
    found = {}
    for stem in stems:
        path = folder / f"{stem}.wav"
        if path.is_file():
            audio = read_audio(path)
            found[stem] = resample(to_mono(audio.samples), audio.sample_rate, sample_rate)[0]
    if not found:
        return None
    length = min(x.shape[-1] for x in found.values())
    out = np.zeros((len(stems), length), dtype=np.float32)
    for n, stem in enumerate(stems):
        if stem in found:
            out[n] = found[stem][:length]
    return out


def _split_dir(data_dir: str | os.PathLike, split: str | None) -> Path:
    root = Path(data_dir) / split if split else Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"no dataset split folder '{root}': expected DATA/{split or ''}/TrackNNNNN/<stem>.wav")
    return root


def _sanitize(value):
    """JSON-friendly settings: non-finite floats as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _sanitize(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_sanitize(v) for v in value]
    return value


def evaluate_dataset(
    models,
    data_dir: str | os.PathLike,
    *,
    split: str | None = "test",
    methods: Sequence[str] = ("model",),
    likelihood: str = "dirac",
    settings: SamplerSettings | None = None,
    seed: int = 0,
    max_tracks: int | None = None,
    chunk: int = PAPER_CHUNK,
    progress: ProgressFn | None = None,
) -> EvaluationResult:
    """Score `methods` ("model", "mixture", "oracle") on DATA/split with the
    paper's protocol. `models` is a ModelSet (or anything with .stems,
    .sample_rate and what engine.audio.pipeline.separate_array needs); only "model"
    runs it, with `likelihood` and `settings` (default: the paper's)."""
    methods = tuple(methods)
    unknown = [m for m in methods if m not in METHODS]
    if not methods or unknown or len(set(methods)) != len(methods):
        raise ValueError(f"methods must be distinct names from {METHODS}, got {methods}")
    if chunk < 1:
        raise CommandError(f"--chunk must be a positive number of samples, got {chunk}")
    check_likelihood(likelihood)
    settings = settings or default_separation_settings(likelihood, isdm=getattr(models, "is_isdm", False))
    stems, rate = tuple(models.stems), int(models.sample_rate)
    folders = sorted(p for p in _split_dir(data_dir, split).iterdir() if p.is_dir())
    if max_tracks is not None:
        folders = folders[:max_tracks]

    began = time.perf_counter()
    scores: dict[str, list[np.ndarray]] = {m: [] for m in methods}
    skipped: dict[str, str] = {}
    tracks, samples = 0, 0
    for t, folder in enumerate(folders):
        refs = read_track_stems(folder, stems, rate)
        count = 0 if refs is None else refs.shape[-1] // chunk
        if count == 0:
            skipped[folder.name] = (f"no stem files ({', '.join(s + '.wav' for s in stems)})" if refs is None else
                                    f"shorter than one chunk ({refs.shape[-1]} < {chunk} samples at {rate} Hz)")
            if progress:
                progress((t + 1) / len(folders), f"skipped {folder.name}: {skipped[folder.name]}")
            continue
        refs = refs[:, :count * chunk]
        estimates = {m: np.empty_like(refs) for m in methods}
        for c in range(count):
            part = slice(c * chunk, (c + 1) * chunk)
            mix = refs[:, part].sum(0)
            label = f"{folder.name} chunk {c + 1}/{count} (track {t + 1}/{len(folders)})"
            if "model" in methods:
                estimates["model"][:, part] = separate_array(
                    models, mix[None], rate, likelihood=likelihood, settings=settings,
                    seed=seed_for(seed, t, c), progress=_chunk_progress(progress, t, c, count, len(folders), label),
                )[:, 0]
            if "mixture" in methods:
                estimates["mixture"][:, part] = mix[None]
            if "oracle" in methods:
                estimates["oracle"][:, part] = oracle_ratio_mask(refs[:, part], mix)
            if progress:
                progress((t + (c + 1) / count) / len(folders), f"separated {label}")
        for m in methods:
            scores[m].append(score_windows(estimates[m], refs, rate))
        tracks += 1
        samples += refs.shape[-1]

    windows = sum(s.shape[0] for s in scores[methods[0]])
    per_method = {}
    for m in methods:
        pooled = np.concatenate(scores[m]) if scores[m] else np.zeros((0, len(stems)))
        means = pooled.mean(0) if windows else np.full(len(stems), np.nan)
        per_method[m] = {stem: float(v) for stem, v in zip(stems, means)}
        per_method[m]["All"] = float(np.mean(means))
    record = {
        "methods": list(methods), "likelihood": likelihood, "sampler": dataclasses.asdict(settings),
        "seed": seed, "chunk": chunk, "window_s": WINDOW_S, "hop_s": HOP_S, "silence": SILENCE,
        "eps": SI_SNR_EPS, "sample_rate": rate, "data": str(data_dir), "split": split,
        "max_tracks": max_tracks,
    }
    if hasattr(models, "describe"):
        record["model"] = models.describe()
    return EvaluationResult(stems, per_method, windows, tracks, samples / rate, _sanitize(record),
                            skipped, time.perf_counter() - began)


def _chunk_progress(progress: ProgressFn | None, track: int, chunk: int, chunks: int, tracks: int, label: str):
    if progress is None:
        return None
    return lambda fraction, message: progress((track + (chunk + fraction) / chunks) / tracks, f"{label}: {message}")


# --------------------------------------------------------------------------- #
# Reports
# --------------------------------------------------------------------------- #

def _rows(results: Sequence[EvaluationResult]):
    """(label, method, result) per method of every result; model rows get the
    sampler in their label when several would otherwise share a name."""
    rows = [(m, m, r) for r in results for m in r.per_method]
    names = [label for label, _, _ in rows]
    out = []
    for label, method, r in rows:
        if names.count(label) > 1 and method == "model":
            s = r.settings.get("sampler", {})
            if s.get("warm_start") and not s.get("steps"):
                label = "model (first guess alone)"
            else:
                start = f", from the first guess at sigma {s.get('sigma_max')}" if s.get("warm_start") else ""
                kind = "latent prior" if s.get("prior") == "latent" else r.settings.get("likelihood")
                label = (f"model ({kind}, {s.get('method')} {s.get('steps')} steps, "
                         f"R={s.get('num_resamples')}, churn {s.get('s_churn')}{start})")
        out.append([label, method, r])
    labels = [row[0] for row in out]
    for i, row in enumerate(out):
        if labels.count(row[0]) > 1:
            row[0] = f"{row[0]} [{i + 1}]"
    return out


def write_results(result_or_list: EvaluationResult | Sequence[EvaluationResult],
                  csv_path: str | os.PathLike, markdown_path: str | os.PathLike) -> None:
    """A CSV (method, stems..., All, windows, settings as JSON) and a markdown
    table (rows = methods, columns = stems + All, dB with 2 decimals), each
    written to a temporary file and moved into place."""
    import csv
    import io

    results = [result_or_list] if isinstance(result_or_list, EvaluationResult) else list(result_or_list)
    if not results:
        raise ValueError("no results to write")
    stems = results[0].stems
    if any(r.stems != stems for r in results):
        raise ValueError(f"results for different stems: {[r.stems for r in results]}")
    columns = [*stems, "All"]
    rows = _rows(results)

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["method", *columns, "windows", "settings"])
    for label, method, r in rows:
        writer.writerow([label, *(repr(r.per_method[method][c]) for c in columns), r.windows,
                         json.dumps(r.settings, sort_keys=True)])
    write_atomic(csv_path, buffer.getvalue())

    lines = ["| method | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for label, method, r in rows:
        lines.append(f"| {label} | " + " | ".join(f"{r.per_method[method][c]:.2f}" for c in columns) + " |")
    first = results[0]
    lines += ["", (f"SI-SNRi (dB), mean over {first.windows} windows of 4 s (2 s hop) from {first.tracks} "
                   f"tracks ({first.seconds / 60:.1f} min).")]
    skipped = {k: v for r in results for k, v in r.skipped.items()}
    if skipped:
        lines.append(f"Skipped {len(skipped)} track(s): " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    write_atomic(markdown_path, "\n".join(lines) + "\n")
