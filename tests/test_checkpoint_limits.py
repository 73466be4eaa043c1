"""Checkpoints whose metadata or weights lie: refused before anything large is built or any weight is trusted.

- a forged checkpoint whose metadata describes a far larger network than its
  tensors (hashes recomputed, so only the architecture check can catch it)
  is refused before the network is allocated (child process with a 1 GiB
  address-space allowance); a file declaring more than ``MAX_PARAMETERS``
  values is refused from its header (a sparse file: no disk used);
  ``image_size`` is bounded by 4096;
- NaN/inf weights, integer-typed weights and normalisation buffers that
  differ from the metadata are refused at load, naming the file and tensor;
- a folder, FIFO, symlink loop, broken link or NUL byte given as a
  checkpoint gets its own message; a missing file is still "no such
  checkpoint file";
- bad training metadata (``invalid literal for int()``, ``'str' object has no
  attribute 'get'``, ``embedded null byte``, ``missing 'optimizer'``) is a
  CheckpointError naming the file, the field and the fix;
- the metadata hash covers the metadata (hash version 2); older files whose
  hash covers the tensors only still load, and ``content_hash`` (by which
  parents are recorded) is unchanged;
- ``napari_mtunet.checkpoint`` imports, and ``read_metadata`` runs, without torch.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap

import pytest
import torch

from napari_mtunet import checkpoint as ckpt
from napari_mtunet.checkpoint import CheckpointError, load_checkpoint, read_metadata, save_checkpoint


def _forge(src, dst, change=None, *, tensors_change=None, reseal=True):
    """Rewrite a checkpoint's metadata and/or tensors; ``reseal`` recomputes both hashes (a careful forger)."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(src))
    meta = read_metadata(src)
    if tensors_change is not None:
        tensors_change(tensors)
        meta["content_hash"] = ckpt.content_hash(tensors)
    if change is not None:
        change(meta)
    if reseal and meta.get("hash_version") == 2:
        meta["metadata_hash"] = ckpt.metadata_hash(meta)
    save_file(tensors, str(dst), metadata={ckpt.META_KEY: json.dumps(meta)})
    return dst


@pytest.fixture()
def saved(tmp_path, tiny_model):
    return save_checkpoint(tmp_path / "m.safetensors", tiny_model)


# --------------------------------------------------------------------------- item 2: sizes


def test_forged_architecture_is_refused_before_allocation(tmp_path, saved):
    """decoder_channels=[2048]*5 over the tiny model's 26 MB of tensors (a 1.5 GB network): refused with
    the shape mismatch in a child that may map only 1 GiB more; before, the model was built first."""
    forged = _forge(saved, tmp_path / "forged.safetensors",
                    lambda m: m["model"].update(decoder_channels=[2048] * 5))
    code = textwrap.dedent(
        f"""
        import resource, sys
        from napari_mtunet import checkpoint as ckpt
        import torch  # mapped before the limit: only the load itself is measured
        vm = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1]) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (vm + 2**30, vm + 2**30))
        try:
            ckpt.load_checkpoint({str(forged)!r})
        except ckpt.CheckpointError as exc:
            msg = str(exc)
            assert "forged.safetensors" in msg and "do not fit" in msg and "decoder" in msg, msg
            print("REFUSED", msg)
            sys.exit(0)
        sys.exit("accepted")
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "REFUSED" in proc.stdout, proc.stdout + proc.stderr[-3000:]


def test_declared_tensor_sizes_are_bounded_from_the_header(tmp_path):
    """A (sparse) file whose header honestly declares 1.1e9 float32 values: refused from the header."""
    n = 1_100_000_000  # 4.4 GB of float32
    assert n > getattr(ckpt, "MAX_PARAMETERS", 10**9)
    header = {
        "__metadata__": {ckpt.META_KEY: "{}"},
        "w": {"dtype": "F32", "shape": [n], "data_offsets": [0, 4 * n]},
    }
    hb = json.dumps(header).encode()
    hb += b" " * (-len(hb) % 8)
    f = tmp_path / "huge.safetensors"
    with open(f, "wb") as fh:
        fh.write(struct.pack("<Q", len(hb)) + hb)
        fh.truncate(8 + len(hb) + 4 * n)  # sparse: no blocks allocated
    code = textwrap.dedent(
        f"""
        import resource, sys
        from napari_mtunet import checkpoint as ckpt
        import torch, safetensors.torch
        vm = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1]) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (vm + 2**30, vm + 2**30))
        for fn in (ckpt.read_metadata, ckpt.load_checkpoint):
            try:
                fn({str(f)!r})
            except ckpt.CheckpointError as exc:
                assert "huge.safetensors" in str(exc) and "declares" in str(exc), exc
            else:
                sys.exit("accepted")
        print("REFUSED")
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "REFUSED" in proc.stdout, proc.stdout + proc.stderr[-3000:]


