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

An interactive model (``ModelConfig.prompts``) also takes guidance channels after
the image (:data:`~napari_mtunet.config.GUIDANCE_CHANNELS`: clicks, previous mask,
box; encoded by :mod:`napari_mtunet.prompts`).  Their first-layer weights start at
zero, so the pretrained RGB weights work unchanged, and an input without guidance
(the image channels only) gets zero guidance: the automatic mode.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .config import IMAGE_CHANNELS, ModelConfig, Preprocessing
from .encoders import (  # noqa: F401 - re-exported: the model's public weight-loading API
    EncoderWeightsError,
    hub_reachable,
    imagenet_weights_file,
    load_encoder_weights,
    load_pretrained,
    offline_help,
    read_state_dict,
)


#: The guidance channels enter the network multiplied by this gain.  Their first-layer weights start at zero,
#: and Adam moves every weight by about the learning rate per step whatever its input's scale, so at gain 1
#: they stayed ~50x smaller than the pretrained RGB weights after 20 epochs and the network barely used the
#: prompts (measured: benchmarks/interactive_study.py, docs/results.md); the gain makes them learn as fast as
#: the features they join.  Part of the architecture: checkpoints of interactive models depend on it.
GUIDANCE_GAIN = 20.0


class ModelOutput(NamedTuple):
    """Raw network outputs; a field is None when the task does not produce it."""

    seg: torch.Tensor | None  # (B, 1, H, W) lesion logits
    cls: torch.Tensor | None  # (B, num_classes) logits

    # The one place where logits become probabilities and masks (training validation, evaluation, the
    # Predictor, fine-tuning metrics and the exported ONNX / bioimage.io graphs use these).

    def class_probabilities(self) -> torch.Tensor | None:
        """``(B, num_classes)`` softmax probabilities (float32), or None without a class head."""
        return None if self.cls is None else torch.softmax(self.cls.float(), dim=1)

    def segmentation_probabilities(self) -> torch.Tensor | None:
        """``(B, 1, H, W)`` lesion probability (sigmoid, float32), or None without a decoder."""
        return None if self.seg is None else torch.sigmoid(self.seg.float())

    def mask_probability(self) -> torch.Tensor | None:
        """``(B, H, W)`` lesion probability (float32), or None without a decoder."""
        p = self.segmentation_probabilities()
        return None if p is None else p[:, 0]

    def masks(self, threshold: float = 0.5) -> torch.Tensor | None:
        """``(B, H, W)`` boolean masks: lesion probability above ``threshold``."""
        p = self.mask_probability()
        return None if p is None else p > threshold


class MultiTaskUNet(nn.Module):
    """UNet (smp) with an optional decoder and an optional classification head."""

    def __init__(self, config: ModelConfig, preprocessing: Preprocessing | None = None):
        super().__init__()
        import segmentation_models_pytorch as smp

        self.config = config
        self.preprocessing = (preprocessing or Preprocessing()).for_encoder(config.encoder_name)
        aux = None
        if config.task in ("both", "cls"):
            aux = {"classes": int(config.num_classes), "dropout": float(config.dropout) or None}
        unet = smp.Unet(
            encoder_name=config.encoder_name,
            encoder_depth=int(config.encoder_depth),
            encoder_weights=None,
            decoder_channels=tuple(config.decoder_channels),
            in_channels=IMAGE_CHANNELS,
            classes=int(config.seg_classes),
            aux_params=aux,
        )
        self.encoder = freeze_unused_parts(unet.encoder)
        self.decoder = unet.decoder if config.task != "cls" else None
        self.segmentation_head = unet.segmentation_head if config.task != "cls" else None
        self.classification_head = unet.classification_head
        shape = (1, IMAGE_CHANNELS, 1, 1)
        self.register_buffer("mean", torch.tensor(self.preprocessing.mean).view(shape), persistent=True)
        self.register_buffer("std", torch.tensor(self.preprocessing.std).view(shape), persistent=True)
        self.output_stride = 2 ** int(config.encoder_depth)
        if config.prompts:
            _widen_first_conv(self.encoder, config.guidance_channels)

    @property
    def input_channels(self) -> int:
        return self.config.input_channels

    @property
    def task(self) -> str:
        return self.config.task

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise the image channels of ``x``: ``(B, IMAGE_CHANNELS, H, W)`` in [0, 1]."""
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def encoder_input(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's input for ``x``: the image channels normalised, then the guidance channels times
        :data:`GUIDANCE_GAIN` (zeros when ``x`` holds the image only: automatic mode)."""
        c = x.shape[1] if x.ndim == 4 else -1
        want = self.config.input_channels
        if c not in (IMAGE_CHANNELS, want):
            extra = f" or {want} (image + guidance)" if want != IMAGE_CHANNELS else ""
            raise ValueError(f"expected a (B, {IMAGE_CHANNELS}{extra}, H, W) input, got {tuple(x.shape)}")
        image = self.normalize(x[:, :IMAGE_CHANNELS])
        if want == IMAGE_CHANNELS:
            return image
        if c == IMAGE_CHANNELS:
            guidance = image.new_zeros((x.shape[0], want - IMAGE_CHANNELS, *x.shape[2:]))
        else:
            guidance = x[:, IMAGE_CHANNELS:] * GUIDANCE_GAIN
        return torch.cat([image, guidance], dim=1)

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
        features = self.encoder(self.encoder_input(x))
        seg = self.decode(features) if self.decoder is not None else None
        cls = self.classification_head(features[-1]) if self.classification_head is not None else None
        return ModelOutput(seg, cls)


