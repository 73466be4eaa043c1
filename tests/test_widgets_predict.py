"""Predict widget: a NEW Labels layer with class metadata; readout per slice; folder batch; errors."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from qtpy.QtCore import Qt

pytest.importorskip("napari")
pytestmark = pytest.mark.gui

CLASSES = ["benign", "malignant", "normal"]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    import torch

    from napari_mtunet.checkpoint import save_checkpoint
    from napari_mtunet.config import ModelConfig, Preprocessing
    from napari_mtunet.model import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(encoder_weights=None, class_names=CLASSES), Preprocessing(image_size=64))
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors", model)




def wait_idle(qtbot, widget, timeout=60_000):
    qtbot.waitUntil(lambda: widget.worker is None, timeout=timeout)


def test_predict_adds_labels_with_metadata(make_napari_viewer, qtbot, tiny_checkpoint, errors):
    from napari_mtunet.widgets import PredictWidget

    viewer = make_napari_viewer()
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (80, 96), dtype=np.uint8)
    image = viewer.add_image(img.copy(), name="us")
    w = PredictWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.set_checkpoint(tiny_checkpoint)
    assert "mobilenet_v2" in w.model_info.text()
    w.image_layer.setCurrentText("us")
    qtbot.mouseClick(w.predict_button, Qt.MouseButton.LeftButton)
    wait_idle(qtbot, w)
    assert errors == []
    labels = viewer.layers["us [mtunet]"]
    assert labels.data.shape == (80, 96) and labels.data.dtype == np.uint8
    meta = labels.metadata["mtunet"]
    assert meta["class_name"] in CLASSES
    assert set(meta["class_probabilities"]) == set(CLASSES)
    assert meta["model_name"] == "tiny.safetensors" and len(meta["model_hash"]) == 64
    assert meta["threshold"] == 0.5 and meta["source_layer"] == "us"
    np.testing.assert_array_equal(image.data, img)  # the image is never modified
    assert w.readout.current_class() == meta["class_name"]
    assert len(w.readout.bars) == 3


def test_predict_stack_per_slice_and_readout_follows_dims(make_napari_viewer, qtbot, tiny_checkpoint, errors):
    from napari_mtunet.sample_data import make_phantom
    from napari_mtunet.widgets import PredictWidget

    viewer = make_napari_viewer()
    ph = make_phantom(n=4, size=64, seed=1)
    viewer.add_image(ph.images, name="stack")
    w = PredictWidget(viewer)
    w.set_checkpoint(tiny_checkpoint)
    w.threshold.setValue(0.3)
    w.gradcam.setChecked(False)
    w.predict()
    wait_idle(qtbot, w)
    assert errors == []
    labels = viewer.layers["stack [mtunet]"]
    meta = labels.metadata["mtunet"]
    assert labels.data.shape == (4, 64, 64)
    assert meta["is_stack"] and len(meta["slices"]) == 4 and len(meta["classes"]) == 4
    assert meta["threshold"] == pytest.approx(0.3)
    for i in (0, 3, 1):
        viewer.dims.set_current_step(0, i)
        probs = meta["slices"][i]["class_probabilities"]
        assert w.readout.current_class() == meta["slices"][i]["class_name"]
        shown = {n: b.value() / 1000 for n, b in w.readout.bars.items()}
        assert shown == pytest.approx(probs, abs=1e-3)


def test_predict_rgb_all_layers_and_folder(make_napari_viewer, qtbot, tiny_checkpoint, tmp_path, errors):
    from skimage.io import imsave

    from napari_mtunet.widgets import PredictWidget

    viewer = make_napari_viewer()
    rng = np.random.default_rng(1)
    viewer.add_image(rng.integers(0, 255, (70, 70, 3), dtype=np.uint8), name="rgb", rgb=True)
    viewer.add_image(rng.random((64, 64)).astype(np.float32), name="float")
    w = PredictWidget(viewer)
    w.set_checkpoint(tiny_checkpoint)
    w.predict_all()
    wait_idle(qtbot, w)
    assert errors == []
    assert viewer.layers["rgb [mtunet]"].data.shape == (70, 70)
    assert viewer.layers["float [mtunet]"].data.shape == (64, 64)

    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        imsave(src / f"img{i}.png", rng.integers(0, 255, (50 + i, 60), dtype=np.uint8), check_contrast=False)
    (src / "notes.txt").write_text("not an image")
    w.folder_in.value = str(src)
    w.folder_out.value = str(tmp_path / "out")
    w.predict_folder()
    wait_idle(qtbot, w)
    assert errors == []
    rows = list(csv.DictReader(open(tmp_path / "out" / "predictions.csv")))
    assert [r["filename"] for r in rows] == ["img0.png", "img1.png", "img2.png"]
    assert all(r["class"] in CLASSES for r in rows)
    assert sorted(p.name for p in (tmp_path / "out" / "masks").iterdir()) == ["img0.png", "img1.png", "img2.png"]
    # a second run into the same folder never overwrites the first run's results
    first_csv = (tmp_path / "out" / "predictions.csv").read_text()
    w.predict_folder()
    wait_idle(qtbot, w)
    assert errors == []
    assert (tmp_path / "out" / "predictions.csv").read_text() == first_csv
    assert len(list(csv.DictReader(open(tmp_path / "out" / "predictions-1.csv")))) == 3
    assert len(list((tmp_path / "out" / "masks").iterdir())) == 6


def test_predict_errors_notify_and_widget_stays_usable(make_napari_viewer, qtbot, tiny_checkpoint, tmp_path, errors):
    from napari_mtunet.widgets import PredictWidget

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((2, 3, 4, 5, 6), np.uint8), name="5d")
    w = PredictWidget(viewer)
    # no checkpoint
    w.predict()
    assert errors and "checkpoint" in errors[-1]
    # not a checkpoint (pickle refused, clear message from the core)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x80\x04junkjunkjunk")
    w.set_checkpoint(bad)
    w.predict()
    wait_idle(qtbot, w)
    assert "pickle" in errors[-1]
    # an array that is not an image
    w.set_checkpoint(tiny_checkpoint)
    w.predict()
    wait_idle(qtbot, w)
    assert "shape" in errors[-1] and "5d" in errors[-1]
    assert w.predict_button.isEnabled()
    # still usable
    n = len(errors)
    viewer.add_image(np.zeros((64, 64), np.uint8), name="ok")
    w.image_layer.setCurrentText("ok")
    w.predict()
    wait_idle(qtbot, w)
    assert len(errors) == n
    assert "ok [mtunet]" in viewer.layers
