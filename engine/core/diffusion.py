"""EDM diffusion: preconditioning, the Karras noise schedule, per-item noise and
the stochastic sampler the paper uses (Euler with churn + "correction"), plus Heun
and DPM-Solver++(2M) for few-step sampling.

Everything here works on any denoiser `D(x[B, N, T], sigma[B]) -> x0`, so a
closed-form denoiser (tests/support/gaussian_prior.py) can prove the samplers right.
References: Karras et al. 2022 ("EDM"), algorithm 2 and table 1; Mariani et al.
2024, section 4 and appendix (correction steps, Dirac / Gaussian likelihoods).
"""

from __future__ import annotations

import math
from typing import Callable, Protocol, Sequence

import numpy as np
import torch
from torch import Tensor, nn

Denoiser = Callable[[Tensor, Tensor], Tensor]
ProgressCallback = Callable[[dict], None]


class Cancelled(Exception):
    """Raised by a progress callback to stop sampling (the GUI's and server's Cancel)."""


def as_sigma_batch(sigma: Tensor | float, x: Tensor) -> Tensor:
    """A noise level as one value per batch item, on x's device and dtype."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    return sigma.expand(x.shape[0]) if sigma.ndim == 0 else sigma


class KarrasDenoiser(nn.Module):
    """D(x, sigma) = c_skip x + c_out F(c_in x, c_noise), clamped to [-1, 1].

    EDM table 1 with the paper's sigma_data = 0.2; the clamp is the reference
    implementation's (`dynamic_threshold = 0`), used in training and sampling alike.
    """

    def __init__(self, net: nn.Module, sigma_data: float = 0.2, clamp: bool = True) -> None:
        super().__init__()
        self.net = net
        self.sigma_data = sigma_data
        self.clamp = clamp

    def scalings(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        sd2 = self.sigma_data**2
        s = sigma[:, None, None]
        c_skip = sd2 / (s**2 + sd2)
        c_out = s * self.sigma_data / (s**2 + sd2).sqrt()
        c_in = 1 / (s**2 + sd2).sqrt()
        c_noise = sigma.log() / 4
        return c_skip, c_out, c_in, c_noise

    def forward(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        sigma = as_sigma_batch(sigma, x)
        c_skip, c_out, c_in, c_noise = self.scalings(sigma)
        x0 = c_skip * x + c_out * self.net(c_in * x, c_noise)
        return x0.clamp(-1.0, 1.0) if self.clamp else x0

    def loss_weight(self, sigma: Tensor) -> Tensor:
        """lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2 (EDM eq. 8 with table 1)."""
        return (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2



class StackedDenoiser:
    """ISDM: one single-source model per stem, run side by side as one denoiser
    of all stems (the sources are modelled as independent)."""

    def __init__(self, denoisers: Sequence[Denoiser]) -> None:
        self.denoisers = list(denoisers)

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        if x.shape[1] != len(self.denoisers):
            raise ValueError(f"{x.shape[1]} stems but {len(self.denoisers)} single-stem models")
        return torch.cat([d(x[:, n:n + 1], sigma) for n, d in enumerate(self.denoisers)], dim=1)

def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """EDM eq. 5: `steps` noise levels from sigma_max down to sigma_min, then a final 0."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0 < sigma_min <= sigma_max:
        raise ValueError(f"need 0 < sigma_min <= sigma_max, got {sigma_min}, {sigma_max}")
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64) if steps > 1 else torch.zeros(1, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)]).float()


def seed_for(seed: int, *path: int) -> int:
    """A 63-bit seed derived from a user seed and a position (channel, window...),
    so that every window of every channel has its own reproducible noise."""
    return int(np.random.SeedSequence([seed, *path]).generate_state(2, np.uint64)[0] >> np.uint64(1))


class ItemNoise:
    """Gaussian noise with one generator per batch item.

    Item b always draws the same numbers whatever the batch it sits in, so the
    same seed gives the same audio when a DAW re-renders one window alone
    (EDM's per-item seeding)."""

    def __init__(self, seeds: Sequence[int]) -> None:
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]

    def __len__(self) -> int:
        return len(self.generators)

    def randn_like(self, x: Tensor) -> Tensor:
        if x.shape[0] != len(self.generators):
            raise ValueError(f"batch of {x.shape[0]} but {len(self.generators)} seeds")
        items = [torch.randn(x.shape[1:], generator=g, dtype=torch.float32) for g in self.generators]
        return torch.stack(items).to(device=x.device, dtype=x.dtype)


