"""Segment object: clicks and a box -> one object's mask and class -> committed
objects, one label each -> the training set.

- the session logic without Qt: pixels of clicks and boxes, generations, results known for a prefix of the
  clicks (undo without running the model again, the previous mask of the next request), stale results never
  shown, committed objects never overwritten;
- in a real napari window: a click on the canvas (Qt mouse events, as a user's) changes the object's mask on a
  real BUSI image; Shift+click is a negative (red) point; keys C / U / Shift+C / T; commit gives each object its
  own label id; stale results are dropped; stacks slice by slice; every error is one clear notification;
  committed objects go to the Annotate & fine-tune training set with a confirmed class;
- the Train widget's "interactive" option reaches the run config (``model.prompts``) and the checkpoint;
- the latency benchmark runs (``--quick``).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from napari_mtunet.segment_session import (
    ObjectMask,
    ObjectResult,
    ObjectSession,
    SegmentError,
    box_of,
    check_label_id,
    free_pixels,
    next_label_id,
    pixel_of,
)

CLASSES = ["benign", "malignant", "normal"]


# --------------------------------------------------------------------------- the session, without Qt


def _result(session: ObjectSession, request, mask: np.ndarray, cls: str = "benign") -> ObjectResult:
    return ObjectResult(generation=request.generation, n_clicks=len(request.points), box=request.box,
                        mask=ObjectMask.from_full(mask), class_name=cls, class_names=CLASSES,
                        class_probabilities=[0.7, 0.2, 0.1])


def test_clicks_and_boxes_become_pixels_of_the_image():
    # napari draws pixel i from i - 0.5 to i + 0.5
    assert pixel_of(3.4, 7.6, (10, 10)) == (3, 8)
    assert pixel_of(-0.49, 9.49, (10, 10)) == (0, 9)
    with pytest.raises(SegmentError, match=r"row 12, column 3 lies outside the image \(10 x 10 pixels\)"):
        pixel_of(12.0, 3.0, (10, 10))
    with pytest.raises(SegmentError, match="outside"):
        pixel_of(-0.6, 3.0, (10, 10))
    # a rectangle covers the pixels whose centres lie inside it; ends exclusive; clipped to the image
    corners = np.array([[1.7, 2.2], [1.7, 5.6], [4.4, 5.6], [4.4, 2.2]])
    assert box_of(corners, (10, 10)) == (2, 3, 5, 6)
    assert box_of(np.array([[-5.0, -5.0], [3.0, 20.0]]), (10, 10)) == (0, 0, 4, 10)
    with pytest.raises(SegmentError, match="lies outside"):
        box_of(np.array([[20.0, 20.0], [30.0, 30.0]]), (10, 10))


def test_generations_known_results_and_undo_without_running_the_model_again():
    s = ObjectSession((20, 20))
    assert s.request() is None and s.current() is None  # nothing to run without prompts
    assert s.set_prompts([(5, 5, True)], None)
    r1 = s.request()
    assert r1.points == [(5, 5, True)] and r1.previous is None and r1.generation == 1
    m1 = np.zeros((20, 20), np.uint8)
    m1[3:8, 3:8] = 1
    assert s.accept(r1, _result(s, r1, m1))
    assert s.request() is None and s.current().mask.area == 25
    assert not s.set_prompts([(5, 5, True)], None)  # unchanged prompts: no new generation
    # a second click corrects the first mask: it is passed as the previous mask
    s.set_prompts([(5, 5, True), (7, 7, False)], None)
    r2 = s.request()
    np.testing.assert_array_equal(r2.previous.full(), m1)
    m2 = m1.copy()
    m2[7, 7] = 0
    assert s.accept(r2, _result(s, r2, m2))
    # undo: the mask of one click fewer is known -- shown at once, nothing to run
    s.set_prompts([(5, 5, True)], None)
    assert s.request() is None
    np.testing.assert_array_equal(s.current().mask.full(), m1)
    # an earlier click moved: results after it are void, those before it kept
    s.set_prompts([(5, 5, True), (9, 9, True)], None)
    s.accept(s.request(), _result(s, s.request(), m1))
    s.set_prompts([(6, 6, True), (9, 9, True)], None)
    assert s.request().previous is None
    # a new box voids every result (the masks were made for another box)
    s.set_prompts([(6, 6, True)], (2, 2, 10, 10))
    assert s.request().previous is None and s.request().box == (2, 2, 10, 10)


def test_stale_results_are_never_shown_but_serve_as_the_previous_mask():
    s = ObjectSession((20, 20))
    s.set_prompts([(5, 5, True)], None)
    r1 = s.request()
    s.set_prompts([(5, 5, True), (9, 9, True)], None)  # a second click while the first runs
    m1 = np.zeros((20, 20), np.uint8)
    m1[4:7, 4:7] = 1
    assert not s.accept(r1, _result(s, r1, m1))  # stale: not shown ...
    assert s.current() is None
    r2 = s.request()
    np.testing.assert_array_equal(r2.previous.full(), m1)  # ... but the next request corrects it
    # a result for prompts that are no longer a prefix (the click was removed, another added) is dropped
    s.set_prompts([(5, 5, True), (1, 1, False)], None)
    assert not s.accept(r2, _result(s, r2, m1))
    assert s.request().previous.area == m1.sum()  # still the one-click mask, not r2's
    # the image changed: results of requests made before are void even for the same prompts
    r3 = s.request()
    s.invalidate()
    assert not s.accept(r3, _result(s, r3, m1)) and s.current() is None


def test_committed_objects_keep_their_pixels_and_ids_count_up():
    labels = np.zeros((6, 6), np.uint16)
    labels[1:3, 1:3] = 1
    mask = np.zeros((6, 6), np.uint8)
    mask[2:5, 2:5] = 1
    (rows, cols), kept = free_pixels(labels, ObjectMask.from_full(mask))
    assert kept == 1 and len(rows) == 8 and not labels[rows, cols].any()
    assert next_label_id(labels) == 2 and next_label_id(np.zeros((2, 2), np.uint8)) == 1
    check_label_id(255, np.uint8)
    with pytest.raises(SegmentError, match="does not fit"):
        check_label_id(256, np.uint8)
    with pytest.raises(SegmentError, match="does not fit the labels layer"):
        free_pixels(np.zeros((5, 5), np.uint8), ObjectMask.from_full(mask))
    # a mask kept as its region and crop comes back whole
    m = ObjectMask.from_full(mask, (1, 1, 6, 6))
    np.testing.assert_array_equal(m.full(), mask)
    assert m.bounds() == (2, 2, 5, 5) and m.area == 9


def test_train_form_interactive_is_the_run_configs_model_prompts():
    from napari_mtunet.config import ConfigError
    from napari_mtunet.forms import TrainForm

    assert TrainForm(root="/data", interactive=False).to_run().model.prompts is False
    assert TrainForm(root="/data").to_run().model.prompts is True  # the default (cpu) preset trains interactive
    assert TrainForm.from_dict(TrainForm(interactive=True).to_dict()).interactive is True
    with pytest.raises(ConfigError, match="segmentation head"):
        TrainForm(root="/data", interactive=True, task="cls").to_run()


# --------------------------------------------------------------------------- in napari


def _checkpoint(path: Path, prompts: bool) -> Path:
    import torch

    from napari_mtunet.checkpoint import save_checkpoint
    from napari_mtunet.config import ModelConfig, Preprocessing
    from napari_mtunet.model import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(encoder_weights=None, prompts=prompts, class_names=CLASSES),
                        Preprocessing(image_size=64))
    path.parent.mkdir(parents=True, exist_ok=True)
    return Path(save_checkpoint(path, model))


@pytest.fixture(scope="module")
def interactive_ckpt(tmp_path_factory):
    return _checkpoint(tmp_path_factory.mktemp("seg") / "busi-interactive" / "best.safetensors", True)


@pytest.fixture(scope="module")
def plain_ckpt(tmp_path_factory):
    return _checkpoint(tmp_path_factory.mktemp("seg") / "busi-plain" / "best.safetensors", False)


def _dock(viewer, qtbot, checkpoint=None):
    from napari_mtunet.widgets import SegmentWidget

    w = SegmentWidget(viewer)
    viewer.window.add_dock_widget(w, name="Segment object")
    if checkpoint is not None:
        w.checkpoint.value = str(checkpoint)
    qtbot.waitUntil(lambda: bool(w._layers) or w._target is None and not len(w.image_layer.layers()), timeout=10_000)
    return w


def _wait(qtbot, w, timeout=180_000):
    """Until the prompts on screen have their mask shown (or failed)."""
    def done():
        s = w._sessions.get(w._slice_on_screen())
        return w._in_flight is None and (s is None or s.empty or s.current() is not None
                                         or w._failed is not None)
    qtbot.waitUntil(done, timeout=timeout)


def _canvas_click(viewer, row: float, col: float, shift: bool = False) -> None:
    """A user's click on napari's canvas at image pixel (row, col) (Qt mouse press and release)."""
    from qtpy.QtCore import QPoint, Qt
    from qtpy.QtTest import QTest

    canvas = viewer.window._qt_viewer.canvas
    x, y = canvas.view.scene.transform.map([col, row])[:2]
    pos = QPoint(int(round(x)), int(round(y)))
    mods = Qt.KeyboardModifier.ShiftModifier if shift else Qt.KeyboardModifier.NoModifier
    native = canvas._scene_canvas.native
    QTest.mousePress(native, Qt.MouseButton.LeftButton, mods, pos)
    QTest.mouseRelease(native, Qt.MouseButton.LeftButton, mods, pos)


def _key(viewer, key, shift: bool = False) -> None:
    """A key press on the canvas (napari routes it to the active layer's and the viewer's key bindings)."""
    from qtpy.QtCore import Qt
    from qtpy.QtTest import QTest

    mods = Qt.KeyboardModifier.ShiftModifier if shift else Qt.KeyboardModifier.NoModifier
    QTest.keyClick(viewer.window._qt_viewer.canvas._scene_canvas.native, key, mods)


def _deepest(mask: np.ndarray) -> tuple[int, int]:
    from scipy import ndimage

    d = ndimage.distance_transform_edt(mask)
    r, c = np.unravel_index(int(np.argmax(d)), mask.shape)
    return int(r), int(c)


@pytest.mark.gui
def test_a_click_on_the_canvas_segments_the_object_on_a_real_image(make_napari_viewer, qtbot, interactive_ckpt,
                                                                     busi_root, errors, no_traceback):
    from qtpy.QtCore import Qt

    from napari_mtunet.data.io import read_image, read_mask

    name = "benign (108)"
    image = read_image(busi_root / "benign" / f"{name}.png")
    truth = read_mask(busi_root / "benign" / f"{name}_mask.png") > 0
    viewer = make_napari_viewer(show=True)
    layer = viewer.add_image(image.copy(), name=name)
    w = _dock(viewer, qtbot, interactive_ckpt)
    assert [lyr.name for lyr in viewer.layers] == [name, f"{name} [object]", f"{name} [box]", f"{name} [clicks]"]
    clicks, obj = viewer.layers[f"{name} [clicks]"], viewer.layers[f"{name} [object]"]
    assert viewer.layers.selection.active is clicks and clicks.mode == "add"
    assert "interactive" in w.model_info.text()
    viewer.reset_view()
    want = _deepest(truth)
    _canvas_click(viewer, *want)
    assert len(clicks.data) == 1
    r, c = pixel_of(*clicks.data[0], truth.shape)  # the pixel under the mouse (a screen pixel is > 1 image pixel)
    assert abs(r - want[0]) <= 1 and abs(c - want[1]) <= 1
    _wait(qtbot, w)
    assert errors == []
    first = np.asarray(obj.data).copy()
    assert first[r, c] == 1 and first.sum() > 1  # the mask changed: the object around the click
    assert list(clicks.features["prompt"]) == ["positive"]
    np.testing.assert_allclose(clicks.face_color[0], [0, 1, 0, 1])  # green
    result = w.readout.result
    assert result.class_name in CLASSES and abs(sum(result.class_probabilities) - 1) < 1e-4
    assert result.class_name in w.readout.text() and "pixels" in w.readout.text()
    assert [n for n, _ in w.readout.bars.values] == CLASSES
    # Shift+click: a negative point (red) on a pixel of the mask; the mask changes and leaves that pixel out
    inside = np.argwhere(first > 0)
    far = inside[np.abs(inside - [r, c]).max(axis=1) >= 8]  # clear of the positive click's disk
    nr, nc = (int(v) for v in far[len(far) // 2]) if len(far) else (r, c + 20)
    _canvas_click(viewer, nr, nc, shift=True)
    nr, nc = pixel_of(*clicks.data[1], truth.shape)
    _wait(qtbot, w)
    second = np.asarray(obj.data)
    assert list(clicks.features["prompt"]) == ["positive", "negative"]
    np.testing.assert_allclose(clicks.face_color[1], [1, 0x20 / 255, 0x20 / 255, 1], atol=1e-3)  # red
    assert second[nr, nc] == 0 and second[r, c] == 1
    assert not np.array_equal(first, second) or first[nr, nc] == 0
    # the sign of a Shift-click held for that click only; T turns the next clicks negative
    assert w._positive_next and clicks.feature_defaults["prompt"][0] == "positive"
    _key(viewer, Qt.Key.Key_T)
    assert not w._positive_next and clicks.feature_defaults["prompt"][0] == "negative"
    assert "negative" in w.toggle_button.text()
    np.testing.assert_array_equal(layer.data, image)  # the user's image is never modified
    assert w.stats["images_sent"] == 1  # the image crossed to the compute process once
    assert errors == []


@pytest.mark.gui
def test_commit_undo_clear_and_keys(make_napari_viewer, qtbot, interactive_ckpt, errors, no_traceback):
    from qtpy.QtCore import Qt

    from napari_mtunet import layer_meta

    viewer = make_napari_viewer(show=True)
    rng = np.random.default_rng(1)
    viewer.add_image(rng.integers(0, 255, (96, 128), dtype=np.uint8), name="us")
    w = _dock(viewer, qtbot, interactive_ckpt)
    clicks, obj = viewer.layers["us [clicks]"], viewer.layers["us [object]"]
    assert {str(k) for k in viewer.keymap} == {"C", "U", "Shift+C", "T"}

    clicks.add([30, 40])  # a point added as napari's Points layer adds a user's click
    _wait(qtbot, w)
    assert obj.data[30, 40] == 1
    _key(viewer, Qt.Key.Key_C)  # commit
    objects = viewer.layers["us [objects]"]
    assert objects.data.dtype == np.uint16 and set(np.unique(objects.data)) == {0, 1}
    assert objects.data[30, 40] == 1
    assert len(clicks.data) == 0 and not obj.data.any()  # ready for the next object
    rec = layer_meta.read(objects.metadata)
    assert rec.kind == "annotation" and rec.source_layer == "us" and rec.extra["segment"] is True
    (o1,) = rec.extra["segment_objects"]
    assert o1["label"] == 1 and o1["class"] in CLASSES and o1["pixels"] == int((objects.data == 1).sum())
    assert rec.slices[0].predicted == o1["class"] and rec.slices[0].label_source == "predicted"
    assert viewer.layers.selection.active is clicks  # the new layer did not take the clicks away
    first_object = objects.data == 1

    # a second object next to it: its own id, the first object's pixels untouched
    clicks.add([60, 90])
    _wait(qtbot, w)
    w.commit_button.click()
    assert set(np.unique(objects.data)) == {0, 1, 2} and objects.data[60, 90] == 2
    np.testing.assert_array_equal(objects.data == 1, first_object)
    assert [o.label for o in w.objects] == [1, 2]

    # undo the last click: the mask it replaced shows again, without running the model
    clicks.add([20, 100])
    _wait(qtbot, w)
    one_click = np.asarray(obj.data).copy()
    clicks.add([40, 110])
    _wait(qtbot, w)
    requests = w.stats["requests"]
    _key(viewer, Qt.Key.Key_U)
    _wait(qtbot, w)
    assert len(clicks.data) == 1 and w.stats["requests"] == requests
    np.testing.assert_array_equal(obj.data, one_click)
    # clear (Shift+C): no prompts, no uncommitted mask; the committed objects stay
    _key(viewer, Qt.Key.Key_C, shift=True)
    assert len(clicks.data) == 0 and not obj.data.any() and set(np.unique(objects.data)) == {0, 1, 2}
    # nothing to commit: one clear notification
    _key(viewer, Qt.Key.Key_C)
    assert errors == ["Cannot commit: nothing to commit: click on an object (or draw a box around it) first"]

    # a box (the Shapes layer) segments too; a new box replaces the old one
    box = viewer.layers["us [box]"]
    box.add_rectangles(np.array([[10, 10], [40, 50]]))
    _wait(qtbot, w)
    assert w._sessions[None].box == (10, 10, 41, 51) and obj.data.any()
    assert not obj.data[:, 60:].any() and not obj.data[60:].any()  # the region around the box
    box.add_rectangles(np.array([[50, 60], [80, 120]]))
    _wait(qtbot, w)
    assert len(box.data) == 1 and w._sessions[None].box == (50, 60, 81, 121)

    # closing the dock unbinds the keys and removes the widget's own layers; the committed objects stay
    viewer.window.remove_dock_widget(w)
    assert [lyr.name for lyr in viewer.layers] == ["us", "us [objects]"]
    assert dict(viewer.keymap) == {}  # the viewer's keys are as before the widget opened


@pytest.mark.gui
def test_stale_results_are_dropped_and_the_newest_click_wins(make_napari_viewer, qtbot, interactive_ckpt, errors):
    viewer = make_napari_viewer(show=True)
    viewer.add_image(np.random.default_rng(2).integers(0, 255, (80, 100), dtype=np.uint8), name="us")
    w = _dock(viewer, qtbot, interactive_ckpt)
    clicks, obj = viewer.layers["us [clicks]"], viewer.layers["us [object]"]
    shown: list[int] = []
    w.mask_shown.connect(shown.append)
    clicks.add([20, 20])  # sent at once ...
    clicks.feature_defaults = {"prompt": "negative"}
    clicks.add([25, 60])  # ... these two arrive while it is computed
    clicks.feature_defaults = {"prompt": "positive"}
    clicks.add([60, 70])
    _wait(qtbot, w)
    session = w._sessions[None]
    assert shown == [session.generation]  # only the newest prompts' mask was ever shown
    assert w.stats["requests"] == 2 and w.stats["stale"] == 1
    assert session.clicks == [(20, 20, True), (25, 60, False), (60, 70, True)]
    data = np.asarray(obj.data)
    assert data[20, 20] == 1 and data[60, 70] == 1 and data[25, 60] == 0
    assert errors == []


@pytest.mark.gui
def test_stacks_are_segmented_slice_by_slice(make_napari_viewer, qtbot, interactive_ckpt, errors, no_traceback):
    from napari_mtunet import layer_meta

    viewer = make_napari_viewer(show=True)
    stack = np.random.default_rng(3).integers(0, 255, (3, 64, 80), dtype=np.uint8)
    viewer.add_image(stack, name="stack")
    w = _dock(viewer, qtbot, interactive_ckpt)
    clicks, obj = viewer.layers["stack [clicks]"], viewer.layers["stack [object]"]
    assert clicks.ndim == 3 and obj.data.shape == (3, 64, 80)
    viewer.dims.set_current_step(0, 1)
    clicks.add([1, 30, 40])
    _wait(qtbot, w)
    assert obj.data[1, 30, 40] == 1 and not obj.data[0].any() and not obj.data[2].any()
    viewer.dims.set_current_step(0, 2)
    clicks.add([2, 10, 10])
    _wait(qtbot, w)
    assert obj.data[2, 10, 10] == 1 and obj.data[1, 30, 40] == 1  # slice 1 keeps its object
    w.commit()
    objects = viewer.layers["stack [objects]"]
    assert objects.data[2, 10, 10] == 1 and not objects.data[1].any()
    rec = layer_meta.read(objects.metadata)
    assert rec.is_stack and rec.slices[2].predicted in CLASSES and rec.slices[1].predicted is None
    assert rec.extra["segment_objects"][0]["slice"] == 2
    # back on slice 1: its prompts and mask are still there, shown without running the model again
    requests = w.stats["requests"]
    viewer.dims.set_current_step(0, 1)
    _wait(qtbot, w)
    assert w.stats["requests"] == requests and w.readout.result is w._sessions[1].current()
    assert "slice 1" in w.readout.text()
    # a stack shown in 3-D has no slice to segment: one clear notification, the point is removed
    viewer.dims.ndisplay = 3
    clicks.add([1, 20, 20])
    assert len(errors) == 1 and "3-D" in errors[0] and "one slice at a time" in errors[0]
    assert len(clicks.data) == 1  # the earlier click of slice 1 stays
    viewer.dims.ndisplay = 2


@pytest.mark.gui
def test_errors_are_one_clear_notification(make_napari_viewer, qtbot, interactive_ckpt, plain_ckpt, errors,
                                           no_traceback):
    viewer = make_napari_viewer(show=True)
    viewer.add_image(np.zeros((40, 50), np.uint8), name="us")
    w = _dock(viewer, qtbot)
    clicks = viewer.layers["us [clicks]"]
    # no model
    clicks.add([10, 10])
    assert errors == ["Cannot segment: choose an interactive model first (Model, above: a .safetensors checkpoint "
                      "trained with 'interactive')"]
    # a model trained without prompts: said when chosen, and refused at the click
    w.checkpoint.value = str(plain_ckpt)
    assert "trained without prompts" in w.model_info.text()
    clicks.add([12, 12])
    assert len(errors) == 2 and "trained without prompts" in errors[1] and "--interactive" in errors[1]
    # a click outside the image: removed, said, nothing sent
    w.checkpoint.value = str(interactive_ckpt)
    w.clear()
    _wait(qtbot, w)
    requests = w.stats["requests"]
    clicks.add([-30, 70])
    assert "lies outside image layer 'us' (40 x 50 pixels); it was removed" in errors[-1]
    assert len(clicks.data) == 0 and w.stats["requests"] == requests
    # an image that is neither 2-D nor a stack of 2-D images
    viewer.add_image(np.zeros((2, 3, 20, 20), np.uint8), name="4d")
    w.image_layer.setCurrentText("4d")  # the user picks it
    qtbot.waitUntil(lambda: "4-D" in (errors[-1] if errors else ""), timeout=5000)
    assert "'4d' is 4-D (2, 3, 20, 20): the segment mode works on 2-D images and stacks" in errors[-1]
    assert not w._layers and "us [clicks]" not in viewer.layers


@pytest.mark.gui
def test_committed_objects_go_to_the_training_set_with_a_confirmed_class(make_napari_viewer, qtbot, interactive_ckpt,
                                                                          busi_root, tmp_path, errors, no_traceback):
    from napari_mtunet.data.io import read_image, read_mask

    name = "malignant (103)"
    image = read_image(busi_root / "malignant" / f"{name}.png")
    truth = read_mask(busi_root / "malignant" / f"{name}_mask.png") > 0
    viewer = make_napari_viewer(show=True)
    viewer.add_image(image, name=name)
    w = _dock(viewer, qtbot, interactive_ckpt)
    root = tmp_path / "corrections"
    w.dataset_root.value = str(root)
    assert not w.add_button.isEnabled()  # nothing committed yet
    w.add_to_training_set()
    assert errors == ["Cannot add to the training set: commit an object of this image first (C)"]
    viewer.layers[f"{name} [clicks]"].add(list(_deepest(truth)))
    _wait(qtbot, w)
    w.commit()
    predicted = w.objects[-1].class_name
    # the class box starts as the model's class; the button names it: pressing it confirms it
    assert w.class_choice.currentText() == predicted and w.add_button.text() == f"Add as {predicted}"
    w.class_choice.setCurrentText("malignant")  # the user's own class
    assert w.add_button.text() == "Add as malignant"
    w.add_button.click()
    qtbot.waitUntil(lambda: bool(w.added), timeout=120_000)
    rows = list(csv.DictReader(open(root / "labels.csv", newline="")))
    assert len(rows) == 1 and rows[0]["label"] == "malignant" and rows[0]["class_source"] == "confirmed"
    assert rows[0]["source"] == name and rows[0]["model"] == "busi-interactive/best"
    image_file = root / "images" / rows[0]["filename"]
    mask_file = root / "masks" / f"{Path(rows[0]['filename']).stem}.png"
    np.testing.assert_array_equal(read_image(image_file), image)
    saved = read_mask(mask_file) > 0
    np.testing.assert_array_equal(saved, viewer.layers[f"{name} [objects]"].data > 0)
    from napari_mtunet import layer_meta

    rec = layer_meta.read(viewer.layers[f"{name} [objects]"].metadata)
    assert rec.slices[0].corrected == "malignant" and rec.slices[0].label_source == "confirmed"
    # undo the add: the sample is gone
    w.undo_add_button.click()
    qtbot.waitUntil(lambda: not w.added, timeout=60_000)
    assert not image_file.exists() and not mask_file.exists()
    assert list(csv.DictReader(open(root / "labels.csv", newline=""))) == []
    assert errors == ["Cannot add to the training set: commit an object of this image first (C)"]


@pytest.mark.gui
def test_the_train_widget_trains_an_interactive_model(make_napari_viewer, qtbot, tmp_path, errors):
    from napari_mtunet.checkpoint import read_metadata
    from napari_mtunet.sample_data import write_phantom_dataset
    from napari_mtunet.widgets import TrainWidget

    root = write_phantom_dataset(tmp_path / "phantom", n=12, size=64, seed=3)
    viewer = make_napari_viewer()
    w = TrainWidget(viewer)
    viewer.window.add_dock_widget(w)
    assert w.interactive.isChecked()  # the default (cpu) preset
    w.data_root.value = str(root)
    w.interactive.setChecked(False)
    assert w.form().to_run().model.prompts is False
    w.out_dir.value = str(tmp_path / "runs")
    w.encoder.setCurrentText("mobilenet_v2")
    w.encoder_weights.setCurrentText("none")
    w.image_size.setValue(64)
    w.epochs.setValue(1)
    w.batch_size.setValue(4)
    w.val_fraction.setValue(0.25)
    w.test_fraction.setValue(0.0)
    w.device.setCurrentText("cpu")
    w.interactive.setChecked(True)
    assert w.form().to_run().model.prompts is True
    w.start_button.click()
    qtbot.waitUntil(lambda: not w.busy, timeout=300_000)
    assert errors == [] and w.best_checkpoint
    meta = read_metadata(w.best_checkpoint)
    assert meta["model"]["prompts"] is True and meta["run"]["model"]["prompts"] is True
    # remembered for the next opening
    w2 = TrainWidget(viewer)
    assert w2.interactive.isChecked()


@pytest.mark.slow
@pytest.mark.gui
def test_latency_benchmark_runs(tmp_path):
    import json
    import sys

    import subprocess

    bench = Path(__file__).resolve().parents[1] / "benchmarks"
    # in a fresh process, as a user runs it: a bare napari.Viewer() in this one would register the plugin's
    # actions a second time after the make_napari_viewer tests
    proc = subprocess.run([sys.executable, str(bench / "bench_segment_widget.py"), "--quick", "--results-dir",
                           str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    doc = json.loads((tmp_path / "segment_widget.json").read_text())
    assert doc["benchmark"] == "segment_widget" and doc["quick"] is True and doc["errors"] == []
    clicks = doc["results"]
    assert len(clicks) >= 1 and all(c["completed"] for c in clicks)
    for c in clicks:
        assert c["latency_ms"] > 0 and c["model_ms"] > 0 and c["napari_cpu_ms"] >= 0
        assert abs(c["mapped_back"][0] - c["row"]) < 1 and abs(c["mapped_back"][1] - c["col"]) < 1
    assert {t["name"] for t in doc["targets"]} == {"click -> mask on screen, median of all clicks (ms)"}
