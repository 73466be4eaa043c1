"""bioimage.io export: the package passes bioimageio.core's test, describes the model, and re-imports exactly."""

from __future__ import annotations

import json
import shutil
import zipfile

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("bioimageio.core")
yaml = pytest.importorskip("yaml")

from napari_mtunet.checkpoint import CheckpointError, load_checkpoint, save_checkpoint  # noqa: E402
from napari_mtunet.config import ModelConfig, Preprocessing  # noqa: E402
from napari_mtunet.export import ExportError, export_bioimageio, export_model, is_bioimageio_package, open_model  # noqa: E402
from napari_mtunet.export import bioimageio_export  # noqa: E402
from napari_mtunet.inference import Predictor  # noqa: E402
from napari_mtunet.model import build_model  # noqa: E402
from napari_mtunet.sample_data import make_phantom  # noqa: E402

CLASSES = ["benign", "malignant", "normal tissue"]  # a space: channel names must become identifiers
METRICS = {"val_dice": 0.71, "val_dice_ci_low": 0.62, "val_dice_ci_high": 0.79, "val_dice_n": 40, "val_accuracy": 0.8}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(3)
    model = build_model(ModelConfig(encoder_weights=None, class_names=CLASSES), Preprocessing(image_size=64)).eval()
    with torch.no_grad():
        model.segmentation_head[0].weight.mul_(200.0)  # confident masks
    path = tmp_path_factory.mktemp("ckpt") / "busi_model.safetensors"
    training = {"data_config": {"root": "/data/private/Dataset_BUSI_with_GT", "layout": "busi", "val_fraction": 0.15,
                                "test_fraction": 0.15, "seed": 0}, "n_train": 30, "n_val": 6, "epoch": 3}
    return save_checkpoint(path, model, metrics=METRICS, training=training)


REPORT = {
    "split": "test", "n_images": 12, "threshold": 0.5,
    "classification": {
        "accuracy": {"name": "accuracy", "value": 0.75, "ci_low": 0.5, "ci_high": 0.917, "n": 12, "split": "test"},
        "per_class": {"benign": {"precision": 1.0, "recall": 0.5, "support": 4}},
    },
    "segmentation": {"dice": {"name": "Dice", "value": 0.64, "ci_low": 0.55, "ci_high": float("nan"), "n": 12}},
}


@pytest.fixture(scope="module")
def package(checkpoint, tmp_path_factory):
    folder = tmp_path_factory.mktemp("pkg")
    (folder / "report.json").write_text(json.dumps(REPORT))
    # the bioimage.io test runs below, on its own; here only the export
    return export_bioimageio(checkpoint, folder / "model.zip", run_test=False, evaluation=folder / "report.json",
                             authors=[{"name": "Test Author", "affiliation": "Lab"}])


def _rdf(package) -> dict:
    with zipfile.ZipFile(package) as zf:
        return yaml.safe_load(zf.read("rdf.yaml"))


def test_exported_package_passes_the_bioimageio_test(package):
    from bioimageio.core import test_model

    summary = test_model(str(package))
    failed = [f"{d.name}: {[e.msg for e in d.errors]}" for d in summary.details if d.status != "passed"]
    assert summary.status == "passed", failed
    tested = {d.loc[1] for d in summary.details if len(d.loc) > 1 and d.loc[0] == "weights"}
    assert {"pytorch_state_dict", "onnx"} <= tested


