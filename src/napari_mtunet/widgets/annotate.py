"""Annotate & fine-tune: correct a mask with napari's tools, set the class, add it to a
dataset folder (generic layout), fine-tune the checkpoint on that folder and use the
child checkpoint in the Predict widget straight away.
"""

from __future__ import annotations

import datetime as _dt
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..config import DataConfig, TrainConfig
from ._common import (
    LayerCombo,
    PathEdit,
    TorchThreads,
    combo,
    device_choices,
    error_message,
    notify_error,
    notify_info,
    start_worker,
    state_for,
    warm_up,
)
from .predict import META_KEY, layer_array

DEFAULT_CLASSES = ("benign", "malignant", "normal")


@dataclass
class AddedSample:
    """A sample added in this session (kept in memory for the before/after metrics)."""

    path: str
    image: np.ndarray
    mask: np.ndarray
    label: str | None


# --------------------------------------------------------------------------- Qt-free jobs


def add_samples_job(root: str, items: list[tuple[np.ndarray, np.ndarray, str | None]], group: str | None) -> list[AddedSample]:
    from ..data import write_generic_sample

    out = []
    for image, mask, label in items:
        res = write_generic_sample(root, image, mask, label, group=group)
        path = getattr(res, "image", res)
        out.append(AddedSample(str(path), image, mask, label))
    return out


def before_after_metrics(parent: str, child: str, samples: list[AddedSample], device: str) -> dict[str, dict[str, float]]:
    """Mean Dice and class accuracy of the parent and the child model on the added samples."""
    from ..inference import Predictor
    from ..training.metrics import dice_iou_per_image

    out: dict[str, dict[str, float]] = {}
    for tag, ckpt in (("before", parent), ("after", child)):
        pr = Predictor(ckpt, device=device)
        preds = pr.predict_many([s.image for s in samples], return_probability=False)
        row: dict[str, float] = {"n": float(len(samples))}
        if pr.has_seg:
            dice = [float(dice_iou_per_image(p.mask > 0, s.mask > 0)[0][0]) for p, s in zip(preds, samples)]
            row["dice"] = float(np.mean(dice))
        labelled = [(p, s) for p, s in zip(preds, samples) if s.label is not None]
        if pr.has_cls and labelled:
            row["accuracy"] = float(np.mean([p.class_name == s.label for p, s in labelled]))
        out[tag] = row
        del pr
    return out


def finetune_job(params: dict[str, Any], added: list[AddedSample], cancel: Any):
    """Generator worker: fine-tune ``params['checkpoint']`` on the dataset folder; yields engine events."""
    from ..checkpoint import load_checkpoint
    from ..device import empty_cache, resolve_device
    from ..training import make_finetune_trainer
    from .train import training_data

    device = resolve_device(params["device"])
    try:
        yield ("status", "Loading the annotated samples …")
        _, info = load_checkpoint(params["checkpoint"], device="cpu")
        pre = info.preprocessing
        data_cfg = DataConfig(root=params["root"], layout="generic", val_fraction=0.0, test_fraction=0.0)
        new_train, _, names, _ = training_data(data_cfg, pre, class_names=info.class_names)
        replay = None
        if params.get("replay_root"):
            replay_cfg = DataConfig(root=params["replay_root"], layout="auto", val_fraction=0.0, test_fraction=0.0)
            replay, _, _, _ = training_data(replay_cfg, pre, class_names=info.class_names)
        stored = info.training.get("train_config")
        tc = TrainConfig.from_dict(stored) if stored else TrainConfig()
        tc.epochs = int(params["epochs"])
        tc.lr = float(params["lr"])
        tc.device = params["device"]
        tc.batch_size = min(int(tc.batch_size), max(1, len(new_train)))
        tc.early_stopping_patience = None
        tc.monitor = "train_loss"
        yield ("status", f"Fine-tuning on {len(new_train)} new sample(s)" + (f" + replay of {len(replay)}" if replay else ""))
        trainer = make_finetune_trainer(
            params["checkpoint"],
            new_train,
            None,
            train_config=tc,
            out_dir=params["out_dir"],
            freeze_encoder=bool(params["freeze_encoder"]),
            replay=replay,
            replay_size=params.get("replay_size") or None,
            cancel=cancel,
        )
        with TorchThreads(str(device)):
            yield from trainer.iter_fit()
            result = trainer.result
            child = result.best_checkpoint or result.last_checkpoint if result is not None else None
            metrics = None
            if child is not None and added:
                yield ("status", "Measuring before/after on the added samples …")
                metrics = before_after_metrics(params["checkpoint"], str(child), added, params["device"])
        return {"result": result, "child": None if child is None else str(child), "metrics": metrics}
    finally:
        empty_cache(device)


