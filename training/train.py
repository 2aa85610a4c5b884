"""Training with PyTorch Lightning: one GPU or CPU, many GPUs or nodes (DDP), bf16,
checkpoint and resume, EMA weights; the paper's loss and noise distribution.

Loss (EDM eq. 2 with the paper's settings): sigma ~ LogNormal(-3, 1), one sigma
per example shared by all stems; x_noisy = x + sigma n; D(x_noisy, sigma) is the
preconditioned, clamped denoiser; loss = mean over examples of
lambda(sigma) * mean((D - x)^2), lambda = (sigma^2 + sd^2) / (sigma sd)^2.
ISDM: the same command with `isdm_stem` trains a one-stem model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch.utils.data import DataLoader

from engine.atomic import write_atomic
from engine.core.config import PAPER, SMALL, TINY, ModelConfig
from engine.core.diffusion import KarrasDenoiser
from engine.core.network import UNet1d
from engine.errors import CommandError
from engine.storage.model import MSDMModel

from .data import StemCrops, detect_layout, infer_stems, scan

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainPreset:
    model: ModelConfig
    crop: int                # samples per training example (= the model's window)
    batch_size: int
    learning_rate: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.99)
    precision: str = "32-true"
    ema_decay: float | None = None
    max_steps: int = 100_000
    val_every: int = 1000
    items_per_epoch: int = 2000


PRESETS = {
    # exp/train_msdm.yaml of the paper: 405.5M parameters, batch 8, bf16, 262144-sample crops.
    "paper": TrainPreset(PAPER, crop=262144, batch_size=8, precision="bf16-mixed", val_every=4000),
    # What we ship: small enough to train on a CPU in hours (see docs/models.md).
    "default": TrainPreset(SMALL, crop=65536, batch_size=4, learning_rate=3e-4, ema_decay=0.999,
                           max_steps=20_000, val_every=500),
    # Tests: seconds on a CPU.
    "tiny": TrainPreset(TINY, crop=4096, batch_size=2, learning_rate=1e-3, max_steps=4, val_every=2,
                        items_per_epoch=8),
}


def edm_loss(denoiser: KarrasDenoiser, x: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Weighted denoising loss of EDM (eq. 2, table 1), one sigma per example."""
    denoised = denoiser(x + sigma[:, None, None] * noise, sigma)
    per_example = ((denoised - x) ** 2).mean(dim=(1, 2))
    return (denoiser.loss_weight(sigma) * per_example).mean()


def _lightning():
    try:
        import lightning.pytorch as pl
    except ImportError as error:  # training is an extra: say how to get it
        raise CommandError('training needs PyTorch Lightning: pip install -e ".[train]"') from error
    return pl


def make_module(config: ModelConfig, learning_rate: float, betas: Sequence[float]):
    pl = _lightning()

    class MSDMTraining(pl.LightningModule):
        def __init__(self, config: dict, learning_rate: float, betas: list) -> None:
            super().__init__()
            # Plain data only: checkpoints stay loadable without executing code.
            self.save_hyperparameters()
            self.model_config = ModelConfig.from_dict(config)
            self.network = UNet1d(self.model_config.unet)
            self.denoiser = KarrasDenoiser(self.network, self.model_config.diffusion.sigma_data)

        def _loss(self, batch: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
            d = self.model_config.diffusion
            shape = (batch.shape[0],)
            normal = torch.randn(shape, generator=generator).to(batch.device)
            sigma = (d.sigma_mean + d.sigma_std * normal).exp()
            noise = torch.randn(batch.shape, generator=generator).to(batch.device)
            return edm_loss(self.denoiser, batch, sigma, noise)

        def training_step(self, batch, batch_idx):
            loss = self._loss(batch)
            self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=False)
            return loss

        def validation_step(self, batch, batch_idx):
            # Fixed noise per batch: validation losses are comparable across runs.
            generator = torch.Generator().manual_seed(batch_idx)
            self.log("valid_loss", self._loss(batch, generator), prog_bar=True, sync_dist=True)

        def on_train_epoch_start(self) -> None:
            loader = self.trainer.train_dataloader
            dataset = getattr(loader, "dataset", None)
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(self.current_epoch)

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=self.hparams.learning_rate, betas=tuple(self.hparams.betas))

    # Lists, not tuples, so Lightning's hparams.yaml stays plain YAML.
    return MSDMTraining(json.loads(json.dumps(config.to_dict())), learning_rate, list(betas))


def _weights_digest(module: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().float().numpy().tobytes())
    return digest.hexdigest()


def _split_dirs(data_dir: Path) -> tuple[Path, Path | None]:
    train = data_dir / "train" if (data_dir / "train").is_dir() else data_dir
    for name in ("valid", "validation"):
        if (data_dir / name).is_dir():
            return train, data_dir / name
    return train, None


