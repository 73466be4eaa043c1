"""Predict widget, driven as a user does: predictions, folder batches, Grad-CAM without stalling the window.

- a NEW Labels layer named by the model (run folder/file), its record in ``metadata["mtunet"]`` (v2);
- the class read-out says where each value comes from and follows the slice on screen;
- an empty mask beside a lesion class is explained;
- folder prediction skips ground-truth masks and ends with a class summary;
- a long tiled prediction shows its progress and can be stopped;
- Grad-CAM of a big image is shown at reduced resolution, laid exactly over the image;
- errors are notified and the widget stays usable.
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


def _checkpoint(path: Path, classes=CLASSES, image_size: int = 64) -> Path:
    import torch

    from napari_mtunet.checkpoint import save_checkpoint
    from napari_mtunet.config import ModelConfig, Preprocessing
    from napari_mtunet.model import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(encoder_weights=None, class_names=list(classes), num_classes=len(classes)),
                        Preprocessing(image_size=image_size))
    path.parent.mkdir(parents=True, exist_ok=True)
    return Path(save_checkpoint(path, model))


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A model as a training run writes it: ``<run folder>/best.safetensors``."""
    return _checkpoint(tmp_path_factory.mktemp("ckpt") / "busi-run" / "best.safetensors")


def wait_idle(qtbot, widget, timeout=60_000):
    qtbot.waitUntil(lambda: not widget.busy, timeout=timeout)


def click(qtbot, button):
    assert button.isEnabled(), button.text()
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)


def readout_text(w) -> str:
    return w.readout.title.text().replace("\u200b", "")


def test_predict_adds_labels_named_by_the_model(make_napari_viewer, qtbot, tiny_checkpoint, errors, no_traceback):
    from napari_mtunet import layer_meta
    from napari_mtunet.checkpoint import read_metadata
    from napari_mtunet.widgets import PredictWidget

    viewer = make_napari_viewer()
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (80, 96), dtype=np.uint8)
    image = viewer.add_image(img.copy(), name="us")
    w = PredictWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.checkpoint.value = str(tiny_checkpoint)
    info = w.model_info.plain_text()
    assert "busi-run/best" in info and "mobilenet_v2" in info and "benign, malignant, normal" in info, info
    w.image_layer.setCurrentText("us")
    click(qtbot, w.predict_button)
    wait_idle(qtbot, w)
    assert errors == []
    labels = viewer.layers["us [busi-run/best]"]  # the model, not "best.safetensors" or "[mtunet]"
    assert labels.data.shape == (80, 96) and labels.data.dtype == np.uint8
    rec = layer_meta.read(labels.metadata)
    assert rec.kind == "prediction" and rec.source_layer == "us" and not rec.is_stack
    s = rec.slices[0]
    assert s.predicted in CLASSES and set(s.probabilities) == set(CLASSES) and s.truth is None and s.corrected is None
    assert sum(s.probabilities.values()) == pytest.approx(1.0, abs=1e-4)
    assert rec.model["display"] == "busi-run/best" and rec.model["path"] == str(tiny_checkpoint)
    assert rec.model["hash"] and read_metadata(tiny_checkpoint)["content_hash"].startswith(rec.model["hash"])
    assert rec.model["threshold"] == 0.5
    np.testing.assert_array_equal(image.data, img)  # the image is never modified
    # status and read-out say which model and where the class comes from
    assert "model busi-run/best" in w.status.plain_text() and f"class {s.predicted}" in w.status.plain_text()
    text = readout_text(w)
    assert f"Predicted by the model: <b>{s.predicted}</b> ({s.probabilities[s.predicted]:.0%})" in text, text
    assert "Ground truth" not in text and "Your class" not in text
    assert w.readout.current_class() == s.predicted
    assert {n: b.value() / 1000 for n, b in w.readout.bars.items()} == pytest.approx(s.probabilities, abs=1e-3)
    assert all(b.format().startswith("model: ") for b in w.readout.bars.values())
    # napari's text overlay shows it too, with its source
    from napari_mtunet.widgets._overlay import text_overlay

    assert text_overlay(viewer).visible and f"predicted {s.predicted}" in text_overlay(viewer).text


