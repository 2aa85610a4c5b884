"""A prior whose every answer is known in closed form: stationary Gaussian stems.

Each stem is Gaussian noise shaped by its own spectrum, and stems may be
correlated with a fixed correlation matrix R: at every frequency f the stems'
covariance is Sigma(f) = D(f) R D(f), D(f) = diag(sqrt(P_n(f))). The covariance
is circulant in time, so the discrete Fourier transform diagonalises it over
time and each frequency bin is an independent N-dimensional Gaussian.

That gives exact answers for everything the engine does:
- the MMSE denoiser E[s | s + sigma e] = Sigma (Sigma + sigma^2 I)^-1 x, per bin;
- separation of y = sum_n s_n: posterior mean Sigma 1 (1' Sigma 1)^-1 y (the
  multichannel Wiener filter) and posterior covariance Sigma - Sigma 1 1' Sigma / (1' Sigma 1);
- imputation: mean Sigma_og Sigma_gg^-1 s_g;
- a model conditioned on the mix: E[s | s + sigma e, y], and where its
  probability-flow ODE takes any start (so warm starts have exact answers too).
The engine's samplers run on `denoise` exactly as on the network, so tests and
benchmarks can compare what they produce with these answers.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

Spectrum = Callable[[Tensor], Tensor]  # normalised frequency in [0, 0.5] -> power


class GaussianStemPrior:
    def __init__(self, spectra: Sequence[Spectrum], correlation: Tensor | None = None) -> None:
        self.spectra = list(spectra)
        n = len(self.spectra)
        self.correlation = torch.eye(n, dtype=torch.float64) if correlation is None else correlation.double()
        if self.correlation.shape != (n, n):
            raise ValueError("correlation must be N x N")

    @property
    def num_stems(self) -> int:
        return len(self.spectra)

    def covariance(self, length: int) -> Tensor:
        """Sigma(f) for the rfft bins of a signal of `length` samples: [F, N, N]."""
        freqs = torch.fft.rfftfreq(length, dtype=torch.float64)
        d = torch.stack([spec(freqs).double().sqrt() for spec in self.spectra], dim=-1)  # [F, N]
        return d[:, :, None] * self.correlation[None] * d[:, None, :]

    def _apply(self, x: Tensor, matrices: Tensor) -> Tensor:
        """Apply a real per-bin matrix [F, M, N] (or [B, F, M, N]) to x [B, N, T]."""
        spec = torch.fft.rfft(x.double(), dim=-1)  # [B, N, F]
        pattern = "fmn,bnf->bmf" if matrices.ndim == 3 else "bfmn,bnf->bmf"
        out = torch.einsum(pattern, matrices.to(spec.dtype), spec)
        return torch.fft.irfft(out, n=x.shape[-1], dim=-1).to(x.dtype)

    def sample(self, batch: int, length: int, generator: torch.Generator | None = None) -> Tensor:
        white = torch.randn(batch, self.num_stems, length, generator=generator, dtype=torch.float64)
        cov = self.covariance(length)
        jitter = 1e-12 * torch.eye(self.num_stems, dtype=torch.float64)
        return self._apply(white, torch.linalg.cholesky(cov + jitter)).float()

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        """The exact denoiser D(x, sigma) = E[s | s + sigma e = x]."""
        sigma = torch.as_tensor(sigma, dtype=torch.float64).expand(x.shape[0])
        cov = self.covariance(x.shape[-1])  # [F, N, N]
        eye = torch.eye(self.num_stems, dtype=torch.float64)
        noisy = cov[None] + (sigma.cpu() ** 2)[:, None, None, None] * eye  # [B, F, N, N]
        # Sigma (Sigma + s^2 I)^-1, via a solve on the transposed system (both symmetric).
        gain = torch.linalg.solve(noisy, cov[None].expand_as(noisy)).transpose(-1, -2)
        return self._apply(x.cpu(), gain).to(x.device)

    def separation_mean(self, mixture: Tensor) -> Tensor:
        """Wiener filter: E[s | sum s = y] for y [B, 1, T] -> [B, N, T]."""
        cov = self.covariance(mixture.shape[-1])
        col = cov.sum(dim=-1, keepdim=True)  # Sigma 1: [F, N, 1]
        total = col.sum(dim=-2, keepdim=True).clamp_min(1e-300)  # 1' Sigma 1
        return self._apply(mixture, col / total)

    def separation_variance(self, length: int) -> Tensor:
        """Per-sample posterior variance of each stem given the mix: [N]."""
        cov = self.covariance(length)
        col = cov.sum(dim=-1)  # [F, N]
        total = col.sum(dim=-1, keepdim=True).clamp_min(1e-300)
        post = torch.diagonal(cov, dim1=-2, dim2=-1) - col**2 / total  # [F, N]
        return _time_variance(post, length)

    def posterior_covariance(self, length: int) -> Tensor:
        """Per bin, the covariance of s given the mix: P = Sigma - Sigma 1 1' Sigma / (1' Sigma 1),
        [F, N, N]; rank N - 1 (the stems' sum is known exactly)."""
        cov = self.covariance(length)
        col = cov.sum(dim=-1, keepdim=True)  # [F, N, 1]
        total = col.sum(dim=-2, keepdim=True).clamp_min(1e-300)
        return cov - col @ col.transpose(-1, -2) / total

    def conditional_denoise(self, x: Tensor, sigma: Tensor, mixture: Tensor) -> Tensor:
        """The exact denoiser of a model conditioned on the mix:
        E[s | s + sigma e = x, sum s = y]. Given y, s ~ N(m, P) with m the Wiener
        mean, and x is s plus independent noise, so this is the denoiser of that
        Gaussian: m + P (P + sigma^2 I)^-1 (x - m) per bin."""
        sigma = torch.as_tensor(sigma, dtype=torch.float64).expand(x.shape[0])
        mean = self.separation_mean(mixture.cpu())
        post = self.posterior_covariance(x.shape[-1])
        eye = torch.eye(self.num_stems, dtype=torch.float64)
        noisy = post[None] + (sigma.cpu() ** 2)[:, None, None, None] * eye
        gain = torch.linalg.solve(noisy, post[None].expand_as(noisy)).transpose(-1, -2)
        return (mean + self._apply(x.cpu() - mean, gain)).to(x.device)

    def conditional_flow(self, start: Tensor, sigma_start: float, mixture: Tensor) -> Tensor:
        """Where the probability-flow ODE of the conditioned denoiser takes
        `start` (at noise level sigma_start) by sigma = 0, exactly. Per bin, in
        the eigenbasis of P: du/dsigma = sigma u / (lambda + sigma^2), so
        u(0) = u(sigma_start) sqrt(lambda / (lambda + sigma_start^2)); u = x - m.
        Hence a warm start keeps sqrt(lambda / (lambda + s^2)) of its guess's
        error and gives s^2 / (lambda + s^2) of the posterior's spread."""
        mean = self.separation_mean(mixture)
        lam, vec = torch.linalg.eigh(self.posterior_covariance(start.shape[-1]))
        lam = lam.clamp_min(0.0)
        keep = (lam / (lam + sigma_start**2)).sqrt()
        factor = vec @ torch.diag_embed(keep) @ vec.transpose(-1, -2)
        return mean + self._apply(start - mean, factor)

    def prior_variance(self, length: int) -> Tensor:
        return _time_variance(torch.diagonal(self.covariance(length), dim1=-2, dim2=-1), length)

    def imputation_mean(self, given: Tensor, given_stems: Sequence[int]) -> Tensor:
        """E[s_o | s_g]: given [B, N, T] (only the given stems are read) -> [B, N, T]
        with the given stems copied and the others at their conditional mean."""
        n = self.num_stems
        g = list(given_stems)
        cov = self.covariance(given.shape[-1])
        gain = torch.zeros(cov.shape[0], n, n, dtype=torch.float64)
        sgg = cov[:, g][:, :, g]
        sog = cov[:, :, g]  # [F, N, G]
        gain[:, :, g] = torch.linalg.solve(sgg, sog.transpose(-1, -2)).transpose(-1, -2)
        out = self._apply(given, gain)
        out[:, g] = given[:, g]
        return out

    def _given_parts(self, length: int, given_stems: Sequence[int]) -> tuple[Tensor, Tensor, list[int]]:
        """Per bin, the gain A = Sigma_og Sigma_gg^-1 ([F, N, N], zero outside
        rows o, columns g) and the conditional covariance of the other stems
        P = Sigma_oo - A Sigma_go ([F, N, N], zero outside o x o)."""
        n, g = self.num_stems, list(given_stems)
        o = [i for i in range(n) if i not in g]
        cov = self.covariance(length)
        gain = torch.zeros(cov.shape[0], n, n, dtype=torch.float64)
        sgg = cov[:, g][:, :, g]
        gain[:, :, g] = torch.linalg.solve(sgg, cov[:, :, g].transpose(-1, -2)).transpose(-1, -2)
        gain[:, g] = 0.0
        post = cov - gain @ cov
        post[:, g] = 0.0
        post[:, :, g] = 0.0
        return gain, post, o

    def given_denoise(self, x: Tensor, sigma: Tensor, given: Tensor, given_stems: Sequence[int]) -> Tensor:
        """The exact denoiser of a model conditioned on the given stems:
        E[s | s + sigma e = x, s_g = given_g]. Given s_g, the others are
        N(m, P) with m = A s_g, so per bin: m + P (P + sigma^2 I)^-1 (x - m)
        on the other stems; the given stems come back as given."""
        sigma = torch.as_tensor(sigma, dtype=torch.float64).expand(x.shape[0])
        gain, post, _ = self._given_parts(x.shape[-1], given_stems)
        mean = self._apply(given.cpu(), gain)
        eye = torch.eye(self.num_stems, dtype=torch.float64)
        noisy = post[None] + (sigma.cpu() ** 2)[:, None, None, None] * eye
        shrink = torch.linalg.solve(noisy, post[None].expand_as(noisy)).transpose(-1, -2)
        out = mean + self._apply(x.cpu() - mean, shrink)
        out[:, list(given_stems)] = given[:, list(given_stems)].cpu()
        return out.to(x.device)

    def imputation_variance(self, length: int, given_stems: Sequence[int]) -> Tensor:
        """Per-sample variance of each stem given the given stems: [N] (0 for those)."""
        _, post, _ = self._given_parts(length, given_stems)
        return _time_variance(torch.diagonal(post, dim1=-2, dim2=-1), length)


def _time_variance(power: Tensor, length: int) -> Tensor:
    """Variance per time sample of a circulant Gaussian from its rfft-bin powers:
    the mean over the full spectrum (bins 1..F-2 stand for two; DC and Nyquist once)."""
    weights = torch.full((power.shape[0],), 2.0, dtype=torch.float64)
    weights[0] = 1.0
    if length % 2 == 0:
        weights[-1] = 1.0
    return (weights[:, None] * power).sum(dim=0) / length


def band_spectrum(center: float, width: float, level: float, floor: float = 1e-4) -> Spectrum:
    """A smooth band of power `level` around normalised frequency `center`."""
    def spectrum(freqs: Tensor) -> Tensor:
        return level * (torch.exp(-0.5 * ((freqs - center) / width) ** 2) + floor)
    return spectrum


def flat_spectrum(level: float) -> Spectrum:
    return lambda freqs: torch.full_like(freqs, level)
