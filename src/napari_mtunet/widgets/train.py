"""Train widget: the same config dataclasses as the CLI, the engine in a thread worker.

The worker is a generator over ``Trainer.iter_fit()`` events; the widget
turns them into the progress bars, the live plot and notifications.  The
Start button becomes Stop, which sets the engine's cancel token (checked
between batches); the best checkpoint is kept.  Accelerator memory is
released when the run ends, however it ends.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from qtpy.QtWidgets import (
    QCheckBox,
    QDoubleSpinBox,
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

from ..config import DOCUMENTED_ENCODERS, AugmentConfig, DataConfig, ModelConfig, Preprocessing, TrainConfig
from ._common import (
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
from .plot import TrainingPlot

ENCODERS = (*DOCUMENTED_ENCODERS, "resnet18", "resnet34", "efficientnet-b0")
WEIGHTS = ("imagenet", "none", "local file")


# --------------------------------------------------------------------------- Qt-free job


def training_data(
    data_cfg: DataConfig, preprocessing: Preprocessing, class_names: list[str] | None = None
) -> tuple[Any, Any, list[str], str]:
    """``(train dataset, val dataset | None, class names, summary)``: the same path as ``mtunet train``.

    ``class_names`` fixes the class order (fine-tuning keeps the model's classes).
    """
    import numpy as np

    from ..training.data_bridge import load_data, make_dataset, train_val_test

    loaded = load_data(
        data_cfg.root, data_cfg.layout, strict=data_cfg.strict, max_samples=data_cfg.max_samples, seed=data_cfg.seed
    )
    if class_names:
        loaded.class_names = list(class_names)
    if data_cfg.val_fraction > 0 or data_cfg.test_fraction > 0 or data_cfg.fold is not None:
        splits = train_val_test(loaded, data_cfg)
    else:
        splits = {"train": np.arange(len(loaded.samples)), "val": np.arange(0)}
    size = preprocessing.image_size
    train_ds = make_dataset(loaded, splits["train"], size, augment=data_cfg.augment)
    val_ds = make_dataset(loaded, splits["val"], size) if len(splits["val"]) else None
    return train_ds, val_ds, list(loaded.class_names), loaded.summary()


def train_job(configs: dict[str, Any], cancel: Any):
    """Generator worker body: yields ``("status", text)`` then the engine's events."""
    from ..device import empty_cache, resolve_device
    from ..training import Trainer

    device = resolve_device(configs["train"].device)
    try:
        yield ("status", f"Loading the dataset from {configs['data'].root} …")
        train_ds, val_ds, class_names, summary = training_data(configs["data"], configs["preprocessing"])
        mc: ModelConfig = configs["model"]
        model_cfg = ModelConfig.from_dict(
            {**mc.to_dict(), "num_classes": max(2, len(class_names)), "class_names": class_names if len(class_names) >= 2 else []}
        )
        yield ("status", f"Training on {len(train_ds)} images, validating on {len(val_ds or [])} "
                         f"({', '.join(class_names)}), device {device}")
        trainer = Trainer(
            model_cfg,
            configs["train"],
            train_ds,
            val_ds,
            preprocessing=configs["preprocessing"],
            out_dir=configs["out_dir"],
            cancel=cancel,
            data_config=configs["data"],
        )
        with TorchThreads(str(device)):
            yield from trainer.iter_fit()
        return trainer.result
    finally:
        empty_cache(device)


# --------------------------------------------------------------------------- widget


class TrainWidget(QWidget):
    """Dock widget: train a multi-task UNet on a dataset folder."""

    def __init__(self, napari_viewer: Any, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = state_for(napari_viewer)
        warm_up()  # heavy imports now, in the background, not in the middle of the work
        self.worker = None
        self.cancel_token = None
        self.result = None
        self.events: list[Any] = []
        self.last_error: str | None = None
        self.best_checkpoint: str | None = None
        self._t0 = 0.0

        # data
        self.data_root = PathEdit("dir", placeholder="dataset folder (any supported layout)")
        self.layout_choice = combo(["auto", *_layout_names()], "auto")
        self.val_fraction = _dspin(0.0, 0.9, 0.15, 0.05)
        self.test_fraction = _dspin(0.0, 0.9, 0.15, 0.05)
        self.seed = QSpinBox()
        self.seed.setRange(0, 2**31 - 1)
        self.max_samples = QSpinBox()
        self.max_samples.setRange(0, 10**7)
        self.max_samples.setSpecialValueText("all")
        self.augment = QCheckBox("augmentation (rotation, flips, shear)")
        self.augment.setChecked(True)
        # model
        self.encoder = combo(ENCODERS, "mobilenet_v2", editable=True)
        self.encoder_weights = combo(WEIGHTS, "imagenet")
        self.weights_file = PathEdit("file", "weights (*.pth *.pt *.safetensors)", "local encoder weights file")
        self.weights_file.setEnabled(False)
        self.task = combo(["both", "seg", "cls"], "both")
        self.image_size = QSpinBox()
        self.image_size.setRange(32, 2048)
        self.image_size.setSingleStep(32)
        self.image_size.setValue(256)
        # optimisation
        self.w_seg = _dspin(0.0, 100.0, 5.0, 0.5)
        self.w_cls = _dspin(0.0, 100.0, 1.0, 0.5)
        self.epochs = QSpinBox()
        self.epochs.setRange(1, 10000)
        self.epochs.setValue(50)
        self.batch_size = QSpinBox()
        self.batch_size.setRange(1, 4096)
        self.batch_size.setValue(32)
        self.lr = QLineEdit("1e-3")
        self.patience = QSpinBox()
        self.patience.setRange(0, 1000)
        self.patience.setValue(10)
        self.patience.setSpecialValueText("off")
        self.device = combo(device_choices(), "auto")
        self.device.setToolTip("Available here: " + ", ".join(device_choices()[1:]))
        self.out_dir = PathEdit("dir", placeholder="output folder for checkpoints")

        self.start_button = QPushButton("Start training")
        self.epoch_progress = QProgressBar()
        self.epoch_progress.setFormat("epoch %v/%m")
        self.batch_progress = QProgressBar()
        self.batch_progress.setFormat("batch %v/%m")
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.plot = TrainingPlot()
        self.plot.setMinimumHeight(170)

        data_box = QGroupBox("Data")
        f = QFormLayout(data_box)
        f.addRow("Folder", self.data_root)
        f.addRow("Layout", self.layout_choice)
        split = QHBoxLayout()
        split.addWidget(QLabel("val"))
        split.addWidget(self.val_fraction)
        split.addWidget(QLabel("test"))
        split.addWidget(self.test_fraction)
        f.addRow("Split", split)
        f.addRow("Seed", self.seed)
        f.addRow("Max samples", self.max_samples)
        f.addRow("", self.augment)
        model_box = QGroupBox("Model")
        f = QFormLayout(model_box)
        f.addRow("Encoder", self.encoder)
        f.addRow("Encoder weights", self.encoder_weights)
        f.addRow("", self.weights_file)
        f.addRow("Task", self.task)
        f.addRow("Image size", self.image_size)
        opt_box = QGroupBox("Training")
        f = QFormLayout(opt_box)
        w = QHBoxLayout()
        w.addWidget(QLabel("seg"))
        w.addWidget(self.w_seg)
        w.addWidget(QLabel("cls"))
        w.addWidget(self.w_cls)
        f.addRow("Loss weights", w)
        f.addRow("Epochs", self.epochs)
        f.addRow("Batch size", self.batch_size)
        f.addRow("Learning rate", self.lr)
        f.addRow("Early stopping", self.patience)
        f.addRow("Device", self.device)
        f.addRow("Output", self.out_dir)

        lay = QVBoxLayout(self)
        for box in (data_box, model_box, opt_box):
            lay.addWidget(box)
        lay.addWidget(self.start_button)
        lay.addWidget(self.epoch_progress)
        lay.addWidget(self.batch_progress)
        lay.addWidget(self.status)
        lay.addWidget(self.plot)
        lay.addStretch(1)

        self.start_button.clicked.connect(self.start_or_stop)
        self.encoder_weights.currentTextChanged.connect(
            lambda t: self.weights_file.setEnabled(t == "local file")
        )
        self.state.data_config_changed.connect(self.apply_data_config)
        if self.state.data_config is not None:
            self.apply_data_config(self.state.data_config)

    # ------------------------------------------------------------------ parameters -> configs

    def apply_data_config(self, cfg: DataConfig) -> None:
        """Take the folder and split settings chosen in the Dataset widget."""
        self.data_root.value = cfg.root
        self.layout_choice.setCurrentText(cfg.layout)
        self.val_fraction.setValue(cfg.val_fraction)
        self.test_fraction.setValue(cfg.test_fraction)
        self.seed.setValue(int(cfg.seed))

    def configs(self) -> dict[str, Any]:
        """Collect the controls into the config dataclasses (raises ConfigError with a clear message)."""
        if not self.data_root.value:
            raise ValueError("choose a dataset folder")
        if not self.out_dir.value:
            raise ValueError("choose an output folder for the checkpoints")
        weights = self.encoder_weights.currentText()
        if weights == "local file":
            weights = self.weights_file.value
            if not weights or not Path(weights).is_file():
                raise ValueError(f"encoder weights file not found: {weights!r}")
        elif weights == "none":
            weights = None
        try:
            lr = float(self.lr.text())
        except ValueError:
            raise ValueError(f"learning rate must be a number, got {self.lr.text()!r}") from None
        data = DataConfig(
            root=self.data_root.value,
            layout=self.layout_choice.currentText(),
            val_fraction=float(self.val_fraction.value()),
            test_fraction=float(self.test_fraction.value()),
            seed=int(self.seed.value()),
            max_samples=int(self.max_samples.value()) or None,
            augment=AugmentConfig(enabled=self.augment.isChecked()),
        )
        model = ModelConfig(encoder_name=self.encoder.currentText().strip(), encoder_weights=weights, task=self.task.currentText())
        pre = Preprocessing(image_size=int(self.image_size.value()))
        train = TrainConfig(
            epochs=int(self.epochs.value()),
            batch_size=int(self.batch_size.value()),
            lr=lr,
            w_seg=float(self.w_seg.value()),
            w_cls=float(self.w_cls.value()),
            early_stopping_patience=int(self.patience.value()) or None,
            device=self.device.currentText(),
            seed=int(self.seed.value()),
        )
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out_dir = Path(self.out_dir.value) / f"mtunet-{stamp}"  # a new run folder: nothing is overwritten
        return {"data": data, "model": model, "preprocessing": pre, "train": train, "out_dir": str(out_dir)}

    # ------------------------------------------------------------------ running

    @property
    def running(self) -> bool:
        return self.worker is not None

    def start_or_stop(self, *_: Any) -> None:
        if self.running:
            self.stop()
        else:
            self.start()

    def start(self) -> Any:
        from ..training import CancelToken

        try:
            configs = self.configs()
            from ..device import resolve_device

            resolve_device(configs["train"].device)  # a clear error now, not in the worker
        except Exception as exc:  # noqa: BLE001
            self._fail(exc, "Cannot start training")
            return None
        self.events = []
        self.result = None
        self.last_error = None
        self.best_checkpoint = None
        self.plot.clear()
        self.epoch_progress.setRange(0, configs["train"].epochs)
        self.epoch_progress.setValue(0)
        self.batch_progress.setRange(0, 1)
        self.batch_progress.setValue(0)
        self.cancel_token = CancelToken()
        self.start_button.setText("Stop")
        self._t0 = time.perf_counter()
        self.worker = start_worker(
            train_job,
            configs,
            self.cancel_token,
            yielded=self._on_event,
            returned=self._on_returned,
            errored=lambda e: self._fail(e, "Training failed"),
            finished=self._on_finished,
        )
        return self.worker

    def stop(self) -> None:
        """Ask the engine to stop after the current batch (the best checkpoint is kept)."""
        if self.cancel_token is not None:
            self.cancel_token.cancel()
            self.status.setText("Stopping after the current batch…")
            self.start_button.setEnabled(False)

    def _on_event(self, ev: Any) -> None:
        if isinstance(ev, tuple):
            self.status.setText(ev[1])
            return
        self.events.append(ev)
        kind = ev.kind
        if kind == "batch_end":
            self.batch_progress.setRange(0, ev.n_batches)
            self.batch_progress.setValue(ev.batch)
            self.epoch_progress.setRange(0, ev.epochs)
            self.epoch_progress.setValue(ev.epoch - 1)
            self.status.setText(f"epoch {ev.epoch}/{ev.epochs}, batch {ev.batch}/{ev.n_batches}: loss {ev.loss:.4f}")
        elif kind == "epoch_end":
            self.epoch_progress.setValue(ev.epoch)
            for k, v in ev.train.items():
                if k == "train_loss":
                    self.plot.loss.add_point("train", ev.epoch, v)
            if "val_loss" in ev.val:
                self.plot.loss.add_point("val", ev.epoch, ev.val["val_loss"])
            if "val_dice" in ev.val:
                self.plot.metric.add_point("Dice", ev.epoch, ev.val["val_dice"])
            if "val_accuracy" in ev.val:
                self.plot.metric.add_point("accuracy", ev.epoch, ev.val["val_accuracy"])
            self.status.setText(
                f"epoch {ev.epoch}/{ev.epochs}: {ev.monitor} {ev.monitor_value:.4f}"
                + (" (best)" if ev.improved else f" (best {ev.best_value:.4f} at epoch {ev.best_epoch})")
            )
        elif kind == "checkpoint" and ev.which == "best":
            self.best_checkpoint = ev.path
        elif kind == "finish":
            self.best_checkpoint = ev.best_checkpoint or self.best_checkpoint
        elif kind == "error":
            self.last_error = ev.message

    def _on_returned(self, result: Any) -> None:
        self.result = result
        if result is None:
            return
        best = result.best_checkpoint
        secs = time.perf_counter() - self._t0
        what = {"completed": "finished", "early_stopping": "stopped early", "cancelled": "stopped"}.get(result.reason, result.reason)
        if best is not None:
            msg = (
                f"Training {what} after {result.epochs_run} epoch(s) in {secs:.0f} s; best {result.monitor} "
                f"{result.best_value:.4f} at epoch {result.best_epoch}: {best}"
            )
            self.best_checkpoint = str(best)
            self.state.set_checkpoint(str(best))
        else:
            msg = f"Training {what} before the first epoch completed; no checkpoint was written"
        self.status.setText(msg)
        notify_info(msg)

    def _fail(self, exc: BaseException, context: str) -> None:
        self.last_error = error_message(exc, context)
        self.status.setText(self.last_error)
        notify_error(self.last_error)

    def _on_finished(self) -> None:
        self.worker = None
        self.cancel_token = None
        self.start_button.setText("Start training")
        self.start_button.setEnabled(True)

    def closeEvent(self, event) -> None:  # noqa: N802
        self.stop()
        super().closeEvent(event)


def _dspin(lo: float, hi: float, value: float, step: float) -> QDoubleSpinBox:
    s = QDoubleSpinBox()
    s.setRange(lo, hi)
    s.setSingleStep(step)
    s.setDecimals(3)
    s.setValue(value)
    return s


def _layout_names() -> list[str]:
    try:
        from ..data.layouts import LAYOUTS

        return list(LAYOUTS)
    except Exception:  # noqa: BLE001
        return ["generic", "busi"]
