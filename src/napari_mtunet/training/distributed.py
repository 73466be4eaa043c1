"""Distributed data parallel (``torchrun``): process-group set-up and the few collective decisions.

Used automatically when the process was started by ``torchrun`` (``WORLD_SIZE > 1``):
gloo on CPU, nccl on CUDA.  Every helper is a no-op in a single process.
"""

from __future__ import annotations

import torch
from torch import nn

from ..torchrun import DistEnv


class Distributed:
    """The process group of one training run (created and destroyed by the trainer when it owns it)."""

    def __init__(self, env: DistEnv, device: torch.device):
        self.env = env
        self.device = device
        self._owns_group = False

    def setup(self) -> None:
        if not self.env.active or torch.distributed.is_initialized():
            return
        backend = "nccl" if self.device.type == "cuda" else "gloo"
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        torch.distributed.init_process_group(backend=backend)
        self._owns_group = True

    def cleanup(self) -> None:
        if self._owns_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
            self._owns_group = False

    def wrap(self, model: nn.Module) -> nn.Module:
        if not self.env.active:
            return model
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DDP(model, device_ids=ids)

    def any_rank(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any rank (e.g. a cancel request)."""
        if not self.env.active:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item() > 0)

    def from_main(self, flag: bool) -> bool:
        """Rank 0's value of ``flag`` on every rank (e.g. the early-stopping decision)."""
        if not self.env.active:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        torch.distributed.broadcast(t, src=0)
        return bool(t.item() > 0)

    def sync_buffers(self, model: nn.Module) -> None:
        """Make BatchNorm statistics identical on every rank (rank 0's) before validation."""
        if not self.env.active:
            return
        for b in model.buffers():
            torch.distributed.broadcast(b.data, src=0)

    def barrier(self) -> None:
        if self.env.active:
            torch.distributed.barrier()
