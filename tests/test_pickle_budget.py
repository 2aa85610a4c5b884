"""The checkpoint unpickler works within a budget (issue 14, finding 4): tiny
pickles that build huge objects, or whose shared objects would be copied
level by level, are refused or loaded in bounded time and memory."""

from __future__ import annotations

import contextlib
import signal
import time
import zipfile

import pytest
import torch

from engine.storage.lightning_import import (
    CheckpointBudgetError,
    PickleBudget,
    import_checkpoint,
    load_lightning_checkpoint,
)
from engine.storage.model import ModelFileError

MARKER = "to_time.0.1.weight"  # a bare U-Net state dict is recognised by this name


@contextlib.contextmanager
def at_most(seconds: float):
    """Fail (instead of hanging for minutes) when the block takes longer."""
    def expired(signum, frame):
        raise TimeoutError(f"took more than {seconds} s")
    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def shared_nested_list(depth: int) -> list:
    """[x, x] with x = [y, y] ...: `depth` objects, 2**depth leaves when copied."""
    x: list = []
    for _ in range(depth):
        x = [x, x]
    return x


def with_pickle(tmp_path, name: str, data_pkl: bytes):
    """A torch.save archive whose pickle is replaced by hand-written opcodes."""
    source, target = tmp_path / f"{name}.src", tmp_path / name
    torch.save({"a": 1}, source)
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as dst:
        for member in src.namelist():
            dst.writestr(member, data_pkl if member.endswith("/data.pkl") else src.read(member))
    return target


def state_dict_with(entry: bytes) -> bytes:
    """Protocol-2 opcodes for {"state_dict": {}, "x": <entry>}."""
    return (b"\x80\x02}(X\x0a\x00\x00\x00state_dict}X\x01\x00\x00\x00x" + entry + b"u.")


# --- shared objects stay shared --------------------------------------------------

def test_shared_nested_hyper_parameters_load_in_bounded_time(tmp_path):
    """40 levels of shared sublists: a 1.6 KB file; copying them would be 2**40 lists."""
    path = tmp_path / "nested.ckpt"
    torch.save({"state_dict": {MARKER: torch.zeros(4, 5)},
                "hyper_parameters": {"x": shared_nested_list(40)}}, path)
    assert path.stat().st_size < 4096
    with at_most(10):
        ckpt = load_lightning_checkpoint(path)
    x = ckpt.hyper_parameters["x"]
    for _ in range(40):  # the converted hyper-parameters share their sublists as the pickle did
        assert x[0] is x[1]
        x = x[0]
    assert x == []


def test_shared_nested_hyper_parameter_is_reported_in_bounded_time(tmp_path):
    """msdm import-checkpoint on such a file: one short error, not minutes and gigabytes."""
    path = tmp_path / "nested-multipliers.ckpt"
    torch.save({"state_dict": {MARKER: torch.zeros(4, 5)},
                "hyper_parameters": {"multipliers": [shared_nested_list(40)]}}, path)
    with at_most(10), pytest.raises(ModelFileError, match="multipliers") as info:
        import_checkpoint(path, tmp_path / "out.safetensors")
    assert len(str(info.value)) < 1000
    assert not (tmp_path / "out.safetensors").exists()


# 22 levels (4 million values when walked) are already far past the limit; at 40
# the code before the limit spent hours in C (==, repr), where no alarm interrupts it.
@pytest.mark.parametrize("hyper_parameters, name", [
    # Two equal but distinct shared structures: `out_channels != in_channels` compares them whole.
    ({"out_channels": shared_nested_list(22), "in_channels": shared_nested_list(22)}, "out_channels"),
    # A checkpoint of `msdm train` carries its ModelConfig, which is validated and quoted whole.
    ({"config": {"unet": {"multipliers": shared_nested_list(22)}}}, "config"),
    ({"config": {"unet": {}, "stems": shared_nested_list(22)}}, "config"),
])
def test_configuration_values_too_large_to_walk_are_refused(tmp_path, hyper_parameters, name):
    path = tmp_path / "config.ckpt"
    torch.save({"state_dict": {MARKER: torch.zeros(4, 5)}, "hyper_parameters": hyper_parameters}, path)
    with at_most(10), pytest.raises(ModelFileError, match=f"hyper-parameter {name} holds more than"):
        import_checkpoint(path, tmp_path / "out.safetensors")


def test_an_invalid_training_configuration_is_a_model_file_error(tmp_path):
    path = tmp_path / "config.ckpt"
    torch.save({"state_dict": {MARKER: torch.zeros(4, 5)},
                "hyper_parameters": {"config": {"unet": {"multipliers": [1, 2]}}}}, path)
    with pytest.raises(ModelFileError, match="config.ckpt: its configuration is not valid"):
        import_checkpoint(path, tmp_path / "out.safetensors")


