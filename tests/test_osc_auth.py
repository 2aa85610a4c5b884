"""`msdm serve` works for the user who runs it (issue 14, finding 2): requests
must be signed with that user's secret file (osc_bridge.auth), the secret file
and the output root are private, and another user (a real second uid) can
neither run a job on this user's files nor read what the server wrote."""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from engine.audio.files import read_audio, write_audio
from osc_bridge.client import OscClient, done_paths
from osc_bridge.codec import encode_message
from support.processes import MSDM, start_serve

STEPS = ["steps", 4, "method", "dpmpp2m"]


# --- signatures, over a real socket to a real server --------------------------------------

@pytest.fixture
def setup(tiny_models, tmp_path):
    from osc_bridge.auth import load_or_create_secret
    from osc_bridge.server import OscServer

    key = load_or_create_secret(tmp_path / "config" / "osc-secret")
    mix = tmp_path / "mix.wav"
    write_audio(mix, (0.1 * np.random.default_rng(0).standard_normal((1, 3000))).astype(np.float32), 22050)
    server = OscServer(tiny_models, port=0, output_root=tmp_path / "root", secret=key).start()
    yield server, key, mix, tmp_path / "root"
    server.shutdown()


def separate(job_id: str, mix: Path, out: Path) -> bytes:
    return encode_message("/msdm/separate", [job_id, str(mix), str(out), *STEPS])


def test_only_requests_signed_with_the_users_secret_are_served(setup, caplog):
    from osc_bridge.auth import sign_datagram, sign_message

    server, key, mix, root = setup
    caplog.set_level(logging.DEBUG)
    with OscClient("127.0.0.1", server.port, secret=key) as client:
        def answer(data: bytes) -> tuple[str, list]:
            client.send_raw(data, sign=False)
            return client.receive(10)

        refusals = {
            "unsigned": answer(separate("a1", mix, root / "a1")),
            "another key": answer(sign_datagram(b"f" * 64, separate("a2", mix, root / "a2"))),
            "an hour old": answer(sign_message(key, separate("a3", mix, root / "a3"), now=time.time() - 3600)),
        }
        signed = sign_datagram(key, separate("a4", mix, root / "a4"))
        refusals["changed after signing"] = answer(signed.replace(b"/a4\0", b"/a5\0"))  # another out_dir
        token = signed.split(b"auth\0\0\0\0")[1].rstrip(b"\0").decode()
        refusals["pair not last"] = answer(encode_message("/msdm/separate", ["a6", str(mix), str(root / "a6"),
                                                                             "auth", token, *STEPS]))
        for (what, (address, args)), job_id in zip(refusals.items(), ("a1", "a2", "a3", "a4", "a6")):
            assert (address, args[:2]) == ("/msdm/error", [job_id, "unauthorized"]), (what, args)
            assert key.decode() not in args[2] and token not in args[2], what
        assert "not signed" in refusals["unsigned"][1][2]
        assert "another secret" in refusals["another key"][1][2]
        assert "changed after signing" in refusals["changed after signing"][1][2]
        assert "clock" in refusals["an hour old"][1][2]
        # Nothing of the refused requests ran.
        assert not root.exists() or os.listdir(root) == []

        # Signed, it runs; the same datagram again (a replay) is refused.
        final = client.run_job("/msdm/separate", "ok1", str(mix), str(root / "ok1"), *STEPS, silence=60)
        assert final[0] == "/msdm/done", final
        nonces: list = []
        status = sign_datagram(key, encode_message("/msdm/status", []), nonces=nonces)
        client.expect(nonces)  # signed outside the client: its replies are taken when the client knows the nonce
        assert answer(status)[0] == "/msdm/status"
        address, args = answer(status)
        assert (address, args[1]) == ("/msdm/error", "unauthorized") and "used before" in args[2]
    assert key.decode() not in caplog.text


def test_an_unsigned_client_learns_nothing_but_the_refusal(setup):
    """Every address needs a signature, the queries too: /msdm/models would name
    the model's path, /msdm/root the output root, /msdm/status the running job."""
    from osc_bridge import protocol

    server, key, mix, root = setup
    with OscClient("127.0.0.1", server.port, secret=b"0" * 64) as stranger:
        for entry in protocol.ADDRESSES:
            stranger.send(entry.address, *(["j"] if entry.address == "/msdm/cancel" else []))
            address, args = stranger.receive(10)
            assert (address, args[1]) == ("/msdm/error", "unauthorized"), (entry.address, args)
        # A reply port in a refused request is not followed (issue 21, finding 3): the refusal
        # goes to the sender's own address, so nobody can aim it at someone else's port.
        with OscClient("127.0.0.1", server.port) as listener:
            stranger.send_raw(encode_message("/msdm/ping", [listener.port]), sign=False)
            assert stranger.receive(10)[1][1] == "unauthorized"
            assert listener.receive(0.5, unsigned=True) is None


