"""Who `msdm serve` works for: the user who runs it, and nobody else.

A request names files, and the server reads them with its own rights and
writes the result where that user's output root is: so each request must
prove that it comes from that same user. The proof is a secret that only
this user can read, a file made by the first `msdm serve` (0600, in a 0700
folder; `secret_path()`).

The secret itself never travels. A request ends with two string arguments,
`auth <token>`:

    token = "<unix seconds>.<nonce: 16 hex digits>.<mac: 64 hex digits>"
    mac   = HMAC-SHA256(secret, "msdm-osc-1.<seconds>.<nonce>." + the request's
            OSC bytes without the auth pair)

"The request's OSC bytes without the auth pair" is the message as it would be
sent unsigned: its address, its type tags without the last "ss", its
arguments without the last two (a message with no type tag string counts as
having ","). Why a signature and not the secret: a client sends to whoever
holds the port, and another user can bind 127.0.0.1:9010 while no server
runs; such a listener learns no secret here, only signatures of the requests
it was sent, which the real server accepts once (a nonce it has seen is
refused) and only within AUTH_WINDOW seconds of their time. Jupyter signs its
kernel messages the same way (HMAC over each message, the key in a 0600
connection file).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import hmac
import os
import re
import secrets
import stat
import struct
import threading
import time
from pathlib import Path
from typing import Callable, Container, Sequence

from engine.errors import UserError

AUTH_KEY = "auth"              # the next-to-last argument of a signed request
AUTH_WINDOW = 60.0             # seconds a token is accepted before or after its time
SECRET_NAME = "osc-secret"
_DOMAIN = "msdm-osc-1"
_REPLY_DOMAIN = "msdm-osc-reply-1"  # another domain: a signed reply can never pass for a request
_TOKEN = re.compile(r"(\d{1,12})\.([0-9a-f]{16})\.([0-9a-f]{64})\Z")
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
PAIR_BYTES = 108  # what `auth <token>` adds to a message: 8 + 96 bytes of strings, 4 of type tags at most

MISSING = (f"this server answers only the user who started it, and this request is not signed: end it with "
           f"'{AUTH_KEY}' and a token made with that user's secret file (docs/osc.md, Security); "
           f"msdm osc-send and the app sign their requests")


class SecretError(UserError):
    """A secret file that cannot be used: another user's, readable by others, empty."""


# --------------------------------------------------------------------------- #
# The secret file
# --------------------------------------------------------------------------- #

def config_dir() -> Path:
    """MSDM_CONFIG_DIR, else $XDG_CONFIG_HOME/msdm-studio (~/.config/msdm-studio),
    or %APPDATA%\\MSDM Studio on Windows."""
    if os.environ.get("MSDM_CONFIG_DIR"):
        return Path(os.environ["MSDM_CONFIG_DIR"]).expanduser()
    if os.name == "nt":
        return Path(os.environ.get("APPDATA") or Path.home() / "AppData" / "Roaming") / "MSDM Studio"
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "msdm-studio"


def secret_path() -> Path:
    return config_dir() / SECRET_NAME


def read_secret(path: str | os.PathLike | None = None, *, private: bool = False) -> bytes:
    """The secret in `path` (default `secret_path()`). FileNotFoundError when
    there is none. The file must be a regular file, not a link: it is opened
    with O_NOFOLLOW and O_NONBLOCK, so a FIFO put in its place is refused at
    once instead of blocking the server's start or the app's window. With
    `private` (the server), it must also be this user's, and no one else's
    to read."""
    path = Path(path or secret_path())
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _NONBLOCK)
    except FileNotFoundError:
        raise
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise SecretError(f"the secret file {path} is a symbolic link, which is refused; delete it and "
                              f"msdm serve makes a new file") from None
        raise SecretError(f"cannot read the secret file {path}: {error.strerror}. It belongs to the user who "
                          f"runs msdm serve, and only that user may send it requests") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SecretError(f"the secret file {path} is not a regular file; delete it and msdm serve "
                              f"makes a new one")
        if private and os.name == "posix":
            if info.st_uid != os.geteuid():
                raise SecretError(f"the secret file {path} belongs to another user; delete it and msdm serve "
                                  f"makes a new one")
            if info.st_mode & 0o077:
                raise SecretError(f"the secret file {path} can be read by other users (mode "
                                  f"{stat.S_IMODE(info.st_mode):04o}): run  chmod 600 '{path}'  or delete it "
                                  f"and msdm serve makes a new one")
        key = os.read(fd, 4096).strip()
    finally:
        os.close(fd)
    if len(key) < 32:
        raise SecretError(f"the secret file {path} holds no secret (empty or cut short); delete it and msdm "
                          f"serve makes a new one")
    return key


