"""What the widgets of one viewer share: the dataset settings, the newest model, and a signal whenever a
napari-mtunet layer record changes (a class picked in Annotate reaches the Predict read-out and the
canvas overlay at once)."""

from __future__ import annotations

import os
import weakref
from typing import Any

from qtpy.QtCore import QObject, Signal


class SessionState(QObject):
    """The dataset config and the newest checkpoint of one viewer's widgets."""

    checkpoint_changed = Signal(str)
    data_config_changed = Signal(object)
    #: a layer's ``metadata["mtunet"]`` was changed by a widget (the layer is the argument)
    record_changed = Signal(object)

    def __init__(self) -> None:
        super().__init__()
        self.checkpoint: str | None = None
        self.data_config: Any = None
        self.class_names: list[str] = []
        self.overlay: Any = None

    def set_checkpoint(self, path: str | os.PathLike) -> None:
        self.checkpoint = str(path)
        self.checkpoint_changed.emit(self.checkpoint)

    def set_data_config(self, cfg: Any) -> None:
        self.data_config = cfg
        self.data_config_changed.emit(cfg)

    def write_record(self, layer: Any, record: Any) -> None:
        """Store ``record`` as ``layer``'s napari-mtunet metadata and tell every widget."""
        from .. import layer_meta

        layer_meta.write(layer.metadata, record)
        self.record_changed.emit(layer)


_STATES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def state_for(viewer: Any) -> SessionState:
    """The shared state of ``viewer``'s widgets (created on first use, with the class overlay)."""
    from ._overlay import ClassOverlay

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
        st.record_changed.connect(st.overlay.update)
    return st
