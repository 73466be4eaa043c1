import numpy as np
import pytest
import torch

from napari_mtunet.config import ModelConfig, Preprocessing
from napari_mtunet.explain import GradCAMError, grad_cam
from napari_mtunet.model import build_model


def _model(task="both"):
    torch.manual_seed(0)
    cfg = ModelConfig(encoder_name="mobilenet_v2", encoder_weights=None, num_classes=3, task=task)
    return build_model(cfg, Preprocessing(image_size=64))


def test_grad_cam_shape_range_and_input_untouched():
    m = _model()
    x = torch.rand(2, 3, 64, 64)
    before = x.clone()
    cams = grad_cam(m, x)
    assert cams.shape == (2, 64, 64) and cams.dtype == np.float32
    assert cams.min() >= 0 and cams.max() <= 1
    assert not x.requires_grad and torch.equal(x, before)
    assert all(p.grad is None for p in m.parameters())


def test_grad_cam_target_layer_and_class():
    m = _model("cls")
    x = torch.rand(1, 3, 64, 64)
    a = grad_cam(m, x, target_layer="encoder.features.14", target_class=2)
    b = grad_cam(m, x, target_class=[0])
    assert a.shape == b.shape == (1, 64, 64)
    with pytest.raises(GradCAMError, match="no layer named"):
        grad_cam(m, x, target_layer="encoder.nope")
    with pytest.raises(GradCAMError, match="out of range"):
        grad_cam(m, x, target_class=7)


def test_grad_cam_needs_classification_head():
    with pytest.raises(GradCAMError, match="classification head"):
        grad_cam(_model("seg"), torch.rand(1, 3, 64, 64))
