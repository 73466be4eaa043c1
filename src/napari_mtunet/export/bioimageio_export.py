"""Export a checkpoint as a bioimage.io model package (spec 0.5), tested before it is published.

The package (a .zip) holds:

- ``rdf.yaml``: the resource description built with ``bioimageio.spec``;
- ``model.onnx``: the network as ``onnx`` weights, the package's primary
  (parent-less) weights format: a consumer needs ONNX Runtime and nothing of
  napari-mtunet;
- ``weights.pt`` (only with ``include_pytorch=True``): the state dict as
  ``pytorch_state_dict`` weights (architecture
  :class:`~napari_mtunet.export.bioimageio_arch.BioimageioMTUNet`, so that
  format needs napari-mtunet installed; its ``environment.yaml`` says so);
- ``<checkpoint>.safetensors``: the original checkpoint, byte for byte
  (attachment; what napari-mtunet opens, so its round trip is exact);
- ``test_input.npy`` / ``test_output_*.npy``: a test image and the model's
  outputs on it; ``sample_*`` files (the same, viewable); ``cover.png``
  (held-out images with the predicted class and mask after napari-mtunet's
  post-processing); ``README.md`` (the model card).

Who made it, under which licence, from which data, and the held-out
metrics come from the arguments, else from the defaults file
(:func:`export_config_path`, YAML), else from the checkpoint and the
training run's ``test_report.json``.

Inputs are 8-bit RGB; the package's preprocessing casts to float32 and
scales by 1/255; the network normalises with its own mean/std.  Outputs are
probabilities.  Before the file is moved into place, installed versions are
checked against the ``bioimageio`` extra (a clash is named with its fix),
and ``bioimageio.core.test_model`` runs on the package (every weights
format, the test tensors, several input sizes); a failure raises
:class:`~napari_mtunet.export.ExportError` with the failing checks.  Files
in the zip get the mode the umask allows, like every file napari-mtunet writes.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .. import paths
from ._common import ExportError, check_output, load_source
from .bioimageio_arch import BioimageioMTUNet
from .model_card import BUSI_CITATION, BUSI_DOI, SMP_CITATION, SMP_URL, model_card, trained_on_busi
from .onnx_model import DEFAULT_OPSET, onnx_file_for
from .package import CONFIG_KEY

CHECKPOINT_NAME = "mtunet_checkpoint.safetensors"
#: The public repository of napari-mtunet (the package's "Source Code" URL); ``git_repo`` of packages by default.
PROJECT_URL = "https://github.com/napari-mtunet/napari-mtunet"
#: Keys of the export defaults file; the same names as the keyword arguments of :func:`export_bioimageio`.
CONFIG_FIELDS = ("name", "description", "authors", "maintainers", "license", "version", "git_repo",
                 "training_data", "tags")
_WARNING = 30  # bioimageio.spec's WARNING severity (INFO = 20 is a note, not a warning)


def _require_bioimageio():
    try:
        import bioimageio.core  # noqa: F401
        import bioimageio.spec  # noqa: F401
    except ImportError:
        raise ExportError(
            "bioimage.io export needs bioimageio.core and bioimageio.spec: pip install \"napari-mtunet[bioimageio]\""
        ) from None


# --------------------------------------------------------------------------- versions


def _installed(name: str) -> str | None:
    import importlib.metadata as md

    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def declared_requirements(extra: str = "bioimageio") -> list[str]:
    """The requirements napari-mtunet's installed metadata declares for ``extra`` (empty when not installed)."""
    import importlib.metadata as md

    from packaging.requirements import Requirement

    try:
        raw = md.requires("napari-mtunet") or []
    except md.PackageNotFoundError:
        return []
    out = []
    for r in raw:
        req = Requirement(r)
        if req.marker is not None and req.marker.evaluate({"extra": extra}) and not req.marker.evaluate({"extra": ""}):
            out.append(r)
    return out


def version_clashes(extra: str = "bioimageio") -> list[str]:
    """``"pydantic 2.14.4 (napari-mtunet[bioimageio] needs pydantic<2.14,>=2.10.3)"`` for each installed misfit."""
    from packaging.requirements import Requirement

    clashes = []
    for raw in declared_requirements(extra):
        req = Requirement(raw)
        have = _installed(req.name)
        if have is None:
            clashes.append(f"{req.name} not installed (napari-mtunet[{extra}] needs {req.name}{req.specifier})")
        elif req.specifier and not req.specifier.contains(have, prereleases=True):
            clashes.append(f"{req.name} {have} (napari-mtunet[{extra}] needs {req.name}{req.specifier})")
    return clashes


