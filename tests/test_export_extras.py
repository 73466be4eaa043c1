"""Exports without their optional packages name the extra to install, before any work is done."""

from __future__ import annotations

import importlib.util

import pytest

from napari_mtunet.export import ExportError, export_model


@pytest.fixture
def no_onnx(monkeypatch):
    real = importlib.util.find_spec

    def fake(name, package=None):
        return None if name.split(".")[0] in ("onnx", "onnxruntime", "onnxscript") else real(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", fake)


def test_onnx_export_without_the_extra_names_it(no_onnx, tmp_path):
    ckpt = tmp_path / "m.safetensors"
    ckpt.write_bytes(b"not read: the check comes first")
    with pytest.raises(ExportError, match=r'ONNX export needs onnx, onnxscript, onnxruntime: pip install "napari-mtunet\[onnx\]"'):
        export_model(ckpt, tmp_path / "m.onnx", "onnx")
    assert not (tmp_path / "m.onnx").exists()
