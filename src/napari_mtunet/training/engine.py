"""The training loop: one Trainer for the workflows, the CLI, the Python API and the napari widgets.

Inputs are torch Datasets (or DataLoaders) whose items are dicts::

    image   float32 (IMAGE_CHANNELS, S, S) in [0, 1]
    mask    float32 (1, S, S) {0, 1}
    guidance, iterations, prompted   (interactive training only: the prompts' channels, the corrective
            clicks to simulate, whether the item is prompted; see :mod:`.prompting`)
    label   int64 class index, -1 when unknown
    has_mask, has_label   bool
    index   int

The trainer reports through events (see :mod:`.events`): use
``Trainer.iter_fit()`` as a generator of events (e.g. inside a napari
``thread_worker``) or ``Trainer.fit()`` with callbacks.  A
:class:`~.events.CancelToken` is checked between batches.

The loop is this module; its collaborators each do one job:
:mod:`.validation` (validation pass, precise BatchNorm), :mod:`.monitor`
(best epoch, early stopping), :mod:`.checkpointing` (``best``/``last``
files, resume state), :mod:`.distributed` (``torchrun`` DDP), the data
package's :func:`~napari_mtunet.data.dataset.make_loader` (the one
DataLoader factory) and :mod:`.optim` (parameter groups, learning-rate
schedule, freezing).
"""

from __future__ import annotations

import copy
import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..config import MONITORS, DataConfig, ModelConfig, Preprocessing, RunConfig, TrainConfig
from ..data.dataset import dataset_labels, make_loader, set_loader_epoch
from .checkpointing import BEST_NAME, LAST_NAME, CheckpointWriter, ResumeState, finite_or_none
from .distributed import DistEnv, Distributed
from .errors import TrainingError
from ..events import BatchEnd, Callback, CancelToken, CheckpointSaved, EpochEnd, Failed, Finished, TrainEvent, dispatch
from .losses import MultiTaskLoss, balanced_class_weights
from .monitor import Monitor
from .optim import apply_freezing, build_optimizer, set_step_lr, warming_up
from .prompting import model_input
from .validation import recalibrate_batchnorm, run_validation

__all__ = [
    "BEST_NAME", "LAST_NAME", "MONITORS", "FitResult", "Trainer", "TrainingError", "dataset_labels", "seed_everything",
    "train",
]


@dataclass
class FitResult:
    reason: str
    epochs_run: int
    best_epoch: int
    best_value: float
    monitor: str
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    history: list[dict[str, Any]] = field(default_factory=list)
    model: nn.Module | None = field(default=None, repr=False)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _is_out_of_memory(exc: BaseException) -> bool:
    oom_type = getattr(torch, "OutOfMemoryError", None)
    return (oom_type is not None and isinstance(exc, oom_type)) or "out of memory" in str(exc).lower()


