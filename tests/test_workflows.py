"""The workflow layer without Qt: train, resume, evaluate, predict files, fine-tune, demo.

Every front end calls these, so their guarantees are tested here once.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from napari_mtunet.checkpoint import load_checkpoint, read_metadata
from napari_mtunet.config import (
    AugmentConfig,
    ConfigError,
    DataConfig,
    FinetuneConfig,
    ModelConfig,
    Preprocessing,
    RunConfig,
    TrainConfig,
)
from napari_mtunet.events import CancelToken, History, drive
from napari_mtunet.sample_data import write_phantom_dataset
from napari_mtunet.workflows import (
    EvaluationError,
    FinetuneError,
    PredictFilesError,
    RunFolderError,
    evaluate,
    iter_finetune,
    iter_predict_files,
    iter_train,
)


def tiny_run(root, **train) -> RunConfig:
    return RunConfig(
        model=ModelConfig(encoder_weights=None, encoder_depth=3, decoder_channels=(16, 16, 16)),
        preprocessing=Preprocessing(image_size=64),
        data=DataConfig(root=str(root), val_fraction=0.2, test_fraction=0.2, augment=AugmentConfig(enabled=False)),
        train=TrainConfig(**{"epochs": 1, "batch_size": 4, "device": "cpu", "amp": False,
                             "bn_recalibration_batches": 2, **train}),
    )


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    return write_phantom_dataset(tmp_path_factory.mktemp("wf") / "data", n=30, size=64, seed=3)


@pytest.fixture(scope="module")
def trained(phantom, tmp_path_factory):
    out = tmp_path_factory.mktemp("wfrun") / "run"
    hist = History()
    outcome = drive(iter_train(tiny_run(phantom), out, n_boot=20), [hist])
    return outcome, hist


def test_train_writes_checkpoints_split_and_report(trained, phantom):
    outcome, hist = trained
    out = outcome.out_dir
    assert (out / "best.safetensors").is_file() and (out / "last.safetensors").is_file()
    from napari_mtunet.data import load_splits

    split = load_splits(out / "splits.json")[0]  # the data package's one split format
    assert len(split.train) + len(split.val) + len(split.test) == 30 and split.test and split.val
    report = json.loads((out / "test_report.json").read_text())
    assert report["split"] == "test" and report["segmentation"]["dice"]["n"] == len(split.test)
    statuses = [e.text for e in hist.of("status")]
    assert any("Loading the dataset" in t for t in statuses) and any("Evaluating" in t for t in statuses)
    # the run config is saved whole: what trained is what the checkpoint says
    _, info = load_checkpoint(out / "best.safetensors")
    run = info.run
    assert run.model.class_names == ["benign", "malignant", "normal"]
    assert run.data.root == str(phantom) and run.data.val_fraction == 0.2
    assert run.preprocessing.mean is not None  # resolved from the encoder
    assert run.train.epochs == 1 and info.training["loss_weights"] == [5.0, 1.0]


def test_second_run_into_a_busy_folder_is_refused(phantom, tmp_path):
    from filelock import FileLock

    out = tmp_path / "busy"
    out.mkdir()
    with FileLock(str(out / ".mtunet-run.lock")):
        with pytest.raises(RunFolderError, match="another napari-mtunet run is writing"):
            drive(iter_train(tiny_run(phantom), out))
    assert not list(out.glob("*.safetensors"))


def test_new_run_never_writes_over_checkpoints(trained, phantom):
    outcome, _ = trained
    before = (outcome.out_dir / "best.safetensors").read_bytes()
    with pytest.raises(RunFolderError, match="already holds checkpoints"):
        drive(iter_train(tiny_run(phantom), outcome.out_dir))
    assert (outcome.out_dir / "best.safetensors").read_bytes() == before


def test_resume_refuses_other_settings_and_names_them(trained, phantom, tmp_path):
    outcome, _ = trained
    run_dir = tmp_path / "copy"
    shutil.copytree(outcome.out_dir, run_dir)
    last = run_dir / "last.safetensors"
    for change, field in (({"seed": 7}, "train.seed"), ({"lr": 0.01}, "train.lr")):
        with pytest.raises(RunFolderError, match=field.replace(".", r"\.")):
            drive(iter_train(tiny_run(phantom, **change), run_dir, resume=last))
    bigger = tiny_run(phantom)
    bigger = bigger.replace(preprocessing=Preprocessing(image_size=96))
    with pytest.raises(RunFolderError, match=r"preprocessing\.image_size: checkpoint 64, now 96"):
        drive(iter_train(bigger, run_dir, resume=last))
    # more epochs is what a resume is for
    res = drive(iter_train(tiny_run(phantom, epochs=2), run_dir, resume=last, n_boot=10))
    assert res.fit.epochs_run == 2 and len(res.fit.history) == 2


def test_resume_on_a_dataset_with_other_classes_is_refused(trained, tmp_path):
    outcome, _ = trained
    other = write_phantom_dataset(tmp_path / "other", n=12, size=64, seed=1)
    rows = (other / "labels.csv").read_text().replace("malignant", "cancer")
    (other / "labels.csv").write_text(rows)
    run_dir = tmp_path / "copy"
    shutil.copytree(outcome.out_dir, run_dir)
    with pytest.raises(RunFolderError, match="classes"):
        drive(iter_train(tiny_run(other), run_dir, resume=run_dir / "last.safetensors"))


def test_evaluate_auto_split(trained, phantom, tmp_path):
    outcome, _ = trained
    ckpt = outcome.out_dir / "best.safetensors"
    res = evaluate(ckpt, phantom, n_boot=10, device="cpu")
    from napari_mtunet.data import load_splits

    assert res.split == "test" and res.n_images == len(load_splits(outcome.split_file)[0].test)
    assert evaluate(ckpt, phantom, split="all", n_boot=10, device="cpu").n_images == 30
    other = write_phantom_dataset(tmp_path / "other", n=9, size=64, seed=5)
    assert evaluate(ckpt, other, n_boot=10, device="cpu").split == "all"
    with pytest.raises(EvaluationError, match="use split 'all'"):
        evaluate(ckpt, other, split="test", device="cpu")


def test_evaluate_finds_the_test_split_of_a_run_trained_on_the_folder_above_its_dataset(phantom, tmp_path):
    """`mtunet train busi/` reads busi/Dataset_BUSI_with_GT/: evaluating busi/ (or the inner folder) must score
    the run's own test split, not every image (its training images included)."""
    from napari_mtunet.data import load_splits
    from napari_mtunet.data.loading import dataset_root

    holder = tmp_path / "holder"
    shutil.copytree(phantom, holder / "Dataset_inner")
    assert dataset_root(holder) == (holder / "Dataset_inner").resolve()
    assert dataset_root(tmp_path / "nothing") is None
    outcome = drive(iter_train(tiny_run(holder), tmp_path / "run", n_boot=10))
    ckpt = outcome.out_dir / "best.safetensors"
    n_test = len(load_splits(outcome.split_file)[0].test)
    for where in (holder, holder / "Dataset_inner"):
        res = evaluate(ckpt, where, n_boot=10, device="cpu")
        assert res.split == "test" and res.n_images == n_test, where
    assert evaluate(ckpt, holder, split="val", n_boot=10, device="cpu").split == "val"


