"""Train widget, driven through its controls as a user does.

- a short real run: checkpoint handed to Predict, counters that agree, elapsed/ETA, a plot with tick
  labels and its legend off the curves, the earlier run kept (faded) when a new one starts;
- Stop, and closing the dock (napari's close button path), stop the run within one batch; a closed
  dock hands its checkpoint to nobody;
- every failure inside the worker -- including RuntimeError subclasses, which superqt's
  GeneratorWorker swallows -- reaches the user as a notification and leaves the widget ready;
- settings are remembered between openings; the output folder has a default;
- a BUSI class folder chosen by mistake gets advice;
- a run that would fail at once (ImageNet weights offline) fails before reading the dataset and leaves
  no run folder behind.

The jobs run in the compute process; tests that need it patched (offline hub, out of memory, a log of the
batches) start one with a setup from ``compute_patches``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from qtpy.QtCore import Qt

pytest.importorskip("napari")
pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def phantom_root(tmp_path_factory):
    from napari_mtunet.sample_data import write_phantom_dataset

    return write_phantom_dataset(tmp_path_factory.mktemp("data") / "phantom", n=12, size=64, seed=3)


@pytest.fixture
def worker_batches(tmp_path, monkeypatch):
    """The compute process logs each batch as the trainer emits it, and the moment Stop reaches it."""
    from compute_patches import patched_compute

    log = tmp_path / "batches.log"
    monkeypatch.setenv("MTUNET_TEST_LOG", str(log))
    with patched_compute("compute_patches:log_batches_and_cancel"):
        yield log


@pytest.fixture
def offline_compute(monkeypatch):
    """The compute process is offline and finds no ImageNet weights in its cache."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with patched_compute("compute_patches:nothing_cached"):
        yield


@pytest.fixture
def oom_compute():
    """Every training step in the compute process runs out of memory."""
    with patched_compute("compute_patches:oom_when_training"):
        yield


def fill_tiny(w, root, out, epochs=2, weights="none"):
    """Set the controls like a user would (tiny, CPU friendly)."""
    w.data_root.value = str(root)
    w.out_dir.value = str(out)
    w.encoder.setCurrentText("mobilenet_v2")
    w.encoder_weights.setCurrentText(weights)
    w.task.setCurrentText("both")
    w.image_size.setValue(64)
    w.epochs.setValue(epochs)
    w.batch_size.setValue(4)
    w.val_fraction.setValue(0.25)
    w.test_fraction.setValue(0.0)
    w.patience.setValue(0)
    w.augment.setChecked(False)
    w.device.setCurrentText("cpu")


def click(qtbot, button):
    assert button.isEnabled(), button.text()
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)


from compute_patches import batches_around_cancel, patched_compute  # noqa: E402


def wait_idle(qtbot, w, timeout=180_000):
    qtbot.waitUntil(lambda: not w.busy, timeout=timeout)


