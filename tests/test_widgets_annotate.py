"""Annotate & fine-tune: class metadata, add to training set (generic layout), child checkpoint."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")
pytestmark = pytest.mark.gui

CLASSES = ["benign", "malignant", "normal"]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    import torch

    from napari_mtunet.checkpoint import save_checkpoint
    from napari_mtunet.config import ModelConfig, Preprocessing, TrainConfig
    from napari_mtunet.model import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(encoder_weights=None, class_names=CLASSES), Preprocessing(image_size=64))
    tc = TrainConfig(epochs=1, batch_size=4, device="cpu", early_stopping_patience=None).to_dict()
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "parent.safetensors", model, training={"train_config": tc})




def wait_idle(qtbot, w, timeout=180_000):
    qtbot.waitUntil(lambda: w.worker is None, timeout=timeout)


def test_annotate_add_and_finetune(make_napari_viewer, qtbot, tiny_checkpoint, tmp_path, errors):
    from napari_mtunet.checkpoint import read_metadata
    from napari_mtunet.sample_data import make_phantom
    from napari_mtunet.widgets import AnnotateWidget, PredictWidget

    viewer = make_napari_viewer()
    ph = make_phantom(n=3, size=64, seed=5)
    viewer.add_image(ph.images, name="scan")
    predict = PredictWidget(viewer)
    w = AnnotateWidget(viewer)
    predict.set_checkpoint(tiny_checkpoint)
    w.checkpoint.value = str(tiny_checkpoint)
    w.set_class_names(CLASSES)
    # start from an empty layer, "paint" the lesions, set classes per slice
    labels = w.new_labels()
    assert labels.data.shape == (3, 64, 64) and labels.metadata["mtunet"]["kind"] == "annotation"
    labels.data = ph.masks.copy()
    root = tmp_path / "my_set"
    w.dataset_root.value = str(root)
    for i in range(3):
        viewer.dims.set_current_step(0, i)
        w.class_choice.setCurrentText(ph.labels[i])
    assert labels.metadata["mtunet"]["classes"] == ph.labels
    viewer.dims.set_current_step(0, 1)
    assert w.class_choice.currentText() == ph.labels[1]  # follows the slice
    w.add_to_training_set()  # current slice only
    wait_idle(qtbot, w)
    w.all_slices.setChecked(True)
    w.add_to_training_set()
    wait_idle(qtbot, w)
    assert errors == [], errors
    rows = list(csv.DictReader(open(root / "labels.csv")))
    assert [r["label"] for r in rows] == [ph.labels[1], *ph.labels]
    assert len({r["filename"] for r in rows}) == 4  # never overwritten: new unique names
    for r in rows:
        assert (root / "images" / r["filename"]).is_file()
        assert (root / "masks" / (Path(r["filename"]).stem + ".png")).is_file()
    assert len(w.added) == 4

    # fine-tune -> child checkpoint, selected in Predict at once, before/after metrics
    w.epochs.setValue(1)
    w.lr.setText("1e-3")
    w.device.setCurrentText("cpu")
    w.finetune_or_stop()
    assert w.finetune_button.text() == "Stop"
    wait_idle(qtbot, w)
    assert errors == [], errors
    child = Path(w.child_checkpoint)
    assert child.is_file() and child != Path(tiny_checkpoint)
    meta = read_metadata(child)
    assert meta["parent"] and meta["parent"].startswith(read_metadata(tiny_checkpoint)["content_hash"])
    assert meta["class_names"] == CLASSES
    assert predict.checkpoint.value == str(child)
    assert set(w.metrics) == {"before", "after"}
    assert {"dice", "accuracy"} <= set(w.metrics["after"])
    assert "before → after" in w.metrics_label.text()
    assert w.finetune_button.text() == "Fine-tune" and w.add_button.isEnabled()
    # the child model is usable by Predict right away
    predict.image_layer.setCurrentText("scan")
    predict.predict()
    wait_idle(qtbot, predict)
    assert viewer.layers["scan [mtunet]"].metadata["mtunet"]["model_hash"] == meta["content_hash"]


def test_annotate_errors_are_notified(make_napari_viewer, qtbot, tmp_path, errors):
    from napari_mtunet.widgets import AnnotateWidget

    viewer = make_napari_viewer()
    w = AnnotateWidget(viewer)
    w.add_to_training_set()
    assert "dataset folder" in errors[-1]
    viewer.add_image(np.zeros((32, 32), np.uint8), name="img")
    viewer.add_labels(np.zeros((16, 16), np.uint8), name="wrong size")
    w.dataset_root.value = str(tmp_path / "set")
    w.add_to_training_set()
    assert "differ in shape" in errors[-1]
    w.finetune_or_stop()
    assert "checkpoint" in errors[-1]
    w.checkpoint.value = str(tmp_path / "missing.safetensors")
    w.finetune_or_stop()
    assert "no samples yet" in errors[-1]
    assert w.worker is None and w.add_button.isEnabled()
