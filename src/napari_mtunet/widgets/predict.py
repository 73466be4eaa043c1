"""Predict widget: a model + an image layer -> a NEW Labels layer whose metadata holds the classes.

The image layer is never modified.  The work runs in the workflows
(:func:`~napari_mtunet.workflows.predict_layers.iter_predict_array` for
layers, :func:`~napari_mtunet.workflows.iter_predict_files` for a folder,
:func:`~napari_mtunet.export.export_model` for export) in a worker thread;
the widget turns results into layers, the class read-out and notifications.
Long tiled predictions show their progress and can be stopped.
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
    QVBoxLayout,
    QWidget,
)

from .. import layer_meta
from ..workflows.predict_layers import PredictorCache
from ._common import DeviceCombo, LayerCombo, PathEdit, combo, current_slice, layer_kind, layer_record
from ._job import JobWidget, StatusLabel, WrapLabel, breakable

MODEL_FILTER = "napari-mtunet model (*.safetensors *.zip rdf.yaml)"


def layer_array(layer: Any) -> Any:
    """The full-resolution data of an image layer (level 0 of a multiscale)."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


class ClassReadout(QWidget):
    """The class of the image on screen, each value labelled with its source, and the model's probabilities."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.title = WrapLabel("No prediction yet", rich=True)  # wraps; a long layer name never widens the dock
        self.bars_box = QVBoxLayout()
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
            self.bars_box.addWidget(bar)
            self.bars[n] = bar

    def show_result(self, layer_name: str, index: int | None, info: layer_meta.SliceInfo | None,
                    threshold: float | None = None) -> None:
        """Show ``info`` of ``layer_name`` (slice ``index``), each value with its source."""
        self.info = info
        where = html.escape(breakable(layer_name)) + (f" [slice {index}]" if index is not None else "")
        if info is None or not (info.predicted or info.truth or info.corrected):
            self.title.setText(f"{where}: no class for this image")
            for bar in self.bars.values():
                bar.setValue(0)
            return
        lines = [f"<i>{where}</i>"]
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
        self.cache = PredictorCache()
        self.last_result: Any = None
        self.last_labels: Any = None
        self._show_steps: list[Any] = []
        self._show_timer = QTimer(self)
        self._show_timer.setSingleShot(True)
        self._show_timer.setInterval(0)
        self._show_timer.timeout.connect(self._next_show_step)

        self.checkpoint = PathEdit("file", MODEL_FILTER, "model (.safetensors or bioimage.io .zip)")
        self.model_info = StatusLabel("")
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
        self.device = DeviceCombo()
        self.gradcam = QCheckBox("Grad-CAM heat map layer")
        self.predict_button = QPushButton("Predict")
        self.predict_all_button = QPushButton("Predict all image layers")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setVisible(False)
        self.readout = ClassReadout()

        form = QFormLayout()
        form.addRow("Model", self.checkpoint)
        form.addRow("", self.model_info)
        form.addRow("Image layer", self.image_layer)
        form.addRow("Mode", self.mode)
        form.addRow("Tile size", self.tile_size)
        form.addRow("Threshold", self.threshold)
        form.addRow("Device", self.device)
        form.addRow("", self.gradcam)
        buttons = QHBoxLayout()
        buttons.addWidget(self.predict_button)
        buttons.addWidget(self.predict_all_button)
        buttons.addWidget(self.stop_button)

        self.folder_in = PathEdit("dir", placeholder="folder of images")
        self.folder_out = PathEdit("dir", placeholder="output folder (masks/ + predictions.csv), outside the dataset")
        self.folder_button = QPushButton("Predict folder to disk")
        batch = QGroupBox("Batch: folder to disk")
        bform = QFormLayout(batch)
        bform.addRow("Input", self.folder_in)
        bform.addRow("Output", self.folder_out)
        bform.addRow(self.folder_button)

        self.export_format = combo(["onnx", "bioimageio"], "onnx")
        self.export_button = QPushButton("Export model…")
        export = QGroupBox("Share the model")
        ef = QHBoxLayout(export)
        ef.addWidget(self.export_format)
        ef.addWidget(self.export_button)

        result = QGroupBox("Class of the image on screen")
        rl = QVBoxLayout(result)
        rl.addWidget(self.readout)

        lay = self.body_layout
        lay.addLayout(form)
        lay.addLayout(buttons)
        lay.addWidget(self.progress)
        lay.addWidget(self.status)
        lay.addWidget(result)
        lay.addWidget(batch)
        lay.addWidget(export)
        lay.addStretch(1)

        self.predict_button.clicked.connect(self.predict)
        self.predict_all_button.clicked.connect(self.predict_all)
        self.stop_button.clicked.connect(self.stop_job)
        self.folder_button.clicked.connect(self.predict_folder)
        self.export_button.clicked.connect(self.export)
        self.checkpoint.changed.connect(self._describe_checkpoint)
        self.state.checkpoint_changed.connect(self.set_checkpoint)
        napari_viewer.dims.events.current_step.connect(self.update_readout)
        napari_viewer.layers.selection.events.active.connect(self.update_readout)
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
        if not path:
            self.model_info.setText("")
            return
        try:
            from ..checkpoint import read_metadata

            meta = read_metadata(path) if str(path).endswith(".safetensors") else None
        except Exception as exc:  # noqa: BLE001
            self.model_info.setText(str(exc))
            return
        if meta is None:
            self.model_info.setText(f"{Path(path).name} (bioimage.io package; checked when predicting)")
            return
        m = meta["model"]
        parent = meta.get("parent")
        self.model_info.setText(
            f"{Path(path).parent.name}/{Path(path).stem}: {m['encoder_name']} UNet, task {m['task']}, classes "
            f"{', '.join(meta['class_names'])}, {meta['preprocessing']['image_size']} px, "
            f"hash {meta['content_hash'][:12]}" + (f", fine-tuned from {parent.split(':', 1)[-1]}" if parent else "")
        )

    # ------------------------------------------------------------------ running

    def set_busy(self, busy: bool) -> None:
        for b in (self.predict_button, self.predict_all_button, self.folder_button, self.export_button):
            b.setEnabled(not busy)
        self.stop_button.setEnabled(busy)
        if not busy:
            self.progress.setVisible(False)

    def _progress(self, ev: Any) -> None:
        if ev.kind == "progress":
            self.progress.setVisible(True)
            self.progress.setRange(0, max(1, ev.total))
            self.progress.setValue(ev.done)
            self.progress.setFormat(f"{ev.item}: {ev.done}/{ev.total} {ev.what}" if ev.item else f"%v/%m {ev.what}")

    def predict(self, *_: Any) -> Any:
        """Predict the chosen image layer; the result is added as a new Labels layer."""
        from ..workflows.predict_layers import iter_predict_array

        layer = self.image_layer.layer()
        try:
            params = self.params()
            if layer is None:
                raise ValueError("choose an image layer to predict")
        except Exception as exc:  # noqa: BLE001
            self.fail(exc, "Cannot predict")
            return None
        self.status.setText(f"Predicting {layer.name!r}…")
        return self.start_job(iter_predict_array, self.cache, params, layer_array(layer),
                              bool(getattr(layer, "rgb", False)), layer.name, self.gradcam.isChecked(),
                              context=f"Prediction of {layer.name!r} failed", cancellable=True,
                              device=params["device"], on_event=self._progress, on_result=self._add_result)

    def predict_all(self, *_: Any) -> Any:
        """Predict every image layer in one worker; one Labels layer per image layer."""
        layers = [lyr for lyr in self.viewer.layers if layer_kind(lyr) == "image" and not _is_heatmap(lyr)]
        try:
            params = self.params()
            if not layers:
                raise ValueError("there are no image layers to predict")
        except Exception as exc:  # noqa: BLE001
            self.fail(exc, "Cannot predict")
            return None
        jobs = [(layer_array(lyr), bool(getattr(lyr, "rgb", False)), lyr.name) for lyr in layers]
        self.status.setText(f"Predicting {len(jobs)} image layer(s)…")
        return self.start_job(_predict_layers, self.cache, params, jobs, self.gradcam.isChecked(),
                              context="Prediction failed", cancellable=True, device=params["device"],
                              on_event=self._on_many_event)

    def _on_many_event(self, ev: Any) -> None:
        if isinstance(ev, dict) and "error" in ev:
            self.fail(ev["error"])
        elif isinstance(ev, dict) and "result" in ev:
            self._add_result(ev["result"])
        else:
            self._progress(ev)

    def predict_folder(self, *_: Any) -> Any:
        try:
            params = self.params()
            if not self.folder_in.value or not self.folder_out.value:
                raise ValueError("choose an input folder and an output folder")
        except Exception as exc:  # noqa: BLE001
            self.fail(exc, "Cannot predict folder")
            return None
        self.status.setText(f"Predicting the images in {self.folder_in.value} …")
        return self.start_job(_predict_folder, self.cache, params, self.folder_in.value, self.folder_out.value,
                              context=f"Prediction of the folder {Path(self.folder_in.value).name} failed",
                              cancellable=True, device=params["device"], on_event=self._progress,
                              on_result=self._folder_done)

    def _folder_done(self, outcome: Any) -> None:
        self.last_result = outcome
        self.inform(outcome.summary())

    def export(self, *_: Any) -> Any:
        from qtpy.QtWidgets import QFileDialog

        from ..export import default_output, export_model

        try:
            ckpt = self.params()["checkpoint"]
        except Exception as exc:  # noqa: BLE001
            self.fail(exc, "Cannot export")
            return None
        fmt = self.export_format.currentText()
        suggested = str(default_output(ckpt, fmt))
        if os.environ.get("MTUNET_EXPORT_TO"):  # tests and scripts: no dialog
            out = os.environ["MTUNET_EXPORT_TO"]
        else:  # pragma: no cover - needs a human
            out, _ = QFileDialog.getSaveFileName(self, "Export model as", suggested,
                                                 "ONNX (*.onnx)" if fmt == "onnx" else "bioimage.io package (*.zip)")
        if not out:
            return None
        self.status.setText(f"Exporting {Path(ckpt).name} as {fmt}…")
        return self.start_job(export_model, ckpt, out, fmt, context="Export failed",
                              on_result=lambda p: self.inform(f"Exported the model to {p}"))

    # ------------------------------------------------------------------ results -> layers

    @property
    def busy(self) -> bool:
        """A job runs, or its result is still being added to napari."""
        return self.worker is not None or bool(self._show_steps)

    def _add_result(self, res: Any) -> None:
        """Show a prediction: the layers are added one per event-loop turn (napari builds each layer's
        controls and GL objects on its GUI thread; one at a time keeps each stall short)."""
        if res is None:
            self.status.setText("Prediction stopped; no layer was added")
            return
        self.last_result = res
        src = self.viewer.layers[res.name] if res.name in self.viewer.layers else None
        geo = {"scale": tuple(src.scale), "translate": tuple(src.translate)} if src is not None else {}
        model = (res.record.model or {}).get("display") or "mtunet"

        def add_cam() -> None:
            self.viewer.add_image(
                res.cam, name=f"{res.name} [Grad-CAM {model}]", colormap="inferno", blending="additive", opacity=0.6,
                contrast_limits=(0.0, 1.0), metadata=layer_meta.as_metadata(layer_meta.gradcam(res.name)),
                interpolation2d="linear", **_cam_geometry(res.cam_scale, src),
            )

        def add_labels() -> None:
            meta = layer_meta.as_metadata(res.record)
            name = f"{res.name} [{model}]"
            if res.mask is not None:  # uint8 already (made in the worker): no copy on this thread
                data = np.asarray(res.mask, np.uint8)
                self.last_labels = self.viewer.add_labels(data, name=name, metadata=meta, opacity=0.5, **geo)
            else:  # classification-only model: keep the classes on an empty layer
                shape = _spatial_shape(src) if src is not None else (1, 1)
                self.last_labels = self.viewer.add_labels(np.zeros(shape, np.uint8), name=name, metadata=meta, **geo)

        def finish() -> None:
            labels = self.last_labels
            if labels is not None and labels in self.viewer.layers and self.viewer.layers.selection.active is not labels:
                self.viewer.layers.selection.active = labels
            self.status.setText(f"{res.name}: {res.summary()} ({res.seconds:.1f} s, model {model})")
            self.update_readout()
            self.state.overlay.update()

        # the Grad-CAM layer first: the Labels layer, added last, is then the active one
        self._show_steps.extend(([add_cam] if res.cam is not None else []) + [add_labels, finish])
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
        self.readout.show_result(layer.name, idx, rec.slice(idx) if rec is not None else None, thr)

    def closeEvent(self, event) -> None:  # noqa: N802
        self.cache.clear()
        super().closeEvent(event)


def _predict_layers(cache: PredictorCache, params: dict[str, Any], jobs: list, gradcam: bool, cancel: Any = None):
    """Predict several layers; each result (or error, named by layer) is yielded as it is ready."""
    from ..workflows.predict_layers import iter_predict_array
    from ._common import error_message

    for data, rgb, name in jobs:
        if cancel is not None and cancel.cancelled:
            return
        try:
            res = yield from iter_predict_array(cache, params, data, rgb, name, gradcam, cancel=cancel)
            if res is not None:
                yield {"result": res}
        except Exception as exc:  # noqa: BLE001 - report and go on with the next layer
            yield {"error": error_message(exc, f"layer {name!r}")}


def _predict_folder(cache: PredictorCache, params: dict[str, Any], folder: str, out: str, cancel: Any = None):
    """Load the model (in the worker: it needs torch) and predict every image of ``folder`` into ``out``."""
    from ..workflows import iter_predict_files

    predictor = cache.get(params["checkpoint"], params["device"], params["threshold"], params["mode"],
                          params["tile_size"])
    return (yield from iter_predict_files(predictor, [folder], out, mode=params["mode"], cancel=cancel))


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


def _spatial_shape(layer: Any) -> tuple[int, ...]:
    shape = tuple(layer_array(layer).shape)
    return shape[:-1] if getattr(layer, "rgb", False) else shape


def _is_heatmap(layer: Any) -> bool:
    rec = layer_record(layer)
    return rec is not None and rec.kind == "gradcam"
