"""Writing a run's checkpoints (``best`` by the monitor, ``last`` with the optimizer state) and resuming.

``last.safetensors`` carries everything needed to continue the run exactly
(optimizer tensors under ``__extra__/optimizer/...``, scalar state, epoch,
monitor state and history as JSON under the metadata's ``extra.resume``);
``best.safetensors`` is the model alone.  Only rank 0 writes.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..jsonutil import json_default
from .errors import TrainingError

BEST_NAME = "best.safetensors"
LAST_NAME = "last.safetensors"


def finite_or_none(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def optimizer_to_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
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


def optimizer_from_tensors(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, v in tensors.items():
        if not name.startswith("optimizer/"):
            continue
        _, pid, key = name.split("/", 2)
        state.setdefault(int(pid), {})[key] = v
    for pid, kv in (meta.get("scalars") or {}).items():
        state.setdefault(int(pid), {}).update(kv)
    return {"state": state, "param_groups": meta["param_groups"]}


@dataclass
class ResumeState:
    """What ``last.safetensors`` says about where its run stopped."""

    epoch: int
    monitor: dict[str, Any]
    history: list[dict[str, Any]]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any] | None
    scaler: dict[str, Any] | None

    @classmethod
    def from_checkpoint(cls, path: str | Path, info: Any) -> ResumeState:
        raw = (info.metadata.get("extra") or {}).get("resume")
        if not raw:
            raise TrainingError(f"{path}: not a resumable checkpoint (resume from the run's {LAST_NAME})")
        try:
            st = json.loads(raw)
            return cls(
                epoch=int(st["epoch"]),
                monitor={k: st[k] for k in ("best_value", "best_epoch", "bad_epochs")},
                history=list(st.get("history") or []),
                optimizer=optimizer_from_tensors(info.extra_tensors, st["optimizer"]),
                scheduler=st.get("scheduler"),
                scaler=st.get("scaler"),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise TrainingError(
                f"{path}: its resume state is incomplete or corrupt ({type(exc).__name__}: {exc}); "
                "start a new run instead"
            ) from None


class CheckpointWriter:
    """Saves ``best``/``last`` for a trainer (rank 0 only); knows the run's metadata."""

    def __init__(self, out_dir: Path, trainer: Any):
        self.out_dir = Path(out_dir)
        self.trainer = trainer

    @property
    def best_path(self) -> Path:
        return self.out_dir / BEST_NAME

    @property
    def last_path(self) -> Path:
        return self.out_dir / LAST_NAME

    def save(self, which: str, epoch: int, metrics: dict[str, float]) -> Path:
        from ..checkpoint import save_checkpoint

        t = self.trainer
        clean = {k: finite_or_none(v) for k, v in metrics.items()}
        common = dict(training=t.training_metadata(epoch), metrics=clean, parent=t.parent, run=t.run_dict())
        if which == "best":
            return save_checkpoint(self.best_path, t.model, **common)
        tensors, opt_meta = optimizer_to_tensors(t.optimizer)
        resume = {
            "epoch": epoch,
            **t.monitor.state(),
            "history": t.history,
            "optimizer": opt_meta,
            "scheduler": t.scheduler.state_dict() if t.scheduler is not None else None,
            "scaler": t.scaler.state_dict() if t.use_amp else None,
        }
        return save_checkpoint(
            self.last_path,
            t.model,
            extra_tensors=tensors,
            extra_metadata={"resume": json.dumps(resume, default=json_default)},
            **common,
        )
