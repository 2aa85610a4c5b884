"""A pickle loader that reads weights and plain data and runs nothing.

Used by `torch.load(..., pickle_module=restricted_pickle)` for the paper's
PyTorch Lightning checkpoints (engine.storage.lightning_import). `RestrictedUnpickler`:

* returns the real object only for an allow-list of torch tensor/storage
  rebuild functions, dtypes and plain containers;
* returns an inert stand-in (`PickledStandIn`: a dict subclass that records its
  constructor arguments and state and runs nothing) for the classes of the
  packages a Lightning checkpoint legitimately references
  (audio_diffusion_pytorch, pytorch_lightning, lightning, omegaconf, the
  paper's `main` module, numpy, ...): no code of theirs is imported or run;
* refuses everything else (os.system, builtins.eval, subprocess, ...) with
  `UnsafeCheckpointError`, before anything is called;
* also checks the targets of the pickle opcodes that call methods (REDUCE,
  NEWOBJ, BUILD, APPEND, SETITEM, ...) so that even allowed objects cannot be
  used to mutate classes or call methods behind the allow-list's back;
* works within a budget (`PickleBudget`): the objects it builds, the bytes the
  pickle itself makes (strings, bytes, bytearrays, tensors allocated by a
  constructor) and the tensor storages it reads from the archive are counted
  before they are made; past a limit it stops with `CheckpointBudgetError`.
  Shared objects stay shared (the memo hands out references, never copies).

Why not torch's own `torch.load(weights_only=True)` with the stand-ins
registered (`torch.serialization.add_safe_globals`)? Measured on torch 2.13
(issue 14, finding 4) with the two payloads of tests/test_pickle_budget.py:

* a 1.6 KB checkpoint whose hyper-parameters are a list of 40 levels of shared
  sublists (`x = [x, x]`): weights_only loads it in 0.0 s, sharing the
  sublists, so unpickling was never the problem; the copies were made later,
  by our own walk of the hyper-parameters (lightning_import._plain), now
  memoised;
* an 0.8 KB checkpoint whose pickle calls `builtins.bytearray(2_000_000_000)`:
  weights_only allows `builtins.bytearray` and builds the 2 GB object (2.4 s,
  2.1 GB peak memory), with no limit to set;
* `add_safe_globals` takes exact names, while the stand-ins here cover whole
  packages (a Lightning checkpoint names classes of its authors' versions of
  audio_diffusion_pytorch, omegaconf, ...), and it offers no way to check what
  BUILD/APPEND/SETITEM act on.

So torch's loader would bound neither case by itself; the budget is ours.
"""

from __future__ import annotations

import _compat_pickle
import collections
import io
import math
import pickle
import sys
import types
from dataclasses import dataclass
from struct import unpack
from typing import Any

import torch

from engine.errors import ModelFileError
from engine.storage.pickle_allowlist import (  # noqa: F401 - re-exported
    RefusedGlobal,
    BudgetExceeded,
    PickledStandIn,
    stand_in_class,
    STAND_IN_PACKAGES,
    STAND_IN_GLOBALS,
    _CODE_MODULES,
    _CODE_BUILTINS,
    _ALLOWED,
    _TENSOR_REBUILDERS,
    _CALLABLE_IDS,
    _CLASS_IDS,
    _is_stand_in_class,
    _describe,
    short_repr,
    _check_keys,
)

class UnsafeCheckpointError(ModelFileError):
    """A checkpoint whose pickle references code outside the allow-list."""


class CheckpointBudgetError(ModelFileError):
    """A checkpoint whose pickle would build more objects or bytes than its budget allows."""


@dataclass(frozen=True)
class PickleBudget:
    """What one checkpoint's pickle may build. The defaults hold the paper's
    checkpoints with room to spare: 405.5M float32 parameters are 1.6 GB of
    storages (4.9 GB with Adam's two moment buffers in `optimizer_states`); a
    tensor takes ~30 opcodes (a checkpoint of 3,000 parameters with Adam's
    state, 12,000 tensors, runs 357,000); the hyper-parameters are a few
    kilobytes. Raise them for a trusted file that is larger."""

    # Pickle opcodes run, plus the items of containers that allowed constructors build.
    max_nodes: int = 5_000_000
    # Bytes the pickle itself makes: str/bytes/bytearray data, and tensors or
    # storages that a constructor call allocates (bytearray(n), torch.Tensor(n), ...).
    max_bytes: int = 256 << 20
    # Tensor data read from the archive's records (each storage counted once).
    max_storage_bytes: int = 32 << 30


DEFAULT_BUDGET = PickleBudget()


# ---------------------------------------------------------------------------
# Restricted unpickling
# ---------------------------------------------------------------------------

