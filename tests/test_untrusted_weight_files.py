"""Untrusted checkpoint and weight files: nothing executes, nothing explodes, nothing is written elsewhere.

Already proven in tests/test_checkpoint.py (not repeated here): a protocol-2+
pickle renamed to .safetensors and a torch.save zip are refused without
running code; empty/truncated/garbage/bit-flipped files; plain safetensors
without our metadata; newer format versions; a wrong ``class_names`` type;
the atomic write when ``save_file`` fails half-way (monkeypatched).

Here: every pickle protocol and both torch.save formats through every entry
point (load_checkpoint, Predictor, encoder weights), hand-crafted
safetensors headers (absurd nesting, 5000-digit integers, non-object JSON,
oversized metadata), a schema check of every model/preprocessing field
(types, ranges, sizes: a crafted ``num_classes=10**12`` used to exhaust
memory before this check existed), metadata paths never used for writing,
and a *real* write failure (file-size limit -> EFBIG) in a child process.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from napari_mtunet import checkpoint as ckpt
from napari_mtunet.checkpoint import CheckpointError, load_checkpoint, read_metadata, save_checkpoint

# --------------------------------------------------------------------------- helpers


class _Evil:
    """Unpickling this creates the marker file (i.e. would run attacker code)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _raw_safetensors(path, metadata: dict | None, header_extra: dict | None = None) -> None:
    """Write a safetensors file by hand (any header we like) with one float32 tensor."""
    data = np.zeros(4, np.float32).tobytes()
    header: dict = {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, len(data)]}}
    if metadata is not None:
        header["__metadata__"] = metadata
    header.update(header_extra or {})
    hb = json.dumps(header).encode()
    hb += b" " * (-len(hb) % 8)
    path.write_bytes(struct.pack("<Q", len(hb)) + hb + data)


@pytest.fixture(scope="module")
def good_meta(tmp_path_factory, tiny_model):
    path = save_checkpoint(tmp_path_factory.mktemp("good") / "m.safetensors", tiny_model)
    return read_metadata(path)


# --------------------------------------------------------------------------- no code execution


@pytest.mark.parametrize("fmt", ["p0", "p1", "p2", "p5", "torch_zip", "torch_legacy"])
def test_no_pickle_is_ever_executed_through_any_entry_point(tmp_path, fmt):
    from napari_mtunet.inference import Predictor
    from napari_mtunet.model import EncoderWeightsError, read_state_dict

    marker = tmp_path / "pwned"
    payload = {"w": _Evil(marker)}
    f = tmp_path / "evil.safetensors"
    if fmt.startswith("p"):
        f.write_bytes(pickle.dumps(payload, protocol=int(fmt[1])))
    else:
        torch.save(payload, f, _use_new_zipfile_serialization=(fmt == "torch_zip"))
    assert not marker.exists()  # sanity: writing the file ran nothing

    with pytest.raises(CheckpointError, match="evil.safetensors"):
        load_checkpoint(f)
    with pytest.raises(CheckpointError):
        read_metadata(f)
    with pytest.raises(CheckpointError):
        Predictor(f, device="cpu")
    # the same bytes offered as encoder weights (.pth goes through torch.load(weights_only=True))
    pth = tmp_path / "evil.pth"
    pth.write_bytes(f.read_bytes())
    with pytest.raises(EncoderWeightsError, match="evil.pth"):
        read_state_dict(pth)
    assert not marker.exists(), "a pickle was executed"


# --------------------------------------------------------------------------- crafted headers


def test_crafted_json_headers_give_checkpoint_errors(tmp_path, good_meta):
    deep = "[" * 50_000 + "]" * 50_000
    cases = {
        "deep_nesting": deep,
        "huge_integer": '{"format": "napari-mtunet-checkpoint", "format_version": ' + "9" * 5000 + "}",
        "not_json": "{this is not json",
        "json_list": json.dumps([good_meta]),
        "json_string": json.dumps("napari-mtunet-checkpoint"),
        "json_null": "null",
        "nan_literal": json.dumps({**good_meta, "format_version": float("nan")}),
        "oversized": json.dumps({**good_meta, "extra": {"pad": "x" * (ckpt.MAX_METADATA_BYTES + 1)}}),
    }
    for name, raw in cases.items():
        f = tmp_path / f"{name}.safetensors"
        _raw_safetensors(f, {ckpt.META_KEY: raw})
        with pytest.raises(CheckpointError, match=f"{name}.safetensors"):
            load_checkpoint(f)


