"""A model file with a latent prior, random weights, small enough for tests."""

from __future__ import annotations

import torch

from engine.core.autoencoder import AutoencoderConfig, StemAutoencoder
from engine.core.config import TINY
from engine.core.latent_prior import LatentDenoiser, LatentPriorConfig, LatentUNet
from engine.storage.model import MSDMModel


def tiny_latent_model(seed: int = 0, harmony: bool = False) -> MSDMModel:
    """Random weights (the waveform part is the tiny preset's); `harmony`: a
    prior conditioned on the given stems' chroma (engine.core.harmony)."""
    torch.manual_seed(seed)
    model = MSDMModel.build(TINY)
    model.autoencoder = StemAutoencoder(AutoencoderConfig(latent_channels=8, hidden=32, blocks=1,
                                                          griffin_lim_iterations=4))
    # The output layer starts at zero (EDM's convention); random weights there
    # make the test exercise the network's path too.
    net = LatentUNet(LatentPriorConfig(latent_channels=8, channels=16, attention_heads=2,
                                       harmony_channels=12 if harmony else 0))
    torch.nn.init.normal_(net.stem_out.weight, std=0.02)
    model.latent_prior = LatentDenoiser(net)
    model.__post_init__()
    return model