class Condition(Protocol):
    """What turns the unconditional sampler into a task (see engine.core.tasks)."""

    def project(self, x: Tensor, sigma: Tensor, noise: ItemNoise) -> Tensor:
        """Put x on the task's constraint set at noise level sigma before the derivative."""

    def derivative(self, denoiser: Denoiser, x: Tensor, sigma: Tensor) -> Tensor:
        """dx/dsigma of the probability-flow ODE, with the task's likelihood."""

    def finish(self, x: Tensor) -> Tensor:
        """Final output once sigma reached 0."""

    # Optional, for the exponential-integrator solver ("dpmpp2m"); see
    # `denoised_estimate` and `relax` below for the defaults used without them:
    #   denoised(denoiser, x, sigma) -> x0, the data prediction the task implies;
    #   relax(delta, ratio) -> delta, the exact solution of the derivative's
    #   linear part over a step whose noise level shrinks by `ratio`.


class Unconditional:
    """Total generation: d = (x - D(x)) / sigma; the output is clamped to
    [-clip, clip] (audio: 1.0). clip None leaves it as sampled: the latent
    prior's space is standardised latents, whose real values reach +-7, so a
    clamp there cuts the loud half of the music (its bounds are applied after
    mapping back, where the decoder's range is known)."""

    def __init__(self, clip: float | None = 1.0) -> None:
        self.clip = clip

    def project(self, x: Tensor, sigma: Tensor, noise: ItemNoise) -> Tensor:
        return x

    def derivative(self, denoiser: Denoiser, x: Tensor, sigma: Tensor) -> Tensor:
        return (x - denoiser(x, sigma)) / sigma[:, None, None]

    def finish(self, x: Tensor) -> Tensor:
        return x if self.clip is None else x.clamp(-self.clip, self.clip)


METHODS = ("euler", "heun", "dpmpp2m")


def denoised_estimate(condition: Condition, denoiser: Denoiser, x: Tensor, sigma: Tensor) -> Tensor:
    """The task's data prediction x0 at (x, sigma): the condition's own
    `denoised` when it has one, else the one its derivative implies
    (d = (x - x0) / sigma, so x0 = x - sigma d). One network evaluation."""
    own = getattr(condition, "denoised", None)
    if own is not None:
        return own(denoiser, x, sigma)
    return x - sigma[:, None, None] * condition.derivative(denoiser, x, sigma)


def relax(condition: Condition, delta: Tensor, ratio: float) -> Tensor:
    """Where x - x0 goes over a step from sigma to ratio * sigma with x0 held:
    the condition's `relax` when its derivative has a stiffer linear part,
    else the plain ODE's answer, delta * ratio."""
    own = getattr(condition, "relax", None)
    return own(delta, ratio) if own is not None else delta * ratio


