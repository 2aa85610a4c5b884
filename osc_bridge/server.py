"""The OSC server: one UDP socket, an exact address table, handlers that only
parse, check and enqueue.

Why not python-osc's `OSCUDPServer` + `Dispatcher` as they are (we use
python-osc to decode and encode messages): its socketserver reads at most
8192 bytes a datagram and drops unparsable ones silently (the sender never
learns why), its dispatcher treats addresses as patterns (one "/msdm/*" would
call every handler) and, for a bundle with a future time tag, sleeps on the
socket thread, so one datagram could stall the server. Here every datagram is
read whole (up to the UDP maximum), decoded inside a guard, looked up exactly,
and every failure is answered with /msdm/error, never a dead server.

Who is served: the user who runs the server. Every request must be signed
with that user's secret (osc_bridge.auth; the file only they can read); any
other is answered with /msdm/error "unauthorized" and goes no further, so an
unsigned request neither runs nor learns anything but that it was refused.
Every reply to a signed request is signed too, with the same secret and the
request's nonce (auth.sign_reply), so a client can tell the server's replies
from anyone else's. A datagram that cannot be trusted (refused, or not OSC)
gets at most one short unsigned reply, to the address it came from only (never
to a reply_port it names), rate-limited per host (osc_bridge.refusals): it can
neither be reflected at someone else nor amplified.

Limits (constructor arguments; docs/osc.md "Security"): messages per bundle
(`max_bundle_messages`), network evaluations per window a job may ask for
(`max_evaluations`), the input/generation length (`max_seconds`), waiting
jobs (`max_queued`), and the size of a reply (`max_reply_bytes`: longer string
arguments are cut so that every reply can be sent). Nothing a client sends is
written to the log: a datagram that cannot be decoded is answered with a
reason that quotes none of it.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import select
import socket
import threading
import traceback
from pathlib import Path
from typing import Any

from . import auth, protocol
from .codec import MAX_DATAGRAM, MAX_REPLY, RECEIVE_BUFFER, decode_datagram, encode_message  # noqa: F401
from .codec import DEFAULT_MAX_BUNDLE_MESSAGES, encode_reply
from .jobs import Job, JobQueue, ReplyTo, execute_job
from .paths import check_input_file, check_outputs_free, contained_output_dir, prepare_output_root
from .protocol import DEFAULT_MAX_EVALUATIONS, DEFAULT_PORT, CancelRequest, JobRequest, ProtocolError, Query
from .refusals import DEFAULT_PER_HOST, DEFAULT_TOTAL, RefusalLimiter

log = logging.getLogger("msdm.serve")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_MAX_SECONDS = 600.0


def is_loopback(host: str) -> bool:
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM)
    except socket.gaierror:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


class OscServer:
    """`msdm serve`'s server. Construct, then `serve_forever()` (blocking) or
    `start()` (a thread); `shutdown()` from any thread or a signal handler.

    Limits a client cannot exceed: `max_seconds` of input or generation,
    `max_queued` waiting jobs, `max_evaluations` network evaluations per window
    (steps x resamples), `max_bundle_messages` messages per datagram; replies
    are cut to `max_reply_bytes`.

    `secret`: the key requests and replies are signed with (default: the
    user's secret file, made on first use, osc_bridge.auth.load_or_create_secret).
    `unsigned_replies_per_host` / `unsigned_replies_total`: how many replies a
    second may answer datagrams that cannot be trusted (None: no limit). The
    output root is made private (0700); `msdm serve` also sets the umask to
    077, so the files it writes are 0600."""

    def __init__(self, models: Any, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                 output_root: str | os.PathLike | None = None, max_seconds: float = DEFAULT_MAX_SECONDS,
                 max_queued: int = 16, backend: str = "torch", version: str | None = None,
                 max_evaluations: int = DEFAULT_MAX_EVALUATIONS,
                 max_bundle_messages: int = DEFAULT_MAX_BUNDLE_MESSAGES,
                 max_reply_bytes: int = MAX_REPLY, secret: bytes | None = None,
                 unsigned_replies_per_host: float | None = DEFAULT_PER_HOST,
                 unsigned_replies_total: float | None = DEFAULT_TOTAL) -> None:
        from engine import __version__
        from .paths import default_output_root

        if max_evaluations < 1 or max_bundle_messages < 1:
            raise ValueError("max_evaluations and max_bundle_messages must be at least 1")
        if not 512 <= max_reply_bytes <= MAX_REPLY:
            raise ValueError(f"max_reply_bytes must be between 512 and {MAX_REPLY}")
        self.max_evaluations = int(max_evaluations)
        self.max_bundle_messages = int(max_bundle_messages)
        self.max_reply_bytes = int(max_reply_bytes)
        self.models = models
        self.stems = tuple(models.stems)
        self.backend = backend
        self.version = version or __version__
        self.max_seconds = float(max_seconds)
        self._key = secret if secret is not None else auth.load_or_create_secret()
        self.verifier = auth.Verifier(self._key)
        self.refusals = RefusalLimiter(unsigned_replies_per_host, unsigned_replies_total)
        self.output_root = prepare_output_root(output_root or default_output_root())
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        self.socket = socket.socket(family, kind, proto)
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        except OSError:
            pass
        self.socket.bind(address)
        self.host, self.port = self.socket.getsockname()[:2]
        self.received = 0  # datagrams read (for tests and the log)
        self._send_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.jobs = JobQueue(lambda job, progress, first_guess: execute_job(models, job, progress, self.max_seconds,
                                                                            self.output_root, first_guess),
                             self.send, self.output_root, max_queued)

    # ---- lifecycle ------------------------------------------------------- #

    def start(self) -> "OscServer":
        self._thread = threading.Thread(target=self.serve_forever, name="msdm-osc", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    ready, _, _ = select.select([self.socket], [], [], 0.2)
                    if not ready:
                        continue
                    data, sender = self.socket.recvfrom(MAX_DATAGRAM)
                except (ConnectionResetError, ConnectionRefusedError):
                    continue  # Windows reports an earlier reply's unreachable port here
                except OSError:
                    if self._stop.is_set():
                        break
                    raise
                self.handle_datagram(data, sender)
        finally:
            self.jobs.stop()
            self.close()

    def shutdown(self) -> None:
        """Stop serving: safe from a signal handler (it only sets a flag when
        called on the serving thread) and from any other thread (it waits)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(15)

    def close(self) -> None:
        try:
            self.socket.close()
        except OSError:
            pass

    # ---- replies --------------------------------------------------------- #

    def send(self, target: ReplyTo | tuple, reply: protocol.Reply) -> None:
        """Send a reply: to a ReplyTo, signed with the nonce of the request it
        answers; to a bare address, unsigned (only the refusal of a datagram
        that cannot be trusted goes so, see `refuse`)."""
        address, args = reply
        nonce = target.nonce if isinstance(target, ReplyTo) else None
        destination = target.address if isinstance(target, ReplyTo) else target
        try:
            # Room for the auth pair when the reply is cut to fit.
            data = encode_reply(address, args, self.max_reply_bytes - (auth.PAIR_BYTES if nonce else 0))
            if nonce:
                data = auth.sign_reply(self._key, data, nonce)
            with self._send_lock:
                self.socket.sendto(data, destination)
        except Exception as error:  # an unreachable client must not stop the server or a job
            log.debug("could not send %s to %s: %s", address, destination, type(error).__name__)

    # ---- requests -------------------------------------------------------- #

    def handle_datagram(self, data: bytes, sender: tuple) -> None:
        self.received += 1
        if (sender[1] == self.port and is_loopback(sender[0])) or sender[:2] == (self.host, self.port):
            return  # our own reply, sent to ourselves through a reply_port: answering would loop forever
        try:
            messages = decode_datagram(data, self.max_bundle_messages, with_bytes=True)
        except ValueError as error:  # its reason quotes nothing of the datagram
            self.refuse(sender, protocol.error("", protocol.BAD_REQUEST, f"could not decode the datagram: {error}"))
            return
        refusal = None
        for address, args, raw in messages:
            if address in protocol.REPLY_ONLY_ADDRESSES:
                # A reply arriving here (another server's, misdirected): answering it with an
                # error could start an endless exchange between two servers, so it is ignored.
                log.debug("ignored a reply sent to the server: %s", address)
                continue
            refused = self.verifier.check(raw, args)
            if refused is not None:
                # Nothing of it is parsed: its job id (when it has a readable one) only names the refusal.
                refusal = refusal or protocol.error(protocol.best_effort_job_id(address, auth.strip_auth(args)),
                                                    protocol.UNAUTHORIZED, refused)
                continue
            self.handle_message(address, args[:-2], sender, auth.nonce_of(args))
        if refusal is not None:
            self.refuse(sender, refusal)

    def refuse(self, sender: tuple, reply: protocol.Reply) -> None:
        """The one reply to a datagram that cannot be trusted (not OSC, or a
        request not signed as it must be): unsigned, to the sender's own
        address (never a reply_port it names), one per datagram however many
        messages it holds, and only as often as the rate limit allows."""
        if self.refusals.allow(str(sender[0])):
            self.send(sender, reply)

    def handle_message(self, address: str, args: list, sender: tuple, nonce: str | None = None) -> None:
        reply_to = ReplyTo(sender, nonce)
        try:
            request = protocol.parse_request(address, args, self.stems, max_evaluations=self.max_evaluations)
            port = protocol.reply_port_of(request)
            if port is not None:
                reply_to = ReplyTo((sender[0], port) + tuple(sender[2:]), nonce)
            if isinstance(request, Query):
                self.send(reply_to, self.answer(request))
            elif isinstance(request, CancelRequest):
                if not self.jobs.cancel(request.job_id, reply_to):
                    raise ProtocolError(protocol.UNKNOWN_JOB, f"no queued or running job has id "
                                                              f"{request.job_id!r}", request.job_id)
            else:
                self.jobs.submit(self.check_job(request, reply_to))
        except ProtocolError as error:
            if reply_to.address is sender:  # it failed before its reply port was read
                port = protocol.best_effort_reply_port(address, args)
                if port is not None:
                    reply_to = ReplyTo((sender[0], port) + tuple(sender[2:]), nonce)
            job_id = error.job_id or protocol.best_effort_job_id(address, args)
            self.send(reply_to, protocol.error(job_id, error.code, error.message))
        except Exception as error:  # a bug here must cost one request, not the server
            log.error("request %r failed:\n%s", address[:40], traceback.format_exc())
            job_id = protocol.best_effort_job_id(address, args)
            self.send(reply_to, protocol.error(job_id, protocol.ENGINE, f"internal error: {error}"))

    def answer(self, query: Query) -> protocol.Reply:
        if query.kind == "ping":
            return protocol.pong(self.version, ", ".join(Path(m.path).name if getattr(m, "path", None) else str(m.source)
                                                          for m in self.models.models))
        if query.kind == "models":
            return protocol.models_reply(self.models.describe(), self.stems, self.models.sample_rate, self.backend)
        if query.kind == "status":
            return protocol.status_reply(*self.jobs.status())
        return protocol.root_reply(str(self.output_root), self.max_seconds)

    def check_job(self, request: JobRequest, reply_to: ReplyTo) -> Job:
        """Everything that can be checked before queueing: the folder, the
        inputs' headers, the length limit, existing outputs."""
        from engine.audio.files import AudioInputError, inspect_audio

        job_id = request.job_id
        out_dir = contained_output_dir(request.out_dir, self.output_root, job_id)
        fmt = request.options.format
        if request.kind in ("generate", "impute") and self.models.is_isdm:
            raise ProtocolError(protocol.BAD_REQUEST, f"{request.kind} needs one joint (MSDM) model; this server "
                                                      f"runs single-stem ISDM models, which can only separate", job_id)
        if request.kind == "separate":
            inputs = {"mix_path": request.mix_path}
            outputs = list(self.stems)
        elif request.kind == "generate":
            if request.seconds > self.max_seconds:
                raise ProtocolError(protocol.BAD_INPUT, f"{request.seconds:g} s is longer than this server's limit "
                                                        f"of {self.max_seconds:g} s; ask for less", job_id)
            inputs, outputs = {}, list(self.stems) + ["mix"]
        else:
            inputs = {f"the {stem} file": path for stem, path in request.given.items()}
            outputs = [s for s in self.stems if s not in request.given] + ["mix"]
        headers = {}
        for what, path in inputs.items():
            checked = check_input_file(path, what, job_id)
            try:
                headers[what] = inspect_audio(checked, max_seconds=self.max_seconds)
            except AudioInputError as error:
                raise ProtocolError(protocol.BAD_INPUT, str(error), job_id) from None
        if request.kind == "impute" and len(headers) > 1:
            shapes = {what.split()[1]: (h.samplerate, h.frames) for what, h in headers.items()}
            if len(set(shapes.values())) > 1:
                detail = ", ".join(f"{stem} {rate} Hz {frames} frames" for stem, (rate, frames) in shapes.items())
                raise ProtocolError(protocol.BAD_INPUT, f"the given stems differ ({detail}): render them at one "
                                                        f"sample rate, from the same start to the same end", job_id)
        check_outputs_free(out_dir, outputs, fmt, request.options.overwrite, job_id)
        return Job(request=request, reply_to=reply_to, out_dir=out_dir)
