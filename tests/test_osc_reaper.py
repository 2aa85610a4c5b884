"""The REAPER integration: the Lua scripts compile, the Lua message building
makes the right `msdm osc-send` command (run here through a real shell against
a real server), the Lua reply parsing reads what the server sent, and the
installer lays the files out for REAPER."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.audio.files import read_audio, write_audio
from osc_bridge.server import OscServer

REAPER = Path(__file__).resolve().parent.parent / "installers" / "reaper"
LUA = shutil.which("lua5.4")
LUAC = shutil.which("luac5.4") or shutil.which("luac")
MSDM = [sys.executable, "-c", "import sys; from engine.cli import main; sys.exit(main(sys.argv[1:]))"]
needs_lua = pytest.mark.skipif(LUA is None, reason="lua5.4 not installed: apt-get install lua5.4")

pytestmark = pytest.mark.usefixtures("one_torch_thread")



def lua_value(value) -> str:
    """A Python value as a Lua literal (ints stay integers, floats get a point)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if "." in repr(value) or "e" in repr(value) else repr(value) + ".0"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, dict):
        return "{" + ", ".join(f"[{lua_value(k)}] = {lua_value(v)}" for k, v in value.items()) + "}"
    return "{" + ", ".join(lua_value(v) for v in value) + "}"


