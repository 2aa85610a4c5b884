"""Where a checkpoint's U-Net weights are and what shapes they imply: the
state-dict prefixes of the paper's and our own training modules, the U-Net
fields read back from weight shapes, and the check that weights fit a
configuration. Used by engine.storage.lightning_import (which re-exports them)."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import torch
from torch import Tensor

from engine.core.config import UNetConfig
from engine.core.network import UNet1d
from engine.errors import ModelFileError
from engine.storage.pickle_allowlist import short_repr


# Where the U-Net's weights live in the checkpoints, in order of preference:
# the LightningModule's `model` is an AudioDiffusionModel holding the U-Net as
# `unet` and again as `diffusion.net` (the same module, registered twice).
# The paper's Lightning module first, then our own training module (training/train.py).
UNET_PREFIXES = ("model.unet.", "model.diffusion.net.", "unet.", "diffusion.net.", "network.")
_UNET_MARKER = "to_time.0.1.weight"


def extract_unet_state_dict(state_dict: Mapping[str, Tensor], name: str = "checkpoint") -> tuple[dict[str, Tensor], str]:
    """The U-Net's weights under our names, and the prefix they were found under."""
    for prefix in UNET_PREFIXES:
        sub = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        if sub:
            return sub, prefix
    if _UNET_MARKER in state_dict:
        return dict(state_dict), ""
    sample = sorted(state_dict)[:6]
    raise ModelFileError(
        f"{name}: no U-Net weights found (expected names starting with "
        f"{', '.join(UNET_PREFIXES[:2])} or a bare U-Net state dict; found e.g. {sample})"
    )


_UNET_FIELDS = tuple(f.name for f in dataclasses.fields(UNetConfig))
_TUPLE_FIELDS = {"multipliers": int, "factors": int, "num_blocks": int, "attentions": bool}
_BOOL_FIELDS = {"use_nearest_upsample", "use_skip_scale", "use_attention_bottleneck", "use_context_time"}

# audio-diffusion-pytorch 0.0.43's AudioDiffusionModel fills any keyword the
# LightningModule did not pass from get_default_model_kwargs(); these are the
# diffusion ones (the U-Net ones are read from the weights' shapes instead).
_ADP_DIFFUSION_DEFAULTS = {"sigma_data": 0.1, "sigma_mean": -3.0, "sigma_std": 1.0}
_ADP_KWARGS = set(_UNET_FIELDS) | {"kernel_sizes_init", "diffusion_sigma_distribution",
                                   "diffusion_sigma_data", "diffusion_dynamic_threshold"}


