"""Where the first-guess separator loses on timbres it never heard: which stem
its estimates take energy from.

For the first VALID tracks of each dataset (the paper's chunks, as
training.train_separator.score cuts them):

- SI-SNRi per stem, as the training log reports it;
- the **leak matrix**: each estimate least-squares fitted on the four true
  stems, the energy of each term as a share of the fit (row = estimate,
  column = true stem; the identity for a perfect separator);
- the score with guitar and piano **merged** into one pitched stem: if it is
  far above the two stems' own scores, the loss is in telling them apart,
  not in getting them out of the mix;
- the guitar/piano score when each window may swap the two estimates: near
  the plain score when the confusion is within windows (bins shared out
  wrongly) rather than whole passages labelled the wrong way round;
- with `--move-guitar G1 G2 ... --move-piano P1 P2 ...`: the scores when
  the guitar is moved Gi octaves and the piano Pi before they are mixed (band-limited resampling; a stem
  played faster is repeated to its length, so no window falls silent): a
  separator that tells them apart by timbre scores about the same whatever
  the moves, one that leans on register does not.

    python -m training.diagnose_separator --model engine/models/default.safetensors \\
        --data data/holdout-own data/holdout-rec data/synth --tracks 12 \\
        [--move-guitar 0 1 -1 --move-piano 0 -1 1]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from training.augment import resample_pitch
from training.evaluate import score_windows
from training.train_separator import PAPER_CHUNK, STEMS, initial_separator, score, valid_windows

GUITAR, PIANO = STEMS.index("guitar"), STEMS.index("piano")


def leak_energy(estimates: np.ndarray, references: np.ndarray) -> np.ndarray:
    """[N, N]: row i = the energy of each true stem's term in the least-squares
    fit of estimate i on the references [N, T] (unnormalised, so tracks add)."""
    basis = references.T.astype(np.float64)
    rows = []
    for estimate in estimates.astype(np.float64):
        coefficients, *_ = np.linalg.lstsq(basis, estimate, rcond=None)
        rows.append(((coefficients[:, None] * references) ** 2).sum(-1))
    return np.array(rows)


def merged(stems: np.ndarray, first: int = GUITAR, second: int = PIANO) -> np.ndarray:
    """[N, T] -> [N - 1, T]: `first` + `second` as one stem in `first`'s place."""
    out = np.delete(stems, second, axis=0)
    out[first if first < second else first - 1] = stems[first] + stems[second]
    return out


def diagnose(model, tracks: list[np.ndarray], sample_rate: int = 22050,
             chunk: int = PAPER_CHUNK) -> dict[str, np.ndarray]:
    """Per-stem SI-SNRi [N], leak shares [N, N] (rows sum to 1), the merged
    scores [N - 1] and the pitched pair's per-window best-of-swap mean; the
    mix is separated in independent chunks of `chunk` samples (a divisor of
    the paper's, which the tracks are cut to)."""
    if PAPER_CHUNK % chunk:
        raise ValueError(f"chunk {chunk} must divide {PAPER_CHUNK}")
    per, joined, swapped, leak = [], [], [], np.zeros((len(STEMS), len(STEMS)))
    order = list(range(len(STEMS)))
    order[GUITAR], order[PIANO] = PIANO, GUITAR
    for refs in tracks:
        with torch.no_grad():
            chunks = torch.from_numpy(refs.sum(0).reshape(-1, chunk))
            estimates = model(chunks).permute(1, 0, 2).reshape(len(STEMS), -1).numpy()
        plain = score_windows(estimates, refs, sample_rate)
        per.append(plain)
        joined.append(score_windows(merged(estimates), merged(refs), sample_rate))
        swap = score_windows(estimates[order], refs, sample_rate)
        pair = [GUITAR, PIANO]
        swapped.append(np.maximum(plain[:, pair].mean(1), swap[:, pair].mean(1)))
        leak += leak_energy(estimates, refs)
    return {"per_stem": np.concatenate(per).mean(0), "merged": np.concatenate(joined).mean(0),
            "pair_best_of_swap": float(np.concatenate(swapped).mean()),
            "leak": leak / leak.sum(1, keepdims=True)}


