# Draws prior-curve.png from the two committed logs (run from the repository root).
import csv, matplotlib; matplotlib.use("Agg"); import matplotlib.pyplot as plt
def read(p, off):
    r = list(csv.DictReader(open(p))); return [float(x["minutes"]) + off for x in r], [float(x["valid_loss_ema"]) for x in r]
fig, ax = plt.subplots(figsize=(7, 3.3), dpi=120)
x, y = read("docs/models/prior-ae2/latent-prior-log-v4div-ae2.csv", 0); ax.plot(x, y, "o-", ms=2, label="v4 -> v10-ae2 (lr 2e-4 cosine, seed 0)")
x, y = read("docs/models/prior-v11/latent-prior-log-v11.csv", 45.02); ax.plot(x, y, "o-", ms=2, label="v10-ae2 -> v11 (lr 2e-4 cosine, seed 1)")
ax.set_xlabel("CPU-minutes over autoencoder-v2 (one thread)"); ax.set_ylabel("EMA valid loss (data/synth VALID)")
ax.grid(alpha=.3); ax.legend(fontsize=8); ax.set_title("latent prior over autoencoder-v2: 140 CPU-minutes", fontsize=9)
fig.tight_layout(); fig.savefig("docs/models/prior-v11/prior-curve.png")
