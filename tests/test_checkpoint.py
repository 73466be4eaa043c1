"""Checkpoints: round trip, no unpickling, corruption, atomic writes, version checks."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from napari_mtunet import checkpoint as ckpt
from napari_mtunet.checkpoint import CheckpointError, load_checkpoint, read_metadata, save_checkpoint
from napari_mtunet.config import ModelConfig, Preprocessing
from napari_mtunet.model import build_model


def test_round_trip_identical_outputs_and_metadata(tmp_path, tiny_model):
    path = save_checkpoint(
        tmp_path / "m.safetensors", tiny_model, training={"epochs": 3}, metrics={"dice": 0.8}, parent="p.safetensors"
    )
    model, info = load_checkpoint(path)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        a, b = tiny_model(x), model(x)
    assert torch.equal(a.seg, b.seg) and torch.equal(a.cls, b.cls)
    assert info.class_names == ["benign", "malignant", "normal"]
    assert info.preprocessing == tiny_model.preprocessing
    assert info.metrics == {"dice": 0.8} and info.training == {"epochs": 3} and info.parent == "p.safetensors"
    assert info.model_config.encoder_weights is None
    assert len(info.content_hash) == 64 and info.short_hash in info.describe()
    assert read_metadata(path)["package_version"]


def test_extra_tensors_round_trip(tmp_path, tiny_model):
    extra = {"optimizer/0/exp_avg": torch.arange(5.0)}
    path = save_checkpoint(tmp_path / "m.safetensors", tiny_model, extra_tensors=extra, extra_metadata={"epoch": 4})
    _, info = load_checkpoint(path)
    assert torch.equal(info.extra_tensors["optimizer/0/exp_avg"], extra["optimizer/0/exp_avg"])
    assert info.metadata["extra"] == {"epoch": 4}


def test_pickle_renamed_is_rejected_without_running_code(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = tmp_path / "evil.safetensors"
    evil.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(CheckpointError, match="pickle"):
        load_checkpoint(evil)
    assert not marker.exists()

    torch_file = tmp_path / "torchsave.safetensors"
    torch.save({"w": torch.zeros(2)}, torch_file)
    with pytest.raises(CheckpointError, match="zip archive"):
        load_checkpoint(torch_file)


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage", "flipped"])
def test_corrupt_files_give_clear_errors(tmp_path, tiny_model, damage):
    path = save_checkpoint(tmp_path / "m.safetensors", tiny_model)
    data = bytearray(path.read_bytes())
    if damage == "empty":
        data = bytearray()
    elif damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "garbage":
        data = bytearray(b"hello world, not a checkpoint at all" * 10)
    else:  # flip a byte inside the tensor payload
        data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=str(path.name)):
        load_checkpoint(path)


def test_plain_safetensors_without_metadata_is_rejected(tmp_path):
    from safetensors.torch import save_file

    f = tmp_path / "other.safetensors"
    save_file({"a": torch.zeros(3)}, str(f))
    with pytest.raises(CheckpointError, match="not a napari-mtunet checkpoint"):
        read_metadata(f)


def _rewrite_metadata(path, change):
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()[ckpt.META_KEY])
    change(meta)
    save_file(load_file(str(path)), str(path), metadata={ckpt.META_KEY: json.dumps(meta)})


def test_newer_format_version_is_refused(tmp_path, tiny_model):
    path = save_checkpoint(tmp_path / "m.safetensors", tiny_model)
    _rewrite_metadata(path, lambda m: m.update(format_version=ckpt.FORMAT_VERSION + 1))
    with pytest.raises(CheckpointError, match="newer napari-mtunet"):
        load_checkpoint(path)


def test_metadata_types_are_validated(tmp_path, tiny_model):
    path = save_checkpoint(tmp_path / "m.safetensors", tiny_model)
    _rewrite_metadata(path, lambda m: m.update(class_names="benign"))
    with pytest.raises(CheckpointError, match="class_names"):
        load_checkpoint(path)
    path2 = save_checkpoint(tmp_path / "m2.safetensors", tiny_model)
    _rewrite_metadata(path2, lambda m: m["model"].update(task="rm -rf"))
    with pytest.raises(CheckpointError, match="invalid model configuration"):
        load_checkpoint(path2)


def test_mismatched_shapes_give_clear_error(tmp_path, tiny_model):
    path = save_checkpoint(tmp_path / "m.safetensors", tiny_model)

    def four_classes(m):
        m["model"]["num_classes"] = 4
        m["model"]["class_names"] = m["class_names"] = ["a", "b", "c", "d"]
        m["run"] = None

    _rewrite_metadata(path, four_classes)
    with pytest.raises(CheckpointError, match="wrong shape"):
        load_checkpoint(path, verify_hash=False)


def test_atomic_write_keeps_previous_file_on_crash(tmp_path, tiny_model, monkeypatch):
    path = save_checkpoint(tmp_path / "m.safetensors", tiny_model, metrics={"v": 1})
    before = path.read_bytes()

    import safetensors.torch as st

    real = st.save_file

    def crash_midway(tensors, filename, metadata=None):
        real(tensors, filename, metadata=metadata)
        with open(filename, "r+b") as fh:  # half-written file, then the process "dies"
            fh.truncate(1000)
        raise OSError("No space left on device")

    monkeypatch.setattr(st, "save_file", crash_midway)
    other = build_model(ModelConfig(encoder_weights=None), Preprocessing(image_size=64))
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(path, other, metrics={"v": 2})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temp file left behind
    _, info = load_checkpoint(path)
    assert info.metrics == {"v": 1}


def test_wrong_suffix_and_non_model(tmp_path, tiny_model):
    with pytest.raises(CheckpointError, match="must end in"):
        save_checkpoint(tmp_path / "m.pt", tiny_model)
    with pytest.raises(CheckpointError, match="MultiTaskUNet"):
        save_checkpoint(tmp_path / "m.safetensors", torch.nn.Linear(2, 2))
    with pytest.raises(CheckpointError, match="no such"):
        load_checkpoint(tmp_path / "missing.safetensors")
