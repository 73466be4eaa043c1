"""napari-mtunet is a good citizen of napari.

- it claims no folder: dropping one, File > Open Folder and ``viewer.open``
  (what ``napari FOLDER`` does) open it with napari's reader, without a
  "choose a reader" dialog;
- it takes no save away from napari's writers: Save Selected Layers of an
  image and a Labels layer writes napari's files, and the Save dialog offers
  no MTUNet file type;
- datasets are opened from napari's File menu through the Dataset widget;
- no reader, writer or sample-data code path imports torch (napari calls them
  on its GUI thread; torchvision pulls in triton, which crashes napari on
  software OpenGL), and ``guard_triton`` decides without torch.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

PLUGIN = "napari-mtunet"


# --------------------------------------------------------------------------- helpers


def _tif_folder(root: Path, n: int = 3) -> Path:
    import tifffile

    root.mkdir(parents=True)
    for i in range(n):
        tifffile.imwrite(root / f"slice_{i}.tif", np.full((16, 20), 10 * (i + 1), np.uint8))
    return root


def _zarr_folder(root: Path) -> Path:
    """The files of a Zarr v2 array folder, written by hand (opening it is napari's business, not ours)."""
    root.mkdir(parents=True)
    (root / ".zarray").write_text(json.dumps({
        "zarr_format": 2, "shape": [4, 4], "chunks": [4, 4], "dtype": "|u1", "compressor": None,
        "fill_value": 0, "order": "C", "filters": None,
    }))
    (root / "0.0").write_bytes(bytes(16))
    return root


def _busi_subset(busi_root: Path, dest: Path, per_class: int = 2) -> Path:
    """Real BUSI images (first ``per_class`` of each class, with all their masks) in the BUSI layout."""
    root = dest / "Dataset_BUSI_with_GT"
    for cls in ("benign", "malignant", "normal"):
        (root / cls).mkdir(parents=True)
        images = sorted(f for f in (busi_root / cls).glob("*.png") if "_mask" not in f.name)[:per_class]
        assert len(images) == per_class, f"{busi_root / cls}: fewer than {per_class} images"
        for image in images:
            for f in [image, *(busi_root / cls).glob(f"{glob.escape(image.stem)}_mask*.png")]:
                shutil.copy(f, root / cls / f.name)
    return root


def _menu_action(menu, *path: str):
    """The QAction at ``path`` (menu texts, '&&' read as '&') below ``menu``; fails naming what is there."""
    for i, text in enumerate(path):
        found = None
        for action in menu.actions():
            if action.text().replace("&&", "&") == text:
                found = action
                break
        if found is None:
            have = [a.text().replace("&&", "&") for a in menu.actions() if a.text()]
            raise AssertionError(f"no menu item {text!r} under {path[:i] or 'the menu'}; there are {have}")
        if i == len(path) - 1:
            return found
        menu = found.menu()
        assert menu is not None, f"{text!r} is not a submenu"
    raise AssertionError("empty menu path")


@pytest.fixture
def reader_dialogs(monkeypatch):
    """Every "choose a reader" dialog napari would show; each is answered with Cancel."""
    from napari._qt.dialogs import qt_reader_dialog

    shown: list[str] = []

    def fake_choices(self):
        shown.append(self.windowTitle())
        return "", False

    monkeypatch.setattr(qt_reader_dialog.QtReaderDialog, "get_user_choices", fake_choices)
    monkeypatch.setattr("napari._qt.qt_viewer.update_open_history", lambda *a, **k: None)
    return shown


# --------------------------------------------------------------------------- readers


@pytest.mark.gui
def test_folders_open_with_napari_without_a_reader_choice(make_napari_viewer, qtbot, tmp_path, reader_dialogs,
                                                          monkeypatch):
    from qtpy.QtCore import QMimeData, QPointF, Qt, QUrl
    from qtpy.QtGui import QDropEvent
    from qtpy.QtWidgets import QFileDialog

    folder = _tif_folder(tmp_path / "stack")
    viewer = make_napari_viewer()
    qt_viewer = viewer.window._qt_viewer

    # drag and drop the folder onto the canvas
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(folder))])
    drop = QDropEvent(QPointF(5, 5), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                      Qt.KeyboardModifier.NoModifier)
    qt_viewer.dropEvent(drop)
    assert reader_dialogs == [], "dropping a folder of images asked which reader to use"
    assert len(viewer.layers) == 1 and viewer.layers[0].data.shape == (3, 16, 20)

    # File > Open Folder...
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *a, **k: str(folder))
    _menu_action(viewer.window.file_menu, "Open Folder...").trigger()
    qtbot.wait(10)
    assert reader_dialogs == [], "File > Open Folder asked which reader to use"
    assert len(viewer.layers) == 2

    # `napari FOLDER` / viewer.open(FOLDER): no MultipleReaderError
    layers = viewer.open(str(folder))
    assert len(layers) == 1 and layers[0].data.shape == (3, 16, 20)