def load_or_create_secret(path: str | os.PathLike | None = None) -> bytes:
    """The server's secret: read it, or make the file the first time.

    Written to a private temp file (O_EXCL, 0600 from its first byte, whatever
    the umask), then hard-linked into place: a link never replaces a file, so
    a server starting at the same moment keeps its secret and this one reads
    it; and a reader never sees half a file. (engine.atomic's writer renames,
    which would replace it, and makes 0666-less-umask temp files.)"""
    path = Path(path or secret_path())
    with contextlib.suppress(FileNotFoundError):
        return read_secret(path, private=True)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(secrets.token_hex(32) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another server made it first: use theirs
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    return read_secret(path, private=True)


def secret_if_present(path: str | os.PathLike | None = None) -> bytes | None:
    """The secret, or None when there is no usable file (requests go unsigned and the server says why)."""
    try:
        return read_secret(path)
    except (OSError, SecretError):
        return None


# --------------------------------------------------------------------------- #
# Signing
# --------------------------------------------------------------------------- #

def _osc_string(data: bytes) -> bytes:
    data += b"\0"
    return data + b"\0" * (-len(data) % 4)


def _split(message: bytes) -> tuple[bytes, bytes, bytes]:
    """(the address with its padding, the type tags without padding, the arguments)."""
    at = (message.index(b"\0") // 4 + 1) * 4
    if message[at:at + 1] != b",":
        if message[at:]:
            raise ValueError("an OSC message with arguments but no type tag string")
        return message[:at], b",", b""
    end = message.index(b"\0", at)
    return message[:at], message[at:end], message[(end // 4 + 1) * 4:]


def _mac(key: bytes, seconds: str, nonce: str, unsigned: bytes, domain: str = _DOMAIN) -> str:
    return hmac.new(key, f"{domain}.{seconds}.{nonce}.".encode() + unsigned, hashlib.sha256).hexdigest()


def token_for(key: bytes, message: bytes, now: float | None = None, nonce: str | None = None,
              domain: str = _DOMAIN) -> str:
    """The token that signs the (unsigned) OSC message `message`."""
    head, tags, body = _split(message)
    seconds, nonce = str(int(time.time() if now is None else now)), nonce or secrets.token_hex(8)
    return f"{seconds}.{nonce}.{_mac(key, seconds, nonce, head + _osc_string(tags) + body, domain)}"


def sign_message(key: bytes, message: bytes, now: float | None = None, nonces: list | None = None) -> bytes:
    """An OSC message with `auth <token>` appended to its arguments; the
    token's nonce is appended to `nonces` (a client matches replies by it)."""
    token = token_for(key, message, now)
    if nonces is not None:
        nonces.append(token.split(".")[1])
    return _with_pair(message, token)


def _with_pair(message: bytes, token: str) -> bytes:
    head, tags, body = _split(message)
    return head + _osc_string(tags + b"ss") + body + _osc_string(AUTH_KEY.encode()) + _osc_string(token.encode())


def sign_datagram(key: bytes, datagram: bytes, now: float | None = None, nonces: list | None = None) -> bytes:
    """Every message of a datagram (a message, or a bundle at any depth) signed,
    each with a nonce of its own (appended to `nonces`). Anything that is not
    well-formed OSC goes as it is: the server answers it with the reason it
    cannot be decoded."""
    from .codec import decode_datagram  # python-osc: only where messages are signed (install.py needs none)

    try:
        decode_datagram(datagram)
    except ValueError:
        return datagram
    return _sign_packet(key, datagram, now, nonces)


def _sign_packet(key: bytes, packet: bytes, now: float | None, nonces: list | None) -> bytes:
    if not packet.startswith(b"#bundle\0"):
        return sign_message(key, packet, now, nonces)
    parts, index = [packet[:16]], 16
    while index < len(packet):
        (size,) = struct.unpack(">i", packet[index:index + 4])
        element = _sign_packet(key, packet[index + 4:index + 4 + size], now, nonces)
        parts.append(struct.pack(">i", len(element)) + element)
        index += 4 + size
    return b"".join(parts)


# --------------------------------------------------------------------------- #
# Replies: signed with the same secret, bound to the request they answer
# --------------------------------------------------------------------------- #

def nonce_of(args: Sequence) -> str | None:
    """The nonce of a request's (well-formed) auth token."""
    if len(args) >= 2 and args[-2] == AUTH_KEY and isinstance(args[-1], str):
        match = _TOKEN.match(args[-1])
        if match is not None:
            return match.group(2)
    return None


def sign_reply(key: bytes, message: bytes, nonce: str, now: float | None = None) -> bytes:
    """A reply with `auth <seconds>.<nonce>.<mac>` appended, `nonce` being the
    nonce of the request it answers: the mac (domain "msdm-osc-reply-1", so
    no reply passes for a request) proves it comes from whoever holds the
    secret, and the nonce that it answers that very request, so a reply to
    someone else's request (or one of ours, earlier) cannot be passed on."""
    return _with_pair(message, token_for(key, message, now, nonce=nonce, domain=_REPLY_DOMAIN))


def check_reply(key: bytes, message: bytes, args: Sequence, nonces: Container[str]) -> str | None:
    """The nonce a reply answers when it is signed with `key` for one of
    `nonces` (the client's own requests); None for any other datagram."""
    if len(args) < 2 or args[-2] != AUTH_KEY or not isinstance(args[-1], str):
        return None
    match = _TOKEN.match(args[-1])
    if match is None or match.group(2) not in nonces:
        return None
    seconds, nonce, mac = match.groups()
    unsigned = _unsigned(message, args[-1])
    if unsigned is None or not hmac.compare_digest(_mac(key, seconds, nonce, unsigned, _REPLY_DOMAIN), mac):
        return None
    return nonce


def _unsigned(message: bytes, token: str) -> bytes | None:
    """The message as it was before `auth <token>` was appended; None when the
    pair is not its last two arguments."""
    try:
        head, tags, body = _split(message)
    except ValueError:
        return None
    pair = _osc_string(AUTH_KEY.encode()) + _osc_string(token.encode())
    if not tags.endswith(b"ss") or not body.endswith(pair):
        return None
    return head + _osc_string(tags[:-2]) + body[:len(body) - len(pair)]


def strip_auth(args: Sequence) -> list:
    """A request's arguments without a trailing auth pair (for error replies to unsigned requests)."""
    args = list(args)
    return args[:-2] if len(args) >= 2 and args[-2] == AUTH_KEY else args


def _age(seconds: float) -> str:
    """How far a token's time is from the clock, never rounded into the window:
    60.4 s reads "60.4 s behind", not "60 s away" (which the window allows)."""
    text = f"{abs(seconds):.1f}" if abs(seconds) < 1000 else f"{abs(seconds):.0f}"
    return f"{text} s {'behind' if seconds > 0 else 'ahead of'}"


class Verifier:
    """Checks the auth pair of each request (thread-safe). A token is good
    once, within AUTH_WINDOW seconds of its time."""

    def __init__(self, key: bytes, window: float = AUTH_WINDOW, clock: Callable[[], float] = time.time) -> None:
        self._key = key
        self.window = float(window)
        self._clock = clock
        self._seen: dict[tuple[str, str], float] = {}  # (seconds, nonce) -> when it may be forgotten
        self._lock = threading.Lock()

    def check(self, message: bytes, args: Sequence) -> str | None:
        """None for a request signed with the key and not seen before; else why
        not, in words that quote nothing of the request."""
        if len(args) < 2 or args[-2] != AUTH_KEY or not isinstance(args[-1], str):
            return MISSING
        match = _TOKEN.match(args[-1])
        if match is None:
            return (f"the '{AUTH_KEY}' token is malformed: expected <seconds>.<16 hex digits>.<64 hex digits> "
                    f"(docs/osc.md, Security)")
        seconds, nonce, mac = match.groups()
        now = self._clock()
        if abs(now - int(seconds)) > self.window:
            return (f"the '{AUTH_KEY}' token is {_age(now - int(seconds))} this server's clock (it accepts "
                    f"{self.window:g} s either way): make a new one for each request, and check the clocks")
        unsigned = _unsigned(message, args[-1])
        if unsigned is None:
            return f"the '{AUTH_KEY}' pair must be the last two arguments, both strings"
        if not hmac.compare_digest(_mac(self._key, seconds, nonce, unsigned), mac):
            return (f"the '{AUTH_KEY}' token does not match: the request was signed with another secret "
                    f"(another user's, or an old file) or changed after signing")
        with self._lock:
            if len(self._seen) > 512:
                self._seen = {seen: until for seen, until in self._seen.items() if until > now}
            if (seconds, nonce) in self._seen:
                return f"this '{AUTH_KEY}' token was used before: sign each request anew"
            self._seen[(seconds, nonce)] = int(seconds) + self.window + 1
        return None
