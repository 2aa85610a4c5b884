"""Where the generated stems' log-mel Fréchet distance comes from (VALID only):
mean term vs covariance term, per-mel-band mean offset; generated vs a real draw."""
import sys, numpy as np, torch
from scipy import linalg
from engine.storage.model import MSDMModel
from engine.audio.latent_generation import generate_latent_stems, window_samples
from engine.core.tasks import LATENT_GENERATE
from training.generation_candidates import load_real_windows
from training import generation_metrics as gm, audio_features as af
torch.set_num_threads(1)
model_path, data, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
stem = sys.argv[4] if len(sys.argv) > 4 else "drums"
model = MSDMModel.load(model_path)
win = window_samples(model)
real = load_real_windows(data, model.stems, model.sample_rate, win, count, split="valid")
n = model.stems.index(stem)
rate = model.sample_rate
ref = np.concatenate([af.log_mel(x, rate) for x in real.reference[:, n]])
def terms(frames):
    mu, cov = frames.mean(0), np.cov(frames, rowvar=False)
    mr, cr = ref.mean(0), np.cov(ref, rowvar=False)
    root = linalg.sqrtm(cov @ cr).real
    return float(((mu - mr) ** 2).sum()), float(np.trace(cov) + np.trace(cr) - 2 * np.trace(root)), mu - mr, np.trace(cov), np.trace(cr)
settings = LATENT_GENERATE
gen = np.stack([generate_latent_stems(model, win, seed=1000 + k, settings=settings) for k in range(count)])
g = np.concatenate([af.log_mel(x, rate) for x in gen[:, n]])
p = np.concatenate([af.log_mel(x, rate) for x in real.evaluation_stems[:, n]])
for name, f in (("generated", g), ("real eval", p)):
    m, c, d, tc, tr = terms(f)
    print(f"{name}: mean term {m:.1f}, cov term {c:.1f}, trace cov {tc:.1f} vs ref {tr:.1f}")
    print("  band mean offset (dB-ish), 8 groups of 8 mel bands:", np.round(d.reshape(8, -1).mean(1), 2))
