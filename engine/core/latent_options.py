"""Sampler options that only the latent prior has, and the one check that the
waveform prior is not asked for them: shared by the job options (checked when
a request arrives, torch-free so the OSC server checks before any work) and
the sampler settings (engine.core.tasks.generation_settings)."""

from __future__ import annotations

from typing import Mapping

# option -> (its neutral value, which the waveform prior may be given, and why it cannot take another)
LATENT_ONLY = {
    "guidance": (1.0, "guidance is for the latent prior (the waveform prior imputes by replacement alone)"),
    "harmony": (0.0, "harmony guidance is for the latent prior (it steers the autoencoder's latents)"),
    "rhythm": (0.0, "rhythm guidance is for the latent prior (it steers the autoencoder's latents)"),
    "autoguidance": (1.0, "autoguidance is for the latent prior (its guide is a weaker latent model)"),
}
# Those that generation takes too (the others need given stems).
GENERATE_TOO = ("autoguidance",)


def latent_options_for(task: str) -> tuple[str, ...]:
    """The latent-only options a task takes: all of them for impute, those
    of GENERATE_TOO for generate, none for separate."""
    return tuple(name for name in LATENT_ONLY
                 if task == "impute" or (task == "generate" and name in GENERATE_TOO))


def waveform_problem(values: Mapping[str, float | None]) -> str | None:
    """Why the waveform prior cannot run with `values` (option -> value; None:
    not given), or None when it can."""
    for name, (neutral, reason) in LATENT_ONLY.items():
        if values.get(name) not in (None, neutral):
            return reason
    return None
