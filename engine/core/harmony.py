"""Pitch classes of a stem, frame by frame: the latent prior's harmonic condition
and the target of harmony guidance (engine.audio.harmony_guidance).

The stem autoencoder's latents come from a 1024-point STFT (21.5 Hz bins at
22050 Hz): below ~350 Hz neighbouring semitones share a bin, so a given bass
line's latent hardly says which notes it plays, and a prior imputing guitar
and piano from it cannot agree with a harmony it is not shown (docs/models.md:
three runs of more minutes and more data left that agreement flat). This
module computes what the latents lose: a chroma (Fujishima 1999) from a
4096-point STFT (5.4 Hz bins) centred on every latent frame, keeping only
what stands above the local spectral envelope (spectral peaks, as in HPCP,
Gomez 2006), so noise and drums give next to no pitch classes.

Each frame is scaled by the loudest frame of the stem (with a floor), so the
condition does not depend on the stem's level and quiet frames stay quiet.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor
from torch.nn import functional as F

PITCH_CLASSES = 12
HARMONY_N_FFT = 4096
# MIDI notes folded onto the 12 classes, six whole octaves: E1 (41 Hz, a bass's low E) to D#7 (2489 Hz).
HARMONY_NOTES = (28, 100)
# Peaks must stand above the mean of this many semitones around them.
ENVELOPE_SEMITONES = 7
# A frame is scaled by max(its own peak, this share of the stem's loudest frame).
FRAME_FLOOR = 0.1


@functools.lru_cache(maxsize=8)
def semitone_weights(sample_rate: int, n_fft: int = HARMONY_N_FFT) -> Tensor:
    """[bins, notes]: each semitone of HARMONY_NOTES as a triangle over
    log-frequency (1 at its centre, 0 one semitone away), normalised to sum
    to one, so every note has the same weight however many bins it spans."""
    freqs = torch.fft.rfftfreq(n_fft, 1.0 / sample_rate, dtype=torch.float64)
    notes = torch.arange(*HARMONY_NOTES, dtype=torch.float64)
    pitch = 12 * torch.log2(freqs.clamp_min(1e-6) / 440.0) + 69            # [bins]
    weights = (1 - (pitch[:, None] - notes[None]).abs()).clamp_min(0)     # [bins, notes]
    weights[0] = 0
    return (weights / weights.sum(0, keepdim=True).clamp_min(1e-12)).float()


def chroma_from_magnitude(magnitude: Tensor, sample_rate: int, n_fft: int) -> Tensor:
    """Magnitude spectrogram [B, F, K] of an n_fft-point STFT -> pitch-class
    energy [B, 12, K] (C = 0), unnormalised; differentiable, so a sampler can
    follow its gradient (engine.audio.harmony_guidance)."""
    if sample_rate / 2 <= 440.0 * 2 ** ((HARMONY_NOTES[1] - 69) / 12):
        raise ValueError(f"pitch classes up to MIDI {HARMONY_NOTES[1] - 1} need a sample rate above {sample_rate} Hz")
    weights = semitone_weights(int(sample_rate), n_fft).to(device=magnitude.device, dtype=magnitude.dtype)
    per_note = torch.einsum("bfk,fn->bkn", magnitude, weights)
    envelope = F.avg_pool1d(F.pad(per_note, (ENVELOPE_SEMITONES // 2,) * 2, mode="replicate"),
                            ENVELOPE_SEMITONES, stride=1)
    tonal = (per_note - envelope).clamp_min(0)                             # [B, K, notes]
    b, k, notes = tonal.shape
    chroma = tonal.reshape(b, k, notes // PITCH_CLASSES, PITCH_CLASSES).sum(2)
    # Rotate so class 0 is C (HARMONY_NOTES starts on E = 4).
    return torch.roll(chroma, HARMONY_NOTES[0] % PITCH_CLASSES, dims=-1).transpose(1, 2)


def stem_chroma(audio: Tensor, hop: int, sample_rate: int, n_fft: int = HARMONY_N_FFT) -> Tensor:
    """audio [..., T] -> chroma [..., 12, T // hop + 1] in [0, 1], C = 0; frame k
    is centred on sample k * hop (the autoencoder's latent frames)."""
    shape, length = audio.shape[:-1], audio.shape[-1]
    flat = audio.reshape(-1, length).float()
    window = torch.hann_window(n_fft, device=flat.device)
    spec = torch.stft(flat, n_fft, hop, window=window, center=True, pad_mode="constant", return_complex=True)
    chroma = chroma_from_magnitude(spec.abs(), sample_rate, n_fft)        # [B, 12, K]
    peak = chroma.amax(1, keepdim=True)                                    # [B, 1, K]
    loudest = peak.amax(2, keepdim=True)
    chroma = chroma / torch.maximum(peak, FRAME_FLOOR * loudest).clamp_min(1e-8)
    return chroma[..., :length // hop + 1].reshape(*shape, PITCH_CLASSES, -1)
