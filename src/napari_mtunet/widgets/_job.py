"""The one job lifecycle every widget shares: start a workflow in a worker thread, stop it, surface
every error, and stop it when the dock is closed or napari quits.

Widgets subclass :class:`JobWidget`, put their controls into ``self.body``
(a scrolling area, so several docked widgets fit on a small screen) and run
workflows with :meth:`JobWidget.start_job`.  The job (a plain function or a
generator of :mod:`napari_mtunet.events`) runs in a napari thread worker;
its events come back to :meth:`on_event` on the GUI thread.

Why a guard around the job: superqt's ``GeneratorWorker`` treats a
``RuntimeError`` raised inside a generator as "the worker was deleted" and
emits neither ``errored`` nor ``finished`` (napari-mtunet's own errors,
e.g. ``EncoderWeightsError`` and ``TrainingError``, are ``RuntimeError``
subclasses), which left widgets waiting forever.  :func:`_guarded` catches
every exception inside the worker and hands it to the widget as a value, so
every failure becomes a notification and the widget is ready again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

from napari.qt.threading import create_worker
from qtpy.QtCore import QEvent, QSize, Qt, QTimer, Signal
from qtpy.QtWidgets import QFrame, QLabel, QScrollArea, QSizePolicy, QVBoxLayout, QWidget

from ._common import DeviceCombo, error_message, notify_error, notify_info, state_for, warm_up, warm_up_done


@dataclass
class _JobFailed:
    """An exception raised inside a job, carried to the GUI thread as a value."""

    error: BaseException


def _guarded(func: Callable, args: tuple, kwargs: dict, limit_threads: str | None):
    """Run ``func`` (function or generator) and yield its events; any exception is yielded as ``_JobFailed``."""
    import inspect

    from ._common import TorchThreads

    try:
        with TorchThreads(limit_threads) if limit_threads else _Nothing():
            if inspect.isgeneratorfunction(func):
                result = yield from func(*args, **kwargs)
            else:
                result = func(*args, **kwargs)
    except GeneratorExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - every failure reaches the widget
        yield _JobFailed(exc)
        return None
    return result


class _Nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def breakable(text: str, every: int = 16) -> str:
    """``text`` with zero-width spaces after path separators and inside long runs (hashes), where Qt may wrap
    (not after "." or ",": numbers stay whole)."""
    out, run = [], 0
    for ch in str(text):
        out.append(ch)
        run = 0 if ch.isspace() else run + 1
        if ch in "/\\_-:" or run >= every:
            out.append("\u200b")
            run = 0
    return "".join(out)


class WrapLabel(QLabel):
    """A word-wrapping label that never widens the dock and is as tall as its text at its actual width.

    (A plain word-wrapping QLabel whose width may shrink reports the height of its text at its *minimum*
    width, so layouts gave it a tall, mostly empty box.)
    """

    def __init__(self, text: str = "", rich: bool = False) -> None:
        super().__init__("")
        self.setTextFormat(Qt.TextFormat.RichText if rich else Qt.TextFormat.PlainText)
        self.setWordWrap(True)
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.setMinimumWidth(60)
        self.setText(text)

    def _height(self) -> int:
        width = self.width() if self.width() > 60 else 280  # before the first layout: a typical dock width
        margins = self.contentsMargins()
        h = self.heightForWidth(width) if self.text() else 0
        return max(self.fontMetrics().height(), h) + margins.top() + margins.bottom()

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt API
        return QSize(60, self._height())

    def minimumSizeHint(self) -> QSize:  # noqa: N802 - Qt API
        return QSize(60, self._height())

    def resizeEvent(self, event: Any) -> None:  # noqa: N802 - Qt API
        super().resizeEvent(event)
        if event.oldSize().width() != event.size().width():
            self.updateGeometry()  # the text's height at the new width

    def setText(self, text: str) -> None:  # noqa: N802 - Qt API
        super().setText(text)
        self.updateGeometry()


class StatusLabel(WrapLabel):
    """A status line: wraps, never widens the dock (long paths and hashes are broken anywhere)."""

    def setText(self, text: str) -> None:  # noqa: N802 - Qt API
        super().setText(breakable(text))
        self.setToolTip(str(text) if len(str(text)) > 60 else "")

    def text(self) -> str:  # noqa: D401 - Qt API: the text as set (without the wrap points)
        return super().text().replace("\u200b", "")

    plain_text = text


class JobWidget(QWidget):
    """Base of the dock widgets: a scrolling body, a status line, and one job at a time."""

    job_finished = Signal()

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = state_for(napari_viewer)
        warm_up()  # heavy imports in a background thread now, not in the middle of the work
        self.worker: Any = None
        self.cancel_token: Any = None
        self.last_error: str | None = None
        self.events: list[Any] = []
        self._context = ""
        self._job_result_cb: Callable | None = None
        self._job_event_cb: Callable | None = None
        self._failed = False
        self._had_parent = False
        #: set when the widget's dock is closed (napari removes the widget from it)
        self.closed = False

        self.body = QWidget()
        self.body_layout = QVBoxLayout(self.body)
        self.body_layout.setContentsMargins(4, 4, 4, 4)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)  # scrolls up/down only
        scroll.setWidget(self.body)
        self.scroll = scroll
        self.body.installEventFilter(self)  # the dock is as wide as the controls need (texts wrap)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(scroll)
        self.status = StatusLabel("")
        from qtpy.QtWidgets import QApplication

        app = QApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(self.stop_job)
        # the GPUs are known once the warm-up has imported torch (never on this thread): poll for it
        self._warm_timer = QTimer(self)
        self._warm_timer.setInterval(200)
        self._warm_timer.timeout.connect(self._check_warm)
        self._warm_timer.start()

    def eventFilter(self, obj: Any, ev: QEvent) -> bool:  # noqa: N802 - Qt API
        if obj is self.body and ev.type() in (QEvent.Type.LayoutRequest, QEvent.Type.Show):
            bar = self.scroll.verticalScrollBar().sizeHint().width()
            self.scroll.setMinimumWidth(self.body.minimumSizeHint().width() + bar)
        return False

    def _check_warm(self) -> None:
        if not warm_up_done():
            return
        self._warm_timer.stop()
        for c in self.findChildren(DeviceCombo):
            c.refresh()

    # ------------------------------------------------------------------ jobs

    @property
    def busy(self) -> bool:
        return self.worker is not None

    def start_job(
        self,
        func: Callable,
        *args: Any,
        context: str,
        on_result: Callable[[Any], None] | None = None,
        on_event: Callable[[Any], None] | None = None,
        cancellable: bool = False,
        device: str | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run ``func(*args, **kwargs)`` in a worker (with ``cancel=`` a new token when ``cancellable``).

        ``context`` prefixes error messages ("Training failed: ...");
        ``device``: limit torch's CPU threads while it runs (leave a core to napari).
        Returns the worker, or None when a job is already running.
        """
        if self.busy:
            return None
        self.last_error = None
        self._failed = False
        self._context = context
        self._job_result_cb = on_result
        self._job_event_cb = on_event
        self.events = []
        if cancellable:
            from ..events import CancelToken

            self.cancel_token = CancelToken()
            kwargs["cancel"] = self.cancel_token
        limit = None if device is not None and str(device).startswith(("cuda", "mps")) else (device or "cpu")
        self.worker = create_worker(
            _guarded, func, args, kwargs, limit,
            _connect={"yielded": self._yielded, "returned": self._returned, "errored": self._errored,
                      "finished": self._finished},
            _start_thread=True,
        )
        self.set_busy(True)
        return self.worker

    def stop_job(self) -> None:
        """Ask the running job to stop at its next check (between batches or files)."""
        if self.cancel_token is not None and not self.cancel_token.cancelled:
            self.cancel_token.cancel()
            self.status.setText("Stopping after the current step…")
            self.on_stopping()

    def _yielded(self, item: Any) -> None:
        if isinstance(item, _JobFailed):
            self._failed = True
            self.fail(item.error, self._context)
            return
        self.events.append(item)
        if getattr(item, "kind", None) == "status":
            self.status.setText(item.text)
        if self._job_event_cb is not None:
            self._job_event_cb(item)

    def _returned(self, result: Any) -> None:
        if not self._failed and self._job_result_cb is not None:
            self._job_result_cb(result)

    def _errored(self, exc: BaseException) -> None:  # only if the guard itself failed
        self._failed = True
        self.fail(exc, self._context)

    def _finished(self) -> None:
        self.worker = None
        self.cancel_token = None
        self.set_busy(False)
        self.job_finished.emit()

    # ------------------------------------------------------------------ hooks

    def set_busy(self, busy: bool) -> None:
        """Enable/disable controls while a job runs (override)."""

    def on_stopping(self) -> None:
        """Called when the user asked the job to stop (override)."""

    def fail(self, exc: BaseException | str, context: str = "") -> None:
        """Show an error: status line + notification (never a traceback)."""
        self.last_error = error_message(exc, context) if isinstance(exc, BaseException) else (
            f"{context}: {exc}" if context else str(exc))
        self.status.setText(self.last_error)
        notify_error(self.last_error)

    def inform(self, text: str) -> None:
        self.status.setText(text)
        notify_info(text)

    # ------------------------------------------------------------------ closing

    def event(self, ev: QEvent) -> bool:  # noqa: D401 - Qt API
        # napari's dock close button removes the widget from its dock with setParent(None)
        # (no closeEvent): a running job must stop then, not go on invisibly.
        if ev.type() == QEvent.Type.ParentChange:
            if self.parent() is not None:
                self._had_parent, self.closed = True, False
            elif self._had_parent:
                self.closed = True
                self.stop_job()
                self.on_closed()
        return super().event(ev)

    def closeEvent(self, event: Any) -> None:  # noqa: N802 - Qt API
        self.closed = True
        self.stop_job()
        self.on_closed()
        super().closeEvent(event)

    def on_closed(self) -> None:
        """The dock was closed (override: remember settings ...)."""

    @property
    def docked(self) -> bool:
        """False once the dock was closed (a closed dock hands nothing to the other widgets)."""
        return not self.closed


def settings_path(name: str) -> str:
    """Where a widget remembers its last settings (a JSON file in the user's config folder)."""
    base = os.environ.get("MTUNET_CONFIG_DIR") or os.path.join(
        os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config"), "napari-mtunet")
    return os.path.join(base, f"{name}.json")


def load_settings(name: str) -> dict[str, Any]:
    import json

    try:
        with open(settings_path(name), encoding="utf-8") as fh:
            data = json.load(fh)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def save_settings(name: str, values: dict[str, Any]) -> None:
    import json

    from ..paths import write_atomic

    path = settings_path(name)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_atomic(path, json.dumps(values, indent=1))
    except OSError:
        pass  # remembering settings is a convenience; never an error