# --------------------------------------------------------------------------- weights


def build_model(config: ModelConfig, preprocessing: Preprocessing | None = None) -> MultiTaskUNet:
    """Build the network and load its encoder weights as ``config.encoder_weights`` says.

    ``None``: random init.  ``"imagenet"``: the encoder's ImageNet weights, from
    a package that ships them (``timm-tf_efficientnet_lite0``), else smp's hub
    copy (local cache first, download otherwise; fails fast offline).  Any
    other string: a local ``.safetensors``/``.pth`` state dict, matched by name
    or, for another naming of the same architecture, by order and shape.
    ``model.weights_provenance`` records where the weights came from.
    """
    weights = config.encoder_weights
    if weights is None:
        model = MultiTaskUNet(config, preprocessing)
        model.weights_provenance = {"weights": None}
        return model
    # Pretrained weights are for the image channels: load them into an image-only network, then add the
    # guidance channels (zero weights) of an interactive model.
    model = MultiTaskUNet(config.replace(prompts=False), preprocessing)
    if weights == "imagenet" and config.encoder_name.startswith("tu-"):
        if not hub_reachable():
            raise EncoderWeightsError(
                f"timm weights for {config.encoder_name!r} need the model hub, which cannot be reached. "
                + offline_help(config.encoder_name)
            )
        import segmentation_models_pytorch as smp

        model.encoder = freeze_unused_parts(smp.encoders.get_encoder(
            config.encoder_name, depth=int(config.encoder_depth), weights="imagenet"
        ))
        model.weights_provenance = {"weights": "imagenet", "source": "timm hub"}
    else:
        model.weights_provenance = load_pretrained(model.encoder, config.encoder_name, weights)
    if config.prompts:
        _widen_first_conv(model.encoder, config.guidance_channels)
        model.config = config
    return model


#: Parts of an encoder that its feature forward never calls: smp's EfficientNet encoders keep timm's
#: ``conv_head`` and ``bn2`` (the classifier's 1x1 convolution), though only the stem and the blocks run.
UNUSED_ENCODER_PARTS = ("conv_head", "bn2")


def freeze_unused_parts(encoder: nn.Module) -> nn.Module:
    """``encoder`` with the parts its forward never calls frozen (``requires_grad`` off): under torchrun,
    DistributedDataParallel stops with "parameters that were not used in producing loss" at the first step
    when a trainable parameter gets no gradient, and the optimiser has nothing to do with them.  They stay in
    the state dict, so pretrained weights and saved checkpoints load as before."""
    if hasattr(encoder, "conv_head") and hasattr(encoder, "blocks"):  # the timm EfficientNet family
        for name in UNUSED_ENCODER_PARTS:
            part = getattr(encoder, name, None)
            if isinstance(part, nn.Module):
                part.requires_grad_(False)
    return encoder


def _widen_first_conv(encoder: nn.Module, extra: int) -> None:
    """Give the encoder's first convolution ``extra`` more input channels with zero weights: the network's
    output is unchanged while those channels are zero (the automatic mode), and they learn from there."""
    conv = next((m for m in encoder.modules() if isinstance(m, nn.Conv2d) and m.in_channels == IMAGE_CHANNELS), None)
    if conv is None or conv.groups != 1:
        raise ValueError(f"{type(encoder).__name__}: no plain first convolution with {IMAGE_CHANNELS} input "
                         "channels to add guidance channels to")
    w = conv.weight
    zeros = torch.zeros((w.shape[0], extra, *w.shape[2:]), dtype=w.dtype, device=w.device)
    conv.weight = nn.Parameter(torch.cat([w.detach(), zeros], dim=1), requires_grad=w.requires_grad)
    conv.in_channels = IMAGE_CHANNELS + extra


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
