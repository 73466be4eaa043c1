"""What a widget remembers between openings: a small JSON file in the user's config folder."""

from __future__ import annotations

import json
import os
from typing import Any


def settings_path(name: str) -> str:
    """Where a widget remembers its last settings (``$MTUNET_CONFIG_DIR`` or ``~/.config/napari-mtunet``)."""
    base = os.environ.get("MTUNET_CONFIG_DIR") or os.path.join(
        os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config"), "napari-mtunet")
    return os.path.join(base, f"{name}.json")


def load_settings(name: str) -> dict[str, Any]:
    try:
        with open(settings_path(name), encoding="utf-8") as fh:
            data = json.load(fh)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def save_settings(name: str, values: dict[str, Any]) -> None:
    from ..paths import write_atomic

    path = settings_path(name)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_atomic(path, json.dumps(values, indent=1))
    except OSError:
        pass  # remembering settings is a convenience; never an error
