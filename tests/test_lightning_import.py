"""Importing the paper's PyTorch Lightning checkpoints (engine.storage.lightning_import).

Checkpoints are written here as a Lightning run writes them (torch.save of
the trainer's dict) around a real audio-diffusion-pytorch 0.0.43 model, without
pytorch_lightning installed: the hyper-parameters are an instance of a stand-in
class registered under Lightning's own module path, so the pickle references
exactly the global a real checkpoint does. Malicious checkpoints carry live
payloads; the tests check that nothing of them runs.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import os
import pickle
import sys
import types
import zipfile

import numpy as np
import pytest
import torch
from audio_diffusion_pytorch import AudioDiffusionModel, LogNormalDistribution

from engine.core.config import SLAKH_STEMS, SMALL, TINY
from engine.storage.lightning_import import (
    LightningCheckpoint,
    PickledStandIn,
    UnsafeCheckpointError,
    config_from_checkpoint,
    import_checkpoint,
    load_lightning_checkpoint,
)
from engine.storage.model import MSDMModel, ModelFileError

# The ADP keyword arguments that match engine.core.config.TINY (except the window).
TINY_KWARGS = dict(
    in_channels=4, channels=16, patch_factor=2, patch_blocks=1, multipliers=[1, 2, 2], factors=[2, 2],
    num_blocks=[1, 1], attentions=[False, True], attention_heads=2, attention_features=8,
    attention_multiplier=2, resnet_groups=4, kernel_multiplier_downsample=2, kernel_sizes_init=[1, 3, 7],
    use_nearest_upsample=False, use_skip_scale=True, use_attention_bottleneck=True,
)
DIFFUSION_KWARGS = dict(
    diffusion_sigma_data=0.2, diffusion_dynamic_threshold=0.0,
)


# --- stand-ins for the packages a real checkpoint references -----------------

class AttributeDict(dict):
    """As pytorch_lightning.utilities.parsing.AttributeDict: a dict with attribute access."""

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError as error:
            raise AttributeError(key) from error

    def __setattr__(self, key, value):
        self[key] = value


AttributeDict.__module__ = "pytorch_lightning.utilities.parsing"
AttributeDict.__qualname__ = "AttributeDict"


def _identity(x):
    return x


class MultiSourceDataset:
    """As the paper's main.data.MultiSourceDataset, kept in the datamodule's hyper-parameters."""

    def __init__(self):
        self.sr = 22050
        self.stems = ["bass", "drums", "guitar", "piano"]
        self.durations = [np.float64(262144.0), np.float64(300000.0)]
        self.cumsum = np.cumsum(np.array(self.durations))
        self.transform = _identity


_identity.__module__ = "main.data"
MultiSourceDataset.__module__ = "main.data"


class ContainerMetadata:
    def __init__(self):
        self.ref_type = __import__("typing").Any
        self.object_type = list
        self.key = "multipliers"
        self.flags = {}
        self.resolver_cache = collections.defaultdict(dict)


class AnyNode:
    def __init__(self, value, parent):
        self._val, self._parent, self._metadata = value, parent, None


class ListConfig:
    """Pickles like omegaconf's ListConfig: a state dict with `_content` nodes."""

    def __init__(self, values):
        self._metadata = ContainerMetadata()
        self._parent = None
        self._content = [AnyNode(v, self) for v in values]

    def __getstate__(self):
        return dict(self.__dict__)


for _cls, _module in ((ContainerMetadata, "omegaconf.base"), (AnyNode, "omegaconf.nodes"),
                      (ListConfig, "omegaconf.listconfig")):
    _cls.__module__ = _module


FAKE_MODULES = {
    "pytorch_lightning.utilities.parsing": {"AttributeDict": AttributeDict},
    "main.data": {"MultiSourceDataset": MultiSourceDataset, "_identity": _identity},
    "omegaconf.base": {"ContainerMetadata": ContainerMetadata},
    "omegaconf.nodes": {"AnyNode": AnyNode},
    "omegaconf.listconfig": {"ListConfig": ListConfig},
}


