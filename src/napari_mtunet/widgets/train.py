"""Train widget: a form -> a run config (:mod:`napari_mtunet.forms`) -> the training workflow in the
compute process.

The widget holds no science: :class:`~napari_mtunet.forms.TrainForm` turns
its fields into a :class:`~napari_mtunet.config.RunConfig` (the same
defaults as ``mtunet train``) and :func:`napari_mtunet.workflows.iter_train`
does the work (:func:`napari_mtunet.jobs.train`); the widget turns the
events into progress bars, the plot, elapsed time / ETA and notifications.
Start becomes Stop (the best checkpoint is kept); closing the dock stops
the run too.  The settings scroll; Start, the progress, the status and the
plot stay visible below them.
"""

from __future__ import annotations

import time
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
)

from ..config import PRESETS
from ..forms import ENCODER_NOTES, ENCODERS, LAYOUT_NAMES, WEIGHTS, TrainForm, default_output_root
from ._controls import DeviceCombo, PathEdit, combo
from ._job import JobWidget
from ._settings import load_settings, save_settings
from .plot import TrainingPlot

SETTINGS = "train"


def _dspin(lo: float, hi: float, value: float, step: float) -> QDoubleSpinBox:
    s = QDoubleSpinBox()
    s.setRange(lo, hi)
    s.setSingleStep(step)
    s.setDecimals(2)
    s.setValue(value)
    return s


