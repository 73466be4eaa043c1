"""ruff, with the rules in pyproject.toml ([tool.ruff]; the same as the pre-commit hook), finds nothing.

The rules are pyflakes and pycodestyle's errors: unused or undefined names, imports not at the top,
syntax problems -- mistakes, not style.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _ruff() -> list[str]:
    try:
        import ruff  # noqa: F401
    except ImportError:
        exe = shutil.which("ruff")
        if exe is None:
            pytest.skip("ruff is not installed (it comes with the test extra)")
        return [exe]
    return [sys.executable, "-m", "ruff"]


def test_ruff_finds_nothing():
    proc = subprocess.run([*_ruff(), "check", "--no-cache", "--output-format", "concise", "src", "tests", "benchmarks"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_pre_commit_runs_the_same_ruff_rules():
    import yaml

    cfg = yaml.safe_load((REPO / ".pre-commit-config.yaml").read_text())
    hooks = {h["id"] for repo in cfg["repos"] for h in repo["hooks"]}
    assert "ruff" in hooks or "ruff-check" in hooks
    # no rule selection of its own: the hook reads [tool.ruff] in pyproject.toml
    for repo in cfg["repos"]:
        for h in repo["hooks"]:
            assert "--select" not in " ".join(h.get("args", [])), h
