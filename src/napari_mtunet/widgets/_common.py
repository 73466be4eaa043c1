"""Small Qt helpers shared by the widgets: notifications, path pickers, layer pickers, workers.

This package is the only place in napari-mtunet that imports Qt or napari.
"""

from __future__ import annotations

import os
import string
import weakref
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from qtpy.QtCore import QObject, QTimer, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QWidget,
)

# --------------------------------------------------------------------------- notifications


def notify_error(message: str) -> None:
    """Show an error notification (a single place so tests can record them)."""
    from napari.utils.notifications import show_error

    show_error(message)


def notify_info(message: str) -> None:
    from napari.utils.notifications import show_info

    show_info(message)


def notify_warning(message: str) -> None:
    from napari.utils.notifications import show_warning

    show_warning(message)


def error_message(exc: BaseException, context: str = "") -> str:
    """The core's clear message, with advice for the failures users hit most."""
    msg = str(exc).strip() or type(exc).__name__
    low = msg.lower()
    if (isinstance(exc, MemoryError) or "out of memory" in low) and "reduce the batch size" not in low:
        msg = (
            f"Out of memory ({msg}). Reduce the batch size or the image size, "
            "or predict big images in tiles with a smaller tile size."
        )
    elif isinstance(exc, (OSError, ConnectionError)) and ("download" in low or "url" in low or "connect" in low):
        msg = (
            f"{msg}. Pretrained encoder weights could not be downloaded (offline?). Choose encoder "
            "weights 'none' or a local weights file."
        )
    elif not isinstance(exc, (ValueError, RuntimeError, OSError, KeyError)):
        msg = f"{type(exc).__name__}: {msg}"
    return f"{context}: {msg}" if context else msg


# --------------------------------------------------------------------------- session state


class SessionState(QObject):
    """What the widgets of one viewer share: the dataset config and the newest checkpoint."""

    checkpoint_changed = Signal(str)
    data_config_changed = Signal(object)

    def __init__(self) -> None:
        super().__init__()
        self.checkpoint: str | None = None
        self.data_config: Any = None
        self.class_names: list[str] = []

    def set_checkpoint(self, path: str | os.PathLike) -> None:
        self.checkpoint = str(path)
        self.checkpoint_changed.emit(self.checkpoint)

    def set_data_config(self, cfg: Any) -> None:
        self.data_config = cfg
        self.data_config_changed.emit(cfg)


_STATES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def state_for(viewer: Any) -> SessionState:
    """The shared state of ``viewer``'s widgets (created on first use, with the class overlay)."""
    key = getattr(viewer, "__wrapped__", viewer)  # PublicOnlyProxy
    try:
        st = _STATES.get(key)
    except TypeError:  # not weak-referenceable
        st = None
    if st is None:
        st = SessionState()
        try:
            _STATES[key] = st
        except TypeError:
            pass
        st.overlay = ClassOverlay(viewer, timer_parent=st)
    return st


# --------------------------------------------------------------------------- class of the current slice


def current_slice(viewer: Any, layer: Any) -> int | None:
    """The index of the 2-D image of ``layer`` shown now (None for a 2-D layer)."""
    import numpy as np

    if layer is None or layer.ndim < 3:
        return None
    try:
        idx = int(round(float(layer.world_to_data(viewer.dims.point)[0])))
    except Exception:  # noqa: BLE001
        idx = int(viewer.dims.current_step[0])
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    return int(np.clip(idx, 0, data.shape[0] - 1))


def layer_record(layer: Any) -> Any:
    from .. import layer_meta

    return layer_meta.read(getattr(layer, "metadata", None)) if layer is not None else None


def text_overlay(viewer: Any) -> Any:
    """napari's text overlay (``viewer.canvas.overlays["text"]`` since napari 0.6; ``viewer.text_overlay`` before)."""
    canvas = getattr(viewer, "canvas", None)
    overlays = getattr(canvas, "overlays", None)
    if overlays is not None:
        try:
            return overlays["text"]
        except (KeyError, TypeError):
            pass
    return viewer.text_overlay


#: The characters the class overlay shows (its glyphs are rendered ahead of use, see ClassOverlay.prewarm).
OVERLAY_GLYPHS = string.ascii_letters + string.digits + " ·:%[]()/-_.,'+&#"