def _as_int(name: str, value: Any, file: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise ModelFileError(f"{file}: hyper-parameter {name} = {short_repr(value)} is not an integer")
    return int(value)


def _as_bool(name: str, value: Any, file: str) -> bool:
    if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
        return bool(value)
    raise ModelFileError(f"{file}: hyper-parameter {name} = {short_repr(value)} is not a boolean")


def _as_float(name: str, value: Any, file: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ModelFileError(f"{file}: hyper-parameter {name} = {short_repr(value)} is not a number")
    return float(value)


def _unet_value(name: str, value: Any, file: str) -> Any:
    if name in _TUPLE_FIELDS:
        if not isinstance(value, (list, tuple)):
            raise ModelFileError(f"{file}: hyper-parameter {name} = {short_repr(value)} is not a list")
        convert = _as_bool if _TUPLE_FIELDS[name] is bool else _as_int
        return tuple(convert(name, v, file) for v in value)
    if name in _BOOL_FIELDS:
        return _as_bool(name, value, file)
    return _as_int(name, value, file)


def infer_unet_fields(sd: Mapping[str, Tensor]) -> dict[str, Any]:
    """The UNetConfig fields that the weights' names and shapes determine.

    Not determined by shapes (taken from elsewhere): resnet_groups,
    use_skip_scale, and how attention_heads * attention_features splits.
    Returns `_attention_inner` (heads * features) when there is attention.
    """
    found: dict[str, Any] = {}

    def count(prefix: str, suffix: str) -> int:
        n = 0
        while f"{prefix}{n}{suffix}" in sd:
            n += 1
        return n

    try:
        channels = sd["to_time.0.1.weight"].shape[1] - 1
        found["channels"] = channels
        found["in_channels"] = sd["to_in.module_list.0.block.block1.groupnorm.weight"].shape[0]
        blocks = count("to_in.module_list.", ".block.block1.groupnorm.weight")
        found["patch_blocks"] = blocks
        last = sd[f"to_in.module_list.{blocks - 1}.block.block2.project.weight"].shape[0]
        if last and channels % last == 0:
            found["patch_factor"] = channels // last
        levels = count("downsamples.", ".downsample.weight")
        downs = [sd[f"downsamples.{i}.downsample.weight"] for i in range(levels)]
        widths = [downs[0].shape[1]] + [d.shape[0] for d in downs]
        if all(w % channels == 0 for w in widths):
            found["multipliers"] = tuple(w // channels for w in widths)
        found["num_blocks"] = tuple(count(f"downsamples.{i}.blocks.", ".block1.project.weight") for i in range(levels))
        found["attentions"] = tuple(f"downsamples.{i}.transformer.attention.fn.to_q.weight" in sd
                                    for i in range(levels))
        found["use_attention_bottleneck"] = "bottleneck.attention.fn.to_q.weight" in sd
        # upsamples[j] mirrors level levels-1-j; a transposed conv has kernel 2 * factor.
        factors: list[int | None] = [None] * levels
        nearest = None
        for j in range(levels):
            level = levels - 1 - j
            if f"upsamples.{j}.upsample.1.weight" in sd:
                nearest = True
            elif f"upsamples.{j}.upsample.weight" in sd:
                k = sd[f"upsamples.{j}.upsample.weight"].shape[-1]
                if k % 2 == 0:  # ConvTranspose1d(kernel_size=2 * factor)
                    factors[level] = k // 2
                    nearest = False if nearest is None else nearest
        if nearest is not None:
            found["use_nearest_upsample"] = nearest
        if all(f is not None for f in factors):
            found["factors"] = tuple(factors)
            multipliers = {(d.shape[-1] - 1) / f for d, f in zip(downs, factors)}
            if len(multipliers) == 1:
                (kmd,) = multipliers
                if kmd == int(kmd) and kmd > 0:
                    found["kernel_multiplier_downsample"] = int(kmd)
        for i in range(levels):
            q = sd.get(f"downsamples.{i}.transformer.attention.fn.to_q.weight")
            ff = sd.get(f"downsamples.{i}.transformer.feed_forward.1.weight")
            if q is not None and ff is not None:
                found["_attention_inner"] = q.shape[0]
                if ff.shape[0] % q.shape[1] == 0:
                    found["attention_multiplier"] = ff.shape[0] // q.shape[1]
                break
        else:
            q = sd.get("bottleneck.attention.fn.to_q.weight")
            if q is not None:
                found["_attention_inner"] = q.shape[0]
    except (KeyError, IndexError, ZeroDivisionError):
        pass  # best effort: the shape check below is what guarantees a fit
    return found


def check_weights_fit(unet: UNetConfig, sd: Mapping[str, Tensor], name: str = "checkpoint") -> None:
    """Raise ModelFileError listing every name whose presence or shape differs."""
    try:
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in UNet1d(unet).state_dict().items()}
    except Exception as error:  # noqa: BLE001 - e.g. GroupNorm groups that do not divide
        raise ModelFileError(f"{name}: the configuration {unet} cannot be built ({error})") from error
    got = {k: tuple(v.shape) for k, v in sd.items()}
    mismatched = [f"{k}: checkpoint {list(got[k])} vs config {list(expected[k])}"
                  for k in expected if k in got and got[k] != expected[k]]
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    if not (mismatched or missing or unexpected):
        return

    def listing(title: str, items: list[str]) -> str:
        shown = "; ".join(items[:10])
        more = f"; ... and {len(items) - 10} more" if len(items) > 10 else ""
        return f"\n  {len(items)} {title}: {shown}{more}"

    raise ModelFileError(
        f"{name}: the weights do not fit the network configuration "
        f"(channels={unet.channels}, multipliers={unet.multipliers}, patch_factor={unet.patch_factor}, "
        f"in_channels={unet.in_channels}); pass the configuration the checkpoint was trained with "
        f"(base=... / --preset)."
        + (listing("with a different shape", mismatched) if mismatched else "")
        + (listing("missing from the checkpoint", missing) if missing else "")
        + (listing("in the checkpoint but not in the network", unexpected) if unexpected else "")
    )
