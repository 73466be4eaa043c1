"""The Train widget's live plot: the hand-written QPainter panels against matplotlib's Qt canvas (issue 23 pt 8).

Both draw what the Train widget shows after each epoch: two panels (loss: train/val; validation metrics:
Dice/balanced accuracy), legends with the latest values, tick labels, and the previous run faded.

- ``first use``: importing the plot and building the widget on napari's GUI thread, in a fresh process
  (what opening the Train dock pays); median of ``--fresh`` processes;
- ``update``: one epoch more on every curve and a synchronous repaint at the dock's size (360 x 190 px),
  after ``--epochs`` epochs; the two variants interleaved round by round, median of the paired ratios.

Both run on the GUI thread: the plot's cost is a GUI-thread gap (issue 21 point 8, target <= 100 ms).

    xvfb-run -a python benchmarks/bench_training_plot.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import _common as C  # noqa: E402

NAME = "training_plot"
SIZE = (360, 190)
FIRST_USE = {
    "qpainter": "from napari_mtunet.widgets.plot import TrainingPlot\nw = TrainingPlot()",
    "matplotlib": ("from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg\nfrom matplotlib.figure import "
                   "Figure\nfig = Figure(figsize=(3.6, 1.9), dpi=100)\nax1, ax2 = fig.subplots(1, 2)\n"
                   "w = FigureCanvasQTAgg(fig)"),
}


def first_use(kind: str) -> float:
    """Seconds to import and build the plot widget in a fresh process that already runs Qt."""
    code = (
        "import time\nfrom qtpy.QtWidgets import QApplication\napp = QApplication([])\nt0 = time.perf_counter()\n"
        + FIRST_USE[kind] + "\nw.resize(360, 190)\nw.show()\napp.processEvents()\n"
        "print(time.perf_counter() - t0)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


class MatplotlibPlot:
    """The same two panels drawn by matplotlib (what a replacement would do each epoch)."""

    def __init__(self) -> None:
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.fig = Figure(figsize=(SIZE[0] / 100, SIZE[1] / 100), dpi=100, layout="constrained")
        self.loss, self.metric = self.fig.subplots(1, 2)
        self.widget = FigureCanvasQTAgg(self.fig)
        self.series: dict[tuple[str, str], list[tuple[float, float]]] = {}
        self.previous = {("loss", "train"): [(e, 1.0 / e) for e in range(1, 11)],
                         ("loss", "val"): [(e, 1.2 / e) for e in range(1, 11)]}

    def add_point(self, panel: str, name: str, x: float, y: float) -> None:
        self.series.setdefault((panel, name), []).append((x, y))

    def redraw(self) -> None:
        for ax, panel, title in ((self.loss, "loss", "loss"), (self.metric, "metric", "validation metrics")):
            ax.clear()
            ax.set_title(title, fontsize=8)
            for (p, name), pts in self.previous.items():
                if p == panel:
                    ax.plot(*zip(*pts), "--", alpha=0.35)
            for (p, name), pts in self.series.items():
                if p == panel:
                    ax.plot(*zip(*pts), marker="o", ms=2, label=f"{name} {pts[-1][1]:.3f}")
            ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, 1.25), ncol=2, frameon=False)
            ax.tick_params(labelsize=6)
        self.widget.draw()
        self.widget.repaint()


def main() -> None:
    p = C.base_parser(__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=50, help="epochs already on the curves")
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--fresh", type=int, default=5, help="fresh processes for the first-use cost")
    args = p.parse_args()
    if args.quick:
        args.epochs, args.rounds, args.fresh = 5, 3, 1
    started = time.time()
    from qtpy.QtWidgets import QApplication

    from napari_mtunet.widgets.plot import TrainingPlot

    app = QApplication.instance() or QApplication([])
    qp = TrainingPlot()
    mp = MatplotlibPlot()
    for w in (qp, mp.widget):
        w.resize(*SIZE)
        w.show()
    for e in range(1, 11):  # a previous run, faded
        qp.loss.add_point("train", e, 1.0 / e)
        qp.loss.add_point("val", e, 1.2 / e)
    qp.start_run()
    epoch = 0

    def add_epoch() -> None:
        nonlocal epoch
        epoch += 1
        for name, y in (("train", 1.0 / epoch), ("val", 1.1 / epoch)):
            qp.loss.add_point(name, epoch, y)
            mp.add_point("loss", name, epoch, y)
        for name, y in (("Dice", 1 - 0.5 / epoch), ("bal. accuracy", 1 - 0.6 / epoch)):
            qp.metric.add_point(name, epoch, y)
            mp.add_point("metric", name, epoch, y)

    for _ in range(args.epochs):
        add_epoch()
    app.processEvents()

    def update_qpainter() -> None:
        add_epoch()
        qp.loss.repaint()
        qp.metric.repaint()

    def update_matplotlib() -> None:
        add_epoch()
        mp.redraw()

    times = C.interleaved({"qpainter": update_qpainter, "matplotlib": update_matplotlib}, args.rounds, warmup=1,
                          log=False)
    update = C.ratio_summary(times, "matplotlib", "qpainter")
    fresh = {k: [first_use(k) for _ in range(args.fresh)] for k in FIRST_USE}
    first = {k: C.median(v) for k, v in fresh.items()}
    rows = [[k, 1000 * first[k], 1000 * C.median(times[k])] for k in ("qpainter", "matplotlib")]
    C.print_table(["plot", "first use ms (fresh process)", "update ms (median)"], rows)
    print(f"matplotlib / qpainter per update: {update['median']:.1f}x; first use "
          f"{first['matplotlib'] / first['qpainter']:.1f}x; load average {os.getloadavg()[0]:.1f}")
    targets = [C.target_check("matplotlib update, a GUI-thread gap (ms)", 1000 * C.median(times["matplotlib"]), 100.0),
               C.target_check("qpainter update, a GUI-thread gap (ms)", 1000 * C.median(times["qpainter"]), 100.0)]
    C.print_targets(targets)
    C.write_result(NAME, args, {"config": {"epochs": args.epochs, "rounds": args.rounds, "size": SIZE},
                                "results": {"first_use_s": fresh, "first_use_median_s": first,
                                            "update_s": times, "update_ratio_matplotlib_vs_qpainter": update},
                                "targets": targets}, started)
    print(json.dumps({"first_use_median_s": first}))


if __name__ == "__main__":
    main()
