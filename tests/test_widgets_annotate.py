"""Annotate & fine-tune, driven as a user does.

- the image follows the Labels layer; another image is refused and nothing is written;
- the classes come from the model (a fixed list); the model's class is only a suggestion; picking one
  records the user's class beside the prediction, whose class and probabilities stay; every read-out says
  where a value comes from;
- fine-tuning starts from the model that made the selected Labels layer;
- an added sample can be undone; labels.csv records the source image and the model;
- a failing fine-tune (a RuntimeError subclass in the worker, or a bad labels.csv) is notified.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from qtpy.QtCore import Qt

pytest.importorskip("napari")
pytestmark = pytest.mark.gui

CLASSES = ["benign", "malignant", "normal"]


def _checkpoint(path: Path, seed: int = 0) -> Path:
    import torch

    from napari_mtunet.checkpoint import save_checkpoint
    from napari_mtunet.config import ModelConfig, Preprocessing, TrainConfig
    from napari_mtunet.model import build_model

    torch.manual_seed(seed)
    model = build_model(ModelConfig(encoder_weights=None, class_names=CLASSES), Preprocessing(image_size=64))
    tc = TrainConfig(epochs=1, batch_size=4, device="cpu", early_stopping_patience=None).to_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    return Path(save_checkpoint(path, model, training={"train_config": tc}))


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    return _checkpoint(tmp_path_factory.mktemp("ckpt") / "parent-run" / "best.safetensors")


def wait_idle(qtbot, w, timeout=180_000):
    qtbot.waitUntil(lambda: not w.busy, timeout=timeout)


def click(qtbot, button):
    assert button.isEnabled(), button.text()
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)


def pick(combo, text: str) -> None:
    """Choose ``text`` in a combo box as a user does (the index changes, then ``activated``)."""
    i = combo.findText(text)
    assert i >= 0, f"{text!r} is not offered; the choices are {[combo.itemText(k) for k in range(combo.count())]}"
    combo.setCurrentIndex(i)
    combo.activated.emit(i)


def items(combo) -> list[str]:
    return [combo.itemText(i) for i in range(combo.count())]


def rows_of(root: Path) -> list[dict[str, str]]:
    with open(root / "labels.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def predict(qtbot, viewer, checkpoint, image_name: str):
    from napari_mtunet.widgets import PredictWidget

    pw = PredictWidget(viewer)
    pw.checkpoint.value = str(checkpoint)
    pw.image_layer.setCurrentText(image_name)
    click(qtbot, pw.predict_button)
    wait_idle(qtbot, pw, timeout=60_000)
    return pw


def test_annotate_correct_add_undo_and_finetune(make_napari_viewer, qtbot, tiny_checkpoint, tmp_path, errors,
                                                no_traceback):
    from napari_mtunet import layer_meta
    from napari_mtunet.checkpoint import read_metadata
    from napari_mtunet.sample_data import make_phantom
    from napari_mtunet.widgets import AnnotateWidget
    from napari_mtunet.widgets._overlay import text_overlay
    from napari_mtunet.widgets._session import state_for

    viewer = make_napari_viewer()
    ph = make_phantom(n=3, size=64, seed=5)
    viewer.add_image(ph.images, name="scan")
    pw = predict(qtbot, viewer, tiny_checkpoint, "scan")
    assert errors == []
    labels = viewer.layers["scan [parent-run/best]"]
    before = layer_meta.read(labels.metadata)
    w = AnnotateWidget(viewer)
    viewer.window.add_dock_widget(w)
    # everything follows the Labels layer: its image, its model's classes, its model
    assert w.labels_layer.currentText() == labels.name and w.image_layer.currentText() == "scan"
    assert items(w.class_choice) == CLASSES and not w.class_choice.isEditable()  # no typing "Malignant "
    assert w.checkpoint.value == str(tiny_checkpoint)
    other = _checkpoint(tmp_path / "other-run" / "best.safetensors", seed=1)
    state_for(viewer).set_checkpoint(str(other))  # e.g. a training run finished meanwhile
    assert w.checkpoint.value == str(tiny_checkpoint)  # still the model that made these labels

    # the user corrects the masks and picks the class of each slice
    labels.data = ph.masks.copy()
    for i in range(3):
        viewer.dims.set_current_step(0, i)
        # the model's class is a suggestion (the Confirm button), never the box's value
        assert w.class_choice.currentIndex() == -1 and w.confirm_button.text() == f"Confirm {before.slices[i].predicted}"
        pick(w.class_choice, ph.labels[i])
        assert not w.confirm_button.isEnabled()
    rec = layer_meta.read(labels.metadata)
    for i in range(3):  # the correction is kept beside the prediction, never over it
        assert rec.slices[i].corrected == ph.labels[i]
        assert rec.slices[i].predicted == before.slices[i].predicted
        assert rec.slices[i].probabilities == before.slices[i].probabilities
    viewer.dims.set_current_step(0, 1)
    assert w.class_choice.currentText() == ph.labels[1]  # follows the slice
    s1 = rec.slices[1]
    info = w.class_info.plain_text()
    assert f"predicted {s1.predicted}" in info and f"your class {ph.labels[1]}" in info, info
    # the Predict read-out and napari's overlay say the same, each value with its source
    viewer.layers.selection.active = labels
    pw.update_readout()
    text = pw.readout.title.text().replace("\u200b", "")
    assert f"Predicted by the model: <b>{s1.predicted}</b>" in text and f"Your class: <b>{ph.labels[1]}</b>" in text
    assert f"your class {ph.labels[1]}" in text_overlay(viewer).text
    assert f"predicted {s1.predicted}" in text_overlay(viewer).text

    # add the slice on screen, then all slices; undo the last one
    root = tmp_path / "my_set"
    w.dataset_root.value = str(root)
    click(qtbot, w.add_button)
    wait_idle(qtbot, w)
    w.all_slices.setChecked(True)
    click(qtbot, w.add_button)
    wait_idle(qtbot, w)
    assert errors == [], errors
    rows = rows_of(root)
    assert [r["label"] for r in rows] == [ph.labels[1], *ph.labels]
    assert [r["source"] for r in rows] == ["scan [1]", "scan [0]", "scan [1]", "scan [2]"]
    assert {r["model"] for r in rows} == {"parent-run/best"}
    assert {r["class_source"] for r in rows} == {"confirmed"}  # every class was picked by the user
    assert len({r["filename"] for r in rows}) == 4  # never overwritten: new unique names
    for r in rows:
        assert (root / "images" / r["filename"]).is_file()
        assert (root / "masks" / (Path(r["filename"]).stem + ".png")).is_file()
    assert len(w.added) == 4 and w.undo_button.isEnabled()
    last = rows[-1]["filename"]
    click(qtbot, w.undo_button)
    wait_idle(qtbot, w)
    assert errors == []
    assert [r["filename"] for r in rows_of(root)] == [r["filename"] for r in rows[:3]]
    assert not (root / "images" / last).exists() and not (root / "masks" / (Path(last).stem + ".png")).exists()
    assert len(w.added) == 3 and f"Removed {last}" in w.added_label.plain_text()

    # fine-tune the model that made the labels -> a child, selected in Predict, with before/after
    w.device.setCurrentText("cpu")
    click(qtbot, w.finetune_button)
    assert w.finetune_button.text() == "Stop"
    wait_idle(qtbot, w)
    assert errors == [], errors
    child = Path(w.child_checkpoint)
    assert child.is_file() and child != Path(tiny_checkpoint) and root in child.parents
    meta = read_metadata(child)
    assert meta["parent"] and meta["parent"].startswith(read_metadata(tiny_checkpoint)["content_hash"])
    assert meta["class_names"] == CLASSES
    assert pw.checkpoint.value == str(child) and state_for(viewer).checkpoint == str(child)
    assert "train" in w.metrics and {"before", "after"} <= set(w.metrics["train"])
    assert "→" in w.metrics_label.plain_text()
    assert w.finetune_button.text() == "Fine-tune" and w.add_button.isEnabled()
    assert w.progress.value() == w.progress.maximum() > 0
    # the child model is usable by Predict right away, and the layer names it
    click(qtbot, pw.predict_button)
    wait_idle(qtbot, pw)
    from napari_mtunet.widgets._layers import short_model_name

    long_name = f"{child.parent.name}/{child.stem}"  # finetune-<date>-<time>/best: 29 characters
    new = viewer.layers[f"scan [{short_model_name(long_name)}]"]  # the run's time and the file
    assert short_model_name(long_name) == f"…{child.parent.name.rsplit('-', 1)[-1]}/best"
    assert layer_meta.read(new.metadata).model["hash"] == meta["content_hash"][:len(layer_meta.read(new.metadata).model["hash"])]


def test_annotate_refuses_an_image_that_is_not_the_labels_source(make_napari_viewer, qtbot, tiny_checkpoint, tmp_path,
                                                                errors, no_traceback):
    """Two images of the same size: a prediction of A must never be written with B's pixels."""
    from napari_mtunet import layer_meta
    from napari_mtunet.widgets import AnnotateWidget

    viewer = make_napari_viewer()
    rng = np.random.default_rng(7)
    a = viewer.add_image(rng.integers(0, 255, (64, 64), dtype=np.uint8), name="patient A")
    predict(qtbot, viewer, tiny_checkpoint, "patient A")
    viewer.add_image(rng.integers(0, 255, (64, 64), dtype=np.uint8), name="patient B")  # opened last
    w = AnnotateWidget(viewer)
    root = tmp_path / "set"
    w.dataset_root.value = str(root)
    w.labels_layer.setCurrentText("patient A [parent-run/best]")
    assert w.image_layer.currentText() == "patient A"  # the labels' image, not the newest one
    pick(w.class_choice, "malignant")
    # the user picks the wrong image by hand: refused, nothing written
    w.image_layer.setCurrentText("patient B")
    click(qtbot, w.add_button)
    wait_idle(qtbot, w)
    assert len(errors) == 1 and "'patient A'" in errors[0] and "'patient B'" in errors[0], errors
    assert "Cannot add to the training set" in errors[0]
    assert not root.exists() and w.added == []
    # nor can the prediction be declared to belong to B
    click(qtbot, w.link_button)
    assert "is a prediction of 'patient A'" in errors[-1]
    assert layer_meta.read(viewer.layers["patient A [parent-run/best]"].metadata).source_layer == "patient A"
    # selecting the labels again brings their image back; then it is added
    w.labels_layer.setCurrentIndex(-1)
    w.labels_layer.setCurrentText("patient A [parent-run/best]")
    assert w.image_layer.currentText() == "patient A"
    n = len(errors)
    click(qtbot, w.add_button)
    wait_idle(qtbot, w)
    assert len(errors) == n
    rows = rows_of(root)
    assert len(rows) == 1 and rows[0]["source"] == "patient A" and rows[0]["label"] == "malignant"
    from napari_mtunet.data import read_image

    np.testing.assert_array_equal(read_image(root / "images" / rows[0]["filename"]), a.data)  # A's own pixels

    # a Labels layer the user made without the plugin does not say whose it is: refused until linked
    own = viewer.add_labels(np.zeros((64, 64), np.uint8), name="my labels")
    own.data[10:20, 10:20] = 1
    w.labels_layer.setCurrentText("my labels")
    w.image_layer.setCurrentText("patient B")
    pick(w.class_choice, "benign")
    click(qtbot, w.add_button)
    wait_idle(qtbot, w)
    assert "does not say which image it belongs to" in errors[-1] and "Link labels to image" in errors[-1]
    assert len(rows_of(root)) == 1
    click(qtbot, w.link_button)
    assert layer_meta.read(own.metadata).source_layer == "patient B"
    n = len(errors)
    click(qtbot, w.add_button)
    wait_idle(qtbot, w)
    assert len(errors) == n
    assert [r["source"] for r in rows_of(root)] == ["patient A", "patient B"]


