"""Import the paper's PyTorch Lightning checkpoints without running their pickles.

The released MSDM/ISDM checkpoints are `.ckpt` files written by Lightning
(`torch.save` zip archives holding a pickle). A pickle can call any function
while it loads, so `torch.load(path, weights_only=False)` on a downloaded file
runs whatever its author wanted. Here the pickle goes through
`engine.storage.safe_pickle.RestrictedUnpickler`, which:

* returns the real object only for an allow-list of torch tensor/storage
  rebuild functions, dtypes and plain containers;
* returns an inert stand-in (`PickledStandIn`: a dict subclass that records its
  constructor arguments and state and runs nothing) for the classes of the
  packages a Lightning checkpoint legitimately references
  (audio_diffusion_pytorch, pytorch_lightning, lightning, omegaconf, the
  paper's `main` module, numpy, ...) — no code of theirs is imported or run;
* refuses everything else (os.system, builtins.eval, subprocess, ...) with
  `UnsafeCheckpointError`, before anything is called;
* also checks the targets of the pickle opcodes that call methods (REDUCE,
  NEWOBJ, BUILD, APPEND, SETITEM, ...) so that even allowed objects cannot be
  used to mutate classes or call methods behind the allow-list's back;
* works within a `PickleBudget` (objects built, bytes the pickle makes, tensor
  bytes read from the archive), refusing with `CheckpointBudgetError`; the
  hyper-parameters are converted to plain data with a memoised walk, so
  objects the pickle shares stay shared instead of being copied per use.

How it hooks into torch 2.13 (torch/serialization.py): with an explicit
`pickle_module` and `weights_only=False`, `torch.load` keeps our module
(`if pickle_module is None: pickle_module = pickle` is the only substitution)
and, for a zip archive, calls `_load(opened_zipfile, map_location,
pickle_module, ...)`, which defines `class UnpicklerWrapper(pickle_module.
Unpickler)` whose `find_class` maps names containing "Storage" to a
`StorageType` (a dtype holder) and otherwise calls `super().find_class(...)`,
i.e. ours; it then sets `unpickler.persistent_load = persistent_load` (its own
storage loader, so tensor data is still read from the archive's records) and
calls `unpickler.load()`. Two paths of `torch.load` would bypass the pickle
module and are closed before calling it: a TorchScript archive (a zip with
`constants.pkl`) is handed to `torch.jit.load`, and non-zip files go through
the legacy loader (which extracts tar members); only torch>=1.6 zip archives
without TorchScript records are accepted.
"""

from __future__ import annotations

import logging
import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from engine.core.config import PAPER, SLAKH_STEMS, DiffusionConfig, ModelConfig, UNetConfig
from engine.storage.model import MSDMModel, ModelFileError
from engine.core.network import UNet1d

from engine.storage.safe_pickle import (
    DEFAULT_BUDGET, BudgetExceeded, CheckpointBudgetError, PickleBudget, PickledStandIn, RefusedGlobal,
    RestrictedUnpickler, UnsafeCheckpointError, restricted_pickle, restricted_pickle_module, short_repr,
)
from engine.storage.checkpoint_weights import (  # noqa: F401 - re-exported
    extract_unet_state_dict,
    _UNET_FIELDS,
    _ADP_DIFFUSION_DEFAULTS,
    _ADP_KWARGS,
    _as_float,
    _unet_value,
    infer_unet_fields,
    check_weights_fit,
)

log = logging.getLogger(__name__)

__all__ = [
    "UnsafeCheckpointError",
    "CheckpointBudgetError",
    "PickleBudget",
    "LightningCheckpoint",
    "PickledStandIn",
    "RestrictedUnpickler",
    "restricted_pickle",
    "load_lightning_checkpoint",
    "config_from_checkpoint",
    "extract_unet_state_dict",
    "infer_unet_fields",
    "check_weights_fit",
    "import_checkpoint",
]


# ---------------------------------------------------------------------------
# Checkpoint loading
# ---------------------------------------------------------------------------

@dataclass
class LightningCheckpoint:
    state_dict: dict[str, Tensor]
    hyper_parameters: dict = field(default_factory=dict)
    # epoch, global_step, lightning_version (when present), hparams_name, keys, ...
    info: dict = field(default_factory=dict)
    path: Path | None = None

    @property
    def name(self) -> str:
        return self.path.name if self.path else "checkpoint"