@pytest.mark.parametrize("size", [4128, 8192, 16384])
def test_image_size_is_bounded_with_a_clear_message(tmp_path, saved, size):
    forged = _forge(saved, tmp_path / "big_input.safetensors", lambda m: m["preprocessing"].update(image_size=size))
    with pytest.raises(CheckpointError, match=r"big_input\.safetensors.*image_size.*4096") as err:
        load_checkpoint(forged)
    assert f"got {size}" in str(err.value)  # the limit and the value found, from the config's own check


# --------------------------------------------------------------------------- item 3: weights


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights_are_refused_naming_file_and_tensor(tmp_path, tiny_model, bad):
    from napari_mtunet.inference import Predictor

    model = _copy(tiny_model)
    name = "decoder.blocks.0.conv1.0.weight"
    with torch.no_grad():
        model.state_dict()[name].view(-1)[7] = bad
    path = save_checkpoint(tmp_path / "diverged.safetensors", model)  # valid hashes: only the values are wrong
    for entry in (load_checkpoint, lambda p: Predictor(p, device="cpu")):
        with pytest.raises(CheckpointError, match=r"diverged\.safetensors") as err:
            entry(path)
        assert name in str(err.value) and "NaN/infinite" in str(err.value)


def test_non_finite_optimizer_state_is_refused(tmp_path, tiny_model):
    path = save_checkpoint(tmp_path / "m.safetensors", tiny_model,
                           extra_tensors={"optimizer/0/exp_avg": torch.tensor([1.0, float("nan")])})
    with pytest.raises(CheckpointError, match="optimizer/0/exp_avg"):
        load_checkpoint(path)


def test_integer_typed_weights_are_refused(tmp_path, saved):
    name = "segmentation_head.0.weight"

    def to_int(t):
        t[name] = (t[name] * 1000).to(torch.int32)

    forged = _forge(saved, tmp_path / "ints.safetensors", tensors_change=to_int)
    with pytest.raises(CheckpointError, match=r"ints\.safetensors") as err:
        load_checkpoint(forged)
    assert name in str(err.value) and "I32" in str(err.value) and "floating-point" in str(err.value)


def test_normalisation_buffers_must_match_the_metadata(tmp_path, saved):
    def zero_std(t):
        t["std"] = torch.zeros_like(t["std"])  # every output would be inf/NaN

    forged = _forge(saved, tmp_path / "std0.safetensors", tensors_change=zero_std)
    with pytest.raises(CheckpointError, match=r"std0\.safetensors.*normalisation std"):
        load_checkpoint(forged)


# --------------------------------------------------------------------------- item 9: paths


def test_each_kind_of_non_file_gets_its_own_message(tmp_path, saved):
    from napari_mtunet.inference import Predictor

    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "best.safetensors").write_bytes(saved.read_bytes())
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    loop = tmp_path / "loop.safetensors"
    os.symlink(loop, loop)
    broken = tmp_path / "broken.safetensors"
    os.symlink(tmp_path / "gone.safetensors", broken)
    cases = {
        str(folder): r"is a folder, not a checkpoint file.*best\.safetensors",
        str(fifo): r"is a FIFO \(named pipe\), not a regular checkpoint file",
        str(loop): r"is a symbolic link loop",
        str(broken): r"is a broken symbolic link",
        str(tmp_path / "a\0b.safetensors"): r"contains a NUL byte",
        str(tmp_path / "missing.safetensors"): r"missing\.safetensors: no such checkpoint file",
    }
    for path, pattern in cases.items():
        for entry in (read_metadata, load_checkpoint, lambda p: Predictor(p, device="cpu")):
            with pytest.raises(CheckpointError, match=pattern):
                entry(path)
        assert ckpt.check_checkpoint_path(saved) == saved


# --------------------------------------------------------------------------- item 9: metadata errors


def _set(path_in_meta, value):
    def change(meta):
        *parents, last = path_in_meta
        d = meta
        for p in parents:
            d = d.setdefault(p, {})
        d[last] = value

    return change


def _resume(**overrides):
    state = {"epoch": 2, "best_value": 0.5, "best_epoch": 1, "bad_epochs": 1, "history": [],
             "optimizer": {"param_groups": [{"lr": 0.001, "params": [0]}], "scalars": {}},
             "scheduler": None, "scaler": None}
    state.update(overrides)
    return json.dumps({k: v for k, v in state.items() if v is not ...})


BAD_TRAINING = {
    # was: ValueError: invalid literal for int() with base 10: 'abc'
    "epochs_text": (("training", "train_config"), {"epochs": "abc", "batch_size": 4}, "training.train_config"),
    # was: AttributeError: 'str' object has no attribute 'get'
    "data_config_string": (("training", "data_config"), "busi", "training.data_config"),
    # was: ValueError: embedded null byte
    "nul_in_root": (("training", "data_config"), {"root": "/data/\0busi"}, "NUL byte"),
    "nul_in_parent": (("parent",), "a\0b.safetensors", "'parent' contains a NUL byte"),
    # was: KeyError: 'optimizer'
    "resume_without_optimizer": (("extra", "resume"), _resume(optimizer=...), "lacks 'optimizer'"),
    "resume_not_json": (("extra", "resume"), "{epoch: 2", "'extra.resume' is not valid JSON"),
    "resume_epoch_text": (("extra", "resume"), _resume(epoch="2"), "'extra.resume.epoch'"),
    "history_string": (("training", "history"), "many", "'training.history'"),
    "hash_version_text": (("hash_version",), "2", "'hash_version'"),
}


