"""Train the first-guess separator (engine.separator.MaskSeparator).

Items are 3 s crops of the training split's stems. Half of them are remixed
(Demucs' augmentation, Défossez et al. 2019): each stem from its own random
track and offset, so the network cannot lean on one piece's harmony and sees
many more mixtures than there are tracks; every stem also gets a random gain
and polarity. The mix is the sum of the (augmented) stems.

Loss, per stem: 10 log10(||s - s_hat||^2 + tau_s ||s||^2 + tau_y ||y||^2), the
negative SNR with soft thresholds (Wisdom et al. 2020, MixIT): scale-free like
SI-SNR, and still defined for a silent stem (the tau_y term).

Scored on the VALID split with the paper's protocol (training.evaluate:
262144-sample chunks, 4 s windows, silence filter, SI-SNRi), every
`--valid-every` steps; the best weights are kept as a safetensors file.
Resumable: `RUN/last.pt` holds the weights, the optimiser and the clock.
`RUN/last.safetensors`: the weights when the budget ran out (a soup ingredient).

    python -m training.train_separator --data DATA -o RUN --minutes 90
    python -m training.train_separator --data DATA -o RUN2 --minutes 60 --init engine/models/default.safetensors
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset

from engine.atomic import write_atomic
from engine.core.separator import MaskSeparator, SeparatorConfig, count_parameters
from engine.errors import ModelFileError
from engine.storage.model import SEPARATOR_FORMAT, MSDMModel, load_separator
from training.augment import RegisterShift, TimbreAugment, repitch, resample_pitch
from training.data import Track, scan
from training.evaluate import PAPER_CHUNK, read_track_stems, score_windows
from training.widen_separator import widen_separator, widened_config

STEMS = ("bass", "drums", "guitar", "piano")


class RemixCrops(Dataset):
    """Item i: [N, crop] float32 stems, from its own generator (seed, i)."""

    def __init__(self, tracks: list[Track], crop: int, seed: int, remix: float = 0.5,
                 gain_db: tuple[float, float] = (-9.0, 3.0), augment: TimbreAugment | None = None,
                 register: RegisterShift | None = None) -> None:
        self.augment = augment or TimbreAugment.none()
        self.register = register or RegisterShift()
        longest = int(np.ceil(crop * 2 ** (self.augment.semitones / 12))) + 1 if self.augment.repitch else crop
        if self.register.probability:
            longest = int(np.ceil(longest * self.register.longest_ratio)) + 1
        self.tracks = [t for t in tracks if t.frames > longest]
        if not self.tracks:
            raise ValueError(f"no training track longer than {longest} samples")
        self.crop, self.seed, self.remix, self.gain_db = crop, seed, remix, gain_db

    def __len__(self) -> int:
        return 1 << 40

    def _read(self, track: Track, stem: str, start: int, frames: int) -> np.ndarray:
        paths = track.files.get(stem) or []
        out = np.zeros(frames, np.float32)
        for path in paths:
            data, _ = sf.read(str(path), start=start, frames=frames, dtype="float32", always_2d=True)
            out[:len(data)] += data.mean(axis=1)
        return out

    def __getitem__(self, index: int) -> torch.Tensor:
        rng = np.random.default_rng([self.seed, index])
        remix = rng.random() < self.remix
        stems = []
        frames, ratio = self.augment.read_length(self.crop, rng)
        track = self.tracks[rng.integers(len(self.tracks))]
        start = int(rng.integers(0, track.frames - frames))
        for stem in STEMS:
            if remix:
                frames, ratio = self.augment.read_length(self.crop, rng)
                track = self.tracks[rng.integers(len(self.tracks))]
                start = int(rng.integers(0, track.frames - frames))
            gain = 10 ** (rng.uniform(*self.gain_db) / 20) * (1 if rng.random() < 0.5 else -1)
            octave = self.register.ratio(stem, rng)
            if octave == 1.0:
                audio = repitch(self._read(track, stem, start, frames), ratio, self.crop)
            else:  # the crop's repitch and the octave in one band-limited resampling
                length = int(np.ceil(self.crop * ratio * octave)) + 1
                begin = min(start, track.frames - length)
                audio = resample_pitch(self._read(track, stem, begin, length), ratio * octave, self.crop)
            stems.append(self.augment.stem(audio, stem, rng) * gain)
        return torch.from_numpy(np.stack(stems).astype(np.float32))


def separation_loss(estimate: torch.Tensor, reference: torch.Tensor, tau_s: float = 1e-3,
                    tau_y: float = 1e-4) -> torch.Tensor:
    """Mean over items and stems of the soft-thresholded negative SNR (dB,
    without the constant 10 log10 ||s||^2 term)."""
    mix_energy = reference.sum(1, keepdim=True).pow(2).sum(-1)
    error = (reference - estimate).pow(2).sum(-1)
    energy = reference.pow(2).sum(-1)
    return (10 * torch.log10(error + tau_s * energy + tau_y * mix_energy + 1e-9)).mean()


def valid_windows(data: Path, tracks: int, sample_rate: int = 22050) -> list[np.ndarray]:
    """The first `tracks` VALID tracks cut into the paper's chunks: [N, count * chunk] each."""
    out = []
    for folder in sorted(p for p in (data / "valid").iterdir() if p.is_dir())[:tracks]:
        refs = read_track_stems(folder, STEMS, sample_rate)
        if refs is not None and refs.shape[-1] >= PAPER_CHUNK:
            out.append(refs[:, :refs.shape[-1] // PAPER_CHUNK * PAPER_CHUNK])
    return out


@torch.no_grad()
def score(model: MaskSeparator, tracks: list[np.ndarray], sample_rate: int = 22050) -> dict[str, float]:
    """SI-SNRi per stem and "All" (the paper's protocol) on pre-cut tracks."""
    model.eval()
    rows = []
    for refs in tracks:
        chunks = torch.from_numpy(refs.sum(0).reshape(-1, PAPER_CHUNK))
        estimates = model(chunks).permute(1, 0, 2).reshape(len(STEMS), -1).numpy()
        rows.append(score_windows(estimates, refs, sample_rate))
    model.train()
    means = np.concatenate(rows).mean(0)
    return {**{s: float(v) for s, v in zip(STEMS, means)}, "All": float(means.mean())}


def save_separator(model: MaskSeparator, path: Path, metadata: dict) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    header = {"format": SEPARATOR_FORMAT, "config": json.dumps(model.config.to_dict()),
              **{k: str(v) for k, v in metadata.items()}}
    write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata=header))