def test_package_describes_classes_preprocessing_card_and_licences(package, checkpoint):
    rdf = _rdf(package)
    assert rdf["format_version"].startswith("0.5")
    (image,) = rdf["inputs"]
    assert [p["id"] for p in image["preprocessing"]][:2] == ["ensure_dtype", "scale_linear"]
    assert image["preprocessing"][1]["kwargs"]["gain"] == pytest.approx(1 / 255)
    outputs = {o["id"]: o for o in rdf["outputs"]}
    assert set(outputs) == {"mask_probability", "class_probabilities"}
    assert outputs["class_probabilities"]["axes"][1]["channel_names"] == ["benign", "malignant", "normal_tissue"]
    ours = rdf["config"]["napari-mtunet"]
    assert ours["class_names"] == CLASSES
    assert ours["content_hash"] == load_checkpoint(checkpoint)[1].content_hash
    assert set(rdf["weights"]) == {"pytorch_state_dict", "onnx"}
    assert rdf["weights"]["pytorch_state_dict"]["architecture"]["import_from"] == "napari_mtunet.export.bioimageio_arch"
    assert any(c.get("doi") == "10.1016/j.dib.2019.104863" for c in rdf["cite"])  # trained on BUSI
    assert rdf["authors"] == [{"name": "Test Author", "affiliation": "Lab"}]
    with zipfile.ZipFile(package) as zf:
        names = set(zf.namelist())
        card = zf.read(rdf["documentation"]["source"]).decode()
    assert {"mtunet_checkpoint.safetensors", "weights.pt", "model.onnx", "test_input.npy", "cover.png"} <= names
    assert "| val_dice | 0.710 | 0.620 - 0.790 | 40 |" in card
    assert "| val_accuracy | 0.800 | - | - |" in card
    assert "random initialisation" in card and "## Validation" in card
    assert "Dataset_BUSI_with_GT" in card and "/data/private" not in card  # the folder name, not the user's path
    assert "normal tissue" in card
    assert "## Evaluation (split `test`, 12 images)" in card
    assert "| accuracy | 0.750 | 0.500 - 0.917 | 12 |" in card
    assert "| Dice | 0.640 | - | 12 |" in card  # a CI bound that is not finite is not shown as a number
    assert ours["evaluation"]["segmentation"]["dice"]["ci_high"] is None


def test_a_malformed_evaluation_report_is_refused_before_any_work(checkpoint, tmp_path):
    bad = tmp_path / "report.json"
    bad.write_text('{"accuracy": 0.9}')
    with pytest.raises(ExportError, match="report.json: not an evaluation report"):
        export_bioimageio(checkpoint, tmp_path / "m.zip", evaluation=bad)
    with pytest.raises(ExportError, match="missing.json: cannot read the evaluation report"):
        export_bioimageio(checkpoint, tmp_path / "m.zip", evaluation=tmp_path / "missing.json")
    assert not (tmp_path / "m.zip").exists()


def test_package_reimports_exactly(package, checkpoint, tmp_path):
    ref_model, ref_info = load_checkpoint(checkpoint)
    model, info = open_model(package)
    assert info.path == package and is_bioimageio_package(package)
    assert info.metadata == ref_info.metadata
    assert info.content_hash == ref_info.content_hash and info.class_names == CLASSES
    assert info.metrics == METRICS
    ref_state, state = ref_model.state_dict(), model.state_dict()
    assert ref_state.keys() == state.keys()
    assert all(torch.equal(ref_state[k], state[k]) for k in state)
    # the unpacked folder and its rdf.yaml open too
    folder = tmp_path / "unpacked"
    with zipfile.ZipFile(package) as zf:
        zf.extractall(folder)
    for path in (folder, folder / "rdf.yaml"):
        _, info2 = open_model(path)
        assert info2.content_hash == ref_info.content_hash


def test_predictor_and_cli_predict_accept_a_package(package, checkpoint, tmp_path):
    image = make_phantom(n=1, size=96, seed=2).images[0]
    a = Predictor(checkpoint, device="cpu").predict(image)
    b = Predictor(package, device="cpu").predict(image)
    assert np.array_equal(a.mask, b.mask) and a.mask.any()
    assert np.array_equal(a.class_probabilities, b.class_probabilities)
    assert b.model_name == package.name and b.model_hash == a.model_hash
    c = Predictor(package, backend="onnxruntime").predict(image)
    assert np.array_equal(a.mask, c.mask)
    np.testing.assert_allclose(c.class_probabilities, a.class_probabilities, atol=1e-4, rtol=0)

    from PIL import Image

    from napari_mtunet.cli import main

    (tmp_path / "scans").mkdir()
    Image.fromarray(image).save(tmp_path / "scans" / "scan.png")
    assert main(["predict", str(package), str(tmp_path / "scans" / "scan.png"), "--out", str(tmp_path / "pred")]) == 0
    csv_text = (tmp_path / "pred" / "predictions.csv").read_text()
    assert "scan.png" in csv_text and a.class_name in csv_text


