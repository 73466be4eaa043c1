"""The class of the image on screen, in napari's text overlay (bottom left of the canvas), saying where it comes
from: predicted, ground truth or your correction.

It describes a layer that is actually visible: an image lying over the one a prediction belongs to hides
that prediction's class (the overlay then says which layer lies over it).  Two short lines, names elided in
the middle, at the bottom left: napari's notifications appear at the bottom right.
"""

from __future__ import annotations

import string
from typing import Any

from qtpy.QtCore import QObject, QTimer

from ._layers import covering_images, current_slice, elide, image_shown, is_shown, layer_record, source_image

#: Where the overlay sits: left, so that a long text grows into the canvas (right-aligned, it was cut off on the
#: left); at the bottom, where it covers the least of an image; napari's notifications pop up at the bottom right.
POSITION = "bottom_left"
#: The longest line the overlay shows (names are elided in the middle to fit).
LINE_CHARS = 56


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
OVERLAY_GLYPHS = string.ascii_letters + string.digits + " ·:%[]()/-_.,'+&#…"


class ClassOverlay:
    """Shows the class of the image on screen in napari's text overlay, saying where it comes from
    (predicted / ground truth / your correction): for the active layer when it is on screen, else the top
    layer with a class that is on screen (visible, and its image not under another image).

    vispy renders each character of a text overlay on the CPU the first time it is shown (5-10 ms a glyph
    in software OpenGL, ~300 ms of CPU for the first text): shown at once, the first result froze the window.
    :meth:`prewarm` renders the glyphs a few at a time right after the first widget opens, into the canvas's
    glyph cache (no canvas redraw; when that is not reachable, invisibly in the unused overlay).
    """

    #: glyphs rendered per step (vispy's CPU SDF renderer takes 10-40 ms a glyph here: one at a time)
    CHUNK = 1
    STEP_MS = 60

    def __init__(self, viewer: Any, timer_parent: QObject | None = None) -> None:
        self.viewer = viewer
        viewer.dims.events.current_step.connect(self.update)
        viewer.layers.selection.events.active.connect(self.update)
        events = viewer.layers.events
        for ev in (events.inserted, events.removed, events.moved, events.reordered):
            ev.connect(self.update)
        events.inserted.connect(self._watch)
        for layer in viewer.layers:
            self._watch_layer(layer)
        self._font: Any = None
        self._warm_pos: int | None = None
        self._warm_saved: tuple[Any, ...] | None = None
        self._warm_timer = QTimer(timer_parent)
        self._warm_timer.setInterval(self.STEP_MS)
        self._warm_timer.timeout.connect(self._prewarm_step)
        self.prewarm()

    def _watch(self, event: Any) -> None:
        layer = getattr(event, "value", None)
        if layer is not None:
            self._watch_layer(layer)

    def _watch_layer(self, layer: Any) -> None:
        """What hides or shows a layer changes what is on screen."""
        for name in ("visible", "opacity", "blending", "translate", "scale"):
            ev = getattr(layer.events, name, None)
            if ev is not None:
                ev.connect(self.update)

    # ------------------------------------------------------------------ glyphs ahead of use

    def prewarm(self) -> None:
        """Render :data:`OVERLAY_GLYPHS` in small chunks (only while nobody uses the text overlay)."""
        if self._warm_pos is None:
            self._warm_pos = 0
            self._warm_timer.start()

    @property
    def prewarming(self) -> bool:
        return self._warm_timer.isActive()

    def _canvas_font(self) -> Any:
        """The glyph cache of napari's canvas text (napari's private ``canvas._font_info``), or None.

        Loading glyphs into it directly renders them without drawing the canvas: a canvas redraw costs ~45 ms
        of CPU in software OpenGL, more than the glyphs themselves, and the fallback below needs one per chunk.
        """
        if self._font is None:
            import warnings

            viewer = getattr(self.viewer, "__wrapped__", self.viewer)  # not through napari's plugin proxy
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    info = viewer.window._qt_viewer.canvas._font_info
                    self._font = info.font_manager.get_font(info.face)
            except Exception:  # noqa: BLE001 - another napari version: fall back to showing the glyphs
                self._font = False
        return self._font or None

    def _prewarm_step(self) -> None:
        pos = int(self._warm_pos or 0)
        last = len(OVERLAY_GLYPHS) - self.CHUNK  # shown once (invisibly): the text's shaders compile then
        font = self._canvas_font() if pos < last else None
        if font is not None and self._warm_saved is None:
            try:
                for ch in OVERLAY_GLYPHS[pos:min(pos + self.CHUNK, last)]:
                    font[ch]
                self._warm_pos = min(pos + self.CHUNK, last)
                return
            except Exception:  # noqa: BLE001 - fall back to the overlay itself
                pass
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
        """The layer whose class is shown: the active one if it is on screen, else the top one on screen; then
        the same for hidden layers whose image is on screen (a mask hidden to look at the image)."""
        viewer = self.viewer
        active = viewer.layers.selection.active
        layers = [active, *reversed(list(viewer.layers))]
        for shown in (is_shown, image_shown):
            for layer in layers:
                rec = layer_record(layer)
                if rec is not None and rec.slices and shown(viewer, layer):
                    return layer
        return None

    def text(self) -> str:
        """What the overlay says now ("" when no napari-mtunet layer is on screen)."""
        from .. import layer_meta

        viewer = self.viewer
        layer = self.layer()
        if layer is None:
            active = viewer.layers.selection.active
            rec = layer_record(active)
            if rec is None or not rec.slices:
                return ""
            image = source_image(viewer, active)
            covers = covering_images(viewer, image if image is not None else active)
            if not active.visible or (image is not None and not image.visible):
                return f"mtunet · {elide(active.name, LINE_CHARS - 9)}\nis hidden (its class is not shown)"
            if covers:
                return (f"mtunet · {elide(active.name, LINE_CHARS - 9)}\n"
                        f"is under {elide(covers[0].name, LINE_CHARS - 9)}")
            return ""
        rec = layer_record(layer)
        idx = current_slice(viewer, layer)
        where = elide(layer.name, LINE_CHARS - 9 - (len(f" [{idx}]") if idx is not None else 0))
        where += f" [{idx}]" if idx is not None else ""
        return f"mtunet · {where}\n{elide(layer_meta.describe_slice(rec.slice(idx)), LINE_CHARS)}"

    def update(self, *_: Any) -> None:
        try:
            text = self.text()
            overlay = text_overlay(self.viewer)
        except Exception:  # noqa: BLE001 - a closing viewer
            return
        if not text:
            if getattr(overlay, "text", "").startswith("mtunet · "):
                overlay.visible = False
                overlay.text = ""
            return
        self._end_prewarm()  # the overlay is needed now
        overlay.position = POSITION
        overlay.text = text
        overlay.visible = True
