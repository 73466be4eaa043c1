"""The multi-task UNet: shapes per task and encoder, skip ablation, weights loading."""

from __future__ import annotations

import time

import pytest
import torch

from napari_mtunet.config import ConfigError, ModelConfig, Preprocessing
from napari_mtunet.model import EncoderWeightsError, build_model, count_parameters


@pytest.mark.parametrize("encoder", ["mobilenet_v2", "vgg16"])
@pytest.mark.parametrize("task", ["both", "seg", "cls"])
def test_output_shapes_per_task(encoder, task):
    torch.manual_seed(0)
    model = build_model(ModelConfig(encoder_name=encoder, encoder_weights=None, task=task, num_classes=4)).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 64, 96))
    if task in ("both", "seg"):
        assert out.seg.shape == (2, 1, 64, 96)
    else:
        assert out.seg is None and model.decoder is None and model.segmentation_head is None
    if task in ("both", "cls"):
        assert out.cls.shape == (2, 4)
    else:
        assert out.cls is None and model.classification_head is None


@pytest.mark.parametrize("encoder", ["mobilenet_v2", "vgg16", "timm-tf_efficientnet_lite0"])
@pytest.mark.parametrize("prompts", [False, True])
def test_every_trainable_parameter_gets_a_gradient(encoder, prompts):
    """DistributedDataParallel (torchrun) stops at the first step when a trainable parameter gets no gradient:
    smp's EfficientNet encoders carry timm's conv_head/bn2, which their forward never calls."""
    torch.manual_seed(0)
    config = ModelConfig(encoder_name=encoder, encoder_weights=None, prompts=prompts)
    model = build_model(config).train()
    out = model(torch.rand(2, config.input_channels, 64, 64))
    (out.seg.mean() + out.cls.mean()).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    if encoder.startswith("timm-tf_efficientnet"):  # frozen, but still saved and loaded with the weights
        assert not model.encoder.conv_head.weight.requires_grad
        assert "encoder.conv_head.weight" in model.state_dict()


def test_cls_task_is_encoder_plus_head_only():
    both = build_model(ModelConfig(encoder_weights=None, task="both"))
    cls = build_model(ModelConfig(encoder_weights=None, task="cls"))
    seg = build_model(ModelConfig(encoder_weights=None, task="seg"))
    n_dec = count_parameters(both.decoder) + count_parameters(both.segmentation_head)
    n_head = count_parameters(both.classification_head)
    assert count_parameters(cls) == count_parameters(both) - n_dec
    assert count_parameters(seg) == count_parameters(both) - n_head
    # the multi-task model adds only the small head to the UNet
    assert n_head / count_parameters(seg) < 0.01


def test_rejects_sizes_not_multiple_of_32(tiny_model):
    with pytest.raises(ValueError, match="multiples of 32"):
        tiny_model(torch.rand(1, 3, 70, 64))


def _perturb_skips_hook(module, inputs, output):
    # encoder returns [identity, stage1, ..., bottleneck]; change every skip, keep the bottleneck
    return [f + 10.0 * torch.randn_like(f) for f in output[:-1]] + [output[-1]]


@pytest.mark.parametrize("skip", [True, False])
def test_skip_ablation_decoder_sees_only_bottleneck(skip):
    torch.manual_seed(0)
    model = build_model(ModelConfig(encoder_weights=None, skip_connections=skip)).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        handle = model.encoder.register_forward_hook(_perturb_skips_hook)
        try:
            perturbed = model(x)
        finally:
            handle.remove()
    # the class head reads only the bottleneck in both variants
    assert torch.allclose(ref.cls, perturbed.cls)
    if skip:
        assert not torch.allclose(ref.seg, perturbed.seg, atol=1e-3)
    else:
        assert torch.equal(ref.seg, perturbed.seg)


def test_skip_ablation_keeps_parameter_count():
    a = build_model(ModelConfig(encoder_weights=None, skip_connections=True))
    b = build_model(ModelConfig(encoder_weights=None, skip_connections=False))
    assert count_parameters(a) == count_parameters(b)