@contextlib.contextmanager
def packages_registered():
    """Register the stand-in classes under their real module paths so that
    pickle saves them by reference (as a real run would); removed afterwards."""
    with pytest.MonkeyPatch.context() as patch:
        for dotted, members in FAKE_MODULES.items():
            parts = dotted.split(".")
            for i in range(1, len(parts) + 1):
                name = ".".join(parts[:i])
                if name not in sys.modules:
                    patch.setitem(sys.modules, name, types.ModuleType(name))
            for attr, value in members.items():
                patch.setattr(sys.modules[dotted], attr, value, raising=False)
        yield


@pytest.fixture
def fake_packages():
    """`with fake_packages(): torch.save(...)` pickles as if the real packages were there."""
    yield packages_registered
    assert not {"pytorch_lightning", "main", "omegaconf"} & set(sys.modules)


def adp_model(seed: int = 0, **overrides) -> AudioDiffusionModel:
    torch.manual_seed(seed)
    kwargs = {**TINY_KWARGS, **DIFFUSION_KWARGS, **overrides}
    kwargs.setdefault("diffusion_sigma_distribution", LogNormalDistribution(mean=-3.0, std=1.0))
    return AudioDiffusionModel(**kwargs).eval()


def hyper_parameters(**overrides) -> AttributeDict:
    """What the paper's Model(learning_rate, beta1, beta2, **kwargs) saves with save_hyperparameters()."""
    values = dict(learning_rate=1e-4, beta1=0.9, beta2=0.99, **TINY_KWARGS, **DIFFUSION_KWARGS,
                  diffusion_sigma_distribution=LogNormalDistribution(mean=-3.0, std=1.0))
    return AttributeDict({**values, **overrides})


def save_checkpoint(path, adp, fake_packages, *, hparams="default", keep=lambda key: True, **extra):
    """torch.save a dict shaped like a Lightning 1.7 checkpoint of the paper's Model."""
    checkpoint = {
        "epoch": 3,
        "global_step": 1234,
        "pytorch-lightning_version": "1.7.7",
        "state_dict": collections.OrderedDict(
            ("model." + k, v) for k, v in adp.state_dict().items() if keep("model." + k)
        ),
        "optimizer_states": [],
        "lr_schedulers": [],
        **extra,
    }
    if hparams is not None:
        checkpoint["hparams_name"] = "kwargs"
        checkpoint["hyper_parameters"] = hyper_parameters() if hparams == "default" else hparams
    with fake_packages():
        torch.save(checkpoint, path)
    return path


def assert_same_denoiser(model: MSDMModel, adp: AudioDiffusionModel, channels: int = 4) -> None:
    torch.manual_seed(1)
    x = torch.randn(2, channels, 64) * 0.3
    sigma = torch.tensor([0.05, 2.0])
    with torch.no_grad():
        expected = adp.diffusion.denoise_fn(x, sigmas=sigma)
        got = model.denoiser(x, sigma)
    assert got.dtype == torch.float32
    assert (got - expected).abs().max() / expected.abs().max() < 1e-4


def pickle_record(path) -> bytes:
    with zipfile.ZipFile(path) as archive:
        return archive.read(next(n for n in archive.namelist() if n.endswith("/data.pkl")))


# --- 1. a full Lightning checkpoint ------------------------------------------

