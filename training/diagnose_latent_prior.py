"""Where the latent prior loses what real music has: two measurements.

- Energy inside and outside the span of the prior's output layer, per patch
  of `patch` frames x N x C numbers, for real latents of the split and for
  generated ones (the file's default generation, before the sampling scale).
  LatentUNet writes a patch from `channels` features, so outside that span
  the plain sampler leaves unit-variance noise (engine.core.latent_prior.
  SpanProjected); real latents hold little energy there.
- SDEdit of real windows (Meng et al. 2022): the evaluation windows encoded,
  noised to sigma, denoised by the file's sampling denoiser down to 0 and
  decoded, scored as generations are (msdm evaluate-generation's measures).
  Sigma 0 is the autoencoder's round trip; the level at which a measure
  falls is where the prior loses it.

    python -m training.diagnose_latent_prior --model engine/models/default.safetensors \\
        --data data/synth --split valid --windows 32 --sdedit 0.1 0.3 1 3
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from engine.audio.latent_generation import (decode_stems, encode_stems, resolve_autoguidance, soft_limit,
                                            window_samples)
from engine.core.diffusion import ItemNoise, Unconditional, karras_sigmas, sample, seed_for
from engine.core.latent_prior import sampling_denoiser, span_basis, to_patch_vectors
from engine.core.tasks import LATENT_GENERATE, generate
from engine.errors import UserError
from engine.storage.model import MSDMModel
from training.evaluate_generation import Judge
from training.generation_candidates import load_real_windows

SHOWN = ("log-mel distance", "structure distance", "clarity ratio")


def span_energy(latents: torch.Tensor, basis: torch.Tensor, patch: int) -> tuple[float, float]:
    """Mean energy per patch inside and outside the span of `basis` [W P, r]
    (a last partial patch left out)."""
    whole = latents.shape[-1] // patch * patch
    x = to_patch_vectors(latents[..., :whole], patch).reshape(-1, basis.shape[0])
    inside = (x @ basis).pow(2).sum(1)
    return float(inside.mean()), float((x.pow(2).sum(1) - inside).mean())


@torch.no_grad()
def generated_latents(model: MSDMModel, denoiser, windows: int, frames: int, seed: int, settings) -> torch.Tensor:
    """[W, N C, K] standardised latents of the default generation (unscaled)."""
    config = model.latent_prior.config
    padded = -(-frames // config.downsampling_factor) * config.downsampling_factor
    return torch.stack([generate(denoiser, config.width, padded, [seed_for(seed, k)], settings=settings,
                                 clip=None)[0, :, :frames] for k in range(windows)])


@torch.no_grad()
def sdedit(model: MSDMModel, denoiser, windows: np.ndarray, sigma: float, steps: int, seed: int) -> np.ndarray:
    """Real windows [W, N, T] encoded, noised to `sigma`, sampled back to 0 (DPM-Solver++(2M), as many
    steps as the default schedule spends below sigma), decoded."""
    prior = model.latent_prior
    out = np.zeros_like(windows)
    for k, window in enumerate(windows):
        z = prior.to_diffusion(encode_stems(model, window))
        frames = z.shape[-1]
        padded = -(-frames // prior.config.downsampling_factor) * prior.config.downsampling_factor
        z = torch.nn.functional.pad(z, (0, padded - frames), mode="replicate")
        if sigma > 0:
            count = max(2, round(steps * np.log(sigma / LATENT_GENERATE.sigma_min)
                                 / np.log(LATENT_GENERATE.sigma_max / LATENT_GENERATE.sigma_min)))
            sigmas = karras_sigmas(count, LATENT_GENERATE.sigma_min, sigma)
            z = sample(denoiser, ItemNoise([seed_for(seed, k)]), (1, *z.shape), sigmas, method="dpmpp2m",
                       start=z[None], condition=Unconditional(clip=None))[0]
        out[k] = soft_limit(decode_stems(model, prior.from_diffusion(z[:, :frames]), window.shape[-1],
                                         seed_for(seed, k)))
    return out


def run(args) -> None:
    torch.set_num_threads(args.threads)
    model = MSDMModel.load(args.model)
    prior = model.latent_prior
    if prior is None:
        raise SystemExit(f"{args.model} has no latent prior")
    settings = resolve_autoguidance(LATENT_GENERATE.override(autoguidance=args.autoguidance), model)
    denoiser = sampling_denoiser(prior, model.latent_guide, settings.autoguidance)
    real = load_real_windows(args.data, model.stems, model.sample_rate, window_samples(model), args.windows,
                             split=args.split, seed=args.seed)
    frames = real.window // model.autoencoder.config.hop + 1
    basis = span_basis(denoiser.output_networks())   # the networks the sampling denoiser mixes
    patch = prior.config.patch
    reference = torch.stack([prior.to_diffusion(encode_stems(model, w)) for w in real.reference[:64]])
    began = time.perf_counter()
    generated = generated_latents(model, denoiser, args.windows, frames, args.seed, settings)
    print(json.dumps({"span": f"{basis.shape[1]} of {basis.shape[0]}", "autoguidance": settings.autoguidance,
                      "span_projection": prior.config.span_projection,
                      "real energy per patch inside/outside": np.round(span_energy(reference, basis, patch), 1).tolist(),
                      "generated": np.round(span_energy(generated, basis, patch), 1).tolist(),
                      "seconds": round(time.perf_counter() - began)}), flush=True)
    if args.sdedit:
        judge = Judge(real, seed=args.seed)
        for sigma in args.sdedit:
            audio = sdedit(model, denoiser, real.evaluation_stems, sigma, LATENT_GENERATE.steps, args.seed)
            scores = judge.realism(audio, real.stems)
            print(json.dumps({"sigma": sigma, **{f"{metric} {stem}": round(value, 3)
                                                 for (metric, stem), value in scores.items() if metric in SHOWN}}),
                  flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", default="valid")
    parser.add_argument("--windows", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--autoguidance", type=float, help="default: the file's weight")
    parser.add_argument("--sdedit", type=float, nargs="*", default=[], help="noise levels (0: the round trip)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    try:
        run(args)
    except UserError as error:
        parser.exit(2, f"error: {error}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
