"""The widgets in a real napari window (issue 11: points 3, 5 and 9).

- docking a widget imports no torch on napari's GUI thread and does not wait for the background
  warm-up (a subprocess whose torch import is made slow on purpose);
- closing napari while the warm-up still runs exits cleanly (it used to abort: SIGABRT);
- two docked widgets fit a 1600 x 1000 window: the widgets scroll, no control overlaps another;
- long paths, hashes and layer names wrap instead of widening the dock;
- the menu paths the README and the user guide name are the ones napari shows.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")
pytestmark = pytest.mark.gui

REPO = Path(__file__).resolve().parents[1]
PLUGIN = "napari-mtunet"
WIDGETS = ["Dataset", "Train", "Predict", "Annotate & fine-tune"]

#: Installed in the subprocesses: executing torch's module takes SLOW_IMPORT_S longer, in whichever thread
#: imports it, and every attempt of napari's GUI (main) thread to import torch is recorded.  The delay is in
#: the loader (under torch's own module lock), not in the finder (which runs under Python's global import
#: lock and would hold up every import): a GUI thread that needs torch while the warm-up imports it waits.
SLOW_TORCH = """
import sys, threading, time, importlib.abc
GUI_TORCH_IMPORTS = []
class _SlowLoader(importlib.abc.Loader):
    def __init__(self, real):
        self.real = real
    def create_module(self, spec):
        return self.real.create_module(spec)
    def exec_module(self, module):
        time.sleep({slow})
        self.real.exec_module(module)
class _SlowTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "torch" or name.startswith("torch."):
            if threading.current_thread() is threading.main_thread():
                GUI_TORCH_IMPORTS.append(name)
        if name != "torch":
            return None
        for finder in sys.meta_path:
            if finder is not self and hasattr(finder, "find_spec"):
                spec = finder.find_spec(name, path, target)
                if spec is not None:
                    spec.loader = _SlowLoader(spec.loader)
                    return spec
        return None
