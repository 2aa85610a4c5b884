"""msdm serve's limits per datagram (issue 14, finding 7), over a real UDP
socket against a real server on the tiny model: every datagram gets an
answer (or, for replies sent to the server, silence) and nothing of its
content reaches the log; replies fit a datagram; a bundle's fan-out and a
job's network evaluations are bounded, and the bounds are settable."""

from __future__ import annotations

import logging
import struct

import pytest
from pythonosc.osc_bundle_builder import IMMEDIATELY, OscBundleBuilder
from pythonosc.osc_message_builder import OscMessageBuilder

from osc_bridge import protocol
from osc_bridge.client import OscClient
from osc_bridge.codec import MAX_REPLY
from osc_bridge.server import DEFAULT_MAX_BUNDLE_MESSAGES, OscServer
from support.osc_replies import ReplyCollector

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SECRET = "CONTENT-THAT-MUST-NOT-BE-LOGGED"


@pytest.fixture
def server(tiny_models, tmp_path):
    # Every datagram is answered here: no rate limit on unsigned answers (tests/test_osc_reply_trust.py has it).
    srv = OscServer(tiny_models, port=0, output_root=tmp_path / "root", max_seconds=30,
                    unsigned_replies_per_host=None, unsigned_replies_total=None).start()
    yield srv
    srv.shutdown()


def message(address: str, *typed) -> bytes:
    builder = OscMessageBuilder(address=address)
    for type_, value in typed:
        builder.add_arg(value, type_)
    return builder.build().dgram


def bundle_of(*elements: bytes) -> bytes:
    """An OSC bundle (time tag "immediately") of raw elements, which need not be OSC."""
    return b"#bundle\0" + struct.pack(">Q", 1) + b"".join(struct.pack(">i", len(e)) + e for e in elements)


def replies_to(server, datagrams: list[bytes], expected: int, timeout: float = 20.0, sign: bool = True) -> list:
    with OscClient("127.0.0.1", server.port) as client:
        collector = ReplyCollector(client, unsigned=True)
        for data in datagrams:
            client.send_raw(data, sign=sign)
        collector.wait_for(lambda rs: len(rs) >= expected, timeout)
        collector.wait_for(lambda rs: False, 0.3)  # nothing more may come
        collector.stop()
    return [(address, args) for _, address, args in collector.replies]


# --- answered, and nothing of the content logged ---------------------------------

def test_undecodable_datagrams_are_answered_and_their_content_is_not_logged(server, caplog, capfd):
    filler = (SECRET * 2000).encode()[:60000]
    datagrams = [
        # A bundle whose element is not OSC: python-osc logged its repr (100 x 65 KB: 26 MB of stderr).
        bundle_of(message("/msdm/ping"), filler),
        bundle_of(filler),
        # Type tags python-osc does not know: it logged each one.
        b"/msdm/ping\0\0," + b"x" * 3000 + b"\0" * 3,
        # An empty bundle (python-osc gives no messages: no answer at all).
        bundle_of(),
        # A bundle element whose size points past the datagram.
        b"#bundle\0" + struct.pack(">Q", 1) + struct.pack(">i", 60000) + filler[:100],
    ] * 20
    caplog.set_level(logging.DEBUG)
    replies = replies_to(server, datagrams, len(datagrams))
    assert len(replies) == len(datagrams)
    assert {address for address, _ in replies} == {"/msdm/error"}
    assert {args[1] for _, args in replies} == {"bad_request"}
    assert all(SECRET not in args[2] and len(args[2]) < 200 for _, args in replies)
    out, err = capfd.readouterr()
    assert SECRET not in caplog.text and SECRET not in err and SECRET not in out
    assert "Could not identify" not in caplog.text + err and "Unhandled parameter" not in caplog.text + err
    assert len(err) < 2000, err[:2000]


def test_an_option_of_20000_control_characters_is_answered(server):
    """The error quoted the whole value: 80,000 characters of repr, too long for a datagram."""
    controls = "\x01\x02\x1b" * 6667
    replies = replies_to(server, [message("/msdm/generate", ("s", "j1"), ("s", "/tmp/o"), ("i", 1),
                                          ("s", "steps"), ("i", 4), ("s", controls))], 1)
    assert len(replies) == 1
    address, (job_id, code, text) = replies[0]
    assert (address, job_id, code) == ("/msdm/error", "j1", "bad_request")
    assert "has no value" in text and len(text) < 300


def test_replies_are_cut_to_fit_a_datagram(tiny_models, tmp_path):
    """A reply longer than a UDP datagram could not be sent at all; it is cut instead."""
    srv = OscServer(tiny_models, port=0, output_root=tmp_path / "root", version="v" * 70000).start()
    try:
        with OscClient("127.0.0.1", srv.port) as client:
            address, (version, model) = client.request("/msdm/ping")
        assert address == "/msdm/pong" and version.endswith("...") and model
        assert len(version) > 60000 and len(message("/msdm/pong", ("s", version), ("s", model))) <= MAX_REPLY
    finally:
        srv.shutdown()
    small = OscServer(tiny_models, port=0, output_root=tmp_path / "root", version="v" * 5000,
                      max_reply_bytes=1024).start()
    try:
        with OscClient("127.0.0.1", small.port) as client:
            address, (version, _) = client.request("/msdm/ping")
        # Cut so that the reply with its signature (auth.PAIR_BYTES) fits the 1024 bytes.
        assert address == "/msdm/pong" and 850 < len(version) < 1024 - 108 and version.endswith("...")
    finally:
        small.shutdown()