class ClassOverlay:
    """Shows the class of the image on screen in napari's text overlay, saying where it comes from
    (predicted / ground truth / your correction): for the active layer, else the top visible one with a class.

    vispy renders each character of a text overlay on the CPU the first time it is shown (5-10 ms a glyph
    in software OpenGL, ~250 ms for the first text): shown at once, the first result froze the window for up
    to 0.7 s.  :meth:`prewarm` renders the glyphs a few at a time, invisibly, right after the first widget
    opens, while the overlay is unused.
    """

    CHUNK = 3
    STEP_MS = 120

    def __init__(self, viewer: Any, timer_parent: QObject | None = None) -> None:
        self.viewer = viewer
        viewer.dims.events.current_step.connect(self.update)
        viewer.layers.selection.events.active.connect(self.update)
        viewer.layers.events.inserted.connect(self.update)
        viewer.layers.events.removed.connect(self.update)
        self._warm_pos: int | None = None
        self._warm_saved: tuple[Any, ...] | None = None
        self._warm_timer = QTimer(timer_parent)
        self._warm_timer.setInterval(self.STEP_MS)
        self._warm_timer.timeout.connect(self._prewarm_step)
        self.prewarm()

    # ------------------------------------------------------------------ glyphs ahead of use

    def prewarm(self) -> None:
        """Render :data:`OVERLAY_GLYPHS` in small chunks (only while nobody uses the text overlay)."""
        if self._warm_pos is None:
            self._warm_pos = 0
            self._warm_timer.start()

    @property
    def prewarming(self) -> bool:
        return self._warm_timer.isActive()

    def _prewarm_step(self) -> None:
        try:
            overlay = text_overlay(self.viewer)
            if self._warm_saved is None:
                if overlay.visible or overlay.text:  # in use (by us or anyone): leave it alone
                    self._warm_timer.stop()
                    return
                self._warm_saved = (overlay.color, overlay.opacity)
                overlay.opacity = 0.0
            pos = int(self._warm_pos or 0)
            if pos >= len(OVERLAY_GLYPHS):
                self._end_prewarm()
                return
            overlay.text = OVERLAY_GLYPHS[pos:pos + self.CHUNK]
            overlay.visible = True
            self._warm_pos = pos + self.CHUNK
        except Exception:  # noqa: BLE001 - a closing viewer
            self._warm_timer.stop()

    def _end_prewarm(self) -> None:
        """Stop pre-rendering and give the overlay back as it was."""
        self._warm_timer.stop()
        if self._warm_saved is None:
            return
        color, opacity = self._warm_saved
        self._warm_saved = None
        self._warm_pos = len(OVERLAY_GLYPHS)
        try:
            overlay = text_overlay(self.viewer)
            overlay.visible = False
            overlay.text = ""
            overlay.color, overlay.opacity = color, opacity
        except Exception:  # noqa: BLE001 - a closing viewer
            pass

    # ------------------------------------------------------------------ the class on screen

    def layer(self) -> Any:
        active = self.viewer.layers.selection.active
        rec = layer_record(active)
        if rec is not None and rec.slices:
            return active
        for layer in reversed(list(self.viewer.layers)):
            rec = layer_record(layer)
            if layer.visible and rec is not None and rec.slices:
                return layer
        return None

    def update(self, *_: Any) -> None:
        from .. import layer_meta

        try:
            layer = self.layer()
            overlay = text_overlay(self.viewer)
        except Exception:  # noqa: BLE001 - a closing viewer
            return
        if layer is None:
            if getattr(overlay, "text", "").startswith("mtunet · "):
                overlay.visible = False
                overlay.text = ""
            return
        self._end_prewarm()  # the overlay is needed now
        rec = layer_record(layer)
        idx = current_slice(self.viewer, layer)
        where = layer.name + (f" [{idx}]" if idx is not None else "")
        overlay.text = f"mtunet · {where}: {layer_meta.describe_slice(rec.slice(idx))}"
        overlay.visible = True


# --------------------------------------------------------------------------- pickers