@pytest.mark.gui
@pytest.mark.parametrize("kind", ["zarr", "tifs", "generic dataset", "real BUSI"])
def test_no_folder_is_offered_to_our_plugin(kind, tmp_path, request):
    """What napari lists in its "choose a reader" dialog for a folder never includes napari-mtunet.

    npe2 matches directories by ``accepts_directories`` alone, before any
    ``get_reader`` can decline, so claiming dataset folders would mean claiming
    every folder: even a real dataset folder is not claimed.
    """
    from napari.plugins import _npe2
    from npe2 import PluginManager

    # the plugin discovery napari does at start-up (idempotent, unlike napari's _initialize_plugins,
    # which fails when another test's viewer already registered the plugins' actions)
    PluginManager.instance().discover(include_npe1=False)
    if kind == "zarr":
        folder = _zarr_folder(tmp_path / "image.zarr")
    elif kind == "tifs":
        folder = _tif_folder(tmp_path / "tifs")
    elif kind == "generic dataset":
        from napari_mtunet.sample_data import write_phantom_dataset

        folder = write_phantom_dataset(tmp_path / "phantom", n=3, size=64, seed=1)
    else:
        folder = request.getfixturevalue("busi_root")
    readers = _npe2.get_readers(str(folder))
    assert PLUGIN not in readers, readers
    assert readers, "napari's own reader should still be offered"


@pytest.mark.gui
def test_real_busi_dataset_opens_from_the_file_menu(make_napari_viewer, qtbot, tmp_path, busi_root, errors):
    """File > IO Utilities > Dataset docks the Dataset widget, which opens a real BUSI folder as layers."""
    from qtpy.QtWidgets import QWidget

    from napari_mtunet import layer_meta
    from napari_mtunet.widgets import DatasetWidget

    root = _busi_subset(busi_root, tmp_path)
    viewer = make_napari_viewer()
    _menu_action(viewer.window.file_menu, "IO Utilities", "Dataset (MTUNet classify and segment)").trigger()
    found = [w for w in viewer.window._qt_window.findChildren(QWidget) if isinstance(w, DatasetWidget)]
    assert len(found) == 1, "the File menu item did not dock the Dataset widget"
    w = found[0]
    w.root.value = str(root)
    w.load()
    qtbot.waitUntil(lambda: w.worker is None, timeout=120_000)
    assert errors == [], errors
    assert "samples: 6" in w.summary.toPlainText(), w.summary.toPlainText()
    w.n_preview.setValue(6)
    w.preview()
    qtbot.waitUntil(lambda: w.worker is None, timeout=120_000)
    assert errors == [], errors
    images = viewer.layers["Dataset_BUSI_with_GT images"]
    masks = viewer.layers["Dataset_BUSI_with_GT masks"]
    assert images.data.shape[:3] == (6, 256, 256) and masks.data.shape == (6, 256, 256)
    rec = layer_meta.read(masks.metadata)
    assert sorted(s.truth for s in rec.slices) == ["benign"] * 2 + ["malignant"] * 2 + ["normal"] * 2
    assert rec.kind == "dataset" and rec.extra["layout"] == "busi"


# --------------------------------------------------------------------------- writers


