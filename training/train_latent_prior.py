"""Train the multi-source latent diffusion prior (engine.core.latent_prior).

1. Every track's stems are encoded once by the stem autoencoder and cached
   (float16, `DATA/.latents/<autoencoder hash>/<split>/<track>.npy`, [N, C, K]):
   the prior then never touches audio, which is what makes it cheap.
2. Items are crops of `--frames` latent frames of all stems of one track (no
   remixing: the prior must learn how the stems of one song fit together).
3. Each item draws what is given (MSG-LD's arrangement training): nothing
   (generation), a random subset of stems with at least one free
   (accompaniment), or everything but a time range of some stems
   (regenerating a range, continuation). The loss is EDM's on the free parts.
4. With `--harmony`, every stem's chroma per latent frame
   (engine.core.harmony) is cached beside the latents
   (`DATA/.harmony/<version>/<split>/<track>.npy`, [N, 12, K]) and the
   network sees the given stems' chroma as a condition. From an --init
   without it, the new inputs start at zero weight, so the run starts from
   what the init computes.

    python -m training.train_latent_prior --data data/synth -o runs/prior --autoencoder runs/ae/best.safetensors --minutes 60
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import csv
import json
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
import soundfile as sf
import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset

from engine.atomic import write_atomic
from engine.core.autoencoder import StemAutoencoder
from engine.core.harmony import HARMONY_N_FFT, HARMONY_NOTES, PITCH_CLASSES, stem_chroma
from engine.core.latent_prior import LatentDenoiser, LatentPriorConfig, LatentUNet, count_parameters
from engine.errors import ModelFileError
from training.data import Track, scan
from training.part_files import LATENT_PRIOR_FORMAT, read_part_config
from training.train_autoencoder import load_autoencoder
from training.train_separator import learning_rate

STEMS = ("bass", "drums", "guitar", "piano")


def read_stems(track: Track, frames: int) -> np.ndarray:
    out = np.zeros((len(STEMS), frames), np.float32)
    for i, stem in enumerate(STEMS):
        for path in track.files.get(stem) or []:
            data, _ = sf.read(str(path), dtype="float32", always_2d=True)
            out[i, :min(frames, len(data))] += data[:frames].mean(axis=1)
    return out


@torch.no_grad()
def encode_track(autoencoder: StemAutoencoder, stems: np.ndarray, chunk: int = 262144) -> np.ndarray:
    """[N, T] -> [N, C, T // hop + 1], in chunks (the encoder's receptive field is
    a few frames, so chunk edges cost nothing measurable at this chunk size)."""
    hop = autoencoder.config.hop
    latents = [autoencoder.encode(torch.from_numpy(stems[:, s:s + chunk])).numpy()
               for s in range(0, stems.shape[1], chunk)]
    joined = np.concatenate([l[:, :, :-1] if i < len(latents) - 1 else l for i, l in enumerate(latents)], axis=-1)
    return joined[:, :, :stems.shape[1] // hop + 1]


def cache_per_track(roots: list[Path], split: str, folder_of: Callable[[Path], Path],
                    compute: Callable[[Track], np.ndarray], label: str) -> list[Path]:
    """One float16 array per track of each root's split, computed once and kept
    in `folder_of(root)/<track>.npy` (written atomically, so an interrupted
    run resumes); the files in track order."""
    files = []
    for root in roots:
        folder = folder_of(root)
        folder.mkdir(parents=True, exist_ok=True)
        tracks = scan(root / split, STEMS).tracks
        for n, track in enumerate(tracks):
            target = folder / f"{track.name}.npy"
            if not target.is_file():
                array = compute(track).astype(np.float16)

                def save(tmp: Path) -> None:
                    with open(tmp, "wb") as handle:   # a handle: np.save would add ".npy" to a path
                        np.save(handle, array)
                write_atomic(target, save)
            files.append(target)
            if n % 50 == 0:
                print(f"{label} {root}/{split}: {n + 1}/{len(tracks)}", flush=True)
    return files


def cache_latents(roots: list[Path], split: str, autoencoder: StemAutoencoder, digest: str) -> list[Path]:
    """Every track's stems' latents [N, C, T // hop + 1]."""
    return cache_per_track(roots, split, lambda root: root / ".latents" / digest / split,
                           lambda track: encode_track(autoencoder, read_stems(track, track.frames)), "latents")


def harmony_folder(root: Path, split: str, hop: int) -> Path:
    """Where a dataset's cached chroma lives; named by what changes it."""
    version = f"hop{hop}-fft{HARMONY_N_FFT}-notes{HARMONY_NOTES[0]}-{HARMONY_NOTES[1]}"
    return root / ".harmony" / version / split


@torch.no_grad()
def track_chroma(track: Track, hop: int) -> np.ndarray:
    return stem_chroma(torch.from_numpy(read_stems(track, track.frames)), hop, track.sample_rate).numpy()


def cache_harmony(roots: list[Path], split: str, hop: int) -> list[Path]:
    """Every track's stems' chroma [N, 12, T // hop + 1], in the order of cache_latents."""
    return cache_per_track(roots, split, lambda root: harmony_folder(root, split, hop),
                           lambda track: track_chroma(track, hop), "harmony")


def load_init(denoiser: LatentDenoiser, weights: dict[str, torch.Tensor]) -> None:
    """An --init prior's weights into `denoiser`; a prior trained without the
    harmony condition or the full-rank head loads into one with them (their
    last layers stay at zero, so the network computes what the init computed)."""
    missing, unexpected = denoiser.net.load_state_dict(weights, strict=False)
    if unexpected or any(not key.startswith(("harmony_in.", "head.")) for key in missing):
        raise SystemExit(f"--init does not fit this prior: missing {missing}, unexpected {unexpected}")


def draw_mask(rng: np.random.Generator, stems: int, frames: int) -> np.ndarray:
    """bool [N, K], True where given."""
    kind = rng.random()
    if kind < 0.3:
        return np.zeros((stems, frames), bool)
    if kind < 0.8:
        given = rng.random(stems) < 0.5
        if given.all():
            given[rng.integers(stems)] = False
        return np.repeat(given[:, None], frames, axis=1)
    mask = np.ones((stems, frames), bool)
    free = rng.random(stems) < 0.5
    if not free.any():
        free[rng.integers(stems)] = True
    width = int(rng.integers(frames // 8, frames // 2))
    start = int(rng.integers(0, frames - width))
    mask[free, start:start + width] = False
    return mask


class LatentCrops(Dataset):
    """Item i: (latents [N x C, K], mask [N, K], chroma [N x 12, K] or [0, K] without harmony files)."""

    def __init__(self, files: list[Path], frames: int, seed: int, harmony_files: list[Path] | None = None) -> None:
        pairs = [(np.load(f, mmap_mode="r"), np.load(h, mmap_mode="r") if harmony_files else None)
                 for f, h in zip(files, harmony_files or files)]
        pairs = [(l, h) for l, h in pairs if l.shape[-1] > frames]
        self.latents = [l for l, _ in pairs]
        self.harmony = [h for _, h in pairs] if harmony_files else None
        self.frames, self.seed = frames, seed

    def __len__(self) -> int:
        return 1 << 40

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, index])
        track = int(rng.integers(len(self.latents)))
        latent = self.latents[track]
        start = int(rng.integers(0, latent.shape[-1] - self.frames))
        crop = np.asarray(latent[:, :, start:start + self.frames], dtype=np.float32)
        n, c, k = crop.shape
        if self.harmony is not None:
            chroma = np.asarray(self.harmony[track][:, :, start:start + self.frames], dtype=np.float32)
            chroma = chroma.reshape(n * PITCH_CLASSES, k)
        else:
            chroma = np.zeros((0, k), np.float32)
        return (torch.from_numpy(crop.reshape(n * c, k)), torch.from_numpy(draw_mask(rng, n, k)),
                torch.from_numpy(chroma))


def latent_statistics(latents: list[np.ndarray], frames_per_file: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Per stacked channel (stem x latent channel): mean and std of the training
    latents ([N x C, 1] each), from up to `frames_per_file` frames of every file."""
    total = squares = None
    count = 0
    for latent in latents:
        part = np.asarray(latent[:, :, :frames_per_file], dtype=np.float64)
        part = part.reshape(-1, part.shape[-1])
        total = part.sum(1) if total is None else total + part.sum(1)
        squares = (part ** 2).sum(1) if squares is None else squares + (part ** 2).sum(1)
        count += part.shape[-1]
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean ** 2, 1e-8))
    as_column = lambda v: torch.from_numpy(v.astype(np.float32))[:, None]
    return as_column(mean), as_column(np.maximum(std, 1e-3))


def prior_config(path: Path) -> LatentPriorConfig:
    """The config a save_prior file was trained with (its diffusion space, its shape)."""
    try:
        return LatentPriorConfig.from_dict(read_part_config(path, LATENT_PRIOR_FORMAT))
    except ModelFileError as error:
        raise SystemExit(f"{path}: {error}") from error


def save_prior(denoiser: LatentDenoiser, path: Path, metadata: dict) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in denoiser.net.state_dict().items()}
    header = {"format": LATENT_PRIOR_FORMAT, "config": json.dumps(denoiser.config.to_dict()),
              **{k: str(v) for k, v in metadata.items()}}
    write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata=header))


@torch.no_grad()
def valid_loss(denoiser: LatentDenoiser, batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> float:
    generator = torch.Generator().manual_seed(0)
    return float(np.mean([float(denoiser.loss(x, m, generator, h if h.shape[1] else None)) for x, m, h in batches]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, nargs="+")
    parser.add_argument("-o", "--out", type=Path, required=True)
    parser.add_argument("--autoencoder", type=Path, required=True, help="a train_autoencoder best.safetensors")
    parser.add_argument("--minutes", type=float, default=60.0,
                        help="time budget (wall clock; with --cpu-clock, this process's CPU time)")
    parser.add_argument("--cpu-clock", action="store_true",
                        help="count --minutes (and the log's minutes) in CPU time of this process, not wall "
                             "clock: on a shared machine, what equal-CPU-time comparisons need")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--frames", type=int, default=256, help="latent frames per crop (256: ~3 s)")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--channels", type=int, default=128)
    parser.add_argument("--head-channels", type=int, default=0,
                        help="a full-rank output head of this width (LatentPriorConfig.head_channels; 0: none; "
                             "an --init without one starts it at zero)")
    parser.add_argument("--ema", type=float, default=0.999)
    parser.add_argument("--valid-every", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--init", type=Path,
                        help="start from this prior's weights (a best.safetensors), in its diffusion space: its "
                             "latent statistics and sigma_data are kept, whatever --data holds")
    parser.add_argument("--space", type=Path,
                        help="train fresh weights in this prior's diffusion space (its latent statistics and "
                             "sigma_data, not its weights): a guide for autoguidance must diffuse where the prior "
                             "it guides does (engine.core.latent_prior.AutoGuided)")
    parser.add_argument("--sigma-mean", type=float, default=-1.2,
                        help="training noise law: mean of ln(sigma) (default EDM's -1.2, which is for "
                             "sigma_data 0.5; v1's raw latents, sigma_data 0.37, sat at -0.2 relative to "
                             "unit-variance latents: -1.2 + ln(1 / 0.37))")
    parser.add_argument("--sigma-std", type=float, default=1.2, help="training noise law: std of ln(sigma)")
    parser.add_argument("--snapshot-every", type=int, default=0,
                        help="also keep the EMA weights every N steps (a multiple of --valid-every), as "
                             "snapshot-STEP.safetensors, to choose by msdm evaluate-generation, not by loss")
    parser.add_argument("--harmony", action="store_true",
                        help="condition on the given stems' chroma (engine.core.harmony); from an --init "
                             "without it, its new inputs start at zero")
    parser.add_argument("--harmony-lr-scale", type=float, default=10.0,
                        help="learning rate of the harmony layer relative to --lr")
    parser.add_argument("--normalise", action=argparse.BooleanOptionalAction, default=True,
                        help="diffuse each latent channel standardised by its training mean and std "
                             "(default; --no-normalise: the raw latents, as v1)")
    args = parser.parse_args(argv)
    if not args.harmony_lr_scale > 0:
        parser.error(f"--harmony-lr-scale must be positive, got {args.harmony_lr_scale}")
    if args.snapshot_every < 0 or args.snapshot_every % args.valid_every:
        parser.error(f"--snapshot-every must be a multiple of --valid-every ({args.valid_every}), got {args.snapshot_every}")

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    autoencoder, digest = load_autoencoder(args.autoencoder)
    state_path, log_path = args.out / "last.pt", args.out / "log.csv"
    state = torch.load(state_path, weights_only=True) if state_path.is_file() else None
    init_config = prior_config(args.init) if args.init is not None else None
    resumed_config = (LatentPriorConfig.from_dict(json.loads(state["config"]))
                      if state is not None and "config" in state else None)
    harmony = args.harmony or any(c is not None and c.harmony_channels for c in (init_config, resumed_config))
    train_files = cache_latents(args.data, "train", autoencoder, digest)
    valid_files = cache_latents(args.data[:1], "valid", autoencoder, digest)
    hop = autoencoder.config.hop
    train_harmony = cache_harmony(args.data, "train", hop) if harmony else None
    valid_harmony = cache_harmony(args.data[:1], "valid", hop) if harmony else None
    dataset = LatentCrops(train_files, args.frames, args.seed, train_harmony)
    valid_set = LatentCrops(valid_files, args.frames, seed=12345, harmony_files=valid_harmony)
    # The diffusion space (latent statistics, sigma_data) the weights were trained
    # in: a resumed run's own, else the --init's; only a fresh run measures the data.
    # New data moves the statistics a little, and a moved space would cost the init
    # part of what it learned.
    space = resumed_config or init_config or (prior_config(args.space) if args.space is not None else None)
    if space is not None and bool(space.latent_shift) != args.normalise:
        raise SystemExit(f"--{'' if args.normalise else 'no-'}normalise disagrees with the weights it starts from "
                         f"(trained {'with' if space.latent_shift else 'without'} latent statistics)")
    if space is not None and space.latent_shift:
        shift = torch.tensor(space.latent_shift, dtype=torch.float32)[:, None]
        scale = torch.tensor(space.latent_scale, dtype=torch.float32)[:, None]
    else:
        shift, scale = latent_statistics(dataset.latents) if args.normalise else (None, None)
    valid = [tuple(torch.stack(v) for v in zip(*[valid_set[b * 16 + i] for i in range(16)])) for b in range(4)]
    if shift is not None:
        valid = [((x - shift) / scale, m, h) for x, m, h in valid]
    sigma_data = space.sigma_data if space is not None else float(torch.cat([x for x, _, _ in valid]).std())
    # EDM's P_mean = -1.2 is for sigma_data = 0.5; on unit-variance (normalised)
    # latents it trains mostly at sigma well under the data's scale, where the
    # notes are already decided, and seldom where harmony is chosen (Karras et
    # al. 2022, sec. 5: the law should cover the levels where the loss can still
    # be reduced). --sigma-mean moves it; the default keeps past runs reproducible.
    config = LatentPriorConfig(latent_channels=autoencoder.config.latent_channels, channels=args.channels,
                               sigma_data=round(sigma_data, 4), sigma_mean=args.sigma_mean,
                               sigma_std=args.sigma_std, harmony_channels=PITCH_CLASSES if harmony else 0,
                               head_channels=resumed_config.head_channels if resumed_config else args.head_channels)
    if shift is not None:
        config = config.with_latent_statistics(shift[:, 0], scale[:, 0])
    torch.manual_seed(args.seed)
    denoiser = LatentDenoiser(LatentUNet(config))
    if args.init is not None and state is None:
        load_init(denoiser, {k: v.float() for k, v in load_file(str(args.init)).items()})
    ema = copy.deepcopy(denoiser).requires_grad_(False)
    # The harmony layer starts at zero beside trained weights: it learns at
    # --harmony-lr-scale times the rate, or it stays too small to matter
    # within a CPU session (measured: its weights reached 1/8 of the input
    # layer's in 20 CPU-minutes at the same rate, and the loss ignored it).
    harmony_params = [p for n, p in denoiser.named_parameters() if n.startswith("net.harmony_in.")]
    other_params = [p for n, p in denoiser.named_parameters() if not n.startswith("net.harmony_in.")]
    groups = [{"params": other_params, "scale": 1.0}]
    if harmony_params:
        groups.append({"params": harmony_params, "scale": args.harmony_lr_scale})
    optimizer = torch.optim.Adam(groups, lr=args.lr, betas=(0.9, 0.99))
    step, elapsed, best = 0, 0.0, math.inf
    if state is not None:
        denoiser.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        step, elapsed, best = int(state["step"]), float(state["elapsed"]), float(state["best"])
        print(f"resumed at step {step}, {elapsed / 60:.1f} min trained, best valid {best:.4f}", flush=True)
    shown = dataclasses.replace(config, latent_shift=(), latent_scale=())  # 2 x 256 numbers say little in a log
    print(f"{len(dataset.latents)} training tracks; {count_parameters(denoiser):,} parameters; sigma_data "
          f"{sigma_data:.3f}; {shown} (latent statistics: {'per channel' if shift is not None else 'none'})",
          flush=True)
    loader = DataLoader(dataset, batch_size=args.batch, sampler=range(step * args.batch, 1 << 40), num_workers=1,
                        prefetch_factor=4, persistent_workers=True)
    new_log = not log_path.is_file()
    log = open(log_path, "a", newline="")
    writer = csv.writer(log)
    if new_log:
        writer.writerow(["step", "minutes", "lr", "train_loss", "valid_loss_ema"])
    budget = args.minutes * 60
    losses: list[float] = []
    # One thread: this process's CPU time is the compute spent (the loader
    # worker only slices cached latents).
    clock = time.process_time if args.cpu_clock else time.perf_counter
    began = clock() - elapsed
    for x, mask, chroma in loader:
        lr = learning_rate(args.lr, step, clock() - began, budget)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("scale", 1.0)
        loss = denoiser.loss(denoiser.to_diffusion(x), mask, harmony=chroma if harmony else None)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(denoiser.parameters(), 1.0)
        optimizer.step()
        with torch.no_grad():
            decay = min(args.ema, (1 + step) / (10 + step))
            for e, p in zip(ema.parameters(), denoiser.parameters()):
                e.lerp_(p, 1 - decay)
        losses.append(float(loss.detach()))
        step += 1
        done = clock() - began >= budget
        if step % args.valid_every == 0 or done:
            score = valid_loss(ema, valid)
            minutes = (clock() - began) / 60
            writer.writerow([step, f"{minutes:.2f}", f"{lr:.3g}", f"{np.mean(losses):.4f}", f"{score:.4f}"])
            log.flush()
            print(f"step {step} {minutes:.1f} min train {np.mean(losses):.4f} valid (EMA) {score:.4f}", flush=True)
            losses = []
            metadata = {"step": step, "valid_loss": round(score, 5), "autoencoder": digest,
                        "data": ",".join(map(str, args.data))}
            if score < best:
                best = score
                save_prior(ema, args.out / "best.safetensors", metadata)
            if args.snapshot_every and step % args.snapshot_every == 0:
                # The valid loss stopped tracking what matters (v5: lower loss, worse
                # harmony): keep snapshots to be chosen by evaluate-generation.
                save_prior(ema, args.out / f"snapshot-{step:06d}.safetensors", metadata)
            state = {"model": denoiser.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
                     "step": step, "elapsed": clock() - began, "best": best,
                     "config": json.dumps(denoiser.config.to_dict())}
            write_atomic(state_path, lambda tmp: torch.save(state, tmp))
            if done:
                # The EMA weights when the budget ran out: what equal-time comparisons
                # take (best.safetensors is chosen by a loss on data/synth alone).
                save_prior(ema, args.out / "last.safetensors", metadata)
        if done:
            break
    log.close()
    print(f"done: step {step}, best valid loss {best:.4f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
