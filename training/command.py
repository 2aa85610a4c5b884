"""`msdm dataset`, `msdm train` and `msdm evaluate`: training's commands.
Registered in engine/cli.py's COMMAND_MODULES; torch, Lightning and music21 are
imported only when a handler runs."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from engine.core.latent_options import LATENT_ONLY, latent_options_for
from engine.errors import CommandError
from engine.jobs.options import add_model_options, load_models_for
from engine.jobs.progress import ProgressBar


def register(commands) -> None:
    ds = commands.add_parser("dataset", help="make datasets")
    ds_commands = ds.add_subparsers(dest="dataset_command", required=True, metavar="KIND",
                                    help="synth: render the synthetic Slakh-like dataset; unseen: render test "
                                         "tracks from material reserved for evaluation")
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
    synth.add_argument("--first-track", type=int, default=1,
                       help="render tracks FIRST..TRACKS of the plan only (more tracks of the same split of pieces)")
    synth.add_argument("--split", action="append", choices=("train", "valid", "test"),
                       help="render only this split's tracks (repeatable; default all)")
    synth.add_argument("--timbres", choices=("soundfonts", "diverse", "holdout", "recorded", "holdout-recorded"), default="soundfonts",
                       help="soundfonts (default): the --soundfont list with each track's GM programs; diverse: "
                            "every SoundFont, recorded kit and synthesised instrument training may use, with "
                            "random effects; holdout: the project's held-out timbres (MuseScore General, held-out "
                            "synthesis families), for choosing models; recorded: as diverse, with the installed "
                            "recorded instruments (python -m training.synth.fetch_samples) for most guitar, piano and drum "
                            "stems; holdout-recorded: "
                            "the recorded instruments held out of training (an electric bass, an acoustic guitar, "
                            "a piano), for choosing models")
    synth.add_argument("--partial-timbres", action="store_true",
                       help="render a timbre plan even when some of its SoundFonts are not installed (it draws "
                            "among the others: a different dataset than the plan's; refused without this)")
    synth.add_argument("--music", choices=("corpus", "mixed"), default="corpus",
                       help="corpus (default): 4-part pieces of the music21 corpus; mixed: half the tracks "
                            "composed by the project (progressions, bass lines, strums, grooves), the rest from "
                            "an extended corpus (4-6 parts, more composers)")
    synth.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    synth.set_defaults(handler=run_dataset)

    unseen = ds_commands.add_parser(
        "unseen", help="render test tracks the separator has never heard (evaluation only)",
        description="Monteverdi and Josquin from the music21 corpus, pitched stems rendered by TiMidity++ with "
                    "freepats, drums played with recorded Hydrogen kits: material RESERVED for evaluation (never "
                    "train, tune or select models on it). Writes OUT/test/TrackNNNNN/ like `dataset synth`, so "
                    "`msdm evaluate --data OUT --split test` scores it. Needs: apt-get install timidity freepats "
                    "hydrogen-drumkits.")
    unseen.add_argument("--out", required=True, type=Path, help="dataset folder (resumable: finished tracks are kept)")
    unseen.add_argument("--tracks", required=True, type=int, help="number of tracks")
    unseen.add_argument("--seed", type=int, default=0, help="random seed: same seed, same tracks (default 0)")
    unseen.add_argument("--max-seconds", type=float, default=60.0, help="longest track, in seconds (default 60)")
    unseen.add_argument("--jobs", type=int, help="parallel renders (default: one per core)")
    unseen.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    unseen.set_defaults(handler=run_dataset_unseen)

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
    add_model_options(ev)
    ev.set_defaults(handler=run_evaluate)

    eg = commands.add_parser(
        "evaluate-generation", help="score a model's generation and imputation (distance, pitch, agreement)",
        description="Per stem: Fréchet distances of log-mel and of note-structure frame features (0 = real "
                    "windows from other tracks, 1 = noise shaped to them), pitch clarity (and its ratio to real "
                    "stems) and, for imputation, chroma and onset agreement with the given stems (0 = another "
                    "track's stem, 1 = the true stem), on windows of the split; beside real and shaped-noise "
                    "reference rows. Writes a CSV and a markdown table.")
    eg.add_argument("--data", required=True, type=Path, help="dataset folder holding the split")
    eg.add_argument("--split", default="test", help="which split to use (default test)")
    eg.add_argument("--windows", type=int, default=8, help="evaluation windows, one model window each (default 8)")
    eg.add_argument("--tasks", nargs="+", default=["generate", "impute"], choices=("generate", "impute"),
                    help="what to score (default both)")
    eg.add_argument("--given", nargs="+", default=["bass+drums", "piano"], metavar="STEM[+STEM...]",
                    help="given stems of each imputation run (default: bass+drums piano)")
    eg.add_argument("--prior", choices=("waveform", "latent"),
                    help="which prior samples (default: the latent prior when the model file has one)")
    eg.add_argument("--steps", type=int, help="sampler steps (default: the task's and prior's)")
    eg.add_argument("--method", choices=("euler", "heun", "dpmpp2m"), help="sampler method (default: the task's)")
    eg.add_argument("--churn", type=float, help="S_churn (default: the task's)")
    eg.add_argument("--resamples", type=int, help="resamples per step (default 1)")
    eg.add_argument("--guidance", type=float, help="latent imputation: classifier-free guidance weight "
                                                   "(default: the task's; 1 = the learned conditional alone)")
    eg.add_argument("--harmony", type=float, help="latent imputation: harmony guidance strength "
                                                  "(engine.audio.harmony_guidance; default: the task's)")
    eg.add_argument("--rhythm", type=float, help="latent imputation: rhythm guidance strength "
                                                 "(engine.audio.rhythm_guidance; default: the task's)")
    eg.add_argument("--autoguidance", type=float, help="latent prior: autoguidance weight with the model file's "
                                                       "guide (default: the file's; 1: off)")
    eg.add_argument("--sigma-max", type=float, help="highest noise level (default: the task's)")
    eg.add_argument("--batch", type=int, default=4, help="windows sampled together (default 4)")
    eg.add_argument("--draws", type=int, default=16, help="real draws that calibrate the distance (default 16)")
    eg.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    eg.add_argument("--cache", type=Path, help="folder that keeps the sampled windows as WAV files: a rerun with "
                                               "the same model, windows and settings reads them back")
    eg.add_argument("--csv", type=Path, default=Path("generation_results.csv"), help="CSV output")
    eg.add_argument("--markdown", type=Path, default=Path("generation_results.md"), help="markdown output")
    eg.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_model_options(eg)
    eg.set_defaults(handler=run_evaluate_generation)

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
    trn.add_argument("--init", type=Path, metavar="MODEL",
                     help="start from the diffusion prior in this model file (e.g. the shipped one): its weights "
                          "and config; the optimizer starts fresh")
    trn.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    trn.add_argument("--workers", type=int, default=0, help="data loading processes (default 0)")
    trn.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    trn.set_defaults(handler=run_train)



def parse_setting(text: str):
    """'dirac', 'gaussian:50', 'dirac:50:1:10', 'dirac:16:2:20:dpmpp2m', 'dirac:4:1:0:dpmpp2m:0.05'
    -> (likelihood, steps, resamples, churn, method, start); missing fields are None.
    START is 'noise' (the paper's start) or a noise level: begin there from the
    model's first-guess separator (a warm start). 'guess' is the first guess
    alone: ('dirac', 0, None, None, None, 'guess'). 'latent:8:1:0:dpmpp2m:1.0'
    refines the first guess with the latent prior from noise level 1.0
    (engine.audio.latent_refinement; START may only be a level)."""
    from engine.core.diffusion import METHODS  # torch: only when evaluating

    if text == "guess":
        return "dirac", 0, None, None, None, "guess"
    parts = text.split(":")
    if not 1 <= len(parts) <= 6 or parts[0] not in ("dirac", "gaussian", "latent"):
        raise CommandError(f"--settings {text!r}: write guess, or LIKELIHOOD[:STEPS[:RESAMPLES[:CHURN[:METHOD[:START]]]]], "
                           "e.g. dirac:50:1, dirac:16:2:20:dpmpp2m or dirac:4:1:0:dpmpp2m:0.05, or "
                           "latent[:STEPS[:RESAMPLES[:CHURN[:METHOD[:SIGMA]]]]] (the first guess refined by the "
                           "latent prior from SIGMA)")
    method = parts[4] if len(parts) > 4 and parts[4] else None
    if method is not None and method not in METHODS:
        raise CommandError(f"--settings {text!r}: unknown method {method!r}; use one of {', '.join(METHODS)}")
    try:
        steps = int(parts[1]) if len(parts) > 1 and parts[1] else None
        resamples = int(parts[2]) if len(parts) > 2 and parts[2] else None
        churn = float(parts[3]) if len(parts) > 3 and parts[3] else None
        start = None if len(parts) < 6 else ("noise" if parts[5] == "noise" else float(parts[5]))
    except ValueError:
        raise CommandError(f"--settings {text!r}: steps and resamples are integers, churn a number, "
                           "start 'noise' or a noise level") from None
    if parts[0] == "latent" and start == "noise":
        raise CommandError(f"--settings {text!r}: the latent prior only refines the first guess: "
                           "give a noise level, not 'noise'")
    if isinstance(start, float) and not 0 < start <= 100:
        raise CommandError(f"--settings {text!r}: a warm start's noise level must be in (0, 100]")
    return parts[0], steps, resamples, churn, method, start


def settings_for(setting, models):
    """A parsed --settings entry as (likelihood, SamplerSettings) for `models`."""
    from engine.core import tasks

    likelihood, steps, resamples, churn, method, start = setting
    if likelihood == "latent":
        # The stems are the mix masked, so they sum to it: scored as Dirac.
        base = tasks.LATENT_REFINE.override(sigma_max=start)
        return "dirac", base.override(steps=steps, num_resamples=resamples, s_churn=churn, method=method)
    base = tasks.default_separation_settings(likelihood, models.is_isdm)
    if start == "guess":
        base = tasks.SEPARATE_WARM
    elif isinstance(start, float):
        base = tasks.SEPARATE_WARM.override(sigma_max=start, steps=1)
    return likelihood, base.override(steps=steps, num_resamples=resamples, s_churn=churn, method=method)


def run_evaluate(args) -> int:
    from training.evaluate import evaluate_dataset, write_results

    settings = [parse_setting(text) for text in args.settings]
    models = load_models_for(args)
    results = []
    methods = [m for m in args.methods if m != "model"]
    runs = [(None, m) for m in methods] + ([(s, "model") for s in settings] if "model" in args.methods else [])
    bar = ProgressBar(args.quiet)
    try:
        for index, (setting, method) in enumerate(runs):
            kwargs = {}
            if setting:
                likelihood, sampler = settings_for(setting, models)
                kwargs = dict(likelihood=likelihood, settings=sampler)

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


def autoencoder_round_trip(model, windows, seed: int):
    """[W, N, T] real windows encoded and decoded by `model`'s stem autoencoder
    (decoded as generation decodes: the phase-locked vocoder for the stems
    the file names, Griffin-Lim seeded per window for the others): what a
    perfect latent prior would give back."""
    import numpy as np

    from engine.audio.latent_generation import decode_stems, encode_stems
    from engine.core.diffusion import seed_for

    return np.stack([decode_stems(model, encode_stems(model, window), window.shape[-1], seed_for(seed, w))
                     for w, window in enumerate(windows)]).astype(np.float32)


def run_evaluate_generation(args) -> int:
    from engine.core import tasks
    from engine.audio.latent_generation import resolve_autoguidance
    from training.evaluate_generation import Judge, elapsed, same_seed_correlation, score_task, write_report
    from training.generation_candidates import load_real_windows, sample_candidates

    if args.windows < 2:
        raise CommandError("--windows must be at least 2 (a covariance needs two windows' frames)")
    models = load_models_for(args)
    given_sets = [tuple(g.split("+")) for g in args.given] if "impute" in args.tasks else []
    for given in given_sets:
        unknown = [g for g in given if g not in models.stems]
        if unknown or len(set(given)) != len(given) or len(given) >= len(models.stems):
            raise CommandError(f"--given {'+'.join(given)}: name some but not all of the stems "
                               f"{', '.join(models.stems)}, each once, joined by +")
    runs = (["generate"] if "generate" in args.tasks else []) + [("impute", g) for g in given_sets]
    began = time.perf_counter()
    bar = ProgressBar(args.quiet)
    try:
        real = load_real_windows(args.data, models.stems, models.sample_rate, models.window, args.windows,
                                 split=args.split, seed=args.seed)
        judge = Judge(real, draws=args.draws, seed=args.seed,
                      progress=lambda f, m: bar(0.1 * f, m))
        rows, imputed, notes = [], {}, []
        ceiling = (autoencoder_round_trip(models.latent, real.evaluation_stems, args.seed)
                   if models.latent is not None and args.prior != "waveform" else None)
        for index, run in enumerate(runs):
            task, given = (run, ()) if run == "generate" else run
            settings = tasks.generation_settings(task, models.latent is not None, args.prior, steps=args.steps,
                                                 method=args.method, s_churn=args.churn,
                                                 num_resamples=args.resamples, sigma_max=args.sigma_max,
                                                 **{name: getattr(args, name) for name in latent_options_for(task)})
            if models.latent is not None and settings.prior == "latent":
                settings = resolve_autoguidance(settings, models.latent)   # the label says the weight used

            def progress(fraction, message, index=index):
                bar(0.1 + 0.9 * (index + fraction) / len(runs), message)

            audio = sample_candidates(models, task, real, settings, given=given, seed=args.seed,
                                      batch=args.batch, cache=args.cache, progress=progress)
            guided = "".join(f", {name} {getattr(settings, name):g}" for name in latent_options_for(task)
                             if getattr(settings, name) not in (LATENT_ONLY[name][0], None))
            label = (f"model ({settings.method} {settings.steps} steps x {settings.num_resamples}, "
                     f"churn {settings.s_churn:g}{guided}, NFE {settings.nfe})")
            record = {"sampler": dataclasses.asdict(settings), "seed": args.seed, "model": models.describe()}
            rows += score_task(judge, task, audio, given=given, label=label, settings=record, seed=args.seed,
                               ceiling=ceiling)
            if task == "impute":
                imputed[given] = audio
    finally:
        bar.close()
    pairs = [(a, b) for i, a in enumerate(imputed) for b in list(imputed)[i + 1:]]
    for a, b in pairs:
        for stem in models.stems:
            if stem not in a and stem not in b:
                n = models.stems.index(stem)
                notes.append(f"{stem} imputed from {'+'.join(a)} and from {'+'.join(b)} with the same seed: "
                             f"sample correlation {same_seed_correlation(imputed[a][:, n], imputed[b][:, n]):.3f}.")
    notes.append(f"{args.data}/{args.split}, model {models.describe()}, {elapsed(began)}.")
    write_report(rows, judge, args.csv, args.markdown, notes)
    print(args.markdown.read_text())
    return 0


def run_dataset(args) -> int:
    from training.synth import SynthError, render_dataset

    if args.tracks < 1:
        raise CommandError("--tracks must be at least 1")
    bar = ProgressBar(args.quiet)
    try:
        summary = render_dataset(args.out, args.tracks, args.seed, max_seconds=args.max_seconds,
                                 soundfont=args.soundfont, jobs=args.jobs, first_track=args.first_track,
                                 splits=tuple(args.split or ("train", "valid", "test")),
                                 timbres=args.timbres, music=args.music, partial_timbres=args.partial_timbres,
                                 progress=lambda done, total: bar(done / total, f"rendered {done}/{total}"))
    except SynthError as error:
        raise CommandError(str(error)) from None
    finally:
        bar.close()
    splits = summary.get("splits", {})
    print(f"wrote {args.out}: {summary.get('seconds', 0) / 3600:.2f} h of audio; " + ", ".join(
        f"{name} {split.get('tracks', 0)} tracks" for name, split in splits.items()))
    for line in summary.get("skipped", []):
        print(f"skipped {line}")
    return 0


def run_dataset_unseen(args) -> int:
    from training.synth import SynthError
    from training.synth.unseen import render_unseen

    if args.tracks < 1:
        raise CommandError("--tracks must be at least 1")
    bar = ProgressBar(args.quiet)
    try:
        summary = render_unseen(args.out, args.tracks, args.seed, max_seconds=args.max_seconds, jobs=args.jobs,
                                progress=lambda done, total: bar(done / total, f"rendered {done}/{total}"))
    except SynthError as error:
        raise CommandError(str(error)) from None
    finally:
        bar.close()
    test = summary["splits"]["test"]
    print(f"wrote {args.out}: {test['tracks']} test tracks, {test['seconds'] / 60:.1f} min of audio "
          f"(reserved for evaluation)")
    for skip in summary["skipped"]:
        print(f"skipped {skip['track']} ({skip['piece']}): {skip['error']}")
    return 0


def run_train(args) -> int:
    from training.train import train

    devices = args.devices if args.devices == "auto" else int(args.devices)
    stems = [s.strip() for s in args.stems.split(",")] if args.stems else None
    path = train(args.data, args.out, preset=args.preset, stems=stems, isdm_stem=args.isdm_stem,
                 max_steps=args.max_steps, max_time=args.max_time, batch_size=args.batch_size, devices=devices,
                 accelerator=args.accelerator, num_nodes=args.num_nodes, strategy=args.strategy,
                 precision=args.precision, resume=args.resume, seed=args.seed,
                 num_workers=args.workers, quiet=args.quiet, init=args.init)
    if path.exists():
        print(f"wrote {path}")
    return 0
