"""The checkpoint reader and the sample data through napari; dataset folders <-> layer data (Python API)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")
pytestmark = pytest.mark.gui

PLUGIN = "napari-mtunet"


@pytest.fixture(scope="module")
def phantom_root(tmp_path_factory):
    from napari_mtunet.sample_data import write_phantom_dataset

    return write_phantom_dataset(tmp_path_factory.mktemp("io") / "phantom", n=6, size=64, seed=2)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    import torch

    from napari_mtunet.checkpoint import save_checkpoint
    from napari_mtunet.config import ModelConfig, Preprocessing
    from napari_mtunet.model import build_model

    torch.manual_seed(0)
    model = build_model(
        ModelConfig(encoder_weights=None, class_names=["benign", "malignant", "normal"]), Preprocessing(image_size=64)
    )
    return save_checkpoint(tmp_path_factory.mktemp("ck") / "tiny.safetensors", model)


def test_sample_data_loads(make_napari_viewer):
    viewer = make_napari_viewer()
    layers = viewer.open_sample(PLUGIN, "phantom")
    assert [type(lyr).__name__ for lyr in layers] == ["Image", "Labels"]
    image, labels = layers
    assert image.data.shape == labels.data.shape == (12, 256, 256)
    from napari_mtunet import layer_meta

    rec = layer_meta.read(labels.metadata)
    assert rec.kind == "sample" and len(rec.slices) == 12
    assert {s.truth for s in rec.slices} <= {"benign", "malignant", "normal"} and rec.extra["synthetic"] is True
    single = viewer.open_sample(PLUGIN, "phantom_single")
    one = layer_meta.read(single[1].metadata)
    assert single[0].data.shape == (256, 256) and not one.is_stack and one.slices[0].truth


def test_read_dataset_layer_data(make_napari_viewer, phantom_root, tmp_path):
    from napari.layers import Layer

    from napari_mtunet._reader import read_dataset

    viewer = make_napari_viewer()
    for data, kwargs, kind in read_dataset(phantom_root):
        viewer.add_layer(Layer.create(data, kwargs, kind))
    image, labels = viewer.layers
    assert image.data.shape == (6, 256, 256) and labels.data.shape == (6, 256, 256)
    from napari_mtunet import layer_meta

    rec = layer_meta.read(image.metadata)
    rows = list(csv.DictReader(open(phantom_root / "labels.csv")))
    assert [s.truth for s in rec.slices] == [r["label"] for r in rows]
    assert rec.extra["layout"] == "generic" and rec.extra["n_total"] == 6
    assert labels.data.max() == 1 and labels.data[[i for i, r in enumerate(rows) if r["label"] == "normal"]].max() == 0
    empty = tmp_path / "empty_folder"
    empty.mkdir()
    with pytest.raises(Exception, match="empty_folder"):  # not a dataset: the error names the folder
        read_dataset(empty)


def test_layers_to_dataset_and_back(make_napari_viewer, tmp_path):
    """The one Python API that writes layers as samples (the Annotate widget's): napari_mtunet.workflows.annotate."""
    from napari_mtunet import layer_meta
    from napari_mtunet._reader import read_dataset
    from napari_mtunet.data import load_dataset, load_sample
    from napari_mtunet.sample_data import make_phantom
    from napari_mtunet.workflows.annotate import add_samples, check_pairing, sample_items

    ph = make_phantom(n=3, size=64, seed=9)
    viewer = make_napari_viewer()
    image = viewer.add_image(ph.images, name="scan")
    rec = layer_meta.annotation("scan", 3, ph.class_names, is_stack=True)
    for i, c in enumerate(ph.labels):
        rec.set_correction(i, c)
    labels = viewer.add_labels(ph.masks.copy(), name="scan [annotation]", metadata=layer_meta.as_metadata(rec))
    rec = layer_meta.read(labels.metadata)
    check_pairing(image.name, image.data.shape, labels.name, labels.data.shape, rec, rgb=False)
    infos = [rec.slice(i) for i in range(3)]
    items = sample_items(image.data, labels.data, [s.label for s in infos], rgb=False,
                         sources=[s.label_source for s in infos])
    out = tmp_path / "exported"
    added = add_samples(out, items, source="scan")
    assert len(added) == 3
    report = load_dataset(out, layout="generic")
    assert len(report.samples) == 3 and not report.errors
    by_name = {s.image.name: s for s in report.samples}
    for a, img, msk, lab in zip(added, ph.images, ph.masks, ph.labels):
        s = by_name[Path(a.path).name]
        got_img, got_mask = load_sample(s)
        np.testing.assert_array_equal(got_img, img)
        np.testing.assert_array_equal(got_mask, msk)
        assert s.label == lab
    rows = list(csv.DictReader(open(out / "labels.csv", encoding="utf-8")))
    assert [r["source"] for r in rows] == ["scan [0]", "scan [1]", "scan [2]"]
    assert {r["class_source"] for r in rows} == {"confirmed"}
    # and back as layer data
    layers = read_dataset(out)
    assert sorted(s.truth for s in layer_meta.read(layers[0][1]["metadata"]).slices) == sorted(ph.labels)


def test_layer_metadata_has_one_format():
    """Only the versioned record is read: the first format (``classes`` / ``class_name``) is not."""
    from napari_mtunet import layer_meta

    assert layer_meta.read({"mtunet": {"classes": ["benign"], "source_layer": "scan"}}) is None
    rec = layer_meta.ground_truth(["benign"], ["benign", "normal"], is_stack=False)
    assert layer_meta.read(layer_meta.as_metadata(rec)) == rec


def test_checkpoint_reader_opens_predict_widget(make_napari_viewer, tiny_checkpoint, tmp_path):
    from safetensors.torch import save_file
    import torch

    from napari_mtunet._reader import get_checkpoint_reader
    from napari_mtunet.widgets import PredictWidget

    other = tmp_path / "someone_elses.safetensors"
    save_file({"w": torch.zeros(2)}, str(other))
    assert get_checkpoint_reader(str(other)) is None  # not ours: let other readers try
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file at all")
    assert get_checkpoint_reader(str(junk)) is None
    huge = tmp_path / "huge_header.safetensors"  # claims a 1 TB header: never read
    huge.write_bytes((10**12).to_bytes(8, "little") + b"{}")
    assert get_checkpoint_reader(str(huge)) is None
    not_json = tmp_path / "not_json.safetensors"
    not_json.write_bytes((4).to_bytes(8, "little") + b"\xff\xfe{[")
    assert get_checkpoint_reader(str(not_json)) is None
    other_format = tmp_path / "other_format.safetensors"
    header = json.dumps({"__metadata__": {"mtunet": json.dumps({"format": "something-else"})}}).encode()
    other_format.write_bytes(len(header).to_bytes(8, "little") + header)
    assert get_checkpoint_reader(str(other_format)) is None
    assert get_checkpoint_reader(str(tmp_path)) is None  # a folder
    assert get_checkpoint_reader([str(tiny_checkpoint), str(tiny_checkpoint)]) is None  # a stack
    assert get_checkpoint_reader(str(tiny_checkpoint)) is not None
    upper = tmp_path / "MODEL.SAFETENSORS"  # npe2 matches extensions case-insensitively
    upper.write_bytes(Path(tiny_checkpoint).read_bytes())
    assert get_checkpoint_reader(str(upper)) is not None

    viewer = make_napari_viewer()
    n_layers = len(viewer.layers)
    viewer.open(str(tiny_checkpoint), plugin=PLUGIN)
    assert len(viewer.layers) == n_layers  # no layers, a widget
    from qtpy.QtWidgets import QWidget

    predict = [w for w in viewer.window._qt_window.findChildren(QWidget) if isinstance(w, PredictWidget)]
    assert len(predict) == 1 and predict[0].checkpoint.value == str(tiny_checkpoint)
    assert "mobilenet_v2" in predict[0].model_info.text()
    # opening a second checkpoint reuses the same widget
    viewer.open(str(tiny_checkpoint), plugin=PLUGIN)
    assert len([w for w in viewer.window._qt_window.findChildren(QWidget) if isinstance(w, PredictWidget)]) == 1


def test_checkpoint_recognition_matches_the_checkpoint_module():
    """The reader's torch-free constants are the checkpoint format's."""
    from napari_mtunet import _reader, checkpoint

    assert _reader.CHECKPOINT_META_KEY == checkpoint.META_KEY
    assert _reader.CHECKPOINT_FORMAT == checkpoint.FORMAT
    assert _reader.MAX_HEADER_BYTES > checkpoint.MAX_METADATA_BYTES