sys.meta_path.insert(0, _SlowTorch())
"""
SLOW_IMPORT_S = 4.0


def _run(code: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=str(REPO))


def _last_json(proc: subprocess.CompletedProcess) -> dict:
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert lines, f"no result (rc {proc.returncode})\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    return json.loads(lines[-1])


@pytest.mark.skipif(not os.environ.get("DISPLAY"), reason="needs a display (run under Xvfb)")
def test_docking_imports_no_torch_on_the_gui_thread():
    code = SLOW_TORCH.format(slow=SLOW_IMPORT_S) + textwrap.dedent(f"""
        import json
        import napari
        from qtpy.QtWidgets import QApplication
        viewer = napari.Viewer(show=True)
        app = QApplication.instance()
        seconds = {{}}
        for name in {WIDGETS!r}:
            t0 = time.perf_counter()
            viewer.window.add_plugin_dock_widget("{PLUGIN}", name)
            seconds[name] = time.perf_counter() - t0
            app.processEvents()
        torch_loaded_when_docked = "torch" in sys.modules and hasattr(sys.modules["torch"], "cuda")
        from napari_mtunet.widgets._common import warm_up_done
        # the GUI keeps running while the warm-up imports torch in the background
        t0 = last = time.perf_counter()
        worst = 0.0
        while not warm_up_done() and time.perf_counter() - t0 < 200:
            app.processEvents()
            now = time.perf_counter()
            worst, last = max(worst, now - last), now
            time.sleep(0.005)
        print(json.dumps({{"seconds": seconds, "gui_torch_imports": GUI_TORCH_IMPORTS,
                          "torch_loaded_when_docked": torch_loaded_when_docked, "warm": warm_up_done(),
                          "worst_gap_s": worst, "torch_now": "torch" in sys.modules}}))
        viewer.close()
    """)
    res = _last_json(_run(code))
    assert res["gui_torch_imports"] == [], res
    assert not res["torch_loaded_when_docked"], res
    # a GUI thread that needed torch would have waited SLOW_IMPORT_S for the warm-up's import
    assert all(s < SLOW_IMPORT_S - 1.0 for s in res["seconds"].values()), res
    assert res["warm"] and res["torch_now"], res
    assert res["worst_gap_s"] < SLOW_IMPORT_S - 1.0, res


@pytest.mark.skipif(not os.environ.get("DISPLAY"), reason="needs a display (run under Xvfb)")
@pytest.mark.parametrize("delay_ms", [100, 1500])
def test_closing_napari_while_the_warm_up_runs_exits_cleanly(delay_ms):
    code = SLOW_TORCH.format(slow=SLOW_IMPORT_S) + textwrap.dedent(f"""
        import napari
        from qtpy.QtCore import QTimer
        viewer = napari.Viewer(show=True)
        for name in {WIDGETS!r}:
            viewer.window.add_plugin_dock_widget("{PLUGIN}", name)
        from napari_mtunet.widgets import _common
        state = {{}}
        def close():
            state["warm_up_running"] = _common._WARM["thread"] is not None and not _common.warm_up_done()
            viewer.close()
        QTimer.singleShot({delay_ms}, close)
        napari.run()
        print("closed cleanly; warm-up was running:", state.get("warm_up_running"), flush=True)
    """)
    proc = _run(code)
    assert proc.returncode == 0, f"rc {proc.returncode}\n{proc.stderr[-3000:]}"
    assert "closed cleanly; warm-up was running: True" in proc.stdout, proc.stdout + proc.stderr[-2000:]
    assert "QThread: Destroyed while thread is still running" not in proc.stderr


# --------------------------------------------------------------------------- layout


def _controls(widget):
    from qtpy.QtWidgets import QAbstractButton, QAbstractSpinBox, QComboBox, QLabel, QLineEdit, QProgressBar, QWidget

    kinds = (QAbstractButton, QAbstractSpinBox, QComboBox, QLabel, QLineEdit, QProgressBar)
    out = []
    for c in widget.body.findChildren(QWidget):
        if isinstance(c, kinds) and c.isVisible() and c.width() > 0 and c.height() > 0:
            if isinstance(c, QLabel) and not c.text():
                continue
            out.append(c)
    return out


def _overlapping(widget) -> list[str]:
    from qtpy.QtCore import QPoint, QRect

    controls = _controls(widget)
    rects = [QRect(c.mapTo(widget.body, QPoint(0, 0)), c.size()) for c in controls]
    bad = []
    for i, a in enumerate(controls):
        for j in range(i + 1, len(controls)):
            b = controls[j]
            if a.isAncestorOf(b) or b.isAncestorOf(a):
                continue
            if rects[i].intersects(rects[j]):
                name = lambda w: f"{type(w).__name__}({getattr(w, 'text', lambda: '')()!r})"  # noqa: E731
                bad.append(f"{name(a)} {rects[i].getRect()} overlaps {name(b)} {rects[j].getRect()}")
    return bad


def _settle(qtbot, ms: int = 300) -> None:
    qtbot.wait(ms)


@pytest.mark.parametrize("pair", [("Train", "Annotate & fine-tune"), ("Predict", "Dataset"), ("Train", "Predict")])
def test_two_docked_widgets_fit_a_1000_px_window(make_napari_viewer, qtbot, pair):
    viewer = make_napari_viewer(show=True)
    win = viewer.window._qt_window
    win.resize(1600, 1000)
    _settle(qtbot)
    widgets = []
    for name in pair:
        _, w = viewer.window.add_plugin_dock_widget(PLUGIN, name)
        widgets.append(w)
    win.resize(1600, 1000)
    _settle(qtbot)
    assert win.minimumSizeHint().height() <= 1000, win.minimumSizeHint()
    assert win.geometry().height() <= 1000 and win.geometry().width() <= 1600, win.geometry()
    for w in widgets:
        assert w.isVisible() and w.height() < 1000
        assert _overlapping(w) == [], _overlapping(w)
        # what does not fit scrolls; the body keeps its own size
        assert w.body.height() >= w.body.minimumSizeHint().height()
        assert w.scroll.verticalScrollBar().maximum() >= 0


def test_long_paths_hashes_and_names_do_not_widen_the_dock(make_napari_viewer, qtbot, tmp_path):
    import torch

    from napari_mtunet.checkpoint import save_checkpoint
    from napari_mtunet.config import ModelConfig, Preprocessing
    from napari_mtunet.model import build_model

    viewer = make_napari_viewer(show=True)
    win = viewer.window._qt_window
    win.resize(1600, 1000)
    viewer.add_image(np.zeros((64, 64), np.uint8), name="scan")
    _, predict = viewer.window.add_plugin_dock_widget(PLUGIN, "Predict")
    _, annotate = viewer.window.add_plugin_dock_widget(PLUGIN, "Annotate & fine-tune")
    _settle(qtbot)
    dock_width = predict.parentWidget().width()
    assert dock_width < 0.4 * win.width()

    digest = "0123456789abcdef" * 5  # an 80-character hash
    torch.manual_seed(0)
    model = build_model(ModelConfig(encoder_weights=None, num_classes=3), Preprocessing(image_size=64))
    folder = tmp_path / f"run-{digest}"
    folder.mkdir()
    ckpt = save_checkpoint(folder / f"best-{digest[:40]}.safetensors", model)
    predict.checkpoint.value = str(ckpt)
    predict.status.setText(f"parent {digest} in {folder}")
    long_name = "patient_" + digest
    viewer.add_image(np.zeros((64, 64), np.uint8), name=long_name)
    viewer.add_labels(np.zeros((64, 64), np.uint8), name=long_name + " [annotation]")
    predict.readout.show_result(long_name, None, None)
    annotate.checkpoint.value = str(ckpt)
    annotate.added_label.setText(f"Added {folder}/{digest}.png")
    annotate.status.setText(digest + digest)
    _settle(qtbot)
    assert digest in predict.model_info.plain_text()  # shown (wrapped), not cut
    for w in (predict, annotate):
        dock = w.parentWidget()
        assert dock.width() <= dock_width + 10, (type(w).__name__, dock.width(), dock_width)
        assert w.minimumSizeHint().width() < 400, (type(w).__name__, w.minimumSizeHint())
        assert w.scroll.horizontalScrollBar().maximum() == 0  # no sideways scrolling either
    assert win.geometry().width() <= 1600


# --------------------------------------------------------------------------- menu names in the docs


def _menu_paths(text: str) -> list[list[str]]:
    """Menu paths written in bold (``**Plugins → MTUNet classify and segment → Train …**``)."""
    out = []
    for m in re.finditer(r"\*\*((?:Plugins|File|Layers) → [^*]+?)\*\*", text):
        out.append([" ".join(p.split()) for p in m.group(1).split("→")])  # a line break inside is a space
    return out


def _find(menu, path: list[str]):
    norm = lambda t: t.replace("&&", "&").replace("…", "...").strip()  # noqa: E731
    for i, text in enumerate(path):
        found = next((a for a in menu.actions() if norm(a.text()) == norm(text)), None)
        if found is None:
            have = [norm(a.text()) for a in menu.actions() if a.text()]
            return f"no {text!r} under {path[:i] or 'the menu bar'}: there are {have}"
        if i < len(path) - 1:
            if found.menu() is None:
                return f"{text!r} is not a sub-menu"
            menu = found.menu()
    return None


def test_menu_names_in_the_docs_are_the_ones_napari_shows(make_napari_viewer):
    viewer = make_napari_viewer()
    bar = viewer.window._qt_window.menuBar()
    top = {a.text().replace("&", ""): a.menu() for a in bar.actions() if a.menu() is not None}
    checked = 0
    for doc in (REPO / "README.md", REPO / "docs" / "user-guide.md"):
        for path in _menu_paths(doc.read_text(encoding="utf-8")):
            assert path[0] in top, f"{doc.name}: no menu {path[0]!r}"
            problem = _find(top[path[0]], path[1:])
            assert problem is None, f"{doc.name}: {' → '.join(path)}: {problem}"
            checked += 1
    assert checked >= 4
