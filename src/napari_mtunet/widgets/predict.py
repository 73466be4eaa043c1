"""Predict widget: a model + an image layer -> a Labels layer whose metadata holds the classes.

The image layer is never modified.  The work runs in the compute process
(:mod:`napari_mtunet.jobs`: one layer, all layers, a folder, export); the
widget turns results into layers, the class read-out and notifications.

Layout: the model and device on top, then one tab per way of predicting
(**Image layers**, **Folder**, **Export**; a further mode, such as
segmenting one object from clicks, is one more tab), and below them, always
visible, the buttons, progress, status and the class of the image on screen.

A new prediction of the same image by the same model replaces the earlier
one in place when you have not painted on it (no new layer, no pile of
masks); an edited one is kept but hidden under the new one.
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from .. import layer_meta
from ._controls import DeviceCombo, LayerCombo, PathEdit, StatusLabel, WrapLabel, breakable, combo
from ._job import JobWidget
from ._layers import (
    covering_images,
    current_slice,
    image_shown,
    is_heatmap,
    layer_array,
    layer_kind,
    layer_record,
    short_model_name,
    source_image,
    spatial_shape,
)

MODEL_FILTER = "napari-mtunet model (*.safetensors *.zip rdf.yaml)"
JOBS = "napari_mtunet.jobs"


def describe_model(path: str) -> str:
    """One line about a model file, read from its header on the GUI thread (no torch, a few ms)."""
    from .._reader import checkpoint_info

    p = Path(path)
    if not str(path).endswith(".safetensors"):
        return f"{p.name} (bioimage.io package; checked when predicting)"
    if not p.is_file():
        return f"{path}: no such file"
    meta = checkpoint_info(p)
    if meta is None:
        return f"{p.name}: not a napari-mtunet checkpoint"
    m = meta.get("model") if isinstance(meta.get("model"), dict) else {}
    pre = meta.get("preprocessing") if isinstance(meta.get("preprocessing"), dict) else {}
    names = meta.get("class_names") or m.get("class_names") or []
    parent = meta.get("parent")
    parts = [f"{p.parent.name}/{p.stem}: {m.get('encoder_name', '?')} UNet, task {m.get('task', '?')}"]
    if names:
        parts.append("classes " + ", ".join(map(str, names)))
    if pre.get("image_size"):
        parts.append(f"{pre['image_size']} px")
    if meta.get("content_hash"):
        parts.append(f"hash {str(meta['content_hash'])[:12]}")
    if isinstance(parent, str) and parent:
        pp = Path(parent.split(":", 1)[-1])
        parts.append(f"fine-tuned from {pp.parent.name}/{pp.stem}" if pp.parent.name else f"fine-tuned from {pp}")
    return ", ".join(parts)


class ClassReadout(QWidget):
    """The class of the image on screen, each value labelled with its source, and the model's probabilities."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.title = WrapLabel("No prediction yet", rich=True)  # wraps; a long layer name never widens the dock
        self.bars_box = QVBoxLayout()
        self.bars_box.setSpacing(2)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.title)
        lay.addLayout(self.bars_box)
        self.bars: dict[str, QProgressBar] = {}
        self.info: layer_meta.SliceInfo | None = None

    def _ensure_bars(self, names: list[str]) -> None:
        if list(self.bars) == names:
            return
        for bar in self.bars.values():
            self.bars_box.removeWidget(bar)
            bar.deleteLater()
        self.bars = {}
        for n in names:
            bar = QProgressBar()
            bar.setRange(0, 1000)
            bar.setTextVisible(True)
            bar.setMaximumHeight(18)
            self.bars_box.addWidget(bar)
            self.bars[n] = bar

    def show_result(self, layer_name: str, index: int | None, info: layer_meta.SliceInfo | None,
                    threshold: float | None = None, hidden_by: str | None = None) -> None:
        """Show ``info`` of ``layer_name`` (slice ``index``), each value with its source."""
        self.info = info
        where = html.escape(breakable(layer_name)) + (f" [slice {index}]" if index is not None else "")
        if info is None or not (info.predicted or info.truth or info.corrected):
            self.title.setText(f"{where}: no class for this image")
            for bar in self.bars.values():
                bar.setValue(0)
            return
        lines = [f"<i>{where}</i>"]
        if hidden_by:
            lines.append(f"<b>Not on screen</b>: {html.escape(breakable(hidden_by))}")
        if info.predicted:
            conf = info.confidence()
            lines.append(f"Predicted by the model: <b>{html.escape(info.predicted)}</b>"
                         + (f" ({conf:.0%})" if conf is not None else ""))
        if info.lesion_fraction is not None:
            thr = f" {threshold:g}" if threshold is not None else ""
            lines.append(f"Predicted mask: {info.lesion_fraction:.1%} of the image" if info.lesion_fraction > 0
                         else f"Predicted mask: empty (no lesion above the threshold{thr})")
        if info.truth:
            lines.append(f"Ground truth (dataset): <b>{html.escape(info.truth)}</b>")
        if info.corrected:
            lines.append(f"Your class: <b>{html.escape(info.corrected)}</b>")
        self.title.setText("<br>".join(lines))
        probs = info.probabilities or {}
        self._ensure_bars(list(probs))
        for n, bar in self.bars.items():
            p = float(probs.get(n, 0.0))
            bar.setValue(int(round(p * 1000)))
            bar.setFormat(f"model: {n} {p:.1%}")

    def current_class(self) -> str | None:
        return self.info.predicted if self.info is not None else None