def test_import_gives_the_reference_networks_denoiser(tmp_path, fake_packages):
    adp = adp_model()
    datamodule_hparams = AttributeDict(train_dataset=MultiSourceDataset(), batch_size=8)
    ckpt = save_checkpoint(tmp_path / "epoch=03-valid_loss=0.123.ckpt", adp, fake_packages,
                           datamodule_hyper_parameters=datamodule_hparams)
    record = pickle_record(ckpt)
    # The pickle references the same globals as a real run's checkpoint ...
    assert b"pytorch_lightning.utilities.parsing" in record and b"AttributeDict" in record
    assert b"audio_diffusion_pytorch.diffusion" in record and b"LogNormalDistribution" in record
    assert b"main.data" in record and b"numpy" in record
    # ... and none of the fake packages is around while it is loaded.
    assert "pytorch_lightning" not in sys.modules and "main" not in sys.modules

    out = tmp_path / "model.safetensors"
    imported = import_checkpoint(ckpt, out)
    assert "pytorch_lightning" not in sys.modules and "main" not in sys.modules
    assert imported.path == out and out.is_file()

    model = MSDMModel.load(out)
    assert model.source == "imported from epoch=03-valid_loss=0.123.ckpt (epoch 3, step 1234)"
    unet = model.config.unet
    assert dataclasses.replace(model.config, window=TINY.window) == TINY
    assert unet.channels == 16 and unet.attentions == (False, True) and unet.multipliers == (1, 2, 2)
    assert model.config.diffusion.sigma_data == 0.2
    assert model.config.diffusion.sigma_mean == -3.0 and model.config.diffusion.sigma_std == 1.0
    assert model.stems == SLAKH_STEMS
    assert_same_denoiser(model, adp)


def test_checkpoint_contents_are_plain_data(tmp_path, fake_packages):
    adp = adp_model()
    ckpt = load_lightning_checkpoint(save_checkpoint(tmp_path / "a.ckpt", adp, fake_packages))
    assert isinstance(ckpt, LightningCheckpoint)
    assert ckpt.info["epoch"] == 3 and ckpt.info["global_step"] == 1234
    assert ckpt.info["lightning_version"] == "1.7.7"
    hp = ckpt.hyper_parameters
    assert type(hp) is dict and hp["learning_rate"] == 1e-4 and hp["multipliers"] == [1, 2, 2]
    distribution = hp["diffusion_sigma_distribution"]
    assert isinstance(distribution, PickledStandIn)
    assert distribution.pickled_global == "audio_diffusion_pytorch.diffusion.LogNormalDistribution"
    assert distribution.attributes == {"mean": -3.0, "std": 1.0}
    # Both registrations of the U-Net are there, equal.
    sd = ckpt.state_dict
    assert torch.equal(sd["model.unet.to_time.0.1.weight"], sd["model.diffusion.net.to_time.0.1.weight"])


def test_omegaconf_lists_in_hyper_parameters(tmp_path, fake_packages):
    """hydra passes lists as omegaconf ListConfig; they arrive as stand-ins and become lists."""
    adp = adp_model()
    hparams = hyper_parameters(multipliers=ListConfig([1, 2, 2]), attentions=ListConfig([False, True]))
    ckpt = save_checkpoint(tmp_path / "a.ckpt", adp, fake_packages, hparams=hparams)
    record = pickle_record(ckpt)
    assert b"omegaconf.listconfig" in record
    assert b"typing" in record and b"defaultdict" in record  # omegaconf metadata
    loaded = load_lightning_checkpoint(ckpt)
    assert loaded.hyper_parameters["multipliers"] == [1, 2, 2]
    config = config_from_checkpoint(loaded)
    assert config.unet.multipliers == (1, 2, 2) and config.unet.attentions == (False, True)


# --- 2. other layouts: diffusion.net only, weights only, bare ----------------

def test_checkpoint_with_only_diffusion_net_keys(tmp_path, fake_packages):
    adp = adp_model(seed=2)
    ckpt = save_checkpoint(tmp_path / "a.ckpt", adp, fake_packages,
                           keep=lambda key: key.startswith("model.diffusion.net."))
    model = import_checkpoint(ckpt, tmp_path / "m.safetensors")
    assert_same_denoiser(MSDMModel.load(tmp_path / "m.safetensors"), adp)
    assert model.config.unet == TINY.unet


def test_weights_only_checkpoint_with_a_base_configuration(tmp_path, fake_packages):
    adp = adp_model(seed=3)
    ckpt = save_checkpoint(tmp_path / "w.ckpt", adp, fake_packages, hparams=None)
    model = import_checkpoint(ckpt, tmp_path / "m.safetensors", base=TINY)
    assert model.config == TINY
    assert_same_denoiser(MSDMModel.load(tmp_path / "m.safetensors"), adp)


