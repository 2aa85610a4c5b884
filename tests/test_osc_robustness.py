"""msdm serve under abuse: thousands of random and malformed datagrams, then
the server still answers, every datagram got exactly one /msdm/error (no
silent drop), and no file outside the output root was touched."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from pythonosc.osc_bundle_builder import IMMEDIATELY, OscBundleBuilder
from pythonosc.osc_message_builder import OscMessageBuilder

from engine.audio.files import write_audio
from osc_bridge.client import OscClient
from osc_bridge.server import OscServer
from support.osc_replies import ReplyCollector

pytestmark = pytest.mark.usefixtures("one_torch_thread")



def snapshot(folder):
    """Every path under `folder` with its size and modification time."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            info = os.lstat(path)
            out[path] = (info.st_size, info.st_mtime_ns)
    return out


def message(address, *typed):
    builder = OscMessageBuilder(address=address)
    for type_, value in typed:
        builder.add_arg(value, type_)
    return builder.build().dgram


def osc_string(text: bytes) -> bytes:
    return text + b"\0" * (4 - len(text) % 4)


@pytest.fixture
def setup(tiny_models, tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    write_audio(outside / "mix.wav", np.full((1, 2000), 0.1, np.float32), 22050)
    for name in ("bass.wav", "drums.wav", "mix.wav", "notes.txt"):
        if not (outside / name).exists():
            (outside / name).write_bytes(b"keep me")
    (root / "escape").symlink_to(outside)
    (root / "deep").mkdir()
    # Every datagram is answered: no rate limit on the unsigned answers to those that are not OSC.
    server = OscServer(tiny_models, port=0, output_root=root, max_seconds=30, unsigned_replies_per_host=None,
                       unsigned_replies_total=None).start()
    yield server, root, outside
    server.shutdown()


def malformed_datagrams(rng: np.random.Generator, root, outside) -> list[bytes]:
    """Each of these must be answered with exactly one /msdm/error."""
    mix, notes = str(outside / "mix.wav"), str(outside / "notes.txt")
    escapes = [str(outside), str(root / "escape"), str(root / "escape" / "sub"), str(root / ".." / "outside"),
               str(root / "deep" / ".." / ".." / "outside"), "relative/out", "/", "/etc", ""]
    addresses = ["/msdm/separate", "/msdm/generate", "/msdm/impute", "/msdm/cancel", "/msdm/ping",
                 "/msdm/status", "/msdm/models", "/msdm/root"]
    words = ["steps", "seed", "likelihood", "drums", "bass", "reply_port", "format", "bits", "x", "", "mix"]
    out: list[bytes] = []

    def random_value():
        kind = rng.integers(0, 9)
        if kind == 0:
            return "i", int(rng.integers(-2**31, 2**31))
        if kind == 1:
            return "f", float(rng.choice([np.nan, np.inf, -1e30, 0.0, 3.5, -2.0]))
        if kind == 2:
            return "s", str(rng.choice(words))
        if kind == 3:
            return "b", bytes(rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8))
        if kind == 4:
            return "s", "A" * int(rng.integers(1, 20000))
        if kind == 5:
            return "s", str(rng.choice(escapes))
        if kind == 6:
            return "T", True
        if kind == 7:
            return "s", notes
        return "d", float(rng.standard_normal())

    for n in range(3000):
        kind = n % 10
        if kind == 0:  # random bytes that do not start like OSC
            data = bytes(rng.integers(0, 256, int(rng.integers(1, 600)), dtype=np.uint8))
            out.append(b"\x01" + data)
        elif kind == 1:  # an OSC address then garbage
            out.append(osc_string(b"/msdm/ping") + bytes(rng.integers(0, 256, int(rng.integers(1, 40)),
                                                                    dtype=np.uint8)))
        elif kind == 2:  # type tags promising more data than there is
            out.append(osc_string(b"/msdm/separate") + osc_string(b",sssiii") + osc_string(b"job"))
        elif kind == 3:  # unknown addresses, some huge, some patterns
            address = str(rng.choice(["/msdm/*", "/msdm/{ping,status}", "/foo", "/msdm/ping/x",
                                      "/" + "x" * int(rng.integers(1, 30000))]))
            out.append(message(address))
        elif kind in (4, 5, 6):  # known addresses, wrong types, missing or extra arguments
            address = str(rng.choice(addresses))
            args = [random_value() for _ in range(int(rng.integers(0, 8)))]
            if address in ("/msdm/ping", "/msdm/status", "/msdm/models", "/msdm/root"):
                args = args or [("s", "x")]
                if len(args) == 1 and args[0][0] in ("i", "d", "f"):
                    args.append(("s", "extra"))
            if address == "/msdm/cancel":
                args = [("s", "nojob-" + str(n))] + args[:1] + [("s", "extra")]
            if address in ("/msdm/separate", "/msdm/generate", "/msdm/impute"):
                args = [("s", f"job{n}")] + [a for a in args if not (a == ("s", "reply_port"))]
                # An unknown option at the end: whatever comes before, the request is invalid.
                args += [("s", "temperature"), ("i", 1)]
            out.append(message(address, *args))
        elif kind == 7:  # output folders outside the root, valid otherwise
            out.append(message("/msdm/separate", ("s", f"esc{n}"), ("s", mix), ("s", str(rng.choice(escapes)))))
        elif kind == 8:  # non-audio inputs and folders as inputs
            source = str(rng.choice([notes, str(outside), "/dev/zero", "/proc/self/status", "/nonexistent.wav"]))
            out.append(message("/msdm/impute", ("s", f"na{n}"), ("s", str(root / "na")), ("s", "drums"),
                               ("s", source)))
        else:  # a huge datagram (over python-osc's own 8192-byte read) with a bad option
            out.append(message("/msdm/generate", ("s", f"big{n}"), ("s", str(root / "big")), ("f", 1.0),
                               ("s", "z" * int(rng.integers(8000, 60000))), ("i", 1)))
    out.append(b"")  # an empty datagram
    out.append(b"#bundle\0" + b"\0" * 4)  # a truncated bundle
    return out


