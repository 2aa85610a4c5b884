"""How well the stem autoencoder keeps what the prior must learn, per stem.

Windows of 3 s of each stem of the first tracks of a split (silent windows
skipped) go through encode -> decode (Griffin-Lim), and the reconstruction is
compared with its input:

- SI-SNR (dB): low by construction, the phase is not kept (reported so
  nobody mistakes the decoder for a waveform codec);
- log-mel distance: mean |difference| of 64-band log-mel frames, in dB;
- spectral convergence of the STFT magnitude (0 = identical);
- pitch agreement (bass, guitar, piano): the share of the input's clearly
  pitched frames whose F0 the reconstruction matches within 50 cents, and
  the chroma correlation (training.generation_metrics.pitch_agreement);
  pitch clarity of the reconstruction beside the input's (a mean over
  windows, so not the pooled number of evaluate-generation);
- the same for the front end alone ("ceiling": Griffin-Lim on the input's
  own magnitude), so the cost of the learned compression is read apart from
  the cost of dropping the phase;
- the decoded magnitude both ways: Griffin-Lim from random phase, and the
  phase-locked vocoder's phase (engine.core.phase), which the shipped model
  uses for the pitched stems.

    python -m training.evaluate_autoencoder --autoencoder runs/ae/best.safetensors --data data/synth --split test
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import torch

from engine.atomic import write_atomic
from engine.core.autoencoder import griffin_lim
from training import audio_features as af
from training.evaluate import read_track_stems
from training.generation_metrics import pitch_agreement
from training.train_autoencoder import STEMS, load_autoencoder

SAMPLE_RATE = 22050
WINDOW = 3 * SAMPLE_RATE
SILENT_RMS = 1e-3


def si_snr(estimate: np.ndarray, reference: np.ndarray) -> float:
    reference = reference - reference.mean()
    estimate = estimate - estimate.mean()
    target = (estimate @ reference) / max(reference @ reference, 1e-12) * reference
    return float(10 * np.log10(max(target @ target, 1e-12) / max(((estimate - target) ** 2).sum(), 1e-12)))


def log_mel_distance_db(estimate: np.ndarray, reference: np.ndarray) -> float:
    """Mean absolute log-mel difference in dB (af.log_mel is natural log of power)."""
    a, b = af.log_mel(estimate, SAMPLE_RATE), af.log_mel(reference, SAMPLE_RATE)
    return float(np.mean(np.abs(a - b)) * 10 / np.log(10))


def windows_of(data: Path, split: str, tracks: int, per_track: int) -> list[tuple[str, np.ndarray]]:
    """(stem, 3 s window) pairs: up to `per_track` evenly spaced non-silent windows per stem and track."""
    out = []
    folders = sorted(p for p in (data / split).iterdir() if p.is_dir() and not p.name.startswith("."))[:tracks]
    for folder in folders:
        stems = read_track_stems(folder, STEMS, SAMPLE_RATE)
        if stems is None or stems.shape[-1] < WINDOW:
            continue
        starts = np.linspace(0, stems.shape[-1] - WINDOW, per_track * 2).astype(int)
        for n, stem in enumerate(STEMS):
            kept = [stems[n, s:s + WINDOW] for s in starts if np.sqrt(np.mean(stems[n, s:s + WINDOW] ** 2)) > SILENT_RMS]
            out += [(stem, w.astype(np.float32)) for w in kept[:per_track]]
    return out


# method name -> (Griffin-Lim on the input's own magnitude?, phase-locked vocoder instead of Griffin-Lim?)
METHODS = {
    "autoencoder, Griffin-Lim": (False, False),
    "autoencoder, phase-locked vocoder": (False, True),
    "ceiling: Griffin-Lim on the input's magnitude": (True, False),
}


@torch.no_grad()
def reconstruct(autoencoder, audio: np.ndarray, ceiling: bool, seed: int = 0, locked: bool = False) -> np.ndarray:
    x = torch.from_numpy(audio)[None]
    generator = torch.Generator().manual_seed(seed)
    if ceiling:
        return griffin_lim(autoencoder.stft(x).abs(), autoencoder.config, autoencoder.window, x.shape[-1],
                           generator)[0].numpy()
    return autoencoder.decode(autoencoder.encode(x), x.shape[-1], generator=generator, locked=locked)[0].numpy()


def evaluate(autoencoder, windows: list[tuple[str, np.ndarray]]) -> list[dict]:
    rows = []
    for name, (ceiling, locked) in METHODS.items():
        for stem in STEMS:
            scores = {"si_snr": [], "log_mel_db": [], "spectral_convergence": [], "f0_within_50_cents": [],
                      "chroma_correlation": [], "pitch_clarity": [], "input_pitch_clarity": []}
            for s, audio in windows:
                if s != stem:
                    continue
                rec = reconstruct(autoencoder, audio, ceiling, locked=locked)
                scores["si_snr"].append(si_snr(rec, audio))
                scores["log_mel_db"].append(log_mel_distance_db(rec, audio))
                a, b = np.abs(np.fft.rfft(af.frames(rec), axis=-1)), np.abs(np.fft.rfft(af.frames(audio), axis=-1))
                scores["spectral_convergence"].append(float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12)))
                if stem in af.F0_RANGE:
                    agreement = pitch_agreement(rec, audio, SAMPLE_RATE, stem)
                    scores["f0_within_50_cents"].append(agreement.f0_within_50_cents)
                    scores["chroma_correlation"].append(agreement.chroma_correlation)
                    scores["pitch_clarity"].append(agreement.clarity)
                    scores["input_pitch_clarity"].append(agreement.reference_clarity)
            rows.append({"method": name, "stem": stem, "windows": len(scores["si_snr"]),
                         **{k: float(np.nanmean(v)) if v else float("nan") for k, v in scores.items()}})
    return rows


def write_tables(rows: list[dict], out_prefix: Path) -> None:
    keys = list(rows[0])
    write_atomic(out_prefix.with_suffix(".csv"),
                 lambda tmp: _write_csv(tmp, keys, rows))
    lines = ["| method | stem | windows | SI-SNR dB | log-mel dB | spectral conv. | F0 within 50 cents | chroma corr. "
             "| pitch clarity (input's) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['stem']} | {r['windows']} | {r['si_snr']:.1f} | {r['log_mel_db']:.2f} | "
                     f"{r['spectral_convergence']:.3f} | {r['f0_within_50_cents']:.2f} | "
                     f"{r['chroma_correlation']:.2f} | {r['pitch_clarity']:.2f} ({r['input_pitch_clarity']:.2f}) |")
    write_atomic(out_prefix.with_suffix(".md"), lambda tmp: Path(tmp).write_text("\n".join(lines) + "\n"))


def _write_csv(path, keys, rows) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, keys)
        writer.writeheader()
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--autoencoder", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--tracks", type=int, default=10)
    parser.add_argument("--per-track", type=int, default=2, help="windows per stem and track")
    parser.add_argument("-o", "--out", type=Path, required=True, help="prefix of the .csv/.md written")
    parser.add_argument("--figure", type=Path, help="spectrograms of input vs reconstruction (PNG)")
    parser.add_argument("--phase-figure", type=Path,
                        help="spectrograms below 1.5 kHz of the first pitched windows: input, decoded with "
                             "Griffin-Lim, decoded with the phase-locked vocoder (PNG)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    autoencoder, digest = load_autoencoder(args.autoencoder)
    windows = windows_of(args.data, args.split, args.tracks, args.per_track)
    rows = evaluate(autoencoder, windows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_tables(rows, args.out)
    print(Path(args.out.with_suffix(".md")).read_text())
    if args.figure:
        from training.figures import plot_separation
        first = {stem: next(w for s, w in windows if s == stem) for stem in STEMS}
        rebuilt = {stem: reconstruct(autoencoder, audio, ceiling=False) for stem, audio in first.items()}
        plot_separation(first, rebuilt, SAMPLE_RATE, args.figure, labels=("input", "reconstruction"),
                        title=f"stem autoencoder {digest}: input vs reconstruction ({args.split} split)")
    if args.phase_figure:
        from training.figures import plot_spectrogram_grid
        panels = {}
        for stem in af.PITCHED:
            audio = next(w for s, w in windows if s == stem)
            panels[f"{stem}: input"] = audio
            panels[f"{stem}: Griffin-Lim"] = reconstruct(autoencoder, audio, ceiling=False)
            panels[f"{stem}: phase-locked vocoder"] = reconstruct(autoencoder, audio, ceiling=False, locked=True)
        plot_spectrogram_grid(panels, SAMPLE_RATE, args.phase_figure, columns=3, max_hz=1500,
                              title=f"stem autoencoder {digest}: the decoded magnitude's phase ({args.split} split)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
