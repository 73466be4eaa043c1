"""Configuration dataclasses: the one source of truth for model, data and training.

They are plain dataclasses (no Qt, no torch at import) so the CLI, the Python
API, the napari widgets and the checkpoint metadata all share them.  Every
config round-trips through ``to_dict`` / ``from_dict`` (JSON-safe), which is
what checkpoints store.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

Task = Literal["both", "seg", "cls"]
TASKS: tuple[str, ...] = ("both", "seg", "cls")

#: The encoders documented and tested by the project; any smp encoder name works.
DOCUMENTED_ENCODERS: tuple[str, ...] = ("mobilenet_v2", "vgg16", "timm-tf_efficientnet_lite0")

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is invalid; the message says which and why."""


def _from_dict(cls: type[T], data: dict[str, Any], *, where: str) -> T:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; known: {sorted(names)}")
    kwargs = {}
    for k, v in data.items():
        kwargs[k] = tuple(v) if isinstance(v, list) and k in ("mean", "std") else v
    return cls(**kwargs)  # type: ignore[call-arg]


@dataclass
class Preprocessing:
    """How a raw image becomes the model's input; saved in every checkpoint.

    The model itself receives a float tensor ``(B, 3, H, W)`` in ``[0, 1]`` and
    applies ``mean``/``std`` internally (buffers in the network), so callers
    never normalise by hand.  Greyscale images are replicated to three
    channels (so ImageNet-pretrained first convolutions are used unchanged),
    RGBA drops alpha, integer images are scaled by their dtype's range and
    float images are used as-is when within ``[0, 1]`` or min-max scaled
    otherwise (see :func:`napari_mtunet.preprocess.to_float_rgb`).
    """

    image_size: int = 256
    #: True: whole images are resized to ``image_size`` (BUSI, ISIC ...).
    #: False: the model was trained on native-resolution patches (PANDA) and
    #: prediction runs tiled at native resolution.
    resize: bool = True
    #: Input normalisation; None = the encoder's pretraining statistics
    #: (:func:`napari_mtunet.encoders.pretrained_normalization`), resolved when
    #: the model is built and stored in the checkpoint.
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        if int(self.image_size) < 32 or int(self.image_size) % 32:
            raise ConfigError(
                f"image_size must be a multiple of 32 and >= 32 (UNet downsamples 5x), got {self.image_size}"
            )
        self.image_size = int(self.image_size)
        if (self.mean is None) != (self.std is None):
            raise ConfigError("give both mean and std, or neither (the encoder's own)")
        if self.mean is None:
            return
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ConfigError("mean and std must have three values (RGB)")
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"std must be positive, got {self.std}")
        self.mean = tuple(float(m) for m in self.mean)  # type: ignore[assignment]
        self.std = tuple(float(s) for s in self.std)  # type: ignore[assignment]

    @property
    def resolved(self) -> bool:
        return self.mean is not None

    def for_encoder(self, encoder_name: str) -> Preprocessing:
        """A copy whose unset mean/std are the encoder's pretraining statistics."""
        if self.resolved:
            return dataclasses.replace(self)
        from .encoders import pretrained_normalization

        mean, std = pretrained_normalization(encoder_name)
        return dataclasses.replace(self, mean=tuple(mean), std=tuple(std))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if self.mean is not None:
            d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        return _from_dict(cls, data, where="preprocessing")


