"""The three tasks of one multi-source model, on tensors of one window.

generate: sample p(s_1..s_N); impute: sample the missing stems given some;
separate: sample p(s | y = sum_n s_n) with a Dirac or a Gaussian likelihood
(Mariani et al. 2024, sections 3-4). Each task is a `Condition` for the
generic sampler in engine.core.diffusion, so all of them accept any denoiser.

The defaults are the paper's settings (../shared/reference/msdm.md); every
field can be overridden with `settings.override(steps=..., ...)`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from engine.errors import CommandError

from engine.core.diffusion import (
    Denoiser,
    ItemNoise,
    ProgressCallback,
    Unconditional,
    karras_sigmas,
    sample,
)
from engine.core.evaluations import network_evaluations
from engine.core.latent_options import waveform_problem


class SettingsError(CommandError, ValueError):
    """Sampler settings that cannot be used as given."""


@dataclass(frozen=True)
class SamplerSettings:
    steps: int
    sigma_min: float
    sigma_max: float
    s_churn: float = 0.0
    num_resamples: int = 1
    method: str = "euler"
    rho: float = 7.0
    s_tmin: float = 0.0
    s_tmax: float = float("inf")
    s_noise: float = 1.0
    # Separation only: start from the model's first-guess separator at
    # sigma_max instead of from noise (steps 0: the first guess itself).
    warm_start: bool = False
    # Generation and imputation: which prior samples, the waveform U-Net or
    # the latent model over the stem autoencoder's latents (engine.core.latent_prior).
    prior: str = "waveform"
    # Latent imputation only: classifier-free guidance (Ho & Salimans 2022;
    # MSG-LD) between the prior conditioned on the given stems and the same
    # prior with nothing given, D_u + w (D_c - D_u). 1: the learned
    # conditional alone (one network evaluation per NFE); w > 1 leans harder
    # on the given stems at two evaluations per NFE.
    guidance: float = 1.0
    # Latent imputation only: how hard each step's estimate is pulled towards
    # the given pitched stems' pitch classes (engine.audio.harmony_guidance;
    # 0: off). Costs a pass of the autoencoder's decoder and its gradient per
    # step at the noise levels where notes are chosen.
    harmony: float = 0.0
    # Latent imputation only: how hard each step's estimate is pulled towards
    # the given stems' onsets (engine.audio.rhythm_guidance; 0: off), at the
    # same cost as the harmony guidance.
    rhythm: float = 0.0
    # Latent prior only: autoguidance weight (engine.core.latent_prior.AutoGuided)
    # with the guide model packed in the model file; None: the weight the file
    # was calibrated with (LatentPriorConfig.autoguidance; 1 without a guide),
    # 1: off. Costs one pass of the guide per network evaluation.
    autoguidance: float | None = None

    def __post_init__(self) -> None:
        if not 0 < self.sigma_min <= self.sigma_max:
            raise SettingsError(f"need 0 < sigma_min <= sigma_max, got sigma_min {self.sigma_min:g} and "
                                f"sigma_max {self.sigma_max:g}")
        if not 0.0 <= self.guidance <= 10.0:
            raise SettingsError(f"guidance must be in [0, 10], got {self.guidance:g}")
        if not 0.0 <= self.harmony <= 5.0:
            raise SettingsError(f"harmony must be in [0, 5], got {self.harmony:g}")
        if not 0.0 <= self.rhythm <= 5.0:
            raise SettingsError(f"rhythm must be in [0, 5], got {self.rhythm:g}")
        if self.autoguidance is not None and not 0.0 <= self.autoguidance <= 10.0:
            raise SettingsError(f"autoguidance must be in [0, 10], got {self.autoguidance:g}")
        if self.prior not in PRIORS:
            raise SettingsError(f"unknown prior {self.prior!r}; use one of {', '.join(PRIORS)}")
        if self.steps < (0 if self.warm_start else 1):
            raise SettingsError(f"steps must be >= {0 if self.warm_start else 1}, got {self.steps}"
                             + ("" if self.warm_start else " (0 steps only with a warm start: the first guess itself)"))

    def sigmas(self) -> Tensor:
        return karras_sigmas(self.steps, self.sigma_min, self.sigma_max, self.rho)

    def override(self, **changes) -> "SamplerSettings":
        """Replace the fields given a value (None means: keep the default)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    @property
    def nfe(self) -> int:
        """Network evaluations of the diffusion model (a warm start's first
        guess costs one pass of the much smaller separator on top)."""
        return network_evaluations(self.steps, self.num_resamples, self.method, self.guidance,
                                   1.0 if self.autoguidance is None else self.autoguidance)

    def sampler_kwargs(self) -> dict:
        return dict(
            s_churn=self.s_churn, s_tmin=self.s_tmin, s_tmax=self.s_tmax, s_noise=self.s_noise,
            num_resamples=self.num_resamples, method=self.method,
        )


