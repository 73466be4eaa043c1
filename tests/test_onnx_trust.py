"""An ONNX graph is verified before anything runs on it: sealed metadata, its own hash, its inputs and outputs.

Each tampered file below is what an editor (or a broken tool) can make of a
genuine export; the graph hash is recomputed where the point is to show
that the *shape* checks catch it on their own.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import helper  # noqa: E402

from napari_mtunet.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from napari_mtunet.config import ModelConfig, Preprocessing  # noqa: E402
from napari_mtunet.export import export_onnx  # noqa: E402
from napari_mtunet.inference import Predictor  # noqa: E402
from napari_mtunet.model import build_model  # noqa: E402
from napari_mtunet.modelfiles import onnx_runtime  # noqa: E402
from napari_mtunet.modelfiles.errors import OnnxModelError  # noqa: E402
from napari_mtunet.modelfiles.hashing import seal  # noqa: E402
from napari_mtunet.modelfiles.onnx_file import check_outputs, read_onnx_info  # noqa: E402
from napari_mtunet.modelfiles.onnx_graph import GRAPH_HASH_KEY, TensorIO, graph_hash, io_spec  # noqa: E402

CLASSES = ["benign", "malignant", "normal"]


def _model(seed: int, task: str = "both"):
    torch.manual_seed(seed)
    return build_model(ModelConfig(encoder_weights=None, task=task, class_names=CLASSES if task != "seg" else []),
                       Preprocessing(image_size=64)).eval()


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MTUNET_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def genuine(tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx")
    ckpt = save_checkpoint(folder / "model.safetensors", _model(0))
    return ckpt, export_onnx(ckpt, folder / "model.onnx")


def _props(proto) -> dict[str, str]:
    return {p.key: p.value for p in proto.metadata_props}


def _set_props(proto, props: dict[str, str]) -> None:
    del proto.metadata_props[:]
    for k, v in props.items():
        e = proto.metadata_props.add()
        e.key, e.value = k, v


def _save(proto, path, *, rehash: bool = True):
    if rehash:
        props = _props(proto)
        props[GRAPH_HASH_KEY] = graph_hash(proto)
        _set_props(proto, props)
    onnx.save(proto, str(path))
    return path


def _reroute(proto, output: str) -> str:
    """Rename the tensor feeding graph output ``output`` to ``<output>_raw``; returns the new name."""
    raw = output + "_raw"
    for node in proto.graph.node:
        node.output[:] = [raw if o == output else o for o in node.output]
    return raw


def _refused(path, match: str) -> None:
    with pytest.raises(OnnxModelError, match=match):
        read_onnx_info(path)
    with pytest.raises(OnnxModelError, match=match):
        Predictor(path, backend="onnxruntime")


# --------------------------------------------------------------------------- metadata


def test_the_genuine_export_opens(genuine):
    ckpt, path = genuine
    info = read_onnx_info(path)
    assert info.class_names == CLASSES and info.content_hash == load_checkpoint(ckpt)[1].content_hash


def test_swapped_class_names_in_the_sealed_metadata_are_detected(genuine, tmp_path):
    proto = onnx.load(str(genuine[1]))
    props = _props(proto)
    meta = json.loads(props["mtunet"])
    swapped = ["malignant", "benign", "normal"]
    meta["class_names"] = meta["model"]["class_names"] = swapped
    props["mtunet"] = json.dumps(meta)
    _set_props(proto, props)
    _refused(_save(proto, tmp_path / "swapped.onnx"), r"swapped\.onnx: metadata hash mismatch")


def test_a_resealed_edit_still_disagrees_with_the_plain_copies(genuine, tmp_path):
    proto = onnx.load(str(genuine[1]))
    props = _props(proto)
    meta = json.loads(props["mtunet"])
    swapped = ["malignant", "benign", "normal"]
    meta["class_names"] = meta["model"]["class_names"] = swapped
    props["mtunet"] = seal(json.dumps(meta))  # the editor recomputed the metadata hash
    _set_props(proto, props)
    _refused(_save(proto, tmp_path / "resealed.onnx"), r"resealed\.onnx: metadata entry 'class_names'")
    for key, value in (("task", "seg"), ("mean", "[0.1, 0.2, 0.3]"), ("content_hash", "0" * 64)):
        proto = onnx.load(str(genuine[1]))
        props = _props(proto)
        props[key] = value
        _set_props(proto, props)
        _refused(_save(proto, tmp_path / f"{key}.onnx"), f"metadata entry '{key}'")


def test_missing_metadata_or_hashes_are_refused(genuine, tmp_path):
    for key, match in (("mtunet", "not one exported by napari-mtunet"), (GRAPH_HASH_KEY, "no 'graph_sha256'")):
        proto = onnx.load(str(genuine[1]))
        props = _props(proto)
        del props[key]
        _set_props(proto, props)
        _refused(_save(proto, tmp_path / f"no_{key}.onnx", rehash=False), match)
    proto = onnx.load(str(genuine[1]))
    props = _props(proto)
    meta = json.loads(props["mtunet"])
    del meta["hash_version"], meta["metadata_hash"]  # an unsealed document
    props["mtunet"] = json.dumps(meta)
    _set_props(proto, props)
    _refused(_save(proto, tmp_path / "unsealed.onnx"), "metadata hash mismatch")


def test_edited_weights_change_the_graph_hash(genuine, tmp_path):
    proto = onnx.load(str(genuine[1]))
    init = max(proto.graph.initializer, key=lambda t: len(t.raw_data))
    arr = onnx.numpy_helper.to_array(init).copy()
    arr.reshape(-1)[0] += 1.0
    init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
    _refused(_save(proto, tmp_path / "weights.onnx", rehash=False), r"weights\.onnx: graph hash mismatch")


# --------------------------------------------------------------------------- shapes (graph hash recomputed)


def _concat(proto, output: str, copies: int, axis: int) -> None:
    raw = _reroute(proto, output)
    proto.graph.node.append(helper.make_node("Concat", [raw] * copies, [output], axis=axis))


def _slice_classes(proto, keep: int) -> None:
    raw = _reroute(proto, "class_logits")
    consts = [helper.make_tensor(n, onnx.TensorProto.INT64, [1], [v]) for n, v in
              (("s0", 0), ("s1", keep), ("s2", 1))]
    proto.graph.initializer.extend(consts)
    proto.graph.node.append(helper.make_node("Slice", [raw, "s0", "s1", "s2"], ["class_logits"]))


def _one_pixel_mask(proto) -> None:
    raw = _reroute(proto, "mask_logits")
    proto.graph.node.append(helper.make_node("ReduceMean", [raw], ["mask_logits"], axes=[2, 3], keepdims=1))


TAMPERED = {
    "a 1x1 mask stretched over the image": (_one_pixel_mask, "output 'mask_logits' has shape \\(2, 1, 1, 1\\)"),
    "5 logits under 3 names": (lambda p: _concat(p, "class_logits", 2, 1) or _slice_classes_after(p, 5),
                               "output 'class_logits' has shape \\(2, 5\\)"),
    "2 logits for 3 names": (lambda p: _slice_classes(p, 2), "output 'class_logits' has shape \\(2, 2\\)"),
    "3 mask channels for 1 class": (lambda p: _concat(p, "mask_logits", 3, 1),
                                    "output 'mask_logits' has shape \\(2, 3, 64, 96\\)"),
    "batch 4 for batch 1": (lambda p: _concat(p, "class_logits", 4, 0), "output 'class_logits' has shape \\(8, 3\\)"),
}


def _slice_classes_after(proto, keep: int) -> None:
    """After a Concat of two copies (6 logits), keep ``keep`` of them."""
    node = proto.graph.node[-1]
    node.output[:] = ["class_six"]
    consts = [helper.make_tensor(n, onnx.TensorProto.INT64, [1], [v]) for n, v in
              (("t0", 0), ("t1", keep), ("t2", 1))]
    proto.graph.initializer.extend(consts)
    proto.graph.node.append(helper.make_node("Slice", ["class_six", "t0", "t1", "t2"], ["class_logits"]))


@pytest.mark.parametrize("case", sorted(TAMPERED))
def test_outputs_that_contradict_the_metadata_are_refused_on_open(genuine, tmp_path, case):
    edit, match = TAMPERED[case]
    proto = onnx.load(str(genuine[1]))
    edit(proto)
    path = _save(proto, tmp_path / "tampered.onnx")
    _refused(path, match)


def test_declared_shapes_are_checked_too(genuine, tmp_path):
    proto = onnx.load(str(genuine[1]))
    out = next(o for o in proto.graph.output if o.name == "class_logits")
    out.type.tensor_type.shape.dim[1].dim_value = 5
    _refused(_save(proto, tmp_path / "declared.onnx"), "output 'class_logits' has size 5 on axis 1; its metadata "
                                                       "describes 3")
    proto = onnx.load(str(genuine[1]))
    proto.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 4
    _refused(_save(proto, tmp_path / "four.onnx"), "input 'image' has size 4 on axis 1")
    proto = onnx.load(str(genuine[1]))
    proto.graph.output[0].name = "mask_probability"
    _reroute(proto, "mask_logits")
    proto.graph.node.append(helper.make_node("Identity", ["mask_logits_raw"], ["mask_probability"]))
    _refused(_save(proto, tmp_path / "renamed.onnx"), r"outputs are \['mask_probability', 'class_logits'\]")


def test_an_output_shape_that_changes_with_the_input_is_refused_at_the_call(genuine, tmp_path):
    """Right for the dry run's size, wrong for another: every call checks its outputs."""
    proto = onnx.load(str(genuine[1]))
    raw = _reroute(proto, "mask_logits")
    consts = [helper.make_tensor("c0", onnx.TensorProto.INT64, [2], [0, 0]),
              helper.make_tensor("c1", onnx.TensorProto.INT64, [2], [64, 96]),
              helper.make_tensor("c2", onnx.TensorProto.INT64, [2], [2, 3])]
    proto.graph.initializer.extend(consts)
    proto.graph.node.append(helper.make_node("Slice", [raw, "c0", "c1", "c2"], ["mask_logits"]))
    path = _save(proto, tmp_path / "crop.onnx")
    p = Predictor(path, backend="onnxruntime", mode="native")
    p.predict(np.zeros((64, 96), np.uint8))  # the dry run's size passes
    with pytest.raises(OnnxModelError, match=r"crop\.onnx: output 'mask_logits' has shape \(1, 1, 64, 96\).*"
                                             r"\(1, 1, 128, 128\)"):
        p.predict(np.zeros((128, 128), np.uint8))


