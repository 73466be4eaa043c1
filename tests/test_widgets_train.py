"""Train widget: a short real training driven through the public controls; Stop honoured."""

from __future__ import annotations

from pathlib import Path

import pytest
from qtpy.QtCore import Qt

pytest.importorskip("napari")
pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def phantom_root(tmp_path_factory):
    from napari_mtunet.sample_data import write_phantom_dataset

    return write_phantom_dataset(tmp_path_factory.mktemp("data") / "phantom", n=12, size=64, seed=3)




def fill_tiny(w, root, out, epochs=2):
    """Set the controls like a user would (tiny, CPU friendly)."""
    w.data_root.value = str(root)
    w.out_dir.value = str(out)
    w.encoder.setCurrentText("mobilenet_v2")
    w.encoder_weights.setCurrentText("none")
    w.task.setCurrentText("both")
    w.image_size.setValue(64)
    w.epochs.setValue(epochs)
    w.batch_size.setValue(4)
    w.val_fraction.setValue(0.25)
    w.test_fraction.setValue(0.0)
    w.patience.setValue(0)
    w.augment.setChecked(False)
    w.device.setCurrentText("cpu")


def test_train_widget_short_run_writes_checkpoint(make_napari_viewer, qtbot, phantom_root, tmp_path, errors):
    from napari_mtunet.checkpoint import read_metadata
    from napari_mtunet.widgets import PredictWidget, TrainWidget
    from napari_mtunet.widgets._common import state_for

    viewer = make_napari_viewer()
    w = TrainWidget(viewer)
    viewer.window.add_dock_widget(w)
    predict = PredictWidget(viewer)  # receives the new checkpoint
    fill_tiny(w, phantom_root, tmp_path / "runs", epochs=2)
    qtbot.mouseClick(w.start_button, Qt.MouseButton.LeftButton)
    assert w.start_button.text() == "Stop"
    qtbot.waitUntil(lambda: w.worker is None, timeout=180_000)
    assert errors == [], errors
    assert w.start_button.text() == "Start training" and w.start_button.isEnabled()
    res = w.result
    assert res is not None and res.reason == "completed" and res.epochs_run == 2
    best = Path(res.best_checkpoint)
    assert best.is_file() and best.parent.parent == tmp_path / "runs"
    meta = read_metadata(best)
    assert meta["class_names"] == ["benign", "malignant", "normal"]
    assert meta["preprocessing"]["image_size"] == 64
    kinds = [e.kind for e in w.events]
    assert kinds.count("epoch_end") == 2 and kinds[-1] == "finish" and "batch_end" in kinds
    assert w.epoch_progress.value() == 2
    assert len(w.plot.loss.series["train"]) == 2 and len(w.plot.loss.series["val"]) == 2
    assert "Dice" in w.plot.metric.series and "accuracy" in w.plot.metric.series
    assert state_for(viewer).checkpoint == str(best)
    assert predict.checkpoint.value == str(best)  # usable by Predict immediately


def test_train_stop_within_one_batch_keeps_best(make_napari_viewer, qtbot, phantom_root, tmp_path, errors):
    from napari_mtunet.widgets import TrainWidget

    viewer = make_napari_viewer()
    w = TrainWidget(viewer)
    fill_tiny(w, phantom_root, tmp_path / "runs", epochs=30)
    w.batch_size.setValue(2)
    w.start()
    # stop in the middle of epoch 2, once the first best checkpoint exists
    qtbot.waitUntil(
        lambda: any(e.kind == "checkpoint" for e in w.events)
        and any(e.kind == "batch_end" and e.epoch == 2 for e in w.events),
        timeout=180_000,
    )
    n_before = sum(e.kind == "batch_end" for e in w.events)
    qtbot.mouseClick(w.start_button, Qt.MouseButton.LeftButton)  # "Stop"
    assert not w.start_button.isEnabled()  # stopping
    qtbot.waitUntil(lambda: w.worker is None, timeout=60_000)
    assert errors == []
    n_after = sum(e.kind == "batch_end" for e in w.events)
    assert n_after - n_before <= 1, "training must stop within one batch"
    res = w.result
    assert res.reason == "cancelled" and res.epochs_run < 30
    assert res.best_checkpoint is not None and Path(res.best_checkpoint).is_file()
    assert w.start_button.text() == "Start training" and w.start_button.isEnabled()


def test_train_errors_notify_and_widget_recovers(make_napari_viewer, qtbot, tmp_path, errors):
    from napari_mtunet.widgets import TrainWidget

    viewer = make_napari_viewer()
    w = TrainWidget(viewer)
    w.start()  # no dataset
    assert errors and "dataset folder" in errors[-1]
    empty = tmp_path / "not_a_dataset"
    empty.mkdir()
    (empty / "readme.txt").write_text("nothing here")
    fill_tiny(w, empty, tmp_path / "runs")
    w.start()
    qtbot.waitUntil(lambda: w.worker is None, timeout=60_000)
    assert "layout" in errors[-1].lower() or "no usable" in errors[-1].lower()
    assert w.start_button.text() == "Start training" and w.start_button.isEnabled()
    w.device.setCurrentText("auto")
    w.lr.setText("fast")
    w.start()
    assert "learning rate" in errors[-1]
    assert w.worker is None
