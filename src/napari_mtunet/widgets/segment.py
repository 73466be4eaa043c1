"""Segment object: click on a lesion (or draw a box around it) and an interactive model segments it, with its
class; commit it as one label of a Labels layer, then the next one.

The widget holds no science: :mod:`napari_mtunet.segment_session` keeps what the prompts of each 2-D image
have produced (and decides what to run next), :mod:`napari_mtunet.segment_jobs` runs the model in the
compute process (napari's process never imports torch).

Layers (the image layer is never modified):

- ``<image> [clicks]`` (Points): a click adds a **positive** point (green); with **Shift** held, or after
  pressing **T** (or the toggle button), a **negative** one (red).  Points can be moved or deleted with
  napari's own tools: the mask follows.
- ``<image> [box]`` (Shapes): a rectangle around the object (one per image; a new one replaces it).
- ``<image> [object]`` (Labels): the mask of the object being segmented, updated after every change of the
  prompts.  Each change is computed in the compute process; while one runs, further clicks wait, and only the
  result for the newest prompts is shown (a result that came back for older prompts is never shown; it
  serves as the previous mask of the next request).
- ``<image> [objects]`` (Labels): the committed objects, one label id each, with their classes in the layer's
  napari-mtunet record (an annotation of the image: the Annotate widget can use it too).  Committed objects
  are never overwritten by later ones; napari's brush and its undo work on this layer as on any other.

Keys, bound on the viewer (and on the two prompt layers) while the widget is open: **C** commits the object,
**U** undoes the last click (then the box), **Shift+C** clears the prompts, **T** toggles positive /
negative clicks.  (On an image layer napari's own **C** adjusts the contrast: the widget keeps the clicks
layer selected.)

Stacks are segmented slice by slice, on the slice napari shows; each slice keeps its own prompts.
*Add to training set* writes the image (slice) on screen with its committed objects as one sample of the
Annotate & fine-tune training set (:func:`napari_mtunet.workflows.annotate.add_samples`: the class is
recorded as confirmed by you, since you chose it on the button).
"""

from __future__ import annotations

import html
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import QObject, QRectF, QSize, Qt, QTimer, Signal
from qtpy.QtGui import QColor, QPainter
from qtpy.QtWidgets import QFormLayout, QGroupBox, QHBoxLayout, QPushButton, QSizePolicy, QVBoxLayout, QWidget

from .. import layer_meta
from ..segment_session import (
    CommittedObject,
    ObjectResult,
    ObjectSession,
    Request,
    SegmentError,
    box_of,
    check_label_id,
    free_pixels,
    next_label_id,
    pixel_of,
)
from ._controls import DeviceCombo, LayerCombo, PathEdit, StatusLabel, WrapLabel, combo
from ._job import JobWidget
from ._layers import covering_images, current_slice, is_heatmap, layer_array, layer_record, spatial_shape
from .predict import MODEL_FILTER, describe_model

JOBS = "napari_mtunet.segment_jobs"
#: The widget's own layers carry ``metadata[ROLE] = {"role": ..., "image": <image layer name>}``.
ROLE = "mtunet_segment"
#: Keys bound while the widget is open (napari key names).
KEYS = {"commit": "C", "undo": "U", "clear": "Shift-C", "toggle": "T"}
POSITIVE_COLOUR, NEGATIVE_COLOUR, BOX_COLOUR = "#00ff00", "#ff2020", "#00ff00"
PROMPT = "prompt"  # the Points layer's feature: "positive" / "negative"


# --------------------------------------------------------------------------- waiting for the compute process


@dataclass(eq=False)
class _Flight:
    """A request being computed."""

    target: Any
    z: int | None
    session: ObjectSession
    request: Request
    key: str
    sent_image: bool
    t_submit: float = field(default_factory=time.perf_counter)


class _Relay(QObject):
    """Waits for compute-process jobs in one helper thread and hands each outcome to the GUI thread (a queued
    signal: no napari worker per click, no polling timer)."""

    done = Signal(object, object, object)  # token, result, error

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None

    def watch(self, job: Any, token: Any) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="napari-mtunet segment relay", daemon=True)
            self._thread.start()
        self._queue.put((job, token))

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            job, token = item
            try:
                result, error = job.run(), None
            except BaseException as exc:  # noqa: BLE001 - handed to the widget
                result, error = None, exc
            try:
                self.done.emit(token, result, error)
            except RuntimeError:  # the widget is gone (napari closed)
                return

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)


# --------------------------------------------------------------------------- the read-out


