"""A folder prediction that does not finish says so (issue 22 point 13).

- rows are written whole: a write that fails half-way is cut back to the last whole row;
- an unfinished run (Stop, Ctrl-C, an error, a kill) keeps the table's ``.partial`` name, and the message
  says how many images were done;
- a failed write (a file-size limit, a full disk) names the file and the likely cause;
- a finished run gets the plain name, never over an earlier table.
"""

from __future__ import annotations

import csv
import errno
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_mtunet.events import CancelToken, drive
from napari_mtunet.workflows.predict import (
    PredictFilesError,
    PredictFilesInterrupted,
    RowWriter,
    iter_predict_files,
)

CLASSES = ["benign", "malignant", "normal"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    import torch

    from napari_mtunet.checkpoint import save_checkpoint
    from napari_mtunet.config import ModelConfig, Preprocessing
    from napari_mtunet.model import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(encoder_weights=None, class_names=CLASSES, num_classes=3), Preprocessing(image_size=64))
    path = tmp_path_factory.mktemp("partial") / "run" / "best.safetensors"
    path.parent.mkdir(parents=True)
    return Path(save_checkpoint(path, model))


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("partial") / "scans"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (48, 56), dtype=np.uint8)).save(folder / f"scan_{i:02d}.png")
    return folder


def _rows(path: Path) -> list[list[str]]:
    text = path.read_bytes().decode("utf-8")
    assert text.endswith("\r\n"), "the last row is cut off"
    return list(csv.reader(io.StringIO(text)))


def test_a_finished_run_gets_the_plain_name(checkpoint, images, tmp_path):
    res = drive(iter_predict_files(checkpoint, [images], tmp_path / "out", device="cpu"))
    assert res.complete and res.n_done == res.n_total == 12
    assert res.csv_path == tmp_path / "out" / "predictions.csv" and not list((tmp_path / "out").glob("*.partial.csv"))
    rows = _rows(res.csv_path)
    assert len(rows) == 13 and all(len(r) == len(rows[0]) for r in rows)
    assert "12 image(s) predicted" in res.summary() and "stopped" not in res.summary()


def test_stop_keeps_the_partial_name_and_says_how_far_it_got(checkpoint, images, tmp_path):
    cancel = CancelToken()
    job = iter_predict_files(checkpoint, [images], tmp_path / "out", device="cpu", cancel=cancel)
    done = 0
    try:
        while True:
            ev = next(job)
            if ev.kind == "progress":
                done += 1
                if done == 5:
                    cancel.cancel()
    except StopIteration as stop:
        res = stop.value
    assert res.cancelled and not res.complete and res.n_done == 5
    assert res.csv_path.name == "predictions.partial.csv"
    assert len(_rows(res.csv_path)) == 1 + 5
    assert "stopped after 5 of 12 image(s)" in res.summary() and "predictions.partial.csv" in res.summary()
    # the next run does not take or overwrite the partial table
    again = drive(iter_predict_files(checkpoint, [images], tmp_path / "out", device="cpu"))
    assert again.csv_path.name == "predictions-1.csv" and len(_rows(res.csv_path)) == 6


def test_ctrl_c_marks_the_run_and_names_the_count(checkpoint, images, tmp_path, monkeypatch):
    from napari_mtunet.inference import Predictor

    real = Predictor.predict_many
    calls = {"n": 0}

    def interrupted(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(Predictor, "predict_many", interrupted)
    with pytest.raises(PredictFilesInterrupted) as info:
        drive(iter_predict_files(checkpoint, [images], tmp_path / "out", device="cpu"))
    assert isinstance(info.value, KeyboardInterrupt)
    assert "stopped after 3 of 12 image(s)" in str(info.value)
    partial = tmp_path / "out" / "predictions.partial.csv"
    assert str(partial.name) in str(info.value) and len(_rows(partial)) == 1 + 3
    assert not (tmp_path / "out" / "predictions.csv").exists()


def test_the_cli_prints_the_count_on_ctrl_c(checkpoint, images, tmp_path, monkeypatch, capsys):
    from napari_mtunet.cli import main
    from napari_mtunet.inference import Predictor

    real = Predictor.predict_many
    calls = {"n": 0}

    def interrupted(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(Predictor, "predict_many", interrupted)
    assert main(["predict", str(checkpoint), str(images), "--out", str(tmp_path / "o"), "--device", "cpu"]) == 130
    err = capsys.readouterr().err
    assert "mtunet: interrupted: stopped after 2 of 12 image(s)" in err and "predictions.partial.csv" in err


def test_a_half_written_row_is_cut_back(tmp_path, monkeypatch):
    writer = RowWriter(tmp_path / "t.csv")
    writer.write(["image", "status"])
    writer.write(["a.png", "ok"])
    real_write = writer._fh.write

    def half(data):  # the disk takes 3 bytes of the row, then reports that it is full
        if len(data) > 3:
            real_write(bytes(data[:3]))
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(data)

    monkeypatch.setattr(writer, "_fh", type("F", (), {"write": staticmethod(half), "fileno": writer._fh.fileno,
                                                      "close": writer._fh.close})())
    with pytest.raises(OSError):
        writer.write(["b.png", "ok"])
    writer.close()
    assert (tmp_path / "t.csv").read_bytes() == b"image,status\r\na.png,ok\r\n"


@pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "darwin", reason="needs RLIMIT_FSIZE (Linux)")
def test_a_file_size_limit_is_named_and_the_table_keeps_whole_rows(checkpoint, images, tmp_path):
    """``ulimit -f``: the CSV hits the limit; the message names it and the cause, every row in it is whole."""
    out = tmp_path / "out"
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1500, 1500))\n"
        "from napari_mtunet.cli import main\n"
        f"sys.exit(main(['predict', {str(checkpoint)!r}, {str(images)!r}, '--out', {str(out)!r}, '--device', 'cpu']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 1, proc.stderr
    err = proc.stderr.strip().splitlines()[-1]
    partial = out / "predictions.partial.csv"
    assert err.startswith("mtunet: error: writing ") and str(partial) in err, err
    assert "file-size limit (ulimit -f)" in err and "Errno 27" in err and "the name marks the run as incomplete" in err
    rows = _rows(partial)
    assert 1 < len(rows) < 13 and all(len(r) == len(rows[0]) for r in rows)
    assert f"{len(rows) - 1} of 12 image(s) were done" in err
    assert not (out / "predictions.csv").exists()


def test_a_mask_that_cannot_be_written_stops_the_run_naming_the_file(checkpoint, images, tmp_path, monkeypatch):
    import napari_mtunet.paths as paths

    def full(path, data, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(paths, "write_atomic", full)
    with pytest.raises(PredictFilesError) as info:
        drive(iter_predict_files(checkpoint, [images], tmp_path / "out", device="cpu"))
    msg = str(info.value)
    assert "masks/scan_00_pred.png" in msg and "the disk is full" in msg and "0 of 12 image(s) were done" in msg
