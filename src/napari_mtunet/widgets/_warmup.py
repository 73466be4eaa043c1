"""The widgets' view of the compute process (:mod:`napari_mtunet.compute`): start it when the first widget
opens (its imports are the warm-up), and what it found (the devices of this machine).

napari's own process never imports torch: the scientific stack loads in the compute process, so the
window stays responsive while it does.
"""

from __future__ import annotations

from typing import Any


def warm_up() -> Any:
    """Start the session's compute process if it is not running (returns it; never blocks)."""
    from ..compute import client

    return client()


def warm_up_done() -> bool:
    """Whether the compute process has imported everything the jobs use."""
    from ..compute import client

    proc = client(start=False)
    return bool(proc is not None and proc.ready.is_set())


def device_choices() -> list[str]:
    """"auto" and the devices of this machine ("auto" and "cpu" until the compute process knows them)."""
    from ..compute import client

    proc = client(start=False)
    devices = proc.info.get("devices") if proc is not None and proc.ready.is_set() else None
    return ["auto", *(devices or ["cpu"])]
