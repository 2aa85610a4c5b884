"""Settings that persist between sessions (QSettings), with defaults in one place.

MSDM_APP_SETTINGS=/path/file.ini keeps them in that file instead of the
user's config folder (tests, portable installs)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from PySide6.QtCore import QSettings

from osc_bridge.protocol import DEFAULT_PORT

MAX_RECENT = 8


def default_output_root() -> str:
    # Beside the server's own default (~/MSDM Studio/outputs), where a musician finds it.
    return str(Path.home() / "MSDM Studio" / "sessions")


@dataclass
class AppSettings:
    engine_mode: str = "local"          # local: start `msdm serve` as a child; remote: connect to host:port
    remote_host: str = "127.0.0.1"
    remote_port: int = DEFAULT_PORT
    model: str = ""                     # "" = the shipped default model
    backend: str = "torch"
    output_root: str = field(default_factory=default_output_root)
    steps: int = 50
    resamples: int = 1
    seed: int = 0
    likelihood: str = "dirac"
    # How Separate works (desktop/jobs.py SEPARATION_MODES): the model's
    # first guess alone is the measured best few-evaluation setting (docs/models.md).
    separation: str = "first guess"
    # dpmpp2m stays stable at the app's few steps, where the paper's Euler sampler
    # can diverge for separation (docs/performance.md).
    method: str = "dpmpp2m"
    seconds: float = 10.0
    export_folder: str = str(Path.home())
    export_format: str = "wav"
    export_bits: str = "24"
    export_pattern: str = "{song} - {stem}"
    recent: list = field(default_factory=list)

    def add_recent(self, path: str) -> None:
        path = str(Path(path).resolve())
        self.recent = [path] + [p for p in self.recent if p != path][: MAX_RECENT - 1]


def _store() -> QSettings:
    path = os.environ.get("MSDM_APP_SETTINGS")
    if path:
        return QSettings(path, QSettings.Format.IniFormat)
    return QSettings("MSDM Studio", "MSDM Studio")


def load_settings() -> AppSettings:
    store = _store()
    settings = AppSettings()
    for f in fields(AppSettings):
        if not store.contains(f.name):
            continue
        raw = store.value(f.name)
        default = getattr(settings, f.name)
        try:
            if isinstance(default, list):
                value = [str(v) for v in (raw if isinstance(raw, list) else [raw] if raw else [])]
            elif isinstance(default, bool):
                value = str(raw).lower() in ("1", "true", "yes")
            elif isinstance(default, int):
                value = int(raw)
            elif isinstance(default, float):
                value = float(raw)
            else:
                value = str(raw)
        except (TypeError, ValueError):
            continue  # a hand-edited bad value falls back to the default
        setattr(settings, f.name, value)
    return settings


def save_settings(settings: AppSettings) -> None:
    store = _store()
    for key, value in asdict(settings).items():
        store.setValue(key, value)
    store.sync()
