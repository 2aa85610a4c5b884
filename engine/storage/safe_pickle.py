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
  used to mutate classes or call methods behind the allow-list's back.
"""

from __future__ import annotations

import _compat_pickle
import collections
import functools
import io
import pickle
import reprlib
import sys
import types
from typing import Any

import torch

from engine.errors import ModelFileError

class UnsafeCheckpointError(ModelFileError):
    """A checkpoint whose pickle references code outside the allow-list."""


# ---------------------------------------------------------------------------
# Restricted unpickling
# ---------------------------------------------------------------------------

class RefusedGlobal(pickle.UnpicklingError):
    """Raised inside the unpickler; turned into UnsafeCheckpointError with the file name.
    `clause` says what the pickle tried, e.g. "it references os.system, which would execute code"."""

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

    @reprlib.recursive_repr()
    def __repr__(self) -> str:
        parts = []
        if self.pickled_args:
            parts.append(f"args={self.pickled_args!r}")
        if self.pickled_kwargs:
            parts.append(f"kwargs={self.pickled_kwargs!r}")
        if self.pickled_state is not None:
            parts.append(f"state={self.pickled_state!r}")
        if len(self):
            parts.append(f"items={dict(self)!r}")
        return f"<stand-in for {self.pickled_global}{': ' if parts else ''}{', '.join(parts)}>"


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


def short_repr(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class RestrictedUnpickler(pickle._Unpickler):
    """A pure-Python unpickler that resolves globals only from the allow-list
    (or to inert stand-ins) and checks what the calling opcodes act on.

    Pure Python (pickle._Unpickler) so that BUILD/APPEND/SETITEM/... can be
    checked too, not only GLOBAL; checkpoints keep tensor data outside the
    pickle, so its speed does not matter.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

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
        stack[-1] = func(*args)

    dispatch[pickle.REDUCE[0]] = load_reduce

    def _instantiate(self, klass: Any, args: list) -> None:
        self._check_callable(klass, tuple(args))
        super()._instantiate(klass, args)

    def _check_class(self, cls: Any) -> None:
        if not (_is_stand_in_class(cls) or (isinstance(cls, type) and id(cls) in _CLASS_IDS)):
            raise RefusedGlobal(f"it creates an object of {_describe(cls)}, which is not an allowed class")

    def load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        self._check_class(cls)
        if not isinstance(args, tuple):
            raise pickle.UnpicklingError("NEWOBJ arguments must be a tuple")
        self.append(cls.__new__(cls, *args))

    dispatch[pickle.NEWOBJ[0]] = load_newobj

    def load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self._check_class(cls)
        if not isinstance(args, tuple) or not isinstance(kwargs, dict):
            raise pickle.UnpicklingError("NEWOBJ_EX arguments must be a tuple and a dict")
        self.append(cls.__new__(cls, *args, **kwargs))

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
        self._dict_target(self.stack[-1])[key] = value

    dispatch[pickle.SETITEM[0]] = load_setitem

    def load_setitems(self) -> None:
        items = self.pop_mark()
        target = self._dict_target(self.stack[-1])
        for i in range(0, len(items), 2):
            target[items[i]] = items[i + 1]

    dispatch[pickle.SETITEMS[0]] = load_setitems

    def load_additems(self) -> None:
        items = self.pop_mark()
        target = self.stack[-1]
        if type(target) is not set:
            raise RefusedGlobal(f"it adds items to {_describe(target)}, which is not a set")
        target.update(items)

    dispatch[pickle.ADDITEMS[0]] = load_additems

    def _refuse_extension(self) -> None:
        raise RefusedGlobal("it references a global through the copyreg extension registry")

    for _op in (pickle.EXT1, pickle.EXT2, pickle.EXT4):
        dispatch[_op[0]] = _refuse_extension
    del _op


def _refusal_reason(module: str, name: str) -> str:
    root = module.split(".", 1)[0]
    if root in _CODE_MODULES or (root == "builtins" and name in _CODE_BUILTINS):
        return "which would execute code"
    if root == "torch":
        return ("which is not one of the tensor/storage types a weights file needs "
                "(a pickled torch.nn.Module or a torch function can run code)")
    return "which is not on the list of objects a checkpoint may contain (unpickling it could run arbitrary code)"


def _load(file: Any, **kwargs: Any) -> Any:
    return RestrictedUnpickler(file, **kwargs).load()


def _loads(data: bytes, **kwargs: Any) -> Any:
    return RestrictedUnpickler(io.BytesIO(data), **kwargs).load()


# The `pickle_module` handed to torch.load: torch uses its `Unpickler` (zip
# archives) and `load` (legacy files, which we do not pass to it anyway).
restricted_pickle = types.ModuleType("msdm_restricted_pickle", "pickle, restricted to weights and plain data")
restricted_pickle.Unpickler = RestrictedUnpickler
restricted_pickle.load = _load
restricted_pickle.loads = _loads
restricted_pickle.UnpicklingError = pickle.UnpicklingError
restricted_pickle.__version__ = "1"


def _display_global(what: str) -> str:
    module, _, name = what.partition(".")
    if module in ("posix", "nt") and name:
        return f"os.{name} ({what})"
    if module == "builtins" and name:
        return f"builtins.{name}"
    return what
