"""Generation and imputation at the paper's settings and at <= 32 NFE, same seed,
side by side: spectrograms under docs/images/, short FLAC mixes under docs/audio/.

    python benchmarks/fast_examples.py [--track /work/data/synth/test/Track00003] [--seconds 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.audio.files import read_audio, write_audio  # noqa: E402
from engine.storage.loading import load_models  # noqa: E402
from engine.audio.pipeline import generate_stems  # noqa: E402
from engine.core.tasks import GENERATE, IMPUTE  # noqa: E402

# The fast settings chosen in docs/performance.md (deterministic ODE, 32 NFE).
FAST_GENERATE = GENERATE.override(steps=32, s_churn=0.0, method="dpmpp2m")
FAST_IMPUTE = IMPUTE.override(steps=32, s_churn=0.0, method="dpmpp2m")


def side_by_side(columns: dict[str, dict[str, np.ndarray]], rate: int, out_png: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(next(iter(columns.values())))
    fig, axes = plt.subplots(len(names), len(columns), figsize=(8, 1.2 * len(names)), dpi=80,
                             sharex=True, sharey=True, squeeze=False)
    for c, (label, stems) in enumerate(columns.items()):
        for r, name in enumerate(names):
            ax = axes[r, c]
            ax.specgram(np.asarray(stems[name], dtype=np.float64) + 1e-9, NFFT=1024, Fs=rate, noverlap=768,
                        cmap="magma", vmin=-140)
            ax.set_ylim(0, rate / 2)
            if c == 0:
                ax.set_ylabel(name, fontsize=8)
            if r == 0:
                ax.set_title(label, fontsize=9)
            ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)
    from PIL import Image  # 64 colours: a fifth of the size, same picture

    Image.open(out_png).convert("RGB").quantize(colors=64).save(out_png, optimize=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--track", type=Path, default=Path("/work/data/synth/test/Track00003"),
                        help="folder with drums.wav (the given stem of the imputation)")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", default="onnx")
    parser.add_argument("--docs", type=Path, default=Path(__file__).resolve().parents[1] / "docs")
    args = parser.parse_args(argv)

    models = load_models(None, backend=args.backend)
    rate, frames = models.sample_rate, int(args.seconds * models.sample_rate)
    images, audio = args.docs / "images", args.docs / "audio"
    images.mkdir(parents=True, exist_ok=True)
    audio.mkdir(parents=True, exist_ok=True)

    truth = np.zeros((len(models.stems), frames), dtype=np.float32)
    for n, stem in enumerate(models.stems):
        path = args.track / f"{stem}.wav"
        if path.is_file():
            truth[n] = read_audio(path).samples[0, :frames]
    drums = models.stems.index("drums")

    jobs = {
        "generation": dict(paper=GENERATE, fast=FAST_GENERATE, extra={}),
        "imputation": dict(paper=IMPUTE, fast=FAST_IMPUTE, extra=dict(given=truth, given_stems=(drums,))),
    }
    for task, job in jobs.items():
        columns = {}
        for which in ("paper", "fast"):
            settings = job[which]
            began = time.perf_counter()
            stems = generate_stems(models, frames, seed=args.seed, settings=settings, **job["extra"])
            seconds = time.perf_counter() - began
            named = {stem + (" (given)" if task == "imputation" and n == drums else ""): stems[n]
                     for n, stem in enumerate(models.stems)}
            named["mix"] = stems.sum(0)
            columns[f"{which}: {settings.method}, {settings.steps} steps, churn {settings.s_churn:g} "
                    f"({settings.nfe} NFE, {seconds:.0f} s)"] = named
            write_audio(audio / f"{task}-{which}.flac", np.clip(named["mix"][None], -1, 1), rate, bits="16")
            print(f"{task} {which}: {settings.nfe} NFE, {seconds:.1f} s", flush=True)
        side_by_side(columns, rate, images / f"{task}-paper-vs-fast.png",
                     f"{task}, seed {args.seed}" + (f", drums given ({args.track.name})" if task == "imputation" else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