@pytest.mark.parametrize("case", sorted(BAD_TRAINING))
def test_bad_metadata_names_file_field_and_fix(tmp_path, saved, case):
    where, value, expected = BAD_TRAINING[case]
    forged = _forge(saved, tmp_path / f"{case}.safetensors", _set(where, value))
    with pytest.raises(CheckpointError) as err:
        read_metadata(forged)
    msg = str(err.value)
    assert f"{case}.safetensors" in msg and expected in msg, msg
    assert any(fix in msg for fix in ("use an intact copy", "resume from an intact", "Upgrade")), msg
    for raw in ("invalid literal", "has no attribute", "embedded null byte", "KeyError"):
        assert raw not in msg, msg


def test_resume_from_a_checkpoint_without_optimizer_state_is_a_checkpoint_error(tmp_path, saved):
    from napari_mtunet.config import TrainConfig
    from napari_mtunet.training import Trainer
    from array_data import blobs_dataset

    forged = _forge(saved, tmp_path / "last.safetensors", _set(("extra", "resume"), _resume(optimizer=...)))
    with pytest.raises(CheckpointError, match=r"last\.safetensors.*lacks 'optimizer'"):
        Trainer(None, TrainConfig(epochs=2, batch_size=2, amp=False, device="cpu"), blobs_dataset(n=4, size=64),
                out_dir=tmp_path / "out", resume_from=forged)


# --------------------------------------------------------------------------- item 9: hashes


def test_metadata_hash_covers_the_metadata(tmp_path, saved, tiny_model):
    meta = read_metadata(saved)
    assert meta["hash_version"] == 2 and meta["metadata_hash"] == ckpt.metadata_hash(meta)
    # the tensor hash (parents are recorded by it) is what it always was
    assert meta["content_hash"] == ckpt.info_for_model(tiny_model).content_hash
    edited = _forge(saved, tmp_path / "edited.safetensors", _set(("metrics", "val_dice"), 0.99), reseal=False)
    for entry in (read_metadata, load_checkpoint):
        with pytest.raises(CheckpointError, match=r"edited\.safetensors: metadata hash mismatch"):
            entry(edited)
    _, info = load_checkpoint(edited, verify_hash=False)  # the explicit opt-out still works
    assert info.metrics["val_dice"] == 0.99


def test_checkpoints_with_a_tensor_only_hash_still_load(tmp_path, saved, tiny_model):
    def legacy(meta):
        meta.pop("hash_version")
        meta.pop("metadata_hash")

    old = _forge(saved, tmp_path / "old.safetensors", legacy, reseal=False)
    model, info = load_checkpoint(old)
    assert "hash_version" not in info.metadata
    assert info.content_hash == ckpt.info_for_model(tiny_model).content_hash
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x).cls, tiny_model(x).cls)
    # and its tensors are still protected by the tensor hash
    damaged = _forge(old, tmp_path / "old_damaged.safetensors", reseal=False,
                     tensors_change=lambda t: t["segmentation_head.0.bias"].add_(1.0))
    meta = read_metadata(damaged)
    meta["content_hash"] = read_metadata(old)["content_hash"]
    from safetensors.torch import load_file, save_file

    save_file(load_file(str(damaged)), str(damaged), metadata={ckpt.META_KEY: json.dumps(meta)})
    with pytest.raises(CheckpointError, match="content hash mismatch"):
        load_checkpoint(damaged)


def test_newer_hash_version_is_refused_with_upgrade_advice(tmp_path, saved):
    forged = _forge(saved, tmp_path / "future.safetensors", _set(("hash_version",), 3))
    with pytest.raises(CheckpointError, match=r"future\.safetensors.*newer napari-mtunet.*Upgrade"):
        read_metadata(forged)


# --------------------------------------------------------------------------- item 9: no torch on the GUI thread


def test_read_metadata_runs_without_importing_torch(saved):
    code = textwrap.dedent(
        f"""
        import sys
        import napari_mtunet.checkpoint as ckpt
        meta = ckpt.read_metadata({str(saved)!r})
        assert meta["class_names"] == ["benign", "malignant", "normal"], meta["class_names"]
        ckpt.check_checkpoint_path({str(saved)!r})
        loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
        print("TORCH", loaded[:5])
        sys.exit(1 if loaded else 0)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]


def _copy(model):
    import copy

    return copy.deepcopy(model)
