"""Measures of generated stems (pure numpy/scipy), each with a scale a reader
can hold: 0 = like real material, 1 = like noise shaped to it (distance), or
0 = chance, 1 = the true stem (agreement).

- **Normalised Fréchet distance** per stem (Heusel et al. 2017's FID, on audio
  frame features as in FAD, Kilgour et al. 2019): the Fréchet distance
  between Gaussians fitted to the candidate's frames and to the reference
  half's frames, mapped so that W real windows from other tracks score 0 and
  noise shaped to them (training.audio_features.shaped_noise) scores 1, both
  with the candidate's W windows: the distance's bias grows as W shrinks, so
  each candidate is compared with references of its own size. Two feature
  sets: "log-mel" (64 bands) and "structure" (per-band spectral flatness and,
  for pitched stems, periodicity: what tells notes from noise inside a frame,
  where log-mel mostly sees which track a window came from).
- **Pitch clarity**: mean over active frames of the peak normalised
  autocorrelation in the stem's F0 range; read as a ratio to real stems.
- **Pitch agreement** of a reconstruction with its input: the share of the
  input's clearly pitched frames whose F0 the reconstruction matches within
  50 cents, and the correlation of their chroma.
- **Harmonic agreement** of an imputed stem with the given stems: Pearson
  correlation of 12-bin chroma over blocks of about 3 s; **onset agreement**:
  correlation of onset-strength envelopes with a +-2 frame (46 ms) tolerance.
  Both normalised so the same stem from another track scores 0 and the true
  stem 1. They measure fit, not realism (noise with the true stem's envelope
  fits in time): read them with pitch clarity.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import linalg

from training import audio_features as af

CLEAR_PITCH = 0.8          # a frame of the input counts for F0 agreement when its clarity is above this
CENTS = 50.0
BLOCK_S = 3.0              # chroma and onset agreement blocks
ONSET_TOLERANCE = 5        # frames: +-2 around each frame (46 ms at a 23 ms hop)
FEATURE_SETS = ("log-mel", "structure")


# --------------------------------------------------------------------------- #
# Frame features and the Fréchet distance
# --------------------------------------------------------------------------- #

def frame_features(x: np.ndarray, sample_rate: int, stem: str) -> dict[str, np.ndarray]:
    """{"log-mel": [K, 64], "structure": [K, 4 or 5]} for one stem's window."""
    structure = [af.band_flatness(x, sample_rate)]
    if stem in af.F0_RANGE:
        structure.append(af.periodicity(x, sample_rate, af.F0_RANGE[stem]).clarity[:, None])
    return {"log-mel": af.log_mel(x, sample_rate), "structure": np.concatenate(structure, axis=-1)}


@dataclass(frozen=True)
class Gaussian:
    mean: np.ndarray
    cov: np.ndarray

    @classmethod
    def fit(cls, frames: np.ndarray) -> "Gaussian":
        frames = np.asarray(frames, dtype=np.float64)
        if frames.ndim != 2 or len(frames) < 2:
            raise ValueError(f"need [frames >= 2, dims] to fit a Gaussian, got {frames.shape}")
        return cls(frames.mean(0), np.atleast_2d(np.cov(frames, rowvar=False)))


def frechet_distance(a: Gaussian, b: Gaussian) -> float:
    """||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)) (Dowson & Landau 1982)."""
    root = linalg.sqrtm(a.cov @ b.cov)
    if not np.isfinite(root).all():  # a singular product: regularise as FID's reference code does
        offset = np.eye(len(a.cov)) * 1e-6
        root = linalg.sqrtm((a.cov + offset) @ (b.cov + offset))
    diff = a.mean - b.mean
    return float(diff @ diff + np.trace(a.cov) + np.trace(b.cov) - 2 * np.trace(root.real))


@dataclass(frozen=True)
class DistanceScale:
    """The distances of real draws and of shaped noise draws of the same size
    from the reference: what 0 and 1 mean."""

    real: np.ndarray       # Fréchet distance of each real draw
    noise: np.ndarray      # ... of noise shaped to each real draw

    def normalise(self, distance: float) -> float:
        zero, one = float(self.real.mean()), float(self.noise.mean())
        return (distance - zero) / (one - zero)

    @property
    def resolution(self) -> float:
        """Spread (std) of a real draw's normalised distance: the measure's noise at this size."""
        return float(np.std([self.normalise(d) for d in self.real]))

    @property
    def noise_spread(self) -> float:
        return float(np.std([self.normalise(d) for d in self.noise]))

    @property
    def separation(self) -> float:
        """1 / (spread of real + spread of noise): above 1 their one-sigma ranges
        do not meet; near or below 1 the distance cannot tell a stem from
        shaped noise at this many windows."""
        return 1.0 / max(self.resolution + self.noise_spread, 1e-12)

    @property
    def readable(self) -> bool:
        """Whether a normalised distance on this scale means anything: shaped
        noise must sit farther from the reference than real draws do (on a set
        whose halves hold different instruments, e.g. 12 tracks among eight
        drum kits, real draws can be the farther ones and the scale turns
        over), and their one-sigma ranges must not meet (separation >= 1)."""
        return bool(self.noise.mean() > self.real.mean()) and self.separation >= 1.0


# --------------------------------------------------------------------------- #
# Pitch
# --------------------------------------------------------------------------- #