class Trainer:
    """Train a :class:`~napari_mtunet.model.MultiTaskUNet`.

    Parameters
    ----------
    model:
        a ``ModelConfig`` (the model is built with ``build_model`` after
        seeding) or an existing model (fine-tuning).
    train_config:
        optimisation settings; when resuming, None means "as stored".
    train_data, val_data:
        Datasets (or DataLoaders) of item dicts; ``val_data`` may be None,
        in which case the monitor falls back to ``train_loss``.
    out_dir:
        where ``best.safetensors`` / ``last.safetensors`` go; None = no files
        (the best weights are kept in memory and restored at the end).
    callbacks:
        :class:`~.events.Callback` objects or plain callables receiving every event.
    cancel:
        a :class:`~.events.CancelToken`.
    train_labels:
        class indices of the training set for the balanced class weights
        (default: read from the dataset).
    parent:
        checkpoint this run starts from (recorded in its checkpoints).
    resume_from:
        a ``last.safetensors`` to continue from (optimizer state, epoch counter,
        early-stopping state and history are restored).
    freeze_encoder:
        train only decoder/head (the encoder is frozen and kept in eval mode).
    freeze_bn:
        keep every BatchNorm layer's statistics (eval mode) and skip precise BN.
    run:
        the whole :class:`~napari_mtunet.config.RunConfig`, saved in the
        checkpoints (default: assembled from the other arguments).
    """

    def __init__(
        self,
        model: ModelConfig | nn.Module | None,
        train_config: TrainConfig | None = None,
        train_data: Dataset | DataLoader | None = None,
        val_data: Dataset | DataLoader | None = None,
        *,
        preprocessing: Preprocessing | None = None,
        out_dir: str | os.PathLike | None = None,
        callbacks: Sequence[Callback | Callable[[TrainEvent], Any]] = (),
        cancel: CancelToken | None = None,
        train_labels: Sequence[int] | None = None,
        parent: str | None = None,
        resume_from: str | os.PathLike | None = None,
        freeze_encoder: bool = False,
        freeze_bn: bool = False,
        data_config: DataConfig | None = None,
        extra_training_metadata: dict[str, Any] | None = None,
        num_workers: int = 0,
        run: RunConfig | None = None,
    ):
        from ..device import resolve_device

        if train_data is None:
            raise TrainingError("no training data given")
        self._resume: ResumeState | None = None
        if resume_from is not None:
            from ..checkpoint import load_checkpoint

            model, info = load_checkpoint(resume_from, device="cpu")
            self._resume = ResumeState.from_checkpoint(resume_from, info)
            if train_config is None:
                train_config = info.run.train
            parent = parent if parent is not None else info.parent
        self.config = train_config or TrainConfig()
        cfg = self.config
        self.env = DistEnv.from_environ()
        if self.env.active and cfg.device in ("auto", "cuda") and torch.cuda.is_available():
            self.device = torch.device(f"cuda:{self.env.local_rank}")
        else:
            self.device = resolve_device(cfg.device)
        self.dist = Distributed(self.env, self.device)
        if isinstance(model, ModelConfig):
            from ..model import build_model

            seed_everything(cfg.seed)
            model = build_model(model, preprocessing)
        if model is None:
            raise TrainingError("no model given")
        self.model: nn.Module = model
        self.model_config: ModelConfig = model.config  # type: ignore[assignment]
        self.task = self.model_config.task
        self.train_data = train_data
        self.val_data = val_data
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.callbacks = list(callbacks)
        self.cancel = cancel if cancel is not None else CancelToken()
        self.parent = parent
        self.freeze_encoder = freeze_encoder
        self.freeze_bn = freeze_bn
        self.data_config = data_config
        self.extra_training_metadata = dict(extra_training_metadata or {})
        self.num_workers = int(num_workers)
        self._run = run
        monitor = cfg.monitor
        if monitor not in MONITORS:
            raise TrainingError(f"unknown monitor {monitor!r}; choose from {sorted(MONITORS)}")
        if val_data is None and monitor.startswith("val_"):
            monitor = "train_loss"
        try:
            RunConfig(model=self.model_config, train=cfg.replace(monitor=monitor)).validate()
        except ValueError as exc:
            raise TrainingError(str(exc)) from None
        self.monitor = Monitor(monitor, cfg.early_stopping_patience)
        self.use_amp = bool(cfg.amp) and self.device.type == "cuda"
        # channels_last: 0.71x the CPU time of NCHW per train step (docs/benchmarks.md §1, cpu_channels_last)
        self.channels_last = bool(cfg.channels_last) and self.device.type in ("cuda", "cpu")
        class_weights = None
        if self.task in ("both", "cls") and cfg.class_weights == "balanced":
            labels = train_labels if train_labels is not None else dataset_labels(train_data)
            class_weights = balanced_class_weights(labels, self.model_config.num_classes)
        self.class_weights = class_weights
        w_seg, w_cls = RunConfig(model=self.model_config, train=cfg.replace(monitor=monitor)).effective_loss_weights
        self.loss_fn = MultiTaskLoss(self.task, w_seg=w_seg, w_cls=w_cls, seg_loss=cfg.seg_loss,
                                     class_weights=class_weights)
        self.result: FitResult | None = None
        self.history: list[dict[str, Any]] = []
        self._epoch = 0
        #: Interactive models: the simulated user's corrective clicks before each training step.
        self.prompts = bool(self.model_config.prompts)
        self.click_simulator = None
        if self.prompts:
            from .prompting import ClickSimulator

            self.click_simulator = ClickSimulator((run or RunConfig()).interactive)

    # ------------------------------------------------------------------ public

    @property
    def is_main(self) -> bool:
        return self.env.is_main

    @property
    def rank(self) -> int:
        return self.env.rank

    @property
    def world_size(self) -> int:
        return self.env.world_size

    @property
    def distributed(self) -> bool:
        return self.env.active

    def fit(self) -> FitResult:
        """Train to completion (or early stop / cancel); callbacks receive every event."""
        for _ in self.iter_fit():
            pass
        assert self.result is not None
        return self.result

    def iter_fit(self) -> Iterator[TrainEvent]:
        """Train, yielding each event as it happens (callbacks are called as well).

        On an exception a :class:`~.events.Failed` event is yielded, then the
        exception is re-raised.
        """
        self._epoch = 0
        try:
            for ev in self._fit():
                if self.is_main:
                    dispatch(ev, self.callbacks)
                    yield ev
        except Exception as exc:
            if _is_out_of_memory(exc):
                exc = self._out_of_memory_error(exc)
            ev = Failed(message=str(exc) or type(exc).__name__, error_type=type(exc).__name__, epoch=self._epoch)
            if self.is_main:
                dispatch(ev, self.callbacks)
                yield ev
            if isinstance(exc, TrainingError) and exc.__cause__ is not None:
                raise exc from exc.__cause__
            raise
        finally:
            self.dist.cleanup()

    def run_dict(self) -> dict[str, Any]:
        """The run configuration saved in this run's checkpoints (model and preprocessing as built)."""
        base = self._run or RunConfig(data=self.data_config or DataConfig())
        run = RunConfig(
            model=self.model_config,
            preprocessing=self.model.preprocessing,  # type: ignore[attr-defined]
            data=base.data if self.data_config is None else self.data_config,
            train=self.config,
            postprocessing=base.postprocessing,
            interactive=base.interactive,
        )
        return run.resolved().to_dict()

    def training_metadata(self, epoch: int) -> dict[str, Any]:
        meta = {
            "train_config": self.config.to_dict(),
            "data_config": self.data_config.to_dict() if self.data_config is not None else None,
            "epoch": epoch,
            "best_epoch": self.monitor.best_epoch,
            "monitor": self.monitor.name,
            "best_value": finite_or_none(self.monitor.best_value),
            "n_train": len(self.train_loader.dataset),
            "n_val": len(self.val_loader.dataset) if self.val_loader is not None else 0,
            "class_weights": self.class_weights.tolist() if self.class_weights is not None else None,
            "loss_weights": [self.loss_fn.w_seg, self.loss_fn.w_cls],
            "freeze_encoder": self.freeze_encoder,
            "freeze_bn": self.freeze_bn,
            "world_size": self.world_size,
            "device": str(self.device),
            "history": [{k: finite_or_none(v) for k, v in h.items()} for h in self.history],
        }
        meta.update(self.extra_training_metadata)
        return meta

    # ------------------------------------------------------------------ internals

    def _out_of_memory_error(self, exc: BaseException) -> TrainingError:
        """Free what the failed step held and explain what to change."""
        import gc

        from .. import device as device_mod

        if getattr(self, "optimizer", None) is not None:
            self.optimizer.zero_grad(set_to_none=True)
        gc.collect()
        device_mod.empty_cache(self.device)
        best = f" The best checkpoint so far is kept in {self.out_dir}." if self.out_dir is not None else ""
        err = TrainingError(
            f"out of memory on {self.device} in epoch {self._epoch} ({str(exc).splitlines()[0][:200]}). "
            f"Reduce the batch size (now {self.config.batch_size}) or the image size, or train on a device "
            f"with more memory.{best}"
        )
        err.__cause__ = exc
        return err

    def _loader(self, data: Dataset | DataLoader, train: bool) -> DataLoader:
        if isinstance(data, DataLoader):
            return data
        if len(data) == 0:
            raise TrainingError(("training" if train else "validation") + " set is empty")
        balanced = bool(self.data_config.balanced_sampling) if (train and self.data_config is not None) else False
        return make_loader(
            data,
            batch_size=self.config.batch_size,
            train=train,
            seed=self.config.seed,
            num_workers=self.num_workers,
            balanced_sampling=balanced,
            world_size=self.world_size,
            rank=self.rank,
            pin_memory=self.device.type == "cuda",
        )

    def _setup(self) -> None:
        cfg = self.config
        self.dist.setup()
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        model = self.model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        apply_freezing(model, freeze_encoder=self.freeze_encoder)
        try:
            self.optimizer = build_optimizer(model, cfg)
        except ValueError as exc:
            raise TrainingError(str(exc)) from None
        self.scheduler = None
        if cfg.lr_schedule == "plateau":
            patience = max(1, (cfg.early_stopping_patience or 6) // 2)
            self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                self.optimizer, mode=self.monitor.mode, factor=0.5, patience=patience
            )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.use_amp)
        self.ddp = self.dist.wrap(model)
        self.train_loader = self._loader(self.train_data, True)
        self.val_loader = self._loader(self.val_data, False) if self.val_data is not None else None
        self.writer = CheckpointWriter(self.out_dir, self) if self.out_dir is not None else None
        self.start_epoch = 1
        self.best_path: Path | None = None
        self.last_path: Path | None = None
        self._best_state: dict[str, torch.Tensor] | None = None
        if self._resume is not None:
            st = self._resume
            try:
                self.optimizer.load_state_dict(st.optimizer)
            except (ValueError, KeyError) as exc:
                raise TrainingError(
                    f"the checkpoint's optimizer state does not fit this model/optimizer ({exc}); "
                    "it was written by another version or for other settings: start a new run"
                ) from None
            if self.scheduler is not None and st.scheduler:
                self.scheduler.load_state_dict(st.scheduler)
            if st.scaler and self.use_amp:
                self.scaler.load_state_dict(st.scaler)
            self.start_epoch = st.epoch + 1
            self.monitor.load_state(st.monitor)
            self.history = list(st.history)
            if self.writer is not None and self.writer.best_path.is_file():
                self.best_path = self.writer.best_path

    def _train_mode(self) -> None:
        self.ddp.train()
        if self.freeze_encoder:
            self.model.encoder.eval()
        if self.freeze_bn:
            for m in self.model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()

    def _train_epoch(self, epoch: int) -> Iterator[TrainEvent | dict[str, float]]:
        """One pass over the training loader; yields BatchEnd events, then the epoch's mean losses
        (or ``None`` when cancelled)."""
        cfg = self.config
        loader, n_batches = self.train_loader, len(self.train_loader)
        sums = {"loss": 0.0, "seg": 0.0, "cls": 0.0}
        counts = {"loss": 0, "seg": 0, "cls": 0}
        for i, batch in enumerate(loader, start=1):
            if self.dist.any_rank(self.cancel.cancelled):
                yield None  # type: ignore[misc]
                return
            x = model_input(batch, self.prompts).to(self.device, non_blocking=True)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            if self.click_simulator is not None:
                x = self.click_simulator(self.model, x, batch)
                self._train_mode()
            ctx = torch.autocast(device_type=self.device.type, dtype=torch.float16) if self.use_amp else nullcontext()
            with ctx:
                out = self.ddp(x)
                parts = self.loss_fn(out, batch)
            if not torch.isfinite(parts.total):
                raise TrainingError(
                    f"loss became {float(parts.total.detach())} at epoch {epoch}, batch {i}; "
                    "lower the learning rate or check the data"
                )
            set_step_lr(self.optimizer, cfg, epoch, i, n_batches)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(parts.total).backward()
            if cfg.grad_clip:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad],
                                               float(cfg.grad_clip))
            self.scaler.step(self.optimizer)
            self.scaler.update()
            loss = float(parts.total.detach())
            sums["loss"] += loss
            counts["loss"] += 1
            for key, value in (("seg", parts.seg), ("cls", parts.cls)):
                if value is not None:
                    sums[key] += value
                    counts[key] += 1
            yield BatchEnd(epoch=epoch, epochs=cfg.epochs, batch=i, n_batches=n_batches, loss=loss,
                           seg_loss=parts.seg, cls_loss=parts.cls, lr=float(self.optimizer.param_groups[-1]["lr"]))
        train = {"train_loss": sums["loss"] / max(counts["loss"], 1)}
        if counts["seg"]:
            train["train_seg_loss"] = sums["seg"] / counts["seg"]
        if counts["cls"]:
            train["train_cls_loss"] = sums["cls"] / counts["cls"]
        yield train

    def _end_of_epoch(self, epoch: int, train: dict[str, float], t0: float, t_start: float) -> Iterator[TrainEvent]:
        cfg = self.config
        if cfg.bn_recalibration_batches and not self.freeze_bn:
            recalibrate_batchnorm(self.model, self.train_loader, self.device, int(cfg.bn_recalibration_batches),
                                  skip=self.model.encoder if self.freeze_encoder else None,
                                  channels_last=self.channels_last)
        self.dist.sync_buffers(self.model)
        val: dict[str, float] = {}
        if self.val_loader is not None:
            val = run_validation(self.model, self.val_loader, self.loss_fn, self.device, amp=self.use_amp,
                                 channels_last=self.channels_last)
        metrics = {**train, **val}
        value = metrics.get(self.monitor.name, math.nan)
        improved = self.monitor.update(epoch, value)
        lr = float(self.optimizer.param_groups[-1]["lr"])
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau) and not warming_up(cfg, epoch):
            self.scheduler.step(value if math.isfinite(value) else self.monitor.best_value)
        self.history.append({"epoch": epoch, **metrics, "lr": lr, "time_s": time.perf_counter() - t0})
        yield EpochEnd(epoch=epoch, epochs=cfg.epochs, train=train, val=val, lr=lr, monitor=self.monitor.name,
                       monitor_value=value, improved=improved, best_epoch=self.monitor.best_epoch,
                       best_value=self.monitor.best_value, elapsed_s=time.perf_counter() - t_start)
        if improved:
            if self.writer is not None and self.is_main:
                self.best_path = self.writer.save("best", epoch, metrics)
                yield CheckpointSaved(str(self.best_path), "best", epoch, self.monitor.name, value)
            elif self.writer is None:
                self._best_state = copy.deepcopy({k: v.detach().cpu() for k, v in self.model.state_dict().items()})
        if self.writer is not None and self.is_main:
            self.last_path = self.writer.save("last", epoch, metrics)
            yield CheckpointSaved(str(self.last_path), "last", epoch, self.monitor.name, value)

    def _fit(self) -> Iterator[TrainEvent]:
        self._setup()
        cfg = self.config
        if len(self.train_loader) == 0:
            raise TrainingError(
                f"the training set ({len(self.train_loader.dataset)} samples) gives no batch of size {cfg.batch_size}"
            )
        reason = "completed"
        epoch = self.start_epoch - 1
        t_start = time.perf_counter()
        for epoch in range(self.start_epoch, cfg.epochs + 1):
            self._epoch = epoch
            # Per-epoch seeding makes a resumed run identical to an uninterrupted one.
            seed_everything(cfg.seed + 1000 * epoch)
            set_loader_epoch(self.train_loader, epoch, cfg.seed)
            self._train_mode()
            t0 = time.perf_counter()
            train = None
            for item in self._train_epoch(epoch):
                if isinstance(item, TrainEvent):
                    yield item
                else:
                    train = item
            if train is None:
                reason = "cancelled"
                epoch -= 1  # this epoch did not complete
                break
            yield from self._end_of_epoch(epoch, train, t0, t_start)
            if self.dist.from_main(self.monitor.should_stop(epoch, cfg.epochs)):
                reason = "early_stopping"
                break
        self.dist.barrier()
        if self.writer is None and self._best_state is not None:
            self.model.load_state_dict(self._best_state)
        if self.writer is not None and self.last_path is None and self.writer.last_path.is_file():
            self.last_path = self.writer.last_path
        m = self.monitor
        self.result = FitResult(reason=reason, epochs_run=max(epoch, self.start_epoch - 1), best_epoch=m.best_epoch,
                                best_value=m.best_value, monitor=m.name, best_checkpoint=self.best_path,
                                last_checkpoint=self.last_path, history=list(self.history), model=self.model)
        yield Finished(reason=reason, epochs_run=self.result.epochs_run, best_epoch=m.best_epoch,
                       best_value=m.best_value, monitor=m.name,
                       best_checkpoint=str(self.best_path) if self.best_path else None,
                       last_checkpoint=str(self.last_path) if self.last_path else None, history=list(self.history))


def train(
    model_config: ModelConfig,
    train_config: TrainConfig,
    train_data: Dataset,
    val_data: Dataset | None = None,
    **kwargs: Any,
) -> FitResult:
    """One-call training: ``Trainer(model_config, train_config, train_data, val_data, **kwargs).fit()``."""
    return Trainer(model_config, train_config, train_data, val_data, **kwargs).fit()