@pytest.mark.slow
def test_train_widget_short_run_writes_checkpoint(make_napari_viewer, qtbot, phantom_root, tmp_path, errors,
                                                  no_traceback):
    from napari_mtunet.checkpoint import read_metadata
    from napari_mtunet.widgets import AnnotateWidget, PredictWidget, TrainWidget
    from napari_mtunet.widgets._session import state_for

    viewer = make_napari_viewer()
    w = TrainWidget(viewer)
    viewer.window.add_dock_widget(w)
    predict = PredictWidget(viewer)  # receives the new checkpoint
    annotate = AnnotateWidget(viewer)
    fill_tiny(w, phantom_root, tmp_path / "runs", epochs=2)
    click(qtbot, w.start_button)
    assert w.start_button.text() == "Stop"
    shown: list[tuple[str, int, int, str, str, str]] = []  # (kind, epoch, epochs, bar, status, timing) per event

    def record(ev):
        if getattr(ev, "kind", None) in ("batch_end", "epoch_end"):
            shown.append((ev.kind, ev.epoch, ev.epochs, w.epoch_progress.text(), w.status.plain_text(),
                          w.timing.text()))

    w.worker.yielded.connect(record)  # after the widget's own handler: what the user sees after each event
    wait_idle(qtbot, w)
    assert errors == [], errors
    assert w.start_button.text() == "Start training" and w.start_button.isEnabled()
    res = w.result
    assert res is not None and res.reason == "completed" and res.epochs_run == 2
    best = Path(res.best_checkpoint)
    assert best.is_file() and best.parent.parent == tmp_path / "runs"
    assert best.parent.name.startswith("phantom-mobilenet_v2-")  # dataset and encoder name the run folder
    meta = read_metadata(best)
    assert meta["class_names"] == ["benign", "malignant", "normal"]
    assert meta["preprocessing"]["image_size"] == 64
    kinds = [e.kind for e in w.events]
    assert kinds.count("epoch_end") == 2 and kinds.count("finish") == 1 and "batch_end" in kinds
    assert kinds.index("finish") > max(i for i, k in enumerate(kinds) if k == "epoch_end")
    # counters agree: while epoch k+1 runs, the bar says k epochs are done
    assert shown and {s[0] for s in shown} == {"batch_end", "epoch_end"}
    for kind, epoch, epochs, bar, status, _ in shown:
        if kind == "batch_end":
            assert bar == f"{epoch - 1}/{epochs} epochs done" and status.startswith(f"epoch {epoch}/{epochs}, batch")
        else:
            assert bar == f"{epoch}/{epochs} epochs done" and status.startswith(f"epoch {epoch}/{epochs} done")
    assert w.epoch_progress.text() == "2/2 epochs done"
    # elapsed time, then an estimate of the time left, then the total
    timings = [s[5] for s in shown]
    assert timings[0].startswith("elapsed ")
    assert any("left" in t for t in timings), timings
    assert w.timing.text().startswith("took ")
    # the plot: both runs' curves, tick labels on both axes, the legend above the curves
    assert len(w.plot.loss.series["train"]) == 2 and len(w.plot.loss.series["val"]) == 2
    assert {"Dice", "bal. accuracy"} <= set(w.plot.metric.series)
    for panel in (w.plot.loss, w.plot.metric):
        panel.grab()  # paint
        drawn = panel.drawn
        assert drawn["x_ticks"] == ["1", "2"], drawn["x_ticks"]
        assert len(drawn["y_ticks"]) == 5 and len(set(drawn["y_ticks"])) == 5
        assert drawn["legend"] and all(not rect.intersects(drawn["plot"]) for _, rect in drawn["legend"])
    # handed to the other widgets at once
    assert state_for(viewer).checkpoint == str(best)
    assert predict.checkpoint.value == str(best) and annotate.checkpoint.value == str(best)

    # a second run: the first one's curves stay, faded, for comparison
    fill_tiny(w, phantom_root, tmp_path / "runs", epochs=1)
    click(qtbot, w.start_button)
    wait_idle(qtbot, w)
    assert errors == [], errors
    assert len(w.plot.loss.previous["train"]) == 2 and len(w.plot.loss.series["train"]) == 1
    assert Path(w.result.best_checkpoint).parent != best.parent  # a new run folder; nothing overwritten


def test_train_stop_within_one_batch_keeps_best(make_napari_viewer, qtbot, phantom_root, tmp_path, errors,
                                                worker_batches):
    from napari_mtunet.widgets import TrainWidget

    viewer = make_napari_viewer()
    w = TrainWidget(viewer)
    fill_tiny(w, phantom_root, tmp_path / "runs", epochs=30)
    w.batch_size.setValue(2)
    click(qtbot, w.start_button)
    # stop in the middle of epoch 2, once the first best checkpoint exists
    qtbot.waitUntil(lambda: any(e.kind == "checkpoint" for e in w.events)
                    and any(e.kind == "batch_end" and e.epoch == 2 for e in w.events), timeout=180_000)
    click(qtbot, w.start_button)  # "Stop"
    assert not w.start_button.isEnabled()  # stopping
    wait_idle(qtbot, w)
    assert errors == []
    before, after = batches_around_cancel(worker_batches)
    assert before > 0 and 0 <= after <= 1, "training must stop within one batch of the Stop reaching it"
    res = w.result
    assert res.reason == "cancelled" and res.epochs_run < 30
    assert res.best_checkpoint is not None and Path(res.best_checkpoint).is_file()
    assert w.start_button.text() == "Start training" and w.start_button.isEnabled()


