"""A tiny, dependency-free live plot (QPainter): cheap enough to redraw during training."""

from __future__ import annotations

import math

from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QFont, QPainter, QPainterPath, QPen
from qtpy.QtWidgets import QHBoxLayout, QSizePolicy, QWidget

PALETTE = ["#4fc3f7", "#ffb74d", "#81c784", "#e57373", "#ba68c8", "#fff176"]


class PlotPanel(QWidget):
    """One panel: named series of (x, y) points drawn as lines with markers."""

    def __init__(self, title: str = "", ylabel: str = "", y_range: tuple[float, float] | None = None, parent=None):
        super().__init__(parent)
        self.title = title
        self.ylabel = ylabel
        self.y_range = y_range
        self.series: dict[str, list[tuple[float, float]]] = {}
        self.colors: dict[str, str] = {}
        self.setMinimumSize(160, 140)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)

    def clear(self) -> None:
        self.series.clear()
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
        pts = [p for s in self.series.values() for p in s]
        if not pts:
            return 0.0, 1.0, 0.0, 1.0
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

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt API
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        fg = self.palette().windowText().color()
        grid = QColor(fg)
        grid.setAlpha(50)
        w, h = self.width(), self.height()
        left, right, top, bottom = 44, 8, 20, 22
        plot = QRectF(left, top, max(10, w - left - right), max(10, h - top - bottom))
        font = QFont(p.font())
        font.setPointSizeF(max(7.0, font.pointSizeF() * 0.85))
        p.setFont(font)
        p.setPen(QPen(fg))
        p.drawText(QRectF(0, 0, w, top), Qt.AlignmentFlag.AlignCenter, self.title)
        x0, x1, y0, y1 = self._bounds()

        def to_px(x: float, y: float) -> QPointF:
            return QPointF(
                plot.left() + (x - x0) / (x1 - x0) * plot.width(),
                plot.bottom() - (y - y0) / (y1 - y0) * plot.height(),
            )

        # axes and grid
        p.setPen(QPen(grid, 1))
        for i in range(5):
            yy = y0 + (y1 - y0) * i / 4
            pt = to_px(x0, yy)
            p.drawLine(QPointF(plot.left(), pt.y()), QPointF(plot.right(), pt.y()))
            p.setPen(QPen(fg))
            p.drawText(QRectF(0, pt.y() - 8, left - 4, 16), Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter, f"{yy:.3g}")
            p.setPen(QPen(grid, 1))
        p.setPen(QPen(fg))
        p.setBrush(Qt.BrushStyle.NoBrush)
        p.drawRect(plot)
        p.drawText(QRectF(plot.left(), plot.bottom() + 2, plot.width(), bottom - 2), Qt.AlignmentFlag.AlignCenter, "epoch")
        # series
        for k, (name, pts) in enumerate(self.series.items()):
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
            # legend
            ly = plot.top() + 4 + 14 * k
            p.drawLine(QPointF(plot.left() + 6, ly + 6), QPointF(plot.left() + 18, ly + 6))
            p.setPen(QPen(fg))
            p.setBrush(Qt.BrushStyle.NoBrush)
            last = f" {pts[-1][1]:.3f}" if pts else ""
            p.drawText(QRectF(plot.left() + 22, ly, plot.width() - 24, 14), Qt.AlignmentFlag.AlignLeft, name + last)
        p.end()


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
