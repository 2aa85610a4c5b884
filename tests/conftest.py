"""Shared fixtures: a tiny random-weight model built at test time, and closed-form
"models" (exact denoisers of Gaussian stem priors) that run through the same
pipeline as a network."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from dataclasses import dataclass

import pytest
import torch

# msdm serve's secret file (osc_bridge.auth) goes to a folder of this test run, never the
# user's own: set before any test starts a server, and inherited by every process a test starts.
os.environ["MSDM_CONFIG_DIR"] = tempfile.mkdtemp(prefix="msdm-test-config-")
atexit.register(shutil.rmtree, os.environ["MSDM_CONFIG_DIR"], ignore_errors=True)


def pytest_configure(config):
    """PySide6 6.12.0's Signal.emit() takes a reference to True on every call: a
    test process that emits enough aborts at exit (desktop/qt_refcount.py)."""
    from desktop.qt_refcount import guard_bool_refcounts

    try:
        guard_bool_refcounts()
    except ImportError:  # no PySide6: nothing emits signals
        pass


from engine.core.config import TINY
from support.gaussian_prior import GaussianStemPrior, band_spectrum, flat_spectrum
from engine.storage.model import MSDMModel, ModelSet

STEMS = ("bass", "drums", "guitar", "piano")


@pytest.fixture(scope="module")
def one_torch_thread():
    """One network thread for a module (use it with pytest.mark.usefixtures): on a
    machine whose cores are busy (CI, servers started by the test), PyTorch's default
    of one thread per core can make each step many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "tiny.safetensors"
    MSDMModel.build(TINY, seed=0).save(path, source="tiny test model")
    return path


TINY_SEPARATOR = dict(n_fft=256, hop=64, hidden=16, layers=1)


@pytest.fixture(scope="session")
def tiny_packed_path(tmp_path_factory):
    """The tiny model with a (random) first-guess separator in the same file."""
    from engine.core.separator import MaskSeparator, SeparatorConfig

    path = tmp_path_factory.mktemp("models") / "tiny-packed.safetensors"
    model = MSDMModel.build(TINY, seed=0)
    torch.manual_seed(0)
    model.separator = MaskSeparator(SeparatorConfig(**TINY_SEPARATOR))
    model.save(path, source="tiny test model with a separator")
    return path


@pytest.fixture(scope="session")
def tiny_models(tiny_model_path):
    return ModelSet([MSDMModel.load(tiny_model_path)])


def colored_prior() -> GaussianStemPrior:
    """Four stems with different spectra, some of them correlated."""
    correlation = torch.tensor([[1.0, 0.5, 0.0, 0.0], [0.5, 1.0, 0.3, 0.0],
                                [0.0, 0.3, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    spectra = [band_spectrum(0.02, 0.02, 0.02), band_spectrum(0.1, 0.05, 0.01),
               band_spectrum(0.25, 0.08, 0.005), band_spectrum(0.4, 0.05, 0.003)]
    return GaussianStemPrior(spectra, correlation)


def white_prior() -> GaussianStemPrior:
    """Independent white stems of different levels: the exact posterior is
    local in time (per sample), so windowing must not change it."""
    return GaussianStemPrior([flat_spectrum(v) for v in (0.004, 0.002, 0.001, 0.0005)])


@dataclass
class AnalyticModels:
    """Duck-types engine.storage.model.ModelSet around a closed-form denoiser."""

    prior: GaussianStemPrior
    window: int = 2048
    sample_rate: int = 22050
    stems: tuple = STEMS
    is_isdm: bool = False
    device: torch.device = torch.device("cpu")

    @property
    def denoiser(self):
        return self.prior.denoise
