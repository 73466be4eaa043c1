"""Export a checkpoint as a bioimage.io model package (spec 0.5), tested before it is published.

The package (a .zip) holds:

- ``rdf.yaml``: the resource description built with ``bioimageio.spec``;
- ``weights.pt``: the model's state dict for the ``pytorch_state_dict``
  weights format (architecture
  :class:`~napari_mtunet.export.bioimageio_arch.BioimageioMTUNet`);
- ``model.onnx``: the same network as ``onnx`` weights (optional);
- ``<checkpoint>.safetensors``: the original checkpoint, byte for byte
  (attachment; what napari-mtunet opens, so its round trip is exact);
- ``test_input.npy`` / ``test_output_*.npy``: a test image and the model's
  outputs on it, ``cover.png``, ``README.md`` (the model card) and
  ``environment.yaml``.

Inputs are 8-bit RGB; the package's preprocessing casts to float32 and
scales by 1/255; the network normalises with its own mean/std.  Outputs are
probabilities (see :mod:`~napari_mtunet.export.bioimageio_arch`).  Before the
file is moved into place, ``bioimageio.core.test_model`` runs on it (every
weights format, the test tensors, several input sizes); a failure raises
:class:`~napari_mtunet.export.ExportError` with the failing checks.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ._common import ExportError, check_output, load_source, publish, staging_file
from .bioimageio_arch import BioimageioMTUNet
from .model_card import BUSI_CITATION, BUSI_DOI, SMP_CITATION, SMP_URL, model_card, trained_on_busi
from .onnx_model import DEFAULT_OPSET, onnx_file_for
from .package import CONFIG_KEY

CHECKPOINT_NAME = "mtunet_checkpoint.safetensors"


def _require_bioimageio():
    try:
        import bioimageio.core  # noqa: F401
        import bioimageio.spec  # noqa: F401
    except ImportError:
        raise ExportError(
            "bioimage.io export needs bioimageio.core and bioimageio.spec: pip install \"napari-mtunet[bioimageio]\""
        ) from None


def identifiers(names: list[str]) -> list[str]:
    """Class names as identifiers for channel names (``[A-Za-z_][A-Za-z0-9_]*``, unique)."""
    out: list[str] = []
    for i, name in enumerate(names):
        ident = re.sub(r"[^0-9A-Za-z_]", "_", str(name).strip()) or f"class_{i}"
        if ident[0].isdigit():
            ident = "c_" + ident
        base, k = ident, 1
        while ident in out:
            k += 1
            ident = f"{base}_{k}"
        out.append(ident)
    return out


def _test_image(sample: Any, size: int) -> np.ndarray:
    """An 8-bit RGB test image (size x size), from ``sample`` (array or image file) or the synthetic phantom."""
    from ..preprocess import to_float_rgb

    if sample is None:
        from ..sample_data import make_phantom

        arr = make_phantom(n=1, size=size, seed=0).images[0]
        where = "synthetic phantom"
    elif isinstance(sample, (str, os.PathLike)):
        from ..inference import read_image_file

        arr, where = read_image_file(sample), str(sample)
    else:
        arr, where = np.asarray(sample), "sample image"
    rgb = to_float_rgb(arr, where=where)
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None]
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).numpy()  # (1, 3, size, size)


def _cover(image: np.ndarray, outputs: dict[str, np.ndarray], class_names: list[str], path: Path) -> None:
    from PIL import Image, ImageDraw

    rgb = np.ascontiguousarray(image[0].transpose(1, 2, 0))
    right = rgb.astype(np.float32)
    prob = outputs.get("mask_probability")
    if prob is not None:
        fg = prob[0, 0] >= 0.5 if prob.shape[1] == 1 else prob[0].argmax(0) > 0
        right[fg] = 0.5 * right[fg] + 0.5 * np.array([255, 40, 40], np.float32)
    canvas = Image.fromarray(np.concatenate([rgb, right.astype(np.uint8)], axis=1))
    cls = outputs.get("class_probabilities")
    if cls is not None and class_names:
        i = int(cls[0].argmax())
        ImageDraw.Draw(canvas).text((rgb.shape[1] + 4, 4), f"{class_names[i]} {cls[0, i]:.2f}", fill=(255, 255, 0))
    canvas.save(path)


def _sample_tensors(image: np.ndarray, outputs: dict[str, np.ndarray], work: Path) -> None:
    """Human-viewable samples (bioimage.io's FAIR checklist): the input as PNG, outputs as PNG / TIFF."""
    import tifffile
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(image[0].transpose(1, 2, 0))).save(work / "sample_input.png")
    if "mask_probability" in outputs:
        prob = outputs["mask_probability"][0]
        shown = prob[0] if prob.shape[0] == 1 else prob.argmax(0) / max(1, prob.shape[0] - 1)
        Image.fromarray((np.clip(shown, 0, 1) * 255).round().astype(np.uint8)).save(work / "sample_mask_probability.png")
    if "class_probabilities" in outputs:
        tifffile.imwrite(work / "sample_class_probabilities.tif", outputs["class_probabilities"].astype(np.float32))