def initial_separator(path: Path) -> MaskSeparator:
    """The separator of a model file or of a separator file (train_separator's own format)."""
    try:
        return load_separator(path)[0]
    except ModelFileError:  # not a separator file: a whole model file (or its own clear error)
        separator = MSDMModel.load(path).separator
    if separator is None:
        raise SystemExit(f"{path} has no first-guess separator to start from")
    return separator


def with_refinement(model: MaskSeparator, channels: int, layers: int, seed: int = 0) -> MaskSeparator:
    """`model` with a time-frequency refinement of its masks added
    (engine.core.separator.MaskRefinement); its last layer is zero, so the
    result computes what `model` computes."""
    if model.config.refine_channels:
        raise SystemExit("the --init separator already has a refinement; leave out --refine")
    torch.manual_seed(seed)
    refined = MaskSeparator(dataclasses.replace(model.config, refine_channels=channels, refine_layers=layers))
    missing, unexpected = refined.load_state_dict(model.state_dict(), strict=False)
    if unexpected or any(not name.startswith("refine.") for name in missing):
        raise SystemExit(f"cannot add a refinement to this separator: missing {missing}, unexpected {unexpected}")
    return refined


def learning_rate(base: float, step: int, elapsed: float, budget: float, warmup: int = 200) -> float:
    """Linear warm-up, then a cosine decay to 5 % over the time budget (the
    budget, not a step count, is what is fixed on a shared CPU)."""
    ramp = min(1.0, (step + 1) / warmup)
    progress = min(1.0, elapsed / budget)
    return base * ramp * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, nargs="+", help="dataset folder(s) with train/ and valid/")
    parser.add_argument("-o", "--out", type=Path, required=True)
    parser.add_argument("--minutes", type=float, default=60.0, help="training time budget (wall clock)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--crop", type=int, default=65536)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--n-fft", type=int, default=2048)
    parser.add_argument("--hop", type=int, default=512)
    parser.add_argument("--remix", type=float, default=0.5)
    parser.add_argument("--augment", choices=("none", "timbre"), default="none",
                        help="timbre augmentations per stem (training/augment.py): repitch, equaliser, "
                             "saturation, reverb")
    parser.add_argument("--register", type=float, default=0.0, metavar="P",
                        help="move each guitar and piano stem an octave up or down with this probability "
                             "(training.augment.RegisterShift), so register does not tell them apart")
    parser.add_argument("--valid-data", type=Path, nargs="+",
                        help="dataset(s) whose VALID split chooses the best weights (default: the first --data); "
                             "e.g. the held-out timbres of `msdm dataset synth --timbres holdout` and "
                             "`--timbres holdout-recorded`: the first --valid-tracks of each, scored together")
    parser.add_argument("--valid-tracks", type=int, default=10)
    parser.add_argument("--monitor-data", type=Path,
                        help="a second dataset whose VALID split is scored and logged beside --valid-data (e.g. "
                             "the original engine's data/synth, to watch the in-domain score while selecting on "
                             "held-out timbres)")
    parser.add_argument("--monitor-min", type=float, default=-math.inf, metavar="DB",
                        help="keep weights as best only while the --monitor-data score is at least this "
                             "(a floor on the in-domain score, e.g. 12.2)")
    parser.add_argument("--valid-every", type=int, default=250)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--init", type=Path, metavar="MODEL",
                        help="start from the separator in this model file (e.g. the shipped one) or separator "
                             "file (a run's best.safetensors) instead of random weights; its config replaces "
                             "--n-fft/--hop/--hidden/--layers")
    parser.add_argument("--widen", type=int, default=1, metavar="FACTOR",
                        help="with --init: start from that separator widened FACTOR times, computing the same "
                             "function (training.widen_separator, Net2Net)")
    parser.add_argument("--refine", type=int, default=0, metavar="CHANNELS",
                        help="add a time-frequency refinement of the masks with this many channels "
                             "(engine.core.separator.MaskRefinement; with --init it starts at zero, so the "
                             "run starts from what the init computes)")
    parser.add_argument("--refine-layers", type=int, default=4)
    args = parser.parse_args(argv)
    if not 0.0 <= args.register <= 1.0:
        parser.error(f"--register is a probability in [0, 1], got {args.register}")
    if args.widen < 1:
        parser.error(f"--widen must be a positive integer, got {args.widen}")
    if args.widen != 1 and args.init is None:
        parser.error("--widen needs --init (the separator to widen)")
    try:
        config = SeparatorConfig(stems=len(STEMS), n_fft=args.n_fft, hop=args.hop, hidden=args.hidden,
                                 layers=args.layers, refine_channels=args.refine, refine_layers=args.refine_layers)
    except ValueError as error:
        parser.error(str(error))

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    tracks = [t for root in args.data for t in scan(root / "train", STEMS).tracks]
    valid = [w for root in (args.valid_data or args.data[:1]) for w in valid_windows(root, args.valid_tracks)]
    monitor = valid_windows(args.monitor_data, args.valid_tracks) if args.monitor_data else []
    torch.manual_seed(args.seed)
    model = MaskSeparator(config)
    started_from = None
    state_path, log_path = args.out / "last.pt", args.out / "log.csv"
    state = torch.load(state_path, weights_only=True) if state_path.is_file() else None
    if state is not None and "config" in state:
        # Resuming: the shape the run was saved with, whatever the flags say now.
        config = SeparatorConfig.from_dict(json.loads(state["config"]))
        model = MaskSeparator(config)
    elif args.init is not None and state is None:
        started_from = initial_separator(args.init)
        if args.widen != 1:
            started_from = widen_separator(started_from, args.widen, args.seed)
        if args.refine:
            started_from = with_refinement(started_from, args.refine, args.refine_layers, args.seed)
        model, config = started_from.train(), started_from.config
    elif state is not None and args.init is not None:
        # A last.pt from before it stored its config: the shape the run started
        # with (the --init separator's, widened as asked).
        config = widened_config(initial_separator(args.init).config, args.widen)
        if args.refine:
            config = dataclasses.replace(config, refine_channels=args.refine, refine_layers=args.refine_layers)
        model = MaskSeparator(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    step, elapsed, best = 0, 0.0, -math.inf
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, elapsed, best = int(state["step"]), float(state["elapsed"]), float(state["best"])
        print(f"resumed at step {step}, {elapsed / 60:.1f} min trained, best valid {best:.2f} dB", flush=True)
    augment = TimbreAugment() if args.augment == "timbre" else TimbreAugment.none()
    dataset = RemixCrops(tracks, args.crop, args.seed, remix=args.remix, augment=augment,
                         register=RegisterShift(probability=args.register))
    if step == 0 and started_from is None:
        sample = torch.stack([dataset[(1 << 40) - 1 - i] for i in range(32)]).sum(1)
        model.fit_input_scaling(sample)
    print(f"{len(tracks)} training tracks from {', '.join(map(str, args.data))}; {len(valid)} valid tracks; "
          f"{count_parameters(model):,} parameters; {config}", flush=True)
    sampler = range(step * args.batch, 1 << 40)
    loader = DataLoader(dataset, batch_size=args.batch, sampler=sampler, num_workers=1, prefetch_factor=4,
                        persistent_workers=True)
    new_log = not log_path.is_file()
    log = open(log_path, "a", newline="")
    writer = csv.writer(log)
    if new_log:
        writer.writerow(["step", "minutes", "lr", "train_loss", *STEMS, "All",
                         *([f"monitor_{s}" for s in (*STEMS, "All")] if monitor else [])])
    budget = args.minutes * 60
    losses: list[float] = []
    began = time.perf_counter() - elapsed
    model.train()
    for stems in loader:
        elapsed = time.perf_counter() - began
        lr = learning_rate(args.lr, step, elapsed, budget)
        for group in optimizer.param_groups:
            group["lr"] = lr
        estimate = model(stems.sum(1))
        loss = separation_loss(estimate, stems)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        losses.append(float(loss.detach()))
        step += 1
        done = time.perf_counter() - began >= budget
        if step % args.valid_every == 0 or done:
            scores = score(model, valid)
            watched = score(model, monitor) if monitor else {}
            writer.writerow([step, f"{(time.perf_counter() - began) / 60:.2f}", f"{lr:.3g}",
                             f"{np.mean(losses):.3f}", *(f"{scores[s]:.3f}" for s in (*STEMS, "All")),
                             *(f"{watched[s]:.3f}" for s in (*STEMS, "All") if watched)])
            log.flush()
            print(f"step {step} {(time.perf_counter() - began) / 60:.1f} min loss {np.mean(losses):.2f} "
                  + " ".join(f"{k} {v:.2f}" for k, v in scores.items())
                  + (f" | monitor All {watched['All']:.2f}" if watched else ""), flush=True)
            losses = []
            if scores["All"] > best and watched.get("All", math.inf) >= args.monitor_min:
                best = scores["All"]
                save_separator(model, args.out / "best.safetensors",
                               {"step": step, "valid_all_db": round(best, 3), "data": ",".join(map(str, args.data))})
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                     "elapsed": time.perf_counter() - began, "best": best,
                     "config": json.dumps(model.config.to_dict())}
            write_atomic(state_path, lambda tmp: torch.save(state, tmp))
        if done:
            # The last weights as a separator file too: a model soup's
            # ingredients (training.soup_separators) are last weights, which
            # no held-out score chose, so the soup's held-out score is unbiased.
            save_separator(model, args.out / "last.safetensors",
                           {"step": step, "data": ",".join(map(str, args.data))})
            break
    log.close()
    print(f"done: step {step}, best valid All {best:.2f} dB", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
