"""A tiny, dependency-free live plot (QPainter): cheap enough to redraw during training."""

from __future__ import annotations

import math
from typing import Any

from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QFont, QPainter, QPainterPath, QPen
from qtpy.QtWidgets import QHBoxLayout, QSizePolicy, QWidget

PALETTE = ["#4fc3f7", "#ffb74d", "#81c784", "#e57373", "#ba68c8", "#fff176"]


class PlotPanel(QWidget):
    """One panel: named series of (x, y) points drawn as lines with markers.

    Axis tick labels on both axes, the legend in a strip above the plot (never
    over the curves), and the previous run kept as faded dashed lines for
    comparison (:meth:`start_run`).
    """

    def __init__(self, title: str = "", ylabel: str = "", y_range: tuple[float, float] | None = None, parent=None):
        super().__init__(parent)
        self.title = title
        self.ylabel = ylabel
        self.y_range = y_range
        self.series: dict[str, list[tuple[float, float]]] = {}
        self.previous: dict[str, list[tuple[float, float]]] = {}
        self.colors: dict[str, str] = {}
        #: what the last paint drew: tick labels, legend and plot rectangles (read by tests and screenshots)
        self.drawn: dict[str, Any] = {}
        self.setMinimumSize(160, 150)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)

    def clear(self) -> None:
        self.series.clear()
        self.previous.clear()
        self.update()

    def start_run(self) -> None:
        """Keep the current curves as the previous run (drawn faded) and start empty ones."""
        if any(self.series.values()):
            self.previous = {k: list(v) for k, v in self.series.items()}
        self.series = {}
        self.update()

    def add_point(self, name: str, x: float, y: float | None) -> None:
        if y is None or not math.isfinite(float(y)):
            return
        if name not in self.series:
            self.series[name] = []
            self.colors.setdefault(name, PALETTE[len(self.colors) % len(PALETTE)])
        self.series[name].append((float(x), float(y)))
        self.update()

    def _bounds(self) -> tuple[float, float, float, float]:
        pts = [p for s in (*self.series.values(), *self.previous.values()) for p in s]
        if not pts:
            return 1.0, 2.0, 0.0, 1.0
        xs = [p[0] for p in pts]
        ys = [p[1] for p in pts]
        x0, x1 = min(xs), max(xs)
        if x1 - x0 < 1e-9:
            x0, x1 = x0 - 0.5, x1 + 0.5
        if self.y_range is not None:
            y0, y1 = self.y_range
        else:
            y0, y1 = min(ys), max(ys)
            pad = (y1 - y0) * 0.08 or max(abs(y1) * 0.1, 1e-3)
            y0, y1 = y0 - pad, y1 + pad
        return x0, x1, y0, y1

    @staticmethod
    def _x_ticks(x0: float, x1: float) -> list[float]:
        lo, hi = math.ceil(x0), math.floor(x1)
        if hi < lo:
            return []
        step = max(1, math.ceil((hi - lo + 1) / 6))
        return [float(v) for v in range(lo, hi + 1, step)]

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt API
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        fg = self.palette().windowText().color()
        grid = QColor(fg)
        grid.setAlpha(50)
        w, h = self.width(), self.height()
        font = QFont(p.font())
        font.setPointSizeF(max(7.0, font.pointSizeF() * 0.85))
        p.setFont(font)
        line_h = 14
        names = list(self.series) or list(self.previous)
        labels = {}
        for name in names:
            pts = self.series.get(name) or []
            labels[name] = name + (f" {pts[-1][1]:.3f}" if pts else "")
        left, right = 44, 8
        # the legend: two entries a row when they fit, else one (never cut, never over the curves)
        fm = p.fontMetrics()
        widest = max((fm.horizontalAdvance(t) for t in labels.values()), default=0) + 20
        cols = 2 if 2 * widest <= w - left - right else 1
        legend_rows = math.ceil(len(names) / cols) if names else 0
        top, bottom = 18 + line_h * legend_rows, 30
        plot = QRectF(left, top, max(10, w - left - right), max(10, h - top - bottom))
        drawn: dict[str, Any] = {"plot": QRectF(plot), "legend": [], "x_ticks": [], "y_ticks": []}
        p.setPen(QPen(fg))
        p.drawText(QRectF(0, 0, w, 16), Qt.AlignmentFlag.AlignCenter, self.title)
        # legend strip (above the plot area, never over the curves)
        col_w = (w - left - right) / cols
        legend_left = left if cols == 2 else 8
        for k, name in enumerate(names):
            lx = legend_left + (k % cols) * col_w
            ly = 16 + (k // cols) * line_h
            color = QColor(self.colors.get(name, PALETTE[0]))
            p.setPen(QPen(color, 2))
            p.drawLine(QPointF(lx, ly + 7), QPointF(lx + 12, ly + 7))
            p.setPen(QPen(fg))
            p.drawText(QRectF(lx + 16, ly, max(col_w, widest) - 18, line_h), Qt.AlignmentFlag.AlignLeft, labels[name])
            drawn["legend"].append((name, QRectF(lx, ly, col_w, line_h)))
        x0, x1, y0, y1 = self._bounds()

        def to_px(x: float, y: float) -> QPointF:
            return QPointF(
                plot.left() + (x - x0) / (x1 - x0) * plot.width(),
                plot.bottom() - (y - y0) / (y1 - y0) * plot.height(),
            )

        # grid, y tick labels
        for i in range(5):
            yy = y0 + (y1 - y0) * i / 4
            pt = to_px(x0, yy)
            p.setPen(QPen(grid, 1))
            p.drawLine(QPointF(plot.left(), pt.y()), QPointF(plot.right(), pt.y()))
            p.setPen(QPen(fg))
            p.drawText(QRectF(0, pt.y() - 8, left - 4, 16), Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter,
                       f"{yy:.3g}")
            drawn["y_ticks"].append(f"{yy:.3g}")
        # x tick labels (epochs)
        for xv in self._x_ticks(x0, x1):
            pt = to_px(xv, y0)
            p.setPen(QPen(grid, 1))
            p.drawLine(QPointF(pt.x(), plot.top()), QPointF(pt.x(), plot.bottom()))
            p.setPen(QPen(fg))
            p.drawText(QRectF(pt.x() - 15, plot.bottom() + 1, 30, 13), Qt.AlignmentFlag.AlignCenter, f"{xv:g}")
            drawn["x_ticks"].append(f"{xv:g}")
        p.setPen(QPen(fg))
        p.setBrush(Qt.BrushStyle.NoBrush)
        p.drawRect(plot)
        p.drawText(QRectF(plot.left(), plot.bottom() + 14, plot.width(), 14), Qt.AlignmentFlag.AlignCenter, "epoch")
        # the previous run, faded and dashed
        for name, pts in self.previous.items():
            color = QColor(self.colors.get(name, PALETTE[0]))
            color.setAlpha(90)
            pen = QPen(color, 1.5)
            pen.setStyle(Qt.PenStyle.DashLine)
            p.setPen(pen)
            if len(pts) > 1:
                path = QPainterPath(to_px(*pts[0]))
                for pt in pts[1:]:
                    path.lineTo(to_px(*pt))
                p.drawPath(path)
        # this run
        for name, pts in self.series.items():
            color = QColor(self.colors[name])
            p.setPen(QPen(color, 2))
            p.setBrush(Qt.BrushStyle.NoBrush)
            if len(pts) > 1:
                path = QPainterPath(to_px(*pts[0]))
                for pt in pts[1:]:
                    path.lineTo(to_px(*pt))
                p.drawPath(path)
            p.setBrush(color)
            for pt in pts:
                p.drawEllipse(to_px(*pt), 2.5, 2.5)
        p.end()
        self.drawn = drawn


class TrainingPlot(QWidget):
    """Losses (train/val) and metrics (Dice, accuracy) per epoch, side by side."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.loss = PlotPanel("loss")
        self.metric = PlotPanel("validation metrics", y_range=(0.0, 1.0))
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.loss)
        lay.addWidget(self.metric)

    def clear(self) -> None:
        self.loss.clear()
        self.metric.clear()

    def start_run(self) -> None:
        """Keep the current run's curves (faded) for comparison with the next one."""
        self.loss.start_run()
        self.metric.start_run()
