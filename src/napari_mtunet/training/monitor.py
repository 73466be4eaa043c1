"""Best-checkpoint selection and early stopping: which epoch is best, and when to stop."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..config import MONITORS


@dataclass
class Monitor:
    """Tracks the monitored quantity over epochs (lower or higher is better, from :data:`MONITORS`)."""

    name: str
    patience: int | None = None
    best_value: float = math.nan
    best_epoch: int = 0
    bad_epochs: int = 0

    def __post_init__(self) -> None:
        if self.name not in MONITORS:
            raise ValueError(f"unknown monitor {self.name!r}; choose from {sorted(MONITORS)}")
        if not math.isfinite(self.best_value) and self.best_epoch == 0:
            self.best_value = math.inf if self.mode == "min" else -math.inf

    @property
    def mode(self) -> str:
        return MONITORS[self.name]

    def improved(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        return value < self.best_value if self.mode == "min" else value > self.best_value

    def update(self, epoch: int, value: float) -> bool:
        """Record ``value`` for ``epoch``; returns whether it is the best so far."""
        if self.improved(value):
            self.best_value, self.best_epoch, self.bad_epochs = float(value), int(epoch), 0
            return True
        self.bad_epochs += 1
        return False

    def should_stop(self, epoch: int, epochs: int) -> bool:
        return self.patience is not None and self.bad_epochs >= int(self.patience) and epoch < epochs

    def state(self) -> dict:
        return {"best_value": self.best_value, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load_state(self, state: dict) -> None:
        self.best_value = float(state["best_value"])
        self.best_epoch = int(state["best_epoch"])
        self.bad_epochs = int(state["bad_epochs"])