# --------------------------------------------------------------------------- predict files


def _write_busi_like(root):
    """A tiny BUSI-layout dataset: <class>/<class> (N).png with <class> (N)_mask.png."""
    rng = np.random.default_rng(0)
    for cls in ("benign", "malignant", "normal"):
        (root / cls).mkdir(parents=True)
        for i in range(1, 4):
            Image.fromarray(rng.integers(0, 255, (40, 50), dtype=np.uint8)).save(root / cls / f"{cls} ({i}).png")
            m = np.zeros((40, 50), np.uint8)
            if cls != "normal":
                m[10:20, 10:25] = 255
            Image.fromarray(m).save(root / cls / f"{cls} ({i})_mask.png")
    return root


def test_predict_files_layout_csv_and_no_overwrite(trained, phantom, tmp_path):
    outcome, _ = trained
    ckpt = outcome.out_dir / "best.safetensors"
    out = tmp_path / "pred"
    (out / "masks").mkdir(parents=True)
    (out / "predictions.csv").write_text("user data\n")
    mine = out / "masks" / "phantom_0000_pred.png"
    Image.fromarray(np.full((8, 8), 7, np.uint8)).save(mine)
    res = drive(iter_predict_files(ckpt, [phantom / "images"], out, device="cpu"))
    assert res.n_ok == 30 and not res.failures
    assert (out / "predictions.csv").read_text() == "user data\n" and np.asarray(Image.open(mine)).max() == 7
    import csv

    rows = list(csv.DictReader(open(res.csv_path, newline="", encoding="utf-8")))
    assert res.csv_path.name == "predictions-1.csv" and len(rows) == 30
    assert list(rows[0]) == ["image", "status", "class", "p_benign", "p_malignant", "p_normal", "lesion_fraction",
                             "mask_file", "error"]
    assert rows[0]["mask_file"] == "masks/phantom_0000_pred-1.png"  # the user's file kept its name
    assert all(r["status"] == "ok" and r["class"] in ("benign", "malignant", "normal") for r in rows)
    assert abs(sum(float(rows[0][f"p_{c}"]) for c in ("benign", "malignant", "normal")) - 1) < 1e-4
    assert not [p for p in out.rglob("*") if "_mask" in p.name]  # never a ground-truth name
    assert sum(res.class_counts.values()) == 30