def _image_and_labels(viewer, n: int = 3):
    """An image and the Labels layer annotating it, both selected (a stack of ``n``, or 2-D when n == 1)."""
    from napari_mtunet.sample_data import make_phantom

    ph = make_phantom(n=n, size=64, seed=9)
    images, masks = (ph.images[0], ph.masks[0]) if n == 1 else (ph.images, ph.masks)
    image = viewer.add_image(images, name="scan")
    labels = viewer.add_labels(
        masks.copy(), name="scan annotation",
        metadata={"mtunet": {"classes": ph.labels, "source_layer": "scan", "is_stack": n > 1}},
    )
    viewer.layers.selection = {image, labels}
    return image, labels


@pytest.mark.gui
def test_saving_image_and_labels_without_extension_uses_napari_writers(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    _image_and_labels(viewer)
    out = tmp_path / "out"
    written = viewer.layers.save(str(out), selected=True)
    # napari's "Save to Folder": one file per layer, named after the layers
    assert sorted(Path(p).name for p in written) == ["scan annotation.tif", "scan.tif"], written
    assert not (out / "labels.csv").exists() and not (out / "images").exists()


@pytest.mark.gui
def test_save_dialog_offers_no_mtunet_file_type(make_napari_viewer, tmp_path, monkeypatch):
    """File > Save Selected Layers...: the user types a name and keeps the default file type."""
    from qtpy.QtWidgets import QFileDialog

    viewer = make_napari_viewer()
    _image_and_labels(viewer, n=1)  # 2-D: napari's default file type for image+labels may be a 2-D-only format
    offered: list[str] = []
    out = tmp_path / "saved"

    def fake_save(*args, **kwargs):
        filters = kwargs.get("filter", args[3] if len(args) > 3 else "")
        offered.append(filters)
        return str(out), filters.split(";;")[0]  # Qt's default: the first file type

    monkeypatch.setattr(QFileDialog, "getSaveFileName", fake_save)
    monkeypatch.setattr("napari._qt.qt_viewer.update_save_history", lambda *a, **k: None)
    _menu_action(viewer.window.file_menu, "Save Selected Layers...").trigger()
    assert offered, "the Save dialog was not asked for a file name"
    assert "MTUNet" not in offered[0], f"the Save dialog offers an MTUNet file type: {offered[0]}"
    assert not list(tmp_path.rglob("labels.csv")), "an MTUNet dataset was written"


def test_manifest_has_no_folder_reader_and_no_writer():
    pytest.importorskip("npe2")  # the floors job installs the core without napari
    from npe2 import PluginManager

    pm = PluginManager.instance()
    pm.discover()
    mf = pm.get_manifest(PLUGIN)
    assert not any(r.accepts_directories for r in mf.contributions.readers or [])
    assert not mf.contributions.writers
    for types in (["image", "labels"], ["labels"], ["image"]):
        assert not [w for w in pm.iter_compatible_writers(types) if w.plugin_name == PLUGIN]


# --------------------------------------------------------------------------- no torch on napari's GUI thread


@pytest.fixture(scope="module")
def real_checkpoint(tmp_path_factory):
    import torch

    from napari_mtunet.checkpoint import save_checkpoint
    from napari_mtunet.config import ModelConfig, Preprocessing
    from napari_mtunet.model import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(encoder_weights=None, class_names=["benign", "malignant", "normal"]), Preprocessing(image_size=64))
    return save_checkpoint(tmp_path_factory.mktemp("ck") / "model.safetensors", model)


