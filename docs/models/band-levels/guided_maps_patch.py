"""One-off experiment patch: autoguided generation with the unguided per-stem
scales, gains and frame-level maps (the file's config treats guided sampling
as its own mode without maps), and frame maps fitted on samples generated at
the file's own autoguidance weight.  usage: python docs/models/band-levels/guided_maps_patch.py {msdm|calib} ARGS..."""
import sys
from engine.core import latent_prior as lp
cfg = lp.LatentPriorConfig
_scales, _gains, _levels = cfg.stem_scales_for, cfg.stem_gains_for, cfg.stem_levels_for
cfg.stem_scales_for = lambda self, a: _scales(self, 1.0)
cfg.stem_gains_for = lambda self, a: _gains(self, 1.0)
cfg.stem_levels_for = lambda self, a: _levels(self, 1.0)
which = sys.argv.pop(1)
if which == "calib":
    import training.calibrate_frame_levels as cf
    from engine.core.tasks import LATENT_GENERATE
    import numpy as np
    from engine.audio.latent_generation import generate_latent_stems
    def generate_windows(model, window, count, seed, limit=True):
        settings = LATENT_GENERATE.override(autoguidance=model.latent_prior.config.autoguidance)
        return np.stack([generate_latent_stems(model, window, seed=seed + k, settings=settings, limit=limit) for k in range(count)])
    cf.generate_windows = generate_windows
    sys.exit(cf.main(sys.argv[1:]))
else:
    from engine.cli import main
    sys.exit(main(sys.argv[1:]))