def octave_moved(stem: np.ndarray, octaves: int) -> np.ndarray:
    """`stem` [T] moved `octaves` up (played 2**octaves times faster, then
    repeated to T samples) or down (slower, its first T samples)."""
    ratio = 2.0 ** octaves
    whole = resample_pitch(stem, ratio, max(1, int(len(stem) / ratio)))
    return np.resize(whole, len(stem))


def register_rows(model, tracks: list[np.ndarray], moves: list[tuple[int, int]]) -> str:
    """A markdown table: per-stem SI-SNRi with guitar and piano moved by each (G, P) octaves."""
    lines = ["| guitar, piano moved (octaves) | " + " | ".join(STEMS) + " | All |", "|---" * (len(STEMS) + 2) + "|"]
    for guitar, piano in moves:
        moved = []
        for refs in tracks:
            refs = refs.copy()
            refs[GUITAR], refs[PIANO] = octave_moved(refs[GUITAR], guitar), octave_moved(refs[PIANO], piano)
            moved.append(refs)
        scores = score(model, moved)
        model.eval()
        lines.append(f"| {guitar:+d}, {piano:+d} | " + " | ".join(f"{scores[s]:.2f}" for s in STEMS)
                     + f" | {scores['All']:.2f} |")
    return "\n".join(lines) + "\n"


def report(name: str, result: dict[str, np.ndarray]) -> str:
    per, pair = result["per_stem"], [GUITAR, PIANO]
    kept = [s for i, s in enumerate(STEMS) if i != PIANO]
    lines = [f"## {name}", "",
             "SI-SNRi (dB): " + ", ".join(f"{s} {v:.2f}" for s, v in zip(STEMS, per)) + f"; All {per.mean():.2f}",
             "guitar + piano merged: " + ", ".join(
                 f"{'guitar+piano' if s == 'guitar' else s} {v:.2f}" for s, v in zip(kept, result["merged"])),
             f"guitar/piano mean {per[pair].mean():.2f}; with each window's better of as-is and swapped "
             f"{result['pair_best_of_swap']:.2f}", "",
             "| estimate \\ true | " + " | ".join(STEMS) + " |", "|---" * (len(STEMS) + 1) + "|"]
    lines += [f"| {s} | " + " | ".join(f"{v:.2f}" for v in row) + " |" for s, row in zip(STEMS, result["leak"])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a model file or a train_separator file")
    parser.add_argument("--data", type=Path, nargs="+", required=True, help="dataset folders with a valid/ split")
    parser.add_argument("--tracks", type=int, default=12, help="the first VALID tracks of each")
    parser.add_argument("--chunk", type=int, default=PAPER_CHUNK,
                        help="samples the mix is separated in (the context the network sees; default the paper's "
                             f"{PAPER_CHUNK}, ~12 s)")
    parser.add_argument("--move-guitar", type=int, nargs="+", default=[], metavar="G",
                        help="also score with the guitar moved G octaves (-2..2), each with the --move-piano "
                             "at the same place")
    parser.add_argument("--move-piano", type=int, nargs="+", default=[], metavar="P")
    parser.add_argument("--markdown", type=Path, help="also write the report here")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if args.chunk < 4096 or PAPER_CHUNK % args.chunk:
        parser.error(f"--chunk must divide {PAPER_CHUNK} and be at least 4096 samples")
    moves = list(zip(args.move_guitar, args.move_piano))
    if len(args.move_guitar) != len(args.move_piano) or any(abs(v) > 2 for move in moves for v in move):
        parser.error("--move-guitar and --move-piano take as many whole octaves each, within -2..2")
    missing = [str(p) for p in (args.model, *[d / "valid" for d in args.data]) if not p.exists()]
    if missing:
        parser.exit(2, f"error: not found: {', '.join(missing)}\n")
    torch.set_num_threads(args.threads)
    model = initial_separator(args.model).eval()
    text = ""
    for data in args.data:
        tracks = valid_windows(data, args.tracks)
        text += report(str(data), diagnose(model, tracks, chunk=args.chunk)) + "\n"
        if moves:
            text += register_rows(model, tracks, moves) + "\n"
    print(text, end="")
    if args.markdown:
        args.markdown.write_text(f"Separator diagnosis of {args.model}, {args.tracks} VALID tracks each, "
                                 f"chunks of {args.chunk} samples\n\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
