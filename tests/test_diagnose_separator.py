"""The separator diagnosis: its leak matrix and merged scores are exact on
estimates whose mixing is known."""

import numpy as np
import pytest

from training.diagnose_separator import leak_energy, merged


def _stems(seed: int = 0, length: int = 4000) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((4, length))


def test_perfect_estimates_leak_nothing():
    refs = _stems()
    leak = leak_energy(refs, refs)
    np.testing.assert_allclose(leak, np.diag((refs ** 2).sum(-1)), atol=1e-8)


def test_a_known_mixture_is_read_back_as_shares():
    refs = _stems(1)
    estimates = refs.copy()
    estimates[3] = 0.6 * refs[2] + 0.8 * refs[3]    # piano estimate holds some guitar
    leak = leak_energy(estimates, refs)
    shares = leak / leak.sum(1, keepdims=True)
    energy = (refs ** 2).sum(-1)
    expected = np.array([0.36 * energy[2], 0.64 * energy[3]])
    np.testing.assert_allclose(shares[3, 2:], expected / expected.sum(), rtol=1e-6)
    np.testing.assert_allclose(shares[:3], np.eye(4)[:3], atol=1e-8)


def test_merging_adds_guitar_and_piano_in_guitars_place():
    refs = _stems(2, 10)
    joined = merged(refs)
    assert joined.shape == (3, 10)
    np.testing.assert_array_equal(joined[:2], refs[:2])
    np.testing.assert_array_equal(joined[2], refs[2] + refs[3])


def test_chunks_must_divide_the_papers():
    from training.diagnose_separator import diagnose

    with pytest.raises(ValueError, match="must divide"):
        diagnose(None, [], chunk=100000)


def _peak_hz(x):
    return np.fft.rfftfreq(len(x), 1 / 22050)[np.argmax(np.abs(np.fft.rfft(x * np.hanning(len(x)))))]


def test_an_octave_move_keeps_the_length_and_never_falls_silent():
    from training.diagnose_separator import octave_moved

    x = (0.5 * np.sin(2 * np.pi * 220 * np.arange(30000) / 22050)).astype(np.float32)
    for octaves, hz in ((1, 440), (-1, 110), (2, 880), (0, 220)):
        y = octave_moved(x, octaves)
        assert y.shape == x.shape and abs(_peak_hz(y) - hz) < 2
        # Played faster, it is repeated: its last quarter is as loud as its first.
        assert np.sqrt(np.mean(y[-7500:] ** 2)) > 0.3


def test_register_rows_score_the_moves_a_perfect_separator_ignores(tmp_path):
    """With a separator that returns the true stems whatever the register
    (an oracle wrapped as the model), every move scores the same and high;
    the table has one row per move."""
    import torch

    from training import diagnose_separator

    class Oracle(torch.nn.Module):
        """Knows the stems of the one track it is given: returns them for its mix."""

        def __init__(self):
            super().__init__()
            self.stems = {}

        def forward(self, chunks):
            return torch.stack([self.stems[round(float(c.abs().sum()), 2)] for c in chunks])

    rng = np.random.default_rng(3)
    track = rng.standard_normal((4, 262144)).astype(np.float32) * 0.1
    oracle = Oracle()
    moves = [(0, 0), (1, -1)]
    for guitar, piano in moves:
        refs = track.copy()
        refs[2] = diagnose_separator.octave_moved(refs[2], guitar)
        refs[3] = diagnose_separator.octave_moved(refs[3], piano)
        oracle.stems[round(float(np.abs(refs.sum(0)).sum()), 2)] = torch.from_numpy(refs)
    table = diagnose_separator.register_rows(oracle, [track], moves)
    rows = [line for line in table.splitlines() if line.startswith("| +") or line.startswith("| -")]
    assert [r.split("|")[1].strip() for r in rows] == ["+0, +0", "+1, -1"]
    scores = [[float(v) for v in r.split("|")[2:7]] for r in rows]
    assert all(v > 50 for row in scores for v in row)       # exact stems: SI-SNRi far above any separator


def test_bad_octave_moves_are_a_usage_error(tmp_path, capsys):
    from training.diagnose_separator import main

    with pytest.raises(SystemExit) as stop:
        main(["--model", "engine/models/default.safetensors", "--data", str(tmp_path), "--move-guitar", "3",
              "--move-piano", "0"])
    assert stop.value.code == 2 and "--move-guitar" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        main(["--model", "engine/models/default.safetensors", "--data", str(tmp_path), "--move-guitar", "1", "-1",
              "--move-piano", "0"])
    assert stop.value.code == 2
