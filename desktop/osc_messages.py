"""OSC requests of the MSDM protocol v1 (docs: the server's docs/osc.md), built and
parsed with python-osc's message builder and parser only (no python-osc server)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from pythonosc.osc_message import OscMessage

from osc_bridge.codec import encode_message

PREFIX = "/msdm/"


def build(address: str, args: Iterable[Any]) -> bytes:
    return encode_message(address, args)


def _options(options: Mapping[str, Any]) -> list[Any]:
    flat: list[Any] = []
    for key, value in options.items():
        if value is not None:
            flat += [key, value]
    return flat


def separate(job_id: str, mix: str, out_dir: str, **options) -> bytes:
    return build(PREFIX + "separate", [job_id, mix, out_dir, *_options(options)])


def generate(job_id: str, out_dir: str, seconds: float, **options) -> bytes:
    return build(PREFIX + "generate", [job_id, out_dir, float(seconds), *_options(options)])


def impute(job_id: str, out_dir: str, given: Mapping[str, str], **options) -> bytes:
    pairs = [item for stem, path in given.items() for item in (stem, str(path))]
    return build(PREFIX + "impute", [job_id, out_dir, *pairs, *_options(options)])


def simple(name: str) -> bytes:
    """ping, models, status (replies go to the sender's address)."""
    return build(PREFIX + name, [])


def cancel(job_id: str) -> bytes:
    return build(PREFIX + "cancel", [job_id])


@dataclass(frozen=True)
class Reply:
    name: str          # the address without /msdm/, e.g. "progress"
    args: tuple


def parse(datagram: bytes) -> Reply | None:
    """A reply, or None for a datagram that is not an OSC message of this protocol."""
    try:
        message = OscMessage(datagram)
    except Exception:  # python-osc raises its own ParseError and others on garbage
        return None
    if not message.address.startswith(PREFIX):
        return None
    return Reply(message.address[len(PREFIX):], tuple(message.params))


def pairs(args: Iterable[Any]) -> dict[str, str]:
    """``stem path stem path ...`` -> {stem: path} (an odd trailing item is dropped)."""
    args = list(args)
    return {str(args[i]): str(args[i + 1]) for i in range(0, len(args) - 1, 2)}