# --- bundle fan-out ----------------------------------------------------------------

def test_a_bundle_cannot_fan_out_to_thousands_of_replies(server):
    models = message("/msdm/models")
    big = bundle_of(*[models] * 2707)
    assert len(big) < 65507
    replies = replies_to(server, [big], 1, sign=False)  # refused before any signature is looked at
    assert len(replies) == 1, [a for a, _ in replies[:5]]
    address, (job_id, code, text) = replies[0]
    assert (address, job_id, code) == ("/msdm/error", "", "bad_request")
    assert f"at most {DEFAULT_MAX_BUNDLE_MESSAGES} messages" in text and "max_bundle_messages" in text
    # Up to the limit, each message is answered.
    replies = replies_to(server, [bundle_of(*[models] * DEFAULT_MAX_BUNDLE_MESSAGES)], DEFAULT_MAX_BUNDLE_MESSAGES)
    assert [a for a, _ in replies] == ["/msdm/models"] * DEFAULT_MAX_BUNDLE_MESSAGES


def test_the_bundle_limit_is_settable(tiny_models, tmp_path):
    srv = OscServer(tiny_models, port=0, output_root=tmp_path / "root", max_bundle_messages=2,
                    unsigned_replies_per_host=None).start()
    try:
        bundle = OscBundleBuilder(IMMEDIATELY)
        for _ in range(3):
            bundle.add_content(OscMessageBuilder(address="/msdm/ping").build())
        replies = replies_to(srv, [bundle.build().dgram], 1)
        assert len(replies) == 1 and replies[0][1][1] == "bad_request" and "at most 2 messages" in replies[0][1][2]
    finally:
        srv.shutdown()


# --- work per request ----------------------------------------------------------------

def separate(job_id: str, *options) -> bytes:
    typed = [("s", o) if isinstance(o, str) else ("i", o) for o in options]
    return message("/msdm/separate", ("s", job_id), ("s", "/nonexistent/mix.wav"), ("s", "/nonexistent/out"),
                   *typed)


def test_network_evaluations_per_request_are_bounded(server):
    replies = replies_to(server, [separate("huge", "steps", 10000, "resamples", 100),
                                  separate("heun", "steps", 1001, "resamples", 1, "method", "heun"),
                                  separate("paper", "steps", 150, "resamples", 2),
                                  separate("default")], 4)
    by_job = {args[0]: args for _, args in replies}
    assert by_job["huge"][1] == "bad_request"
    assert "1000000 network evaluations" in by_job["huge"][2] and "max_evaluations" in by_job["huge"][2]
    assert "2000" in by_job["huge"][2]
    assert by_job["heun"][1] == "bad_request" and "2001 network evaluations" in by_job["heun"][2]
    # Within the limit the request goes on to the next check (here: its paths).
    assert by_job["paper"][1] in ("bad_path", "bad_input") and by_job["default"][1] in ("bad_path", "bad_input")


def test_the_evaluation_limit_is_settable(tiny_models, tmp_path):
    srv = OscServer(tiny_models, port=0, output_root=tmp_path / "root", max_evaluations=100).start()
    try:
        replies = replies_to(srv, [separate("a", "steps", 50, "resamples", 2), separate("b", "steps", 51)], 2)
        by_job = {args[0]: args for _, args in replies}
        assert by_job["a"][1] in ("bad_path", "bad_input")
        assert by_job["b"][1] == "bad_request" and "102 network evaluations" in by_job["b"][2]
        assert "at most 100 (max_evaluations)" in by_job["b"][2]
    finally:
        srv.shutdown()


def test_the_papers_settings_fit_the_default_limit():
    """150 x 2 (separation) and 256 (imputation) are well within it; the defaults
    the protocol assumes are the engine's."""
    from engine.core import tasks

    limit = protocol.DEFAULT_MAX_EVALUATIONS
    for kind, settings in (("separate", tasks.SEPARATE_DIRAC), ("separate", tasks.SEPARATE_GAUSSIAN),
                           ("generate", tasks.GENERATE), ("impute", tasks.IMPUTE)):
        assert protocol.DEFAULT_STEPS_RESAMPLES[kind] == (settings.steps, settings.num_resamples)
        options = protocol.JobOptions()
        assert protocol.network_evaluations(kind, options)[2] == settings.nfe <= limit
        heun = protocol.JobOptions(method="heun")
        assert protocol.network_evaluations(kind, heun)[2] == settings.override(method="heun").nfe


def test_msdm_serve_flags_set_the_limits(monkeypatch, capsys, tiny_model_path, tmp_path):
    from engine.cli import main

    assert main(["serve", "--max-evaluations", "0"]) != 0
    assert "--max-evaluations and --max-bundle must be at least 1" in capsys.readouterr().err
    made = {}

    class Recorder:
        def __init__(self, models, **kwargs):
            made.update(kwargs)
            raise OSError("recorded")  # stop before listening

    monkeypatch.setattr("osc_bridge.server.OscServer", Recorder)
    main(["serve", "--port", "0", "--model", str(tiny_model_path), "--output-root", str(tmp_path),
          "--max-evaluations", "300", "--max-bundle", "4"])
    assert made["max_evaluations"] == 300 and made["max_bundle_messages"] == 4
