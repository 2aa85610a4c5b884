"""Replies a client can trust, and refusals nobody can aim (issue 21, findings
1-3 and 8), over real UDP sockets against a real server on the tiny model:
another local user who knows a client's port and job id (ps, /proc/net/udp)
sends it forged replies; unsigned requests try to make the server answer
someone else, or many times."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import time

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # the app's client below: no display

from osc_bridge import auth
from osc_bridge.client import OscClient
from osc_bridge.codec import decode_datagram, encode_message

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GENERATE = ["steps", 2, "method", "dpmpp2m"]


@pytest.fixture
def served(tiny_models, tmp_path):
    from osc_bridge.server import OscServer

    key = auth.load_or_create_secret(tmp_path / "config" / "osc-secret")
    server = OscServer(tiny_models, port=0, output_root=tmp_path / "root", secret=key).start()
    yield server, key, tmp_path / "root"
    server.shutdown()


def attacker() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.5)
    return sock


def replies_of(sock: socket.socket, wait: float = 0.5) -> list[bytes]:
    out, deadline = [], time.monotonic() + wait
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            out.append(sock.recv(65535))
        except (socket.timeout, TimeoutError):
            break
    return out


def bundle_of(*elements: bytes) -> bytes:
    return b"#bundle\0" + struct.pack(">Q", 1) + b"".join(struct.pack(">i", len(e)) + e for e in elements)


# --- finding 1: forged replies -------------------------------------------------------

def test_a_client_takes_only_the_servers_replies_signed_for_its_own_request(served):
    server, key, root = served
    evil = "/tmp/chosen-by-the-attacker.wav"
    with OscClient("127.0.0.1", server.port, secret=key) as client, attacker() as other:
        [nonce] = client.send("/msdm/generate", "g1", str(root / "g1"), 0.2, *GENERATE)
        forged = encode_message("/msdm/done", ["g1", "bass", evil])
        other.sendto(forged, ("127.0.0.1", client.port))                                     # unsigned
        other.sendto(auth.sign_reply(b"e" * 64, forged, nonce), ("127.0.0.1", client.port))  # another secret
        other.sendto(auth.sign_reply(key, forged, nonce), ("127.0.0.1", client.port))        # not from the server
        other.sendto(encode_message("/msdm/error", ["", "engine", "boom"]), ("127.0.0.1", client.port))
        final = client.wait_job("g1", silence=60)
        assert final[0] == "/msdm/done", final
        assert evil not in final[1] and all(p.startswith(str(root / "g1")) for p in final[1][2::2])
        assert client.ignored >= 4
    # A reply the server signed for one request is worth nothing for another (the nonce binds it).
    signed = auth.sign_reply(key, forged, nonce)
    address, args, raw = decode_datagram(signed, with_bytes=True)[0]
    assert auth.check_reply(key, raw, args, {nonce}) == nonce
    assert auth.check_reply(key, raw, args, {"0" * 16}) is None
    assert auth.check_reply(b"e" * 64, raw, args, {nonce}) is None
    changed = signed.replace(b"bass", b"drum")
    assert auth.check_reply(key, changed, decode_datagram(changed)[0][1], {nonce}) is None
    # A reply can never pass for a request: another domain is signed.
    assert server.verifier.check(raw, args) is not None


# --- finding 3: refusals -------------------------------------------------------------

def test_an_unsigned_request_is_answered_once_at_its_sender_never_at_a_port_it_names(served):
    server, key, root = served
    with OscClient("127.0.0.1", server.port, secret=key) as victim, attacker() as other:
        other.sendto(encode_message("/msdm/cancel", ["victim-job", victim.port]), ("127.0.0.1", server.port))
        other.sendto(bundle_of(*[encode_message("/msdm/ping", [victim.port])] * 32), ("127.0.0.1", server.port))
        replies = replies_of(other)
        assert len(replies) == 2, len(replies)  # one per datagram, not one per message of the bundle
        for data in replies:
            address, args = decode_datagram(data)[0]
            assert (address, args[1]) == ("/msdm/error", "unauthorized") and len(data) < 300
        assert victim.receive(0.5, unsigned=True) is None  # the victim heard nothing
        assert victim.request("/msdm/ping")[0] == "/msdm/pong"


def test_refusals_are_rate_limited_per_host_and_signed_replies_are_not(served):
    server, key, root = served
    with attacker() as other, OscClient("127.0.0.1", server.port, secret=key) as client:
        for _ in range(200):
            other.sendto(encode_message("/msdm/ping", []), ("127.0.0.1", server.port))
        refused = replies_of(other, 1.0)
        assert 1 <= len(refused) <= 15, len(refused)  # a burst of 10, refilled at 5 a second
        for _ in range(30):
            assert client.request("/msdm/ping")[0] == "/msdm/pong"


def test_the_limiter_refills_per_host_and_in_total():
    from osc_bridge.refusals import RefusalLimiter

    now = [0.0]
    limiter = RefusalLimiter(per_host=2.0, total=3.0, clock=lambda: now[0])
    assert [limiter.allow("a") for _ in range(5)] == [True] * 4 + [False]  # a burst of twice the rate
    assert [limiter.allow("b") for _ in range(3)] == [True, True, False]   # the total's burst (6) is spent
    now[0] += 1.0
    assert limiter.allow("a") and limiter.allow("a") and not limiter.allow("a")
    assert limiter.dropped == 3


# --- finding 8: clear errors ---------------------------------------------------------

def test_a_token_just_outside_the_window_says_by_how_much():
    key = b"k" * 64
    message = encode_message("/msdm/ping", [])
    signed = auth.sign_message(key, message, now=1_000_000)
    why = auth.Verifier(key, clock=lambda: 1_000_060.4).check(signed, decode_datagram(signed)[0][1])
    assert "60.4 s behind this server's clock" in why and "60 s either way" in why


def test_a_nul_in_an_argument_is_refused_before_sending(served):
    server, key, root = served
    with OscClient("127.0.0.1", server.port, secret=key) as client:
        with pytest.raises(ValueError, match="argument 3 of /msdm/separate contains a NUL character"):
            client.send("/msdm/separate", "n1", "/music/mix.wav", str(root / "a\0b"))


def test_a_name_too_long_for_the_file_system_is_a_bad_path(served):
    server, key, root = served
    with OscClient("127.0.0.1", server.port, secret=key) as client:
        final = client.run_job("/msdm/generate", "long1", str(root / ("x" * 300) / "y"), 0.2, *GENERATE, silence=30)
    assert final[0] == "/msdm/error" and final[1][1] == "bad_path", final
    assert "too long for the file system: a name in it has 300 bytes" in final[1][2], final[1][2]
    assert "Errno" not in final[1][2] and "internal" not in final[1][2]


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="mounts a small tmpfs (needs root)")
def test_a_full_disk_is_said_so_and_leaves_nothing(tiny_models, tmp_path):
    from osc_bridge.server import OscServer

    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(disk)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        key = auth.load_or_create_secret(tmp_path / "config" / "osc-secret")
        server = OscServer(tiny_models, port=0, output_root=disk / "root", secret=key).start()
        try:
            with OscClient("127.0.0.1", server.port, secret=key) as client:
                final = client.run_job("/msdm/generate", "full1", str(disk / "root" / "full1"), 3.0, *GENERATE,
                                       silence=120)
        finally:
            server.shutdown()
        assert final[0] == "/msdm/error" and final[1][1] == "engine", final
        assert "the disk is full" in final[1][2] and "AssertionError" not in final[1][2], final[1][2]
        assert [p.name for p in (disk / "root").rglob("*")] == []  # no temp file, no record, no folder
    finally:
        subprocess.run(["umount", str(disk)])


# --- finding 2: the app ----------------------------------------------------------------

def test_the_app_listens_on_loopback_and_takes_only_the_engines_signed_replies(served, qtbot, monkeypatch):
    pytest.importorskip("PySide6")
    from desktop import osc_messages as osc
    from desktop.engine_link import EngineLink
    from desktop.jobs import Job

    server, key, root = served
    monkeypatch.setattr(auth, "secret_if_present", lambda path=None: key)
    link = EngineLink()
    link.client.connect_to("127.0.0.1", server.port)
    listening = (link.client.socket.localAddress().toString(), link.client.socket.localPort())
    assert listening[0] == "127.0.0.1", listening  # it was 0.0.0.0: every interface
    ended, answered = [], []
    link.ended.connect(lambda *a: ended.append(a))
    link.answered.connect(lambda job, files: answered.append(files))
    job = Job("generate", "app1", root / "app1", ("bass", "drums", "guitar", "piano"))
    link.submit(job, osc.generate("app1", str(root / "app1"), 0.2, steps=2, method="dpmpp2m"))
    with attacker() as other:
        target = ("127.0.0.1", listening[1])
        other.sendto(encode_message("/msdm/error", ["", "engine", "forged"]), target)
        other.sendto(encode_message("/msdm/done", ["app1", "bass", "/tmp/evil.wav"]), target)
        other.sendto(encode_message("/msdm/error", ["app1", "unauthorized", "forged"]), target)
    # A real, signed error without a job id (a query the engine could not parse) is not the job's either.
    link.client.send(encode_message("/msdm/status", ["not a port"]))
    qtbot.waitUntil(lambda: bool(answered) or bool(ended), timeout=60_000)
    assert not ended and "/tmp/evil.wav" not in answered[0].values(), (ended, answered)
    assert all(str(path).startswith(str(root / "app1")) for path in answered[0].values())
    assert link.client.ignored >= 3