class RestrictedUnpickler(pickle._Unpickler):
    """A pure-Python unpickler that resolves globals only from the allow-list
    (or to inert stand-ins) and checks what the calling opcodes act on.

    Pure Python (pickle._Unpickler) so that BUILD/APPEND/SETITEM/... can be
    checked too, not only GLOBAL; checkpoints keep tensor data outside the
    pickle, so its speed does not matter.
    """

    dispatch = dict(pickle._Unpickler.dispatch)
    budget: PickleBudget = DEFAULT_BUDGET  # restricted_pickle_module(budget) makes a subclass with another

    def __init__(self, file: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(file, *args, **kwargs)
        self.nodes = 0          # opcodes run + items of containers built by calls
        self.data_bytes = 0     # str/bytes/bytearray data and allocations made by the pickle
        self.storage_bytes = 0  # tensor data read from the archive
        self._storage_keys: set = set()
        self._archive_loader: Any = None

    # --- the budget -------------------------------------------------------

    def _charge_nodes(self, count: int) -> None:
        self.nodes += count
        if self.nodes > self.budget.max_nodes:
            raise BudgetExceeded(f"its pickle builds more than {self.budget.max_nodes:,} objects "
                                 f"(PickleBudget.max_nodes)")

    def _charge_bytes(self, count: int, what: str) -> None:
        self.data_bytes += count
        if self.data_bytes > self.budget.max_bytes:
            raise BudgetExceeded(f"its pickle makes {what} of {count:,} bytes, past the limit of "
                                 f"{self.budget.max_bytes:,} bytes of data made by the pickle itself "
                                 f"(PickleBudget.max_bytes)")

    def _read_length(self, fmt: str, what: str) -> int:
        (length,) = unpack(fmt, self.read(8 if fmt.endswith("Q") else 4))
        if length < 0:
            raise pickle.UnpicklingError(f"{what} with a negative length")
        self._charge_bytes(length, what)  # before reading: BYTEARRAY8 allocates the declared size first
        return length

    def load_binbytes(self) -> None:
        self.append(self.read(self._read_length("<I", "a bytes object")))

    def load_binbytes8(self) -> None:
        self.append(self.read(self._read_length("<Q", "a bytes object")))

    def load_binunicode(self) -> None:
        self.append(str(self.read(self._read_length("<I", "a string")), "utf-8", "surrogatepass"))

    def load_binunicode8(self) -> None:
        self.append(str(self.read(self._read_length("<Q", "a string")), "utf-8", "surrogatepass"))

    def load_binstring(self) -> None:
        self.append(self._decode_string(self.read(self._read_length("<i", "a string"))))

    def load_bytearray8(self) -> None:
        data = bytearray(self._read_length("<Q", "a bytearray"))
        self.readinto(data)
        self.append(data)

    for _op, _load in ((pickle.BINBYTES, load_binbytes), (pickle.BINBYTES8, load_binbytes8),
                       (pickle.BINUNICODE, load_binunicode), (pickle.BINUNICODE8, load_binunicode8),
                       (pickle.BINSTRING, load_binstring), (pickle.BYTEARRAY8, load_bytearray8)):
        dispatch[_op[0]] = _load
    del _op, _load

    def _charge_call(self, func: Any, args: tuple) -> bool:
        """Charge what an allowed constructor will allocate from a size argument,
        before it runs (bytearray(2_000_000_000) is 20 bytes of pickle)."""
        if func is str and args and isinstance(args[0], (dict, list, tuple, set, frozenset)):
            raise RefusedGlobal("it converts a container to text (builtins.str), which only plain values need")
        if func in (set, frozenset, dict, collections.OrderedDict, collections.Counter) and args \
                and isinstance(args[0], (list, tuple)):
            _check_keys(item[0] if func not in (set, frozenset) and isinstance(item, (tuple, list)) and item else item
                        for item in args[0])
        if func is not torch.Tensor and func not in (bytes, bytearray, torch.UntypedStorage):
            return False
        dims = args
        if func in (torch.Tensor, torch.UntypedStorage) and len(args) == 1 and isinstance(args[0], (tuple, list)):
            dims = tuple(args[0])
        if not dims or not all(isinstance(d, int) and not isinstance(d, bool) for d in dims):
            return False  # built from data the pickle holds, charged when that was read
        unit = torch.get_default_dtype().itemsize if func is torch.Tensor else 1
        self._charge_bytes(math.prod(max(d, 0) for d in dims) * unit, f"{_describe(func)}{short_repr(dims, 60)}")
        return True

    def _charge_result(self, result: Any, charged: bool) -> None:
        if isinstance(result, (str, bytes, bytearray)):
            if not charged:
                self._charge_bytes(len(result), f"a {type(result).__name__}")
        elif isinstance(result, (list, tuple, dict, set, frozenset)):
            self._charge_nodes(len(result))

    def _call(self, func: Any, args: tuple, kwargs: dict | None = None, new: bool = False) -> Any:
        charged = self._charge_call(func, args)
        result = func.__new__(func, *args, **(kwargs or {})) if new else func(*args)
        self._charge_result(result, charged)
        return result

    # torch sets `unpickler.persistent_load = its storage loader`: keep it and
    # charge each storage's declared size before the loader reads it.
    @property
    def persistent_load(self) -> Any:
        return self._load_persistent

    @persistent_load.setter
    def persistent_load(self, loader: Any) -> None:
        self._archive_loader = loader

    def _load_persistent(self, pid: Any) -> Any:
        if self._archive_loader is None:
            raise pickle.UnpicklingError("the pickle refers to data outside it (a persistent id), which a "
                                         "plain pickle cannot hold")
        if isinstance(pid, tuple) and len(pid) == 5 and isinstance(pid[4], int) and pid[2] not in self._storage_keys:
            storage_type = pid[1]
            dtype = getattr(storage_type, "dtype", torch.uint8)
            itemsize = dtype.itemsize if isinstance(dtype, torch.dtype) else 1
            nbytes = max(pid[4], 0) * itemsize
            self.storage_bytes += nbytes
            if self.storage_bytes > self.budget.max_storage_bytes:
                raise BudgetExceeded(f"its tensors hold more than {self.budget.max_storage_bytes:,} bytes "
                                     f"(PickleBudget.max_storage_bytes)")
            self._storage_keys.add(pid[2])
        return self._archive_loader(pid)

    def find_class(self, module: str, name: str) -> Any:
        if not isinstance(module, str) or not isinstance(name, str):
            raise RefusedGlobal(f"it references a global named by non-strings {short_repr((module, name))}")
        if self.proto < 3 and self.fix_imports:
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        sys.audit("pickle.find_class", module, name)
        full = f"{module}.{name}"
        if full in _ALLOWED:
            return _ALLOWED[full]
        if module.split(".", 1)[0] in STAND_IN_PACKAGES or (module, name) in STAND_IN_GLOBALS:
            return stand_in_class(module, name)
        raise RefusedGlobal(f"it references {_display_global(full)}, {_refusal_reason(module, name)}")

    # --- opcodes that call something: check the callee --------------------

    def _check_callable(self, func: Any, args: tuple) -> None:
        if _is_stand_in_class(func):
            return
        if id(func) not in _CALLABLE_IDS:
            raise RefusedGlobal(f"it calls {_describe(func)}, which is not an allowed function")
        if func is torch._tensor._rebuild_from_type_v2:
            if (len(args) < 3 or id(args[0]) not in _TENSOR_REBUILDERS
                    or args[1] not in (torch.Tensor, torch.nn.Parameter)):
                raise RefusedGlobal("it rebuilds a tensor of a type other than Tensor or Parameter "
                               "(torch._tensor._rebuild_from_type_v2)")

    def load_reduce(self) -> None:
        stack = self.stack
        args = stack.pop()
        func = stack[-1]
        if not isinstance(args, tuple):
            raise pickle.UnpicklingError("REDUCE arguments must be a tuple")
        self._check_callable(func, args)
        stack[-1] = self._call(func, args)

    dispatch[pickle.REDUCE[0]] = load_reduce

    def _instantiate(self, klass: Any, args: list) -> None:
        self._check_callable(klass, tuple(args))
        self.append(self._call(klass, tuple(args)))

    def _check_class(self, cls: Any) -> None:
        if not (_is_stand_in_class(cls) or (isinstance(cls, type) and id(cls) in _CLASS_IDS)):
            raise RefusedGlobal(f"it creates an object of {_describe(cls)}, which is not an allowed class")

    def load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        self._check_class(cls)
        if not isinstance(args, tuple):
            raise pickle.UnpicklingError("NEWOBJ arguments must be a tuple")
        self.append(self._call(cls, args, new=True))

    dispatch[pickle.NEWOBJ[0]] = load_newobj

    def load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self._check_class(cls)
        if not isinstance(args, tuple) or not isinstance(kwargs, dict):
            raise pickle.UnpicklingError("NEWOBJ_EX arguments must be a tuple and a dict")
        self.append(self._call(cls, args, kwargs, new=True))

    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex

    # --- opcodes that call methods of an object: check the object ---------

    def load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, PickledStandIn):
            inst.__setstate__(state)
        elif isinstance(inst, torch.Tensor):  # Tensor or Parameter: their own __setstate__
            inst.__setstate__(state)
        elif type(inst) in (collections.OrderedDict, collections.Counter):
            if state is not None:
                if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
                    raise pickle.UnpicklingError("invalid state for an OrderedDict")
                inst.__dict__.update(state)
        else:
            raise RefusedGlobal(f"it sets attributes of {_describe(inst)}, which only tensors and data objects "
                           f"may receive (a way to tamper with code)")

    dispatch[pickle.BUILD[0]] = load_build

    def _list_target(self, obj: Any) -> list:
        if isinstance(obj, PickledStandIn):
            return obj.pickled_items
        if type(obj) is list:
            return obj
        raise RefusedGlobal(f"it appends to {_describe(obj)}, which is not a list")

    def load_append(self) -> None:
        value = self.stack.pop()
        self._list_target(self.stack[-1]).append(value)

    dispatch[pickle.APPEND[0]] = load_append

    def load_appends(self) -> None:
        items = self.pop_mark()
        self._list_target(self.stack[-1]).extend(items)

    dispatch[pickle.APPENDS[0]] = load_appends

    def _dict_target(self, obj: Any) -> dict:
        if type(obj) in (dict, collections.OrderedDict, collections.Counter) or isinstance(obj, PickledStandIn):
            return obj
        raise RefusedGlobal(f"it sets items of {_describe(obj)}, which is not a dict")

    def load_setitem(self) -> None:
        value = self.stack.pop()
        key = self.stack.pop()
        _check_keys((key,))
        self._dict_target(self.stack[-1])[key] = value

    dispatch[pickle.SETITEM[0]] = load_setitem

    def load_setitems(self) -> None:
        items = self.pop_mark()
        target = self._dict_target(self.stack[-1])
        _check_keys(items[::2])
        for i in range(0, len(items), 2):
            target[items[i]] = items[i + 1]

    dispatch[pickle.SETITEMS[0]] = load_setitems

    def load_additems(self) -> None:
        items = self.pop_mark()
        target = self.stack[-1]
        if type(target) is not set:
            raise RefusedGlobal(f"it adds items to {_describe(target)}, which is not a set")
        _check_keys(items)
        target.update(items)

    dispatch[pickle.ADDITEMS[0]] = load_additems

    def load_frozenset(self) -> None:
        items = self.pop_mark()
        _check_keys(items)
        self.append(frozenset(items))

    dispatch[pickle.FROZENSET[0]] = load_frozenset

    def _refuse_extension(self) -> None:
        raise RefusedGlobal("it references a global through the copyreg extension registry")

    for _op in (pickle.EXT1, pickle.EXT2, pickle.EXT4):
        dispatch[_op[0]] = _refuse_extension
    del _op


