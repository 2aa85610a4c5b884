#!/usr/bin/env bash
# Put MSDM Studio in the desktop menu (per user, no root): the `msdm` command,
# a menu entry and its icon. Run from a checkout:  bash installers/linux/install.sh
#   --prefix DIR   where the entry and icon go (default ~/.local/share)
#   --python PY    the Python to install into (default python3; a venv's python works)
#   --no-pip       only the menu entry (msdm is already installed)
#   --uninstall    remove the entry and icon (leaves the Python package)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
prefix="${XDG_DATA_HOME:-$HOME/.local/share}"
python=python3
pip=1
uninstall=0
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) prefix="$2"; shift 2 ;;
        --python) python="$2"; shift 2 ;;
        --no-pip) pip=0; shift ;;
        --uninstall) uninstall=1; shift ;;
        -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
apps="$prefix/applications"
icons="$prefix/icons/hicolor/scalable/apps"
if [ "$uninstall" = 1 ]; then
    rm -f "$apps/msdm-studio.desktop" "$icons/msdm-studio.svg"
    command -v update-desktop-database >/dev/null && update-desktop-database -q "$apps" || true
    echo "MSDM Studio removed from the menu."
    exit 0
fi
if [ "$pip" = 1 ]; then
    "$python" -m pip install --quiet -e "$repo[app]"
fi
# The entry runs the msdm that this Python installed, by absolute path, so it
# works from a menu whose PATH lacks ~/.local/bin or the venv.
msdm="$("$python" -c 'import shutil, sys, os; p = os.path.join(os.path.dirname(sys.executable), "msdm"); print(p if os.path.exists(p) else (shutil.which("msdm") or ""))')"
if [ -z "$msdm" ]; then
    echo "install.sh: the msdm command was not found for $python; install with: $python -m pip install -e '$repo[app]'" >&2
    exit 1
fi
mkdir -p "$apps" "$icons"
sed "s|^Exec=msdm |Exec=\"$msdm\" |" "$here/msdm-studio.desktop" > "$apps/msdm-studio.desktop.tmp"
mv "$apps/msdm-studio.desktop.tmp" "$apps/msdm-studio.desktop"
cp "$here/msdm-studio.svg" "$icons/msdm-studio.svg"
command -v update-desktop-database >/dev/null && update-desktop-database -q "$apps" || true
command -v gtk-update-icon-cache >/dev/null && gtk-update-icon-cache -q -t "$prefix/icons/hicolor" 2>/dev/null || true
echo "MSDM Studio is in the menu (Audio / Music): $apps/msdm-studio.desktop runs $msdm app"