def test_predict_stack_per_slice_and_readout_follows_dims(make_napari_viewer, qtbot, tiny_checkpoint, errors):
    from napari_mtunet import layer_meta
    from napari_mtunet.sample_data import make_phantom
    from napari_mtunet.widgets import PredictWidget

    viewer = make_napari_viewer()
    ph = make_phantom(n=4, size=64, seed=1)
    viewer.add_image(ph.images, name="stack")
    w = PredictWidget(viewer)
    w.checkpoint.value = str(tiny_checkpoint)
    w.threshold.setValue(0.3)
    w.gradcam.setChecked(False)
    click(qtbot, w.predict_button)
    wait_idle(qtbot, w)
    assert errors == []
    labels = viewer.layers["stack [busi-run/best]"]
    rec = layer_meta.read(labels.metadata)
    assert labels.data.shape == (4, 64, 64)
    assert rec.is_stack and len(rec.slices) == 4
    assert rec.model["threshold"] == pytest.approx(0.3)
    for i in (0, 3, 1):
        viewer.dims.set_current_step(0, i)
        s = rec.slices[i]
        assert w.readout.current_class() == s.predicted
        assert f"[slice {i}]" in readout_text(w)
        shown = {n: b.value() / 1000 for n, b in w.readout.bars.items()}
        assert shown == pytest.approx(s.probabilities, abs=1e-3)
        assert s.lesion_fraction == pytest.approx(float((labels.data[i] > 0).mean()))


def test_an_empty_mask_beside_a_lesion_class_is_explained(make_napari_viewer, qtbot, tmp_path, errors):
    from napari_mtunet import layer_meta
    from napari_mtunet.widgets import PredictWidget

    ckpt = _checkpoint(tmp_path / "lesions" / "best.safetensors", classes=["benign", "malignant"])
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(2).integers(0, 255, (64, 64), dtype=np.uint8), name="scan")
    w = PredictWidget(viewer)
    w.checkpoint.value = str(ckpt)
    w.threshold.setValue(1.0)  # no pixel can be above it: an empty mask
    click(qtbot, w.predict_button)
    wait_idle(qtbot, w)
    assert errors == []
    labels = viewer.layers["scan [lesions/best]"]
    rec = layer_meta.read(labels.metadata)
    assert not labels.data.any() and rec.slices[0].predicted in ("benign", "malignant")
    status = w.status.plain_text()
    assert f"class {rec.slices[0].predicted}" in status and "no lesion above the threshold 1" in status, status
    assert "Predicted mask: empty (no lesion above the threshold 1)" in readout_text(w)


def test_folder_prediction_skips_masks_and_summarises_classes(make_napari_viewer, qtbot, tiny_checkpoint, tmp_path,
                                                              notifications):
    from PIL import Image

    from napari_mtunet.widgets import PredictWidget

    viewer = make_napari_viewer()
    rng = np.random.default_rng(1)
    src = tmp_path / "scans" / "in"
    src.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (50 + i, 60), dtype=np.uint8)).save(src / f"img{i}.png")
        Image.fromarray(np.zeros((50 + i, 60), np.uint8)).save(src / f"img{i}_mask.png")  # ground truth: skipped
    Image.fromarray(np.zeros((52, 60), np.uint8)).save(src / "img2_mask_1.png")
    (src / "notes.txt").write_text("not an image")
    w = PredictWidget(viewer)
    w.checkpoint.value = str(tiny_checkpoint)
    w.tabs.setCurrentIndex(w.tabs.indexOf(w.folder_button.parentWidget()))  # the user opens the Folder tab
    w.folder_in.value = str(src)
    w.folder_out.value = str(tmp_path / "results")
    click(qtbot, w.folder_button)
    wait_idle(qtbot, w)
    assert notifications["error"] == []
    rows = list(csv.DictReader(open(tmp_path / "results" / "predictions.csv", encoding="utf-8")))
    assert [Path(r["image"]).name for r in rows] == ["img0.png", "img1.png", "img2.png"]  # no *_mask* file
    assert all(r["status"] == "ok" and r["class"] in CLASSES for r in rows)
    counts = {c: sum(r["class"] == c for r in rows) for c in CLASSES if any(r["class"] == c for r in rows)}
    summary = notifications["info"][-1]
    assert "3 image(s) predicted" in summary
    assert "classes: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) in summary, summary
    masks = sorted(p.name for p in (tmp_path / "results" / "masks").iterdir() if not p.name.startswith("."))
    assert masks == [f"img{i}_pred.png" for i in range(3)]
    # a second run into the same folder never overwrites the first run's results
    first_csv = (tmp_path / "results" / "predictions.csv").read_text()
    click(qtbot, w.folder_button)
    wait_idle(qtbot, w)
    assert notifications["error"] == []
    assert (tmp_path / "results" / "predictions.csv").read_text() == first_csv
    assert len(list(csv.DictReader(open(tmp_path / "results" / "predictions-1.csv")))) == 3


