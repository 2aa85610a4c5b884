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
