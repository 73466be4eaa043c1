"""bioimage.io export: the package passes bioimageio.core's test with no warnings, describes the model for the
model zoo (ONNX weights first, authors, maintainers, training data, held-out metrics, a cover from the
Predictor), escapes untrusted names in its model card, gives readable file modes, and re-imports exactly."""

from __future__ import annotations

import json
import os
import shutil
import stat
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
                                "test_fraction": 0.15, "seed": 0}, "n_train": 30, "n_val": 6, "epoch": 3,
                "best_epoch": 3, "monitor": "val_loss", "train_config": {"epochs": 5}}
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
    # a maintainer bioimageio.spec knows, so that no GitHub lookup is needed offline
    old = os.umask(0o022)
    try:
        return export_bioimageio(checkpoint, folder / "model.zip", run_test=False, evaluation=folder / "report.json",
                                 authors=[{"name": "Test Author", "affiliation": "Lab"}], maintainers=["@bioimageiobot"])
    finally:
        os.umask(old)


def _rdf(package) -> dict:
    with zipfile.ZipFile(package) as zf:
        return yaml.safe_load(zf.read("rdf.yaml"))


def test_exported_package_passes_the_bioimageio_test_with_no_warnings(package):
    from bioimageio.core import test_model

    summary = test_model(str(package))
    failed = [f"{d.name}: {[e.msg for e in d.errors]}" for d in summary.details if d.status != "passed"]
    assert summary.status == "passed", failed
    assert bioimageio_export.summary_warnings(summary) == []
    tested = {d.loc[1] for d in summary.details if len(d.loc) > 1 and d.loc[0] == "weights"}
    assert tested == {"onnx"}


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
    # ONNX is the only (so the primary) weights format: a consumer needs no napari-mtunet
    assert set(rdf["weights"]) == {"onnx"} and "parent" not in rdf["weights"]["onnx"]
    assert any(c.get("doi") == "10.1016/j.dib.2019.104863" for c in rdf["cite"])  # trained on BUSI
    assert rdf["authors"] == [{"name": "Test Author", "affiliation": "Lab"}]
    assert rdf["maintainers"] == [{"github_user": "bioimageiobot"}]
    assert rdf["git_repo"] == bioimageio_export.PROJECT_URL
    assert rdf.get("training_data") is None  # BUSI is not a bioimage.io dataset: cited, and described in the card
    with zipfile.ZipFile(package) as zf:
        names = set(zf.namelist())
        card = zf.read(rdf["documentation"]["source"]).decode()
        cover = zf.read(rdf["covers"][0]["source"])
    assert {"mtunet_checkpoint.safetensors", "model.onnx", "test_input.npy", "cover.png"} <= names
    assert "weights.pt" not in names and "environment.yaml" not in names
    assert "| val\\_dice | 0.710 | 0.620 - 0.790 | 40 |" in card
    assert "| val\\_accuracy | 0.800 | - | - |" in card
    assert "random initialisation" in card and "## Validation" in card
    assert "Dataset\\_BUSI\\_with\\_GT" in card and "private" not in card  # the folder name, not the user's path
    assert "doi:10.1016/j.dib.2019.104863" in card
    assert "normal tissue" in card
    assert "## Held-out evaluation (split test, 12 images)" in card
    assert "| accuracy | 0.750 | 0.500 - 0.917 | 12 |" in card
    assert "| Dice | 0.640 | - | 12 |" in card  # a CI bound that is not finite is not shown as a number
    assert ours["evaluation"]["segmentation"]["dice"]["ci_high"] is None
    # true figures: the checkpoint was saved at epoch 3 of a run planned for 5, best epoch 3
    assert "epochs trained" not in card
    assert "- these weights: epoch 3, the best by val\\_loss" in card and "epochs planned: 5" in card
    from io import BytesIO

    from PIL import Image

    w, h = Image.open(BytesIO(cover)).size
    assert (w, h) == (1000, 500)  # 2:1, as bioimage.io asks