def _clash_message(clashes: list[str]) -> str:
    return (
        "bioimage.io export: installed versions clash with the ones napari-mtunet works with: "
        + "; ".join(clashes)
        + '. Fix: pip install "napari-mtunet[bioimageio]" (pip then installs versions that work together)'
    )


def _versions_note() -> str:
    names = ("bioimageio.spec", "bioimageio.core", "pydantic", "pydantic-core")
    return ", ".join(f"{n} {_installed(n) or 'not installed'}" for n in names)


# --------------------------------------------------------------------------- defaults file, people


def export_config_path() -> Path:
    """The export defaults file: ``$MTUNET_CONFIG_DIR/export.yaml``, else ``$XDG_CONFIG_HOME`` or
    ``~/.config`` + ``napari-mtunet/export.yaml``."""
    base = os.environ.get("MTUNET_CONFIG_DIR")
    if base:
        return Path(base).expanduser() / "export.yaml"
    xdg = os.environ.get("XDG_CONFIG_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".config") / "napari-mtunet" / "export.yaml"


def load_export_config(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """The export defaults (a YAML mapping with keys from :data:`CONFIG_FIELDS`); ``{}`` when the default file is absent.

    A file given explicitly must exist.  Unknown keys are refused, naming
    the file, so a typo does not silently drop an author.
    """
    import yaml

    explicit = path is not None
    p = Path(path).expanduser() if explicit else export_config_path()
    if not p.is_file():
        if explicit:
            raise ExportError(f"{p}: no such export defaults file")
        return {}
    try:
        doc = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ExportError(f"{p}: cannot read the export defaults ({str(exc).splitlines()[0]})") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ExportError(f"{p}: the export defaults must be a YAML mapping (keys: {', '.join(CONFIG_FIELDS)})")
    unknown = sorted(str(k) for k in doc if k not in CONFIG_FIELDS)
    if unknown:
        raise ExportError(f"{p}: unknown keys {unknown}; allowed: {', '.join(CONFIG_FIELDS)}")
    return dict(doc)


_PERSON_KEYS = ("name", "affiliation", "email", "orcid", "github_user")


def parse_person(text: str) -> dict[str, str]:
    """``"Jane Doe; affiliation=Lab X; orcid=0000-0002-1825-0097; github_user=jdoe"`` -> a dict.

    The first part is the name unless it is ``key=value``; for maintainers
    a bare ``@jdoe`` means ``github_user=jdoe``.
    """
    out: dict[str, str] = {}
    for i, part in enumerate(p.strip() for p in str(text).split(";")):
        if not part:
            continue
        if "=" in part:
            key, value = (x.strip() for x in part.split("=", 1))
            if key not in _PERSON_KEYS:
                raise ExportError(f"{text!r}: unknown person field {key!r}; use {', '.join(_PERSON_KEYS)}")
            out[key] = value
        elif i == 0 and part.startswith("@"):
            out["github_user"] = part[1:]
        elif i == 0:
            out["name"] = part
        else:
            raise ExportError(f"{text!r}: write further fields as key=value ({', '.join(_PERSON_KEYS)})")
    return out


def _people(items: Any, kind: str) -> list[Any]:
    from bioimageio.spec.model.v0_5 import Author, Maintainer

    cls = Author if kind == "author" else Maintainer
    out = []
    for a in items or []:
        fields = parse_person(a) if isinstance(a, str) else a
        if not isinstance(fields, dict):
            raise ExportError(f"invalid {kind} {a!r}: give a name (or a mapping with {', '.join(_PERSON_KEYS)})")
        try:
            out.append(cls(**fields))
        except Exception as exc:  # noqa: BLE001 - pydantic validation error: one line naming the field
            if _is_network_error(exc):  # bioimageio.spec asks GitHub whether `github_user` exists
                raise ExportError(
                    f"{kind} {a!r}: bioimageio.spec cannot check the GitHub user name without a network "
                    "connection; export when online, or leave the GitHub user out (bioimage.io's upload asks "
                    "for a maintainer with one)") from None
            first = str(exc).splitlines()
            raise ExportError(f"invalid {kind} {a!r}: {' '.join(first[1:3]) or first[0]}") from None
    return out


def _is_network_error(exc: BaseException) -> bool:
    while exc is not None:
        if type(exc).__module__.split(".")[0] in ("httpx", "httpcore") or isinstance(exc, (ConnectionError, TimeoutError)):
            return True
        if "Name or service not known" in str(exc) or "nodename nor servname" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def default_author() -> dict[str, str]:
    """Who is exporting, when nobody is named: the account's full name (or login)."""
    name = ""
    try:
        import pwd

        name = pwd.getpwuid(os.getuid()).pw_gecos.split(",")[0].strip()
    except (ImportError, KeyError, AttributeError, OSError):
        pass
    if not name:
        try:
            name = getpass.getuser()
        except Exception:  # noqa: BLE001 - no user name available
            name = "unknown"
    return {"name": name}


def _training_data(value: Any) -> tuple[Any, str | None]:
    """``(training_data field, source URL)`` from a bioimage.io dataset id or a URL.

    An id becomes ``training_data`` (a link to that zoo dataset).  A URL is
    recorded in the model card and in ``config`` (an inline dataset
    description makes bioimageio.spec warn: it reads nested datasets as an
    older format and wants FAIR fields a URL cannot supply).  BUSI is cited
    and described in the card without either.
    """
    from bioimageio.spec.dataset.v0_3 import LinkedDataset

    if value is None or (isinstance(value, str) and not value.strip()):
        return None, None
    v = str(value).strip()
    if re.match(r"https?://", v):
        return None, v
    try:
        return LinkedDataset(id=v), None
    except Exception as exc:  # noqa: BLE001 - pydantic validation errors
        raise ExportError(f"training data {value!r}: not a bioimage.io dataset id or an http(s) URL "
                          f"({str(exc).splitlines()[-1].strip()})") from None


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


def _to_model_input(arr: np.ndarray, size: int, where: str) -> np.ndarray:
    """An image as an 8-bit RGB test tensor (1, 3, size, size)."""
    from ..preprocess import to_float_rgb

    rgb = to_float_rgb(np.asarray(arr), where=where)
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None]
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def held_out_images(checkpoint_file: Path, info: Any, limit: int = 12) -> list[tuple[np.ndarray, str]]:
    """Test-split images of the run the checkpoint came from (``splits.json`` beside it), when they are still there."""
    from ..data import load_splits
    from ..inference import read_image_file

    split_file = Path(checkpoint_file).parent / "splits.json"
    root = (info.training.get("data_config") or {}).get("root")
    if not split_file.is_file() or not root or not Path(root).is_dir():
        return []
    try:
        keys = load_splits(split_file)[0].test
    except Exception:  # noqa: BLE001 - a damaged or foreign split file: no held-out images
        return []
    out = []
    for key in keys:
        p = Path(root) / key
        if p.is_file():
            try:
                out.append((read_image_file(p), p.name))
            except Exception:  # noqa: BLE001 - unreadable file: skip it
                continue
        if len(out) >= limit:
            break
    return out


def sample_images(src: Any, sample_image: Any) -> list[tuple[np.ndarray, str]]:
    """``(image, label)`` pairs for the test tensor and the cover: given, held out, or the phantom."""
    from ..inference import read_image_file

    given = sample_image if isinstance(sample_image, (list, tuple)) else [sample_image] if sample_image is not None else []
    out = []
    for s in given:
        if isinstance(s, (str, os.PathLike)):
            try:
                out.append((read_image_file(s), Path(s).name))
            except Exception as exc:  # noqa: BLE001 - name the file
                raise ExportError(f"{s}: cannot read the sample image ({exc})") from None
        else:
            out.append((np.asarray(s), "sample image"))
    if out:
        return out
    held = held_out_images(src.checkpoint_file, src.info) if src.info.path is not None else []
    if held:
        return [(a, f"held-out {name}") for a, name in held]
    from ..sample_data import make_phantom

    size = max(64, int(src.info.preprocessing.image_size))
    ph = make_phantom(n=3, size=size, seed=0)
    return [(img, f"synthetic phantom ({lab})") for img, lab in zip(ph.images, ph.labels)]


def _choose_for_cover(preds: list[Any], k: int = 2) -> list[int]:
    """Indices of up to ``k`` predictions, different predicted classes first, a visible mask preferred."""
    order = sorted(range(len(preds)), key=lambda i: (preds[i].mask is None or not preds[i].mask.any(), i))
    chosen, classes = [], set()
    for i in order:
        c = preds[i].class_name
        if c not in classes:
            chosen.append(i)
            classes.add(c)
        if len(chosen) == k:
            return chosen
    for i in order:
        if i not in chosen:
            chosen.append(i)
        if len(chosen) == k:
            break
    return chosen


def _cover(samples: list[tuple[np.ndarray, str]], predictor: Any, path: Path) -> None:
    """A 1000 x 500 px cover (2:1): two images, each with the predicted mask outlined and the class it was given.

    Predictions come from napari-mtunet's Predictor, so the post-processing
    saved in the checkpoint (small-lesion filter, flip TTA, heads-agree rule)
    is applied exactly as in napari and ``mtunet predict``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..preprocess import to_float_rgb

    preds = [predictor.predict(img) for img, _ in samples]
    picks = _choose_for_cover(preds, 2)
    panels = [(samples[i][0], samples[i][1], preds[i]) for i in picks]
    if len(panels) == 1:  # one image: the input beside the prediction
        panels = [(panels[0][0], panels[0][1], None), panels[0]]
    fig, axes = plt.subplots(1, 2, figsize=(10, 5), dpi=100)
    for ax, (img, label, pred) in zip(axes, panels):
        ax.imshow(to_float_rgb(np.asarray(img), where=label))
        ax.set_axis_off()
        if pred is None:
            ax.set_title(f"input: {label}", fontsize=12)
            continue
        if pred.mask is not None and pred.mask.any():
            ax.contour(pred.mask > 0, levels=[0.5], colors="#ff3030", linewidths=2.0)
        text = "lesion mask" if pred.class_name is None else (
            f"{pred.class_name} {float(np.max(pred.class_probabilities)):.2f}")
        ax.set_title(f"{label}\npredicted: {text}", fontsize=12)
    fig.suptitle("napari-mtunet multi-task UNet: predicted class + lesion outline (red)", fontsize=13)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.84, wspace=0.04)
    fig.savefig(path, dpi=100)
    plt.close(fig)


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
    """For the optional pytorch_state_dict weights: they build napari-mtunet's architecture, so they need it."""
    from packaging.version import Version

    from .. import __version__

    release = Version(__version__).base_version
    return (
        "name: napari-mtunet\n"
        "channels:\n  - conda-forge\n"
        "dependencies:\n"
        "  - python>=3.10\n"
        "  - pytorch>=2.5\n"
        "  - pip\n"
        "  - pip:\n"
        f"      - napari-mtunet>={release}\n"
    )


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


def find_test_report(checkpoint: Any) -> Path | None:
    """The held-out ``test_report.json`` a training run wrote beside its ``best.safetensors`` (newer than it)."""
    if not isinstance(checkpoint, (str, os.PathLike)):
        return None
    p = Path(checkpoint).expanduser()
    report = p.parent / "test_report.json"
    try:
        if p.is_file() and report.is_file() and report.stat().st_mtime >= p.stat().st_mtime:
            return report
    except OSError:
        return None
    return None


def epochs_run(checkpoint_file: Path, info: Any) -> int | None:
    """Epochs the run really ran, from the run's ``last.safetensors`` when it belongs to the same run."""
    from ..checkpoint import read_metadata

    last = Path(checkpoint_file).parent / "last.safetensors"
    if Path(checkpoint_file).name == last.name or not last.is_file():
        return None
    try:
        meta = read_metadata(last)
    except Exception:  # noqa: BLE001 - unreadable: unknown
        return None
    mine, theirs = info.training, meta.get("training") or {}
    same_run = (theirs.get("train_config") == mine.get("train_config") and theirs.get("data_config") == mine.get("data_config")
                and theirs.get("best_epoch") == mine.get("best_epoch"))
    epoch = theirs.get("epoch")
    return int(epoch) if same_run and isinstance(epoch, int) and not isinstance(epoch, bool) else None


def build_description(src: Any, work: Path, *, name: str | None, description: str | None, authors: Any,
                      maintainers: Any = None, license: str, version: str, sample_image: Any,
                      include_onnx: bool = True, include_pytorch: bool = False, opset: int,
                      evaluation: dict[str, Any] | None = None, git_repo: str | None = None,
                      training_data: Any = None, tags: Any = None):
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
    from ..inference import Predictor

    if not (include_onnx or include_pytorch):
        raise ExportError("a bioimage.io package needs at least one weights format (ONNX or PyTorch)")
    model, info = src.model, src.info
    cfg, pre = info.model_config, info.preprocessing
    stride = int(model.output_stride)
    size = max(2 * stride, int(pre.image_size))
    size = -(-size // stride) * stride

    # the network as the package describes it, with the checkpoint's weights
    net = BioimageioMTUNet(cfg.to_dict(), pre.to_dict())
    net.load_state_dict(model.state_dict(), strict=True)
    net.eval()
    shutil.copyfile(src.checkpoint_file, work / CHECKPOINT_NAME)

    samples = sample_images(src, sample_image)
    image = _to_model_input(samples[0][0], size, samples[0][1])
    np.save(work / "test_input.npy", image)
    with torch.inference_mode():
        outs = net(torch.from_numpy(image).float() / 255.0)
    out_ids = (["mask_probability"] if cfg.task != "cls" else []) + (["class_probabilities"] if cfg.task != "seg" else [])
    outputs = {k: v.numpy().astype(np.float32) for k, v in zip(out_ids, outs)}
    for k, v in outputs.items():
        np.save(work / f"test_output_{k}.npy", v)
    _sample_tensors(image, outputs, work)
    channel_names = identifiers(list(cfg.class_names)) if cfg.task != "seg" else []
    _cover(samples, Predictor(src.checkpoint_file, device="cpu"), work / "cover.png")
    (work / "README.md").write_text(
        model_card(info, channel_names=channel_names, input_size=size, onnx=include_onnx, pytorch=include_pytorch,
                   evaluation=evaluation, epochs_run=epochs_run(src.checkpoint_file, info), opset=opset,
                   training_data=training_data),
        encoding="utf-8",
    )

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
        out_descr.append(
            OutputTensorDescr(
                id=TensorId("mask_probability"),
                description="lesion probability (sigmoid); mask = probability >= 0.5",
                axes=[
                    BatchAxis(),
                    ChannelAxis(channel_names=["foreground"]),
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
                description="image class probabilities (softmax): one channel per class, named after it",
                axes=[BatchAxis(), ChannelAxis(channel_names=channel_names)],
                test_tensor=FileDescr(source=work / "test_output_class_probabilities.npy"),
                sample_tensor=FileDescr(source=work / "sample_class_probabilities.tif"),
                data=IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
            )
        )

    weights: dict[str, Any] = {}
    if include_onnx:  # the primary format: no parent, runs without napari-mtunet
        onnx_file_for(net_for_onnx(net, info), info, work / "model.onnx", opset=opset, probabilities=True)
        weights["onnx"] = OnnxWeightsDescr(source=work / "model.onnx", opset_version=opset)
    if include_pytorch:
        torch.save(net.state_dict(), work / "weights.pt")
        (work / "environment.yaml").write_text(_environment_yaml(), encoding="utf-8")
        arch = ArchitectureFromLibraryDescr(
            callable="BioimageioMTUNet",
            import_from="napari_mtunet.export.bioimageio_arch",
            kwargs={"model": {**cfg.to_dict(), "encoder_weights": None}, "preprocessing": pre.to_dict()},
        )
        weights["pytorch_state_dict"] = PytorchStateDictWeightsDescr(
            source=work / "weights.pt",
            architecture=arch,
            pytorch_version=Version(torch.__version__.split("+")[0]),
            dependencies=FileDescr(source=work / "environment.yaml"),
            # the ONNX graph was traced from these weights; with both formats, the state dict is their parent
        )
        if "onnx" in weights:
            weights["onnx"] = OnnxWeightsDescr(source=work / "model.onnx", opset_version=opset,
                                               parent="pytorch_state_dict")

    cite = [CiteEntry(text=SMP_CITATION, url=SMP_URL)]
    if trained_on_busi(info):
        cite.insert(0, CiteEntry(text=BUSI_CITATION, doi=BUSI_DOI))
    all_tags = ["napari-mtunet", "unet", "multi-task", "2d", "classification", "semantic-segmentation",
                re.sub(r"[^a-z0-9_.-]", "-", cfg.encoder_name.lower())]
    if trained_on_busi(info):
        all_tags += ["ultrasound", "breast"]
    all_tags += ["onnx"] if include_onnx else []
    all_tags += ["pytorch"] if include_pytorch else []
    all_tags += [str(t) for t in (tags or []) if str(t) not in all_tags]
    meta = info.metadata
    training = info.training
    classes = ", ".join(channel_names)
    data_link, data_url = _training_data(training_data)
    try:
        people = _people(authors, "author") if authors else [_people([default_author()], "author")[0]]
        return ModelDescr(
            name=name or f"napari-mtunet {cfg.encoder_name} multi-task UNet",
            description=description or (
                f"Multi-task UNet ({cfg.encoder_name} encoder, task {cfg.task}): "
                + ("lesion mask and " if cfg.task == "both" else "lesion mask " if cfg.task == "seg" else "")
                + (f"image class ({classes})" if cfg.task != "seg" else "")
                + "; exported by napari-mtunet."
            ),
            authors=people,
            maintainers=_people(maintainers, "maintainer"),
            cite=cite,
            license=license,
            version=version,
            git_repo=git_repo or PROJECT_URL,
            tags=all_tags,
            training_data=data_link,
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
                    "selected_epoch": training.get("best_epoch", training.get("epoch")),
                    "validation_metrics": _finite(info.metrics),
                    "evaluation": evaluation,
                    "training_data_url": data_url,
                }
            },
        )
    except ExportError:
        raise
    except Exception as exc:  # noqa: BLE001 - pydantic validation/serialisation errors: name the problem
        clashes = version_clashes()
        if clashes:
            raise ExportError(_clash_message(clashes)) from None
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        raise ExportError(
            f"the bioimage.io description is invalid: {' '.join(lines[:4])[:600]} ({_versions_note()}; if the "
            "message is about serialisers or validators rather than a value you gave, these versions probably "
            'clash: pip install "napari-mtunet[bioimageio]" installs ones that work together)'
        ) from None


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


def summary_warnings(summary: Any) -> list[str]:
    """The warnings (severity WARNING or above, not notes) of a bioimage.io validation summary."""
    out = []
    for d in getattr(summary, "details", []):
        for w in getattr(d, "warnings", None) or []:
            if int(getattr(w, "severity", _WARNING)) >= _WARNING:
                out.append(f"{'.'.join(map(str, getattr(w, 'loc', ()))) or d.name}: {w.msg}")
    return out


def _failures(summary: Any) -> str:
    lines = []
    for d in getattr(summary, "details", []):
        if getattr(d, "status", "passed") != "passed":
            errs = "; ".join(str(getattr(e, "msg", e))[:300] for e in (getattr(d, "errors", None) or []))
            lines.append(f"{d.name}: {errs or d.status}")
    return " | ".join(lines[:8]) or str(getattr(summary, "status", "failed"))


def zip_folder(folder: Path, out: Path) -> Path:
    """Zip a package folder into ``out`` (deflate), every member with the mode the umask allows a new file.

    (``zipfile.writestr``, which bioimageio.spec's own zip writer uses,
    records 0600: colleagues who unpack the package could not read it.)
    """
    mode = paths.new_file_mode()
    rdf = folder / "rdf.yaml"
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    files.sort(key=lambda p: p != rdf)  # rdf.yaml first, as bioimageio.spec writes it
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for p in files:
            info = zipfile.ZipInfo.from_file(p, p.relative_to(folder).as_posix())
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = (0o100000 | mode) << 16  # regular file + permission bits
            with open(p, "rb") as src, zf.open(info, "w") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    return out


def export_bioimageio(
    checkpoint: str | os.PathLike | torch.nn.Module,
    out: str | os.PathLike,
    *,
    overwrite: bool = False,
    name: str | None = None,
    description: str | None = None,
    authors: list[dict[str, str] | str] | None = None,
    maintainers: list[dict[str, str] | str] | None = None,
    license: str | None = None,
    version: str | None = None,
    git_repo: str | None = None,
    training_data: Any = None,
    tags: list[str] | None = None,
    sample_image: Any = None,
    evaluation: Any = "auto",
    include_onnx: bool = True,
    include_pytorch: bool = False,
    run_test: bool = True,
    opset: int = DEFAULT_OPSET,
    config: str | os.PathLike | None = None,
) -> Path:
    """Export a checkpoint as a bioimage.io model package (spec 0.5) at ``out`` (a ``.zip``).

    ``checkpoint``: a ``.safetensors`` checkpoint, a package exported by
    napari-mtunet, or an in-memory model.

    Description (each falls back to the defaults file ``config``, else
    :func:`export_config_path`, else the value shown): ``name``,
    ``description`` (generated from the model), ``authors`` and
    ``maintainers`` (``"Jane Doe; affiliation=...; orcid=...;
    github_user=..."`` or mappings; authors default to the current user,
    maintainers to none -- bioimage.io wants a maintainer with a GitHub user
    name), ``license`` (SPDX id for the exported weights, ``CC-BY-4.0``),
    ``version`` (``0.1.0``), ``git_repo`` (napari-mtunet's repository),
    ``training_data`` (a bioimage.io dataset id, a URL, or a mapping of
    dataset fields; BUSI is described automatically), ``tags``.

    ``sample_image`` (array, image file or a list of them): the test input
    (resized to the training size) and the cover; default the run's
    held-out images when ``splits.json`` and the data are still there, else
    the synthetic phantom.  ``evaluation``: a held-out evaluation report
    (``mtunet evaluate --json``, or its dict); ``"auto"`` takes the
    ``test_report.json`` a training run wrote beside its checkpoint; ``None``
    none.  ONNX weights are the primary format; ``include_pytorch`` adds
    ``pytorch_state_dict`` weights (they need napari-mtunet installed).
    ``run_test`` runs ``bioimageio.core.test_model`` on the finished package
    and refuses to publish it if any check fails.  Written atomically with
    the umask's mode (also the files inside); an existing ``out`` is never
    replaced unless ``overwrite``.  Returns the path written.
    """
    out = check_output(out, ".zip", overwrite=overwrite, what="bioimage.io package")
    _require_bioimageio()
    clashes = version_clashes()
    if clashes:
        raise ExportError(_clash_message(clashes))
    defaults = load_export_config(config)
    if evaluation == "auto":
        evaluation = find_test_report(checkpoint)
    report = read_evaluation(evaluation)
    from bioimageio.spec import save_bioimageio_package_as_folder

    with tempfile.TemporaryDirectory(prefix="mtunet-bioimageio-") as tmpdir:
        work = Path(tmpdir) / "package"
        work.mkdir()
        src = load_source(checkpoint, Path(tmpdir))
        descr = build_description(
            src, work,
            name=name or defaults.get("name"),
            description=description or defaults.get("description"),
            authors=authors or defaults.get("authors"),
            maintainers=maintainers or defaults.get("maintainers"),
            license=license or defaults.get("license") or "CC-BY-4.0",
            version=str(version or defaults.get("version") or "0.1.0"),
            git_repo=git_repo or defaults.get("git_repo"),
            training_data=training_data if training_data is not None else defaults.get("training_data"),
            tags=tags or defaults.get("tags"),
            sample_image=sample_image, include_onnx=include_onnx, include_pytorch=include_pytorch, opset=opset,
            evaluation=report,
        )
        folder = Path(tmpdir) / "folder"
        try:
            save_bioimageio_package_as_folder(descr, output_path=folder)
        except Exception as exc:  # noqa: BLE001 - bioimageio.spec raises many types
            raise ExportError(f"{out}: writing the bioimage.io package failed ({type(exc).__name__}: {exc}; "
                              f"{_versions_note()})") from None
        try:
            with paths.atomic_path(out, overwrite=overwrite, suffix=".zip") as tmp:
                zip_folder(folder, tmp)
                if run_test:
                    summary = test_package(tmp)
                    if summary.status != "passed":
                        raise ExportError(f"{out}: the exported package fails the bioimage.io test: {_failures(summary)}")
        except FileExistsError:
            raise ExportError(f"{out}: already exists; it was not overwritten") from None
    return out