def test_predict_files_never_writes_among_its_inputs(trained, tmp_path):
    """The input folder itself is refused (nothing is created or touched); a new folder inside the dataset is
    fine, carries the output marker, and a rerun does not read it as input."""
    from napari_mtunet.outputs import is_output_dir

    outcome, _ = trained
    ckpt = outcome.out_dir / "best.safetensors"
    busi = _write_busi_like(tmp_path / "Dataset_BUSI_with_GT")
    before = sorted(p.name for p in (busi / "benign").iterdir())
    with pytest.raises(PredictFilesError, match="is the input folder"):
        drive(iter_predict_files(ckpt, [busi / "benign"], busi / "benign", device="cpu", fmt="tiff"))
    assert sorted(p.name for p in (busi / "benign").iterdir()) == before
    res = drive(iter_predict_files(ckpt, [busi / "benign"], busi / "benign" / "preds", device="cpu"))
    assert res.n_ok == 3 and is_output_dir(busi / "benign" / "preds")  # ground-truth masks were not predicted
    again = drive(iter_predict_files(ckpt, [busi / "benign"], busi / "preds2", device="cpu"))
    assert again.n_ok == 3  # the earlier predictions inside the input folder were not taken as inputs
    assert sorted(p.name for p in (busi / "benign").iterdir()) == sorted(before + ["preds"])


def test_output_beside_inputs_in_a_folder_of_image_folders_is_allowed(tmp_path):
    """A parent that merely *looks* like one-folder-per-class (pytest's basetemp, a projects folder) is no dataset."""
    from napari_mtunet.workflows.predict import check_output_folder

    rng = np.random.default_rng(0)
    for name in ("project_a", "project_b"):
        (tmp_path / name).mkdir()
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(tmp_path / name / f"img{i}.png")
    # an ISIC dataset somewhere below: layouts that search the whole tree "find" it from tmp_path too
    isic = tmp_path / "other" / "isic"
    isic.mkdir(parents=True)
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(isic / "ISIC_0000001.jpg")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(isic / "ISIC_0000001_segmentation.png")
    inputs = tmp_path / "project_c" / "in"
    inputs.mkdir(parents=True)
    Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(inputs / "x.png")
    check_output_folder(tmp_path / "project_c" / "out", [inputs])  # no error
    # beside a class folder of a one-folder-per-class dataset is fine; the class folder itself is not
    classes = tmp_path / "classes"
    for name in ("benign", "malignant"):
        (classes / name).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(classes / name / "a.png")
    check_output_folder(classes / "preds", [classes / "benign"])
    with pytest.raises(PredictFilesError, match="is the input folder"):
        check_output_folder(classes / "benign", [classes / "benign"])