def test_folder_output_rule_in_the_widget(make_napari_viewer, qtbot, tiny_checkpoint, tmp_path, busi_root,
                                          notifications):
    """Issue 21 point 6: a new folder beside or inside the inputs is fine; the input folder itself is refused,
    before anything is created; a rerun does not predict the earlier predictions."""
    import shutil

    from napari_mtunet.widgets import PredictWidget

    scans = tmp_path / "scans"
    for sub, names in (("old", ["benign (100).png", "malignant (103).png"]),
                       ("new", ["benign (105).png", "malignant (104).png"])):
        (scans / sub).mkdir(parents=True)
        for n in names:
            shutil.copy(busi_root / n.split(" (")[0] / n, scans / sub / n)
    viewer = make_napari_viewer()
    w = PredictWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.checkpoint.value = str(tiny_checkpoint)
    w.tabs.setCurrentIndex(w.tabs.indexOf(w.folder_button.parentWidget()))
    w.folder_in.value = str(scans / "new")
    # the input folder itself: refused at once, nothing written or created
    before = sorted(p.name for p in scans.rglob("*"))
    w.folder_out.value = str(scans / "new")
    click(qtbot, w.folder_button)
    wait_idle(qtbot, w)
    assert len(notifications["error"]) == 1 and "among the input files" in notifications["error"][0]
    assert sorted(p.name for p in scans.rglob("*")) == before
    # a sibling of the input folder (scans/ looks like one folder per class): fine
    w.folder_out.value = str(scans / "predictions")
    click(qtbot, w.folder_button)
    wait_idle(qtbot, w)
    assert len(notifications["error"]) == 1, notifications["error"]
    assert "2 image(s) predicted" in notifications["info"][-1]
    # a new folder inside the input folder: fine, and a rerun still predicts the 2 scans only
    w.folder_out.value = str(scans / "new" / "pred")
    for _ in range(2):
        click(qtbot, w.folder_button)
        wait_idle(qtbot, w)
        assert len(notifications["error"]) == 1, notifications["error"]
        assert "2 image(s) predicted" in notifications["info"][-1]
    # the predictions folder is never read as input
    w.folder_in.value = str(scans / "new" / "pred" / "masks")
    w.folder_out.value = str(tmp_path / "elsewhere")
    click(qtbot, w.folder_button)
    wait_idle(qtbot, w)
    assert "holds outputs of napari-mtunet" in notifications["error"][-1]
    assert not (tmp_path / "elsewhere").exists()
    assert w.folder_button.isEnabled()


def test_long_tiled_prediction_shows_progress_and_stops(make_napari_viewer, qtbot, tiny_checkpoint, errors):
    from napari_mtunet.widgets import PredictWidget

    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(3).integers(0, 255, (4096, 4096), dtype=np.uint8), name="slide")
    w = PredictWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.checkpoint.value = str(tiny_checkpoint)
    w.mode.setCurrentText("tiled")
    w.tile_size.setValue(64)
    n_layers = len(viewer.layers)
    assert not w.stop_button.isEnabled()
    click(qtbot, w.predict_button)
    assert w.stop_button.isEnabled() and not w.predict_button.isEnabled()
    qtbot.waitUntil(lambda: not w.progress.isHidden() and w.progress.value() >= 1, timeout=120_000)
    assert w.progress.maximum() > 20 and w.progress.text() == f"slide: {w.progress.value()}/{w.progress.maximum()} tile rows"
    assert "in tiles" in w.status.plain_text()
    click(qtbot, w.stop_button)
    done_at_stop = w.progress.value()
    wait_idle(qtbot, w, timeout=60_000)
    assert errors == []
    assert len(viewer.layers) == n_layers  # nothing half-done was added
    assert w.status.plain_text() == "Prediction stopped; no layer was added"
    assert done_at_stop < w.progress.maximum() - 2
    assert w.predict_button.isEnabled() and not w.stop_button.isEnabled() and w.progress.isHidden()


