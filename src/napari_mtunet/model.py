"""The multi-task UNet: one encoder, a segmentation decoder and a classification head.

Built from ``segmentation_models_pytorch.Unet`` with ``aux_params`` (its
classification head sits on the bottleneck).  ``task`` selects what is
built *and computed*:

- ``both``: encoder -> decoder -> mask logits, and encoder bottleneck -> class logits;
- ``seg``: the plain UNet (single-task segmentation baseline);
- ``cls``: encoder + head only; no decoder exists, so none is computed.

``skip_connections=False`` is the paper's ablation: the decoder's skip inputs
are replaced by zeros, so it only sees the bottleneck.  Zeroing (rather than
building a narrower decoder) keeps the parameter count identical, which makes
the ablation a fair comparison.

The network takes float RGB in ``[0, 1]`` and normalises it with the mean/std
buffers of its :class:`~napari_mtunet.config.Preprocessing`, so a saved model
carries its own normalisation.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlparse

import torch
from torch import nn

from .config import ModelConfig, Preprocessing


class EncoderWeightsError(RuntimeError):
    """Pretrained encoder weights could not be obtained or do not fit the encoder."""


class ModelOutput(NamedTuple):
    """Raw network outputs; a field is None when the task does not produce it."""

    seg: torch.Tensor | None  # (B, seg_classes, H, W) logits
    cls: torch.Tensor | None  # (B, num_classes) logits


class MultiTaskUNet(nn.Module):
    """UNet (smp) with an optional decoder and an optional classification head."""

    def __init__(self, config: ModelConfig, preprocessing: Preprocessing | None = None):
        super().__init__()
        import segmentation_models_pytorch as smp

        self.config = config
        self.preprocessing = preprocessing or Preprocessing()
        aux = None
        if config.task in ("both", "cls"):
            aux = {"classes": int(config.num_classes), "dropout": float(config.dropout) or None}
        unet = smp.Unet(
            encoder_name=config.encoder_name,
            encoder_depth=int(config.encoder_depth),
            encoder_weights=None,
            decoder_channels=tuple(config.decoder_channels),
            in_channels=3,
            classes=int(config.seg_classes),
            aux_params=aux,
        )
        self.encoder = unet.encoder
        self.decoder = unet.decoder if config.task != "cls" else None
        self.segmentation_head = unet.segmentation_head if config.task != "cls" else None
        self.classification_head = unet.classification_head
        self.register_buffer("mean", torch.tensor(self.preprocessing.mean).view(1, 3, 1, 1), persistent=True)
        self.register_buffer("std", torch.tensor(self.preprocessing.std).view(1, 3, 1, 1), persistent=True)
        self.output_stride = 2 ** int(config.encoder_depth)

    @property
    def task(self) -> str:
        return self.config.task

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def decode(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Run the decoder + segmentation head on encoder features (applies the skip ablation)."""
        assert self.decoder is not None and self.segmentation_head is not None
        if not self.config.skip_connections:
            # Only the bottleneck reaches the decoder; every skip input is zero.
            features = [torch.zeros_like(f) for f in features[:-1]] + [features[-1]]
        return self.segmentation_head(self.decoder(features))

    def forward(self, x: torch.Tensor) -> ModelOutput:
        h, w = x.shape[-2:]
        if h % self.output_stride or w % self.output_stride:
            raise ValueError(
                f"input height/width must be multiples of {self.output_stride}, got {h}x{w} "
                "(the Predictor pads automatically)"
            )
        features = self.encoder(self.normalize(x))
        seg = self.decode(features) if self.decoder is not None else None
        cls = self.classification_head(features[-1]) if self.classification_head is not None else None
        return ModelOutput(seg, cls)


# --------------------------------------------------------------------------- weights


def _strip_prefixes(state: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """Map keys such as ``module.encoder.features.0.weight`` onto the encoder's own names."""
    if set(state) & expected:
        return state
    for prefix in ("module.encoder.", "encoder.", "module.", "model.", "backbone."):
        stripped = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if stripped and set(stripped) & expected:
            return stripped
    return state


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a weights file without unpickling arbitrary objects (.safetensors or .pth/.pt)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise EncoderWeightsError(f"encoder weights file not found: {p}")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(p), device="cpu")
        except Exception as exc:  # safetensors raises its own error types
            raise EncoderWeightsError(f"{p}: not a readable safetensors file ({exc})") from None
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise EncoderWeightsError(
            f"{p}: cannot read as a tensor state dict with weights_only=True ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}). Save it with torch.save(model.state_dict()) "
            "or as .safetensors."
        ) from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise EncoderWeightsError(f"{p}: expected a dict of tensors (a state dict)")
    return obj


