"""What you see is what you correct (issue 21, points 1-5), driven through the widgets as a user does, on
real BUSI images.

1. the image being corrected is the one on screen: selecting a prediction in Annotate brings its image up;
   Add is refused while another image (or a larger one) lies over it; the canvas overlay describes only
   what is visible;
2. the model's class is a suggestion: Add refuses a class nobody confirmed; Confirm is one click;
   ``labels.csv`` records where each class comes from;
3. a class picked in Annotate shows in the Predict read-out at once;
4. a new prediction of the same image by the same model replaces the earlier one (or hides it when the
   user painted on it): masks never pile up;
5. long model names are elided in layer names and in the overlay, which sits bottom left (growing into the
   canvas, away from napari's notifications at the bottom right).
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
BENIGN, MALIGNANT = "benign (108)", "malignant (108)"


def _checkpoint(path: Path) -> Path:
    import torch

    from napari_mtunet.checkpoint import save_checkpoint
    from napari_mtunet.config import ModelConfig, Preprocessing
    from napari_mtunet.model import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(encoder_weights=None, class_names=CLASSES, num_classes=3),
                        Preprocessing(image_size=64))
    path.parent.mkdir(parents=True, exist_ok=True)
    return Path(save_checkpoint(path, model))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return _checkpoint(tmp_path_factory.mktemp("screen") / "busi-run" / "best.safetensors")


@pytest.fixture
def busi_pair(busi_root):
    from napari_mtunet.data import read_image

    return {n: read_image(busi_root / n.split(" (")[0] / f"{n}.png") for n in (BENIGN, MALIGNANT)}


def click(qtbot, button):
    assert button.isEnabled(), button.text()
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)


def pick(combo, text: str) -> None:
    i = combo.findText(text)
    assert i >= 0, text
    combo.setCurrentIndex(i)
    combo.activated.emit(i)


def wait_idle(qtbot, w, timeout=120_000):
    qtbot.waitUntil(lambda: not w.busy, timeout=timeout)


def overlay_text(viewer) -> str:
    from napari_mtunet.widgets._overlay import text_overlay

    ov = text_overlay(viewer)
    return ov.text if ov.visible else ""


def add_busi(viewer, images):
    """benign first, then malignant: malignant ends up on top, as when a user opens them in that order."""
    for name in (BENIGN, MALIGNANT):
        viewer.add_image(images[name], name=name, rgb=images[name].ndim == 3)


def predict(qtbot, pw, image_name):
    pw.image_layer.setCurrentText(image_name)
    click(qtbot, pw.predict_button)
    wait_idle(qtbot, pw)


def rows_of(root: Path) -> list[dict[str, str]]:
    with open(root / "labels.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


# --------------------------------------------------------------------------- 1. the image on screen


def test_the_image_being_corrected_is_the_one_on_screen(make_napari_viewer, qtbot, checkpoint, busi_pair, tmp_path,
                                                        errors):
    from napari_mtunet.widgets import AnnotateWidget, PredictWidget
    from napari_mtunet.widgets._layers import covering_images, is_shown

    viewer = make_napari_viewer(show=True)
    add_busi(viewer, busi_pair)
    pw, aw = PredictWidget(viewer), AnnotateWidget(viewer)
    viewer.window.add_dock_widget(pw)
    viewer.window.add_dock_widget(aw)
    pw.checkpoint.value = str(checkpoint)
    predict(qtbot, pw, BENIGN)
    assert errors == []
    labels = viewer.layers[f"{BENIGN} [busi-run/best]"]
    benign, malignant = viewer.layers[BENIGN], viewer.layers[MALIGNANT]
    # the result is shown on its own image, not under the malignant one
    assert covering_images(viewer, benign) == [] and is_shown(viewer, labels)
    assert overlay_text(viewer).startswith(f"mtunet · {BENIGN} [busi-run/best]")
    labels.visible = False  # the mask hidden to look at the image: the image on screen keeps its class
    assert overlay_text(viewer).startswith(f"mtunet · {BENIGN} [busi-run/best]") and "predicted" in overlay_text(viewer)
    labels.visible = True

    # the user brings the malignant image back on top (e.g. to compare): the overlay no longer claims a class
    viewer.layers.move(viewer.layers.index(malignant), len(viewer.layers))
    assert covering_images(viewer, benign) == [malignant]
    text = overlay_text(viewer)
    assert "predicted" not in text and f"is under {MALIGNANT}" in text, text
    pw.update_readout()
    assert "Not on screen" in pw.readout.title.text() and MALIGNANT in pw.readout.title.text().replace("\u200b", "")

    # selecting the prediction in Annotate brings its image up: what is corrected is what is seen
    pick(aw.labels_layer, labels.name)
    assert aw.image_layer.currentText() == BENIGN
    assert covering_images(viewer, benign) == [] and is_shown(viewer, labels)
    assert overlay_text(viewer).startswith(f"mtunet · {BENIGN}")

    # the malignant image on top again: Add is refused, nothing is written
    root = tmp_path / "set"
    aw.dataset_root.value = str(root)
    pick(aw.class_choice, "benign")
    viewer.layers.move(viewer.layers.index(malignant), len(viewer.layers))
    click(qtbot, aw.add_button)
    wait_idle(qtbot, aw)
    assert len(errors) == 1 and f"'{MALIGNANT}' lies over '{BENIGN}'" in errors[0], errors
    assert "Press 'Show' beside the image" in errors[0] and not root.exists()

    # a larger image lying over it is refused the same way; "Show" fixes it
    viewer.add_image(np.zeros((2000, 2000), np.uint8), name="overview")
    click(qtbot, aw.show_button)
    assert covering_images(viewer, benign) == []
    big = viewer.layers["overview"]
    viewer.layers.move(viewer.layers.index(big), len(viewer.layers))
    click(qtbot, aw.add_button)
    wait_idle(qtbot, aw)
    assert len(errors) == 2 and "'overview' lies over" in errors[1], errors
    # hiding the layer on top is also fine
    big.visible = False
    viewer.layers.move(viewer.layers.index(malignant), 0)
    click(qtbot, aw.add_button)
    wait_idle(qtbot, aw)
    assert len(errors) == 2, errors
    rows = rows_of(root)
    assert len(rows) == 1 and rows[0]["source"] == BENIGN and rows[0]["label"] == "benign"
    from napari_mtunet.data import read_image

    saved = read_image(root / "images" / rows[0]["filename"])
    np.testing.assert_array_equal(saved, busi_pair[BENIGN])  # benign's own pixels, not malignant's


def test_an_image_under_a_translucent_or_additive_layer_still_counts_as_shown(make_napari_viewer, busi_pair):
    from napari_mtunet.widgets._layers import covering_images

    viewer = make_napari_viewer()
    add_busi(viewer, busi_pair)
    benign, malignant = viewer.layers[BENIGN], viewer.layers[MALIGNANT]
    assert covering_images(viewer, benign) == [malignant]
    malignant.blending = "additive"
    assert covering_images(viewer, benign) == []
    malignant.blending = "translucent"
    malignant.opacity = 0.3
    assert covering_images(viewer, benign) == []
    malignant.opacity = 1.0
    malignant.translate = (5000, 5000)  # moved aside: no longer over it
    assert covering_images(viewer, benign) == []


# --------------------------------------------------------------------------- 2. confirmed classes only


def test_an_unconfirmed_class_never_goes_into_the_training_set(make_napari_viewer, qtbot, checkpoint, busi_pair,
                                                               tmp_path, errors):
    from napari_mtunet import layer_meta
    from napari_mtunet.widgets import AnnotateWidget, PredictWidget

    viewer = make_napari_viewer()
    add_busi(viewer, busi_pair)
    pw = PredictWidget(viewer)
    pw.checkpoint.value = str(checkpoint)
    predict(qtbot, pw, BENIGN)
    labels = viewer.layers[f"{BENIGN} [busi-run/best]"]
    predicted = layer_meta.read(labels.metadata).slices[0].predicted
    aw = AnnotateWidget(viewer)
    aw.labels_layer.setCurrentText(labels.name)
    root = tmp_path / "set"
    aw.dataset_root.value = str(root)
    # the box does not start on the model's class; the line says it is not confirmed
    assert aw.class_choice.currentIndex() == -1 and aw.class_choice.placeholderText() == "pick the class"
    assert f"predicted {predicted}" in aw.class_info.plain_text() and "not confirmed" in aw.class_info.plain_text()
    assert aw.confirm_button.isEnabled() and aw.confirm_button.text() == f"Confirm {predicted}"
    click(qtbot, aw.add_button)
    wait_idle(qtbot, aw)
    assert len(errors) == 1 and "only the model's prediction" in errors[0] and f"Confirm {predicted}" in errors[0]
    assert not root.exists()
    # one click confirms it; it is recorded as the user's class, beside the prediction
    click(qtbot, aw.confirm_button)
    rec = layer_meta.read(labels.metadata)
    assert rec.slices[0].corrected == predicted and rec.slices[0].label_source == "confirmed"
    assert aw.class_choice.currentText() == predicted and not aw.confirm_button.isEnabled()
    click(qtbot, aw.add_button)
    wait_idle(qtbot, aw)
    assert len(errors) == 1, errors
    rows = rows_of(root)
    assert [(r["label"], r["class_source"]) for r in rows] == [(predicted, "confirmed")]


def test_confirm_covers_all_slices_of_a_stack_when_all_are_added(make_napari_viewer, qtbot, checkpoint, tmp_path,
                                                                  errors):
    from napari_mtunet import layer_meta
    from napari_mtunet.sample_data import make_phantom
    from napari_mtunet.widgets import AnnotateWidget, PredictWidget

    viewer = make_napari_viewer()
    ph = make_phantom(n=3, size=64, seed=2)
    viewer.add_image(ph.images, name="stack")
    pw = PredictWidget(viewer)
    pw.checkpoint.value = str(checkpoint)
    predict(qtbot, pw, "stack")
    labels = viewer.layers["stack [busi-run/best]"]
    aw = AnnotateWidget(viewer)
    aw.labels_layer.setCurrentText(labels.name)
    aw.dataset_root.value = str(tmp_path / "set")
    viewer.dims.set_current_step(0, 1)
    pick(aw.class_choice, ph.labels[1])  # the user's own class for slice 1
    aw.all_slices.setChecked(True)
    assert aw.confirm_button.text() == "Confirm 2 classes"  # slices 0 and 2 are still the model's guesses
    click(qtbot, aw.add_button)
    wait_idle(qtbot, aw)
    assert "slice 0, slice 2" in errors[-1]
    click(qtbot, aw.confirm_button)
    click(qtbot, aw.add_button)
    wait_idle(qtbot, aw)
    rec = layer_meta.read(labels.metadata)
    rows = rows_of(tmp_path / "set")
    assert [r["label"] for r in rows] == [rec.slices[i].corrected for i in range(3)]
    assert rows[1]["label"] == ph.labels[1] and {r["class_source"] for r in rows} == {"confirmed"}


def test_the_workflow_records_a_predicted_class_only_when_asked(tmp_path):
    from napari_mtunet.workflows.annotate import SampleItem, add_samples

    img = np.zeros((32, 32), np.uint8)
    item = SampleItem(img, img, "benign", None, "predicted")
    with pytest.raises(ValueError, match="only the model's prediction"):
        add_samples(tmp_path / "set", [item])
    assert not (tmp_path / "set").exists()
    add_samples(tmp_path / "set", [item], allow_predicted=True)
    assert rows_of(tmp_path / "set")[0]["class_source"] == "predicted"


# --------------------------------------------------------------------------- 3. the read-out follows at once


def test_a_class_picked_in_annotate_shows_in_predict_at_once(make_napari_viewer, qtbot, checkpoint, busi_pair, errors):
    from napari_mtunet.widgets import AnnotateWidget, PredictWidget

    viewer = make_napari_viewer()
    add_busi(viewer, busi_pair)
    pw = PredictWidget(viewer)
    pw.checkpoint.value = str(checkpoint)
    predict(qtbot, pw, MALIGNANT)
    aw = AnnotateWidget(viewer)
    aw.labels_layer.setCurrentText(f"{MALIGNANT} [busi-run/best]")
    assert "Your class" not in pw.readout.title.text()
    pick(aw.class_choice, "malignant")  # no slice change, no layer change
    assert "Your class: <b>malignant</b>" in pw.readout.title.text()
    assert "your class malignant" in overlay_text(viewer)
    pick(aw.class_choice, "normal")
    assert "Your class: <b>normal</b>" in pw.readout.title.text()
    assert errors == []


# --------------------------------------------------------------------------- 4. no pile of masks


def test_a_new_prediction_replaces_the_earlier_one_of_the_same_model(make_napari_viewer, qtbot, checkpoint, busi_pair,
                                                                     tmp_path, errors):
    from napari_mtunet import layer_meta
    from napari_mtunet.widgets import PredictWidget

    viewer = make_napari_viewer()
    add_busi(viewer, busi_pair)
    pw = PredictWidget(viewer)
    pw.checkpoint.value = str(checkpoint)

    def predictions():
        return [lyr for lyr in viewer.layers if (r := layer_meta.read(lyr.metadata)) and r.kind == "prediction"
                and r.source_layer == BENIGN]

    predict(qtbot, pw, BENIGN)
    first = predictions()
    assert len(first) == 1
    pw.threshold.setValue(0.2)
    predict(qtbot, pw, BENIGN)
    assert predictions() == first and "layer updated" in pw.status.plain_text()  # the same layer, new data
    assert layer_meta.read(first[0].metadata).model["threshold"] == pytest.approx(0.2)
    # the user paints on it: a new prediction does not overwrite the painting, it hides it
    first[0].paint((10, 10), 1 - int(first[0].data[10, 10] > 0))  # the brush or the eraser
    predict(qtbot, pw, BENIGN)
    both = predictions()
    assert len(both) == 2 and both[0] is first[0] and not first[0].visible and both[1].visible
    # Grad-CAM of the same model: one map, updated
    pw.gradcam.setChecked(True)
    predict(qtbot, pw, BENIGN)
    predict(qtbot, pw, BENIGN)
    cams = [lyr for lyr in viewer.layers if (r := layer_meta.read(lyr.metadata)) and r.kind == "gradcam"]
    assert len(cams) == 1 and cams[0].visible
    # another model's prediction of the same image is its own layer (for comparison), shown on top
    other = _checkpoint(tmp_path / "other-run" / "best.safetensors")
    pw.gradcam.setChecked(False)
    pw.checkpoint.value = str(other)
    predict(qtbot, pw, BENIGN)
    assert len(predictions()) == 3 and f"{BENIGN} [other-run/best]" in viewer.layers
    assert errors == []


# --------------------------------------------------------------------------- 5. long names


def test_long_model_names_are_elided_and_the_overlay_stays_clear_of_notifications(make_napari_viewer, qtbot, tmp_path,
                                                                                  busi_pair, errors):
    from napari_mtunet.widgets import PredictWidget
    from napari_mtunet.widgets._layers import MODEL_NAME_CHARS
    from napari_mtunet.widgets._overlay import LINE_CHARS, POSITION, text_overlay

    run = "Dataset_BUSI_with_GT-timm-tf_efficientnet_lite0-20260101-120000"
    ckpt = _checkpoint(tmp_path / run / "best.safetensors")
    viewer = make_napari_viewer(show=True)
    add_busi(viewer, busi_pair)
    pw = PredictWidget(viewer)
    viewer.window.add_dock_widget(pw)
    pw.checkpoint.value = str(ckpt)
    predict(qtbot, pw, MALIGNANT)
    assert errors == []
    name = next(lyr.name for lyr in viewer.layers if lyr.name.startswith(f"{MALIGNANT} ["))
    model_part = name[len(MALIGNANT) + 2:-1]
    assert len(model_part) <= MODEL_NAME_CHARS and model_part == "…120000/best"  # the run's time and the file
    ov = text_overlay(viewer)
    assert str(getattr(ov.position, "value", ov.position)) == POSITION == "bottom_left"  # notifications: bottom right
    lines = ov.text.split("\n")
    assert len(lines) == 2 and all(len(line) <= LINE_CHARS for line in lines), lines
    assert lines[0].startswith(f"mtunet · {MALIGNANT}") and lines[1].startswith("predicted ")
