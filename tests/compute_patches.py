"""Patches the widget tests apply *inside the compute process* (napari_mtunet.compute), where the jobs run.

A test restarts the compute process with one of these as its setup (:func:`patched_compute`); a monkeypatch
in the test process would not reach the jobs.  Logs go to the file named by ``MTUNET_TEST_LOG``.
"""

from __future__ import annotations

import contextlib
import os
import threading

_LOCK = threading.Lock()


def _log(line: str) -> None:
    path = os.environ.get("MTUNET_TEST_LOG")
    if path:
        with _LOCK, open(path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")


def oom_when_training() -> None:
    """Every training step runs out of memory (as a GPU would)."""
    import torch

    from napari_mtunet.model import MultiTaskUNet

    real_forward = MultiTaskUNet.forward

    def forward(self, x, *a, **k):
        if self.training:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_forward(self, x, *a, **k)

    MultiTaskUNet.forward = forward


def nothing_cached() -> None:
    """No ImageNet weights in the local model-hub cache (with HF_HUB_OFFLINE=1: offline)."""
    import huggingface_hub

    huggingface_hub.try_to_load_from_cache = lambda *a, **k: None


def log_batches_and_cancel() -> None:
    """Log each training batch as the trainer emits it and the moment a job's cancel token is set."""
    from napari_mtunet import events
    from napari_mtunet.training import engine

    real_dispatch = engine.dispatch

    def dispatch(ev, callbacks):
        if ev.kind == "batch_end":
            _log(f"batch {ev.epoch} {ev.batch}")
        return real_dispatch(ev, callbacks)

    engine.dispatch = dispatch
    real_cancel = events.CancelToken.cancel

    def cancel(self):
        _log("cancel")
        return real_cancel(self)

    events.CancelToken.cancel = cancel


def batches_around_cancel(path) -> tuple[int, int]:
    """(batches logged before the first cancel, batches logged after it; -1 when nothing was cancelled)."""
    text = open(path, encoding="utf-8").read().splitlines() if os.path.exists(path) else []
    if "cancel" not in text:
        return sum(1 for t in text if t.startswith("batch")), -1
    i = text.index("cancel")
    return sum(1 for t in text[:i] if t.startswith("batch")), sum(1 for t in text[i + 1:] if t.startswith("batch"))


@contextlib.contextmanager
def patched_compute(setup: str | None):
    """A fresh compute process with ``setup`` ("compute_patches:<function>") run first; restored after."""
    from napari_mtunet import compute

    compute.shutdown()
    compute.set_setup(setup)
    try:
        yield compute.client()
    finally:
        compute.shutdown()
        compute.set_setup(None)
