"""A checkpoint is read whole from one open file, says one thing once, and is checked by one schema.

- a file replaced by another process while it is being loaded (a training
  run saving) is read from the version that was opened, never mixed;
- fields stated twice (``class_names`` and ``model.class_names``; ``run``
  and ``model``/``preprocessing``) must agree, even when an editor
  recomputed the metadata hash;
- the metadata's configuration is checked by the config dataclasses
  themselves, with the config's limits: changing a limit is one edit.
"""

from __future__ import annotations

import json
import os
import shutil
import threading

import pytest
import torch

from napari_mtunet import checkpoint as ckpt
from napari_mtunet import config as config_module
from napari_mtunet.checkpoint import CheckpointError, load_checkpoint, read_metadata, save_checkpoint
from napari_mtunet.config import ModelConfig, Preprocessing, RunConfig
from napari_mtunet.model import build_model
from napari_mtunet.modelfiles import checkpoint_load
from napari_mtunet.modelfiles.hashing import seal

CLASSES = ["benign", "malignant", "normal"]


def _model(seed: int, **cfg):
    torch.manual_seed(seed)
    return build_model(ModelConfig(encoder_weights=None, class_names=CLASSES, **cfg), Preprocessing(image_size=64)).eval()


def _save(path, model):
    run = RunConfig(model=model.config, preprocessing=model.preprocessing).to_dict()
    return save_checkpoint(path, model, run=run)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pair")
    a, b = _save(folder / "a.safetensors", _model(0)), _save(folder / "b.safetensors", _model(1))
    return a, b, load_checkpoint(a)[1].content_hash, load_checkpoint(b)[1].content_hash


def _rewrite(path, change, *, reseal: bool = True):
    """Edit the metadata of ``path`` in place (resealing it as an editor who knows the format would)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()[ckpt.META_KEY])
    change(meta)
    text = json.dumps(meta)
    save_file(load_file(str(path)), str(path), metadata={ckpt.META_KEY: seal(text) if reseal else text})


# --------------------------------------------------------------------------- one handle


def test_a_file_replaced_during_the_load_is_read_from_the_version_opened(pair, tmp_path, monkeypatch):
    a, b, hash_a, _ = pair
    target = tmp_path / "best.safetensors"
    shutil.copy(a, target)
    real = checkpoint_load.read_tensors

    def replace_then_read(fh, header, where, **kw):
        staged = tmp_path / "incoming.safetensors"
        shutil.copy(b, staged)
        os.replace(staged, target)  # the trainer publishes a new best.safetensors right now
        return real(fh, header, where, **kw)

    monkeypatch.setattr(checkpoint_load, "read_tensors", replace_then_read)
    model, info = load_checkpoint(target)
    assert info.content_hash == hash_a  # the version opened, whole: no "content hash mismatch"
    ref, _ = load_checkpoint(a)
    assert all(torch.equal(x, y) for x, y in zip(ref.state_dict().values(), model.state_dict().values()))


def test_loads_while_another_thread_keeps_replacing_the_file(pair, tmp_path):
    a, b, hash_a, hash_b = pair
    target = tmp_path / "last.safetensors"
    shutil.copy(a, target)
    stop = threading.Event()

    def saver():
        i = 0
        while not stop.is_set():
            staged = tmp_path / f".staged{i % 2}"
            shutil.copy(b if i % 2 else a, staged)
            os.replace(staged, target)
            i += 1

    thread = threading.Thread(target=saver, daemon=True)
    thread.start()
    try:
        seen = set()
        for _ in range(8):
            seen.add(load_checkpoint(target)[1].content_hash)
            seen.add(read_metadata(target)["content_hash"])
    finally:
        stop.set()
        thread.join()
    assert seen <= {hash_a, hash_b}


# --------------------------------------------------------------------------- fields stated twice


@pytest.mark.parametrize("names", [["malignant", "benign", "normal"], ["benign", "malignant", "other"],
                                   ["benign", "malignant"], ["benign", "malignant", "normal", "extra"]])
def test_top_level_class_names_must_equal_the_models(pair, tmp_path, names):
    path = tmp_path / "m.safetensors"
    shutil.copy(pair[0], path)
    _rewrite(path, lambda m: m.update(class_names=names))
    with pytest.raises(CheckpointError, match=r"m\.safetensors: the metadata's class_names .* differ from its "
                                              r"model\.class_names"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="differ from its model.class_names"):
        read_metadata(path)


@pytest.mark.parametrize("part,field,value", [("model", "class_names", ["malignant", "benign", "normal"]),
                                              ("model", "task", "seg"), ("model", "dropout", 0.5),
                                              ("preprocessing", "image_size", 128)])
def test_the_run_config_must_agree_with_the_model(pair, tmp_path, part, field, value):
    path = tmp_path / "m.safetensors"
    shutil.copy(pair[0], path)
    _rewrite(path, lambda m: m["run"][part].update({field: value}))
    with pytest.raises(CheckpointError, match=rf"run configuration disagrees with its model on .*{field}"):
        load_checkpoint(path)


def test_the_initial_encoder_weights_may_differ(pair, tmp_path):
    """A fine-tuned child keeps its parent's run (imagenet) while its model says None: the same network."""
    path = tmp_path / "m.safetensors"
    shutil.copy(pair[0], path)
    _rewrite(path, lambda m: m["run"]["model"].update(encoder_weights="imagenet"))
    load_checkpoint(path)