def test_closing_the_train_dock_stops_the_run_and_hands_nothing_on(make_napari_viewer, qtbot, phantom_root, tmp_path,
                                                                   notifications, worker_batches):
    """napari's dock close button removes the widget from its dock (no closeEvent): the run must stop,
    and its checkpoint must not turn up in Predict or Annotate."""
    from napari_mtunet.widgets import AnnotateWidget, PredictWidget, TrainWidget
    from napari_mtunet.widgets._session import state_for

    viewer = make_napari_viewer()
    w = TrainWidget(viewer)
    dock = viewer.window.add_dock_widget(w, name="Train")
    predict = PredictWidget(viewer)
    annotate = AnnotateWidget(viewer)
    viewer.window.add_dock_widget(predict, name="Predict")
    fill_tiny(w, phantom_root, tmp_path / "runs", epochs=30)
    w.batch_size.setValue(2)
    click(qtbot, w.start_button)
    qtbot.waitUntil(lambda: any(e.kind == "checkpoint" for e in w.events)
                    and any(e.kind == "batch_end" and e.epoch == 2 for e in w.events), timeout=180_000)
    viewer.window.remove_dock_widget(dock)  # what the dock's close button does (QtViewerDockWidget.destroyOnClose)
    wait_idle(qtbot, w, timeout=60_000)
    before, after = batches_around_cancel(worker_batches)
    assert before > 0 and 0 <= after <= 1, "closing the dock must stop training within one batch"
    assert notifications["error"] == []
    res = w.result
    assert res.reason == "cancelled" and res.epochs_run < 30
    assert Path(res.best_checkpoint).is_file()  # kept on disk ...
    assert state_for(viewer).checkpoint is None  # ... but handed to nobody
    assert predict.checkpoint.value == "" and annotate.checkpoint.value == ""


def test_offline_imagenet_weights_error_reaches_the_widget(make_napari_viewer, qtbot, phantom_root, tmp_path,
                                                          offline_compute, errors, no_traceback):
    """The issue's first blocker: EncoderWeightsError is a RuntimeError subclass, which superqt's
    GeneratorWorker took for an aborted thread (neither errored nor finished): the widget hung."""
    from napari_mtunet.encoders import EncoderWeightsError
    from napari_mtunet.widgets import TrainWidget

    assert issubclass(EncoderWeightsError, RuntimeError)
    viewer = make_napari_viewer()
    w = TrainWidget(viewer)
    viewer.window.add_dock_widget(w)
    fill_tiny(w, phantom_root, tmp_path / "runs", epochs=1, weights="imagenet")
    for attempt in (1, 2):  # the widget is ready for another try
        click(qtbot, w.start_button)
        wait_idle(qtbot, w, timeout=120_000)
        assert len(errors) == attempt, errors
        msg = errors[-1]
        assert msg.startswith("Training failed: ") and "'mobilenet_v2'" in msg, msg
        assert "timm-tf_efficientnet_lite0" in msg and "offline" in msg, msg
        assert "Traceback" not in msg
        assert w.status.plain_text() == msg
        assert w.start_button.text() == "Start training" and w.start_button.isEnabled()
        # issue 21 point 7: it failed before reading the dataset, and left nothing behind
        assert not [e for e in w.events if e.kind == "status" and "Loading the dataset" in e.text]
        assert not (tmp_path / "runs").exists()  # no run folder, split file or lock
        assert w.result is None


def test_out_of_memory_while_training_is_notified(make_napari_viewer, qtbot, phantom_root, tmp_path, errors,
                                                  no_traceback, oom_compute):
    from napari_mtunet.training.engine import TrainingError
    from napari_mtunet.widgets import TrainWidget

    assert issubclass(TrainingError, RuntimeError)
    viewer = make_napari_viewer()
    w = TrainWidget(viewer)
    fill_tiny(w, phantom_root, tmp_path / "runs", epochs=1)
    click(qtbot, w.start_button)
    wait_idle(qtbot, w, timeout=120_000)
    assert len(errors) == 1, errors
    msg = errors[0]
    assert msg.startswith("Training failed: out of memory on cpu in epoch 1") and "batch size (now 4)" in msg, msg
    assert msg.count("Reduce the batch size") == 1  # the advice once, not twice
    assert w.start_button.text() == "Start training" and w.start_button.isEnabled()


def test_train_errors_notify_and_widget_recovers(make_napari_viewer, qtbot, tmp_path, errors, no_traceback):
    from napari_mtunet.widgets import TrainWidget

    viewer = make_napari_viewer()
    w = TrainWidget(viewer)
    click(qtbot, w.start_button)  # no dataset
    assert errors and "dataset folder" in errors[-1]
    empty = tmp_path / "not_a_dataset"
    empty.mkdir()
    (empty / "readme.txt").write_text("nothing here")
    fill_tiny(w, empty, tmp_path / "runs")
    click(qtbot, w.start_button)
    wait_idle(qtbot, w, timeout=60_000)
    assert "not_a_dataset" in errors[-1] and "no known dataset layout" in errors[-1], errors[-1]
    assert w.start_button.text() == "Start training" and w.start_button.isEnabled()
    # one class folder of a BUSI dataset, chosen by mistake
    from PIL import Image

    cls = tmp_path / "Dataset_BUSI_with_GT" / "benign"
    cls.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((40, 50), 60 * i, np.uint8)).save(cls / f"benign ({i}).png")
        Image.fromarray(np.zeros((40, 50), np.uint8)).save(cls / f"benign ({i})_mask.png")
    w.data_root.value = str(cls)
    click(qtbot, w.start_button)
    wait_idle(qtbot, w, timeout=60_000)
    assert "this looks like one class of a BUSI dataset" in errors[-1], errors[-1]
    assert "choose its parent" in errors[-1] and str(cls.parent) in errors[-1]
    assert w.start_button.isEnabled()
    w.lr.setText("fast")
    click(qtbot, w.start_button)
    assert "learning rate" in errors[-1]
    assert w.worker is None