def train(
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    preset: str = "default",
    stems: Sequence[str] | None = None,
    isdm_stem: str | None = None,
    max_steps: int | None = None,
    max_time: str | None = None,
    batch_size: int | None = None,
    devices: int | str = 1,
    accelerator: str = "auto",
    num_nodes: int = 1,
    strategy: str = "auto",
    precision: str | None = None,
    resume: str | os.PathLike | None = None,
    seed: int = 0,
    num_workers: int = 0,
    quiet: bool = False,
    init: str | os.PathLike | None = None,
) -> Path:
    """Train and write `out_dir/model.safetensors` (plus Lightning checkpoints and
    `logs/version_N/metrics.csv`, one per run or resume). Returns the model path."""
    pl = _lightning()
    from lightning.pytorch.callbacks import EMAWeightAveraging, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    if preset not in PRESETS:
        raise CommandError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    settings = PRESETS[preset]
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    train_dir, valid_dir = _split_dirs(data_dir)
    if stems:
        stems = tuple(stems)
    elif detect_layout(train_dir) == "slakh":
        stems = settings.model.stems
    else:
        stems = infer_stems(train_dir)  # a folder of stems: whatever stems it has
    config = settings.model.with_stems(stems) if tuple(stems) != settings.model.stems else settings.model
    if isdm_stem:
        if isdm_stem not in stems:
            raise CommandError(f"--isdm-stem {isdm_stem!r} is not one of the dataset's stems {list(stems)}")
        config = config.with_stems((isdm_stem,))
    config = dataclasses.replace(config, window=settings.crop)
    start = None
    if init is not None:
        if resume is not None:
            raise CommandError("give --init (a model file to start from) or --resume (a checkpoint), not both")
        start = MSDMModel.load(init)
        if isdm_stem is None and tuple(start.config.stems) != tuple(config.stems):
            raise CommandError(f"{init} models the stems {list(start.config.stems)}, the data has {list(config.stems)}")
        config = dataclasses.replace(start.config, window=settings.crop)
    pl.seed_everything(seed, workers=True)

    def dataset(folder: Path, items: int, shift: bool) -> StemCrops:
        report = scan(folder, config.stems, min_frames=1)
        return StemCrops(report.tracks, config.stems, config.sample_rate, settings.crop,
                         items_per_epoch=items, seed=seed, random_shift=shift)

    train_set = dataset(train_dir, settings.items_per_epoch, True)
    loaders = dict(train_dataloaders=DataLoader(train_set, batch_size=batch_size or settings.batch_size,
                                                num_workers=num_workers, shuffle=False, drop_last=True))
    if valid_dir is not None:
        valid_set = dataset(valid_dir, max(8, settings.batch_size), True)
        loaders["val_dataloaders"] = DataLoader(valid_set, batch_size=batch_size or settings.batch_size,
                                                num_workers=num_workers)

    module = make_module(config, settings.learning_rate, settings.betas)
    if start is not None:
        module.network.load_state_dict(start.network.state_dict())
    callbacks = [ModelCheckpoint(dirpath=out_dir / "checkpoints", save_last=True, save_top_k=0,
                                 every_n_train_steps=settings.val_every)]
    if settings.ema_decay:
        callbacks.append(EMAWeightAveraging(decay=settings.ema_decay))
    trainer = pl.Trainer(
        default_root_dir=out_dir, max_steps=max_steps or settings.max_steps, max_time=max_time, accelerator=accelerator,
        devices=devices, num_nodes=num_nodes, strategy=strategy, precision=precision or settings.precision,
        # A new logs/version_N per run: resuming must not overwrite the earlier curve.
        logger=CSVLogger(out_dir, name="logs"), callbacks=callbacks,
        val_check_interval=settings.val_every if valid_dir is not None else None,
        check_val_every_n_epoch=None, log_every_n_steps=max(1, min(50, settings.val_every)),
        enable_progress_bar=not quiet, enable_model_summary=not quiet, num_sanity_val_steps=0,
    )
    trainer.fit(module, ckpt_path=resume, **loaders)
    # Every rank records what it holds, so a DDP run can prove the replicas agree.
    write_atomic(out_dir / f"weights-rank{trainer.global_rank}.sha256", _weights_digest(module.network) + "\n")
    model_path = out_dir / "model.safetensors"
    if trainer.global_rank == 0:
        model = MSDMModel(config, module.network.cpu())
        model.save(model_path, source=f"trained with preset {preset} on {data_dir.name} "
                                      f"({trainer.global_step} steps{', EMA' if settings.ema_decay else ''})")
        write_atomic(out_dir / "training.json", json.dumps({
            "preset": preset, "steps": trainer.global_step, "stems": list(config.stems),
            "data": str(data_dir), "devices": str(devices), "accelerator": accelerator,
            "num_nodes": num_nodes, "tracks": len(train_set.tracks), "seed": seed,
        }, indent=2))
    return model_path

