"""The protocol's pure parts: request parsing into typed requests, option
validation, reply building, datagram decoding, the client's argument typing,
and output-root containment (symlinks included)."""

from __future__ import annotations

import math
import os

import pytest

from osc_bridge import protocol
from osc_bridge.client import format_reply, infer_args
from osc_bridge.paths import check_outputs_free, contained_output_dir, prepare_output_root
from osc_bridge.protocol import JobOptions, ProtocolError, parse_options, parse_request
from osc_bridge.server import decode_datagram, encode_message

STEMS = ("bass", "drums", "guitar", "piano")


def refused(address, args):
    with pytest.raises(ProtocolError) as info:
        parse_request(address, args, STEMS)
    return info.value


def test_every_address_in_the_table_is_documented():
    docs = (os.path.dirname(__file__) + "/../docs/osc.md")
    text = open(docs, encoding="utf-8").read()
    for entry in protocol.ADDRESSES:
        assert f"`{entry.address}" in text, entry.address
    for option in protocol.OPTIONS:
        assert f"`{option.name}`" in text, option.name
    for code in protocol.ERROR_CODES:
        assert f"`{code}`" in text, code


def test_job_requests_parse_into_typed_requests():
    request = parse_request("/msdm/separate", ["j1", "/a/mix.wav", "/out/j1", "steps", 50.0, "seed", "12",
                                              "likelihood", "gaussian", "mono", True, "bits", 24,
                                              "format", "flac", "reply_port", 9011], STEMS)
    assert request == protocol.JobRequest("separate", "j1", "/out/j1", JobOptions(
        steps=50, seed=12, likelihood="gaussian", mono=True, bits="24", format="flac", reply_port=9011),
        mix_path="/a/mix.wav")
    assert protocol.reply_port_of(request) == 9011

    from engine.core.diffusion import METHODS

    assert protocol.METHODS == METHODS  # the protocol's copy of the engine's samplers
    fast = parse_request("/msdm/separate", ["f", "/a/mix.wav", "/out/f", "method", "dpmpp2m", "steps", 32,
                                            "resamples", 1, "churn", 2], STEMS)
    assert fast.options == JobOptions(method="dpmpp2m", steps=32, resamples=1, churn=2.0)

    request = parse_request("/msdm/generate", [7, "/out/g", 3], STEMS)
    assert (request.job_id, request.seconds, request.options) == ("7", 3.0, JobOptions())

    request = parse_request("/msdm/impute", ["i", "/out/i", "drums", "/d.wav", "steps", 4, "bass", "/b.wav"], STEMS)
    assert request.given == {"drums": "/d.wav", "bass": "/b.wav"} and request.options.steps == 4

    assert parse_request("/msdm/ping", [], STEMS) == protocol.Query("ping", None)
    assert parse_request("/msdm/status", [9000.0], STEMS) == protocol.Query("status", 9000)
    assert parse_request("/msdm/cancel", ["j", 9001], STEMS) == protocol.CancelRequest("j", 9001)


@pytest.mark.parametrize("address, args, code, job_id, words", [
    ("/msdm/nope", [], "unknown_address", "", "unknown address"),
    ("/msdm/*", [], "unknown_address", "", "unknown address"),
    ("/msdm/separate", [], "bad_request", "", "needs"),
    ("/msdm/separate", ["j", "/m.wav"], "bad_request", "j", "needs"),
    ("/msdm/separate", ["", "/m.wav", "/o"], "bad_request", "", "job_id is empty"),
    ("/msdm/separate", ["x" * 200, "/m.wav", "/o"], "bad_request", "", "too long"),
    ("/msdm/separate", [b"blob", "/m.wav", "/o"], "bad_request", "", "blob"),
    ("/msdm/separate", ["j", "/m.wav", "/o", "steps", -1], "bad_request", "j", "between 0"),
    ("/msdm/separate", ["j", "/m.wav", "/o", "steps", 2.5], "bad_request", "j", "whole number"),
    ("/msdm/separate", ["j", "/m.wav", "/o", "seed", math.nan], "bad_request", "j", "whole number"),
    ("/msdm/separate", ["j", "/m.wav", "/o", "churn", math.inf], "bad_request", "j", "finite"),
    ("/msdm/separate", ["j", "/m.wav", "/o", "likelihood", "laplace"], "bad_request", "j", "dirac, gaussian"),
    ("/msdm/separate", ["j", "/m.wav", "/o", "method", "rk45"], "bad_request", "j", "euler, heun, dpmpp2m"),
    ("/msdm/separate", ["j", "/m.wav", "/o", "seed", 1, "seed", 2], "bad_request", "j", "twice"),
    ("/msdm/separate", ["j", "/m.wav", "/o", 5, 1], "bad_request", "j", "option names are strings"),
    ("/msdm/separate", ["j", "/m.wav", "/o", "overwrite", 2], "bad_request", "j", "between 0 and 1"),
    ("/msdm/separate", ["j", "/m.wav", "/o", "reply_port", 70000], "bad_request", "j", "65535"),
    ("/msdm/separate", ["j", "/m\x00.wav", "/o"], "bad_request", "j", "NUL"),
    ("/msdm/generate", ["j", "/o", "ten"], "bad_request", "j", "number"),
    ("/msdm/generate", ["j", "/o", 1, "mono", 1], "bad_request", "j", "unknown option 'mono' for generate"),
    ("/msdm/impute", ["j", "/o", "drums", "/d.wav", "bass"], "bad_request", "j", "pairs"),
    ("/msdm/impute", ["j", "/o", "drums", "/d", "drums", "/e"], "bad_request", "j", "twice"),
    ("/msdm/impute", ["j", "/o", "bass", "/b", "drums", "/d", "guitar", "/g", "piano", "/p"], "bad_request", "j",
     "nothing is left"),
    ("/msdm/impute", ["j", "/o", "vocals", "/v.wav"], "bad_request", "j", "unknown option 'vocals'"),
    ("/msdm/ping", ["x"], "bad_request", "", "whole number"),
    ("/msdm/ping", [1, 2], "bad_request", "", "at most one"),
    ("/msdm/cancel", [], "bad_request", "", "needs"),
])
def test_bad_requests_are_refused_with_code_and_job(address, args, code, job_id, words):
    error = refused(address, args)
    assert (error.code, error.job_id) == (code, job_id) and words in error.message, error.message


