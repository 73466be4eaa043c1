"""The bad-input corpus through the napari widgets: a notification, no traceback, the widget usable afterwards.

tests/test_widgets_*.py already cover the widgets' own argument errors (no
checkpoint, a pickle as checkpoint, a 5-D layer, a non-dataset folder, wrong
learning rate ...).  Here the files and arrays of
tests/test_bad_inputs.py reach the Dataset, Predict and Annotate
widgets.  "No traceback" = no napari ErrorNotification (what an uncaught
exception becomes, shown with its traceback) and no exception escaping a Qt
callback (pytest-qt fails the test on those).
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")
pytestmark = pytest.mark.gui

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_fixtures import make_generic  # noqa: E402
from test_bad_inputs import BAD_IMAGES  # noqa: E402

CLASSES = ["a", "b", "c"]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    import torch

    from napari_mtunet.checkpoint import save_checkpoint
    from napari_mtunet.config import ModelConfig, Preprocessing
    from napari_mtunet.model import build_model

    torch.manual_seed(0)
    model = build_model(
        ModelConfig(encoder_weights=None, class_names=CLASSES, encoder_depth=3, decoder_channels=(16, 16, 16)),
        Preprocessing(image_size=32),
    )
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors", model)


def wait_idle(qtbot, widget, timeout=60_000):
    qtbot.waitUntil(lambda: not widget.busy, timeout=timeout)


def _bad_dataset(root: Path) -> Path:
    make_generic(root, n=9)
    rows = []
    for name, (build, _, _) in BAD_IMAGES.items():
        build(root / "images" / name)
        rows.append([name, "a", f"bad_{name}"])
    with open(root / "labels.csv", "a", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return root


def test_dataset_widget_reports_every_bad_file_and_stays_usable(make_napari_viewer, qtbot, tmp_path, errors,
                                                                no_traceback):
    from napari_mtunet.widgets import DatasetWidget

    root = _bad_dataset(tmp_path / "bad")
    viewer = make_napari_viewer()
    w = DatasetWidget(viewer)
    # lenient: loads, lists each bad file, no error notification
    w.root.value = str(root)
    w.load()
    wait_idle(qtbot, w)
    assert errors == [], errors
    listed = " ".join(w.problems.item(i).text() for i in range(w.problems.count()))
    for name in BAD_IMAGES:
        assert name in listed, name
    assert "samples: 9" in w.summary.toPlainText()
    # strict: one notification naming the bad files
    w.strict.setChecked(True)
    w.load()
    wait_idle(qtbot, w)
    assert len(errors) == 1 and "trunc_png.png" in errors[0] and "zero_byte.png" in errors[0]
    # an empty folder and a folder of unrelated files
    empty = tmp_path / "empty"
    empty.mkdir()
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("x")
    for folder in (empty, junk, tmp_path / "does_not_exist"):
        w.root.value = str(folder)
        w.load()
        wait_idle(qtbot, w)
        assert folder.name in errors[-1], errors[-1]
    assert w.load_button.isEnabled()
    # still usable: a good dataset loads
    n = len(errors)
    good = make_generic(tmp_path / "good", n=9)
    w.strict.setChecked(False)
    w.root.value = str(good)
    w.load()
    wait_idle(qtbot, w)
    assert len(errors) == n and "samples: 9" in w.summary.toPlainText()


def test_predict_widget_bad_layers_and_bad_files(make_napari_viewer, qtbot, tiny_checkpoint, tmp_path, errors,
                                                 no_traceback):
    from napari_mtunet.widgets import PredictWidget

    viewer = make_napari_viewer()
    inf = np.random.default_rng(0).random((40, 40)).astype(np.float32)
    inf[3, 3] = np.inf
    viewer.add_image(inf, name="has_inf")
    viewer.add_image(np.zeros((2, 3, 16, 16), np.uint8), name="four_d")
    w = PredictWidget(viewer)
    w.set_checkpoint(tiny_checkpoint)
    for name, text in (("has_inf", "infinite"), ("four_d", "shape")):
        w.image_layer.setCurrentText(name)
        w.predict()
        wait_idle(qtbot, w)
        assert errors and name in errors[-1] and text in errors[-1], errors
        assert w.predict_button.isEnabled()
    # a folder mixing good and broken files: the good ones are predicted, the bad ones listed
    src = tmp_path / "in"
    src.mkdir()
    from PIL import Image

    for i in range(2):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (30, 40), dtype=np.uint8)).save(src / f"ok{i}.png")
    bad_names = ["trunc_png.png", "zero_byte.png", "error_page.png", "nan_pixels.tif"]
    for name in bad_names:
        BAD_IMAGES[name][0](src / name)
    n = len(errors)
    w.folder_in.value = str(src)
    w.folder_out.value = str(tmp_path / "out")
    w.predict_folder()
    wait_idle(qtbot, w)
    rows = list(csv.DictReader(open(tmp_path / "out" / "predictions.csv")))
    assert sorted(Path(r["image"]).name for r in rows if r["status"] == "ok") == ["ok0.png", "ok1.png"]
    failures = " ".join(w.last_result.failures)
    for name in bad_names:
        assert name in failures, failures
    assert len(errors) == n  # a partial success is not an error dialog
    # still usable
    viewer.add_image(np.zeros((33, 47), np.uint8), name="fine")
    w.image_layer.setCurrentText("fine")
    w.predict()
    wait_idle(qtbot, w)
    assert len(errors) == n and f"fine [{tiny_checkpoint.parent.name}/tiny]" in viewer.layers


def test_annotate_widget_refuses_bad_pixels_and_stays_usable(make_napari_viewer, qtbot, tmp_path, errors,
                                                             no_traceback):
    from napari_mtunet.widgets import AnnotateWidget

    viewer = make_napari_viewer()
    img = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    img[0, 0] = np.nan
    viewer.add_image(img, name="scan")
    w = AnnotateWidget(viewer)
    w.set_class_names(CLASSES)
    labels = w.new_labels()
    labels.data = np.zeros((32, 32), np.uint8)
    labels.data[4:9, 4:9] = 1
    labels.refresh()
    w.class_choice.setCurrentText("a")
    root = tmp_path / "set"
    w.dataset_root.value = str(root)
    w.add_to_training_set()
    wait_idle(qtbot, w)
    assert errors and "NaN" in errors[-1], errors
    assert not (root / "labels.csv").exists()  # nothing half-added
    assert w.add_button.isEnabled()
    # fix the pixels: the same widget adds the sample
    n = len(errors)
    viewer.layers["scan"].data = np.nan_to_num(img)
    w.add_to_training_set()
    wait_idle(qtbot, w)
    assert len(errors) == n
    rows = list(csv.reader(open(root / "labels.csv")))
    assert len(rows) == 2 and rows[1][1] == "a"
