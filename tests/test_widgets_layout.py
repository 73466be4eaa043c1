"""What a user watches stays on screen (issue 21 point 9).

In a 1600 x 1000 napari window, with one, two or all four widgets docked, the status line, the progress
bars, the class read-out and the training plot are fully visible without scrolling (they sit below the
scrolling settings); docks that share napari's side share its height, so no dock is squeezed to a sliver.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytestmark = pytest.mark.gui

PLUGIN = "napari-mtunet"
WATCHED = {
    "Dataset": ("status", "load_button", "preview_button"),
    "Train": ("start_button", "epoch_progress", "batch_progress", "status", "plot"),
    "Predict": ("predict_button", "stop_button", "progress", "status", "result_box"),
    "Annotate & fine-tune": ("progress", "metrics_label", "status"),
}


def _fully_visible(widget) -> bool:
    """Shown, not clipped by a scroll area or the dock, and inside the window."""
    if not widget.isVisible():
        return False
    if widget.visibleRegion().boundingRect().size() != widget.size():
        return False
    win = widget.window()
    from qtpy.QtCore import QPoint, QRect

    return win.rect().contains(QRect(widget.mapTo(win, QPoint(0, 0)), widget.size()))


@pytest.mark.parametrize("names", [("Train",), ("Predict", "Annotate & fine-tune"), ("Train", "Predict"),
                                   ("Dataset", "Train"), ("Dataset", "Train", "Predict", "Annotate & fine-tune")])
def test_what_a_user_watches_stays_visible(make_napari_viewer, qtbot, names):
    viewer = make_napari_viewer(show=True)
    win = viewer.window._qt_window
    win.resize(1600, 1000)
    viewer.add_image(np.zeros((64, 64), np.uint8), name="img")
    widgets = {}
    for name in names:
        _, widgets[name] = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    win.resize(1600, 1000)
    qtbot.wait(400)
    assert win.height() <= 1000
    for name, w in widgets.items():
        # as while a job runs: the progress bars are shown and the status says something long
        for attr in ("progress",):
            if hasattr(w, attr):
                getattr(w, attr).setVisible(True)
        w.status.setText("epoch 2/4, batch 5/11: loss 1.2345; about 3:12 left on the current run of this dataset")
        if name == "Predict":  # a read-out with three classes
            from napari_mtunet.layer_meta import SliceInfo

            w.readout.show_result("benign (108) [busi-run/best]", None, SliceInfo(
                predicted="benign", probabilities={"benign": 0.7, "malignant": 0.2, "normal": 0.1},
                lesion_fraction=0.05, corrected="malignant"), 0.5)
        qtbot.wait(100)
    qtbot.wait(200)
    for name, w in widgets.items():
        hidden = [attr for attr in WATCHED[name] if not _fully_visible(getattr(w, attr))]
        assert hidden == [], f"{name} with {names}: {hidden} not fully visible (dock {w.parentWidget().height()} px)"
        # the settings keep at least a few rows (and scroll)
        assert w.scroll.height() >= 70, (name, w.scroll.height())
    if len(widgets) == 2:  # shared fairly: neither dock is squeezed to its minimum
        heights = [w.parentWidget().height() for w in widgets.values()]
        assert min(heights) >= 0.3 * sum(heights), heights
        for w in widgets.values():  # a few rows of settings each, even with a three-class read-out shown
            assert w.scroll.height() >= 100, (type(w).__name__, w.scroll.height())
    if len(widgets) == 4:
        assert all(w.parentWidget().height() >= 150 for w in widgets.values()), \
            {n: w.parentWidget().height() for n, w in widgets.items()}