PRIORS = ("latent", "waveform")

# The paper's settings (reference code and appendix).
GENERATE = SamplerSettings(steps=150, sigma_min=1e-4, sigma_max=20.0, s_churn=20.0)
IMPUTE = SamplerSettings(steps=256, sigma_min=1e-4, sigma_max=20.0, s_churn=10.0)
SEPARATE_DIRAC = SamplerSettings(steps=150, sigma_min=1e-4, sigma_max=1.0, s_churn=20.0, num_resamples=2)
SEPARATE_GAUSSIAN = SamplerSettings(steps=150, sigma_min=1e-4, sigma_max=1.0, s_churn=40.0, num_resamples=2)
SEPARATE_ISDM_DIRAC = SEPARATE_DIRAC.override(s_churn=40.0)
# The first-guess separator's stems, refined by the prior from a low noise
# level when steps > 0 (chosen on the VALID split: docs/models.md).
SEPARATE_WARM = SamplerSettings(steps=0, sigma_min=1e-4, sigma_max=0.05, method="dpmpp2m", warm_start=True)
GAUSSIAN_GAMMA_SCALE = 0.75  # gamma = 0.75 sigma
# The latent prior (latents in (-1, 1), sigma_data ~0.3-0.5): EDM's schedule
# range scaled to it, DPM-Solver++(2M) for few steps (docs/models.md: chosen on VALID).
LATENT_GENERATE = SamplerSettings(steps=24, sigma_min=0.002, sigma_max=20.0, method="dpmpp2m", prior="latent")
# Imputation leans on the given stems with classifier-free guidance w = 2,
# follows their harmony with harmony guidance 0.25 (engine.audio.
# harmony_guidance; 0.06 until the span projection made the new parts more
# real and less tied to the given chords, 0.1 until the wider sampling scales
# with frame-level maps of the first session of 2026-12-07, at which 0.1 left
# chord agreement under 0.5 on the held-out VALID timbres) and their onsets
# with rhythm guidance 0.06 (engine.audio.rhythm_guidance), all chosen on
# VALID (32 windows: docs/models.md).
# Generation takes the model file's autoguidance weight (None); imputation
# does not autoguide by default: on VALID it made the new parts more real
# (clarity, log-mel) but fit the given harmony less (guitar chroma from
# bass+drums 0.75 -> 0.21, docs/models.md); --autoguidance W asks for it.
LATENT_IMPUTE = LATENT_GENERATE.override(guidance=2.0, harmony=0.25, rhythm=0.06, autoguidance=1.0)
# Refining the first guess with the latent prior (engine.audio.latent_refinement):
# SDEdit from a level about the latents' own scale (unit variance), where the
# prior can move notes, not only texture. Off by default: docs/models.md's row.
LATENT_REFINE = SamplerSettings(steps=8, sigma_min=0.002, sigma_max=1.0, method="dpmpp2m", warm_start=True,
                                prior="latent")


def generation_settings(task: str, has_latent_prior: bool, prior: str | None = None, **overrides) -> SamplerSettings:
    """What a generate or impute request runs with: the latent prior's
    settings when the model has one (unless prior "waveform"), else the paper's."""
    prior = prior or ("latent" if has_latent_prior else "waveform")
    if prior not in PRIORS:
        raise SettingsError(f"unknown prior {prior!r}; use one of {', '.join(PRIORS)}")
    if prior == "latent" and not has_latent_prior:
        raise SettingsError("this model has no latent prior: use prior waveform, or a model file with one")
    if prior == "waveform" and (reason := waveform_problem(overrides)):
        raise SettingsError(reason)
    if prior == "latent":
        base = LATENT_GENERATE if task == "generate" else LATENT_IMPUTE
    else:
        base = GENERATE if task == "generate" else IMPUTE
    return base.override(**overrides)