class PathEdit(QWidget):
    """A line edit with a "..." button: mode "dir", "file" or "save"."""

    changed = Signal(str)

    def __init__(self, mode: str = "dir", file_filter: str = "", placeholder: str = "", parent=None):
        super().__init__(parent)
        self.mode = mode
        self.file_filter = file_filter
        self.line = QLineEdit()
        self.line.setPlaceholderText(placeholder)
        self.button = QPushButton("…")
        self.button.setMaximumWidth(32)
        self.button.setToolTip("Browse")
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.line)
        lay.addWidget(self.button)
        self.button.clicked.connect(self._browse)
        self.line.editingFinished.connect(lambda: self.changed.emit(self.value))

    @property
    def value(self) -> str:
        return self.line.text().strip()

    @value.setter
    def value(self, v: str | os.PathLike | None) -> None:
        self.line.setText("" if v is None else str(v))
        self.changed.emit(self.value)

    def _browse(self) -> None:  # pragma: no cover - needs a human
        start = self.value or str(Path.home())
        if self.mode == "dir":
            p = QFileDialog.getExistingDirectory(self, "Choose a folder", start)
        elif self.mode == "save":
            p, _ = QFileDialog.getSaveFileName(self, "Save as", start, self.file_filter)
        else:
            p, _ = QFileDialog.getOpenFileName(self, "Choose a file", start, self.file_filter)
        if p:
            self.value = p


class LayerCombo(QComboBox):
    """Choose a layer of the given napari type(s); follows the viewer's layer list."""

    NONE = "(none)"

    def __init__(self, viewer: Any, kinds: tuple[str, ...] = ("image",), allow_none: bool = False, parent=None):
        super().__init__(parent)
        self.viewer = viewer
        self.kinds = kinds
        self.allow_none = allow_none
        self.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.setMinimumContentsLength(12)
        events = viewer.layers.events
        for ev in (events.inserted, events.removed, events.moved, events.reordered):
            ev.connect(self.refresh)
        events.inserted.connect(self._watch_names)
        for layer in viewer.layers:
            layer.events.name.connect(self.refresh)
        self.refresh()

    def _watch_names(self, event: Any) -> None:
        layer = getattr(event, "value", None)
        if layer is not None:
            layer.events.name.connect(self.refresh)

    def layers(self) -> list[Any]:
        return [lyr for lyr in self.viewer.layers if layer_kind(lyr) in self.kinds]

    def refresh(self, *_: Any) -> None:
        current = self.currentText()
        names = [lyr.name for lyr in self.layers()]
        if self.allow_none:
            names = [self.NONE, *names]
        self.blockSignals(True)
        self.clear()
        self.addItems(names)
        if current in names:
            self.setCurrentText(current)
        elif names:
            # prefer the most recently added layer
            self.setCurrentIndex(len(names) - 1)
        self.blockSignals(False)
        if current != self.currentText():
            self.currentIndexChanged.emit(self.currentIndex())

    def layer(self) -> Any | None:
        name = self.currentText()
        if not name or name == self.NONE:
            return None
        for lyr in self.viewer.layers:
            if lyr.name == name and layer_kind(lyr) in self.kinds:
                return lyr
        return None

    def set_layer(self, layer: Any) -> None:
        self.refresh()
        self.setCurrentText(layer.name)


def layer_kind(layer: Any) -> str:
    return type(layer).__name__.lower()


def combo(items: Iterable[str], current: str | None = None, editable: bool = False) -> QComboBox:
    c = QComboBox()
    c.addItems(list(items))
    c.setEditable(editable)
    if current is not None:
        c.setCurrentText(current)
    return c


def device_choices() -> list[str]:
    """"auto" and the devices of this machine; only "auto" and "cpu" until the warm-up has imported torch
    (asking torch which GPUs exist imports it, which must not happen on napari's GUI thread)."""
    devices = _WARM.get("devices")
    return ["auto", *(devices or ["cpu"])]