def _plain(value: Any, memo: dict[int, Any] | None = None) -> Any:
    """Hyper-parameter values as plain Python: omegaconf containers and nodes,
    Lightning's AttributeDict and other dict-like stand-ins become lists/dicts.

    Memoised by identity: an object met twice is converted once and the result
    is shared, as in the pickle (converting each occurrence would copy shared
    sublists, doubling the work per level of nesting: issue 14). A value met
    again while it is being converted (a cycle) stays as it was."""
    if memo is None:
        memo = {}
    key = id(value)
    if key in memo:
        return memo[key]
    memo[key] = value
    memo[key] = result = _plain_one(value, memo)
    return result


def _plain_one(value: Any, memo: dict[int, Any]) -> Any:
    if isinstance(value, PickledStandIn):
        module = value.pickled_global.split(".", 1)[0]
        attributes = value.attributes
        if module == "omegaconf":
            if "_content" in attributes:  # ListConfig / DictConfig
                return _plain(attributes["_content"], memo)
            if "_val" in attributes:  # AnyNode, IntegerNode, ...
                return _plain(attributes["_val"], memo)
        if len(value) and not value.pickled_args:  # AttributeDict & co: a dict with a class name
            return {k: _plain(v, memo) for k, v in value.items()}
        return value
    if isinstance(value, dict):
        return {k: _plain(v, memo) for k, v in value.items()}
    if type(value) in (list, tuple):
        return type(value)(_plain(v, memo) for v in value)
    return value


# Values a configuration is read from are compared, converted and quoted, which
# walks them whole: one of more values than this (counting shared objects once
# per use) is refused rather than walked (shared sublists nested 40 deep are 2**40).
MAX_CONFIG_VALUES = 100_000


def _check_small(name: str, value: Any, file: str) -> None:
    """Refuse a hyper-parameter too large to be a configuration value."""
    stack, count = [value], 0
    while stack:
        item = stack.pop()
        count += 1
        if count > MAX_CONFIG_VALUES:
            raise ModelFileError(f"{file}: hyper-parameter {name} holds more than {MAX_CONFIG_VALUES:,} values "
                                 f"(counting shared ones each time), far more than a model configuration")
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend(item)


_CONFIG_KEYS = ("use_classifier_free_guidance", "context_channels", "context_features",
                "context_embedding_features", "out_channels", "in_channels", "diffusion_dynamic_threshold",
                "diffusion_sigma_data", "diffusion_sigma_distribution")


def _open_checked(path: Path):
    """Open a file that torch.load will read as a zip archive, or explain why not."""
    if not path.exists():
        raise ModelFileError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise ModelFileError(f"{path} is not a file")
    handle = open(path, "rb")
    try:
        head = handle.read(16)
        if not head:
            raise ModelFileError(f"{path} is empty, not a checkpoint")
        if head[:4] != b"PK\x03\x04" or not zipfile.is_zipfile(handle):
            hint = ""
            if len(head) >= 9 and head[8:9] == b"{":
                hint = " (it looks like a safetensors file: load it with MSDMModel.load / --model)"
            elif head[:1] == b"\x80":
                hint = " (a legacy pre-1.6 torch.save file or a plain pickle: re-save it with torch>=1.6)"
            raise ModelFileError(
                f"{path} is not a PyTorch Lightning checkpoint: expected the zip archive that "
                f"torch.save writes{hint}"
            )
        handle.seek(0)
        try:
            with zipfile.ZipFile(handle) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError, ValueError) as error:
            raise ModelFileError(f"{path} is a damaged zip archive ({error})") from error
        records = {n.split("/", 1)[-1] for n in names}
        if "constants.pkl" in records or any(n.endswith(".py") and "/code/" in f"/{n}" for n in names):
            raise UnsafeCheckpointError(
                f"refusing to load {path}: it is a TorchScript archive, which contains code; "
                f"only weights and plain data are accepted"
            )
        if "data.pkl" not in records:
            raise ModelFileError(f"{path} is a zip archive but not a torch.save checkpoint (no data.pkl)")
        handle.seek(0)
        return handle
    except BaseException:
        handle.close()
        raise