def test_new_annotation_layer_starts_from_the_prediction(make_napari_viewer, qtbot, tiny_checkpoint, errors):
    from napari_mtunet import layer_meta
    from napari_mtunet.widgets import AnnotateWidget

    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(8).integers(0, 255, (64, 64), dtype=np.uint8), name="scan")
    predict(qtbot, viewer, tiny_checkpoint, "scan")
    pred = layer_meta.read(viewer.layers["scan [parent-run/best]"].metadata)
    w = AnnotateWidget(viewer)
    w.image_layer.setCurrentText("scan")
    click(qtbot, w.new_labels_button)
    layer = viewer.layers["scan [annotation]"]
    rec = layer_meta.read(layer.metadata)
    assert rec.kind == "annotation" and rec.source_layer == "scan" and rec.class_names == CLASSES
    assert rec.slices[0].predicted == pred.slices[0].predicted and rec.slices[0].corrected is None
    assert rec.model["path"] == str(tiny_checkpoint)
    np.testing.assert_array_equal(layer.data > 0, viewer.layers["scan [parent-run/best]"].data > 0)
    assert w.labels_layer.currentText() == "scan [annotation]" and layer.mode == "paint"
    assert errors == []


@pytest.fixture
def oom_compute():
    from compute_patches import patched_compute

    with patched_compute("compute_patches:oom_when_training"):
        yield