def test_malformed_safetensors_structure(tmp_path):
    cases = {
        # metadata values must be strings in safetensors
        "meta_not_string": ({ckpt.META_KEY: {"format": "x"}}, None),
        # tensor data offsets beyond the end of the file
        "offsets_overrun": (None, {"w": {"dtype": "F32", "shape": [10**6], "data_offsets": [0, 4 * 10**6]}}),
        "unknown_dtype": (None, {"w": {"dtype": "PICKLE", "shape": [4], "data_offsets": [0, 16]}}),
    }
    for name, (meta, extra) in cases.items():
        f = tmp_path / f"{name}.safetensors"
        _raw_safetensors(f, meta, extra)
        with pytest.raises(CheckpointError, match=f"{name}.safetensors"):
            load_checkpoint(f)
    # header length field larger than the file
    f = tmp_path / "huge_header_len.safetensors"
    f.write_bytes(struct.pack("<Q", 2**40) + b"{}")
    with pytest.raises(CheckpointError, match="not a safetensors header"):
        load_checkpoint(f)


BAD_FIELDS = [
    ("model", "num_classes", 10**12),  # used to build a 10**12-entry class-name list (memory exhaustion)
    ("model", "num_classes", "3"),
    ("model", "num_classes", 2.5),
    ("model", "num_classes", True),
    ("model", "seg_classes", 10**9),
    ("model", "decoder_channels", [10**6] * 5),
    ("model", "decoder_channels", ["a"] * 5),  # used to escape as a bare ValueError
    ("model", "encoder_depth", 50),
    ("model", "encoder_name", "../../etc/passwd"),
    ("model", "encoder_name", ["mobilenet_v2"]),
    ("model", "skip_connections", "false"),
    ("model", "dropout", None),
    ("model", "class_names", ["x" * 10_000] * 3),
    ("model", "in_channels", 4),
    ("model", "__class__", "os.system"),
    ("preprocessing", "image_size", 2**40),  # a resize-mode Predictor would allocate it
    ("preprocessing", "image_size", "abc"),  # used to escape as a bare ValueError
    ("preprocessing", "mean", "abc"),  # used to escape as a bare ValueError
    ("preprocessing", "mean", [float("nan")] * 3),
    ("preprocessing", "std", [float("inf")] * 3),
    ("preprocessing", "std", [0, 1, 1]),
    ("preprocessing", "resize", "no"),
    ("top", "content_hash", "a" * 10),
    ("top", "class_names", [str(i) for i in range(20_000)]),
    ("top", "parent", {"path": "/"}),
    ("top", "training", ["epochs"]),
]


@pytest.mark.parametrize("section,key,value", BAD_FIELDS, ids=[f"{s}.{k}" for s, k, _ in BAD_FIELDS])
def test_metadata_schema_rejects_bad_types_and_sizes(good_meta, section, key, value):
    meta = copy.deepcopy(good_meta)
    (meta if section == "top" else meta[section])[key] = value
    with pytest.raises(CheckpointError, match="crafted.safetensors"):
        ckpt.validate_metadata(meta, where="crafted.safetensors")