def load_lightning_checkpoint(path: str | Path, *, budget: PickleBudget = DEFAULT_BUDGET) -> LightningCheckpoint:
    """Read a Lightning `.ckpt` (or a plain torch.save'd state dict) without
    executing anything in it, and without building more than `budget` allows."""
    path = Path(path)
    handle = _open_checked(path)
    module = restricted_pickle if budget == DEFAULT_BUDGET else restricted_pickle_module(budget)
    try:
        with handle:
            obj = torch.load(handle, map_location="cpu", weights_only=False,
                             pickle_module=module, mmap=False)
    except RefusedGlobal as refused:
        raise UnsafeCheckpointError(
            f"refusing to load {path}: {refused.clause}; only weights and plain data are accepted"
        ) from None
    except BudgetExceeded as exceeded:
        raise CheckpointBudgetError(
            f"refusing to load {path}: {exceeded.clause}; a real checkpoint stays far below this. If you "
            f"trust the file, raise the limit (load_lightning_checkpoint(..., budget=PickleBudget(...)))"
        ) from None
    except ModelFileError:
        raise
    except Exception as error:  # noqa: BLE001 - anything else means "not a readable checkpoint"
        raise ModelFileError(
            f"{path} could not be read as a checkpoint ({type(error).__name__}: {error})"
        ) from error

    if not isinstance(obj, dict):
        raise ModelFileError(f"{path} holds a {type(obj).__name__}, not a checkpoint dictionary")
    if "state_dict" in obj:
        raw = obj["state_dict"]
        if not isinstance(raw, dict):
            raise ModelFileError(f"{path}: 'state_dict' is a {type(raw).__name__}, not a dictionary of tensors")
    elif obj and all(isinstance(v, Tensor) for v in obj.values()):
        raw = obj  # torch.save(module.state_dict())
    else:
        raise ModelFileError(
            f"{path} has no 'state_dict' (top-level keys: {sorted(map(str, obj))[:12]})"
        )
    state_dict = {k: v for k, v in raw.items() if isinstance(k, str) and isinstance(v, Tensor)}
    skipped = sorted(str(k) for k in raw if k not in state_dict)

    try:
        hyper_parameters = _plain(obj.get("hyper_parameters") or {} if raw is not obj else {})
    except RecursionError:
        raise ModelFileError(f"{path}: its hyper_parameters are nested too deeply") from None
    if not isinstance(hyper_parameters, dict):
        log.warning("%s: ignoring hyper_parameters of type %s", path, type(hyper_parameters).__name__)
        hyper_parameters = {}

    info: dict[str, Any] = {}
    for key, out in (("epoch", "epoch"), ("global_step", "global_step")):
        value = obj.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            info[out] = value
    version = obj.get("pytorch-lightning_version", obj.get("lightning_version"))
    if isinstance(version, str):
        info["lightning_version"] = version
    if isinstance(obj.get("hparams_name"), str):
        info["hparams_name"] = obj["hparams_name"]
    info["has_optimizer_states"] = bool(obj.get("optimizer_states"))
    info["keys"] = sorted(str(k) for k in obj) if raw is not obj else []
    if skipped:
        info["non_tensor_state_keys"] = skipped
    return LightningCheckpoint(state_dict=state_dict, hyper_parameters=hyper_parameters, info=info, path=path)




