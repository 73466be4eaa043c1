"""Training survives what happens on shared machines: kill -9, out of memory, full disks; and it is reproducible.

- kill -9 of a training *process* in the middle of writing a checkpoint and
  in the middle of an epoch: the previous ``last``/``best`` checkpoints still
  load and ``resume_from=last`` finishes the run with the full history;
- out-of-memory raised from the training step (simulated): the run ends with
  a Failed event and an error that advises a smaller batch/image size, the
  accelerator cache is released and the best checkpoint is kept;
- a disk that fills up while a checkpoint is written (the write raises
  ENOSPC): the run fails cleanly and the checkpoints written before are intact;
- the same seed gives the same metrics on CPU twice, and a resumed run
  equals an uninterrupted one.

Everything uses a 32-px, depth-3 MobileNetV2 UNet on 4 toy images (an epoch
is a fraction of a second); the subprocesses pay mostly for importing torch.
"""

from __future__ import annotations

import errno
import math
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from napari_mtunet.checkpoint import load_checkpoint, read_metadata
from napari_mtunet.config import ModelConfig, Preprocessing, TrainConfig
from napari_mtunet.training import BEST_NAME, LAST_NAME, Trainer
from array_data import blobs_dataset


def tiny_config() -> ModelConfig:
    return ModelConfig(encoder_weights=None, num_classes=2, encoder_depth=3, decoder_channels=(16, 16, 16))


PRE = Preprocessing(image_size=32)


def train_config(epochs: int = 3, **kw) -> TrainConfig:
    kw.setdefault("early_stopping_patience", None)
    return TrainConfig(epochs=epochs, batch_size=2, amp=False, device="cpu", seed=0, **kw)


def data():
    return blobs_dataset(n=4, size=32, seed=0), blobs_dataset(n=2, size=32, seed=1)


# --------------------------------------------------------------------------- kill -9

CHILD = textwrap.dedent(
    """
    import os, sys, time
    import torch
    torch.set_num_threads(1)
    import safetensors.torch as st
    from napari_mtunet.config import ModelConfig, Preprocessing, TrainConfig
    from napari_mtunet.training import Trainer
    from array_data import blobs_dataset

    out, mode = sys.argv[1], sys.argv[2]
    real_save = st.save_file
    last_saves = []

    def hanging_save(tensors, filename, metadata=None):
        if ".last.safetensors." in os.path.basename(filename):
            last_saves.append(filename)
            if mode == "during_save" and len(last_saves) == 2:
                # epoch 2's last checkpoint: half the bytes reach the temp file, then we hang
                real_save(tensors, filename, metadata=metadata)
                with open(filename, "r+b") as fh:
                    fh.truncate(os.path.getsize(filename) // 2)
                print("KILL-ME", flush=True)
                time.sleep(600)
        real_save(tensors, filename, metadata=metadata)

    st.save_file = hanging_save

    def on_event(ev):
        if mode == "during_epoch" and ev.kind == "batch_end" and ev.epoch == 2 and ev.batch == 1:
            print("KILL-ME", flush=True)
            time.sleep(600)

    cfg = TrainConfig(epochs=3, batch_size=2, amp=False, device="cpu", seed=0, early_stopping_patience=None)
    mc = ModelConfig(encoder_weights=None, num_classes=2, encoder_depth=3, decoder_channels=(16, 16, 16))
    Trainer(mc, cfg, blobs_dataset(n=4, size=32, seed=0), blobs_dataset(n=2, size=32, seed=1),
            preprocessing=Preprocessing(image_size=32), out_dir=out, callbacks=[on_event]).fit()
    print("FINISHED-WITHOUT-KILL", flush=True)
    """
)