def shared_nested_tuple_ops(depth: int) -> bytes:
    """Opcodes for t = (t, t) repeated `depth` times from None, each level memoized."""
    ops = b"N"
    for level in range(depth):
        ops += b"q" + bytes([level]) + b"h" + bytes([level]) + b"\x86"  # BINPUT, BINGET, TUPLE2
    return ops


def shared_nested_list_ops(depth: int) -> bytes:
    """Opcodes for x = [x, x] repeated `depth` times from [], each level memoized."""
    ops = b"]"
    for level in range(depth):
        ops += b"q" + bytes([level]) + b"0(" + b"h" + bytes([level]) + b"h" + bytes([level]) + b"l"
    return ops


def test_dict_keys_too_deep_to_hash_are_refused(tmp_path):
    """A tuple of shared tuples: hashing it as a dict key walks 2**depth values, in C
    (no alarm interrupts it). 26 levels take ~1 s to hash here; 60 would take centuries."""
    path = with_pickle(tmp_path, "hash.ckpt", state_dict_with(b"}" + shared_nested_tuple_ops(26) + b"K\x01s"))
    with at_most(10), pytest.raises(CheckpointBudgetError, match="too deeply to hash"):
        load_lightning_checkpoint(path)


# --- data the pickle makes itself ------------------------------------------------

def test_a_2_gb_bytearray_from_a_tiny_pickle_is_refused_before_it_is_built(tmp_path):
    entry = b"c__builtin__\nbytearray\nJ" + (2_000_000_000).to_bytes(4, "little") + b"\x85R"
    path = with_pickle(tmp_path, "bytearray.ckpt", state_dict_with(entry))
    assert path.stat().st_size < 1024
    start = time.monotonic()
    with pytest.raises(CheckpointBudgetError) as info:
        load_lightning_checkpoint(path)
    message = str(info.value)
    assert "bytearray.ckpt" in message and "2,000,000,000 bytes" in message and "max_bytes" in message
    assert time.monotonic() - start < 2


@pytest.mark.parametrize("entry, what", [
    # BYTEARRAY8 declaring 2 GB and holding 4 bytes: pickle allocates the declared size first.
    (b"\x96" + (2_000_000_000).to_bytes(8, "little") + b"abcd", "bytearray"),
    (b"\x8e" + (2_000_000_000).to_bytes(8, "little") + b"abcd", "bytes object"),
    # torch.Tensor(1_000_000_000): 4 GB of float32 from an allowed class.
    (b"ctorch\nTensor\nJ" + (1_000_000_000).to_bytes(4, "little") + b"\x85R", "torch"),
])
def test_other_allocations_by_size_are_refused(tmp_path, entry, what):
    path = with_pickle(tmp_path, "alloc.ckpt", state_dict_with(entry))
    with at_most(5), pytest.raises(CheckpointBudgetError, match=f"{what}.*max_bytes"):
        load_lightning_checkpoint(path)


def test_a_container_turned_into_text_is_refused(tmp_path):
    """str() of 40 levels of shared lists would write 2**40 brackets."""
    entry = b"c__builtin__\nstr\n" + shared_nested_list_ops(40) + b"\x85R"
    path = with_pickle(tmp_path, "str.ckpt", state_dict_with(entry))
    with at_most(10), pytest.raises(ModelFileError, match="container to text"):
        load_lightning_checkpoint(path)


# --- the budget is settable ------------------------------------------------------

def test_budget_limits_can_be_set(tmp_path):
    path = tmp_path / "small.ckpt"
    torch.save({"state_dict": {MARKER: torch.zeros(4, 5), "b": torch.zeros(100)},
                "hyper_parameters": {"lr": 1e-4, "names": ["a"] * 50}}, path)
    ckpt = load_lightning_checkpoint(path)  # the defaults hold it
    assert set(ckpt.state_dict) == {MARKER, "b"}
    with pytest.raises(CheckpointBudgetError, match="max_nodes"):
        load_lightning_checkpoint(path, budget=PickleBudget(max_nodes=30))
    with pytest.raises(CheckpointBudgetError, match="max_storage_bytes"):
        load_lightning_checkpoint(path, budget=PickleBudget(max_storage_bytes=300))  # 480 bytes of tensors
    with pytest.raises(CheckpointBudgetError, match="max_bytes"):
        load_lightning_checkpoint(path, budget=PickleBudget(max_bytes=20))
    assert set(load_lightning_checkpoint(path, budget=PickleBudget(max_storage_bytes=480)).state_dict) \
        == {MARKER, "b"}