LIKELIHOODS = ("dirac", "gaussian")


STARTS = ("guess", "noise")


def default_separation_settings(likelihood: str, isdm: bool = False) -> SamplerSettings:
    """The paper's separation settings (a model with a first-guess separator
    starts from it instead: separation_settings)."""
    check_likelihood(likelihood)
    if likelihood == "gaussian":
        return SEPARATE_GAUSSIAN
    return SEPARATE_ISDM_DIRAC if isdm else SEPARATE_DIRAC


def separation_settings(likelihood: str, *, num_stems: int, isdm: bool, has_first_guess: bool,
                        start: str | None = None, prior: str | None = None, **overrides) -> SamplerSettings:
    """What a separation request runs with, for the CLI, the OSC server and
    batch bouncing alike. start "guess": from the model's first-guess separator
    (0 steps: the guess itself; N steps: refined by the prior from
    SEPARATE_WARM's sigma_max, or --sigma-max); "noise": the paper's sampler.
    Default: "guess" when the model has a separator. `overrides` are
    SamplerSettings fields (None keeps the default). prior "latent" refines
    the guess with the latent prior instead (LATENT_REFINE; the waveform
    prior by default). A setting that would diverge is refused here, before
    any work (UnstableSettings)."""
    check_likelihood(likelihood)
    start = start or ("guess" if has_first_guess else "noise")
    if start not in STARTS:
        raise SettingsError(f"unknown start {start!r}; use one of {', '.join(STARTS)}")
    if prior is not None and prior not in PRIORS:
        raise SettingsError(f"unknown prior {prior!r}; use one of {', '.join(PRIORS)}")
    if prior == "latent" and start != "guess":
        raise SettingsError("the latent prior separates only by refining the first guess (start guess): "
                            "separating from noise runs the waveform prior")
    if start == "guess":
        if not has_first_guess:
            raise SettingsError("this model has no first-guess separator: separate from noise "
                                "(start noise, the paper's sampler) or use a model that has one")
        base = LATENT_REFINE if prior == "latent" else SEPARATE_WARM
    else:
        base = default_separation_settings(likelihood, isdm)
    settings = base.override(**overrides)
    if settings.prior == "waveform":
        # The latent refinement has no likelihood term to be stiff: the mix
        # enters as the STFT the decoded masks apply to.
        check_stable(settings, likelihood, num_stems)
    return settings


def check_likelihood(likelihood: str) -> None:
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"unknown likelihood {likelihood!r}; use one of {LIKELIHOODS}")


# Most noise a separation setting may leave along the stiff direction
# (below). The estimate is pessimistic (it holds the denoiser fixed): settings
# measured sound on the closed-form prior reach 0.18 (Gaussian 60 x 2, churn
# 40), the paper's leave 0.001, the few-step explicit ones that blow up 4-1e10.
MAX_LEFTOVER_NOISE = 0.25


class UnstableSettings(SettingsError):
    """A sampler setting that would blow up (explicit steps on a stiff separation)."""


def stiff_rate(likelihood: str, num_stems: int, gamma_scale: float = GAUSSIAN_GAMMA_SCALE) -> float:
    """lambda of the separation ODE's stiff direction, d e / d sigma = lambda e / sigma:
    N for Dirac (a change shared by the free stems moves the constrained one
    N - 1 times as much), 1 + N / (2 g^2) for the Gaussian likelihood."""
    check_likelihood(likelihood)
    return float(num_stems) if likelihood == "dirac" else 1.0 + num_stems / (2 * gamma_scale**2)


