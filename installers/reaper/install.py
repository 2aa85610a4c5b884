"""Install the MSDM Studio ReaScripts into REAPER.

    python installers/reaper/install.py [--reaper-dir DIR] [--msdm PATH] [--port 9010] [--secret-file FILE]
                                        [--no-actions]

Copies the scripts to <REAPER resource folder>/Scripts/MSDM Studio/, writes
msdm_config.lua there (the full path of the `msdm` program, since REAPER does
not see the PATH of the shell or virtual environment it was installed into,
and the path of the secret file `msdm serve` makes and requests are signed
with: REAPER started from a desktop menu may not see this shell's
XDG_CONFIG_HOME or MSDM_CONFIG_DIR either; the secret itself is not copied),
and registers the two actions in reaper-kb.ini so they appear in the Actions
list. Run it while REAPER is closed: REAPER reads reaper-kb.ini at start and
rewrites it while running (e.g. when a shortcut changes), which would drop lines
added meanwhile (reaper-kb.ini in mespotine's "Reaper Internals" Filetype
Descriptions). Otherwise load them once by hand: Actions > Show action list >
New action > Load ReaScript. Running it again updates the scripts and keeps one
entry per action.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))  # the project, for osc_bridge.auth (standard library only)

from osc_bridge.auth import secret_path  # noqa: E402
SCRIPTS = ("msdm_osc.lua", "msdm_reaper.lua", "MSDM separate selected item.lua",
           "MSDM generate accompaniment for selected items.lua", "MSDM regenerate selected items as takes.lua")
ACTIONS = {  # command id -> (script, name in the action list)
    "RS_MSDM_SEPARATE": ("MSDM separate selected item.lua", "MSDM: separate selected item"),
    "RS_MSDM_ACCOMPANY": ("MSDM generate accompaniment for selected items.lua",
                          "MSDM: generate accompaniment for selected items"),
    "RS_MSDM_REGENERATE": ("MSDM regenerate selected items as takes.lua", "MSDM: regenerate selected items as takes"),
}
FOLDER = "MSDM Studio"


def default_reaper_dir() -> Path:
    if sys.platform == "win32":
        return Path(os.environ.get("APPDATA", Path.home())) / "REAPER"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "REAPER"
    return Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / "REAPER"


def find_msdm() -> list[str]:
    """The command that runs msdm: the script next to this Python, else on PATH,
    else this Python running the CLI."""
    beside = Path(sys.executable).parent / ("msdm.exe" if sys.platform == "win32" else "msdm")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("msdm")
    if found:
        return [found]
    return [sys.executable, "-c", "import sys; from engine.cli import main; sys.exit(main(sys.argv[1:]))"]


def lua_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def config_lua(msdm: list[str], host: str, port: int, secret_file: Path | None = None) -> str:
    words = ", ".join(lua_string(w) for w in msdm)
    return ("-- Written by installers/reaper/install.py; edit freely (see docs/daw.md).\n"
            "return {\n"
            f"  msdm = {{ {words} }},\n"
            f"  host = {lua_string(host)},\n"
            f"  port = {int(port)},\n"
            f"  secret_file = {lua_string(str(secret_file or secret_path()))},  -- read by msdm osc-send\n"
            "  -- output_root = \"/path/inside/the/server's/--output-root\",\n"
            "  options = {},   -- e.g. { steps = 50 } for quicker, rougher results\n"
            "  auto_start = true,\n"
            "}\n")


def register_actions(keymap: Path) -> None:
    lines = keymap.read_text(encoding="utf-8", errors="replace").splitlines() if keymap.exists() else []
    lines = [line for line in lines if not any(f" {command} " in line for command in ACTIONS)]
    for command, (script, name) in ACTIONS.items():
        # SCR <flags> <section> <command id> "<description>" "<script>", as documented for
        # reaper-kb.ini in mespotine's "Reaper Internals" (Filetype Descriptions): flags 4 =
        # the default (ask when already running), section 0 = main, and a description that
        # starts with "Custom: " is listed as "Script: ..." in the action list.
        lines.append(f'SCR 4 0 {command} "Custom: {name}" "{FOLDER}/{script}"')
    keymap.write_text("\n".join(lines) + "\n", encoding="utf-8")


def install(reaper_dir: Path, msdm: list[str], host: str = "127.0.0.1", port: int = 9010,
            actions: bool = True, secret_file: Path | None = None) -> Path:
    target = reaper_dir / "Scripts" / FOLDER
    target.mkdir(parents=True, exist_ok=True)
    for name in SCRIPTS:
        shutil.copyfile(HERE / name, target / name)
    (target / "msdm_config.lua").write_text(config_lua(msdm, host, port, secret_file), encoding="utf-8")
    if actions:
        register_actions(reaper_dir / "reaper-kb.ini")
    return target


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Install the MSDM Studio ReaScripts into REAPER.")
    parser.add_argument("--reaper-dir", type=Path, default=default_reaper_dir(),
                        help="REAPER's resource folder (Options > Show REAPER resource path); default: %(default)s")
    parser.add_argument("--msdm", help="the msdm program (default: found next to this Python or on PATH)")
    parser.add_argument("--host", default="127.0.0.1", help="where msdm serve listens (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=9010, help="msdm serve's port (default 9010)")
    parser.add_argument("--secret-file", type=Path,
                        help=f"the secret file msdm serve signs requests with (default: {secret_path()})")
    parser.add_argument("--no-actions", action="store_true", help="copy only; do not touch reaper-kb.ini")
    args = parser.parse_args(argv)
    if not args.reaper_dir.is_dir():
        print(f"install: no REAPER resource folder at {args.reaper_dir}; start REAPER once, or pass --reaper-dir "
              f"(REAPER: Options > Show REAPER resource path in explorer/finder)", file=sys.stderr)
        return 2
    target = install(args.reaper_dir, [args.msdm] if args.msdm else find_msdm(), args.host, args.port,
                     not args.no_actions, args.secret_file)
    print(f"installed the MSDM scripts in {target}")
    if not args.no_actions:
        print("registered: 'MSDM: separate selected item', 'MSDM: generate accompaniment for selected items' "
              "(restart REAPER if it was running)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
