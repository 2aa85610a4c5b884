"""OSC on the wire: datagrams to (address, args) and back, for the server, the
client and the app (python-osc's message parser and builder, no python-osc server)."""

from __future__ import annotations

from typing import Any, Iterable

from pythonosc.osc_bundle import OscBundle
from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import OscMessageBuilder

MAX_DATAGRAM = 65535
MAX_BUNDLE_DEPTH = 4
RECEIVE_BUFFER = 4 << 20  # bursts of small requests (a controller's knob) must not overflow the kernel queue


def decode_datagram(data: bytes) -> list[tuple[str, list]]:
    """A datagram -> [(address, args)]; bundles are flattened and run at once
    (time tags are ignored: nothing here is time-critical). Raises ValueError
    with a short reason for anything that is not a well-formed OSC packet."""
    if not data:
        raise ValueError("empty datagram")

    def messages(dgram: bytes, depth: int) -> list[tuple[str, list]]:
        if OscBundle.dgram_is_bundle(dgram):
            if depth >= MAX_BUNDLE_DEPTH:
                raise ValueError("bundles nested too deep")
            out = []
            for content in OscBundle(dgram):
                if isinstance(content, OscBundle):
                    out += messages(content.dgram, depth + 1)
                else:
                    out.append((content.address, list(content.params)))
            return out
        if not OscMessage.dgram_is_message(dgram):
            raise ValueError("not an OSC message (an OSC address starts with '/')")
        message = OscMessage(dgram)
        return [(message.address, list(message.params))]

    try:
        return messages(data, 0)
    except ValueError:
        raise
    except Exception as error:  # python-osc raises ParseError, IndexError, struct.error... on bad bytes
        raise ValueError(f"malformed OSC data ({type(error).__name__})") from None


def encode_message(address: str, args: Iterable[Any]) -> bytes:
    """(address, args) -> one OSC message: int32, float32 and strings; a bool is sent as 0 or 1."""
    builder = OscMessageBuilder(address=address)
    for value in args:
        if isinstance(value, bool):  # OSC 1.0 has no boolean: a flag is 0 or 1 (protocol.as_flag)
            builder.add_arg(int(value), OscMessageBuilder.ARG_TYPE_INT)
        elif isinstance(value, int):
            builder.add_arg(value, OscMessageBuilder.ARG_TYPE_INT)
        elif isinstance(value, float):
            builder.add_arg(value, OscMessageBuilder.ARG_TYPE_FLOAT)
        else:
            builder.add_arg(str(value), OscMessageBuilder.ARG_TYPE_STRING)
    return builder.build().dgram
