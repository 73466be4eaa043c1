"""Shared fixtures. Tests never download anything: models use encoder_weights=None."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

# The tests build models in the same process as napari viewers (Xvfb, software OpenGL):
# importing triton after a GL context exists crashes, so mask it as napari-mtunet's widgets do.
from napari_mtunet._triton import guard_triton  # noqa: E402

guard_triton()

REPO = Path(__file__).resolve().parents[1]
# Test helpers (data_fixtures, array_data) are importable here and in the child processes tests start.
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(Path(__file__).resolve().parent), *filter(None, [os.environ.get("PYTHONPATH")])])


def find_busi() -> Path | None:
    """The real BUSI subset lives in ../shared/data/busi next to the checkout (never copied here)."""
    candidates = [os.environ.get("MTUNET_BUSI")] if os.environ.get("MTUNET_BUSI") else []
    candidates += [str(REPO.parent / "shared" / "data" / "busi"), "/work/shared/data/busi"]
    for c in candidates:
        p = Path(c)
        if (p / "Dataset_BUSI_with_GT").is_dir():
            return p
    return None


@pytest.fixture(scope="session")
def busi_root() -> Path:
    root = find_busi()
    if root is None:
        pytest.skip("real BUSI subset not found at ../shared/data/busi (set MTUNET_BUSI)")
    return root / "Dataset_BUSI_with_GT"


@pytest.fixture(scope="session")
def tiny_model():
    """A small random-init multi-task MobileNetV2 UNet (3 classes, 64 px training size)."""
    import torch

    from napari_mtunet.config import ModelConfig, Preprocessing
    from napari_mtunet.model import build_model

    torch.manual_seed(0)
    model = build_model(
        ModelConfig(encoder_weights=None, class_names=["benign", "malignant", "normal"]),
        Preprocessing(image_size=64),
    )
    return model.eval()


@pytest.fixture(autouse=True)
def _isolated_user_config(tmp_path_factory, monkeypatch):
    """Widgets remember settings under MTUNET_CONFIG_DIR: never the user's real config in tests, and a fresh
    one for every test (what one test's widgets remembered must not fill another test's widgets)."""
    monkeypatch.setenv("MTUNET_CONFIG_DIR", str(tmp_path_factory.mktemp("mtunet-config")))


@pytest.fixture
def notifications(monkeypatch):
    """What the widgets notified: ``{"error": [...], "info": [...]}`` (every widget notifies through _job)."""
    pytest.importorskip("napari")
    from napari_mtunet.widgets import _job

    seen: dict[str, list[str]] = {"error": [], "info": []}
    monkeypatch.setattr(_job, "notify_error", seen["error"].append)
    monkeypatch.setattr(_job, "notify_info", seen["info"].append)
    return seen


@pytest.fixture
def errors(notifications):
    """The error notifications the widgets showed."""
    return notifications["error"]


@pytest.fixture
def no_traceback():
    """Fails the test if napari received an uncaught exception (shown to the user with a traceback)."""
    pytest.importorskip("napari")
    from napari.utils.notifications import ErrorNotification, notification_manager

    before = len(notification_manager.records)
    yield
    tracebacks = [n for n in notification_manager.records[before:] if isinstance(n, ErrorNotification)]
    assert not tracebacks, [str(n.exception) for n in tracebacks]