@torch.no_grad()
def sample(
    denoiser: Denoiser,
    noise: ItemNoise,
    shape: Sequence[int],
    sigmas: Tensor,
    *,
    condition: Condition | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
    num_resamples: int = 1,
    method: str = "euler",
    callback: ProgressCallback | None = None,
    device: torch.device | str = "cpu",
    start: Tensor | None = None,
) -> Tensor:
    """Stochastic EDM sampler (EDM algorithm 2) with the paper's correction steps.

    method "euler" is the paper's sampler (one network evaluation per step and
    resample); "heun" adds EDM's second-order correction (two evaluations,
    except on the last step to sigma = 0); "dpmpp2m" is DPM-Solver++(2M)
    (Lu et al. 2022, data prediction, multistep; t = sigma, lambda = -log sigma):
    an exponential integrator that reuses the previous step's x0 for second
    order at one evaluation per step (first order right after churn or a
    resample: extrapolating x0 across fresh noise amplifies it). Conditions
    whose derivative is stiff (Dirac, Gaussian separation) give it their exact
    linear part (`denoised`, `relax`), which keeps it stable at few steps. `num_resamples` R > 1 repeats each
    step R times, re-noising from sigma_next back to sigma in between
    (Mariani et al. 2024, "correction"); NFE ~ steps * R (* 2 for Heun).

    `start` (warm start, SDEdit / StoRM / DiCoSe): begin at `start + sigmas[0]
    * noise` instead of pure noise, for a schedule that begins at a low noise
    level; exact when sigmas[0]^2 dominates the error of `start`.
    """
    if method not in METHODS:
        raise ValueError(f"unknown sampling method {method!r}; use one of {', '.join(METHODS)}")
    if num_resamples < 1:
        raise ValueError(f"num_resamples must be >= 1, got {num_resamples}")
    condition = condition or Unconditional()
    sigmas = sigmas.to(device)
    steps = len(sigmas) - 1
    batch = shape[0]
    x = noise.randn_like(torch.empty(*shape, device=device)) * sigmas[0]
    if start is not None:
        if tuple(start.shape) != tuple(shape):
            raise ValueError(f"warm start of shape {tuple(start.shape)} for a batch of shape {tuple(shape)}")
        x = x + start.to(device=device, dtype=x.dtype)
    gamma_max = min(s_churn / steps, math.sqrt(2) - 1)
    nfe = 0
    previous = None  # dpmpp2m: (lambda, x0) of the last step at a higher noise level
    for i in range(steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        for r in range(num_resamples):
            # Increase noise temporarily (churn).
            gamma = gamma_max if s_tmin <= float(sigma) <= s_tmax else 0.0
            sigma_hat = sigma * (1 + gamma)
            if gamma > 0:
                x = x + noise.randn_like(x) * s_noise * (sigma_hat**2 - sigma**2).sqrt()
            sigma_hat_b = sigma_hat.expand(batch)
            x = condition.project(x, sigma_hat_b, noise)
            if method == "dpmpp2m":
                # The multistep history belongs to one ODE trajectory: after
                # fresh noise (churn, a resample) this step is first order.
                history = previous if gamma == 0 and r == 0 else None
                x_next, current = _dpmpp2m_step(denoiser, condition, x, sigma_hat_b, float(sigma_next), history)
                nfe += 1
            else:
                # Euler step.
                d = condition.derivative(denoiser, x, sigma_hat_b)
                nfe += 1
                x_next = x + (sigma_next - sigma_hat) * d
                # Apply 2nd order correction.
                if method == "heun" and sigma_next > 0:
                    sigma_next_b = sigma_next.expand(batch)
                    x_next = condition.project(x_next, sigma_next_b, noise)
                    d_next = condition.derivative(denoiser, x_next, sigma_next_b)
                    nfe += 1
                    x_next = x + (sigma_next - sigma_hat) * (d + d_next) / 2
            x = x_next
            # Correction: go back up to sigma and take the step again.
            if r < num_resamples - 1:
                x = x + noise.randn_like(x) * (sigma**2 - sigma_next**2).sqrt()
        if method == "dpmpp2m":
            previous = current  # resamples of one step share the step before as history
        if callback is not None:
            callback({"i": i, "steps": steps, "sigma": float(sigma), "sigma_next": float(sigma_next), "nfe": nfe, "x": x})
    return condition.finish(x)


def _dpmpp2m_step(denoiser: Denoiser, condition: Condition, x: Tensor, sigma_b: Tensor, sigma_next: float,
                  previous: tuple[float, Tensor] | None) -> tuple[Tensor, tuple[float, Tensor]]:
    """One DPM-Solver++(2M) step from sigma to sigma_next (alpha = 1, so
    x' = x0 + (sigma'/sigma)(x - x0) for a constant x0 over the step).

    Second order: x0 is taken as linear in lambda = -log sigma through the
    previous step's estimate, and its value at the middle of the step is used,
    x0 + (x0 - x0_prev) / (2 r) with r = h_prev / h. The last step to sigma = 0
    stays first order (the usual choice: the extrapolation there is the least
    reliable, and first order lands exactly on x0)."""
    sigma = float(sigma_b[0])
    lam = -math.log(sigma)
    x0 = denoised_estimate(condition, denoiser, x, sigma_b)
    target = x0
    if previous is not None and sigma_next > 0:
        lam_prev, x0_prev = previous
        h = math.log(sigma / sigma_next)
        if lam > lam_prev:  # churn gated by s_tmin/s_tmax could reorder levels: then stay first order
            r = (lam - lam_prev) / h
            target = x0 + (x0 - x0_prev) / (2 * r)
    x_next = target + relax(condition, x - target, sigma_next / sigma)
    return x_next, (lam, x0)
