"""Prediction on arrays as napari holds them: any size, dtype, channels, stacks, huge images.

Three ways to run the network over an image (``mode``):

- ``resize``: the whole image is resized to the training size
  (``preprocessing.image_size``), predicted, and the probability map is
  resized back.  This is how models trained on whole resized images
  (BUSI, ISIC, ...) see their inputs, and it is the default for them.
- ``native``: the image is predicted at its own resolution, reflect-padded to
  a multiple of 32 and cropped back.
- ``tiled``: native resolution in overlapping tiles whose probabilities are
  blended with a linear ramp over the overlap (no visible seams).  Tiles
  are processed one row at a time into a band buffer, so working memory is
  bounded by ``tile_size x image width`` and no float copy of the whole
  image is made.  The image-level class is the average of the tiles' class
  probabilities weighted by how much real (unpadded) image each tile covers.

``auto`` picks ``resize`` for resize-trained models up to
``max_resize_side`` pixels, otherwise ``native`` when the image fits in one
tile and ``tiled`` beyond.

Interactive models (trained with ``--interactive``) also take prompts:
``predict(image, points=[(row, col, positive)], box=(row0, col0, row1, col1),
previous_mask=None)`` segments the one object the prompts point at.  Only the
region around the prompts is run (:func:`napari_mtunet.prompts.zoom_region`),
resized to the model's input size, so a small lesion in a large image gets the
model's full resolution; the mask comes back at the image's own size and the
class is reported from the same pass.  A first click with no previous mask
runs the whole image, then zooms on that result (two passes).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoint import CheckpointInfo, info_for_model
from .config import InteractiveConfig, Postprocessing
from .device import resolve_device
from .postprocess import forward as forward_with_tta
from .postprocess import consistent_class_probabilities, no_lesion_index, remove_small_lesions
from .preprocess import ImageFormatError, scale_to_unit, split_stack, to_float_rgb
from .prompts import (PromptError, Prompts, Region, apply_prompts, click_radius_in_image, ellipse_in_box, encode,
                      zoom_region)

MODES = ("auto", "resize", "native", "tiled")
#: Inference engines: PyTorch, or ONNX Runtime on the exported graph (napari_mtunet.export; CPU-only machines).
BACKENDS = ("torch", "onnxruntime")


#: Prompted prediction: extra passes over a grown region when the mask reaches the edge of the region run.
GROW_PASSES = 2


def touches_region_edge(mask: np.ndarray, region: tuple[int, int, int, int]) -> bool:
    """Whether ``mask`` reaches an edge of ``region`` that is not an edge of the image."""
    h, w = mask.shape[:2]
    r0, c0, r1, c1 = region
    sides = ((r0 > 0, mask[r0, c0:c1]), (r1 < h, mask[r1 - 1, c0:c1]),
             (c0 > 0, mask[r0:r1, c0]), (c1 < w, mask[r0:r1, c1 - 1]))
    return any(inner and bool(np.any(edge)) for inner, edge in sides)


class NonFiniteOutputError(ValueError):
    """The network's outputs hold NaN or infinity: no class or mask is reported from them."""


@dataclass
class Prediction:
    """The result for one 2-D image."""

    mask: np.ndarray | None  # uint8 (H, W): 0/1
    probability: np.ndarray | None  # float32 (H, W): foreground probability
    class_index: int | None
    class_name: str | None
    class_probabilities: np.ndarray | None  # float32 (C,)
    class_names: list[str] = field(default_factory=list)
    threshold: float = 0.5
    mode: str = "resize"
    model_name: str = ""
    model_hash: str = ""
    #: Prompted predictions: the image region that was run (row0, col0, row1, col1), ends exclusive.
    region: tuple[int, int, int, int] | None = None


def _ramp_weight(th: int, tw: int, overlap_y: int, overlap_x: int) -> np.ndarray:
    """Separable blending window: 1 in the middle, linear ramps over the overlaps."""

    def ramp(n: int, ov: int) -> np.ndarray:
        w = np.ones(n, np.float32)
        if ov > 0:
            r = (np.arange(ov, dtype=np.float32) + 1) / (ov + 1)
            w[:ov] = r
            w[-ov:] = np.minimum(w[-ov:], r[::-1])
        return w

    return np.outer(ramp(th, overlap_y), ramp(tw, overlap_x))


