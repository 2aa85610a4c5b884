"""The `msdm` command: separate, generate, impute, info, import-checkpoint."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Sequence

from . import __version__

EXIT_USAGE = 2
EXIT_CANCELLED = 130

# Modules outside this file that add `msdm` commands (see get_parser).
COMMAND_MODULES: tuple[str, ...] = ("engine.bounce", "osc_bridge.command", "desktop.command")


class CommandError(Exception):
    """A problem the user can fix; printed without a traceback."""


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model", action="append", metavar="FILE",
                       help="model file (.safetensors); repeat it with one single-stem model per "
                            "stem for ISDM separation (default: the model shipped with MSDM Studio)")
    group.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    group.add_argument("--backend", choices=("torch", "onnx"), default="torch",
                       help="torch (default) or onnx: ONNX Runtime with TensorRT/CUDA/CPU, exported once and cached")


def _add_sampler_options(parser: argparse.ArgumentParser, what: str) -> None:
    group = parser.add_argument_group("sampler", f"defaults are the paper's settings for {what}")
    group.add_argument("--steps", type=int, help="number of noise levels (paper: 150, imputation 256)")
    group.add_argument("--resamples", type=int, help="correction resamples per step (NFE = steps x resamples)")
    group.add_argument("--churn", type=float, help="S_churn: stochasticity added at each step")
    group.add_argument("--sigma-min", type=float, help="lowest noise level of the schedule")
    group.add_argument("--sigma-max", type=float, help="highest noise level of the schedule")
    group.add_argument("--method", choices=("euler", "heun", "dpmpp2m"),
                       help="ODE step: euler (paper), heun (2nd order, 2 NFE/step) or dpmpp2m "
                            "(DPM-Solver++(2M): 2nd order at 1 NFE/step, for few steps)")
    group.add_argument("--seed", type=int, default=0, help="random seed: same seed, same audio (default 0)")
    group.add_argument("--overlap", type=float, default=0.25,
                       help="overlap between windows of long audio, 0..0.9 (default 0.25)")


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("output")
    group.add_argument("-o", "--out", required=True, type=Path, metavar="DIR", help="output folder")
    group.add_argument("--format", choices=("wav", "flac"), default="wav", help="file format (default wav)")
    group.add_argument("--bits", choices=("16", "24", "32f"), default=None,
                       help="sample format: 16, 24 or 32f (float, WAV only); default 32f for WAV, 24 for FLAC")
    group.add_argument("--no-overwrite", action="store_true", help="fail instead of replacing existing files")
    group.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="msdm",
        description="MSDM Studio: generate, complete and separate the stems of a song "
                    "with one multi-source diffusion model.",
    )
    parser.add_argument("--version", action="version", version=f"msdm-studio {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sep = commands.add_parser("separate", help="separate a mix into its stems",
                              description="Writes DIR/<stem>.<ext> for each stem of the model, at the "
                                          "mix's sample rate, length and channel layout.")
    sep.add_argument("mix", type=Path, help="the mix: any common audio format, rate and channel count")
    sep.add_argument("--likelihood", choices=("dirac", "gaussian"), default="dirac",
                     help="dirac: stems sum to the mix exactly (default); gaussian: a soft constraint")
    sep.add_argument("--mono", action="store_true", help="downmix to mono first (half the work for stereo)")
    _add_model_options(sep)
    _add_sampler_options(sep, "separation")
    _add_output_options(sep)

    gen = commands.add_parser("generate", help="generate all stems of a new piece",
                              description="Writes every stem and mix.<ext> at the model's sample rate.")
    gen.add_argument("--seconds", type=float, required=True, help="length to generate, in seconds")
    _add_model_options(gen)
    _add_sampler_options(gen, "generation")
    _add_output_options(gen)

    imp = commands.add_parser("impute", help="generate the missing stems that fit the given ones",
                              description="Writes the generated stems and mix.<ext> (given + generated) "
                                          "at the given stems' sample rate, length and channel count.")
    imp.add_argument("--given", action="append", required=True, metavar="STEM=FILE",
                     help="a stem you have, e.g. drums=drums.wav; repeat for more")
    _add_model_options(imp)
    _add_sampler_options(imp, "imputation")
    _add_output_options(imp)

    onx = commands.add_parser("export-onnx", help="export a model's denoiser to ONNX",
                              description="The whole denoiser (network + preconditioning) as one ONNX graph with "
                                          "dynamic batch and length, checked and compared with PyTorch.")
    onx.add_argument("--model", help="model file (default: the shipped model)")
    onx.add_argument("-o", "--out", required=True, type=Path, help="output .onnx file")

    info = commands.add_parser("info", help="describe a model")
    _add_model_options(info)

    conv = commands.add_parser("import-checkpoint",
                               help="convert a paper .ckpt (PyTorch Lightning) to a .safetensors model",
                               description="Reads the checkpoint without executing pickled code; a file "
                                           "that tries to is refused.")
    conv.add_argument("checkpoint", type=Path, help="the .ckpt file")
    conv.add_argument("-o", "--out", required=True, type=Path, help="output .safetensors file")
    conv.add_argument("--stems", help="comma-separated stem names (default bass,drums,guitar,piano; "
                                      "required for a single-stem ISDM checkpoint, e.g. --stems drums)")
    conv.add_argument("--sample-rate", type=int, default=22050, help="the model's sample rate (default 22050)")
    conv.add_argument("--preset", choices=("paper", "small", "tiny"),
                      help="configuration to assume when the checkpoint has no hyper-parameters")
    ds = commands.add_parser("dataset", help="make datasets")
    ds_commands = ds.add_subparsers(dest="dataset_command", required=True, metavar="KIND",
                                    help="synth: render the synthetic Slakh-like dataset")
    synth = ds_commands.add_parser(
        "synth", help="render a Slakh-like multi-stem dataset (music21 corpus + FluidSynth)",
        description="4-part pieces of the music21 corpus rendered with General MIDI instruments "
                    "(bass, guitar, piano) plus a generated drum part; OUT/{train,valid,test}/TrackNNNNN/. "
                    "Needs: apt-get install fluidsynth timgm6mb-soundfont; pip install -e '.[train]'.")
    synth.add_argument("--out", required=True, type=Path, help="dataset folder (resumable: finished tracks are kept)")
    synth.add_argument("--tracks", required=True, type=int, help="number of tracks")
    synth.add_argument("--seed", type=int, default=0, help="random seed: same seed, same dataset (default 0)")
    synth.add_argument("--max-seconds", type=float, default=60.0, help="longest track, in seconds (default 60)")
    synth.add_argument("--soundfont", action="append",
                       help="a General MIDI .sf2 (default: TimGM6mb, then FluidR3_GM); repeat it to render "
                            "each stem of each track with one of several, drawn at random")
    synth.add_argument("--jobs", type=int, help="parallel renders (default: one per core)")
    synth.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    ev = commands.add_parser("evaluate", help="score separation on a dataset split (the paper's protocol)",
                             description="SI-SNRi per stem over 4 s windows of 262144-sample chunks, as in "
                                         "the paper; writes a CSV and a markdown table.")
    ev.add_argument("--data", required=True, type=Path, help="dataset folder holding train/ valid/ test/")
    ev.add_argument("--split", default="test", help="which split to score (default test)")
    ev.add_argument("--settings", nargs="+", default=["dirac", "gaussian"], metavar="LIK[:STEPS[:R[:CHURN[:METHOD]]]]",
                    help="sampler settings to score, e.g. dirac (the paper's), dirac:50:1 or dirac:16:2:20:dpmpp2m "
                         "(default: dirac gaussian at the paper's settings)")
    ev.add_argument("--methods", nargs="+", default=["model", "mixture", "oracle"],
                    choices=("model", "mixture", "oracle"),
                    help="model, plus references: mixture (0 dB) and oracle (ideal ratio mask)")
    ev.add_argument("--max-tracks", type=int, help="score only the first N tracks")
    ev.add_argument("--chunk", type=int, default=262144, help="samples per separated chunk (paper 262144)")
    ev.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    ev.add_argument("--csv", type=Path, default=Path("separation_results.csv"), help="CSV output")
    ev.add_argument("--markdown", type=Path, default=Path("separation_results.md"), help="markdown table output")
    ev.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _add_model_options(ev)

    trn = commands.add_parser("train", help="train a model (PyTorch Lightning; CPU, GPU, many GPUs)",
                              description="Writes OUT/model.safetensors, Lightning checkpoints (OUT/checkpoints, "
                                          "resumable) and the learning curve (OUT/logs/version_N/metrics.csv).")
    trn.add_argument("--data", required=True, type=Path,
                     help="dataset folder: DATA/{train,valid}/<track>/<stem>.wav, or a Slakh2100 split")
    trn.add_argument("-o", "--out", required=True, type=Path, help="run folder")
    trn.add_argument("--preset", choices=("paper", "default", "tiny"), default="default",
                     help="paper: the published 405.5M model; default: what MSDM Studio ships; tiny: tests")
    trn.add_argument("--stems", help="comma-separated stems to train on (default: the dataset's)")
    trn.add_argument("--isdm-stem", help="train a single-stem (ISDM) model of this stem")
    trn.add_argument("--max-steps", type=int, help="optimizer steps (default: the preset's)")
    trn.add_argument("--batch-size", type=int, help="examples per step and device (default: the preset's)")
    trn.add_argument("--max-time", help="stop (and export) after this long, DD:HH:MM:SS, e.g. 00:01:30:00")
    trn.add_argument("--accelerator", default="auto", help="cpu, gpu or auto (default auto)")
    trn.add_argument("--devices", default="1", help="devices per node, or 'auto' (default 1)")
    trn.add_argument("--num-nodes", type=int, default=1, help="machines (DDP across nodes)")
    trn.add_argument("--strategy", default="auto", help="Lightning strategy, e.g. ddp (default auto)")
    trn.add_argument("--precision", help="e.g. bf16-mixed, 32-true (default: the preset's)")
    trn.add_argument("--resume", type=Path, help="Lightning checkpoint to resume from (e.g. OUT/checkpoints/last.ckpt)")
    trn.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    trn.add_argument("--workers", type=int, default=0, help="data loading processes (default 0)")
    trn.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    # Commands that live beside the engine register themselves: each module has
    # `register(commands)`, which adds its sub-parsers with `set_defaults(handler=...)`
    # and imports nothing heavy (torch, Qt) until the handler runs.
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(commands)
    return parser


def _settings(args, defaults):
    return defaults.override(
        steps=args.steps, num_resamples=args.resamples, s_churn=args.churn,
        sigma_min=args.sigma_min, sigma_max=args.sigma_max, method=args.method,
    )


def _output(args):
    from .pipeline import OutputFormat

    bits = args.bits or ("24" if args.format == "flac" else "32f")
    if args.format == "flac" and bits == "32f":
        raise CommandError("FLAC cannot store 32-bit float: use --bits 16 or 24, or --format wav")
    return OutputFormat(extension=args.format, bits=bits, overwrite=not args.no_overwrite)


def _load(args):
    import torch

    from .model import load_models

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise CommandError(f"--device {args.device}: no CUDA GPU is available to PyTorch here; use --device cpu")
    return load_models(args.model, device=args.device, backend=getattr(args, "backend", "torch"))


class _ProgressBar:
    def __init__(self, quiet: bool) -> None:
        self.bar = None
        if not quiet:
            from tqdm import tqdm

            self.bar = tqdm(total=1000, unit="‰", bar_format="{desc}: {percentage:3.0f}%|{bar}| "
                                                               "[{elapsed}<{remaining}]", file=sys.stderr)

    def __call__(self, fraction: float, message: str) -> None:
        if self.bar is not None:
            self.bar.set_description_str(message, refresh=False)
            self.bar.update(max(0, round(fraction * 1000) - self.bar.n))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _report(paths, quiet: bool) -> None:
    if not quiet:
        for name, path in paths.items():
            print(f"{name}: {path}")


def parse_setting(text: str):
    """'dirac', 'gaussian:50', 'dirac:50:1:10', 'dirac:16:2:20:dpmpp2m'
    -> (likelihood, steps, resamples, churn, method); missing fields are None."""
    from .diffusion import METHODS

    parts = text.split(":")
    if not 1 <= len(parts) <= 5 or parts[0] not in ("dirac", "gaussian"):
        raise CommandError(f"--settings {text!r}: write LIKELIHOOD[:STEPS[:RESAMPLES[:CHURN[:METHOD]]]], "
                           "e.g. dirac:50:1 or dirac:16:2:20:dpmpp2m")
    method = parts[4] if len(parts) > 4 else None
    if method is not None and method not in METHODS:
        raise CommandError(f"--settings {text!r}: unknown method {method!r}; use one of {', '.join(METHODS)}")
    try:
        steps = int(parts[1]) if len(parts) > 1 else None
        resamples = int(parts[2]) if len(parts) > 2 else None
        churn = float(parts[3]) if len(parts) > 3 else None
    except ValueError:
        raise CommandError(f"--settings {text!r}: steps and resamples are integers, churn a number") from None
    return parts[0], steps, resamples, churn, method


def _evaluate(args) -> int:
    from training.evaluate import evaluate_dataset, write_results

    from . import tasks

    settings = [parse_setting(text) for text in args.settings]
    models = _load(args)
    results = []
    methods = [m for m in args.methods if m != "model"]
    runs = [(None, m) for m in methods] + ([(s, "model") for s in settings] if "model" in args.methods else [])
    bar = _ProgressBar(args.quiet)
    try:
        for index, (setting, method) in enumerate(runs):
            kwargs = {}
            if setting:
                likelihood, steps, resamples, churn, method_name = setting
                kwargs = dict(likelihood=likelihood, settings=tasks.default_separation_settings(
                    likelihood, models.is_isdm).override(steps=steps, num_resamples=resamples, s_churn=churn,
                                                         method=method_name))

            def progress(fraction, message, index=index):
                bar((index + fraction) / len(runs), message)

            results.append(evaluate_dataset(models, args.data, split=args.split, methods=(method,),
                                            seed=args.seed, max_tracks=args.max_tracks, chunk=args.chunk,
                                            progress=progress, **kwargs))
    finally:
        bar.close()
    write_results(results, args.csv, args.markdown)
    print(args.markdown.read_text())
    return 0


def _run(args) -> int:
    if getattr(args, "handler", None) is not None:  # a registered command (COMMAND_MODULES)
        return args.handler(args)
    from . import pipeline, tasks

    if args.command == "info":
        models = _load(args)
        print(f"model:       {models.describe()}")
        print(f"kind:        {'ISDM (one model per stem)' if models.is_isdm else 'MSDM (one joint model)'}")
        print(f"stems:       {', '.join(models.stems)}")
        print(f"sample rate: {models.sample_rate} Hz")
        print(f"window:      {models.window} samples ({models.window / models.sample_rate:.2f} s)")
        print(f"parameters:  {models.num_parameters:,}")
        for model in models.models:
            print(f"source:      {model.source}")
        return 0

    if args.command == "export-onnx":
        from .model import load_models
        from .onnx_backend import export_onnx

        models = load_models([args.model] if args.model else None)
        print(export_onnx(models.models[0], args.out).describe())
        return 0

    if args.command == "import-checkpoint":
        from .config import preset
        from .lightning_import import import_checkpoint

        stems = tuple(s.strip() for s in args.stems.split(",")) if args.stems else None
        model = import_checkpoint(args.checkpoint, args.out, base=preset(args.preset) if args.preset else None,
                                  stems=stems, sample_rate=args.sample_rate)
        print(f"wrote {args.out}: stems {', '.join(model.stems)}, {model.num_parameters:,} parameters")
        return 0

    if args.command == "evaluate":
        return _evaluate(args)

    if args.command == "dataset":
        from training.synth import SynthError, render_dataset

        if args.tracks < 1:
            raise CommandError("--tracks must be at least 1")
        bar = _ProgressBar(args.quiet)
        try:
            summary = render_dataset(args.out, args.tracks, args.seed, max_seconds=args.max_seconds,
                                     soundfont=args.soundfont, jobs=args.jobs,
                                     progress=lambda done, total: bar(done / total, f"rendered {done}/{total}"))
        except SynthError as error:
            raise CommandError(str(error)) from None
        finally:
            bar.close()
        splits = summary.get("splits", {})
        print(f"wrote {args.out}: {summary.get('seconds', 0) / 3600:.2f} h of audio; " + ", ".join(
            f"{name} {split.get('tracks', 0)} tracks" for name, split in splits.items()))
        return 0

    if args.command == "train":
        from training.train import train

        devices = args.devices if args.devices == "auto" else int(args.devices)
        stems = [s.strip() for s in args.stems.split(",")] if args.stems else None
        path = train(args.data, args.out, preset=args.preset, stems=stems, isdm_stem=args.isdm_stem,
                     max_steps=args.max_steps, max_time=args.max_time, batch_size=args.batch_size, devices=devices,
                     accelerator=args.accelerator, num_nodes=args.num_nodes, strategy=args.strategy,
                     precision=args.precision, resume=args.resume, seed=args.seed,
                     num_workers=args.workers, quiet=args.quiet)
        if path.exists():
            print(f"wrote {path}")
        return 0

    if not 0 <= args.overlap <= 0.9:
        raise CommandError(f"--overlap must be between 0 and 0.9, got {args.overlap}")
    output = _output(args)
    models = _load(args)
    bar = _ProgressBar(args.quiet)
    try:
        if args.command == "separate":
            settings = _settings(args, tasks.default_separation_settings(args.likelihood, models.is_isdm))
            paths = pipeline.separate_file(models, args.mix, args.out, likelihood=args.likelihood,
                                           settings=settings, seed=args.seed, mono=args.mono,
                                           overlap=args.overlap, output=output, progress=bar)
        elif args.command == "generate":
            paths = pipeline.generate_file(models, args.out, args.seconds, seed=args.seed,
                                           settings=_settings(args, tasks.GENERATE), overlap=args.overlap,
                                           output=output, progress=bar)
        else:
            given = {}
            for item in args.given:
                stem, sep, path = item.partition("=")
                if not sep or not stem or not path:
                    raise CommandError(f"--given {item!r}: write it as STEM=FILE, e.g. drums=drums.wav")
                if stem in given:
                    raise CommandError(f"--given {stem} appears twice")
                given[stem] = path
            paths = pipeline.impute_file(models, given, args.out, seed=args.seed,
                                         settings=_settings(args, tasks.IMPUTE), overlap=args.overlap,
                                         output=output, progress=bar)
    finally:
        bar.close()
    _report(paths, args.quiet)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    try:
        return _run(args)
    except KeyboardInterrupt:
        print("msdm: cancelled; no partial files were left", file=sys.stderr)
        return EXIT_CANCELLED
    except Exception as error:  # noqa: BLE001 - user errors are said in one line, the rest re-raised
        # The error classes are imported only now: engine.model loads torch, which
        # light commands (osc-send, run once per DAW message) never need.
        from .audio_io import AudioInputError
        from .model import ModelFileError

        if not isinstance(error, (CommandError, AudioInputError, ModelFileError, FileExistsError, ValueError,
                                  RuntimeError)):
            raise
        print(f"msdm {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    # `python -m engine.cli` runs this file as __main__; the registered command
    # modules import `engine.cli`, a second copy whose CommandError is not the one
    # caught above. Run the package's copy so there is one of each.
    from engine.cli import main as package_main

    sys.exit(package_main())
