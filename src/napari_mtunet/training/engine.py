"""The training engine: one Trainer for the CLI, the Python API and the napari widgets.

Inputs are torch Datasets (or DataLoaders) whose items are dicts::

    image   float32 (3, S, S) in [0, 1]
    mask    float32 (1, S, S) {0, 1}
    label   int64 class index, -1 when unknown
    has_mask, has_label   bool
    index   int

The trainer reports through events (see :mod:`.events`): use
``Trainer.iter_fit()`` as a generator of events (e.g. inside a napari
``thread_worker``) or ``Trainer.fit()`` with callbacks.  A
:class:`~.events.CancelToken` is checked between batches.

Checkpoints (``out_dir/best.safetensors`` by the monitored validation
metric, ``out_dir/last.safetensors`` after every epoch with optimizer state
for ``resume_from``) are written atomically by rank 0 only.

Distributed data parallel is used automatically when the process was
started by ``torchrun`` (``WORLD_SIZE > 1``): gloo on CPU, nccl on CUDA.
"""

from __future__ import annotations

import copy
import json
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
from torch.utils.data import ConcatDataset, DataLoader, Dataset, RandomSampler, SequentialSampler, Subset

from ..config import DataConfig, ModelConfig, Preprocessing, TrainConfig
from .events import (
    BatchEnd,
    Callback,
    CancelToken,
    CheckpointSaved,
    EpochEnd,
    Failed,
    Finished,
    TrainEvent,
    dispatch,
)
from .losses import MultiTaskLoss, balanced_class_weights

BEST_NAME = "best.safetensors"
LAST_NAME = "last.safetensors"

#: Monitorable quantities and whether lower is better.
MONITORS: dict[str, str] = {
    "val_loss": "min",
    "val_seg_loss": "min",
    "val_cls_loss": "min",
    "val_dice": "max",
    "val_accuracy": "max",
    "val_balanced_accuracy": "max",
    "train_loss": "min",
}


class TrainingError(RuntimeError):
    """Training cannot start or continue; the message says why."""


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


# --------------------------------------------------------------------------- helpers


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def dataset_labels(data: Dataset | DataLoader) -> list[int]:
    """Class indices (-1 = none) of a dataset, cheaply when it exposes ``labels``."""
    ds = data.dataset if isinstance(data, DataLoader) else data
    if isinstance(ds, ConcatDataset):
        return [v for d in ds.datasets for v in dataset_labels(d)]
    if isinstance(ds, Subset):
        inner = dataset_labels(ds.dataset)
        return [inner[i] for i in ds.indices]
    labels = getattr(ds, "labels", None)
    if labels is not None:
        return [int(v) for v in labels]
    return [int(ds[i]["label"]) for i in range(len(ds))]  # type: ignore[arg-type]


def _dist_env() -> tuple[int, int, int]:
    ws = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return ws, rank, local