def _environment_yaml() -> str:
    from .. import __version__

    return (
        "name: napari-mtunet\n"
        "channels:\n  - conda-forge\n"
        "dependencies:\n"
        "  - python>=3.10\n"
        "  - pytorch>=2.3\n"
        "  - pip\n"
        "  - pip:\n"
        f"      - napari-mtunet=={__version__}\n"
    )


def _authors(authors: Any):
    from bioimageio.spec.model.v0_5 import Author

    if not authors:
        try:
            user = getpass.getuser()
        except Exception:  # noqa: BLE001 - no user name available
            user = "unknown"
        authors = [{"name": f"{user} (exported with napari-mtunet)"}]
    out = []
    for a in authors:
        try:
            out.append(Author(**a) if isinstance(a, dict) else Author(name=str(a)))
        except Exception as exc:  # noqa: BLE001 - pydantic validation error
            raise ExportError(f"invalid author {a!r}: {exc}") from None
    return out


def read_evaluation(evaluation: Any) -> dict[str, Any] | None:
    """An evaluation report (``EvaluationReport.to_dict()``: a dict, or its JSON file) checked for shape."""
    if evaluation is None:
        return None
    where = "evaluation report"
    if isinstance(evaluation, (str, os.PathLike)):
        where = str(evaluation)
        try:
            evaluation = json.loads(Path(evaluation).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ExportError(f"{where}: cannot read the evaluation report ({exc})") from None
    if not isinstance(evaluation, dict) or not (
        isinstance(evaluation.get("classification"), dict) or isinstance(evaluation.get("segmentation"), dict)
    ):
        raise ExportError(
            f"{where}: not an evaluation report (expected the JSON written by `mtunet evaluate --json`, with "
            "'classification' and/or 'segmentation' metrics)"
        )
    return _finite(evaluation)


def _finite(obj: Any) -> Any:
    """JSON-safe copy: NaN/infinite numbers become None (YAML and JSON readers disagree about them)."""
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return str(obj)


def build_description(src: Any, work: Path, *, name: str | None, description: str | None, authors: Any,
                      license: str, version: str, sample_image: Any, include_onnx: bool, opset: int,
                      evaluation: dict[str, Any] | None = None):
    """Write the package's files into ``work`` and return the bioimage.io ``ModelDescr``."""
    from bioimageio.spec.model.v0_5 import (
        ArchitectureFromLibraryDescr,
        AxisId,
        BatchAxis,
        ChannelAxis,
        CiteEntry,
        EnsureDtypeDescr,
        EnsureDtypeKwargs,
        FileDescr,
        InputTensorDescr,
        IntervalOrRatioDataDescr,
        ModelDescr,
        OnnxWeightsDescr,
        OutputTensorDescr,
        ParameterizedSize,
        PytorchStateDictWeightsDescr,
        ScaleLinearDescr,
        ScaleLinearKwargs,
        SizeReference,
        SpaceInputAxis,
        SpaceOutputAxis,
        TensorId,
        Version,
        WeightsDescr,
    )

    from .. import __version__

    model, info = src.model, src.info
    cfg, pre = info.model_config, info.preprocessing
    stride = int(model.output_stride)
    size = max(2 * stride, int(pre.image_size))
    size = -(-size // stride) * stride

    # the network as the package describes it, with the checkpoint's weights
    net = BioimageioMTUNet(cfg.to_dict(), pre.to_dict())
    net.load_state_dict(model.state_dict(), strict=True)
    net.eval()
    torch.save(net.state_dict(), work / "weights.pt")
    shutil.copyfile(src.checkpoint_file, work / CHECKPOINT_NAME)

    image = _test_image(sample_image, size)
    np.save(work / "test_input.npy", image)
    with torch.inference_mode():
        outs = net(torch.from_numpy(image).float() / 255.0)
    out_ids = (["mask_probability"] if cfg.task != "cls" else []) + (["class_probabilities"] if cfg.task != "seg" else [])
    outputs = {k: v.numpy().astype(np.float32) for k, v in zip(out_ids, outs)}
    for k, v in outputs.items():
        np.save(work / f"test_output_{k}.npy", v)
    _sample_tensors(image, outputs, work)
    channel_names = identifiers(list(cfg.class_names)) if cfg.task != "seg" else []
    _cover(image, outputs, list(cfg.class_names), work / "cover.png")
    (work / "README.md").write_text(
        model_card(info, channel_names=channel_names, input_size=size, onnx=include_onnx, evaluation=evaluation),
        encoding="utf-8",
    )
    (work / "environment.yaml").write_text(_environment_yaml(), encoding="utf-8")

    image_id = TensorId("image")
    inputs = [
        InputTensorDescr(
            id=image_id,
            description="RGB image, 8-bit (0-255); height and width multiples of "
            f"{stride}. Greyscale: repeat the channel; 16-bit: divide by 257.",
            axes=[
                BatchAxis(),
                ChannelAxis(channel_names=["red", "green", "blue"]),
                SpaceInputAxis(id=AxisId("y"), size=ParameterizedSize(min=2 * stride, step=stride)),
                SpaceInputAxis(id=AxisId("x"), size=ParameterizedSize(min=2 * stride, step=stride)),
            ],
            test_tensor=FileDescr(source=work / "test_input.npy"),
            sample_tensor=FileDescr(source=work / "sample_input.png"),
            data=IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),  # what the network receives
            preprocessing=[
                EnsureDtypeDescr(kwargs=EnsureDtypeKwargs(dtype="float32")),
                ScaleLinearDescr(kwargs=ScaleLinearKwargs(gain=1.0 / 255.0, offset=0.0)),
            ],
        )
    ]
    out_descr = []
    if cfg.task != "cls":
        k = int(cfg.seg_classes)
        out_descr.append(
            OutputTensorDescr(
                id=TensorId("mask_probability"),
                description="lesion probability (sigmoid); mask = probability >= 0.5" if k == 1
                else "per-class segmentation probabilities (softmax over channels)",
                axes=[
                    BatchAxis(),
                    ChannelAxis(channel_names=["foreground"] if k == 1 else [f"label_{i}" for i in range(k)]),
                    SpaceOutputAxis(id=AxisId("y"), size=SizeReference(tensor_id=image_id, axis_id=AxisId("y"))),
                    SpaceOutputAxis(id=AxisId("x"), size=SizeReference(tensor_id=image_id, axis_id=AxisId("x"))),
                ],
                test_tensor=FileDescr(source=work / "test_output_mask_probability.npy"),
                sample_tensor=FileDescr(source=work / "sample_mask_probability.png"),
                data=IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
            )
        )
    if cfg.task != "seg":
        out_descr.append(
            OutputTensorDescr(
                id=TensorId("class_probabilities"),
                description="image class probabilities (softmax), channels in class order: "
                + ", ".join(map(str, cfg.class_names)),
                axes=[BatchAxis(), ChannelAxis(channel_names=channel_names)],
                test_tensor=FileDescr(source=work / "test_output_class_probabilities.npy"),
                sample_tensor=FileDescr(source=work / "sample_class_probabilities.tif"),
                data=IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
            )
        )

    arch = ArchitectureFromLibraryDescr(
        callable="BioimageioMTUNet",
        import_from="napari_mtunet.export.bioimageio_arch",
        kwargs={"model": {**cfg.to_dict(), "encoder_weights": None}, "preprocessing": pre.to_dict()},
    )
    torch_version = Version(torch.__version__.split("+")[0])
    weights = {
        "pytorch_state_dict": PytorchStateDictWeightsDescr(
            source=work / "weights.pt",
            architecture=arch,
            pytorch_version=torch_version,
            dependencies=FileDescr(source=work / "environment.yaml"),
        )
    }
    if include_onnx:
        onnx_file_for(net_for_onnx(net, info), info, work / "model.onnx", opset=opset, probabilities=True)
        weights["onnx"] = OnnxWeightsDescr(source=work / "model.onnx", opset_version=opset, parent="pytorch_state_dict")

    cite = [CiteEntry(text=SMP_CITATION, url=SMP_URL)]
    if trained_on_busi(info):
        cite.insert(0, CiteEntry(text=BUSI_CITATION, doi=BUSI_DOI))
    tags = ["napari-mtunet", "unet", "multi-task", "2d", "pytorch", "classification", "semantic-segmentation",
            cfg.encoder_name.lower()]
    if trained_on_busi(info):
        tags += ["ultrasound", "breast"]
    if include_onnx:
        tags.append("onnx")
    meta = info.metadata
    try:
        return ModelDescr(
            name=name or f"napari-mtunet {cfg.encoder_name} multi-task UNet",
            description=description or (
                f"Multi-task UNet ({cfg.encoder_name} encoder, task {cfg.task}): "
                + ("lesion mask and " if cfg.task == "both" else "lesion mask " if cfg.task == "seg" else "")
                + (f"image class ({', '.join(map(str, cfg.class_names))})" if cfg.task != "seg" else "")
                + "; exported by napari-mtunet."
            ),
            authors=_authors(authors),
            cite=cite,
            license=license,
            version=version,
            tags=tags,
            documentation=FileDescr(source=work / "README.md"),
            covers=[FileDescr(source=work / "cover.png")],
            attachments=[FileDescr(source=work / CHECKPOINT_NAME)],
            inputs=inputs,
            outputs=out_descr,
            weights=WeightsDescr(**weights),
            config={
                CONFIG_KEY: {
                    "checkpoint": CHECKPOINT_NAME,
                    "content_hash": info.content_hash,
                    "package_version": __version__,
                    "checkpoint_package_version": meta.get("package_version"),
                    "class_names": list(cfg.class_names),
                    "task": cfg.task,
                    "threshold": 0.5,
                    "preprocessing": pre.to_dict(),
                    "metrics": _finite(info.metrics),
                    "evaluation": evaluation,
                }
            },
        )
    except ExportError:
        raise
    except Exception as exc:  # noqa: BLE001 - pydantic validation errors: name the problem
        raise ExportError(f"the bioimage.io description is invalid: {exc}") from None


def net_for_onnx(net: BioimageioMTUNet, info: Any) -> torch.nn.Module:
    """A plain MultiTaskUNet with ``net``'s weights (the ONNX graph adds the probabilities itself)."""
    from ..model import MultiTaskUNet

    plain = MultiTaskUNet(info.model_config, info.preprocessing)
    plain.load_state_dict(net.state_dict(), strict=True)
    return plain.eval()


def test_package(path: Path) -> Any:
    """Run ``bioimageio.core.test_model`` on a package; returns the validation summary."""
    from bioimageio.core import test_model

    return test_model(str(path))


def _failures(summary: Any) -> str:
    lines = []
    for d in getattr(summary, "details", []):
        if getattr(d, "status", "passed") != "passed":
            errs = "; ".join(str(getattr(e, "msg", e))[:300] for e in (getattr(d, "errors", None) or []))
            lines.append(f"{d.name}: {errs or d.status}")
    return " | ".join(lines[:8]) or str(getattr(summary, "status", "failed"))


def export_bioimageio(
    checkpoint: str | os.PathLike | torch.nn.Module,
    out: str | os.PathLike,
    *,
    overwrite: bool = False,
    name: str | None = None,
    description: str | None = None,
    authors: list[dict[str, str] | str] | None = None,
    license: str = "CC-BY-4.0",
    version: str = "0.1.0",
    sample_image: Any = None,
    evaluation: Any = None,
    include_onnx: bool = True,
    run_test: bool = True,
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Export a checkpoint as a bioimage.io model package (spec 0.5) at ``out`` (a ``.zip``).

    ``checkpoint``: a ``.safetensors`` checkpoint, a package exported by
    napari-mtunet, or an in-memory model.  ``sample_image`` (array or image
    file; default the synthetic phantom) becomes the test input, resized to
    the training size.  ``evaluation``: an evaluation report (the JSON file
    of ``mtunet evaluate --json``, or its dict) whose metrics and 95% CIs go
    into the model card.  ``authors``: ``[{"name": ..., "affiliation": ...,
    "orcid": ...}]`` (default: the current user).  ``license``: an SPDX id
    for the exported weights.  ``run_test`` runs ``bioimageio.core.test_model``
    on the finished package and refuses to publish it if any check fails.
    Written atomically; an existing ``out`` is never replaced unless
    ``overwrite``.  Returns the path written.
    """
    out = check_output(out, ".zip", overwrite=overwrite, what="bioimage.io package")
    _require_bioimageio()
    report = read_evaluation(evaluation)
    from bioimageio.spec import save_bioimageio_package

    with tempfile.TemporaryDirectory(prefix="mtunet-bioimageio-") as tmpdir:
        work = Path(tmpdir) / "package"
        work.mkdir()
        src = load_source(checkpoint, Path(tmpdir))
        descr = build_description(
            src, work, name=name, description=description, authors=authors, license=license, version=version,
            sample_image=sample_image, include_onnx=include_onnx, opset=opset, evaluation=report,
        )
        with staging_file(out, ".zip") as tmp:
            try:
                save_bioimageio_package(descr, output_path=tmp)
            except Exception as exc:  # noqa: BLE001 - bioimageio.spec raises many types
                raise ExportError(f"{out}: writing the bioimage.io package failed ({type(exc).__name__}: {exc})") from None
            if run_test:
                summary = test_package(tmp)
                if summary.status != "passed":
                    raise ExportError(f"{out}: the exported package fails the bioimage.io test: {_failures(summary)}")
            return publish(tmp, out, overwrite=overwrite)
