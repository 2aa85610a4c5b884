"""What the restricted unpickler (engine.storage.safe_pickle) lets a checkpoint
build: the allow-list of plain library objects, inert stand-ins for the
paper's own classes (recorded, never imported or run), short reprs for error
messages, and the hash-cost check of dict keys. Split from safe_pickle so each
module has one concern; safe_pickle re-exports these names."""

from __future__ import annotations

import collections
import functools
import pickle
import reprlib
from typing import Any

import torch

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