def _optimizer_to_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optimizer/{pid}/{k}"] = v
            else:
                scalars.setdefault(str(pid), {})[k] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_from_tensors(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, v in tensors.items():
        if not name.startswith("optimizer/"):
            continue
        _, pid, key = name.split("/", 2)
        state.setdefault(int(pid), {})[key] = v
    for pid, kv in (meta.get("scalars") or {}).items():
        state.setdefault(int(pid), {}).update(kv)
    return {"state": state, "param_groups": meta["param_groups"]}


def _is_out_of_memory(exc: BaseException) -> bool:
    oom_type = getattr(torch, "OutOfMemoryError", None)
    return (oom_type is not None and isinstance(exc, oom_type)) or "out of memory" in str(exc).lower()


def _finite(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def run_validation(
    model: nn.Module,
    loader: DataLoader,
    loss_fn: MultiTaskLoss,
    device: torch.device,
    *,
    threshold: float = 0.5,
    amp: bool = False,
    channels_last: bool = False,
) -> dict[str, float]:
    """Mean losses and quick metrics (per-image Dice, accuracy, balanced accuracy)."""
    from sklearn.metrics import balanced_accuracy_score

    from .metrics import dice_iou_per_image

    was_training = model.training
    model.eval()
    tot = seg = cls = 0.0
    n_batches = n_seg = n_cls = 0
    dices: list[np.ndarray] = []
    y_true: list[np.ndarray] = []
    y_pred: list[np.ndarray] = []
    ctx = torch.autocast(device_type=device.type, dtype=torch.float16) if amp else nullcontext()
    for batch in loader:
        x = batch["image"].to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with ctx:
            out = model(x)
            parts = loss_fn(out, batch)
        n_batches += 1
        tot += float(parts.total)
        if parts.seg is not None:
            seg += parts.seg * parts.n_seg
            n_seg += parts.n_seg
        if parts.cls is not None:
            cls += parts.cls * parts.n_cls
            n_cls += parts.n_cls
        if out.seg is not None:
            sel = torch.as_tensor(batch.get("has_mask", torch.ones(len(x)))).bool().numpy()
            if sel.any():
                pred = (torch.sigmoid(out.seg[:, 0].float()) > threshold).cpu().numpy()
                true = batch["mask"][:, 0].numpy() > 0.5
                dices.append(dice_iou_per_image(pred[sel], true[sel])[0])
        if out.cls is not None:
            labels = batch["label"].numpy()
            sel = (labels >= 0) & torch.as_tensor(batch.get("has_label", torch.ones(len(x)))).bool().numpy()
            if sel.any():
                y_true.append(labels[sel])
                y_pred.append(out.cls.float().argmax(1).cpu().numpy()[sel])
    model.train(was_training)
    res: dict[str, float] = {"val_loss": tot / max(n_batches, 1)}
    if n_seg:
        res["val_seg_loss"] = seg / n_seg
    if n_cls:
        res["val_cls_loss"] = cls / n_cls
    if dices:
        res["val_dice"] = float(np.concatenate(dices).mean())
    if y_true:
        t, p = np.concatenate(y_true), np.concatenate(y_pred)
        res["val_accuracy"] = float((t == p).mean())
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res["val_balanced_accuracy"] = float(balanced_accuracy_score(t, p))
    return res


@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    max_batches: int,
    *,
    skip: nn.Module | None = None,
    channels_last: bool = False,
) -> int:
    """Precise BN: replace running statistics by their average over ``max_batches`` training batches.

    BatchNorm layers inside ``skip`` (a frozen encoder) are left alone.
    Returns the number of batches used.
    """
    skipped = {id(m) for m in skip.modules()} if skip is not None else set()
    bns = [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats and id(m) not in skipped
    ]
    if not bns or max_batches <= 0:
        return 0
    was_training = model.training
    momenta = [m.momentum for m in bns]
    saved = [(m.running_mean.clone(), m.running_var.clone()) for m in bns]
    model.train()
    if skip is not None:
        skip.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    n = 0
    for batch in loader:
        if n >= max_batches:
            break
        x = batch["image"].to(device)
        if len(x) < 2:
            continue
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        model(x)
        n += 1
    for m, mom, (mean, var) in zip(bns, momenta, saved):
        m.momentum = mom
        if n == 0:
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
    model.train(was_training)
    return n


# --------------------------------------------------------------------------- trainer


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
        data_config: DataConfig | None = None,
        extra_training_metadata: dict[str, Any] | None = None,
        num_workers: int = 0,
    ):
        from ..device import resolve_device

        if train_data is None:
            raise TrainingError("no training data given")
        self._resume_state: dict[str, Any] | None = None
        self._resume_optimizer: dict[str, Any] | None = None
        if resume_from is not None:
            from ..checkpoint import load_checkpoint

            model, info = load_checkpoint(resume_from, device="cpu")
            raw = (info.metadata.get("extra") or {}).get("resume")
            if not raw:
                raise TrainingError(f"{resume_from}: not a resumable checkpoint (use the run's last.safetensors)")
            state = json.loads(raw)
            self._resume_state = state
            self._resume_optimizer = _optimizer_from_tensors(info.extra_tensors, state["optimizer"])
            if train_config is None:
                train_config = TrainConfig.from_dict(info.training["train_config"])
            parent = parent if parent is not None else info.parent
        self.config = train_config or TrainConfig()
        cfg = self.config
        self.world_size, self.rank, self.local_rank = _dist_env()
        self.distributed = self.world_size > 1
        if self.distributed and cfg.device in ("auto", "cuda") and torch.cuda.is_available():
            self.device = torch.device(f"cuda:{self.local_rank}")
        else:
            self.device = resolve_device(cfg.device)
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
        self.data_config = data_config
        self.extra_training_metadata = dict(extra_training_metadata or {})
        self.num_workers = int(num_workers)
        self.monitor = cfg.monitor
        if self.monitor not in MONITORS:
            raise TrainingError(f"unknown monitor {self.monitor!r}; choose from {sorted(MONITORS)}")
        if val_data is None and self.monitor.startswith("val_"):
            self.monitor = "train_loss"
        needs = {"val_dice": ("both", "seg"), "val_seg_loss": ("both", "seg")}
        needs.update({k: ("both", "cls") for k in ("val_accuracy", "val_balanced_accuracy", "val_cls_loss")})
        if self.monitor in needs and self.task not in needs[self.monitor]:
            raise TrainingError(f"monitor {self.monitor!r} is not available for task {self.task!r}")
        self.mode = MONITORS[self.monitor]
        self.use_amp = bool(cfg.amp) and self.device.type == "cuda"
        self.channels_last = bool(cfg.channels_last) and self.device.type == "cuda"
        # class weights from the training split
        class_weights = None
        if self.task in ("both", "cls") and cfg.class_weights == "balanced":
            labels = train_labels if train_labels is not None else dataset_labels(train_data)
            class_weights = balanced_class_weights(labels, self.model_config.num_classes)
        self.class_weights = class_weights
        self.loss_fn = MultiTaskLoss(
            self.task, w_seg=cfg.w_seg, w_cls=cfg.w_cls, seg_loss=cfg.seg_loss, class_weights=class_weights
        )
        self.result: FitResult | None = None
        self.history: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ public

    @property
    def is_main(self) -> bool:
        return self.rank == 0

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
            self._cleanup()

    def _out_of_memory_error(self, exc: BaseException) -> TrainingError:
        """Free what the failed step held and explain what to change."""
        import gc

        from .. import device as device_mod

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

    # ------------------------------------------------------------------ internals

    def _make_loader(self, data, train: bool) -> DataLoader:
        if isinstance(data, DataLoader):
            return data
        cfg = self.config
        n = len(data)
        if n == 0:
            raise TrainingError(("training" if train else "validation") + " set is empty")
        if train:
            if self.distributed:
                from torch.utils.data.distributed import DistributedSampler

                sampler = DistributedSampler(
                    data, num_replicas=self.world_size, rank=self.rank, shuffle=True, seed=cfg.seed
                )
                per_rank = math.ceil(n / self.world_size)
            else:
                self._generator = torch.Generator()
                self._generator.manual_seed(cfg.seed)
                sampler = RandomSampler(data, generator=self._generator)
                per_rank = n
            # a last batch of one breaks BatchNorm in train mode
            drop_last = per_rank > cfg.batch_size and per_rank % cfg.batch_size == 1
        else:
            sampler = SequentialSampler(data)
            drop_last = False
        return DataLoader(
            data,
            batch_size=cfg.batch_size,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=self.num_workers > 0,
        )

    def _setup(self) -> None:
        cfg = self.config
        if self.distributed and not torch.distributed.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            torch.distributed.init_process_group(backend=backend)
            self._own_pg = True
        else:
            self._own_pg = False
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        model = self.model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if self.freeze_encoder:
            for p in model.encoder.parameters():
                p.requires_grad_(False)
        encoder_ids = {id(p) for p in model.encoder.parameters()}
        enc_params = [p for p in model.parameters() if p.requires_grad and id(p) in encoder_ids]
        other_params = [p for p in model.parameters() if p.requires_grad and id(p) not in encoder_ids]
        if not enc_params and not other_params:
            raise TrainingError("no trainable parameters (everything is frozen)")
        groups = []
        if enc_params:
            groups.append({"params": enc_params, "lr": cfg.lr * float(cfg.encoder_lr_scale), "name": "encoder"})
        if other_params:
            groups.append({"params": other_params, "lr": cfg.lr, "name": "decoder_heads"})
        self.optimizer = torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
        for g in self.optimizer.param_groups:
            g["base_lr"] = g["lr"]
        self.scheduler = None
        if cfg.lr_schedule == "plateau":
            patience = max(1, (cfg.early_stopping_patience or 6) // 2)
            self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                self.optimizer, mode=self.mode, factor=0.5, patience=patience
            )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.use_amp)
        if self.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DDP(model, device_ids=ids)
        else:
            self.ddp = model
        self.train_loader = self._make_loader(self.train_data, True)
        self.val_loader = self._make_loader(self.val_data, False) if self.val_data is not None else None
        # state
        self.start_epoch = 1
        self.best_value = math.inf if self.mode == "min" else -math.inf
        self.best_epoch = 0
        self.bad_epochs = 0
        self.best_path: Path | None = None
        self.last_path: Path | None = None
        self._best_state: dict[str, torch.Tensor] | None = None
        if self._resume_state is not None:
            st = self._resume_state
            self.optimizer.load_state_dict(self._resume_optimizer)
            if self.scheduler is not None and st.get("scheduler"):
                self.scheduler.load_state_dict(st["scheduler"])
            if st.get("scaler") and self.use_amp:
                self.scaler.load_state_dict(st["scaler"])
            self.start_epoch = int(st["epoch"]) + 1
            self.best_value = float(st["best_value"])
            self.best_epoch = int(st["best_epoch"])
            self.bad_epochs = int(st["bad_epochs"])
            self.history = list(st.get("history") or [])
            if self.out_dir is not None and (self.out_dir / BEST_NAME).is_file():
                self.best_path = self.out_dir / BEST_NAME

    def _warming_up(self, epoch: int) -> bool:
        return float(self.config.warmup_epochs) > 0 and epoch <= math.ceil(float(self.config.warmup_epochs))

    def _set_step_lr(self, epoch: int, batch: int, n_batches: int) -> None:
        """Per-step learning rate: linear warm-up, then constant or cosine decay to 0 at the last step.

        A pure function of the step index, so a resumed run follows the same curve.
        """
        cfg = self.config
        step = (epoch - 1) * n_batches + (batch - 1)
        total = max(1, int(cfg.epochs) * n_batches)
        warm = int(round(float(cfg.warmup_epochs) * n_batches))
        if warm > 0 and step < warm:
            factor = (step + 1) / (warm + 1)
        elif cfg.lr_schedule == "cosine":
            progress = (step - warm) / max(1, total - warm)
            factor = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        elif warm > 0 and step == warm:
            factor = 1.0  # warm-up over: back to the base rate (a plateau schedule takes over from here)
        else:
            return
        for g in self.optimizer.param_groups:
            g["lr"] = g["base_lr"] * factor

    def _cleanup(self) -> None:
        if getattr(self, "_own_pg", False) and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
            self._own_pg = False

    def _improved(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        return value < self.best_value if self.mode == "min" else value > self.best_value

    def _training_metadata(self, epoch: int) -> dict[str, Any]:
        meta = {
            "train_config": self.config.to_dict(),
            "data_config": self.data_config.to_dict() if self.data_config is not None else None,
            "epoch": epoch,
            "best_epoch": self.best_epoch,
            "monitor": self.monitor,
            "best_value": _finite(self.best_value),
            "n_train": len(self.train_loader.dataset),
            "n_val": len(self.val_loader.dataset) if self.val_loader is not None else 0,
            "class_weights": self.class_weights.tolist() if self.class_weights is not None else None,
            "freeze_encoder": self.freeze_encoder,
            "world_size": self.world_size,
            "device": str(self.device),
            "history": [{k: _finite(v) if isinstance(v, float) else v for k, v in h.items()} for h in self.history],
        }
        meta.update(self.extra_training_metadata)
        return meta

    def _save(self, which: str, epoch: int, metrics: dict[str, float]) -> Path:
        from ..checkpoint import save_checkpoint

        assert self.out_dir is not None
        path = self.out_dir / (BEST_NAME if which == "best" else LAST_NAME)
        clean = {k: _finite(v) for k, v in metrics.items()}
        if which == "best":
            return save_checkpoint(
                path, self.model, training=self._training_metadata(epoch), metrics=clean, parent=self.parent
            )
        tensors, opt_meta = _optimizer_to_tensors(self.optimizer)
        resume = {
            "epoch": epoch,
            "best_value": self.best_value,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "history": self.history,
            "optimizer": opt_meta,
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.use_amp else None,
        }
        return save_checkpoint(
            path,
            self.model,
            training=self._training_metadata(epoch),
            metrics=clean,
            parent=self.parent,
            extra_tensors=tensors,
            extra_metadata={"resume": json.dumps(resume, default=_json_default)},
        )

    def _any_rank_cancelled(self) -> bool:
        flag = self.cancel.cancelled
        if not self.distributed:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item() > 0)

    def _broadcast_flag(self, flag: bool) -> bool:
        if not self.distributed:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        torch.distributed.broadcast(t, src=0)
        return bool(t.item() > 0)

    def _sync_buffers(self) -> None:
        """Make BatchNorm statistics identical on every rank (rank 0's) before validation."""
        if not self.distributed:
            return
        for b in self.model.buffers():
            torch.distributed.broadcast(b.data, src=0)

    def _fit(self) -> Iterator[TrainEvent]:
        self._setup()
        cfg = self.config
        model, loader = self.ddp, self.train_loader
        n_batches = len(loader)
        if n_batches == 0:
            raise TrainingError(
                f"the training set ({len(loader.dataset)} samples) gives no batch of size {cfg.batch_size}"
            )
        reason = "completed"
        epoch = self.start_epoch - 1
        t_start = time.perf_counter()
        for epoch in range(self.start_epoch, cfg.epochs + 1):
            self._epoch = epoch
            # Per-epoch seeding makes a resumed run identical to an uninterrupted one.
            seed_everything(cfg.seed + 1000 * epoch)
            if self.distributed and hasattr(loader.sampler, "set_epoch"):
                loader.sampler.set_epoch(epoch)
            elif getattr(self, "_generator", None) is not None:
                self._generator.manual_seed(cfg.seed + epoch)
            model.train()
            if self.freeze_encoder:
                self.model.encoder.eval()
            t0 = time.perf_counter()
            sums = {"loss": 0.0, "seg": 0.0, "cls": 0.0}
            counts = {"loss": 0, "seg": 0, "cls": 0}
            cancelled = False
            for i, batch in enumerate(loader, start=1):
                if self._any_rank_cancelled():
                    cancelled = True
                    break
                x = batch["image"].to(self.device, non_blocking=True)
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                ctx = torch.autocast(device_type=self.device.type, dtype=torch.float16) if self.use_amp else nullcontext()
                with ctx:
                    out = model(x)
                    parts = self.loss_fn(out, batch)
                if not torch.isfinite(parts.total):
                    raise TrainingError(
                        f"loss became {float(parts.total.detach())} at epoch {epoch}, batch {i}; "
                        "lower the learning rate or check the data"
                    )
                self._set_step_lr(epoch, i, n_batches)
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(parts.total).backward()
                if cfg.grad_clip:
                    self.scaler.unscale_(self.optimizer)
                    torch.nn.utils.clip_grad_norm_(
                        [p for p in self.model.parameters() if p.requires_grad], float(cfg.grad_clip)
                    )
                self.scaler.step(self.optimizer)
                self.scaler.update()
                loss = float(parts.total.detach())
                sums["loss"] += loss
                counts["loss"] += 1
                if parts.seg is not None:
                    sums["seg"] += parts.seg
                    counts["seg"] += 1
                if parts.cls is not None:
                    sums["cls"] += parts.cls
                    counts["cls"] += 1
                yield BatchEnd(
                    epoch=epoch,
                    epochs=cfg.epochs,
                    batch=i,
                    n_batches=n_batches,
                    loss=loss,
                    seg_loss=parts.seg,
                    cls_loss=parts.cls,
                    lr=float(self.optimizer.param_groups[-1]["lr"]),
                )
            if cancelled:
                reason = "cancelled"
                epoch -= 1  # this epoch did not complete
                break
            train = {"train_loss": sums["loss"] / max(counts["loss"], 1)}
            if counts["seg"]:
                train["train_seg_loss"] = sums["seg"] / counts["seg"]
            if counts["cls"]:
                train["train_cls_loss"] = sums["cls"] / counts["cls"]
            if cfg.bn_recalibration_batches:
                recalibrate_batchnorm(
                    self.model,
                    loader,
                    self.device,
                    int(cfg.bn_recalibration_batches),
                    skip=self.model.encoder if self.freeze_encoder else None,
                    channels_last=self.channels_last,
                )
            self._sync_buffers()
            val: dict[str, float] = {}
            if self.val_loader is not None:
                val = run_validation(
                    self.model,
                    self.val_loader,
                    self.loss_fn,
                    self.device,
                    amp=self.use_amp,
                    channels_last=self.channels_last,
                )
            value = {**train, **val}.get(self.monitor, math.nan)
            improved = self._improved(value)
            if improved:
                self.best_value, self.best_epoch, self.bad_epochs = value, epoch, 0
            else:
                self.bad_epochs += 1
            lr = float(self.optimizer.param_groups[-1]["lr"])
            if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau) and not self._warming_up(epoch):
                self.scheduler.step(value if math.isfinite(value) else self.best_value)
            record = {"epoch": epoch, **train, **val, "lr": lr, "time_s": time.perf_counter() - t0}
            self.history.append(record)
            yield EpochEnd(
                epoch=epoch,
                epochs=cfg.epochs,
                train=train,
                val=val,
                lr=lr,
                monitor=self.monitor,
                monitor_value=value,
                improved=improved,
                best_epoch=self.best_epoch,
                best_value=self.best_value,
                elapsed_s=time.perf_counter() - t_start,
            )
            metrics = {**train, **val}
            if improved:
                if self.out_dir is not None and self.is_main:
                    self.best_path = self._save("best", epoch, metrics)
                    yield CheckpointSaved(str(self.best_path), "best", epoch, self.monitor, value)
                elif self.out_dir is None:
                    self._best_state = copy.deepcopy({k: v.detach().cpu() for k, v in self.model.state_dict().items()})
            if self.out_dir is not None and self.is_main:
                self.last_path = self._save("last", epoch, metrics)
                yield CheckpointSaved(str(self.last_path), "last", epoch, self.monitor, value)
            stop = (
                cfg.early_stopping_patience is not None
                and self.bad_epochs >= int(cfg.early_stopping_patience)
                and epoch < cfg.epochs
            )
            if self._broadcast_flag(stop):
                reason = "early_stopping"
                break
        if self.distributed:
            torch.distributed.barrier()
        if self.out_dir is None and self._best_state is not None:
            self.model.load_state_dict(self._best_state)
        if self.out_dir is not None and self.last_path is None and (self.out_dir / LAST_NAME).is_file():
            self.last_path = self.out_dir / LAST_NAME
        self.result = FitResult(
            reason=reason,
            epochs_run=max(epoch, self.start_epoch - 1),
            best_epoch=self.best_epoch,
            best_value=self.best_value,
            monitor=self.monitor,
            best_checkpoint=self.best_path,
            last_checkpoint=self.last_path,
            history=list(self.history),
            model=self.model,
        )
        yield Finished(
            reason=reason,
            epochs_run=self.result.epochs_run,
            best_epoch=self.best_epoch,
            best_value=self.best_value,
            monitor=self.monitor,
            best_checkpoint=str(self.best_path) if self.best_path else None,
            last_checkpoint=str(self.last_path) if self.last_path else None,
            history=list(self.history),
        )


def _json_default(obj: Any) -> Any:
    if torch.is_tensor(obj):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


# --------------------------------------------------------------------------- convenience


def train(
    model_config: ModelConfig,
    train_config: TrainConfig,
    train_data: Dataset,
    val_data: Dataset | None = None,
    **kwargs: Any,
) -> FitResult:
    """One-call training: ``Trainer(model_config, train_config, train_data, val_data, **kwargs).fit()``."""
    return Trainer(model_config, train_config, train_data, val_data, **kwargs).fit()