def test_fuzzed_datagrams_are_all_answered_and_nothing_outside_is_touched(setup):
    server, root, outside = setup
    before = snapshot(outside)
    rng = np.random.default_rng(1234)
    datagrams = malformed_datagrams(rng, root, outside)
    with OscClient("127.0.0.1", server.port) as client:
        collector = ReplyCollector(client, unsigned=True)
        for n, data in enumerate(datagrams):
            client.send_raw(data)
            if n % 200 == 199:  # let the collector keep up with the replies
                collector.wait_for(lambda rs: len(rs) >= n - 100, 10)
        assert collector.wait_for(lambda rs: len(rs) >= len(datagrams), 60), len(collector.replies)
        client.send("/msdm/ping")
        assert collector.wait_for(lambda rs: rs[-1][1] == "/msdm/pong", 10)  # still alive
        collector.stop()
    addresses = [a for _, a, _ in collector.replies[:-1]]
    assert len(addresses) == len(datagrams) and set(addresses) == {"/msdm/error"}
    codes = {r[1] for _, _, r in collector.replies[:-1]}
    assert codes <= {"bad_request", "unknown_address", "bad_input", "bad_path"}
    assert {"bad_request", "unknown_address", "bad_input", "bad_path"} <= codes
    assert snapshot(outside) == before
    # Nothing was written in the root either: every request was refused before it was queued.
    assert sorted(os.listdir(root)) == ["deep", "escape"] and os.listdir(root / "deep") == []


def test_bundles_are_unpacked_and_answered(setup):
    server, root, outside = setup
    bundle = OscBundleBuilder(IMMEDIATELY)
    for address in ("/msdm/ping", "/msdm/status", "/nope"):
        bundle.add_content(OscMessageBuilder(address=address).build())
    far_future = OscBundleBuilder(time.time() + 3600)  # python-osc's own dispatcher would sleep an hour
    far_future.add_content(OscMessageBuilder(address="/msdm/ping").build())
    with OscClient("127.0.0.1", server.port) as client:
        client.send_raw(bundle.build().dgram)
        replies = [client.receive(5) for _ in range(3)]
        assert sorted(r[0] for r in replies) == ["/msdm/error", "/msdm/pong", "/msdm/status"]
        client.send_raw(far_future.build().dgram)
        assert client.receive(5)[0] == "/msdm/pong"


def test_a_burst_of_1000_pings_is_answered(setup):
    server, _, _ = setup
    with OscClient("127.0.0.1", server.port) as client:
        collector = ReplyCollector(client)
        ping = message("/msdm/ping")
        for _ in range(1000):
            client.send_raw(ping)
        assert collector.wait_for(lambda rs: len(rs) >= 1000, 30), len(collector.replies)
        collector.stop()
    assert [a for _, a, _ in collector.replies] == ["/msdm/pong"] * 1000


def test_reply_port_in_a_malformed_request_is_still_used(setup):
    server, root, _ = setup
    with OscClient("127.0.0.1", server.port) as sender, OscClient("127.0.0.1", server.port) as listener:
        listener.expect(sender.send("/msdm/generate", "j1", str(root / "j"), "long", "reply_port", listener.port))
        address, args = listener.receive(5)
        assert address == "/msdm/error" and args[:2] == ["j1", "bad_request"] and "seconds" in args[2]
        listener.expect(sender.send("/msdm/status", listener.port))
        assert listener.receive(5)[0] == "/msdm/status"
        assert sender.receive(0.2) is None


def test_replies_sent_back_to_the_server_do_not_loop(setup):
    server, _, _ = setup
    with OscClient("127.0.0.1", server.port) as client:
        before = server.received
        client.send("/msdm/ping", server.port)          # the pong goes to the server itself
        client.send("/msdm/status", server.port)        # its status reply parses as a bad status request
        client.send("/msdm/error", "", "bad_request", "from another server")
        time.sleep(0.5)
        assert server.received - before <= 5  # three requests and two self-sent replies, no storm
        assert client.receive(0.2) is None      # the reply to /msdm/error is silence, not an error
        assert client.request("/msdm/ping")[0] == "/msdm/pong"