def test_package_round_trips_through_export_again(package, checkpoint, tmp_path):
    """A package is itself a valid export source (e.g. re-export to ONNX from a downloaded package)."""
    pytest.importorskip("onnx")
    out = export_model(package, tmp_path / "again.onnx", "onnx")
    import onnxruntime as ort

    meta = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
    assert meta["content_hash"] == load_checkpoint(checkpoint)[1].content_hash


def test_foreign_or_damaged_packages_are_refused_with_the_file_named(package, tmp_path):
    rdf = _rdf(package)
    # a bioimage.io model not exported by napari-mtunet
    foreign = tmp_path / "foreign.zip"
    with zipfile.ZipFile(package) as src, zipfile.ZipFile(foreign, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "rdf.yaml":
                data = yaml.safe_dump({**rdf, "config": {}}).encode()
            dst.writestr(item, data)
    with pytest.raises(CheckpointError, match="foreign.zip: a bioimage.io model package, but not one exported by napari-mtunet"):
        open_model(foreign)
    # a package whose checkpoint name escapes the package
    escaping = tmp_path / "escape"
    escaping.mkdir()
    (escaping / "rdf.yaml").write_text(yaml.safe_dump(
        {**rdf, "config": {"napari-mtunet": {"checkpoint": "../secret.safetensors"}}}))
    with pytest.raises(CheckpointError, match="must be a .safetensors file name"):
        open_model(escaping)
    # the embedded checkpoint was tampered with: the content hash catches it
    tampered = tmp_path / "tampered"
    with zipfile.ZipFile(package) as zf:
        zf.extractall(tampered)
    blob = bytearray((tampered / "mtunet_checkpoint.safetensors").read_bytes())
    blob[-8] ^= 0xFF
    (tampered / "mtunet_checkpoint.safetensors").write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="tampered"):
        open_model(tampered)
    # not a package at all: the checkpoint loader's own message
    with pytest.raises(CheckpointError, match="nothing.safetensors"):
        open_model(tmp_path / "nothing.safetensors")


def test_export_refuses_to_overwrite_and_never_publishes_a_failing_package(checkpoint, tmp_path, monkeypatch):
    taken = tmp_path / "taken.zip"
    taken.write_bytes(b"keep me")
    with pytest.raises(ExportError, match="taken.zip: already exists"):
        export_bioimageio(checkpoint, taken)
    assert taken.read_bytes() == b"keep me"
    with pytest.raises(ExportError, match=r"must end in \.zip"):
        export_model(checkpoint, tmp_path / "model.yaml", "bioimageio")

    class Failed:
        status = "failed"
        details = []

    monkeypatch.setattr(bioimageio_export, "test_package", lambda path: Failed())
    out = tmp_path / "new.zip"
    with pytest.raises(ExportError, match="new.zip: the exported package fails the bioimage.io test"):
        export_bioimageio(checkpoint, out, include_onnx=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.zip"]  # nothing published, no temp files


def test_seg_only_model_exports_a_mask_output_only(tmp_path):
    torch.manual_seed(0)
    model = build_model(ModelConfig(encoder_weights=None, task="seg"), Preprocessing(image_size=64)).eval()
    ckpt = save_checkpoint(tmp_path / "seg.safetensors", model)
    out = export_bioimageio(ckpt, tmp_path / "seg.zip", include_onnx=False, run_test=False,
                            sample_image=np.random.default_rng(0).integers(0, 255, (50, 70), dtype=np.uint8))
    rdf = _rdf(out)
    assert [o["id"] for o in rdf["outputs"]] == ["mask_probability"]
    assert set(rdf["weights"]) == {"pytorch_state_dict"}
    with zipfile.ZipFile(out) as zf:
        shutil.copyfileobj(zf.open("test_input.npy"), (tmp_path / "in.npy").open("wb"))
    assert np.load(tmp_path / "in.npy").shape == (1, 3, 64, 64)  # resized to the training size
    _, info = open_model(out)
    assert info.model_config.task == "seg"