def test_predict_files_reports_bad_files_and_keeps_going(trained, phantom, tmp_path):
    outcome, _ = trained
    ckpt = outcome.out_dir / "best.safetensors"
    src = tmp_path / "in"
    src.mkdir()
    good = sorted((phantom / "images").iterdir())[:3]
    for f in good:
        shutil.copy(f, src / f.name)
    (src / "a_empty.png").write_bytes(b"")
    (src / "b_text.png").write_text("<html>not an image</html>")
    odd = os.fsdecode(b"c_caf\xe9.png")  # not valid UTF-8
    shutil.copy(good[0], os.path.join(os.fsencode(src), os.fsencode(odd)))
    res = drive(iter_predict_files(ckpt, [src], tmp_path / "out", device="cpu"))
    assert res.n_ok == 4 and len(res.failures) == 2
    text = res.csv_path.read_text(encoding="utf-8")
    lines = text.strip().splitlines()
    assert len(lines) == 1 + 6
    assert "a_empty.png" in text and "error" in text and "c_caf\\xe9.png" in text


def test_predict_files_cancel_keeps_the_rows_done(trained, phantom, tmp_path):
    outcome, _ = trained
    cancel = CancelToken()
    job = iter_predict_files(outcome.out_dir / "best.safetensors", [phantom / "images"], tmp_path / "o",
                             device="cpu", cancel=cancel)
    seen = 0
    try:
        while True:
            ev = next(job)
            if ev.kind == "progress":
                seen += 1
                if seen == 3:
                    cancel.cancel()
    except StopIteration as stop:
        res = stop.value
    assert res.cancelled and res.n_ok == 3
    assert len(res.csv_path.read_text().strip().splitlines()) == 4


# --------------------------------------------------------------------------- fine-tune


def test_finetune_child_records_parent_and_shows_before_after(trained, tmp_path):
    outcome, _ = trained
    parent = outcome.out_dir / "best.safetensors"
    new = write_phantom_dataset(tmp_path / "new", n=9, size=64, seed=11)
    cfg = FinetuneConfig(steps_per_sample=1, min_steps=3, max_steps=5, batch_size=4, device="cpu")
    res = drive(iter_finetune(parent, new, tmp_path / "ft", config=cfg))
    _, info = load_checkpoint(res.child)
    _, pinfo = load_checkpoint(parent)
    assert info.parent.startswith(pinfo.content_hash)
    ft = info.training["finetune"]
    assert ft["n_new"] == 9 and ft["n_check"] == 2 and ft["n_train"] == 7 and ft["steps"] == 5  # 1 per sample, clamped to max_steps
    assert ft["n_replay_pool"] > 0  # the base model's own training data was found and replayed
    for part in ("train", "check", "base"):
        assert set(res.metrics[part]) == {"before", "after"}
        assert 0 <= res.metrics[part]["after"]["dice"] <= 1 and 0 <= res.metrics[part]["after"]["dice_pooled"] <= 1
    assert res.metrics["check"]["after"]["n"] == 2
    assert "held-back" in res.summary()


def test_finetune_refuses_classes_the_model_does_not_have(trained, tmp_path):
    outcome, _ = trained
    new = write_phantom_dataset(tmp_path / "new", n=6, size=64, seed=2)
    (new / "labels.csv").write_text((new / "labels.csv").read_text().replace("malignant", "Malignant "))
    with pytest.raises((FinetuneError, ValueError), match="Malignant"):
        drive(iter_finetune(outcome.out_dir / "best.safetensors", new, tmp_path / "ft"))


# --------------------------------------------------------------------------- config


def test_run_config_round_trip_and_migration(trained):
    outcome, _ = trained
    meta = read_metadata(outcome.out_dir / "best.safetensors")
    run = RunConfig.from_metadata(meta)
    assert RunConfig.from_dict(run.to_dict()) == run
    legacy = {k: v for k, v in meta.items() if k != "run"}  # a first-format checkpoint
    old = RunConfig.from_metadata(legacy)
    assert old.model == run.model and old.train.epochs == run.train.epochs and old.data.root == run.data.root