def _run_python(code: str, **env: str) -> dict:
    full_env = {k: v for k, v in os.environ.items() if k != "MTUNET_ALLOW_TRITON"}
    full_env.update(env)
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                         timeout=300, env=full_env)
    assert res.returncode == 0, res.stdout + res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_contributions_import_no_torch(tmp_path, real_checkpoint):
    """Each reader, sample-data and dataset-writing path napari (or the user) runs on the GUI thread, and the
    modules napari's process loads to talk to the compute process, without torch."""
    pytest.importorskip("npe2")  # the floors job installs the core without napari
    from safetensors.numpy import save_file

    foreign = tmp_path / "someone_elses.safetensors"
    save_file({"w": np.zeros(2, np.float32)}, str(foreign), metadata={"format": "pt"})
    folder = _tif_folder(tmp_path / "tifs")
    out = tmp_path / "exported"
    result = _run_python(f"""
        import json, sys
        import numpy as np
        from npe2 import PluginManager

        pm = PluginManager.instance()
        pm.discover()
        mf = pm.get_manifest("napari-mtunet")
        claims = {{}}
        for path in ({str(folder)!r}, {str(real_checkpoint)!r}, {str(foreign)!r}):
            for rdr in mf.contributions.readers:
                fn = rdr.exec(kwargs={{"path": [path], "stack": False, "_registry": pm.commands}})
                claims[path.rsplit("/", 1)[-1]] = fn is not None
        shapes = [np.shape(d) for s in mf.contributions.sample_data for d, *_ in s.open(_registry=pm.commands)]

        from napari_mtunet.workflows.annotate import add_samples, sample_items
        img = np.zeros((2, 32, 32), np.uint8)
        lab = np.zeros((2, 32, 32), np.uint8)
        lab[:, 8:16, 8:16] = 1
        written = add_samples({str(out)!r}, sample_items(img, lab, ["a", "b"], rgb=False))
        import napari_mtunet.data.layouts, napari_mtunet.data.io  # what the Dataset widget's loader needs
        import napari_mtunet.widgets.samples, napari_mtunet.compute, napari_mtunet.jobs, napari_mtunet.outputs
        loaded = sorted(m for m in ("torch", "torchvision", "triton", "safetensors") if sys.modules.get(m) is not None)
        print(json.dumps({{"claims": claims, "loaded": loaded, "n_written": len(written), "shapes": shapes}}))
    """)
    assert result["loaded"] == [], f"imported on napari's GUI thread: {result['loaded']}"
    assert result["claims"] == {"tifs": False, "model.safetensors": True, "someone_elses.safetensors": False}
    assert result["n_written"] == 2 and (out / "labels.csv").is_file()
    assert [12, 256, 256] in result["shapes"] and [256, 256] in result["shapes"]


def test_guard_triton_masks_triton_without_importing_torch():
    result = _run_python("""
        import json, sys
        from napari_mtunet._triton import guard_triton
        guard_triton()
        before = {"torch": "torch" in sys.modules, "triton_masked": "triton" in sys.modules and sys.modules["triton"] is None}
        import torchvision  # torch treats the masked triton as absent
        print(json.dumps({**before, "triton_after": repr(sys.modules.get("triton"))}))
    """, CUDA_VISIBLE_DEVICES="-1")
    assert result == {"torch": False, "triton_masked": True, "triton_after": "None"}


@pytest.fixture
def no_torch_no_triton(monkeypatch):
    """This process as if torch and triton were not imported yet (restored afterwards)."""
    monkeypatch.setitem(sys.modules, "torch", None)  # sys.modules.get("torch") is None: "not imported"
    had, old = "triton" in sys.modules, sys.modules.get("triton")
    sys.modules.pop("triton", None)
    monkeypatch.delenv("MTUNET_ALLOW_TRITON", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    yield
    sys.modules.pop("triton", None)
    if had:
        sys.modules["triton"] = old


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the Linux driver markers")
def test_gpu_detection_without_torch(no_torch_no_triton, monkeypatch, tmp_path):
    from napari_mtunet import _triton as _reader  # the guard's own module

    marker = tmp_path / "proc_driver_nvidia_version"
    monkeypatch.setattr(_reader, "LINUX_GPU_MARKERS", (str(marker),))
    monkeypatch.setattr(_reader.shutil, "which", lambda name: None)
    assert _reader._accelerator_present() is False
    _reader.guard_triton()
    assert "triton" in sys.modules and sys.modules["triton"] is None  # masked: no GPU
    sys.modules.pop("triton")

    marker.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module")
    assert _reader._accelerator_present() is True
    _reader.guard_triton()
    assert "triton" not in sys.modules  # a GPU: triton stays importable

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert _reader._accelerator_present() is False  # every GPU hidden
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")

    marker.unlink()
    monkeypatch.setattr(_reader.shutil, "which", lambda name: "/usr/bin/nvidia-smi" if name == "nvidia-smi" else None)
    assert _reader._accelerator_present() is True

    monkeypatch.setenv("MTUNET_ALLOW_TRITON", "1")
    monkeypatch.setattr(_reader, "_accelerator_present", lambda: False)
    _reader.guard_triton()
    assert "triton" not in sys.modules  # opted out