def test_check_outputs_names_the_axis_sizes():
    spec = [TensorIO("class_logits", ("batch", 3))]
    check_outputs([np.zeros((2, 3), np.float32)], spec, {"batch": 2}, "m.onnx")
    with pytest.raises(OnnxModelError, match="returned 2 outputs"):
        check_outputs([np.zeros((2, 3))] * 2, spec, {"batch": 2}, "m.onnx")
    with pytest.raises(OnnxModelError, match="not floating-point"):
        check_outputs([np.zeros((2, 3), np.int64)], spec, {"batch": 2}, "m.onnx")


def test_io_spec_reads_channels_and_classes_from_the_config():
    cfg = ModelConfig(encoder_weights=None, num_classes=4, class_names=["a", "b", "c", "d"])
    inputs, outputs = io_spec(cfg)
    assert [i.dims for i in inputs] == [("batch", 3, "height", "width")]
    assert [o.dims for o in outputs] == [("batch", 1, "height", "width"), ("batch", 4)]
    prompted = ModelConfig(encoder_weights=None, num_classes=4, class_names=["a", "b", "c", "d"], prompts=True)
    assert [(i.name, i.dims[1]) for i in io_spec(prompted)[0]] == [("image", 3), ("guidance", 4)]
    assert [i.name for i in io_spec(prompted, probabilities=True)[0]] == ["image"]  # bioimage.io: automatic only
    assert [o.name for o in io_spec(ModelConfig(encoder_weights=None, task="seg"), probabilities=True)[1]] == [
        "mask_probability"]


