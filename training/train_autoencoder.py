"""Train the stem autoencoder (engine.core.autoencoder.StemAutoencoder).

Items are 1.5 s crops of single stems (any of the four: one network encodes
them all, as MSLDM's shared VAE), silent crops redrawn. The loss is in the
front end's log-magnitude domain, so no Griffin-Lim runs in training:

    L1(log|X_hat|, log|X|) + spectral convergence ||X_hat| - |X|||_F / |||X|||_F

(the two terms of Arik et al. 2019 / Yamamoto et al. 2020's STFT losses: the
log term weighs quiet partials, the linear one loud ones). Scored on fixed
crops of the VALID split every `--valid-every` steps; the best weights are
kept as a safetensors file with the config in its metadata. Resumable from
RUN/last.pt.

    python -m training.train_autoencoder --data data/synth data/multi -o runs/ae --minutes 30
"""

from __future__ import annotations

import argparse
import csv
import hashlib
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
from engine.core.autoencoder import AutoencoderConfig, StemAutoencoder, count_parameters
from training.data import Track, scan
from training.part_files import AUTOENCODER_FORMAT, read_part
from training.train_separator import learning_rate

STEMS = ("bass", "drums", "guitar", "piano")
SILENT_RMS = 1e-3


class StemCrops(Dataset):
    """Item i: one non-silent [crop] float32 crop of a random stem of a random
    track, from its own generator (seed, i); a random gain of -12..+3 dB so
    levels vary as in a mix."""

    def __init__(self, tracks: list[Track], crop: int, seed: int) -> None:
        self.tracks = [t for t in tracks if t.frames > crop]
        if not self.tracks:
            raise ValueError(f"no track longer than {crop} samples")
        self.crop, self.seed = crop, seed

    def __len__(self) -> int:
        return 1 << 40

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        for _ in range(20):
            track = self.tracks[rng.integers(len(self.tracks))]
            stem = STEMS[rng.integers(len(STEMS))]
            start = int(rng.integers(0, track.frames - self.crop))
            audio = np.zeros(self.crop, np.float32)
            for path in track.files.get(stem) or []:
                data, _ = sf.read(str(path), start=start, frames=self.crop, dtype="float32", always_2d=True)
                audio[:len(data)] += data.mean(axis=1)
            if np.sqrt(np.mean(audio ** 2)) > SILENT_RMS:
                return audio * np.float32(10 ** (rng.uniform(-12, 3) / 20))
        return audio

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.from_numpy(self.draw(np.random.default_rng([self.seed, index])))


def reconstruction_loss(model: StemAutoencoder, log_mag: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    estimate = model.decode_log_magnitude(model.encode_log_magnitude(log_mag))
    log_l1 = (estimate - log_mag).abs().mean()
    floor = model.config.magnitude_floor
    magnitude, magnitude_hat = log_mag.exp() - floor, estimate.exp() - floor
    convergence = ((magnitude_hat - magnitude).norm(dim=(1, 2)) / magnitude.norm(dim=(1, 2)).clamp_min(1e-6)).mean()
    return log_l1 + convergence, {"log_l1": float(log_l1.detach()), "spectral_convergence": float(convergence.detach())}


def save_autoencoder(model: StemAutoencoder, path: Path, metadata: dict) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    header = {"format": AUTOENCODER_FORMAT, "config": json.dumps(model.config.to_dict()),
              **{k: str(v) for k, v in metadata.items()}}
    write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata=header))


def load_autoencoder(path: Path) -> tuple[StemAutoencoder, str]:
    """The autoencoder of a training run's safetensors file, and a short hash of it."""
    config, tensors = read_part(path, AUTOENCODER_FORMAT)
    model = StemAutoencoder(AutoencoderConfig.from_dict(config))
    model.load_state_dict(tensors)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    return model.eval(), digest