def leftover_noise(settings: SamplerSettings, rate: float) -> float:
    """Standard deviation of the noise a setting leaves along the stiff
    direction (linear stability, the denoiser held fixed): the noise present
    at each step (sigma_hat: the start, churn, resamples) times the factor
    every later step multiplies it by, at its worst. Euler's factor is
    1 + rate (sigma' - sigma_hat) / sigma_hat per step, Heun's the trapezoid
    rule's, R times per step; a step that cuts sigma by more than 1 - 2 / rate
    overshoots (|factor| > 1), which is why few explicit steps diverge.
    dpmpp2m solves the linear part exactly (factor (sigma'/sigma)^rate): 0."""
    if settings.method == "dpmpp2m" or (settings.warm_start and settings.steps == 0):
        return 0.0
    sigmas = settings.sigmas().double().tolist()
    steps = len(sigmas) - 1
    gamma = min(settings.s_churn / steps, math.sqrt(2) - 1)
    hats, factors = [], []
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        hat = sigma * (1 + (gamma if settings.s_tmin <= sigma <= settings.s_tmax else 0.0))
        a = rate * (sigma_next - hat) / hat
        if settings.method == "euler" or sigma_next == 0:  # Heun's last step is Euler
            factor = 1 + a
        else:
            factor = 1 + (a + rate * (sigma_next - hat) / sigma_next * (1 + a)) / 2
        hats.append(hat)
        factors.append(abs(factor) ** settings.num_resamples)
    worst, tail = 0.0, 1.0
    for hat, factor in zip(reversed(hats), reversed(factors)):
        tail *= factor
        worst = max(worst, hat * tail)
    return worst


def check_stable(settings: SamplerSettings, likelihood: str, num_stems: int,
                 gamma_scale: float = GAUSSIAN_GAMMA_SCALE) -> None:
    """Refuse, before any work, a separation setting whose steps would leave
    the stems noisy or blow them up, naming the fewest steps that would not."""
    rate = stiff_rate(likelihood, num_stems, gamma_scale)
    left = leftover_noise(settings, rate)
    if left <= MAX_LEFTOVER_NOISE:
        return
    enough = next((n for n in range(settings.steps + 1, 1001)
                   if leftover_noise(settings.override(steps=n), rate) <= MAX_LEFTOVER_NOISE), None)
    hint = f"use at least {enough} steps, or" if enough else "use"
    raise UnstableSettings(
        f"{settings.method} with {settings.steps} steps x {settings.num_resamples} would leave noise of "
        f"{left:.2g} (diverge) in {likelihood} separation of {num_stems} stems: {hint} method dpmpp2m")


class Imputation:
    """Given stems (mask True) are replaced by `given + sigma * noise` before every
    step, so the free stems are denoised in their context; at the end the clean
    given stems are put back (the paper's source imputation; RePaint-style).
    The mask is per stem and per sample, so the same condition continues
    audio in time (long generation) as well as across stems."""

    def __init__(self, given: Tensor, mask: Tensor, clip: float | None = 1.0) -> None:
        self.given = given
        self.mask = mask.to(torch.bool)
        self.clip = clip  # as Unconditional's: None for the latent prior's standardised space

    def project(self, x: Tensor, sigma: Tensor, noise: ItemNoise) -> Tensor:
        noisy_given = self.given + sigma[:, None, None] * noise.randn_like(x)
        return torch.where(self.mask, noisy_given, x)

    def derivative(self, denoiser: Denoiser, x: Tensor, sigma: Tensor) -> Tensor:
        return Unconditional().derivative(denoiser, x, sigma)

    def finish(self, x: Tensor) -> Tensor:
        free = x if self.clip is None else x.clamp(-self.clip, self.clip)
        return torch.where(self.mask, self.given, free)


