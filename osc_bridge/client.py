"""A small OSC client for `msdm serve`: send one request, wait for its replies
on a bound port. Used by `msdm osc-send` (so a DAW script needs nothing but a
command line) and by the tests (a real client over a real socket; tests/support/osc_replies.py
collects its replies on a thread). Every message it sends is signed with the
user's secret (osc_bridge.auth), as the server requires, and every reply it
takes must come from the server's address and port and be signed with the
same secret for one of its own requests (auth.check_reply): another user of
the computer can read this client's port and the job ids (ps), but cannot
make it report a job done, failed or anything else.

The one reply the server does not sign is its refusal of a request it cannot
trust (`/msdm/error <job> unauthorized <why>`: signed with another secret, or
not at all): it cannot sign for a client whose secret it does not share. Such
a reply, and only with that code, is taken from the server's own address and
port, which no other user can send from while the server holds it; it can end
a wait with an error, never report a result."""

from __future__ import annotations

import collections
import re
import socket
import time
from typing import Any, Callable, Iterable, Sequence

from . import auth
from .codec import MAX_DATAGRAM, RECEIVE_BUFFER, decode_datagram, encode_message
from .protocol import DEFAULT_PORT

JOB_ADDRESSES = ("/msdm/separate", "/msdm/generate", "/msdm/impute")
QUERY_REPLIES = {"/msdm/ping": "/msdm/pong", "/msdm/models": "/msdm/models",
                 "/msdm/status": "/msdm/status", "/msdm/root": "/msdm/root"}
FINAL_JOB_REPLIES = ("/msdm/done", "/msdm/error", "/msdm/cancelled")
UNSIGNED_REFUSAL = "unauthorized"  # the one error code taken unsigned (see the module's docstring)
REMEMBERED_NONCES = 4096           # requests whose replies are still taken

_INT = re.compile(r"[+-]?\d+\Z")