def load_encoder_weights(encoder: nn.Module, state: dict[str, torch.Tensor], *, source: str) -> None:
    """Load a state dict into an encoder, explaining every missing/unexpected/mis-shaped key."""
    own = encoder.state_dict()
    state = _strip_prefixes(state, set(own))
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    bad_shapes = sorted(
        f"{k}: file {tuple(state[k].shape)} vs encoder {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if tuple(state[k].shape) != tuple(own[k].shape)
    )
    # Classifier layers of a full ImageNet model are legitimately unused by the encoder.
    unexpected = [k for k in unexpected if not k.startswith(("classifier.", "fc.", "head."))]
    if missing or bad_shapes:
        def show(items: list[str]) -> str:
            return ", ".join(items[:8]) + (f" ... (+{len(items) - 8} more)" if len(items) > 8 else "")

        parts = [f"{source}: weights do not match the {type(encoder).__name__} encoder"]
        if missing:
            parts.append(f"missing {len(missing)} key(s): {show(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} key(s): {show(unexpected)}")
        if bad_shapes:
            parts.append(f"wrong shapes: {show(bad_shapes)}")
        raise EncoderWeightsError("; ".join(parts))
    encoder.load_state_dict({k: state[k] for k in own}, strict=True)


OFFLINE_HELP = (
    "To train without internet access, download the encoder weights once on a connected machine "
    "(e.g. `mtunet fetch-weights {name} --out {name}.safetensors`) and pass the file as "
    "encoder weights (`--encoder-weights /path/{name}.safetensors`, or 'local file' in napari); "
    "or use encoder weights 'none' to train from scratch."
)


def _hub_reachable(timeout: float = 3.0) -> bool:
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    parsed = urlparse(endpoint)
    host = parsed.hostname or "huggingface.co"
    port = parsed.port or (443 if parsed.scheme != "http" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def imagenet_weights_file(encoder_name: str) -> str:
    """Path of the encoder's ImageNet weights through smp's own hub location (cache first).

    Raises :class:`EncoderWeightsError` within a few seconds when the weights
    are neither cached nor downloadable.
    """
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from segmentation_models_pytorch.encoders import encoders as smp_encoders

    if encoder_name not in smp_encoders:
        raise EncoderWeightsError(f"unknown smp encoder {encoder_name!r}")
    settings = smp_encoders[encoder_name]["pretrained_settings"].get("imagenet")
    if settings is None:
        raise EncoderWeightsError(
            f"encoder {encoder_name!r} has no 'imagenet' weights in segmentation-models-pytorch; "
            f"available: {sorted(smp_encoders[encoder_name]['pretrained_settings'])}"
        )
    repo_id, revision = settings["repo_id"], settings["revision"]
    cached = try_to_load_from_cache(repo_id, "model.safetensors", revision=revision)
    if isinstance(cached, str) and os.path.isfile(cached):
        return cached
    if not _hub_reachable():
        raise EncoderWeightsError(
            f"ImageNet weights for {encoder_name!r} are not cached and the model hub cannot be reached "
            f"(offline?). " + OFFLINE_HELP.format(name=encoder_name)
        )
    try:
        return hf_hub_download(repo_id, filename="model.safetensors", revision=revision)
    except Exception as exc:
        raise EncoderWeightsError(
            f"downloading ImageNet weights for {encoder_name!r} failed ({type(exc).__name__}). "
            + OFFLINE_HELP.format(name=encoder_name)
        ) from None


def build_model(config: ModelConfig, preprocessing: Preprocessing | None = None) -> MultiTaskUNet:
    """Build the network and load its encoder weights as ``config.encoder_weights`` says.

    ``None``: random init.  ``"imagenet"``: smp's pretrained weights (from the
    local hub cache, else downloaded; fails fast offline).  Any other string:
    a local ``.safetensors``/``.pth`` state dict for the encoder.
    """
    model = MultiTaskUNet(config, preprocessing)
    weights = config.encoder_weights
    if weights is None:
        return model
    if weights == "imagenet":
        if config.encoder_name.startswith("tu-"):
            if not _hub_reachable():
                raise EncoderWeightsError(
                    f"timm weights for {config.encoder_name!r} need the model hub, which cannot be reached. "
                    + OFFLINE_HELP.format(name=config.encoder_name)
                )
            import segmentation_models_pytorch as smp

            model.encoder = smp.encoders.get_encoder(
                config.encoder_name, depth=int(config.encoder_depth), weights="imagenet"
            )
            return model
        path = imagenet_weights_file(config.encoder_name)
        from safetensors.torch import load_file

        load_encoder_weights(model.encoder, load_file(path, device="cpu"), source=f"imagenet ({path})")
        return model
    load_encoder_weights(model.encoder, read_state_dict(weights), source=str(weights))
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