def config_from_checkpoint(
    ckpt: LightningCheckpoint,
    *,
    base: ModelConfig | None = None,
    stems: tuple[str, ...] | None = None,
    sample_rate: int | None = None,
) -> ModelConfig:
    """The ModelConfig of a checkpoint, checked against its weights' shapes.

    Each U-Net field comes from, in order: the checkpoint's hyper-parameters;
    `base` when the caller gives one (the caller's claim; verified against the
    shapes); the weights' shapes; the paper's configuration (logged as an
    assumption). Diffusion settings: hyper-parameters; `base`;
    audio-diffusion-pytorch's defaults when the hyper-parameters are the
    model's keyword arguments (AudioDiffusionModel filled the missing ones from
    them); the paper's.
    """
    file = ckpt.name
    hp = dict(ckpt.hyper_parameters or {})
    for key in (*_CONFIG_KEYS, *_UNET_FIELDS):
        if key in hp:
            _check_small(key, hp[key], file)
    sd, _prefix = extract_unet_state_dict(ckpt.state_dict, file)

    # Variants of the network that we do not implement.
    if hp.get("use_classifier_free_guidance"):
        raise ModelFileError(f"{file}: classifier-free-guidance (text-conditioned) models are not supported")
    for key in ("context_channels", "context_features", "context_embedding_features"):
        if hp.get(key):
            raise ModelFileError(f"{file}: conditional models ({key}={short_repr(hp[key])}) are not supported")
    if hp.get("out_channels") not in (None, hp.get("in_channels")):
        raise ModelFileError(f"{file}: out_channels != in_channels is not supported")
    threshold = hp.get("diffusion_dynamic_threshold")
    if threshold is not None and _as_float("diffusion_dynamic_threshold", threshold, file) != 0.0:
        raise ModelFileError(
            f"{file}: diffusion_dynamic_threshold = {threshold} is not supported (only 0.0, the "
            f"clamp to [-1, 1] that the paper's models use, is implemented)"
        )

    adp_record = bool(_ADP_KWARGS & set(hp))
    inferred = infer_unet_fields(sd)
    fallback = PAPER if base is None else base
    values: dict[str, Any] = {}
    assumed: list[str] = []
    for name in _UNET_FIELDS:
        if name in hp and hp[name] is not None:
            values[name] = _unet_value(name, hp[name], file)
        elif name == "in_channels" and (stems is not None or name in inferred):
            # One input channel per stem: the stems given, else the weights, decide.
            values[name] = len(stems) if stems is not None else inferred[name]
        elif base is not None:
            values[name] = getattr(fallback.unet, name)
        elif name in inferred:
            values[name] = inferred[name]
        elif name == "attention_features" and "_attention_inner" in inferred:
            # The weights give heads * features; attention_heads is resolved already.
            heads, inner = values["attention_heads"], inferred["_attention_inner"]
            values[name] = inner // heads if heads and inner % heads == 0 else PAPER.unet.attention_features
            if "attention_heads" not in hp:
                assumed.append(f"attention_heads={heads} (so attention_features={values[name]}) [paper]")
        else:
            values[name] = getattr(PAPER.unet, name)
            if name != "use_context_time" and not (name == "attention_heads" and "_attention_inner" in inferred):
                assumed.append(f"{name}={values[name]} [paper]")
    try:
        unet = UNetConfig(**values)
    except ValueError as error:
        raise ModelFileError(f"{file}: the hyper-parameters describe an invalid network: {error}") from error

    # Diffusion (EDM) settings.
    diffusion_base = fallback.diffusion if base is not None else (
        DiffusionConfig(**_ADP_DIFFUSION_DEFAULTS) if adp_record else PAPER.diffusion)
    sigma_data = diffusion_base.sigma_data
    if hp.get("diffusion_sigma_data") is not None:
        sigma_data = _as_float("diffusion_sigma_data", hp["diffusion_sigma_data"], file)
    elif base is None:
        origin = "audio-diffusion-pytorch 0.0.43 default" if adp_record else "paper"
        assumed.append(f"sigma_data={sigma_data} [{origin}]")
    sigma_mean, sigma_std = diffusion_base.sigma_mean, diffusion_base.sigma_std
    distribution = hp.get("diffusion_sigma_distribution")
    if distribution is not None:
        mean_std = _log_normal(distribution)
        if mean_std is None:
            log.warning("%s: diffusion_sigma_distribution %r is not a LogNormalDistribution; the training "
                        "noise distribution is taken as LogNormal(%s, %s) (inference does not use it)",
                        file, distribution, sigma_mean, sigma_std)
        else:
            sigma_mean = _as_float("diffusion_sigma_distribution.mean", mean_std[0], file)
            sigma_std = _as_float("diffusion_sigma_distribution.std", mean_std[1], file)
    if sigma_data <= 0:
        raise ModelFileError(f"{file}: diffusion_sigma_data must be positive, got {sigma_data}")
    diffusion = DiffusionConfig(sigma_data=sigma_data, sigma_mean=sigma_mean, sigma_std=sigma_std)

    # Stems: one per input channel.
    if stems is not None:
        stems = tuple(stems)
        if not all(isinstance(s, str) and s.strip() for s in stems):
            raise ModelFileError(f"stem names must be non-empty strings, got {stems}")
        if len(stems) != unet.in_channels:
            raise ModelFileError(
                f"{file}: the network has {unet.in_channels} input channel(s) but {len(stems)} stem name(s) "
                f"were given: {stems}"
            )
    elif base is not None and len(base.stems) == unet.in_channels and unet.in_channels != 1:
        stems = base.stems
    elif unet.in_channels == len(SLAKH_STEMS):
        stems = SLAKH_STEMS
    elif unet.in_channels == 1:
        raise ModelFileError(
            f"{file} holds a single-stem (ISDM) model with 1 input channel: say which stem it was "
            f"trained on, e.g. stems=('drums',) (msdm import-checkpoint --stems drums)"
        )
    else:
        raise ModelFileError(
            f"{file}: the network has {unet.in_channels} input channels; name its stems in channel "
            f"order with stems=(...) (--stems a,b,...)"
        )

    if sample_rate is not None and (isinstance(sample_rate, bool) or not isinstance(sample_rate, int)
                                    or sample_rate <= 0):
        raise ModelFileError(f"sample_rate must be a positive integer, got {sample_rate!r}")
    window = fallback.window
    factor = unet.downsampling_factor
    if window % factor:
        window = math.ceil(window / factor) * factor
    try:
        config = ModelConfig(unet=unet, diffusion=diffusion, stems=stems,
                             sample_rate=int(sample_rate or fallback.sample_rate), window=window)
    except ValueError as error:
        raise ModelFileError(f"{file}: {error}") from error

    check_weights_fit(config.unet, sd, file)
    if assumed:
        log.warning("%s: not recorded in the checkpoint, assumed: %s", file, ", ".join(assumed))
    return config