class DiracSeparation:
    """Dirac likelihood: stem c is never sampled; it is y - sum of the others.

    The free stems follow the score of p(s_free, y - sum s_free), whose
    gradient for stem n is score_n - score_c (paper eq. 12). Unlike the
    reference code (which wrote the constrained stem in place before the step
    and returned it stale), the constrained stem is recomputed from the final
    free stems, so the output sums to the mixture exactly."""

    def __init__(self, mixture: Tensor, constrained: int = 0) -> None:
        self.mixture = mixture
        self.constrained = constrained

    def _with_constraint(self, x: Tensor) -> Tensor:
        c = self.constrained
        others = torch.cat([x[:, :c], x[:, c + 1:]], dim=1).sum(dim=1, keepdim=True)
        return torch.cat([x[:, :c], self.mixture - others, x[:, c + 1:]], dim=1)

    def project(self, x: Tensor, sigma: Tensor, noise: ItemNoise) -> Tensor:
        return self._with_constraint(x)

    def derivative(self, denoiser: Denoiser, x: Tensor, sigma: Tensor) -> Tensor:
        d = Unconditional().derivative(denoiser, x, sigma)
        c = self.constrained
        d = d - d[:, c:c + 1]
        return d  # d[:, c] is 0: the constrained stem only moves through project

    # For the exponential-integrator solver (dpmpp2m). With x_c = y - sum(free),
    # the free stems' ODE is d f / d log(sigma) = (I + 1 1') f - 1 y - (D_free - D_c):
    # its linear part is N times stiffer along the sum of the free stems (why
    # Euler diverges with few steps). Holding D fixed it is solved exactly:
    # the fixed point is D with the mixture's residual shared equally by all
    # stems, and deviations from it shrink by sigma'/sigma, or (sigma'/sigma)^N
    # along the free stems' sum.
    def denoised(self, denoiser: Denoiser, x: Tensor, sigma: Tensor) -> Tensor:
        x0 = denoiser(x, sigma)
        return x0 + (self.mixture - x0.sum(dim=1, keepdim=True)) / x.shape[1]

    def relax(self, delta: Tensor, ratio: float) -> Tensor:
        c, n = self.constrained, delta.shape[1]
        free = torch.cat([delta[:, :c], delta[:, c + 1:]], dim=1)
        if n < 2:
            return torch.zeros_like(delta)
        mean = free.mean(dim=1, keepdim=True)
        free = ratio * (free - mean) + ratio**n * mean
        return torch.cat([free[:, :c], -free.sum(dim=1, keepdim=True), free[:, c:]], dim=1)

    def finish(self, x: Tensor) -> Tensor:
        return self._with_constraint(x)


class GaussianSeparation:
    """Gaussian likelihood N(y; sum_n s_n, gamma^2) with gamma = gamma_scale * sigma:
    d = (x - D(x)) / sigma - sigma / (2 gamma^2) (y - sum_n x_n), the same
    residual pulling every stem (paper eq. 10-11, reference implementation)."""

    def __init__(self, mixture: Tensor, gamma_scale: float = GAUSSIAN_GAMMA_SCALE) -> None:
        self.mixture = mixture
        self.gamma_scale = gamma_scale

    def project(self, x: Tensor, sigma: Tensor, noise: ItemNoise) -> Tensor:
        return x

    def derivative(self, denoiser: Denoiser, x: Tensor, sigma: Tensor) -> Tensor:
        s = sigma[:, None, None]
        gamma = self.gamma_scale * s
        residual = self.mixture - x.sum(dim=1, keepdim=True)
        return (x - denoiser(x, sigma)) / s - s / (2 * gamma**2) * residual

    # For dpmpp2m: with gamma = g sigma, d log(sigma)-linear part is I + k 1 1',
    # k = 1 / (2 g^2), so deviations along the stems' sum shrink as
    # (sigma'/sigma)^(1 + k N) (stiff like Dirac's); the fixed point holding D is
    # D plus the share k / (1 + k N) of the mixture's residual on every stem.
    @property
    def _k(self) -> float:
        return 1.0 / (2 * self.gamma_scale**2)

    def denoised(self, denoiser: Denoiser, x: Tensor, sigma: Tensor) -> Tensor:
        x0 = denoiser(x, sigma)
        k, n = self._k, x.shape[1]
        return x0 + k / (1 + k * n) * (self.mixture - x0.sum(dim=1, keepdim=True))

    def relax(self, delta: Tensor, ratio: float) -> Tensor:
        mean = delta.mean(dim=1, keepdim=True)
        return ratio * (delta - mean) + ratio ** (1 + self._k * delta.shape[1]) * mean

    def finish(self, x: Tensor) -> Tensor:
        return x


def _seeds_for(batch: int, seeds: Sequence[int] | ItemNoise) -> ItemNoise:
    noise = seeds if isinstance(seeds, ItemNoise) else ItemNoise(seeds)
    if len(noise) != batch:
        raise ValueError(f"{batch} items but {len(noise)} seeds: give one seed per item")
    return noise