# --------------------------------------------------------------------------- the cache


def _cached_file(tmp_path):
    (cached,) = (tmp_path / "cache" / "onnx").glob("*.onnx")
    return cached


def test_a_cache_file_replaced_by_another_models_graph_is_not_used(genuine, tmp_path, monkeypatch):
    ckpt, _ = genuine
    image = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    want = Predictor(ckpt, mode="native").predict(image)
    Predictor(ckpt, backend="onnxruntime")
    cached = _cached_file(tmp_path)
    other = tmp_path / "other.onnx"
    export_onnx(_model(1), other)
    calls = []
    real = onnx_runtime.onnx_file_for
    monkeypatch.setattr(onnx_runtime, "onnx_file_for", lambda *a, **k: calls.append(1) or real(*a, **k))

    # 1. another model's graph under the cached name
    cached.write_bytes(other.read_bytes())
    got = Predictor(ckpt, backend="onnxruntime", mode="native").predict(image)
    assert calls == [1]
    np.testing.assert_allclose(got.class_probabilities, want.class_probabilities, atol=1e-4)

    # 2. another model's graph carrying the genuine metadata, named by its own hash: only the numbers tell
    genuine_props = _props(onnx.load(str(_cached_file(tmp_path))))
    proto = onnx.load(str(other))
    _set_props(proto, genuine_props)
    forged = tmp_path / "forged.onnx"
    _save(proto, forged)
    import hashlib

    data = forged.read_bytes()
    key = _cached_file(tmp_path).stem.split("-")[0]
    for f in (tmp_path / "cache" / "onnx").glob("*.onnx"):
        f.unlink()
    (tmp_path / "cache" / "onnx" / f"{key}-{hashlib.sha256(data).hexdigest()}.onnx").write_bytes(data)
    got = Predictor(ckpt, backend="onnxruntime", mode="native").predict(image)
    assert calls == [1, 1]
    np.testing.assert_allclose(got.class_probabilities, want.class_probabilities, atol=1e-4)
    assert len(list((tmp_path / "cache" / "onnx").glob("*.onnx"))) == 1  # the forged file is gone


def test_a_valid_cache_is_reused_without_exporting(genuine, tmp_path, monkeypatch):
    ckpt, _ = genuine
    Predictor(ckpt, backend="onnxruntime")
    cached = _cached_file(tmp_path)
    import hashlib

    assert cached.stem.endswith(hashlib.sha256(cached.read_bytes()).hexdigest())  # named by its own hash
    monkeypatch.setattr(onnx_runtime, "onnx_file_for", lambda *a, **k: pytest.fail("exported again"))
    Predictor(ckpt, backend="onnxruntime")