def test_a_failing_finetune_is_notified_and_the_widget_recovers(make_napari_viewer, qtbot, tiny_checkpoint, tmp_path,
                                                                errors, no_traceback, oom_compute):
    from napari_mtunet.data.writer import write_generic_sample
    from napari_mtunet.widgets import AnnotateWidget

    root = tmp_path / "set"
    rng = np.random.default_rng(0)
    for i in range(4):
        mask = np.zeros((64, 64), np.uint8)
        mask[10:30, 10 + i:30 + i] = 1
        write_generic_sample(root, rng.integers(0, 255, (64, 64), dtype=np.uint8), mask, CLASSES[i % 3])
    viewer = make_napari_viewer()
    w = AnnotateWidget(viewer)
    w.dataset_root.value = str(root)
    w.checkpoint.value = str(tiny_checkpoint)
    w.device.setCurrentText("cpu")

    # 1. out of memory in the training step (the compute process runs out): a TrainingError (RuntimeError)
    click(qtbot, w.finetune_button)
    wait_idle(qtbot, w)
    assert len(errors) == 1 and errors[0].startswith("Fine-tuning failed: out of memory"), errors
    assert w.finetune_button.text() == "Fine-tune" and w.finetune_button.isEnabled() and w.add_button.isEnabled()
    assert w.child_checkpoint is None

    # 2. a class the model does not know, typed into labels.csv by hand
    text = (root / "labels.csv").read_text()
    (root / "labels.csv").write_text(text.replace(",malignant", ",Malignant ", 1))
    click(qtbot, w.finetune_button)
    wait_idle(qtbot, w)
    assert len(errors) == 2 and "does not know" in errors[1] and "labels.csv" in errors[1], errors
    assert all("Traceback" not in e for e in errors)
    assert w.finetune_button.isEnabled()


