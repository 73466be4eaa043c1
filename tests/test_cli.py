import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from napari_mtunet.cli import main
from napari_mtunet.paths import unique_path
from napari_mtunet.sample_data import write_phantom_dataset

FAST = ["--epochs", "1", "--image-size", "64", "--batch-size", "4", "--encoder-weights", "none",
        "--n-boot", "20", "--device", "cpu", "--quiet", "--test-fraction", "0.2"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_phantom_dataset(tmp_path_factory.mktemp("ph") / "data", n=24, size=64, seed=1)


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    assert main(["train", str(dataset), "--out", str(out), *FAST]) == 0
    return out


def test_info(dataset, capsys):
    assert main(["info", str(dataset)]) == 0
    text = capsys.readouterr().out
    assert "benign" in text and "24" in text


def test_train_outputs(trained, capsys):
    assert (trained / "best.safetensors").is_file() and (trained / "last.safetensors").is_file()
    from napari_mtunet.data import load_splits

    split = load_splits(trained / "splits.json")[0]
    assert split.train and split.val and split.test
    rep = json.loads((trained / "test_report.json").read_text())
    assert rep["classification"]["accuracy"]["n"] >= 1 and rep["segmentation"]["dice"]["ci_low"] is not None


def test_train_refuses_existing_run(trained, dataset, capsys):
    assert main(["train", str(dataset), "--out", str(trained), *FAST]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mtunet: error:") and "already holds checkpoints" in err[0]


def test_evaluate(trained, dataset, capsys, tmp_path):
    js = tmp_path / "r.json"
    assert main(["evaluate", str(trained / "best.safetensors"), str(dataset), "--n-boot", "20",
                 "--device", "cpu", "--json", str(js)]) == 0
    out = capsys.readouterr().out
    assert "split 'test'" in out and "95% CI" in out and "Dice" in out
    assert json.loads(js.read_text())["split"] == "test"
    assert main(["evaluate", str(trained / "best.safetensors"), str(dataset), "--split", "all", "--n-boot", "0",
                 "--device", "cpu"]) == 0
    assert "(24 images)" in capsys.readouterr().out


def test_predict_never_overwrites(trained, dataset, tmp_path, capsys):
    out = tmp_path / "pred"
    (out / "masks").mkdir(parents=True)
    mine = out / "masks" / "phantom_0000_pred.png"
    Image.fromarray(np.full((8, 8), 7, np.uint8)).save(mine)
    (out / "predictions.csv").write_text("user data\n")
    imgs = sorted((dataset / "images").iterdir())[:2]
    assert main(["predict", str(trained / "best.safetensors"), *map(str, imgs), "--out", str(out), "--device", "cpu"]) == 0
    assert np.asarray(Image.open(mine)).max() == 7  # untouched
    assert (out / "predictions.csv").read_text() == "user data\n"
    new = out / "masks" / "phantom_0000_pred-1.png"
    assert new.is_file() and np.asarray(Image.open(new)).shape == (64, 64)
    rows = (out / "predictions-1.csv").read_text().splitlines()
    assert rows[0].startswith("image,status,class,p_benign") and len(rows) == 3
    assert "2 image(s) predicted" in capsys.readouterr().out
    # folder input + TIFF
    assert main(["predict", str(trained / "best.safetensors"), str(dataset / "images"), "--out", str(tmp_path / "p2"),
                 "--format", "tiff", "--device", "cpu"]) == 0
    assert len(list((tmp_path / "p2" / "masks").glob("*_pred.tif"))) == 24


def test_predict_refuses_the_input_folder_as_output_and_accepts_a_folder_beside_it(trained, dataset, capsys):
    before = sorted(p.name for p in dataset.rglob("*"))
    assert main(["predict", str(trained / "best.safetensors"), str(dataset / "images"), "--out",
                 str(dataset / "images"), "--device", "cpu"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is the input folder" in err[0] and "Traceback" not in err[0]
    assert sorted(p.name for p in dataset.rglob("*")) == before
    assert main(["predict", str(trained / "best.safetensors"), str(dataset / "images"), "--out",
                 str(dataset / "predictions"), "--device", "cpu"]) == 0
    assert (dataset / "predictions" / "predictions.csv").is_file()


def test_errors_are_one_line(tmp_path, capsys, monkeypatch):
    assert main(["info", str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mtunet: error:")
    assert main(["evaluate", str(tmp_path / "nope.safetensors"), str(tmp_path)]) == 1
    assert "no such checkpoint" in capsys.readouterr().err
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["fetch-weights", "mobilenet_v2", "--out", str(tmp_path / "w.safetensors")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ("offline" in err[0] or "cannot be reached" in err[0])


def test_unique_path(tmp_path):
    p = tmp_path / "a.png"
    assert unique_path(p) == p
    p.write_text("x")
    assert unique_path(p) == tmp_path / "a-1.png"


def test_module_entry_point_runs():
    r = subprocess.run([sys.executable, "-m", "napari_mtunet", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "experiment" in r.stdout and "demo" in r.stdout


@pytest.mark.slow
def test_ddp_two_gloo_processes(dataset, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "napari_mtunet.cli", "train", str(dataset), "--out", str(out), *FAST, "--epochs", "2"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    from napari_mtunet.checkpoint import read_metadata

    meta = read_metadata(out / "last.safetensors")
    assert meta["training"]["world_size"] == 2 and meta["training"]["epoch"] == 2
    assert r.stdout.count("outputs in") == 1  # only rank 0 reports
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["best.safetensors", "last.safetensors"]


@pytest.mark.slow
def test_finetune_command(trained, dataset, tmp_path, capsys):
    from napari_mtunet.checkpoint import load_checkpoint

    out = tmp_path / "ft"
    assert main(["finetune", str(trained / "best.safetensors"), str(dataset), "--out", str(out),
                 "--steps-per-sample", "0.2", "--batch-size", "4", "--replay", str(dataset), "--device", "cpu",
                 "--quiet"]) == 0
    _, info = load_checkpoint(out / "best.safetensors")
    _, parent = load_checkpoint(trained / "best.safetensors")
    assert info.parent.startswith(parent.content_hash)
    ft = info.training["finetune"]
    assert ft["n_replay_pool"] == 24 and ft["config"]["steps_per_sample"] == 0.2
    assert "fine-tuned checkpoint" in capsys.readouterr().out


@pytest.mark.slow
def test_resume_keeps_the_run_settings_and_refuses_changes(trained, dataset, tmp_path, capsys):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(trained, run)
    # options left out keep the checkpoint's settings (image size 64, batch 4, no pretrained weights)
    assert main(["train", str(dataset), "--out", str(run), "--resume", str(run / "last.safetensors"),
                 "--epochs", "2", "--n-boot", "10", "--quiet"]) == 0
    from napari_mtunet.checkpoint import read_metadata

    assert read_metadata(run / "last.safetensors")["training"]["epoch"] == 2
    assert main(["train", str(dataset), "--out", str(run), "--resume", str(run / "last.safetensors"),
                 "--epochs", "3", "--seed", "5", "--quiet"]) == 1
    assert "train.seed: checkpoint 0, now 5" in capsys.readouterr().err


def test_bad_numbers_are_refused_before_training(dataset, tmp_path, capsys):
    for bad in (["--w-seg", "inf"], ["--max-samples", "0"], ["--lr", "nan"]):  # refused by the parser (usage)
        with pytest.raises(SystemExit) as exc:
            main(["train", str(dataset), "--out", str(tmp_path / "x"), *FAST, *bad])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert f"argument {bad[0]}" in err and bad[1] in err, (bad, err)
    # in range for the parser, refused by the run config (a multiple of 32)
    assert main(["train", str(dataset), "--out", str(tmp_path / "x"), *FAST, "--image-size", "100"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mtunet: error:") and "image_size" in err[0], err
    assert not (tmp_path / "x").exists()