def run_lua(body: str) -> list[str]:
    """Run Lua with msdm_osc.lua loaded as `osc`; returns the printed lines."""
    script = f"local osc = dofile({json.dumps(str(REAPER / 'msdm_osc.lua'))})\n{body}"
    result = subprocess.run([LUA, "-"], input=script, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


@pytest.mark.skipif(LUAC is None, reason="luac not installed: apt-get install lua5.4")
def test_every_lua_script_compiles():
    scripts = sorted(REAPER.glob("*.lua"))
    assert len(scripts) == 5
    for script in scripts:
        result = subprocess.run([LUAC, "-p", str(script)], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr


@needs_lua
def test_lua_builds_the_osc_send_argv():
    config = {"msdm": ["/opt/msdm venv/bin/msdm"], "host": "127.0.0.1", "port": 9123, "timeout": 20}
    lines = run_lua(f"""
local config = {lua_value(config)}
local function show(address, args, log)
  print(table.concat(osc.osc_send_argv(config, address, args, log), "|"))
end
local address, args = osc.separate_request("sep-1", "/home/me/My Song/mix.wav", "/out/sep-1",
                                           {{steps = 50, likelihood = "gaussian"}})
show(address, args, "/tmp/log")
show(osc.generate_request("gen-1", "/out/gen", 8, {{seed = 3}}))
show(osc.impute_request("imp-1", "/out/imp", {{{{"drums", "/r/1.wav"}}, {{"bass", "/r/2.wav"}}}}, {{seed = 7, churn = 2.5}}))
show(osc.cancel_request("42"))
config.secret_file = "/home/me/.config/msdm-studio/osc-secret"
show(osc.cancel_request("43"))
print(table.concat(osc.serve_argv(config), "|"))
""")
    assert [line.split("|") for line in lines] == [
        ["/opt/msdm venv/bin/msdm", "osc-send", "--host", "127.0.0.1", "--port", "9123", "--timeout", "20",
         "--log", "/tmp/log", "--types", "ssssssi", "/msdm/separate", "sep-1", "/home/me/My Song/mix.wav",
         "/out/sep-1", "likelihood", "gaussian", "steps", "50"],
        ["/opt/msdm venv/bin/msdm", "osc-send", "--host", "127.0.0.1", "--port", "9123", "--timeout", "20",
         "--types", "ssfsi", "/msdm/generate", "gen-1", "/out/gen", "8", "seed", "3"],
        ["/opt/msdm venv/bin/msdm", "osc-send", "--host", "127.0.0.1", "--port", "9123", "--timeout", "20",
         "--types", "sssssssfsi", "/msdm/impute", "imp-1", "/out/imp", "drums", "/r/1.wav", "bass", "/r/2.wav",
         "churn", "2.5", "seed", "7"],
        ["/opt/msdm venv/bin/msdm", "osc-send", "--host", "127.0.0.1", "--port", "9123", "--timeout", "20",
         "--types", "s", "/msdm/cancel", "42"],
        # The secret's file, never the secret: a command line is visible to every user (ps).
        ["/opt/msdm venv/bin/msdm", "osc-send", "--host", "127.0.0.1", "--port", "9123", "--timeout", "20",
         "--secret-file", "/home/me/.config/msdm-studio/osc-secret", "--types", "s", "/msdm/cancel", "43"],
        ["/opt/msdm venv/bin/msdm", "serve", "--host", "127.0.0.1", "--port", "9123", "--quiet",
         "--secret-file", "/home/me/.config/msdm-studio/osc-secret"],
    ]


@needs_lua
def test_lua_quoting_matches_the_shell_and_windows_rules():
    words = ["plain", "with space", "it's", 'say "hi"', "C:\\Program Files\\msdm\\", 'back\\"slash', "", "$HOME;rm",
             "ünï cödé"]
    posix = run_lua(f"print(osc.command_line({lua_value(words)}, false))")[0]
    echoed = subprocess.run(["sh", "-c", "printf '%s\\n' " + posix], capture_output=True, text=True).stdout
    assert echoed.split("\n")[:-1] == words
    windows = run_lua(f"print(osc.command_line({lua_value(words)}, true))")[0]
    assert windows == subprocess.list2cmdline(words)  # the MS C runtime rules CreateProcess programs parse


@needs_lua
def test_lua_command_runs_a_job_and_lua_reads_the_replies(tiny_models, tmp_path):
    from osc_bridge.auth import load_or_create_secret

    root = tmp_path / "root"
    mix = tmp_path / "my mix's take.wav"
    write_audio(mix, (0.1 * np.random.default_rng(0).standard_normal((1, 4000))).astype(np.float32), 22050)
    # A secret file of its own (as install.py writes its path into msdm_config.lua): osc-send must sign
    # with the file the configuration names, not with the default one.
    secret_file = tmp_path / "config dir" / "osc-secret"
    server = OscServer(tiny_models, port=0, output_root=root, secret=load_or_create_secret(secret_file)).start()
    try:
        log = tmp_path / "replies.log"
        config = {"msdm": MSDM, "port": server.port, "timeout": 30, "secret_file": str(secret_file)}
        command = run_lua(f"""
local address, args = osc.separate_request("sep-7", {lua_value(str(mix))}, {lua_value(str(root / 'sep 7'))},
                                           {{steps = 4, seed = 5, method = "dpmpp2m"}})
print(osc.command_line(osc.osc_send_argv({lua_value(config)}, address, args, {lua_value(str(log))}), false))
""")[0]
        result = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert log.read_text() == result.stdout
        state = run_lua(f"""
local lines = {{}}
for line in io.lines({lua_value(str(log))}) do lines[#lines + 1] = line end
local s = osc.job_state(lines, "sep-7")
print(s.state, s.progress, table.concat(s.stems, ","))
for _, stem in ipairs(s.stems) do print(s.paths[stem]) end
""")
    finally:
        server.shutdown()
    assert state[0] == "done\t1.0\tbass,drums,guitar,piano"
    assert state[1:] == [str(root / "sep 7" / f"{stem}.wav") for stem in ("bass", "drums", "guitar", "piano")]
    stems = [read_audio(path).samples for path in state[1:]]
    scale = sum(np.abs(s).max() for s in stems)
    np.testing.assert_allclose(sum(stems), read_audio(mix).samples, atol=4 * np.finfo(np.float32).eps * scale)


@needs_lua
def test_lua_job_state_errors_cancel_and_names():
    lines = run_lua(r"""
local function show(lines)
  local s = osc.job_state(lines, "j")
  print(s.state .. "|" .. tostring(s.code) .. "|" .. s.message .. "|" .. s.progress)
end
show({})
show({"/msdm/accepted\tj\t2"})
show({"/msdm/accepted\tj\t0", "/msdm/progress\tj\t0.25\tseparating window 1/4", "/msdm/progress\tother\t0.9\tx"})
show({"/msdm/error\tj\tbad_path\tout_dir is outside the output root"})
show({"/msdm/error\t\tbad_request\tjob_id is empty"})
show({"/msdm/accepted\tj\t0", "/msdm/cancelled\tj"})
show({"msdm-osc-send\tno_answer\tno answer from msdm serve"})
for _, name in ipairs({"Drums", "Bass DI", "Kick In", "Keys L", "Vocals", "GTR 2"}) do
  print(tostring(osc.stem_for_name(name)))
end
print(osc.safe_name("My Song: take 2/3"), osc.safe_name("///"), osc.job_id("sep", 1700000000, 0.12345))
""")
    assert lines == [
        "waiting|nil|waiting for the server|0.0",
        "queued|nil|queued behind 2 job(s)|0.0",
        "running|nil|separating window 1/4|0.25",
        "error|bad_path|out_dir is outside the output root|0.0",
        "error|bad_request|job_id is empty|0.0",
        "cancelled|nil|cancelled|0.0",
        "error|no_answer|no answer from msdm serve|0.0",
        "drums", "bass", "drums", "piano", "nil", "guitar",
        "My_Song_take_2_3\tuntitled\tsep-1700000000-1234",
    ]


def test_installer_copies_scripts_writes_config_and_registers_actions_once(tmp_path):
    reaper_dir = tmp_path / "REAPER"
    reaper_dir.mkdir()
    (reaper_dir / "reaper-kb.ini").write_text('KEY 1 65 40001 0\nSCR 4 0 RS_OTHER "Custom: other" "other.lua"\n')
    for _ in range(2):
        result = subprocess.run([sys.executable, str(REAPER / "install.py"), "--reaper-dir", str(reaper_dir),
                                 "--msdm", "/opt/my env/bin/msdm", "--port", "9011"],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
    target = reaper_dir / "Scripts" / "MSDM Studio"
    assert sorted(p.name for p in target.iterdir()) == sorted([
        "MSDM generate accompaniment for selected items.lua", "MSDM regenerate selected items as takes.lua",
        "MSDM separate selected item.lua", "msdm_config.lua", "msdm_osc.lua", "msdm_reaper.lua"])
    keymap = (reaper_dir / "reaper-kb.ini").read_text().splitlines()
    assert keymap == [
        "KEY 1 65 40001 0",
        'SCR 4 0 RS_OTHER "Custom: other" "other.lua"',
        'SCR 4 0 RS_MSDM_SEPARATE "Custom: MSDM: separate selected item" '
        '"MSDM Studio/MSDM separate selected item.lua"',
        'SCR 4 0 RS_MSDM_ACCOMPANY "Custom: MSDM: generate accompaniment for selected items" '
        '"MSDM Studio/MSDM generate accompaniment for selected items.lua"',
        'SCR 4 0 RS_MSDM_REGENERATE "Custom: MSDM: regenerate selected items as takes" '
        '"MSDM Studio/MSDM regenerate selected items as takes.lua"',
    ]
    if LUA:
        config = subprocess.run([LUA, "-e", f"local c = dofile({json.dumps(str(target / 'msdm_config.lua'))}) "
                                            "print(c.msdm[1], c.host, c.port, c.auto_start, c.secret_file)"],
                                capture_output=True, text=True).stdout
        # The path of the secret file msdm serve makes (here the test run's MSDM_CONFIG_DIR), not the secret.
        secret_file = os.path.join(os.environ["MSDM_CONFIG_DIR"], "osc-secret")
        assert config == f"/opt/my env/bin/msdm\t127.0.0.1\t9011\ttrue\t{secret_file}\n"
    missing = subprocess.run([sys.executable, str(REAPER / "install.py"), "--reaper-dir", str(tmp_path / "nope")],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "Show REAPER resource path" in missing.stderr


# A fake of the REAPER API functions the takes import calls, recording each call.
FAKE_REAPER = r"""
calls = {}
local function record(name) return function(...) calls[#calls + 1] = { name, ... } ; return #calls end end
reaper = setmetatable({
  get_action_context = function() return true, SCRIPT end,
  GetOS = function() return "Linux" end,
  AddTakeToMediaItem = function(item) calls[#calls + 1] = { "AddTakeToMediaItem", item }
                                      return item .. "/take" .. #calls end,
  PCM_Source_CreateFromFile = function(path) return "source:" .. path end,
}, { __index = function(_, name) return record(name) end })
"""


@needs_lua
def test_regenerate_results_arrive_as_reaper_takes_of_the_selected_items():
    """The replies of a 3-take regenerate job (as the server sends them) become three REAPER takes of
    each selected item, named with their seed, offset into the rendered span, the last one active."""
    script = str(REAPER / "MSDM regenerate selected items as takes.lua")
    body = f"SCRIPT = {json.dumps(script)}\n{FAKE_REAPER}\n" + r"""
local M = dofile(SCRIPT:match("^(.*[/\\])") .. "msdm_reaper.lua")
local osc = dofile(SCRIPT:match("^(.*[/\\])") .. "msdm_osc.lua")
local lines = {
  "/msdm/accepted\tj\t0",
  "/msdm/take\tj\t1\t40\tbass\t/o/take-1/bass.wav\tmix\t/o/take-1/mix.wav",
  "/msdm/progress\tj\t0.7\ttake 3/3: imputing window 1/1",
  "/msdm/take\tj\t2\t41\tbass\t/o/take-2/bass.wav\tmix\t/o/take-2/mix.wav",
  "/msdm/take\tj\t3\t42\tbass\t/o/take-3/bass.wav\tmix\t/o/take-3/mix.wav",
  "/msdm/done\tj\tbass\t/o/take-1/bass.wav\tmix\t/o/take-1/mix.wav",
}
local state = osc.job_state(lines, "j")
print(state.state, #state.takes, state.takes[3].number, state.takes[3].seed, state.takes[2].paths.bass)
M.add_result_takes({ { item = "bassitem", stem = "bass", position = 12.5 } }, state, 10.0)
for _, call in ipairs(calls) do
  local words = {}
  for i, v in ipairs(call) do words[i] = tostring(v) end
  print(table.concat(words, " "))
end
"""
    result = subprocess.run([LUA, "-"], input=body, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "done\t3\t3\t42\t/o/take-2/bass.wav"
    calls = lines[1:]
    assert calls[0] == "Undo_BeginBlock" and calls[-1] == "Undo_EndBlock MSDM: regenerate as takes -1"
    added = [c for c in calls if c.startswith("AddTakeToMediaItem")]
    assert added == ["AddTakeToMediaItem bassitem"] * 3
    sources = [c for c in calls if c.startswith("SetMediaItemTake_Source")]
    assert [s.split("source:")[1] for s in sources] == [f"/o/take-{k}/bass.wav" for k in (1, 2, 3)]
    names = [c for c in calls if "P_NAME" in c]
    assert [n.split("P_NAME ")[1] for n in names] == [f"MSDM bass take {k} (seed {39 + k}) true" for k in (1, 2, 3)]
    assert [c for c in calls if "D_STARTOFFS" in c] == [c for c in calls if c.endswith("D_STARTOFFS 2.5")]
    assert len([c for c in calls if "D_STARTOFFS" in c]) == 3
    active = [c for c in calls if c.startswith("SetActiveTake")]
    last_added = max(i for i, c in enumerate(calls) if c.startswith("AddTakeToMediaItem")) + 1  # Lua's #calls then
    assert active == [f"SetActiveTake bassitem/take{last_added}"]  # the newest take plays
