"""Every file napari-mtunet writes gets the mode the umask allows (0644 with umask 022), like ``open()`` gives.

Before, checkpoints, split files, reports, masks and exported models went
through ``mkstemp`` (mode 0600): colleagues on a shared server could not
read a model.  All atomic writes now go through one helper,
:func:`napari_mtunet.paths.atomic_path`; the bioimage.io zip and its members
are in tests/test_export_bioimageio.py.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest
import torch

from napari_mtunet import paths
from napari_mtunet.checkpoint import save_checkpoint
from napari_mtunet.config import ModelConfig, Preprocessing
from napari_mtunet.data import Split, load_splits, save_splits
from napari_mtunet.model import build_model

SRC = Path(__file__).resolve().parents[1] / "src" / "napari_mtunet"

pytestmark = pytest.mark.skipif(os.name == "nt", reason="POSIX permission bits")


@pytest.fixture(params=[0o022, 0o027, 0o002])
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_umask_is_read_without_changing_it(umask):
    assert paths.current_umask() == umask
    assert paths.new_file_mode() == 0o666 & ~umask
    assert os.umask(umask) == umask  # still what the test set


def test_write_atomic_gives_the_umask_mode_and_replaces_whole(tmp_path, umask):
    p = tmp_path / "report.json"
    paths.write_atomic(p, "{}")
    assert mode(p) == 0o666 & ~umask
    paths.write_atomic(p, b"[1]")
    assert p.read_bytes() == b"[1]" and mode(p) == 0o666 & ~umask
    assert [q.name for q in tmp_path.iterdir()] == ["report.json"]  # no temporary file left


def test_no_clobber_publish_keeps_the_existing_file(tmp_path):
    p = tmp_path / "model.onnx"
    p.write_bytes(b"theirs")
    with pytest.raises(FileExistsError, match="model.onnx: already exists"):
        paths.write_atomic(p, b"ours", overwrite=False)
    assert p.read_bytes() == b"theirs"
    assert [q.name for q in tmp_path.iterdir()] == ["model.onnx"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, umask):
    p = tmp_path / "splits.json"
    p.write_text("old")
    with pytest.raises(RuntimeError):
        with paths.atomic_path(p) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert p.read_text() == "old"
    assert [q.name for q in tmp_path.iterdir()] == ["splits.json"]


def test_a_writer_that_replaces_the_temporary_file_still_gets_the_mode(tmp_path, umask):
    p = tmp_path / "x.bin"
    with paths.atomic_path(p) as tmp:
        tmp.unlink()  # as some libraries do: write a new file under the same name
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, b"data")
        os.close(fd)
    assert mode(p) == 0o666 & ~umask


def test_checkpoints_and_split_files_are_readable_by_the_group_and_others(tmp_path):
    old = os.umask(0o022)
    try:
        model = build_model(ModelConfig(encoder_name="mobilenet_v2", encoder_weights=None, num_classes=2, class_names=["a", "b"]),
                            Preprocessing(image_size=64))
        ckpt = save_checkpoint(tmp_path / "run" / "best.safetensors", model)
        split = Split(train=["a.png", "b.png"], val=["c.png"], test=["d.png"], seed=0, method="holdout")
        sp = save_splits(tmp_path / "run" / "splits.json", split)
    finally:
        os.umask(old)
    assert mode(ckpt) == 0o644, oct(mode(ckpt))
    assert mode(sp) == 0o644, oct(mode(sp))
    assert load_splits(sp)[0].test == ["d.png"]
    assert sorted(q.name for q in (tmp_path / "run").iterdir()) == ["best.safetensors", "splits.json"]


def test_an_onnx_export_is_readable_by_the_group_and_others(tmp_path):
    pytest.importorskip("onnxruntime")
    from napari_mtunet.export import export_onnx

    torch.manual_seed(0)
    model = build_model(ModelConfig(encoder_name="mobilenet_v2", encoder_weights=None, num_classes=2, class_names=["a", "b"]),
                        Preprocessing(image_size=64))
    ckpt = save_checkpoint(tmp_path / "m.safetensors", model)
    old = os.umask(0o022)
    try:
        out = export_onnx(ckpt, tmp_path / "m.onnx")
    finally:
        os.umask(old)
    assert mode(out) == 0o644, oct(mode(out))


def test_one_atomic_write_helper():
    """Temporary files for atomic writes are made in one place (paths.py), which sets the mode."""
    users = sorted(str(p.relative_to(SRC)) for p in SRC.rglob("*.py")
                   if re.search(r"\bmkstemp\b|NamedTemporaryFile\(", p.read_text(encoding="utf-8")))
    assert users == ["paths.py"], users
