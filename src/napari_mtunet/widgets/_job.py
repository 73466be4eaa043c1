"""The one job lifecycle every widget shares: start a workflow in the compute process, stop it, surface
every error, and stop it when the dock is closed or napari quits; and the dock's two parts.

Layout: a widget's **settings** scroll (``self.body``); what a user **watches** while a job runs (buttons,
progress, status, read-outs, plots) sits below them in ``self.watch`` and never scrolls away: with two
docks in a 1600 x 1000 window the settings shrink to a few rows and scroll, the watched part stays whole.

Jobs run in the compute process (:mod:`napari_mtunet.compute`): napari's process never imports torch, so
its GUI thread never waits for a thread that imports torch, builds a model or loads a dataset (those held
the GIL for up to seconds).  A napari thread worker relays the job's events to :meth:`on_event` on the GUI
thread; the job's cancel token is set in the compute process by :meth:`JobWidget.stop_job`.

Why a guard around the relay: superqt's ``GeneratorWorker`` treats a ``RuntimeError`` raised inside a
generator as "the worker was deleted" and emits neither ``errored`` nor ``finished``, which left widgets
waiting forever.  :func:`_guarded` catches every exception and hands it to the widget as a value, so every
failure becomes one notification and the widget is ready again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from napari.qt.threading import create_worker
from qtpy.QtCore import QEvent, Qt, QTimer, Signal
from qtpy.QtWidgets import QFrame, QScrollArea, QSizePolicy, QVBoxLayout, QWidget

from .. import jobs as _jobs  # noqa: F401 - what jobs return unpickles without imports in the reader thread
from .. import layer_meta as _layer_meta  # noqa: F401 - (the reader thread would hold the GIL importing them)
from ..data import samples as _samples  # noqa: F401
from ._controls import DeviceCombo, StatusLabel
from ._notify import error_message, notify_error, notify_info
from ._session import state_for
from ._warmup import warm_up, warm_up_done

#: The settings part of a dock never shrinks below this (a couple of rows; the rest scrolls).
MIN_SETTINGS_HEIGHT = 70
#: The settings height a dock asks for (more when napari's side has room; less, scrolling, when not).
PREFERRED_SETTINGS_HEIGHT = 240


@dataclass
class _JobFailed:
    """An exception raised inside a job, carried to the GUI thread as a value."""

    error: BaseException


def _guarded(func: Callable, args: tuple, kwargs: dict, remote: bool):
    """Run ``func`` (in the compute process when ``remote``) and yield its events; any exception is yielded
    as ``_JobFailed``."""
    import inspect

    from ..compute import run_job

    try:
        if remote:
            result = yield from run_job(func, *args, **kwargs)
        elif inspect.isgeneratorfunction(func):
            result = yield from func(*args, **kwargs)
        else:
            result = func(*args, **kwargs)
    except GeneratorExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - every failure reaches the widget
        yield _JobFailed(exc)
        return None
    return result


_QUIT_HOOKED: list[Any] = []


def _stop_compute_on_quit(app: Any) -> None:
    """When napari quits, the compute process stops its jobs (at their next check) and exits."""
    if app in _QUIT_HOOKED:
        return
    _QUIT_HOOKED.append(app)

    def stop() -> None:
        from ..compute import shutdown

        shutdown(timeout=10.0)

    app.aboutToQuit.connect(stop)


class JobWidget(QWidget):
    """Base of the dock widgets: scrolling settings, a watched part that stays visible, one job at a time."""

    job_finished = Signal()

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = state_for(napari_viewer)
        warm_up()  # the compute process starts now (its imports take a while), not at the first job
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
        scroll.setMinimumHeight(MIN_SETTINGS_HEIGHT)
        scroll.setWidget(self.body)
        self.scroll = scroll
        self.body.installEventFilter(self)  # the dock is as wide as the controls need (texts wrap)
        self.watch = QWidget()
        self.watch.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Maximum)
        self.watch_layout = QVBoxLayout(self.watch)
        self.watch_layout.setContentsMargins(4, 2, 4, 4)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.setSpacing(0)
        outer.addWidget(scroll, 1)
        outer.addWidget(self.watch, 0)
        self.status = StatusLabel("")
        from qtpy.QtWidgets import QApplication

        app = QApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(self.stop_job)
            _stop_compute_on_quit(app)
        # the GPUs are known once the compute process has imported torch: poll for it
        self._warm_timer = QTimer(self)
        self._warm_timer.setInterval(200)
        self._warm_timer.timeout.connect(self._check_warm)
        self._warm_timer.start()

    def preferred_height(self) -> int:
        """The watched part and a few rows of settings (what does not fit scrolls)."""
        return self.watch.sizeHint().height() + min(self.body.sizeHint().height(), PREFERRED_SETTINGS_HEIGHT)

    def balance_docks(self) -> None:
        """Share the height of napari's dock area between the napari-mtunet docks in it, in proportion to what
        each prefers (Qt gives a newly docked widget its minimum and the first one the rest: with Predict and
        Annotate open, Annotate's settings got two rows)."""
        from qtpy.QtWidgets import QDockWidget, QMainWindow

        main = self.window()
        mine = self.parentWidget()
        while mine is not None and not isinstance(mine, QDockWidget):
            mine = mine.parentWidget()
        if not isinstance(main, QMainWindow) or mine is None or mine.isFloating():
            return
        area = main.dockWidgetArea(mine)
        docks, wanted = [], []
        for dock in main.findChildren(QDockWidget):
            job = dock.widget() if isinstance(dock.widget(), JobWidget) else dock.findChild(JobWidget)
            if job is None or dock.isFloating() or not dock.isVisible() or main.dockWidgetArea(dock) != area:
                continue
            docks.append(dock)
            wanted.append(job.preferred_height() + (dock.height() - job.height()))
        if len(docks) < 2:
            return
        total = sum(d.height() for d in docks)
        scale = total / max(1, sum(wanted))
        main.resizeDocks(docks, [max(1, int(w * scale)) for w in wanted], Qt.Orientation.Vertical)

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
        func: Callable | str,
        *args: Any,
        context: str,
        on_result: Callable[[Any], None] | None = None,
        on_event: Callable[[Any], None] | None = None,
        cancellable: bool = False,
        remote: bool = True,
        **kwargs: Any,
    ) -> Any:
        """Run ``func(*args, **kwargs)`` (a ``"module:function"`` of the compute process when ``remote``; with
        ``cancel=`` a new token when ``cancellable``).

        ``context`` prefixes error messages ("Training failed: ...").  Returns the worker, or None when a
        job is already running.
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
        self.worker = create_worker(
            _guarded, func, args, kwargs, remote,
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

    def inform(self, text: str, status: str | None = None) -> None:
        """Notify ``text``; the status line keeps ``status`` (default: the same text)."""
        self.status.setText(text if status is None else status)
        notify_info(text)

    # ------------------------------------------------------------------ closing

    def event(self, ev: QEvent) -> bool:  # noqa: D401 - Qt API
        # napari's dock close button removes the widget from its dock with setParent(None)
        # (no closeEvent): a running job must stop then, not go on invisibly.
        if ev.type() == QEvent.Type.ParentChange:
            if self.parent() is not None:
                self._had_parent, self.closed = True, False
                self._balance_pending = True  # when the dock shows in napari's window
            elif self._had_parent:
                self.closed = True
                self.stop_job()
                self.on_closed()
        return super().event(ev)

    def showEvent(self, event: Any) -> None:  # noqa: N802 - Qt API
        super().showEvent(event)
        if getattr(self, "_balance_pending", False):
            self._balance_pending = False
            QTimer.singleShot(0, self.balance_docks)

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
