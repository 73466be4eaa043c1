"""Annotate & fine-tune: correct a prediction, confirm its class, add it to a training-set folder,
fine-tune the model that made the prediction, and see whether it helped.

- What you see is what you correct: the image follows the Labels layer (a
  layer made by napari-mtunet names its image; another image is refused,
  :mod:`napari_mtunet.workflows.annotate`), selecting a Labels layer brings
  its image up on the canvas, and *Add* is refused while another image lies
  over it.
- Classes come from the model (a fixed list, no typing).  The model's class
  is only a suggestion: the class box stays empty until you pick a class or
  press *Confirm*, *Add* refuses a class nobody confirmed, and ``labels.csv``
  records where each class comes from (``class_source``).
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
from ..workflows.annotate import PairingError, check_pairing, sample_items, unconfirmed
from ._controls import DeviceCombo, LayerCombo, PathEdit, StatusLabel, WrapLabel, combo
from ._job import JobWidget
from ._layers import bring_up, covering_images, current_slice, layer_array, layer_kind, layer_record
from .predict import MODEL_FILTER

JOBS = "napari_mtunet.jobs"


def default_training_set() -> str:
    return str(Path.home() / "mtunet-corrections")


class AnnotateWidget(JobWidget):
    """Dock widget: corrections -> training set -> fine-tuned model."""

    def __init__(self, napari_viewer: Any, parent=None):
        super().__init__(napari_viewer, parent)
        self.added: list[Any] = []  # napari_mtunet.jobs.Added, for Undo
        self.child_checkpoint: str | None = None
        self.metrics: dict[str, Any] | None = None

        self.labels_layer = LayerCombo(napari_viewer, ("labels",))
        self.image_layer = LayerCombo(napari_viewer, ("image",))
        self.link_button = QPushButton("Link labels to image")
        self.new_labels_button = QPushButton("New annotation layer")
        self.new_labels_button.setToolTip("A new Labels layer for the image, starting from its prediction if any")
        self.show_button = QPushButton("Show")
        self.show_button.setToolTip("Bring this image (and the Labels layer over it) up on the canvas")
        self.class_choice = combo([], None, editable=False)
        self.class_choice.setToolTip("Your class for the image on screen (kept beside the model's prediction)")
        self.class_choice.setPlaceholderText("pick the class")
        self.confirm_button = QPushButton("Confirm")
        self.confirm_button.setToolTip("Take the model's class as yours (one click per image on screen)")
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
        self.adapt_folder = PathEdit("dir", placeholder="optional: uncorrected images of the same scanner")
        self.adapt_folder.setToolTip("Optional. Images of the same scanner that you have not corrected (no labels "
                                     "needed): the model re-estimates its BatchNorm statistics on them before "
                                     "fine-tuning. In the fine-tuning study this gained less than fine-tuning "
                                     "alone on average (docs/results.md); the verdict after fine-tuning says "
                                     "whether it helped on your held-back corrections")
        self.adapt_layers = QCheckBox("and the open image layers")
        self.adapt_layers.setToolTip("Also adapt to every image layer open in napari (each slice of a stack)")
        self.device = DeviceCombo()
        self.finetune_button = QPushButton("Fine-tune")
        self.progress = QProgressBar()
        self.progress.setFormat("step %v/%m")
        self.progress.setMaximumHeight(18)
        self.metrics_label = StatusLabel("")

        ann = QGroupBox("Annotate")
        f = QFormLayout(ann)
        f.addRow("Labels", self.labels_layer)
        row = QHBoxLayout()
        row.addWidget(self.image_layer, 1)
        row.addWidget(self.show_button)
        f.addRow("Image", row)
        row = QHBoxLayout()
        row.addWidget(self.link_button)
        row.addWidget(self.new_labels_button)
        f.addRow(row)
        row = QHBoxLayout()
        row.addWidget(self.class_choice, 1)
        row.addWidget(self.confirm_button)
        f.addRow("Your class", row)
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
        f.addRow("Adapt to", self.adapt_folder)
        f.addRow("", self.adapt_layers)
        f.addRow("Device", self.device)
        cfg = FinetuneConfig()
        f.addRow(WrapLabel(
            f"{cfg.steps_per_sample:g} steps per corrected image ({cfg.min_steps}-{cfg.max_steps}), replay of the "
            f"model's own training data, {cfg.check_fraction:.0%} held back to check"))
        f.addRow(self.finetune_button)

        lay = self.body_layout
        lay.addWidget(ann)
        lay.addWidget(add)
        lay.addWidget(ft)
        lay.addStretch(1)
        w = self.watch_layout
        w.addWidget(self.progress)
        w.addWidget(self.metrics_label)
        w.addWidget(self.status)

        self.link_button.clicked.connect(self.link_labels)
        self.new_labels_button.clicked.connect(self.new_labels)
        self.show_button.clicked.connect(self.show_image)
        self.confirm_button.clicked.connect(self.confirm_class)
        self.add_button.clicked.connect(self.add_to_training_set)
        self.undo_button.clicked.connect(self.undo_last)
        self.finetune_button.clicked.connect(self.finetune_or_stop)
        self.all_slices.toggled.connect(self._show_class)
        # a pick (even of the class already shown) and a change made from a script both record the class;
        # the widget's own updates block the signals
        self.class_choice.activated.connect(self._class_picked)
        self.class_choice.currentIndexChanged.connect(self._class_picked)
        self.labels_layer.currentIndexChanged.connect(self._labels_changed)
        self.labels_layer.activated.connect(self._labels_changed)  # picked again: its image comes up again
        napari_viewer.dims.events.current_step.connect(self._show_class)
        self.state.checkpoint_changed.connect(self._on_checkpoint)
        self.state.record_changed.connect(self._show_class)
        if self.state.checkpoint:
            self._on_checkpoint(self.state.checkpoint)
        self._labels_changed()

    # ------------------------------------------------------------------ the selected labels and their image

    def _record(self, layer: Any) -> layer_meta.LayerMeta | None:
        return layer_record(layer)

    def _labels_changed(self, *_: Any) -> None:
        """The image, the class list and the model follow the selected Labels layer; its image comes up."""
        labels = self.labels_layer.layer()
        rec = self._record(labels)
        if rec is not None and rec.source_layer and rec.source_layer in self.viewer.layers:
            image = self.viewer.layers[rec.source_layer]
            self.image_layer.set_layer(image)
            bring_up(self.viewer, image, labels)  # the image being corrected is the one on screen
        if rec is not None and rec.class_names:
            self.set_class_names(rec.class_names)
        model_path = (rec.model or {}).get("path") if rec is not None else None
        if model_path and not self.busy:
            self.checkpoint.value = model_path
        self._show_class()

    def _on_checkpoint(self, path: str) -> None:
        from .._reader import checkpoint_info

        labels = self.labels_layer.layer()
        rec = self._record(labels)
        if not (rec is not None and (rec.model or {}).get("path")) and not self.busy:
            self.checkpoint.value = path
        info = checkpoint_info(path) if str(path).endswith(".safetensors") else None
        names = (info or {}).get("class_names")
        if names and self.class_choice.count() == 0:
            self.set_class_names([str(n) for n in names])

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

    def _slices_to_add(self, labels: Any) -> list[int | None]:
        if labels is None:
            return []
        if labels.ndim == 2:
            return [None]
        return list(range(self._n_slices(labels))) if self.all_slices.isChecked() else [self._slice(labels) or 0]

    def _to_confirm(self, labels: Any, rec: Any) -> list[tuple[int | None, str]]:
        """The slices Add would write whose class is only the model's: (slice, predicted class)."""
        if labels is None or rec is None:
            return []
        out = []
        for i in self._slices_to_add(labels):
            info = rec.slice(i)
            if info is not None and info.label_source == "predicted":
                out.append((i, info.predicted))
        return out

    def _show_class(self, *_: Any) -> None:
        labels = self.labels_layer.layer()
        rec = self._record(labels)
        todo = self._to_confirm(labels, rec)
        self.confirm_button.setEnabled(bool(todo))
        self.confirm_button.setText(f"Confirm {todo[0][1]}" if len(todo) == 1 else
                                    f"Confirm {len(todo)} classes" if todo else "Confirm")
        if labels is None or rec is None:
            self.class_info.setText("")
            return
        info = rec.slice(self._slice(labels))
        text = layer_meta.describe_slice(info)
        if info is not None and info.label_source == "predicted":
            text += " — not confirmed: pick your class or press Confirm"
        self.class_info.setText(text)
        # the box shows the class this image would be added with: yours or the dataset's, never a guess
        self.class_choice.blockSignals(True)
        confirmed = info is not None and info.label_source in ("confirmed", "ground_truth")
        self.class_choice.setCurrentIndex(self.class_choice.findText(info.label) if confirmed else -1)
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
        self.state.write_record(labels, rec)  # the Predict read-out and the canvas overlay follow at once

    def confirm_class(self, *_: Any) -> None:
        """Take the model's class as the user's for the slice(s) Add would write."""
        labels = self.labels_layer.layer()
        rec = self._record(labels)
        todo = self._to_confirm(labels, rec)
        if not todo:
            return
        for i, predicted in todo:
            rec.set_correction(i, predicted)
        self.state.write_record(labels, rec)

    def _n_slices(self, layer: Any) -> int:
        return 1 if layer.ndim == 2 else int(layer.data.shape[0])

    def show_image(self, *_: Any) -> None:
        """Bring the selected image (and Labels layer) up on the canvas."""
        image, labels = self.image_layer.layer(), self.labels_layer.layer()
        if image is None:
            self.fail("choose an image layer first", "Cannot show the image")
            return
        bring_up(self.viewer, image, labels)

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
        self.state.write_record(labels, rec)
        bring_up(self.viewer, image, labels)
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
        if pred_layer is not None:
            pred_layer.visible = False  # the correction lies where the prediction was; one mask on screen
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
        covers = covering_images(self.viewer, image)
        if covers or not image.visible or not labels.visible:
            what = (f"{covers[0].name!r} lies over {image.name!r} on the canvas" if covers else
                    f"{image.name!r} is hidden" if not image.visible else f"{labels.name!r} is hidden")
            raise PairingError(
                f"{what}: you would add a correction you cannot see. Press 'Show' beside the image (or hide the "
                "layer over it) and check the mask first")
        n = self._n_slices(labels)
        infos = [rec.slice(i) for i in range(n)]
        classes = [(s.label if s is not None else None) for s in infos]
        sources = [(s.label_source if s is not None else None) for s in infos]
        slices = None if (lab.ndim == 2 or self.all_slices.isChecked()) else [self._slice(labels) or 0]
        items = sample_items(img, lab, classes, rgb=rgb, slices=slices, sources=sources)
        guessed = unconfirmed(items)
        if guessed:
            where = ", ".join(f"slice {it.slice_index}" if it.slice_index is not None else "this image"
                              for it in guessed[:4]) + (" …" if len(guessed) > 4 else "")
            raise ValueError(
                f"the class of {where} is only the model's prediction ({guessed[0].label}): press "
                f"'{self.confirm_button.text()}' or pick your class in 'Your class' first")
        return items, image, rec

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
        return self.start_job(f"{JOBS}:add_samples", root, items, group=self.group.text().strip() or None,
                              source=image.name, model=model, context="Adding to the training set failed",
                              on_result=self._added)

    def _added(self, samples: list[Any]) -> None:
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

        return self.start_job(f"{JOBS}:undo_sample", last.root, last.path, context="Undo failed", on_result=done)

    # ------------------------------------------------------------------ fine-tune

    def set_busy(self, busy: bool) -> None:
        self.add_button.setEnabled(not busy)
        self.undo_button.setEnabled(not busy and bool(self.added))
        self.finetune_button.setText("Stop" if busy and self.cancel_token is not None else "Fine-tune")
        self.finetune_button.setEnabled(not busy or self.cancel_token is not None)

    def on_stopping(self) -> None:
        self.finetune_button.setEnabled(False)

    def finetune_or_stop(self, *_: Any) -> Any:
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
            unlabelled, name = self._uncorrected_images()
        except Exception as exc:  # noqa: BLE001
            self.fail(exc, "Cannot fine-tune")
            return None
        self.metrics = None
        self.metrics_label.setText("")
        self.progress.setValue(0)
        return self.start_job(f"{JOBS}:finetune", ckpt, root, str(out), cfg, unlabelled=unlabelled,
                              unlabelled_name=name, context="Fine-tuning failed", cancellable=True,
                              on_event=self._on_event, on_result=self._finetuned)

    def _uncorrected_images(self) -> tuple[list[Any], str | None]:
        """What "Adapt to" names: the folder, and/or every slice of the open image layers."""
        from ..preprocess import split_stack

        items: list[Any] = []
        names: list[str] = []
        folder = self.adapt_folder.value
        if folder:
            if not Path(folder).is_dir():
                raise ValueError(f"'Adapt to': {folder} is not a folder")
            items.append(folder)
            names.append(folder)
        if self.adapt_layers.isChecked():
            layers = [lay for lay in self.viewer.layers if layer_kind(lay) == "image"]
            n = 0
            for lay in layers:
                slices, _ = split_stack(np.asarray(lay.data), rgb=bool(getattr(lay, "rgb", False)))
                items.extend(slices)
                n += len(slices)
            if not n:
                raise ValueError("'and the open image layers' is ticked, but no image layer is open")
            names.append(f"{n} image(s) of {len(layers)} open layer(s)")
        return items, ", ".join(names) or None

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
        new = f"New model {self.child_checkpoint} (now selected in the Predict widget)."
        self.inform(f"{new} {outcome.summary()}", status=new)  # the metrics are in the line above
