"""`msdm app`: registers the command; Qt is imported only when it runs."""

from __future__ import annotations

from engine.errors import CommandError


def register(commands) -> None:
    app = commands.add_parser(
        "app", help="open the desktop app (PySide6)",
        description="MSDM Studio's window: open a mix or stems, listen, separate, generate and impute. "
                    "It starts a local engine (msdm serve) or connects to one (Engine > Settings).")
    app.add_argument("files", nargs="*", metavar="FILE",
                     help="a mix to open (with stem files named after their stem, e.g. drums.wav)")
    app.add_argument("--open", action="append", default=[], metavar="FILE",
                     help="open this mix at start; repeat with stem files named after their stem")
    app.add_argument("--screenshot", metavar="OUT.png",
                     help="render the window to a PNG and exit (with --run: after the task finished)")
    app.add_argument("--run", choices=("separate", "generate", "impute"),
                     help="with --screenshot: run this task first")
    app.add_argument("--steps", type=int, help="sampler steps to start with")
    app.add_argument("--resamples", type=int, help="correction resamples for Separate to start with")
    app.add_argument("--size", default="1280x760", help="window size WxH (default 1280x760)")
    app.set_defaults(handler=_run)


def _run(args) -> int:
    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        raise CommandError(f"--size {args.size!r}: write it as WIDTHxHEIGHT, e.g. 1280x760") from None
    if args.run and not args.screenshot:
        raise CommandError("--run only works with --screenshot (in the window, press the task's button)")
    try:
        from .app import run
    except ImportError as error:
        raise CommandError(f"the desktop app needs PySide6 and pyqtgraph ({error}); install them with "
                           "pip install -e \".[app]\"") from None
    return run([*args.files, *args.open], args.screenshot, args.run, args.steps, args.resamples, (width, height))
