"""engine.core.harmony: the pitch classes the latent prior is conditioned on."""

from __future__ import annotations

import math

import pytest
import torch

from engine.core.harmony import PITCH_CLASSES, stem_chroma

SR = 22050
HOP = 256


def tone(f0: float, seconds: float = 1.5, level: float = 0.2) -> torch.Tensor:
    t = torch.arange(int(seconds * SR), dtype=torch.float64) / SR
    return (level * sum(torch.sin(2 * math.pi * k * f0 * t) / k for k in range(1, 6))).float()


@pytest.mark.parametrize("f0, pitch_class", [(41.20, 4), (55.0, 9), (110.0, 9), (261.63, 0), (392.0, 7),
                                            (987.77, 11)])
def test_a_harmonic_tone_lands_on_its_pitch_class(f0, pitch_class):
    """From a bass's low E (where 1024-point bins are 4 semitones wide) to B5."""
    chroma = stem_chroma(tone(f0), HOP, SR)
    middle = chroma[:, chroma.shape[-1] // 2]
    assert int(middle.argmax()) == pitch_class
    assert float(middle.max()) == pytest.approx(1.0)
    if f0 < 80:
        return  # in the lowest octave a 4096-point bin still spans 2-3 semitones: neighbours leak
    # The harmonics' classes (third, fifth) are the only others that may be strong.
    others = middle.clone()
    others[[pitch_class, (pitch_class + 4) % 12, (pitch_class + 7) % 12]] = 0
    assert float(others.max()) < 0.35


def test_frames_match_the_latent_frames_and_batches_are_independent():
    stems = torch.stack([tone(110.0), tone(261.63), torch.zeros(int(1.5 * SR))])
    chroma = stem_chroma(stems, HOP, SR)
    assert chroma.shape == (3, PITCH_CLASSES, stems.shape[-1] // HOP + 1)
    torch.testing.assert_close(chroma[1], stem_chroma(stems[1], HOP, SR))
    assert float(chroma[2].abs().max()) == 0.0           # silence has no pitch classes


def test_level_does_not_change_the_chroma_and_quiet_frames_stay_quiet():
    loud, soft = tone(220.0, level=0.5), tone(220.0, level=0.005)
    torch.testing.assert_close(stem_chroma(loud, HOP, SR), stem_chroma(soft, HOP, SR), atol=1e-4, rtol=1e-3)
    # A note at -40 dB under the stem's loudest stays far under it (the frame floor).
    fading = torch.cat([tone(220.0), 0.01 * tone(220.0)])
    chroma = stem_chroma(fading, HOP, SR)
    assert float(chroma[:, -20].max()) < 0.2 < float(chroma[:, 20].max())


def test_a_rate_too_low_for_the_top_octave_is_refused():
    with pytest.raises(ValueError, match="sample rate"):
        stem_chroma(torch.zeros(4000), HOP, 4000)
