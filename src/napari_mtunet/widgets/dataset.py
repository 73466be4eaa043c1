"""Dataset widget: pick a folder, see the layout, summary and problems, preview samples, set the split.

Reading the dataset and making the previews run in the compute process (:mod:`napari_mtunet.jobs`).  Load,
the status and the preview button stay visible; the folder, the summary, the problems and the split
settings scroll.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qtpy.QtWidgets import (
    QCheckBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
)

from ..config import DataConfig
from ..forms import LAYOUT_NAMES
from ._controls import PathEdit, combo
from ._job import JobWidget

JOBS = "napari_mtunet.jobs"


class DatasetWidget(JobWidget):
    """Dock widget: inspect a dataset folder before training."""

    def __init__(self, napari_viewer: Any, parent=None):
        super().__init__(napari_viewer, parent)
        self.report: Any = None

        self.root = PathEdit("dir", placeholder="dataset folder")
        self.layout_choice = combo(["auto", *LAYOUT_NAMES], "auto")
        self.strict = QCheckBox("strict (refuse datasets with problems)")
        self.load_button = QPushButton("Load and check")
        self.summary = QPlainTextEdit()
        self.summary.setReadOnly(True)
        self.summary.setMaximumHeight(140)
        self.problems = QListWidget()
        self.problems.setMaximumHeight(120)
        self.n_preview = QSpinBox()
        self.n_preview.setRange(1, 2000)
        self.n_preview.setValue(24)
        self.preview_button = QPushButton("Show samples as layers")
        self.preview_button.setEnabled(False)
        self.val_fraction = QDoubleSpinBox()
        self.val_fraction.setRange(0.0, 0.9)
        self.val_fraction.setSingleStep(0.05)
        self.val_fraction.setValue(DataConfig().val_fraction)  # the same defaults as `mtunet train`
        self.test_fraction = QDoubleSpinBox()
        self.test_fraction.setRange(0.0, 0.9)
        self.test_fraction.setSingleStep(0.05)
        self.test_fraction.setValue(DataConfig().test_fraction)
        self.seed = QSpinBox()
        self.seed.setRange(0, 2**31 - 1)
        self.use_button = QPushButton("Use for training")

        form = QFormLayout()
        form.addRow("Folder", self.root)
        form.addRow("Layout", self.layout_choice)
        form.addRow("", self.strict)
        prev = QHBoxLayout()
        prev.addWidget(QLabel("samples"))
        prev.addWidget(self.n_preview)
        prev.addWidget(self.preview_button)
        split_box = QGroupBox("Split")
        sf = QFormLayout(split_box)
        sf.addRow("Validation fraction", self.val_fraction)
        sf.addRow("Test fraction", self.test_fraction)
        sf.addRow("Seed", self.seed)
        sf.addRow(self.use_button)

        lay = self.body_layout
        lay.addLayout(form)
        lay.addWidget(QLabel("Summary"))
        lay.addWidget(self.summary)
        lay.addWidget(QLabel("Problems"))
        lay.addWidget(self.problems)
        lay.addWidget(split_box)
        lay.addStretch(1)
        w = self.watch_layout  # always visible: Load, what it found, the preview
        w.addWidget(self.load_button)
        w.addWidget(self.status)
        w.addLayout(prev)

        self.load_button.clicked.connect(self.load)
        self.preview_button.clicked.connect(self.preview)
        self.use_button.clicked.connect(self.use_for_training)

    def set_busy(self, busy: bool) -> None:
        self.load_button.setEnabled(not busy)
        self.preview_button.setEnabled(not busy and self.report is not None)

    def load(self, *_: Any) -> Any:
        if self.busy:
            return None
        root = self.root.value
        if not root:
            self.fail(ValueError("choose a dataset folder"), "Cannot load")
            return None
        self.report = None
        self.summary.setPlainText("")
        self.problems.clear()
        self.status.setText(f"Reading {root} …")
        return self.start_job(f"{JOBS}:check_dataset", root, self.layout_choice.currentText(),
                              self.strict.isChecked(), context=f"Cannot load the dataset {Path(root).name}",
                              on_result=self._show_report)

    def _show_report(self, report: Any) -> None:
        """``report``: :class:`napari_mtunet.jobs.DatasetCheck`."""
        self.report = report
        self.summary.setPlainText(report.summary)
        for p in report.problems:
            self.problems.addItem(p)
        n = len(report.samples)
        self.status.setText(f"{n} samples" + (f", layout {report.layout}" if report.layout else "")
                            + f", {len(report.problems)} problem(s)")
        self.preview_button.setEnabled(True)

    def preview(self, *_: Any) -> Any:
        if self.busy or self.report is None:
            return None
        samples = list(self.report.samples)
        name = Path(self.root.value).name or "dataset"
        self.status.setText(f"Loading {min(len(samples), self.n_preview.value())} samples …")
        return self.start_job(f"{JOBS}:preview_samples", samples, int(self.n_preview.value()), name,
                              self.root.value, getattr(self.report, "layout", None), context="Preview failed",
                              on_result=self._add_layers)

    def _add_layers(self, layer_data: list[tuple]) -> None:
        for data, kwargs, kind in layer_data:
            getattr(self.viewer, f"add_{kind}")(data, **kwargs)
        meta = layer_data[0][1]["metadata"]["mtunet"]
        extra = meta["extra"]
        self.status.setText(
            f"Showing {extra['n_shown']} of {extra['n_total']} samples (resized to {extra['preview_size']} px, "
            "aspect ratio kept); the ground-truth class of the slice on screen is shown at the bottom left"
        )
        self.state.overlay.update()

    def data_config(self) -> DataConfig:
        return DataConfig(
            root=self.root.value,
            layout=self.layout_choice.currentText(),
            strict=self.strict.isChecked(),
            val_fraction=float(self.val_fraction.value()),
            test_fraction=float(self.test_fraction.value()),
            seed=int(self.seed.value()),
        )

    def use_for_training(self, *_: Any) -> None:
        try:
            cfg = self.data_config()
            if not cfg.root:
                raise ValueError("choose a dataset folder")
        except Exception as exc:  # noqa: BLE001
            self.fail(exc, "Invalid split settings")
            return
        self.state.set_data_config(cfg)
        self.inform(f"The Train widget will use {cfg.root} (validation {cfg.val_fraction:.0%}, "
                    f"test {cfg.test_fraction:.0%})")