def test_the_signing_recipe_in_the_docs_is_accepted(setup):
    """docs/osc.md's standard-library signer and reply checker (for TouchDesigner and other Python hosts)."""
    import socket

    from osc_bridge.codec import decode_datagram

    server, key, mix, root = setup
    docs = (Path(__file__).resolve().parent.parent / "docs" / "osc.md").read_text(encoding="utf-8")
    namespace: dict = {}
    for name in ("# msdm_auth:", "# msdm_reply_ok:"):
        exec(next(b for b in docs.split("```python\n")[1:] if b.startswith(name)).split("```")[0], namespace)
    secret_file = str(root.parent / "config" / "osc-secret")
    args = namespace["msdm_auth"]("/msdm/generate", ["doc1", str(root / "doc1"), 0.25, "steps", 2],
                                  secret_file=secret_file)
    nonce = args[-1].split(".")[1]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(60)
        sock.sendto(encode_message("/msdm/generate", args), ("127.0.0.1", server.port))
        replies = []
        while not replies or replies[-1][0] not in ("/msdm/done", "/msdm/error"):
            replies.append(decode_datagram(sock.recv(65535))[0])
    assert replies[-1][0] == "/msdm/done", replies[-1]
    assert all(namespace["msdm_reply_ok"](address, args, nonce, secret_file) for address, args in replies)
    address, args = replies[-1]
    assert not namespace["msdm_reply_ok"](address, args, "0" * 16, secret_file)
    assert not namespace["msdm_reply_ok"](address, args[:1] + ["x"] + args[2:], nonce, secret_file)


# --- the secret file and the output root ---------------------------------------------

@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
def test_the_secret_file_is_made_once_private_and_checked(tmp_path):
    from osc_bridge.auth import SecretError, load_or_create_secret, read_secret

    path = tmp_path / "new" / "config" / "osc-secret"
    key = load_or_create_secret(path)
    assert len(key) == 64 and int(key, 16) >= 0
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    assert load_or_create_secret(path) == key  # kept, never replaced
    assert sorted(os.listdir(path.parent)) == ["osc-secret"]  # no temp file left

    os.chmod(path, 0o644)
    with pytest.raises(SecretError, match="chmod 600"):
        load_or_create_secret(path)
    assert read_secret(path) == key  # a client may still read it
    os.chmod(path, 0o600)
    link = tmp_path / "link"
    link.symlink_to(path)
    with pytest.raises(SecretError, match="symbolic link"):
        load_or_create_secret(link)
    (tmp_path / "empty").write_bytes(b"")
    os.chmod(tmp_path / "empty", 0o600)
    with pytest.raises(SecretError, match="holds no secret"):
        load_or_create_secret(tmp_path / "empty")


def test_serve_refuses_a_secret_others_can_read_and_osc_send_needs_one(tmp_path, capsys):
    from engine.cli import main

    shared = tmp_path / "osc-secret"
    shared.write_text("a" * 64)
    os.chmod(shared, 0o644)
    assert main(["serve", "--port", "0", "--secret-file", str(shared), "--output-root", str(tmp_path)]) == 2
    assert "can be read by other users" in capsys.readouterr().err
    assert main(["osc-send", "--secret-file", str(tmp_path / "none"), "/msdm/ping"]) == 2
    assert "no secret file" in capsys.readouterr().err


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
def test_the_output_root_is_made_private(tmp_path, caplog):
    from osc_bridge.paths import prepare_output_root

    assert stat.S_IMODE(os.stat(prepare_output_root(tmp_path / "new")).st_mode) == 0o700
    old = tmp_path / "old"
    old.mkdir()
    os.chmod(old, 0o755)
    with caplog.at_level(logging.WARNING, logger="msdm.serve"):
        assert prepare_output_root(old) == old.resolve()
    assert stat.S_IMODE(os.stat(old).st_mode) == 0o700 and "made the output root" in caplog.text


# --- a second user ------------------------------------------------------------------------

# Run as the other user: only the standard library (the project's Python may
# lie in a folder that user cannot enter), an OSC client written out here.
OTHER_USER = r"""
import json, os, socket, struct, sys

def osc_string(text):
    data = text.encode() + b"\0"
    return data + b"\0" * (-len(data) % 4)

def message(address, args):
    tags = "," + "".join("i" if isinstance(a, int) else "s" for a in args)
    return osc_string(address) + osc_string(tags) + b"".join(
        struct.pack(">i", a) if isinstance(a, int) else osc_string(a) for a in args)

def read_string(data, at):
    end = data.index(b"\0", at)
    return data[at:end].decode(), (end // 4 + 1) * 4

def parse(data):
    address, at = read_string(data, 0)
    tags, at = read_string(data, at)
    args = []
    for tag in tags[1:]:
        if tag == "s":
            value, at = read_string(data, at)
        elif tag in "if":
            value, at = struct.unpack(">" + tag, data[at:at + 4])[0], at + 4
        else:
            break
        args.append(value)
    return address, args

task = json.loads(sys.argv[1])
result = {"replies": [], "reads": {}}
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("127.0.0.1", 0))
sock.settimeout(task["timeout"])
for address, args in task["requests"]:
    sock.sendto(message(address, args), ("127.0.0.1", task["port"]))
    replies = []
    try:
        while True:
            reply = parse(sock.recv(65535))
            replies.append(reply)
            if reply[0] in ("/msdm/done", "/msdm/error", "/msdm/cancelled", "/msdm/pong"):
                break
    except socket.timeout:
        pass
    result["replies"].append(replies)
for path in task["read"]:
    try:
        if os.path.isdir(path):
            os.listdir(path)
        else:
            open(path, "rb").read(1)
        result["reads"][path] = "read"
    except OSError as error:
        result["reads"][path] = type(error).__name__
print(json.dumps(result))
"""