def generate(
    denoiser: Denoiser,
    num_stems: int,
    length: int,
    seeds: Sequence[int],
    settings: SamplerSettings = GENERATE,
    callback: ProgressCallback | None = None,
    device: torch.device | str = "cpu",
    clip: float | None = 1.0,
) -> Tensor:
    """Sample all stems together: [len(seeds), num_stems, length], clamped to
    [-clip, clip] (None: not clamped, for latents)."""
    noise = _seeds_for(len(seeds), seeds)
    return sample(denoiser, noise, (len(seeds), num_stems, length), settings.sigmas(),
                  condition=Unconditional(clip), callback=callback, device=device, **settings.sampler_kwargs())


def impute(
    denoiser: Denoiser,
    given: Tensor,
    mask: Tensor,
    seeds: Sequence[int],
    settings: SamplerSettings = IMPUTE,
    callback: ProgressCallback | None = None,
    device: torch.device | str = "cpu",
    clip: float | None = 1.0,
) -> Tensor:
    """Generate the stems (or samples) where `mask` is False so they fit the given ones.

    given: [B, N, T]; mask: bool, broadcastable to given ([N] per stem, or
    [B, N, T] per sample). Given values come back exactly; the generated ones
    clamped to [-clip, clip] (None: not clamped, for latents)."""
    given = given.to(device)
    if mask.ndim == 1:
        mask = mask[None, :, None]
    mask = mask.to(device).expand_as(given)
    noise = _seeds_for(given.shape[0], seeds)
    return sample(denoiser, noise, tuple(given.shape), settings.sigmas(),
                  condition=Imputation(given, mask, clip), callback=callback, device=device,
                  **settings.sampler_kwargs())


def separate(
    denoiser: Denoiser,
    mixture: Tensor,
    num_stems: int,
    seeds: Sequence[int],
    likelihood: str = "dirac",
    settings: SamplerSettings | None = None,
    constrained_stem: int = 0,
    gamma_scale: float = GAUSSIAN_GAMMA_SCALE,
    callback: ProgressCallback | None = None,
    device: torch.device | str = "cpu",
    first_guess: Tensor | None = None,
) -> Tensor:
    """Sample the stems of `mixture` ([B, 1, T] or [B, T]) -> [B, num_stems, T].

    With `first_guess` [B, num_stems, T] (a fast separator's stems) the sampler
    starts from it at `settings.sigma_max` instead of from noise: a schedule
    from a low level (e.g. 0.05) refines the guess with the prior and the
    likelihood in a few steps (Mariani et al.'s "Demucs + Gibbs" row)."""
    check_likelihood(likelihood)
    if mixture.ndim == 2:
        mixture = mixture[:, None]
    mixture = mixture.to(device)
    settings = settings or default_separation_settings(likelihood)
    if settings.warm_start and first_guess is None:
        raise ValueError("a warm start needs a first guess: use a model with a first-guess separator")
    if first_guess is not None and tuple(first_guess.shape) != (mixture.shape[0], num_stems, mixture.shape[-1]):
        raise ValueError(f"warm start of shape {tuple(first_guess.shape)} for a batch of shape "
                         f"{(mixture.shape[0], num_stems, mixture.shape[-1])}")
    check_stable(settings, likelihood, num_stems, gamma_scale)
    if settings.warm_start and settings.steps == 0:
        return first_guess.to(device)  # the first guess itself (it sums to the mix by construction)
    if likelihood == "dirac":
        if not 0 <= constrained_stem < num_stems:
            raise ValueError(f"constrained_stem {constrained_stem} is not one of the {num_stems} stems")
        condition = DiracSeparation(mixture, constrained_stem)
    else:
        condition = GaussianSeparation(mixture, gamma_scale)
    noise = _seeds_for(mixture.shape[0], seeds)
    return sample(denoiser, noise, (mixture.shape[0], num_stems, mixture.shape[-1]),
                  settings.sigmas(), condition=condition, callback=callback, device=device,
                  start=first_guess, **settings.sampler_kwargs())
