"""`mtunet demo`: its figure shows what the report counts (the Predictor's post-processed predictions),
and it ends with the next steps.  (The held-out accuracy of the real demo, seeds 0-4, and its CPU time are
measured in docs/results.md: a test cannot afford 20 epochs.)"""

from __future__ import annotations

import numpy as np
import pytest

from napari_mtunet.events import Status, drive
from napari_mtunet.workflows.demo import DEMO, iter_demo

pytestmark = pytest.mark.slow


def test_the_figure_and_the_report_agree_and_the_demo_says_what_next(tmp_path):
    lines: list[str] = []

    class Collect:
        def on_status(self, event: Status) -> None:
            lines.append(event.text)

    out = tmp_path / "demo"
    summary = drive(iter_demo(out, n=24, epochs=1, device="cpu", seed=3), [Collect()])
    assert (out / "demo.png").is_file() and (out / "model" / "best.safetensors").is_file()
    assert (out / "data" / "labels.csv").is_file()  # the data sit beside the run folder, not inside it
    held_out = summary["held_out"]
    import json

    report = json.loads((out / "model" / "test_report.json").read_text())
    cls = report["classification"]
    names = cls["class_names"]
    assert len(held_out) == report["n_images"]
    # the figure's predictions are the report's: same confusion matrix, cell by cell
    confusion = np.zeros((len(names), len(names)), int)
    for _, true, pred in held_out:
        confusion[names.index(true), names.index(pred)] += 1
    assert confusion.tolist() == cls["confusion_matrix"]
    assert summary["accuracy"] == pytest.approx(np.trace(confusion) / confusion.sum())
    text = "\n".join(lines)
    assert "next steps:" in text and "mtunet predict" in text and "napari " in text
    assert f"{int(np.trace(confusion))} of {len(held_out)} right" in text


def test_the_cli_shows_the_demo_defaults():
    from napari_mtunet.cli import build_parser

    args = build_parser().parse_args(["demo"])
    assert (args.n, args.size, args.epochs, args.seed) == (DEMO.n, DEMO.size, DEMO.epochs, DEMO.seed)