class PredictWidget(JobWidget):
    """Dock widget: run a model on an image layer (or all layers / a folder); export the model."""

    def __init__(self, napari_viewer: Any, parent=None):
        super().__init__(napari_viewer, parent)
        self.last_result: Any = None
        self.last_labels: Any = None
        self._edited: set[int] = set()  # ids of prediction layers the user painted on
        self._updating: set[int] = set()
        self._show_steps: list[Any] = []
        self._show_timer = QTimer(self)
        self._show_timer.setSingleShot(True)
        self._show_timer.setInterval(0)
        self._show_timer.timeout.connect(self._next_show_step)

        # ---- the model (every tab uses it)
        self.checkpoint = PathEdit("file", MODEL_FILTER, "model (.safetensors or bioimage.io .zip)")
        self.model_info = StatusLabel("")
        self.device = DeviceCombo()
        top = QFormLayout()
        top.addRow("Model", self.checkpoint)
        top.addRow("", self.model_info)
        top.addRow("Device", self.device)

        # ---- tab: image layers
        self.image_layer = LayerCombo(napari_viewer, ("image",))
        self.mode = combo(["auto", "resize", "native", "tiled"], "auto")
        self.mode.setToolTip("auto: as trained (resize) for normal images, tiled at native resolution for big ones")
        self.tile_size = QSpinBox()
        self.tile_size.setRange(64, 4096)
        self.tile_size.setSingleStep(32)
        self.tile_size.setValue(512)
        self.threshold = QDoubleSpinBox()
        self.threshold.setRange(0.0, 1.0)
        self.threshold.setSingleStep(0.05)
        self.threshold.setValue(0.5)
        self.gradcam = QCheckBox("Grad-CAM heat map layer")
        layers_tab = QWidget()
        lf = QFormLayout(layers_tab)
        lf.addRow("Image layer", self.image_layer)
        lf.addRow("Mode", self.mode)
        lf.addRow("Tile size", self.tile_size)
        lf.addRow("Threshold", self.threshold)
        lf.addRow("", self.gradcam)

        # ---- tab: a folder to disk
        self.folder_in = PathEdit("dir", placeholder="folder of images")
        self.folder_out = PathEdit("dir", placeholder="output folder: masks/ + predictions.csv (not the input folder)")
        self.folder_button = QPushButton("Predict folder to disk")
        folder_tab = QWidget()
        ff = QFormLayout(folder_tab)
        ff.addRow("Input", self.folder_in)
        ff.addRow("Output", self.folder_out)
        ff.addRow(WrapLabel("A new folder beside or inside the input folder is fine; the input folder itself is "
                            "not (outputs never lie among inputs)."))
        ff.addRow(self.folder_button)

        # ---- tab: export
        self.export_format = combo(["onnx", "bioimageio"], "onnx")
        self.export_button = QPushButton("Export model…")
        export_tab = QWidget()
        ef = QHBoxLayout(export_tab)
        ef.addWidget(self.export_format)
        ef.addWidget(self.export_button)
        ef.addStretch(1)

        self.tabs = QTabWidget()
        self.tabs.addTab(layers_tab, "Image layers")
        self.tabs.addTab(folder_tab, "Folder")
        self.tabs.addTab(export_tab, "Export")

        lay = self.body_layout
        lay.addLayout(top)
        lay.addWidget(self.tabs)
        lay.addStretch(1)

        # ---- what a user watches: always visible
        self.predict_button = QPushButton("Predict")
        self.predict_all_button = QPushButton("Predict all image layers")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setVisible(False)
        self.progress.setMaximumHeight(18)
        self.readout = ClassReadout()
        buttons = QHBoxLayout()
        buttons.addWidget(self.predict_button)
        buttons.addWidget(self.predict_all_button)
        buttons.addWidget(self.stop_button)
        self.result_box = QGroupBox("Class of the image on screen")
        rl = QVBoxLayout(self.result_box)
        rl.setContentsMargins(6, 4, 6, 4)
        rl.addWidget(self.readout)
        w = self.watch_layout
        w.addLayout(buttons)
        w.addWidget(self.progress)
        w.addWidget(self.status)
        w.addWidget(self.result_box)

        self.predict_button.clicked.connect(self.predict)
        self.predict_all_button.clicked.connect(self.predict_all)
        self.stop_button.clicked.connect(self.stop_job)
        self.folder_button.clicked.connect(self.predict_folder)
        self.export_button.clicked.connect(self.export)
        self.checkpoint.changed.connect(self._describe_checkpoint)
        self.state.checkpoint_changed.connect(self.set_checkpoint)
        self.state.record_changed.connect(self.update_readout)  # a class picked in Annotate shows here at once
        napari_viewer.dims.events.current_step.connect(self.update_readout)
        napari_viewer.layers.selection.events.active.connect(self.update_readout)
        for ev in (napari_viewer.layers.events.moved, napari_viewer.layers.events.removed):
            ev.connect(self.update_readout)
        if self.state.checkpoint:
            self.checkpoint.value = self.state.checkpoint

    # ------------------------------------------------------------------ parameters

    def params(self) -> dict[str, Any]:
        ckpt = self.checkpoint.value
        if not ckpt:
            raise ValueError("choose a model (.safetensors checkpoint or bioimage.io .zip) first")
        return {
            "checkpoint": ckpt,
            "device": self.device.currentText(),
            "threshold": float(self.threshold.value()),
            "mode": self.mode.currentText(),
            "tile_size": int(self.tile_size.value()),
        }

    def set_checkpoint(self, path: str | os.PathLike) -> None:
        self.checkpoint.value = str(path)

    def _describe_checkpoint(self, path: str) -> None:
        self.model_info.setText(describe_model(path) if path else "")

    # ------------------------------------------------------------------ running

    def set_busy(self, busy: bool) -> None:
        for b in (self.predict_button, self.predict_all_button, self.folder_button, self.export_button):
            b.setEnabled(not busy)
        self.stop_button.setEnabled(busy)
        if not busy:
            self.progress.setVisible(False)

    def _progress(self, ev: Any) -> None:
        if getattr(ev, "kind", None) == "progress":
            self.progress.setVisible(True)
            self.progress.setRange(0, max(1, ev.total))
            self.progress.setValue(ev.done)
            self.progress.setFormat(f"{ev.item}: {ev.done}/{ev.total} {ev.what}" if ev.item else f"%v/%m {ev.what}")

    def predict(self, *_: Any) -> Any:
        """Predict the chosen image layer; the result is shown as a Labels layer."""
        layer = self.image_layer.layer()
        try:
            params = self.params()
            if layer is None:
                raise ValueError("choose an image layer to predict")
        except Exception as exc:  # noqa: BLE001
            self.fail(exc, "Cannot predict")
            return None
        self.status.setText(f"Predicting {layer.name!r}…")
        return self.start_job(f"{JOBS}:predict_layer", params, _sendable(layer_array(layer)),
                              bool(getattr(layer, "rgb", False)), layer.name, self.gradcam.isChecked(),
                              context=f"Prediction of {layer.name!r} failed", cancellable=True,
                              on_event=self._progress, on_result=self._add_result)

    def predict_all(self, *_: Any) -> Any:
        """Predict every image layer in one job; one Labels layer per image layer."""
        layers = [lyr for lyr in self.viewer.layers if layer_kind(lyr) == "image" and not is_heatmap(lyr)]
        try:
            params = self.params()
            if not layers:
                raise ValueError("there are no image layers to predict")
        except Exception as exc:  # noqa: BLE001
            self.fail(exc, "Cannot predict")
            return None
        jobs = [(_sendable(layer_array(lyr)), bool(getattr(lyr, "rgb", False)), lyr.name) for lyr in layers]
        self.status.setText(f"Predicting {len(jobs)} image layer(s)…")
        return self.start_job(f"{JOBS}:predict_layers", params, jobs, self.gradcam.isChecked(),
                              context="Prediction failed", cancellable=True, on_event=self._on_many_event)

    def _on_many_event(self, ev: Any) -> None:
        if isinstance(ev, dict) and "error" in ev:
            self.fail(ev["error"])
        elif isinstance(ev, dict) and "result" in ev:
            self._add_result(ev["result"])
        else:
            self._progress(ev)

    def predict_folder(self, *_: Any) -> Any:
        from ..outputs import OutputLocationError, check_output_dir

        try:
            params = self.params()
            if not self.folder_in.value or not self.folder_out.value:
                raise ValueError("choose an input folder and an output folder")
            check_output_dir(self.folder_out.value, [self.folder_in.value])  # refused here: nothing is created
        except (OutputLocationError, ValueError) as exc:
            self.fail(exc, "Cannot predict folder")
            return None
        self.status.setText(f"Predicting the images in {self.folder_in.value} …")
        return self.start_job(f"{JOBS}:predict_folder", params, self.folder_in.value, self.folder_out.value,
                              context=f"Prediction of the folder {Path(self.folder_in.value).name} failed",
                              cancellable=True, on_event=self._progress, on_result=self._folder_done)

    def _folder_done(self, outcome: Any) -> None:
        self.last_result = outcome
        self.inform(outcome.summary())

    def export(self, *_: Any) -> Any:
        from qtpy.QtWidgets import QFileDialog

        try:
            ckpt = self.params()["checkpoint"]
        except Exception as exc:  # noqa: BLE001
            self.fail(exc, "Cannot export")
            return None
        fmt = self.export_format.currentText()
        p = Path(ckpt)
        stem = p.name[: -len(".safetensors")] if p.name.endswith(".safetensors") else p.stem
        suggested = str(p.with_name(stem + (".onnx" if fmt == "onnx" else ".bioimageio.zip")))
        if os.environ.get("MTUNET_EXPORT_TO"):  # tests and scripts: no dialog
            out = os.environ["MTUNET_EXPORT_TO"]
        else:  # pragma: no cover - needs a human
            out, _ = QFileDialog.getSaveFileName(self, "Export model as", suggested,
                                                 "ONNX (*.onnx)" if fmt == "onnx" else "bioimage.io package (*.zip)")
        if not out:
            return None
        if os.path.lexists(out):
            self.fail(f"{out} already exists; exports never overwrite a file", "Cannot export")
            return None
        self.status.setText(f"Exporting {Path(ckpt).name} as {fmt}…")
        return self.start_job(f"{JOBS}:export", ckpt, out, fmt, context="Export failed",
                              on_result=lambda path: self.inform(f"Exported the model to {path}"))

    # ------------------------------------------------------------------ results -> layers

    @property
    def busy(self) -> bool:
        """A job runs, or its result is still being shown in napari."""
        return self.worker is not None or bool(self._show_steps)

    def _earlier(self, image_name: str, model: dict[str, Any], kind: str) -> list[Any]:
        """Layers of ``kind`` made from ``image_name`` by the same model (same weights, same file)."""
        out = []
        for lyr in self.viewer.layers:
            rec = layer_record(lyr)
            if rec is None or rec.kind != kind or rec.source_layer != image_name:
                continue
            m = rec.model or {}
            if m.get("hash") == model.get("hash") and m.get("path") == model.get("path"):
                out.append(lyr)
        return out

    def _watch_edits(self, layer: Any) -> None:
        def edited(*_: Any) -> None:
            if id(layer) not in self._updating:
                self._edited.add(id(layer))

        for name in ("paint", "data"):
            ev = getattr(layer.events, name, None)
            if ev is not None:
                ev.connect(edited)

    def _add_result(self, res: Any) -> None:
        """Show a prediction, one step per event-loop turn (napari builds each new layer's controls and GL
        objects on its GUI thread; one at a time keeps each stall short).  An unedited earlier prediction of
        the same image by the same model is updated in place; edited ones are hidden."""
        if res is None:
            self.status.setText("Prediction stopped; no layer was added")
            return
        self.last_result = res
        src = self.viewer.layers[res.name] if res.name in self.viewer.layers else None
        geo = {"scale": tuple(src.scale), "translate": tuple(src.translate)} if src is not None else {}
        model = res.record.model or {}
        label = short_model_name(model.get("display") or "mtunet")
        earlier = self._earlier(res.name, model, "prediction")
        reuse = next((lyr for lyr in reversed(earlier) if id(lyr) not in self._edited), None)
        cams = self._earlier(res.name, model, "gradcam")

        def show_cam() -> None:
            meta = layer_meta.as_metadata(layer_meta.gradcam(res.name, model=model))
            cam_geo = _cam_geometry(res.cam_scale, src)
            target = cams[-1] if cams else None
            if target is not None:
                target.data = res.cam
                target.metadata = meta
                if tuple(target.scale) != cam_geo["scale"] or tuple(target.translate) != cam_geo["translate"]:
                    target.scale, target.translate = cam_geo["scale"], cam_geo["translate"]
                if not target.visible:
                    target.visible = True
            else:
                self.viewer.add_image(
                    res.cam, name=f"{res.name} [Grad-CAM {label}]", colormap="inferno", blending="additive",
                    opacity=0.6, contrast_limits=(0.0, 1.0), metadata=meta, interpolation2d="linear", **cam_geo)
            for old in cams[:-1]:
                old.visible = False

        def show_labels() -> None:
            meta = layer_meta.as_metadata(res.record)
            if res.mask is not None:  # uint8 already (made in the compute process): no copy on this thread
                data = np.asarray(res.mask, np.uint8)
            else:  # classification-only model: keep the classes on an empty layer
                data = np.zeros(spatial_shape(src) if src is not None else (1, 1), np.uint8)
            if reuse is not None:  # (each setting below redraws the canvas: only what changed is set)
                self._updating.add(id(reuse))
                try:
                    reuse.data = data
                    reuse.metadata = meta
                    if geo and (tuple(reuse.scale) != geo["scale"] or tuple(reuse.translate) != geo["translate"]):
                        reuse.scale, reuse.translate = geo["scale"], geo["translate"]
                    if not reuse.visible:
                        reuse.visible = True
                finally:
                    self._updating.discard(id(reuse))
                self.last_labels = reuse
            else:
                self.last_labels = self.viewer.add_labels(data, name=f"{res.name} [{label}]", metadata=meta,
                                                          opacity=0.5, **geo)
                self._watch_edits(self.last_labels)
            for old in earlier:
                if old is not self.last_labels:
                    old.visible = False  # an earlier result never shows under the new one

        def finish() -> None:
            labels = self.last_labels
            if labels is not None and labels in self.viewer.layers:
                if self.viewer.layers.selection.active is not labels:
                    self.viewer.layers.selection.active = labels
                if src is not None:
                    from ._layers import bring_up

                    bring_up(self.viewer, src, labels)
            how = "updated" if reuse is not None else "added"
            self.status.setText(f"{res.name}: {res.summary()} ({res.seconds:.1f} s, model {label}; layer {how})")
            self.update_readout()
            self.state.overlay.update()

        # the Grad-CAM layer first: the Labels layer, added last, is then the active one
        self._show_steps.extend(([show_cam] if res.cam is not None else []) + [show_labels, finish])
        self._next_show_step()

    def _next_show_step(self) -> None:
        if not self._show_steps:
            return
        step = self._show_steps.pop(0)
        try:
            step()
        except Exception as exc:  # noqa: BLE001 - e.g. a layer name napari refuses
            self._show_steps.clear()
            self.fail(exc, "Showing the prediction failed")
            return
        if self._show_steps:
            self._show_timer.start()

    def _readout_layer(self) -> Any:
        active = self.viewer.layers.selection.active
        rec = layer_record(active)
        if rec is not None and rec.slices:
            return active
        if self.last_labels is not None and self.last_labels in self.viewer.layers:
            return self.last_labels
        return None

    def current_index(self, layer: Any) -> int | None:
        return current_slice(self.viewer, layer)

    def update_readout(self, *_: Any) -> None:
        layer = self._readout_layer()
        if layer is None:
            return
        rec = layer_record(layer)
        idx = self.current_index(layer)
        thr = (rec.model or {}).get("threshold") if rec is not None else None
        hidden_by = None
        if not image_shown(self.viewer, layer):  # (a hidden mask over a visible image still describes it)
            image = source_image(self.viewer, layer)
            covers = covering_images(self.viewer, image if image is not None else layer)
            hidden_by = f"{covers[0].name!r} lies over its image" if covers else "its image is hidden"
        self.readout.show_result(layer.name, idx, rec.slice(idx) if rec is not None else None, thr, hidden_by)

    def closeEvent(self, event) -> None:  # noqa: N802
        self._release_model()
        super().closeEvent(event)

    def on_closed(self) -> None:
        self._release_model()

    def _release_model(self) -> None:
        from ..compute import client

        proc = client(start=False)
        if proc is not None and proc.alive:
            proc.submit(f"{JOBS}:release_model")  # its memory goes back; nothing waits for it


def _sendable(data: Any) -> Any:
    """Layer data as it can travel to the compute process: numpy arrays as they are, anything else (a dask
    or zarr array) read into memory."""
    return data if isinstance(data, np.ndarray) else np.asarray(data)


def _cam_geometry(cam_scale: tuple[float, float], src: Any) -> dict[str, tuple[float, ...]]:
    """scale/translate that lay a Grad-CAM map computed at reduced resolution over its image layer.

    A map with ``k`` image pixels per map pixel: map pixel ``j`` covers image pixels ``j*k ... j*k + k``, so its
    centre is at image coordinate ``j*k + (k - 1) / 2``.
    """
    base_scale = np.asarray(src.scale, float) if src is not None else None
    base_shift = np.asarray(src.translate, float) if src is not None else None
    k = np.asarray(cam_scale, float)
    if base_scale is None:
        return {"scale": tuple(k), "translate": tuple((k - 1) / 2)}
    lead = len(base_scale) - len(k)  # a stack: the slice axis keeps its geometry
    k = np.concatenate([np.ones(lead), k])
    return {"scale": tuple(base_scale * k), "translate": tuple(base_shift + base_scale * (k - 1) / 2)}