def test_huge_sizes_are_refused_before_any_allocation(tmp_path, tiny_model):
    """In a child process allowed 2 GiB more address space: a crafted file must fail fast, not OOM."""
    path = save_checkpoint(tmp_path / "m.safetensors", tiny_model)
    code = textwrap.dedent(
        f"""
        import copy, json, resource, sys
        from napari_mtunet import checkpoint as ckpt
        from safetensors.torch import load_file, save_file
        src = {str(path)!r}
        base = ckpt.read_metadata(src)
        tensors = load_file(src)
        cases = [("model", "num_classes", 10**12), ("preprocessing", "image_size", 2**40),
                 ("model", "decoder_channels", [10**6] * 5)]
        files = []
        for section, key, value in cases:
            meta = copy.deepcopy(base)
            meta[section][key] = value
            out = src.replace("m.safetensors", key + ".safetensors")
            save_file(tensors, out, metadata={{ckpt.META_KEY: json.dumps(meta)}})
            files.append((key, out))
        # at most 2 GiB more address space than what the interpreter + torch already map
        vm = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1]) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (vm + 2 * 2**30, vm + 2 * 2**30))
        for key, out in files:
            try:
                ckpt.load_checkpoint(out)
            except ckpt.CheckpointError as exc:
                assert key in str(exc), exc
            else:
                sys.exit("accepted " + key)
        print("ALL-REFUSED")
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "ALL-REFUSED" in proc.stdout, proc.stdout + proc.stderr


# --------------------------------------------------------------------------- paths in metadata


def test_paths_in_metadata_are_never_used_for_writing(tmp_path, tiny_model):
    """Parent, split file, data root, out_dir-like strings and class names that look like paths:
    loading, predicting, fine-tuning and resuming write only inside the chosen output folder."""
    from napari_mtunet.inference import Predictor
    from napari_mtunet.training import Trainer
    from array_data import blobs_dataset
    from napari_mtunet.config import FinetuneConfig
    from napari_mtunet.events import drive
    from napari_mtunet.sample_data import write_phantom_dataset
    from napari_mtunet.workflows import iter_finetune

    from napari_mtunet.config import ModelConfig, Preprocessing, TrainConfig
    from napari_mtunet.model import build_model

    victim = tmp_path / "victim"
    victim.mkdir()
    model = build_model(
        ModelConfig(encoder_weights=None, num_classes=2, class_names=["../../victim/pwned", "/etc/cron.d/x"]),
        Preprocessing(image_size=64),
    )
    work = tmp_path / "work"
    evil_training = {
        "train_config": TrainConfig(epochs=1, batch_size=4, amp=False, device="cpu").to_dict(),
        "data_config": {"root": str(victim), "split_file": str(victim / "split.json")},
        "out_dir": str(victim),
        "log_file": "../victim/log.txt",
    }
    src = save_checkpoint(
        work / "src.safetensors",
        model,
        training=evil_training,
        parent=str(victim / "parent.safetensors"),
        extra_metadata={"output": str(victim / "out.png"), "path": "../../victim"},
    )

    def snapshot():
        return sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))

    new = work / "new"
    write_phantom_dataset(new, n=6, size=64, seed=0)
    rows = (new / "labels.csv").read_text().splitlines()
    labels = ["../../victim/pwned", "/etc/cron.d/x"]
    (new / "labels.csv").write_text("\n".join([rows[0], *(f"{r.split(',')[0]},{labels[i % 2]}" for i, r in
                                                         enumerate(rows[1:]))]) + "\n")
    before = snapshot()
    pred = Predictor(src, device="cpu").predict(np.zeros((40, 50), np.uint8))
    assert pred.class_name in labels
    data = blobs_dataset(n=4, size=64)
    out = work / "ft"
    cfg = FinetuneConfig(min_steps=2, max_steps=2, batch_size=4, device="cpu")
    res = drive(iter_finetune(src, new, out, config=cfg))
    resumed = Trainer(None, TrainConfig(epochs=2, batch_size=4, amp=False, device="cpu"), data, out_dir=out,
                      resume_from=res.fit.last_checkpoint).fit()
    assert resumed.epochs_run == 2
    created = sorted(set(snapshot()) - set(before))
    assert created and all(c.startswith(os.path.join("work", "ft")) for c in created), created
    assert list(victim.iterdir()) == []


# --------------------------------------------------------------------------- real write failure


def test_real_write_failure_keeps_previous_checkpoint(tmp_path, tiny_model):
    """A genuine OS-level write error (RLIMIT_FSIZE -> EFBIG, like a full disk) in a child process:
    save_checkpoint raises a CheckpointError naming the file and suggesting a full disk (safetensors
    reported it as its own SafetensorError before), the old file is byte-identical and loads, and no
    temp file is left."""
    path = save_checkpoint(tmp_path / "m.safetensors", tiny_model, metrics={"v": 1})
    before = path.read_bytes()
    code = textwrap.dedent(
        f"""
        import resource, signal, sys
        from napari_mtunet.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
        model, _ = load_checkpoint({str(path)!r})
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # EFBIG instead of a signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
        try:
            save_checkpoint({str(path)!r}, model, metrics={{"v": 2}})
        except CheckpointError as exc:
            assert "m.safetensors" in str(exc) and "disk full" in str(exc), exc
            print("REFUSED", exc)
            sys.exit(0)
        sys.exit("write unexpectedly succeeded")
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "REFUSED" in proc.stdout, proc.stdout + proc.stderr
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]
    _, info = load_checkpoint(path)
    assert info.metrics == {"v": 1}


def test_cli_evaluate_never_writes_where_checkpoint_metadata_points(tmp_path):
    import sys as _sys

    _sys.path.insert(0, os.path.dirname(__file__))
    from data_fixtures import make_generic

    from napari_mtunet.cli import main
    from napari_mtunet.config import DataConfig, ModelConfig, Preprocessing
    from napari_mtunet.model import build_model

    data = make_generic(tmp_path / "data", n=30)
    victim = tmp_path / "victim"
    model = build_model(
        ModelConfig(encoder_weights=None, class_names=["a", "b", "c"], encoder_depth=3, decoder_channels=(16, 16, 16)),
        Preprocessing(image_size=32),
    )
    dcfg = DataConfig(root=str(data), split_file=str(victim / "deep" / "evil.json"), val_fraction=0.2, test_fraction=0.2)
    ckpt = save_checkpoint(tmp_path / "m.safetensors", model, training={"data_config": dcfg.to_dict()})
    rc = main(["evaluate", str(ckpt), str(data), "--split", "test", "--device", "cpu", "--n-boot", "10"])
    assert rc == 0
    assert not victim.exists(), sorted(str(p) for p in victim.rglob("*"))
