"""Every widget builds in a (proxied) viewer; Dataset widget; Grad-CAM layer."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytestmark = pytest.mark.gui


@pytest.mark.parametrize("name", ["Dataset", "Train", "Predict", "Annotate & fine-tune"])
def test_each_widget_docks_through_the_plugin(make_napari_viewer_proxy, name):
    viewer = make_napari_viewer_proxy()
    viewer.add_image(np.zeros((32, 32), np.uint8), name="img")
    dock, widget = viewer.window.add_plugin_dock_widget("napari-mtunet", name)
    assert widget is not None and dock is not None


def test_widgets_direct_construction(make_napari_viewer):
    from napari_mtunet.widgets import AnnotateWidget, DatasetWidget, PredictWidget, TrainWidget

    viewer = make_napari_viewer()
    for cls in (DatasetWidget, TrainWidget, PredictWidget, AnnotateWidget):
        w = cls(viewer)
        viewer.window.add_dock_widget(w, name=cls.__name__)
    t = TrainWidget(viewer)
    assert t.device.itemText(0) == "auto" and "cpu" in [t.device.itemText(i) for i in range(t.device.count())]
    assert t.w_seg.value() == 5.0 and t.w_cls.value() == 1.0  # paper default 5:1


def test_dataset_widget_load_preview_and_split(make_napari_viewer, qtbot, tmp_path, errors):
    from napari_mtunet.sample_data import write_phantom_dataset
    from napari_mtunet.widgets import DatasetWidget, TrainWidget

    root = write_phantom_dataset(tmp_path / "ph", n=9, size=64, seed=1)
    (root / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    viewer = make_napari_viewer()
    w = DatasetWidget(viewer)
    train = TrainWidget(viewer)
    w.root.value = str(root)
    w.load()
    qtbot.waitUntil(lambda: not w.busy, timeout=60_000)
    assert errors == [], errors
    assert "samples: 9" in w.summary.toPlainText()
    assert w.problems.count() >= 1 and "broken.png" in " ".join(w.problems.item(i).text() for i in range(w.problems.count()))
    w.n_preview.setValue(6)
    w.preview()
    qtbot.waitUntil(lambda: not w.busy, timeout=60_000)
    assert viewer.layers["ph images"].data.shape == (6, 256, 256)
    from napari_mtunet import layer_meta

    rec = layer_meta.read(viewer.layers["ph masks"].metadata)
    assert rec.kind == "dataset" and len(rec.slices) == 6 and all(s.truth for s in rec.slices)
    # the ground-truth class of the slice on screen is visible without another widget
    viewer.dims.set_current_step(0, 2)
    assert viewer.text_overlay.visible and f"ground truth {rec.slices[2].truth}" in viewer.text_overlay.text
    w.val_fraction.setValue(0.2)
    w.seed.setValue(4)
    w.strict.setChecked(True)
    w.use_for_training()
    assert train.data_root.value == str(root)
    assert train.val_fraction.value() == pytest.approx(0.2) and train.seed.value() == 4
    assert train.form().to_run().data.strict is True  # the Dataset widget's "strict" reaches training
    w.strict.setChecked(False)
    # errors: a folder that is not a dataset
    w.root.value = str(tmp_path)
    w.strict.setChecked(True)
    w.load()
    qtbot.waitUntil(lambda: not w.busy, timeout=60_000)
    assert errors and "Cannot load" in errors[-1]
    assert w.load_button.isEnabled()


def test_gradcam_layer_is_additive_and_aligned(make_napari_viewer, qtbot, tmp_path, errors):
    import torch

    from napari_mtunet.checkpoint import save_checkpoint
    from napari_mtunet.config import ModelConfig, Preprocessing
    from napari_mtunet.model import build_model
    from napari_mtunet.widgets import PredictWidget

    torch.manual_seed(0)
    model = build_model(ModelConfig(encoder_weights=None, num_classes=2), Preprocessing(image_size=64))
    ckpt = save_checkpoint(tmp_path / "m.safetensors", model)
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(0).random((90, 70)).astype(np.float32), name="x", scale=(0.5, 2.0))
    w = PredictWidget(viewer)
    w.set_checkpoint(ckpt)
    w.gradcam.setChecked(True)
    w.predict()
    qtbot.waitUntil(lambda: not w.busy, timeout=60_000)
    assert errors == [], errors
    from napari_mtunet import layer_meta

    kinds = {layer_meta.read(lyr.metadata).kind: lyr for lyr in viewer.layers if layer_meta.read(lyr.metadata)}
    cam, labels = kinds["gradcam"], kinds["prediction"]
    from napari_mtunet.widgets._layers import short_model_name

    model = short_model_name(f"{tmp_path.name}/m")  # the run folder and file, elided in front when long
    assert cam.name == f"x [Grad-CAM {model}]" and labels.name == f"x [{model}]"  # named by model
    assert cam.data.shape == (90, 70) and cam.blending == "additive"
    assert 0.0 <= cam.data.min() and cam.data.max() <= 1.0
    assert tuple(cam.scale) == (0.5, 2.0) and tuple(labels.scale) == (0.5, 2.0)


def test_dataset_previews_keep_the_aspect_ratio(make_napari_viewer, qtbot, tmp_path, errors):
    """A 64 x 128 image is shown 128 x 256 inside the 256-px preview square, with black margins."""
    from PIL import Image

    from napari_mtunet.widgets import DatasetWidget

    root = tmp_path / "wide"
    for cls in ("benign", "malignant"):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((64, 128), 200, np.uint8)).save(root / cls / f"{cls}_{i}.png")
    viewer = make_napari_viewer()
    w = DatasetWidget(viewer)
    w.root.value = str(root)
    w.load()
    qtbot.waitUntil(lambda: not w.busy, timeout=60_000)
    w.n_preview.setValue(4)
    w.preview()
    qtbot.waitUntil(lambda: not w.busy, timeout=60_000)
    assert errors == [], errors
    images = viewer.layers["wide images"].data
    assert images.shape[1:3] == (256, 256)
    rows = np.flatnonzero(images[0].reshape(256, -1).max(axis=1))
    cols = np.flatnonzero(images[0].reshape(256, 256, -1).max(axis=(0, 2)))
    assert (rows.min(), rows.max()) == (64, 191) and (cols.min(), cols.max()) == (0, 255)
    assert "aspect ratio kept" in w.status.plain_text()


def test_sample_data_shows_its_classes_without_a_widget(make_napari_viewer):
    """File > Open Sample: the ground-truth class of the slice on screen is in the canvas overlay."""
    from napari_mtunet import layer_meta
    from napari_mtunet.widgets._overlay import text_overlay

    viewer = make_napari_viewer()
    viewer.open_sample("napari-mtunet", "phantom")
    rec = layer_meta.read(viewer.layers["phantom lesions"].metadata)
    assert rec.kind == "sample" and len(rec.slices) == 12
    for i in (0, 5):
        viewer.dims.set_current_step(0, i)
        text = text_overlay(viewer).text
        assert text_overlay(viewer).visible and f"[{i}]\nground truth {rec.slices[i].truth}" in text, text


def test_layout_names_match_the_readers():
    """The widgets list the layouts from a constant (importing the readers on the GUI thread took ~0.2 s)."""
    from napari_mtunet.data.layouts import LAYOUTS
    from napari_mtunet.forms import LAYOUT_NAMES

    assert list(LAYOUT_NAMES) == list(LAYOUTS)