def test_normalisation_is_part_of_the_model():
    pre = Preprocessing(image_size=64, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    model = build_model(ModelConfig(encoder_weights=None), pre)
    assert torch.allclose(model.mean.flatten(), torch.tensor([0.5] * 3))
    assert "mean" in model.state_dict() and "std" in model.state_dict()
    x = torch.full((1, 3, 32, 32), 0.75)
    assert torch.allclose(model.normalize(x), torch.ones_like(x))


def test_local_weights_file_safetensors_and_pth(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(1)
    src = build_model(ModelConfig(encoder_weights=None))
    enc_state = {f"encoder.{k}": v.clone() for k, v in src.encoder.state_dict().items()}
    st = tmp_path / "enc.safetensors"
    save_file(enc_state, str(st))
    pth = tmp_path / "enc.pth"
    torch.save({f"module.{k}": v for k, v in src.encoder.state_dict().items()}, pth)
    for path in (st, pth):
        torch.manual_seed(2)
        model = build_model(ModelConfig(encoder_weights=str(path)))
        for k, v in src.encoder.state_dict().items():
            assert torch.equal(model.encoder.state_dict()[k], v), (path, k)


def test_local_weights_mismatch_lists_keys(tmp_path):
    from safetensors.torch import save_file

    vgg = build_model(ModelConfig(encoder_name="vgg16", encoder_weights=None, task="cls"))
    f = tmp_path / "vgg.safetensors"
    save_file({k: v.contiguous() for k, v in vgg.encoder.state_dict().items()}, str(f))
    with pytest.raises(EncoderWeightsError, match=r"vgg.safetensors: no tensor name matches the MobileNetV2Encoder"):
        build_model(ModelConfig(encoder_name="mobilenet_v2", encoder_weights=str(f)))
    # names that overlap but are incomplete are listed key by key
    partial = {k: v.contiguous() for k, v in list(build_model(ModelConfig(encoder_weights=None, task="cls")).encoder.state_dict().items())[:-3]}
    save_file(partial, str(tmp_path / "partial.safetensors"))
    with pytest.raises(EncoderWeightsError, match=r"missing 3 key"):
        build_model(ModelConfig(encoder_name="mobilenet_v2", encoder_weights=str(tmp_path / "partial.safetensors")))
    with pytest.raises(EncoderWeightsError, match="not found"):
        build_model(ModelConfig(encoder_weights=str(tmp_path / "nope.safetensors")))


def test_pickle_weights_file_is_not_executed(tmp_path):
    import pickle

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    f = tmp_path / "evil.pth"
    f.write_bytes(pickle.dumps({"x": Evil()}))
    with pytest.raises(EncoderWeightsError, match="weights_only"):
        build_model(ModelConfig(encoder_weights=str(f)))
    assert not marker.exists()


def test_offline_imagenet_fails_fast_with_advice(monkeypatch, tmp_path):
    # Not cached (fresh hub cache) and the hub endpoint refuses connections.
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    t0 = time.perf_counter()
    with pytest.raises(EncoderWeightsError) as err:
        build_model(ModelConfig(encoder_name="mobilenet_v2", encoder_weights="imagenet"))
    assert time.perf_counter() - t0 < 10
    msg = str(err.value)
    assert "mobilenet_v2" in msg and "local" in msg and "--encoder-weights" in msg


def test_offline_env_flag_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    with pytest.raises(EncoderWeightsError, match="cannot be reached"):
        build_model(ModelConfig(encoder_name="vgg16", encoder_weights="imagenet"))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"task": "detect"}, "task must be"),
        ({"num_classes": 1}, "num_classes"),
        ({"class_names": ["a", "a", "b"]}, "unique"),
        ({"class_names": ["a"]}, "class names given"),
        ({"dropout": 1.5}, "dropout"),
        ({"in_channels": 1}, "replicated"),
    ],
)
def test_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ModelConfig(**kwargs)


def test_config_round_trip():
    cfg = ModelConfig(encoder_name="vgg16", encoder_weights=None, class_names=["x", "y"], num_classes=2, task="seg")
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    pre = Preprocessing(image_size=128, resize=False)
    assert Preprocessing.from_dict(pre.to_dict()) == pre
    with pytest.raises(ConfigError, match="unknown field"):
        ModelConfig.from_dict({**cfg.to_dict(), "bogus": 1})
    with pytest.raises(ConfigError, match="multiple of 32"):
        Preprocessing(image_size=100)
