"""Names and paths reach terminals escaped, and unsafe class names never enter a model or a dataset.

An escape sequence in a class name retitled the terminal and cleared the
screen; a right-to-left override showed a name reversed; a lone surrogate
loaded and then failed at the end of a prediction.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from napari_mtunet import textsafe
from napari_mtunet.checkpoint import CheckpointError, load_checkpoint, read_metadata, save_checkpoint
from napari_mtunet.cli import main
from napari_mtunet.config import ConfigError, ModelConfig, Preprocessing
from napari_mtunet.model import build_model
from napari_mtunet.modelfiles.hashing import seal

#: Names that must never be printed raw: terminal control, C1 control, bidi overrides, separators, surrogates.
HOSTILE = {
    "osc title + clear screen": "\x1b]0;pwned\x07\x1b[2J",
    "csi colour": "benign\x1b[31m",
    "c1 csi": "benign\x9b2J",
    "bell": "ding\x07",
    "delete": "del\x7f",
    "right-to-left override": "tumour\u202egnp.exe",
    "left-to-right isolate": "\u2066benign\u2069",
    "arabic letter mark": "a\u061cb",
    "line separator": "two\u2028lines",
    "lone surrogate": "bad\udcff",
    "carriage return": "over\rwrite",
}
RAW = ["\x1b", "\x07", "\x9b", "\x7f", "\u202e", "\u2066", "\u061c", "\u2028", "\udcff", "\r"]


def _clean(text: str) -> None:
    for ch in RAW:
        assert ch not in text, (repr(ch), text[:300])


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_escape_makes_any_name_printable(case):
    name = HOSTILE[case]
    shown = textsafe.escape(name)
    _clean(shown)
    shown.encode("utf-8")  # a lone surrogate no longer breaks printing
    assert textsafe.unsafe_characters(name)
    with pytest.raises(ValueError, match="refused in names") as err:
        textsafe.check_name(name)
    _clean(str(err.value))


def test_ordinary_names_pass_untouched():
    for name in ("benign", "Gleason 4+3", "tumeur bénigne", "良性", "ورم", "naïve-B_cell.2", "emoji 🧪"):
        textsafe.check_name(name)
        assert textsafe.escape(name) == name
    assert textsafe.escape_lines("a\tb\nc\x1bd") == "a\tb\nc\\x1bd"


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_model_configs_refuse_unsafe_class_names(case):
    with pytest.raises(ConfigError) as err:
        ModelConfig(encoder_weights=None, class_names=["normal", HOSTILE[case], "other"])
    _clean(str(err.value))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model(ModelConfig(encoder_weights=None, class_names=["benign", "malignant", "normal"]),
                        Preprocessing(image_size=64)).eval()
    return save_checkpoint(tmp_path_factory.mktemp("m") / "model.safetensors", model)


@pytest.mark.parametrize("case", ["osc title + clear screen", "right-to-left override", "lone surrogate"])
def test_a_checkpoint_with_unsafe_class_names_is_refused_at_load(saved, tmp_path, case):
    """Even with the metadata hash recomputed: the names themselves are refused, before any prediction."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(saved), framework="pt") as f:
        meta = json.loads(f.metadata()["mtunet"])
    names = ["benign", HOSTILE[case], "normal"]
    meta["class_names"] = meta["model"]["class_names"] = names
    path = tmp_path / "hostile.safetensors"
    save_file(load_file(str(saved)), str(path), metadata={"mtunet": seal(json.dumps(meta))})
    for fn in (read_metadata, load_checkpoint):
        with pytest.raises(CheckpointError, match=r"hostile\.safetensors: invalid model configuration") as err:
            fn(path)
        _clean(str(err.value))


def _png(path: Path, value: int = 128) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((40, 40), value, np.uint8)).save(path)


def test_class_folders_with_unsafe_names_are_skipped_and_printed_escaped(tmp_path, capsys):
    root = tmp_path / "ds"
    for i in range(3):
        _png(root / "benign" / f"b{i}.png")
        _png(root / "malignant" / f"m{i}.png")
        _png(root / HOSTILE["osc title + clear screen"] / f"x{i}.png")
        _png(root / HOSTILE["right-to-left override"] / f"y{i}.png")
    bad = os.fsencode(str(root)) + b"/bad\xff"  # not UTF-8: a lone surrogate in Python
    os.mkdir(bad)
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(os.fsdecode(bad + b"/z.png"))
    assert main(["info", str(root), "--layout", "folders"]) == 0
    captured = capsys.readouterr()
    _clean(captured.out + captured.err)
    assert "\\x1b]0;pwned\\x07\\x1b[2J" in captured.out  # the problem is reported, escaped
    assert "\\u202e" in captured.out
    assert "bad_class_name" in captured.out
    from napari_mtunet.config import DataConfig
    from napari_mtunet.workflows import load

    loaded = load(DataConfig(root=str(root), layout="folders"))
    assert sorted(loaded.class_names) == ["benign", "malignant"]
    assert len(loaded.samples) == 6


def test_unsafe_labels_in_a_labels_csv_are_skipped(tmp_path):
    from napari_mtunet.data.loading import load_dataset

    root = tmp_path / "generic"
    rows = ["filename,label"]
    for i in range(4):
        _png(root / "images" / f"a{i}.png")
        rows.append(f"a{i}.png,{'benign' if i % 2 else 'malignant'}")
    _png(root / "images" / "evil.png")
    rows.append("evil.png,\"ok\x1b[2J\"")
    (root / "labels.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    rep = load_dataset(root, duplicates=False)
    probs = [p for p in rep.problems if p.kind == "bad_class_name"]
    assert len(probs) == 1 and probs[0].file.endswith("evil.png")
    assert "\x1b" not in probs[0].message and "\\x1b" in probs[0].message
    assert all(s.label != "ok\x1b[2J" for s in rep.samples)


def test_predict_prints_file_names_escaped(saved, tmp_path, capsys):
    scans = tmp_path / "scans"
    _png(scans / "scan\x1b[2J\u202e.png", 90)
    _png(scans / "plain.png", 120)
    out = tmp_path / "pred"
    assert main(["predict", str(saved), str(scans), "--out", str(out), "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    _clean(captured.out + captured.err)
    assert "scan\\x1b[2J\\u202e.png" in captured.out
    text = (out / "predictions.csv").read_text(encoding="utf-8")
    assert "plain.png" in text


def test_cli_errors_are_escaped_too(tmp_path, capsys):
    missing = tmp_path / "no\x1b]0;x\x07such"
    assert main(["info", str(missing)]) == 1
    captured = capsys.readouterr()
    _clean(captured.out + captured.err)
    assert "no\\x1b]0;x\\x07such" in captured.err