def _active_clarity(periodicities) -> float:
    """Mean clarity over the active frames of af.periodicity results, pooled."""
    pooled = np.concatenate([p.clarity[p.active] for p in periodicities])
    return float(pooled.mean()) if len(pooled) else 0.0


def pitch_clarity(windows: Sequence[np.ndarray], sample_rate: int, stem: str) -> float:
    """Mean periodicity clarity over the active frames of all `windows` of a pitched stem."""
    return _active_clarity([af.periodicity(x, sample_rate, af.F0_RANGE[stem]) for x in windows])


@dataclass(frozen=True)
class PitchAgreement:
    f0_within_50_cents: float   # share of the input's clearly pitched active frames
    chroma_correlation: float   # mean over frames where both sound
    frames: int                 # frames the F0 share is over
    clarity: float = 0.0            # pitch_clarity of the reconstruction
    reference_clarity: float = 0.0  # and of its input


def pitch_agreement(reconstruction: np.ndarray, reference: np.ndarray, sample_rate: int, stem: str) -> PitchAgreement:
    """How well a reconstruction (an autoencoder's output, say) keeps the notes
    of its input `reference`, a pitched stem of the same length."""
    reconstruction, reference = np.asarray(reconstruction), np.asarray(reference)
    if reconstruction.shape != reference.shape:
        raise ValueError(f"reconstruction {reconstruction.shape} and input {reference.shape} differ in length")
    want = af.periodicity(reference, sample_rate, af.F0_RANGE[stem])
    got = af.periodicity(reconstruction, sample_rate, af.F0_RANGE[stem])
    judged = want.active & (want.clarity > CLEAR_PITCH)
    with np.errstate(invalid="ignore"):
        cents = np.abs(1200 * np.log2(got.f0[judged] / want.f0[judged]))
    share = float(np.mean(np.nan_to_num(cents, nan=np.inf) <= CENTS)) if judged.any() else float("nan")
    a, b = af.chroma(reconstruction, sample_rate), af.chroma(reference, sample_rate)
    sounding = (a.sum(-1) > 0) & (b.sum(-1) > 0)
    correlations = [_pearson(x, y) for x, y in zip(a[sounding], b[sounding])]
    return PitchAgreement(share, float(np.nanmean(correlations)) if correlations else float("nan"), int(judged.sum()),
                          _active_clarity([got]), _active_clarity([want]))


# --------------------------------------------------------------------------- #
# Agreement of an imputed stem with the given ones
# --------------------------------------------------------------------------- #

def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64) - np.mean(a), np.asarray(b, dtype=np.float64) - np.mean(b)
    norm = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / norm) if norm > 0 else 0.0


def _blocks(length: int, sample_rate: int, block_s: float) -> list[slice]:
    count = max(1, int(round(length / (block_s * sample_rate))))
    edges = np.linspace(0, length, count + 1).round().astype(int)
    return [slice(a, b) for a, b in zip(edges[:-1], edges[1:])]


def chroma_agreement(candidate: np.ndarray, given: np.ndarray, sample_rate: int, block_s: float = BLOCK_S) -> float:
    """Mean over blocks of ~block_s of the correlation between the candidate's
    and the given audio's chroma, each summed over the block."""
    scores = []
    for part in _blocks(len(candidate), sample_rate, block_s):
        scores.append(_pearson(af.chroma(candidate[part], sample_rate).sum(0),
                               af.chroma(given[part], sample_rate).sum(0)))
    return float(np.mean(scores))


def onset_agreement(candidate: np.ndarray, given: np.ndarray, sample_rate: int, block_s: float = BLOCK_S) -> float:
    """Mean over blocks of the correlation of onset strengths, each spread by a
    running maximum over ONSET_TOLERANCE frames."""
    scores = []
    for part in _blocks(len(candidate), sample_rate, block_s):
        scores.append(_pearson(af.smooth_max(af.onset_strength(candidate[part], sample_rate), ONSET_TOLERANCE),
                               af.smooth_max(af.onset_strength(given[part], sample_rate), ONSET_TOLERANCE)))
    return float(np.mean(scores))


AGREEMENTS = {"chroma": chroma_agreement, "onset": onset_agreement}


@dataclass(frozen=True)
class AgreementScale:
    """Mean agreement of the true stems with their own given stems (1) and with
    the given stems of other tracks' windows (0)."""

    true: float
    chance: float

    def normalise(self, value: float) -> float:
        return (value - self.chance) / (self.true - self.chance)


def agreement_scale(kind: str, true_stems: Sequence[np.ndarray], given: Sequence[np.ndarray],
                    tracks: Sequence[int], sample_rate: int) -> AgreementScale:
    """`true_stems[w]` and `given[w]` are one window's true stem and given
    audio, `tracks[w]` its track: chance pairs windows of different tracks."""
    measure = AGREEMENTS[kind]
    true = [measure(s, g, sample_rate) for s, g in zip(true_stems, given)]
    chance = [measure(true_stems[v], given[w], sample_rate)
              for w in range(len(given)) for v in range(len(true_stems)) if tracks[v] != tracks[w]]
    if not chance:
        raise ValueError("chance agreement needs windows from at least two tracks")
    return AgreementScale(float(np.mean(true)), float(np.mean(chance)))


def mean_agreement(kind: str, candidates: Sequence[np.ndarray], given: Sequence[np.ndarray], sample_rate: int) -> float:
    return float(np.mean([AGREEMENTS[kind](c, g, sample_rate) for c, g in zip(candidates, given)]))