def test_bare_state_dict_with_a_base_configuration(tmp_path):
    adp = adp_model(seed=4)
    torch.save(adp.unet.state_dict(), tmp_path / "unet.pt")
    model = import_checkpoint(tmp_path / "unet.pt", tmp_path / "m.safetensors", base=TINY)
    assert model.source == "imported from unet.pt"
    assert_same_denoiser(model, adp)


def test_a_base_with_other_shapes_is_reported_name_by_name(tmp_path, fake_packages):
    ckpt = save_checkpoint(tmp_path / "w.ckpt", adp_model(), fake_packages, hparams=None)
    with pytest.raises(ModelFileError) as info:
        import_checkpoint(ckpt, tmp_path / "m.safetensors", base=SMALL)
    message = str(info.value)
    assert "w.ckpt" in message and "do not fit" in message
    assert "to_time.0.1.weight: checkpoint [64, 17] vs config [128, 33]" in message
    assert "missing from the checkpoint" in message
    assert not (tmp_path / "m.safetensors").exists()


def test_hyper_parameters_that_contradict_the_weights(tmp_path, fake_packages):
    ckpt = save_checkpoint(tmp_path / "a.ckpt", adp_model(), fake_packages,
                           hparams=hyper_parameters(channels=32))
    with pytest.raises(ModelFileError, match="to_time.0.1.weight"):
        import_checkpoint(ckpt, tmp_path / "m.safetensors")


def test_weights_only_without_base_infers_the_shapes(tmp_path, fake_packages, caplog):
    ckpt = save_checkpoint(tmp_path / "w.ckpt", adp_model(), fake_packages, hparams=None)
    with caplog.at_level(logging.WARNING, logger="engine.storage.lightning_import"):
        config = config_from_checkpoint(load_lightning_checkpoint(ckpt))
    unet = config.unet
    assert (unet.in_channels, unet.channels, unet.patch_factor, unet.patch_blocks) == (4, 16, 2, 1)
    assert unet.multipliers == (1, 2, 2) and unet.factors == (2, 2) and unet.num_blocks == (1, 1)
    assert unet.attentions == (False, True) and unet.attention_heads * unet.attention_features == 16
    # What the shapes cannot tell is assumed from the paper, and said so.
    assert "resnet_groups=8" in caplog.text and "use_skip_scale" in caplog.text


def test_missing_sigma_data_is_audio_diffusion_pytorchs_default(tmp_path, fake_packages):
    """The paper's Model passes its kwargs to AudioDiffusionModel, which fills
    missing ones from its defaults (sigma_data 0.1), not from the paper's yaml."""
    hparams = hyper_parameters()
    del hparams["diffusion_sigma_data"]
    ckpt = save_checkpoint(tmp_path / "a.ckpt", adp_model(diffusion_sigma_data=0.1), fake_packages,
                           hparams=hparams)
    config = config_from_checkpoint(load_lightning_checkpoint(ckpt))
    assert config.diffusion.sigma_data == 0.1
    config = config_from_checkpoint(load_lightning_checkpoint(ckpt), base=TINY)
    assert config.diffusion.sigma_data == TINY.diffusion.sigma_data


def test_dynamic_threshold_is_refused(tmp_path, fake_packages):
    ckpt = save_checkpoint(tmp_path / "a.ckpt", adp_model(), fake_packages,
                           hparams=hyper_parameters(diffusion_dynamic_threshold=0.95))
    with pytest.raises(ModelFileError, match="diffusion_dynamic_threshold"):
        import_checkpoint(ckpt, tmp_path / "m.safetensors")


# --- 3. malicious checkpoints --------------------------------------------------

class Payload:
    def __init__(self, func, argument):
        self.func, self.argument = func, argument

    def __reduce__(self):
        return self.func, (self.argument,)


def payloads(marker):
    return {
        "os.system": Payload(os.system, f"touch {marker}"),
        "builtins.eval": Payload(eval, f"open({str(marker)!r}, 'w').close()"),
        "builtins.exec": Payload(exec, f"open({str(marker)!r}, 'w').close()"),
    }


