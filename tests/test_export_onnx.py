"""ONNX export and the ONNX Runtime Predictor backend: outputs equal to PyTorch's, files never clobbered."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from napari_mtunet.checkpoint import CheckpointError, load_checkpoint, save_checkpoint  # noqa: E402
from napari_mtunet.config import ModelConfig, Preprocessing  # noqa: E402
from napari_mtunet.export import ExportError, export_model, export_onnx  # noqa: E402
from napari_mtunet.export import onnx_model  # noqa: E402
from napari_mtunet.inference import Predictor  # noqa: E402
from napari_mtunet.modelfiles import onnx_runtime  # noqa: E402
from napari_mtunet.modelfiles.errors import OnnxModelError  # noqa: E402
from napari_mtunet.model import build_model  # noqa: E402
from napari_mtunet.sample_data import make_phantom  # noqa: E402

CLASSES = ["benign", "malignant", "normal"]


def confident_model(task: str = "both", seed: int = 0):
    """A random-init model whose mask logits are spread far from 0 (no pixel sits on the threshold)."""
    torch.manual_seed(seed)
    model = build_model(
        ModelConfig(encoder_weights=None, task=task, class_names=CLASSES if task != "seg" else []),
        Preprocessing(image_size=64),
    )
    if model.segmentation_head is not None:
        with torch.no_grad():
            model.segmentation_head[0].weight.mul_(200.0)
    return model.eval()


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MTUNET_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    save_checkpoint(path, confident_model(), metrics={"val_dice": 0.71, "val_dice_ci_low": 0.6, "val_dice_ci_high": 0.8})
    return path


def _run(path, x: np.ndarray) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, {"image": x})))


def test_onnx_round_trip_matches_torch_at_any_batch_and_size(checkpoint, tmp_path):
    out = export_onnx(checkpoint, tmp_path / "model.onnx")
    assert out == tmp_path / "model.onnx" and out.is_file()
    model, info = load_checkpoint(checkpoint)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (inp,) = sess.get_inputs()
    assert inp.name == "image" and inp.shape[1] == 3
    assert all(isinstance(d, str) for d in (inp.shape[0], inp.shape[2], inp.shape[3])), inp.shape  # dynamic
    assert [o.name for o in sess.get_outputs()] == ["mask_logits", "class_logits"]
    rng = np.random.default_rng(1)
    for shape in [(1, 3, 64, 64), (3, 3, 96, 160), (1, 3, 256, 192)]:
        x = rng.random(shape, dtype=np.float32)
        got = _run(out, x)
        with torch.inference_mode():
            ref = model(torch.from_numpy(x))
        assert got["mask_logits"].shape == tuple(ref.seg.shape)
        scale = float(ref.seg.abs().max())
        assert scale > 10  # the logits are far from 0: a real comparison
        np.testing.assert_allclose(got["mask_logits"], ref.seg.numpy(), rtol=0, atol=1e-4 * scale)
        np.testing.assert_allclose(got["class_logits"], ref.cls.numpy(), rtol=1e-4, atol=1e-5)
    meta = sess.get_modelmeta().custom_metadata_map
    assert json.loads(meta["class_names"]) == CLASSES
    assert meta["content_hash"] == info.content_hash
    assert json.loads(meta["mtunet"])["metrics"]["val_dice"] == 0.71
    assert json.loads(meta["mean"]) == list(info.preprocessing.mean)


def test_normalisation_is_inside_the_graph(checkpoint, tmp_path):
    """Same weights, another mean/std: the ONNX outputs change, so the normalisation is part of the graph."""
    model, info = load_checkpoint(checkpoint)
    shifted = build_model(ModelConfig(encoder_weights=None, class_names=CLASSES),
                          Preprocessing(image_size=64, mean=(0.9, 0.8, 0.7), std=(0.3, 0.3, 0.3))).eval()
    state = {k: v for k, v in model.state_dict().items() if k not in ("mean", "std")}
    shifted.load_state_dict(state, strict=False)
    export_onnx(shifted, tmp_path / "shifted.onnx")
    export_onnx(checkpoint, tmp_path / "plain.onnx")
    x = np.full((1, 3, 64, 64), 0.5, np.float32)
    a, b = _run(tmp_path / "shifted.onnx", x), _run(tmp_path / "plain.onnx", x)
    scale = float(np.abs(b["mask_logits"]).max())
    assert np.abs(a["mask_logits"] - b["mask_logits"]).max() > 0.1 * scale
    for out, net in ((a, shifted), (b, model)):
        with torch.inference_mode():
            ref = net(torch.from_numpy(x))
        np.testing.assert_allclose(out["mask_logits"], ref.seg.numpy(), rtol=0, atol=1e-4 * scale)


@pytest.mark.parametrize("task,names", [("seg", ["mask_logits"]), ("cls", ["class_logits"])])
def test_single_task_models_export_only_their_output(task, names, tmp_path):
    model = confident_model(task)
    out = export_onnx(model, tmp_path / f"{task}.onnx")
    x = np.random.default_rng(0).random((2, 3, 64, 96), dtype=np.float32)
    got = _run(out, x)
    assert list(got) == names
    with torch.inference_mode():
        ref = model(torch.from_numpy(x))
    tensor = ref.seg if task == "seg" else ref.cls
    np.testing.assert_allclose(got[names[0]], tensor.numpy(), rtol=1e-4, atol=1e-4 * max(1.0, float(tensor.abs().max())))


def test_export_never_overwrites_and_names_the_file(checkpoint, tmp_path):
    out = tmp_path / "taken.onnx"
    out.write_bytes(b"user data")
    with pytest.raises(ExportError, match="taken.onnx: already exists"):
        export_model(checkpoint, out, "onnx")
    assert out.read_bytes() == b"user data"
    with pytest.raises(ExportError, match=r"must end in \.onnx"):
        export_model(checkpoint, tmp_path / "model.txt", "onnx")
    with pytest.raises(ExportError, match="unknown export format 'tflite'"):
        export_model(checkpoint, tmp_path / "model.tflite", "tflite")
    with pytest.raises(ExportError, match="no such file"):
        export_model(tmp_path / "missing.safetensors", tmp_path / "m.onnx", "onnx")
    assert export_model(checkpoint, out, "onnx", overwrite=True) == out
    assert out.read_bytes()[:9] != b"user data"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left behind


def test_failed_export_leaves_nothing(checkpoint, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise ExportError("ONNX output mask_logits differs from the torch model")

    monkeypatch.setattr(onnx_model, "verify_against_torch", broken)
    with pytest.raises(ExportError, match="differs"):
        export_onnx(checkpoint, tmp_path / "model.onnx")
    assert list(tmp_path.iterdir()) == []


def test_a_pickle_is_refused_before_export(tmp_path):
    bad = tmp_path / "model.safetensors"
    torch.save({"w": torch.zeros(1)}, bad)
    with pytest.raises(ExportError, match="pickle"):
        export_onnx(bad, tmp_path / "model.onnx")


# --------------------------------------------------------------------------- Predictor backend


@pytest.fixture(scope="module")
def images():
    ph = make_phantom(n=2, size=200, seed=5)
    rgb = np.stack([ph.images[1]] * 3, axis=-1)
    return {"grey": ph.images[0], "rgb": rgb, "odd": ph.images[0][:137, :181]}


@pytest.mark.parametrize("mode", ["resize", "native", "tiled"])
def test_onnxruntime_predictor_equals_torch_predictor(checkpoint, images, mode):
    kw = {"tile_size": 64, "batch_size": 3, "mode": mode}
    pt = Predictor(checkpoint, device="cpu", **kw)
    po = Predictor(checkpoint, backend="onnxruntime", **kw)
    assert po.backend == "onnxruntime" and po._ort is not None and pt._ort is None
    for name, img in images.items():
        a, b = pt.predict(img), po.predict(img)
        assert a.mode == b.mode == mode
        assert np.array_equal(a.mask, b.mask), f"{name}: {(a.mask != b.mask).sum()} mask pixels differ"
        assert 0 < a.mask.mean() < 1, "the comparison needs both foreground and background"
        np.testing.assert_allclose(b.class_probabilities, a.class_probabilities, atol=1e-4, rtol=0)
        np.testing.assert_allclose(b.probability, a.probability, atol=1e-4, rtol=0)
        assert (a.class_name, a.model_hash) == (b.class_name, b.model_hash)


def test_onnxruntime_predictor_on_stacks(tmp_path, images):
    model = confident_model()
    stack = np.stack([images["grey"], images["grey"][::-1]])
    pt = Predictor(model, device="cpu", mode="native")
    po = Predictor(model, backend="onnxruntime", mode="native")
    for a, b in zip(pt.predict(stack), po.predict(stack)):
        assert (a.mask != b.mask).mean() < 1e-3  # a pixel may flip only where the probability is 0.5 within float error
        np.testing.assert_allclose(b.probability, a.probability, atol=1e-4, rtol=0)
        np.testing.assert_allclose(b.class_probabilities, a.class_probabilities, atol=1e-4, rtol=0)


def test_several_segmentation_classes_are_refused():
    from napari_mtunet.config import ConfigError

    with pytest.raises(ConfigError, match="seg_classes must be 1"):
        ModelConfig(encoder_weights=None, seg_classes=3)


def test_predictor_runs_an_exported_onnx_file(checkpoint, images, tmp_path):
    onnx_path = export_onnx(checkpoint, tmp_path / "model.onnx")
    pt = Predictor(checkpoint, device="cpu", tile_size=64)
    po = Predictor(onnx_path, backend="onnxruntime", tile_size=64)
    assert po.info.content_hash == pt.info.content_hash and po.class_names == CLASSES
    for mode in ("resize", "tiled"):
        a, b = pt.predict(images["rgb"], mode=mode), po.predict(images["rgb"], mode=mode)
        assert np.array_equal(a.mask, b.mask)
        np.testing.assert_allclose(b.class_probabilities, a.class_probabilities, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="backend='onnxruntime' only"):
        Predictor(onnx_path, device="cpu")
    with pytest.raises(ValueError, match="backend must be one of"):
        Predictor(checkpoint, backend="tensorrt")


def test_onnx_file_not_from_napari_mtunet_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["image"], ["y"])], "g",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])],
    )
    path = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(OnnxModelError, match="foreign.onnx: an ONNX file, but not one exported by napari-mtunet"):
        Predictor(path, backend="onnxruntime")


def test_exported_graph_is_cached_and_a_damaged_cache_is_rebuilt(checkpoint, tmp_path, monkeypatch):
    Predictor(checkpoint, backend="onnxruntime")
    (cached,) = (tmp_path / "cache" / "onnx").glob("*.onnx")
    calls = []
    real = onnx_runtime.onnx_file_for
    monkeypatch.setattr(onnx_runtime, "onnx_file_for", lambda *a, **k: calls.append(1) or real(*a, **k))
    Predictor(checkpoint, backend="onnxruntime")
    assert calls == []  # reused
    cached.write_bytes(b"truncated")
    po = Predictor(checkpoint, backend="onnxruntime")
    assert calls == [1]  # exported again
    assert po.predict(np.zeros((64, 64), np.uint8)).mask.shape == (64, 64)


def test_open_model_refuses_onnx_files(tmp_path):
    from napari_mtunet.export import open_model

    path = tmp_path / "model.onnx"
    path.write_bytes(b"x")
    with pytest.raises(CheckpointError, match="cannot be turned back into a PyTorch model"):
        open_model(path)


def test_an_interactive_model_exports_its_guidance_input_and_runs_prompted_with_onnxruntime(tmp_path):
    """The ONNX file of an interactive checkpoint has the inputs image (3 channels) and guidance (4 channels);
    ONNX Runtime reproduces the torch Predictor with and without prompts."""
    import onnx

    from napari_mtunet.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = build_model(ModelConfig(encoder_weights=None, prompts=True, class_names=CLASSES),
                        Preprocessing(image_size=64)).eval()
    with torch.no_grad():  # as if trained: the guidance weights are no longer zero
        model.encoder.features[0][0].weight[:, 3:] = 0.05
    ckpt = save_checkpoint(tmp_path / "interactive.safetensors", model)
    path = export_onnx(ckpt, tmp_path / "interactive.onnx")
    graph = onnx.load(str(path))
    dims = {i.name: [d.dim_value or d.dim_param for d in i.type.tensor_type.shape.dim] for i in graph.graph.input}
    assert dims == {"image": ["batch", 3, "height", "width"], "guidance": ["batch", 4, "height", "width"]}
    meta = {p.key: p.value for p in graph.metadata_props}
    assert "guidance" in meta["input"] and "positive clicks" in meta["input"]
    image = np.random.default_rng(1).integers(0, 255, (120, 150), dtype=np.uint8)
    pt, po = Predictor(ckpt), Predictor(path, backend="onnxruntime")
    assert po.accepts_prompts
    for prompts in ({}, {"box": (30, 40, 80, 100)}, {"points": [(50, 60, True), (10, 10, False)]}):
        a, b = pt.predict(image, **prompts), po.predict(image, **prompts)
        assert np.array_equal(a.mask, b.mask) and a.region == b.region
        np.testing.assert_allclose(b.probability, a.probability, atol=1e-4, rtol=0)
        np.testing.assert_allclose(b.class_probabilities, a.class_probabilities, atol=1e-4, rtol=0)
