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
import functools
import io
import math
import pickle
import reprlib
import sys
import types
from dataclasses import dataclass
from struct import unpack
from typing import Any

import torch

from engine.errors import ModelFileError

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

class RefusedGlobal(pickle.UnpicklingError):
    """Raised inside the unpickler; turned into UnsafeCheckpointError with the file name.
    `clause` says what the pickle tried, e.g. "it references os.system, which would execute code"."""

    def __init__(self, clause: str) -> None:
        super().__init__(clause)
        self.clause = clause


class BudgetExceeded(pickle.UnpicklingError):
    """Raised inside the unpickler; turned into CheckpointBudgetError with the file name."""

    def __init__(self, clause: str) -> None:
        super().__init__(clause)
        self.clause = clause


class PickledStandIn(dict):
    """An inert stand-in for a class or function that a checkpoint references.

    Created per global (`stand_in_class(module, name)`); calling it, or the
    pickle creating an instance of it, only records the arguments; `__setstate__`
    only records the state. It is a dict so that Lightning's `AttributeDict`
    (a dict subclass) keeps its items.
    """

    __slots__ = ("pickled_args", "pickled_kwargs", "pickled_state", "pickled_items")
    pickled_global: str = "?"
    __hash__ = object.__hash__  # usable as a dict key like the object it replaces

    def __new__(cls, *args: Any, **kwargs: Any) -> "PickledStandIn":
        self = super().__new__(cls)
        self.pickled_args = args
        self.pickled_kwargs = kwargs
        self.pickled_state = None
        self.pickled_items = []
        return self

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # noqa: D401 - records only (see __new__)
        pass

    def __setstate__(self, state: Any) -> None:
        self.pickled_state = state

    @property
    def attributes(self) -> dict:
        """The object's attribute dict as pickled (its `__dict__` and slots)."""
        state = self.pickled_state
        result: dict = {}
        if isinstance(state, tuple) and len(state) == 2 and all(s is None or isinstance(s, dict) for s in state):
            for part in state:
                result.update(part or {})
        elif isinstance(state, dict):
            result.update(state)
        return result

    def __repr__(self) -> str:
        # Bounded (depth and items): a pickle's shared sublists would make a full repr exponential.
        return _SHORT.repr1(self, _SHORT.maxlevel)


@functools.lru_cache(maxsize=4096)
def stand_in_class(module: str, name: str) -> type:
    """The (cached) stand-in class for the global `module.name`; imports nothing."""
    qualname = name.rsplit(".", 1)[-1] or "Unknown"
    return type(
        qualname,
        (PickledStandIn,),
        {"__slots__": (), "__module__": module, "__qualname__": name,
         "pickled_global": f"{module}.{name}", "dump_patches": False},
    )


# Packages whose classes a Lightning checkpoint of the paper references (the
# model's hyper-parameters, Lightning's AttributeDict, hydra/omegaconf configs,
# the datamodule's datasets with their numpy arrays and paths). They become
# stand-ins: nothing of theirs is imported or executed.
STAND_IN_PACKAGES = frozenset({
    "audio_diffusion_pytorch", "pytorch_lightning", "lightning", "lightning_fabric",
    "omegaconf", "main",
    # Inert data that Lightning/hydra checkpoints carry along.
    "numpy", "pathlib", "argparse", "typing",
})
# Single globals that become stand-ins (omegaconf metadata pickles `Dict[str, Any]`
# as operator.getitem(typing.Dict, ...)).
STAND_IN_GLOBALS = frozenset({("operator", "getitem")})

# Modules and builtins that exist to run code: named as such in the refusal.
_CODE_MODULES = frozenset({
    "os", "posix", "nt", "subprocess", "sys", "runpy", "importlib", "pickle", "_pickle",
    "shutil", "socket", "ctypes", "code", "codeop", "pty", "webbrowser", "marshal",
    "multiprocessing", "asyncio", "threading", "_thread", "signal", "platform", "pdb",
    "timeit", "trace", "cProfile", "profile", "commands", "popen2", "imp", "zipimport",
})
_CODE_BUILTINS = frozenset({
    "eval", "exec", "compile", "__import__", "getattr", "setattr", "delattr", "open",
    "input", "breakpoint", "globals", "locals", "vars", "exit", "quit", "help", "type",
    "memoryview", "__build_class__", "classmethod", "staticmethod", "super", "print",
})


def _encode_latin1(text: str, encoding: str = "latin1") -> bytes:
    """`_codecs.encode` as protocol-2 pickles use it for bytes (latin-1 only)."""
    if not isinstance(text, str) or encoding.replace("-", "").replace("_", "").lower() not in ("latin1", "iso88591"):
        raise RefusedGlobal(f"it encodes data with the codec {short_repr(encoding)} (pickled bytes only use latin-1)")
    return text.encode("latin-1")


def _plain_dict(default_factory: Any = None, *args: Any) -> dict:
    """collections.defaultdict without its factory (a factory is a call waiting to happen)."""
    return {}