def test_settings_are_remembered_and_the_output_folder_has_a_default(make_napari_viewer, tmp_path, monkeypatch):
    from napari_mtunet.forms import TrainForm, default_output_root
    from napari_mtunet.widgets import TrainWidget

    monkeypatch.setenv("MTUNET_CONFIG_DIR", str(tmp_path / "config"))  # a first-time user
    viewer = make_napari_viewer()
    w = TrainWidget(viewer)
    dock = viewer.window.add_dock_widget(w, name="Train")
    assert w.out_dir.value == "" and w.out_dir.line.placeholderText() == default_output_root()
    w.data_root.value = str(tmp_path / "my_data")
    assert w.form().run_folder().parent == Path(default_output_root())  # runs go somewhere sensible by default
    # the user changes settings, then closes the dock with its close button
    w.encoder.setCurrentText("resnet18")
    w.encoder_weights.setCurrentText("none")
    w.epochs.setValue(7)
    w.batch_size.setValue(3)
    w.lr.setText("3e-4")
    w.image_size.setValue(96)
    w.device.setCurrentText("cpu")
    w.out_dir.value = str(tmp_path / "my_runs")
    viewer.window.remove_dock_widget(dock)
    # the next opening shows them again
    w2 = TrainWidget(viewer)
    assert w2.data_root.value == str(tmp_path / "my_data")
    assert w2.encoder.currentText() == "resnet18" and w2.encoder_weights.currentText() == "none"
    assert (w2.epochs.value(), w2.batch_size.value(), w2.lr.text(), w2.image_size.value()) == (7, 3, "3e-4", 96)
    assert w2.device.currentText() == "cpu" and w2.out_dir.value == str(tmp_path / "my_runs")
    # a damaged settings file gives the defaults, not an error
    (tmp_path / "config" / "train.json").write_text("{not json")
    w3 = TrainWidget(viewer)
    assert w3.form() == TrainForm()


def test_the_preset_sets_the_recipe_fields_and_reaches_the_run_config(make_napari_viewer, tmp_path, monkeypatch):
    from napari_mtunet.config import DEFAULT_PRESET
    from napari_mtunet.widgets import TrainWidget

    monkeypatch.setenv("MTUNET_CONFIG_DIR", str(tmp_path / "config"))
    viewer = make_napari_viewer()
    w = TrainWidget(viewer)
    viewer.window.add_dock_widget(w, name="Train")
    # a first-time user starts where `mtunet train` does: the cpu preset (pretrained Lite0, 128 px, interactive)
    assert w.preset.currentText() == DEFAULT_PRESET == "cpu"
    assert w.encoder.currentText() == "timm-tf_efficientnet_lite0" and w.encoder_weights.currentText() == "imagenet"
    assert (w.image_size.value(), w.epochs.value(), w.batch_size.value()) == (128, 20, 8)
    assert w.interactive.isChecked()
    w.data_root.value = str(tmp_path / "my_data")
    w.val_fraction.setValue(0.3)
    w.preset.setCurrentText("gpu")  # the recipe changes; the data fields stay
    assert (w.image_size.value(), w.epochs.value(), w.batch_size.value(), w.patience.value()) == (256, 50, 32, 10)
    assert w.data_root.value == str(tmp_path / "my_data") and abs(w.val_fraction.value() - 0.3) < 1e-9
    w.epochs.setValue(3)  # a field changed after the preset is kept
    w.layout_options.setText("level=1, patch-size=512")  # the layout reader's options (PANDA)
    run = w.form().to_run()
    assert run.preset == "gpu" and run.train.epochs == 3 and run.preprocessing.image_size == 256
    assert run.model.prompts and run.train.early_stopping_patience == 10
    assert run.data.layout_options == {"level": 1, "patch_size": 512}
    w.layout_options.setText("level")
    with pytest.raises(ValueError, match="NAME=VALUE"):
        w.form().to_run()
