"""Annotate & fine-tune: correct a prediction, confirm its class, add it to a training-set folder,
fine-tune the model that made the prediction, and see whether it helped.

- The image follows the Labels layer: a layer made by napari-mtunet names its
  image, and another image is refused (:mod:`napari_mtunet.workflows.annotate`).
- Classes come from the model (a fixed list, no typing); picking one records
  *your* class beside the model's prediction, never over it.
- An added sample can be undone; ``labels.csv`` records the source image and
  the model.
- Fine-tuning (:func:`napari_mtunet.workflows.iter_finetune`, the same
  defaults as ``mtunet finetune``) starts from the model that made the
  selected Labels layer and reports before/after metrics on the corrected
  images and on held-back ones.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtWidgets import QCheckBox, QFormLayout, QGroupBox, QHBoxLayout, QLineEdit, QProgressBar, QPushButton

from .. import layer_meta
from ..config import FinetuneConfig
from ..workflows.annotate import AddedSample, PairingError, add_samples, check_pairing, sample_items, undo_sample
from ._common import DeviceCombo, LayerCombo, PathEdit, combo, current_slice, layer_record
from ._job import JobWidget, StatusLabel, WrapLabel
from .predict import MODEL_FILTER, layer_array


def default_training_set() -> str:
    return str(Path.home() / "mtunet-corrections")


class AnnotateWidget(JobWidget):
    """Dock widget: corrections -> training set -> fine-tuned model."""

    def __init__(self, napari_viewer: Any, parent=None):
        super().__init__(napari_viewer, parent)
        self.added: list[AddedSample] = []
        self.child_checkpoint: str | None = None
        self.metrics: dict[str, Any] | None = None

        self.labels_layer = LayerCombo(napari_viewer, ("labels",))
        self.image_layer = LayerCombo(napari_viewer, ("image",))
        self.link_button = QPushButton("Link labels to image")
        self.new_labels_button = QPushButton("New annotation layer")
        self.new_labels_button.setToolTip("A new Labels layer for the image, starting from its prediction if any")
        self.class_choice = combo([], None, editable=False)
        self.class_choice.setToolTip("Your class for the image on screen (kept beside the model's prediction)")
        self.class_info = StatusLabel("")
        self.dataset_root = PathEdit("dir", placeholder=default_training_set())
        self.group = QLineEdit()
        self.group.setPlaceholderText("optional patient / group id")
        self.all_slices = QCheckBox("all slices of a stack")
        self.add_button = QPushButton("Add to training set")
        self.undo_button = QPushButton("Undo last add")
        self.undo_button.setEnabled(False)
        self.added_label = StatusLabel("No samples added yet")

        self.checkpoint = PathEdit("file", MODEL_FILTER, "model to fine-tune (default: the one that predicted)")
        self.device = DeviceCombo()
        self.finetune_button = QPushButton("Fine-tune")
        self.progress = QProgressBar()
        self.progress.setFormat("step %v/%m")
        self.metrics_label = StatusLabel("")

        ann = QGroupBox("Annotate")
        f = QFormLayout(ann)
        f.addRow("Labels", self.labels_layer)
        f.addRow("Image", self.image_layer)
        row = QHBoxLayout()
        row.addWidget(self.link_button)
        row.addWidget(self.new_labels_button)
        f.addRow(row)
        f.addRow("Your class", self.class_choice)
        f.addRow("", self.class_info)
        add = QGroupBox("Training set")
        f = QFormLayout(add)
        f.addRow("Folder", self.dataset_root)
        f.addRow("Group", self.group)
        f.addRow("", self.all_slices)
        row = QHBoxLayout()
        row.addWidget(self.add_button)
        row.addWidget(self.undo_button)
        f.addRow(row)
        f.addRow(self.added_label)
        ft = QGroupBox("Fine-tune")
        f = QFormLayout(ft)
        f.addRow("Model", self.checkpoint)
        f.addRow("Device", self.device)
        cfg = FinetuneConfig()
        f.addRow(WrapLabel(
            f"{cfg.steps_per_sample:g} steps per corrected image ({cfg.min_steps}-{cfg.max_steps}), replay of the "
            f"model's own training data, {cfg.check_fraction:.0%} held back to check"))
        f.addRow(self.finetune_button)
        f.addRow(self.progress)
        f.addRow(self.metrics_label)

        lay = self.body_layout
        lay.addWidget(ann)
        lay.addWidget(add)
        lay.addWidget(ft)
        lay.addWidget(self.status)
        lay.addStretch(1)

        self.link_button.clicked.connect(self.link_labels)
        self.new_labels_button.clicked.connect(self.new_labels)
        self.add_button.clicked.connect(self.add_to_training_set)
        self.undo_button.clicked.connect(self.undo_last)
        self.finetune_button.clicked.connect(self.finetune_or_stop)
        # a pick (even of the class already shown) and a change made from a script both record the class;
        # the widget's own updates block the signals
        self.class_choice.activated.connect(self._class_picked)
        self.class_choice.currentIndexChanged.connect(self._class_picked)
        self.labels_layer.currentIndexChanged.connect(self._labels_changed)
        napari_viewer.dims.events.current_step.connect(self._show_class)
        self.state.checkpoint_changed.connect(self._on_checkpoint)
        if self.state.checkpoint:
            self._on_checkpoint(self.state.checkpoint)
        self._labels_changed()

    # ------------------------------------------------------------------ the selected labels and their image

    def _record(self, layer: Any) -> layer_meta.LayerMeta | None:
        return layer_record(layer)

    def _labels_changed(self, *_: Any) -> None:
        """The image, the class list and the model follow the selected Labels layer."""
        labels = self.labels_layer.layer()
        rec = self._record(labels)
        if rec is not None and rec.source_layer and rec.source_layer in self.viewer.layers:
            self.image_layer.set_layer(self.viewer.layers[rec.source_layer])
        if rec is not None and rec.class_names:
            self.set_class_names(rec.class_names)
        model_path = (rec.model or {}).get("path") if rec is not None else None
        if model_path and not self.busy:
            self.checkpoint.value = model_path
        self._show_class()

    def _on_checkpoint(self, path: str) -> None:
        labels = self.labels_layer.layer()
        rec = self._record(labels)
        if not (rec is not None and (rec.model or {}).get("path")) and not self.busy:
            self.checkpoint.value = path
        try:
            from ..checkpoint import read_metadata

            if str(path).endswith(".safetensors") and self.class_choice.count() == 0:
                self.set_class_names(read_metadata(path)["class_names"])
        except Exception:  # noqa: BLE001 - described when used
            pass

    def set_class_names(self, names: list[str]) -> None:
        current = self.class_choice.currentText()
        self.class_choice.blockSignals(True)
        self.class_choice.clear()
        self.class_choice.addItems([str(n) for n in names])
        if current in names:
            self.class_choice.setCurrentText(current)
        self.class_choice.blockSignals(False)
        self._show_class()

    def _slice(self, layer: Any) -> int | None:
        return current_slice(self.viewer, layer)

    def _show_class(self, *_: Any) -> None:
        labels = self.labels_layer.layer()
        rec = self._record(labels)
        if labels is None or rec is None:
            self.class_info.setText("")
            return
        info = rec.slice(self._slice(labels))
        self.class_info.setText(layer_meta.describe_slice(info))
        # the combo shows the class this image would be added with (none yet: blank, not the last one shown)
        self.class_choice.blockSignals(True)
        self.class_choice.setCurrentIndex(self.class_choice.findText(info.label) if info is not None and info.label
                                          else -1)
        self.class_choice.blockSignals(False)

    def _class_picked(self, *_: Any) -> None:
        """The user chose a class: recorded as their correction for the image on screen."""
        labels = self.labels_layer.layer()
        rec = self._record(labels)
        name = self.class_choice.currentText()
        if labels is None or not name:
            return
        if rec is None:
            rec = layer_meta.annotation(None, self._n_slices(labels), [self.class_choice.itemText(i) for i in
                                        range(self.class_choice.count())], is_stack=labels.ndim >= 3)
        rec.set_correction(self._slice(labels), name)
        layer_meta.write(labels.metadata, rec)
        self._show_class()
        self.state.overlay.update()

    def _n_slices(self, layer: Any) -> int:
        return 1 if layer.ndim == 2 else int(layer.data.shape[0])

    def link_labels(self, *_: Any) -> None:
        """Declare that the selected Labels layer belongs to the selected image."""
        labels, image = self.labels_layer.layer(), self.image_layer.layer()
        if labels is None or image is None:
            self.fail("choose a Labels layer and its image", "Cannot link")
            return
        rec = self._record(labels)
        if rec is not None and rec.source_layer and rec.source_layer != image.name and rec.kind == "prediction":
            self.fail(f"{labels.name!r} is a prediction of {rec.source_layer!r}; it cannot belong to {image.name!r}",
                      "Cannot link")
            return
        if rec is None:
            rec = layer_meta.annotation(image.name, self._n_slices(labels),
                                        [self.class_choice.itemText(i) for i in range(self.class_choice.count())],
                                        is_stack=labels.ndim >= 3)
        rec.source_layer = image.name
        layer_meta.write(labels.metadata, rec)
        self.status.setText(f"{labels.name!r} now belongs to {image.name!r}")

    def new_labels(self, *_: Any) -> Any:
        image = self.image_layer.layer()
        if image is None:
            self.fail("choose an image layer first", "Cannot create labels")
            return None
        shape = np.asarray(layer_array(image).shape)
        if getattr(image, "rgb", False):
            shape = shape[:-1]
        n = 1 if len(shape) == 2 else int(shape[0])
        # start from this image's newest prediction, if there is one
        pred_layer = next((lyr for lyr in reversed(list(self.viewer.layers))
                           if (r := self._record(lyr)) is not None and r.kind == "prediction"
                           and r.source_layer == image.name), None)
        pred = self._record(pred_layer)
        names = pred.class_names if pred is not None else [self.class_choice.itemText(i)
                                                            for i in range(self.class_choice.count())]
        rec = layer_meta.annotation(image.name, n, names, is_stack=len(shape) == 3, from_prediction=pred)
        data = (np.asarray(pred_layer.data) > 0).astype(np.uint8) if pred_layer is not None else np.zeros(tuple(shape), np.uint8)
        layer = self.viewer.add_labels(data, name=f"{image.name} [annotation]", metadata=layer_meta.as_metadata(rec),
                                       scale=tuple(image.scale), translate=tuple(image.translate))
        layer.mode = "paint"
        self.labels_layer.set_layer(layer)
        return layer

    # ------------------------------------------------------------------ add / undo

    def _items(self) -> tuple[list, Any, Any]:
        image, labels = self.image_layer.layer(), self.labels_layer.layer()
        if image is None or labels is None:
            raise ValueError("choose a Labels layer and its image layer")
        rec = self._record(labels)
        rgb = bool(getattr(image, "rgb", False))
        img = np.asarray(layer_array(image))
        lab = np.asarray(labels.data)
        check_pairing(image.name, img.shape, labels.name, lab.shape, rec, rgb=rgb)
        n = self._n_slices(labels)
        classes = [(rec.slice(i).label if rec.slice(i) is not None else None) for i in range(n)]
        slices = None if (lab.ndim == 2 or self.all_slices.isChecked()) else [self._slice(labels) or 0]
        return sample_items(img, lab, classes, rgb=rgb, slices=slices), image, rec

    def add_to_training_set(self, *_: Any) -> Any:
        root = self.dataset_root.value or default_training_set()
        try:
            items, image, rec = self._items()
        except (PairingError, ValueError) as exc:
            self.fail(exc, "Cannot add to the training set")
            return None
        model = (rec.model or {}).get("display") if rec is not None else None
        self.dataset_root.value = root
        self.status.setText(f"Writing {len(items)} sample(s) to {root} …")
        return self.start_job(add_samples, root, items, group=self.group.text().strip() or None, source=image.name,
                              model=model, context="Adding to the training set failed", on_result=self._added)

    def _added(self, samples: list[AddedSample]) -> None:
        self.added.extend(samples)
        names = ", ".join(Path(s.path).name for s in samples)
        self.added_label.setText(f"Added {names} ({len(self.added)} added this session)")
        self.undo_button.setEnabled(True)
        self.inform(f"Added {len(samples)} sample(s) to {self.dataset_root.value}")

    def undo_last(self, *_: Any) -> Any:
        if not self.added:
            return None
        last = self.added[-1]

        def done(_removed: Any) -> None:
            self.added.pop()
            self.undo_button.setEnabled(bool(self.added))
            self.added_label.setText(f"Removed {Path(last.path).name} ({len(self.added)} added this session)")
            self.inform(f"Removed {Path(last.path).name} from {last.root}")

        return self.start_job(undo_sample, last, context="Undo failed", on_result=done)

    # ------------------------------------------------------------------ fine-tune

    def set_busy(self, busy: bool) -> None:
        self.add_button.setEnabled(not busy)
        self.undo_button.setEnabled(not busy and bool(self.added))
        self.finetune_button.setText("Stop" if busy and self.cancel_token is not None else "Fine-tune")
        self.finetune_button.setEnabled(not busy or self.cancel_token is not None)

    def on_stopping(self) -> None:
        self.finetune_button.setEnabled(False)

    def finetune_or_stop(self, *_: Any) -> Any:
        from ..workflows import iter_finetune

        if self.busy:
            self.stop_job()
            return None
        ckpt = self.checkpoint.value
        root = self.dataset_root.value or default_training_set()
        try:
            if not ckpt:
                raise ValueError("choose the model to fine-tune")
            if not (Path(root) / "labels.csv").is_file():
                raise ValueError(f"the training-set folder {root} has no samples yet: add some first")
            stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
            out = Path(root) / "models" / f"finetune-{stamp}"
            cfg = FinetuneConfig(device=self.device.currentText())
        except Exception as exc:  # noqa: BLE001
            self.fail(exc, "Cannot fine-tune")
            return None
        self.metrics = None
        self.metrics_label.setText("")
        self.progress.setValue(0)
        return self.start_job(iter_finetune, ckpt, root, out, config=cfg, context="Fine-tuning failed",
                              cancellable=True, device=cfg.device, on_event=self._on_event,
                              on_result=self._finetuned)

    def _on_event(self, ev: Any) -> None:
        if ev.kind == "batch_end":
            self.progress.setRange(0, ev.n_batches)
            self.progress.setValue(ev.batch)
            self.status.setText(f"fine-tuning step {ev.batch}/{ev.n_batches}: loss {ev.loss:.4f}")

    def _finetuned(self, outcome: Any) -> None:
        if outcome is None or outcome.child is None:
            self.inform("Fine-tuning stopped before it finished; no checkpoint was written")
            return
        self.child_checkpoint = str(outcome.child)
        self.metrics = outcome.metrics
        self.metrics_label.setText(outcome.summary() or "no metrics (no masks or labels to score)")
        if self.docked:
            self.state.set_checkpoint(self.child_checkpoint)  # the Predict widget switches to the child
        self.inform(f"New model {self.child_checkpoint} (now selected in the Predict widget). {outcome.summary()}")