def test_payloads_are_live(tmp_path):
    """Control: the payloads below do run under an unrestricted torch.load."""
    for name, payload in payloads(tmp_path / "ran").items():
        torch.save({"state_dict": {"x": payload}}, tmp_path / "p.ckpt")
        torch.load(tmp_path / "p.ckpt", weights_only=False)
        assert (tmp_path / "ran").exists(), name
        (tmp_path / "ran").unlink()


@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize("where", ["state_dict", "top level", "hyper_parameters"])
@pytest.mark.parametrize("name", ["os.system", "builtins.eval", "builtins.exec"])
def test_malicious_checkpoints_are_refused_without_running_anything(tmp_path, fake_packages, name, where,
                                                                    protocol):
    marker = tmp_path / "pwned"
    payload = payloads(marker)[name]
    adp = adp_model()
    state = collections.OrderedDict(("model." + k, v) for k, v in adp.state_dict().items())
    if where == "state_dict":
        state["model.unet.to_time.0.1.weight"] = payload
        obj = {"epoch": 1, "state_dict": state, "hyper_parameters": hyper_parameters()}
    elif where == "top level":
        obj = payload
    else:
        obj = {"epoch": 1, "state_dict": state, "hyper_parameters": hyper_parameters(learning_rate=payload)}
    path = tmp_path / "evil.ckpt"
    with fake_packages():
        torch.save(obj, path, pickle_protocol=protocol)

    for attempt in (load_lightning_checkpoint, lambda p: import_checkpoint(p, tmp_path / "m.safetensors")):
        with pytest.raises(UnsafeCheckpointError) as info:
            attempt(path)
        message = str(info.value)
        assert name in message and "evil.ckpt" in message
        assert "would execute code" in message and "only weights and plain data are accepted" in message
        assert not marker.exists()
    assert not (tmp_path / "m.safetensors").exists()


def test_other_globals_are_refused(tmp_path):
    torch.save({"state_dict": {"layer": torch.nn.Linear(2, 2)}}, tmp_path / "module.ckpt")
    with pytest.raises(UnsafeCheckpointError, match="torch.nn.modules.linear.Linear"):
        load_lightning_checkpoint(tmp_path / "module.ckpt")
    torch.save({"state_dict": {}, "x": pickle.loads}, tmp_path / "pickle.ckpt")
    with pytest.raises(UnsafeCheckpointError, match=r"pickle\.loads, which would execute code"):
        load_lightning_checkpoint(tmp_path / "pickle.ckpt")


def _with_record(source, target, data_pkl: bytes) -> None:
    """Copy a torch.save archive, replacing its pickle with hand-written opcodes."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as dst:
        for name in src.namelist():
            dst.writestr(name, data_pkl if name.endswith("/data.pkl") else src.read(name))


def test_allowed_objects_cannot_be_tampered_with(tmp_path):
    """A pickle may not BUILD (setattr) on an allowed function: with only
    find_class restricted, this would change torch's own tensor loader."""
    torch.save({"a": 1}, tmp_path / "plain.ckpt")
    defaults = torch._utils._rebuild_tensor_v2.__defaults__
    opcodes = (b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n"
               b"N}X\x0c\x00\x00\x00__defaults__X\x05\x00\x00\x00pwned\x85s\x86b.")
    _with_record(tmp_path / "plain.ckpt", tmp_path / "tamper.ckpt", opcodes)
    with pytest.raises(UnsafeCheckpointError, match=r"sets attributes of torch\._utils\._rebuild_tensor_v2"):
        load_lightning_checkpoint(tmp_path / "tamper.ckpt")
    assert torch._utils._rebuild_tensor_v2.__defaults__ == defaults


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_archives_are_refused(tmp_path):
    """torch.load would hand these to torch.jit.load, past any pickle module."""
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), tmp_path / "scripted.ckpt")
    with pytest.raises(UnsafeCheckpointError, match="TorchScript"):
        load_lightning_checkpoint(tmp_path / "scripted.ckpt")


