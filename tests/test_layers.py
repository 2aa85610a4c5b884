"""The layering written in pyproject.toml ([tool.importlinter]) holds: no module
imports a layer above its own, front ends on one layer do not import each other,
and no package's modules import each other in a cycle."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_lint_imports_passes():
    command = shutil.which("lint-imports") or pytest.fail("lint-imports is missing: pip install -e '.[test]'")
    result = subprocess.run([command, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_lint_imports_fails_on_an_upward_import(tmp_path):
    """The contract bites: a copy of the tree where the model core imports the CLI is refused."""
    tree = tmp_path / "tree"
    for package in ("engine", "osc_bridge", "desktop", "training"):
        shutil.copytree(ROOT / package, tree / package, ignore=shutil.ignore_patterns("models", "__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
    with open(tree / "engine" / "core" / "tasks.py", "a") as handle:
        handle.write("\nfrom engine.cli import main  # noqa: E402\n")
    env = {"PYTHONPATH": str(tree), "PATH": str(Path(sys.executable).parent)}
    result = subprocess.run([shutil.which("lint-imports"), "--no-cache"], cwd=tree, capture_output=True, text=True,
                            timeout=120, env=env)
    assert result.returncode != 0, result.stdout
    assert "engine.core.tasks -> engine.cli" in result.stdout


def test_no_module_is_over_600_lines():
    long = []
    for package in ("engine", "osc_bridge", "desktop", "training"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if len(path.read_text(encoding="utf-8").splitlines()) > 600:
                long.append(path.relative_to(ROOT).as_posix())
    assert not long, f"split these by concern: {long}"
