"""The npe2 manifest validates with imports and is discovered by napari."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

MANIFEST = Path(__file__).resolve().parents[1] / "src" / "napari_mtunet" / "napari.yaml"


def test_npe2_validate_with_imports():
    npe2 = shutil.which("npe2")
    cmd = [npe2] if npe2 else [sys.executable, "-m", "npe2"]
    res = subprocess.run([*cmd, "validate", "--imports", str(MANIFEST)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "valid" in (res.stdout + res.stderr).lower()


def test_manifest_contributions_are_discovered():
    pytest.importorskip("npe2")
    from npe2 import PluginManager

    pm = PluginManager.instance()
    pm.discover()
    mf = pm.get_manifest("napari-mtunet")
    widgets = {w.display_name for w in mf.contributions.widgets}
    assert widgets == {"Dataset", "Train", "Predict", "Annotate & fine-tune"}
    assert {s.key for s in mf.contributions.sample_data} == {"phantom", "phantom_single"}
    patterns = {tuple(r.filename_patterns) for r in mf.contributions.readers}
    assert ("*.safetensors",) in patterns
    assert any(r.accepts_directories for r in mf.contributions.readers)
    assert mf.contributions.writers[0].layer_types == ["image?", "labels"]


@pytest.mark.gui
def test_plugin_appears_in_plugins_menu(make_napari_viewer):
    pytest.importorskip("napari")
    viewer = make_napari_viewer()
    menu = viewer.window.plugins_menu
    texts = []
    for action in menu.actions():
        sub = action.menu()
        if sub is not None:
            texts += [a.text() for a in sub.actions()]
        texts.append(action.text())
    joined = " | ".join(texts).replace("&&", "&")  # Qt escapes "&" in menu texts
    assert "MTUNet classify and segment" in joined
    assert "Predict" in joined and "Annotate & fine-tune" in joined, joined