# --------------------------------------------------------------------------- one schema, one set of limits


def test_the_checkpoint_check_uses_the_configs_limits(pair, tmp_path, monkeypatch):
    assert ckpt.MAX_CLASSES is config_module.MAX_CLASSES and ckpt.MAX_NAME_CHARS is config_module.MAX_NAME_CHARS
    assert not hasattr(checkpoint_load, "_MODEL_SCHEMA")
    monkeypatch.setattr(config_module, "MAX_CLASSES", 2)  # one edit of a limit ...
    with pytest.raises(CheckpointError, match=r"num_classes must be in \[1, 2\]"):  # ... and checkpoints follow
        load_checkpoint(pair[0])
    monkeypatch.setattr(config_module, "MAX_CLASSES", 1000)
    monkeypatch.setattr(config_module, "MAX_NAME_CHARS", 5)
    with pytest.raises(CheckpointError, match="<= 5 characters"):
        read_metadata(pair[0])


@pytest.mark.parametrize("field,value,match", [
    ("num_classes", 10**12, "num_classes must be in"),
    ("dropout", 1e308, "dropout must be in"),
    ("decoder_channels", [16, 16], "one entry per encoder stage"),
    ("encoder_name", "../../etc", "encoder_name must be"),
    ("task", "rm -rf", "task must be one of"),
    ("class_names", ["a", 5, "c"], "class_names"),
    ("surprise", 1, "unknown field"),
])
def test_invalid_model_fields_are_refused_by_the_config_itself(pair, tmp_path, field, value, match):
    path = tmp_path / "m.safetensors"
    shutil.copy(pair[0], path)

    def change(m):
        m["model"][field] = value
        m["run"] = None

    _rewrite(path, change)
    with pytest.raises(CheckpointError, match=rf"m\.safetensors: invalid model configuration in metadata .*{match}"):
        read_metadata(path)


def test_a_new_config_field_needs_no_checkpoint_edit(tmp_path):
    """Fields the config gains (here the prompts of interactive models) are accepted by the checkpoint check."""
    if "prompts" not in {f for f in ModelConfig.__dataclass_fields__}:
        pytest.skip("this ModelConfig has no prompts field")
    path = _save(tmp_path / "p.safetensors", _model(0, prompts=True))
    _, info = load_checkpoint(path)
    assert info.model_config.prompts is True
