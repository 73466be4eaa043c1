"""Print pip constraints that pin each requirement of napari-mtunet to the lowest release its floor allows.

`>=X.Y` becomes `==X.Y.*` (the newest patch of the floor's minor release: pip has no "lowest"
resolution, and patch releases only fix bugs). Used by .ci/floors; run from the repository root:
    python .ci/floors.py [EXTRA ...] > floors.txt
Requirements without a floor, or whose floor is a pre-release, are left free.
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

from packaging.requirements import Requirement


def floors(extras: list[str]) -> list[str]:
    project = tomllib.loads(Path("pyproject.toml").read_text(encoding="utf-8"))["project"]
    raw = list(project["dependencies"])
    for extra in extras:
        raw += project["optional-dependencies"][extra]
    out: dict[str, str] = {}
    for line in raw:
        req = Requirement(line)
        if req.name == "napari-mtunet" or (req.marker is not None and not req.marker.evaluate()):
            continue
        lows = [s.version for s in req.specifier if s.operator == ">="]
        if not lows:
            continue
        parts = lows[0].split(".")
        pin = f"{req.name}=={'.'.join(parts[:2])}.*" if len(parts) >= 2 else f"{req.name}=={parts[0]}.*"
        out[req.name.lower()] = pin
    return sorted(out.values())


if __name__ == "__main__":
    print("\n".join(floors(sys.argv[1:])))