def test_package_files_get_the_umask_mode_inside_the_zip_too(package):
    assert stat.S_IMODE(package.stat().st_mode) == 0o644
    with zipfile.ZipFile(package) as zf:
        modes = {i.filename: stat.S_IMODE(i.external_attr >> 16) for i in zf.infolist()}
    assert set(modes.values()) == {0o644}, modes


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
    with pytest.raises(CheckpointError, match="foreign.zip: (entry .rdf.yaml.: )?a bioimage.io model package, but not one exported by napari-mtunet"):
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
        export_bioimageio(checkpoint, out, include_onnx=False, include_pytorch=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.zip"]  # nothing published, no temp files


@pytest.mark.slow
def test_seg_only_model_with_both_weights_formats_passes_the_test(tmp_path):
    torch.manual_seed(0)
    model = build_model(ModelConfig(encoder_weights=None, task="seg"), Preprocessing(image_size=64)).eval()
    ckpt = save_checkpoint(tmp_path / "seg.safetensors", model)
    out = export_bioimageio(ckpt, tmp_path / "seg.zip", include_pytorch=True, maintainers=["@bioimageiobot"],
                            sample_image=np.random.default_rng(0).integers(0, 255, (50, 70), dtype=np.uint8))
    rdf = _rdf(out)
    assert [o["id"] for o in rdf["outputs"]] == ["mask_probability"]
    assert set(rdf["weights"]) == {"pytorch_state_dict", "onnx"}
    # the ONNX graph was traced from the state dict: that is its parent
    assert rdf["weights"]["onnx"]["parent"] == "pytorch_state_dict"
    assert rdf["weights"]["pytorch_state_dict"]["architecture"]["import_from"] == "napari_mtunet.export.bioimageio_arch"
    with zipfile.ZipFile(out) as zf:
        env = zf.read("environment.yaml").decode()
        shutil.copyfileobj(zf.open("test_input.npy"), (tmp_path / "in.npy").open("wb"))
    assert "napari-mtunet>=" in env and "==" not in env  # resolvable once released, not a pin to a dev build
    assert np.load(tmp_path / "in.npy").shape == (1, 3, 64, 64)  # resized to the training size
    _, info = open_model(out)
    assert info.model_config.task == "seg"


HOSTILE = ["<script>alert(1)</script>", "x<img src=x onerror=alert(2)>", "[click](javascript:alert(3))",
           "a`b` **bold** | cell"]


def test_hostile_class_and_folder_names_are_inert_in_the_model_card(tmp_path):
    markdown = pytest.importorskip("markdown")
    torch.manual_seed(0)
    model = build_model(ModelConfig(encoder_weights=None, num_classes=4, class_names=HOSTILE),
                        Preprocessing(image_size=64)).eval()
    root = "/data/<svg onload=alert(4)>`x`[y](javascript:z)"
    training = {"data_config": {"root": root, "layout": "generic", "val_fraction": 0.1, "test_fraction": 0.1,
                                "seed": 0}, "n_train": 3, "epoch": 1}
    ckpt = save_checkpoint(tmp_path / "h.safetensors", model, training=training,
                           metrics={"val_<b>x</b>": 0.5})
    out = export_bioimageio(ckpt, tmp_path / "h.zip", run_test=False, include_onnx=False, include_pytorch=True)
    with zipfile.ZipFile(out) as zf:
        card = zf.read("README.md").decode()
    rendered = markdown.markdown(card, extensions=["tables"])
    from html.parser import HTMLParser

    class Tags(HTMLParser):
        def __init__(self):
            super().__init__()
            self.tags, self.attrs, self.text = set(), [], []

        def handle_starttag(self, tag, attrs):
            self.tags.add(tag)
            self.attrs += attrs

        def handle_data(self, data):
            self.text.append(data)

    parsed = Tags()
    parsed.feed(rendered)
    # only the card's own structure: no script/img/svg, no links, no emphasis or code made by a name
    assert parsed.tags <= {"h1", "h2", "p", "ul", "li", "blockquote", "table", "thead", "tbody", "tr", "th", "td"}, \
        parsed.tags
    assert parsed.attrs == [] or all(k == "style" for k, _ in parsed.attrs), parsed.attrs
    text = "".join(parsed.text)
    for name in HOSTILE:
        assert name in text, name  # shown as the characters it is made of
    assert "<svg onload=alert(4)>`x`[y](javascript:z)" in text


def test_a_version_clash_is_named_with_its_fix(checkpoint, tmp_path, monkeypatch):
    real = bioimageio_export._installed

    def fake(name):
        return "2.14.4" if name == "pydantic" else real(name)

    monkeypatch.setattr(bioimageio_export, "_installed", fake)
    monkeypatch.setattr(bioimageio_export, "declared_requirements",
                        lambda extra="bioimageio": ["pydantic<2.14,>=2.10.3; extra == 'bioimageio'"])
    with pytest.raises(ExportError) as err:
        export_bioimageio(checkpoint, tmp_path / "m.zip")
    msg = str(err.value)
    assert "pydantic 2.14.4" in msg and "<2.14" in msg and 'pip install "napari-mtunet[bioimageio]"' in msg
    assert not (tmp_path / "m.zip").exists()


def test_an_unexpected_spec_failure_names_the_versions(checkpoint, tmp_path, monkeypatch):
    from bioimageio.spec.model import v0_5

    def broken(**kwargs):
        raise TypeError("'index_key' is expected to be an integer or a string, got 'SerializationInfo(...)'")

    monkeypatch.setattr(v0_5, "ModelDescr", broken)
    with pytest.raises(ExportError) as err:
        export_bioimageio(checkpoint, tmp_path / "m.zip", include_onnx=False, include_pytorch=True, run_test=False)
    msg = str(err.value)
    assert "index_key" in msg and "pydantic" in msg and "bioimageio.spec" in msg
    assert 'pip install "napari-mtunet[bioimageio]"' in msg


def test_the_installed_extras_are_what_pyproject_declares():
    """The clash check reads the installed metadata: it must carry the pydantic cap (reinstall otherwise)."""
    reqs = bioimageio_export.declared_requirements("bioimageio")
    if not reqs:
        pytest.skip("napari-mtunet is not installed (running from a source tree)")
    assert any(r.startswith("pydantic") and "<2.14" in r for r in reqs), reqs
    assert bioimageio_export.version_clashes() == []


def test_description_options_and_the_defaults_file(checkpoint, tmp_path, monkeypatch):
    from napari_mtunet.cli import main

    cfg_dir = tmp_path / "cfg"
    cfg_dir.mkdir()
    (cfg_dir / "export.yaml").write_text(
        "authors:\n  - name: Dr Default\n    affiliation: Default Lab\n"
        "maintainers:\n  - github_user: bioimageiobot\n"
        "license: MIT\ngit_repo: https://example.org/lab/models\n"
    )
    monkeypatch.setenv("MTUNET_CONFIG_DIR", str(cfg_dir))
    assert bioimageio_export.export_config_path() == cfg_dir / "export.yaml"
    out = tmp_path / "cli.zip"
    rc = main(["export", str(checkpoint), "--format", "bioimageio", "--out", str(out), "--name", "BUSI lesions",
               "--description", "Finds lesions.", "--author", "Jane Doe; affiliation=Lab X; github_user=bioimageiobot",
               "--model-version", "1.2.0", "--training-data", "https://example.org/data"])
    assert rc == 0
    rdf = _rdf(out)
    assert rdf["name"] == "BUSI lesions" and rdf["description"] == "Finds lesions." and rdf["version"] == "1.2.0"
    assert rdf["authors"] == [{"name": "Jane Doe", "affiliation": "Lab X", "github_user": "bioimageiobot"}]
    assert rdf["maintainers"] == [{"github_user": "bioimageiobot"}]  # from the defaults file
    assert rdf["license"] == "MIT" and rdf["git_repo"] == "https://example.org/lab/models"
    assert rdf["config"]["napari-mtunet"]["training_data_url"] == "https://example.org/data"
    with zipfile.ZipFile(out) as zf:
        assert "- source: https&#58;//example\\.org/data" in zf.read("README.md").decode()
    # a typo in the defaults file is named, not silently ignored
    (cfg_dir / "export.yaml").write_text("author: Jane\n")
    with pytest.raises(ExportError, match=r"export.yaml: unknown keys \['author'\]"):
        export_bioimageio(checkpoint, tmp_path / "typo.zip")
    with pytest.raises(ExportError, match="unknown person field 'orchid'"):
        bioimageio_export.parse_person("Jane; orchid=1")
