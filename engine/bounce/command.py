"""`msdm bounce`: its flags and handler. Registered in engine/cli.py's
COMMAND_MODULES; torch is imported only when it runs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from engine.bounce.bouncer import TASKS, BounceJob, Bouncer, gather_summaries, rank_and_world
from engine.bounce.inputs import DEFAULT_PATTERN, InputError, check_pattern, find_songs
from engine.errors import CommandError
from engine.jobs.options import add_job_options, add_model_options, job_options_from_args, load_models_for
from engine.jobs.signals import StopSignals, Stopped, exit_now


def register(commands) -> None:
    bounce = commands.add_parser(
        "bounce", help="bounce the stems of many songs (files, folders, list files)",
        description="Writes one folder of stems per input song into OUT (see --pattern) and a manifest "
                    "(OUT/manifest.jsonl, one JSON line per finished song): run the same command again to "
                    "skip the finished songs and retry the failed ones. Under torchrun every rank bounces "
                    "its share of the songs into OUT/manifest.rankR.jsonl. Ctrl-C or SIGTERM: the songs in "
                    "flight stop at their next sampler step and leave no file, the summary is printed and "
                    "the exit status is 130 (SIGINT) or 143 (SIGTERM); a second signal stops at once.")
    bounce.add_argument("inputs", nargs="+", metavar="IN",
                        help="audio files, folders (searched recursively) or list files (.txt/.m3u: one path a line)")
    bounce.add_argument("--task", choices=TASKS, default="separate",
                        help="separate each mix into its stems (default), or impute: each input is the --given "
                             "stem and the other stems are generated")
    bounce.add_argument("--given", metavar="STEM", help="impute: the stem every input is, e.g. drums")
    bounce.add_argument("--pattern", default=DEFAULT_PATTERN,
                        help="where each file goes inside OUT: {track} (the input's path inside its folder, "
                             "without extension), {name} (its file name), {stem}, {ext} "
                             f"(default {DEFAULT_PATTERN!r})")
    bounce.add_argument("--jobs", type=int, default=1,
                        help="songs in flight at once; their windows share each network call (default 1; "
                             "see docs/bounce.md for what it gains)")
    bounce.add_argument("--max-seconds", type=float, help="refuse (report and skip) songs longer than this")
    add_model_options(bounce)
    add_job_options(bounce, None, "the task")
    bounce.set_defaults(handler=run_command)


def _job_from_args(args, options, models, output) -> BounceJob:
    if args.task == "impute":
        if not args.given:
            raise CommandError("--task impute needs --given STEM: the stem every input is, e.g. --given drums")
        if args.given not in models.stems:
            raise CommandError(f"--given {args.given}: this model's stems are {', '.join(models.stems)}")
        if models.is_isdm:
            raise CommandError("--task impute needs one joint (MSDM) model; single-stem models only separate")
    else:
        if args.given:
            raise CommandError("--given is for --task impute; separation takes mixes")
    settings = options.sampler_settings(args.task, models.is_isdm, num_stems=len(models.stems),
                                        first_guess=models.separator is not None,
                                        latent_prior=models.latent is not None)
    return BounceJob(task=args.task, given=args.given, likelihood=options.likelihood, mono=options.mono,
                     overlap=options.overlap, settings=settings, seed=options.seed, extension=output.extension,
                     bits=output.bits, pattern=args.pattern, backend=args.backend)


def run_command(args) -> int:
    if args.jobs < 1:
        raise CommandError(f"--jobs must be at least 1, got {args.jobs}")
    options = job_options_from_args(args)
    output = options.output_format()
    try:
        check_pattern(args.pattern, output.extension)
        rank, world, local_rank = rank_and_world()
        songs = find_songs(args.inputs, exclude=args.out)
    except InputError as error:
        raise CommandError(str(error)) from None
    if not songs:
        raise CommandError("no audio files found in the inputs (looked for "
                           "WAV, FLAC, OGG, MP3, AIFF... in folders and list files)")
    distributed = world > 1 and "MASTER_ADDR" in os.environ
    if distributed:
        import datetime

        import torch.distributed as dist

        dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(hours=12))
        if args.device == "cuda":
            args.device = f"cuda:{local_rank}"  # one GPU per rank
    bouncer = None

    def stop(signum: int) -> None:
        if bouncer is None:
            raise Stopped(signum)  # nothing bounced yet
        bouncer.cancel.set()  # songs in flight stop at their next sampler step; the workers are waited for

    # A second signal: with worker threads, leave at once (an exception must not reach the
    # main thread while it joins them, engine/jobs/signals.py); one song runs on this thread and unwinds.
    stops = StopSignals(on_stop=stop, **({"on_force": exit_now} if args.jobs > 1 else {}))
    try:
        with stops:
            models = load_models_for(args)
            job = _job_from_args(args, options, models, output)
            bouncer = Bouncer(models, job, args.out, rank=rank, world_size=world, overwrite=output.overwrite,
                              max_seconds=args.max_seconds)
            try:
                summary = bouncer.run(songs, jobs=args.jobs, quiet=args.quiet or rank > 0)
            except InputError as error:
                raise CommandError(str(error)) from None
        total = gather_summaries(summary, world) if distributed else summary
    finally:
        if distributed:
            import torch.distributed as dist

            dist.destroy_process_group()
    if rank > 0:
        # Rank 0 reports for all. A launcher such as torchrun stops every rank
        # when one exits with an error, so the others must not race it to it.
        return 0
    parts = "manifest.jsonl" if world == 1 else f"manifest.rank0..{world - 1}.jsonl"
    print("\n".join(total.lines() + [f"manifest: {Path(args.out) / parts}"]), flush=True)
    if stops.signum is not None:
        print(f"msdm bounce: {stops.name}: the songs in flight were cancelled; no partial files were left. "
              f"Run the same command again to bounce the rest.", file=sys.stderr, flush=True)
        return stops.exit_code
    return 1 if total.failed else 0