def _allowed_globals() -> dict[str, Any]:
    """The real objects a checkpoint may reference, by `module.name` (as pickled)."""
    u = torch._utils
    allowed: dict[str, Any] = {
        "collections.OrderedDict": collections.OrderedDict,
        "collections.Counter": collections.Counter,
        "collections.defaultdict": _plain_dict,
        "_codecs.encode": _encode_latin1,
        "torch.Size": torch.Size,
        "torch.device": torch.device,
        "torch.Tensor": torch.Tensor,
        "torch._tensor.Tensor": torch.Tensor,
        "torch.nn.parameter.Parameter": torch.nn.Parameter,
        "torch.serialization._get_layout": torch.serialization._get_layout,
        "torch.storage.UntypedStorage": torch.UntypedStorage,
        "torch.UntypedStorage": torch.UntypedStorage,
        "torch._utils._rebuild_tensor": u._rebuild_tensor,
        "torch._utils._rebuild_tensor_v2": u._rebuild_tensor_v2,
        "torch._utils._rebuild_tensor_v3": u._rebuild_tensor_v3,
        "torch._utils._rebuild_parameter": u._rebuild_parameter,
        "torch._utils._rebuild_parameter_with_state": u._rebuild_parameter_with_state,
        "torch._tensor._rebuild_from_type_v2": torch._tensor._rebuild_from_type_v2,
    }
    # Plain data types (omegaconf metadata references some as type annotations).
    for t in (list, dict, tuple, set, frozenset, int, float, complex, str, bytes, bytearray,
              bool, slice, object, type(None)):
        allowed[f"builtins.{t.__name__}"] = t
    # dtypes, layouts, memory formats and qschemes pickle as e.g. `torch.float32`.
    for key, value in vars(torch).items():
        if isinstance(value, (torch.dtype, torch.layout, torch.memory_format, torch.qscheme)):
            allowed[f"torch.{key}"] = value
    return allowed


_ALLOWED = _allowed_globals()
_TENSOR_REBUILDERS = frozenset(
    id(f) for f in (torch._utils._rebuild_tensor, torch._utils._rebuild_tensor_v2,
                    torch._utils._rebuild_tensor_v3, torch._utils._rebuild_parameter,
                    torch._utils._rebuild_parameter_with_state)
)
_CALLABLE_IDS = frozenset(id(v) for v in _ALLOWED.values() if callable(v))
_CLASS_IDS = frozenset(id(v) for v in _ALLOWED.values() if isinstance(v, type))


def _is_stand_in_class(obj: Any) -> bool:
    return isinstance(obj, type) and issubclass(obj, PickledStandIn)


def _describe(obj: Any) -> str:
    if isinstance(obj, type) or callable(obj):
        return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__name__)}"
    return f"a {type(obj).__name__}"


class _ShortRepr(reprlib.Repr):
    """reprlib with limits on depth and items for everything a pickle can build:
    stand-ins, dict/list subclasses, tensors and huge ints are shown without
    walking them whole (a shared structure would make a plain repr exponential)."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel = 4
        self.maxlist = self.maxtuple = self.maxdict = self.maxset = self.maxfrozenset = self.maxdeque = 8
        self.maxstring = self.maxother = 120

    def repr1(self, x: Any, level: int) -> str:
        if isinstance(x, PickledStandIn):
            if level <= 0:
                return f"<stand-in for {x.pickled_global} ...>"
            parts = [f"{name}={self.repr1(value, level - 1)}" for name, value in (
                ("args", x.pickled_args), ("kwargs", x.pickled_kwargs), ("state", x.pickled_state))
                if value not in (None, (), {})]
            if len(x):
                parts.append(f"items={self.repr_dict(x, level)}")
            return f"<stand-in for {x.pickled_global}{': ' if parts else ''}{', '.join(parts)}>"
        if isinstance(x, torch.Tensor):
            return f"tensor(shape={list(x.shape)}, dtype={x.dtype})"
        if type(x) is int and x.bit_length() > 256:
            return f"<int of {x.bit_length()} bits>"
        if type(x) in (dict, list, tuple, set, frozenset, str, bytes, int, float, bool, type(None)):
            return super().repr1(x, level)
        if isinstance(x, dict):
            return f"{type(x).__name__}({self.repr_dict(x, level)})"
        if isinstance(x, (list, tuple)):
            return f"{type(x).__name__}({self.repr_list(list(x), level)})"
        return super().repr1(x, level)


_SHORT = _ShortRepr()


def short_repr(value: Any, limit: int = 120) -> str:
    """repr of `value`, at most `limit` characters, made without walking all of a large value."""
    text = _SHORT.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# A dict key or set item is hashed when inserted; a tuple's hash walks it whole,
# so tuples of shared tuples would be exponential to hash. Values per key, with repetition:
MAX_KEY_VALUES = 10_000


def _hash_cost_ok(value: Any) -> bool:
    stack, count = [value], 0
    while stack:
        item = stack.pop()
        count += 1
        if count > MAX_KEY_VALUES:
            return False
        if isinstance(item, tuple):
            stack.extend(item)
    return True


def _check_keys(keys: Any) -> None:
    for key in keys:
        if isinstance(key, tuple) and not _hash_cost_ok(key):
            raise BudgetExceeded(f"it uses a dict key or set item nested too deeply to hash (more than "
                                 f"{MAX_KEY_VALUES:,} values)")


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
