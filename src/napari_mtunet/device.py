"""Device selection: never hard-code CUDA; auto picks cuda, then mps, then cpu."""

from __future__ import annotations

import torch


class DeviceError(RuntimeError):
    """A requested device is not available; the message says what is."""


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def available_devices() -> list[str]:
    """Devices usable here, best first (always ends with "cpu")."""
    out = [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    if _mps_available():
        out.append("mps")
    out.append("cpu")
    return out


def describe_devices() -> str:
    parts = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            parts.append(f"cuda:{i} ({torch.cuda.get_device_name(i)})")
    if _mps_available():
        parts.append("mps (Apple GPU)")
    parts.append("cpu")
    return ", ".join(parts)


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """Turn "auto" / "cpu" / "cuda" / "cuda:N" / "mps" into a usable ``torch.device``."""
    if isinstance(name, torch.device):
        name = str(name)
    name = (name or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            build = torch.version.cuda or "a CPU-only build"
            raise DeviceError(
                f"device {name!r} requested but CUDA is not available (torch {torch.__version__}, {build}). "
                f"Available: {describe_devices()}. Use device 'auto' or 'cpu'."
            )
        idx = torch.device(name).index or 0
        if idx >= torch.cuda.device_count():
            raise DeviceError(f"device {name!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
        return torch.device(name)
    if name == "mps":
        if not _mps_available():
            raise DeviceError(f"device 'mps' requested but Apple MPS is not available. Available: {describe_devices()}")
        return torch.device("mps")
    raise DeviceError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps")


def empty_cache(device: torch.device | str) -> None:
    """Release cached accelerator memory (after training / on errors)."""
    dev = torch.device(device) if not isinstance(device, torch.device) else device
    if dev.type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()
    elif dev.type == "mps" and _mps_available() and hasattr(torch, "mps"):
        torch.mps.empty_cache()
