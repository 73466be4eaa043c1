"""One rule for every output: never over or among input files (napari_mtunet.outputs).

Issue 21 point 6 and issue 22 point 12, as a user meets them on the command line and in the workflows:

- a new folder beside or inside the inputs is fine (``scans/new --out scans/predictions``,
  ``img/a.png --out img/pred``, ``dataset --out dataset/runs``), even when the parent looks like a
  one-folder-per-class dataset;
- the input folder itself, a folder that contains the inputs (the dataset root for training) and an
  existing folder among the input files (a class folder) are refused, before anything is written;
- folders napari-mtunet writes into carry a marker; a rerun never reads them as inputs;
- a training run that fails at once (ImageNet weights offline) fails before reading the dataset and
  leaves nothing behind.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_mtunet.cli import main
from napari_mtunet.outputs import MARKER, OutputLocationError, check_output_dir, is_output_dir

CLASSES = ["benign", "malignant", "normal"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    import torch

    from napari_mtunet.checkpoint import save_checkpoint
    from napari_mtunet.config import ModelConfig, Preprocessing
    from napari_mtunet.model import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(encoder_weights=None, class_names=CLASSES, num_classes=3), Preprocessing(image_size=64))
    path = tmp_path_factory.mktemp("rule") / "run" / "best.safetensors"
    path.parent.mkdir(parents=True)
    return Path(save_checkpoint(path, model))


@pytest.fixture
def scans(tmp_path, busi_root) -> Path:
    """``scans/old`` and ``scans/new``, two folders of real BUSI images: scans/ looks like one folder per class."""
    for sub, names in (("old", ["benign (100).png", "malignant (103).png"]),
                       ("new", ["benign (105).png", "malignant (104).png", "benign (108).png"])):
        (tmp_path / "scans" / sub).mkdir(parents=True)
        for n in names:
            shutil.copy(busi_root / n.split(" (")[0] / n, tmp_path / "scans" / sub / n)
    return tmp_path / "scans"


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _predict(ckpt, *inputs, out) -> int:
    return main(["predict", str(ckpt), *map(str, inputs), "--out", str(out), "--device", "cpu"])


def test_a_sibling_of_the_inputs_is_a_fine_output_folder(checkpoint, scans, capsys):
    before = _tree(scans / "new")
    assert _predict(checkpoint, scans / "new", out=scans / "predictions") == 0, capsys.readouterr().err
    assert "3 image(s) predicted" in capsys.readouterr().out
    assert _tree(scans / "new") == before  # inputs untouched
    out = scans / "predictions"
    assert (out / "predictions.csv").is_file() and len(list((out / "masks").glob("*_pred.png"))) == 3
    assert is_output_dir(out) and is_output_dir(out / "masks")
    # a rerun never reads the outputs as inputs: the masks folder is refused as input, the inputs stay 3
    assert _predict(checkpoint, out / "masks", out=scans / "again") == 1
    err = capsys.readouterr().err
    assert "holds outputs of napari-mtunet" in err and MARKER in err and not (scans / "again").exists()
    assert _predict(checkpoint, scans / "new", out=scans / "predictions") == 0
    assert "3 image(s) predicted" in capsys.readouterr().out
    assert (out / "predictions-1.csv").is_file()  # the first table is kept


def test_a_new_folder_beside_a_single_file_is_fine(checkpoint, scans, capsys):
    img = scans / "old" / "benign (100).png"
    assert _predict(checkpoint, img, out=scans / "old" / "pred") == 0, capsys.readouterr().err
    assert (scans / "old" / "pred" / "masks" / "benign (100)_pred.png").is_file()


@pytest.mark.parametrize("where", ["input folder", "its parent", "folder of the file"])
def test_outputs_among_the_inputs_are_refused_before_anything_is_written(checkpoint, scans, capsys, where):
    inputs, out = {
        "input folder": ([scans / "new"], scans / "new"),
        "its parent": ([scans / "new"], scans),
        "folder of the file": ([scans / "old" / "benign (100).png"], scans / "old"),
    }[where]
    before = _tree(scans)
    assert _predict(checkpoint, *inputs, out=out) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "among the input files" in err[0], err
    assert _tree(scans) == before  # not even an empty folder or a marker


def test_an_existing_folder_of_images_inside_the_input_is_refused(scans):
    with pytest.raises(OutputLocationError, match=r"already holds its files \(benign \(100\).png"):
        check_output_dir(scans / "old", [scans])
    check_output_dir(scans / "runs", [scans])  # a new folder inside the dataset is fine


def test_training_output_in_the_dataset_root_or_a_class_folder_is_refused(busi_root, tmp_path, capsys):
    for out in (busi_root, busi_root / "benign"):
        before = sorted(p.name for p in out.iterdir())
        assert main(["train", str(busi_root), "--out", str(out), "--encoder-weights", "none", "--epochs", "1",
                     "--device", "cpu"]) == 1
        err = capsys.readouterr().err
        assert "among the input files" in err or "already holds its files" in err, err
        assert sorted(p.name for p in out.iterdir()) == before


def test_finetune_output_in_the_corrections_folder_is_refused(checkpoint, tmp_path, capsys):
    from napari_mtunet.data.writer import write_generic_sample

    root = tmp_path / "corrections"
    write_generic_sample(root, np.zeros((32, 32), np.uint8), np.zeros((32, 32), np.uint8), "benign")
    for out in (root, root / "images"):
        assert main(["finetune", str(checkpoint), str(root), "--out", str(out), "--device", "cpu"]) == 1
        assert "would lie among" in capsys.readouterr().err
    assert not list(root.rglob("*.safetensors"))
    # the Annotate widget's default, <training set>/models/finetune-<time>, is a new folder inside: fine
    check_output_dir(root / "models" / "finetune-1", [root])


def test_offline_imagenet_weights_fail_before_the_dataset_is_read_and_leave_nothing(busi_root, tmp_path, monkeypatch):
    import huggingface_hub

    from napari_mtunet.encoders import EncoderWeightsError
    from napari_mtunet.events import History, drive
    from napari_mtunet.forms import TrainForm
    from napari_mtunet.workflows import iter_train

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)  # nothing cached
    for encoder in ("mobilenet_v2", "vgg16"):
        run = TrainForm(root=str(busi_root), encoder=encoder, weights="imagenet", epochs=1, device="cpu").to_run()
        out = tmp_path / f"run-{encoder}"
        hist = History()
        t0 = time.perf_counter()
        with pytest.raises(EncoderWeightsError, match="cannot be reached"):
            drive(iter_train(run, out), [hist])
        assert time.perf_counter() - t0 < 10  # reading the 300 BUSI images takes longer than this
        assert not [e for e in hist.events if e.kind == "status" and "Loading the dataset" in e.text]
        assert not out.exists()  # no run folder, split file or lock


def test_a_run_that_fails_before_its_first_checkpoint_removes_its_folder(tmp_path):
    from napari_mtunet.config import DataConfig, ModelConfig, RunConfig, TrainConfig
    from napari_mtunet.events import drive
    from napari_mtunet.workflows import iter_train

    empty = tmp_path / "empty"
    empty.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(empty / "not_a_dataset.png")
    run = RunConfig(model=ModelConfig(encoder_weights=None), data=DataConfig(root=str(empty)),
                    train=TrainConfig(epochs=1, device="cpu"))
    out = tmp_path / "runs" / "new-run"
    with pytest.raises(Exception):
        drive(iter_train(run, out))
    assert not out.exists()
    # a folder the user made beforehand is left as it was (only what the run created is removed)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(Exception):
        drive(iter_train(run, mine))
    assert sorted(p.name for p in mine.iterdir()) == [".mtunet-run.lock", "notes.txt"]  # its lock file stays


def test_output_folders_inside_a_dataset_are_never_read_as_data(tmp_path):
    """A run or prediction folder napari-mtunet wrote inside a dataset is neither a class nor a sample."""
    from napari_mtunet.config import DataConfig
    from napari_mtunet.outputs import mark_output_dir
    from napari_mtunet.workflows.data import load

    rng = np.random.default_rng(0)
    root = tmp_path / "classes"
    for name in ("benign", "malignant"):
        (root / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (24, 24), dtype=np.uint8)).save(root / name / f"{name}{i}.png")
    before = load(DataConfig(root=str(root)))
    preds = root / "predictions"
    (preds / "masks").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (24, 24), dtype=np.uint8)).save(preds / f"p{i}.png")
    mark_output_dir(preds, "predictions")
    after = load(DataConfig(root=str(root)))
    assert after.class_names == before.class_names == ["benign", "malignant"]
    assert len(after.samples) == len(before.samples) == 6