class DeviceCombo(QComboBox):
    """The device choice: "auto", "cpu" at once; the GPUs are added when the background warm-up knows them."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self._wanted = "auto"
        self.refresh()
        self.currentTextChanged.connect(self._chosen)

    def _chosen(self, name: str) -> None:
        if name:
            self._wanted = name

    def refresh(self) -> None:
        names = device_choices()
        if [self.itemText(i) for i in range(self.count())] == names:
            return
        current = self._wanted if self._wanted in names else (self.currentText() or "auto")
        self.blockSignals(True)
        self.clear()
        self.addItems(names)
        self.setCurrentText(current if current in names else "auto")
        self.blockSignals(False)
        self.setToolTip("Available here: " + ", ".join(names[1:]) + ("" if warm_up_done() else " (looking for GPUs…)"))

    def want(self, name: str) -> None:
        """Choose ``name`` now, or when it becomes available (a remembered "cuda:0" before the GPUs are known)."""
        self._wanted = name
        if name in [self.itemText(i) for i in range(self.count())]:
            self.setCurrentText(name)


#: Modules whose first import holds the GIL for up to a few hundred ms at a time
#: (C-extension initialisation: torch, torchvision, scikit-learn, scikit-image, smp).
#: The list is what Start / Predict / Add / Fine-tune import on first use (measured: after the warm-up,
#: none of them imports a new module; tests/test_widgets_responsiveness.py checks it).
WARM_MODULES = (
    "torch",
    "torchvision.transforms.v2",
    "safetensors.torch",
    "segmentation_models_pytorch",  # imports timm and huggingface_hub (httpx, anyio ...) when a model is built
    "timm",
    "huggingface_hub",
    "filelock",
    "encodings.utf_8_sig",  # labels.csv
    "sklearn.model_selection",
    "sklearn.metrics",
    "skimage.io",
    "skimage.transform",
    "napari_mtunet.model",
    "napari_mtunet.encoders",
    "napari_mtunet.checkpoint",
    "napari_mtunet.paths",
    "napari_mtunet.data",
    "napari_mtunet.data.dataset",
    "napari_mtunet.data.loading",
    "napari_mtunet.data.splits",
    "napari_mtunet.data.duplicates",
    "napari_mtunet.data.writer",
    "napari_mtunet.training",
    "napari_mtunet.training.engine",
    "napari_mtunet.workflows",
    "napari_mtunet.workflows.train",
    "napari_mtunet.workflows.finetune",
    "napari_mtunet.workflows.predict_layers",
    "napari_mtunet.inference",
    "napari_mtunet.explain",
    "napari_mtunet.export",
)
_WARM: dict[str, Any] = {"thread": None, "done": False, "devices": None}


def warm_up() -> Any:
    """Import the heavy scientific stack once, in a background thread, when a widget opens.

    The first import of these modules cannot release the GIL, so doing it
    lazily at "Start"/"Predict" would freeze napari for a moment in the
    middle of the work; doing it when the widget appears keeps training and
    prediction smooth.  A plain daemon thread, not a Qt worker: closing
    napari while it runs must not delete Qt signal objects under it (that
    aborted the process).  Returns the thread (None once done).
    """
    import threading

    if _WARM["done"] or _WARM["thread"] is not None:
        return _WARM["thread"]

    def run() -> None:
        import importlib

        from .._triton import guard_triton

        guard_triton()  # before torchvision can import triton (software OpenGL segfaults otherwise)
        for name in (*WARM_MODULES, *_submodules("napari_mtunet.workflows"), *_submodules("napari_mtunet.training")):
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - a missing optional module is reported where it is used
                pass
        try:
            from ..device import available_devices

            _WARM["devices"] = available_devices()
        except Exception:  # noqa: BLE001 - "cpu" stays the choice
            _WARM["devices"] = ["cpu"]
        _WARM["done"] = True
        _WARM["thread"] = None

    thread = threading.Thread(target=run, name="napari-mtunet warm-up", daemon=True)
    _WARM["thread"] = thread
    thread.start()
    return thread


def _submodules(package: str) -> list[str]:
    """Every module of a napari_mtunet package (the workflows import theirs lazily, one per step)."""
    import importlib
    import pkgutil

    try:
        pkg = importlib.import_module(package)
    except Exception:  # noqa: BLE001
        return []
    return [f"{package}.{m.name}" for m in pkgutil.iter_modules(pkg.__path__)]


def warm_up_done() -> bool:
    return bool(_WARM["done"])


def cpu_threads_for_background() -> int:
    """Leave one core to the user interface when computing on the CPU."""
    return max(1, (os.cpu_count() or 2) - 1)


class TorchThreads:
    """Context manager: limit torch's CPU threads while a background job runs."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.saved: int | None = None

    def __enter__(self) -> TorchThreads:
        import torch

        if not str(self.device).startswith(("cuda", "mps")):
            self.saved = torch.get_num_threads()
            torch.set_num_threads(min(self.saved, cpu_threads_for_background()))
        return self

    def __exit__(self, *exc: Any) -> None:
        import torch

        if self.saved is not None:
            torch.set_num_threads(self.saved)