def _log_normal(distribution: Any) -> tuple[Any, Any] | None:
    """(mean, std) of a pickled LogNormalDistribution stand-in, or of a
    hydra-style mapping {"_target_": "...LogNormalDistribution", mean, std}."""
    if isinstance(distribution, PickledStandIn):
        if not distribution.pickled_global.endswith("LogNormalDistribution"):
            return None
        attributes = {**distribution.pickled_kwargs, **distribution.attributes}
        if "mean" in attributes and "std" in attributes:
            return attributes["mean"], attributes["std"]
        return None
    if isinstance(distribution, dict) and str(distribution.get("_target_", "")).endswith("LogNormalDistribution"):
        if "mean" in distribution and "std" in distribution:
            return distribution["mean"], distribution["std"]
    return None


def import_checkpoint(
    ckpt_path: str | Path,
    out_path: str | Path,
    *,
    base: ModelConfig | None = None,
    stems: tuple[str, ...] | None = None,
    sample_rate: int | None = None,
    budget: PickleBudget = DEFAULT_BUDGET,
) -> MSDMModel:
    """Convert a paper checkpoint into an MSDM Studio safetensors model file."""
    ckpt_path, out_path = Path(ckpt_path), Path(out_path)
    if out_path.exists() and ckpt_path.exists() and out_path.resolve() == ckpt_path.resolve():
        raise ModelFileError(f"refusing to overwrite the checkpoint {ckpt_path} with the converted model")
    ckpt = load_lightning_checkpoint(ckpt_path, budget=budget)
    own = ckpt.hyper_parameters.get("config")
    if isinstance(own, dict) and "unet" in own:
        # A checkpoint of `msdm train`: it carries its whole ModelConfig.
        _check_small("config", own, ckpt.name)
        try:
            config = ModelConfig.from_dict(own)
        except (ValueError, TypeError, KeyError) as error:
            raise ModelFileError(f"{ckpt.name}: its configuration is not valid: "
                                 f"{str(error)[:300]}") from None
    else:
        config = config_from_checkpoint(ckpt, base=base, stems=stems, sample_rate=sample_rate)
    sd, _prefix = extract_unet_state_dict(ckpt.state_dict, ckpt.name)
    network = _network_with_weights(config.unet, sd, ckpt.name)

    details = []
    if "epoch" in ckpt.info:
        details.append(f"epoch {ckpt.info['epoch']}")
    if "global_step" in ckpt.info:
        details.append(f"step {ckpt.info['global_step']}")
    source = f"imported from {ckpt_path.name}" + (f" ({', '.join(details)})" if details else "")
    model = MSDMModel(config, network, source=source)
    model.path = model.save(out_path, source=source)
    return model


def _network_with_weights(unet: UNetConfig, sd: Mapping[str, Tensor], name: str) -> UNet1d:
    """A UNet1d holding the checkpoint's tensors (as float32), loaded strictly.

    Built on the meta device and given the loaded tensors (`assign=True`): no
    random initialisation of ~400M parameters, and no second copy of them."""
    floats = {k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in sd.items()}
    with torch.device("meta"):
        network = UNet1d(unet)
    persistent = set(network.state_dict())
    assign = all(n in persistent for n, _ in network.named_buffers())
    if not assign:  # a non-persistent buffer would be left on the meta device
        network = UNet1d(unet)
    try:
        network.load_state_dict(floats, strict=True, assign=assign)
    except RuntimeError as error:
        raise ModelFileError(f"{name}: the weights do not load into the network: {error}") from error
    if any(t.is_meta for t in (*network.parameters(), *network.buffers())):
        raise ModelFileError(f"{name}: some of the network's tensors were not in the checkpoint")
    return network.eval()
