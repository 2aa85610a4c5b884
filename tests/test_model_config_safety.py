"""Issue 14, findings 1 and 5: a model file's config is checked (types, ranges,
stem names) from its header, before any tensor is read or network built; a
stem name can never become a path outside the output folder."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import soundfile as sf
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from engine.cli import main
from engine.core.config import TINY, ConfigError, ModelConfig
from engine.errors import ModelFileError
from engine.storage.model import MSDMModel


def _with_config(source, target, change):
    tensors = load_file(str(source))
    with safe_open(str(source), framework="pt") as handle:
        metadata = dict(handle.metadata())
    config = json.loads(metadata["config"])
    metadata["config"] = change(config) if callable(change) else change
    metadata["config"] = metadata["config"] if isinstance(metadata["config"], str) else json.dumps(metadata["config"])
    save_file(tensors, str(target), metadata=metadata)
    return target


def _set(path, value):
    def change(config):
        node = config
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        return config
    return change


EVIL = {
    "escaping stem names": (_set(["stems"], ["../../escaped_rel", "/tmp/x/escaped_abs", "guitar", "piano"]),
                            "stem name"),
    "a dotted stem name": (_set(["stems"], ["bass", "drums.wav", "guitar", "piano"]), "stem name"),
    "stems equal but for case": (_set(["stems"], ["bass", "Bass", "guitar", "piano"]), "unique"),
    "a reserved stem name": (_set(["stems"], ["bass", "drums", "mix", "piano"]), "stem name"),
    "a huge network": (_set(["unet", "channels"], 1024), "channels"),
    "a zero factor": (_set(["unet", "factors"], [0, 2]), "factors"),
    "a zero patch": (_set(["unet", "patch_factor"], 0), "patch_factor"),
    "a zero rate": (_set(["sample_rate"], 0), "sample_rate"),
    "a rate as text": (_set(["sample_rate"], "22050"), "sample_rate"),
    "a flag as a number": (_set(["unet", "use_skip_scale"], 1), "use_skip_scale"),
    "a list instead of a config": ("[1,2]", "object"),
    "not JSON": ("{unet:", "config cannot be used"),
}


@pytest.mark.parametrize("case", list(EVIL))
def test_a_bad_config_is_refused_from_the_header_quickly(case, tiny_model_path, tmp_path):
    change, words = EVIL[case]
    path = _with_config(tiny_model_path, tmp_path / "evil.safetensors", change)
    began = time.perf_counter()
    with pytest.raises(ModelFileError, match=words) as error:
        MSDMModel.load(path)
    assert time.perf_counter() - began < 2.0  # channels 1024 took 14 s and 2 GB before
    assert str(path) in str(error.value)


def test_config_errors_name_the_field_and_range():
    with pytest.raises(ConfigError, match=r"UNetConfig.channels must be a whole number from 1 to 512, got 1024"):
        ModelConfig.from_dict({**TINY.to_dict(), "unet": {**TINY.to_dict()["unet"], "channels": 1024}})
    with pytest.raises(ConfigError, match="unknown ModelConfig fields"):
        ModelConfig.from_dict({**TINY.to_dict(), "sampel_rate": 22050})
    assert ModelConfig.from_dict(TINY.to_dict()) == TINY  # a good config goes through unchanged


def test_separating_with_an_escaping_model_writes_nothing_outside(tiny_model_path, tmp_path, capsys):
    """Finding 1: `msdm separate in.wav -o out --model evil.safetensors` wrote
    ../../escaped_rel.wav outside `out`."""
    evil = _with_config(tiny_model_path, tmp_path / "evil.safetensors",
                        _set(["stems"], ["../../escaped_rel", "/tmp/x/escaped_abs", "guitar", "piano"]))
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    sf.write(work / "in.wav", (0.1 * np.random.default_rng(0).standard_normal(4096)).astype(np.float32), 22050)
    before = sorted(p for p in tmp_path.rglob("*"))
    assert main(["separate", str(work / "in.wav"), "-o", str(work / "out"), "--model", str(evil),
                 "--steps", "2", "--method", "dpmpp2m", "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "stem name" in err
    assert sorted(p for p in tmp_path.rglob("*")) == before
    assert not list(tmp_path.rglob("escaped*"))


def test_msdm_info_refuses_a_huge_network_at_once(tiny_model_path, tmp_path, capsys):
    evil = _with_config(tiny_model_path, tmp_path / "big.safetensors", _set(["unet", "channels"], 1024))
    began = time.perf_counter()
    assert main(["info", "--model", str(evil)]) == 2
    assert time.perf_counter() - began < 2.0
    assert "channels" in capsys.readouterr().err