# --------------------------------------------------------------------------- widget


class AnnotateWidget(QWidget):
    """Dock widget: correct, label, collect and fine-tune."""

    def __init__(self, napari_viewer: Any, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = state_for(napari_viewer)
        warm_up()  # heavy imports now, in the background, not in the middle of the work
        self.worker = None
        self.cancel_token = None
        self.added: list[AddedSample] = []
        self.child_checkpoint: str | None = None
        self.metrics: dict[str, Any] | None = None
        self.last_error: str | None = None
        self.events: list[Any] = []

        self.image_layer = LayerCombo(napari_viewer, ("image",))
        self.labels_layer = LayerCombo(napari_viewer, ("labels",))
        self.new_labels_button = QPushButton("New empty Labels layer")
        self.class_choice = combo(DEFAULT_CLASSES, DEFAULT_CLASSES[0], editable=True)
        self.class_choice.setToolTip("Class of the current image/slice (stored in the Labels layer's metadata)")
        self.dataset_root = PathEdit("dir", placeholder="dataset folder to add samples to (generic layout)")
        self.group = QLineEdit()
        self.group.setPlaceholderText("optional patient / group id")
        self.all_slices = QCheckBox("all slices of a stack")
        self.add_button = QPushButton("Add to training set")
        self.added_label = QLabel("No samples added yet")
        self.added_label.setWordWrap(True)

        self.checkpoint = PathEdit("file", "napari-mtunet checkpoint (*.safetensors)", "checkpoint to fine-tune")
        self.epochs = QSpinBox()
        self.epochs.setRange(1, 1000)
        self.epochs.setValue(5)
        self.lr = QLineEdit("1e-4")
        self.freeze_encoder = QCheckBox("freeze encoder")
        self.replay_root = PathEdit("dir", placeholder="optional: original dataset to replay")
        self.replay_size = QSpinBox()
        self.replay_size.setRange(0, 100000)
        self.replay_size.setValue(50)
        self.replay_size.setSpecialValueText("all")
        self.device = combo(device_choices(), "auto")
        self.finetune_button = QPushButton("Fine-tune")
        self.progress = QProgressBar()
        self.progress.setFormat("epoch %v/%m")
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.metrics_label = QLabel("")
        self.metrics_label.setWordWrap(True)

        ann = QGroupBox("Annotate")
        f = QFormLayout(ann)
        f.addRow("Image", self.image_layer)
        f.addRow("Labels", self.labels_layer)
        f.addRow("", self.new_labels_button)
        f.addRow("Class", self.class_choice)
        add = QGroupBox("Training set")
        f = QFormLayout(add)
        f.addRow("Folder", self.dataset_root)
        f.addRow("Group", self.group)
        f.addRow("", self.all_slices)
        f.addRow(self.add_button)
        f.addRow(self.added_label)
        ft = QGroupBox("Fine-tune")
        f = QFormLayout(ft)
        f.addRow("Checkpoint", self.checkpoint)
        f.addRow("Epochs", self.epochs)
        f.addRow("Learning rate", self.lr)
        f.addRow("", self.freeze_encoder)
        rp = QHBoxLayout()
        rp.addWidget(self.replay_root)
        rp.addWidget(self.replay_size)
        f.addRow("Replay", rp)
        f.addRow("Device", self.device)
        f.addRow(self.finetune_button)
        f.addRow(self.progress)
        f.addRow(self.metrics_label)

        lay = QVBoxLayout(self)
        lay.addWidget(ann)
        lay.addWidget(add)
        lay.addWidget(ft)
        lay.addWidget(self.status)
        lay.addStretch(1)

        self.new_labels_button.clicked.connect(self.new_labels)
        self.add_button.clicked.connect(self.add_to_training_set)
        self.finetune_button.clicked.connect(self.finetune_or_stop)
        self.class_choice.currentTextChanged.connect(self._store_class)
        self.labels_layer.currentIndexChanged.connect(self._load_class)
        napari_viewer.dims.events.current_step.connect(self._load_class)
        self.state.checkpoint_changed.connect(self._on_checkpoint)
        if self.state.checkpoint:
            self._on_checkpoint(self.state.checkpoint)
        self._load_class()

    # ------------------------------------------------------------------ classes

    def _on_checkpoint(self, path: str) -> None:
        if self.worker is None:
            self.checkpoint.value = path
        try:
            from ..checkpoint import read_metadata

            self.set_class_names(read_metadata(path)["class_names"])
        except Exception:  # noqa: BLE001
            pass

    def set_class_names(self, names: list[str]) -> None:
        current = self.class_choice.currentText()
        self.class_choice.blockSignals(True)
        self.class_choice.clear()
        self.class_choice.addItems(list(names))
        self.class_choice.setCurrentText(current if current in names else names[0])
        self.class_choice.blockSignals(False)

    def _slice_index(self, layer: Any) -> int | None:
        if layer is None or layer.ndim < 3:
            return None
        try:
            idx = int(round(float(layer.world_to_data(self.viewer.dims.point)[0])))
        except Exception:  # noqa: BLE001
            idx = int(self.viewer.dims.current_step[0])
        return int(np.clip(idx, 0, layer.data.shape[0] - 1))

    def _n_slices(self, layer: Any) -> int:
        return 1 if layer.ndim == 2 else int(layer.data.shape[0])

    def _meta(self, layer: Any) -> dict[str, Any]:
        meta = layer.metadata.get(META_KEY)
        if not isinstance(meta, dict):
            meta = {}
        n = self._n_slices(layer)
        classes = meta.get("classes")
        if not isinstance(classes, list) or len(classes) != n:
            meta["classes"] = [meta.get("class_name")] * n if n == 1 else [None] * n
        meta["is_stack"] = layer.ndim >= 3
        layer.metadata[META_KEY] = meta
        return meta

    def _load_class(self, *_: Any) -> None:
        layer = self.labels_layer.layer()
        if layer is None:
            return
        meta = self._meta(layer)
        names = meta.get("class_names")
        if names:
            self.set_class_names([*names, *[self.class_choice.itemText(i) for i in range(self.class_choice.count()) if self.class_choice.itemText(i) not in names]])
        idx = self._slice_index(layer) or 0
        cls = meta["classes"][idx]
        if cls:
            self.class_choice.blockSignals(True)
            self.class_choice.setCurrentText(cls)
            self.class_choice.blockSignals(False)

    def _store_class(self, name: str) -> None:
        layer = self.labels_layer.layer()
        if layer is None or not name:
            return
        meta = self._meta(layer)
        idx = self._slice_index(layer) or 0
        meta["classes"][idx] = name
        if layer.ndim == 2:
            meta["class_name"] = name
        meta["annotated"] = True

    def current_class(self) -> str:
        return self.class_choice.currentText().strip()

    # ------------------------------------------------------------------ annotate

    def new_labels(self, *_: Any) -> Any:
        image = self.image_layer.layer()
        if image is None:
            self._fail(ValueError("choose an image layer first"), "Cannot create labels")
            return None
        shape = np.asarray(layer_array(image).shape)
        if getattr(image, "rgb", False):
            shape = shape[:-1]
        n = 1 if len(shape) == 2 else int(shape[0])
        meta = {META_KEY: {"kind": "annotation", "source_layer": image.name, "is_stack": n > 1 or len(shape) == 3,
                           "classes": [self.current_class()] * n, "class_names": [self.class_choice.itemText(i) for i in range(self.class_choice.count())]}}
        layer = self.viewer.add_labels(
            np.zeros(tuple(shape), np.uint8), name=f"{image.name} [annotation]", metadata=meta,
            scale=tuple(image.scale), translate=tuple(image.translate),
        )
        layer.mode = "paint"
        self.labels_layer.set_layer(layer)
        return layer

    def _items(self) -> list[tuple[np.ndarray, np.ndarray, str | None]]:
        image = self.image_layer.layer()
        labels = self.labels_layer.layer()
        if image is None or labels is None:
            raise ValueError("choose an image layer and a Labels layer")
        img = np.asarray(layer_array(image))
        lab = np.asarray(labels.data)
        rgb = bool(getattr(image, "rgb", False))
        img_spatial = img.shape[:-1] if rgb else img.shape
        if img_spatial != lab.shape:
            raise ValueError(
                f"image {image.name!r} {img_spatial} and labels {labels.name!r} {lab.shape} differ in shape"
            )
        self._store_class(self.current_class())
        classes = self._meta(labels)["classes"]
        if lab.ndim == 2:
            return [(img, (lab > 0).astype(np.uint8), classes[0] or self.current_class())]
        idx = [self._slice_index(labels) or 0] if not self.all_slices.isChecked() else range(lab.shape[0])
        return [(img[i], (lab[i] > 0).astype(np.uint8), classes[i]) for i in idx]

    def add_to_training_set(self, *_: Any) -> Any:
        if self.worker is not None:
            return None
        try:
            root = self.dataset_root.value
            if not root:
                raise ValueError("choose a dataset folder for the new samples")
            items = self._items()
            missing = [i for i, (_, _, c) in enumerate(items) if not c]
            if missing:
                raise ValueError(f"set a class for every slice to add (missing for {len(missing)} slice(s))")
        except Exception as exc:  # noqa: BLE001
            self._fail(exc, "Cannot add to the training set")
            return None
        self.status.setText(f"Writing {len(items)} sample(s) to {root} …")
        self.add_button.setEnabled(False)
        self.worker = start_worker(
            add_samples_job,
            root,
            items,
            self.group.text().strip() or None,
            returned=self._added,
            errored=lambda e: self._fail(e, "Adding to the training set failed"),
            finished=self._idle,
        )
        return self.worker

    def _added(self, samples: list[AddedSample]) -> None:
        self.added.extend(samples)
        names = ", ".join(Path(s.path).name for s in samples)
        msg = f"Added {names} to {self.dataset_root.value} ({len(self.added)} added this session)"
        self.added_label.setText(msg)
        self.status.setText(msg)
        notify_info(msg)

    # ------------------------------------------------------------------ fine-tune

    def finetune_params(self) -> dict[str, Any]:
        ckpt = self.checkpoint.value
        if not ckpt:
            raise ValueError("choose the checkpoint to fine-tune")
        root = self.dataset_root.value
        if not root or not (Path(root) / "labels.csv").is_file():
            raise ValueError("the training-set folder has no samples yet: add some first")
        try:
            lr = float(self.lr.text())
        except ValueError:
            raise ValueError(f"learning rate must be a number, got {self.lr.text()!r}") from None
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        return {
            "checkpoint": ckpt,
            "root": root,
            "epochs": int(self.epochs.value()),
            "lr": lr,
            "freeze_encoder": self.freeze_encoder.isChecked(),
            "replay_root": self.replay_root.value or None,
            "replay_size": int(self.replay_size.value()) or None,
            "device": self.device.currentText(),
            "out_dir": str(Path(root) / "checkpoints" / f"finetune-{stamp}"),
        }

    def finetune_or_stop(self, *_: Any) -> Any:
        if self.cancel_token is not None:
            self.cancel_token.cancel()
            self.status.setText("Stopping after the current batch…")
            self.finetune_button.setEnabled(False)
            return None
        if self.worker is not None:
            return None
        from ..training import CancelToken

        try:
            params = self.finetune_params()
        except Exception as exc:  # noqa: BLE001
            self._fail(exc, "Cannot fine-tune")
            return None
        self.cancel_token = CancelToken()
        self.events = []
        self.metrics = None
        self.metrics_label.setText("")
        self.progress.setRange(0, params["epochs"])
        self.progress.setValue(0)
        self.finetune_button.setText("Stop")
        self.add_button.setEnabled(False)
        self._t0 = time.perf_counter()
        self.worker = start_worker(
            finetune_job,
            params,
            list(self.added),
            self.cancel_token,
            yielded=self._on_event,
            returned=self._finetuned,
            errored=lambda e: self._fail(e, "Fine-tuning failed"),
            finished=self._idle,
        )
        return self.worker

    def _on_event(self, ev: Any) -> None:
        if isinstance(ev, tuple):
            self.status.setText(ev[1])
            return
        self.events.append(ev)
        if ev.kind == "batch_end":
            self.progress.setRange(0, ev.epochs)
            self.status.setText(f"fine-tuning epoch {ev.epoch}/{ev.epochs}, batch {ev.batch}/{ev.n_batches}: loss {ev.loss:.4f}")
        elif ev.kind == "epoch_end":
            self.progress.setValue(ev.epoch)

    def _finetuned(self, res: dict[str, Any]) -> None:
        child = res.get("child")
        if child is None:
            msg = "Fine-tuning stopped before the first epoch completed; no checkpoint was written"
            self.status.setText(msg)
            notify_info(msg)
            return
        self.child_checkpoint = child
        self.metrics = res.get("metrics")
        self.state.set_checkpoint(child)  # the Predict widget switches to the child model
        text = f"New checkpoint {child} (now selected in the Predict widget)"
        if self.metrics:
            b, a = self.metrics["before"], self.metrics["after"]
            parts = []
            for key in ("dice", "accuracy"):
                if key in b and key in a:
                    parts.append(f"{key} {b[key]:.3f} → {a[key]:.3f}")
            self.metrics_label.setText(
                f"On the {int(a['n'])} added sample(s): " + ", ".join(parts) + " (before → after)"
            )
        self.status.setText(text)
        notify_info(text)

    # ------------------------------------------------------------------ common

    def _fail(self, exc: BaseException, context: str) -> None:
        self.last_error = error_message(exc, context)
        self.status.setText(self.last_error)
        notify_error(self.last_error)

    def _idle(self) -> None:
        self.worker = None
        self.cancel_token = None
        self.add_button.setEnabled(True)
        self.finetune_button.setEnabled(True)
        self.finetune_button.setText("Fine-tune")

    def closeEvent(self, event) -> None:  # noqa: N802
        if self.cancel_token is not None:
            self.cancel_token.cancel()
        super().closeEvent(event)