def test_gradcam_of_a_big_image_is_reduced_and_laid_over_it(make_napari_viewer, qtbot, tiny_checkpoint, errors):
    from napari_mtunet import layer_meta
    from napari_mtunet.widgets import PredictWidget

    viewer = make_napari_viewer()
    image = viewer.add_image(np.random.default_rng(4).integers(0, 255, (2500, 1800), dtype=np.uint8), name="big",
                             scale=(0.5, 0.25), translate=(10.0, -3.0))
    w = PredictWidget(viewer)
    w.checkpoint.value = str(tiny_checkpoint)
    w.mode.setCurrentText("resize")
    w.gradcam.setChecked(True)
    click(qtbot, w.predict_button)
    wait_idle(qtbot, w, timeout=120_000)
    assert errors == []
    cam = next(lyr for lyr in viewer.layers if (r := layer_meta.read(lyr.metadata)) is not None and r.kind == "gradcam")
    assert cam.name == "big [Grad-CAM busi-run/best]"
    assert max(cam.data.shape) <= 1024 and cam.data.dtype == np.float32  # not a 2500 x 1800 float copy

    def edges(layer):
        shape = np.asarray(layer.data.shape, float)
        scale, shift = np.asarray(layer.scale), np.asarray(layer.translate)
        return shift - 0.5 * scale, shift + (shape - 0.5) * scale

    for a, b in zip(edges(cam), edges(image)):
        np.testing.assert_allclose(a, b, atol=1e-9)
    labels = viewer.layers["big [busi-run/best]"]
    assert labels.data.shape == (2500, 1800) and tuple(labels.scale) == (0.5, 0.25)


def test_predict_errors_notify_and_widget_stays_usable(make_napari_viewer, qtbot, tiny_checkpoint, tmp_path, errors,
                                                       no_traceback):
    from napari_mtunet.widgets import PredictWidget

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((2, 3, 4, 5, 6), np.uint8), name="5d")
    w = PredictWidget(viewer)
    # no model
    click(qtbot, w.predict_button)
    assert errors and "choose a model" in errors[-1]
    # not a checkpoint (pickle refused, clear message from the core)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x80\x04junkjunkjunk")
    w.checkpoint.value = str(bad)
    click(qtbot, w.predict_button)
    wait_idle(qtbot, w)
    assert "pickle" in errors[-1] and "bad.safetensors" in errors[-1]
    # an array that is not an image
    w.checkpoint.value = str(tiny_checkpoint)
    click(qtbot, w.predict_button)
    wait_idle(qtbot, w)
    assert "shape" in errors[-1] and "5d" in errors[-1]
    assert w.predict_button.isEnabled()
    assert all("Traceback" not in e for e in errors)
    # still usable
    n = len(errors)
    viewer.add_image(np.zeros((64, 64), np.uint8), name="ok")
    w.image_layer.setCurrentText("ok")
    click(qtbot, w.predict_button)
    wait_idle(qtbot, w)
    assert len(errors) == n
    assert "ok [busi-run/best]" in viewer.layers


def test_predict_all_layers_rgb_and_float(make_napari_viewer, qtbot, tiny_checkpoint, errors):
    from napari_mtunet.widgets import PredictWidget

    viewer = make_napari_viewer()
    rng = np.random.default_rng(1)
    viewer.add_image(rng.integers(0, 255, (70, 70, 3), dtype=np.uint8), name="rgb", rgb=True)
    viewer.add_image(rng.random((64, 64)).astype(np.float32), name="float")
    w = PredictWidget(viewer)
    w.checkpoint.value = str(tiny_checkpoint)
    click(qtbot, w.predict_all_button)
    wait_idle(qtbot, w)
    assert errors == []
    assert viewer.layers["rgb [busi-run/best]"].data.shape == (70, 70)
    assert viewer.layers["float [busi-run/best]"].data.shape == (64, 64)