def _counted(load: Any) -> Any:
    def counted(self: RestrictedUnpickler) -> None:
        self.nodes += 1
        if self.nodes > self.budget.max_nodes:
            self._charge_nodes(0)
        load(self)
    counted.__name__ = getattr(load, "__name__", "load")
    return counted


# Every opcode counts towards PickleBudget.max_nodes.
RestrictedUnpickler.dispatch = {code: _counted(load) for code, load in RestrictedUnpickler.dispatch.items()}


def _refusal_reason(module: str, name: str) -> str:
    root = module.split(".", 1)[0]
    if root in _CODE_MODULES or (root == "builtins" and name in _CODE_BUILTINS):
        return "which would execute code"
    if root == "torch":
        return ("which is not one of the tensor/storage types a weights file needs "
                "(a pickled torch.nn.Module or a torch function can run code)")
    return "which is not on the list of objects a checkpoint may contain (unpickling it could run arbitrary code)"


def restricted_pickle_module(budget: PickleBudget = DEFAULT_BUDGET) -> types.ModuleType:
    """The `pickle_module` handed to torch.load: torch uses its `Unpickler` (zip
    archives) and `load` (legacy files, which we do not pass to it anyway)."""
    unpickler = RestrictedUnpickler if budget == DEFAULT_BUDGET else type(
        "RestrictedUnpickler", (RestrictedUnpickler,), {"budget": budget, "__module__": __name__})

    def load(file: Any, **kwargs: Any) -> Any:
        return unpickler(file, **kwargs).load()

    def loads(data: bytes, **kwargs: Any) -> Any:
        return unpickler(io.BytesIO(data), **kwargs).load()

    module = types.ModuleType("msdm_restricted_pickle", "pickle, restricted to weights and plain data")
    module.Unpickler = unpickler
    module.load = load
    module.loads = loads
    module.UnpicklingError = pickle.UnpicklingError
    module.__version__ = "1"
    return module


restricted_pickle = restricted_pickle_module()


def _display_global(what: str) -> str:
    module, _, name = what.partition(".")
    if module in ("posix", "nt") and name:
        return f"os.{name} ({what})"
    if module == "builtins" and name:
        return f"builtins.{name}"
    return what
