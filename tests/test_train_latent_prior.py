"""training.train_latent_prior on a tiny dataset: snapshots for choosing by
generation measures, and the diffusion space (latent statistics, sigma_data)
kept from the weights a run starts from (--init, then its own last.pt)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors import safe_open

from engine.core.latent_prior import LatentDenoiser, LatentPriorConfig, LatentUNet
from tests.support.latent_models import tiny_latent_model
from training.train_autoencoder import save_autoencoder
from training.train_latent_prior import main, save_prior

STEMS = ("bass", "drums", "guitar", "piano")


def header(path) -> dict:
    with safe_open(str(path), "pt") as handle:
        return handle.metadata()


@pytest.fixture
def setup(tmp_path):
    rng = np.random.default_rng(0)
    for split, count in (("train", 2), ("valid", 1)):
        for t in range(count):
            folder = tmp_path / "data" / split / f"Track{t:05d}"
            folder.mkdir(parents=True)
            for stem in STEMS:
                sf.write(folder / f"{stem}.wav", (0.1 * rng.standard_normal(30000)).astype(np.float32), 22050,
                         subtype="FLOAT")
    save_autoencoder(tiny_latent_model().autoencoder, tmp_path / "ae.safetensors", {"step": 1})
    args = ["--data", str(tmp_path / "data"), "--autoencoder", str(tmp_path / "ae.safetensors"), "--channels", "16",
            "--batch", "2", "--frames", "16", "--valid-every", "2", "--threads", "1", "--minutes", "0.03"]
    return tmp_path, args


def test_snapshots_are_kept_every_n_steps_and_must_fall_on_a_valid_step(setup):
    tmp_path, args = setup
    assert main([*args, "-o", str(tmp_path / "run"), "--snapshot-every", "4"]) == 0
    snapshots = sorted((tmp_path / "run").glob("snapshot-*.safetensors"))
    assert snapshots and all(int(p.stem.split("-")[1]) % 4 == 0 for p in snapshots)
    assert int(header(snapshots[-1])["step"]) == int(snapshots[-1].stem.split("-")[1])
    with pytest.raises(SystemExit):
        main([*args, "-o", str(tmp_path / "bad"), "--snapshot-every", "3"])


def test_the_ema_weights_at_the_end_of_the_budget_are_kept_as_last(setup):
    """last.safetensors: the EMA of last.pt at its final step, whatever the valid loss chose as best."""
    from safetensors.torch import load_file

    tmp_path, args = setup
    run = tmp_path / "run"
    assert main([*args, "-o", str(run)]) == 0
    state = torch.load(run / "last.pt", weights_only=True)
    assert int(header(run / "last.safetensors")["step"]) == state["step"]
    last = load_file(str(run / "last.safetensors"))
    ema = {k.removeprefix("net."): v for k, v in state["ema"].items()}
    assert last.keys() <= ema.keys() and all(torch.equal(last[k], ema[k]) for k in last)


def test_init_and_resume_keep_the_diffusion_space_the_weights_were_trained_in(setup):
    tmp_path, args = setup
    width = 4 * 8
    space = LatentPriorConfig(latent_channels=8, channels=16, sigma_data=0.77).with_latent_statistics(
        np.full(width, 0.5), np.full(width, 2.0))
    save_prior(LatentDenoiser(LatentUNet(space)), tmp_path / "init.safetensors", {"step": 1})
    run = tmp_path / "run"
    assert main([*args, "-o", str(run), "--init", str(tmp_path / "init.safetensors")]) == 0
    trained = LatentPriorConfig.from_dict(json.loads(header(run / "best.safetensors")["config"]))
    assert trained.latent_shift == space.latent_shift and trained.latent_scale == space.latent_scale
    assert trained.sigma_data == 0.77  # not this data's own (about 1 in the standardised space)
    # Resumed without --init: last.pt says which space, not a fresh measure of the data.
    first_steps = torch.load(run / "last.pt", weights_only=True)["step"]
    assert main([*args, "-o", str(run), "--minutes", "0.06"]) == 0
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["step"] > first_steps
    resumed = LatentPriorConfig.from_dict(json.loads(state["config"]))
    assert (resumed.latent_shift, resumed.sigma_data) == (space.latent_shift, 0.77)
    # Raw-latent weights cannot continue in a standardised space (nor the reverse).
    raw = LatentPriorConfig(latent_channels=8, channels=16, sigma_data=0.37)
    save_prior(LatentDenoiser(LatentUNet(raw)), tmp_path / "raw.safetensors", {"step": 1})
    with pytest.raises(SystemExit, match="normalise disagrees"):
        main([*args, "-o", str(tmp_path / "mixed"), "--init", str(tmp_path / "raw.safetensors")])


def test_harmony_from_an_init_without_it_caches_chroma_and_resumes_with_it(setup):
    """--harmony --init OLD: the chroma of every track is cached beside the
    latents, the run's weights carry the condition, and a resume without the
    flag keeps it (last.pt's config)."""
    tmp_path, args = setup
    old = LatentPriorConfig(latent_channels=8, channels=16, sigma_data=0.8).with_latent_statistics(
        np.zeros(32), np.ones(32))
    save_prior(LatentDenoiser(LatentUNet(old)), tmp_path / "init.safetensors", {"step": 1})
    run = tmp_path / "run"
    assert main([*args, "-o", str(run), "--init", str(tmp_path / "init.safetensors"), "--harmony"]) == 0
    cached = sorted((tmp_path / "data" / ".harmony").glob("*/train/*.npy"))
    assert len(cached) == 2 and np.load(cached[0]).shape == (4, 12, 30000 // 256 + 1)
    trained = LatentPriorConfig.from_dict(json.loads(header(run / "best.safetensors")["config"]))
    assert trained.harmony_channels == 12
    assert main([*args, "-o", str(run), "--minutes", "0.06"]) == 0
    state = torch.load(run / "last.pt", weights_only=True)
    assert LatentPriorConfig.from_dict(json.loads(state["config"])).harmony_channels == 12
    assert state["model"]["net.harmony_in.weight"].shape[1] == 4 * 12
    # Its own, faster learning rate (the second parameter group).
    assert [g["scale"] for g in state["optimizer"]["param_groups"]] == [1.0, 10.0]
