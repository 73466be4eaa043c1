"""What ``torchrun`` tells a process through its environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``): read
here and nowhere else.  Torch-free, so the CLI can ask which process prints without importing torch."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass
class DistEnv:
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @classmethod
    def from_environ(cls) -> DistEnv:
        return cls(
            int(os.environ.get("WORLD_SIZE", "1")),
            int(os.environ.get("RANK", "0")),
            int(os.environ.get("LOCAL_RANK", "0")),
        )

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def is_main_process() -> bool:
    """Whether this process is the one that prints and writes shared files (rank 0; a plain process is)."""
    return DistEnv.from_environ().is_main