def _positions(length: int, tile: int, stride: int) -> list[int]:
    if length <= tile:
        return [0]
    pos = list(range(0, length - tile, stride))
    pos.append(length - tile)
    return sorted(set(pos))


class _Converter:
    """Converts tiles of one image consistently (float images scaled by the global range)."""

    def __init__(self, image: np.ndarray, where: str | None):
        self.where = where
        self.scale: tuple[float, float] | None = None
        if np.issubdtype(image.dtype, np.floating):
            arr = np.asarray(image)
            if not np.isfinite(arr).all():
                n_bad = int((~np.isfinite(arr)).sum())
                raise ImageFormatError(f"{where + ': ' if where else ''}image contains {n_bad} NaN or infinite pixel(s)")
            lo, hi = arr.min(), arr.max()  # native precision: float64 ranges can overflow float32
            if lo < 0.0 or hi > 1.0:
                self.scale = (lo, hi)

    def __call__(self, tile: np.ndarray) -> np.ndarray:
        if self.scale is not None:
            tile = scale_to_unit(tile, *self.scale)
        return to_float_rgb(tile, where=self.where)


class Predictor:
    """Run a trained model on numpy images.

    ``model`` is a checkpoint path (``.safetensors``), a bioimage.io package
    exported by napari-mtunet (``.zip``, its folder or ``rdf.yaml``), an
    ``.onnx`` file exported by napari-mtunet (``backend="onnxruntime"`` only)
    or an in-memory ``MultiTaskUNet``.  ``backend="onnxruntime"`` runs the
    network with ONNX Runtime (exported once per model and cached, see
    :func:`napari_mtunet.modelfiles.onnx_runtime.cached_onnx`); pre- and
    post-processing are the same code as for ``backend="torch"``.
    """

    def __init__(
        self,
        model: str | os.PathLike | torch.nn.Module,
        *,
        device: str | torch.device = "auto",
        threshold: float = 0.5,
        mode: str = "auto",
        tile_size: int = 512,
        tile_overlap: float = 0.25,
        batch_size: int = 8,
        max_resize_side: int = 2048,
        backend: str = "torch",
    ):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        if tile_size < 64 or tile_size % 32:
            raise ValueError(f"tile_size must be a multiple of 32 and >= 64, got {tile_size}")
        if not 0.0 <= tile_overlap < 0.5:
            raise ValueError(f"tile_overlap must be in [0, 0.5), got {tile_overlap}")
        self.backend = backend
        self._ort = None  # ONNX Runtime model (backend "onnxruntime")
        self.device = resolve_device("cpu" if backend == "onnxruntime" and device == "auto" else device)
        if backend == "onnxruntime":
            from .modelfiles.onnx_session import onnxruntime_providers

            providers = onnxruntime_providers(self.device)
        if isinstance(model, (str, os.PathLike)) and str(model).lower().endswith(".onnx"):
            if backend != "onnxruntime":
                raise ValueError(f"{model}: an ONNX file runs with backend='onnxruntime' only")
            from .modelfiles.onnx_file import read_onnx_info
            from .modelfiles.onnx_runtime import OnnxRuntimeModel

            info = read_onnx_info(model)
            net = self._ort = OnnxRuntimeModel(model, info, providers=providers)
        elif isinstance(model, (str, os.PathLike)):
            from .modelfiles.package import open_model

            net, info = open_model(model, device=self.device)
        else:
            net = getattr(model, "module", model)
            info = info_for_model(net)
            net = net.to(self.device)
        if backend == "onnxruntime" and self._ort is None:
            from .modelfiles.onnx_runtime import OnnxRuntimeModel, cached_onnx

            self._ort = OnnxRuntimeModel(cached_onnx(net, info), info, providers=providers)
        self.model = net.eval()
        self.info: CheckpointInfo = info
        self.threshold = float(threshold)
        self.mode = mode
        self.tile_size = int(tile_size)
        self.tile_overlap = float(tile_overlap)
        self.batch_size = max(1, int(batch_size))
        self.max_resize_side = int(max_resize_side)
        self.stride = self.model.output_stride
        cfg = self.model.config
        self.has_seg = cfg.task != "cls"  # the model has a decoder
        self.has_cls = cfg.task != "seg"  # the model has a classification head
        self.class_names = list(cfg.class_names)
        #: Post-processing chosen on the validation split when the model was trained (default: none).
        self.postprocessing = info.postprocessing if hasattr(info, "postprocessing") else Postprocessing()
        #: Interactive models: how prompts are zoomed, encoded and applied (as in training).
        run = getattr(info, "run", None)
        self.interactive = run.interactive if run is not None else InteractiveConfig()
        #: Called as ``tile_progress(rows_done, rows_total)`` after each row of tiles of a tiled
        #: prediction; it may raise (e.g. on a cancel request) to stop the prediction.
        self.tile_progress: Any = None

    # ------------------------------------------------------------------ helpers

    @property
    def image_size(self) -> int:
        return self.info.preprocessing.image_size

    def choose_mode(self, height: int, width: int) -> str:
        if self.mode != "auto":
            return self.mode
        if self.info.preprocessing.resize and max(height, width) <= self.max_resize_side:
            return "resize"
        if height <= self.tile_size and width <= self.tile_size:
            return "native"
        return "tiled"

    @torch.inference_mode()
    def _forward(self, batch: torch.Tensor, hflip_tta: bool | None = None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(B, C, H, W) float in [0, 1] on device (the image channels, then any guidance channels) ->
        (lesion probabilities (B, 1, H, W), class probabilities (B, classes))."""
        if batch.device.type == "cpu" and self._ort is None:
            # channels_last: ~30% less CPU time per forward than NCHW for the mobilenet_v2 UNet (oneDNN;
            # docs/benchmarks.md).  Checked by strides, not is_contiguous(): a (1, C, H, W) view whose
            # batch stride is not C*H*W passes is_contiguous(channels_last) yet convolutions treat it
            # as NCHW.
            n, c, h, w = batch.shape
            if batch.stride() != (c * h * w, 1, w * c, c):
                batch = batch.clone(memory_format=torch.channels_last)
        tta = self.postprocessing.hflip_tta if hflip_tta is None else hflip_tta
        out = forward_with_tta(self.model if self._ort is None else self._ort, batch, hflip_tta=tta)
        for name, t in (("segmentation", out.seg), ("class", out.cls)):
            if t is not None and not bool(torch.isfinite(t).all()):
                raise NonFiniteOutputError(
                    f"model {self.info.name} produced {int((~torch.isfinite(t)).sum())} NaN/infinite {name} "
                    "output value(s); no class or mask is reported (the model's weights are broken)"
                )
        return out.segmentation_probabilities(), out.class_probabilities()

    def _finish(
        self, prob: np.ndarray | None, cls_prob: np.ndarray | None, mode: str, return_probability: bool
    ) -> Prediction:
        mask = None
        fg = None
        if prob is not None:
            mask = prob >= self.threshold
            if mode != "tiled" and self.postprocessing.min_lesion_fraction > 0:
                mask = remove_small_lesions(mask, self.postprocessing.min_lesion_fraction)
            mask = mask.astype(np.uint8)
            fg = prob.astype(np.float32, copy=False)
        idx = name = None
        nl = no_lesion_index(self.postprocessing, self.class_names)
        if cls_prob is not None and nl is not None and mask is not None and mode != "tiled":
            cls_prob = consistent_class_probabilities(cls_prob, bool(mask.any()), nl)  # the heads agree
        if cls_prob is not None:
            idx = int(np.argmax(cls_prob))
            name = self.class_names[idx] if idx < len(self.class_names) else str(idx)
        return Prediction(
            mask=mask,
            probability=fg if return_probability else None,
            class_index=idx,
            class_name=name,
            class_probabilities=None if cls_prob is None else cls_prob.astype(np.float32),
            class_names=list(self.class_names),
            threshold=self.threshold,
            mode=mode,
            model_name=self.info.name,
            model_hash=self.info.content_hash,
        )

    def _to_tensor(self, rgb: np.ndarray) -> torch.Tensor:
        # (1, H, W, 3) -> (1, 3, H, W) view with proper channels_last strides (see _forward)
        return torch.from_numpy(rgb[None]).permute(0, 3, 1, 2).to(self.device)

    def _squeeze_seg(self, seg: torch.Tensor) -> np.ndarray:
        """(1, H, W) lesion probability -> (H, W) numpy."""
        return seg.float().cpu().numpy()[0]

    # ------------------------------------------------------------------ modes

    def _resize_batch(self, rgbs: list[np.ndarray]) -> list[tuple[np.ndarray | None, np.ndarray | None]]:
        s = self.image_size
        batch = torch.cat(
            [
                F.interpolate(self._to_tensor(r), size=(s, s), mode="bilinear", antialias=True, align_corners=False)
                for r in rgbs
            ]
        )
        seg, cls = self._forward(batch)
        out = []
        for i, r in enumerate(rgbs):
            p = None
            if seg is not None:
                up = F.interpolate(seg[i : i + 1].float(), size=r.shape[:2], mode="bilinear", align_corners=False)
                p = self._squeeze_seg(up[0])
            out.append((p, None if cls is None else cls[i].cpu().numpy()))
        return out

    def _native(self, rgb: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
        h, w = rgb.shape[:2]
        ph = math.ceil(h / self.stride) * self.stride - h
        pw = math.ceil(w / self.stride) * self.stride - w
        x = self._to_tensor(rgb)
        if ph or pw:
            pad_mode = "reflect" if ph < h and pw < w else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=pad_mode)
        seg, cls = self._forward(x)
        p = None if seg is None else self._squeeze_seg(seg[0, :, :h, :w])
        return p, None if cls is None else cls[0].cpu().numpy()

    def _tiles(self, height: int, width: int) -> tuple[int, int, list[int], list[int], int, int]:
        th = min(self.tile_size, math.ceil(height / self.stride) * self.stride)
        tw = min(self.tile_size, math.ceil(width / self.stride) * self.stride)
        ov_y = int(th * self.tile_overlap) // 2 * 2
        ov_x = int(tw * self.tile_overlap) // 2 * 2
        ys = _positions(height, th, th - ov_y)
        xs = _positions(width, tw, tw - ov_x)
        return th, tw, ys, xs, ov_y, ov_x

    def iter_tiles(self, image: np.ndarray) -> Iterator[tuple[int, int, np.ndarray]]:
        """Yield (y, x, float RGB tile) in row-major order, padded to the tile size where the image is smaller."""
        h, w = image.shape[:2]
        th, tw, ys, xs, _, _ = self._tiles(h, w)
        conv = _Converter(image, None)
        for y in ys:
            for x in xs:
                tile = conv(np.asarray(image[y : y + th, x : x + tw]))
                if tile.shape[0] < th or tile.shape[1] < tw:
                    tile = np.pad(tile, ((0, th - tile.shape[0]), (0, tw - tile.shape[1]), (0, 0)), mode="edge")
                yield y, x, tile

    def _tiled(
        self, image: np.ndarray, where: str | None, return_probability: bool
    ) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        """Returns (probability or None, mask, class probabilities)."""
        h, w = image.shape[:2]
        th, tw, ys, xs, ov_y, ov_x = self._tiles(h, w)
        conv = _Converter(image, where)
        weight = _ramp_weight(th, tw, ov_y if len(ys) > 1 else 0, ov_x if len(xs) > 1 else 0)
        prob_out = np.empty((h, w), np.float32) if (self.has_seg and return_probability) else None
        mask_out = np.empty((h, w), np.uint8) if self.has_seg else None
        acc = np.zeros((th, w), np.float32) if self.has_seg else None
        wsum = np.zeros((th, w), np.float32) if self.has_seg else None
        cls_acc = None
        cls_wsum = 0.0

        def flush(y0: int, y1: int, offset: int) -> None:
            rows = slice(y0 - offset, y1 - offset)
            p = acc[rows] / np.maximum(wsum[rows], 1e-8)
            if prob_out is not None:
                prob_out[y0:y1] = p
            mask_out[y0:y1] = p >= self.threshold

        def make_tile(y: int, x: int) -> tuple[int, np.ndarray, int]:
            tile = conv(np.asarray(image[y : y + th, x : x + tw]))
            real = tile.shape[0] * tile.shape[1]
            if tile.shape[0] < th or tile.shape[1] < tw:
                tile = np.pad(tile, ((0, th - tile.shape[0]), (0, tw - tile.shape[1]), (0, 0)), mode="edge")
            return x, tile, real

        for yi, y in enumerate(ys):
            # Tiles are converted one batch at a time: float working memory is
            # O(batch_size x tile), independent of the image width.
            for start in range(0, len(xs), self.batch_size):
                chunk = [make_tile(y, x) for x in xs[start : start + self.batch_size]]
                batch = torch.from_numpy(np.stack([t for _, t, _ in chunk])).permute(0, 3, 1, 2).to(self.device)
                seg, cls = self._forward(batch)
                if seg is not None:
                    seg_np = seg[:, 0].float().cpu().numpy()
                    for (x, _, _), s in zip(chunk, seg_np):
                        xe = min(x + tw, w)
                        ye = min(th, h - y)
                        acc[:ye, x:xe] += s[:ye, : xe - x] * weight[:ye, : xe - x]
                        wsum[:ye, x:xe] += weight[:ye, : xe - x]
                if cls is not None:
                    c = cls.cpu().numpy()
                    reals = np.array([r for _, _, r in chunk], np.float64)
                    part = (c * reals[:, None]).sum(axis=0)
                    cls_acc = part if cls_acc is None else cls_acc + part
                    cls_wsum += float(reals.sum())
            if self.tile_progress is not None:
                self.tile_progress(yi + 1, len(ys))
            if self.has_seg:
                nxt = ys[yi + 1] if yi + 1 < len(ys) else h
                flush(y, min(nxt, h), y)
                shift = nxt - y
                if yi + 1 < len(ys):
                    acc[: th - shift] = acc[shift:].copy()
                    acc[th - shift :] = 0
                    wsum[: th - shift] = wsum[shift:].copy()
                    wsum[th - shift :] = 0
        cls_prob = None if cls_acc is None else (cls_acc / max(cls_wsum, 1e-8)).astype(np.float32)
        return prob_out, mask_out, cls_prob

    # ------------------------------------------------------------------ public API

    def predict_image(
        self, image: np.ndarray, *, mode: str | None = None, where: str | None = None, return_probability: bool = True
    ) -> Prediction:
        """Predict one 2-D image: (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)."""
        arr = image
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
            raise ImageFormatError(f"{where + ': ' if where else ''}expected a 2-D image, got shape {image.shape}")
        h, w = arr.shape[:2]
        chosen = mode or self.choose_mode(h, w)
        if chosen not in MODES[1:]:
            raise ValueError(f"mode must be one of {MODES[1:]}, got {chosen!r}")
        if chosen == "tiled":
            prob, mask, cls_prob = self._tiled(arr, where, return_probability)
            pred = self._finish(None, cls_prob, chosen, return_probability)
            pred.mask = mask
            pred.probability = prob if return_probability else None
            return pred
        rgb = to_float_rgb(np.asarray(arr), where=where)
        if chosen == "resize":
            prob, cls_prob = self._resize_batch([rgb])[0]
        else:
            prob, cls_prob = self._native(rgb)
        return self._finish(prob, cls_prob, chosen, return_probability)

    @property
    def accepts_prompts(self) -> bool:
        """Whether the model was trained for prompts (clicks, box, previous mask)."""
        return bool(self.model.config.prompts)

    def predict(
        self,
        image: np.ndarray,
        *,
        rgb: bool | None = None,
        mode: str | None = None,
        return_probability: bool = True,
        points: Sequence[Sequence[Any]] | None = None,
        box: Sequence[float] | None = None,
        previous_mask: np.ndarray | None = None,
    ) -> Prediction | list[Prediction]:
        """Predict a 2-D image (returns a Prediction) or a stack (returns one Prediction per slice).

        Prompts (interactive models, 2-D images): ``points`` ``[(row, col, positive), ...]``, ``box``
        ``(row0, col0, row1, col1)`` (ends exclusive), both in pixels of ``image``, and ``previous_mask``
        (the mask being corrected, the image's size): the mask of the one object they point at, with its
        class.
        """
        if not hasattr(image, "shape") or not hasattr(image, "ndim"):
            image = np.asarray(image)
        if points is not None or box is not None or previous_mask is not None:
            return self.predict_prompted(image, points=points, box=box, previous_mask=previous_mask, rgb=rgb,
                                         return_probability=return_probability)
        slices, is_stack = split_stack(image, rgb=rgb)
        if not is_stack:
            return self.predict_image(slices[0], mode=mode, return_probability=return_probability)
        return self.predict_many(slices, mode=mode, return_probability=return_probability)

    def predict_prompted(
        self,
        image: np.ndarray,
        *,
        points: Sequence[Sequence[Any]] | None = None,
        box: Sequence[float] | None = None,
        previous_mask: np.ndarray | None = None,
        rgb: bool | None = None,
        where: str | None = None,
        return_probability: bool = True,
    ) -> Prediction:
        """The mask and class of the object that ``points``/``box`` point at (see :meth:`predict`)."""
        slices, is_stack = split_stack(image if hasattr(image, "ndim") else np.asarray(image), rgb=rgb)
        at = f"{where}: " if where else ""
        if is_stack:
            raise PromptError(f"{at}prompts apply to one 2-D image; pass one slice of the stack "
                              f"(got an image of shape {tuple(image.shape)})")
        arr = slices[0]
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
            raise ImageFormatError(f"{at}expected a 2-D image, got shape {image.shape}")
        if not self.accepts_prompts:
            raise PromptError(
                f"{at}the model {self.info.name} was trained without prompts, so it cannot use clicks or a box; "
                "predict without them, or train an interactive model (mtunet train ... --interactive)"
            )
        prompts = Prompts.from_user(arr.shape[:2], points, box, previous_mask, where=where)
        if prompts.empty:
            raise PromptError(f"{at}a previous mask is corrected with clicks or a box; none was given")
        cfg = self.interactive
        conv = _Converter(arr, where)
        if prompts.box is not None and prompts.previous_mask is None and cfg.box_prior:
            prompts = prompts.with_mask(ellipse_in_box(arr.shape[:2], prompts.box))
        if prompts.needs_first_pass():
            # When the region around its result is run again, the whole-image pass only finds that region and
            # the previous mask: it runs without test-time augmentation (a first click then costs 3 forward
            # passes, not 4: benchmarks/bench_interactive.py).
            first = self._prompted_pass(arr, conv, prompts, (0, 0, *arr.shape[:2]),
                                        tta=not cfg.refine_first_click)
            if not cfg.refine_first_click or not first.mask.any():
                return self._prompted_result(first, return_probability)
            prompts = prompts.with_mask(first.mask)
        region = zoom_region(arr.shape[:2], prompts.extent(), margin=cfg.zoom_margin, min_zoom=cfg.min_zoom)
        pred = self._prompted_pass(arr, conv, prompts, region)
        for _ in range(GROW_PASSES if cfg.grow_region else 0):
            # The object reaches the edge of the region that was run (and the image goes on): run a region
            # grown around the mask so far, with the same prompts.
            if not touches_region_edge(pred.mask, region):
                break
            grown = zoom_region(arr.shape[:2], prompts.with_mask(pred.mask > 0).extent(), margin=cfg.zoom_margin,
                                min_zoom=cfg.min_zoom)
            if grown == region:
                break
            region = grown
            pred = self._prompted_pass(arr, conv, prompts, region)
        return self._prompted_result(pred, return_probability)

    def _prompted_pass(self, arr: np.ndarray, conv: _Converter, prompts: Prompts, region: Region,
                       tta: bool = True) -> Prediction:
        """One forward pass over ``region`` with the prompts' guidance channels (mirrored too when the model's
        post-processing, ``InteractiveConfig.tta`` and ``tta`` all say so); the mask at the image's size."""
        cfg = self.interactive
        h, w = arr.shape[:2]
        r0, c0, r1, c1 = region
        crop = conv(np.asarray(arr[r0:r1, c0:c1]))
        ch, cw = crop.shape[:2]
        # Interactive models are trained on regions resized to the input size (whatever the region's size),
        # so every region is run that way.
        size = (self.image_size, self.image_size)
        x = F.interpolate(self._to_tensor(crop), size=size, mode="bilinear", antialias=True, align_corners=False)
        guidance = torch.from_numpy(encode(prompts, region, size, cfg.click_radius))[None].to(x)
        seg, cls = self._forward(torch.cat([x, guidance], dim=1), hflip_tta=self.postprocessing.hflip_tta and cfg.tta and tta)
        prob = np.zeros((h, w), np.float32)
        if seg is not None:
            p = F.interpolate(seg[:, :1].float(), size=(ch, cw), mode="bilinear", align_corners=False)
            prob[r0:r1, c0:c1] = p[0, 0].cpu().numpy()
        mask = prob >= self.threshold
        if cfg.enforce_clicks:
            mask = apply_prompts(mask, prompts, click_radius_in_image(region, size, cfg.click_radius))
        cls_prob = None if cls is None else cls[0].cpu().numpy()
        pred = self._finish(None, cls_prob, "prompted", True)
        pred.mask, pred.probability, pred.region = mask.astype(np.uint8), prob, tuple(int(v) for v in region)
        return pred

    def _prompted_result(self, pred: Prediction, return_probability: bool) -> Prediction:
        nl = no_lesion_index(self.postprocessing, self.class_names)
        if pred.class_probabilities is not None and nl is not None:  # the heads agree, as in automatic mode
            pred.class_probabilities = consistent_class_probabilities(
                pred.class_probabilities, bool(pred.mask.any()), nl).astype(np.float32)
            pred.class_index = int(np.argmax(pred.class_probabilities))
            pred.class_name = self.class_names[pred.class_index]
        if not return_probability:
            pred.probability = None
        return pred

    def predict_many(
        self,
        inputs: Sequence[np.ndarray | str | os.PathLike],
        *,
        mode: str | None = None,
        return_probability: bool = True,
    ) -> list[Prediction]:
        """Predict many 2-D images (arrays or file paths); resize-mode images are batched together."""
        results: list[Prediction | None] = [None] * len(inputs)
        pending: list[tuple[int, np.ndarray]] = []

        def run_pending() -> None:
            if not pending:
                return
            outs = self._resize_batch([r for _, r in pending])
            for (i, _), (prob, cls_prob) in zip(pending, outs):
                results[i] = self._finish(prob, cls_prob, "resize", return_probability)
            pending.clear()

        for i, item in enumerate(inputs):
            where = None
            if isinstance(item, (str, os.PathLike)):
                where = str(item)
                item = read_image_file(item)
            arr = np.asarray(item) if not hasattr(item, "ndim") else item
            if arr.ndim == 3 and arr.shape[-1] == 1:
                arr = arr[..., 0]
            chosen = mode or self.choose_mode(*arr.shape[:2])
            if chosen == "resize":
                pending.append((i, to_float_rgb(np.asarray(arr), where=where)))
                if len(pending) >= self.batch_size:
                    run_pending()
            else:
                results[i] = self.predict_image(arr, mode=chosen, where=where, return_probability=return_probability)
        run_pending()
        return [r for r in results if r is not None]


def read_image_file(path: str | os.PathLike) -> np.ndarray:
    """Read an image file for prediction through the data layer's validated reader."""
    from .data.io import read_image

    return read_image(Path(path))