def valid_items(roots: list[Path], crop: int, count: int) -> torch.Tensor:
    """[count, crop] fixed VALID crops, shared as evenly as can be among the datasets' VALID splits (the
    first ones take the remainder), each set drawn with the same seed so a run's scores compare with
    another's on the same sets."""
    shares = [count // len(roots) + (i < count % len(roots)) for i in range(len(roots))]
    crops = []
    for root, share in zip(roots, shares):
        valid_set = StemCrops(scan(root / "valid", STEMS).tracks, crop, seed=12345)
        crops += [valid_set[i] for i in range(share)]
    return torch.stack(crops)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, nargs="+", help="dataset folder(s) with train/ and valid/")
    parser.add_argument("-o", "--out", type=Path, required=True)
    parser.add_argument("--minutes", type=float, default=30.0, help="training time budget (wall clock)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--crop", type=int, default=32768)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--latent-channels", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--n-fft", type=int, default=1024)
    parser.add_argument("--hop", type=int, default=256)
    parser.add_argument("--valid-items", type=int, default=64)
    parser.add_argument("--valid-every", type=int, default=250)
    parser.add_argument("--init", default="pca",
                        help="pca: start from the principal components of the training stems' log magnitudes; "
                             "random; or an autoencoder file (a run's best.safetensors, e.g. "
                             "training/checkpoints/autoencoder-v1.safetensors) to continue it on new data, "
                             "its config and input scaling kept so a prior over its latents still fits")
    parser.add_argument("--valid-data", type=Path, nargs="+",
                        help="dataset(s) whose VALID split scores the run (default: the first --data); "
                             "--valid-items crops shared among them, e.g. data/synth data/holdout-own")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    tracks = [t for root in args.data for t in scan(root / "train", STEMS).tracks]
    valid_crops = valid_items(args.valid_data or args.data[:1], args.crop, args.valid_items)
    init_file = None if args.init in ("random", "pca") else Path(args.init)
    if init_file is not None and not init_file.is_file():
        parser.error(f"--init takes pca, random or an autoencoder file; {init_file} is none of these")
    torch.manual_seed(args.seed)
    if init_file is not None:
        model, _ = load_autoencoder(init_file)
        config = model.config
    else:
        config = AutoencoderConfig(n_fft=args.n_fft, hop=args.hop, latent_channels=args.latent_channels,
                                   hidden=args.hidden, blocks=args.blocks)
        model = StemAutoencoder(config)
    dataset = StemCrops(tracks, args.crop, args.seed)
    valid = model.log_magnitude(valid_crops)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    state_path, log_path = args.out / "last.pt", args.out / "log.csv"
    step, elapsed, best = 0, 0.0, math.inf
    if state_path.is_file():
        state = torch.load(state_path, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, elapsed, best = int(state["step"]), float(state["elapsed"]), float(state["best"])
        print(f"resumed at step {step}, {elapsed / 60:.1f} min trained, best valid {best:.4f}", flush=True)
    elif init_file is None:
        model.fit_input_scaling(torch.stack([dataset[(1 << 40) - 1 - i] for i in range(64)]))
        if args.init == "pca":
            model.init_from_principal_components(torch.stack([dataset[(1 << 40) - 100 - i] for i in range(400)]))
    print(f"{len(tracks)} training tracks; {count_parameters(model):,} parameters; {config}", flush=True)
    loader = DataLoader(dataset, batch_size=args.batch, sampler=range(step * args.batch, 1 << 40), num_workers=1,
                        prefetch_factor=4, persistent_workers=True)
    new_log = not log_path.is_file()
    log = open(log_path, "a", newline="")
    writer = csv.writer(log)
    if new_log:
        writer.writerow(["step", "minutes", "lr", "train_loss", "valid_log_l1", "valid_spectral_convergence",
                         "valid_loss"])
    if new_log and init_file is not None:
        with torch.no_grad():  # where the continued run starts, on this run's VALID crops
            start_loss, parts = reconstruction_loss(model.eval(), valid)
        writer.writerow([0, "0.00", "0", "", f"{parts['log_l1']:.4f}", f"{parts['spectral_convergence']:.4f}",
                         f"{float(start_loss):.4f}"])
        best = float(start_loss)
        print(f"start ({init_file.name}): valid log-L1 {parts['log_l1']:.4f} SC {parts['spectral_convergence']:.4f}",
              flush=True)
    budget = args.minutes * 60
    losses: list[float] = []
    began = time.perf_counter() - elapsed
    model.train()
    for batch in loader:
        lr = learning_rate(args.lr, step, time.perf_counter() - began, budget)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with torch.no_grad():
            log_mag = model.log_magnitude(batch)
        loss, _ = reconstruction_loss(model, log_mag)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(float(loss.detach()))
        step += 1
        done = time.perf_counter() - began >= budget
        if step % args.valid_every == 0 or done:
            model.eval()
            with torch.no_grad():
                valid_loss, parts = reconstruction_loss(model, valid)
            model.train()
            minutes = (time.perf_counter() - began) / 60
            writer.writerow([step, f"{minutes:.2f}", f"{lr:.3g}", f"{np.mean(losses):.4f}",
                             f"{parts['log_l1']:.4f}", f"{parts['spectral_convergence']:.4f}", f"{float(valid_loss):.4f}"])
            log.flush()
            print(f"step {step} {minutes:.1f} min train {np.mean(losses):.4f} valid log-L1 {parts['log_l1']:.4f} "
                  f"SC {parts['spectral_convergence']:.4f}", flush=True)
            losses = []
            if float(valid_loss) < best:
                best = float(valid_loss)
                save_autoencoder(model, args.out / "best.safetensors",
                                 {"step": step, "valid_loss": round(best, 5), "data": ",".join(map(str, args.data))})
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                     "elapsed": time.perf_counter() - began, "best": best}
            write_atomic(state_path, lambda tmp: torch.save(state, tmp))
        if done:
            break
    log.close()
    print(f"done: step {step}, best valid loss {best:.4f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