class ProbabilityBars(QWidget):
    """The model's class probabilities as painted bars.  (QProgressBar repaints synchronously when its value
    changes, and in napari's window each such repaint recomposes the OpenGL canvas: three bars cost three
    canvas draws, ~45 ms per click measured with py-spy in benchmarks/bench_segment_widget.py.)"""

    ROW = 16

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.values: list[tuple[str, float]] = []
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Fixed)

    def set_values(self, values: list[tuple[str, float]]) -> None:
        rows_changed = len(values) != len(self.values)
        self.values = list(values)
        if rows_changed:
            self.setFixedHeight(self.ROW * len(self.values))
        self.update()  # painted with the next frame, never at once

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt API
        return QSize(200, self.ROW * len(self.values))

    def paintEvent(self, event: Any) -> None:  # noqa: N802 - Qt API
        p = QPainter(self)
        pal = self.palette()
        fg = pal.color(pal.ColorRole.WindowText)
        w = self.width()
        label_w = min(110, w // 3)
        for i, (name, prob) in enumerate(self.values):
            y = i * self.ROW
            bar = QRectF(label_w, y + 3, max(0.0, (w - label_w - 46) * prob), self.ROW - 6)
            p.fillRect(QRectF(label_w, y + 3, w - label_w - 46, self.ROW - 6), pal.color(pal.ColorRole.Base))
            p.fillRect(bar, QColor("#3a7bd5"))
            p.setPen(fg)
            p.drawText(QRectF(0, y, label_w - 4, self.ROW), int(Qt.AlignmentFlag.AlignVCenter), name)
            p.drawText(QRectF(w - 44, y, 44, self.ROW), int(Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignRight),
                       f"{prob:.0%}")
        p.end()


class ObjectReadout(QWidget):
    """The object being segmented: its class and the model's probabilities, its size."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.title = WrapLabel("", rich=True)
        self.bars = ProbabilityBars()
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.title)
        lay.addWidget(self.bars)
        self.result: ObjectResult | None = None
        self.set_result(None)

    def set_result(self, result: ObjectResult | None, z: int | None = None) -> None:
        self.result = result
        if result is None:
            self.title.setText("No object yet: click on one (or draw a box around it)")
            self.bars.set_values([])
            return
        h, w = result.mask.shape
        probs = result.probabilities or {}
        cls = result.class_name
        text = (f"Class (the model's): <b>{html.escape(cls)}</b>" + (f" ({probs[cls]:.0%})" if cls in probs else "")
                if cls else "No class (a segmentation-only model)")
        where = f" of slice {z}" if z is not None else ""
        text += f"<br>Mask: {result.mask.area} pixels, {result.mask.area / float(h * w):.1%} of the image{where}"
        self.title.setText(text)
        self.bars.set_values(list(probs.items()))

    def text(self) -> str:
        return self.title.text()


# --------------------------------------------------------------------------- the widget


class SegmentWidget(JobWidget):
    """Dock widget: clicks and a box -> the mask and class of one object -> committed objects -> training set."""

    #: a result was written to the ``[object]`` layer (its generation); the canvas draws it next
    mask_shown = Signal(int)

    def __init__(self, napari_viewer: Any, parent=None):
        super().__init__(napari_viewer, parent)
        self._target: Any = None
        self._layers: dict[str, Any] = {}  # "clicks", "box", "object"
        self._sessions: dict[int | None, ObjectSession] = {}
        self._preview_bounds: dict[int | None, tuple[int, int, int, int] | None] = {}
        self._shown: dict[int | None, tuple] = {}  # the result on screen, per slice
        self._image_version = 0
        self._sent: set[str] = set()
        self._in_flight: _Flight | None = None
        self._failed: tuple[int, int | None, int] | None = None  # (session id, slice, generation) not retried
        self._commit_wanted: tuple[int | None, int] | None = None
        self._syncing = False
        self._positive_next = True
        self._model_meta: dict[str, Any] | None = None
        self._bound: list[tuple[Any, str, Any]] = []
        self._closed_once = False
        self.objects: list[CommittedObject] = []
        self.added: list[Any] = []  # napari_mtunet.jobs.Added (for undo)
        self.stats = {"requests": 0, "shown": 0, "stale": 0, "images_sent": 0}
        self.last_timing: dict[str, float] = {}
        self._relay = _Relay(self)
        self._relay.done.connect(self._on_done)

        # ---- settings
        self.checkpoint = PathEdit("file", MODEL_FILTER, "interactive model (.safetensors)")
        self.model_info = StatusLabel("")
        self.device = DeviceCombo()
        self.image_layer = LayerCombo(napari_viewer, ("image",))
        top = QFormLayout()
        top.addRow("Model", self.checkpoint)
        top.addRow("", self.model_info)
        top.addRow("Device", self.device)
        top.addRow("Image layer", self.image_layer)
        self.help = WrapLabel(
            "Click on the object: <b>click</b> = positive point (green), <b>Shift+click</b> = negative point "
            "(red); or draw a <b>box</b> around it. Keys: <b>C</b> commit, <b>U</b> undo the last click, "
            "<b>Shift+C</b> clear, <b>T</b> positive / negative.", rich=True)
        from .annotate import default_training_set

        self.dataset_root = PathEdit("dir", placeholder=default_training_set())
        self.class_choice = combo([], None)
        self.class_choice.setPlaceholderText("the object's class")
        self.class_choice.setToolTip("The class the image is added with (starts as the model's class of the last "
                                     "committed object; the button names it: pressing it confirms it)")
        self.add_button = QPushButton("Add to training set")
        self.add_button.setToolTip("Write the image (slice) on screen and its committed objects as one sample of "
                                   "the Annotate & fine-tune training set, with the class on the button")
        self.undo_add_button = QPushButton("Undo add")
        self.undo_add_button.setEnabled(False)
        train_box = QGroupBox("Training set (Annotate && fine-tune)")
        tf = QFormLayout(train_box)
        tf.addRow("Folder", self.dataset_root)
        tf.addRow("Class", self.class_choice)
        row = QHBoxLayout()
        row.addWidget(self.add_button, 1)
        row.addWidget(self.undo_add_button)
        tf.addRow(row)
        lay = self.body_layout
        lay.addLayout(top)
        lay.addWidget(self.help)
        lay.addWidget(train_box)
        lay.addStretch(1)

        # ---- watched: always visible
        self.toggle_button = QPushButton()
        self.toggle_button.setCheckable(True)
        self.toggle_button.setToolTip("The sign of the next click (T); Shift+click gives the other one")
        self.click_button = QPushButton("Click")
        self.click_button.setToolTip("Select the clicks layer in add mode (click on the image to add points)")
        self.box_button = QPushButton("Box")
        self.box_button.setToolTip("Select the box layer in rectangle mode (drag a box around the object)")
        self.commit_button = QPushButton("Commit (C)")
        self.undo_button = QPushButton("Undo click (U)")
        self.clear_button = QPushButton("Clear (Shift+C)")
        self.objects_label = StatusLabel("No object committed yet")
        self.readout = ObjectReadout()
        r1 = QHBoxLayout()
        for b in (self.toggle_button, self.click_button, self.box_button):
            r1.addWidget(b)
        r2 = QHBoxLayout()
        for b in (self.commit_button, self.undo_button, self.clear_button):
            r2.addWidget(b)
        result_box = QGroupBox("The object")
        rl = QVBoxLayout(result_box)
        rl.setContentsMargins(6, 4, 6, 4)
        rl.addWidget(self.readout)
        w = self.watch_layout
        w.addLayout(r1)
        w.addLayout(r2)
        w.addWidget(self.status)
        w.addWidget(result_box)
        w.addWidget(self.objects_label)
        self._show_toggle()

        self.toggle_button.clicked.connect(lambda *_: self.toggle_sign())
        self.click_button.clicked.connect(lambda *_: self.click_mode())
        self.box_button.clicked.connect(lambda *_: self.box_mode())
        self.commit_button.clicked.connect(lambda *_: self.commit())
        self.undo_button.clicked.connect(lambda *_: self.undo())
        self.clear_button.clicked.connect(lambda *_: self.clear())
        self.add_button.clicked.connect(lambda *_: self.add_to_training_set())
        self.undo_add_button.clicked.connect(lambda *_: self.undo_add())
        self.class_choice.currentIndexChanged.connect(self._update_buttons)
        self.checkpoint.changed.connect(self._model_changed)
        self.image_layer.currentIndexChanged.connect(self._image_chosen)
        self.state.checkpoint_changed.connect(self._offer_checkpoint)
        napari_viewer.dims.events.current_step.connect(self._slice_changed)
        napari_viewer.layers.events.removed.connect(self._layer_removed)
        self._bind_keys()
        if self.state.checkpoint:
            self._offer_checkpoint(self.state.checkpoint)
        self._update_buttons()
        self._image_chosen()  # the layers appear once the dock is shown

    # ------------------------------------------------------------------ the model

    def _offer_checkpoint(self, path: str) -> None:
        """The newest model of the session (trained, fine-tuned, opened): taken when it takes prompts or when
        none is chosen yet."""
        if not self.checkpoint.value or _takes_prompts(path) is not False:
            self.checkpoint.value = path

    def _model_changed(self, path: str) -> None:
        self._model_meta = None
        self._failed = None
        if not path:
            self.model_info.setText("")
            return
        text = describe_model(path)
        takes = _takes_prompts(path)
        if takes is False:
            text += (" — trained without prompts: it cannot segment from clicks or a box. Train one with "
                     "'interactive' ticked in the Train widget (mtunet train … --interactive)")
        elif takes:
            text += ", interactive (click and box prompts)"
        self.model_info.setText(text)
        if takes is not False and Path(path).is_file():
            from ..compute import client

            job = client().submit(f"{JOBS}:load_model", (self._params_for(path),))  # loads before the first click
            self._relay.watch(job, ("load", path))
            self._run()  # clicks made before the model was chosen

    def _params_for(self, path: str) -> dict[str, Any]:
        return {"checkpoint": path, "device": self.device.currentText() or "auto"}

    def params(self) -> dict[str, Any]:
        path = self.checkpoint.value
        if not path:
            raise SegmentError("choose an interactive model first (Model, above: a .safetensors checkpoint trained "
                               "with 'interactive')")
        if _takes_prompts(path) is False:
            raise SegmentError(f"the model {Path(path).name} was trained without prompts, so it cannot segment from "
                               "clicks or a box; choose a model trained with 'interactive' (mtunet train … "
                               "--interactive)")
        return self._params_for(path)

    # ------------------------------------------------------------------ the image and the widget's layers

    def _image_chosen(self, *_: Any) -> None:
        # later: this runs inside napari's "layer inserted" event, after which napari makes the new layer the
        # active one (the widget's layers are added, and its clicks layer selected, after that)
        QTimer.singleShot(0, self._apply_image_choice)

    def _apply_image_choice(self) -> None:
        layer = self.image_layer.layer()
        if layer is self._target or self.closed:
            return
        if layer is not None and is_heatmap(layer):
            layer = None
        self._set_target(layer)

    def _set_target(self, layer: Any) -> None:
        if self._target is not None:
            try:
                self._target.events.data.disconnect(self._image_data_changed)
            except (TypeError, ValueError, RuntimeError):
                pass
        self._target = layer
        self._sessions.clear()
        self._preview_bounds.clear()
        self._shown.clear()
        self._sent.clear()
        self._failed = None
        self._commit_wanted = None
        self.readout.set_result(None)
        shape = spatial_shape(layer) if layer is not None else ()
        if layer is not None and len(shape) not in (2, 3):
            what = f"{len(shape)}-D" + (" RGB" if getattr(layer, "rgb", False) else "")
            self._target = None
            self.fail(f"{layer.name!r} is {what} {tuple(shape)}: the segment mode works on 2-D images and stacks "
                      "of 2-D images (one slice at a time)", "Cannot segment")
        if self._target is None:
            self._drop_layers()
            self._update_buttons()
            return
        layer.events.data.connect(self._image_data_changed)
        if self._layers and self._layers["clicks"].ndim == len(shape) and all(
                lyr in self.viewer.layers for lyr in self._layers.values()):
            self._retarget_layers()  # (removing and adding layers costs napari a second or more here)
        else:
            self._drop_layers()
            self._make_layers()
        self.status.setText(f"Segmenting {layer.name!r}: click on an object, or draw a box around it")
        self._update_buttons()

    def _geometry(self) -> dict[str, Any]:
        t = self._target
        return {"scale": tuple(t.scale), "translate": tuple(t.translate)}

    def _sizes(self) -> tuple[float, float]:
        """The size of a click's dot and the width of the box's edge, in image pixels."""
        side = max(spatial_shape(self._target)[-2:])
        return max(4.0, side / 70), max(1.0, side / 250)

    def _role_meta(self, role: str) -> dict[str, Any]:
        return {ROLE: {"role": role, "image": self._target.name}}

    def _make_layers(self) -> None:
        t = self._target
        shape = spatial_shape(t)
        dot, edge = self._sizes()
        geo = self._geometry()
        v = self.viewer
        obj = v.add_labels(np.zeros(shape, np.uint8), name=f"{t.name} [object]", opacity=0.55,
                           metadata=self._role_meta("object"), **geo)
        _colour_label_one(obj, "yellow")
        box = v.add_shapes(ndim=len(shape), name=f"{t.name} [box]", face_color="transparent",
                           edge_color=BOX_COLOUR, edge_width=edge, metadata=self._role_meta("box"), **geo)
        clicks = v.add_points(ndim=len(shape), name=f"{t.name} [clicks]", metadata=self._role_meta("clicks"),
                              property_choices={PROMPT: ["positive", "negative"]}, face_color=PROMPT,
                              face_color_cycle=[POSITIVE_COLOUR, NEGATIVE_COLOUR], border_color="white",
                              border_width=0.15, size=dot, **geo)
        self._layers = {"object": obj, "box": box, "clicks": clicks}
        clicks.events.data.connect(self._prompts_changed)
        box.events.data.connect(self._prompts_changed)
        clicks.mouse_drag_callbacks.append(self._on_press)
        for layer in (box, clicks):
            for name, key in KEYS.items():
                layer.bind_key(key, self._key_action(name), overwrite=True)
        self._set_sign_default()
        self.click_mode()

    def _retarget_layers(self) -> None:
        """The widget's layers serve the new image: emptied, renamed, laid over it, above it in the layer list."""
        t = self._target
        obj, box, clicks = self._layers["object"], self._layers["box"], self._layers["clicks"]
        dot, edge = self._sizes()
        geo = self._geometry()
        self._syncing = True
        try:
            clicks.data = np.empty((0, clicks.ndim))
            box.data = []
            obj.data = np.zeros(spatial_shape(t), np.uint8)
            for role, lyr in self._layers.items():
                lyr.metadata = self._role_meta(role)
                if tuple(lyr.scale) != geo["scale"] or tuple(lyr.translate) != geo["translate"]:
                    lyr.scale, lyr.translate = geo["scale"], geo["translate"]
                lyr.name = f"{t.name} [{role}]"
            clicks.current_size = dot
            box.current_edge_width = edge
        finally:
            self._syncing = False
        layers = self.viewer.layers
        for lyr in (obj, box, clicks):  # over the image (a newly opened image lies on top)
            if layers.index(lyr) < layers.index(t):
                layers.move(layers.index(lyr), len(layers))
        self.click_mode()

    def _drop_layers(self) -> None:
        """Remove the widget's prompt and mask layers (the committed objects stay)."""
        old, self._layers = self._layers, {}
        for layer in old.values():
            if layer in self.viewer.layers:
                self.viewer.layers.remove(layer)

    def _layer_removed(self, event: Any) -> None:
        layer = getattr(event, "value", None)
        if layer is None:
            return
        if layer is self._target:
            self._set_target(None)
            return
        for role, lyr in list(self._layers.items()):
            if lyr is layer:  # the user removed one of the widget's layers: the others go too
                self._set_target(None)
                self.status.setText(f"The {role} layer was removed; choose the image again to go on segmenting")
                return

    def _image_data_changed(self, *_: Any) -> None:
        self._image_version += 1
        self._sent.clear()
        for s in self._sessions.values():
            s.invalidate()
        self._run()

    def click_mode(self) -> None:
        clicks = self._layers.get("clicks")
        if clicks is not None:
            self.viewer.layers.selection.active = clicks
            clicks.mode = "add"

    def box_mode(self) -> None:
        box = self._layers.get("box")
        if box is not None:
            self.viewer.layers.selection.active = box
            box.mode = "add_rectangle"

    # ------------------------------------------------------------------ positive / negative

    def toggle_sign(self) -> None:
        self._positive_next = not self._positive_next
        self._show_toggle()
        self._set_sign_default()

    def _show_toggle(self) -> None:
        self.toggle_button.blockSignals(True)
        self.toggle_button.setChecked(not self._positive_next)
        self.toggle_button.blockSignals(False)
        colour = POSITIVE_COLOUR if self._positive_next else NEGATIVE_COLOUR
        self.toggle_button.setText("Next click: " + ("positive" if self._positive_next else "negative") + " (T)")
        self.toggle_button.setStyleSheet(f"QPushButton {{ border-left: 6px solid {colour}; }}")

    def _set_sign_default(self, positive: bool | None = None) -> None:
        clicks = self._layers.get("clicks")
        want = "positive" if (self._positive_next if positive is None else positive) else "negative"
        if clicks is not None and clicks.feature_defaults[PROMPT][0] != want:
            clicks.feature_defaults = {PROMPT: want}

    def _on_press(self, layer: Any, event: Any) -> None:
        """A press on the clicks layer: Shift makes this click the other sign (the point is added on release)."""
        if str(getattr(layer.mode, "value", layer.mode)) != "add":
            return
        shift = "Shift" in {str(getattr(m, "name", m)) for m in (event.modifiers or ())}
        self._set_sign_default(self._positive_next != shift)

    # ------------------------------------------------------------------ prompts -> sessions

    def _check_view(self) -> None:
        """The image on screen must be one 2-D image (a stack: one slice of it)."""
        t = self._target
        if t is None:
            raise SegmentError("choose the image layer to segment first")
        if t.ndim >= 3:
            dims = self.viewer.dims
            if dims.ndisplay == 3 or tuple(dims.displayed)[-2:] != (dims.ndim - 2, dims.ndim - 1):
                raise SegmentError(
                    f"{t.name!r} is a stack shown in 3-D (or not along its last two axes): the segment mode works "
                    "on one slice at a time. Switch napari to 2-D (the 2D/3D button) and show the slices")

    def _slice_on_screen(self) -> int | None:
        return current_slice(self.viewer, self._target) if self._target is not None and self._target.ndim >= 3 else None

    def _plane_shape(self) -> tuple[int, int]:
        shape = spatial_shape(self._target)
        return int(shape[-2]), int(shape[-1])

    def _where(self, z: int | None) -> str:
        return f"image layer {self._target.name!r}" + (f" (slice {z})" if z is not None else "")

    def _prompts_changed(self, event: Any = None) -> None:
        action = str(getattr(getattr(event, "action", None), "value", getattr(event, "action", "")) or "")
        if self._syncing or action in ("adding", "removing", "changing"):
            return
        try:
            self._sync(added=action == "added" and getattr(event, "source", None) is self._layers.get("clicks"))
        finally:
            # a Shift-click's sign holds for that click only (after napari selected the new point, which makes
            # its sign the layer's default again)
            QTimer.singleShot(0, self._set_sign_default)

    def _sync(self, added: bool = False) -> None:
        """Read the prompts from the layers into the sessions (one per slice) and run what changed."""
        clicks, box = self._layers.get("clicks"), self._layers.get("box")
        if self._target is None or clicks is None or box is None:
            return
        problem: SegmentError | None = None
        try:
            self._check_view()
        except SegmentError as exc:
            problem = exc
        h, w = self._plane_shape()
        stack = self._target.ndim >= 3
        n = int(layer_array(self._target).shape[0]) if stack else 1
        per: dict[int | None, list[tuple[int, int, bool]]] = {}
        bad: list[int] = []
        data = np.asarray(clicks.data, float).reshape(-1, clicks.ndim)
        signs = list(clicks.features[PROMPT]) if len(data) else []
        for i, p in enumerate(data):
            z = int(round(p[0])) if stack else None
            if problem is not None and added and i == len(data) - 1:
                bad.append(i)
                continue
            if z is not None and not 0 <= z < n:
                bad.append(i)
                problem = problem or SegmentError(f"the click lies outside the stack {self._target.name!r} "
                                                  f"(slices 0..{n - 1}); it was removed")
                continue
            try:
                r, c = pixel_of(p[-2], p[-1], (h, w), where=self._where(z))
            except SegmentError as exc:
                bad.append(i)
                problem = problem or exc
                continue
            per.setdefault(z, []).append((r, c, str(signs[i]) != "negative"))
        boxes: dict[int | None, tuple[int, int, int, int]] = {}
        box_at: dict[int | None, int] = {}
        drop: list[int] = []
        for i, verts in enumerate(box.data):
            v = np.asarray(verts, float)
            z = int(round(v[0, 0])) if stack else None
            try:
                b = box_of(v[:, -2:], (h, w), where=self._where(z))
            except SegmentError as exc:
                drop.append(i)
                problem = problem or exc
                continue
            if z in box_at:  # a new box replaces the one before it (one box per image)
                drop.append(box_at[z])
            boxes[z], box_at[z] = b, i
        if bad or drop:
            self._syncing = True
            try:
                if bad:
                    clicks.remove(sorted(set(bad)))
                if drop:
                    box.selected_data = set(drop)
                    box.remove_selected()
            finally:
                self._syncing = False
        for z in set(per) | set(boxes) | set(self._sessions):
            session = self._sessions.get(z)
            if session is None:
                session = self._sessions[z] = ObjectSession((h, w))
            session.set_prompts(per.get(z, []), boxes.get(z))
        if problem is not None:
            self.fail(problem, "Cannot segment")
        self._run()
        self._update_buttons()

    def _slice_changed(self, *_: Any) -> None:
        if self._target is None or self._target.ndim < 3:
            return
        self._show(self._slice_on_screen())
        self._run()
        self._update_buttons()

    # ------------------------------------------------------------------ running

    def _run(self) -> None:
        """Send the prompts of the slice on screen to the compute process, unless their result is known or a
        request is being computed (then this runs again when it returns: the newest prompts win)."""
        if self._in_flight is not None or self._target is None or not self._layers:
            return
        try:
            self._check_view()
        except SegmentError:
            return
        z = self._slice_on_screen()
        session = self._sessions.get(z)
        if session is None:
            return
        request = session.request()
        if request is None:
            self._show(z)
            return
        if self._failed == (id(session), z, session.generation):
            return
        try:
            params = self.params()
        except SegmentError as exc:
            self._failed = (id(session), z, session.generation)
            self._commit_wanted = None
            self.fail(exc, "Cannot segment")
            return
        from ..compute import client

        key = f"{id(self._target)}:{self._image_version}:{z}"
        image = None if key in self._sent else np.ascontiguousarray(
            np.asarray(layer_array(self._target)[z] if z is not None else layer_array(self._target)))
        flight = _Flight(self._target, z, session, request, key, image is not None)
        job = client().submit(f"{JOBS}:segment_object", (params, key, image, request, self._where(z)))
        self._in_flight = flight
        self.stats["requests"] += 1
        self.stats["images_sent"] += image is not None
        self._relay.watch(job, flight)
        self.status.setText("Segmenting…")

    def _on_done(self, token: Any, result: Any, error: BaseException | None) -> None:
        if isinstance(token, tuple) and token[:1] == ("load",):
            if error is not None and token[1] == self.checkpoint.value:
                self.fail(error, f"Loading the model {Path(token[1]).name} failed")
            elif error is None and token[1] == self.checkpoint.value:
                self._model_meta = result
                if not result.get("accepts_prompts"):
                    self.fail(f"the model {result.get('name')} was trained without prompts, so it cannot segment "
                              "from clicks or a box; choose a model trained with 'interactive'", "Cannot segment")
            return
        flight: _Flight = token
        if flight is not self._in_flight:
            return
        self._in_flight = None
        t_back = time.perf_counter()
        session = flight.session
        live = flight.target is self._target and self._sessions.get(flight.z) is session
        if error is not None:
            self._handle_error(flight, error, live)
        else:
            if flight.sent_image:
                self._sent.add(flight.key)
            if live and session.accept(flight.request, result):
                self.last_timing = {"submitted": flight.t_submit, "returned": t_back, "compute_s": result.seconds,
                                    "compute_cpu_s": result.cpu_seconds, "passes": result.passes}
                if flight.z == self._slice_on_screen():
                    self._show(flight.z)
                    self.last_timing["shown"] = time.perf_counter()
            else:
                self.stats["stale"] += 1
        if self.closed:
            return
        self._run()
        if self._in_flight is None and error is None:
            self._commit_if_wanted()

    def _handle_error(self, flight: _Flight, error: BaseException, live: bool) -> None:
        from ..compute import ComputeProcessDied, RemoteError

        if isinstance(error, RemoteError) and error.is_a("ImageNotSent"):
            self._sent.discard(flight.key)  # the compute process was restarted or let it go: sent again
            return
        if isinstance(error, ComputeProcessDied):
            self._sent.clear()
        session = flight.session
        current = live and session.prompts_of(flight.request) and len(flight.request.points) == len(session.clicks)
        if current:  # an error for older prompts says nothing about the newest ones (they run next)
            self._failed = (id(session), flight.z, session.generation)
            self._commit_wanted = None
            self.fail(error, "Segmenting failed")

    # ------------------------------------------------------------------ showing

    def _show(self, z: int | None) -> None:
        """Show the result of slice ``z``'s prompts (nothing while it is being computed, or without prompts)."""
        obj = self._layers.get("object")
        if obj is None:
            return
        session = self._sessions.get(z)
        result = session.current() if session is not None else None
        if result is None and session is not None and not session.empty:
            return  # being computed: the mask before the change stays until the new one comes
        if self._shown.get(z, ()) != (result,):  # (each result is written once)
            self._shown[z] = (result,)
            self._write_preview(obj, z, result)
            if result is not None:
                self.stats["shown"] += 1
                self.mask_shown.emit(session.generation)
        if self.readout.result is not result:  # the read-out describes the slice on screen
            self._show_readout(result)
            if result is not None:
                conf = (result.probabilities or {}).get(result.class_name or "")
                self.status.setText(
                    f"{result.mask.area} pixels" + (f", {result.class_name}" if result.class_name else "")
                    + (f" ({conf:.0%})" if conf is not None else "")
                    + f" — {len(session.clicks)} click(s){' and a box' if session.box else ''}"
                    f"; {result.seconds * 1000:.0f} ms in the model")
        self._update_buttons()

    def _write_preview(self, obj: Any, z: int | None, result: ObjectResult | None) -> None:
        """Write the object's mask into the ``[object]`` layer: only the pixels that changed (napari then uploads
        only that part of the texture)."""
        old = self._preview_bounds.get(z)
        new = result.mask.bounds() if result is not None else None
        rects = [r for r in (old, new) if r is not None]
        if not rects:
            return
        r0, c0 = min(r[0] for r in rects), min(r[1] for r in rects)
        r1, c1 = max(r[2] for r in rects), max(r[3] for r in rects)
        plane = obj.data[z] if z is not None else obj.data
        want = np.zeros((r1 - r0, c1 - c0), np.uint8)
        if result is not None:
            m = result.mask
            a0, b0 = max(r0, m.region[0]), max(c0, m.region[1])
            a1, b1 = min(r1, m.region[2]), min(c1, m.region[3])
            if a1 > a0 and b1 > b0:
                want[a0 - r0:a1 - r0, b0 - c0:b1 - c0] = m.crop[a0 - m.region[0]:a1 - m.region[0],
                                                                 b0 - m.region[1]:b1 - m.region[1]]
        rows, cols = np.nonzero(np.asarray(plane[r0:r1, c0:c1]) != want)
        self._preview_bounds[z] = new
        if rows.size == 0:
            return
        values = want[rows, cols]
        index = (rows + r0, cols + c0) if z is None else (np.full(rows.size, z), rows + r0, cols + c0)
        obj.data_setitem(index, values)

    def _show_readout(self, result: ObjectResult | None) -> None:
        self.readout.set_result(result, self._slice_on_screen())

    # ------------------------------------------------------------------ keys and actions

    def _key_action(self, name: str) -> Any:
        actions = {"commit": self.commit, "undo": self.undo, "clear": self.clear, "toggle": self.toggle_sign}

        def action(*_: Any) -> None:
            actions[name]()

        action.__name__ = f"mtunet_segment_{name}"
        action.__doc__ = {"commit": "Commit the object (napari-mtunet Segment object)",
                          "undo": "Undo the last click (napari-mtunet Segment object)",
                          "clear": "Clear the prompts (napari-mtunet Segment object)",
                          "toggle": "Positive / negative clicks (napari-mtunet Segment object)"}[name]
        return action

    def _bind_keys(self) -> None:
        for name, key in KEYS.items():
            previous = self.viewer.bind_key(key, self._key_action(name), overwrite=True)
            self._bound.append((self.viewer, key, previous))

    def _unbind_keys(self) -> None:
        for provider, key, previous in reversed(self._bound):
            try:
                provider.bind_key(key, previous, overwrite=True)
            except Exception:  # noqa: BLE001 - the viewer is closing
                pass
        self._bound.clear()

    def _prompt_indices(self, z: int | None) -> tuple[list[int], list[int]]:
        """Indices of the points and of the boxes of slice ``z`` in the prompt layers."""
        clicks, box = self._layers.get("clicks"), self._layers.get("box")
        stack = self._target is not None and self._target.ndim >= 3

        def on(v: np.ndarray) -> bool:
            return not stack or int(round(float(v[0]))) == z

        pts = [i for i, p in enumerate(np.asarray(clicks.data).reshape(-1, clicks.ndim)) if on(p)] if clicks else []
        boxes = [i for i, v in enumerate(box.data) if on(np.asarray(v)[0])] if box else []
        return pts, boxes

    def _view_or_fail(self, what: str) -> bool:
        try:
            self._check_view()
        except SegmentError as exc:
            self.fail(exc, f"Cannot {what}")
            return False
        return bool(self._layers)

    def undo(self) -> None:
        """Remove the last click of the image on screen (then its box); the mask before it shows at once."""
        if not self._view_or_fail("undo"):
            return
        pts, boxes = self._prompt_indices(self._slice_on_screen())
        if pts:
            self._layers["clicks"].remove([pts[-1]])  # -> _sync: the known result for one click fewer shows
        elif boxes:
            box = self._layers["box"]
            box.selected_data = {boxes[-1]}
            box.remove_selected()
        else:
            self.status.setText("Nothing to undo: no click or box on this image")

    def clear(self) -> None:
        """Remove the prompts (clicks and box) of the image on screen and its uncommitted mask."""
        if not self._view_or_fail("clear"):
            return
        self._commit_wanted = None
        pts, boxes = self._prompt_indices(self._slice_on_screen())
        self._syncing = True
        try:
            if pts:
                self._layers["clicks"].remove(pts)
            if boxes:
                box = self._layers["box"]
                box.selected_data = set(boxes)
                box.remove_selected()
        finally:
            self._syncing = False
        self._sync()

    def commit(self) -> None:
        """The object's mask becomes a new label of the ``[objects]`` layer (on pixels no earlier object took);
        the prompts are cleared for the next object.  While the newest mask is being computed, the commit
        waits for it."""
        if not self._view_or_fail("commit"):
            return
        z = self._slice_on_screen()
        session = self._sessions.get(z)
        if session is None or session.empty:
            self.fail("nothing to commit: click on an object (or draw a box around it) first", "Cannot commit")
            return
        result = session.current()
        if result is None:
            if self._failed == (id(session), z, session.generation):
                self.fail("the object's mask could not be computed (see the error above)", "Cannot commit")
                return
            self._commit_wanted = (z, session.generation)
            self.status.setText("Committing as soon as the mask for the newest click is ready…")
            return
        self._commit_wanted = None
        if result.mask.area == 0:
            self.fail("the object's mask is empty: add a positive click inside the object (or a box around it)",
                      "Cannot commit")
            return
        layer = self._objects_layer(create=True, class_names=result.class_names)
        plane = np.asarray(layer.data[z] if z is not None else layer.data)
        try:
            label = next_label_id(layer.data)
            check_label_id(label, layer.data.dtype)
            (rows, cols), kept = free_pixels(plane, result.mask)
        except SegmentError as exc:
            self.fail(exc, "Cannot commit")
            return
        if rows.size == 0:
            self.fail("every pixel of this object already belongs to a committed object; nothing was committed",
                      "Cannot commit")
            return
        index = (rows, cols) if z is None else (np.full(rows.size, z), rows, cols)
        layer.data_setitem(index, label)
        obj = CommittedObject(label=label, slice=z, class_name=result.class_name, probabilities=result.probabilities,
                              pixels=int(rows.size), clicks=len(session.clicks), box=session.box is not None)
        self.objects.append(obj)
        rec = layer_record(layer)
        if rec is not None:
            i = 0 if z is None else z
            while len(rec.slices) <= i:
                rec.slices.append(layer_meta.SliceInfo())
            s = rec.slices[i]
            s.predicted, s.probabilities = result.class_name, result.probabilities
            s.lesion_fraction = float(np.count_nonzero(plane) + rows.size) / plane.size
            rec.extra.setdefault("segment_objects", []).append(obj.to_dict())
            self.state.write_record(layer, rec)
        self.clear()
        conf = (result.probabilities or {}).get(result.class_name or "")
        text = (f"Committed object {label}" + (f": {result.class_name}" if result.class_name else "")
                + (f" ({conf:.0%})" if conf is not None else "") + f", {rows.size} pixels")
        if kept:
            text += f" ({kept} pixels already belonged to earlier objects and were left to them)"
        self.status.setText(text)
        self.objects_label.setText(f"{len(self.objects)} object(s) committed into {layer.name!r}")
        self._suggest_class()
        self._update_buttons()

    def _commit_if_wanted(self) -> None:
        if self._commit_wanted is None:
            return
        z, generation = self._commit_wanted
        session = self._sessions.get(z)
        if z != self._slice_on_screen() or session is None or session.generation != generation:
            if session is None or session.generation != generation:
                self._commit_wanted = None
            return
        if session.current() is not None:
            self.commit()

    def _objects_layer(self, create: bool = False, class_names: list[str] | None = None) -> Any:
        """The ``[objects]`` Labels layer of the image (made by this widget), created when asked."""
        t = self._target
        if t is None:
            return None
        shape = spatial_shape(t)
        for layer in reversed(list(self.viewer.layers)):
            rec = layer_record(layer)
            if (rec is not None and rec.kind == "annotation" and rec.source_layer == t.name
                    and rec.extra.get("segment") and tuple(layer.data.shape) == tuple(shape)):
                return layer
        if not create:
            return None
        n = int(shape[0]) if len(shape) == 3 else 1
        rec = layer_meta.annotation(t.name, n, list(class_names or []), is_stack=len(shape) == 3)
        rec.extra["segment"] = True
        name = f"{t.name} [objects]"
        k = 2
        while name in self.viewer.layers:
            name = f"{t.name} [objects {k}]"
            k += 1
        layer = self.viewer.add_labels(np.zeros(shape, np.uint16), name=name, opacity=0.5,
                                       metadata=layer_meta.as_metadata(rec), **self._geometry())
        # below the widget's mask and prompts, above the image
        layers = self.viewer.layers
        below = min(layers.index(lyr) for lyr in self._layers.values() if lyr in layers) if self._layers else None
        if below is not None and layers.index(layer) > below:
            layers.move(layers.index(layer), below)
        self.click_mode()  # the new layer became the active one: clicks (and the keys) go on working
        return layer

    # ------------------------------------------------------------------ training set

    def _slice_has_objects(self) -> bool:
        layer = self._objects_layer()
        if layer is None:
            return False
        z = self._slice_on_screen()
        plane = layer.data[z] if z is not None else layer.data
        return bool(np.any(np.asarray(plane)))

    def _suggest_class(self) -> None:
        """The class box starts as the model's class of the newest committed object of the image on screen."""
        layer = self._objects_layer()
        rec = layer_record(layer)
        if rec is None:
            return
        names = list(rec.class_names) or [n for o in self.objects for n in (o.probabilities or {})]
        if [self.class_choice.itemText(i) for i in range(self.class_choice.count())] != names:
            self.class_choice.blockSignals(True)
            self.class_choice.clear()
            self.class_choice.addItems(names)
            self.class_choice.blockSignals(False)
        info = rec.slice(self._slice_on_screen())
        pick = info.corrected or info.predicted if info is not None else None
        self.class_choice.setCurrentIndex(self.class_choice.findText(pick) if pick else -1)

    def add_to_training_set(self) -> Any:
        """Write the image (slice) on screen and its committed objects as one training sample, with the class on
        the button (pressing it is your confirmation of that class)."""
        if not self._view_or_fail("add to the training set"):
            return None
        t = self._target
        layer = self._objects_layer()
        cls = self.class_choice.currentText()
        z = self._slice_on_screen()
        try:
            if layer is None or not self._slice_has_objects():
                raise SegmentError("commit an object of this image first (C)")
            if not cls:
                raise SegmentError("choose the class of the image first (Class, above)")
            covers = covering_images(self.viewer, t)
            if covers or not t.visible or not layer.visible:
                what = (f"{covers[0].name!r} lies over {t.name!r}" if covers else
                        f"{t.name!r} is hidden" if not t.visible else f"{layer.name!r} is hidden")
                raise SegmentError(f"{what}: you would add objects you cannot see; show them first")
        except SegmentError as exc:
            self.fail(exc, "Cannot add to the training set")
            return None
        from ..workflows.annotate import SampleItem

        image = np.asarray(layer_array(t)[z] if z is not None else layer_array(t))
        mask = (np.asarray(layer.data[z] if z is not None else layer.data) > 0).astype(np.uint8)
        item = SampleItem(image, mask, cls, z, "confirmed")
        rec = layer_record(layer)
        if rec is not None:
            rec.set_correction(z, cls)  # your class, beside the model's
            self.state.write_record(layer, rec)
        from .annotate import default_training_set

        root = self.dataset_root.value or default_training_set()
        self.dataset_root.value = root
        model = Path(self.checkpoint.value)
        self.status.setText(f"Writing the sample to {root} …")
        return self.start_job("napari_mtunet.jobs:add_samples", root, [item], source=t.name,
                              model=f"{model.parent.name}/{model.stem}" if self.checkpoint.value else None,
                              context="Adding to the training set failed", on_result=self._added)

    def _added(self, samples: list[Any]) -> None:
        self.added.extend(samples)
        names = ", ".join(Path(s.path).name for s in samples)
        self.inform(f"Added {names} ({samples[0].label}) to {self.dataset_root.value}")
        self._update_buttons()

    def undo_add(self) -> Any:
        if not self.added:
            return None
        last = self.added[-1]

        def done(_removed: Any) -> None:
            self.added.pop()
            self.inform(f"Removed {Path(last.path).name} from {last.root}")
            self._update_buttons()

        return self.start_job("napari_mtunet.jobs:undo_sample", last.root, last.path, context="Undo failed",
                              on_result=done)

    # ------------------------------------------------------------------ buttons

    def _update_buttons(self, *_: Any) -> None:
        z = self._slice_on_screen() if self._target is not None else None
        session = self._sessions.get(z)
        has_prompts = session is not None and not session.empty
        for b in (self.commit_button, self.undo_button, self.clear_button):
            b.setEnabled(has_prompts)
        for b in (self.click_button, self.box_button, self.toggle_button):
            b.setEnabled(bool(self._layers))
        can_add = self._target is not None and self._slice_has_objects() and not self.busy
        cls = self.class_choice.currentText()
        self.add_button.setEnabled(can_add)
        self.add_button.setText(f"Add as {cls}".replace("&", "&&") if can_add and cls else "Add to training set")
        self.undo_add_button.setEnabled(bool(self.added) and not self.busy)

    def set_busy(self, busy: bool) -> None:
        self._update_buttons()

    # ------------------------------------------------------------------ closing

    def on_closed(self) -> None:
        if self._closed_once:
            return
        self._closed_once = True
        self._unbind_keys()
        self._in_flight = None
        self._relay.stop()
        try:
            self.viewer.dims.events.current_step.disconnect(self._slice_changed)
            self.viewer.layers.events.removed.disconnect(self._layer_removed)
        except (TypeError, ValueError, RuntimeError):
            pass
        try:
            self._drop_layers()
        except Exception:  # noqa: BLE001 - napari is closing
            pass
        from ..compute import client

        proc = client(start=False)
        if proc is not None and proc.alive:
            proc.submit(f"{JOBS}:release")  # the model's memory goes back; nothing waits for it

    def closeEvent(self, event: Any) -> None:  # noqa: N802 - Qt API
        self.on_closed()
        super().closeEvent(event)


# --------------------------------------------------------------------------- helpers


_PROMPTS_SEEN: dict[tuple, bool | None] = {}


def _takes_prompts(path: str) -> bool | None:
    """Whether the checkpoint at ``path`` was trained with prompts (its header, read once per version of the
    file; None: unknown, e.g. a bioimage.io package)."""
    p = Path(path)
    if not str(path).endswith(".safetensors"):
        return None
    try:
        st = p.stat()
    except OSError:
        return None
    key = (str(p), st.st_mtime_ns, st.st_size)
    if key not in _PROMPTS_SEEN:
        from .._reader import checkpoint_info

        model = (checkpoint_info(p) or {}).get("model")
        _PROMPTS_SEEN.clear()
        _PROMPTS_SEEN[key] = bool(model.get("prompts", False)) if isinstance(model, dict) else None
    return _PROMPTS_SEEN[key]


def _colour_label_one(layer: Any, colour: str) -> None:
    """Label 1 of ``layer`` in ``colour`` (the object being segmented stands out from committed objects)."""
    try:
        from napari.utils.colormaps import DirectLabelColormap

        layer.colormap = DirectLabelColormap(color_dict={None: "transparent", 0: "transparent", 1: colour})
    except Exception:  # noqa: BLE001 - napari's default colours then
        pass