# --- 4. not checkpoints; single-stem checkpoints ------------------------------

def _not_checkpoints(tmp_path, fake_packages):
    rng = np.random.default_rng(0)
    (tmp_path / "random.ckpt").write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (tmp_path / "text.ckpt").write_text("model: msdm\nchannels: 256\n")
    (tmp_path / "empty.ckpt").write_bytes(b"")
    (tmp_path / "folder.ckpt").mkdir()
    good = save_checkpoint(tmp_path / "good.ckpt", adp_model(), fake_packages).read_bytes()
    (tmp_path / "truncated.ckpt").write_bytes(good[: len(good) // 2])
    (tmp_path / "torn.ckpt").write_bytes(good[:200] + bytes(1000) + good[1200:])
    MSDMModel.build(TINY).save(tmp_path / "model.safetensors")
    torch.save({"a": 1}, tmp_path / "legacy.ckpt", _use_new_zipfile_serialization=False)
    torch.save([1, 2, 3], tmp_path / "list.ckpt")
    torch.save({"epoch": 1}, tmp_path / "nostate.ckpt")
    return ["random.ckpt", "text.ckpt", "empty.ckpt", "folder.ckpt", "missing.ckpt", "truncated.ckpt",
            "torn.ckpt", "model.safetensors", "legacy.ckpt", "list.ckpt", "nostate.ckpt"]


def test_files_that_are_not_checkpoints(tmp_path, fake_packages):
    for name in _not_checkpoints(tmp_path, fake_packages):
        with pytest.raises(ModelFileError) as info:
            import_checkpoint(tmp_path / name, tmp_path / "out.safetensors")
        assert name in str(info.value), str(info.value)
        assert not isinstance(info.value, UnsafeCheckpointError), name
    assert not (tmp_path / "out.safetensors").exists()
    with pytest.raises(ModelFileError, match="safetensors"):
        load_lightning_checkpoint(tmp_path / "model.safetensors")


def test_single_stem_checkpoint_needs_its_stem_name(tmp_path, fake_packages):
    adp = adp_model(seed=5, in_channels=1)
    ckpt = save_checkpoint(tmp_path / "isdm-drums.ckpt", adp, fake_packages,
                           hparams=hyper_parameters(in_channels=1))
    with pytest.raises(ModelFileError, match=r"single-stem .*stems=\('drums',\)"):
        import_checkpoint(ckpt, tmp_path / "drums.safetensors")
    with pytest.raises(ModelFileError, match="1 input channel"):
        import_checkpoint(ckpt, tmp_path / "drums.safetensors", stems=("bass", "drums"))
    model = import_checkpoint(ckpt, tmp_path / "drums.safetensors", stems=("drums",), sample_rate=22050)
    assert model.stems == ("drums",) and model.config.unet.in_channels == 1
    assert_same_denoiser(MSDMModel.load(tmp_path / "drums.safetensors"), adp, channels=1)


def test_single_stem_weights_only_with_the_paper_style_base(tmp_path, fake_packages):
    """A 4-stem base and a 1-channel checkpoint: the stems decide the channel count."""
    adp = adp_model(seed=6, in_channels=1)
    ckpt = save_checkpoint(tmp_path / "isdm.ckpt", adp, fake_packages, hparams=None)
    with pytest.raises(ModelFileError, match="single-stem"):
        import_checkpoint(ckpt, tmp_path / "m.safetensors", base=TINY)
    model = import_checkpoint(ckpt, tmp_path / "m.safetensors", base=TINY, stems=("bass",))
    assert model.config == TINY.with_stems(("bass",))
    assert_same_denoiser(model, adp, channels=1)


def test_output_may_not_overwrite_the_checkpoint(tmp_path, fake_packages):
    ckpt = save_checkpoint(tmp_path / "a.ckpt", adp_model(), fake_packages)
    with pytest.raises(ModelFileError, match="overwrite"):
        import_checkpoint(ckpt, ckpt)
    assert load_lightning_checkpoint(ckpt).info["epoch"] == 3
