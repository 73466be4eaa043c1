"""napari layers as the widgets see them: their data, their napari-mtunet record, the slice on screen, and
which image is actually visible on the canvas (another image may lie over it).
"""

from __future__ import annotations

from typing import Any

#: Blending modes in which an image layer hides what lies under it (additive / minimum ... mix instead).
HIDING_BLENDINGS = ("opaque", "translucent", "translucent_no_depth")
#: An image at least this opaque hides the images under it.
HIDING_OPACITY = 0.5
#: Model names in layer names are shortened to this many characters (napari's layer list shows ~28).
MODEL_NAME_CHARS = 16


def layer_kind(layer: Any) -> str:
    return type(layer).__name__.lower()


def layer_array(layer: Any) -> Any:
    """The full-resolution data of a layer (level 0 of a multiscale)."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def spatial_shape(layer: Any) -> tuple[int, ...]:
    shape = tuple(layer_array(layer).shape)
    return shape[:-1] if getattr(layer, "rgb", False) else shape


def layer_record(layer: Any) -> Any:
    from .. import layer_meta

    return layer_meta.read(getattr(layer, "metadata", None)) if layer is not None else None


def current_slice(viewer: Any, layer: Any) -> int | None:
    """The index of the 2-D image of ``layer`` shown now (None for a 2-D layer)."""
    import numpy as np

    if layer is None or layer.ndim < 3:
        return None
    try:
        idx = int(round(float(layer.world_to_data(viewer.dims.point)[0])))
    except Exception:  # noqa: BLE001
        idx = int(viewer.dims.current_step[0])
    data = layer_array(layer)
    return int(np.clip(idx, 0, data.shape[0] - 1))


def short_model_name(display: str, limit: int = MODEL_NAME_CHARS) -> str:
    """A model's ``run folder/file`` name short enough for napari's layer list: kept when it fits, else the
    end of the run folder (a training run's folder ends in its time: ``…205537/best``) and the file, at most
    ``limit`` characters."""
    text = str(display)
    if len(text) <= limit:
        return text
    folder, _, file = text.rpartition("/")
    tail = folder.rsplit("-", 1)[-1] if folder else ""
    if tail.isdigit():  # a training run's folder: <dataset>-<encoder>-<date>-<time>
        short = f"…{tail}/{file}"
        if len(short) <= limit:
            return short
    return "…" + text[-(limit - 1):]


def elide(text: str, limit: int) -> str:
    """``text`` cut in the middle to at most ``limit`` characters."""
    text = str(text)
    if len(text) <= limit:
        return text
    head = (limit - 1) // 2
    return text[:head] + "…" + text[-(limit - 1 - head):]


def is_heatmap(layer: Any) -> bool:
    rec = layer_record(layer)
    return rec is not None and rec.kind == "gradcam"


def _yx_extent(layer: Any) -> tuple[float, float, float, float] | None:
    """(y0, y1, x0, x1) of the layer's last two world axes."""
    try:
        ext = layer.extent.world
        return float(ext[0][-2]), float(ext[1][-2]), float(ext[0][-1]), float(ext[1][-1])
    except Exception:  # noqa: BLE001 - a layer without an extent
        return None


def overlap(a: Any, b: Any) -> bool:
    ea, eb = _yx_extent(a), _yx_extent(b)
    if ea is None or eb is None:
        return True
    return ea[0] < eb[1] and eb[0] < ea[1] and ea[2] < eb[3] and eb[2] < ea[3]


def hides(upper: Any, lower: Any) -> bool:
    """Whether image layer ``upper`` hides ``lower`` on the canvas (visible, opaque enough, overlapping)."""
    return (
        layer_kind(upper) == "image" and bool(upper.visible) and float(upper.opacity) >= HIDING_OPACITY
        and str(getattr(upper.blending, "value", upper.blending)) in HIDING_BLENDINGS
        and not is_heatmap(upper) and overlap(upper, lower)
    )


def covering_images(viewer: Any, layer: Any) -> list[Any]:
    """The image layers above ``layer`` that hide it (top first)."""
    layers = list(viewer.layers)
    if layer not in layers:
        return []
    above = layers[layers.index(layer) + 1:]
    return [lyr for lyr in reversed(above) if lyr is not layer and hides(lyr, layer)]


def source_image(viewer: Any, layer: Any) -> Any:
    """The image layer ``layer``'s pixels belong to: its recorded source image, itself for an image, or None."""
    rec = layer_record(layer)
    name = getattr(rec, "source_layer", None) if rec is not None else None
    if name and name in viewer.layers:
        return viewer.layers[name]
    return layer if layer_kind(layer) == "image" else None


def is_shown(viewer: Any, layer: Any) -> bool:
    """Whether ``layer`` and the image it belongs to are visible and not hidden under another image."""
    if layer is None or not layer.visible:
        return False
    image = source_image(viewer, layer)
    if image is not None and image is not layer:
        if not image.visible or covering_images(viewer, image):
            return False
    return not covering_images(viewer, layer)


def image_shown(viewer: Any, layer: Any) -> bool:
    """Whether the image ``layer`` belongs to is on screen (visible, not under another image), whether or not
    ``layer`` itself is: a hidden mask still describes the image under it."""
    if layer is None:
        return False
    image = source_image(viewer, layer)
    if image is None or image is layer:
        return is_shown(viewer, layer)
    return bool(image.visible) and not covering_images(viewer, image)


def bring_up(viewer: Any, image: Any, labels: Any = None) -> bool:
    """Show ``image`` (and ``labels`` over it): make them visible and move them above any image that hides
    them.  Returns whether anything changed."""
    changed = False
    for lyr in (image, labels):
        if lyr is not None and not lyr.visible:
            lyr.visible = True
            changed = True
    if covering_images(viewer, image) or (labels is not None and covering_images(viewer, labels)):
        layers = viewer.layers
        layers.move(layers.index(image), len(layers))
        if labels is not None:
            layers.move(layers.index(labels), len(layers))
        changed = True
    return changed