def as_nobody(task: dict) -> dict:
    python = shutil.which("python3", path="/usr/bin:/bin")
    result = subprocess.run([python, "-c", OTHER_USER, json.dumps(task)], user=65534, group=65534,
                            extra_groups=[], cwd="/", env={"PATH": "/usr/bin:/bin"}, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                    reason="needs root, to run a client as another user (nobody)")
@pytest.mark.skipif(shutil.which("python3", path="/usr/bin:/bin") is None, reason="no system python3")
def test_another_user_can_neither_run_jobs_nor_read_outputs(tiny_model_path):
    """The finding: as nobody, `cat private.wav` is refused, yet /msdm/separate of
    it succeeded and the stems (0644 in 0755 folders) summed to it."""
    base = Path(tempfile.mkdtemp(prefix="msdm-two-users-", dir="/tmp"))
    try:
        os.chmod(base, 0o755)
        music = base / "music"
        music.mkdir()
        os.chmod(music, 0o755)
        private = music / "private.wav"
        write_audio(private, (0.1 * np.random.default_rng(3).standard_normal((1, 4000))).astype(np.float32), 22050)
        os.chmod(private, 0o600)
        root = base / "outputs"
        serve, port, _ = start_serve(["--model", str(tiny_model_path), "--output-root", str(root), "--quiet",
                                      "--threads", "1"])
        try:
            # The user who runs the server (signed by OscClient from the user's secret file).
            with OscClient("127.0.0.1", port) as client:
                final = client.run_job("/msdm/separate", "mine", str(private), str(root / "mine"), *STEPS,
                                       silence=60)
            assert final[0] == "/msdm/done", final
            mine = done_paths(final[1])
            secret_file = Path(os.environ["MSDM_CONFIG_DIR"]) / "osc-secret"
            # Another user: asks for the same file, with no secret and with a guessed token.
            forged = f"{int(time.time())}.{'0' * 16}.{'0' * 64}"
            other = as_nobody({
                "port": port, "timeout": 60,
                "requests": [["/msdm/separate", ["stolen", str(private), str(root / "stolen"), *STEPS]],
                             ["/msdm/separate", ["forged", str(private), str(root / "forged"), *STEPS,
                                                 "auth", forged]]],
                "read": [str(private), str(secret_file), str(root), str(root / "mine"), str(mine["bass"])],
            })
        finally:
            serve.terminate()
            serve.wait(timeout=60)
        for replies in other["replies"]:
            assert replies and replies[-1][0] == "/msdm/error" and replies[-1][1][1] == "unauthorized", replies
            assert len(replies) == 1  # refused before anything: no accepted, no progress
        assert not (root / "stolen").exists() and not (root / "forged").exists()
        assert other["reads"] == {str(private): "PermissionError", str(secret_file): "PermissionError",
                                  str(root): "PermissionError", str(root / "mine"): "PermissionError",
                                  str(mine["bass"]): "PermissionError"}
        # Private by their modes too, not only by the root's: outputs 0600, folders 0700.
        assert stat.S_IMODE(os.stat(root).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(root / "mine").st_mode) == 0o700
        assert {stat.S_IMODE(os.stat(p).st_mode) for p in mine.values()} == {0o600}
        stems = sum(read_audio(p).samples for p in mine.values())
        scale = sum(float(np.abs(read_audio(p).samples).max()) for p in mine.values())
        np.testing.assert_allclose(stems, read_audio(private).samples, atol=4 * np.finfo(np.float32).eps * scale)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_osc_send_signs_and_the_token_it_prints_signs_the_same_message(tiny_model_path, tmp_path):
    """`msdm osc-send --auth-token` is what liblo's oscsend users append (tests/test_osc_liblo.py sends it)."""
    from osc_bridge.auth import Verifier, load_or_create_secret

    key = load_or_create_secret()
    token = subprocess.run([*MSDM, "osc-send", "--auth-token", "/msdm/ping", "9011"], capture_output=True,
                           text=True, timeout=60, check=True).stdout.strip()
    signed = encode_message("/msdm/ping", [9011, "auth", token])
    verifier = Verifier(key)
    assert verifier.check(signed, [9011, "auth", token]) is None
    assert "used before" in verifier.check(signed, [9011, "auth", token])
    assert Verifier(b"1" * 64).check(signed, [9011, "auth", token]).startswith("the 'auth' token does not match")
