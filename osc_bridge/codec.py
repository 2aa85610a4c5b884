"""OSC on the wire: datagrams to (address, args) and back, for the server, the
client and the app (python-osc's message parser and builder, no python-osc server).

Bundles are walked here, not by python-osc's `OscBundle`: it logs the whole
repr of any element that is neither a message nor a bundle (`logging.warning`,
so a 65 KB datagram put 65 KB of its bytes on the server's stderr) and then
drops that element silently; its message parser likewise logs each type tag it
does not know. Here such a datagram is refused with a short reason that names
no content, so it is answered (`/msdm/error`) and nothing of it is logged."""

from __future__ import annotations

import struct
from typing import Any, Iterable

from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import OscMessageBuilder

MAX_DATAGRAM = 65535
MAX_REPLY = 65507  # the largest UDP payload over IPv4: a longer reply could not be sent at all
MAX_BUNDLE_DEPTH = 4
DEFAULT_MAX_BUNDLE_MESSAGES = 32  # the server's default: replies one datagram can ask for (one per message)
RECEIVE_BUFFER = 4 << 20  # bursts of small requests (a controller's knob) must not overflow the kernel queue

_BUNDLE = b"#bundle\x00"
# Type tags python-osc's parser reads; any other one it would log and skip.
TYPE_TAGS = frozenset("ifdsbhrmtTFN[]")


def decode_datagram(data: bytes, max_messages: int | None = None, *, with_bytes: bool = False) -> list[tuple]:
    """A datagram -> [(address, args)]; bundles are flattened and run at once
    (time tags are ignored: nothing here is time-critical). Raises ValueError
    with a short reason (never quoting the datagram) for anything that is not
    a well-formed OSC packet, and for a bundle of more than `max_messages`
    messages. `with_bytes`: [(address, args, the message's bytes)] (the server
    checks each message's signature over its bytes, osc_bridge.auth)."""
    if not data:
        raise ValueError("empty datagram")
    try:
        if data.startswith(_BUNDLE):
            out: list[tuple[str, list, bytes]] = []
            _bundle(bytes(data), 0, out, max_messages)
            if not out:
                raise ValueError("the bundle holds no messages")
        else:
            out = [_message(bytes(data))]
        return out if with_bytes else [(address, args) for address, args, _ in out]
    except ValueError:
        raise
    except Exception as error:  # python-osc raises ParseError, IndexError, struct.error... on bad bytes
        raise ValueError(f"malformed OSC data ({type(error).__name__})") from None


def _bundle(dgram: bytes, depth: int, out: list, max_messages: int | None) -> None:
    """OSC 1.0 bundle: "#bundle\\0", an 8-byte time tag, then elements of
    (int32 size, a message or a bundle of that many bytes)."""
    if depth >= MAX_BUNDLE_DEPTH:
        raise ValueError("bundles nested too deep")
    if len(dgram) < 16:
        raise ValueError("a bundle cut short before its time tag ends")
    index, element = 16, 0
    while index < len(dgram):
        element += 1
        if index + 4 > len(dgram):
            raise ValueError(f"bundle element {element} is cut short")
        (size,) = struct.unpack(">i", dgram[index:index + 4])
        index += 4
        if size <= 0 or index + size > len(dgram):
            raise ValueError(f"bundle element {element} has a size that does not fit the datagram")
        content = dgram[index:index + size]
        index += size
        if content.startswith(_BUNDLE):
            _bundle(content, depth + 1, out, max_messages)
        elif content.startswith(b"/"):
            out.append(_message(content))
        else:
            raise ValueError(f"bundle element {element} is neither an OSC message nor a bundle")
        if max_messages is not None and len(out) > max_messages:
            raise ValueError(f"a bundle may hold at most {max_messages} messages (this server's "
                             f"max_bundle_messages); send fewer per bundle")


def _message(dgram: bytes) -> tuple[str, list, bytes]:
    if not dgram.startswith(b"/"):
        raise ValueError("not an OSC message (an OSC address starts with '/')")
    end = dgram.find(b"\x00")
    if end < 0:
        raise ValueError("malformed OSC data (the address is not terminated)")
    tags_at = (end // 4 + 1) * 4  # the address is padded with NULs to a multiple of 4 bytes
    if tags_at < len(dgram):
        tags_end = dgram.find(b"\x00", tags_at)
        tags = dgram[tags_at:tags_end if tags_end >= 0 else len(dgram)].decode("latin-1")
        if tags.startswith(",") and not set(tags[1:]) <= TYPE_TAGS:
            raise ValueError(f"unsupported OSC type tag (supported: {' '.join(sorted(TYPE_TAGS))})")
    message = OscMessage(dgram)
    return message.address, list(message.params), dgram


def encode_message(address: str, args: Iterable[Any]) -> bytes:
    """(address, args) -> one OSC message: int32, float32 and strings; a bool is sent as 0 or 1.
    A string with a NUL character is a ValueError: an OSC string ends at its
    first NUL, so the server would read another message than the one signed."""
    builder = OscMessageBuilder(address=address)
    for number, value in enumerate(args, 1):
        if isinstance(value, str) and "\0" in value:
            raise ValueError(f"argument {number} of {address} contains a NUL character, which an OSC string "
                             f"cannot carry (it would end the string there); remove it")
        if isinstance(value, bool):  # OSC 1.0 has no boolean: a flag is 0 or 1 (protocol.as_flag)
            builder.add_arg(int(value), OscMessageBuilder.ARG_TYPE_INT)
        elif isinstance(value, int):
            builder.add_arg(value, OscMessageBuilder.ARG_TYPE_INT)
        elif isinstance(value, float):
            builder.add_arg(value, OscMessageBuilder.ARG_TYPE_FLOAT)
        else:
            builder.add_arg(str(value), OscMessageBuilder.ARG_TYPE_STRING)
    return builder.build().dgram


def encode_reply(address: str, args: Iterable[Any], limit: int = MAX_REPLY) -> bytes:
    """encode_message, cutting the longest string arguments (ending them with
    "...") until the datagram fits in `limit` bytes, so that it can be sent."""
    args = list(args)
    data = encode_message(address, args)
    while len(data) > limit:
        strings = [i for i, value in enumerate(args) if isinstance(value, str) and len(value) > 3]
        if not strings:
            raise ValueError(f"a reply to {address} does not fit in {limit} bytes")
        longest = max(strings, key=lambda i: len(args[i].encode("utf-8", "surrogatepass")))
        text = args[longest]
        keep = max(len(text) - (len(data) - limit) - 3, 0)
        args[longest] = text[:keep] + "..."
        data = encode_message(address, args)
    return data