def test_annotate_errors_are_notified(make_napari_viewer, qtbot, tmp_path, errors, no_traceback):
    from napari_mtunet.widgets import AnnotateWidget

    viewer = make_napari_viewer()
    w = AnnotateWidget(viewer)
    click(qtbot, w.add_button)
    assert "choose a Labels layer and its image" in errors[-1]
    viewer.add_image(np.zeros((32, 32), np.uint8), name="img")
    viewer.add_labels(np.zeros((16, 16), np.uint8), name="wrong size")
    w.image_layer.setCurrentText("img")
    click(qtbot, w.link_button)
    w.class_choice.addItems(CLASSES)
    w.dataset_root.value = str(tmp_path / "set")
    click(qtbot, w.add_button)
    assert "differ in shape" in errors[-1] and "'img'" in errors[-1] and "'wrong size'" in errors[-1]
    w.checkpoint.value = ""
    click(qtbot, w.finetune_button)
    assert "choose the model to fine-tune" in errors[-1]
    w.checkpoint.value = str(tmp_path / "missing.safetensors")
    click(qtbot, w.finetune_button)
    assert "no samples yet" in errors[-1]
    assert w.worker is None and w.add_button.isEnabled()
    assert not (tmp_path / "set").exists()


@pytest.mark.slow
def test_finetune_adapts_to_a_folder_and_the_open_image_layers(make_napari_viewer, qtbot, tiny_checkpoint, tmp_path,
                                                               errors, no_traceback):
    """"Adapt to": uncorrected images of the same scanner (a folder, and every slice of the open image layers)
    go to fine-tuning; the child records what it was adapted to; the verdict on held-back corrections is shown."""
    from PIL import Image

    from napari_mtunet.checkpoint import read_metadata
    from napari_mtunet.sample_data import make_phantom, write_phantom_dataset
    from napari_mtunet.widgets import AnnotateWidget

    viewer = make_napari_viewer()
    ph = make_phantom(n=3, size=64, seed=7)
    viewer.add_image(ph.images, name="scan")
    root = write_phantom_dataset(tmp_path / "corrections", n=6, size=64, seed=8)
    folder = tmp_path / "uncorrected"
    folder.mkdir()
    for i, img in enumerate(make_phantom(n=4, size=64, seed=9).images):
        Image.fromarray((np.asarray(img, float) * 0.6).astype(np.uint8)).save(folder / f"u{i}.png")
    w = AnnotateWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.dataset_root.value = str(root)
    w.checkpoint.value = str(tiny_checkpoint)
    w.device.setCurrentText("cpu")
    w.adapt_folder.value = str(tmp_path / "missing")
    click(qtbot, w.finetune_button)  # a folder that does not exist: one clear error, nothing started
    assert len(errors) == 1 and "missing" in errors[0] and "not a folder" in errors[0] and not w.busy
    errors.clear()
    w.adapt_folder.value = str(folder)
    w.adapt_layers.setChecked(True)
    click(qtbot, w.finetune_button)
    wait_idle(qtbot, w, timeout=900_000)
    assert errors == [], errors
    adapted = read_metadata(w.child_checkpoint)["training"]["finetune"]["adapted_to"]
    assert adapted["n_unlabelled"] == 4 + 3  # the folder's images and the layer's slices
    assert str(folder) in adapted["source"] and "3 image(s) of 1 open layer(s)" in adapted["source"]
    assert "held-back correction" in w.metrics_label.plain_text()
