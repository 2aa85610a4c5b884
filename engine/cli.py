"""The `msdm` command: separate, generate, impute, info, export-onnx, import-checkpoint here;
the other commands register themselves from their own front end (COMMAND_MODULES)."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
from pathlib import Path
from typing import Sequence

from engine import __version__
from engine.errors import UserError
from engine.jobs.options import add_job_options, add_model_options, job_options_from_args, load_models_for
from engine.jobs.progress import ProgressBar
from engine.jobs.run import Job, parse_given, run_job
from engine.jobs.signals import StopSignals, exit_status

EXIT_USAGE = 2
EXIT_CANCELLED = 130

# Modules outside this file that add `msdm` commands (see get_parser).
COMMAND_MODULES: tuple[str, ...] = ("engine.bounce.command", "osc_bridge.command", "desktop.command",
                                    "training.command")


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
    add_model_options(sep)
    add_job_options(sep, "separate", "separation")

    gen = commands.add_parser("generate", help="generate all stems of a new piece",
                              description="Writes every stem and mix.<ext> at the model's sample rate.")
    gen.add_argument("--seconds", type=float, required=True, help="length to generate, in seconds")
    add_model_options(gen)
    add_job_options(gen, "generate", "generation")

    imp = commands.add_parser("impute", help="generate the missing stems that fit the given ones",
                              description="Writes the generated stems and mix.<ext> (given + generated) "
                                          "at the given stems' sample rate, length and channel count.")
    imp.add_argument("--given", action="append", required=True, metavar="STEM=FILE",
                     help="a stem you have, e.g. drums=drums.wav; repeat for more (with --range: every stem "
                          "you keep, and the ones to regenerate)")
    add_model_options(imp)
    add_job_options(imp, "impute", "imputation")

    onx = commands.add_parser("export-onnx", help="export a model's denoiser to ONNX",
                              description="The whole denoiser (network + preconditioning) as one ONNX graph with "
                                          "dynamic batch and length, checked and compared with PyTorch.")
    onx.add_argument("--model", help="model file (default: the shipped model)")
    onx.add_argument("-o", "--out", required=True, type=Path, help="output .onnx file")

    info = commands.add_parser("info", help="describe a model")
    add_model_options(info)

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
    # Commands that live beside the engine register themselves: each module has
    # `register(commands)`, which adds its sub-parsers with `set_defaults(handler=...)`
    # and imports nothing heavy (torch, Qt) until the handler runs.
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(commands)
    return parser


def _report(paths, quiet: bool) -> None:
    if not quiet:
        for name, path in paths.items():
            print(f"{name}: {path}")


def _run(args) -> int:
    if getattr(args, "handler", None) is not None:  # a registered command (COMMAND_MODULES)
        return args.handler(args)

    if args.command == "info":
        models = load_models_for(args)
        print(f"model:       {models.describe()}")
        print(f"kind:        {'ISDM (one model per stem)' if models.is_isdm else 'MSDM (one joint model)'}")
        print(f"stems:       {', '.join(models.stems)}")
        print(f"sample rate: {models.sample_rate} Hz")
        print(f"window:      {models.window} samples ({models.window / models.sample_rate:.2f} s)")
        print(f"parameters:  {models.num_parameters:,}")
        separator = models.separator
        if separator is not None:
            c = separator.config
            extras = (f", mask temperature {c.mask_temperature:g}" if c.mask_temperature != 1.0 else "") + \
                     (f", time-frequency refinement {c.refine_channels} x {c.refine_layers}" if c.refine_channels else "")
            print(f"first guess: mask separator, STFT {c.n_fft}/{c.hop}, BiLSTM {c.layers} x {c.hidden}{extras}, "
                  f"{models.models[0].separator_parameters:,} parameters (separation starts from it)")
        else:
            print("first guess: none (separation runs the diffusion sampler from noise)")
        latent = models.latent
        if latent is not None:
            from engine.core.latent_prior import count_parameters

            c = latent.latent_prior.config
            guide = latent.latent_guide
            parts = [f"latent:      autoencoder {count_parameters(latent.autoencoder):,} + diffusion prior "
                     f"{count_parameters(latent.latent_prior):,} parameters, sample scale "
                     + (", ".join(f"{n} {v:g}" for n, v in zip(latent.stems, c.sample_stem_scales))
                        if c.sample_stem_scales else f"{c.sample_scale:g}")]
            if guide is not None and c.autoguidance != 1.0:
                parts.append(f"autoguidance {c.autoguidance:g} (scale {c.scale_for(c.autoguidance):g}) with a guide "
                             f"of {count_parameters(guide):,} parameters, by default for generate only")
            elif guide is not None:
                when_on = f"; scale {c.autoguidance_scale:g} when on" if c.autoguidance_scale else ""
                parts.append(f"a guide of {count_parameters(guide):,} parameters for --autoguidance W "
                             f"(off by default{when_on})")
            if c.span_projection:
                parts.append("projected onto its output span")
            if c.sample_level_in:
                parts.append(f"frame levels mapped to real stems' ({len(c.sample_level_in) // c.stems} points a stem, "
                             "unguided)")
            mapped = [name for name, maps in zip(latent.stems, c.stem_band_maps_for(1.0) or ()) if maps is not None]
            if mapped:
                parts.append(f"band levels of {', '.join(mapped)} mapped to real stems' ({c.sample_bands} bands, unguided)")
            print(", ".join(parts) + " (generate and impute run on it)")
        for model in models.models:
            print(f"source:      {model.source}")
        return 0

    if args.command == "export-onnx":
        from engine.storage.loading import load_models
        from engine.storage.onnx_backend import export_onnx

        models = load_models([args.model] if args.model else None)
        print(export_onnx(models.models[0], args.out).describe())
        return 0

    if args.command == "import-checkpoint":
        from engine.core.config import preset
        from engine.storage.lightning_import import import_checkpoint

        stems = tuple(s.strip() for s in args.stems.split(",")) if args.stems else None
        model = import_checkpoint(args.checkpoint, args.out, base=preset(args.preset) if args.preset else None,
                                  stems=stems, sample_rate=args.sample_rate)
        print(f"wrote {args.out}: stems {', '.join(model.stems)}, {model.num_parameters:,} parameters")
        return 0

    options = job_options_from_args(args)  # checked before the model loads
    job = Job(args.command, args.out, options, mix=getattr(args, "mix", None), seconds=getattr(args, "seconds", None),
              given=parse_given(args.given) if args.command == "impute" else {})
    models = load_models_for(args)
    bar = ProgressBar(args.quiet)
    takes = getattr(options, "takes", 1)

    def report_take(number: int, seed: int, files) -> None:
        if takes > 1 and not args.quiet:
            bar.write(f"take {number} (seed {seed}):")
            for name, path in files.items():
                bar.write(f"{name}: {path}")

    def report_preview(files) -> None:
        if not args.quiet:
            folder = Path(next(iter(files.values()))).parent
            bar.write(f"preview (the first window) written: {folder}")

    try:
        paths = run_job(models, job, progress=bar, on_take=report_take, on_preview=report_preview)
    finally:
        bar.close()
    if takes == 1:
        _report(paths, args.quiet)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    # SIGTERM stops this file's commands as Ctrl-C does (exit 128 + the signal: engine/jobs/signals.py);
    # registered commands (serve, bounce, app...) handle signals themselves.
    stop = StopSignals() if getattr(args, "handler", None) is None else contextlib.nullcontext()
    try:
        with stop:
            return _run(args)
    except KeyboardInterrupt as interrupt:
        print("msdm: cancelled; no partial files were left", file=sys.stderr)
        return exit_status(interrupt)
    except (UserError, FileExistsError) as error:  # what the user can fix: one line; anything else is a bug
        print(f"msdm {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
