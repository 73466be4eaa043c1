"""Events, callbacks and the cancel token: how every long job reports and is stopped.

The trainer and the workflows (train, fine-tune, evaluate, predict files)
report through plain dataclasses (JSON-friendly via ``to_dict``), never
through prints, so the CLI can draw a progress bar and the napari widgets
can stream them out of a thread worker::

    for event in trainer.iter_fit():       # in a napari thread_worker
        yield event                        # -> widget updates plots/progress

or with callbacks::

    trainer = Trainer(..., callbacks=[MyCallback()])   # methods on_<kind>
    trainer.fit()

Event kinds (``event.kind``): ``status`` (a line of text for the user),
``progress`` (``done`` of ``total`` items of a non-training job),
``batch_end``, ``epoch_end``, ``checkpoint``, ``finish``, ``error``.
"""

from __future__ import annotations

import math
import threading
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, ClassVar


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


@dataclass
class TrainEvent:
    kind: ClassVar[str] = "event"

    def to_dict(self) -> dict[str, Any]:
        d = _clean(asdict(self))
        d["kind"] = self.kind
        return d


@dataclass
class Status(TrainEvent):
    """What a job is doing now, in words (shown in a status line or printed)."""

    kind: ClassVar[str] = "status"
    text: str


@dataclass
class Progress(TrainEvent):
    """``done`` of ``total`` items of a job (files predicted, images evaluated ...)."""

    kind: ClassVar[str] = "progress"
    done: int
    total: int
    what: str = ""
    item: str = ""


@dataclass
class BatchEnd(TrainEvent):
    """After every optimisation step (rank 0 only under DDP)."""

    kind: ClassVar[str] = "batch_end"
    epoch: int  # 1-based
    epochs: int
    batch: int  # 1-based within the epoch
    n_batches: int
    loss: float
    seg_loss: float | None
    cls_loss: float | None
    lr: float


@dataclass
class EpochEnd(TrainEvent):
    """After each epoch: mean training losses and validation losses/metrics."""

    kind: ClassVar[str] = "epoch_end"
    epoch: int
    epochs: int
    train: dict[str, float]
    val: dict[str, float]
    lr: float
    monitor: str
    monitor_value: float
    improved: bool
    best_epoch: int
    best_value: float
    elapsed_s: float


@dataclass
class CheckpointSaved(TrainEvent):
    kind: ClassVar[str] = "checkpoint"
    path: str
    which: str  # "best" | "last"
    epoch: int
    monitor: str
    monitor_value: float


@dataclass
class Finished(TrainEvent):
    """The run ended: ``reason`` is "completed", "early_stopping" or "cancelled"."""

    kind: ClassVar[str] = "finish"
    reason: str
    epochs_run: int
    best_epoch: int
    best_value: float
    monitor: str
    best_checkpoint: str | None
    last_checkpoint: str | None
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Failed(TrainEvent):
    """Training raised; the exception is re-raised after this event."""

    kind: ClassVar[str] = "error"
    message: str
    error_type: str
    epoch: int


class CancelToken:
    """Thread-safe flag; the trainer checks it between batches."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()


class Callback:
    """Base class: override any of the ``on_*`` methods."""

    def on_status(self, event: Status) -> None: ...

    def on_progress(self, event: Progress) -> None: ...

    def on_batch_end(self, event: BatchEnd) -> None: ...

    def on_epoch_end(self, event: EpochEnd) -> None: ...

    def on_checkpoint(self, event: CheckpointSaved) -> None: ...

    def on_finish(self, event: Finished) -> None: ...

    def on_error(self, event: Failed) -> None: ...


_METHOD = {
    "status": "on_status",
    "progress": "on_progress",
    "batch_end": "on_batch_end",
    "epoch_end": "on_epoch_end",
    "checkpoint": "on_checkpoint",
    "finish": "on_finish",
    "error": "on_error",
}


def dispatch(event: TrainEvent, callbacks: list[Callback | Callable[[TrainEvent], Any]]) -> None:
    """Send ``event`` to each callback: objects get ``on_<kind>(event)``, plain callables get ``cb(event)``."""
    for cb in callbacks:
        method = getattr(cb, _METHOD[event.kind], None)
        if method is not None:
            method(event)
        elif callable(cb):
            cb(event)


class History(Callback):
    """Collects every event (handy in tests and notebooks)."""

    def __init__(self) -> None:
        self.events: list[TrainEvent] = []

    def __call__(self, event: TrainEvent) -> None:
        self.events.append(event)

    def on_batch_end(self, event):
        self.events.append(event)

    on_status = on_progress = on_epoch_end = on_checkpoint = on_finish = on_error = on_batch_end

    def of(self, kind: str) -> list[TrainEvent]:
        return [e for e in self.events if e.kind == kind]


def drive(job: Any, callbacks: list[Callback | Callable[[TrainEvent], Any]] | tuple = ()) -> Any:
    """Run a job generator to its end, sending each event to ``callbacks``; returns the job's result.

    Jobs (the workflows) are generators that yield events and ``return`` their
    result; the CLI and the API call them through this, the napari widgets
    iterate them in a worker thread.
    """
    callbacks = list(callbacks)
    while True:
        try:
            ev = next(job)
        except StopIteration as stop:
            return stop.value
        if isinstance(ev, TrainEvent):
            dispatch(ev, callbacks)