def test_best_effort_reply_port_and_job_id():
    assert protocol.best_effort_reply_port("/msdm/generate", ["j", "/o", "bad", "reply_port", 9005]) == 9005
    assert protocol.best_effort_reply_port("/msdm/ping", [9006]) == 9006
    assert protocol.best_effort_reply_port("/msdm/ping", ["x"]) is None
    assert protocol.best_effort_job_id("/msdm/separate", [12]) == "12"
    assert protocol.best_effort_job_id("/msdm/ping", ["a"]) == ""


def test_flac_cannot_be_float():
    with pytest.raises(ProtocolError, match="FLAC"):
        parse_options(["format", "flac", "bits", "32f"], "generate", "j")
    assert parse_options(["format", "flac"], "generate", "j").sample_format == "24"
    assert parse_options([], "generate", "j").sample_format == "32f"


def test_replies_encode_and_decode_with_osc_types():
    for reply in [protocol.pong("0.1.0", "default.safetensors"),
                  protocol.models_reply("/m.safetensors", STEMS, 22050, "onnx"),
                  protocol.status_reply(True, "j", 0.5, 3),
                  protocol.accepted("j", 2), protocol.progress("j", 0.25, "step"),
                  protocol.done("j", {"bass": "/o/bass.wav", "mix": "/o/mix.wav"}),
                  protocol.error("j", "bad_path", "outside"), protocol.cancelled("j")]:
        assert decode_datagram(encode_message(*reply)) == [reply]
    assert protocol.progress("j", 1.7, "x")[1][1] == 1.0
    assert protocol.models_reply("m", STEMS, 22050, "torch")[1][1] == "bass,drums,guitar,piano"


def test_decode_refuses_what_is_not_osc():
    for data in [b"", b"hello", b"/msdm/ping\0\0", b"#bundle\0", b"/a\0\0,i\0\0\0\0"]:
        if data == b"/msdm/ping\0\0":
            assert decode_datagram(data) == [("/msdm/ping", [])]
            continue
        with pytest.raises(ValueError):
            decode_datagram(data)


def test_client_types_command_line_words():
    assert infer_args(["j", "12", "-3", "0.5", "1e3", "/a/12", "nan", "inf", "99999999999"]) == \
        ["j", 12, -3, 0.5, 1000.0, "/a/12", "nan", "inf", 99999999999.0]
    assert infer_args(["12", "4", "2"], "sif") == ["12", 4, 2.0]
    with pytest.raises(ValueError):
        infer_args(["1"], "ss")
    assert format_reply("/msdm/progress", ["j", 0.123456789, "a\tb\nc"]) == "/msdm/progress\tj\t0.123457\ta b c"


def test_output_dirs_must_resolve_inside_the_root(tmp_path):
    root = prepare_output_root(tmp_path / "root")
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "to_outside").symlink_to(outside)
    (root / "inner").mkdir()
    (root / "to_inner").symlink_to(root / "inner")
    assert contained_output_dir(str(root / "a" / "b"), root) == root / "a" / "b"
    assert contained_output_dir(str(root / "to_inner" / "x"), root) == root / "inner" / "x"
    assert contained_output_dir(str(root), root) == root
    for bad in [str(outside), str(root / "to_outside"), str(root / "to_outside" / "new"),
                str(root / ".." / "outside"), str(root) + "_sibling", "relative/x", "/"]:
        with pytest.raises(ProtocolError) as info:
            contained_output_dir(bad, root, "j")
        assert info.value.code == "bad_path" and info.value.job_id == "j"
    made = contained_output_dir(str(root / "new" / "deep"), root, create=True)
    assert made.is_dir()
    (root / "file").write_text("x")
    with pytest.raises(ProtocolError, match="not a folder"):
        contained_output_dir(str(root / "file"), root)


def test_existing_outputs_are_named(tmp_path):
    (tmp_path / "drums.wav").write_bytes(b"x")
    (tmp_path / "bass.wav").symlink_to(tmp_path / "missing")  # a dangling link counts as taken
    with pytest.raises(ProtocolError) as info:
        check_outputs_free(tmp_path, ["bass", "drums", "piano"], "wav", overwrite=False, job_id="j")
    assert info.value.code == "exists" and "bass.wav, drums.wav" in info.value.message
    check_outputs_free(tmp_path, ["bass", "drums"], "wav", overwrite=True)
    check_outputs_free(tmp_path, ["bass", "drums"], "flac", overwrite=False)
