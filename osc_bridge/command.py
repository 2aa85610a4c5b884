"""`msdm serve` (the OSC server) and `msdm osc-send` (a one-shot client that
waits for the answer). Registered in engine/cli.py's COMMAND_MODULES; nothing
heavy is imported until a handler runs."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from engine.errors import CommandError
from engine.jobs.options import add_model_options, load_models_for
from engine.jobs.signals import StopSignals, Stopped, exit_now

from .codec import DEFAULT_MAX_BUNDLE_MESSAGES
from .protocol import DEFAULT_MAX_EVALUATIONS, DEFAULT_PORT



def register(commands) -> None:
    serve = commands.add_parser(
        "serve", help="answer OSC requests from a DAW or any OSC tool (docs/osc.md)",
        description="A UDP OSC server: /msdm/separate, /msdm/generate, /msdm/impute, /msdm/cancel, "
                    "/msdm/status, /msdm/models, /msdm/ping (docs/osc.md). Audio travels as file paths; "
                    "outputs are written under --output-root (made private: 0700, files 0600). Every request "
                    "must be signed with the secret in --secret-file, which only this user can read: the "
                    "server works for the user who runs it. Prints 'msdm serve: listening on HOST:PORT' "
                    "once ready. Ctrl-C or SIGTERM: the running job stops at its next sampler step, every "
                    "job is answered /msdm/cancelled, and the exit status is 130 (SIGINT) or 143 (SIGTERM); "
                    "a second signal stops at once.")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1: this computer only)")
    serve.add_argument("--allow-remote", action="store_true",
                       help="required to listen on a non-loopback address: requests are signed, not "
                            "encrypted, so anyone on the network sees their file paths and job ids")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT,
                       help=f"UDP port (default {DEFAULT_PORT}; 0 picks a free one and prints it)")
    add_model_options(serve)
    serve.add_argument("--output-root", type=Path,
                       help="jobs may only write inside this folder (default: ~/MSDM Studio/outputs)")
    serve.add_argument("--secret-file", type=Path,
                       help="the secret requests must be signed with; made (0600) when missing "
                            "(default: $MSDM_CONFIG_DIR or ~/.config/msdm-studio, file osc-secret)")
    serve.add_argument("--max-seconds", type=float, default=600.0,
                       help="longest input or generation accepted, in seconds (default 600)")
    serve.add_argument("--queue", type=int, default=16, help="jobs that may wait (default 16)")
    serve.add_argument("--max-evaluations", type=int, default=DEFAULT_MAX_EVALUATIONS,
                       help=f"most network evaluations per window a job may ask for, steps x resamples "
                            f"(default {DEFAULT_MAX_EVALUATIONS}; the paper's separation takes 300)")
    serve.add_argument("--max-bundle", type=int, default=DEFAULT_MAX_BUNDLE_MESSAGES,
                       help=f"most messages one OSC bundle may hold (default {DEFAULT_MAX_BUNDLE_MESSAGES})")
    serve.add_argument("--threads", type=int,
                       help="CPU threads for the network (default: PyTorch's, one per core); use fewer when "
                            "other programs keep the cores busy (a DAW, another job)")
    serve.add_argument("-q", "--quiet", action="store_true", help="log only errors")
    serve.set_defaults(handler=run_serve)

    send = commands.add_parser(
        "osc-send", help="send one OSC message to msdm serve and print its replies",
        description="Sends ADDRESS ARGS... and prints each reply as one line, address and arguments "
                    "separated by tabs. Waits for the answer of a query, or for a job's done/error/"
                    "cancelled. Whole numbers are sent as int32, other numbers as float32, the rest as "
                    "strings (or give --types). The message is signed with this user's secret file "
                    "(docs/osc.md, Security). Exit status: 0 done, 1 error reply, 2 usage error (no "
                    "secret file), 3 no answer, 4 cancelled.")
    send.add_argument("address", help="e.g. /msdm/ping or /msdm/separate")
    send.add_argument("args", nargs="*", help="the message's arguments")
    send.add_argument("--host", default="127.0.0.1", help="server address (default 127.0.0.1)")
    send.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"server port (default {DEFAULT_PORT})")
    send.add_argument("--types", help="one OSC type letter per argument: s, i or f (default: inferred)")
    send.add_argument("--no-wait", action="store_true", help="send and exit, like liblo's oscsend")
    send.add_argument("--timeout", type=float, default=10.0,
                      help="seconds of silence from the server before giving up (default 10)")
    send.add_argument("--log", type=Path, help="also append every reply line to this file (flushed at once: "
                                               "a DAW script polls it)")
    send.add_argument("--secret-file", type=Path,
                      help="the secret msdm serve uses (default: as msdm serve's --secret-file)")
    send.add_argument("--auth-token", action="store_true",
                      help="print the 'auth' token that signs this message, and send nothing: for tools "
                           "such as liblo's oscsend, which then send the message with 'auth' TOKEN appended "
                           "(one token per message, valid for a minute)")
    send.set_defaults(handler=run_osc_send)


def run_serve(args: argparse.Namespace) -> int:
    from .server import is_loopback

    logging.basicConfig(level=logging.ERROR if args.quiet else logging.INFO, stream=sys.stderr,
                        format="msdm serve: %(message)s")
    log = logging.getLogger("msdm.serve")
    if not 0 <= args.port <= 65535:
        raise CommandError(f"--port must be between 0 and 65535, got {args.port}")
    if args.max_seconds <= 0 or args.queue < 1:
        raise CommandError("--max-seconds must be positive and --queue at least 1")
    if args.max_evaluations < 1 or args.max_bundle < 1:
        raise CommandError("--max-evaluations and --max-bundle must be at least 1")
    if not is_loopback(args.host):
        if not args.allow_remote:
            raise CommandError(f"--host {args.host} is not a loopback address: anyone on the network could send "
                               f"requests. Add --allow-remote if that is what you want.")
        print(f"msdm serve: WARNING: listening on {args.host}, reachable from other computers; requests are "
              f"signed but not encrypted: their file paths and job ids cross the network as plain text.",
              file=sys.stderr, flush=True)
    if args.threads is not None and args.threads < 1:
        raise CommandError(f"--threads must be at least 1, got {args.threads}")
    # What this process writes (outputs, the secret, caches) is for this user alone.
    umask = os.umask(0o077)
    try:
        return _serve(args, log)
    finally:
        os.umask(umask)  # a process that goes on (a test calling main) gets its own back


def _serve(args: argparse.Namespace, log: logging.Logger) -> int:
    """Load the secret and the model, listen, serve until a signal (run_serve checked the flags)."""
    from . import auth
    from .server import OscServer

    secret_file = args.secret_file or auth.secret_path()
    try:
        secret = auth.load_or_create_secret(secret_file)
    except OSError as error:
        raise CommandError(f"cannot make the secret file {secret_file}: {error.strerror or error}; choose "
                           f"another with --secret-file") from None
    server = None

    def stop(signum: int) -> None:
        if server is None:
            raise Stopped(signum)  # still loading the model: nothing to wait for
        log.info("stopping on %s: the running job stops at its next sampler step (%s again stops at once)",
                 stops.name, stops.name)
        server.shutdown()  # on this (the serving) thread: only sets a flag

    with StopSignals(on_stop=stop, on_force=exit_now) as stops:
        import torch

        if args.threads is not None:
            torch.set_num_threads(args.threads)
        models = load_models_for(args)
        try:
            server = OscServer(models, host=args.host, port=args.port, output_root=args.output_root,
                               max_seconds=args.max_seconds, max_queued=args.queue, backend=args.backend,
                               max_evaluations=args.max_evaluations, max_bundle_messages=args.max_bundle,
                               secret=secret)
        except OSError as error:
            raise CommandError(f"cannot listen on {args.host}:{args.port}: {error.strerror or error} "
                               f"(is another msdm serve running? try --port 0)") from None
        host = f"[{server.host}]" if ":" in server.host else server.host
        log.info("model %s (%s), output root %s, requests signed with the secret in %s", models.describe(),
                 args.backend, server.output_root, secret_file)
        print(f"msdm serve: listening on {host}:{server.port}", flush=True)
        server.serve_forever()
    print("msdm serve: stopped", flush=True)
    return stops.exit_code


def run_osc_send(args: argparse.Namespace) -> int:
    from .client import FINAL_JOB_REPLIES, JOB_ADDRESSES, QUERY_REPLIES, OscClient, format_reply, infer_args

    if not args.address.startswith("/"):
        raise CommandError(f"{args.address!r} is not an OSC address; they start with '/', e.g. /msdm/ping")
    try:
        values = infer_args(args.args, args.types)
    except ValueError as error:
        raise CommandError(str(error)) from None
    secret = _client_secret(args.secret_file)
    if args.auth_token:
        from .auth import token_for
        from .codec import encode_message

        print(token_for(secret, encode_message(args.address, values)))
        return 0
    log = open(args.log, "a", encoding="utf-8", buffering=1) if args.log else None

    def emit(address: str, reply_args: list) -> None:
        line = format_reply(address, reply_args)
        print(line, flush=True)
        if log is not None:
            log.write(line + "\n")
            log.flush()

    try:
        with OscClient(args.host, args.port, secret=secret) as client:
            if args.no_wait:
                client.send(args.address, *values)
                return 0
            if args.address in JOB_ADDRESSES and values:
                final = client.run_job(args.address, *values, silence=args.timeout, on_reply=emit)
            elif args.address == "/msdm/cancel" and values:
                client.send(args.address, *values)
                final = client.wait_job(str(values[0]), silence=args.timeout, on_reply=emit)
            else:
                final = client.request(args.address, *values, timeout=args.timeout)
                if final is not None:
                    emit(*final)
        if final is None:
            message = (f"no answer from msdm serve at {args.host}:{args.port} within {args.timeout:g} s; "
                       f"is it running? Start it with `msdm serve`.")
            print(f"msdm osc-send: {message}", file=sys.stderr)
            if log is not None:  # a DAW script polling the log must learn it too
                log.write(f"msdm-osc-send\tno_answer\t{message}\n")
            return 3
    finally:
        if log is not None:
            log.close()
    if final[0] == "/msdm/error":
        print(f"msdm osc-send: {final[1][1] if len(final[1]) > 1 else 'error'}: "
              f"{final[1][2] if len(final[1]) > 2 else ''}", file=sys.stderr)
        return 1
    if final[0] == "/msdm/cancelled":
        return 4
    assert final[0] in FINAL_JOB_REPLIES or final[0] in QUERY_REPLIES.values(), final
    return 0


def _client_secret(path: Path | None) -> bytes:
    from . import auth

    path = path or auth.secret_path()
    try:
        return auth.read_secret(path)
    except FileNotFoundError:
        raise CommandError(f"no secret file at {path}: msdm serve makes it when it first starts. Start msdm "
                           f"serve, or give --secret-file (the file msdm serve --secret-file uses)") from None
