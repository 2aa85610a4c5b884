"""What a sampler run costs in network evaluations: one formula for the
sampler settings (engine.core.tasks.SamplerSettings.nfe) and for the OSC
server's per-request bound (osc_bridge.protocol), torch-free so the protocol
can check a request before anything heavy is imported."""

from __future__ import annotations


def network_evaluations(steps: int, resamples: int = 1, method: str = "euler", guidance: float = 1.0,
                        autoguidance: float = 1.0) -> int:
    """Evaluations of the diffusion model for `steps` steps: Heun's method
    takes two per step but its last step (to sigma 0) is Euler's; every step
    is repeated `resamples` times (the paper's resampling); classifier-free
    guidance other than 1 evaluates the conditional and the unconditional
    model (one batch, counted as two); autoguidance other than 1 adds a pass
    of the guide model for each (counted as one: it is a network evaluation,
    of a network that may be smaller)."""
    per_step, last = (2, 1) if method == "heun" else (1, 0)
    guided = (1 if guidance == 1.0 else 2) * (1 if autoguidance == 1.0 else 2)
    return (steps * per_step - last) * resamples * guided
