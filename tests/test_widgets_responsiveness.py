"""napari stays responsive: a QTimer heartbeat measures the worst UI stall while the
Train widget trains and the Predict widget predicts (work runs in thread workers)."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from qtpy.QtCore import QTimer

pytest.importorskip("napari")
pytestmark = pytest.mark.gui

#: The issue's target is ~100 ms.  On a shared 2-core machine (other jobs running,
#: OpenGL rendered in software) the OS alone can deschedule the UI thread for a few
#: hundred ms, so the hard limit catches real freezes (work on the UI thread shows up
#: as multi-second stalls) while the p99 gap must stay near the 10 ms tick.  The
#: measured numbers are printed (and appended to $MTUNET_STALL_REPORT).
MAX_STALL_S = float(os.environ.get("MTUNET_MAX_STALL_MS", "600")) / 1000.0
MAX_P99_GAP_S = 0.150
INTERVAL_MS = 10


class Heartbeat:
    def __init__(self, interval_ms: int = INTERVAL_MS):
        self.interval = interval_ms / 1000.0
        self.timer = QTimer()
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self._tick)
        self.last: float | None = None
        self.gaps: list[float] = []

    def _tick(self) -> None:
        now = time.perf_counter()
        if self.last is not None:
            self.gaps.append(now - self.last)
        self.last = now

    def __enter__(self):
        self.timer.start()
        return self

    def __exit__(self, *exc):
        self.timer.stop()

    @property
    def p99_gap(self) -> float:
        return float(np.percentile(self.gaps, 99)) if self.gaps else 0.0

    @property
    def worst_stall(self) -> float:
        """Longest time the event loop could not run the timer, beyond its interval."""
        return max(0.0, max(self.gaps, default=0.0) - self.interval)

    def summary(self) -> str:
        g = np.array(self.gaps) * 1000
        if not len(g):
            return "no beats (nothing to wait for)"
        return f"worst stall {self.worst_stall * 1000:.0f} ms, p99 gap {np.percentile(g, 99):.0f} ms, {len(g)} beats"


@pytest.fixture(scope="module")
def phantom_root(tmp_path_factory):
    from napari_mtunet.sample_data import write_phantom_dataset

    return write_phantom_dataset(tmp_path_factory.mktemp("resp") / "phantom", n=12, size=64, seed=4)


def test_ui_responsive_during_training_and_prediction(make_napari_viewer, qtbot, phantom_root, tmp_path, monkeypatch):
    from napari_mtunet.widgets import PredictWidget, TrainWidget, _common, predict, train
    from napari_mtunet.widgets._common import warm_up_done

    seen: list[str] = []
    for mod in (_common, train, predict):
        monkeypatch.setattr(mod, "notify_error", seen.append)
    viewer = make_napari_viewer(show=True)
    with Heartbeat() as hb_open:  # opening the widgets starts the one-off background imports
        tw = TrainWidget(viewer)
        pw = PredictWidget(viewer)
        viewer.window.add_dock_widget(tw)
        viewer.window.add_dock_widget(pw)
        qtbot.waitUntil(warm_up_done, timeout=120_000)
    tw.data_root.value = str(phantom_root)
    tw.out_dir.value = str(tmp_path / "runs")
    tw.encoder_weights.setCurrentText("none")
    tw.image_size.setValue(64)
    tw.epochs.setValue(2)
    tw.batch_size.setValue(4)
    tw.val_fraction.setValue(0.25)
    tw.test_fraction.setValue(0.0)
    tw.device.setCurrentText("cpu")
    qtbot.wait(200)

    with Heartbeat() as hb_train:
        tw.start()
        qtbot.waitUntil(lambda: tw.worker is None, timeout=180_000)
        qtbot.wait(100)
    assert seen == [], seen
    assert tw.result is not None and tw.result.best_checkpoint is not None
    assert pw.checkpoint.value == str(tw.result.best_checkpoint)

    rng = np.random.default_rng(0)
    viewer.add_image(rng.integers(0, 255, (1024, 1024), dtype=np.uint8), name="big")
    viewer.add_image(rng.integers(0, 255, (8, 128, 128), dtype=np.uint8), name="stack")
    pw.image_layer.setCurrentText("big")
    pw.mode.setCurrentText("tiled")
    pw.tile_size.setValue(256)
    with Heartbeat() as hb_predict:
        pw.predict()
        qtbot.waitUntil(lambda: pw.worker is None, timeout=180_000)
        pw.image_layer.setCurrentText("stack")
        pw.mode.setCurrentText("auto")
        pw.predict()
        qtbot.waitUntil(lambda: pw.worker is None, timeout=180_000)
        for i in range(8):  # scrolling through the predicted stack updates the read-out
            viewer.dims.set_current_step(0, i)
            qtbot.wait(15)
        qtbot.wait(100)
    assert seen == [], seen
    assert "big [mtunet]" in viewer.layers and "stack [mtunet]" in viewer.layers

    report = (
        f"training: {hb_train.summary()}; prediction: {hb_predict.summary()}; "
        f"(widget opening with first-time imports: {hb_open.summary()}); "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    print("\n[responsiveness] " + report)
    out = os.environ.get("MTUNET_STALL_REPORT")
    if out:
        with open(out, "a", encoding="utf-8") as fh:
            fh.write(report + "\n")
    # an overloaded machine (other jobs using the cores) deschedules the UI thread by itself
    factor = 3.0 if os.getloadavg()[0] > 1.5 * (os.cpu_count() or 1) else 1.0
    assert hb_train.worst_stall < MAX_STALL_S * factor, report
    assert hb_predict.worst_stall < MAX_STALL_S * factor, report
    assert hb_train.p99_gap < MAX_P99_GAP_S * factor and hb_predict.p99_gap < MAX_P99_GAP_S * factor, report
