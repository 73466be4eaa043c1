"""Keep ``triton`` out of napari processes that render with software OpenGL (no torch import).

torchvision (used by the data transforms and the model) imports
``torch._dynamo``, which imports ``triton`` if it is installed.  Loading
triton's bundled LLVM into a process whose OpenGL context runs on Mesa's
llvmpipe (VMs, remote desktops, Xvfb) crashes napari with a segmentation
fault.  :func:`guard_triton` masks triton when no GPU driver is present.
"""

from __future__ import annotations

import os
import shutil
import sys


#: Files that exist on Linux when a GPU driver is loaded: NVIDIA's kernel driver,
#: NVIDIA device nodes (containers often expose only those), AMD ROCm's node.
LINUX_GPU_MARKERS = ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd")


def _accelerator_present() -> bool:
    """Whether this process may have a GPU that triton could use, decided without importing torch.

    When torch is already imported its own answer is free and exact.  Otherwise
    look for a GPU driver: the NVIDIA kernel driver (``/proc/driver/nvidia``),
    NVIDIA or AMD ROCm device nodes (containers often expose only those),
    NVIDIA's CUDA driver DLL on Windows, or ``nvidia-smi`` on the PATH.
    ``CUDA_VISIBLE_DEVICES`` set to nothing or ``-1`` hides every GPU.
    """
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            return bool(torch.cuda.is_available())
        except Exception:  # noqa: BLE001 - a half-imported torch: fall back to the driver check
            pass
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    if sys.platform.startswith("linux"):
        if any(os.path.exists(marker) for marker in LINUX_GPU_MARKERS):
            return True
    elif sys.platform == "win32":
        system_root = os.environ.get("SystemRoot", r"C:\Windows")
        if os.path.exists(os.path.join(system_root, "System32", "nvcuda.dll")):
            return True
    return shutil.which("nvidia-smi") is not None


def guard_triton() -> None:
    """Keep ``triton`` from loading inside napari when no GPU can use it.

    torchvision (used by the data transforms and the model) imports
    ``torch._dynamo``, which imports ``triton`` if it is installed.  Loading
    triton's bundled LLVM into a process whose OpenGL context runs on Mesa's
    llvmpipe (software rendering: VMs, remote desktops, Xvfb) crashes the
    whole viewer with a segmentation fault.  Without a GPU triton is useless,
    so it is masked (``sys.modules["triton"] = None`` makes torch treat it as
    absent).  Set ``MTUNET_ALLOW_TRITON=1`` to opt out.

    This runs on napari's GUI thread (when a widget is docked or a checkpoint
    is opened), so it never imports torch: see :func:`_accelerator_present`.
    """
    if "triton" in sys.modules or os.environ.get("MTUNET_ALLOW_TRITON"):
        return
    try:
        if _accelerator_present():
            return
    except Exception:  # noqa: BLE001 - never break napari over this
        return
    sys.modules["triton"] = None  # type: ignore[assignment]
