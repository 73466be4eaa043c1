"""The controls the widgets share: path pickers, layer and device choices, wrapping labels.

This package is the only place in napari-mtunet that imports Qt or napari.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from qtpy.QtCore import QSize, Qt, Signal
from qtpy.QtWidgets import QComboBox, QFileDialog, QHBoxLayout, QLabel, QLineEdit, QPushButton, QSizePolicy, QWidget

from ._layers import layer_kind
from ._warmup import device_choices, warm_up_done


def breakable(text: str, every: int = 16) -> str:
    """``text`` with zero-width spaces after path separators and inside long runs (hashes), where Qt may wrap
    (not after "." or ",": numbers stay whole)."""
    out, run = [], 0
    for ch in str(text):
        out.append(ch)
        run = 0 if ch.isspace() else run + 1
        if ch in "/\\_-:" or run >= every:
            out.append("\u200b")
            run = 0
    return "".join(out)


class WrapLabel(QLabel):
    """A word-wrapping label that never widens the dock and is as tall as its text at its actual width.

    (A plain word-wrapping QLabel whose width may shrink reports the height of its text at its *minimum*
    width, so layouts gave it a tall, mostly empty box.)
    """

    def __init__(self, text: str = "", rich: bool = False) -> None:
        super().__init__("")
        self.setTextFormat(Qt.TextFormat.RichText if rich else Qt.TextFormat.PlainText)
        self.setWordWrap(True)
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.setMinimumWidth(60)
        self.setText(text)

    def _height(self) -> int:
        width = self.width() if self.width() > 60 else 280  # before the first layout: a typical dock width
        margins = self.contentsMargins()
        h = self.heightForWidth(width) if self.text() else 0
        return max(self.fontMetrics().height(), h) + margins.top() + margins.bottom()

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt API
        return QSize(60, self._height())

    def minimumSizeHint(self) -> QSize:  # noqa: N802 - Qt API
        return QSize(60, self._height())

    def resizeEvent(self, event: Any) -> None:  # noqa: N802 - Qt API
        super().resizeEvent(event)
        if event.oldSize().width() != event.size().width():
            self.updateGeometry()  # the text's height at the new width

    def setText(self, text: str) -> None:  # noqa: N802 - Qt API
        super().setText(text)
        self.updateGeometry()


class StatusLabel(WrapLabel):
    """A status line: wraps, never widens the dock (long paths and hashes are broken anywhere)."""

    def setText(self, text: str) -> None:  # noqa: N802 - Qt API
        super().setText(breakable(text))
        self.setToolTip(str(text) if len(str(text)) > 60 else "")

    def text(self) -> str:  # noqa: D401 - Qt API: the text as set (without the wrap points)
        return super().text().replace("\u200b", "")

    plain_text = text


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


def combo(items: Iterable[str], current: str | None = None, editable: bool = False) -> QComboBox:
    c = QComboBox()
    c.addItems(list(items))
    c.setEditable(editable)
    if current is not None:
        c.setCurrentText(current)
    return c


class DeviceCombo(QComboBox):
    """The device choice: "auto", "cpu" at once; the GPUs are added when the compute process has found them."""

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