@dataclass
class ModelConfig:
    """Everything needed to rebuild the network."""

    encoder_name: str = "mobilenet_v2"
    #: "imagenet" (smp download, cached), a local weights file path, or None.
    encoder_weights: str | None = "imagenet"
    in_channels: int = 3
    num_classes: int = 3
    seg_classes: int = 1
    task: str = "both"
    skip_connections: bool = True
    dropout: float = 0.2
    encoder_depth: int = 5
    decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16)
    class_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ConfigError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.task in ("both", "cls") and int(self.num_classes) < 2:
            raise ConfigError(f"num_classes must be >= 2 for task {self.task!r}, got {self.num_classes}")
        if int(self.seg_classes) < 1:
            raise ConfigError(f"seg_classes must be >= 1, got {self.seg_classes}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.in_channels != 3:
            raise ConfigError(
                "in_channels must be 3: greyscale inputs are replicated to RGB by the preprocessing"
            )
        self.decoder_channels = tuple(int(c) for c in self.decoder_channels)
        if len(self.decoder_channels) != int(self.encoder_depth):
            raise ConfigError("decoder_channels needs one entry per encoder stage (encoder_depth)")
        if self.encoder_weights in ("", "none", "None"):
            self.encoder_weights = None
        if self.class_names:
            self.class_names = [str(c) for c in self.class_names]
            if len(self.class_names) != int(self.num_classes):
                raise ConfigError(
                    f"{len(self.class_names)} class names given for num_classes={self.num_classes}"
                )
            if len(set(self.class_names)) != len(self.class_names):
                raise ConfigError(f"class names must be unique: {self.class_names}")
        else:
            self.class_names = [f"class_{i}" for i in range(int(self.num_classes))]

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["decoder_channels"] = list(self.decoder_channels)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        data = dict(data)
        if "decoder_channels" in data:
            data["decoder_channels"] = tuple(data["decoder_channels"])
        return _from_dict(cls, data, where="model config")


@dataclass
class AugmentConfig:
    """Joint image+mask augmentation (the paper's set: rotation, flips, shear)."""

    enabled: bool = True
    rotation_degrees: float = 15.0
    hflip: bool = True
    vflip: bool = True
    shear_degrees: float = 10.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AugmentConfig:
        return _from_dict(cls, data, where="augment config")


@dataclass
class DataConfig:
    """Where the data is and how it is split, cached and loaded."""

    root: str = ""
    layout: str = "auto"
    strict: bool = False
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    n_folds: int = 5
    fold: int | None = None
    seed: int = 0
    split_file: str | None = None
    cache: bool = True
    num_workers: int = 0
    balanced_sampling: bool = False
    max_samples: int | None = None
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        if isinstance(self.augment, dict):
            self.augment = AugmentConfig.from_dict(self.augment)
        for name in ("val_fraction", "test_fraction"):
            v = float(getattr(self, name))
            if not 0.0 <= v < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {v}")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ConfigError("val_fraction + test_fraction must leave some training data")
        if int(self.n_folds) < 2:
            raise ConfigError(f"n_folds must be >= 2, got {self.n_folds}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["augment"] = self.augment.to_dict()
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataConfig:
        return _from_dict(cls, data, where="data config")


@dataclass
class TrainConfig:
    """Optimisation settings; defaults follow the paper (Adam 1e-3, 5:1, 50 epochs, batch 32)."""

    epochs: int = 50
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    w_seg: float = 5.0
    w_cls: float = 1.0
    seg_loss: str = "bce"  # "bce" (paper) or "dice_bce"
    class_weights: str | None = "balanced"  # sklearn's "balanced" or None
    early_stopping_patience: int | None = 10
    monitor: str = "val_loss"
    lr_schedule: str | None = None  # None, "plateau" or "cosine" (per step, to 0 at the end)
    #: The encoder's learning rate is ``lr * encoder_lr_scale`` (< 1 keeps pretrained features).
    encoder_lr_scale: float = 1.0
    #: Linear learning-rate warm-up over this many epochs (fractions allowed).
    warmup_epochs: float = 0.0
    grad_clip: float | None = None
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    channels_last: bool = True
    deterministic: bool = False
    #: After each epoch, re-estimate BatchNorm statistics on up to this many
    #: training batches (precise BN; 0 = off).  Short runs from scratch
    #: otherwise validate with running statistics that lag far behind the
    #: weights (e.g. a classifier that predicts one class in eval mode).
    bn_recalibration_batches: int = 32

    def __post_init__(self) -> None:
        if int(self.bn_recalibration_batches) < 0:
            raise ConfigError(f"bn_recalibration_batches must be >= 0, got {self.bn_recalibration_batches}")
        if int(self.epochs) < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        if int(self.batch_size) < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if float(self.lr) <= 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if float(self.w_seg) < 0 or float(self.w_cls) < 0 or float(self.w_seg) + float(self.w_cls) == 0:
            raise ConfigError(f"loss weights must be >= 0 and not both 0, got {self.w_seg}:{self.w_cls}")
        if self.seg_loss not in ("bce", "dice_bce"):
            raise ConfigError(f"seg_loss must be 'bce' or 'dice_bce', got {self.seg_loss!r}")
        if self.class_weights not in (None, "balanced"):
            raise ConfigError(f"class_weights must be 'balanced' or None, got {self.class_weights!r}")
        if not 0.0 <= float(self.encoder_lr_scale) <= 10.0:
            raise ConfigError(f"encoder_lr_scale must be in [0, 10], got {self.encoder_lr_scale}")
        if not 0.0 <= float(self.warmup_epochs) < float(self.epochs) + 1e-9 and float(self.warmup_epochs) != 0.0:
            raise ConfigError(f"warmup_epochs must be in [0, epochs), got {self.warmup_epochs}")
        if self.lr_schedule not in (None, "plateau", "cosine"):
            raise ConfigError(f"lr_schedule must be None, 'plateau' or 'cosine', got {self.lr_schedule!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return _from_dict(cls, data, where="train config")
