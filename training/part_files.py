"""The files a training run keeps for one part of the model (the stem
autoencoder, the latent prior): their format names and their one reader.

A part file is a safetensors file whose header holds `format` and `config`
(JSON); train_autoencoder and train_latent_prior write them, pack_model puts
them into the one model file, and a run started from one (--init) reads its
config. Read as safetensors only, so loading runs no code.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from engine.errors import ModelFileError

AUTOENCODER_FORMAT = "msdm-studio/autoencoder/1"
LATENT_PRIOR_FORMAT = "msdm-studio/latent-prior/1"


def read_part_config(path: Path, expected_format: str) -> dict:
    """The config of a part file of `expected_format` (ModelFileError otherwise)."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError) as error:
        raise ModelFileError(f"{path}: {error}") from error
    if metadata.get("format") != expected_format or "config" not in metadata:
        raise ModelFileError(f"{path}: not a {expected_format} file (format {metadata.get('format')!r})")
    return json.loads(metadata["config"])


def read_part(path: Path, expected_format: str) -> tuple[dict, dict]:
    """A part file's config and its tensors as float32."""
    config = read_part_config(path, expected_format)
    return config, {k: v.float() for k, v in load_file(str(path)).items()}
