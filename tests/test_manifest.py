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
    assert widgets == {"Dataset", "Train", "Predict", "Annotate & fine-tune", "Segment object"}
    assert {s.key for s in mf.contributions.sample_data} == {"phantom", "phantom_single"}
    # one reader, for checkpoints; no folder reader and no writer (see napari.yaml and test_napari_citizen.py)
    assert [(r.command, r.filename_patterns, r.accepts_directories) for r in mf.contributions.readers] == [
        ("napari-mtunet.get_checkpoint_reader", ["*.safetensors"], False)
    ]
    assert not mf.contributions.writers
    menus = {menu: [item.command for item in items] for menu, items in mf.contributions.menus.items()}
    assert menus == {
        "napari/layers/segment": ["napari-mtunet.predict_widget", "napari-mtunet.segment_widget",
                                  "napari-mtunet.train_widget"],
        "napari/layers/classify": ["napari-mtunet.predict_widget", "napari-mtunet.train_widget"],
        "napari/layers/annotate": ["napari-mtunet.annotate_widget", "napari-mtunet.segment_widget"],
        "napari/file/io_utilities": ["napari-mtunet.dataset_widget"],
    }
    # every command is reachable from napari: a widget, the reader or a sample
    reachable = {w.command for w in mf.contributions.widgets} | {r.command for r in mf.contributions.readers}
    reachable |= {s.command for s in mf.contributions.sample_data}
    assert {c.id for c in mf.contributions.commands} == reachable


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
    assert "Predict" in joined and "Annotate & fine-tune" in joined and "Segment object" in joined, joined


@pytest.mark.gui
@pytest.mark.parametrize(
    "menu, path, widget",
    [
        ("layers_menu", ("Segment", "Predict (MTUNet classify and segment)"), "PredictWidget"),
        ("layers_menu", ("Segment", "Train (MTUNet classify and segment)"), "TrainWidget"),
        ("layers_menu", ("Classify", "Predict (MTUNet classify and segment)"), "PredictWidget"),
        ("layers_menu", ("Annotate", "Annotate & fine-tune (MTUNet classify and segment)"), "AnnotateWidget"),
        ("layers_menu", ("Segment", "Segment object (MTUNet classify and segment)"), "SegmentWidget"),
        ("file_menu", ("IO Utilities", "Dataset (MTUNet classify and segment)"), "DatasetWidget"),
    ],
)
def test_layers_and_file_menus_dock_the_widgets(make_napari_viewer, menu, path, widget):
    """Layers > Segment / Classify / Annotate and File > IO Utilities hold our widgets; choosing one docks it."""
    pytest.importorskip("napari")
    from qtpy.QtWidgets import QWidget

    from napari_mtunet import widgets

    viewer = make_napari_viewer()
    current = getattr(viewer.window, menu)
    for i, text in enumerate(path):
        items = {a.text().replace("&&", "&"): a for a in current.actions() if a.text()}
        assert text in items, f"{menu} > {' > '.join(path[:i])}: no {text!r} in {sorted(items)}"
        action = items[text]
        current = action.menu()
    action.trigger()
    cls = getattr(widgets, widget)
    docked = [w for w in viewer.window._qt_window.findChildren(QWidget) if isinstance(w, cls)]
    assert len(docked) == 1, f"{' > '.join(path)} did not dock the {widget}"