def _shifted_copy(src, dst, gain=0.5):
    """The phantom's images as a darker scanner shows them (images only: uncorrected, unlabelled)."""
    from PIL import Image

    dst.mkdir(parents=True)
    for p in sorted((src / "images").glob("*.png")):
        arr = np.asarray(Image.open(p)).astype(float) * gain
        Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(dst / p.name)
    return dst


def _bn_buffers(model):
    import torch

    return {k: v.clone() for k, v in model.state_dict().items()
            if k.endswith("running_mean") or k.endswith("running_var")} if isinstance(model, torch.nn.Module) else {}


def test_finetune_adapts_to_unlabelled_images_of_the_new_scanner(trained, tmp_path):
    outcome, _ = trained
    parent = outcome.out_dir / "best.safetensors"
    new = write_phantom_dataset(tmp_path / "new", n=9, size=64, seed=11)
    unl = _shifted_copy(write_phantom_dataset(tmp_path / "more", n=12, size=64, seed=12), tmp_path / "uncorrected")
    cfg = FinetuneConfig(steps_per_sample=1, min_steps=3, max_steps=3, batch_size=4, device="cpu", adapt_bn="new")
    res = drive(iter_finetune(parent, new, tmp_path / "ft", config=cfg, unlabelled=unl))
    child, info = load_checkpoint(res.child)
    base, _ = load_checkpoint(parent)
    adapted = info.training["finetune"]["adapted_to"]
    assert adapted["source"] == str(unl) and adapted["n_unlabelled"] == 12 and adapted["adapt_bn"] == "new"
    assert adapted["bn_images"] == 12 + res.n_train  # the uncorrected images and the corrections trained on
    a, b = _bn_buffers(child), _bn_buffers(base)
    assert any(not np.allclose(a[k].numpy(), b[k].numpy()) for k in a)  # statistics of the darker scanner

    keep = FinetuneConfig(steps_per_sample=1, min_steps=3, max_steps=3, batch_size=4, device="cpu", adapt_bn="keep")
    with pytest.raises(FinetuneError, match="adapt_bn 'keep'"):  # would silently ignore the uncorrected images
        drive(iter_finetune(parent, new, tmp_path / "ft2", config=keep, unlabelled=unl))
    assert not (tmp_path / "ft2").exists()
    res2 = drive(iter_finetune(parent, new, tmp_path / "ft3", config=keep))
    c2, info2 = load_checkpoint(res2.child)
    a2 = _bn_buffers(c2)
    assert all(np.allclose(a2[k].numpy(), b[k].numpy()) for k in a2)  # frozen: the base model's statistics
    assert info2.training["finetune"]["adapted_to"]["adapt_bn"] == "keep"


def test_finetune_auto_adapts_exactly_when_there_are_uncorrected_images():
    from napari_mtunet.config import AUTO_ADAPT_BN

    auto = FinetuneConfig()
    assert auto.adapt_bn == "auto"
    assert auto.bn_mode(True) == AUTO_ADAPT_BN and auto.bn_mode(False) == "keep"
    assert FinetuneConfig(steps_per_sample=0).bn_mode(False) == AUTO_ADAPT_BN  # adapt only: nothing else to do
    assert FinetuneConfig(adapt_bn="mix").bn_mode(False) == "mix"
    with pytest.raises(ConfigError, match="adapt_bn must be one of"):
        FinetuneConfig(adapt_bn="sometimes")


def test_finetune_unlabelled_folder_without_images_is_refused_by_name(trained, tmp_path):
    outcome, _ = trained
    new = write_phantom_dataset(tmp_path / "new", n=6, size=64, seed=4)
    empty = tmp_path / "nothing_here"
    empty.mkdir()
    (empty / "scan_mask.png").write_bytes((new / "masks" / sorted(p.name for p in (new / "masks").iterdir())[0]).read_bytes())
    with pytest.raises(FinetuneError, match="nothing_here.*no image files"):
        drive(iter_finetune(outcome.out_dir / "best.safetensors", new, tmp_path / "ft",
                            config=FinetuneConfig(adapt_bn="new", device="cpu"), unlabelled=empty))