def fmt_seconds(s: float) -> str:
    s = max(0, int(round(s)))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class TrainWidget(JobWidget):
    """Dock widget: train a multi-task UNet on a dataset folder."""

    def __init__(self, napari_viewer: Any, parent=None):
        super().__init__(napari_viewer, parent)
        self.result = None
        self.best_checkpoint: str | None = None
        self._t0 = 0.0
        self._closed = False

        # data
        self.data_root = PathEdit("dir", placeholder="dataset folder (any supported layout)")
        self.layout_choice = combo(["auto", *LAYOUT_NAMES], "auto")
        self.layout_options = QLineEdit()
        self.layout_options.setPlaceholderText("none (e.g. level=1, patch_size=512 for PANDA)")
        self.layout_options.setToolTip("Options of the layout reader, NAME=VALUE separated by commas "
                                       "(docs/datasets.md); saved in the run config (mtunet --layout-option)")
        self.val_fraction = _dspin(0.0, 0.9, 0.15, 0.05)
        self.test_fraction = _dspin(0.0, 0.9, 0.15, 0.05)
        self.seed = QSpinBox()
        self.seed.setRange(0, 2**31 - 1)
        self.max_samples = QSpinBox()
        self.max_samples.setRange(0, 10**7)
        self.max_samples.setSpecialValueText("all")
        self.augment = QCheckBox("augmentation (rotation, flips, shear)")
        self.strict = QCheckBox("strict (refuse a dataset with any problem)")
        # model
        self.preset = combo(sorted(PRESETS), TrainForm().preset)
        self.preset.setToolTip(
            "The recipe to start from: cpu = the model two CPU cores train in about 30 minutes; gpu = the paper's "
            "budget (256 px, 50 epochs, batch 32, early stopping). Choosing one sets the model and optimisation "
            "fields below; change any of them after (mtunet train --preset)")
        self.encoder = combo(ENCODERS, ENCODERS[0], editable=True)
        self.encoder_note = QLabel("")
        self.encoder_note.setWordWrap(True)
        self.encoder_weights = combo(WEIGHTS, "imagenet")
        self.weights_file = PathEdit("file", "weights (*.pth *.pt *.safetensors)", "local encoder weights file")
        self.task = combo(["both", "seg", "cls"], "both")
        self.interactive = QCheckBox("interactive (click and box prompts)")
        self.interactive.setToolTip(
            "Also train the model to segment the object you click on or draw a box around (the Segment object "
            "widget); it still predicts without prompts. Saved in the run config as model.prompts (mtunet train "
            "--interactive). Needs the segmentation head (task both or seg).")
        self.image_size = QSpinBox()
        self.image_size.setRange(32, 4096)
        self.image_size.setSingleStep(32)
        # optimisation
        self.w_seg = _dspin(0.0, 100.0, 5.0, 0.5)
        self.w_cls = _dspin(0.0, 100.0, 1.0, 0.5)
        self.epochs = QSpinBox()
        self.epochs.setRange(1, 100000)
        self.batch_size = QSpinBox()
        self.batch_size.setRange(1, 4096)
        self.lr = QLineEdit()
        self.patience = QSpinBox()
        self.patience.setRange(0, 1000)
        self.patience.setSpecialValueText("off")
        self.device = DeviceCombo()
        self.out_dir = PathEdit("dir", placeholder=default_output_root())
        self.out_dir.setToolTip("Each run gets a new folder inside this one; nothing is overwritten")

        self.start_button = QPushButton("Start training")
        self.epoch_progress = QProgressBar()
        self.epoch_progress.setFormat("%v/%m epochs done")
        self.batch_progress = QProgressBar()
        self.batch_progress.setFormat("batch %v/%m")
        self.timing = QLabel("")
        self.plot = TrainingPlot()
        self.plot.setMinimumHeight(150)
        for bar in (self.epoch_progress, self.batch_progress):
            bar.setMaximumHeight(18)

        data_box = QGroupBox("Data")
        f = QFormLayout(data_box)
        f.addRow("Folder", self.data_root)
        f.addRow("Layout", self.layout_choice)
        f.addRow("Layout options", self.layout_options)
        split = QHBoxLayout()
        split.addWidget(QLabel("val"))
        split.addWidget(self.val_fraction)
        split.addWidget(QLabel("test"))
        split.addWidget(self.test_fraction)
        f.addRow("Split", split)
        f.addRow("Seed", self.seed)
        f.addRow("Max samples", self.max_samples)
        f.addRow("", self.augment)
        f.addRow("", self.strict)
        model_box = QGroupBox("Model")
        f = QFormLayout(model_box)
        f.addRow("Preset", self.preset)
        f.addRow("Encoder", self.encoder)
        f.addRow("", self.encoder_note)
        f.addRow("Encoder weights", self.encoder_weights)
        f.addRow("", self.weights_file)
        f.addRow("Task", self.task)
        f.addRow("", self.interactive)
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

        lay = self.body_layout
        for box in (data_box, model_box, opt_box):
            lay.addWidget(box)
        lay.addStretch(1)
        w = self.watch_layout  # always visible, below the settings
        w.addWidget(self.start_button)
        w.addWidget(self.epoch_progress)
        w.addWidget(self.batch_progress)
        w.addWidget(self.timing)
        w.addWidget(self.status)
        w.addWidget(self.plot)

        self.start_button.clicked.connect(self.start_or_stop)
        self.encoder_weights.currentTextChanged.connect(lambda t: self.weights_file.setEnabled(t == "local file"))
        self.encoder.currentTextChanged.connect(self._describe_encoder)
        self.preset.currentTextChanged.connect(self._apply_preset)
        self.state.data_config_changed.connect(self.apply_data_config)
        self.set_form(TrainForm.from_dict(load_settings(SETTINGS)))
        if self.state.data_config is not None:
            self.apply_data_config(self.state.data_config)

    # ------------------------------------------------------------------ fields <-> form

    def form(self) -> TrainForm:
        return TrainForm(
            root=self.data_root.value, preset=self.preset.currentText(), layout=self.layout_choice.currentText(),
            layout_options=self.layout_options.text(),
            val_fraction=float(self.val_fraction.value()), test_fraction=float(self.test_fraction.value()),
            seed=int(self.seed.value()), max_samples=int(self.max_samples.value()), augment=self.augment.isChecked(),
            strict=self.strict.isChecked(),
            encoder=self.encoder.currentText(), weights=self.encoder_weights.currentText(),
            weights_file=self.weights_file.value, task=self.task.currentText(), interactive=self.interactive.isChecked(),
            image_size=int(self.image_size.value()),
            w_seg=float(self.w_seg.value()), w_cls=float(self.w_cls.value()), epochs=int(self.epochs.value()),
            batch_size=int(self.batch_size.value()), lr=self.lr.text(), patience=int(self.patience.value()),
            device=self.device.currentText(), out_root=self.out_dir.value,
        )

    def set_form(self, form: TrainForm) -> None:
        self.data_root.value = form.root
        if form.preset in PRESETS:
            self.preset.blockSignals(True)  # the fields come from the form, not from the preset
            self.preset.setCurrentText(form.preset)
            self.preset.blockSignals(False)
        self.layout_choice.setCurrentText(form.layout)
        self.layout_options.setText(form.layout_options)
        self.val_fraction.setValue(form.val_fraction)
        self.test_fraction.setValue(form.test_fraction)
        self.seed.setValue(int(form.seed))
        self.max_samples.setValue(int(form.max_samples))
        self.augment.setChecked(bool(form.augment))
        self.strict.setChecked(bool(form.strict))
        self.encoder.setCurrentText(form.encoder)
        self.encoder_weights.setCurrentText(form.weights)
        self.weights_file.value = form.weights_file
        self.weights_file.setEnabled(form.weights == "local file")
        self.task.setCurrentText(form.task)
        self.interactive.setChecked(bool(form.interactive))
        self.image_size.setValue(int(form.image_size))
        self.w_seg.setValue(form.w_seg)
        self.w_cls.setValue(form.w_cls)
        self.epochs.setValue(int(form.epochs))
        self.batch_size.setValue(int(form.batch_size))
        self.lr.setText(form.lr)
        self.patience.setValue(int(form.patience))
        self.device.want(form.device)
        self.out_dir.value = form.out_root
        self._describe_encoder(form.encoder)

    def _apply_preset(self, name: str) -> None:
        """The preset's model and optimisation fields; data, split and output stay as they are."""
        if name in PRESETS:
            self.set_form(TrainForm.for_preset(name, self.form()))

    def _describe_encoder(self, name: str) -> None:
        self.encoder_note.setText(ENCODER_NOTES.get(name.strip(), ""))

    def apply_data_config(self, cfg: Any) -> None:
        """Take the folder and split settings chosen in the Dataset widget."""
        self.data_root.value = cfg.root
        self.layout_choice.setCurrentText(cfg.layout)
        self.layout_options.setText(TrainForm.layout_options_text(getattr(cfg, "layout_options", {}) or {}))
        self.strict.setChecked(bool(cfg.strict))  # the Dataset widget's "strict" reaches training
        self.val_fraction.setValue(cfg.val_fraction)
        self.test_fraction.setValue(cfg.test_fraction)
        self.seed.setValue(int(cfg.seed))

    # ------------------------------------------------------------------ running

    @property
    def running(self) -> bool:
        return self.busy

    def start_or_stop(self, *_: Any) -> None:
        if self.busy:
            self.stop_job()
        else:
            self.start()

    def start(self) -> Any:
        form = self.form()
        try:
            run = form.to_run()
            if form.task == "cls" and run.train.w_cls <= 0 or form.task == "seg" and run.train.w_seg <= 0:
                raise ValueError("the loss weight of the head being trained must be > 0")
            out_dir = form.run_folder()  # (the device is checked first thing in the worker: it needs torch)
        except Exception as exc:  # noqa: BLE001
            self.fail(exc, "Cannot start training")
            return None
        save_settings(SETTINGS, form.to_dict())
        self.result = None
        self.best_checkpoint = None
        self.plot.start_run()
        self.epoch_progress.setRange(0, run.train.epochs)
        self.epoch_progress.setValue(0)
        self.batch_progress.setRange(0, 1)
        self.batch_progress.setValue(0)
        self.timing.setText("")
        self._t0 = time.perf_counter()
        self._t_first: float | None = None
        self._done_batches = 0
        self._total_batches = None
        return self.start_job("napari_mtunet.jobs:train", run, str(out_dir), context="Training failed",
                              cancellable=True, on_event=self._on_event, on_result=self._on_result)

    def on_closed(self) -> None:
        save_settings(SETTINGS, self.form().to_dict())  # remembered for the next opening

    def set_busy(self, busy: bool) -> None:
        self.start_button.setText("Stop" if busy else "Start training")
        self.start_button.setEnabled(True)

    def on_stopping(self) -> None:
        self.start_button.setEnabled(False)

    def _on_event(self, ev: Any) -> None:
        kind = ev.kind
        if kind == "batch_end":
            self.batch_progress.setRange(0, ev.n_batches)
            self.batch_progress.setValue(ev.batch)
            self.epoch_progress.setRange(0, ev.epochs)
            self.epoch_progress.setValue(ev.epoch - 1)
            self.status.setText(f"epoch {ev.epoch}/{ev.epochs}, batch {ev.batch}/{ev.n_batches}: loss {ev.loss:.4f}")
            self._done_batches += 1
            self._total_batches = ev.n_batches * ev.epochs
            self._show_timing(ev.epoch, ev.n_batches)
        elif kind == "epoch_end":
            self.epoch_progress.setValue(ev.epoch)
            self.plot.loss.add_point("train", ev.epoch, ev.train.get("train_loss"))
            if "val_loss" in ev.val:
                self.plot.loss.add_point("val", ev.epoch, ev.val["val_loss"])
            if "val_dice" in ev.val:
                self.plot.metric.add_point("Dice", ev.epoch, ev.val["val_dice"])
            if "val_balanced_accuracy" in ev.val:
                self.plot.metric.add_point("bal. accuracy", ev.epoch, ev.val["val_balanced_accuracy"])
            self.status.setText(
                f"epoch {ev.epoch}/{ev.epochs} done: {ev.monitor} {ev.monitor_value:.4f}"
                + (" (best)" if ev.improved else f" (best {ev.best_value:.4f} at epoch {ev.best_epoch})")
            )
        elif kind == "checkpoint" and ev.which == "best":
            self.best_checkpoint = ev.path
        elif kind == "finish":
            self.best_checkpoint = ev.best_checkpoint or self.best_checkpoint
        elif kind == "error":
            self.last_error = ev.message

    def _show_timing(self, epoch: int, n_batches: int) -> None:
        now = time.perf_counter()
        if self._t_first is None:
            self._t_first = now  # the rate is measured from the first batch (loading the data is not training)
        text = f"elapsed {fmt_seconds(now - self._t0)}"
        if self._total_batches and self._done_batches >= 3:
            left = (self._total_batches - ((epoch - 1) * n_batches + self.batch_progress.value()))
            eta = (now - self._t_first) / (self._done_batches - 1) * max(0, left)
            text += f", about {fmt_seconds(eta)} left"
        self.timing.setText(text)

    def _on_result(self, summary: Any) -> None:
        """``summary``: :class:`napari_mtunet.jobs.TrainSummary`."""
        self.result = summary
        if summary is None:
            return
        secs = time.perf_counter() - self._t0
        self.timing.setText(f"took {fmt_seconds(secs)}")
        what = {"completed": "finished", "early_stopping": "stopped early", "cancelled": "stopped"}.get(
            summary.reason, summary.reason)
        if summary.best_checkpoint is not None:
            msg = (f"Training {what} after {summary.epochs_run} epoch(s) in {fmt_seconds(secs)}; best "
                   f"{summary.monitor} {summary.best_value:.4f} at epoch {summary.best_epoch}. "
                   f"Checkpoint: {summary.best_checkpoint}")
            s = summary.test_scalars
            parts = [f"{k} {s[k]:.3f}" for k in ("dice", "balanced_accuracy") if s.get(k) is not None]
            if parts:
                msg += " Held-out test: " + ", ".join(parts) + "."
            self.best_checkpoint = summary.best_checkpoint
            if self.docked:  # a closed dock does not hand its model to the other widgets
                self.state.set_checkpoint(str(summary.best_checkpoint))
            self.inform(msg)
        else:
            self.inform(f"Training {what} before the first epoch completed; no checkpoint was written")