def _run_and_kill(out_dir, mode: str, timeout: float = 240.0) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(out_dir), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    deadline = time.monotonic() + timeout
    try:
        for line in proc.stdout:  # blocks per line; the child prints little
            lines.append(line)
            if line.startswith("KILL-ME"):
                os.kill(proc.pid, signal.SIGKILL)
                break
            if time.monotonic() > deadline:
                break
    finally:
        if proc.poll() is None and not any(x.startswith("KILL-ME") for x in lines):
            proc.kill()
        proc.wait(timeout=60)
        proc.stdout.close()
    assert any(x.startswith("KILL-ME") for x in lines), "child never reached the kill point:\n" + "".join(lines)
    assert proc.returncode == -signal.SIGKILL


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The reference: the same 3-epoch run, never interrupted (in this process)."""
    train, val = data()
    out = tmp_path_factory.mktemp("ref")
    res = Trainer(tiny_config(), train_config(3), train, val, preprocessing=PRE, out_dir=out).fit()
    return res


@pytest.mark.parametrize("mode", ["during_save", "during_epoch"])
def test_kill_9_keeps_checkpoints_and_resume_finishes(tmp_path, mode, uninterrupted):
    out = tmp_path / "run"
    _run_and_kill(out, mode)

    # the checkpoints of epoch 1 are intact and load
    model, last = load_checkpoint(out / LAST_NAME)
    assert last.training["epoch"] == 1
    _, best = load_checkpoint(out / BEST_NAME)
    # during_save: epoch 2 may have improved and written best before its last checkpoint hung
    assert best.training["epoch"] == 1 or (mode == "during_save" and best.training["epoch"] == 2)
    stray = [p.name for p in out.iterdir() if p.name not in (BEST_NAME, LAST_NAME)]
    if mode == "during_save":
        # the half-written temp file is all that is left of the interrupted write; it is never
        # mistaken for a checkpoint (hidden name, .tmp suffix)
        assert len(stray) == 1 and stray[0].startswith(".last.safetensors.") and stray[0].endswith(".tmp")
    else:
        assert stray == []

    # resume (train config as stored in the checkpoint) finishes epochs 2 and 3
    train, val = data()
    res = Trainer(None, None, train, val, out_dir=out, resume_from=out / LAST_NAME).fit()
    assert res.reason == "completed" and res.epochs_run == 3
    assert [h["epoch"] for h in res.history] == [1, 2, 3]
    _, info = load_checkpoint(out / LAST_NAME)
    assert info.training["epoch"] == 3
    # ... and ends where the uninterrupted run ends (per-epoch seeding)
    for a, b in zip(res.history, uninterrupted.history):
        for key in ("train_loss", "val_loss"):
            assert math.isclose(a[key], b[key], rel_tol=1e-4, abs_tol=1e-6), (key, a, b)


# --------------------------------------------------------------------------- determinism


def test_same_seed_same_metrics_on_cpu_twice(tmp_path, uninterrupted):
    train, val = data()
    again = Trainer(tiny_config(), train_config(3), train, val, preprocessing=PRE, out_dir=tmp_path).fit()
    keys = [k for k in uninterrupted.history[0] if k not in ("time_s",)]
    for a, b in zip(again.history, uninterrupted.history):
        for k in keys:
            assert a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])), (k, a[k], b[k])
    # identical weights, hence identical checkpoint content hashes
    assert read_metadata(tmp_path / LAST_NAME)["content_hash"] == read_metadata(
        uninterrupted.last_checkpoint
    )["content_hash"]


# --------------------------------------------------------------------------- out of memory


class _OOMAfter:
    """Wraps a model's forward: the n-th training-mode call raises an out-of-memory error."""

    def __init__(self, model, n: int):
        self.model, self.n, self.calls = model, n, 0
        self.real = model.forward

    def __call__(self, x):
        if self.model.training and torch.is_grad_enabled():  # optimisation steps only (not BN recalibration)
            self.calls += 1
            if self.calls >= self.n:
                raise torch.OutOfMemoryError(
                    "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 7.79 GiB total capacity)"
                )
        return self.real(x)


def test_out_of_memory_ends_cleanly_with_advice_and_keeps_best(tmp_path, monkeypatch):
    import napari_mtunet.device as device_mod

    freed = []
    real_empty = device_mod.empty_cache
    monkeypatch.setattr(device_mod, "empty_cache", lambda d: (freed.append(str(d)), real_empty(d)))
    train, val = data()
    events = []
    trainer = Trainer(tiny_config(), train_config(3), train, val, preprocessing=PRE, out_dir=tmp_path,
                      callbacks=[events.append])
    trainer.model.forward = _OOMAfter(trainer.model, n=3)  # 2 batches per epoch: fails in epoch 2
    with pytest.raises(Exception) as err:
        trainer.fit()
    msg = str(err.value).lower()
    failed = [e for e in events if e.kind == "error"]
    assert failed and failed[0].epoch == 2
    _, best = load_checkpoint(tmp_path / BEST_NAME)
    assert best.training["epoch"] == 1
    assert load_checkpoint(tmp_path / LAST_NAME)[1].training["epoch"] == 1
    # advice: what to change, in the exception and in the event the widgets show
    for text in (msg, failed[0].message.lower()):
        assert "out of memory" in text
        assert "batch size" in text and ("image size" in text or "tile" in text), text
    assert freed, "accelerator cache was not released after the out-of-memory error"


# --------------------------------------------------------------------------- disk full


def test_disk_full_during_training_keeps_earlier_checkpoints(tmp_path, monkeypatch):
    import safetensors.torch as st

    real = st.save_file
    calls = []

    def full_disk(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) >= 3:  # epoch 1 wrote best + last; everything after hits a full disk
            real(tensors, filename, metadata=metadata)
            with open(filename, "r+b") as fh:
                fh.truncate(4096)
            raise OSError(errno.ENOSPC, "No space left on device", filename)
        real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(st, "save_file", full_disk)
    train, val = data()
    events = []
    before = {}
    trainer = Trainer(tiny_config(), train_config(3), train, val, preprocessing=PRE, out_dir=tmp_path,
                      callbacks=[events.append,
                                 lambda e: before.update({p.name: p.read_bytes() for p in tmp_path.iterdir()})
                                 if e.kind == "checkpoint" and e.epoch == 1 and e.which == "last" else None])
    with pytest.raises(OSError, match="No space left"):
        trainer.fit()
    assert [e for e in events if e.kind == "error"], "no Failed event"
    assert sorted(p.name for p in tmp_path.iterdir()) == [BEST_NAME, LAST_NAME]  # no temp files left
    for name, content in before.items():
        assert (tmp_path / name).read_bytes() == content
        assert load_checkpoint(tmp_path / name)[1].training["epoch"] == 1
