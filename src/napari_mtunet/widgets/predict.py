"""Predict widget: checkpoint + image layer -> a NEW Labels layer with class metadata.

The image layer is never modified.  All model work (loading, prediction,
Grad-CAM, folder batches) runs in a napari thread worker; the widget only
turns results into layers, a class read-out and notifications.
"""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ._common import (
    LayerCombo,
    PathEdit,
    TorchThreads,
    combo,
    device_choices,
    error_message,
    layer_kind,
    notify_error,
    notify_info,
    start_worker,
    state_for,
    warm_up,
)

META_KEY = "mtunet"


# --------------------------------------------------------------------------- Qt-free helpers (run in workers)


class PredictorCache:
    """Keeps the last loaded model so repeated predictions do not reload it."""

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._predictor: Any = None

    def get(self, checkpoint: str, device: str, threshold: float, mode: str, tile_size: int) -> Any:
        from ..inference import Predictor

        path = Path(checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such checkpoint file")
        st = path.stat()
        key = (str(path.resolve()), st.st_mtime_ns, st.st_size, device)
        if key != self._key or self._predictor is None:
            self._predictor = None
            self._predictor = Predictor(path, device=device, threshold=threshold, mode=mode, tile_size=tile_size)
            self._key = key
        p = self._predictor
        # the same loaded network, with this run's settings (validated like the constructor does)
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        if tile_size < 64 or tile_size % 32:
            raise ValueError(f"tile_size must be a multiple of 32 and >= 64, got {tile_size}")
        p.threshold, p.mode, p.tile_size = float(threshold), mode, int(tile_size)
        return p

    def clear(self) -> None:
        dev = getattr(self._predictor, "device", None)
        self._predictor = None
        self._key = None
        if dev is not None:
            from ..device import empty_cache

            empty_cache(dev)


def layer_array(layer: Any) -> Any:
    """The full-resolution data of an image layer (level 0 of a multiscale)."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def prediction_metadata(preds: list[Any], *, is_stack: bool, source: str, info: Any) -> dict[str, Any]:
    """``metadata["mtunet"]`` for a predicted Labels layer (per slice for stacks)."""
    first = preds[0]
    meta: dict[str, Any] = {
        "kind": "prediction",
        "source_layer": source,
        "model_name": first.model_name,
        "model_hash": first.model_hash,
        "model_path": str(info.path) if getattr(info, "path", None) else None,
        "threshold": first.threshold,
        "class_names": list(first.class_names),
        "is_stack": is_stack,
        "classes": [p.class_name for p in preds],
    }
    if is_stack:
        meta["slices"] = [p.to_metadata() for p in preds]
    else:
        meta.update(first.to_metadata())
    return meta


def slice_metadata(meta: dict[str, Any], index: int) -> dict[str, Any] | None:
    """The per-image part of ``metadata["mtunet"]`` for slice ``index`` (or the 2-D image)."""
    if not meta:
        return None
    if meta.get("is_stack") and meta.get("slices"):
        slices = meta["slices"]
        if 0 <= index < len(slices):
            return slices[index]
        return None
    if "class_probabilities" in meta or "class_name" in meta:
        return meta
    classes = meta.get("classes")
    if classes and 0 <= index < len(classes):  # e.g. dataset / sample layers: class only
        return {"class_name": classes[index], "class_probabilities": None}
    return None


def predict_layer_job(cache: PredictorCache, params: dict[str, Any], data: Any, rgb: bool, name: str, gradcam: bool):
    """Worker body: predict one layer's data; returns what the widget needs to add layers."""
    t0 = time.perf_counter()
    predictor = cache.get(params["checkpoint"], params["device"], params["threshold"], params["mode"], params["tile_size"])
    with TorchThreads(str(predictor.device)):
        mode = None if params["mode"] == "auto" else params["mode"]
        arr = data if getattr(data, "ndim", 0) == 2 else np.asarray(data)
        out = predictor.predict(arr, rgb=rgb, mode=mode, return_probability=False)
        preds = out if isinstance(out, list) else [out]
        is_stack = isinstance(out, list)
        cam = None
        if gradcam:
            cam = gradcam_job(predictor, arr, rgb, preds, is_stack)
    if any(p.mask is None for p in preds):
        mask = None  # classification-only model
    else:
        mask = np.stack([p.mask for p in preds]) if is_stack else preds[0].mask
    meta = prediction_metadata(preds, is_stack=is_stack, source=name, info=predictor.info)
    return {"name": name, "mask": mask, "meta": meta, "cam": cam, "seconds": time.perf_counter() - t0}


def gradcam_job(predictor: Any, arr: np.ndarray, rgb: bool, preds: list[Any], is_stack: bool) -> np.ndarray:
    """Grad-CAM heat map(s) for the predicted class, aligned with the input (float32 in [0, 1])."""
    try:
        from .. import explain
    except ImportError as exc:  # pragma: no cover - depends on the engine version
        raise RuntimeError("Grad-CAM is not available in this version of napari-mtunet") from exc
    from ..preprocess import split_stack

    slices, _ = split_stack(arr, rgb=rgb)
    maps = []
    for sl, pred in zip(slices, preds):
        maps.append(_one_gradcam(explain, predictor, sl, pred))
    return np.stack(maps) if is_stack else maps[0]


def _one_gradcam(explain: Any, predictor: Any, image: np.ndarray, pred: Any) -> np.ndarray:
    """Grad-CAM at the model's input size (the image resized as in training), resized back."""
    import torch
    import torch.nn.functional as F

    from ..preprocess import to_float_rgb

    h, w = image.shape[:2]
    s = predictor.image_size
    x = torch.from_numpy(to_float_rgb(image)).permute(2, 0, 1)[None]
    x = F.interpolate(x, size=(s, s), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
    cam = explain.grad_cam(predictor.model, x.to(predictor.device), target_class=pred.class_index)
    up = F.interpolate(torch.from_numpy(cam)[:, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    return up.numpy().astype(np.float32)


def predict_folder_job(cache: PredictorCache, params: dict[str, Any], in_dir: str, out_dir: str):
    """Generator worker: predict every image file in ``in_dir``; masks + predictions.csv into ``out_dir``."""
    from skimage.io import imsave

    from ..data.io import is_image_file
    from ..paths import unique_path

    src = Path(in_dir)
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: input folder does not exist")
    files = sorted(p for p in src.iterdir() if p.is_file() and is_image_file(p))
    if not files:
        raise ValueError(f"{src}: no image files found (png, jpg, bmp, tif, dcm)")
    out = Path(out_dir)
    if out.resolve() == src.resolve():
        raise ValueError("the output folder must differ from the input folder (inputs are never overwritten)")
    (out / "masks").mkdir(parents=True, exist_ok=True)
    predictor = cache.get(params["checkpoint"], params["device"], params["threshold"], params["mode"], params["tile_size"])
    mode = None if params["mode"] == "auto" else params["mode"]
    rows = []
    failures = []
    with TorchThreads(str(predictor.device)):
        for i, f in enumerate(files):
            try:
                pred = predictor.predict_many([f], mode=mode, return_probability=False)[0]
            except Exception as exc:  # one bad file must not stop the batch
                failures.append(f"{f.name}: {exc}")
                yield i + 1, len(files)
                continue
            if pred.mask is not None:
                target = unique_path(out / "masks" / f"{f.stem}.png")  # never overwrite earlier results
                imsave(target, (pred.mask > 0).astype(np.uint8) * 255, check_contrast=False)
            row = {"filename": f.name, "class": pred.class_name or ""}
            if pred.class_probabilities is not None:
                row.update({f"p_{n}": f"{float(p):.4f}" for n, p in zip(pred.class_names, pred.class_probabilities)})
            row["lesion_fraction"] = "" if pred.mask is None else f"{float((pred.mask > 0).mean()):.5f}"
            rows.append(row)
            yield i + 1, len(files)
    csv_path = unique_path(out / "predictions.csv")
    fields = list(dict.fromkeys(k for r in rows for k in r)) or ["filename", "class"]
    with open(csv_path, "x", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    return {"csv": str(csv_path), "n": len(rows), "failures": failures}


# --------------------------------------------------------------------------- widget


class ClassReadout(QWidget):
    """Class name and one probability bar per class for the current slice."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.title = QLabel("No prediction yet")
        self.title.setWordWrap(True)
        self.bars_box = QVBoxLayout()
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.title)
        lay.addLayout(self.bars_box)
        self.bars: dict[str, QProgressBar] = {}

    def _ensure_bars(self, names: list[str]) -> None:
        if list(self.bars) == names:
            return
        for bar in self.bars.values():
            self.bars_box.removeWidget(bar)
            bar.deleteLater()
        self.bars = {}
        for n in names:
            bar = QProgressBar()
            bar.setRange(0, 1000)
            bar.setTextVisible(True)
            self.bars_box.addWidget(bar)
            self.bars[n] = bar

    def show_result(self, layer_name: str, index: int | None, info: dict[str, Any] | None) -> None:
        if info is None:
            self.title.setText(f"{layer_name}: no class for this slice")
            for bar in self.bars.values():
                bar.setValue(0)
            return
        where = f"{layer_name}" + (f" [slice {index}]" if index is not None else "")
        probs = info.get("class_probabilities") or {}
        name = info.get("class_name")
        top = probs.get(name) if name in probs else None
        self.title.setText(f"<b>{name}</b>" + (f" ({top:.1%})" if top is not None else "") + f" — {where}")
        self._ensure_bars(list(probs))
        for n, bar in self.bars.items():
            p = float(probs.get(n, 0.0))
            bar.setValue(int(round(p * 1000)))
            bar.setFormat(f"{n}: {p:.1%}")

    def current_class(self) -> str | None:
        txt = self.title.text()
        if txt.startswith("<b>"):
            return txt[3 : txt.index("</b>")]
        return None


class PredictWidget(QWidget):
    """Dock widget: run a checkpoint on an image layer (or all layers / a folder)."""

    def __init__(self, napari_viewer: Any, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = state_for(napari_viewer)
        warm_up()  # heavy imports now, in the background, not in the middle of the work
        self.cache = PredictorCache()
        self.worker = None
        self.last_result: dict[str, Any] | None = None
        self.last_labels: Any = None
        self.last_error: str | None = None

        self.checkpoint = PathEdit("file", "napari-mtunet checkpoint (*.safetensors)", "model .safetensors")
        self.model_info = QLabel("")
        self.model_info.setWordWrap(True)
        self.image_layer = LayerCombo(napari_viewer, ("image",))
        self.mode = combo(["auto", "resize", "native", "tiled"], "auto")
        self.mode.setToolTip("auto: as trained (resize) for normal images, tiled at native resolution for big ones")
        self.tile_size = QSpinBox()
        self.tile_size.setRange(64, 4096)
        self.tile_size.setSingleStep(32)
        self.tile_size.setValue(512)
        self.threshold = QDoubleSpinBox()
        self.threshold.setRange(0.0, 1.0)
        self.threshold.setSingleStep(0.05)
        self.threshold.setValue(0.5)
        self.device = combo(device_choices(), "auto")
        self.gradcam = QCheckBox("Grad-CAM heat map layer")
        self.predict_button = QPushButton("Predict")
        self.predict_all_button = QPushButton("Predict all image layers")
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.readout = ClassReadout()

        form = QFormLayout()
        form.addRow("Checkpoint", self.checkpoint)
        form.addRow("", self.model_info)
        form.addRow("Image layer", self.image_layer)
        form.addRow("Mode", self.mode)
        form.addRow("Tile size", self.tile_size)
        form.addRow("Threshold", self.threshold)
        form.addRow("Device", self.device)
        form.addRow("", self.gradcam)

        buttons = QHBoxLayout()
        buttons.addWidget(self.predict_button)
        buttons.addWidget(self.predict_all_button)

        self.folder_in = PathEdit("dir", placeholder="folder of images")
        self.folder_out = PathEdit("dir", placeholder="output folder (masks + predictions.csv)")
        self.folder_button = QPushButton("Predict folder to disk")
        self.folder_progress = QProgressBar()
        self.folder_progress.setVisible(False)
        batch = QGroupBox("Batch: folder to disk")
        bform = QFormLayout(batch)
        bform.addRow("Input", self.folder_in)
        bform.addRow("Output", self.folder_out)
        bform.addRow(self.folder_button)
        bform.addRow(self.folder_progress)

        result = QGroupBox("Class of the current slice")
        rl = QVBoxLayout(result)
        rl.addWidget(self.readout)

        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addLayout(buttons)
        lay.addWidget(self.status)
        lay.addWidget(result)
        lay.addWidget(batch)
        lay.addStretch(1)

        self.predict_button.clicked.connect(self.predict)
        self.predict_all_button.clicked.connect(self.predict_all)
        self.folder_button.clicked.connect(self.predict_folder)
        self.checkpoint.changed.connect(self._describe_checkpoint)
        self.state.checkpoint_changed.connect(self._on_new_checkpoint)
        napari_viewer.dims.events.current_step.connect(self.update_readout)
        napari_viewer.layers.selection.events.active.connect(self.update_readout)
        if self.state.checkpoint:
            self.checkpoint.value = self.state.checkpoint

    # ------------------------------------------------------------------ parameters

    def params(self) -> dict[str, Any]:
        ckpt = self.checkpoint.value
        if not ckpt:
            raise ValueError("choose a checkpoint (.safetensors) first")
        return {
            "checkpoint": ckpt,
            "device": self.device.currentText(),
            "threshold": float(self.threshold.value()),
            "mode": self.mode.currentText(),
            "tile_size": int(self.tile_size.value()),
        }

    def set_checkpoint(self, path: str | os.PathLike) -> None:
        self.checkpoint.value = str(path)

    def _on_new_checkpoint(self, path: str) -> None:
        self.set_checkpoint(path)

    def _describe_checkpoint(self, path: str) -> None:
        if not path:
            self.model_info.setText("")
            return
        try:
            from ..checkpoint import read_metadata

            meta = read_metadata(path)
        except Exception as exc:  # noqa: BLE001
            self.model_info.setText(f"<span style='color:#e57373'>{error_message(exc)}</span>")
            return
        m = meta["model"]
        self.model_info.setText(
            f"{m['encoder_name']} UNet, task {m['task']}, classes {', '.join(meta['class_names'])}, "
            f"{meta['preprocessing']['image_size']} px, hash {meta['content_hash'][:12]}"
            + (f", fine-tuned from {Path(meta['parent']).name}" if meta.get("parent") else "")
        )

    # ------------------------------------------------------------------ running

    @property
    def busy(self) -> bool:
        return self.worker is not None

    def _set_busy(self, busy: bool, text: str = "") -> None:
        for b in (self.predict_button, self.predict_all_button, self.folder_button):
            b.setEnabled(not busy)
        self.status.setText(text)

    def _fail(self, exc: BaseException, context: str = "Prediction failed") -> None:
        self.last_error = error_message(exc, context)
        notify_error(self.last_error)
        self.status.setText(self.last_error)

    def _done(self) -> None:
        self.worker = None
        for b in (self.predict_button, self.predict_all_button, self.folder_button):
            b.setEnabled(True)
        self.folder_progress.setVisible(False)

    def predict(self, *_: Any) -> Any:
        """Predict the chosen image layer in a worker; the result is added as a new Labels layer."""
        if self.busy:
            return None
        layer = self.image_layer.layer()
        try:
            params = self.params()
            if layer is None:
                raise ValueError("choose an image layer to predict")
        except Exception as exc:  # noqa: BLE001
            self._fail(exc, "Cannot predict")
            return None
        self.last_error = None
        self._set_busy(True, f"Predicting {layer.name!r}…")
        self.worker = start_worker(
            predict_layer_job,
            self.cache,
            params,
            layer_array(layer),
            bool(getattr(layer, "rgb", False)),
            layer.name,
            self.gradcam.isChecked(),
            returned=self._add_result,
            errored=lambda e: self._fail(e, f"Prediction of {layer.name!r} failed"),
            finished=self._done,
        )
        return self.worker

    def predict_all(self, *_: Any) -> Any:
        """Predict every image layer (batch) in one worker; one Labels layer per image layer."""
        if self.busy:
            return None
        layers = [lyr for lyr in self.viewer.layers if layer_kind(lyr) == "image" and not _is_heatmap(lyr)]
        try:
            params = self.params()
            if not layers:
                raise ValueError("there are no image layers to predict")
        except Exception as exc:  # noqa: BLE001
            self._fail(exc, "Cannot predict")
            return None
        jobs = [(layer_array(lyr), bool(getattr(lyr, "rgb", False)), lyr.name) for lyr in layers]
        gradcam = self.gradcam.isChecked()
        cache = self.cache

        def run():
            for data, rgb, name in jobs:
                try:
                    yield predict_layer_job(cache, params, data, rgb, name, gradcam)
                except Exception as exc:  # noqa: BLE001 - report and go on with the next layer
                    yield {"error": error_message(exc, f"layer {name!r}")}

        self.last_error = None
        self._set_busy(True, f"Predicting {len(jobs)} image layer(s)…")
        self.worker = start_worker(run, yielded=self._add_result, errored=self._fail, finished=self._done)
        return self.worker

    def predict_folder(self, *_: Any) -> Any:
        if self.busy:
            return None
        try:
            params = self.params()
            if not self.folder_in.value or not self.folder_out.value:
                raise ValueError("choose an input folder and an output folder")
        except Exception as exc:  # noqa: BLE001
            self._fail(exc, "Cannot predict folder")
            return None
        self.last_error = None
        self._set_busy(True, "Predicting folder…")
        self.folder_progress.setVisible(True)
        self.folder_progress.setValue(0)

        def progress(v):
            i, n = v
            self.folder_progress.setRange(0, n)
            self.folder_progress.setValue(i)
            self.status.setText(f"Predicting folder: {i}/{n}")

        def finished_folder(res):
            self.last_result = res
            msg = f"Predicted {res['n']} image(s); classes in {res['csv']}"
            if res["failures"]:
                msg += f"; {len(res['failures'])} file(s) failed: " + "; ".join(res["failures"][:3])
            self.status.setText(msg)
            notify_info(msg)

        self.worker = start_worker(
            predict_folder_job,
            self.cache,
            params,
            self.folder_in.value,
            self.folder_out.value,
            yielded=progress,
            returned=finished_folder,
            errored=lambda e: self._fail(e, "Folder prediction failed"),
            finished=self._done,
        )
        return self.worker

    # ------------------------------------------------------------------ results -> layers

    def _add_result(self, res: dict[str, Any]) -> None:
        if "error" in res:
            self.last_error = res["error"]
            notify_error(res["error"])
            return
        self.last_result = res
        src = self.viewer.layers[res["name"]] if res["name"] in self.viewer.layers else None
        geo = {}
        if src is not None:
            geo = {"scale": tuple(src.scale), "translate": tuple(src.translate)}
        meta = {META_KEY: res["meta"]}
        if res["mask"] is not None:
            labels = self.viewer.add_labels(
                res["mask"].astype(np.uint8), name=f"{res['name']} [mtunet]", metadata=meta, opacity=0.5, **geo
            )
        else:  # classification-only model: keep the classes on an empty layer
            shape = _spatial_shape(src) if src is not None else (1, 1)
            labels = self.viewer.add_labels(np.zeros(shape, np.uint8), name=f"{res['name']} [mtunet]", metadata=meta, **geo)
        self.last_labels = labels
        if res.get("cam") is not None:
            self.viewer.add_image(
                res["cam"],
                name=f"{res['name']} [Grad-CAM]",
                colormap="inferno",
                blending="additive",
                opacity=0.6,
                contrast_limits=(0.0, 1.0),
                metadata={META_KEY: {"kind": "gradcam", "source_layer": res["name"]}},
                **geo,
            )
        if src is not None:  # keep the user's image selected for the next prediction
            self.viewer.layers.selection.active = labels
        self.status.setText(
            f"{res['name']}: {_summary(res['meta'])} ({res['seconds']:.1f} s, model {res['meta']['model_name']})"
        )
        self.update_readout()

    def _readout_layer(self) -> Any:
        active = self.viewer.layers.selection.active
        if active is not None and isinstance(active.metadata.get(META_KEY), dict):
            if layer_kind(active) == "labels" or active.metadata[META_KEY].get("classes"):
                return active
        if self.last_labels is not None and self.last_labels in self.viewer.layers:
            return self.last_labels
        return None

    def current_index(self, layer: Any) -> int | None:
        if layer.ndim < 3:
            return None
        try:
            pos = layer.world_to_data(self.viewer.dims.point)
            idx = int(round(float(pos[0])))
        except Exception:  # noqa: BLE001
            idx = int(self.viewer.dims.current_step[0])
        return int(np.clip(idx, 0, layer.data.shape[0] - 1))

    def update_readout(self, *_: Any) -> None:
        layer = self._readout_layer()
        if layer is None:
            return
        meta = layer.metadata.get(META_KEY) or {}
        idx = self.current_index(layer)
        self.readout.show_result(layer.name, idx, slice_metadata(meta, idx or 0))

    def closeEvent(self, event) -> None:  # noqa: N802
        self.cache.clear()
        super().closeEvent(event)


def _summary(meta: dict[str, Any]) -> str:
    classes = [c for c in meta.get("classes", []) if c is not None]
    if not classes:
        return "segmentation only"
    if len(classes) == 1:
        return f"class {classes[0]}"
    counts: dict[str, int] = {}
    for c in classes:
        counts[c] = counts.get(c, 0) + 1
    return f"{len(classes)} slices: " + ", ".join(f"{k} {v}" for k, v in counts.items())


def _spatial_shape(layer: Any) -> tuple[int, ...]:
    shape = tuple(layer_array(layer).shape)
    return shape[:-1] if getattr(layer, "rgb", False) else shape


def _is_heatmap(layer: Any) -> bool:
    meta = layer.metadata.get(META_KEY)
    return isinstance(meta, dict) and meta.get("kind") == "gradcam"