def infer_args(texts: Sequence[str], types: str | None = None) -> list:
    """Command-line words -> OSC values. Without `types`: whole numbers are
    int32, other numbers float, the rest strings (as liblo's oscsend would be
    told with 'i', 'f', 's'). With `types` (e.g. "ssi"), one letter per word."""
    if types is not None:
        if len(types) != len(texts):
            raise ValueError(f"--types {types!r} has {len(types)} letters for {len(texts)} arguments")
        convert = {"s": str, "i": int, "f": float}
        try:
            return [convert[t](text) for t, text in zip(types, texts)]
        except KeyError as error:
            raise ValueError(f"--types: unknown type letter {error}; use s, i or f") from None
    values: list = []
    for text in texts:
        if _INT.match(text) and -(2**31) <= int(text) < 2**31:
            values.append(int(text))
            continue
        try:
            number = float(text)
        except ValueError:
            values.append(text)
            continue
        # "nan", "inf" and "1e5"-like words in paths stay strings unless they look numeric.
        values.append(number if re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", text) else text)
    return values


class OscClient:
    """One UDP socket bound on loopback (or `bind_host`): requests leave from it
    and replies come back to it. `secret` signs them (default: the user's
    secret file when there is one; without a secret they go unsigned and the
    server refuses them, saying why)."""

    def __init__(self, host: str = "127.0.0.1", port: int = DEFAULT_PORT, *, reply_port: int = 0,
                 bind_host: str | None = None, secret: bytes | None = None) -> None:
        self.secret = secret if secret is not None else auth.secret_if_present()
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        self.server = address
        self.socket = socket.socket(family, kind, proto)
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        except OSError:
            pass
        self.socket.bind((bind_host or ("::1" if family == socket.AF_INET6 else "127.0.0.1"), reply_port))
        self.port = self.socket.getsockname()[1]
        self._nonces: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.signed = False     # whether the last reply `receive` returned was signed
        self.ignored = 0        # datagrams dropped: another sender, unsigned, or signed for no request of ours

    def close(self) -> None:
        self.socket.close()

    def __enter__(self) -> "OscClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def send(self, address: str, *args: Any) -> list[str]:
        return self.send_raw(encode_message(address, args))

    def send_raw(self, data: bytes, sign: bool = True) -> list[str]:
        """Send a datagram as it is, with each of its messages signed unless `sign` is off
        (bytes that are not OSC are never signed). Returns the nonces it was signed with."""
        nonces: list[str] = []
        if sign and self.secret is not None:
            data = auth.sign_datagram(self.secret, data, nonces=nonces)
        self.expect(nonces)
        self.socket.sendto(data, self.server)
        return nonces

    def expect(self, nonces: Iterable[str]) -> None:
        """Take the replies to these requests too (another client's, sent with a
        reply_port pointing here)."""
        for nonce in nonces:
            self._nonces[nonce] = None
            self._nonces.move_to_end(nonce)
        while len(self._nonces) > REMEMBERED_NONCES:
            self._nonces.popitem(last=False)

    def receive(self, timeout: float, *, unsigned: bool = False) -> tuple[str, list] | None:
        """The next reply from the server, or None after `timeout` seconds of
        silence. Only replies from the server's address and port, signed for
        one of this client's requests (their auth pair removed), and unsigned
        refusals (`/msdm/error <job> unauthorized <why>`); `unsigned`: every
        unsigned reply from the server's address (tests of what an unsigned
        request is told). `self.signed` says which it was."""
        deadline = time.monotonic() + max(timeout, 1e-3)
        while (left := deadline - time.monotonic()) > 0:
            self.socket.settimeout(left)
            try:
                data, sender = self.socket.recvfrom(MAX_DATAGRAM)
            except (socket.timeout, TimeoutError):
                return None
            except ConnectionResetError:
                continue
            reply = self._trusted(data, sender, unsigned)
            if reply is not None:
                return reply
            self.ignored += 1
        return None

    def _trusted(self, data: bytes, sender: tuple, unsigned: bool) -> tuple[str, list] | None:
        if tuple(sender[:2]) != tuple(self.server[:2]):
            return None  # not the server: anyone on the computer can send to this port
        try:
            address, args, raw = decode_datagram(data, with_bytes=True)[0]
        except (ValueError, IndexError):
            return None
        if self.secret is not None and auth.check_reply(self.secret, raw, args, self._nonces) is not None:
            self.signed = True
            return address, args[:-2]
        self.signed = False
        if unsigned or (address == "/msdm/error" and len(args) >= 2 and args[1] == UNSIGNED_REFUSAL):
            return address, args
        return None

    def request(self, address: str, *args: Any, timeout: float = 5.0) -> tuple[str, list] | None:
        """Send a query and return its answer (or an /msdm/error), None on timeout."""
        self.send(address, *args)
        expected = QUERY_REPLIES.get(address)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            reply = self.receive(left)
            if reply is None:
                return None
            if reply[0] in (expected, "/msdm/error"):
                return reply
        return None

    def wait_job(self, job_id: str, *, silence: float = 30.0,
                 on_reply: Callable[[str, list], None] | None = None) -> tuple[str, list] | None:
        """Wait for a job's last reply (done, error or cancelled); every reply of
        the job is passed to `on_reply`. None when the server says nothing for
        `silence` seconds (a running job reports progress every second)."""
        while True:
            reply = self.receive(silence)
            if reply is None:
                return None
            address, args = reply
            # A request refused before its job id was read is answered with job id "".
            unnamed_error = address == "/msdm/error" and args and args[0] == ""
            if not args or (args[0] != job_id and not unnamed_error):
                continue
            if on_reply is not None:
                on_reply(address, args)
            if address in FINAL_JOB_REPLIES:
                return reply

    def run_job(self, address: str, *args: Any, silence: float = 30.0,
                on_reply: Callable[[str, list], None] | None = None) -> tuple[str, list] | None:
        self.send(address, *args)
        return self.wait_job(str(args[0]), silence=silence, on_reply=on_reply)


def format_reply(address: str, args: Sequence[Any]) -> str:
    """One reply as one line: the address and the arguments separated by tabs
    (easy to split in Lua, Max or a shell; tabs and newlines inside arguments
    become spaces)."""
    def text(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.6g}"
        return re.sub(r"[\t\r\n]", " ", str(value))
    return "\t".join([address] + [text(v) for v in args])


def done_paths(args: Sequence[Any]) -> dict[str, str]:
    """/msdm/done's arguments after the job id -> {stem: path}."""
    pairs = list(args[1:])
    return dict(zip(pairs[::2], pairs[1::2]))
