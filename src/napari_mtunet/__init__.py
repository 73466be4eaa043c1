"""napari-mtunet: joint classification and segmentation of medical images with a multi-task UNet.

The core (config, model, checkpoint, data, training, inference) imports no
Qt or napari; the napari widgets live in :mod:`napari_mtunet.widgets`.
Heavy modules are imported lazily so ``import napari_mtunet`` stays fast.

Importing the package also arms a one-shot check of the installed torch and
torchvision builds (distribution metadata only, no import): when they are
builds that cannot work together -- a CPU torch beside PyPI's CUDA
torchvision, or a torchvision made for another torch release -- and
importing torchvision then fails (``operator torchvision::nms does not
exist``), the error says which pair to install instead.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import re
import sys
from importlib import import_module
from typing import Any

_LOCAL = re.compile(r"^(cpu|cu\d+|rocm[\d.]+|xpu)$")
_TORCH_INDEX = "https://download.pytorch.org/whl"


def _torch_pair_problem(torch_version: str, torchvision_version: str, torchvision_requires: list[str],
                        platform: str = sys.platform) -> str | None:
    """Why these torch and torchvision builds cannot work together (from versions and metadata), or None."""
    from packaging.requirements import Requirement
    from packaging.version import InvalidVersion, Version

    try:
        tv, tv_local = Version(torchvision_version), Version(torchvision_version).local
        t, t_local = Version(torch_version), Version(torch_version).local
    except InvalidVersion:
        return None
    for raw in torchvision_requires:
        try:
            req = Requirement(raw)
        except Exception:  # noqa: BLE001 - unparsable metadata: no claim
            continue
        if req.name.lower() == "torch" and req.specifier and not req.specifier.contains(t, prereleases=True):
            return f"torchvision {tv} was built for torch{req.specifier}, not torch {t}"
    known = [x for x in (t_local, tv_local) if x is None or _LOCAL.match(x)]
    if len(known) == 2 and t_local != tv_local:
        if platform.startswith("linux") and tv_local is None:
            return (f"torch {t} is the '{t_local}' build, torchvision {tv} the default PyPI build (made for CUDA) "
                    "on Linux")
        if t_local is not None and tv_local is not None:
            return f"torch {t} is the '{t_local}' build, torchvision {tv} the '{tv_local}' build"
    return None


def _torch_pair_hint() -> str | None:
    """The message for a torch/torchvision pair that cannot work together, or None (metadata only)."""
    from importlib import metadata as md

    try:
        torch_version = md.version("torch")
        tv = md.distribution("torchvision")
        problem = _torch_pair_problem(torch_version, tv.version, tv.requires or [])
    except Exception:  # noqa: BLE001 - missing or odd metadata: make no claim
        return None
    if problem is None:
        return None
    from packaging.version import Version

    t = Version(torch_version)
    build = t.local or "cpu"
    pair = f"torchvision=={t.major - 2}.{t.minor + 15}.*" if t.major == 2 else "the matching torchvision"
    return (f"torch and torchvision do not match: {problem}. Install them together from one index, e.g. "
            f'pip install --force-reinstall "torch=={t.public}" "{pair}" --index-url {_TORCH_INDEX}/{build} '
            "(torchvision 0.N+15 pairs with torch 2.N; see pytorch.org/get-started)")


class _ExplainFailure(importlib.abc.Loader):
    """Runs the real loader; if importing fails, raises ImportError with what to install."""

    def __init__(self, loader: Any, hint: str):
        self._loader, self._hint = loader, hint

    def create_module(self, spec):  # noqa: D102
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:  # noqa: D102
        try:
            self._loader.exec_module(module)
        except Exception as exc:  # noqa: BLE001 - any failure of a mismatched pair gets the explanation
            raise ImportError(f"{self._hint} (importing torchvision failed: {exc})") from exc

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


class _TorchvisionPairCheck(importlib.abc.MetaPathFinder):
    """One-shot: at the first ``import torchvision``, explain a failure if the installed pair cannot work."""

    def find_spec(self, fullname, path=None, target=None):  # noqa: D102
        if fullname != "torchvision":
            return None
        try:
            sys.meta_path.remove(self)
        except ValueError:
            pass
        hint = _torch_pair_hint()
        if hint is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _ExplainFailure(spec.loader, hint)
        return spec


if "torchvision" not in sys.modules and not any(isinstance(f, _TorchvisionPairCheck) for f in sys.meta_path):
    sys.meta_path.insert(0, _TorchvisionPairCheck())

def _version() -> str:
    """The version setuptools_scm derived from the git tags when the package was built or installed."""
    try:
        from ._version import version

        return version
    except ImportError:  # a source tree that was never built or installed
        from importlib.metadata import PackageNotFoundError, version as dist_version

        try:
            return dist_version("napari-mtunet")
        except PackageNotFoundError:
            return "0+unknown"


__version__ = _version()

_LAZY = {
    "ModelConfig": "config",
    "Preprocessing": "config",
    "TrainConfig": "config",
    "DataConfig": "config",
    "AugmentConfig": "config",
    "RunConfig": "config",
    "FinetuneConfig": "config",
    "Postprocessing": "config",
    "build_model": "model",
    "save_checkpoint": "checkpoint",
    "load_checkpoint": "checkpoint",
    "Predictor": "inference",
    "Prediction": "inference",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
