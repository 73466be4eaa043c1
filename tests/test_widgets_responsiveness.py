"""napari stays responsive while the widgets work (issue 21 point 8).

The numbers (GUI-thread gaps, target 100 ms, idle and under two busy processes) come from
``benchmarks/bench_napari_responsiveness.py`` in a shown window; see docs/benchmarks.md.  A timed unit
test on a shared 2-core machine (other jobs running, OpenGL in software) measures the machine as much as
the code, so here:

1. the *cause* of the stalls, checked exactly: through a whole session (train, predict plain / tiled /
   Grad-CAM / a stack, add samples, fine-tune, a folder) napari's process never imports torch -- every job
   runs in the compute process, so no thread of napari's process holds the GIL for an import, a model
   build or a dataset load (py-spy showed those freezing the window for 0.1-1.9 s);
2. a generous sanity check of the stalls themselves (a QTimer heartbeat): work done on the GUI thread
   shows up as multi-second stalls.  ``MTUNET_STRICT_TIMING=1`` applies the real target (100 ms,
   ``MTUNET_MAX_STALL_MS`` to change it) for a quiet machine.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import pytest
from qtpy.QtCore import QTimer

pytest.importorskip("napari")
pytestmark = pytest.mark.gui

STRICT = os.environ.get("MTUNET_STRICT_TIMING", "") not in ("", "0")
MAX_STALL_S = float(os.environ.get("MTUNET_MAX_STALL_MS", "100" if STRICT else "2500")) / 1000.0
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
    def worst_stall(self) -> float:
        """Longest time the event loop could not run the timer, beyond its interval."""
        return max(0.0, max(self.gaps, default=0.0) - self.interval)

    def summary(self) -> str:
        g = np.array(self.gaps) * 1000
        if not len(g):
            return "no beats"
        return f"worst stall {self.worst_stall * 1000:.0f} ms, p99 gap {np.percentile(g, 99):.0f} ms, {len(g)} beats"


@pytest.fixture(scope="module")
def phantom_root(tmp_path_factory):
    from napari_mtunet.sample_data import write_phantom_dataset

    return write_phantom_dataset(tmp_path_factory.mktemp("resp") / "phantom", n=12, size=64, seed=4)


@pytest.mark.slow
def test_napari_never_imports_torch_in_a_whole_session(request):
    """Run in a fresh Python process: in this one, other tests have imported torch already."""
    import subprocess

    if os.environ.get("MTUNET_FRESH_PROCESS"):
        pytest.skip("the child process runs the body")
    env = dict(os.environ, MTUNET_FRESH_PROCESS="1", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "ignore::DeprecationWarning",
         f"{__file__}::test_fresh_process_whole_session"],
        capture_output=True, text=True, env=env, timeout=900, cwd=str(request.config.rootpath),
    )
    import re

    assert proc.returncode == 0 and re.search(r"\b1 passed", proc.stdout), proc.stdout[-4000:] + proc.stderr[-2000:]


@pytest.mark.skipif(not os.environ.get("MTUNET_FRESH_PROCESS"), reason="run by the test above in a fresh process")
def test_fresh_process_whole_session(make_napari_viewer, qtbot, phantom_root, tmp_path, errors):
    from PIL import Image

    from napari_mtunet.sample_data import make_phantom
    from napari_mtunet.widgets import AnnotateWidget, PredictWidget, TrainWidget
    from napari_mtunet.widgets._warmup import warm_up_done

    assert "torch" not in sys.modules
    viewer = make_napari_viewer()
    tw, pw, aw = TrainWidget(viewer), PredictWidget(viewer), AnnotateWidget(viewer)
    qtbot.waitUntil(warm_up_done, timeout=300_000)

    def step(name, start, widget, timeout=180_000):
        start()
        qtbot.waitUntil(lambda: not widget.busy, timeout=timeout)
        assert errors == [], (name, errors)
        assert "torch" not in sys.modules and "torchvision" not in sys.modules, f"{name} imported torch in napari"

    tw.data_root.value = str(phantom_root)
    tw.out_dir.value = str(tmp_path / "runs")
    tw.encoder_weights.setCurrentText("none")
    tw.image_size.setValue(64)
    tw.epochs.setValue(1)
    tw.batch_size.setValue(4)
    tw.test_fraction.setValue(0.25)  # the held-out evaluation too
    tw.device.setCurrentText("cpu")
    step("train", tw.start, tw)
    ckpt = tw.best_checkpoint
    assert ckpt and pw.checkpoint.value == str(ckpt)
    viewer.add_image(np.random.default_rng(0).integers(0, 255, (300, 300), dtype=np.uint8), name="scan")
    pw.image_layer.setCurrentText("scan")
    step("predict", pw.predict, pw)
    pw.gradcam.setChecked(True)
    step("predict with Grad-CAM", pw.predict, pw)
    pw.gradcam.setChecked(False)
    pw.mode.setCurrentText("tiled")
    pw.tile_size.setValue(64)
    step("tiled prediction", pw.predict, pw)
    ph = make_phantom(n=4, size=64, seed=1)
    viewer.add_image(ph.images, name="stack")
    pw.image_layer.setCurrentText("stack")
    pw.mode.setCurrentText("auto")
    step("stack prediction", pw.predict, pw)
    aw.labels_layer.setCurrentText(next(lyr.name for lyr in viewer.layers if lyr.name.startswith("stack [")))
    aw.dataset_root.value = str(tmp_path / "corrections")
    aw.all_slices.setChecked(True)
    aw.confirm_class()
    step("add to training set", aw.add_to_training_set, aw)
    aw.device.setCurrentText("cpu")
    step("fine-tune", aw.finetune_or_stop, aw)
    assert aw.child_checkpoint
    (tmp_path / "in").mkdir()
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(tmp_path / "in" / "x.png")
    pw.folder_in.value = str(tmp_path / "in")
    pw.folder_out.value = str(tmp_path / "out")
    step("folder prediction", pw.predict_folder, pw)


@pytest.mark.slow
def test_ui_stays_responsive_while_training_and_predicting(make_napari_viewer, qtbot, phantom_root, tmp_path, errors):
    from napari_mtunet.widgets import PredictWidget, TrainWidget
    from napari_mtunet.widgets._warmup import warm_up_done

    viewer = make_napari_viewer(show=True)
    with Heartbeat() as hb_open:  # opening the widgets starts the one-off background imports
        tw = TrainWidget(viewer)
        pw = PredictWidget(viewer)
        viewer.window.add_dock_widget(tw)
        viewer.window.add_dock_widget(pw)
        qtbot.waitUntil(warm_up_done, timeout=300_000)
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
        qtbot.waitUntil(lambda: not tw.busy, timeout=180_000)
        qtbot.wait(100)
    assert errors == [], errors
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
        qtbot.waitUntil(lambda: not pw.busy, timeout=180_000)
        pw.image_layer.setCurrentText("stack")
        pw.mode.setCurrentText("auto")
        pw.predict()
        qtbot.waitUntil(lambda: not pw.busy, timeout=180_000)
        for i in range(8):  # scrolling through the predicted stack updates the read-out
            viewer.dims.set_current_step(0, i)
            qtbot.wait(15)
        qtbot.wait(100)
    assert errors == [], errors
    names = [lyr.name for lyr in viewer.layers]
    assert any(n.startswith("big [") for n in names) and any(n.startswith("stack [") for n in names)

    report = (
        f"training: {hb_train.summary()}; prediction: {hb_predict.summary()}; "
        f"(widget opening with first-time imports: {hb_open.summary()}); "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; limit {MAX_STALL_S * 1000:.0f} ms"
        + ("" if STRICT else " (sanity check; MTUNET_STRICT_TIMING=1 for the 100 ms target)")
    )
    print("\n[responsiveness] " + report)
    assert hb_train.worst_stall < MAX_STALL_S, report
    assert hb_predict.worst_stall < MAX_STALL_S, report
